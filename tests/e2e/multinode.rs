//! More than one machine: two `carapace-server` processes behind HAProxy (round robin), over
//! PgBouncer in transaction mode, with a streaming replica serving searches — the deployment
//! README.md's "More than one machine" describes, on loopback.

use carapace_core::access::{Role, Scope};
use carapace_tests::*;
use std::collections::BTreeSet;

/// The nodes' environment: one database through PgBouncer, the migrations direct, searches on
/// the replica (through PgBouncer too), one Vault key, HAProxy's address as the public base.
fn node_env(
    bao: &Bao,
    key_name: &str,
    bouncer: &PgBouncer,
    direct: &str,
    base: &str,
) -> Vec<(String, String)> {
    let mut env = bao.env(key_name);
    for (k, v) in [
        ("CARAPACE_DATABASE_URL", bouncer.url("carapace")),
        ("CARAPACE_DATABASE_POOLER", "transaction".into()),
        ("CARAPACE_DATABASE_DIRECT_URL", direct.to_string()),
        ("CARAPACE_DATABASE_REPLICA_URL", bouncer.url("replica")),
        // Generous on a loaded test machine; the default is 50 ms.
        ("CARAPACE_REPLICA_WAIT_MS", "3000".into()),
        ("CARAPACE_BASE_URL", format!("{base}/fhir")),
        ("CARAPACE_TRUSTED_PROXIES", "127.0.0.1/32".into()),
        ("CARAPACE_DB_MAX_CONNECTIONS", "6".into()),
    ] {
        env.push((k.to_string(), v));
    }
    env
}

async fn node(env: &[(String, String)], port: u16) -> Server {
    let mut env = env.to_vec();
    env.push(("CARAPACE_LISTEN".into(), format!("127.0.0.1:{port}")));
    Server::start(env).await.unwrap()
}

/// A node's own counter, read on its own port (not through HAProxy).
async fn node_metric(port: u16, name: &str) -> u64 {
    let r = http(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", r.text()))
}

async fn get(url: &str, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http("GET", url, &[("Authorization", &auth)], None)
        .await
        .unwrap()
}

async fn post(url: &str, token: &str, body: &Value) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let body = body.to_string();
    http(
        "POST",
        url,
        &[("Authorization", &auth), ("Content-Type", FHIR_JSON)],
        Some(body.into_bytes()),
    )
    .await
    .unwrap()
}

