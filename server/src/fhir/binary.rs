//! `Binary` over REST as R4 `binary.html` has it: a create or update whose body is the document
//! itself (any media type but FHIR's own; `X-Security-Context` names what it belongs to), and a
//! read that answers the document's bytes with its own `Content-Type` when the client asks for it
//! (`Accept` of that type, `*/*`, or none), with `Range` for a part. Both stream: the body goes to
//! the core as it arrives, and the core's chunks go out as they are opened. The FHIR-JSON form
//! (`Accept: application/fhir+json`, `_format=json`) is the ordinary read, with `data`.

use super::answer::{etag, Answer};
use super::intake::{self, RESOURCE_MEDIA_TYPES};
use crate::outcome::ApiError;
use crate::stream::Chunks;
use crate::AppState;
use carapace_core::access::AccessContext;
use carapace_core::fhir::ResourceId;
use carapace_core::store::{Content, Created, OpenBinary};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

/// Is this create or update's body a document (not a FHIR resource)?
pub fn is_raw_upload(headers: &HeaderMap) -> bool {
    match intake::media_type(headers) {
        // `application/xml` and `text/xml` are documents here; FHIR XML says so.
        Some(t) => !RESOURCE_MEDIA_TYPES.contains(&t.as_str()) || is_plain_xml(&t),
        None => false,
    }
}

/// Does this read ask for the document's bytes rather than the Binary resource? `_format`, or an
/// `Accept` naming a FHIR type (JSON, or `application/fhir+xml`), asks for the resource; anything else, or no `Accept`, for
/// the bytes (negotiated against the document's type once it is known).
pub fn wants_raw(headers: &HeaderMap, params: &[(String, String)]) -> bool {
    if params.iter().any(|(k, _)| k == "_format") {
        return false;
    }
    let Some(accept) = headers.get("accept").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    !accept_items(accept).any(|m| {
        m == "application/json"
            || m == "application/fhir+json"
            || m.ends_with("+json")
            || m == "application/fhir+xml"
    })
}

/// XML that does not say it is FHIR: a Binary's document, not the Binary resource.
fn is_plain_xml(media: &str) -> bool {
    media == "application/xml" || media == "text/xml"
}

/// A raw create: the Binary is built from the headers, its content streamed from the body.
pub async fn create(
    state: &AppState,
    ctx: &AccessContext,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Answer, ApiError> {
    let binary = binary_of(headers, None)?;
    let content = content_of(state, headers, body)?;
    let created = state.store.create_binary(ctx, binary, content).await?;
    Ok(match created {
        Created::New(r) => Answer::written(r, true),
        Created::Existing(r) => Answer::written(r, false),
    })
}

/// A raw update of `Binary/<id>` (conditional on `If-Match` when sent).
pub async fn update(
    state: &AppState,
    ctx: &AccessContext,
    id: &ResourceId,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Answer, ApiError> {
    let binary = binary_of(headers, Some(id))?;
    let if_match = intake::if_match(headers)?;
    let content = content_of(state, headers, body)?;
    let updated = state
        .store
        .update_binary(ctx, id, binary, if_match, content)
        .await?;
    Ok(Answer::written(updated.resource, updated.created))
}

/// A raw read (`version` for a vread): the document with its own media type, whole or the
/// `Range` asked for.
pub async fn read(
    state: &AppState,
    ctx: &AccessContext,
    id: &ResourceId,
    version: Option<i64>,
    headers: &HeaderMap,
) -> Result<Response<crate::Body>, ApiError> {
    let open = state.store.open_binary(ctx, id, version).await?;
    if let Some(accept) = headers.get("accept").and_then(|v| v.to_str().ok()) {
        if !accepts(accept, &open.content_type) {
            return Err(ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                format!(
                    "this Binary is {}; ask for it with Accept: {}, */* or application/fhir+json",
                    open.content_type, open.content_type
                ),
            ));
        }
    }
    let size = open.size();
    let range = match headers.get("range").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(raw) => match byte_range(raw, size) {
            Range::Whole => None,
            Range::Part(start, end) => Some((start, end)),
            Range::Unsatisfiable => {
                let mut e = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "too-costly",
                    format!("the range is outside the content's {size} bytes"),
                )
                .into_response()
                .map(http_body_util::Either::Left);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    e.headers_mut().insert("content-range", v);
                }
                return Ok(e);
            }
        },
    };
    let head = Head::of(&open);
    let mut chunks = open.stream(state.store.clone(), range);
    // The first piece is awaited before the status is sent: a content that fails at once (a
    // one-chunk document always) is answered as the error it is, not as a 200 cut short.
    let first = match chunks.recv().await {
        Some(Ok(piece)) => Some(piece),
        Some(Err(_)) => {
            return Err(carapace_core::store::StoreError::Integrity.into());
        }
        None => None,
    };
    let (status, length) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start + 1),
        None => (StatusCode::OK, size),
    };
    let mut resp = Response::builder()
        .status(status)
        .header("Content-Type", head.content_type)
        .header("Content-Length", length.to_string())
        .header("ETag", etag(head.version_id))
        .header("Accept-Ranges", "bytes")
        // A stored document is the client's data, never this origin's page: no sniffing, no
        // script, saved rather than shown by a browser.
        .header("X-Content-Type-Options", "nosniff")
        .header("Content-Security-Policy", "default-src 'none'; sandbox")
        .header("Content-Disposition", "attachment");
    if let Some((start, end)) = range {
        resp = resp.header("Content-Range", format!("bytes {start}-{end}/{size}"));
    }
    resp.body(http_body_util::Either::Right(Chunks::new(first, chunks)))
        .map_err(|_| ApiError::bad_request("the content could not be served"))
}

