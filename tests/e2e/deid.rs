//! De-identified analytics through the real server: everything an `analytics` caller receives —
//! read, search with includes, `$everything`, history, a Bulk export — carries none of the
//! encryption test's canaries and no real id; pseudonyms are stable and open nothing; searches by
//! what could single out a person are refused; other callers still see the record; a rule set is
//! configuration, checked at start-up and recorded in the audit trail.

use crate::encryption::{canary_patient, CANARIES};
use carapace_core::access::Role;
use carapace_tests::*;
use std::time::{Duration, Instant};

struct World {
    stack: Stack,
    _dir: tempfile::TempDir,
    patient: String,
    observation: String,
    analyst: String,
}

async fn world(extra: Vec<(String, String)>) -> World {
    let (stack, dir) = Stack::start_exporting(extra).await.unwrap();
    let f = stack.fhir();
    let id = |r: HttpResponse| r.created_id();
    let patient = id(f.post("Patient", &canary_patient()).await);
    let observation = id(f
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                         "text": CANARIES[0]},
                "subject": {"reference": format!("Patient/{patient}"), "display": CANARIES[1]},
                "effectiveDateTime": "2024-03-04T10:15:00Z",
                "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
                "note": [{"text": CANARIES[7]}]}),
        )
        .await);
    // The patient consents to research: what analytics callers may see at all.
    let mut research = consent(&patient, "permit", None, &[], None);
    research["provision"]["purpose"] = json!([{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]);
    id(f.post("Consent", &research).await);
    stack.token_user("analyst", "analytics", None).await;
    let analyst = stack
        .token("analyst", Role::Analytics, "user/*.rs", None)
        .await
        .unwrap();
    World {
        stack,
        _dir: dir,
        patient,
        observation,
        analyst,
    }
}

impl World {
    async fn get(&self, token: &str, path: &str) -> HttpResponse {
        let auth = format!("Bearer {token}");
        http(
            "GET",
            &self.stack.server.url(path),
            &[("Authorization", auth.as_str()), ("Accept", FHIR_JSON)],
            None,
        )
        .await
        .unwrap()
    }

    /// An answer to the analyst holds no canary and no real id (a Bundle's entries: its links
    /// echo the query the caller sent).
    fn clean(&self, what: &str, text: &str) {
        let text = &match serde_json::from_str::<Value>(text) {
            Ok(v) if v["resourceType"] == "Bundle" => v["entry"].to_string(),
            _ => text.to_string(),
        };
        for canary in CANARIES {
            assert!(!text.contains(canary), "{what}: {canary} in {text}");
        }
        for id in [&self.patient, &self.observation] {
            assert!(!text.contains(id.as_str()), "{what}: a real id in {text}");
        }
    }
}

