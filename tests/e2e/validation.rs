//! Validation to the letter of R4, as a client sees it: each refusal is a 400 whose issue names the
//! problem by FHIRPath (`expression` and `location`) with its R4 issue type, nothing is written, and
//! `$validate` reports the same issue.

use carapace_tests::*;

/// The issue at `path` in a refusal, with its code.
fn issue_at<'a>(oo: &'a Value, path: &str) -> Option<&'a Value> {
    oo["issue"]
        .as_array()?
        .iter()
        .find(|i| i["expression"][0] == path)
}

#[tokio::test]
async fn refusals_name_the_fhirpath_and_the_issue_type() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let birth_place = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";
    let cases = [
        (
            "a choice of the wrong JSON type",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "valueBoolean": "yes"}),
            "Observation.value.ofType(boolean)",
            "structure",
        ),
        (
            "a bad primitive extension part",
            json!({"resourceType": "Patient", "_gender": "unknown"}),
            "Patient.gender",
            "structure",
        ),
        (
            "ele-1: a repeating primitive with only an id",
            json!({"resourceType": "Patient", "name": [{"given": [null, "x"], "_given": [{"id": "x"}, null]}]}),
            "Patient.name[0].given[0]",
            "invariant",
        ),
        (
            "dom-3: an unreferenced contained resource",
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o"}]}),
            "Patient.contained[0]",
            "invariant",
        ),
        (
            "dom-4: a contained resource with a version",
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
                   "contained": [{"resourceType": "Organization", "id": "o", "meta": {"versionId": "1"}}]}),
            "Patient.contained[0]",
            "invariant",
        ),
        (
            "dom-2: nested contained resources",
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
                   "contained": [{"resourceType": "Organization", "id": "o", "name": "x",
                     "contained": [{"resourceType": "Location", "id": "l"}]}]}),
            "Patient.contained[0]",
            "invariant",
        ),
        (
            "a core extension with the wrong value type",
            json!({"resourceType": "Patient", "extension": [{"url": birth_place, "valueString": "x"}]}),
            "Patient.extension[0]",
            "extension",
        ),
        (
            "a core extension in the wrong context",
            json!({"resourceType": "Practitioner", "extension": [
                {"url": birth_place, "valueAddress": {"city": "x"}}]}),
            "Practitioner.extension[0]",
            "extension",
        ),
        (
            "a missing required element",
            json!({"resourceType": "Observation", "code": {"text": "x"}}),
            "Observation.status",
            "required",
        ),
        (
            "deep in a choice",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "valueQuantity": {"value": 1, "unit": ""}}),
            "Observation.value.ofType(Quantity).unit",
            "value",
        ),
        (
            "in a Bundle entry",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [
                {"resource": {"resourceType": "Patient", "birthDate": "1970-13-01"}}]}),
            "Bundle.entry[0].resource.ofType(Patient).birthDate",
            "value",
        ),
    ];
    let before = stack.stored_versions().await;
    for (what, resource, path, code) in &cases {
        let rt = resource["resourceType"].as_str().unwrap();
        let r = fhir.post(rt, resource).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let oo = r.json();
        let issue =
            issue_at(&oo, path).unwrap_or_else(|| panic!("{what}: no issue at {path}: {oo}"));
        assert_eq!(issue["location"], json!([path]), "{what}");
        assert_eq!(issue["code"], *code, "{what}: {issue}");
        assert_eq!(issue["severity"], "error", "{what}");
        // `$validate` answers 200 with the same issue.
        let v = fhir.post(&format!("{rt}/$validate"), resource).await;
        assert_eq!(v.status, 200, "{what}: {}", v.text());
        let report = v.json();
        let same = issue_at(&report, path).unwrap_or_else(|| panic!("{what}: $validate {report}"));
        assert_eq!(same["code"], *code, "{what}");
    }
    assert_eq!(stack.stored_versions().await, before, "nothing is written");

    // The same content, valid: a core extension where and as its definition says, a referenced
    // contained resource, a primitive with an id and a value.
    let good = json!({"resourceType": "Patient",
        "extension": [{"url": birth_place, "valueAddress": {"city": "x"}}],
        "name": [{"given": ["a", "x"], "_given": [{"id": "x"}, null]}],
        "managingOrganization": {"reference": "#o"},
        "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}]});
    let r = fhir.post("Patient", &good).await;
    assert_eq!(r.status, 201, "{}", r.text());
}
