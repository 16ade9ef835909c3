//! The one dispatcher: an [`Interaction`] with its [`Input`] runs here, whether it came as a REST
//! request or as a batch entry, and answers an [`Answer`] that each renders in its own way.
//! (Transaction entries run together in the core's `Store::transaction`; see `bundle.rs`.)

use super::answer::Answer;
use super::route::Interaction;
use super::{
    audit, export, graphql, history, intake, meta, operations, read, search, terminology, write,
};
use crate::outcome::ApiError;
use crate::AppState;
use bytes::Bytes;
use carapace_core::access::AccessContext;
use hyper::body::Incoming;
use hyper::header::HeaderMap;

/// What an interaction is given besides its route.
pub struct Input<'a> {
    /// The query parameters of the URL.
    pub params: &'a [(String, String)],
    /// The version a write is conditional on (`If-Match`, `Bundle.entry.request.ifMatch`).
    pub if_match: Option<i64>,
    /// The condition of a create (`If-None-Exist`, `Bundle.entry.request.ifNoneExist`), raw.
    pub if_none_exist: Option<String>,
    /// What the client already holds, for a read or vread (a 304 when it is current).
    pub freshness: intake::Freshness,
    /// `Prefer: handling=strict` (searches refuse unknown parameters).
    pub strict: bool,
    pub body: Body<'a>,
}

/// Where the interaction's resource or parameters come from.
pub enum Body<'a> {
    /// A REST request's body, read only by an interaction that takes one (media type, size and
    /// JSON checked then).
    Http {
        headers: &'a HeaderMap,
        body: Incoming,
    },
    /// A batch entry's resource: a slice of the Bundle's body (already checked as JSON).
    Entry(Option<Bytes>),
}

impl<'a> Body<'a> {
    /// The resource of a create or update.
    pub async fn resource(self, state: &AppState) -> Result<serde_json::Value, ApiError> {
        match self {
            Body::Http { headers, body } => intake::read_resource(state, headers, body).await,
            Body::Entry(raw) => raw
                .and_then(|raw| serde_json::from_slice(&raw).ok())
                .ok_or_else(|| ApiError::bad_request("this entry needs a resource")),
        }
    }

    /// The REST request's headers and body, for what only REST carries (forms, patches,
    /// operation parameters); refused in a Bundle entry.
    pub fn http(self) -> Result<(&'a HeaderMap, Incoming), ApiError> {
        match self {
            Body::Http { headers, body } => Ok((headers, body)),
            Body::Entry(_) => Err(ApiError::bad_request(
                "this interaction is not supported in a Bundle entry",
            )),
        }
    }
}

/// Run one interaction under the caller's access.
pub async fn run(
    state: &AppState,
    ctx: &AccessContext,
    interaction: Interaction,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    use Interaction as I;
    match interaction {
        I::Read { rt, id } => read::read(state, ctx, rt, &id, &input.freshness).await,
        I::Vread { rt, id, version } => {
            read::vread(state, ctx, rt, &id, version, &input.freshness).await
        }
        I::Search {
            rt,
            by_post,
            compartment,
        } => search::search(state, ctx, rt, by_post, compartment, input).await,
        I::SearchAll {
            by_post,
            compartment,
        } => search::search_all(state, ctx, by_post, compartment, input).await,
        I::Create { rt } => write::create(state, ctx, rt, input).await,
        I::Update { rt, target } => write::update(state, ctx, rt, target, input).await,
        I::Patch { rt, id } => write::patch(state, ctx, rt, &id, input).await,
        I::Delete { rt, target } => write::delete(state, ctx, rt, target).await,
        I::History { rt, id } => history::history(state, ctx, rt, id.as_ref(), input.params).await,
        I::Export { level, by_post } => export::kick_off(state, ctx, level, by_post, input).await,
        I::ExportStatus { job, cancel: false } => export::status(state, ctx, &job).await,
        I::ExportStatus { job, cancel: true } => export::cancel(state, ctx, &job).await,
        I::Everything { patient } => {
            operations::everything(state, ctx, &patient, input.params).await
        }
        I::Summary { patient, by_post } => {
            operations::summary(state, ctx, &patient, by_post, input).await
        }
        I::Validate { rt, id, by_post } => {
            operations::validate(state, ctx, rt, id, by_post, input).await
        }
        I::Meta {
            rt,
            id,
            version,
            op,
        } => meta::serve(state, ctx, rt, &id, version, op, input).await,
        I::Terminology { op, by_post } => terminology::serve(state, by_post, input, op).await,
        I::AuditSearch => audit::search(state, ctx, input.params).await,
        I::AuditRead { id } => audit::read(state, ctx, &id).await,
        I::GraphQl { target, by_post } => graphql::serve(state, ctx, target, by_post, input).await,
    }
}
