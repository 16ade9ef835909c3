//! The FHIR REST API of R4 `http.html` under `/fhir`: a request is parsed once into a [`Route`]
//! (`route.rs`), authenticated, and its interaction run by the one dispatcher (`dispatch.rs`) that
//! batch entries use too; its [`Answer`](answer::Answer) becomes the HTTP response. One file per
//! interaction; no storage or crypto here: that is the core's.
//!
//! | file | what |
//! |------|------|
//! | `route.rs` | method + URL → route or interaction (REST and Bundle entries alike) |
//! | `dispatch.rs` | the dispatcher and its `Input` (parameters, conditions, body) |
//! | `intake.rs` | negotiation (JSON or XML), bodies (XML read as JSON), conditional headers |
//! | `answer.rs` | an interaction's result → HTTP response (in XML when asked) or Bundle entry |
//! | `read.rs`, `write.rs`, `search.rs`, `history.rs` | the interactions on resources |
//! | `operations.rs`, `terminology.rs`, `audit.rs`, `capability.rs` | operations, AuditEvent, metadata |
//! | `bundle.rs`, `incoming.rs` | batch and transaction Bundles |
//! | `graphql.rs` | `$graphql`: a GraphQL query run by the core, answered as GraphQL |
//! | `export.rs` | Bulk Data kick-off, status, cancel and streamed downloads |
//! | `binary.rs` | Binary documents raw: streamed uploads, downloads and ranges |

mod answer;
mod audit;
mod binary;
mod bundle;
mod capability;
mod dispatch;
pub mod export;
mod graphql;
mod history;
mod incoming;
pub mod intake;
mod meta;
mod operations;
mod present;
mod read;
mod route;
mod search;
mod terminology;
mod write;

use crate::outcome::ApiError;
use crate::AppState;
use answer::json_response;
use carapace_core::fhir::ResourceType;
use dispatch::{Body, Input};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use route::{Interaction, Route};
use std::net::SocketAddr;
use std::sync::Arc;

/// The interaction a request under `/fhir` asks for, as the metrics name it (a fixed word: never
/// an id or a parameter). `path` is without `/fhir`.
pub fn interaction_name(method: &str, path: &str, query: &str) -> &'static str {
    use terminology::Operation as Op;
    match route::parse(method, path, query) {
        Ok(Route::Capabilities) => "capabilities",
        Ok(Route::SmartConfiguration) => "smart-configuration",
        Ok(Route::OpenIdConfiguration) => "openid-configuration",
        // `batch` or `transaction` once the body says (`bundle.rs`).
        Ok(Route::Bundle) => "bundle",
        Ok(Route::Interaction(i)) => match i {
            Interaction::Read { .. } | Interaction::AuditRead { .. } => "read",
            Interaction::Vread { .. } => "vread",
            Interaction::Search {
                compartment: None, ..
            }
            | Interaction::AuditSearch => "search-type",
            Interaction::Search { .. } => "search-compartment",
            Interaction::SearchAll {
                compartment: None, ..
            } => "search-system",
            Interaction::SearchAll { .. } => "search-compartment",
            Interaction::Create { .. } => "create",
            Interaction::Update { .. } => "update",
            Interaction::Patch { .. } => "patch",
            Interaction::Delete { .. } => "delete",
            Interaction::History { .. } => "history",
            Interaction::Everything { .. } => "operation:everything",
            Interaction::Summary { .. } => "operation:summary",
            Interaction::Validate { .. } => "operation:validate",
            Interaction::Meta { op, .. } => match op {
                meta::MetaOp::Read => "operation:meta",
                meta::MetaOp::Add => "operation:meta-add",
                meta::MetaOp::Delete => "operation:meta-delete",
            },
            Interaction::Terminology { op, .. } => match op {
                Op::Expand => "operation:expand",
                Op::Lookup => "operation:lookup",
                Op::ValidateValueSet | Op::ValidateCodeSystem => "operation:validate-code",
            },
            Interaction::Export { .. } => "operation:export",
            Interaction::ExportStatus { .. } => "export-status",
            Interaction::GraphQl { .. } => "operation:graphql",
        },
        Err(_) => "unroutable",
    }
}

