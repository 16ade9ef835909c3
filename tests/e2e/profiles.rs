//! `$validate` in every form (type and instance, GET and POST, a `Parameters` body with `resource`,
//! `mode` and `profile`) and profiles stored on the server: the International Patient Summary
//! Patient profile posted as a StructureDefinition, then used by `$validate?profile=`, by
//! `meta.profile`, and — with `CARAPACE_ENFORCE_PROFILES=on` — on writes.

use carapace_core::access::Role;
use carapace_tests::*;

const IPS_PATIENT: &str = "http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips";

/// The IPS Patient StructureDefinition, if the package was fetched (tests/run does).
fn ips_patient_profile() -> Option<Value> {
    let Some(dir) = ips_dir() else {
        eprintln!("SKIPPED: IPS package not found (run tests/run, or set CARAPACE_IPS_PACKAGE)");
        return None;
    };
    let text = std::fs::read_to_string(dir.join("StructureDefinition-Patient-uv-ips.json"))
        .expect("the IPS Patient profile");
    // Posted as the package ships it, narrative and all.
    Some(serde_json::from_str(&text).unwrap())
}

/// `(expression, code, severity)` of every issue.
fn all_issues(r: &HttpResponse) -> Vec<(String, String, String)> {
    r.json()["issue"]
        .as_array()
        .unwrap_or_else(|| panic!("an OperationOutcome: {}", r.text()))
        .iter()
        .map(|i| {
            (
                i["expression"][0].as_str().unwrap_or("").to_string(),
                i["code"].as_str().unwrap_or("").to_string(),
                i["severity"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The errors only (R4's best-practice warnings, such as dom-6, are not what these tests are about).
fn issues(r: &HttpResponse) -> Vec<(String, String, String)> {
    all_issues(r)
        .into_iter()
        .filter(|(_, _, severity)| severity == "error")
        .collect()
}

/// 200 and no error.
fn is_valid(r: &HttpResponse) -> bool {
    r.status == 200 && issues(r).is_empty()
}

fn conforming() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Rossi", "given": ["Ada"]}],
        "birthDate": "1970-02-03", "gender": "female"})
}

fn non_conforming() -> Value {
    json!({"resourceType": "Patient", "gender": "female"})
}

#[tokio::test]
async fn validate_takes_parameters_modes_and_instances() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();

    // POST Parameters/$validate: the resource in `resource` is validated, not the wrapper.
    let inner = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Parameters",
            "parameter": [{"name": "x", "colour": "red"}]}}]});
    let r = fhir.post("Parameters/$validate", &inner).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let found = issues(&r);
    assert!(
        found
            .iter()
            .any(|(path, _, sev)| path == "Parameters.parameter[0].colour" && sev == "error"),
        "{found:?}"
    );
    // The same wrapper around a bad Patient: the inner resource's own paths.
    let wrapped = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "colour": "x"}}]});
    let r = fhir.post("Patient/$validate", &wrapped).await;
    assert_eq!(issues(&r)[0].0, "Patient.colour", "{}", r.text());

    // mode=update needs the id, in the query or as a parameter; mode=create does not.
    let r = fhir
        .post("Patient/$validate?mode=update", &conforming())
        .await;
    assert_eq!(
        issues(&r),
        [("Patient.id".into(), "required".into(), "error".into())],
        "{}",
        r.text()
    );
    let as_param = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"},
        {"name": "resource", "resource": conforming()}]});
    let r = fhir.post("Patient/$validate", &as_param).await;
    assert_eq!(issues(&r)[0].0, "Patient.id", "{}", r.text());
    let r = fhir
        .post("Patient/$validate?mode=create", &conforming())
        .await;
    assert!(is_valid(&r), "{}", r.text());
    let r = fhir
        .post("Patient/$validate?mode=bogus", &conforming())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // mode=delete on an instance that does not exist: reported, nothing deleted.
    let r = fhir
        .raw("POST", "Patient/nobody/$validate?mode=delete", vec![], &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        issues(&r),
        [("Patient".into(), "not-found".into(), "error".into())]
    );

    // GET on a stored instance validates its current version; a missing one is 404.
    let id = fhir.post("Patient", &conforming()).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = fhir.get(&format!("Patient/{id}/$validate")).await;
    assert!(is_valid(&r), "{}", r.text());
    let r = fhir
        .raw(
            "POST",
            &format!("Patient/{id}/$validate?mode=delete"),
            vec![],
            &[],
        )
        .await;
    assert!(is_valid(&r), "{}", r.text());
    assert_eq!(fhir.get(&format!("Patient/{id}")).await.status, 200);
    assert_eq!(fhir.get("Patient/nobody/$validate").await.status, 404);

    // Another patient's record is as missing to a patient as one that does not exist.
    let mine = fhir.post("Patient", &conforming()).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = stack
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&mine))
        .await
        .unwrap();
    let as_patient = |path: String| {
        let token = token.clone();
        let url = stack.server.url(&path);
        async move {
            http(
                "GET",
                &url,
                &[("Authorization", &format!("Bearer {token}"))],
                None,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(
        as_patient(format!("Patient/{mine}/$validate")).await.status,
        200
    );
    assert_eq!(
        as_patient(format!("Patient/{id}/$validate")).await.status,
        404
    );
    // mode=delete asks the gate as a delete would: a patient may read their record, not delete it.
    let r = http(
        "POST",
        &stack
            .server
            .url(&format!("Patient/{mine}/$validate?mode=delete")),
        &[("Authorization", &format!("Bearer {token}"))],
        Some(vec![]),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        issues(&r),
        [("Patient".into(), "forbidden".into(), "error".into())]
    );
}

#[tokio::test]
async fn the_ips_patient_profile_is_checked_once_stored() {
    let Some(sd) = ips_patient_profile() else {
        return;
    };
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let ask = format!("Patient/$validate?profile={IPS_PATIENT}");

    // Not stored yet: asked for, it is an error; declared, a warning.
    let r = fhir.post(&ask, &conforming()).await;
    assert_eq!(
        issues(&r),
        [("".into(), "not-found".into(), "error".into())],
        "{}",
        r.text()
    );
    let mut declared = non_conforming();
    declared["meta"] = json!({"profile": [IPS_PATIENT]});
    let r = fhir.post("Patient/$validate", &declared).await;
    assert_eq!(issues(&r), [], "{}", r.text());
    assert!(
        all_issues(&r).contains(&(
            "Patient.meta.profile[0]".into(),
            "not-supported".into(),
            "warning".into()
        )),
        "{}",
        r.text()
    );

    let posted = fhir.post("StructureDefinition", &sd).await;
    assert_eq!(posted.status, 201, "{}", posted.text());

    let r = fhir.post(&ask, &conforming()).await;
    assert!(is_valid(&r), "{}", r.text());
    let bad = fhir.post(&ask, &non_conforming()).await;
    assert_eq!(bad.status, 200);
    assert_eq!(
        issues(&bad),
        [
            ("Patient.name".into(), "required".into(), "error".into()),
            (
                "Patient.birthDate".into(),
                "required".into(),
                "error".into()
            )
        ],
        "{}",
        bad.text()
    );
    // The profile's own invariant (ips-pat-1): a name needs a family, given or text.
    let mut unnamed = conforming();
    unnamed["name"] = json!([{"use": "official"}]);
    assert_eq!(
        issues(&fhir.post(&ask, &unnamed).await),
        [("Patient.name[0]".into(), "invariant".into(), "error".into())]
    );
    // The same through a Parameters body, and through meta.profile.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "profile", "valueCanonical": IPS_PATIENT},
        {"name": "resource", "resource": non_conforming()}]});
    assert_eq!(
        issues(&fhir.post("Patient/$validate", &params).await),
        issues(&bad)
    );
    assert_eq!(
        issues(&fhir.post("Patient/$validate", &declared).await),
        issues(&bad)
    );

    // A stored Patient validated against the profile at its instance URL.
    let mut stored = non_conforming();
    stored["name"] = json!([{"family": "Rossi"}]);
    let id = fhir.post("Patient", &stored).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = fhir
        .get(&format!("Patient/{id}/$validate?profile={IPS_PATIENT}"))
        .await;
    assert_eq!(
        issues(&r),
        [(
            "Patient.birthDate".into(),
            "required".into(),
            "error".into()
        )],
        "{}",
        r.text()
    );

    // Enforcement is off by default: a write declaring the profile it fails is stored.
    assert_eq!(fhir.post("Patient", &declared).await.status, 201);
}

