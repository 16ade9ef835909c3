//! The validator's tests through its entry points: shapes, elements, contained and embedded
//! resources, issue types and caps, and the official R4 examples. The helpers are shared with the
//! tests of [`super::primitives`] and [`super::extension`].

use super::walk::ELE_1;
use super::*;
use crate::fhir::schema;
use serde_json::json;
use serde_json::Map;

pub(super) fn issues(v: Value) -> Vec<Issue> {
    validate_resource(&v).err().unwrap_or_default()
}

pub(super) fn paths(v: Value) -> Vec<String> {
    issues(v).into_iter().map(|i| i.path).collect()
}

/// Parse text the way the server does, keeping numbers' text.
pub(super) fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

pub(super) fn patient_with(field: &str, value: Value) -> Value {
    let mut p = json!({"resourceType": "Patient"});
    p[field] = value;
    p
}

#[test]
fn a_well_formed_patient_passes() {
    let p = json!({
        "resourceType": "Patient", "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678Z",
                 "profile": ["http://example.org/p"]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "name": [{"family": "Chalmers", "given": ["Peter", "James"], "_given": [null, {"extension": [
            {"url": "http://example.org/x", "valueString": "y"}]}]}],
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "deceasedBoolean": false,
        "multipleBirthInteger": 2,
        "photo": [{"contentType": "image/png", "data": "aGVs\r\nbG8="}],
        "contact": [{"relationship": [{"text": "mother"}], "name": {"family": "X"}}],
        "managingOrganization": {"reference": "#o1"},
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}]
    });
    assert_eq!(issues(p), vec![]);
}

#[test]
fn the_top_level_must_be_a_known_resource() {
    assert_eq!(paths(json!([1])), [""]);
    assert_eq!(paths(json!({"id": "x"})), ["resourceType"]);
    assert_eq!(paths(json!({"resourceType": 5})), ["resourceType"]);
    assert_eq!(paths(json!({"resourceType": "Patent"})), ["resourceType"]);
    assert_eq!(
        paths(json!({"resourceType": "DomainResource"})),
        ["resourceType"]
    );
    assert_eq!(
        paths(json!({"resourceType": "HumanName"})),
        ["resourceType"]
    );
    assert_eq!(issues(json!({"resourceType": "Patient"})), vec![]);
}

#[test]
fn unknown_elements_and_misplaced_resource_type_are_named() {
    assert_eq!(
        paths(json!({"resourceType": "Patient", "colour": "red"})),
        ["Patient.colour"]
    );
    let i = issues(json!({"resourceType": "Patient", "colour": "red"}));
    assert_eq!(i[0].message, "unknown element 'colour'");
    assert_eq!(
        paths(json!({"resourceType": "Patient", "name": [{"resourceType": "HumanName"}]})),
        ["Patient.name[0].resourceType"]
    );
    assert_eq!(
        paths(json!({"resourceType": "Patient", "_colour": {}})),
        ["Patient._colour"]
    );
    // `_x` exists only for primitives.
    assert_eq!(
        paths(json!({"resourceType": "Patient", "_name": [{"id": "a"}]})),
        ["Patient._name"]
    );
    // The abstract choice name and choices of types it does not allow are not elements.
    assert_eq!(
        paths(json!({"resourceType": "Patient", "deceased[x]": true, "deceasedString": "x"})),
        ["Patient.deceased[x]", "Patient.deceasedString"]
    );
    // Client keys are echoed only as printable ASCII.
    let i = issues(json!({"resourceType": "Patient", "a\u{1b}b": 1}));
    assert_eq!(i[0].path, "Patient.a?b");
    assert_eq!(i[0].message, "unknown element 'a?b'");
}

