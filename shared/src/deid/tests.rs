use super::*;
use serde_json::json;

fn deid() -> Deidentifier {
    Deidentifier::new(
        Rules::safe_harbor().unwrap(),
        Dek::from_bytes(&[7; 32]).unwrap(),
    )
}

const CANARIES: [&str; 9] = [
    "Zqxcanaryfamily",
    "Zqxcanarygiven",
    "ZQX-CANARY-MRN-77123",
    "1931-07-14",
    "42 Zqxcanary Lane",
    "+1-555-0199-7731",
    "zqx.canary@example.org",
    "Zqxcanary narrative secret",
    "Zqxmaiden",
];

fn canary_patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "p-canary",
        "meta": {"versionId": "2", "lastUpdated": "2026-01-02T03:04:05Z"},
        "text": {"status": "generated",
                 "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", CANARIES[7])},
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": CANARIES[8]},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
             "valueAddress": {"city": "Zqxtown", "state": "MA", "country": "US"}}],
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": CANARIES[2]}],
        "name": [{"family": CANARIES[0], "given": [CANARIES[1]]}],
        "telecom": [{"system": "phone", "value": CANARIES[5]}, {"system": "email", "value": CANARIES[6]}],
        "gender": "female",
        "birthDate": CANARIES[3],
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1931-07-14T08:15:00Z"}]},
        "address": [{"line": [CANARIES[4]], "city": "Springfield", "postalCode": "01103", "state": "MA", "country": "US"}],
        "generalPractitioner": [{"reference": "Practitioner/pr-1", "display": "Dr Zqxwho"}],
        "photo": [{"contentType": "image/png", "data": "WnF4cGhvdG8="}]
    })
}

#[test]
fn safe_harbor_leaves_no_canary_and_keeps_what_analytics_needs() {
    let mut p = canary_patient();
    deid().apply(&mut p, Some("p-canary"), 2026);
    let text = p.to_string();
    for canary in CANARIES.iter().chain(&[
        "Zqxtown",
        "Zqxwho",
        "01103",
        "Springfield",
        "WnF4",
        "08:15",
        "p-canary",
    ]) {
        assert!(!text.contains(canary), "{canary} in {text}");
    }
    // Ages over 89: born 1931, so 95 in 2026: the year says "90 or more".
    assert_eq!(p["birthDate"], "1936");
    assert_eq!(p["gender"], "female");
    assert_eq!(p["address"][0], json!({"state": "MA", "country": "US"}));
    assert_eq!(
        p["extension"].as_array().unwrap().len(),
        1,
        "the maiden name's extension is gone whole"
    );
    assert_eq!(
        p["extension"][0]["valueAddress"],
        json!({"state": "MA", "country": "US"})
    );
    assert_eq!(p["meta"]["versionId"], "2");
    assert!(p["meta"].get("lastUpdated").is_none());
    assert_eq!(p["meta"]["security"][0]["code"], "PSEUDED");
    let gp = p["generalPractitioner"][0]["reference"].as_str().unwrap();
    assert_eq!(
        gp,
        format!("Practitioner/{}", deid().pseudonym("Practitioner", "pr-1"))
    );
    assert_eq!(p["id"], deid().pseudonym("Patient", "p-canary"));
}

#[test]
fn pseudonyms_are_stable_under_one_key_and_differ_under_another() {
    let a = deid().pseudonym("Patient", "p1");
    assert_eq!(a, deid().pseudonym("Patient", "p1"));
    assert_ne!(a, deid().pseudonym("Patient", "p2"));
    assert_ne!(a, deid().pseudonym("Observation", "p1"));
    let other = Deidentifier::new(
        Rules::safe_harbor().unwrap(),
        Dek::from_bytes(&[8; 32]).unwrap(),
    );
    assert_ne!(a, other.pseudonym("Patient", "p1"));
    assert!(crate::fhir::ResourceId::parse(&a).is_ok());
}

#[test]
fn clinical_content_stays_and_dates_keep_their_year() {
    let mut obs = json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "pulse taken by Zqxnurse"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2024-03-04T10:00:00Z", "end": "2024-03-05"},
        "issued": "2024-03-04T10:00:00.000Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "note": [{"text": "Zqxnote"}]
    });
    deid().apply(&mut obs, Some("p1"), 2026);
    assert_eq!(obs["code"]["coding"][0]["display"], "Heart rate");
    assert!(obs["code"].get("text").is_none());
    assert_eq!(
        obs["effectivePeriod"],
        json!({"start": "2024", "end": "2024"})
    );
    assert!(obs.get("issued").is_none() && obs.get("note").is_none());
    assert_eq!(obs["valueQuantity"]["value"], 72);
    assert_eq!(obs["valueQuantity"]["unit"], "/min");
    assert_eq!(
        obs["subject"]["reference"],
        format!("Patient/{}", deid().pseudonym("Patient", "p1")).as_str()
    );
}

