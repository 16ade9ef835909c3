//! Search over the blind index: every parameter type, modifier and prefix against a small fixture
//! whose expected results are worked out by hand from R4 search.html; chains, _has, includes,
//! sorting, paging while writing, result shaping, conditional references and conditional writes.

use carapace_core::access::{Role, Scope};
use carapace_tests::{http, Fhir, Stack};
use serde_json::{json, Value};

/// The fixture, loaded as one transaction of PUTs (client-chosen ids).
fn fixture() -> Value {
    let ucum = "http://unitsofmeasure.org";
    let loinc = "http://loinc.org";
    let resources = vec![
        json!({"resourceType": "Organization", "id": "org1", "name": "Acme Health",
               "identifier": [{"system": "urn:org", "value": "A1"}]}),
        json!({"resourceType": "Practitioner", "id": "pr1",
               "name": [{"family": "Hoffmann", "given": ["Jörg"]}]}),
        json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "female",
               "meta": {"tag": [{"system": "urn:tags", "code": "vip"}],
                        "profile": ["http://example.org/fhir/StructureDefinition/special-patient"]},
               "name": [{"family": "Peña", "given": ["Ana", "María"]}],
               "birthDate": "1970-05-06",
               "identifier": [{"system": "urn:mrn", "value": "111", "type": {"coding": [{
                   "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
               "telecom": [{"system": "phone", "value": "555-0101"},
                           {"system": "email", "value": "ana@example.org"}],
               "address": [{"city": "Springfield"}],
               "managingOrganization": {"reference": "Organization/org1"}}),
        json!({"resourceType": "Patient", "id": "p2", "gender": "male",
               "name": [{"family": "Penrose", "given": ["Roger"]}],
               "birthDate": "1980-12-31", "deceasedDateTime": "2020-01-01",
               "identifier": [{"system": "urn:mrn", "value": "222"}],
               "address": [{"city": "Shelbyville"}]}),
        json!({"resourceType": "Patient", "id": "p3", "gender": "male",
               "name": [{"family": "Smith", "given": ["John"]}],
               "birthDate": "1970",
               "identifier": [{"system": "urn:other", "value": "111"}],
               "managingOrganization": {"reference": "Organization/org1"}}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": "Patient/p1"},
               "participant": [{"individual": {"reference": "Practitioner/pr1"}}],
               "period": {"start": "2024-01-10T08:00:00Z", "end": "2024-01-10T10:00:00Z"}}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                         "code": "vital-signs"}]}],
               "code": {"coding": [{"system": loinc, "code": "8480-6"}]},
               "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
               "effectiveDateTime": "2024-01-10T09:00:00Z",
               "valueQuantity": {"value": 120, "unit": "mmHg", "system": ucum, "code": "mm[Hg]"}}),
        json!({"resourceType": "Observation", "id": "o2", "status": "final",
               "code": {"coding": [{"system": loinc, "code": "8480-6"}]},
               "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": "2024-02-15",
               "valueQuantity": {"value": 140, "unit": "mmHg", "system": ucum, "code": "mm[Hg]"}}),
        json!({"resourceType": "Observation", "id": "o3", "status": "preliminary",
               "code": {"coding": [{"system": loinc, "code": "2339-0"}]},
               "subject": {"reference": "Patient/p2"},
               "effectivePeriod": {"start": "2024-01-01", "end": "2024-01-31"},
               "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": ucum, "code": "mmol/L"}}),
        json!({"resourceType": "Observation", "id": "o4", "status": "amended",
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "12345",
                                    "display": "Body temperature"}], "text": "temperature note"},
               "subject": {"reference": "http://example.org/fhir/Patient/p3"},
               "valueCodeableConcept": {"text": "normal"}}),
        json!({"resourceType": "Provenance", "id": "prov1", "target": [{"reference": "Observation/o1"}],
               "recorded": "2024-01-10T09:05:00Z",
               "agent": [{"who": {"reference": "Practitioner/pr1"}}]}),
        json!({"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
               "subject": {"reference": "Patient/p1"},
               "prediction": [{"probabilityDecimal": 0.8}]}),
        json!({"resourceType": "ValueSet", "id": "vs1", "status": "active",
               "url": "http://example.org/fhir/ValueSet/a"}),
        json!({"resourceType": "ValueSet", "id": "vs2", "status": "active",
               "url": "http://example.org/other/b"}),
    ];
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            );
            json!({"resource": r, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry})
}

