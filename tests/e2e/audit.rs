//! The audit trail is append-only and hash-chained: the database refuses UPDATE, DELETE and
//! TRUNCATE of events, and `carapace-console audit verify` finds the first event edited, deleted or
//! inserted by someone who got around that.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use carapace_core::access::Role;
use carapace_tests::*;
use serde_json::{json, Value};

#[tokio::test]
async fn the_audit_trail_is_append_only_and_verify_finds_tampering() {
    let mut stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    // Activity of every kind: creates (audited in their transactions), reads and searches (through
    // the group-committing writer), a transaction Bundle.
    for i in 0..4 {
        let r = fhir
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": format!("Chain{i}")}]}),
            )
            .await;
        assert_eq!(r.status, 201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    }
    assert_eq!(fhir.get("Patient?family=chain").await.status, 200);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "active": true},
         "request": {"method": "POST", "url": "Patient"}}]});
    assert_eq!(fhir.post("", &bundle).await.status, 200);

    // Nobody edits or removes an event, not even the table's owner.
    let db = stack.db().await;
    for sql in [
        "UPDATE audit_events SET principal = 'mallory'",
        "DELETE FROM audit_events WHERE id = 1",
        "TRUNCATE audit_events CASCADE",
        "TRUNCATE audit_links",
    ] {
        let err = sqlx::query(sql).execute(&db).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // The server chains events as they commit; it stops here so that nothing is chained while the
    // chain is tampered with below (`audit verify` chains what waits before it walks).
    assert!(stack.server.terminate().unwrap());

    let env = stack.console_env("auditor").await;
    let verify_with = |args: Vec<String>| {
        let env = env.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                console(&env, &args, None)
            })
            .await
            .unwrap()
        }
    };
    let verify = || verify_with(vec!["audit".into(), "verify".into()]);
    let (ok, out, err) = verify().await;
    assert!(ok, "{out} {err}");
    assert!(out.contains("audit chain intact"), "{out}");
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let chained: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_links")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(chained >= 10, "{chained} events");

    // Someone with the power to switch the triggers off edits one event in the middle: found.
    let tamper = |sql: &str| {
        let (db, sql) = (db.clone(), sql.to_string());
        async move {
            let mut tx = db.begin().await.unwrap();
            for table in ["audit_events", "audit_links"] {
                sqlx::query(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            sqlx::query(&sql).execute(&mut *tx).await.unwrap();
            for table in ["audit_events", "audit_links"] {
                sqlx::query(&format!("ALTER TABLE {table} ENABLE TRIGGER USER"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
    };
    let at = |seq: i64| format!("(SELECT event_id FROM audit_links WHERE seq = {seq})");
    tamper(&format!(
        "UPDATE audit_events SET principal = principal || ' ' WHERE id = {}",
        at(5)
    ))
    .await;
    let (ok, _, err) = verify().await;
    assert!(!ok);
    assert!(
        err.contains("BROKEN at event 5") && err.contains("edited"),
        "{err}"
    );
    // Put back exactly as it was, the chain holds again: the links cover the content itself.
    tamper(&format!(
        "UPDATE audit_events SET principal = rtrim(principal) WHERE id = {}",
        at(5)
    ))
    .await;
    let (ok, out, err) = verify().await;
    assert!(ok && out.contains("intact"), "{out} {err}");
    // An event slipped in without a place in the chain.
    tamper(
        "INSERT INTO audit_events (recorded, action, outcome, principal, event)
         VALUES (now(), 'R', '0', 'mallory', '{}')",
    )
    .await;
    let (ok, _, err) = verify().await;
    assert!(!ok && err.contains("outside the chain"), "{err}");
    tamper("DELETE FROM audit_events WHERE principal = 'mallory'").await;
    // The end cut off and the head row rewound with it: the chain alone cannot tell, the anchor
    // kept from an earlier run can.
    let anchor_seq: i64 = head.split(':').next().unwrap().parse().unwrap();
    let cut = |from: i64| {
        format!(
            "WITH gone AS (DELETE FROM audit_links WHERE seq >= {from} RETURNING event_id)
             DELETE FROM audit_events WHERE id IN (SELECT event_id FROM gone)"
        )
    };
    tamper(&cut(anchor_seq)).await;
    sqlx::query(
        "UPDATE audit_chain_head SET seq = e.seq, link = e.link
           FROM (SELECT seq, link FROM audit_links ORDER BY seq DESC LIMIT 1) e",
    )
    .execute(&db)
    .await
    .unwrap();
    let (ok, out, err) = verify().await;
    assert!(
        ok,
        "without an anchor a rewound end goes unnoticed: {out} {err}"
    );
    let anchored = vec![
        "audit".into(),
        "verify".into(),
        "--anchor".into(),
        head.clone(),
    ];
    let (ok, _, err) = verify_with(anchored).await;
    // (The unanchored run above audited itself into the anchor's place: a different event there.)
    let at = format!("BROKEN at event {anchor_seq}: the event is not the anchor");
    assert!(!ok && err.contains(&at), "{err}");
    // Two events swapped (each moved to the other's place, with its link).
    let swap = || async {
        tamper("UPDATE audit_links SET seq = -seq WHERE seq IN (3, 4)").await;
        tamper(
            "UPDATE audit_links SET seq = CASE seq WHEN -3 THEN 4 ELSE 3 END WHERE seq IN (-3, -4)",
        )
        .await;
    };
    swap().await;
    let (ok, _, err) = verify().await;
    assert!(!ok && err.contains("BROKEN at event 3"), "{err}");
    swap().await;
    // A deleted event.
    tamper(&cut(7).replace(">=", "=")).await;
    let (ok, _, err) = verify().await;
    assert!(
        !ok && err.contains("BROKEN at event 7") && err.contains("missing"),
        "{err}"
    );
}

/// An event written the way the server writes them (so queued for the chainer) by someone without
/// the chain key cannot carry a valid tag: the chain breaks where it was linked.
#[tokio::test]
async fn a_forged_event_breaks_the_chain_where_it_is_linked() {
    let mut stack = Stack::start().await.unwrap();
    assert_eq!(stack.fhir().get("metadata").await.status, 200);
    let r = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(stack.server.terminate().unwrap());
    let db = stack.db().await;
    sqlx::query(
        "INSERT INTO audit_events (recorded, action, outcome, principal, sealed, tag, dek_id)
         VALUES (now(), 'R', '0', 'mallory', '\\x00', '\\x00', (SELECT min(id) FROM data_keys))",
    )
    .execute(&db)
    .await
    .unwrap();
    let env = stack.console_env("auditor").await;
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || console(&env, &["audit", "verify"], None))
            .await
            .unwrap();
    assert!(
        !ok && err.contains("BROKEN") && err.contains("does not match"),
        "{out} {err}"
    );
}

/// The address in an AuditEvent is the connection's peer; `X-Forwarded-For` is believed only from
/// the proxies named in `CARAPACE_TRUSTED_PROXIES`.
#[tokio::test]
async fn a_forwarded_address_is_recorded_only_from_a_trusted_proxy() {
    let mut stack = Stack::start().await.unwrap();
    let r = stack
        .fhir()
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await;
    let path = format!("Patient/{}", r.json()["id"].as_str().unwrap());
    async fn read_as(stack: &Stack, path: &str, forwarded: &str) -> String {
        let (url, auth) = (stack.server.url(path), stack.server.bearer());
        let headers = [
            ("Authorization", auth.as_str()),
            ("X-Forwarded-For", forwarded),
        ];
        assert_eq!(http("GET", &url, &headers, None).await.unwrap().status, 200);
        let events = stack.audit_events("subtype=read&_count=1").await;
        events[0]["agent"][0]["network"]["address"]
            .as_str()
            .unwrap()
            .to_string()
    }
    // Nothing trusted by default: a client cannot choose the address it is audited under.
    assert_eq!(read_as(&stack, &path, "203.0.113.7").await, "127.0.0.1");
    stack
        .server
        .env
        .push(("CARAPACE_TRUSTED_PROXIES".into(), "127.0.0.1".into()));
    stack.server.restart().await.unwrap();
    assert_eq!(read_as(&stack, &path, "203.0.113.7").await, "203.0.113.7");
    // Only the hop the trusted proxy saw counts, not what the client wrote to its left.
    assert_eq!(
        read_as(&stack, &path, "198.51.100.2, 203.0.113.9").await,
        "203.0.113.9"
    );
}

/// A search writes one AuditEvent per patient whose data it returned (IHE BALP), so each patient's
/// "who saw my record" finds it; a search that returned nothing still writes one.
#[tokio::test]
async fn a_search_is_audited_once_per_patient_returned() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let mut patients = Vec::new();
    for family in ["Ada", "Bea"] {
        let r = fhir
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": family}]}),
            )
            .await;
        let id = r.json()["id"].as_str().unwrap().to_string();
        for _ in 0..2 {
            let obs = json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{id}")}});
            assert_eq!(fhir.post("Observation", &obs).await.status, 201);
        }
        patients.push(format!("Patient/{id}"));
    }
    let db = stack.db().await;
    let searched = |query: &'static str| {
        let (fhir, db, stack) = (stack.fhir(), db.clone(), &stack);
        async move {
            let before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM audit_events")
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(fhir.get(query).await.status, 200);
            // The events after `before`: the search's (carrying its query), read through the API.
            let mut seen: Vec<Option<String>> = stack
                .audit_events("subtype=search-type&_count=100")
                .await
                .into_iter()
                .filter(|e| e["id"].as_str().unwrap().parse::<i64>().unwrap() > before)
                .filter(|e| {
                    e["entity"].as_array().unwrap().iter().any(|x| {
                        x["query"].as_str().is_some_and(|q| {
                            let code = query.rsplit('|').next().unwrap();
                            let q = String::from_utf8(B64.decode(q).unwrap()).unwrap();
                            q.starts_with("Observation?") && q.contains(code)
                        })
                    })
                })
                .map(|e| {
                    e["entity"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find_map(|x| x["what"]["reference"].as_str().map(str::to_string))
                })
                .collect();
            seen.sort();
            seen
        }
    };
    let mut want: Vec<Option<String>> = patients.iter().cloned().map(Some).collect();
    want.sort();
    assert_eq!(
        searched("Observation?code=http://loinc.org|8867-4").await,
        want
    );
    assert_eq!(
        searched("Observation?code=http://loinc.org|0000-0").await,
        vec![Some("Observation".to_string())],
        "no data returned: one event for the search"
    );
}

/// A refused history is audited like a refused read: a caller without a wildcard scope asks for
/// the whole server's history, is refused, and the refusal is in the trail (subtype
/// `history-system`, a failure outcome, the caller as agent).
#[tokio::test]
async fn a_refused_history_is_audited() {
    let stack = Stack::start().await.unwrap();
    let token = stack
        .token("narrow-client", Role::System, "system/Observation.rs", None)
        .await
        .unwrap();
    let auth = format!("Bearer {token}");
    let refused = http(
        "GET",
        &stack.server.url("_history"),
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.text());
    let events = stack.audit_events("subtype=history-system").await;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"].as_str() != Some("0"))
        .filter(|e| e.to_string().contains("narrow-client"))
        .collect();
    assert_eq!(failed.len(), 1, "{events:#?}");
}
