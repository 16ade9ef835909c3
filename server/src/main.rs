//! carapace-server: the FHIR R4 REST front of Carapace (hyper + tokio). HTTP only: everything else is
//! in `carapace-core`.

mod cors;
mod edge;
mod fhir;
mod health;
mod hooks;
mod limits;
mod login;
mod metrics;
mod oauth;
mod outcome;
mod stream;
mod tls;

use anyhow::Context;
use bytes::Bytes;
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::store::Store;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Every response's body: whole (almost all), or streamed (an export file's download).
pub type Body = http_body_util::Either<Full<Bytes>, stream::Chunks>;

/// Shared by every request.
pub struct AppState {
    pub config: Config,
    pub store: Arc<Store>,
    /// The FHIR base URL, without a trailing slash.
    pub base: String,
    /// Request counts and latencies (`/metrics`).
    pub metrics: metrics::Metrics,
    /// The rate limits (`CARAPACE_RATE_LIMIT_CLIENT`, `_ADDRESS`, `_AUTH`).
    pub limits: limits::Limits,
    /// The readiness checks, cached a second (`/readyz`, and the figures `/metrics` shows).
    pub readiness: health::Readiness,
    /// Batch and transaction Bundles are processed [`BUNDLE_SLOTS`] at a time (one per core):
    /// each holds its body and its sealed, indexed entries in memory (about three times the
    /// body), so memory stays bounded however many clients load at once.
    pub bundle_slots: tokio::sync::Semaphore,
    /// The origins browser apps may call from (`CARAPACE_CORS_ORIGINS`).
    pub cors: cors::Cors,
    /// Bulk Data export jobs (the core's runner, started with the server).
    pub exporter: Arc<carapace_core::export::Exporter>,
    /// Access tokens verified before, forgotten when any may have ended.
    pub tokens: Arc<carapace_core::identity::tokens::TokenCache>,
}

/// Bundles processed at once (see [`AppState::bundle_slots`]).
pub const BUNDLE_SLOTS: usize = 2;

