//! The end of a record, through the real server, console, PostgreSQL and OpenBao: legal holds,
//! erasure by crypto-shredding (reaching a backup taken before it), history retention and
//! expunge — and that the audit trail still verifies afterwards.

use crate::encryption::{canary_patient, CANARIES};
use crate::export::export;
use carapace_tests::*;

fn env_with(env: &[(String, String)], changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
        .cloned()
        .collect();
    env.extend(changes.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

async fn wrapped_key(db: &sqlx::PgPool, scope: &str) -> Option<String> {
    sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE scope = $1")
        .bind(scope)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// Ask OpenBao itself to unwrap a stored data key (as someone holding a backup and the server's
/// Vault token would): the status it answers.
async fn vault_unwrap_status(stack: &Stack, wrapped: &str) -> u16 {
    let rest = wrapped.strip_prefix("kek:").expect("a patient-wrapped key");
    let (kek, inner) = rest.split_once(':').unwrap();
    let url = format!(
        "{}/v1/transit/decrypt/{}-{kek}",
        stack.bao.addr, stack.key_name
    );
    let body = json!({ "ciphertext": inner }).to_string().into_bytes();
    http(
        "POST",
        &url,
        &[("X-Vault-Token", stack.bao.token.as_str())],
        Some(body),
    )
    .await
    .unwrap()
    .status
}

#[tokio::test]
async fn an_erased_patient_is_gone_from_the_api_the_database_and_a_backup_taken_before() {
    let (stack, _exports) = Stack::start_exporting(vec![]).await.unwrap();
    let fhir = stack.fhir();
    let db = stack.db().await;
    let a = fhir.post("Patient", &canary_patient()).await.created_id();
    let mut updated = fhir.get(&format!("Patient/{a}")).await.json();
    updated["gender"] = json!("female");
    assert_eq!(
        fhir.put(&format!("Patient/{a}"), &updated).await.status,
        200
    );
    let a_obs = fhir
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": CANARIES[7]},
                    "subject": {"reference": format!("Patient/{a}")}}),
        )
        .await
        .created_id();
    let b = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Keptfamily"}]}),
        )
        .await
        .created_id();
    let b_obs = fhir
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "kept"},
                    "subject": {"reference": format!("Patient/{b}")}}),
        )
        .await
        .created_id();

    // Each patient's data key is wrapped under a key-encryption key of its own in Vault.
    let a_wrapped = wrapped_key(&db, &format!("Patient/{a}")).await.unwrap();
    let b_wrapped = wrapped_key(&db, &format!("Patient/{b}")).await.unwrap();
    assert!(a_wrapped.starts_with("kek:p-"), "{a_wrapped}");
    assert_ne!(a_wrapped.split(':').nth(1), b_wrapped.split(':').nth(1));
    assert_eq!(vault_unwrap_status(&stack, &a_wrapped).await, 200);

    // The backup taken before the erasure.
    let backup = stack.postgres.dump(&stack.database).unwrap();

    let console_env = stack.console_env("records-officer").await;
    let console = |args: &[&str]| console(&console_env, args, None);
    let a_ref = format!("Patient/{a}");

    // A legal hold stops the erasure; releasing it lets it through.
    let (ok, out, err) = console(&["hold", "add", &a_ref, "--reason", "Case 2026-117"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = console(&["hold", "list"]);
    assert!(
        ok && out.contains(&a_ref) && out.contains("Case 2026-117"),
        "{out}"
    );
    let (ok, _, err) = console(&["patient", "erase", &a_ref, "--confirm", &a]);
    assert!(!ok && err.contains("legal hold"), "{err}");
    assert_eq!(fhir.get(&a_ref).await.status, 200, "nothing was erased");
    let hold_id = out.split_whitespace().next().unwrap().to_string();
    let (ok, out, err) = console(&["hold", "release", &hold_id]);
    assert!(ok, "{out}{err}");
    // The id must be typed again, exactly.
    let (ok, _, err) = console(&["patient", "erase", &a_ref, "--confirm", &b]);
    assert!(!ok && err.contains("does not match"), "{err}");
    let (ok, _, err) = console_with_stdin(&console_env, &["patient", "erase", &a_ref], "nope");
    assert!(!ok && err.contains("does not match"), "{err}");
    assert_eq!(fhir.get(&a_ref).await.status, 200, "nothing was erased");
    // The server's own database role cannot erase (only the console's may call the function).
    let as_app =
        sqlx::query("SET ROLE carapace_app; SELECT carapace_erase_patient($1, 'x', now())");
    assert!(as_app.bind(&a_ref).execute(&db).await.is_err());
    sqlx::query("RESET ROLE").execute(&db).await.unwrap();

    let (ok, out, err) = console_with_stdin(&console_env, &["patient", "erase", &a_ref], &a);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 resources, 3 versions removed"), "{out}");
    assert!(out.contains("key-encryption key is destroyed"), "{out}");

    // The API: 410 for every id, never used again; searches and exports find nothing of them.
    for path in [a_ref.clone(), format!("Observation/{a_obs}")] {
        let r = fhir.get(&path).await;
        assert_eq!(r.status, 410, "{path}: {}", r.text());
        assert_eq!(r.json()["issue"][0]["code"], "deleted");
        assert_eq!(fhir.get(&format!("{path}/_history")).await.status, 410);
    }
    assert_eq!(fhir.get(&format!("{a_ref}/_history/1")).await.status, 410);
    // Only a caller who could see every record learns that an id was erased.
    stack.token_user("dr-narrow", "practitioner", None).await;
    let narrow = stack
        .token(
            "dr-narrow",
            carapace_core::access::Role::Practitioner,
            "user/*.rs",
            None,
        )
        .await
        .unwrap();
    let auth = format!("Bearer {narrow}");
    let r = http(
        "GET",
        &stack.server.url(&a_ref),
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let again = fhir.put(&a_ref, &canary_patient().with_id(&a)).await;
    assert_eq!(again.status, 410, "{}", again.text());
    let into_erased = fhir
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "late"},
                    "subject": {"reference": a_ref}}),
        )
        .await;
    assert!(
        into_erased.status == 400 || into_erased.status == 410,
        "{}",
        into_erased.text()
    );
    for query in [
        format!("Observation?subject={a_ref}"),
        format!("Patient?_id={a}"),
        format!("Patient?family={}", CANARIES[0]),
        format!("Observation?code:text={}", "Zqxcanary"),
    ] {
        let found = fhir.get(&query).await.json();
        assert_eq!(found["total"], 0, "{query}: {found}");
    }
    assert_eq!(fhir.get(&format!("Patient/{b}")).await.status, 200);
    assert_eq!(fhir.get(&format!("Observation/{b_obs}")).await.status, 200);
    let exported = export(&stack, stack.server.token.as_deref().unwrap(), "$export").await;
    let text = serde_json::to_string(&exported.files).unwrap();
    assert!(
        text.contains(&b) && text.contains(&b_obs),
        "the export is real"
    );
    assert!(!text.contains(&a) && !text.contains(&a_obs), "{text}");
    assert!(!text.contains(CANARIES[0]));

    // The database: no row of theirs left but the tombstones; no key to open what may remain of
    // them anywhere (dead tuples, WAL, the backup): Vault no longer has their KEK.
    assert_eq!(wrapped_key(&db, &a_ref).await, None);
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resource_versions WHERE id = $1 OR id = $2")
            .bind(&a)
            .bind(&a_obs)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(versions, 0);
    for table in ["search_hash", "search_ref", "search_range", "resources"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE resource_type = 'Patient' AND id = $1"
        ))
        .bind(&a)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let tombstones: i64 = sqlx::query_scalar("SELECT count(*) FROM erased_resources")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(tombstones, 2);
    let dump = String::from_utf8(stack.postgres.dump(&stack.database).unwrap()).unwrap();
    for c in CANARIES {
        assert!(!dump.contains(c), "the dump holds {c}");
    }
    let status = vault_unwrap_status(&stack, &a_wrapped).await;
    assert!((400..500).contains(&status), "Vault answered {status}");
    assert_eq!(vault_unwrap_status(&stack, &b_wrapped).await, 200);

    // The backup from before, restored and served: it opens B, never A.
    let restored_url = stack
        .postgres
        .restore(&format!("{}_restored", stack.database), &backup)
        .await
        .unwrap();
    let mut old = Server::start(env_with(
        &stack.server.env,
        &[("CARAPACE_DATABASE_URL", restored_url.as_str())],
    ))
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&restored_url)
        .await
        .unwrap();
    old.authorize(&pool).await;
    let restored = Fhir { server: &old };
    assert_eq!(restored.get(&format!("Patient/{b}")).await.status, 200);
    for path in [a_ref.clone(), format!("Observation/{a_obs}")] {
        let r = restored.get(&path).await;
        assert_eq!(r.status, 500, "{path} in the restored backup: {}", r.text());
        assert_eq!(r.json()["issue"][0]["code"], "exception");
        for c in CANARIES {
            assert!(!r.text().contains(c));
        }
    }
    // Reconciled with the key provider (the ledger of erasures), the restored copy forgets them.
    let token = carapace_core::identity::tokens::issue(
        &pool.clone().into(),
        chrono::Utc::now(),
        "records-officer",
        carapace_core::access::Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap();
    let restored_console = env_with(
        &console_env,
        &[
            ("CARAPACE_DATABASE_URL", restored_url.as_str()),
            ("CARAPACE_ADMIN_TOKEN", token.access_token.as_str()),
        ],
    );
    let reconcile = |args: &[&str]| carapace_tests::console(&restored_console, args, None);
    let (ok, out, err) = reconcile(&["patient", "reconcile", "--dry-run"]);
    assert!(
        ok && out.contains(&format!("{a_ref}: its key-encryption key is gone")),
        "{out}{err}"
    );
    assert_eq!(
        restored.get(&a_ref).await.status,
        500,
        "a dry run changes nothing"
    );
    let (ok, _, err) = reconcile(&["patient", "reconcile", "--confirm", "2"]);
    assert!(!ok && err.contains("does not match"), "{err}");
    let (ok, out, err) = reconcile(&["patient", "reconcile", "--confirm", "1"]);
    assert!(
        ok && out.contains(&format!("{a_ref}: erased again")),
        "{out}{err}"
    );
    assert_eq!(restored.get(&a_ref).await.status, 410);
    let found = restored.get(&format!("Observation?subject={a_ref}")).await;
    assert_eq!(found.json()["total"], 0, "{}", found.text());
    assert_eq!(restored.get(&format!("Patient/{b}")).await.status, 200);
    let (ok, out, _) = reconcile(&["patient", "reconcile"]);
    assert!(ok && out.contains("nothing to do"), "{out}");
    old.terminate().unwrap();

    // The audit trail keeps every event, the erasure's among them, and still verifies.
    let events = stack
        .audit_events(&format!("patient={a_ref}&_count=200"))
        .await;
    let erasure = events
        .iter()
        .find(|e| {
            e["entity"]
                .to_string()
                .contains(&format!("urn:carapace:erasure:{a_ref}"))
        })
        .expect("the erasure is audited");
    assert_eq!(erasure["agent"][0]["who"]["display"], "records-officer");
    assert!(events.len() > 3, "the patient's earlier events stay");
    let (ok, out, err) = console(&["audit", "verify"]);
    assert!(ok && out.contains("intact"), "{out}{err}");
    // Asked again, it reports what was done (and finishes anything left).
    let (ok, out, _) = console(&["patient", "erase", &a_ref, "--confirm", &a]);
    assert!(ok && out.contains("destroyed"), "{out}");
}