async fn load(fhir: &Fhir<'_>) {
    let r = fhir.post("", &fixture()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn query(path: &str, params: &[(&str, &str)]) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    format!("{path}?{q}")
}

/// The ids of the matches (search.mode = match), in order.
fn matches(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn included(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "include")
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Search and compare the set of matches (order-insensitive), with `total` agreeing.
async fn expect(fhir: &Fhir<'_>, path: &str, params: &[(&str, &str)], want: &[&str]) {
    let r = fhir.get(&query(path, params)).await;
    assert_eq!(r.status, 200, "{path} {params:?}: {}", r.text());
    let bundle = r.json();
    let mut got = matches(&bundle);
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{path} {params:?}");
    assert_eq!(
        bundle["total"],
        json!(want.len()),
        "{path} {params:?} total"
    );
}

async fn refused(fhir: &Fhir<'_>, path: &str, params: &[(&str, &str)], says: &str) {
    let r = fhir.get(&query(path, params)).await;
    assert_eq!(r.status, 400, "{path} {params:?}: {}", r.text());
    let body = r.json();
    assert_eq!(body["resourceType"], "OperationOutcome");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
    assert!(text.contains(says), "{text}");
}

#[tokio::test]
async fn strings_tokens_and_references() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    load(&fhir).await;

    // string: starts-with, case- and accent-insensitive, over every part of a name or address
    expect(&fhir, "Patient", &[("family", "pen")], &["p1", "p2"]).await;
    expect(&fhir, "Patient", &[("family", "PEÑA")], &["p1"]).await;
    expect(&fhir, "Patient", &[("family", "enros")], &[]).await;
    expect(&fhir, "Patient", &[("family:exact", "Peña")], &["p1"]).await;
    expect(&fhir, "Patient", &[("family:exact", "pena")], &[]).await;
    expect(&fhir, "Patient", &[("name", "mar")], &["p1"]).await;
    expect(&fhir, "Patient", &[("given", "ana,roger")], &["p1", "p2"]).await;
    expect(&fhir, "Patient", &[("address-city", "spring")], &["p1"]).await;
    expect(
        &fhir,
        "Patient",
        &[("family", "pen"), ("gender", "male")],
        &["p2"],
    )
    .await;
    expect(&fhir, "Practitioner", &[("name", "jorg")], &["pr1"]).await;
    refused(&fhir, "Patient", &[("name:contains", "en")], "encrypted").await;

    // token: code, system|code, |code, system|, :not, :of-type, :text, :missing
    expect(&fhir, "Patient", &[("identifier", "urn:mrn|111")], &["p1"]).await;
    expect(&fhir, "Patient", &[("identifier", "111")], &["p1", "p3"]).await;
    expect(&fhir, "Patient", &[("identifier", "|111")], &[]).await;
    expect(
        &fhir,
        "Patient",
        &[("identifier", "urn:mrn|")],
        &["p1", "p2"],
    )
    .await;
    expect(&fhir, "Patient", &[("gender", "|male")], &["p2", "p3"]).await;
    expect(&fhir, "Patient", &[("gender:not", "male")], &["p1"]).await;
    let mr = "http://terminology.hl7.org/CodeSystem/v2-0203|MR|111";
    expect(&fhir, "Patient", &[("identifier:of-type", mr)], &["p1"]).await;
    expect(&fhir, "Observation", &[("code:text", "body temp")], &["o4"]).await;
    expect(
        &fhir,
        "Observation",
        &[("code:text", "temperature")],
        &["o4"],
    )
    .await;
    expect(&fhir, "Patient", &[("phone", "555-0101")], &["p1"]).await;
    expect(&fhir, "Patient", &[("email", "ana@example.org")], &["p1"]).await;
    expect(&fhir, "Patient", &[("_tag", "urn:tags|vip")], &["p1"]).await;
    expect(&fhir, "Patient", &[("deceased", "true")], &["p2"]).await;
    expect(&fhir, "Patient", &[("active", "true")], &["p1"]).await;
    expect(
        &fhir,
        "Observation",
        &[("status", "final,amended")],
        &["o1", "o2", "o4"],
    )
    .await;
    expect(
        &fhir,
        "Patient",
        &[("email:missing", "true")],
        &["p2", "p3"],
    )
    .await;
    expect(
        &fhir,
        "Patient",
        &[("address-city:missing", "false")],
        &["p1", "p2"],
    )
    .await;
    refused(
        &fhir,
        "Observation",
        &[("code:below", "8480")],
        "takes system|code",
    )
    .await;

    // reference: id, Type/id, absolute URL, :Type
    expect(
        &fhir,
        "Observation",
        &[("subject", "Patient/p1")],
        &["o1", "o2"],
    )
    .await;
    expect(&fhir, "Observation", &[("patient", "p1")], &["o1", "o2"]).await;
    expect(&fhir, "Observation", &[("subject:Patient", "p2")], &["o3"]).await;
    let absolute = "http://example.org/fhir/Patient/p3";
    expect(&fhir, "Observation", &[("subject", absolute)], &["o4"]).await;
    expect(
        &fhir,
        "Observation",
        &[("subject", "p1,p2")],
        &["o1", "o2", "o3"],
    )
    .await;
    expect(
        &fhir,
        "Patient",
        &[("organization", "Organization/org1")],
        &["p1", "p3"],
    )
    .await;
    refused(
        &fhir,
        "Observation",
        &[("subject:Device", "Patient/p1")],
        "Device",
    )
    .await;

    // uri: exact, :below, :above
    let a = "http://example.org/fhir/ValueSet/a";
    expect(&fhir, "ValueSet", &[("url", a)], &["vs1"]).await;
    expect(
        &fhir,
        "ValueSet",
        &[("url:below", "http://example.org/fhir")],
        &["vs1"],
    )
    .await;
    expect(
        &fhir,
        "ValueSet",
        &[("url:below", "http://example.org")],
        &["vs1", "vs2"],
    )
    .await;
    let deeper = "http://example.org/fhir/ValueSet/a/extra";
    expect(&fhir, "ValueSet", &[("url:above", deeper)], &["vs1"]).await;
    let profile = "http://example.org/fhir/StructureDefinition/special-patient";
    expect(&fhir, "Patient", &[("_profile", profile)], &["p1"]).await;
}

#[tokio::test]
async fn dates_numbers_quantities_and_composites() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    load(&fhir).await;

    // date: the search value's precision range against the target's range
    expect(&fhir, "Patient", &[("birthdate", "1970")], &["p1", "p3"]).await;
    expect(&fhir, "Patient", &[("birthdate", "1970-05-06")], &["p1"]).await;
    expect(&fhir, "Patient", &[("birthdate", "eq1970-05")], &["p1"]).await;
    expect(&fhir, "Patient", &[("birthdate", "ne1970")], &["p2"]).await;
    expect(&fhir, "Patient", &[("birthdate", "ge1975")], &["p2"]).await;
    expect(&fhir, "Patient", &[("birthdate", "lt1975")], &["p1", "p3"]).await;
    expect(
        &fhir,
        "Patient",
        &[("birthdate", "gt1970-06")],
        &["p2", "p3"],
    )
    .await;
    expect(
        &fhir,
        "Patient",
        &[("birthdate", "le1970-05-06")],
        &["p1", "p3"],
    )
    .await;
    expect(&fhir, "Patient", &[("birthdate", "sa1970-12-31")], &["p2"]).await;
    expect(&fhir, "Patient", &[("birthdate", "eb1975")], &["p1", "p3"]).await;
    expect(
        &fhir,
        "Patient",
        &[("birthdate", "ge1970"), ("birthdate", "lt1971")],
        &["p1", "p3"],
    )
    .await;
    expect(&fhir, "Observation", &[("date", "2024-01")], &["o1", "o3"]).await;
    expect(
        &fhir,
        "Observation",
        &[("date", "gt2024-01-20")],
        &["o2", "o3"],
    )
    .await;
    expect(
        &fhir,
        "Observation",
        &[("date", "2024-01-10T09:00:00Z")],
        &["o1"],
    )
    .await;
    expect(
        &fhir,
        "Observation",
        &[("date", "lt2024-01-10T10:00:00+01:00")],
        &["o3"],
    )
    .await;
    expect(&fhir, "Encounter", &[("date", "2024-01-10")], &["e1"]).await;
    expect(&fhir, "Observation", &[("date:missing", "true")], &["o4"]).await;
    let ap = fhir.get("Observation?date=ap2024-02-14").await.json();
    assert!(matches(&ap).contains(&"o2".to_string()), "{ap}");
    assert!(!matches(&ap).contains(&"o4".to_string()));
    refused(
        &fhir,
        "Patient",
        &[("birthdate", "1970-13")],
        "not a FHIR date",
    )
    .await;

    // number: precision of the search value
    expect(&fhir, "RiskAssessment", &[("probability", "0.8")], &["ra1"]).await;
    expect(
        &fhir,
        "RiskAssessment",
        &[("probability", "0.80")],
        &["ra1"],
    )
    .await;
    expect(&fhir, "RiskAssessment", &[("probability", "0.84")], &[]).await;
    expect(
        &fhir,
        "RiskAssessment",
        &[("probability", "gt0.5")],
        &["ra1"],
    )
    .await;
    expect(&fhir, "RiskAssessment", &[("probability", "lt0.5")], &[]).await;
    refused(
        &fhir,
        "RiskAssessment",
        &[("probability", "lots")],
        "not a number",
    )
    .await;

    // quantity: number with optional system|code, or ||code
    expect(&fhir, "Observation", &[("value-quantity", "120")], &["o1"]).await;
    expect(
        &fhir,
        "Observation",
        &[("value-quantity", "1.2e2")],
        &["o1"],
    )
    .await;
    expect(&fhir, "Observation", &[("value-quantity", "119.9")], &[]).await;
    expect(
        &fhir,
        "Observation",
        &[("value-quantity", "gt130")],
        &["o2"],
    )
    .await;
    expect(&fhir, "Observation", &[("value-quantity", "lt10")], &["o3"]).await;
    let mmol = "5.4|http://unitsofmeasure.org|mmol/L";
    expect(&fhir, "Observation", &[("value-quantity", mmol)], &["o3"]).await;
    expect(
        &fhir,
        "Observation",
        &[("value-quantity", "120||mm[Hg]")],
        &["o1"],
    )
    .await;
    let wrong_unit = "120|http://unitsofmeasure.org|mmol/L";
    expect(&fhir, "Observation", &[("value-quantity", wrong_unit)], &[]).await;

    // composite: the two values from the same element
    let high = "http://loinc.org|8480-6$gt130";
    expect(
        &fhir,
        "Observation",
        &[("code-value-quantity", high)],
        &["o2"],
    )
    .await;
    expect(
        &fhir,
        "Observation",
        &[("code-value-quantity", "8480-6$120")],
        &["o1"],
    )
    .await;
    expect(
        &fhir,
        "Observation",
        &[("code-value-quantity", "2339-0$120")],
        &[],
    )
    .await;

    // A union: combo-code is code | component.code, served from the rows of its two parts.
    let panel = json!({"resourceType": "Observation", "id": "bp", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                             "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/p1"},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4",
                                            "display": "Diastolic blood pressure"}]},
                       "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org",
                                         "code": "mm[Hg]"}}]});
    let r = fhir.put("Observation/bp", &panel).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let o = "Observation";
    expect(&fhir, o, &[("combo-code", "8462-4")], &["bp"]).await;
    expect(
        &fhir,
        o,
        &[("combo-code", "8480-6,8462-4")],
        &["o1", "o2", "bp"],
    )
    .await;
    expect(
        &fhir,
        o,
        &[("combo-code", "http://loinc.org|85354-9")],
        &["bp"],
    )
    .await;
    expect(&fhir, o, &[("combo-code:text", "diastolic")], &["bp"]).await;
    expect(&fhir, o, &[("combo-code:text", "blood pres")], &["bp"]).await;
    expect(&fhir, o, &[("code:text", "diastolic")], &[]).await;
    let not = [("combo-code:not", "8480-6"), ("combo-code:not", "8462-4")];
    expect(&fhir, o, &not, &["o3", "o4"]).await;
    expect(&fhir, o, &[("combo-code:missing", "true")], &[]).await;
    expect(&fhir, o, &[("component-code:missing", "false")], &["bp"]).await;
    expect(
        &fhir,
        o,
        &[("component-code:missing", "true")],
        &["o1", "o2", "o3", "o4"],
    )
    .await;
}