#[test]
fn other_rules_shift_dates_per_patient_and_perturb_values() {
    let rules = Rules::parse(
        r#"{"name": "shift", "label": "PSEUDED", "rules": [
        {"path": "type:dateTime", "method": "dateshift"},
        {"path": "Quantity.value", "method": "perturb"},
        {"path": "Resource.id", "method": "keep"}]}"#,
    )
    .unwrap();
    let d = Deidentifier::new(rules, Dek::from_bytes(&[7; 32]).unwrap());
    let obs = |p: &str| {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "x"}, "effectiveDateTime": "2024-03-04T10:00:00Z",
        "valueQuantity": {"value": 100}, "subject": {"reference": format!("Patient/{p}")}})
    };
    let (mut a, mut a2, mut b) = (obs("p1"), obs("p1"), obs("p2"));
    d.apply(&mut a, Some("p1"), 2026);
    d.apply(&mut a2, Some("p1"), 2026);
    d.apply(&mut b, Some("p2"), 2026);
    assert_eq!(
        a["effectiveDateTime"], a2["effectiveDateTime"],
        "one patient, one shift"
    );
    assert_ne!(a["effectiveDateTime"], "2024-03-04T10:00:00Z");
    assert_ne!(a["effectiveDateTime"], b["effectiveDateTime"]);
    let v = a["valueQuantity"]["value"].as_f64().unwrap();
    assert!((90.0..=110.0).contains(&v) && v != 100.0, "{v}");
    assert_eq!(a["id"], "o1");
}

#[test]
fn rules_that_name_nothing_are_refused() {
    for bad in [
        r#"{"name": "x", "label": "PSEUDED", "rules": [{"path": "type:Nope", "method": "redact"}]}"#,
        r#"{"name": "x", "label": "PSEUDED", "rules": [{"path": "Patient.nope", "method": "redact"}]}"#,
        r#"{"name": "x", "label": "PSEUDED", "rules": [{"path": "type:string", "method": "shred"}]}"#,
        r#"{"name": "x", "label": "NOPE", "rules": []}"#,
    ] {
        assert!(Rules::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Rules::safe_harbor().unwrap().digest.len(), 64);
}

#[test]
fn the_oldest_are_one_group_wherever_their_age_is_written() {
    let mut related = json!({"resourceType": "RelatedPerson", "id": "r1", "patient": {"reference": "Patient/p1"},
        "birthDate": "1919-02-03", "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1919-02-03T04:05:00Z"}]}});
    deid().apply(&mut related, Some("p1"), 2026);
    assert_eq!(related["birthDate"], "1936");
    assert!(related.get("_birthDate").is_none());
    let mut age = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "30525-0"}]},
        "valueQuantity": {"value": 1248, "unit": "months of Zqx", "system": "http://unitsofmeasure.org", "code": "mo"}});
    deid().apply(&mut age, Some("p1"), 2026);
    assert_eq!(
        age["valueQuantity"],
        json!({"value": 90, "comparator": ">=", "system": "http://unitsofmeasure.org", "code": "a"})
    );
    let mut young = json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
        "valueQuantity": {"value": 45, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}});
    deid().apply(&mut young, Some("p1"), 2026);
    assert_eq!(young["valueQuantity"]["value"], 45);
    assert_eq!(young["valueQuantity"]["unit"], "a");
}

#[test]
fn a_bundles_resources_are_resources_of_their_own() {
    let mut bundle = json!({"resourceType": "Bundle", "id": "b1", "type": "collection",
        "entry": [{"fullUrl": "http://x/Patient/mrn-1", "resource": {"resourceType": "Patient", "id": "mrn-1",
                   "name": [{"family": "Zqxfam"}]}}]});
    deid().apply(&mut bundle, None, 2026);
    let text = bundle.to_string();
    assert!(
        !text.contains("mrn-1") && !text.contains("Zqxfam"),
        "{text}"
    );
    assert_eq!(
        bundle["entry"][0]["resource"]["id"],
        deid().pseudonym("Patient", "mrn-1")
    );
}
