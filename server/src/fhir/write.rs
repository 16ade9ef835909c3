//! The writes: create (conditional with `If-None-Exist` or search parameters on the URL), update
//! and delete (by id, or conditional on a search), and JSON Patch. A conditional update or delete
//! runs as a transaction of one entry, so its match and its write are atomic.

use super::answer::Answer;
use super::dispatch::Input;
use super::intake;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::store::{Created, Deleted, EntryResource, Patch, Target, TxEntry, TxResult};

/// What a PATCH body may be: a JSON Patch, or a FHIRPath Patch's `Parameters` (JSON or XML).
const PATCH_MEDIA_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/fhir+json",
    "application/json",
    "application/fhir+xml",
    "application/xml",
    "text/xml",
];
use hyper::StatusCode;

pub async fn create(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let resource = input.body.resource(state).await?;
    let if_none_exist = create_condition(input.if_none_exist, input.params)?;
    let created = state
        .store
        .create(ctx, rt, resource, if_none_exist.as_deref())
        .await?;
    Ok(match created {
        Created::New(r) => Answer::written(r, true),
        Created::Existing(r) => Answer::written(r, false),
    })
}

pub async fn update(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    target: Target,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let resource = input.body.resource(state).await?;
    let updated = match target {
        Target::Id(id) => {
            state
                .store
                .update(ctx, rt, &id, resource, input.if_match)
                .await?
        }
        target @ Target::Query(_) => {
            let entry = TxEntry::Update {
                resource_type: rt,
                target,
                resource: EntryResource::Parsed(resource),
                if_match: input.if_match,
                full_url: None,
            };
            match single_entry(state, ctx, entry).await? {
                TxResult::Updated(updated) => updated,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "exception",
                        "the conditional update did not run",
                    ))
                }
            }
        }
    };
    Ok(Answer::written(updated.resource, updated.created))
}

/// JSON Patch (`application/json-patch+json`) or FHIRPath Patch (a `Parameters` resource,
/// `application/fhir+json`), REST only.
pub async fn patch(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    id: &ResourceId,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let (headers, body) = input.body.http()?;
    let json_patch = intake::media_type(headers).as_deref() == Some("application/json-patch+json");
    let body = intake::read_json(state, headers, body, PATCH_MEDIA_TYPES).await?;
    let updated = if json_patch {
        let patch: json_patch::Patch = serde_json::from_value(body).map_err(|_| {
            ApiError::bad_request("the body is not a JSON Patch document (an array of operations)")
        })?;
        state
            .store
            .patch(ctx, rt, id, Patch::Json(&patch), input.if_match)
            .await?
    } else {
        if !carapace_core::fhir::patch::is_fhirpath_patch(&body) {
            return Err(ApiError::bad_request(
                "a FHIRPath Patch is a Parameters resource (send a JSON Patch as \
                 application/json-patch+json)",
            ));
        }
        state
            .store
            .patch(ctx, rt, id, Patch::FhirPath(&body), input.if_match)
            .await?
    };
    Ok(Answer::Resource {
        status: StatusCode::OK,
        resource: updated.resource,
    })
}

pub async fn delete(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    target: Target,
) -> Result<Answer, ApiError> {
    let deleted = match target {
        Target::Id(id) => state.store.delete(ctx, rt, &id).await?,
        target @ Target::Query(_) => {
            let entry = TxEntry::Delete {
                resource_type: rt,
                target,
            };
            match single_entry(state, ctx, entry).await? {
                TxResult::Deleted(deleted) => deleted,
                _ => Deleted::Already,
            }
        }
    };
    Ok(Answer::Deleted(match deleted {
        Deleted::Now { version_id } => Some(version_id),
        Deleted::Already => None,
    }))
}

/// The condition of a create: `If-None-Exist` (or a Bundle entry's `ifNoneExist`), or search
/// parameters on the URL (`POST Patient?identifier=a|b`, the convention of fhirpy and Aidbox),
/// which are never ignored. Both, when they differ, are refused.
pub fn create_condition(
    header: Option<String>,
    params: &[(String, String)],
) -> Result<Option<String>, ApiError> {
    let search: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .collect();
    if search.is_empty() {
        return Ok(header);
    }
    let mut url = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &search {
        url.append_pair(k, v);
    }
    let url = url.finish();
    let same = |h: &str| {
        form_urlencoded::parse(h.trim_start_matches('?').as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .eq(search.iter().map(|p| (p.0.clone(), p.1.clone())))
    };
    match header {
        Some(h) if !same(&h) => Err(ApiError::bad_request(
            "a create with search parameters on its URL is conditional; If-None-Exist, when \
             also sent, must be the same query",
        )),
        _ => Ok(Some(url)),
    }
}

/// Run one conditional write as a transaction of one entry (matched and written atomically with
/// respect to other entries, audited like any write).
async fn single_entry(
    state: &AppState,
    ctx: &AccessContext,
    entry: TxEntry,
) -> Result<TxResult, ApiError> {
    let mut results = state
        .store
        .transaction(ctx, vec![entry])
        .await
        .map_err(|f| ApiError::from(f.error))?;
    results.pop().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "the write did not run",
        )
    })
}