#[tokio::test]
async fn analytics_callers_receive_de_identified_data_only() {
    let w = world(vec![]).await;
    let a = &w.analyst;

    // Read: de-identified, labelled, the same pseudonym every time.
    let r = w.get(a, &format!("Patient/{}", w.patient)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    w.clean("read", &r.text());
    let p = r.json();
    assert_eq!(p["meta"]["security"][0]["code"], "PSEUDED");
    assert_eq!(p["birthDate"].as_str().unwrap().len(), 4);
    assert!(p["address"][0].get("city").is_none() && p["address"][0].get("line").is_none());
    let pseudonym = p["id"].as_str().unwrap().to_string();
    assert_ne!(pseudonym, w.patient);
    let again = w.get(a, &format!("Patient/{}", w.patient)).await.json();
    assert_eq!(again["id"], pseudonym.as_str());
    // A pseudonym opens nothing.
    assert_eq!(w.get(a, &format!("Patient/{pseudonym}")).await.status, 404);
    let by_pseudonym = w
        .get(a, &format!("Observation?subject=Patient/{pseudonym}"))
        .await;
    assert_eq!(by_pseudonym.json()["total"], 0);

    // Search with includes: matches and included alike; references join on the pseudonym.
    let s = w
        .get(
            a,
            "Observation?code=http://loinc.org|8867-4&_include=Observation:subject",
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    w.clean("search", &s.text());
    let bundle = s.json();
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let obs = entries
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Observation")
        .unwrap();
    assert_eq!(
        obs["resource"]["subject"]["reference"],
        format!("Patient/{pseudonym}").as_str()
    );
    assert_eq!(obs["resource"]["effectiveDateTime"], "2024");
    assert_eq!(obs["resource"]["valueQuantity"]["value"], 72);
    assert_eq!(obs["resource"]["code"]["coding"][0]["code"], "8867-4");
    assert!(obs["fullUrl"]
        .as_str()
        .unwrap()
        .ends_with(obs["resource"]["id"].as_str().unwrap()));

    // `$everything` and history.
    for path in [
        format!("Patient/{}/$everything", w.patient),
        format!("Patient/{}/_history", w.patient),
        format!("Observation/{}/_history", w.observation),
    ] {
        let r = w.get(a, &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        w.clean(&path, &r.text());
        assert!(
            r.json()["entry"].as_array().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }

    // Searches by what could single out a person are refused, with a clear outcome.
    for query in [
        "Patient?name=Zqx",
        "Patient?family=Zqxcanaryfamily",
        "Patient?identifier=ZQX-CANARY-MRN-77123",
        "Patient?telecom=zqx.canary@example.org",
        "Patient?address-city=Springfield",
        "Patient?birthdate=1931-07-14",
        "Observation?date=ge2024-03-04",
        "Observation?subject:Patient.name=Zqx",
        "Patient?_sort=birthdate",
        // Ages past 89 (answers say "90 or more"), URIs, composites.
        "Condition?onset-age=gt96",
        "Observation?value-quantity=gt95||a",
        "DocumentReference?location=http://x",
        "Observation?code-value-quantity=http://loinc.org|8867-4$gt60",
        // Free text, which de-identified answers leave out: no oracle on it either.
        "Observation?code:text=Zqx",
        "Observation?value-string=Zqx",
        // A year of birth of someone 90 or older is not asked after either.
        "Patient?birthdate=1931",
        "Patient?birthdate=lt1990",
    ] {
        let r = w.get(a, query).await;
        assert_eq!(r.status, 403, "{query}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert!(r.text().contains("de-identified"), "{query}: {}", r.text());
    }
    // `_since` finer than a year would find when a record was written.
    for path in [
        format!("Patient/{}/_history?_since=2026-02-03T04:05:06Z", w.patient),
        format!(
            "Patient/{}/$everything?_since=2026-02-03T04:05:06Z",
            w.patient
        ),
    ] {
        assert_eq!(w.get(a, &path).await.status, 403, "{path}");
    }
    assert_eq!(
        w.get(
            a,
            &format!("Patient/{}/_history?_since=2020-01-01T00:00:00Z", w.patient)
        )
        .await
        .status,
        200
    );
    // A conditional create is the first step of a write: no oracle for a caller who never writes.
    let probe = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "request": {"method": "POST", "url": "Patient",
                    "ifNoneExist": format!("identifier={}", CANARIES[2])},
        "resource": {"resourceType": "Patient"}}]});
    let auth = format!("Bearer {a}");
    let r = http(
        "POST",
        &w.stack.server.url(""),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", FHIR_JSON),
            ("Accept", FHIR_JSON),
        ],
        Some(probe.to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    w.clean("transaction", &r.text());

    // Aggregates and coarse filters are allowed.
    let count = w
        .get(a, "Patient?_summary=count&address-state:missing=true")
        .await;
    assert_eq!(count.status, 200, "{}", count.text());
    assert_eq!(count.json()["total"], 1);
    let young = w.get(a, "Patient?_summary=count&birthdate=ge1990").await;
    assert_eq!(young.status, 200, "{}", young.text());
    assert_eq!(young.json()["total"], 0);
    assert_eq!(
        w.get(a, "Observation?_summary=count").await.json()["total"],
        1
    );

    // Everyone else still receives the record as it is.
    let full = w.stack.fhir().get(&format!("Patient/{}", w.patient)).await;
    assert!(full.text().contains(CANARIES[0]));
    assert_eq!(full.json()["id"], w.patient.as_str());

    // A Bulk export by the analyst: its files are de-identified too.
    let auth = format!("Bearer {a}");
    let kick = http(
        "GET",
        &w.stack.server.url("$export?_type=Patient,Observation"),
        &[
            ("Authorization", auth.as_str()),
            ("Accept", FHIR_JSON),
            ("Prefer", "respond-async"),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(kick.status, 202, "{}", kick.text());
    let status = kick.header("content-location").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        let r = http("GET", &status, &[("Authorization", auth.as_str())], None)
            .await
            .unwrap();
        if r.status == 200 {
            break r.json();
        }
        assert_eq!(r.status, 202, "{}", r.text());
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outputs = manifest["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    for out in outputs {
        let r = http(
            "GET",
            out["url"].as_str().unwrap(),
            &[("Authorization", auth.as_str())],
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        w.clean("export", &r.text());
        assert!(r.text().contains(&pseudonym), "{}", r.text());
    }

    // The rules in force are on record: an administrative event naming their digest.
    let digest = carapace_core::deid::Rules::safe_harbor().unwrap().digest;
    let events = w.stack.audit_events("subtype=admin&_count=200").await;
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains(&format!("deid-rules:{digest}"))),
        "{events:#?}"
    );
}

#[tokio::test]
async fn de_identification_rules_are_configuration_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    // Rules of one's own: names kept out by type, ids kept (no pseudonyms), labelled ANONYED.
    let own = dir.path().join("rules.json");
    std::fs::write(
        &own,
        r#"{"name": "names and notes only", "label": "ANONYED", "rules": [
            {"path": "type:HumanName", "method": "redact"},
            {"path": "type:Annotation", "method": "redact"},
            {"path": "type:Narrative", "method": "redact"}]}"#,
    )
    .unwrap();
    let w = world(vec![(
        "CARAPACE_DEID_RULES".into(),
        own.display().to_string(),
    )])
    .await;
    let p = w
        .get(&w.analyst, &format!("Patient/{}", w.patient))
        .await
        .json();
    assert!(p.get("name").is_none());
    assert_eq!(p["id"], w.patient.as_str(), "these rules keep ids");
    assert_eq!(p["birthDate"], CANARIES[3], "these rules keep dates");
    assert_eq!(p["meta"]["security"][0]["code"], "ANONYED");
    let events = w.stack.audit_events("subtype=admin&_count=200").await;
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&own).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(events
        .iter()
        .any(|e| e.to_string().contains(&format!("deid-rules:{digest}"))));

    // A rule that names nothing R4 has: the server does not start, and says why.
    std::fs::write(
        &own,
        r#"{"name": "typo", "label": "PSEUDED", "rules": [{"path": "type:HumanNmae", "method": "redact"}]}"#,
    )
    .unwrap();
    let mut env = w.stack.server.env.clone();
    env.retain(|(k, _)| k != "CARAPACE_DEID_RULES");
    env.push(("CARAPACE_DEID_RULES".into(), own.display().to_string()));
    let refused = Server::start(env).await;
    let text = match refused {
        Ok(_) => panic!("a server started on rules that name nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("CARAPACE_DEID_RULES") && text.contains("HumanNmae"),
        "{text}"
    );
}