#[tokio::test]
async fn chains_has_includes_and_access() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    load(&fhir).await;

    expect(
        &fhir,
        "Observation",
        &[("subject:Patient.family", "pen")],
        &["o1", "o2", "o3"],
    )
    .await;
    // an absolute reference is matched by its type and id (o4 -> http://.../Patient/p3)
    expect(
        &fhir,
        "Observation",
        &[("patient.family", "smith")],
        &["o4"],
    )
    .await;
    let two_levels = "encounter:Encounter.subject:Patient.family";
    expect(&fhir, "Observation", &[(two_levels, "peña")], &["o1"]).await;
    let org = "subject:Patient.organization.name";
    expect(&fhir, "Observation", &[(org, "acme")], &["o1", "o2", "o4"]).await;
    expect(
        &fhir,
        "Patient",
        &[("_has:Observation:patient:code", "2339-0")],
        &["p2"],
    )
    .await;
    let nested = "_has:Observation:patient:_has:Provenance:target:agent";
    expect(&fhir, "Patient", &[(nested, "Practitioner/pr1")], &["p1"]).await;
    refused(
        &fhir,
        "Observation",
        &[("subject:Patient.nonsense", "x")],
        "nonsense",
    )
    .await;

    // _include, _include:iterate, _revinclude, each resource once, mode include
    let r = fhir
        .get(&query(
            "Observation",
            &[("_id", "o1"), ("_include", "Observation:subject")],
        ))
        .await
        .json();
    assert_eq!(
        (matches(&r), included(&r)),
        (vec!["o1".into()], vec!["Patient/p1".into()])
    );
    let r = fhir
        .get(&query(
            "Observation",
            &[
                ("_id", "o1,o2"),
                ("_include", "Observation:encounter"),
                ("_include:iterate", "Encounter:participant"),
                ("_include", "Observation:subject"),
            ],
        ))
        .await
        .json();
    assert_eq!(
        included(&r),
        vec!["Encounter/e1", "Patient/p1", "Practitioner/pr1"],
        "{r}"
    );
    let r = fhir
        .get(&query(
            "Patient",
            &[("_id", "p1"), ("_revinclude", "Observation:subject")],
        ))
        .await
        .json();
    assert_eq!(included(&r), vec!["Observation/o1", "Observation/o2"]);
    assert_eq!(r["total"], 1, "includes do not count");
    let r = fhir
        .get(&query(
            "Observation",
            &[("_id", "o1"), ("_revinclude", "Provenance:target")],
        ))
        .await
        .json();
    assert_eq!(included(&r), vec!["Provenance/prov1"]);

    // A patient's token: matches, includes, chains and _has all stay inside their compartment.
    let token = carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        "patient-p2",
        Role::Patient,
        &[Scope::parse("patient/*.rs").unwrap()],
        Some("p2"),
    )
    .await
    .unwrap()
    .access_token;
    let as_p2 = |path: String| {
        let url = stack.server.url(&path);
        let auth = format!("Bearer {token}");
        async move {
            http("GET", &url, &[("Authorization", auth.as_str())], None)
                .await
                .unwrap()
                .json()
        }
    };
    let r = as_p2(query("Observation", &[("_include", "Observation:subject")])).await;
    assert_eq!(
        (matches(&r), included(&r)),
        (vec!["o3".into()], vec!["Patient/p2".into()])
    );
    let r = as_p2(query(
        "Patient",
        &[
            ("_revinclude", "Observation:subject"),
            ("_revinclude", "RiskAssessment:subject"),
        ],
    ))
    .await;
    assert_eq!(
        (matches(&r), included(&r)),
        (vec!["p2".into()], vec!["Observation/o3".into()])
    );
    let r = as_p2(query("Observation", &[("code", "8480-6")])).await;
    assert_eq!((matches(&r), r["total"].clone()), (vec![], json!(0)));
    let r = as_p2(query("Patient", &[("family", "pen")])).await;
    assert_eq!(matches(&r), vec!["p2"]);
}

