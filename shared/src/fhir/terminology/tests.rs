//! The shipped terminology (counts, case sensitivity, hierarchies, bindings keyed like the schema)
//! and what the validator reports for bound values by strength.

use super::load::{parse, TERMINOLOGY_JSON};
use super::*;
use crate::fhir::validate::{validate_report, validate_resource, Issue};
use crate::fhir::validate::{IssueType, Severity};
use serde_json::json;
use serde_json::Value;

fn errors(v: Value) -> Vec<Issue> {
    validate_resource(&v).err().unwrap_or_default()
}

fn error_paths(v: Value) -> Vec<String> {
    errors(v).into_iter().map(|i| i.path).collect()
}

#[test]
fn the_r4_terminology_ships() {
    assert_eq!(code_systems().count(), 1062);
    assert_eq!(value_sets().count(), 1316);
    let enumerable = value_sets().filter(|v| v.expansion().is_some()).count();
    assert!(enumerable > 1100, "{enumerable}");
    let gender = value_set("http://hl7.org/fhir/ValueSet/administrative-gender").unwrap();
    assert_eq!(gender.name(), "AdministrativeGender");
    let codes: Vec<_> = gender.expansion().unwrap().iter().map(|c| c.code).collect();
    assert_eq!(codes, ["male", "female", "other", "unknown"]);
    assert_eq!(
        gender.expansion().unwrap()[0],
        Concept {
            system: "http://hl7.org/fhir/administrative-gender",
            version: "4.0.1",
            code: "male",
            display: "Male",
        }
    );
    assert!(value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1").is_some());
    assert!(value_set("http://hl7.org/fhir/ValueSet/administrative-gender|3.0.2").is_none());
    assert!(value_set("http://example.org/nothing").is_none());
    // SNOMED CT and BCP-13 do not ship: value sets over them are not enumerable.
    for url in [
        "http://hl7.org/fhir/ValueSet/clinical-findings",
        "http://hl7.org/fhir/ValueSet/mimetypes",
    ] {
        let vs = value_set(url).unwrap();
        assert!(vs.expansion().is_none(), "{url}");
        assert_eq!(vs.contains(None, "anything"), Membership::Unknown);
    }
    assert!(is_external("http://snomed.info/sct") && is_external("http://loinc.org"));
    assert!(!is_external("http://hl7.org/fhir/administrative-gender"));
}

#[test]
fn membership_follows_case_sensitivity_and_systems() {
    let gender = value_set("http://hl7.org/fhir/ValueSet/administrative-gender").unwrap();
    let system = "http://hl7.org/fhir/administrative-gender";
    assert_eq!(gender.contains(Some(system), "female"), Membership::In);
    assert_eq!(gender.contains(None, "female"), Membership::In);
    assert_eq!(gender.contains(Some(system), "Female"), Membership::NotIn);
    assert_eq!(gender.contains(None, "robot"), Membership::NotIn);
    assert_eq!(
        gender.contains(Some("http://example.org/g"), "x"),
        Membership::Unknown
    );
    // v2 tables do not declare case sensitivity: compared case-insensitively.
    let v2 = code_system("http://terminology.hl7.org/CodeSystem/v2-0131").unwrap();
    assert!(!v2.is_case_sensitive());
    assert_eq!(v2.lookup("c").map(|c| c.code), Some("C"));
    let vs = value_set("http://terminology.hl7.org/ValueSet/v2-0131").unwrap();
    assert_eq!(vs.contains(Some(v2.url()), "c"), Membership::In);
}

#[test]
fn hierarchies_give_descendants_and_ancestors() {
    let act = code_system("http://terminology.hl7.org/CodeSystem/v3-ActCode").unwrap();
    assert!(act.is_hierarchical() && act.is_complete());
    let def = act.lookup("_ActAccountCode").unwrap();
    assert_eq!(def.display, "ActAccountCode");
    assert!(def.definition.starts_with("An account represents"));
    let below = act.descendants("_ActAccountCode");
    assert!(below.contains(&"ACCTRECEIVABLE") && below.contains(&"PBILLACCT"));
    assert!(!below.contains(&"_ActAccountCode"));
    assert_eq!(act.ancestors("ACCTRECEIVABLE"), ["_ActAccountCode"]);
    assert!(act.subsumes("_ActAccountCode", "ACCTRECEIVABLE"));
    assert!(!act.subsumes("ACCTRECEIVABLE", "_ActAccountCode"));
    // A parent named by the `child` property (not by nesting).
    assert!(act.ancestors("LFEMX").contains(&"COVMX"));
    assert!(act.descendants("nonsense").is_empty());
    // An is-a filter expanded over that hierarchy.
    let account = value_set("http://hl7.org/fhir/ValueSet/account-type").unwrap();
    assert_eq!(
        account.contains(Some(act.url()), "PBILLACCT"),
        Membership::In
    );
    assert_eq!(
        account.contains(Some(act.url()), "COVMX"),
        Membership::NotIn
    );
    let gender = code_system("http://hl7.org/fhir/administrative-gender").unwrap();
    assert!(!gender.is_hierarchical());
}

#[test]
fn bindings_are_keyed_like_the_schema() {
    let b = binding("Patient", "gender").unwrap();
    assert_eq!(b.strength, Strength::Required);
    assert_eq!(
        b.value_set,
        "http://hl7.org/fhir/ValueSet/administrative-gender"
    );
    assert_eq!(b.bound_type, BoundType::Code);
    assert_eq!(
        binding("Quantity", "comparator").unwrap().strength,
        Strength::Required
    );
    assert_eq!(
        binding("Patient.contact", "relationship").map(|b| (b.strength, b.bound_type)),
        Some((Strength::Extensible, BoundType::CodeableConcept))
    );
    assert!(binding("Patient", "birthDate").is_none());
}

#[test]
fn required_bindings_refuse_codes_outside_the_value_set() {
    for bad in ["robot", "mmale", "Female"] {
        let e = errors(json!({"resourceType": "Patient", "gender": bad}));
        assert_eq!(e.len(), 1, "{bad}");
        assert_eq!(e[0].path, "Patient.gender");
        assert_eq!(e[0].code, IssueType::CodeInvalid);
        assert_eq!(
            e[0].message,
            format!("Patient.gender: '{bad}' is not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender (AdministrativeGender)")
        );
    }
    let obs = |extra: Value| {
        let mut o =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    assert_eq!(
        error_paths(obs(json!({"status": "bogus"}))),
        ["Observation.status"]
    );
    assert_eq!(
        error_paths(obs(
            json!({"valueQuantity": {"value": 1, "comparator": "=<"}})
        )),
        ["Observation.value.ofType(Quantity).comparator"]
    );
    assert_eq!(
        error_paths(obs(json!({"component": [{"code": {"text": "c"}},
            {"code": {"text": "d"}, "valueQuantity": {"value": 1, "comparator": "~"}}]}))),
        ["Observation.component[1].value.ofType(Quantity).comparator"]
    );
    // Repeating code elements are judged item by item.
    let cs = |codes: Value| {
        json!({"resourceType": "CapabilityStatement", "status": "draft", "date": "2020",
               "kind": "instance", "fhirVersion": "4.0.1", "format": codes,
               "implementation": {"description": "x"}, "rest": [{"mode": "server"}]})
    };
    assert!(errors(cs(json!(["json", "xml"]))).is_empty());
    // A Coding whose system the value set draws from, with a code it does not hold.
    let coding = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}});
    assert!(errors(coding).is_empty());
    let good = obs(json!({"valueQuantity": {"value": 1, "comparator": "<="},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}]}));
    let findings: Vec<Issue> = validate_report(&good)
        .into_iter()
        .filter(|i| i.code != IssueType::Invariant)
        .collect();
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn codeable_concepts_are_judged_only_on_systems_the_value_set_draws_from() {
    let condition = |coding: Value| {
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/p"},
               "clinicalStatus": {"coding": coding}})
    };
    let clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical";
    assert!(errors(condition(json!([{"system": clinical, "code": "active"}]))).is_empty());
    let e = errors(condition(json!([{"system": clinical, "code": "dormant"}])));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "Condition.clinicalStatus");
    assert!(
        e[0].message
            .contains("none of the codings is in the required value set"),
        "{e:?}"
    );
    // One good coding is enough; a coding of another system is not judged.
    assert!(
        errors(condition(json!([{"system": clinical, "code": "dormant"},
        {"system": clinical, "code": "active"}])))
        .is_empty()
    );
    assert!(errors(condition(
        json!([{"system": "http://example.org/local", "code": "x"}])
    ))
    .is_empty());
    assert!(errors(condition(json!([{"code": "x"}]))).is_empty());
}

