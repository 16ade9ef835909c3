//! Operations: `$validate` with the same R4 checks as writes, and `Patient/{id}/$everything`
//! returning the patient's compartment, paged, narrowed by `_type` and the caller's access.

use carapace_core::access::{Role, Scope};
use carapace_tests::*;

#[tokio::test]
async fn validate_reports_r4_problems_without_storing_anything() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let text = json!({"status": "generated",
        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">A patient</div>"});
    let ok = fhir
        .post(
            "Patient/$validate",
            &json!({"resourceType": "Patient", "text": text, "birthDate": "1970-01-01"}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["issue"][0]["severity"], "information");
    // A warning invariant (dom-6: a resource should have a narrative) is reported, not refused.
    let warned = fhir
        .post(
            "Patient/$validate",
            &json!({"resourceType": "Patient", "birthDate": "1970-01-01"}),
        )
        .await;
    assert_eq!(warned.status, 200, "{}", warned.text());
    let issue = &warned.json()["issue"][0];
    assert_eq!(
        (&issue["severity"], &issue["code"], &issue["expression"][0]),
        (&json!("warning"), &json!("invariant"), &json!("Patient")),
        "{}",
        warned.text()
    );
    assert!(issue["diagnostics"]
        .as_str()
        .unwrap()
        .starts_with("dom-6: "));
    // An error invariant refuses: pat-1 (a contact needs some detail), named at the contact.
    let contact = fhir
        .post(
            "Patient/$validate",
            &json!({"resourceType": "Patient", "text": text, "contact": [{"gender": "male"}]}),
        )
        .await;
    let issue = &contact.json()["issue"][0];
    assert_eq!(
        (&issue["severity"], &issue["expression"][0]),
        (&json!("error"), &json!("Patient.contact[0]")),
        "{}",
        contact.text()
    );
    let bad = fhir
        .post(
            "Patient/$validate",
            &json!({"resourceType": "Patient", "birthDate": "1970-13-01", "colour": "x"}),
        )
        .await;
    assert_eq!(bad.status, 200);
    let paths: Vec<String> = bad.json()["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["Patient.birthDate", "Patient.colour"]);
    let wrapped = fhir
        .post(
            "Observation/$validate",
            &json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Observation", "code": {"text": "x"}}}]}),
        )
        .await;
    assert_eq!(
        wrapped.json()["issue"][0]["expression"][0],
        "Observation.status",
        "{}",
        wrapped.text()
    );
    let wrong_type = fhir
        .post("Observation/$validate", &json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(
        wrong_type.json()["issue"][0]["expression"][0],
        "resourceType"
    );
    let instance = fhir
        .post(
            "Patient/abc/$validate",
            &json!({"resourceType": "Patient", "id": "xyz"}),
        )
        .await;
    assert_eq!(instance.json()["issue"][0]["expression"][0], "Patient.id");
    assert_eq!(
        fhir.raw("POST", "Patient/$validate", b"{oops".to_vec(), &[])
            .await
            .status,
        400
    );
    let anonymous = http(
        "POST",
        &stack.server.url("Patient/$validate"),
        &[("Content-Type", FHIR_JSON)],
        Some(b"{\"resourceType\":\"Patient\"}".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(anonymous.status, 401);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&stack.db().await)
        .await
        .unwrap();
    assert_eq!(n, 0, "validation stores nothing");
}

#[tokio::test]
async fn everything_returns_the_compartment_paged_and_narrowed() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let a = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "A"}]}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "B"}]}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let subject = |p: &str| json!({"reference": format!("Patient/{p}")});
    let mut mine = vec![format!("Patient/{a}")];
    for n in 0..3 {
        let r = fhir
            .post(
                "Observation",
                &json!({"resourceType": "Observation", "status": "final",
            "code": {"text": format!("obs {n}")}, "subject": subject(&a)}),
            )
            .await
            .json();
        mine.push(format!("Observation/{}", r["id"].as_str().unwrap()));
    }
    let cond = fhir
        .post(
            "Condition",
            &json!({"resourceType": "Condition", "subject": subject(&a)}),
        )
        .await
        .json();
    mine.push(format!("Condition/{}", cond["id"].as_str().unwrap()));
    fhir.post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "B's"}, "subject": subject(&b)})).await;
    fhir.post(
        "Organization",
        &json!({"resourceType": "Organization", "name": "Outside"}),
    )
    .await;
    let gone = fhir.post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "deleted"}, "subject": subject(&a)})).await.json();
    assert_eq!(
        fhir.delete(&format!("Observation/{}", gone["id"].as_str().unwrap()))
            .await
            .status,
        204
    );

    // Page through two at a time, following next links.
    let mut url = stack
        .server
        .url(&format!("Patient/{a}/$everything?_count=2"));
    let mut seen = Vec::new();
    loop {
        let page = http(
            "GET",
            &url,
            &[("Authorization", &stack.server.bearer())],
            None,
        )
        .await
        .unwrap();
        assert_eq!(page.status, 200, "{}", page.text());
        let bundle = page.json();
        assert_eq!(bundle["type"], "searchset");
        for e in bundle["entry"].as_array().unwrap() {
            assert_eq!(e["search"]["mode"], "match");
            seen.push(format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            ));
        }
        match bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    seen.sort();
    mine.sort();
    assert_eq!(
        seen, mine,
        "exactly A's compartment: not B's data, not the organization, not the deleted one"
    );

    let only_obs = fhir
        .get(&format!("Patient/{a}/$everything?_type=Observation"))
        .await
        .json();
    assert_eq!(only_obs["entry"].as_array().unwrap().len(), 3);
    assert_eq!(
        fhir.get(&format!("Patient/{a}/$everything?_type=Nonsense"))
            .await
            .status,
        400
    );
    assert_eq!(fhir.get("Patient/nobody/$everything").await.status, 404);

    // Narrowed by access: B's patient token cannot ask for A; an Observation-only system token sees no Patient.
    let db = stack.db().await;
    let tb = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "patient-b",
        Role::Patient,
        &[Scope::parse("patient/*.rs").unwrap()],
        Some(&b),
    )
    .await
    .unwrap()
    .access_token;
    let r = http(
        "GET",
        &stack.server.url(&format!("Patient/{a}/$everything")),
        &[("Authorization", &format!("Bearer {tb}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    let own = http(
        "GET",
        &stack.server.url(&format!("Patient/{b}/$everything")),
        &[("Authorization", &format!("Bearer {tb}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(own.json()["entry"].as_array().unwrap().len(), 2);
    let obs_only = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "c",
        Role::System,
        &[Scope::parse("system/Observation.rs").unwrap()],
        None,
    )
    .await
    .unwrap()
    .access_token;
    let r = http(
        "GET",
        &stack.server.url(&format!("Patient/{a}/$everything")),
        &[("Authorization", &format!("Bearer {obs_only}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);

    // Audited as one operation on A's compartment.
    let everything = format!("Patient/{a}/$everything");
    let audited = stack
        .audit_events("subtype=operation&outcome=0&_count=1000")
        .await
        .iter()
        .filter(|e| {
            e["entity"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["what"]["reference"] == everything.as_str())
        })
        .count();
    assert!(audited >= 4, "{audited}");
}

#[tokio::test]
async fn search_by_id_and_last_updated_is_paged_and_narrowed() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let mut made = Vec::new();
    for name in ["A", "B", "C"] {
        let r = fhir
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": name}]}),
            )
            .await
            .json();
        made.push((
            r["id"].as_str().unwrap().to_string(),
            r["meta"]["lastUpdated"].as_str().unwrap().to_string(),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ids = |b: &Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (a, b, c) = (made[0].0.clone(), made[1].0.clone(), made[2].0.clone());

    let r = fhir.get(&format!("Patient?_id={a},{b}")).await.json();
    assert_eq!(r["type"], "searchset");
    assert_eq!(r["total"], 2);
    assert_eq!(ids(&r), sorted(vec![a.clone(), b.clone()]), "comma is OR");
    assert_eq!(
        fhir.get(&format!("Patient?_id={a}&_id={b}")).await.json()["total"],
        0,
        "repeated is AND"
    );
    let b_time = made[1].1.replace('+', "%2B");
    assert_eq!(
        ids(&fhir
            .get(&format!("Patient?_lastUpdated=ge{b_time}"))
            .await
            .json()),
        sorted(vec![b.clone(), c.clone()])
    );
    assert_eq!(
        ids(&fhir
            .get(&format!("Patient?_lastUpdated=lt{b_time}"))
            .await
            .json()),
        vec![a.clone()]
    );
    let year = &made[0].1[..4];
    assert_eq!(
        fhir.get(&format!("Patient?_lastUpdated={year}"))
            .await
            .json()["total"],
        3,
        "a year is a range"
    );
    assert_eq!(
        fhir.get("Patient?_lastUpdated=gt2999").await.json()["total"],
        0
    );
    assert_eq!(fhir.get("Patient?_lastUpdated=yesterday").await.status, 400);

    // Paging one at a time reaches each exactly once.
    let mut url = stack.server.url("Patient?_count=1");
    let mut seen = Vec::new();
    loop {
        let page = http(
            "GET",
            &url,
            &[("Authorization", &stack.server.bearer())],
            None,
        )
        .await
        .unwrap()
        .json();
        seen.extend(ids(&page));
        match page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(n) => url = n["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(sorted(seen), sorted(vec![a.clone(), b.clone(), c.clone()]));

    // Unknown parameters: a warning by default, an error with handling=strict.
    let lenient = fhir.get("Patient?nonsense=A").await.json();
    let outcome = lenient["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("nonsense"));
    let strict = fhir
        .send(
            "GET",
            "Patient?nonsense=A",
            &json!({}),
            &[("Prefer", "handling=strict")],
        )
        .await;
    assert_eq!(strict.status, 400);

    // POST _search with a form body.
    let form = format!("_id={c}");
    let r = fhir
        .raw(
            "POST",
            "Patient/_search",
            form.into_bytes(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&r.json()), vec![c.clone()]);

    // Narrowed silently to what the caller may see.
    let token = carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        "patient-a",
        Role::Patient,
        &[Scope::parse("patient/*.rs").unwrap()],
        Some(&a),
    )
    .await
    .unwrap()
    .access_token;
    let mine = http(
        "GET",
        &stack.server.url(&format!("Patient?_id={a},{b},{c}")),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
    .unwrap()
    .json();
    assert_eq!(ids(&mine), vec![a.clone()]);
    assert_eq!(mine["total"], 1);
    let anonymous = http("GET", &stack.server.url("Patient"), &[], None)
        .await
        .unwrap();
    assert_eq!(anonymous.status, 401);
}
