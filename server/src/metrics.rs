//! `/metrics` in the OpenMetrics text format Prometheus scrapes (`prometheus-client`, the
//! Prometheus project's own Rust client: typed families, no global registry, no unsafe; the
//! `prometheus` crate is older and global, `metrics` + an exporter adds a facade we do not
//! need). Every label is one of a fixed set of words (an interaction's name, a status class, a
//! check's name): no id, name, URL or token ever becomes a label, so nothing here is PHI.
//!
//! The request families live here; the core's figures (data-key cache, key provider, audit
//! trail, pool, exports) are plain atomics and queries in the core, read at scrape time.
//!
//! Who may scrape (decided in [`scrape`]): the metrics listener (`CARAPACE_METRICS_LISTEN`,
//! loopback unless a token is set) answers anyone who reaches it, unless a token is set; the main
//! listener answers only with `CARAPACE_METRICS_TOKEN` (compared in constant time) and is a 404
//! without one configured, as if there were no such endpoint.

use crate::AppState;
use bytes::Bytes;
use carapace_core::meter::TimingsSnapshot;
use carapace_core::store::health::HealthReport;
use http_body_util::Full;
use hyper::{HeaderMap, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::cell::Cell;
use std::time::Duration;

/// A request's labels: what it was and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    interaction: &'static str,
    status: &'static str,
}

type Constructor = fn() -> Histogram;

/// The request counters and latency histograms, for the life of the process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, Constructor>,
}

/// Latency buckets in seconds: 0.5 ms (a cached read) to 30 s (a large transaction).
fn request_histogram() -> Histogram {
    Histogram::new([
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, Constructor>::new_with_constructor(
            request_histogram,
        );
        let mut registry = Registry::default();
        registry.register(
            "carapace_http_requests",
            "Requests answered, by interaction and status class",
            requests.clone(),
        );
        registry.register(
            "carapace_http_request_duration_seconds",
            "Time from a request's arrival to its response head (a streamed body's transfer \
             is not included), by interaction and status class",
            durations.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
        }
    }
}

impl Metrics {
    /// Count one answered request.
    pub fn observe(&self, interaction: &'static str, status: StatusCode, took: Duration) {
        let labels = RequestLabels {
            interaction,
            status: status_class(status),
        };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

tokio::task_local! {
    /// The interaction a request turned out to be, when only its handler can tell (a posted
    /// Bundle's type).
    static INTERACTION: Cell<&'static str>;
}

/// Run `serve` counting its request as `interaction` unless it says better ([`label_as`]).
pub async fn labelled<F: std::future::Future>(
    interaction: &'static str,
    serve: F,
) -> (F::Output, &'static str) {
    INTERACTION
        .scope(Cell::new(interaction), async {
            let out = serve.await;
            (out, INTERACTION.with(Cell::get))
        })
        .await
}

/// Name the current request's interaction (e.g. `transaction` for a posted Bundle).
pub fn label_as(interaction: &'static str) {
    let _ = INTERACTION.try_with(|c| c.set(interaction));
}

/// The interaction of a request outside `/fhir` (whose own are `fhir::interaction_name`'s).
pub fn endpoint_name(path: &str) -> &'static str {
    match path {
        "/livez" => "livez",
        "/readyz" => "readyz",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/auth/token" => "auth-token",
        "/auth/revoke" => "auth-revoke",
        "/auth/introspect" => "auth-introspect",
        "/auth/authorize" => "auth-authorize",
        "/auth/login" | "/auth/login/totp" => "auth-login",
        "/auth/consent" => "auth-consent",
        "/auth/logout" => "auth-logout",
        p if p.starts_with("/auth/") => "auth-other",
        _ => "other",
    }
}

/// `GET /metrics` on either listener: the text, or 404 (main listener, no token configured) or
/// 401 (token configured, not sent).
pub async fn scrape(
    state: &AppState,
    headers: &HeaderMap,
    on_metrics_listener: bool,
) -> Response<Full<Bytes>> {
    use carapace_core::secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    match &state.config.metrics.token {
        None if !on_metrics_listener => {
            return crate::outcome::ApiError::not_found("no such endpoint; the FHIR base is /fhir")
                .into_response()
        }
        None => {}
        Some(token) => {
            let sent = headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .unwrap_or("");
            let matches: bool = sent
                .as_bytes()
                .ct_eq(token.expose_secret().as_bytes())
                .into();
            if !matches {
                let mut resp = crate::outcome::ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "login",
                    "/metrics needs the metrics token (CARAPACE_METRICS_TOKEN) as a bearer token",
                )
                .into_response();
                resp.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer realm=\"carapace-metrics\""),
                );
                return resp;
            }
        }
    }
    let figures = Figures::gather(state).await;
    let mut text = String::new();
    let mut scratch = Registry::default();
    scratch.register_collector(Box::new(figures));
    let encoded =
        prometheus_client::encoding::text::encode_registry(&mut text, &state.metrics.registry)
            .and_then(|_| prometheus_client::encoding::text::encode_registry(&mut text, &scratch))
            .and_then(|_| prometheus_client::encoding::text::encode_eof(&mut text));
    if encoded.is_err() {
        return crate::outcome::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "the metrics could not be written",
        )
        .into_response();
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default()
}

