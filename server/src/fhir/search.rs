//! Type search (`GET Type?…`, `POST Type/_search`): every R4 search parameter of the type over the
//! blind index, narrowed to what the caller may see, as a `searchset` Bundle with paging links.
//! The parsing is the core's (`carapace_core::search::query`); the Bundle types here are shared
//! with `$everything`.

use super::answer::Answer;
use super::dispatch::Input;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::{AccessContext, Permission};
use carapace_core::fhir::{printable, ResourceId, ResourceType};
use carapace_core::search::query as search_query;
use carapace_core::store::StoredResource;
use hyper::StatusCode;
use serde_json::value::RawValue;

/// Type search: every R4 search parameter of the type over the blind index, narrowed to what the
/// caller may see; within a patient's compartment for `Patient/[id]/Type`. Unknown parameters are
/// ignored with a warning entry, or refused with `Prefer: handling=strict`.
pub async fn search(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    by_post: bool,
    compartment: Option<ResourceId>,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let strict = input.strict;
    let params = parameters(by_post, input).await?;
    let mut query = search_query::parse(rt, &params, strict).map_err(bad_search)?;
    let path = match &compartment {
        Some(patient) => format!("{}/Patient/{patient}/{rt}", state.base),
        None => format!("{}/{rt}", state.base),
    };
    query.compartment = compartment;
    let page = state.store.search(ctx, &query).await?;
    let link = page_links(
        &path,
        &query.kept,
        &params,
        page.next.clone(),
        page.previous.clone(),
    );
    let mut entries = Entries::default();
    entries.add(state, &query, page.matches, page.included)?;
    entries.warn_ignored(&query.ignored)?;
    entries.into_bundle(page.total, link)
}

