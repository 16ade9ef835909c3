//! Vault outages and key rotation: a sealed or stopped Vault gives 503 with Retry-After (never
//! plaintext, never a 500), the server recovers by itself, warm reads make no Vault call, and
//! rotation rewraps every data key online while reads keep working.

use carapace_tests::*;
use std::time::Duration;

fn patient(n: usize) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": format!("Rotation{n}")}]})
}

#[tokio::test]
async fn sealed_vault_gives_503_then_recovers() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let warm = fhir.post("Patient", &patient(0)).await.json();
    let warm_id = warm["id"].as_str().unwrap().to_string();

    // Warm reads make no Vault call.
    let before = stack
        .server
        .metric("carapace_key_provider_calls_total")
        .await
        .unwrap();
    for _ in 0..50 {
        assert_eq!(fhir.get(&format!("Patient/{warm_id}")).await.status, 200);
    }
    let after = stack
        .server
        .metric("carapace_key_provider_calls_total")
        .await
        .unwrap();
    assert_eq!(after, before, "warm reads call Vault");

    stack.bao.seal().await.unwrap();
    // A new compartment needs a new data key: 503 with Retry-After and an OperationOutcome.
    let r = fhir.post("Patient", &patient(1)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["issue"][0]["code"], "transient");
    // Cached keys keep serving.
    assert_eq!(fhir.get(&format!("Patient/{warm_id}")).await.status, 200);

    stack.bao.unseal().await.unwrap();
    let r = fhir.post("Patient", &patient(2)).await;
    assert_eq!(r.status, 201, "recovers once Vault is back: {}", r.text());
    let db = stack.db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 2, "the refused create wrote nothing");
}

#[tokio::test]
async fn stopped_vault_gives_503_and_the_server_recovers_when_it_returns() {
    let bao = Bao::start_persistent().await.unwrap();
    let mut stack = Stack::start_with(bao, vec![]).await.unwrap();
    let created = stack.fhir().post("Patient", &patient(0)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();

    stack.bao.stop();
    // A cold server (restarted while Vault is down) starts, but cannot unwrap: 503, never a 500,
    // never plaintext.
    stack.server.restart().await.unwrap();
    let mut bao = std::mem::replace(&mut stack.bao, Bao::start_dev().await.unwrap());
    let fhir = stack.fhir();
    for _ in 0..3 {
        let r = fhir.get(&format!("Patient/{id}")).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.header("retry-after").is_some());
        assert!(!r.text().contains("Rotation0"));
    }
    assert_eq!(fhir.post("Patient", &patient(1)).await.status, 503);

    // Vault comes back: the same server process serves again, no restart needed.
    bao.restart().await.unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = fhir.get(&format!("Patient/{id}")).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(fhir.post("Patient", &patient(2)).await.status, 201);
}

#[tokio::test]
async fn key_rotation_rewraps_every_data_key_while_reads_continue() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let mut ids = Vec::new();
    for n in 0..40 {
        let r = fhir.post("Patient", &patient(n)).await;
        assert_eq!(r.status, 201);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let base = stack.server.base.clone();
    let auth = stack.server.bearer();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (ids, base, stop, auth) = (ids.clone(), base.clone(), stop.clone(), auth.clone());
        readers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = r;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok < 20 {
                let url = format!("{base}/Patient/{}", ids[i % ids.len()]);
                let resp = http("GET", &url, &[("Authorization", &auth)], None)
                    .await
                    .unwrap();
                if resp.status == 200 {
                    ok += 1
                } else {
                    failed.push(resp.status)
                }
                i += 7;
            }
            (ok, failed)
        }));
    }
    // The operator signs in to the console with an administrator token (the automation path).
    let db = stack.db().await;
    let mut env = stack.console_env("rotation-test").await;
    env.push(("RUST_LOG".into(), "warn".into()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin_path("carapace-console"))
            .args(["keys", "rotate"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rotate failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 40 patient compartments, the 6 search-index keys, the audit trail's two keys and the key
    // naming patients' KEKs
    assert!(stdout.contains("49 data keys rewrapped"), "{stdout}");
    for reader in readers {
        let (ok, failed) = reader.await.unwrap();
        assert!(ok >= 20);
        assert!(
            failed.is_empty(),
            "reads failed during rotation: {failed:?}"
        );
    }
    let versions: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT key_version FROM data_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        versions,
        vec![2],
        "every data key is wrapped under the new key version"
    );
    // Patients' keys are wrapped under their own KEKs, each rotated too; the rest under the main key.
    let wrapped: Vec<(String, String)> = sqlx::query_as("SELECT scope, wrapped FROM data_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    for (scope, wrapped) in &wrapped {
        let inner = match wrapped.strip_prefix("kek:p-") {
            Some(rest) => {
                assert!(scope.starts_with("Patient/"), "{scope}");
                rest.split_once(':').unwrap().1
            }
            None => wrapped,
        };
        assert!(inner.starts_with("vault:v2:"), "{scope}: {inner}");
    }

    // After rotation: a restarted (cold) server unwraps the rewrapped keys, and new keys use v2.
    let status_env = stack.console_env("rotation-test").await;
    let mut server = stack.server;
    server.restart().await.unwrap();
    let fhir = Fhir { server: &server };
    for id in &ids {
        assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    }
    // A new key under the main key is wrapped by its new version (a new patient's, by its own
    // new KEK's first).
    let practitioner = json!({"resourceType": "Practitioner", "name": [{"family": "After"}]});
    assert_eq!(fhir.post("Practitioner", &practitioner).await.status, 201);
    let newest: i32 =
        sqlx::query_scalar("SELECT key_version FROM data_keys ORDER BY id DESC LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(newest, 2);
    assert_eq!(fhir.post("Patient", &patient(99)).await.status, 201);
    // The console's status shows the same picture an operator checks after a rotation.
    let env = status_env;
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin_path("carapace-console"))
            .arg("status")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("Vault transit"), "{text}");
    assert!(text.contains("resources:     42 current"), "{text}");
    // 40 compartments, the 6 search-index keys, the audit trail's two keys, the KEK-naming key and
    // Practitioner's; the new patient's own KEK is at its first version
    assert!(text.contains("v2: 50"), "{text}");
    assert!(text.contains("v1: 1"), "{text}");
    // Audited with the operator when it starts (E, administration) and when it completes (U).
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action::text FROM audit_events WHERE principal = 'rotation-test' ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        audited,
        ["E", "U"],
        "the rotation is audited with the operator"
    );
}