#[test]
fn arrays_nulls_and_empty_values_are_checked() {
    let cases = [
        (
            json!({"resourceType": "Patient", "name": {"family": "x"}}),
            "Patient.name",
        ),
        (
            json!({"resourceType": "Patient", "gender": ["male"]}),
            "Patient.gender",
        ),
        (
            json!({"resourceType": "Patient", "name": []}),
            "Patient.name",
        ),
        (
            json!({"resourceType": "Patient", "name": [{}]}),
            "Patient.name[0]",
        ),
        (
            json!({"resourceType": "Patient", "name": [null]}),
            "Patient.name[0]",
        ),
        (
            json!({"resourceType": "Patient", "name": null}),
            "Patient.name",
        ),
        (
            json!({"resourceType": "Patient", "birthDate": null}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "maritalStatus": {}}),
            "Patient.maritalStatus",
        ),
        (
            json!({"resourceType": "Patient", "maritalStatus": "M"}),
            "Patient.maritalStatus",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["a", 3]}]}),
            "Patient.name[0].given[1]",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
            "Patient.name[0].given[1]",
        ),
        (
            json!({"resourceType": "Patient", "contact": [{"name": {"given": []}}]}),
            "Patient.contact[0].name.given",
        ),
    ];
    for (resource, path) in cases {
        assert_eq!(paths(resource.clone()), [path], "{resource}");
    }
}

#[test]
fn primitive_extensions_are_aligned_with_their_values() {
    let ok = [
        json!({"resourceType": "Patient", "_birthDate": {"id": "b", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}}),
        json!({"resourceType": "Patient", "name": [{"given": [null, "b"], "_given": [{"extension": [
            {"url": "http://example.org/x", "valueCode": "c"}]}, null]}]}),
        json!({"resourceType": "Patient", "birthDate": "2000", "_birthDate": {"id": "b"}}),
        json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [{"id": "g"}]}]}),
    ];
    for resource in ok {
        assert_eq!(issues(resource.clone()), vec![], "{resource}");
    }
    // Problems in `_name` are named at the primitive itself, as FHIRPath sees it.
    let cases = [
        (
            json!({"resourceType": "Patient", "_birthDate": "x"}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": null}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": {}}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": [{"id": "b"}]}),
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": {"url": "u"}}),
            "Patient.birthDate.url",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "u"}]}}),
            "Patient.birthDate.extension[0]",
        ),
        (
            json!({"resourceType": "Patient", "_gender": {"extension": [{"url": "u", "valueCode": 1}]}}),
            "Patient.gender.extension[0].value.ofType(code)",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": {"id": "g"}}]}),
            "Patient.name[0].given",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [{"id": "g"}]}]}),
            "Patient.name[0].given",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"_given": [null]}]}),
            "Patient.name[0].given[0]",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [3]}]}),
            "Patient.name[0].given[0]",
        ),
    ];
    for (resource, path) in cases {
        assert_eq!(paths(resource.clone()), [path], "{resource}");
    }
    // Both sides null at one position: reported once.
    assert_eq!(
        paths(json!({"resourceType": "Patient", "name": [{"given": [null], "_given": [null]}]})),
        ["Patient.name[0].given[0]"]
    );
    assert_eq!(
        paths(
            json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [{"id": "g"}]}]})
        ),
        ["Patient.name[0].given[1]", "Patient.name[0].given"]
    );
}