/// Serve one request under `/fhir`.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<crate::Body> {
    let format = intake::answer_format(req.headers(), req.uri().query());
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let presentation = present::Presentation::of(req.headers(), &params);
    let resp = match serve(&state, req, peer).await {
        Ok(resp) => resp,
        Err(e) => e.into_response().map(Either::Left),
    };
    presentation
        .apply(answer::in_format(format, resp).await)
        .await
}

async fn serve(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<crate::Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let path = parts.uri.path().strip_prefix("/fhir").unwrap_or("");
    // A Binary's raw read negotiates against the document's own type, once it is known.
    let raw_read = binary::wants_raw(&parts.headers, &params)
        && route::is_binary_read(parts.method.as_str(), path, query);
    if !raw_read {
        intake::negotiate(&parts.headers, &params)?;
    }
    // Discovery needs no token; everything else does, and learns whether it routes only then.
    let routed = match route::parse(parts.method.as_str(), path, query) {
        Ok(Route::Capabilities) => {
            return Ok(json_response(
                StatusCode::OK,
                capability::statement(&state.base).to_string().into_bytes(),
            )
            .map(Either::Left))
        }
        Ok(Route::SmartConfiguration) => {
            return Ok(crate::oauth::smart_configuration(&state.base).map(Either::Left))
        }
        Ok(Route::OpenIdConfiguration) => {
            return Ok(crate::oauth::openid_configuration(&state.base).map(Either::Left))
        }
        Ok(Route::Bundle) => None,
        Ok(Route::Interaction(interaction)) => Some(Ok(interaction)),
        Err(unroutable) => Some(Err(unroutable.into_error())),
    };
    let headers = &parts.headers;
    let ctx = crate::oauth::authenticate(state, headers, peer).await?;
    let Some(interaction) = routed.transpose()? else {
        let answer = bundle::serve(state, &ctx, headers, body).await?;
        return Ok(answer
            .into_response(state, intake::Return::Representation)
            .map(Either::Left));
    };
    let ret = if interaction.follows_prefer() {
        intake::prefer(headers)
    } else {
        intake::Return::Representation
    };
    // A Binary's document itself, in or out, streams past the dispatcher (which answers whole
    // resources, as batch entries need).
    let binary = |rt: &ResourceType| *rt == ResourceType::BINARY;
    match &interaction {
        Interaction::Read { rt, id } if binary(rt) && raw_read => {
            return binary::read(state, &ctx, id, None, headers).await
        }
        Interaction::Vread { rt, id, version } if binary(rt) && raw_read => {
            return binary::read(state, &ctx, id, Some(*version), headers).await
        }
        // The resource form with its content as `data` is REST's alone (see the core's
        // `read_binary_resource`).
        Interaction::Read { rt, id } if binary(rt) => {
            let resource = state.store.read_binary_resource(&ctx, id, None).await?;
            return Ok(read::answer(resource, &intake::Freshness::of(headers))
                .into_response(state, ret)
                .map(Either::Left));
        }
        Interaction::Vread { rt, id, version } if binary(rt) => {
            let resource = state
                .store
                .read_binary_resource(&ctx, id, Some(*version))
                .await?;
            return Ok(read::answer(resource, &intake::Freshness::of(headers))
                .into_response(state, ret)
                .map(Either::Left));
        }
        Interaction::Create { rt } if binary(rt) && binary::is_raw_upload(headers) => {
            let answer = binary::create(state, &ctx, headers, body).await?;
            return Ok(answer.into_response(state, ret).map(Either::Left));
        }
        Interaction::Update {
            rt,
            target: carapace_core::store::Target::Id(id),
        } if binary(rt) && binary::is_raw_upload(headers) => {
            let answer = binary::update(state, &ctx, id, headers, body).await?;
            return Ok(answer.into_response(state, ret).map(Either::Left));
        }
        _ => {}
    }
    let input = Input {
        params: &params,
        if_match: if interaction.takes_if_match() {
            intake::if_match(headers)?
        } else {
            None
        },
        if_none_exist: match interaction {
            Interaction::Create { .. } => intake::header_str(headers, "if-none-exist")?,
            _ => None,
        },
        freshness: intake::Freshness::of(headers),
        strict: matches!(interaction, Interaction::Search { .. }) && intake::strict(headers),
        body: Body::Http { headers, body },
    };
    let answer = dispatch::run(state, &ctx, interaction, input).await?;
    Ok(answer.into_response(state, ret).map(Either::Left))
}
