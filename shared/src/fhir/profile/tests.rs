//! Profiles against the IPS 2.0.0 package (`CARAPACE_IPS_PACKAGE`) and small hand-made ones:
//! cardinality, closed slicing, bindings, patterns and fixed values, value slices, and the IPS
//! examples conforming to their profiles.

use super::*;
use crate::fhir::validate::IssueType;
use serde_json::json;

/// A StructureDefinition of the IPS 2.0.0 package (`CARAPACE_IPS_PACKAGE`), if fetched.
fn ips(name: &str) -> Option<Value> {
    let Some(dir) = std::env::var_os("CARAPACE_IPS_PACKAGE") else {
        eprintln!("SKIPPED: set CARAPACE_IPS_PACKAGE to the hl7.fhir.uv.ips 2.0.0 package dir");
        return None;
    };
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join(name)).unwrap();
    Some(serde_json::from_str(&text).unwrap())
}

fn paths(issues: &[Issue]) -> Vec<(&str, IssueType)> {
    issues.iter().map(|i| (i.path.as_str(), i.code)).collect()
}

const PATIENT: &str = "StructureDefinition-Patient-uv-ips.json";

#[test]
fn ips_patient_needs_a_name_and_a_birth_date() {
    let Some(sd) = ips(PATIENT) else { return };
    let profile = Profile::compile(&sd).unwrap();
    assert_eq!(
        profile.url(),
        "http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips"
    );
    let good = json!({"resourceType": "Patient", "name": [{"family": "Doe"}],
        "birthDate": "1970-01-01", "identifier": [{"value": "a"}, {"value": "b"}]});
    assert_eq!(profile.check(&good), vec![]);
    let bad = json!({"resourceType": "Patient", "gender": "female"});
    let issues = profile.check(&bad);
    assert_eq!(
        paths(&issues),
        [
            ("Patient.name", IssueType::Required),
            ("Patient.birthDate", IssueType::Required)
        ],
        "{issues:?}"
    );
    assert!(issues.iter().all(Issue::is_error));
    assert!(issues[0].message.contains("Patient-uv-ips"), "{issues:?}");
    // ips-pat-1 (a profile invariant): a name needs a family, given or text.
    let nameless = json!({"resourceType": "Patient", "name": [{"text": "x"}, {"use": "official"}],
        "birthDate": "1970"});
    let issues = profile.check(&nameless);
    assert_eq!(
        paths(&issues),
        [("Patient.name[1]", IssueType::Invariant)],
        "{issues:?}"
    );
    assert!(issues[0].message.starts_with("ips-pat-1: "), "{issues:?}");
    // A birth date carried only as an extension (`_birthDate`) is present.
    let shadow = json!({"resourceType": "Patient", "name": [{"text": "x"}],
        "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}});
    assert_eq!(profile.check(&shadow), vec![]);
    let wrong_type = json!({"resourceType": "Observation"});
    assert_eq!(
        paths(&profile.check(&wrong_type)),
        [("", IssueType::Structure)]
    );
}

#[test]
fn closed_extension_slicing_refuses_unknown_extensions() {
    let Some(mut sd) = ips(PATIENT) else { return };
    let elements = sd["snapshot"]["element"].as_array_mut().unwrap();
    let ext = elements
        .iter_mut()
        .find(|e| e["id"] == "Patient.extension")
        .unwrap();
    ext["slicing"]["rules"] = json!("closed");
    let profile = Profile::compile(&sd).unwrap();
    let pronouns = "http://hl7.org/fhir/StructureDefinition/individual-pronouns";
    let known = json!({"resourceType": "Patient", "name": [{"text": "x"}],
        "birthDate": "1970", "extension": [{"url": pronouns, "valueString": "x"}]});
    assert_eq!(profile.check(&known), vec![]);
    let unknown = json!({"resourceType": "Patient", "name": [{"text": "x"}],
        "birthDate": "1970", "extension": [{"url": pronouns, "valueString": "x"},
        {"url": "http://example.org/unknown", "valueString": "x"}]});
    assert_eq!(
        paths(&profile.check(&unknown)),
        [("Patient.extension[1]", IssueType::Structure)]
    );
    // Open as published: the same unknown extension is fine.
    let open = Profile::compile(&ips(PATIENT).unwrap()).unwrap();
    assert_eq!(open.check(&unknown), vec![]);
}

#[test]
fn a_binding_the_profile_tightens_is_checked() {
    let Some(mut sd) = ips(PATIENT) else { return };
    let elements = sd["snapshot"]["element"].as_array_mut().unwrap();
    let marital = elements
        .iter_mut()
        .find(|e| e["id"] == "Patient.maritalStatus")
        .unwrap();
    // R4 binds maritalStatus extensibly; this profile requires the value set.
    marital["binding"]["strength"] = json!("required");
    let profile = Profile::compile(&sd).unwrap();
    let with_status = |code: &str| {
        json!({"resourceType": "Patient", "name": [{"text": "x"}], "birthDate": "1970",
            "maritalStatus": {"coding": [{"system":
                "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": code}]}})
    };
    assert_eq!(profile.check(&with_status("M")), vec![]);
    let issues = profile.check_at(&with_status("Q"), Depth::Write);
    assert_eq!(
        paths(&issues),
        [("Patient.maritalStatus", IssueType::CodeInvalid)],
        "{issues:?}"
    );
    assert!(issues[0].is_error());
    // As published (R4's own binding, and R4's own `name.use`), the validator's business.
    let published = Profile::compile(&ips(PATIENT).unwrap()).unwrap();
    let mut odd_use = with_status("Q");
    odd_use["name"][0]["use"] = json!("nickname-ish");
    assert_eq!(published.check(&odd_use), vec![]);
}

fn tobacco() -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2",
            "display": "Tobacco smoking status"}], "text": "Smoking"},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2020-01-01"})
}