#[test]
fn ele_1_every_element_has_a_value_or_children() {
    let ele1 = |v: Value| -> Vec<(String, IssueType, String)> {
        issues(v)
            .into_iter()
            .map(|i| (i.path, i.code, i.message))
            .collect()
    };
    let at = |p: &str| vec![(p.to_string(), IssueType::Invariant, ELE_1.to_string())];
    // The issue's example: `given[0]` has an id and nothing else.
    assert_eq!(
        ele1(
            json!({"resourceType": "Patient", "name": [{"given": [null, "x"], "_given": [{"id": "x"}, null]}]})
        ),
        at("Patient.name[0].given[0]")
    );
    assert_eq!(
        ele1(json!({"resourceType": "Patient", "_gender": {"id": "g"}})),
        at("Patient.gender")
    );
    assert_eq!(
        ele1(json!({"resourceType": "Patient", "_deceasedBoolean": {"id": "d"}})),
        at("Patient.deceased.ofType(boolean)")
    );
    assert_eq!(
        ele1(json!({"resourceType": "Patient", "name": [{"_given": [{"id": "g"}]}]})),
        at("Patient.name[0].given[0]")
    );
    assert_eq!(
        ele1(json!({"resourceType": "Patient", "name": [{"id": "a"}]})),
        at("Patient.name[0]")
    );
    assert_eq!(
        ele1(json!({"resourceType": "Patient", "maritalStatus": {}})),
        at("Patient.maritalStatus")
    );
    assert_eq!(
        ele1(json!({"resourceType": "Patient", "contact": [{"name": {"id": "n"}}]})),
        at("Patient.contact[0].name")
    );
    // An id next to other content, or extensions alone, are children enough.
    for good in [
        json!({"resourceType": "Patient", "name": [{"id": "a", "text": "t"}]}),
        json!({"resourceType": "Patient", "_gender": {"extension": [
            {"url": "http://example.org/x", "valueBoolean": true}]}}),
    ] {
        assert_eq!(issues(good.clone()), vec![], "{good}");
    }
}

#[test]
fn contained_resources_follow_dom_2_3_and_4() {
    let rules = |v: Value| -> Vec<(String, String)> {
        issues(v)
            .into_iter()
            .map(|i| {
                assert_eq!(i.code, IssueType::Invariant, "{i:?}");
                (i.path, i.message.split(':').next().unwrap().to_string())
            })
            .collect()
    };
    let org = |extra: Value| {
        let mut o = json!({"resourceType": "Organization", "id": "o", "name": "x"});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    let patient = |contained: Vec<Value>, extra: Value| {
        let mut p = json!({"resourceType": "Patient", "contained": contained,
                           "managingOrganization": {"reference": "#o"}});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    assert_eq!(rules(patient(vec![org(json!({}))], json!({}))), vec![]);
    // dom-2: no nested contained resources.
    let nested = org(json!({"contained": [{"resourceType": "Location", "id": "l"}]}));
    assert_eq!(
        rules(patient(vec![nested], json!({}))),
        [("Patient.contained[0]".to_string(), "dom-2".to_string())]
    );
    // dom-4: no meta.versionId or meta.lastUpdated.
    for meta in [
        json!({"versionId": "1"}),
        json!({"lastUpdated": "2020-01-01T00:00:00Z"}),
    ] {
        assert_eq!(
            rules(patient(vec![org(json!({"meta": meta}))], json!({}))),
            [("Patient.contained[0]".to_string(), "dom-4".to_string())]
        );
    }
    // dom-3: an id, and a reference to it from elsewhere in the resource...
    let second = json!({"resourceType": "Practitioner", "id": "pr"});
    assert_eq!(
        rules(patient(vec![org(json!({})), second.clone()], json!({}))),
        [("Patient.contained[1]".to_string(), "dom-3".to_string())]
    );
    let no_id = json!({"resourceType": "Practitioner"});
    assert_eq!(
        rules(patient(vec![org(json!({})), no_id], json!({}))),
        [("Patient.contained[1]".to_string(), "dom-3".to_string())]
    );
    // ...through a reference anywhere (here from the other contained resource), a uri or a
    // canonical, or from the contained resource to its container (`#`).
    let referring = org(json!({"endpoint": [{"reference": "#pr"}]}));
    assert_eq!(
        rules(patient(vec![referring, second.clone()], json!({}))),
        vec![]
    );
    let by_uri = json!({"extension": [{"url": "http://example.org/u", "valueUri": "#pr"}]});
    assert_eq!(
        rules(patient(vec![org(json!({})), second.clone()], by_uri)),
        vec![]
    );
    let to_container = json!({"resourceType": "Practitioner", "id": "pr", "extension": [
        {"url": "http://example.org/r", "valueReference": {"reference": "#"}}]});
    assert_eq!(
        rules(patient(
            vec![org(json!({})), to_container.clone()],
            json!({})
        )),
        vec![]
    );
    // `#` from the container itself refers to nothing contained.
    let self_ref = json!({"link": [{"type": "seealso", "other": {"reference": "#"}}]});
    assert_eq!(
        rules(patient(vec![org(json!({})), second.clone()], self_ref)),
        [("Patient.contained[1]".to_string(), "dom-3".to_string())]
    );
    // Each resource of a Bundle has its own contained resources and references.
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient(vec![org(json!({}))], json!({}))},
        {"resource": {"resourceType": "Patient", "contained": [org(json!({}))]}}]});
    assert_eq!(
        rules(bundle),
        [(
            "Bundle.entry[1].resource.ofType(Patient).contained[0]".to_string(),
            "dom-3".to_string()
        )]
    );
}