#[tokio::test]
async fn sorting_paging_and_shaping() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    load(&fhir).await;
    let ordered = |params: &'static [(&'static str, &'static str)]| {
        let fhir = &fhir;
        async move { matches(&fhir.get(&query("Patient", params)).await.json()) }
    };
    // ascending by the start of each birth date's range, descending by its end
    assert_eq!(
        ordered(&[("_sort", "birthdate")]).await,
        vec!["p3", "p1", "p2"]
    );
    assert_eq!(
        ordered(&[("_sort", "-birthdate")]).await,
        vec!["p2", "p3", "p1"]
    );
    assert_eq!(
        ordered(&[("_sort", "family")]).await,
        vec!["p1", "p2", "p3"]
    );
    assert_eq!(
        ordered(&[("_sort", "-family")]).await,
        vec!["p3", "p2", "p1"]
    );
    assert_eq!(
        ordered(&[("_sort", "gender,-_id")]).await,
        vec!["p1", "p3", "p2"]
    );
    assert_eq!(ordered(&[("_sort", "-_id")]).await, vec!["p3", "p2", "p1"]);
    let by_date = fhir.get("Observation?_sort=-date,_id").await.json();
    assert_eq!(
        matches(&by_date),
        vec!["o2", "o3", "o1", "o4"],
        "missing dates last"
    );
    refused(&fhir, "Patient", &[("_sort", "nonsense")], "nonsense").await;

    // Paging one at a time, forwards then back, with sealed cursors.
    let follow = |bundle: &Value, rel: &str| {
        bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == rel)
            .map(|l| l["url"].as_str().unwrap().to_string())
    };
    let get_url = |url: String| {
        let auth = stack.server.bearer();
        async move {
            http("GET", &url, &[("Authorization", auth.as_str())], None)
                .await
                .unwrap()
                .json()
        }
    };
    let first = fhir.get("Patient?_sort=birthdate&_count=1").await.json();
    assert_eq!(matches(&first), vec!["p3"]);
    assert!(follow(&first, "previous").is_none());
    let second = get_url(follow(&first, "next").unwrap()).await;
    assert_eq!(matches(&second), vec!["p1"]);
    let third = get_url(follow(&second, "next").unwrap()).await;
    assert_eq!(matches(&third), vec!["p2"]);
    assert!(follow(&third, "next").is_none());
    let back = get_url(follow(&third, "previous").unwrap()).await;
    assert_eq!(matches(&back), vec!["p1"]);
    let back = get_url(follow(&back, "previous").unwrap()).await;
    assert_eq!(matches(&back), vec!["p3"]);
    // a cursor cannot be forged, altered or moved to another search
    let next = follow(&first, "next").unwrap();
    let cursor = next.split("_page=").nth(1).unwrap().to_string();
    let mut altered = cursor.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [
        format!("Patient?_sort=birthdate&_count=1&_page={altered}"),
        format!("Patient?_sort=family&_count=1&_page={cursor}"),
        "Patient?_page=bm9wZQ".to_string(),
    ] {
        assert_eq!(fhir.get(&bad).await.status, 400, "{bad}");
    }

    // Paging while writing: every resource there at the start is seen exactly once.
    let page1 = fhir.get("Observation?_count=2").await.json();
    assert_eq!(matches(&page1), vec!["o1", "o2"]);
    let new = json!({"resourceType": "Observation", "id": "o0", "status": "final",
                     "code": {"text": "late"}});
    assert_eq!(fhir.put("Observation/o0", &new).await.status, 201);
    assert_eq!(fhir.delete("Observation/o3").await.status, 204);
    let page2 = get_url(follow(&page1, "next").unwrap()).await;
    assert_eq!(
        matches(&page2),
        vec!["o4"],
        "o0 sorts before the cursor, o3 is gone"
    );

    // _summary, _elements, _total
    let count = fhir.get("Patient?_summary=count").await.json();
    assert_eq!(
        (count["total"].clone(), count.get("entry")),
        (json!(3), None)
    );
    let summary = fhir.get("Observation?_id=o1&_summary=true").await.json();
    let o1 = &summary["entry"][0]["resource"];
    assert_eq!(
        (o1["status"].clone(), o1.get("category")),
        (json!("final"), None)
    );
    assert_eq!(o1["meta"]["tag"][0]["code"], "SUBSETTED");
    let whole = fhir.get("Patient?_id=p1&_summary=true").await.json();
    assert!(
        whole["entry"][0]["resource"]["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["code"] != "SUBSETTED"),
        "nothing left out, nothing tagged"
    );
    let elements = fhir.get("Patient?_id=p1&_elements=birthDate").await.json();
    let p1 = &elements["entry"][0]["resource"];
    assert_eq!(
        (p1["birthDate"].clone(), p1.get("name")),
        (json!("1970-05-06"), None)
    );
    let no_total = fhir.get("Patient?_total=none").await.json();
    assert!(no_total.get("total").is_none());
    assert_eq!(matches(&no_total).len(), 3);
}

