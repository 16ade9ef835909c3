//! The one place errors become HTTP: every client-facing OperationOutcome is built here, and backend
//! detail (SQL, key-provider messages, stack traces, PHI) never reaches the client.
//!
//! | core error                         | status | issue code     |
//! |------------------------------------|--------|----------------|
//! | NotFound                           | 404    | not-found      |
//! | Gone (deleted)                     | 410    | deleted        |
//! | Invalid (R4 validation)            | 400    | invalid / structure |
//! | VersionConflict (If-Match)         | 412    | conflict       |
//! | PreconditionFailed                 | 412    | duplicate      |
//! | Conflict (concurrent create)       | 409    | conflict       |
//! | Unsupported                        | 400    | not-supported  |
//! | BadRequest (a search it cannot run) | 400   | invalid        |
//! | PatchFailed (JSON Patch won't apply) | 422  | processing     |
//! | Key (provider unavailable)         | 503 + Retry-After | transient |
//! | Integrity (sealed body won't open) | 500    | exception      |
//! | Audit / Database                   | 503 / 500 | transient / exception |
//! | Denied (scope, compartment write)  | 403    | forbidden      |
//! | (no or invalid bearer token)       | 401 + WWW-Authenticate | login |

use bytes::Bytes;
use carapace_core::access::Denied;
use carapace_core::fhir::validate::Issue;
use carapace_core::keys::KeyError;
use carapace_core::sqlx;
use carapace_core::store::StoreError;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

pub type HttpResponse = Response<Full<Bytes>>;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

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

    pub fn into_response(self) -> HttpResponse {
        let issues: Vec<serde_json::Value> = if self.issues.is_empty() {
            vec![json!({"severity": "error", "code": self.code, "diagnostics": self.message})]
        } else {
            self.issues
                .iter()
                .map(|i| {
                    let mut issue = json!({"severity": "error", "code": self.code,
                                           "diagnostics": i.message});
                    if !i.path.is_empty() {
                        issue["expression"] = json!([i.path]);
                    }
                    issue
                })
                .collect()
        };
        let body = json!({"resourceType": "OperationOutcome", "issue": issues});
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
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
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
            e @ StoreError::VersionConflict { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "conflict", e.to_string())
            }
            StoreError::PreconditionFailed(m) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "duplicate", m)
            }
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Unsupported(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "not-supported", m)
            }
            StoreError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", m),
            StoreError::PatchFailed(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", m)
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

fn database_error(e: sqlx::Error) -> ApiError {
    // The text of a database error can carry SQL or values: log it, never send it.
    tracing::error!(error = %e, "database error");
    match e {
        // Row-level security or a revoked privilege refused what the store's own checks let
        // through: the backstop held. Refused, not an internal error.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the database refused this access",
        ),
        // Class 22 (data exception: a NUL or an unencodable character in text, a number out of
        // range) comes from a value the client sent that a check above the database missed: a
        // bad request, never an internal error.
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
            ApiError::bad_request("a value in the request cannot be stored or searched for")
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the database is unavailable; retry shortly",
            )
        },
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "an internal database error occurred",
        ),
    }
}
