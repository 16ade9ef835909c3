//! Type search (`GET Type?…`, `POST Type/_search`): every R4 search parameter of the type over the
//! blind index, narrowed to what the caller may see, as a `searchset` Bundle with paging links.
//! The parsing is the core's (`carapace_core::search::query`); the Bundle types here are shared
//! with `$everything`.

use super::answer::Answer;
use super::dispatch::Input;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::ResourceType;
use carapace_core::search::query as search_query;
use hyper::StatusCode;
use serde_json::value::RawValue;

/// Type search: every R4 search parameter of the type over the blind index, narrowed to what the
/// caller may see. Unknown parameters are ignored with a warning entry, or refused with
/// `Prefer: handling=strict`.
pub async fn search(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    by_post: bool,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    // A POST's form parameters join those of its URL.
    let form;
    let params = if by_post {
        let (headers, body) = input.body.http()?;
        let mut all = input.params.to_vec();
        all.extend(
            crate::oauth::read_form(headers, body)
                .await
                .map_err(|e| ApiError::bad_request(e.description))?,
        );
        form = all;
        &form[..]
    } else {
        input.params
    };
    let query = search_query::parse(rt, params, input.strict)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?;
    let page = state.store.search(ctx, &query).await?;
    let path = format!("{}/{rt}", state.base);
    let link = page_links(&path, &query.kept, params, page.next, page.previous);
    let unreadable = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "a stored resource is unreadable",
        )
    };
    // Stored bodies go out as they are unless `_summary`/`_elements` reshape them.
    let plain = query.summary == search_query::Summary::None && query.elements.is_none();
    // Bodies are moved, not copied, into the Bundle.
    let raw = |body: Vec<u8>| -> Result<Box<RawValue>, ApiError> {
        let text = if plain {
            String::from_utf8(body).map_err(|_| unreadable())?
        } else {
            let mut resource: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| unreadable())?;
            carapace_core::search::shape(&mut resource, query.summary, query.elements.as_deref());
            resource.to_string()
        };
        RawValue::from_string(text).map_err(|_| unreadable())
    };
    let mut bodies = Vec::with_capacity(page.matches.len() + page.included.len() + 1);
    let mut meta = Vec::with_capacity(bodies.capacity());
    for (mode, list) in [("match", page.matches), ("include", page.included)] {
        for r in list {
            meta.push((
                Some(format!("{}/{}/{}", state.base, r.resource_type, r.id)),
                mode,
            ));
            bodies.push(raw(r.body)?);
        }
    }
    if !query.ignored.is_empty() {
        let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "warning", "code": "not-supported",
            "diagnostics": format!("ignored unknown or unsupported search parameters: {}",
                                   query.ignored.join(", "))}]});
        bodies.push(RawValue::from_string(outcome.to_string()).map_err(|_| unreadable())?);
        meta.push((None, "outcome"));
    }
    let entry = meta
        .into_iter()
        .zip(bodies.iter())
        .map(|((full_url, mode), resource)| SearchEntry {
            full_url,
            resource,
            search: SearchMode { mode },
        })
        .collect();
    let bundle = SearchBundle {
        resource_type: "Bundle",
        bundle_type: "searchset",
        total: page.total,
        link,
        entry,
    };
    let body = serde_json::to_vec(&bundle).map_err(|_| unreadable())?;
    Ok(Answer::Json(body))
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
