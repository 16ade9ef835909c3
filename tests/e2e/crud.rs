//! Every REST interaction of the store: create, read, vread, update, delete, history, with their
//! headers and status codes.

use carapace_tests::*;

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": family, "given": ["Ada"]}],
        "birthDate": "1970-01-02",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1970-01-02T04:05:00+01:00"}]}
    })
}

#[tokio::test]
async fn create_read_update_delete_and_history() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();

    let metadata = fhir.get("metadata").await;
    assert_eq!(metadata.status, 200);
    let cs = metadata.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let types = cs["rest"][0]["resource"].as_array().unwrap();
    assert!(types.len() > 140, "every R4 resource type is listed");

    // create: server-assigned id, 201, Location, ETag, Last-Modified, meta.
    let created = fhir.post("Patient", &patient("Lovelace")).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created.header("etag").unwrap(), "W/\"1\"");
    assert!(created.header("last-modified").is_some());
    assert_eq!(
        created.header("location").unwrap(),
        stack.server.url(&format!("Patient/{id}/_history/1"))
    );
    // primitive extensions survive
    assert_eq!(
        body["_birthDate"]["extension"][0]["valueDateTime"],
        "1970-01-02T04:05:00+01:00"
    );

    // read
    let read = fhir.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), body);
    assert_eq!(
        read.header("content-type").unwrap(),
        "application/fhir+json; charset=utf-8"
    );

    // update with the right If-Match
    let mut changed = body.clone();
    changed["name"][0]["family"] = json!("Byron");
    let updated = fhir
        .send(
            "PUT",
            &format!("Patient/{id}"),
            &changed,
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.header("etag").unwrap(), "W/\"2\"");
    assert_eq!(updated.json()["meta"]["versionId"], "2");

    // a stale If-Match is refused and changes nothing
    let stale = fhir
        .send(
            "PUT",
            &format!("Patient/{id}"),
            &changed,
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["resourceType"], "OperationOutcome");
    assert_eq!(
        fhir.get(&format!("Patient/{id}")).await.json()["meta"]["versionId"],
        "2"
    );

    // vread both versions
    let v1 = fhir.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.json()["name"][0]["family"], "Lovelace");
    let v2 = fhir.get(&format!("Patient/{id}/_history/2")).await;
    assert_eq!(v2.json()["name"][0]["family"], "Byron");
    assert_eq!(
        fhir.get(&format!("Patient/{id}/_history/3")).await.status,
        404
    );

    // delete: 204, then 410 on read, versions still readable, delete again is fine
    let deleted = fhir.delete(&format!("Patient/{id}")).await;
    assert_eq!(deleted.status, 204);
    let gone = fhir.get(&format!("Patient/{id}")).await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.json()["resourceType"], "OperationOutcome");
    assert_eq!(
        fhir.get(&format!("Patient/{id}/_history/2")).await.status,
        200
    );
    assert_eq!(
        fhir.get(&format!("Patient/{id}/_history/3")).await.status,
        410
    );
    assert_eq!(fhir.delete(&format!("Patient/{id}")).await.status, 204);
    assert_eq!(fhir.delete("Patient/never-existed").await.status, 404);

    // instance history: newest first, the deletion included
    let history = fhir.get(&format!("Patient/{id}/_history")).await;
    assert_eq!(history.status, 200);
    let bundle = history.json();
    assert_eq!(bundle["type"], "history");
    let entries = bundle["entry"].as_array().unwrap();
    let methods: Vec<&str> = entries
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["resource"]["name"][0]["family"], "Byron");
    assert_eq!(fhir.get("Patient/never-existed/_history").await.status, 404);

    // update-as-create with a client id, then recreate after delete continues the version line
    let mut own = patient("Client");
    own["id"] = json!("client-chosen-1");
    let made = fhir.put("Patient/client-chosen-1", &own).await;
    assert_eq!(made.status, 201);
    assert_eq!(made.header("etag").unwrap(), "W/\"1\"");
    let mut again = patient("Again");
    again["id"] = json!(id.clone());
    let revived = fhir.put(&format!("Patient/{id}"), &again).await;
    assert_eq!(revived.status, 201);
    assert_eq!(revived.json()["meta"]["versionId"], "4");
}