/// The core's figures at one scrape.
#[derive(Debug)]
struct Figures {
    key_calls: u64,
    key_timings: Option<TimingsSnapshot>,
    dek_cached: usize,
    dek_hits: u64,
    dek_misses: u64,
    health: std::sync::Arc<HealthReport>,
    pool: carapace_core::store::health::PoolStats,
    bundle_slots: (usize, usize),
    exports: Option<(i64, i64)>,
    rate_limit_keys: [usize; 3],
    /// Searches the replica served, and those that went to the primary.
    replica_searches: (u64, u64),
    /// Bearer tokens answered from memory, and from the database.
    token_lookups: (u64, u64),
    /// Requests whose access-policy inputs were answered from memory, and from the database.
    policy_inputs: (u64, u64),
}

impl Figures {
    async fn gather(state: &AppState) -> Figures {
        let keys = state.store.keys();
        let (dek_hits, dek_misses) = state.store.dek_cache_hits_and_misses();
        let available = state.bundle_slots.available_permits();
        Figures {
            key_calls: keys.external_calls(),
            key_timings: keys.timings(),
            dek_cached: state.store.cached_keys(),
            dek_hits,
            dek_misses,
            // The readiness report (cached a second): the audit backlog, pool wait, disk.
            health: state.readiness.report().await,
            pool: state.store.pool_stats(),
            bundle_slots: (
                crate::BUNDLE_SLOTS.saturating_sub(available),
                crate::BUNDLE_SLOTS,
            ),
            exports: state.exporter.active_jobs().await.ok(),
            rate_limit_keys: state.limits.keys_held(),
            replica_searches: state.store.replica_searches(),
            token_lookups: state.tokens.counts(),
            policy_inputs: state.store.policy_inputs().counts(),
        }
    }
}

/// Write one unlabelled metric.
fn one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

/// Write one gauge with one label taking several values.
fn labelled_gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, V)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in values {
        let labels = [(label, *value)];
        let fam: MetricEncoder = m.encode_family(&labels)?;
        ConstGauge::new(*v).encode(fam)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    t: &TimingsSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(t.sum_seconds, t.count, &t.buckets, None)
}

