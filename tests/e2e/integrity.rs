//! Issue 14, referential integrity: a write that refers to a resource of this server that does not
//! exist, was deleted, or lacks the version named is refused (400, the reference's FHIRPath) —
//! on create, update, patch, batch entries and transactions (checked after all of a transaction's
//! writes) — unless `CARAPACE_REFERENTIAL_INTEGRITY=off`; and a reference to what the caller may
//! not see passes without telling them anything about it.

use carapace_tests::*;

fn observation(references: Value) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}});
    for (k, v) in references.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn reference(target: &str) -> Value {
    json!({"reference": target})
}

fn created(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// A 400 whose issues name exactly `paths` (as `expression`), each `not-found`, and whose text
/// never repeats the ids the client sent.
fn refused(r: &HttpResponse, paths: &[&str], never: &[&str]) {
    assert_eq!(r.status, 400, "{}", r.text());
    let outcome = r.json();
    let issues = outcome["issue"].as_array().unwrap();
    let named: Vec<&str> = issues
        .iter()
        .filter(|i| i["code"] == "not-found")
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert_eq!(named, paths, "{outcome}");
    for i in issues.iter().filter(|i| i["code"] == "not-found") {
        assert_eq!(i["severity"], "error");
        assert_eq!(i["location"], i["expression"]);
    }
    for id in never {
        assert!(!r.text().contains(id), "{id} echoed: {}", r.text());
    }
}

async fn count(stack: &Stack, resource_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM resources WHERE resource_type = $1 AND NOT deleted")
        .bind(resource_type)
        .fetch_one(&stack.db().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_refer_to_missing_or_deleted_resources_are_refused() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let p = created(&f.post("Patient", &json!({"resourceType": "Patient"})).await);
    let gone = created(&f.post("Patient", &json!({"resourceType": "Patient"})).await);
    assert_eq!(f.delete(&format!("Patient/{gone}")).await.status, 204);

    // Create: a missing subject, named by its FHIRPath; the message names the type, not the id.
    let r = f
        .post(
            "Observation",
            &observation(json!({"subject": reference("Patient/does-not-exist")})),
        )
        .await;
    refused(&r, &["Observation.subject"], &["does-not-exist"]);
    assert!(r.text().contains("Patient"), "{}", r.text());
    // A deleted one, a version that does not exist, one in a list, an absolute URL at this base.
    let r = f
        .post(
            "Observation",
            &observation(json!({"subject": reference(&format!("Patient/{gone}"))})),
        )
        .await;
    refused(&r, &["Observation.subject"], &[&gone]);
    assert!(r.text().contains("deleted"), "{}", r.text());
    let r = f
        .post(
            "Observation",
            &observation(json!({
                "subject": reference(&format!("Patient/{p}/_history/7")),
                "performer": [reference(&format!("Patient/{p}")), reference("Practitioner/nobody")],
                "derivedFrom": [reference(&format!("{}/Observation/elsewhere", stack.server.base))],
            })),
        )
        .await;
    refused(
        &r,
        &[
            "Observation.subject",
            "Observation.performer[1]",
            "Observation.derivedFrom[0]",
        ],
        &["nobody", "elsewhere"],
    );
    // What exists passes, and so do references this server does not resolve: contained, other
    // servers', logical ones.
    let good = observation(json!({
        "subject": reference(&format!("Patient/{p}/_history/1")),
        "performer": [reference(&format!("{}/Patient/{p}", stack.server.base)),
                      reference("#dev")],
        "contained": [{"resourceType": "Device", "id": "dev"}],
        "derivedFrom": [reference("https://other.example/fhir/Observation/x")],
        "focus": [{"identifier": {"system": "urn:x", "value": "y"}}],
    }));
    let obs = created(&f.post("Observation", &good).await);

    // Update, update-as-create, patch.
    let mut bad = good.clone();
    bad["id"] = json!(obs);
    bad["subject"] = reference("Patient/missing");
    refused(
        &f.put(&format!("Observation/{obs}"), &bad).await,
        &["Observation.subject"],
        &["missing"],
    );
    bad["id"] = json!("new-obs");
    refused(
        &f.put("Observation/new-obs", &bad).await,
        &["Observation.subject"],
        &[],
    );
    let patch =
        json!([{"op": "add", "path": "/hasMember", "value": [reference("Observation/missing")]}]);
    let r = f
        .send(
            "PATCH",
            &format!("Observation/{obs}"),
            &patch,
            &[("Content-Type", "application/json-patch+json")],
        )
        .await;
    refused(&r, &["Observation.hasMember[0]"], &["missing"]);
    let r = f.get(&format!("Observation/{obs}")).await;
    assert_eq!(r.json()["meta"]["versionId"], "1", "nothing was written");

    // A batch: the entry fails alone.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": observation(json!({"subject": reference("Patient/missing")})),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(json!({"subject": reference(&format!("Patient/{p}"))})),
         "request": {"method": "POST", "url": "Observation"}},
    ]});
    let r = f.post("", &batch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = r.json()["entry"].clone();
    assert_eq!(
        entries[0]["response"]["status"], "400 Bad Request",
        "{entries}"
    );
    assert_eq!(
        entries[0]["response"]["outcome"]["issue"][0]["expression"][0],
        "Observation.subject"
    );
    assert!(entries[1]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("201"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_checked_after_all_their_writes() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    let uuid = "urn:uuid:6f1a9d3e-0b7c-4e7a-9d2f-1a2b3c4d5e6f";
    let tx = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let post = |url: &str, resource: Value, full_url: Option<&str>| {
        let mut e = json!({"resource": resource, "request": {"method": "POST", "url": url}});
        if let Some(u) = full_url {
            e["fullUrl"] = json!(u);
        }
        e
    };
    // Entry 1 refers to entry 0 by its urn:uuid, entry 2 to a Patient the same transaction puts
    // with an id of its own.
    let ok = tx(vec![
        post("Patient", json!({"resourceType": "Patient"}), Some(uuid)),
        post(
            "Observation",
            observation(json!({"subject": reference(uuid)})),
            None,
        ),
        post(
            "Observation",
            observation(json!({"subject": reference("Patient/put-here")})),
            None,
        ),
        json!({"resource": {"resourceType": "Patient", "id": "put-here"},
               "request": {"method": "PUT", "url": "Patient/put-here"}}),
    ]);
    let r = f.post("", &ok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (patients, observations) = (
        count(&stack, "Patient").await,
        count(&stack, "Observation").await,
    );
    assert_eq!((patients, observations), (2, 2));

    // A dangling reference in entry 2: the whole transaction fails, naming it; nothing written.
    let bad = tx(vec![
        post("Patient", json!({"resourceType": "Patient"}), Some(uuid)),
        post(
            "Observation",
            observation(json!({"subject": reference(uuid)})),
            None,
        ),
        post(
            "Observation",
            observation(json!({"subject": reference(uuid),
                               "hasMember": [reference("Observation/nope")]})),
            None,
        ),
    ]);
    let r = f.post("", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let issues = r.json()["issue"].clone();
    assert_eq!(
        issues[0]["expression"][0], "Bundle.entry[2].resource.hasMember[0]",
        "{issues}"
    );
    assert_eq!(issues[0]["code"], "not-found");
    assert!(!r.text().contains("nope"));
    assert_eq!(count(&stack, "Patient").await, patients);
    assert_eq!(count(&stack, "Observation").await, observations);

    // What the transaction deletes does not count.
    let r = f
        .post(
            "",
            &tx(vec![
                json!({"request": {"method": "DELETE", "url": "Patient/put-here"}}),
                post(
                    "Observation",
                    observation(json!({"subject": reference("Patient/put-here")})),
                    None,
                ),
            ]),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.subject"
    );
    assert_eq!(f.get("Patient/put-here").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_can_be_turned_off() {
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![("CARAPACE_REFERENTIAL_INTEGRITY".into(), "off".into())],
    )
    .await
    .unwrap();
    let r = stack
        .fhir()
        .post(
            "Observation",
            &observation(json!({"subject": reference("Patient/does-not-exist")})),
        )
        .await;
    created(&r);
}

/// A practitioner whom patient A's consent opens A's record to, and no consent opens B's: a
/// reference to B's data passes whether it exists, was deleted or never was (the answers are
/// the same), while one to A's deleted data is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_what_the_caller_cannot_see_pass_and_tell_nothing() {
    let w = super::gate::world().await;
    let (a, b) = (w.a.clone(), w.b.clone());
    let of_b = w
        .system_writes("POST", "Observation", &super::gate::obs(&b, None))
        .await;
    // An Observation in a patient's record, written and then deleted by the system client.
    let deleted_of = |patient: String| {
        let w = &w;
        async move {
            let id = w
                .system_writes("POST", "Observation", &super::gate::obs(&patient, None))
                .await;
            let r = w
                .call("system", "DELETE", &format!("Observation/{id}"), None, &[])
                .await;
            assert_eq!(r.status, 204);
            id
        }
    };
    let b_gone = deleted_of(b.clone()).await;
    let a_gone = deleted_of(a.clone()).await;
    let derived = |target: &str| {
        let mut o = super::gate::obs(&a, None);
        o["derivedFrom"] = json!([reference(&format!("Observation/{target}"))]);
        o
    };
    for caller in ["dr", "patient-a"] {
        let mut answers = Vec::new();
        for target in [of_b.as_str(), b_gone.as_str(), "never-was"] {
            let r = w
                .send(caller, "POST", "Observation", &derived(target))
                .await;
            assert_eq!(r.status, 201, "{caller} → {target}: {}", r.text());
            let mut body = r.json();
            assert_eq!(body["derivedFrom"], derived(target)["derivedFrom"]);
            for k in ["id", "meta", "derivedFrom"] {
                body.as_object_mut().unwrap().remove(k);
            }
            answers.push(body);
        }
        assert!(
            answers.windows(2).all(|p| p[0] == p[1]),
            "{caller}: {answers:?}"
        );
        // What the caller does see is checked.
        let r = w
            .send(caller, "POST", "Observation", &derived(&a_gone))
            .await;
        refused(&r, &["Observation.derivedFrom[0]"], &[&a_gone]);
    }
    // The administrator sees every record: a missing one is missing.
    let r = w
        .send("admin", "POST", "Observation", &derived("never-was"))
        .await;
    refused(&r, &["Observation.derivedFrom[0]"], &["never-was"]);
}