#[test]
fn required_elements_and_choices() {
    assert_eq!(
        paths(json!({"resourceType": "Observation", "code": {"text": "x"}})),
        ["Observation.status"]
    );
    // A required primitive may be present through its extensions only.
    let absent = json!({"resourceType": "Observation", "code": {"text": "x"}, "_status": {"extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
    assert_eq!(issues(absent), vec![]);
    assert_eq!(
        paths(
            json!({"resourceType": "Questionnaire", "status": "draft", "item": [
            {"linkId": "1", "type": "choice", "enableWhen": [{"question": "0", "operator": "exists"}]}]})
        ),
        ["Questionnaire.item[0].enableWhen[0].answer"]
    );
    let two = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "valueString": "a", "valueBoolean": true});
    assert_eq!(paths(two), ["Observation.value.ofType(boolean)"]);
    let two = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "valueString": "a", "_valueBoolean": {"extension": [
                         {"url": "http://example.org/b", "valueCode": "c"}]}});
    assert_eq!(paths(two), ["Observation.value.ofType(boolean)"]);
    let one = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "valueString": "a", "_valueString": {"id": "s"}});
    assert_eq!(issues(one), vec![]);
}

#[test]
fn issues_carry_their_r4_issue_type() {
    let codes = |v: Value| -> Vec<IssueType> { issues(v).into_iter().map(|i| i.code).collect() };
    assert_eq!(
        codes(
            json!({"resourceType": "Patient", "colour": "red", "name": {"text": "x"}, "active": "yes"})
        ),
        [
            IssueType::Structure,
            IssueType::Structure,
            IssueType::Structure
        ]
    );
    assert_eq!(
        codes(json!({"resourceType": "Observation", "code": {"text": "x"}})),
        [IssueType::Required]
    );
    assert_eq!(
        codes(json!({"resourceType": "Patient", "birthDate": "1970-13-01", "gender": " male"})),
        [IssueType::Value, IssueType::Value]
    );
    assert_eq!(
        codes(json!({"resourceType": "Patient", "extension": [{"url": "http://example.org/u"}]})),
        [IssueType::Invariant]
    );
    // The issue's examples: a choice and a primitive's extensions, each at its FHIRPath.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "valueBoolean": "true"});
    assert_eq!(paths(obs), ["Observation.value.ofType(boolean)"]);
    let gender = json!({"resourceType": "Patient", "_gender": {"extension": [{"url": 1, "valueCode": "x"}]}});
    assert_eq!(paths(gender), ["Patient.gender.extension[0].url"]);
    let gender = json!({"resourceType": "Patient", "_gender": "unknown"});
    assert_eq!(paths(gender), ["Patient.gender"]);
    let deep = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "valueQuantity": {"value": 1, "comparator": " <"}});
    assert_eq!(
        paths(deep),
        ["Observation.value.ofType(Quantity).comparator"]
    );
    // The rendered issue: expression and location carry the same FHIRPath.
    let issue = &issues(json!({"resourceType": "Patient", "name": [{"given": ["a", 1]}]}))[0];
    let rendered = issue.to_json();
    assert_eq!(rendered["expression"], json!(["Patient.name[0].given[1]"]));
    assert_eq!(rendered["location"], json!(["Patient.name[0].given[1]"]));
    assert_eq!(rendered["code"], "structure");
}

