//! Read and vread (`GET Type/id`, `GET Type/id/_history/v`): a resource version as stored.

use super::answer::Answer;
use super::intake::Freshness;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::{ResourceId, ResourceType};
use hyper::StatusCode;

pub async fn read(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    id: &ResourceId,
    freshness: &Freshness,
) -> Result<Answer, ApiError> {
    let resource = state.store.read(ctx, rt, id).await?;
    Ok(answer(resource, freshness))
}

pub async fn vread(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    id: &ResourceId,
    version: i64,
    freshness: &Freshness,
) -> Result<Answer, ApiError> {
    let resource = state.store.vread(ctx, rt, id, version).await?;
    Ok(answer(resource, freshness))
}

/// 200 with the version, or 304 when the client holds it already. The read has been made (and
/// audited) either way: a 304 tells only what the 200 would.
pub fn answer(resource: carapace_core::store::StoredResource, freshness: &Freshness) -> Answer {
    if freshness.unchanged(resource.version_id, resource.last_updated) {
        Answer::NotModified(resource)
    } else {
        Answer::Resource {
            status: StatusCode::OK,
            resource,
        }
    }
}