/// What the response's head says, taken before the content streams.
struct Head {
    content_type: HeaderValue,
    version_id: i64,
}

impl Head {
    fn of(open: &OpenBinary) -> Head {
        Head {
            // Stored as a validated `code`; anything a header cannot carry is sent as bytes.
            content_type: HeaderValue::from_str(&open.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            version_id: open.resource.version_id,
        }
    }
}

/// The Binary a raw write describes: its media type and, from `X-Security-Context`, what it
/// belongs to.
fn binary_of(headers: &HeaderMap, id: Option<&ResourceId>) -> Result<serde_json::Value, ApiError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "a Binary's content needs its Content-Type",
            )
        })?;
    if intake::media_type(headers).as_deref() == Some("application/fhir+xml") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "resources are sent as application/fhir+json",
        ));
    }
    let mut binary = json!({"resourceType": "Binary", "contentType": content_type});
    if let Some(id) = id {
        binary["id"] = json!(id.as_str());
    }
    if let Some(context) = intake::header_str(headers, "x-security-context")? {
        binary["securityContext"] = json!({"reference": context.trim()});
    }
    Ok(binary)
}

/// The request body as the core's content stream, refused at once when its declared length is
/// over the limit (the core counts what actually arrives).
fn content_of(state: &AppState, headers: &HeaderMap, body: Incoming) -> Result<Content, ApiError> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.config.binary_limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!(
                "a Binary's content is limited to {} bytes (CARAPACE_BINARY_LIMIT)",
                state.config.binary_limit
            ),
        ));
    }
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        loop {
            match body.frame().await {
                None => return None,
                Some(Err(e)) => return Some((Err(std::io::Error::other(e)), body)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), body));
                    }
                }
            }
        }
    });
    Ok(Content::Stream(stream.boxed()))
}

/// The media types of an `Accept`, lowercase, without parameters.
fn accept_items(accept: &str) -> impl Iterator<Item = String> + '_ {
    accept
        .split(',')
        .map(|item| {
            item.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty())
}

/// Does `accept` take `content_type` (exactly, by `type/*`, or `*/*`)?
fn accepts(accept: &str, content_type: &str) -> bool {
    let ours = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let major = ours.split('/').next().unwrap_or("");
    accept_items(accept).any(|m| m == "*/*" || m == ours || m == format!("{major}/*"))
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110 (`a-b`, `a-`, `-n`) within `size`. Several ranges, another
/// unit or a malformed header are answered with the whole content, as the RFC allows.
fn byte_range(raw: &str, size: u64) -> Range {
    let Some(spec) = raw.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (false, _) => {
            let Ok(start) = first.parse::<u64>() else {
                return Range::Whole;
            };
            let end = if last.is_empty() {
                size.saturating_sub(1)
            } else {
                match last.parse::<u64>() {
                    Ok(end) if end >= start => end.min(size.saturating_sub(1)),
                    _ => return Range::Whole,
                }
            };
            (start, end)
        }
        (true, false) => {
            let Ok(n) = last.parse::<u64>() else {
                return Range::Whole;
            };
            if n == 0 {
                return Range::Unsatisfiable;
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (true, true) => return Range::Whole,
    };
    if size == 0 || parsed.0 >= size {
        Range::Unsatisfiable
    } else {
        Range::Part(parsed.0, parsed.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-9", 100), Range::Part(0, 9));
        assert_eq!(byte_range("bytes=90-", 100), Range::Part(90, 99));
        assert_eq!(byte_range("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(byte_range("bytes=95-200", 100), Range::Part(95, 99));
        assert_eq!(byte_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(byte_range("items=0-1", 100), Range::Whole);
        assert_eq!(byte_range("bytes=9-3", 100), Range::Whole);
    }

    #[test]
    fn accept_negotiates_against_the_documents_type() {
        assert!(accepts("application/pdf", "application/pdf"));
        assert!(accepts("image/*", "image/png"));
        assert!(accepts("text/html, */*;q=0.1", "application/pdf"));
        assert!(!accepts("image/png", "application/pdf"));
        assert!(accepts("text/plain", "text/plain; charset=utf-8"));
    }
}