#[tokio::test]
async fn history_pages_with_count_since_and_next_links() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let mut ids = Vec::new();
    for i in 0..7 {
        // Raw text: a JSON literal in Rust would turn 1.50 into 1.5 before it is sent.
        let body = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"obs {i}"}},"valueQuantity":{{"value":1.50,"unit":"mmol/L"}}}}"#
        );
        let r = fhir
            .raw("POST", "Observation", body.into_bytes(), &[])
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // decimals keep their precision through storage
    let raw = fhir.get(&format!("Observation/{}", ids[0])).await.text();
    assert!(raw.contains("\"value\":1.50"), "{raw}");

    // page through type history three at a time, following next links
    let mut url = stack.server.url("Observation/_history?_count=3");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let auth = stack.server.bearer();
        let page = http("GET", &url, &[("Authorization", &auth)], None)
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{}", page.text());
        let bundle = page.json();
        for e in bundle["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
        }
        pages += 1;
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(n) => url = n,
            None => break,
        }
        // data changing between pages must not break or repeat the paging
        if pages == 1 {
            fhir.post(
                "Observation",
                &json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "late"}}),
            )
            .await;
        }
    }
    assert_eq!(pages, 3);
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each exactly once");

    // _since cuts off older versions
    let first = fhir.get(&format!("Observation/{}", ids[6])).await.json();
    let since = first["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let recent = http(
        "GET",
        &stack.server.url(&format!(
            "Observation/_history?_since={}",
            since.replace('+', "%2B")
        )),
        &[("Authorization", &stack.server.bearer())],
        None,
    )
    .await
    .unwrap()
    .json();
    assert_eq!(
        recent["entry"].as_array().unwrap().len(),
        2,
        "the last one and the late one"
    );
    let bad = fhir.get("Observation/_history?_since=yesterday").await;
    assert_eq!(bad.status, 400);
    // A date is the start of that year, month or day (UTC), at every level of history; a time
    // without a zone is no instant.
    let day = &since[..10];
    let next_day = (chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap()
        + chrono::Duration::days(1))
    .to_string();
    let entries = |r: HttpResponse| {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["entry"].as_array().map_or(0, Vec::len)
    };
    for since in [day, &day[..7], &day[..4]] {
        let all = fhir.get(&format!("_history?_since={since}")).await;
        assert_eq!(entries(all), 8, "{since}");
        let typed = fhir
            .get(&format!("Observation/_history?_since={since}"))
            .await;
        assert_eq!(entries(typed), 8, "{since}");
        let one = fhir
            .get(&format!("Observation/{}/_history?_since={since}", ids[0]))
            .await;
        assert_eq!(entries(one), 1, "{since}");
    }
    let later = fhir.get(&format!("_history?_since={next_day}")).await;
    assert_eq!(entries(later), 0);
    let no_zone = fhir.get(&format!("_history?_since={day}T00:00:00")).await;
    assert_eq!(no_zone.status, 400, "{}", no_zone.text());
    let forged = fhir.get("Observation/_history?_page=bm9wZQ").await;
    assert_eq!(forged.status, 400);

    // system history sees every type
    let all = fhir.get("_history?_count=100").await.json();
    assert_eq!(all["entry"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn conditional_create_and_prefer() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let first = fhir.post("Patient", &patient("Cond")).await;
    let id = first.json()["id"].as_str().unwrap().to_string();

    // If-None-Exist matching an existing resource returns it, creating nothing
    let again = fhir
        .send(
            "POST",
            "Patient",
            &patient("Cond"),
            &[("If-None-Exist", &format!("_id={id}"))],
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], id.as_str());
    let none = fhir
        .send(
            "POST",
            "Patient",
            &patient("Cond"),
            &[("If-None-Exist", "_id=nobody")],
        )
        .await;
    assert_eq!(none.status, 201);
    // any search parameter works: one match returns it, two matches are a 412, none creates
    let solo = fhir.post("Patient", &patient("Solo")).await.json();
    let by_name = fhir
        .send(
            "POST",
            "Patient",
            &patient("Solo"),
            &[("If-None-Exist", "family=sol")],
        )
        .await;
    assert_eq!(by_name.status, 200, "{}", by_name.text());
    assert_eq!(by_name.json()["id"], solo["id"]);
    // two "Cond" patients exist now (the _id=nobody one was created)
    let ambiguous = fhir
        .send(
            "POST",
            "Patient",
            &patient("Cond"),
            &[("If-None-Exist", "family=Cond")],
        )
        .await;
    assert_eq!(ambiguous.status, 412, "{}", ambiguous.text());
    let unknown = fhir
        .send(
            "POST",
            "Patient",
            &patient("Cond"),
            &[("If-None-Exist", "nonsense=x")],
        )
        .await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.json()["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("nonsense"));

    // Prefer: return=minimal → no body; return=OperationOutcome → an outcome
    let minimal = fhir
        .send(
            "POST",
            "Patient",
            &patient("Min"),
            &[("Prefer", "return=minimal")],
        )
        .await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.body.is_empty());
    assert!(minimal.header("location").is_some());
    let oo = fhir
        .send(
            "POST",
            "Patient",
            &patient("OO"),
            &[("Prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(oo.status, 201);
    assert_eq!(oo.json()["resourceType"], "OperationOutcome");

    // every interaction above left an audit row, in the same transaction as the data for writes
    let db = stack.db().await;
    let creates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'C' AND outcome = '0'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let resources: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(creates, resources);
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE outcome <> '0'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(
        failures >= 1,
        "the refused conditional create is audited too"
    );
    // The first create (the oldest event of its kind).
    let event = stack
        .audit_events("action=C&_count=1000")
        .await
        .pop()
        .unwrap();
    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(event["subtype"][0]["code"], "create");
    assert_eq!(event["agent"][0]["network"]["address"], "127.0.0.1");
    assert_eq!(
        event["entity"][0]["what"]["reference"],
        format!("Patient/{id}")
    );
}

#[tokio::test]
async fn json_patch_updates_validates_and_refuses_cleanly() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let created = fhir.post("Patient", &patient("Patchy")).await.json();
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("Patient/{id}");
    let patch = |ops: Value, extra: Vec<(&'static str, &'static str)>| {
        let mut headers = vec![("Content-Type", "application/json-patch+json")];
        headers.extend(extra);
        let body = ops.to_string().into_bytes();
        let (fhir, path) = (&fhir, path.clone());
        async move { fhir.raw("PATCH", &path, body, &headers).await }
    };

    // A patch applies, creates a new version, and the result is what a read returns.
    let r = patch(
        json!([
            {"op": "replace", "path": "/name/0/family", "value": "Patched"},
            {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "555-0100"}]}
        ]),
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("etag").unwrap(), "W/\"2\"");
    let read = fhir.get(&path).await.json();
    assert_eq!(read["name"][0]["family"], "Patched");
    assert_eq!(read["telecom"][0]["value"], "555-0100");
    assert_eq!(read["meta"]["versionId"], "2");

    // A failing test op: 422, nothing written.
    let r = patch(
        json!([{"op": "test", "path": "/gender", "value": "female"},
                         {"op": "replace", "path": "/name/0/family", "value": "Nope"}]),
        vec![],
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    // A patch whose result is not valid R4: 400 naming the path.
    let r = patch(
        json!([{"op": "add", "path": "/birthDate", "value": "not-a-date"}]),
        vec![],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Patient.birthDate"));
    // Changing the id is refused.
    let r = patch(
        json!([{"op": "replace", "path": "/id", "value": "someone-else"}]),
        vec![],
    )
    .await;
    assert_eq!(r.status, 400);
    // A stale If-Match: 412.
    let r = patch(
        json!([{"op": "remove", "path": "/telecom"}]),
        vec![("If-Match", "W/\"1\"")],
    )
    .await;
    assert_eq!(r.status, 412);
    // Not a JSON Patch document, or another media type.
    assert_eq!(patch(json!({"op": "remove"}), vec![]).await.status, 400);
    // As FHIR JSON a PATCH body is a FHIRPath Patch: a list is not its Parameters.
    let r = fhir
        .raw(
            "PATCH",
            &path,
            b"[]".to_vec(),
            &[("Content-Type", "application/fhir+json")],
        )
        .await;
    assert_eq!(r.status, 400);
    let r = fhir
        .raw(
            "PATCH",
            &path,
            b"[]".to_vec(),
            &[("Content-Type", "text/plain")],
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(
        fhir.get(&path).await.json()["meta"]["versionId"],
        "2",
        "none of the refusals wrote anything"
    );
    assert_eq!(
        fhir.raw(
            "PATCH",
            "Patient/missing",
            b"[]".to_vec(),
            &[("Content-Type", "application/json-patch+json")]
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn batch_entries_succeed_and_fail_on_their_own() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let existing = fhir.post("Patient", &patient("Batchwise")).await.json();
    let pid = existing["id"].as_str().unwrap().to_string();
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("New"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"resource": {"resourceType": "Patient", "id": "client-1"}, "request": {"method": "PUT", "url": "Patient/client-1"}},
        {"request": {"method": "DELETE", "url": "Patient/missing"}},
        {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}/_history/1")}},
        {"request": {"method": "GET", "url": "Patient?birthdate=someday"}},
        {"resource": {"resourceType": "Patient", "id": "client-1", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient/client-1", "ifMatch": "W/\"7\""}}
    ]});
    let r = fhir.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    assert_eq!(out["type"], "batch-response");
    let statuses: Vec<&str> = out["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "200 OK",
            "201 Created",
            "404 Not Found",
            "400 Bad Request",
            "200 OK",
            "400 Bad Request",
            "412 Precondition Failed"
        ]
    );
    let entries = out["entry"].as_array().unwrap();
    assert!(entries[0]["response"]["location"]
        .as_str()
        .unwrap()
        .contains("/Patient/"));
    assert_eq!(entries[1]["resource"]["name"][0]["family"], "Batchwise");
    assert_eq!(
        entries[4]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert!(entries[4]["response"]["outcome"]
        .to_string()
        .contains("Observation.code"));
    // The good entries were applied, the failed ones changed nothing.
    assert_eq!(
        fhir.get("Patient/client-1").await.json()["meta"]["versionId"],
        "1"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&stack.db().await)
        .await
        .unwrap();
    assert_eq!(n, 3);

    // Entries run under the caller's access: a patient token's batch cannot see another patient.
    let other = fhir.post("Patient", &patient("Other")).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        "p",
        carapace_core::access::Role::Patient,
        &[carapace_core::access::Scope::parse("patient/*.rs").unwrap()],
        Some(&pid),
    )
    .await
    .unwrap()
    .access_token;
    let auth = format!("Bearer {token}");
    let body = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": format!("Patient/{other}")}}]})
    .to_string();
    let r = http(
        "POST",
        &stack.server.url(""),
        &[("Content-Type", FHIR_JSON), ("Authorization", &auth)],
        Some(body.into_bytes()),
    )
    .await
    .unwrap();
    let statuses: Vec<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["200 OK", "404 Not Found"]);

    // A non-Bundle is refused.
    assert_eq!(
        fhir.post("", &json!({"resourceType": "Patient"}))
            .await
            .status,
        400
    );
}

