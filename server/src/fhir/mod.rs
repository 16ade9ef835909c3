//! The FHIR REST API of R4 `http.html` under `/fhir`: a request is parsed once into a [`Route`]
//! (`route.rs`), authenticated, and its interaction run by the one dispatcher (`dispatch.rs`) that
//! batch entries use too; its [`Answer`](answer::Answer) becomes the HTTP response. One file per
//! interaction; no storage or crypto here: that is the core's.
//!
//! | file | what |
//! |------|------|
//! | `route.rs` | method + URL → route or interaction (REST and Bundle entries alike) |
//! | `dispatch.rs` | the dispatcher and its `Input` (parameters, conditions, body) |
//! | `intake.rs` | negotiation, bodies, conditional headers |
//! | `answer.rs` | an interaction's result → HTTP response or Bundle entry |
//! | `read.rs`, `write.rs`, `search.rs`, `history.rs` | the interactions on resources |
//! | `operations.rs`, `terminology.rs`, `audit.rs`, `capability.rs` | operations, AuditEvent, metadata |
//! | `bundle.rs`, `incoming.rs` | batch and transaction Bundles |
//! | `export.rs` | Bulk Data kick-off, status, cancel and streamed downloads |

mod answer;
mod audit;
mod bundle;
mod capability;
mod dispatch;
pub mod export;
mod history;
mod incoming;
pub mod intake;
mod operations;
mod read;
mod route;
mod search;
mod terminology;
mod write;

use crate::outcome::{ApiError, HttpResponse};
use crate::AppState;
use answer::json_response;
use dispatch::{Body, Input};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use route::{Interaction, Route};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serve one request under `/fhir`.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    match serve(&state, req, peer).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    intake::negotiate(&parts.headers, &params)?;
    let path = parts.uri.path().strip_prefix("/fhir").unwrap_or("");
    // Discovery needs no token; everything else does, and learns whether it routes only then.
    let routed = match route::parse(parts.method.as_str(), path, query) {
        Ok(Route::Capabilities) => {
            return Ok(json_response(
                StatusCode::OK,
                capability::statement(&state.base).to_string().into_bytes(),
            ))
        }
        Ok(Route::SmartConfiguration) => return Ok(crate::oauth::smart_configuration(&state.base)),
        Ok(Route::Bundle) => None,
        Ok(Route::Interaction(interaction)) => Some(Ok(interaction)),
        Err(unroutable) => Some(Err(unroutable.into_error())),
    };
    let headers = &parts.headers;
    let ctx = crate::oauth::authenticate(state, headers, peer).await?;
    let Some(interaction) = routed.transpose()? else {
        let answer = bundle::serve(state, &ctx, headers, body).await?;
        return Ok(answer.into_response(state, intake::Return::Representation));
    };
    let ret = if interaction.follows_prefer() {
        intake::prefer(headers)
    } else {
        intake::Return::Representation
    };
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
        strict: matches!(interaction, Interaction::Search { .. }) && intake::strict(headers),
        body: Body::Http { headers, body },
    };
    let answer = dispatch::run(state, &ctx, interaction, input).await?;
    Ok(answer.into_response(state, ret))
}