/// A search over several types: the system search (`[base]?_type=A,B&…`; every type without
/// `_type`) and the patient-compartment search (`Patient/[id]/*`; every type of the
/// compartment; a system search must name its types). Each type is searched as a type search is — the same parse, the store's same
/// gated search, its own audit events — with the parameters refused, not ignored, where a type
/// does not define one (an ignored filter would widen that type's matches). A page holds matches
/// of one type; its `next` link moves through that type's pages, then on to the next type
/// (`_page_type`). Without `_type` (a compartment's types), those the caller's scopes do not let
/// it search are left out; a type named in `_type` that they do not is refused (403), as its type
/// search would be.
/// Sorting is within each type; `total` is left out. One page searches at most
/// [`TYPES_PER_PAGE`] types (skipping empty ones); past them an empty page links on.
pub async fn search_all(
    state: &AppState,
    ctx: &AccessContext,
    by_post: bool,
    compartment: Option<ResourceId>,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let params = parameters(by_post, input).await?;
    let mut named = Vec::new();
    for (_, value) in params.iter().filter(|(k, _)| k == "_type") {
        for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let rt = ResourceType::parse(t).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "_type: '{}' is not an R4 resource type",
                    printable(t)
                ))
            })?;
            if rt.as_str() == "AuditEvent" {
                return Err(ApiError::bad_request(
                    "_type: AuditEvents are searched on their own (GET AuditEvent?patient=…)",
                ));
            }
            if compartment.is_some() && !rt.in_patient_compartment() {
                return Err(ApiError::bad_request(format!(
                    "_type: {rt} is not in the Patient compartment"
                )));
            }
            if !named.contains(&rt) {
                named.push(rt);
            }
        }
    }
    // A system search names its types: each type searched is a query and an audited search, and
    // all 146 for every page would be a cost any caller could impose. A patient's compartment
    // holds a bounded set of types; they are searched when none are named.
    if named.is_empty() && compartment.is_none() {
        return Err(ApiError::bad_request(
            "a system search names the types it searches with _type (such as \
             _type=Patient,Observation)",
        ));
    }
    // Every named type is authorized before any is searched: a refusal is the whole answer.
    for rt in &named {
        ctx.check(rt.as_str(), Permission::Search)
            .map_err(|d| ApiError::from(carapace_core::store::StoreError::from(d)))?;
    }
    let types: Vec<ResourceType> = if named.is_empty() {
        ResourceType::all()
            .filter(|rt| compartment.is_none() || rt.in_patient_compartment())
            .filter(|rt| rt.as_str() != "AuditEvent")
            .filter(|rt| ctx.check(rt.as_str(), Permission::Search).is_ok())
            .collect()
    } else {
        named
    };
    let at = match params.iter().find(|(k, _)| k == "_page_type") {
        Some((_, t)) => types
            .iter()
            .position(|rt| rt.as_str() == t)
            .ok_or_else(|| ApiError::bad_request("_page_type names no type of this search"))?,
        None => 0,
    };
    // What each type's search is given: everything but the types and the position; the paging
    // cursor only to the type it belongs to.
    let common: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_type" | "_page_type" | "_page"))
        .cloned()
        .collect();
    let cursor = params.iter().find(|(k, _)| k == "_page").cloned();
    let path = match &compartment {
        Some(patient) => format!("{}/Patient/{patient}/*", state.base),
        None => state.base.clone(),
    };
    let link_to = |rt: Option<ResourceType>, page: Option<&str>| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params.iter().filter(|(k, _)| k == "_type") {
            ser.append_pair(k, v);
        }
        for (k, v) in &common {
            ser.append_pair(k, v);
        }
        if let Some(rt) = rt {
            ser.append_pair("_page_type", rt.as_str());
        }
        if let Some(page) = page {
            ser.append_pair("_page", page);
        }
        format!("{path}?{}", ser.finish())
    };
    let mut entries = Entries::default();
    let mut link = vec![Link {
        relation: "self",
        url: link_to(
            params
                .iter()
                .any(|(k, _)| k == "_page_type")
                .then(|| types[at]),
            cursor.as_ref().map(|(_, v)| v.as_str()),
        ),
    }];
    for (searched, (i, &rt)) in types.iter().enumerate().skip(at).enumerate() {
        let mut own = common.clone();
        if i == at {
            own.extend(cursor.clone());
        }
        let mut query = search_query::parse(rt, &own, true).map_err(|e| {
            ApiError::bad_request(format!(
                "{} (in a search over several types, every parameter must be one every searched \
                 type defines; name the types with _type)",
                e.0
            ))
        })?;
        query.compartment = compartment.clone();
        let page = state.store.search(ctx, &query).await?;
        let found = !page.matches.is_empty();
        let next = match page.next {
            Some(next) => Some(link_to(Some(rt), Some(&next))),
            None => types.get(i + 1).map(|&t| link_to(Some(t), None)),
        };
        entries.add(state, &query, page.matches, page.included)?;
        // At most this many types are searched for one page (each is a query and an audited
        // search): past them an empty page links on to the next type.
        if found || i + 1 == types.len() || searched + 1 == TYPES_PER_PAGE {
            link.extend(next.map(|url| Link {
                relation: "next",
                url,
            }));
            break;
        }
    }
    entries.into_bundle(None, link)
}

/// The most types one page of a search over several types searches.
const TYPES_PER_PAGE: usize = 10;

/// A search's parameters: those of the URL, and a POST's form parameters with them.
async fn parameters(by_post: bool, input: Input<'_>) -> Result<Vec<(String, String)>, ApiError> {
    let mut all = input.params.to_vec();
    if by_post {
        let (headers, body) = input.body.http()?;
        all.extend(
            crate::oauth::read_form(headers, body)
                .await
                .map_err(|e| ApiError::bad_request(e.description))?,
        );
    }
    Ok(all)
}

fn bad_search(e: search_query::BadSearch) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0)
}

fn unreadable() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "a stored resource is unreadable",
    )
}