fn seconds(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.health;
        one(
            &mut e,
            "carapace_key_provider_calls",
            "Calls made to the key service (Vault) since start",
            &ConstCounter::new(self.key_calls),
        )?;
        if let Some(t) = &self.key_timings {
            histogram(
                &mut e,
                "carapace_key_provider_call_duration_seconds",
                "Time the key service took to make, wrap, unwrap or check a key",
                t,
            )?;
            one(
                &mut e,
                "carapace_key_provider_failures",
                "Key service calls that failed",
                &ConstCounter::new(t.failures),
            )?;
        }
        one(
            &mut e,
            "carapace_dek_cache_entries",
            "Unwrapped data keys held in memory",
            &ConstGauge::new(i64::try_from(self.dek_cached).unwrap_or(i64::MAX)),
        )?;
        one(
            &mut e,
            "carapace_dek_cache_hits",
            "Data-key lookups answered from memory",
            &ConstCounter::new(self.dek_hits),
        )?;
        one(
            &mut e,
            "carapace_dek_cache_misses",
            "Data-key lookups that needed the database and the key service",
            &ConstCounter::new(self.dek_misses),
        )?;
        one(
            &mut e,
            "carapace_replica_searches",
            "Searches the streaming replica served (it had caught up)",
            &ConstCounter::new(self.replica_searches.0),
        )?;
        one(
            &mut e,
            "carapace_replica_fallbacks",
            "Searches that went to the primary: the replica was behind or failed",
            &ConstCounter::new(self.replica_searches.1),
        )?;
        one(
            &mut e,
            "carapace_token_cache_hits",
            "Bearer tokens answered from memory (verified before, nothing ended since)",
            &ConstCounter::new(self.token_lookups.0),
        )?;
        one(
            &mut e,
            "carapace_token_cache_misses",
            "Bearer tokens looked up in the database",
            &ConstCounter::new(self.token_lookups.1),
        )?;
        one(
            &mut e,
            "carapace_policy_cache_hits",
            "Practitioner and analytics requests whose actors and consents were answered from memory",
            &ConstCounter::new(self.policy_inputs.0),
        )?;
        one(
            &mut e,
            "carapace_policy_cache_misses",
            "Practitioner and analytics requests whose actors and consents were read from the database",
            &ConstCounter::new(self.policy_inputs.1),
        )?;
        if let Some(b) = &h.audit_backlog {
            one(
                &mut e,
                "carapace_audit_queue_depth",
                "Audit events committed and not yet linked into the chain",
                &ConstGauge::new(i64::try_from(b.unchained).unwrap_or(i64::MAX)),
            )?;
            one(
                &mut e,
                "carapace_audit_chain_lag_seconds",
                "Age of the oldest audit event not yet linked into the chain (0: none waits)",
                &ConstGauge::new(seconds(b.oldest)),
            )?;
        }
        one(
            &mut e,
            "carapace_audit_writer_queue",
            "Audit events waiting for the writer's next batch",
            &ConstGauge::new(i64::try_from(h.audit_queue.0).unwrap_or(i64::MAX)),
        )?;
        let in_use = i64::from(self.pool.size) - i64::try_from(self.pool.idle).unwrap_or(0);
        labelled_gauges(
            &mut e,
            "carapace_db_pool_connections",
            "Database connections open, in use and idle",
            "state",
            &[
                ("in_use", in_use.max(0)),
                ("idle", i64::try_from(self.pool.idle).unwrap_or(0)),
            ],
        )?;
        one(
            &mut e,
            "carapace_db_pool_max_connections",
            "The most database connections the pool opens (CARAPACE_DB_MAX_CONNECTIONS)",
            &ConstGauge::new(i64::from(self.pool.max)),
        )?;
        if h.pool_wait.is_some() {
            one(
                &mut e,
                "carapace_db_pool_acquire_wait_seconds",
                "How long the last readiness check waited for a pooled connection",
                &ConstGauge::new(seconds(h.pool_wait)),
            )?;
        }
        if let Some(free) = h.disk_free {
            one(
                &mut e,
                "carapace_data_dir_free_bytes",
                "Bytes free on the data directory's disk",
                &ConstGauge::new(i64::try_from(free).unwrap_or(i64::MAX)),
            )?;
        }
        let states: Vec<(&'static str, i64)> = h
            .checks()
            .iter()
            .map(|(name, state)| (*name, *state as i64))
            .collect();
        labelled_gauges(
            &mut e,
            "carapace_readiness_check",
            "Each readiness check: 0 ok, 1 degraded, 2 failing",
            "check",
            &states,
        )?;
        let (used, slots) = self.bundle_slots;
        one(
            &mut e,
            "carapace_bundle_slots_in_use",
            "Batch and transaction Bundles being processed",
            &ConstGauge::new(i64::try_from(used).unwrap_or(0)),
        )?;
        one(
            &mut e,
            "carapace_bundle_slots",
            "Batch and transaction Bundles processed at once at most",
            &ConstGauge::new(i64::try_from(slots).unwrap_or(0)),
        )?;
        if let Some((queued, running)) = self.exports {
            labelled_gauges(
                &mut e,
                "carapace_export_jobs",
                "Bulk Data export jobs waiting and running (all servers on this database)",
                "state",
                &[("queued", queued), ("running", running)],
            )?;
        }
        let [client, address, auth] = self.rate_limit_keys;
        labelled_gauges(
            &mut e,
            "carapace_rate_limit_keys",
            "Callers and addresses each rate limiter is tracking",
            "limit",
            &[
                ("client", i64::try_from(client).unwrap_or(0)),
                ("address", i64::try_from(address).unwrap_or(0)),
                ("auth", i64::try_from(auth).unwrap_or(0)),
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_interaction_and_status_class() {
        let m = Metrics::default();
        m.observe("read", StatusCode::OK, Duration::from_millis(2));
        m.observe("read", StatusCode::NOT_FOUND, Duration::from_millis(1));
        m.observe("read", StatusCode::OK, Duration::from_millis(3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        assert!(
            text.contains("carapace_http_requests_total{interaction=\"read\",status=\"2xx\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "carapace_http_request_duration_seconds_bucket{le=\"0.0025\",interaction=\"read\",status=\"2xx\"} 1"
        ), "{text}");
    }

    #[test]
    fn endpoints_outside_fhir_have_fixed_names() {
        assert_eq!(endpoint_name("/auth/token"), "auth-token");
        assert_eq!(endpoint_name("/auth/anything-else"), "auth-other");
        assert_eq!(endpoint_name("/Patient/123"), "other");
    }
}
