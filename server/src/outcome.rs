//! The one place errors become HTTP: every client-facing OperationOutcome is built here, and backend
//! detail (SQL, key-provider messages, stack traces, PHI) never reaches the client.
//!
//! | core error                         | status | issue code     |
//! |------------------------------------|--------|----------------|
//! | NotFound                           | 404    | not-found      |
//! | Gone (deleted) / Erased             | 410    | deleted        |
//! | Invalid (R4 validation)            | 400    | invalid / structure |
//! | Unresolved (referential integrity) | 400    | not-found      |
//! | VersionConflict (If-Match)         | 412    | conflict       |
//! | PreconditionFailed                 | 412    | duplicate      |
//! | Conflict (concurrent create)       | 409    | conflict       |
//! | Unsupported                        | 400    | not-supported  |
//! | BadRequest (a search it cannot run) | 400   | invalid        |
//! | PatchFailed (JSON Patch won't apply) | 422  | processing     |
//! | Unprocessable (a Subscription it cannot serve) | 422 | business-rule + the issues |
//! | TooLarge (a Binary over its limit) | 413    | too-costly     |
//! | Key (provider unavailable)         | 503 + Retry-After | transient |
//! | Integrity (sealed body won't open) | 500    | exception      |
//! | Audit (the trail cannot be written) | 503 + Retry-After | transient |
//! | Database: away (`DbFailure::Unavailable`) | 503 + Retry-After | transient |
//! | Database: refused / bad value / defect | 403 / 400 / 500 | forbidden / invalid / exception |
//! | Denied (scope, compartment write)  | 403    | forbidden      |
//! | (no or invalid bearer token)       | 401 + WWW-Authenticate | login |
//! | (token lookup: database away)      | 503 + Retry-After | transient |
//! | (URL, header limits; hyper's own)  | 414 / 431 / 400 | too-costly / structure |
//! | (Content-Encoding not identity)    | 415    | not-supported  |
//! | (CORS preflight, unlisted origin)  | 403    | forbidden      |

use bytes::Bytes;
use carapace_core::access::Denied;
use carapace_core::crypto::keys::KeyError;
use carapace_core::db::{self, DbError, DbFailure};
use carapace_core::fhir::validate::Issue;
use carapace_core::store::StoreError;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

pub type HttpResponse = Response<Full<Bytes>>;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

/// An error ready to be sent: status, FHIR issue code, a message safe for the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub issues: Vec<Issue>,
    pub retry_after: Option<u32>,
    pub www_authenticate: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            issues: Vec::new(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// The OperationOutcome, as JSON bytes.
    pub fn body(&self) -> Vec<u8> {
        let issues: Vec<serde_json::Value> = if self.issues.is_empty() {
            vec![json!({"severity": "error", "code": self.code, "diagnostics": self.message})]
        } else {
            self.issues.iter().map(Issue::to_json).collect()
        };
        json!({"resourceType": "OperationOutcome", "issue": issues})
            .to_string()
            .into_bytes()
    }

    pub fn into_response(self) -> HttpResponse {
        let body = self.body();
        let mut builder = Response::builder()
            .status(self.status)
            .header("Content-Type", FHIR_JSON);
        if let Some(challenge) = &self.www_authenticate {
            builder = builder.header("WWW-Authenticate", challenge);
        }
        if let Some(secs) = self.retry_after {
            builder = builder.header("Retry-After", secs.to_string());
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

/// What hyper refused by itself, before any handler saw the request (see `edge::Refusals`):
/// only the status is known.
pub fn refused_by_http_layer(status: StatusCode) -> ApiError {
    let message = match status {
        StatusCode::URI_TOO_LONG => {
            "the URL is too long (send long searches as POST [type]/_search)"
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request header fields are too large or too many"
        }
        _ => "the request could not be parsed as HTTP",
    };
    let code = if status == StatusCode::BAD_REQUEST {
        "structure"
    } else {
        "too-costly"
    };
    ApiError::new(status, code, message)
}

/// The bearer token could not be looked up: the database did not answer. Not a 401, which would
/// tell the client to throw its valid token away; a 503 it retries.
pub fn token_lookup_failed(e: DbError) -> ApiError {
    tracing::error!(error = %e, "token lookup failed");
    unavailable("the access token could not be checked: the database is unavailable; retry shortly")
}

fn unavailable(message: &str) -> ApiError {
    ApiError {
        retry_after: Some(5),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} is not known")),
            StoreError::Gone { resource, .. } => ApiError::new(
                StatusCode::GONE,
                "deleted",
                format!("{resource} was deleted"),
            ),
            StoreError::Invalid(issues) => ApiError {
                issues,
                ..ApiError::bad_request("the resource is not valid R4")
            },
            StoreError::Unresolved(issues) => ApiError {
                issues,
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not-found",
                    "the resource refers to resources this server does not have",
                )
            },
            e @ StoreError::VersionConflict { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "conflict", e.to_string())
            }
            StoreError::PreconditionFailed(m) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "duplicate", m)
            }
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ StoreError::Erased(_) => ApiError::new(StatusCode::GONE, "deleted", e.to_string()),
            StoreError::Unsupported(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "not-supported", m)
            }
            StoreError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
            StoreError::PatchFailed(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", m)
            }
            StoreError::Unprocessable(issues) => ApiError {
                issues,
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "business-rule",
                    "the server cannot act on this resource as written",
                )
            },
            StoreError::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", m)
            }
            StoreError::Key(KeyError::Unavailable(detail)) => {
                tracing::warn!(%detail, "key provider unavailable");
                ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the key service is unavailable; retry shortly",
                    )
                }
            }
            StoreError::Key(other) => {
                tracing::error!(error = %other, "key provider error");
                ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the key service could not serve this request; retry shortly",
                    )
                }
            }
            StoreError::Integrity => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "a stored resource failed its integrity check; the incident has been logged",
            ),
            StoreError::Audit(e) => {
                tracing::error!(error = %e, "audit failure");
                ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the audit trail is unavailable; nothing was served",
                    )
                }
            }
            StoreError::Database(e) => database_error(e),
            StoreError::Denied(Denied::Hidden) => ApiError::not_found("the resource is not known"),
            StoreError::Denied(d) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.to_string())
            }
        }
    }
}

fn database_error(e: DbError) -> ApiError {
    // The text of a database error can carry SQL or values: log it, never send it.
    tracing::error!(error = %e, "database error");
    match db::failure(&e) {
        // Row-level security or a revoked privilege refused what the store's own checks let
        // through: the backstop held. Refused, not an internal error.
        DbFailure::Refused => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the database refused this access",
        ),
        // A value the client sent that a check above the database missed: a bad request,
        // never an internal error.
        DbFailure::BadValue => {
            ApiError::bad_request("a value in the request cannot be stored or searched for")
        }
        DbFailure::Unavailable => unavailable("the database is unavailable; retry shortly"),
        DbFailure::Internal => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "an internal database error occurred",
        ),
    }
}

impl From<carapace_core::export::ExportError> for ApiError {
    fn from(e: carapace_core::export::ExportError) -> ApiError {
        use carapace_core::export::ExportError as E;
        match e {
            E::BadRequest(b) => ApiError::bad_request(b.0),
            E::Denied(d) => StoreError::Denied(d).into(),
            E::NotFound => ApiError::not_found("no such export job or file"),
            E::TooMany(m) => ApiError {
                retry_after: Some(30),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", m)
            },
            E::Store(s) => s.into(),
            E::Storage(io) => {
                tracing::error!(error = %io, "export storage failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "the export storage failed; the incident has been logged",
                )
            }
        }
    }
}