fn console_with_stdin(
    env: &[(String, String)],
    args: &[&str],
    input: &str,
) -> (bool, String, String) {
    console(env, args, Some(input))
}

trait WithId {
    fn with_id(self, id: &str) -> Value;
}

impl WithId for Value {
    fn with_id(mut self, id: &str) -> Value {
        self["id"] = json!(id);
        self
    }
}

async fn history_len(fhir: &Fhir<'_>, reference: &str) -> usize {
    let h = fhir.get(&format!("{reference}/_history")).await;
    assert_eq!(h.status, 200, "{}", h.text());
    h.json()["entry"].as_array().map_or(0, Vec::len)
}

async fn observation_with_versions(fhir: &Fhir<'_>, patient: &str, versions: usize) -> String {
    let body = json!({"resourceType": "Observation", "status": "preliminary",
                      "code": {"text": "retained"},
                      "subject": {"reference": format!("Patient/{patient}")}});
    let id = fhir.post("Observation", &body).await.created_id();
    for n in 1..versions {
        let mut next = body.clone().with_id(&id);
        next["code"]["text"] = json!(format!("retained {n}"));
        assert_eq!(
            fhir.put(&format!("Observation/{id}"), &next).await.status,
            200
        );
    }
    id
}

#[tokio::test]
async fn history_past_its_retention_is_purged_except_under_a_legal_hold() {
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![
            ("CARAPACE_RETENTION_HISTORY".into(), "Observation=0".into()),
            ("CARAPACE_RETENTION_INTERVAL".into(), "0".into()),
        ],
    )
    .await
    .unwrap();
    let fhir = stack.fhir();
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}]});
    let p = fhir.post("Patient", &patient("Purged")).await.created_id();
    let held = fhir.post("Patient", &patient("Held")).await.created_id();
    let p_again = patient("Purged renamed").with_id(&p);
    assert_eq!(
        fhir.put(&format!("Patient/{p}"), &p_again).await.status,
        200
    );
    let x = observation_with_versions(&fhir, &p, 3).await;
    let y = observation_with_versions(&fhir, &held, 2).await;
    let console_env = stack.console_env("records-officer").await;
    let console = |args: &[&str]| console(&console_env, args, None);
    let (ok, out, err) = console(&[
        "hold",
        "add",
        &format!("Patient/{held}"),
        "--reason",
        "audit",
    ]);
    assert!(ok, "{out}{err}");

    // A dry run counts and removes nothing.
    let (ok, out, err) = console(&["retention", "run", "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("Observation: 2 non-current versions due"),
        "{out}"
    );
    assert_eq!(history_len(&fhir, &format!("Observation/{x}")).await, 3);

    let (ok, out, err) = console(&["retention", "run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("Observation: 2 non-current versions purged"),
        "{out}"
    );
    assert_eq!(history_len(&fhir, &format!("Observation/{x}")).await, 1);
    assert_eq!(fhir.get(&format!("Observation/{x}")).await.status, 200);
    assert_eq!(
        fhir.get(&format!("Observation/{x}/_history/1"))
            .await
            .status,
        404
    );
    assert_eq!(
        fhir.get(&format!("Observation/{x}/_history/3"))
            .await
            .status,
        200
    );
    // The held patient's history stays whole; types without a retention keep theirs.
    assert_eq!(history_len(&fhir, &format!("Observation/{y}")).await, 2);
    assert_eq!(history_len(&fhir, &format!("Patient/{p}")).await, 2);
    let events = stack
        .audit_events("subtype=delete&_count=50")
        .await
        .into_iter()
        .map(|e| e["entity"].to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        events.contains("urn:carapace:retention:Observation:versions=2"),
        "{events}"
    );

    // Expunge: one resource's old versions, now; refused under the hold.
    let w = observation_with_versions(&fhir, &p, 2).await;
    let (ok, out, err) = console(&["expunge", &format!("Observation/{w}")]);
    assert!(
        ok && out.contains("1 non-current versions removed"),
        "{out}{err}"
    );
    assert_eq!(history_len(&fhir, &format!("Observation/{w}")).await, 1);
    let (ok, _, err) = console(&["expunge", &format!("Observation/{y}")]);
    assert!(!ok && err.contains("legal hold"), "{err}");
    assert_eq!(history_len(&fhir, &format!("Observation/{y}")).await, 2);
    // Neither the server's role nor the console's may remove a version any other way.
    let db = stack.db().await;
    for role in ["carapace_app", "carapace_console"] {
        let mut conn = db.acquire().await.unwrap();
        sqlx::query(&format!("SET ROLE {role}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let refused = sqlx::query("DELETE FROM resource_versions WHERE id = $1")
            .bind(&x)
            .execute(&mut *conn)
            .await;
        assert!(refused.is_err(), "{role} deleted a version");
        sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
    }

    // The server purges by itself every CARAPACE_RETENTION_INTERVAL seconds.
    let z = observation_with_versions(&fhir, &p, 3).await;
    let mut purging = Server::start(env_with(
        &stack.server.env,
        &[("CARAPACE_RETENTION_INTERVAL", "1")],
    ))
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while history_len(&fhir, &format!("Observation/{z}")).await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not purge"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    purging.terminate().unwrap();
    assert_eq!(history_len(&fhir, &format!("Observation/{y}")).await, 2);
    let (ok, out, err) = console(&["audit", "verify"]);
    assert!(ok && out.contains("intact"), "{out}{err}");
}

#[tokio::test]
async fn a_patient_key_wrapped_before_per_patient_keks_gets_its_own_at_start_up() {
    let mut stack = Stack::start().await.unwrap();
    let a = stack
        .fhir()
        .post("Patient", &canary_patient())
        .await
        .created_id();
    let db = stack.db().await;
    let scope = format!("Patient/{a}");
    let wrapped = wrapped_key(&db, &scope).await.unwrap();
    // As a server before per-patient KEKs stored it: the same data key, wrapped by the main key.
    let (kek, inner) = wrapped
        .strip_prefix("kek:")
        .and_then(|r| r.split_once(':'))
        .unwrap();
    let root = [("X-Vault-Token", stack.bao.token.as_str())];
    let vault = |path: String, body: Value| {
        let url = format!("{}/v1/{path}", stack.bao.addr);
        async move {
            let r = http("POST", &url, &root, Some(body.to_string().into_bytes()))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    let plain = vault(
        format!("transit/decrypt/{}-{kek}", stack.key_name),
        json!({"ciphertext": inner}),
    )
    .await["data"]["plaintext"]
        .clone();
    let main = vault(
        format!("transit/encrypt/{}", stack.key_name),
        json!({"plaintext": plain}),
    )
    .await["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    sqlx::query("UPDATE data_keys SET wrapped = $1 WHERE scope = $2")
        .bind(&main)
        .bind(&scope)
        .execute(&db)
        .await
        .unwrap();

    // Restarted (its key cache cold), the server reads it and moves it under a KEK of its own.
    stack.server.restart().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let moved = loop {
        let now = wrapped_key(&db, &scope).await.unwrap();
        if now.starts_with("kek:") {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "not moved: {now}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // The scope's own KEK, whose name is derived from the scope: the one it had.
    assert_eq!(moved.split(':').nth(1), Some(kek));
    let r = stack.fhir().get(&scope).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(CANARIES[0]));
    assert_eq!(vault_unwrap_status(&stack, &moved).await, 200);
}

#[tokio::test]
async fn an_erasure_spares_held_records_and_never_destroys_another_patients_key() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let db = stack.db().await;
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}]});
    let parent = fhir.post("Patient", &patient("Parent")).await.created_id();
    let child = fhir.post("Patient", &patient("Child")).await.created_id();
    let other = fhir.post("Patient", &patient("Other")).await.created_id();
    // A Coverage in both records (sealed under the policy holder's key).
    let coverage = fhir
        .post(
            "Coverage",
            &json!({"resourceType": "Coverage", "status": "active",
                    "policyHolder": {"reference": format!("Patient/{parent}")},
                    "beneficiary": {"reference": format!("Patient/{child}")},
                    "payor": [{"display": "Plan"}]}),
        )
        .await;
    assert_eq!(coverage.status, 201, "{}", coverage.text());
    let console_env = stack.console_env("records-officer").await;
    let console = |args: &[&str]| console(&console_env, args, None);
    let (ok, out, err) = console(&["hold", "add", &format!("Patient/{child}"), "--reason", "x"]);
    assert!(ok, "{out}{err}");
    let parent_ref = format!("Patient/{parent}");
    let assert_parent_erasure_waits = || {
        let (ok, _, err) = console(&["patient", "erase", &parent_ref, "--confirm", &parent]);
        assert!(!ok && err.contains("legal hold"), "{err}");
    };
    // The child's hold reaches the Coverage in the parent's record: the parent's erasure waits.
    assert_parent_erasure_waits();
    let coverage_id = coverage.created_id();
    assert_eq!(
        fhir.get(&format!("Coverage/{coverage_id}")).await.status,
        200
    );
    let mut second = fhir.get(&format!("Coverage/{coverage_id}")).await.json();
    second["status"] = json!("cancelled");
    assert_eq!(
        fhir.put(&format!("Coverage/{coverage_id}"), &second)
            .await
            .status,
        200
    );
    a_purge_ignores_tables_its_caller_made(&db, &coverage_id).await;
    // Deleted, the Coverage no longer names the child in its index rows; the hold still reaches
    // its history, which did.
    assert_eq!(
        fhir.delete(&format!("Coverage/{coverage_id}")).await.status,
        204
    );
    assert_parent_erasure_waits();
    // Nor can the server's role hide a hold by renaming a key's scope, or drop the keys that name
    // KEKs and seal audit archives.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET ROLE carapace_app")
        .execute(&mut *conn)
        .await
        .unwrap();
    let renamed = sqlx::query("UPDATE data_keys SET scope = 'Patient/zz' WHERE scope = $1")
        .bind(format!("Patient/{child}"))
        .execute(&mut *conn)
        .await;
    assert!(renamed.is_err(), "a data key's scope was renamed");
    let dropped = sqlx::query("DELETE FROM data_keys WHERE scope = 'keys/kek-names'")
        .execute(&mut *conn)
        .await;
    assert!(dropped.is_err(), "the KEK-naming key was deleted");
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
    drop(conn);

    // A data key row copied from another patient (someone with write access to the database):
    // the erasure refuses, and the other patient's KEK is not touched.
    let other_wrapped = wrapped_key(&db, &format!("Patient/{other}")).await.unwrap();
    let original = wrapped_key(&db, &format!("Patient/{parent}"))
        .await
        .unwrap();
    sqlx::query("UPDATE data_keys SET wrapped = $1 WHERE scope = $2")
        .bind(&other_wrapped)
        .bind(format!("Patient/{child}"))
        .execute(&db)
        .await
        .unwrap();
    let (ok, out, err) = console(&["hold", "release", "1"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = console(&[
        "patient",
        "erase",
        &format!("Patient/{child}"),
        "--confirm",
        &child,
    ]);
    assert!(!ok, "{err}");
    assert_eq!(vault_unwrap_status(&stack, &other_wrapped).await, 200);
    assert_eq!(fhir.get(&format!("Patient/{other}")).await.status, 200);
    assert_eq!(vault_unwrap_status(&stack, &original).await, 200);
    // Refusals are audited with the patient.
    let refused = stack
        .audit_events(&format!("patient=Patient/{child}&outcome=4"))
        .await;
    assert!(
        refused
            .iter()
            .any(|e| e["entity"].to_string().contains("urn:carapace:erasure")),
        "{refused:?}"
    );

    // Released, the Coverage's old version is what a purge would count (a dry run): the held
    // count of 0 above was the hold's doing.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET ROLE carapace_app")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        coverage_versions_due(&mut conn).await,
        2,
        "released: the old versions are due"
    );
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
}

/// Old Coverage versions a purge would remove now (a dry run of the database function).
async fn coverage_versions_due(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT carapace_purge_versions('Coverage', NULL, now() + interval '1 day', 1000, true)",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The database functions resolve nothing a caller made: temporary tables named like theirs (which
/// PostgreSQL would search first) do not hide a hold.
async fn a_purge_ignores_tables_its_caller_made(db: &sqlx::PgPool, coverage: &str) {
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET ROLE carapace_app")
        .execute(&mut *conn)
        .await
        .unwrap();
    for ddl in [
        "CREATE TEMPORARY TABLE data_keys (id BIGINT, scope TEXT)",
        "CREATE TEMPORARY TABLE search_ref (resource_type TEXT, id TEXT, param TEXT, target_type TEXT, target_id TEXT)",
        "CREATE TEMPORARY TABLE resources (resource_type TEXT, id TEXT, version_id BIGINT, compartment TEXT)",
    ] {
        sqlx::query(ddl).execute(&mut *conn).await.unwrap();
    }
    sqlx::query("INSERT INTO pg_temp.resources VALUES ('Coverage', $1, 2, NULL)")
        .bind(coverage)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        coverage_versions_due(&mut conn).await,
        0,
        "the held Coverage's old version stays held"
    );
    sqlx::query("DISCARD TEMP")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
}
