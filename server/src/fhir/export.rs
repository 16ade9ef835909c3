//! Bulk Data export over HTTP (IG 2.0.0): kick-off at `$export`, `Patient/$export` and
//! `Group/[id]/$export`, the status URL (`_export/[job]`: poll, or `DELETE` to cancel) and file
//! downloads (`_export/[job]/[file]`, streamed as the core decrypts them). The jobs, their access
//! and their files are the core's (`carapace_core::export`).

use super::answer::{json_response, Answer};
use super::dispatch::Input;
use super::intake;
use crate::outcome::{ApiError, HttpResponse};
use crate::AppState;
use bytes::Bytes;
use carapace_core::access::AccessContext;
use carapace_core::export::{ExportRequest, Level, Status};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;

/// How long a client waits between polls of a running job (seconds).
const RETRY_AFTER: &str = "2";

fn prefer_has(headers: &HeaderMap, word: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case(word))
}

/// The kick-off: 202 with the status URL in `Content-Location`.
pub async fn kick_off(
    state: &AppState,
    ctx: &AccessContext,
    level: Level,
    by_post: bool,
    input: Input<'_>,
) -> Result<Answer, ApiError> {
    let params = input.params;
    let (headers, body) = input.body.http()?;
    if !prefer_has(headers, "respond-async") {
        return Err(ApiError::bad_request(
            "a Bulk Data kick-off needs the header Prefer: respond-async",
        ));
    }
    let lenient = prefer_has(headers, "handling=lenient");
    let path = match &level {
        Level::System => "$export".to_string(),
        Level::Patient => "Patient/$export".to_string(),
        Level::Group(id) => format!("Group/{id}/$export"),
    };
    let url = kick_off_url(&state.base, &path, params);
    if by_post && params.iter().any(|(k, _)| k != "_format") {
        // The manifest's `request` names the kick-off: a POST's parameters are its body's alone.
        return Err(ApiError::bad_request(
            "a POST kick-off takes its parameters in the Parameters body, not the URL",
        ));
    }
    let request = if by_post {
        let parameters =
            intake::read_json(state, headers, body, intake::RESOURCE_MEDIA_TYPES).await?;
        ExportRequest::from_parameters(level, &parameters, lenient)
    } else {
        ExportRequest::from_query(level, params, lenient)
    }
    .map_err(|e| ApiError::bad_request(e.0))?;
    let job = state.exporter.kick_off(ctx, request, &url).await?;
    let body = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational",
        "diagnostics": "export job accepted; poll the Content-Location URL for its status"}]});
    let mut resp = json_response(StatusCode::ACCEPTED, body.to_string().into_bytes());
    if let Ok(v) = format!("{}/_export/{job}", state.base).parse() {
        resp.headers_mut().insert("Content-Location", v);
    }
    Ok(Answer::Http(resp))
}

/// The kick-off as the manifest's `request` names it.
fn kick_off_url(base: &str, path: &str, params: &[(String, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    let query = query.finish();
    if query.is_empty() {
        format!("{base}/{path}")
    } else {
        format!("{base}/{path}?{query}")
    }
}

/// The status URL: 202 with `X-Progress` while the job runs, 200 with the manifest when it is
/// done, the job's error when it failed; not found for anyone but its owner.
pub async fn status(state: &AppState, ctx: &AccessContext, job: &str) -> Result<Answer, ApiError> {
    let resp = match state.exporter.status(ctx, job).await? {
        Status::InProgress { state: s, progress } => {
            let mut resp = json_response(
                StatusCode::ACCEPTED,
                serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
                    "severity": "information", "code": "informational",
                    "diagnostics": format!("export {}: {progress}", s.as_str())}]})
                .to_string()
                .into_bytes(),
            );
            let text: String = format!("{}: {progress}", s.as_str())
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(100)
                .collect();
            if let Ok(v) = text.parse() {
                resp.headers_mut().insert("X-Progress", v);
            }
            resp.headers_mut().insert(
                "Retry-After",
                hyper::header::HeaderValue::from_static(RETRY_AFTER),
            );
            resp
        }
        Status::Complete(manifest) => {
            let mut resp = Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json");
            if let Some(at) = manifest.expires_at {
                resp = resp.header(
                    "Expires",
                    httpdate::fmt_http_date(std::time::SystemTime::from(at)),
                );
            }
            resp.body(Full::new(Bytes::from(
                manifest.to_json(&state.base).to_string(),
            )))
            .unwrap_or_default()
        }
        Status::Failed(reason) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", reason).into_response()
        }
    };
    Ok(Answer::Http(resp))
}

/// `DELETE` on the status URL: 202, the job and its files go.
pub async fn cancel(state: &AppState, ctx: &AccessContext, job: &str) -> Result<Answer, ApiError> {
    state.exporter.cancel(ctx, job).await?;
    let body = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational",
        "diagnostics": "export job cancelled; its files are removed"}]});
    Ok(Answer::Http(json_response(
        StatusCode::ACCEPTED,
        body.to_string().into_bytes(),
    )))
}

/// `GET _export/[job]/[file]` under `/fhir`, if this is one: the job's and file's names.
pub fn file_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/fhir/_export/")?;
    let (job, file) = rest.split_once('/')?;
    (!job.is_empty() && !file.is_empty() && !file.contains('/')).then_some((job, file))
}

/// A download: the bearer token of the job's owner, then the file's NDJSON streamed as the core
/// opens each sealed chunk (memory holds a few chunks, whatever the file's size).
pub async fn download(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    job: &str,
    file: &str,
) -> Result<Response<crate::Body>, ApiError> {
    let ctx = crate::oauth::authenticate(state, req.headers(), peer).await?;
    let download = state.exporter.open_file(&ctx, job, file).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/fhir+ndjson")
        .header("Content-Length", download.bytes.to_string())
        .body(http_body_util::Either::Right(crate::stream::Chunks::new(
            None,
            download.chunks,
        )))
        .map_err(|_| ApiError::not_found("no such export file"))
}

/// Only so an error before the first byte is answered like any other.
pub fn refused(e: ApiError) -> Response<crate::Body> {
    let resp: HttpResponse = e.into_response();
    resp.map(http_body_util::Either::Left)
}
