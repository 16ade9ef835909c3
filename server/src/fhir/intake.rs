//! What a REST request brings besides its URL: content negotiation (`Accept`, `_format`), bodies
//! (media type 415, size 413, strict JSON 400) and the conditional headers (`If-Match`,
//! `If-None-Exist`, `Prefer`). Bundle entries carry the same conditions as fields
//! (see `bundle.rs`); both end up in the dispatcher's `Input`.

use crate::outcome::ApiError;
use crate::AppState;
use bytes::Bytes;
use carapace_core::fhir::json;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::StatusCode;

/// The media types a resource (or Bundle) may be sent as.
pub const RESOURCE_MEDIA_TYPES: &[&str] = &["application/fhir+json", "application/json"];

/// What the client asked to get back from a write (`Prefer: return=`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// Accept / `_format`: JSON only, 406 otherwise.
pub fn negotiate(headers: &HeaderMap, params: &[(String, String)]) -> Result<(), ApiError> {
    let not_acceptable = || {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "only JSON is supported (application/fhir+json)",
        )
    };
    if let Some((_, format)) = params.iter().find(|(k, _)| k == "_format") {
        return match format.as_str() {
            "json" | "application/json" | "application/fhir+json" => Ok(()),
            _ => Err(not_acceptable()),
        };
    }
    let Some(accept) = headers.get("accept") else {
        return Ok(());
    };
    let accept = accept.to_str().map_err(|_| not_acceptable())?;
    let ok = accept.split(',').any(|item| {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*" | "application/*" | "application/json" | "application/fhir+json"
        ) || media.ends_with("+json")
    });
    if ok {
        Ok(())
    } else {
        Err(not_acceptable())
    }
}

/// Read, parse and check a request body: JSON media type (415), size limit (413), strict JSON (400).
pub async fn read_resource(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(state, headers, body, RESOURCE_MEDIA_TYPES).await?;
    resource_of(&bytes)
}

/// A body that must be one resource: a JSON object.
pub fn resource_of(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value =
        json::parse(bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "structure", e.0))?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "a resource must be a JSON object",
        ));
    }
    Ok(value)
}

/// Read a JSON body of one of the `accepted` media types (415 otherwise), within the body limit.
pub async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
    accepted: &[&str],
) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(state, headers, body, accepted).await?;
    json::parse(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "structure", e.0))
}

/// Read a body of one of the `accepted` media types (415 otherwise), within the body limit (413).
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
    accepted: &[&str],
) -> Result<Bytes, ApiError> {
    let content_type = media_type(headers);
    if !content_type
        .as_deref()
        .is_some_and(|t| accepted.contains(&t))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("send {}", accepted.join(" or ")),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!(
                "request body exceeds the limit of {} bytes",
                state.config.body_limit
            ),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    read_limited(body, state.config.body_limit, declared)
        .await?
        .ok_or_else(too_large)
}

/// The media type of `Content-Type`, lowercase, without parameters; `None` when absent or empty.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
}

/// Read at most `limit` bytes of body. Past the limit, keep reading and discarding (up to a bound)
/// so the client gets its 413 instead of a reset connection; memory never grows past `limit`.
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
) -> Result<Option<Bytes>, ApiError> {
    const DRAIN_MAX: u64 = 128 * 1024 * 1024;
    let unreadable = || ApiError::bad_request("the request body could not be read");
    let mut buf = bytes::BytesMut::new();
    let mut over = declared.is_some_and(|len| len > limit as u64);
    if over && declared.is_some_and(|len| len > DRAIN_MAX) {
        return Ok(None);
    }
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| unreadable())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if over || buf.len() + data.len() > limit {
            over = true;
            buf = bytes::BytesMut::new();
            if seen > DRAIN_MAX {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    Ok(if over { None } else { Some(buf.freeze()) })
}

/// A header as text, if sent; 400 naming it if it is not text.
pub fn header_str(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request(format!("{name} is not valid text")))
        })
        .transpose()
}

/// A version ETag (`W/"3"` or `"3"`) → 3; `None` if it is not one.
pub fn version_tag(tag: &str) -> Option<i64> {
    tag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// `If-Match: W/"3"` (or `"3"`) → 3.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = header_str(headers, "if-match")? else {
        return Ok(None);
    };
    version_tag(&raw)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("If-Match must be a version ETag such as W/\"3\""))
}

/// A read's conditions on what the client already holds (`If-None-Match`, `If-Modified-Since`;
/// `Bundle.entry.request.ifNoneMatch` and `ifModifiedSince`): when they hold, the read answers
/// 304 with no body — after the read itself, so the gate and the audit are the same as for a 200.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// The entity tags of `If-None-Match` (`*`: any).
    none_match: Option<Vec<String>>,
    modified_since: Option<std::time::SystemTime>,
}

impl Freshness {
    pub fn of(headers: &HeaderMap) -> Freshness {
        let text = |name: &str| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        Freshness::from_texts(
            text("if-none-match").as_deref(),
            text("if-modified-since").as_deref(),
        )
    }

    /// The conditions as texts: a list of entity tags, and an HTTP date (RFC 9110). A date
    /// that does not parse is no condition, as RFC 9110 §13.1.3 has it; an instant
    /// (`2024-01-02T03:04:05Z`, as a Bundle entry may carry) is taken too.
    pub fn from_texts(none_match: Option<&str>, modified_since: Option<&str>) -> Freshness {
        Freshness {
            none_match: none_match.map(|tags| {
                tags.split(',')
                    .map(|t| t.trim().trim_start_matches("W/").to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            }),
            modified_since: modified_since.and_then(|d| {
                httpdate::parse_http_date(d.trim()).ok().or_else(|| {
                    chrono::DateTime::parse_from_rfc3339(d.trim())
                        .ok()
                        .map(std::time::SystemTime::from)
                })
            }),
        }
    }

    /// Does the client hold this version already? `If-None-Match` decides when it is sent
    /// (weak comparison: `W/"3"` and `"3"` are the same version); `If-Modified-Since`
    /// otherwise, to the second (an HTTP date has no finer grain).
    pub fn unchanged(&self, version_id: i64, last_updated: chrono::DateTime<chrono::Utc>) -> bool {
        if let Some(tags) = &self.none_match {
            let ours = format!("\"{version_id}\"");
            return tags.iter().any(|t| t == "*" || *t == ours);
        }
        match self.modified_since {
            Some(since) => {
                last_updated.timestamp() <= chrono::DateTime::<chrono::Utc>::from(since).timestamp()
            }
            None => false,
        }
    }
}

/// `Prefer: return=…`; the full resource unless asked otherwise.
pub fn prefer(headers: &HeaderMap) -> Return {
    let Some(prefer) = headers.get("prefer").and_then(|v| v.to_str().ok()) else {
        return Return::Representation;
    };
    for part in prefer.split([',', ';']) {
        match part.trim() {
            "return=minimal" => return Return::Minimal,
            "return=OperationOutcome" => return Return::OperationOutcome,
            "return=representation" => return Return::Representation,
            _ => {}
        }
    }
    Return::Representation
}

/// `Prefer: handling=strict`: refuse unknown search parameters instead of ignoring them.
pub fn strict(headers: &HeaderMap) -> bool {
    headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split([',', ';']).any(|x| x.trim() == "handling=strict"))
}