#[test]
fn embedded_resources_are_checked_as_resources() {
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
         "resource": {"resourceType": "Patient", "gender": 1}},
        {"resource": {"resourceType": "Nonsense"}},
        {"resource": {"gender": "male"}},
        {"resource": "Patient/1"}
    ]});
    assert_eq!(
        paths(bundle),
        [
            "Bundle.entry[0].resource.ofType(Patient).gender",
            "Bundle.entry[1].resource.resourceType",
            "Bundle.entry[2].resource.resourceType",
            "Bundle.entry[3].resource",
        ]
    );
    let contained = json!({"resourceType": "Patient", "contained": [
        {"resourceType": "Organization", "id": "o", "colour": "red"}],
        "managingOrganization": {"reference": "#o"}});
    assert_eq!(
        paths(contained),
        ["Patient.contained[0].ofType(Organization).colour"]
    );
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "p", "resource": {"resourceType": "Observation", "code": {"text": "x"}}}]});
    assert_eq!(
        paths(params),
        ["Parameters.parameter[0].resource.ofType(Observation).status"]
    );
    let q = json!({"resourceType": "Questionnaire", "status": "draft", "item": [
        {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "bogus": 1}]}]});
    assert_eq!(paths(q), ["Questionnaire.item[0].item[0].bogus"]);
    let vs = json!({"resourceType": "ValueSet", "status": "draft", "compose": {
        "include": [{"system": "http://x"}], "exclude": [{"system": "http://y", "colour": 1}]}});
    assert_eq!(paths(vs), ["ValueSet.compose.exclude[0].colour"]);
}

#[test]
fn issues_are_collected_and_capped() {
    let p = json!({"resourceType": "Patient", "a": 1, "gender": 2, "name": [{"given": [3]}]});
    assert_eq!(
        paths(p),
        ["Patient.a", "Patient.gender", "Patient.name[0].given[0]"]
    );
    let many: Map<String, Value> = (0..300).map(|i| (format!("x{i}"), json!(1))).collect();
    let mut p = Value::Object(many);
    p["resourceType"] = json!("Patient");
    assert_eq!(issues(p).len(), MAX_ISSUES);
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    let nest = |levels: usize| {
        let mut ext = json!({"url": "u", "valueString": "x"});
        for _ in 0..levels {
            // Moved, not serialised as `json!` would: building must not recurse either.
            let mut outer = Map::new();
            outer.insert("url".into(), json!("u"));
            outer.insert("extension".into(), Value::Array(vec![ext]));
            ext = Value::Object(outer);
        }
        let mut patient = Map::new();
        patient.insert("resourceType".into(), json!("Patient"));
        patient.insert("extension".into(), Value::Array(vec![ext]));
        Value::Object(patient)
    };
    assert_eq!(issues(nest(100)), vec![]);
    let value = nest(5_000);
    let deep = validate_resource(&value).unwrap_err();
    // Dropping a 5,000-deep Value recurses too; leak it rather than risk the test's stack.
    std::mem::forget(value);
    assert_eq!(deep.len(), 1);
    assert_eq!(deep[0].message, "elements are nested too deeply");
    assert!(deep[0]
        .path
        .starts_with("Patient.extension[0].extension[0]."));
}

