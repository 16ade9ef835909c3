//! Bad input: every case gets a 4xx with an OperationOutcome naming the problem, never a 500, and
//! nothing is written.

use carapace_tests::*;

fn assert_outcome(r: &HttpResponse, status: u16, needle: &str) {
    assert_eq!(r.status, status, "expected {status}: {}", r.text());
    let oo = r.json();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{}", r.text());
    let text = r.text();
    assert!(
        text.contains(needle),
        "outcome should mention {needle:?}: {text}"
    );
    for leak in ["SELECT", "INSERT", "panicked", "sqlx", "stack backtrace"] {
        assert!(!text.contains(leak), "outcome leaks {leak}: {text}");
    }
}

#[tokio::test]
async fn invalid_resources_are_refused_with_a_named_path_and_nothing_is_written() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "unknown element",
            "Patient",
            br#"{"resourceType":"Patient","favouriteColour":"blue"}"#.to_vec(),
            "favouriteColour",
        ),
        (
            "wrong JSON type",
            "Patient",
            br#"{"resourceType":"Patient","active":"yes"}"#.to_vec(),
            "Patient.active",
        ),
        (
            "array where a single value belongs",
            "Patient",
            br#"{"resourceType":"Patient","birthDate":["1970-01-01"]}"#.to_vec(),
            "Patient.birthDate",
        ),
        (
            "invalid date",
            "Patient",
            br#"{"resourceType":"Patient","birthDate":"1970-13-45"}"#.to_vec(),
            "Patient.birthDate",
        ),
        (
            "invalid code lexical form",
            "Patient",
            br#"{"resourceType":"Patient","gender":" male "}"#.to_vec(),
            "Patient.gender",
        ),
        (
            "invalid id in body",
            "Patient",
            br#"{"resourceType":"Patient","contained":[{"resourceType":"Patient","id":"a b"}]}"#
                .to_vec(),
            "id",
        ),
        (
            "wrong resourceType for the URL",
            "Patient",
            br#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#.to_vec(),
            "resourceType",
        ),
        (
            "unknown resourceType",
            "Patient",
            br#"{"resourceType":"Patent"}"#.to_vec(),
            "resourceType",
        ),
        (
            "NUL character",
            "Patient",
            br#"{"resourceType":"Patient","name":[{"family":"a\u0000b"}]}"#.to_vec(),
            "Patient.name[0].family",
        ),
        (
            "lone surrogate",
            "Patient",
            br#"{"resourceType":"Patient","name":[{"family":"\ud800"}]}"#.to_vec(),
            "invalid JSON",
        ),
        (
            "duplicate keys",
            "Patient",
            br#"{"resourceType":"Patient","gender":"male","gender":"female"}"#.to_vec(),
            "duplicate key 'gender'",
        ),
        (
            "not JSON",
            "Patient",
            b"<Patient xmlns=\"http://hl7.org/fhir\"/>".to_vec(),
            "invalid JSON",
        ),
        (
            "not an object",
            "Patient",
            b"[1,2,3]".to_vec(),
            "JSON object",
        ),
        (
            "10,000-deep nesting",
            "Patient",
            format!(
                "{{\"resourceType\":\"Patient\",\"extension\":{}{}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            "recursion limit",
        ),
        (
            "invalid UTF-8",
            "Patient",
            b"{\"resourceType\":\"Patient\",\"gender\":\"\xff\"}".to_vec(),
            "UTF-8",
        ),
    ];
    for (what, type_name, body, needle) in &cases {
        let r = fhir.raw("POST", type_name, body.clone(), &[]).await;
        assert!(
            r.status == 400 || r.status == 422,
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert_outcome(&r, r.status, needle);
        // the same body through PUT (update-as-create) is refused too
        let r = fhir
            .raw("PUT", &format!("{type_name}/bad-1"), body.clone(), &[])
            .await;
        assert!(
            r.status == 400 || r.status == 422,
            "PUT {what}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(stack.stored_versions().await, 0, "nothing was written");

    // id mismatch and missing id on update
    let r = fhir
        .put(
            "Patient/abc",
            &json!({"resourceType": "Patient", "id": "xyz"}),
        )
        .await;
    assert_outcome(&r, 400, "does not match");
    let r = fhir
        .put("Patient/abc", &json!({"resourceType": "Patient"}))
        .await;
    assert_outcome(&r, 400, "id");
    let r = fhir.get("Patient/not%20an%20id").await;
    assert_outcome(&r, 400, "resource id");
    let r = fhir.get("Patent/1").await;
    assert_outcome(&r, 404, "not an R4 resource type");
    let r = fhir
        .send(
            "PUT",
            "Patient/abc",
            &json!({"resourceType": "Patient", "id": "abc"}),
            &[("If-Match", "banana")],
        )
        .await;
    assert_outcome(&r, 400, "If-Match");
    assert_eq!(stack.stored_versions().await, 0, "nothing was written");
}

#[tokio::test]
async fn media_types_and_size_limits() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let good = json!({"resourceType": "Patient"}).to_string().into_bytes();

    let r = fhir
        .raw(
            "POST",
            "Patient",
            good.clone(),
            &[("Content-Type", "application/x-turtle")],
        )
        .await;
    assert_outcome(&r, 415, "application/fhir+json or");
    let r = fhir
        .raw(
            "POST",
            "Patient",
            good.clone(),
            &[("Accept", "application/x-turtle")],
        )
        .await;
    assert_outcome(&r, 406, "JSON");
    let r = fhir.get("metadata?_format=ttl").await;
    assert_outcome(&r, 406, "JSON");
    assert_eq!(fhir.get("metadata?_format=json").await.status, 200);

    // 50 MB body: refused with 413 by the limit, the server stays healthy
    let mut big = br#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">"#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 50 * 1024 * 1024));
    big.extend(br#"</div>"}}"#);
    let r = fhir.raw("POST", "Patient", big, &[]).await;
    assert_outcome(&r, 413, "limit");
    assert_eq!(
        fhir.post("Patient", &json!({"resourceType": "Patient"}))
            .await
            .status,
        201
    );

    let db = stack.db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(!stack.server.log_text().contains("panicked"));
}

#[tokio::test]
async fn codes_outside_a_required_value_set_are_refused_at_their_path() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let obs = |extra: Value| {
        let mut o =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    let gender = "http://hl7.org/fhir/ValueSet/administrative-gender";
    let cases = [
        (
            json!({"resourceType": "Patient", "gender": "robot"}),
            "Patient.gender",
            gender,
        ),
        (
            json!({"resourceType": "Patient", "gender": "mmale"}),
            "Patient.gender",
            gender,
        ),
        // administrative-gender is case sensitive
        (
            json!({"resourceType": "Patient", "gender": "Female"}),
            "Patient.gender",
            gender,
        ),
        (
            obs(json!({"status": "bogus"})),
            "Observation.status",
            "http://hl7.org/fhir/ValueSet/observation-status",
        ),
        (
            obs(json!({"valueQuantity": {"value": 120, "comparator": "=<"}})),
            "Observation.value.ofType(Quantity).comparator",
            "http://hl7.org/fhir/ValueSet/quantity-comparator",
        ),
    ];
    for (resource, path, value_set) in &cases {
        let rt = resource["resourceType"].as_str().unwrap();
        let r = fhir.post(rt, resource).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let issue = &r.json()["issue"][0];
        assert_eq!(issue["code"], "code-invalid", "{}", r.text());
        assert_eq!(issue["expression"][0], *path, "{}", r.text());
        assert!(
            issue["diagnostics"].as_str().unwrap().contains(value_set),
            "{}",
            r.text()
        );
        // $validate reports the same error
        let v = fhir.post(&format!("{rt}/$validate"), resource).await;
        assert_eq!(v.status, 200);
        assert!(
            v.json()["issue"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["severity"] == "error" && i["expression"][0] == *path),
            "{}",
            v.text()
        );
    }
    assert_eq!(stack.stored_versions().await, 0, "nothing was written");

    // Codes in the value set are stored; a code of an extensible binding outside its value set is
    // stored and only warned about by $validate; codes of terminology that does not ship (mime
    // types, SNOMED CT) are never refused.
    let good = json!({"resourceType": "Patient", "gender": "female",
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "ZZZ"}]},
        "photo": [{"contentType": "image/x-unheard-of"}]});
    assert_eq!(fhir.post("Patient", &good).await.status, 201);
    let v = fhir.post("Patient/$validate", &good).await;
    let issues = v.json()["issue"].as_array().unwrap().clone();
    assert!(
        issues.iter().all(|i| i["severity"] != "error"),
        "{}",
        v.text()
    );
    assert!(
        issues.iter().any(|i| i["severity"] == "warning"
            && i["code"] == "code-invalid"
            && i["expression"][0] == "Patient.maritalStatus"),
        "{}",
        v.text()
    );
    let q = obs(json!({"valueQuantity": {"value": 120, "comparator": "<="},
        "interpretation": [{"coding": [{"system": "http://snomed.info/sct", "code": "281302008"}]}]}));
    assert_eq!(fhir.post("Observation", &q).await.status, 201);
}