#[tokio::test]
async fn conditional_references_and_writes() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    load(&fhir).await;

    // A transaction with conditional references and a conditional create that matches.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Organization", "name": "Acme again",
                      "identifier": [{"system": "urn:org", "value": "A1"}]},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|A1"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|222"},
                      "performer": [{"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}]},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = fhir.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    assert_eq!(r["entry"][0]["response"]["status"], "200 OK");
    let made = r["entry"][1]["response"]["location"].as_str().unwrap();
    let id = made.split('/').nth_back(2).unwrap();
    let obs = fhir.get(&format!("Observation/{id}")).await.json();
    assert_eq!(obs["subject"]["reference"], "Patient/p2");
    assert_eq!(obs["performer"][0]["reference"], "Organization/org1");
    expect(&fhir, "Organization", &[], &["org1"]).await;

    // A conditional reference that matches nothing fails the whole transaction.
    let before = fhir.get("Observation?_summary=count").await.json()["total"].clone();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "a"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|999"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = fhir.post("", &bundle).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("matches no resource"));
    let after = fhir.get("Observation?_summary=count").await.json()["total"].clone();
    assert_eq!(before, after, "nothing was written");
    // ...and one matching two resources is a 412
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
                      "subject": {"reference": "Patient?identifier=111"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    assert_eq!(fhir.post("", &bundle).await.status, 412);

    // Conditional update: creates on no match, updates the one match, refuses two.
    let p = |family: &str| {
        json!({"resourceType": "Patient", "name": [{"family": family}],
               "identifier": [{"system": "urn:mrn", "value": "333"}]})
    };
    let created = fhir
        .put("Patient?identifier=urn:mrn|333", &p("Newman"))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let new_id = created.json()["id"].as_str().unwrap().to_string();
    let updated = fhir
        .put("Patient?identifier=urn:mrn|333", &p("Newer"))
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["id"], new_id.as_str());
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    expect(&fhir, "Patient", &[("family", "newer")], &[&new_id]).await;
    expect(&fhir, "Patient", &[("family", "newman")], &[]).await;
    assert_eq!(
        fhir.put("Patient?identifier=111", &p("Two")).await.status,
        412
    );
    assert_eq!(fhir.put("Patient?nonsense=1", &p("X")).await.status, 400);

    // Conditional delete (single).
    assert_eq!(fhir.delete("Patient?identifier=111").await.status, 412);
    assert_eq!(
        fhir.delete("Patient?identifier=urn:mrn|333").await.status,
        204
    );
    assert_eq!(fhir.get(&format!("Patient/{new_id}")).await.status, 410);
    expect(&fhir, "Patient", &[("identifier", "urn:mrn|333")], &[]).await;
    assert_eq!(
        fhir.delete("Patient?identifier=urn:mrn|333").await.status,
        204
    );

    // A batch runs searches and conditional writes entry by entry.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?family=pen"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=111"}}
    ]});
    let r = fhir.post("", &batch).await.json();
    assert_eq!(r["entry"][0]["resource"]["total"], 2, "{r}");
    assert!(r["entry"][1]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("412"));
}