#[test]
fn extensible_and_preferred_bindings_only_report() {
    let patient = json!({"resourceType": "Patient", "maritalStatus": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "ZZZ"}]}});
    assert!(errors(patient.clone()).is_empty());
    // Only the binding's own finding (dom-6, for the missing narrative, is not this test's).
    let report: Vec<Issue> = validate_report(&patient)
        .into_iter()
        .filter(|i| i.code == IssueType::CodeInvalid)
        .collect();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].severity, Severity::Warning);
    assert_eq!(report[0].path, "Patient.maritalStatus");
    assert!(report[0]
        .message
        .contains("extensible value set http://hl7.org/fhir/ValueSet/marital-status"));
}

#[test]
fn codes_of_terminology_that_does_not_ship_are_never_refused() {
    // Attachment.contentType: required, BCP-13 mime types; Observation.code: LOINC (example).
    let patient = json!({"resourceType": "Patient", "photo": [{"contentType": "image/x-unheard-of"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "tlh"}]}}]});
    assert!(errors(patient.clone()).is_empty());
    let report = validate_report(&patient);
    assert!(report.iter().all(|i| !i.is_error()), "{report:?}");
    assert!(report
        .iter()
        .any(|i| i.path == "Patient.photo[0].contentType"
            && i.severity == Severity::Information
            && i.code == IssueType::NotSupported));
}

#[test]
fn the_tables_parse_quickly() {
    // Parsed once per process; measured here on fresh parses (the best of three: the first
    // also pages the embedded file in).
    let mut best = std::time::Duration::MAX;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let tables = parse().unwrap();
        best = best.min(start.elapsed());
        assert_eq!(tables.code_systems.len(), 1062);
        assert_eq!(tables.value_sets.len(), 1316);
    }
    eprintln!(
        "terminology.json: {} bytes, parsed in {best:?}",
        TERMINOLOGY_JSON.len()
    );
}