async fn resource_count(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&stack.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn transactions_resolve_references_and_are_all_or_nothing() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let old = fhir.post("Patient", &patient("Old")).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let doomed = fhir
        .post(
            "Organization",
            &json!({"resourceType": "Organization", "name": "Doomed"}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{old}")}},
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                      "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0b"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0b", "resource": patient("New"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "fixed-1"}, "request": {"method": "PUT", "url": "Patient/fixed-1"}},
        {"request": {"method": "DELETE", "url": format!("Organization/{doomed}")}}
    ]});
    let r = fhir.post("", &tx).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    assert_eq!(out["type"], "transaction-response");
    let statuses: Vec<&str> = out["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "200 OK",
            "201 Created",
            "201 Created",
            "201 Created",
            "204 No Content"
        ]
    );
    let patient_location = out["entry"][2]["response"]["location"].as_str().unwrap();
    let new_id = patient_location
        .split("/Patient/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let obs_location = out["entry"][1]["response"]["location"].as_str().unwrap();
    let obs_id = obs_location
        .split("/Observation/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    // The urn:uuid reference now names the new patient, and the observation is in their compartment.
    let obs = fhir.get(&format!("Observation/{obs_id}")).await.json();
    assert_eq!(obs["subject"]["reference"], format!("Patient/{new_id}"));
    let everything = fhir
        .get(&format!("Patient/{new_id}/$everything"))
        .await
        .json();
    assert_eq!(everything["entry"].as_array().unwrap().len(), 2);
    assert_eq!(
        fhir.get(&format!("Organization/{doomed}")).await.status,
        410
    );

    // One bad entry: 400 naming it, and nothing at all is written.
    let before = resource_count(&stack).await;
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Would-be"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "code": {"text": "no status"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = fhir.post("", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("Bundle.entry[1]") && r.text().contains("nothing was written"),
        "{}",
        r.text()
    );
    assert_eq!(resource_count(&stack).await, before);

    // A failure in the last phase (a stale ifMatch on a PUT) rolls back the creates and deletes before it.
    let stale = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Rolled-back"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{old}")}},
        {"resource": {"resourceType": "Patient", "id": "fixed-1", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient/fixed-1", "ifMatch": "W/\"9\""}}
    ]});
    let r = fhir.post("", &stale).await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(r.text().contains("Bundle.entry[2]"));
    assert_eq!(
        resource_count(&stack).await,
        before,
        "verified in the database: nothing written"
    );
    assert_eq!(
        fhir.get(&format!("Patient/{old}")).await.status,
        200,
        "the delete was rolled back"
    );

    // Two entries claiming the same fullUrl are refused.
    let dup = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a0000000-0000-4000-8000-000000000001", "resource": patient("A"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:a0000000-0000-4000-8000-000000000001", "resource": patient("B"), "request": {"method": "POST", "url": "Patient"}}
    ]});
    let r = fhir.post("", &dup).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("same fullUrl"));
    // A conditional entry with an unknown parameter fails the whole transaction.
    let cond = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("D"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient("C"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "nonsense=y"}}]});
    assert_eq!(fhir.post("", &cond).await.status, 400);
    assert_eq!(resource_count(&stack).await, before);
}

