//! History (`_history` at system, type and instance level): every version and deletion the caller
//! may see, newest first, as a `history` Bundle with paging links. The parameters are parsed in
//! the core (`carapace_core::search::interaction_params`).

use super::answer::{etag, Answer};
use super::search::{page_links, Link};
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::search::interaction_params;
use carapace_core::store::StoreError;
use chrono::SecondsFormat;
use hyper::StatusCode;
use serde_json::value::RawValue;

pub async fn history(
    state: &AppState,
    ctx: &AccessContext,
    rt: Option<ResourceType>,
    id: Option<&ResourceId>,
    params: &[(String, String)],
) -> Result<Answer, ApiError> {
    if let (Some(rt), Some(id)) = (rt, id) {
        // History of an id that never existed is a 404, not an empty Bundle.
        match state.store.read(ctx, rt, id).await {
            Ok(_) | Err(StoreError::Gone { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let query = interaction_params::parse_history(params)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.0))?;
    let page = state.store.history(ctx, rt, id, &query).await?;
    let path = match (rt, id) {
        (Some(t), Some(i)) => format!("{}/{t}/{i}/_history", state.base),
        (Some(t), None) => format!("{}/{t}/_history", state.base),
        _ => format!("{}/_history", state.base),
    };
    let mut base_params: Vec<(String, String)> = vec![("_count".into(), query.count.to_string())];
    if let Some(since) = query.since {
        base_params.push((
            "_since".into(),
            since.to_rfc3339_opts(SecondsFormat::Micros, true),
        ));
    }
    let links = page_links(&path, &base_params, params, page.next.clone(), None);
    let raw: Vec<Option<Box<RawValue>>> = page
        .entries
        .iter()
        .map(|e| {
            e.body
                .as_ref()
                .and_then(|b| String::from_utf8(b.clone()).ok())
                .and_then(|s| RawValue::from_string(s).ok())
        })
        .collect();
    let entries = page
        .entries
        .iter()
        .zip(raw.iter())
        .map(|(e, body)| HistoryBundleEntry {
            full_url: format!("{}/{}/{}", state.base, e.resource_type, e.id),
            resource: body.as_deref(),
            request: EntryRequest {
                method: e.method.clone(),
                url: if e.method == "POST" {
                    e.resource_type.to_string()
                } else {
                    format!("{}/{}", e.resource_type, e.id)
                },
            },
            response: EntryResponse {
                status: match (e.method.as_str(), e.version_id) {
                    ("DELETE", _) => "204 No Content",
                    (_, 1) => "201 Created",
                    _ => "200 OK",
                },
                etag: etag(e.version_id),
                last_modified: e.last_updated.to_rfc3339_opts(SecondsFormat::Micros, true),
            },
        })
        .collect();
    let bundle = HistoryBundle {
        resource_type: "Bundle",
        bundle_type: "history",
        link: links,
        entry: entries,
    };
    let body = serde_json::to_vec(&bundle).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "could not build the history Bundle",
        )
    })?;
    Ok(Answer::Json(body))
}

#[derive(serde::Serialize)]
struct HistoryBundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    link: Vec<Link>,
    entry: Vec<HistoryBundleEntry<'a>>,
}

#[derive(serde::Serialize)]
struct HistoryBundleEntry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    request: EntryRequest,
    response: EntryResponse,
}

#[derive(serde::Serialize)]
struct EntryRequest {
    method: String,
    url: String,
}

#[derive(serde::Serialize)]
struct EntryResponse {
    status: &'static str,
    etag: String,
    #[serde(rename = "lastModified")]
    last_modified: String,
}