#[test]
fn patterns_fixed_cardinality_and_choice_types() {
    let Some(sd) = ips("StructureDefinition-Observation-tobaccouse-uv-ips.json") else {
        return;
    };
    let profile = Profile::compile(&sd).unwrap();
    assert_eq!(profile.check(&tobacco()), vec![]);
    let mut wrong_code = tobacco();
    wrong_code["code"]["coding"][0]["code"] = json!("1234-5");
    assert_eq!(
        paths(&profile.check(&wrong_code)),
        [("Observation.code", IssueType::Value)]
    );
    let mut period = tobacco();
    period.as_object_mut().unwrap().remove("effectiveDateTime");
    period["effectivePeriod"] = json!({"start": "2020"});
    assert_eq!(
        paths(&profile.check(&period)),
        [("Observation.effective.ofType(Period)", IssueType::Structure)]
    );
    let mut component = tobacco();
    component["component"] = json!([{"code": {"text": "x"}}]);
    assert_eq!(
        paths(&profile.check(&component)),
        [("Observation.component", IssueType::Structure)]
    );
    // A fixed value must be the value exactly (Flag-alert fixes `status`).
    let Some(flag) = ips("StructureDefinition-Flag-alert-uv-ips.json") else {
        return;
    };
    let flag = Profile::compile(&flag).unwrap();
    let alert = json!({"resourceType": "Flag", "status": "inactive", "code": {"text": "x"},
        "subject": {"reference": "Patient/p"}});
    assert!(paths(&flag.check(&alert)).contains(&("Flag.status", IssueType::Value)));
}

#[test]
fn value_slices_count_their_matches() {
    let Some(sd) = ips("StructureDefinition-Observation-results-laboratory-pathology-uv-ips.json")
    else {
        return;
    };
    let profile = Profile::compile(&sd).unwrap();
    let lab = |category: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": category}]}],
            "code": {"text": "x"}, "subject": {"reference": "Patient/p"},
            "effectiveDateTime": "2020", "performer": [{"reference": "Practitioner/x"}],
            "valueString": "x"})
    };
    assert_eq!(profile.check(&lab("laboratory")), vec![]);
    // ips-2, the profile's invariant on the resource: a value, a reason for its absence, ...
    let mut valueless = lab("laboratory");
    valueless.as_object_mut().unwrap().remove("valueString");
    let issues = profile.check(&valueless);
    assert_eq!(paths(&issues), [("Observation", IssueType::Invariant)]);
    assert!(issues[0].message.starts_with("ips-2: "), "{issues:?}");
    assert!(issues[0].is_error());
    let issues = profile.check(&lab("imaging"));
    assert_eq!(
        paths(&issues),
        [("Observation.category", IssueType::Required)],
        "{issues:?}"
    );
    assert!(issues[0].message.contains("category:laboratory"));
    let mut twice = lab("laboratory");
    let again = twice["category"][0].clone();
    twice["category"].as_array_mut().unwrap().push(again);
    assert_eq!(
        paths(&profile.check(&twice)),
        [("Observation.category", IssueType::Structure)]
    );
}

/// Every example the IPS package ships conforms to the package's profiles it declares (no
/// false positives), and each declared profile is one of the package's.
#[test]
fn the_ips_examples_conform_to_their_profiles() {
    let Some(dir) = std::env::var_os("CARAPACE_IPS_PACKAGE") else {
        eprintln!("SKIPPED: set CARAPACE_IPS_PACKAGE to the hl7.fhir.uv.ips 2.0.0 package dir");
        return;
    };
    let dir = std::path::Path::new(&dir);
    let mut profiles = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("StructureDefinition-") {
            continue;
        }
        let sd: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Ok(p) = Profile::compile(&sd) {
            profiles.insert(p.url().to_string(), p);
        }
    }
    assert!(profiles.len() >= 25, "{} profiles compiled", profiles.len());
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.join("example")).unwrap() {
        let path = entry.unwrap().path();
        let example: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let declared = example["meta"]["profile"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for url in declared.iter().filter_map(Value::as_str) {
            let Some(p) = profiles.get(url.split('|').next().unwrap()) else {
                continue;
            };
            let issues = p.check(&example);
            assert_eq!(issues, vec![], "{} against {url}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} examples checked");
}

#[test]
fn a_definition_without_snapshot_is_refused() {
    let sd = json!({"resourceType": "StructureDefinition", "kind": "resource",
        "type": "Patient", "differential": {"element": []}});
    assert!(matches!(
        Profile::compile(&sd),
        Err(CompileError::NoSnapshot)
    ));
    let ext = json!({"resourceType": "StructureDefinition", "kind": "complex-type",
        "type": "Extension"});
    assert!(matches!(
        Profile::compile(&ext),
        Err(CompileError::NotAResourceProfile)
    ));
}
