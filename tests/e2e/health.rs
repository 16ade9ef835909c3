//! Health and metrics: `/livez` and `/readyz` for load balancers (no token, check names and
//! states only; readiness follows the database and the key provider and recovers without a
//! restart), and `/metrics` (request counts and latencies per interaction, the core's figures,
//! behind a token or a listener of its own, never a patient's name or id).

use carapace_tests::*;
use std::time::{Duration, Instant};

async fn get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http("GET", url, headers, None).await.unwrap()
}

async fn readyz(server: &Server) -> HttpResponse {
    get(&format!("{}/readyz", server.origin()), &[]).await
}

/// `/readyz` until `done` says so (the report is cached a second; the pool may need a try to
/// find a restarted database), or panic with the last answer after `within`.
async fn readyz_until(
    server: &Server,
    within: Duration,
    done: impl Fn(&HttpResponse) -> bool,
) -> HttpResponse {
    let deadline = Instant::now() + within;
    loop {
        let r = readyz(server).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn scrape(server: &Server) -> String {
    let bearer = format!("Bearer {}", METRICS_TOKEN);
    let r = get(
        &format!("{}/metrics", server.origin()),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The value of the sample `series` (name and labels exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn livez_and_readyz_need_no_token_and_show_only_check_states() {
    let stack = Stack::start().await.unwrap();
    let live = get(&format!("{}/livez", stack.server.origin()), &[]).await;
    assert_eq!(live.status, 200, "{}", live.text());
    assert_eq!(live.json(), json!({"status": "live"}));
    let ready = readyz(&stack.server).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        ready.json(),
        json!({"status": "ready", "checks": {
            "database": "ok", "key_provider": "ok", "audit": "ok", "disk": "ok"}})
    );
    assert!(ready
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    assert_eq!(ready.header("cache-control").as_deref(), Some("no-store"));
    // No version, address, key name or figure: the exact body above is all there is.
    let text = ready.text();
    assert!(!text.contains(&stack.key_name) && !text.contains("127.0.0.1"));
}

#[tokio::test]
async fn readyz_names_the_database_when_postgres_stops_and_recovers_without_a_restart() {
    let mut stack = Stack::start_on_own_cluster().await.unwrap();
    let pid = stack.server.pid();
    assert_eq!(readyz(&stack.server).await.status, 200);
    stack.postgres.stop().unwrap();
    let down = readyz_until(&stack.server, Duration::from_secs(10), |r| r.status == 503).await;
    let body = down.json();
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(body["checks"]["database"], "failing", "{body}");
    assert_eq!(body["checks"]["key_provider"], "ok", "{body}");
    // Liveness does not follow the database: the process is fine and must not be restarted.
    let live = get(&format!("{}/livez", stack.server.origin()), &[]).await;
    assert_eq!(live.status, 200);

    stack.postgres.start_again().await.unwrap();
    let up = readyz_until(&stack.server, Duration::from_secs(30), |r| r.status == 200).await;
    assert_eq!(up.json()["checks"]["database"], "ok", "{}", up.text());
    assert_eq!(stack.server.pid(), pid, "the same process, not restarted");
    // And it serves again.
    let r = stack.fhir().get("Patient?_count=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn readyz_is_degraded_with_vault_down_and_keys_cached_and_fails_cold() {
    let mut stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let id = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Warm"}]}),
        )
        .await
        .created_id();
    assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    stack.bao.stop();
    // Keys cached: degraded but ready, and the cached record still reads.
    let degraded = readyz_until(&stack.server, Duration::from_secs(10), |r| {
        r.json()["checks"]["key_provider"] == "degraded"
    })
    .await;
    assert_eq!(degraded.status, 200, "{}", degraded.text());
    assert_eq!(degraded.json()["status"], "ready");
    assert_eq!(stack.fhir().get(&format!("Patient/{id}")).await.status, 200);

    // A server that has no key cached cannot open any record: not ready.
    let cold = Server::start(stack.server.env.clone()).await.unwrap();
    let failing = readyz_until(&cold, Duration::from_secs(10), |r| r.status == 503).await;
    assert_eq!(
        failing.json()["checks"]["key_provider"],
        "failing",
        "{}",
        failing.text()
    );
    assert_eq!(failing.json()["checks"]["database"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_interaction_and_never_show_phi() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let family = "Zqxmetricscanary";
    let id = "metrics-canary-7f3a";
    let put = fhir
        .put(
            &format!("Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
        )
        .await;
    assert!(put.status == 201 || put.status == 200, "{}", put.text());
    let created = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": family}]}),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    assert_eq!(fhir.get("Patient/no-such-patient").await.status, 404);
    assert_eq!(
        fhir.get(&format!("Patient?family={family}")).await.status,
        200
    );
    let before = scrape(&stack.server).await;
    let reads = r#"carapace_http_requests_total{interaction="read",status="2xx"}"#;
    assert_eq!(sample(&before, reads), Some(1.0), "{before}");
    for (series, want) in [
        (
            r#"carapace_http_requests_total{interaction="read",status="4xx"}"#,
            1.0,
        ),
        (
            r#"carapace_http_requests_total{interaction="update",status="2xx"}"#,
            1.0,
        ),
        (
            r#"carapace_http_requests_total{interaction="create",status="2xx"}"#,
            1.0,
        ),
        (
            r#"carapace_http_requests_total{interaction="search-type",status="2xx"}"#,
            1.0,
        ),
        (
            r#"carapace_http_request_duration_seconds_count{interaction="read",status="2xx"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&before, series), Some(want), "{series}\n{before}");
    }
    assert!(before.contains(
        r#"carapace_http_request_duration_seconds_bucket{le="+Inf",interaction="read",status="2xx"} 1"#
    ));
    // The core's figures are there.
    for series in [
        "carapace_key_provider_calls_total",
        "carapace_key_provider_call_duration_seconds_count",
        "carapace_dek_cache_hits_total",
        "carapace_dek_cache_misses_total",
        "carapace_audit_queue_depth",
        "carapace_audit_chain_lag_seconds",
        r#"carapace_db_pool_connections{state="idle"}"#,
        "carapace_db_pool_acquire_wait_seconds",
        "carapace_bundle_slots_in_use",
        r#"carapace_export_jobs{state="running"}"#,
        r#"carapace_readiness_check{check="database"}"#,
        "carapace_token_cache_hits_total",
        "carapace_token_cache_misses_total",
        "carapace_policy_cache_hits_total",
        "carapace_policy_cache_misses_total",
    ] {
        assert!(sample(&before, series).is_some(), "{series}\n{before}");
    }
    assert!(sample(&before, "carapace_dek_cache_hits_total").unwrap() > 0.0);
    // A bundle counts as what it was.
    let batch = fhir
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Patient/{id}")}}]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text());

    assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    let after = scrape(&stack.server).await;
    assert_eq!(sample(&after, reads), Some(2.0), "the count moved");
    assert_eq!(
        sample(
            &after,
            r#"carapace_http_requests_total{interaction="batch",status="2xx"}"#
        ),
        Some(1.0),
        "{after}"
    );
    for text in [&before, &after] {
        assert!(
            !text.contains(family) && !text.contains(id),
            "PHI in {text}"
        );
        assert!(!text.to_lowercase().contains("zqx"), "{text}");
    }
}

#[tokio::test]
async fn metrics_need_the_token_or_their_own_listener() {
    let stack = Stack::start().await.unwrap();
    let url = format!("{}/metrics", stack.server.origin());
    assert_eq!(get(&url, &[]).await.status, 401);
    let wrong = format!("Bearer {}x", METRICS_TOKEN);
    assert_eq!(get(&url, &[("authorization", &wrong)]).await.status, 401);
    // An access token for the API is not the metrics token.
    let api = stack.server.bearer();
    assert_eq!(get(&url, &[("authorization", &api)]).await.status, 401);
    scrape(&stack.server).await;

    // No token configured: the main listener has no /metrics at all; a listener of its own
    // (loopback) serves it to whoever reaches it, and nothing else.
    let port = free_port();
    let mut env = stack.server.env.clone();
    env.push(("CARAPACE_METRICS_TOKEN".into(), String::new()));
    env.push((
        "CARAPACE_METRICS_LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    let own = Server::start(env).await.unwrap();
    let main = get(&format!("{}/metrics", own.origin()), &[]).await;
    assert_eq!(main.status, 404, "{}", main.text());
    assert_eq!(main.json()["resourceType"], "OperationOutcome");
    let listener = format!("http://127.0.0.1:{port}");
    let metrics = get(&format!("{listener}/metrics"), &[]).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert!(metrics.text().contains("carapace_dek_cache_entries"));
    assert!(metrics.text().trim_end().ends_with("# EOF"));
    assert_eq!(
        get(&format!("{listener}/fhir/metadata"), &[]).await.status,
        404
    );
    assert_eq!(get(&format!("{listener}/readyz"), &[]).await.status, 404);
}