/// The server's least-privilege policy the README documents, as an operator would write it: it
/// makes patients' KEKs (`transit/keys/+` is one path segment: a key, never its `/config`,
/// `/rotate` or `/trim`) but can neither reconfigure, rotate, trim nor delete them (the console's
/// credentials do that).
fn carapace_policy(key: &str) -> String {
    format!(
        r#"path "transit/datakey/plaintext/{key}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}" {{ capabilities = ["update"] }}
path "transit/rewrap/{key}" {{ capabilities = ["update"] }}
path "transit/encrypt/{key}" {{ capabilities = ["update"] }}
path "transit/keys/{key}" {{ capabilities = ["create", "update", "read"] }}
path "transit/keys/{key}/rotate" {{ capabilities = ["update"] }}
path "transit/datakey/plaintext/{key}-p-*" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}-p-*" {{ capabilities = ["update"] }}
path "transit/encrypt/{key}-p-*" {{ capabilities = ["update"] }}
path "transit/keys/+" {{ capabilities = ["create", "update", "read"] }}
path "transit/sign/{key}-oidc" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
path "auth/token/renew-self" {{ capabilities = ["update"] }}"#
    )
}

#[tokio::test]
async fn approle_login_with_a_least_privilege_policy_and_short_lived_tokens_that_get_renewed() {
    let bao = Bao::start_dev().await.unwrap();
    let key = format!("carapace-{}", uuid::Uuid::new_v4().simple());
    let root = [("X-Vault-Token", bao.token.as_str())];
    let call = |method: &'static str, path: String, body: Value| {
        let url = format!("{}/v1/{path}", bao.addr);
        async move {
            let r = http(method, &url, &root, Some(body.to_string().into_bytes()))
                .await
                .unwrap();
            assert!(r.status < 300, "{method} {url}: {} {}", r.status, r.text());
            serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null)
        }
    };
    call(
        "POST",
        "sys/auth/approle".into(),
        json!({"type": "approle"}),
    )
    .await;
    call(
        "PUT",
        "sys/policies/acl/carapace".into(),
        json!({"policy": carapace_policy(&key)}),
    )
    .await;
    // Tokens live 10 s: the server must renew them to keep working.
    call(
        "POST",
        "auth/approle/role/carapace".into(),
        json!({"token_policies": ["carapace"], "token_ttl": "10s", "token_max_ttl": "1h"}),
    )
    .await;
    let role_id = call(
        "GET",
        "auth/approle/role/carapace/role-id".into(),
        json!({}),
    )
    .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = call(
        "POST",
        "auth/approle/role/carapace/secret-id".into(),
        json!({}),
    )
    .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The policy's key from the first start (whatever the server wraps then, such as the audit
    // chain's key for the token it issues, stays readable after the restart).
    let env = vec![
        ("CARAPACE_VAULT_ROLE_ID".to_string(), role_id),
        ("CARAPACE_VAULT_SECRET_ID".to_string(), secret_id),
        ("CARAPACE_VAULT_KEY".to_string(), key.clone()),
    ];
    let mut stack = Stack::start_with(bao, env).await.unwrap();
    // Stack::start_with put the root token and its own key name in; restart with AppRole only and
    // the key the policy names.
    stack
        .server
        .env
        .retain(|(k, _)| k != "CARAPACE_VAULT_TOKEN" && k != "CARAPACE_VAULT_KEY");
    stack
        .server
        .env
        .push(("CARAPACE_VAULT_KEY".into(), key.clone()));
    stack.server.restart().await.unwrap();
    let fhir = stack.fhir();
    let r = fhir.post("Patient", &patient(1)).await;
    assert_eq!(r.status, 201, "{}\n{}", r.text(), stack.server.log_text());
    // Past the first token's TTL: a new compartment needs Vault, which needs a renewed token.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let r = fhir.post("Patient", &patient(2)).await;
    assert_eq!(r.status, 201, "{}\n{}", r.text(), stack.server.log_text());
    let log = stack.server.log_text();
    assert!(!log.contains(&stack.bao.token), "no token in the logs");
}