#[tokio::test]
async fn the_capability_statement_lists_every_parameter_served() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let cs = fhir.get("metadata").await.json();
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    let names: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "_id",
        "_lastUpdated",
        "family",
        "birthdate",
        "identifier",
        "_tag",
        "organization",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    // exactly the R4 parameters of Patient (minus the three without a FHIRPath expression)
    assert_eq!(names.len(), 29, "{names:?}");
    let name = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "name")
        .unwrap();
    assert!(name["documentation"]
        .as_str()
        .unwrap()
        .contains(":contains is refused"));
    // every advertised parameter is accepted by a strict search
    for p in patient["searchParam"].as_array().unwrap() {
        let n = p["name"].as_str().unwrap();
        let value = match p["type"].as_str().unwrap() {
            "date" => "2020",
            "number" | "quantity" => "1",
            "reference" => "Patient/x",
            _ => "x",
        };
        let r = fhir
            .send(
                "GET",
                &query("Patient", &[(n, value)]),
                &json!({}),
                &[("Prefer", "handling=strict")],
            )
            .await;
        assert_eq!(r.status, 200, "{n}: {}", r.text());
    }
}

#[tokio::test]
async fn synthea_shaped_bundles_load_through_transactions() {
    use carapace_tests::synthea;
    let stack = Stack::start().await.unwrap();
    let bundles = synthea::generate(4, 150);
    let observations: usize = bundles
        .iter()
        .flat_map(|b| b.bundle["entry"].as_array().unwrap())
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .count();
    let report = synthea::load(&stack.server.base, &stack.server.bearer(), bundles, 4).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!((report.accepted, report.patients.len()), (6, 4));
    let fhir = stack.fhir();
    // Loading the shared batches again creates nothing (ifNoneExist matches).
    let again = synthea::generate(0, 0);
    let report = synthea::load(&stack.server.base, &stack.server.bearer(), again, 1).await;
    assert!(report.failures.is_empty());
    expect_count(&fhir, "Organization", 5).await;
    expect_count(&fhir, "Practitioner", 10).await;
    expect_count(&fhir, "Observation", observations).await;
    // Conditional references point at the shared resources, urn:uuid ones at the patient's own.
    let p = &report_patient(&fhir).await;
    let enc = fhir
        .get(&query("Encounter", &[("patient", p), ("_count", "1")]))
        .await
        .json();
    let e = &enc["entry"][0]["resource"];
    assert!(e["serviceProvider"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Organization/"));
    assert!(e["participant"][0]["individual"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Practitioner/"));
    assert_eq!(e["subject"]["reference"], format!("Patient/{p}"));
    let by_org = "service-provider:Organization.identifier";
    let org = "https://github.com/synthetichealth/synthea|Organization-0";
    let r = fhir.get(&query("Encounter", &[(by_org, org)])).await.json();
    assert!(r["total"].as_u64().unwrap() > 0, "{r}");
}

async fn expect_count(fhir: &Fhir<'_>, path: &str, n: usize) {
    let r = fhir
        .get(&query(path, &[("_summary", "count")]))
        .await
        .json();
    assert_eq!(r["total"], json!(n), "{path}");
}

async fn report_patient(fhir: &Fhir<'_>) -> String {
    let r = fhir.get("Patient?_count=1").await.json();
    r["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Resources indexed under an earlier index scheme (migration 0004 lists them in
/// `search_reindex`) are indexed again, in the background, when the server starts.
#[tokio::test]
async fn resources_listed_for_reindexing_are_indexed_again_at_start_up() {
    let mut stack = Stack::start().await.unwrap();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Reindexova"}],
                         "identifier": [{"system": "urn:mrn", "value": "R-1"}]});
    let r = stack.fhir().post("Patient", &patient).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let family = [("family", "reindex")];
    expect(&stack.fhir(), "Patient", &family, &[id.as_str()]).await;

    // As a database indexed before the prefix dictionary: its rows are not what searches read.
    let db = stack.db().await;
    for table in ["search_hash", "search_ref", "search_range"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
            .bind(&id)
            .execute(&db)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO search_reindex (resource_type, id) VALUES ('Patient', $1)")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    expect(&stack.fhir(), "Patient", &family, &[]).await;

    stack.server.restart().await.unwrap();
    let mut left = 1;
    for _ in 0..100 {
        left = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM search_reindex")
            .fetch_one(&db)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the listed resource was not indexed again");
    expect(&stack.fhir(), "Patient", &family, &[id.as_str()]).await;
    let mrn = [("identifier", "urn:mrn|R-1")];
    expect(&stack.fhir(), "Patient", &mrn, &[id.as_str()]).await;
}
