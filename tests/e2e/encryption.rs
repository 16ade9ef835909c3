//! Encryption at rest: the database alone reveals no PHI, and a ciphertext moved to another row does
//! not open.

use carapace_tests::*;

pub(crate) const CANARIES: [&str; 8] = [
    "Zqxcanaryfamily",
    "Zqxcanarygiven",
    "ZQX-CANARY-MRN-77123",
    "1931-07-14",
    "42 Zqxcanary Lane",
    "+1-555-0199-7731",
    "zqx.canary@example.org",
    "Zqxcanary narrative secret",
];

pub(crate) fn canary_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": CANARIES[2]}],
        "name": [{"family": CANARIES[0], "given": [CANARIES[1]]}],
        "birthDate": CANARIES[3],
        "address": [{"line": [CANARIES[4]], "city": "Springfield"}],
        "telecom": [{"system": "phone", "value": CANARIES[5]}, {"system": "email", "value": CANARIES[6]}],
        "text": {"status": "generated",
                 "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", CANARIES[7])}
    })
}

#[tokio::test]
async fn pg_dump_contains_no_canary_phi() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let p = fhir.post("Patient", &canary_patient()).await;
    assert_eq!(p.status, 201, "{}", p.text());
    let pid = p.json()["id"].as_str().unwrap().to_string();
    let obs = fhir
        .post(
            "Observation",
            &json!({
                "resourceType": "Observation", "status": "final",
                "code": {"text": CANARIES[7]},
                "subject": {"reference": format!("Patient/{pid}"), "display": CANARIES[0]},
                "note": [{"text": CANARIES[4]}]
            }),
        )
        .await;
    assert_eq!(obs.status, 201);
    // update, read and history too, so every table has rows
    let mut updated = p.json();
    updated["name"][0]["given"] = json!([CANARIES[1], "Second"]);
    assert_eq!(
        fhir.put(&format!("Patient/{pid}"), &updated).await.status,
        200
    );
    assert_eq!(fhir.get(&format!("Patient/{pid}")).await.status, 200);
    assert_eq!(
        fhir.get(&format!("Patient/{pid}/_history")).await.status,
        200
    );

    // what the API returns has the canaries (so the grep below could find them)...
    let back = fhir.get(&format!("Patient/{pid}")).await.text();
    for c in CANARIES {
        assert!(back.contains(c), "API returns {c}");
    }
    // ...and the database dump has none of them, in any table.
    let dump = stack.postgres.dump(&stack.database).unwrap();
    let text = String::from_utf8_lossy(&dump);
    assert!(text.contains("resource_versions"), "the dump is real");
    for c in CANARIES {
        assert!(!text.contains(c), "pg_dump contains {c}");
        assert!(
            !text.to_lowercase().contains(&c.to_lowercase()),
            "pg_dump contains {c} (any case)"
        );
    }
    // The observation is keyed to its patient's compartment, not to a shared key.
    let db = stack.db().await;
    // The search index holds rows for these resources (so the dump above covered them)...
    for table in ["search_hash", "search_ref", "search_range"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(n > 0, "{table} is empty");
    }
    // ...and finds the patient by every canary without holding any of them.
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("family", CANARIES[0]),
            ("given", CANARIES[1]),
            ("identifier", CANARIES[2]),
            ("birthdate", CANARIES[3]),
            ("address", CANARIES[4]),
            ("phone", CANARIES[5]),
            ("email", CANARIES[6]),
        ])
        .finish();
    let found = fhir.get(&format!("Patient?{query}")).await.json();
    assert_eq!(found["total"], 1, "{found}");
    let scopes: Vec<String> = sqlx::query_scalar(
        "SELECT scope FROM data_keys WHERE scope NOT LIKE 'index/%' ORDER BY scope",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        scopes,
        vec![
            format!("Patient/{pid}"),
            "audit/chain".into(),
            "audit/events".into(),
            "keys/kek-names".into()
        ]
    );
    // Data keys are stored wrapped by Vault transit: a patient's under a key of its own there.
    let wrapped: Vec<(String, String)> = sqlx::query_as("SELECT scope, wrapped FROM data_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    for (scope, wrapped) in wrapped {
        let inner = if scope.starts_with("Patient/") {
            let rest = wrapped.strip_prefix("kek:p-").expect("a patient KEK");
            rest.split_once(':').unwrap().1.to_string()
        } else {
            wrapped
        };
        assert!(inner.starts_with("vault:v1:"), "{scope}: {inner}");
    }
}

#[tokio::test]
async fn a_ciphertext_swapped_into_another_row_fails_to_open() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let a = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Alpha"}]}),
        )
        .await
        .json();
    let b = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Beta"}]}),
        )
        .await
        .json();
    let c = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Gamma"}]}),
        )
        .await
        .json();
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let mut a2 = a.clone();
    a2["gender"] = json!("female");
    assert_eq!(fhir.put(&format!("Patient/{a_id}"), &a2).await.status, 200);

    let db = stack.db().await;
    // An attacker with database access copies A's ciphertext (and key reference) over B's row...
    sqlx::query(
        "UPDATE resource_versions SET sealed = src.sealed, dek_id = src.dek_id
           FROM resource_versions src
          WHERE src.id = $1 AND src.version_id = 1 AND resource_versions.id = $2",
    )
    .bind(a_id)
    .bind(b_id)
    .execute(&db)
    .await
    .unwrap();
    let r = fhir.get(&format!("Patient/{b_id}")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        !r.text().contains("Alpha"),
        "the moved body is never served"
    );
    assert_eq!(r.json()["issue"][0]["code"], "exception");

    // ...or replays an older version's ciphertext into the current version of the same resource.
    sqlx::query(
        "UPDATE resource_versions SET sealed = (SELECT sealed FROM resource_versions WHERE id = $1 AND version_id = 1)
          WHERE id = $1 AND version_id = 2",
    ).bind(a_id).execute(&db).await.unwrap();
    let r = fhir.get(&format!("Patient/{a_id}")).await;
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("Alpha"));
    // Untouched rows still read; an older version of a resource whose current version fails its
    // check fails closed too (the gate decides every version on the resource as it is now).
    let c_id = c["id"].as_str().unwrap();
    assert_eq!(fhir.get(&format!("Patient/{c_id}")).await.status, 200);
    assert_eq!(
        fhir.get(&format!("Patient/{c_id}/_history/1")).await.status,
        200
    );
    let old = fhir.get(&format!("Patient/{a_id}/_history/1")).await;
    assert_eq!(old.status, 500);
    assert!(!old.text().contains("Alpha"));
    let log = stack.server.log_text();
    assert!(
        log.contains("did not open"),
        "the integrity failure is logged"
    );
    assert!(
        !log.contains("Alpha") && !log.contains("Beta"),
        "no PHI in logs"
    );
}