#[test]
fn official_examples_validate() {
    let Some(dir) = std::env::var_os("CARAPACE_R4_EXAMPLES") else {
        eprintln!("SKIPPED: set CARAPACE_R4_EXAMPLES to the hl7.fhir.r4.examples package dir");
        return;
    };
    let mut total = 0;
    let mut failed = Vec::new();
    let mut times = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".json") || name == "package.json" || name.starts_with('.') {
            continue;
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The definition bundles (all StructureDefinitions, SearchParameters, ValueSets...) are
        // the package's payload rather than examples.
        if v["resourceType"] == "Bundle"
            && schema::PACKAGE_DEFINITION_BUNDLES
                .iter()
                .any(|b| v["id"] == *b)
        {
            continue;
        }
        total += 1;
        let start = std::time::Instant::now();
        let result = validate_resource(&v);
        times.push(start.elapsed());
        if let Err(issues) = result {
            // The rule each refusal breaks: its ele-/dom-/txt- key, else the message.
            let rules: std::collections::BTreeSet<String> = issues
                .iter()
                .map(|i| i.message.split(':').next().unwrap_or("").to_string())
                .collect();
            eprintln!(
                "  {name}: {} issue(s), e.g. {}",
                issues.len(),
                issues[0].path
            );
            failed.push((name, rules.into_iter().collect::<Vec<_>>().join("; ")));
        }
    }
    times.sort();
    eprintln!(
        "{} of {total} official examples validate ({} fail); validation time median {:?}, p90 {:?}",
        total - failed.len(),
        failed.len(),
        times.get(times.len() / 2).copied().unwrap_or_default(),
        times.get(times.len() * 9 / 10).copied().unwrap_or_default(),
    );
    assert!(total > 5000);
    // Every refusal, with the rule it breaks. All but five were refused before issue 14; the
    // DICOM CodeSystem uses an extension outside its declared context, which the HL7
    // validator reports as an error too (its context fixes do not cover this extension).
    let expected = [
        ("ActivityDefinition-blood-tubes-supply.json", "the narrative must have some non-whitespace content (txt-2)"),
        ("ActivityDefinition-heart-valve-replacement.json", "the narrative must have some non-whitespace content (txt-2)"),
        // valueset-concept-comments, defined for ValueSet.compose.include.concept, on CodeSystem.concept.
        ("CodeSystem-dicom-dcim.json", "this extension is not allowed here (only on ValueSet.compose.include.concept)"),
        ("EventDefinition-example.json", "the narrative must have some non-whitespace content (txt-2)"),
        ("ImplementationGuide-fhir.json", "not a valid reference; required element 'name' is missing; required element 'status' is missing"),
        ("Questionnaire-qs1.json", "required element 'linkId' is missing"),
        ("Questionnaire-zika-virus-exposure-assessment.json", "the narrative must have some non-whitespace content (txt-2)"),
        ("SearchParameter-codesystem-extensions-CodeSystem-author.json", "required element 'base' is missing"),
        ("SearchParameter-codesystem-extensions-CodeSystem-effective.json", "required element 'base' is missing"),
        ("SearchParameter-codesystem-extensions-CodeSystem-end.json", "required element 'base' is missing"),
        ("SearchParameter-codesystem-extensions-CodeSystem-keyword.json", "required element 'base' is missing"),
        ("SearchParameter-codesystem-extensions-CodeSystem-workflow.json", "required element 'base' is missing"),
        ("SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json", "not a valid id"),
        ("SearchParameter-valueset-extensions-ValueSet-author.json", "required element 'base' is missing"),
        ("SearchParameter-valueset-extensions-ValueSet-effective.json", "required element 'base' is missing"),
        ("SearchParameter-valueset-extensions-ValueSet-end.json", "required element 'base' is missing"),
        ("SearchParameter-valueset-extensions-ValueSet-keyword.json", "required element 'base' is missing"),
        ("SearchParameter-valueset-extensions-ValueSet-workflow.json", "required element 'base' is missing"),
        // Logical models of R4's patterns, neither abstract nor derived from a base: sdf-4 as
        // written (and as the HL7 validator evaluates it) refuses them.
        ("StructureDefinition-Definition.json", "sdf-4"),
        ("StructureDefinition-Event.json", "sdf-4"),
        ("StructureDefinition-FiveWs.json", "sdf-4"),
        ("StructureDefinition-Request.json", "sdf-4"),
        ("ig-r4.json", "not a valid reference; required element 'name' is missing; required element 'status' is missing"),
    ];
    let failed: Vec<(&str, &str)> = failed
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect();
    assert_eq!(failed, expected);
}
