//! `/livez` and `/readyz`, for load balancers and orchestrators: no token, no PHI, and nothing
//! beyond each check's name and state (no versions, addresses or figures). The checks are the
//! core's (`Store::health`); this renders them, and caches the report for [`CACHE_FOR`] so that
//! probes, however many, cost the database and Vault at most one evaluation a second (one
//! evaluation at a time: concurrent probes wait for it and share its answer).

use bytes::Bytes;
use carapace_core::store::health::{HealthExpectations, HealthReport};
use carapace_core::store::Store;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one evaluation answers probes.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// The readiness checks and their last evaluation.
pub struct Readiness {
    store: Arc<Store>,
    expect: HealthExpectations,
    last: tokio::sync::Mutex<Option<(Instant, Arc<HealthReport>)>>,
}

impl Readiness {
    pub fn new(store: Arc<Store>, expect: HealthExpectations) -> Readiness {
        Readiness {
            store,
            expect,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The report at most [`CACHE_FOR`] old.
    pub async fn report(&self) -> Arc<HealthReport> {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return report.clone();
            }
        }
        let report = Arc::new(self.store.health(&self.expect).await);
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

/// The process is up and answering: nothing is checked (a database outage must not make an
/// orchestrator restart a server that will serve again once the database is back).
pub fn livez() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({"status": "live"}))
}

/// The older probe, kept for the scripts that use it: `ok` once start-up is done, like `/livez`.
pub fn healthz() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// 200 when every check passes or is degraded, 503 when one fails; the body names each check's
/// state.
pub async fn readyz(readiness: &Readiness) -> Response<Full<Bytes>> {
    let report = readiness.report().await;
    let (status, word) = if report.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let checks: serde_json::Map<String, serde_json::Value> = report
        .checks()
        .iter()
        .map(|(name, state)| (name.to_string(), json!(state.as_str())))
        .collect();
    json_response(status, &json!({"status": word, "checks": checks}))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
