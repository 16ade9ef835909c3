//! What an interaction answers, and its two renderings: an HTTP response (REST) and a Bundle
//! entry's `response` (batch). Both come from the same [`Answer`], so a batch entry says what the
//! same request over REST would have said, without an HTTP response being built and read back.

use super::intake::{Format, Return};
use crate::outcome::{ApiError, HttpResponse, FHIR_JSON, FHIR_XML};
use crate::AppState;
use bytes::Bytes;
use carapace_core::store::{StoredResource, Written};
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, Either, Full};
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use serde_json::value::RawValue;

/// The result of one interaction.
pub enum Answer {
    /// A resource version (read, vread, create, update, patch); a 201 names its location.
    Resource {
        status: StatusCode,
        resource: StoredResource,
    },
    /// 304 to a read whose client holds this version already: its ETag and Last-Modified, no body.
    NotModified(StoredResource),
    /// 204; the version the delete wrote, if it deleted anything now.
    Deleted(Option<i64>),
    /// 200 with a JSON body built by the interaction (a Bundle, an OperationOutcome, …).
    Json(Vec<u8>),
    /// A response only REST gives (the Bulk Data kick-off and status): sent as it is.
    Http(HttpResponse),
}

impl Answer {
    /// 201 for a write that created the resource, 200 otherwise.
    pub fn written(resource: StoredResource, created: bool) -> Answer {
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Answer::Resource { status, resource }
    }

    /// The REST response; `ret` shapes a resource's body (`Prefer: return=`).
    pub fn into_response(self, state: &AppState, ret: Return) -> HttpResponse {
        match self {
            Answer::Resource { status, resource } => {
                resource_response(state, status, resource, ret)
            }
            Answer::NotModified(r) => Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("ETag", etag(r.version_id))
                .header("Last-Modified", http_date(r.last_updated))
                .body(Full::new(Bytes::new()))
                .unwrap_or_default(),
            Answer::Deleted(version) => {
                let mut resp = Response::builder().status(StatusCode::NO_CONTENT);
                if let Some(v) = version {
                    resp = resp.header("ETag", etag(v));
                }
                resp.body(Full::new(Bytes::new())).unwrap_or_default()
            }
            Answer::Json(body) => json_response(StatusCode::OK, body),
            Answer::Http(resp) => resp,
        }
    }

    /// The batch entry: the resource (or Bundle) and the response's status, ETag, last
    /// modification and, for a 201, location.
    pub fn into_entry(self, state: &AppState) -> Entry {
        match self {
            Answer::Resource { status, resource } => Entry {
                response: EntryResponse::written(status, &Written::from(&resource), state),
                resource: raw(resource.body),
            },
            Answer::NotModified(r) => Entry {
                response: EntryResponse::written(
                    StatusCode::NOT_MODIFIED,
                    &Written::from(&r),
                    state,
                ),
                resource: None,
            },
            Answer::Deleted(_) => Entry::status(StatusCode::NO_CONTENT),
            Answer::Json(body) => Entry {
                resource: raw(body),
                ..Entry::status(StatusCode::OK)
            },
            Answer::Http(resp) => Entry::status(resp.status()),
        }
    }
}

/// A JSON body that is already valid JSON (a stored resource, a Bundle just built), sent as is.
fn raw(body: Vec<u8>) -> Option<Box<RawValue>> {
    String::from_utf8(body)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
}

/// `Bundle.entry` of a batch or transaction response.
#[derive(serde::Serialize)]
pub struct Entry {
    pub response: EntryResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<RawValue>>,
}

/// `Bundle.entry.response`.
#[derive(serde::Serialize)]
pub struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(rename = "lastModified", skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Box<RawValue>>,
}

impl Entry {
    /// An entry with only a status.
    pub fn status(status: StatusCode) -> Entry {
        Entry {
            response: EntryResponse {
                status: status_line(status),
                etag: None,
                last_modified: None,
                location: None,
                outcome: None,
            },
            resource: None,
        }
    }

    /// A failed entry: its status and OperationOutcome.
    pub fn failed(e: &ApiError) -> Entry {
        let mut entry = Entry::status(e.status);
        entry.response.outcome = raw(e.body());
        entry
    }
}

impl EntryResponse {
    /// Where a write landed: its version's ETag and time, and its location when it was created.
    pub fn written(status: StatusCode, r: &Written, state: &AppState) -> EntryResponse {
        EntryResponse {
            status: status_line(status),
            etag: Some(etag(r.version_id)),
            last_modified: Some(r.last_updated.to_rfc3339_opts(SecondsFormat::Micros, true)),
            location: (status == StatusCode::CREATED).then(|| {
                format!(
                    "{}/{}/{}/_history/{}",
                    state.base, r.resource_type, r.id, r.version_id
                )
            }),
            outcome: None,
        }
    }
}

/// `201 Created`, as `Bundle.entry.response.status` writes it.
fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

pub fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

fn http_date(at: DateTime<Utc>) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::from(at))
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("Content-Type", FHIR_JSON)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// A resource version over REST: ETag, Last-Modified, Location for a 201, and the body asked for.
fn resource_response(
    state: &AppState,
    status: StatusCode,
    r: StoredResource,
    ret: Return,
) -> HttpResponse {
    let mut builder = Response::builder()
        .status(status)
        .header("ETag", etag(r.version_id))
        .header("Last-Modified", http_date(r.last_updated));
    if status == StatusCode::CREATED {
        let url = format!(
            "{}/{}/{}/_history/{}",
            state.base, r.resource_type, r.id, r.version_id
        );
        if let Ok(v) = HeaderValue::from_str(&url) {
            builder = builder.header("Location", v);
        }
    }
    let body = match ret {
        Return::Minimal => return builder.body(Full::new(Bytes::new())).unwrap_or_default(),
        Return::Representation => Bytes::from(r.body),
        Return::OperationOutcome => Bytes::from(
            serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "information", "code": "informational",
                "diagnostics": format!("{} version {} stored", r.reference(), r.version_id)}]})
            .to_string(),
        ),
    };
    builder
        .header("Content-Type", FHIR_JSON)
        .body(Full::new(body))
        .unwrap_or_default()
}

/// The response in the format negotiated (`intake::negotiate`): a FHIR JSON body — a resource, a
/// Bundle, an OperationOutcome, errors included — is written as FHIR XML when XML was asked for;
/// status and headers (ETag, Location…) stay. Streams (Binary content, export files) and JSON that
/// is not a FHIR resource (an export manifest) pass as they are. A resource with no XML form (a
/// character XML cannot carry) is answered in JSON, which its Content-Type says.
pub async fn in_format(format: Format, resp: Response<crate::Body>) -> Response<crate::Body> {
    let is_fhir_json = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v == FHIR_JSON);
    if format != Format::Xml || !is_fhir_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let full = match body {
        Either::Left(full) => full,
        streamed => return Response::from_parts(parts, streamed),
    };
    let bytes = match full.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let xml = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(|v| v.get("resourceType").is_some())
        .map(|v| carapace_core::fhir::xml::from_json(&v));
    let body = match xml {
        Some(Ok(xml)) => {
            parts.headers.insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static(FHIR_XML),
            );
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            Bytes::from(xml)
        }
        Some(Err(e)) => {
            tracing::warn!(path = %e.path, "an answer has no XML form; sent as JSON");
            bytes
        }
        None if bytes.is_empty() => {
            parts.headers.insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static(FHIR_XML),
            );
            bytes
        }
        None => bytes,
    };
    Response::from_parts(parts, Either::Left(Full::new(body)))
}