/// A searchset's entries as they are gathered: bodies moved, not copied, into the Bundle.
#[derive(Default)]
struct Entries {
    meta: Vec<(Option<String>, &'static str)>,
    bodies: Vec<Box<RawValue>>,
}

impl Entries {
    fn add(
        &mut self,
        state: &AppState,
        query: &search_query::SearchQuery,
        matches: Vec<StoredResource>,
        included: Vec<StoredResource>,
    ) -> Result<(), ApiError> {
        // Stored bodies go out as they are unless `_summary`/`_elements` reshape them.
        let plain = query.summary == search_query::Summary::None && query.elements.is_none();
        for (mode, list) in [("match", matches), ("include", included)] {
            for r in list {
                let text = if plain {
                    String::from_utf8(r.body).map_err(|_| unreadable())?
                } else {
                    let mut resource: serde_json::Value =
                        serde_json::from_slice(&r.body).map_err(|_| unreadable())?;
                    carapace_core::search::shape(
                        &mut resource,
                        query.summary,
                        query.elements.as_deref(),
                    );
                    resource.to_string()
                };
                self.meta.push((
                    Some(format!("{}/{}/{}", state.base, r.resource_type, r.id)),
                    mode,
                ));
                self.bodies
                    .push(RawValue::from_string(text).map_err(|_| unreadable())?);
            }
        }
        Ok(())
    }

    fn warn_ignored(&mut self, ignored: &[String]) -> Result<(), ApiError> {
        if !ignored.is_empty() {
            let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "warning", "code": "not-supported",
                "diagnostics": format!("ignored unknown or unsupported search parameters: {}",
                                       ignored.join(", "))}]});
            self.bodies
                .push(RawValue::from_string(outcome.to_string()).map_err(|_| unreadable())?);
            self.meta.push((None, "outcome"));
        }
        Ok(())
    }

    fn into_bundle(self, total: Option<u64>, link: Vec<Link>) -> Result<Answer, ApiError> {
        let entry = self
            .meta
            .into_iter()
            .zip(self.bodies.iter())
            .map(|((full_url, mode), resource)| SearchEntry {
                full_url,
                resource,
                search: SearchMode { mode },
            })
            .collect();
        let bundle = SearchBundle {
            resource_type: "Bundle",
            bundle_type: "searchset",
            total,
            link,
            entry,
        };
        let body = serde_json::to_vec(&bundle).map_err(|_| unreadable())?;
        Ok(Answer::Json(body))
    }
}

#[derive(serde::Serialize)]
pub struct SearchBundle<'a> {
    #[serde(rename = "resourceType")]
    pub resource_type: &'static str,
    #[serde(rename = "type")]
    pub bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    pub link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<SearchEntry<'a>>,
}

#[derive(serde::Serialize)]
pub struct SearchEntry<'a> {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    pub resource: &'a RawValue,
    pub search: SearchMode,
}

#[derive(serde::Serialize)]
pub struct SearchMode {
    pub mode: &'static str,
}

#[derive(serde::Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

/// `self` and `next` links of a paged Bundle: the query that produced it (`kept`), plus the page
/// cursor this request came with (self) or the one after it (next).
pub fn page_links(
    path: &str,
    kept: &[(String, String)],
    params: &[(String, String)],
    next_cursor: Option<String>,
    previous_cursor: Option<String>,
) -> Vec<Link> {
    let link_to = |cursor: Option<&str>| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in kept {
            ser.append_pair(k, v);
        }
        if let Some(c) = cursor {
            ser.append_pair("_page", c);
        }
        format!("{path}?{}", ser.finish())
    };
    let current = params
        .iter()
        .find(|(k, _)| k == "_page")
        .map(|(_, v)| v.as_str());
    let mut links = vec![Link {
        relation: "self",
        url: link_to(current),
    }];
    if let Some(next) = next_cursor {
        links.push(Link {
            relation: "next",
            url: link_to(Some(&next)),
        });
    }
    if let Some(previous) = previous_cursor {
        links.push(Link {
            relation: "previous",
            url: link_to(Some(&previous)),
        });
    }
    links
}
