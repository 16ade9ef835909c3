//! `$meta`, `$meta-add` and `$meta-delete` on an instance (R4 `resource-operation-meta*`): a
//! resource's profiles, tags and security labels, read, added to and taken away. Reads go
//! through the store's read (gated, audited); changes are the store's patches, so a label added
//! or removed passes the same write rules as an update (only the patient lowers a label) and
//! makes a new version. Type- and system-level `$meta` (every tag in use) are not served: the
//! answer would be drawn from resources the caller may not see.

use super::answer::Answer;
use super::dispatch::Input;
use super::intake;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::store::{Patch, StoredResource};
use serde_json::{json, Value};

/// Which of the three operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaOp {
    Read,
    Add,
    Delete,
}

impl MetaOp {
    pub fn of(name: &str) -> Option<MetaOp> {
        match name {
            "$meta" => Some(MetaOp::Read),
            "$meta-add" => Some(MetaOp::Add),
            "$meta-delete" => Some(MetaOp::Delete),
            _ => None,
        }
    }
}

pub async fn serve(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    id: &ResourceId,
    version: Option<i64>,
    op: MetaOp,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let resource = match op {
        MetaOp::Read => match version {
            Some(v) => state.store.vread(ctx, rt, id, v).await?,
            None => state.store.read(ctx, rt, id).await?,
        },
        MetaOp::Add | MetaOp::Delete => {
            let (headers, body) = input.body.http()?;
            let body =
                intake::read_json(state, headers, body, intake::RESOURCE_MEDIA_TYPES).await?;
            let meta = meta_parameter(&body)?;
            let patch = match op {
                MetaOp::Add => Patch::MetaAdd(meta),
                _ => Patch::MetaDelete(meta),
            };
            state
                .store
                .patch(ctx, rt, id, patch, input.if_match)
                .await?
                .resource
        }
    };
    returned(&resource)
}

/// The `meta` parameter (a `valueMeta`) of a `Parameters` body.
fn meta_parameter(body: &Value) -> Result<&Value, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "the body must be a Parameters resource with one parameter 'meta' (a valueMeta)",
        )
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad());
    }
    let params = body
        .get("parameter")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    match params.as_slice() {
        [p] if p.get("name").and_then(Value::as_str) == Some("meta") => {
            p.get("valueMeta").filter(|m| m.is_object()).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// `Parameters` with `return`: the version's profiles, tags and security labels.
fn returned(resource: &StoredResource) -> Result<Answer, ApiError> {
    let body: Value = serde_json::from_slice(&resource.body).map_err(|_| {
        ApiError::new(
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "a stored resource is unreadable",
        )
    })?;
    let mut meta = serde_json::Map::new();
    for key in ["profile", "security", "tag"] {
        if let Some(v) = body.pointer(&format!("/meta/{key}")) {
            meta.insert(key.to_string(), v.clone());
        }
    }
    let out = json!({"resourceType": "Parameters",
                     "parameter": [{"name": "return", "valueMeta": meta}]});
    Ok(Answer::Json(out.to_string().into_bytes()))
}