/// `--help`: the usage and every setting the server reads, from the core's one table of them.
fn help() -> String {
    use carapace_core::config::{ReadBy, Unset, SETTINGS};
    let mut out = format!(
        "carapace-server {}\nFHIR R4 server with encryption at rest.\n\n\
         Usage: carapace-server                 serve, configured by the environment below\n       \
         carapace-server --help          this text\n       \
         carapace-server --config-table  the settings as README.md's Markdown table\n\n\
         Configuration (environment variables; empty counts as unset):\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in SETTINGS.iter().filter(|s| s.read_by != ReadBy::Console) {
        let default = match s.unset {
            Unset::Value(v) => format!("default {v}"),
            Unset::Means(words) => format!("unset: {words}"),
            Unset::Nothing => "optional".into(),
        };
        let secret = if s.secret { ", secret" } else { "" };
        out.push_str(&format!("  {} ({default}{secret})\n", s.name));
        for line in wrap(&s.meaning.replace('`', ""), 90) {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out.push_str(
        "\ncarapace-console reads the same configuration (give it the same CARAPACE_DATA_DIR\n\
         or CARAPACE_DATABASE_URL), and its operator sign-in: carapace-console --help.\n",
    );
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().map(|l| l.chars().count()).unwrap_or(0);
        if last > 0 && last + 1 + word.chars().count() > width {
            lines.push(String::new());
        }
        if let Some(line) = lines.last_mut() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

fn main() -> anyhow::Result<()> {
    // glibc gives every thread its own malloc arena, and memory freed after a large Bundle stays
    // spread over them; two arenas keep resident memory bounded at no measurable cost here.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called first, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", help());
        return Ok(());
    }
    if args.iter().any(|a| a == "--config-table") {
        print!("{}", carapace_core::config::markdown_table());
        return Ok(());
    }
    if let Some(a) = args.first() {
        anyhow::bail!("unexpected argument '{a}' (configuration is by environment; see --help)");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let tls = match &config.tls {
        Some(t) => Some(tls::acceptor(t).context("loading the TLS certificate and key")?),
        None => None,
    };
    let core = Core::open(&config).await.context("opening the store")?;
    if core.cluster.is_some() {
        tracing::info!(data_dir = %config.data_dir.display(), "using the embedded PostgreSQL cluster (unix socket only)");
    }
    if core.embedded_keys {
        tracing::warn!(
            "DEVELOPMENT ONLY: no CARAPACE_VAULT_ADDR set, data keys are wrapped by a master key file in {}. \
             Use Vault transit in production.",
            config.data_dir.display()
        );
    }
    if let carapace_core::crypto::keys::KeyProvider::Vault(vault) = &*core.keys {
        // Token renewal is the server's job; the task runs for the life of the process.
        tokio::spawn(vault.clone().maintain_token());
    }
    // A de-identification rule set not run before goes into the audit trail: now, before the
    // first request — or, when the trail cannot be written yet (the key provider down at
    // start-up), as soon as it can.
    let server = carapace_core::access::AccessContext::operator("carapace-server");
    if let Err(e) = core.store.record_deid_rules(&server).await {
        tracing::warn!(error = %e, "recording the de-identification rules failed; retrying");
        let store = core.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                match store.record_deid_rules(&server).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "recording the de-identification rules failed; retrying")
                    }
                }
            }
        });
    }
    // AuditEvents commit with their data and are chained here, in the order they became visible,
    // within a second.
    let store = core.store.clone();
    tokio::spawn(async move {
        loop {
            let pause = match store.chain_audit().await {
                Ok(_) => std::time::Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, "chaining the audit trail failed; retrying");
                    std::time::Duration::from_secs(5)
                }
            };
            tokio::time::sleep(pause).await;
        }
    });
    // Resources indexed under an earlier index scheme are indexed again in the background.
    let store = core.store.clone();
    tokio::spawn(async move {
        match store.reindex_pending().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(resources = n, "search index rebuilt"),
            Err(e) => tracing::error!(error = %e, "rebuilding the search index failed"),
        }
    });
    // Patients' data keys written before per-patient KEKs get their own, so that erasing them
    // reaches backups too.
    let store = core.store.clone();
    tokio::spawn(async move {
        match store.adopt_patient_keks().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "patient data keys moved under their own KEKs"),
            Err(e) => {
                tracing::error!(error = %e, "moving patient data keys under their own KEKs failed")
            }
        }
    });
    // Retention: history past its time, then audit events past theirs (archived first), every
    // CARAPACE_RETENTION_INTERVAL seconds (0: never here).
    if config.retention.interval_seconds > 0 {
        let store = core.store.clone();
        let retention = config.retention.clone();
        let server = carapace_core::access::AccessContext::operator("carapace-server");
        tokio::spawn(async move {
            let every = std::time::Duration::from_secs(retention.interval_seconds);
            loop {
                tokio::time::sleep(every).await;
                match store.run_retention(&server, &retention, false).await {
                    Ok(report) => {
                        if report.history.total() > 0 || report.audit.archived > 0 {
                            tracing::info!(
                                versions = report.history.total(),
                                audit_events_archived = report.audit.archived,
                                audit_events_removed = report.audit.removed,
                                "retention run"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "retention run failed; next run retries"),
                }
            }
        });
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?,
        ),
        None => None,
    };
    let local = listener.local_addr()?;
    let mut config = config;
    if config.base_url.is_none() {
        config.listen = local;
    }
    let base = config.fhir_base();
    core.store.serve_at(&base);
    let exporter = carapace_core::export::Exporter::new(core.store.clone(), config.export.clone());
    exporter.start();
    // Subscriptions: match what is written, deliver the outbox (every node; each notification once).
    hooks::start(core.store.clone());
    core.follow_changes();
    let readiness = health::Readiness::new(
        core.store.clone(),
        carapace_core::store::health::HealthExpectations {
            migration: carapace_core::core::latest_migration(),
            data_dir: config.data_dir.clone(),
        },
    );
    let state = Arc::new(AppState {
        tokens: core.tokens.clone(),
        exporter,
        bundle_slots: tokio::sync::Semaphore::new(BUNDLE_SLOTS),
        cors: cors::Cors::new(config.cors_origins.clone()),
        base: base.clone(),
        store: core.store.clone(),
        metrics: metrics::Metrics::default(),
        limits: limits::Limits::new(config.rate_limits),
        readiness,
        config,
    });
    // Rate limiters forget callers and addresses idle long enough to be full again.
    let sweeping = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(limits::SWEEP_EVERY).await;
            sweeping.limits.sweep();
        }
    });
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "metrics listener (GET /metrics only)");
        tokio::spawn(serve_metrics(listener, state.clone()));
    }
    // One line on stdout for people and scripts: where the server is.
    println!("Carapace FHIR R4 server listening: {base}");
    println!("Try: curl -s {base}/metadata | head -c 300");
    if !carapace_core::identity::users::admin_exists(&core.store)
        .await
        .unwrap_or(true)
    {
        // First start: how to get in. The console reads the same CARAPACE_* settings.
        let console = "cargo run --release -p carapace-console --";
        println!(
            "\nNo administrator yet. Create one (prints a TOTP enrolment URI for your authenticator app):\n  \
             echo 'choose-a-long-passphrase' | {console} bootstrap-admin --username admin --password-stdin\n\
             Then get a 5-minute access token and read the API with it:\n  \
             export TOKEN=$(CARAPACE_OPERATOR=admin CARAPACE_OPERATOR_PASSWORD='choose-a-long-passphrase' \
             CARAPACE_OPERATOR_TOTP=<6-digit code> {console} login)\n  \
             export BASE={base}\n  \
             curl -s -H \"Authorization: Bearer $TOKEN\" \"$BASE/Patient/_history\"\n\
             EHR systems register as SMART backend clients: {console} client register --help"
        );
    }
    tracing::info!(%base, key_provider = %core.keys.describe(), "ready");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(dispatch(state, req, peer).await) }
                });
                match &tls {
                    None => {
                        let conn = builder()
                            .serve_connection_with_upgrades(
                                TokioIo::new(edge::Refusals::new(stream)),
                                service,
                            )
                            .into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move { let _ = conn.await; });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            match acceptor.accept(stream).await {
                                Ok(tls_stream) => {
                                    let conn = builder()
                                        .serve_connection_with_upgrades(
                                            TokioIo::new(edge::Refusals::new(tls_stream)),
                                            service,
                                        )
                                        .into_owned();
                                    let _ = watcher.watch(conn).await;
                                }
                                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
    // Running exports stop here (another start runs them again); the pool can then close.
    state.exporter.stop();
    drop(state);
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP/1 and HTTP/2 connection settings: heads up to hyper's limits (see `edge`) reach the
/// handlers, which refuse past the server's own, smaller limits with an OperationOutcome.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(edge::HYPER_MAX_BUF_BYTES);
    // HTTP/2 refuses a header list past this by itself (a stream reset): the same bound.
    builder
        .http2()
        .max_header_list_size(u32::try_from(edge::HYPER_MAX_BUF_BYTES).unwrap_or(u32::MAX));
    builder
}

/// The client's address as the audit trail records it: the connection's peer, unless the peer is a
/// trusted proxy; then the nearest address in `X-Forwarded-For` that is not a trusted proxy (the
/// entries to its left are the client's own word and are not believed).
fn client_address(
    trusted: &[ipnet::IpNet],
    peer: std::net::IpAddr,
    headers: &hyper::HeaderMap,
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<std::net::IpAddr> = match headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<_>>>()
    {
        Some(values) => {
            let hops: Option<Vec<_>> = values
                .iter()
                .flat_map(|v| v.split(','))
                .map(|hop| hop.trim().parse().ok())
                .collect();
            // A malformed header is not believed at all.
            hops.unwrap_or_default()
        }
        None => vec![],
    };
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// The metrics listener (`CARAPACE_METRICS_LISTEN`): plain HTTP/1 and 2, `GET /metrics` only.
async fn serve_metrics(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move {
                let resp = match (req.method(), req.uri().path()) {
                    (&hyper::Method::GET, "/metrics") => {
                        metrics::scrape(&state, req.headers(), true).await
                    }
                    _ => outcome::ApiError::not_found("this listener serves GET /metrics only")
                        .into_response(),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let _ = builder()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Probes (load balancers, scrapers) are not rate limited: they are cheap (readiness is cached)
/// and a throttled probe would take a healthy node out of service.
fn is_probe(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz" | "/metrics")
}

/// Every request: counted by interaction and status class, and timed to its response head.
async fn dispatch(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path();
    let name = match path.strip_prefix("/fhir") {
        _ if fhir::export::file_path(path).is_some() => "export-download",
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            fhir::interaction_name(req.method().as_str(), rest, req.uri().query().unwrap_or(""))
        }
        _ => metrics::endpoint_name(path),
    };
    let (resp, name) = metrics::labelled(name, serve(state.clone(), req, peer)).await;
    state
        .metrics
        .observe(name, resp.status(), started.elapsed());
    resp
}

async fn serve(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let peer = SocketAddr::new(
        client_address(&state.config.trusted_proxies, peer.ip(), req.headers()),
        peer.port(),
    );
    let path = req.uri().path().to_string();
    // Every request passes the edge (limits, encoding), its address's rate limits and CORS
    // here, whatever it is for.
    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
    let admitted = edge::check(req.uri(), req.headers()).and_then(|()| {
        if is_probe(&path) {
            Ok(())
        } else {
            state.limits.check_address(peer.ip(), &path)
        }
    });
    let mut resp = match admitted {
        Err(e) => e.into_response().map(http_body_util::Either::Left),
        Ok(()) => match state.cors.preflight(req.method(), &path, req.headers()) {
            Some(answer) => answer.map(http_body_util::Either::Left),
            None => match fhir::export::file_path(&path) {
                // An export file streams; everything else is answered whole.
                Some((job, file)) if req.method() == hyper::Method::GET => {
                    let (job, file) = (job.to_string(), file.to_string());
                    fhir::export::download(&state, req, peer, &job, &file)
                        .await
                        .unwrap_or_else(fhir::export::refused)
                }
                _ => route(state.clone(), req, peer, &path).await,
            },
        },
    };
    state.cors.decorate(&path, origin.as_ref(), &mut resp);
    // Every answer may carry PHI or a token: no cache (a browser's, a proxy's) keeps it.
    if !resp.headers().contains_key(hyper::header::CACHE_CONTROL) {
        resp.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    path: &str,
) -> Response<Body> {
    if path == "/fhir" || path.starts_with("/fhir/") {
        return fhir::handle(state, req, peer).await;
    }
    route_other(state, req, peer, path)
        .await
        .map(http_body_util::Either::Left)
}

async fn route_other(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    path: &str,
) -> Response<Full<Bytes>> {
    if path.starts_with("/auth/") {
        let changes = req.method() == hyper::Method::POST;
        let resp = match path {
            "/auth/authorize" | "/auth/login" | "/auth/login/totp" | "/auth/consent"
            | "/auth/logout" => login::handle(&state, req, peer).await,
            _ => oauth::handle(&state, req, peer).await,
        };
        // A POST here may have ended tokens (a revocation, a refresh token replayed, a sign-out):
        // this node forgets the tokens it verified before answering, so the client's next
        // request is checked afresh; other nodes forget on the database's notification.
        if changes {
            state.tokens.forget_all();
        }
        return resp;
    }
    let get = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
    match path {
        "/healthz" if get => health::healthz(),
        "/livez" if get => health::livez(),
        "/readyz" if get => health::readyz(&state.readiness).await,
        "/metrics" if get => metrics::scrape(&state, req.headers(), false).await,
        "/.well-known/openid-configuration" if get => oauth::openid_configuration(&state.base),
        _ => {
            outcome::ApiError::not_found("no such endpoint; the FHIR base is /fhir").into_response()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{client_address, help, wrap};

    /// `--help` lists every setting the server reads, each with its default.
    #[test]
    fn help_lists_every_setting_the_server_reads() {
        use carapace_core::config::{ReadBy, SETTINGS};
        let text = help();
        for s in SETTINGS {
            let listed = text
                .lines()
                .any(|l| l.starts_with(&format!("  {} (", s.name)));
            assert_eq!(listed, s.read_by != ReadBy::Console, "{}", s.name);
        }
        assert!(
            text.contains("CARAPACE_BTG_SECONDS (default 3600)"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    }

    #[test]
    fn help_text_wraps_at_spaces() {
        assert_eq!(wrap("aaa bbb ccc", 7), ["aaa bbb", "ccc"]);
        assert_eq!(wrap("", 7), [""]);
        assert_eq!(wrap("longerthanwidth x", 4), ["longerthanwidth", "x"]);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let headers = |xff: &str| {
            let mut h = hyper::HeaderMap::new();
            if !xff.is_empty() {
                h.insert("x-forwarded-for", xff.parse().unwrap());
            }
            h
        };
        let cases = [
            // (peer, X-Forwarded-For, recorded address)
            ("192.0.2.9", "203.0.113.7", "192.0.2.9"),
            ("10.1.1.1", "203.0.113.7", "203.0.113.7"),
            (
                "10.1.1.1",
                "198.51.100.2, 203.0.113.7, 10.2.2.2",
                "203.0.113.7",
            ),
            ("10.1.1.1", "", "10.1.1.1"),
            ("10.1.1.1", "10.3.3.3", "10.1.1.1"),
            ("10.1.1.1", "not-an-address, 203.0.113.7", "10.1.1.1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(
                client_address(&trusted, ip(peer), &headers(xff)),
                ip(want),
                "{peer} {xff}"
            );
        }
        assert_eq!(
            client_address(&[], ip("10.1.1.1"), &headers("203.0.113.7")),
            ip("10.1.1.1"),
            "no proxy is trusted by default"
        );
    }
}
