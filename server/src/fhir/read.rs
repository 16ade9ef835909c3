//! Read and vread (`GET Type/id`, `GET Type/id/_history/v`): a resource version as stored.

use super::answer::Answer;
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
) -> Result<Answer, ApiError> {
    let resource = state.store.read(ctx, rt, id).await?;
    Ok(Answer::Resource {
        status: StatusCode::OK,
        resource,
    })
}

pub async fn vread(
    state: &AppState,
    ctx: &AccessContext,
    rt: ResourceType,
    id: &ResourceId,
    version: i64,
) -> Result<Answer, ApiError> {
    let resource = state.store.vread(ctx, rt, id, version).await?;
    Ok(Answer::Resource {
        status: StatusCode::OK,
        resource,
    })
}