/// Concurrent conditional creates of the same resource make one resource: the condition is locked
/// from its match to the commit. Through REST (`If-None-Exist`) and through transactions
/// (`ifNoneExist`) at once.
#[tokio::test]
async fn concurrent_conditional_creates_make_one_resource() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": "1"}]});
    let condition = "identifier=urn:race|1";
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": body, "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition}}]});
    // Twelve requests at once: six REST creates and six one-entry transactions.
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (path, payload, extra) = if i % 2 == 0 {
            ("Patient", body.clone(), Some(condition))
        } else {
            ("", tx.clone(), None)
        };
        let (url, auth) = (stack.server.url(path), stack.server.bearer());
        requests.spawn(async move {
            let mut headers = vec![
                ("Content-Type", FHIR_JSON),
                ("Authorization", auth.as_str()),
            ];
            if let Some(c) = extra {
                headers.push(("If-None-Exist", c));
            }
            let r = http(
                "POST",
                &url,
                &headers,
                Some(payload.to_string().into_bytes()),
            )
            .await
            .unwrap();
            (extra.is_some(), r)
        });
    }
    let (mut rest, mut bundles) = (vec![], vec![]);
    while let Some(done) = requests.join_next().await {
        let (is_rest, r) = done.unwrap();
        if is_rest {
            rest.push(r);
        } else {
            bundles.push(r);
        }
    }
    let mut created = 0;
    for r in &rest {
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
        created += usize::from(r.status == 201);
    }
    for r in &bundles {
        assert_eq!(r.status, 200, "{}", r.text());
        let status = r.json()["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .to_string();
        created += usize::from(status.starts_with("201"));
    }
    assert_eq!(created, 1, "exactly one request created the patient");
    let found = fhir.get(&format!("Patient?{condition}")).await.json();
    assert_eq!(found["total"], 1);
}