fn observation(patient: &str, n: usize) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "valueQuantity": {"value": n, "unit": "/min"}})
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| x["resource"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn unchained(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_unchained")
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_behind_haproxy_over_pgbouncer_with_a_replica() {
    let primary = Postgres::start().await.unwrap();
    let database = "carapace_nodes";
    let direct = primary.database(database).await.unwrap();
    let replica = Replica::start(&primary).unwrap();
    // Three server connections per database for two nodes of six each: consecutive
    // transactions of every client share them.
    let bouncer = PgBouncer::start(
        &[
            ("carapace", primary.port(), database),
            ("replica", replica.port, database),
        ],
        3,
    )
    .unwrap();
    let bao = Bao::start_dev().await.unwrap();
    let key_name = format!("carapace-{}", uuid::Uuid::new_v4().simple());
    let (p1, p2, lb_port) = (free_port(), free_port(), free_port());
    let base = format!("http://127.0.0.1:{lb_port}");
    let env = node_env(&bao, &key_name, &bouncer, &direct, &base);
    let mut n1 = node(&env, p1).await;
    let n2 = node(&env, p2).await;
    let _lb = HaProxy::start(lb_port, &[p1, p2]).unwrap();
    let fhir = format!("{base}/fhir");
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&direct)
        .await
        .unwrap();
    // The client's token comes from whichever node the balancer picks; every node accepts it.
    n1.authorize(&db).await;
    let token = n1.token.clone().unwrap();

    // Read-your-writes: each write is searched for at once, through the other node (round
    // robin), and found — on the replica once it has replayed the write, else on the primary.
    let patient = post(
        &format!("{fhir}/Patient"),
        &token,
        &json!({"resourceType": "Patient"}),
    )
    .await
    .created_id();
    let searched_before = node_metric(p1, "carapace_replica_searches_total ").await
        + node_metric(p2, "carapace_replica_searches_total ").await;
    let mut written = vec![];
    for n in 0..30 {
        let r = post(
            &format!("{fhir}/Observation"),
            &token,
            &observation(&patient, n),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.created_id();
        let found = get(
            &format!("{fhir}/Observation?subject=Patient/{patient}&_count=100"),
            &token,
        )
        .await;
        assert_eq!(found.status, 200, "{}", found.text());
        assert!(
            ids(&found.json()).contains(&id),
            "write {n} ({id}) not found by the search right after it"
        );
        written.push(id);
    }
    let by_replica = node_metric(p1, "carapace_replica_searches_total ").await
        + node_metric(p2, "carapace_replica_searches_total ").await
        - searched_before;
    assert!(
        by_replica >= 15,
        "the replica served {by_replica} of 30 searches"
    );
    // ...and the replica really is a standby of the primary, with the writes on it.
    let standby = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&replica.url(database))
        .await
        .unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&standby)
        .await
        .unwrap();
    assert!(in_recovery);

    // Two patients' apps at once, their transactions interleaved on PgBouncer's three server
    // connections: each sees only its own record. Every transaction sets its role and reach
    // with SET LOCAL, so nothing of one survives into the next on the same connection.
    let mut patients = vec![];
    for _ in 0..2 {
        let p = post(
            &format!("{fhir}/Patient"),
            &token,
            &json!({"resourceType": "Patient"}),
        )
        .await
        .created_id();
        let mut obs = BTreeSet::new();
        for n in 0..3 {
            obs.insert(
                post(&format!("{fhir}/Observation"), &token, &observation(&p, n))
                    .await
                    .created_id(),
            );
        }
        let scopes = [Scope::parse("patient/*.rs").unwrap()];
        let app = carapace_core::identity::tokens::issue(
            &db.clone().into(),
            chrono::Utc::now(),
            &format!("app-of-{p}"),
            Role::Patient,
            &scopes,
            Some(&p),
        )
        .await
        .unwrap()
        .access_token;
        patients.push((p, obs, app));
    }
    let mut tasks = vec![];
    for round in 0..40 {
        let (mine, obs, app) = patients[round % 2].clone();
        let other = patients[(round + 1) % 2].0.clone();
        let fhir = fhir.clone();
        tasks.push(tokio::spawn(async move {
            let r = get(&format!("{fhir}/Observation"), &app).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let seen: BTreeSet<String> = ids(&r.json()).into_iter().collect();
            assert_eq!(seen, obs, "patient {mine}'s app saw another record");
            let theirs = get(&format!("{fhir}/Patient/{other}"), &app).await;
            assert!(
                matches!(theirs.status, 403 | 404),
                "{mine}'s app read {other}: {}",
                theirs.status
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A session through PgBouncer after all that: the owner, no reach, no role left behind.
    let pooled = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            bouncer
                .url("carapace")
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .statement_cache_capacity(0),
        )
        .await
        .unwrap();
    for _ in 0..6 {
        let mut tx = pooled.begin().await.unwrap();
        let (user, reach): (String, Option<String>) =
            sqlx::query_as("SELECT current_user::text, current_setting('carapace.reach', true)")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(user, carapace_core::db::embedded::SUPERUSER);
        assert!(
            reach.unwrap_or_default().is_empty(),
            "a reach outlived its transaction"
        );
    }

    // Paging: a cursor sealed by one node is followed on the other.
    let (p, obs, app) = patients[0].clone();
    let mut url = format!("{fhir}/Observation?subject=Patient/{p}&_count=1");
    let mut paged = BTreeSet::new();
    for _ in 0..5 {
        let page = get(&url, &app).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        paged.extend(ids(&page));
        match page["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(paged, obs);

    // Key rotation with both nodes up: reads through both go on unharmed meanwhile, and both
    // read and write under the new key version after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = vec![];
    for port in [p1, p2] {
        let (stop, token, ids) = (stop.clone(), token.clone(), written.clone());
        readers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, vec![]);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok < 10 {
                let url = format!(
                    "http://127.0.0.1:{port}/fhir/Observation/{}",
                    ids[i % ids.len()]
                );
                match get(&url, &token).await.status {
                    200 => ok += 1,
                    s => failed.push(s),
                }
                i += 1;
            }
            (ok, failed)
        }));
    }
    let admin = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "rotation-operator",
        Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap();
    let mut console_env = env.clone();
    console_env.push(("CARAPACE_ADMIN_TOKEN".into(), admin.access_token));
    console_env.push(("RUST_LOG".into(), "warn".into()));
    let rotate_env = console_env.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || console(&rotate_env, &["keys", "rotate"], None))
            .await
            .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(ok, "keys rotate through PgBouncer failed: {out} {err}");
    for reader in readers {
        let (ok, failed) = reader.await.unwrap();
        assert!(
            ok >= 10 && failed.is_empty(),
            "reads during rotation: {ok} ok, {failed:?}"
        );
    }
    let versions: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT key_version FROM data_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(versions.len(), 1, "every data key rewrapped: {versions:?}");
    for port in [p1, p2] {
        let node_fhir = format!("http://127.0.0.1:{port}/fhir");
        let r = post(
            &format!("{node_fhir}/Observation"),
            &token,
            &observation(&patient, 99),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        for id in [r.created_id(), written[0].clone()] {
            assert_eq!(
                get(&format!("{node_fhir}/Observation/{id}"), &token)
                    .await
                    .status,
                200
            );
        }
    }

    // Each node keeps the tokens it verified in memory; a token revoked through one node stops
    // working on that node at once and on the other once the database's notification arrives.
    let client =
        BackendClient::register(&db, jsonwebtoken::Algorithm::ES384, &["system/*.rs"]).await;
    let doomed = client.token(&n1, "system/*.rs").await;
    let read_at = |port: u16| {
        let (doomed, id) = (doomed.clone(), written[0].clone());
        async move {
            get(
                &format!("http://127.0.0.1:{port}/fhir/Observation/{id}"),
                &doomed,
            )
            .await
            .status
        }
    };
    for port in [p1, p2] {
        assert_eq!(read_at(port).await, 200);
        assert_eq!(read_at(port).await, 200, "answered from the node's memory");
    }
    let revoke = http(
        "POST",
        &format!("http://127.0.0.1:{p1}/auth/revoke"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(format!("token={doomed}").into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(revoke.status, 200);
    assert_eq!(read_at(p1).await, 401, "the revoking node forgets at once");
    assert_eq!(
        status_within(401, || read_at(p2)).await,
        401,
        "the other node is told"
    );

    // One chainer at a time links the trail, whichever nodes run: with both up it keeps up,
    // and with the first node gone the second takes over; the chain verifies throughout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while unchained(&db).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the chainers fell behind"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(n1.terminate().unwrap());
    let mut answered = 0;
    for n in 0..10 {
        let r = post(
            &format!("{fhir}/Observation"),
            &token,
            &observation(&patient, n),
        )
        .await;
        assert_eq!(r.status, 201, "with one node down: {}", r.text());
        answered += 1;
    }
    assert_eq!(answered, 10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while unchained(&db).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the remaining node does not chain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || console(&console_env, &["audit", "verify"], None))
            .await
            .unwrap();
    assert!(ok, "audit verify: {out} {err}");
    drop(n2);
}