#[tokio::test]
async fn enforced_profiles_refuse_writes_that_fail_them() {
    let Some(sd) = ips_patient_profile() else {
        return;
    };
    let bao = Bao::start_dev().await.unwrap();
    let stack = Stack::start_with(bao, vec![("CARAPACE_ENFORCE_PROFILES".into(), "on".into())])
        .await
        .unwrap();
    let fhir = stack.fhir();
    let with_profile = |mut p: Value| {
        p["meta"] = json!({"profile": [IPS_PATIENT]});
        p
    };
    // Not stored: declared profiles the server does not have are not checked.
    assert_eq!(
        fhir.post("Patient", &with_profile(non_conforming()))
            .await
            .status,
        201
    );
    assert_eq!(fhir.post("StructureDefinition", &sd).await.status, 201);
    let refused = fhir.post("Patient", &with_profile(non_conforming())).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let paths: Vec<String> = issues(&refused).into_iter().map(|i| i.0).collect();
    assert_eq!(paths, ["Patient.name", "Patient.birthDate"]);
    let ok = fhir.post("Patient", &with_profile(conforming())).await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    // An update is held to the same profile.
    let id = ok.json()["id"].as_str().unwrap().to_string();
    let mut update = with_profile(non_conforming());
    update["id"] = json!(id);
    assert_eq!(
        fhir.put(&format!("Patient/{id}"), &update).await.status,
        400
    );
    // So is every entry of a transaction, which then writes nothing.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": with_profile(conforming()), "request": {"method": "POST", "url": "Patient"}},
        {"resource": with_profile(non_conforming()), "request": {"method": "POST", "url": "Patient"}}]});
    let before = fhir.get("Patient?_summary=count").await.json()["total"].clone();
    let tx = fhir.post("", &bundle).await;
    assert_eq!(tx.status, 400, "{}", tx.text());
    assert!(tx.text().contains("Patient.birthDate"), "{}", tx.text());
    assert_eq!(
        fhir.get("Patient?_summary=count").await.json()["total"],
        before
    );
    // A writer who may not read StructureDefinitions (a patient updating their own record) is
    // held to the stored profile all the same.
    let token = stack
        .token(
            "patient-enforced",
            Role::Patient,
            "patient/Patient.cruds",
            Some(&id),
        )
        .await
        .unwrap();
    let own = http(
        "PUT",
        &stack.server.url(&format!("Patient/{id}")),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/fhir+json"),
        ],
        Some(update.to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(own.status, 400, "{}", own.text());
    assert!(own.text().contains("Patient.birthDate"), "{}", own.text());
    // A write declaring no profile pays nothing and is held to none.
    assert_eq!(fhir.post("Patient", &non_conforming()).await.status, 201);
}
