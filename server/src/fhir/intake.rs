//! What a REST request brings besides its URL: content negotiation (`Accept`, `_format`: FHIR JSON
//! or XML), bodies (media type 415, size 413, FHIR XML converted to JSON, strict JSON 400) and the conditional headers (`If-Match`,
//! `If-None-Exist`, `Prefer`). Bundle entries carry the same conditions as fields
//! (see `bundle.rs`); both end up in the dispatcher's `Input`.

use crate::outcome::ApiError;
use crate::AppState;
use bytes::Bytes;
use carapace_core::fhir::validate::{Issue, IssueType};
use carapace_core::fhir::{json, xml};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::StatusCode;

/// The media types a resource (or Bundle) may be sent as: FHIR JSON, or FHIR XML (converted to
/// FHIR JSON as it is read, see [`read_body`]).
pub const RESOURCE_MEDIA_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/fhir+xml",
    "application/xml",
    "text/xml",
];

/// The media types of FHIR XML.
pub const XML_MEDIA_TYPES: &[&str] = &["application/fhir+xml", "application/xml", "text/xml"];

/// The format an answer is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

/// What the client asked to get back from a write (`Prefer: return=`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// `_format` (first) or `Accept`: FHIR JSON (also when neither says) or FHIR XML; 406 for anything
/// else. An `Accept` listing several is decided by its `q` values, the first of the best winning.
pub fn negotiate(headers: &HeaderMap, params: &[(String, String)]) -> Result<Format, ApiError> {
    let not_acceptable = || {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "this server answers FHIR JSON (application/fhir+json) or FHIR XML (application/fhir+xml)",
        )
    };
    if let Some((_, format)) = params.iter().find(|(k, _)| k == "_format") {
        // In a query a `+` is a space: `_format=application/fhir+xml` arrives as `fhir xml`.
        return match format.as_str() {
            "json" | "application/json" | "application/fhir+json" | "application/fhir json" => {
                Ok(Format::Json)
            }
            "xml"
            | "text/xml"
            | "application/xml"
            | "application/fhir+xml"
            | "application/fhir xml" => Ok(Format::Xml),
            _ => Err(not_acceptable()),
        };
    }
    let Some(accept) = headers.get("accept") else {
        return Ok(Format::Json);
    };
    let accept = accept.to_str().map_err(|_| not_acceptable())?;
    let mut best: Option<(f32, Format)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        let format = match media.as_str() {
            "" | "*/*" | "application/*" | "application/json" | "application/fhir+json" => {
                Format::Json
            }
            m if m.ends_with("+json") => Format::Json,
            m if XML_MEDIA_TYPES.contains(&m) => Format::Xml,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map(|(_, f)| f).ok_or_else(not_acceptable)
}

/// The format the answer to this request is written in (JSON when negotiation refuses it: a 406
/// is itself JSON).
pub fn answer_format(headers: &HeaderMap, query: Option<&str>) -> Format {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .filter(|(k, _)| k == "_format")
        .collect();
    negotiate(headers, &params).unwrap_or(Format::Json)
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
/// A FHIR XML body is converted to FHIR JSON here (400 naming the path when it is not FHIR XML),
/// so every path after this one (strict JSON, the validator) sees JSON only.
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
    let bytes = read_limited(body, state.config.body_limit, declared)
        .await?
        .ok_or_else(too_large)?;
    if content_type
        .as_deref()
        .is_some_and(|t| XML_MEDIA_TYPES.contains(&t))
    {
        return json_of_xml(&bytes);
    }
    Ok(bytes)
}

/// A FHIR XML body as the FHIR JSON the intake reads.
fn json_of_xml(bytes: &[u8]) -> Result<Bytes, ApiError> {
    let value = xml::to_json(bytes).map_err(|e| ApiError {
        issues: vec![Issue::error(
            IssueType::Structure,
            e.path,
            e.message.clone(),
        )],
        ..ApiError::new(StatusCode::BAD_REQUEST, "structure", e.message)
    })?;
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|_| ApiError::bad_request("the XML body could not be read"))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn format(accept: Option<&str>, format: Option<&str>) -> Option<Format> {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert("accept", a.parse().unwrap());
        }
        let params: Vec<(String, String)> = format
            .map(|f| vec![("_format".to_string(), f.to_string())])
            .unwrap_or_default();
        negotiate(&headers, &params).ok()
    }

    #[test]
    fn accept_and_format_choose_json_or_xml() {
        use Format::{Json, Xml};
        assert_eq!(format(None, None), Some(Json));
        assert_eq!(format(Some("*/*"), None), Some(Json));
        assert_eq!(format(Some("application/fhir+xml"), None), Some(Xml));
        assert_eq!(
            format(Some("application/fhir+xml; fhirVersion=4.0"), None),
            Some(Xml)
        );
        assert_eq!(format(Some("text/xml, application/json"), None), Some(Xml));
        assert_eq!(
            format(Some("application/json;q=0.5, application/xml;q=0.9"), None),
            Some(Xml)
        );
        assert_eq!(
            format(
                Some("application/fhir+xml;q=0, application/fhir+json"),
                None
            ),
            Some(Json)
        );
        // A browser's Accept: XML ranks above */*.
        assert_eq!(
            format(
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                None
            ),
            Some(Xml)
        );
        assert_eq!(format(Some("text/turtle"), None), None);
        assert_eq!(format(Some("application/fhir+xml;q=0"), None), None);
        // `_format` wins over Accept; a `+` in a query arrives as a space.
        assert_eq!(
            format(Some("application/fhir+xml"), Some("json")),
            Some(Json)
        );
        for xml in [
            "xml",
            "text/xml",
            "application/xml",
            "application/fhir+xml",
            "application/fhir xml",
        ] {
            assert_eq!(format(None, Some(xml)), Some(Xml), "{xml}");
        }
        assert_eq!(format(None, Some("turtle")), None);
    }
}
