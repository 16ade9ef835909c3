//! `Patient/[id]/$summary`: the International Patient Summary of a Synthea patient, checked
//! against the IPS 2.0.0 profiles by this server's own validator and parsed by an independent
//! strict R4 library, its content counted from the Synthea input; read through the gate (another
//! patient's token, a label, a consent); the same record giving the same document.

use carapace_core::access::Role;
use carapace_tests::synthea::{self, NamedBundle};
use carapace_tests::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

const IPS: &str = "http://hl7.org/fhir/uv/ips/StructureDefinition/";
const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";
/// A Synthea patient with active allergies, a medication order, immunizations, lab results and
/// procedures, and one whose orders refer to Medication resources.
const PATIENTS: [&str; 2] = [
    "88e4bac8-2609-3c28-a354-ab29f69153f4",
    "e1dbcb04-9c64-e94c-2bd0-d7b199d369e5",
];

/// The IPS profiles the document and its entries are checked against.
const PROFILES: [&str; 14] = [
    "Bundle-uv-ips",
    "Composition-uv-ips",
    "Patient-uv-ips",
    "AllergyIntolerance-uv-ips",
    "Condition-uv-ips",
    "MedicationRequest-uv-ips",
    "MedicationStatement-uv-ips",
    "Medication-uv-ips",
    "Immunization-uv-ips",
    "Observation-results-laboratory-pathology-uv-ips",
    "Procedure-uv-ips",
    "Device-uv-ips",
    "CodeableConcept-uv-ips",
    "Coding-uv-ips",
];

/// The shared Synthea export beside the repository.
fn synthea_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea-120");
    dir.join(format!("{}.json.bz2", PATIENTS[0]))
        .exists()
        .then_some(dir)
}

fn bzcat(path: &std::path::Path) -> Value {
    let out = std::process::Command::new("bzcat")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "bzcat {}", path.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Synthea hospital and practitioner batches and the two patients' transactions.
fn synthea_bundles(dir: &std::path::Path) -> Vec<NamedBundle> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("0-hospital") || n.starts_with("0-practitioner"))
        .collect();
    names.sort_by_key(|n| !n.starts_with("0-hospital"));
    names.extend(PATIENTS.iter().map(|p| format!("{p}.json.bz2")));
    names
        .into_iter()
        .map(|name| NamedBundle {
            bundle: bzcat(&dir.join(&name)),
            name,
        })
        .collect()
}

/// The first coding's code of a CodeableConcept.
fn code(concept: &Value) -> String {
    concept["coding"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn codes(concept: &Value) -> Vec<&str> {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["code"].as_str())
        .collect()
}

/// What the summary of `input` (a Synthea patient transaction) must hold, section by section: the
/// codes of its entries, sorted — counted here from the input by the IPS section rules.
fn expected_sections(input: &Value) -> BTreeMap<&'static str, Vec<String>> {
    let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for section in ["48765-2", "11450-4", "10160-0"] {
        out.insert(section, vec![]);
    }
    for e in input["entry"].as_array().unwrap() {
        let r = &e["resource"];
        let status = r["status"].as_str().unwrap_or("");
        let clinical = codes(&r["clinicalStatus"]);
        let verified = codes(&r["verificationStatus"]);
        let (section, item) = match r["resourceType"].as_str().unwrap() {
            "AllergyIntolerance"
                if !clinical
                    .iter()
                    .any(|c| ["inactive", "resolved"].contains(c))
                    && !verified.contains(&"entered-in-error") =>
            {
                ("48765-2", code(&r["code"]))
            }
            "Condition"
                if !clinical
                    .iter()
                    .any(|c| ["inactive", "resolved"].contains(c))
                    && !verified.contains(&"entered-in-error") =>
            {
                ("11450-4", code(&r["code"]))
            }
            "MedicationRequest" if ["active", "unknown", "on-hold"].contains(&status) => {
                let what = if r["medicationCodeableConcept"].is_object() {
                    code(&r["medicationCodeableConcept"])
                } else {
                    "reference".into()
                };
                ("10160-0", what)
            }
            "MedicationStatement"
                if ["active", "intended", "unknown", "on-hold"].contains(&status) =>
            {
                ("10160-0", code(&r["medicationCodeableConcept"]))
            }
            "Immunization" if status != "entered-in-error" => ("11369-6", code(&r["vaccineCode"])),
            "Observation"
                if r["category"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| codes(c).contains(&"laboratory")))
                    && !["cancelled", "entered-in-error", "preliminary"].contains(&status) =>
            {
                ("30954-2", code(&r["code"]))
            }
            "Procedure" if !["entered-in-error", "not-done"].contains(&status) => {
                ("47519-4", code(&r["code"]))
            }
            _ => continue,
        };
        out.entry(section).or_default().push(item);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The document's sections by code: the codes of the entries each refers to, sorted (the entry
/// found by `fullUrl`, so every reference must resolve within the Bundle).
fn actual_sections(doc: &Value, base: &str) -> BTreeMap<String, Vec<String>> {
    let by_url: BTreeMap<&str, &Value> = doc["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["fullUrl"].as_str().unwrap(), &e["resource"]))
        .collect();
    let composition = &doc["entry"][0]["resource"];
    let mut out = BTreeMap::new();
    for s in composition["section"].as_array().unwrap() {
        let mut items = Vec::new();
        for e in s["entry"].as_array().into_iter().flatten() {
            let reference = e["reference"].as_str().unwrap();
            let r = by_url
                .get(format!("{base}/{reference}").as_str())
                .unwrap_or_else(|| panic!("{reference} is not an entry of the Bundle"));
            let concept = match r["resourceType"].as_str().unwrap() {
                "Immunization" => &r["vaccineCode"],
                "MedicationRequest" | "MedicationStatement"
                    if !r["medicationCodeableConcept"].is_object() =>
                {
                    items.push("reference".to_string());
                    continue;
                }
                "MedicationRequest" | "MedicationStatement" => &r["medicationCodeableConcept"],
                _ => &r["code"],
            };
            items.push(code(concept));
        }
        if items.is_empty() {
            assert_eq!(
                s["emptyReason"]["coding"][0]["code"], "unavailable",
                "an empty section says why: {s}"
            );
        }
        items.sort();
        out.insert(code(&s["code"]), items);
    }
    out
}

/// The document less what differs from one request to the next: its identifier and timestamp
/// (also the Composition's id, `fullUrl` and date).
fn without_instance(doc: &Value) -> Value {
    let mut d = doc.clone();
    let m = d.as_object_mut().unwrap();
    m.remove("identifier");
    m.remove("timestamp");
    let first = &mut d["entry"][0];
    first.as_object_mut().unwrap().remove("fullUrl");
    let c = first["resource"].as_object_mut().unwrap();
    c.remove("id");
    c.remove("date");
    d
}

/// The errors of a `$validate` answer.
fn errors(r: &HttpResponse) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error" || i["severity"] == "fatal")
        .map(|i| format!("{} {}", i["expression"][0], i["diagnostics"]))
        .collect()
}

/// The `not-supported` warnings: what the validator could not evaluate.
fn unevaluated(r: &HttpResponse) -> Vec<String> {
    r.json()["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["code"] == "not-supported")
        .map(|i| i["diagnostics"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn patient_id(fhir: &Fhir<'_>, synthea_id: &str) -> String {
    let r = fhir
        .get(&format!("Patient?identifier={SYNTHEA}|{synthea_id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A Synthea patient's summary is an IPS document: it validates against the IPS Bundle,
/// Composition and Patient profiles (and its entries against theirs where the Synthea data
/// conforms), parses with `fhirclient`'s strict R4 models, holds what the record holds section by
/// section, every section entry resolving within the Bundle, and comes out the same twice.
#[tokio::test]
async fn a_synthea_patients_summary_is_an_ips_document() {
    let Some(ips) = ips_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the IPS package is missing (tests/run fetches it)"
        );
        eprintln!(
            "SKIPPED: the IPS package is missing (run tests/run, or set CARAPACE_IPS_PACKAGE)"
        );
        return;
    };
    // The real Synthea export when it is beside the repository, else the generated set of the
    // same shape (vital signs and problems only).
    let real = synthea_dir();
    let bundles = match &real {
        Some(dir) => synthea_bundles(dir),
        None => {
            eprintln!(
                "NOTE: ../shared/data/synthea-120 is not here; using generated Synthea-shaped data"
            );
            synthea::generate(2, 60)
        }
    };
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let inputs: Vec<Value> = bundles
        .iter()
        .filter(|b| b.bundle["type"] == "transaction")
        .map(|b| b.bundle.clone())
        .collect();
    let report = synthea::load(&stack.server.base, &stack.server.bearer(), bundles, 1).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for profile in PROFILES {
        let text = std::fs::read_to_string(ips.join(format!("StructureDefinition-{profile}.json")))
            .unwrap();
        let r = fhir
            .post("StructureDefinition", &serde_json::from_str(&text).unwrap())
            .await;
        assert_eq!(r.status, 201, "{profile}: {}", r.text());
    }
    let base = stack.server.base.clone();
    for input in &inputs {
        let synthea_id = input["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .and_then(|e| {
                e["resource"]["identifier"]
                    .as_array()?
                    .iter()
                    .find(|i| i["system"] == SYNTHEA)?["value"]
                    .as_str()
            })
            .unwrap();
        let id = patient_id(&fhir, synthea_id).await;
        let r = fhir.get(&format!("Patient/{id}/$summary")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let doc = r.json();
        assert_eq!(doc["type"], "document");
        assert!(doc["identifier"]["value"].is_string() && doc["timestamp"].is_string());
        let composition = &doc["entry"][0]["resource"];
        assert_eq!(composition["resourceType"], "Composition");
        assert_eq!(composition["type"]["coding"][0]["code"], "60591-5");
        assert_eq!(composition["status"], "final");
        assert_eq!(composition["subject"]["reference"], format!("Patient/{id}"));
        // Exactly one Composition and one Patient (the Bundle's entry slices, which the
        // validator cannot tell apart by profile: see below).
        let of_type = |t: &str| {
            doc["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["resource"]["resourceType"] == t)
                .count()
        };
        assert_eq!((of_type("Composition"), of_type("Patient")), (1, 1));
        // The author is this server, an entry of the Bundle.
        let author = composition["author"][0]["reference"].as_str().unwrap();
        let device = doc["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["fullUrl"] == author)
            .expect("the author is in the Bundle");
        assert_eq!(device["resource"]["resourceType"], "Device");

        // What the record holds, section by section, counted from the Synthea input.
        let expected = expected_sections(input);
        let actual = actual_sections(&doc, &base);
        let expected: BTreeMap<String, Vec<String>> = expected
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(actual, expected, "sections of {synthea_id}");
        if real.is_some() {
            assert!(actual["48765-2"].len() + actual["10160-0"].len() > 0);
        }
        assert!(actual.values().any(|v| !v.is_empty()));
        // Medications the orders refer to are entries too.
        let referenced: Vec<&str> = doc["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["resource"]["medicationReference"]["reference"].as_str())
            .collect();
        for m in &referenced {
            assert_eq!(
                doc["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["fullUrl"] == format!("{base}/{m}"))
                    .count(),
                1,
                "{m}"
            );
        }

        // This server's validator: the Bundle against Bundle-uv-ips, the Composition and the
        // Patient against theirs — no error.
        let bundle = fhir
            .post(
                &format!("Bundle/$validate?profile={IPS}Bundle-uv-ips"),
                &doc,
            )
            .await;
        assert_eq!(errors(&bundle), Vec::<String>::new(), "{}", bundle.text());
        let not_evaluated = unevaluated(&bundle);
        eprintln!("Bundle-uv-ips, not evaluated: {not_evaluated:?}");
        let composition_check = fhir
            .post(
                &format!("Composition/$validate?profile={IPS}Composition-uv-ips"),
                composition,
            )
            .await;
        assert_eq!(
            errors(&composition_check),
            Vec::<String>::new(),
            "{}",
            composition_check.text()
        );
        eprintln!(
            "Composition-uv-ips, not evaluated: {:?}",
            unevaluated(&composition_check)
        );
        // ... and the same checks catch a document that breaks them: no identifier, a required
        // section empty without saying why (ips-comp-1), a required section missing, a section
        // narrative outside the allow-list.
        let mut broken = doc.clone();
        broken.as_object_mut().unwrap().remove("identifier");
        let r = fhir
            .post(
                &format!("Bundle/$validate?profile={IPS}Bundle-uv-ips"),
                &broken,
            )
            .await;
        assert!(
            errors(&r).iter().any(|e| e.contains("Bundle.identifier")),
            "{}",
            r.text()
        );
        let composition_errors = |change: &dyn Fn(&mut Value)| {
            let mut c = composition.clone();
            change(&mut c);
            let fhir = &fhir;
            async move {
                errors(
                    &fhir
                        .post(
                            &format!("Composition/$validate?profile={IPS}Composition-uv-ips"),
                            &c,
                        )
                        .await,
                )
            }
        };
        let unexplained = composition_errors(&|c| {
            let s = &mut c["section"][0];
            s.as_object_mut().unwrap().remove("entry");
            s.as_object_mut().unwrap().remove("emptyReason");
        })
        .await;
        assert!(
            unexplained.iter().any(|e| e.contains("ips-comp-1")),
            "{unexplained:?}"
        );
        let missing = composition_errors(&|c| {
            c["section"].as_array_mut().unwrap().remove(0);
        })
        .await;
        assert!(
            missing.iter().any(|e| e.contains("sectionAllergies")),
            "{missing:?}"
        );
        let scripted = composition_errors(&|c| {
            c["section"][1]["text"]["div"] = json!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>"
            );
        })
        .await;
        assert!(!scripted.is_empty());
        // Every entry against its slice's profile (the Bundle's entry slicing discriminates by
        // profile, which the validator does not evaluate, so each is checked here on its own).
        let mut nonconforming: BTreeMap<String, usize> = BTreeMap::new();
        for e in doc["entry"].as_array().unwrap().iter().skip(1) {
            let r = &e["resource"];
            let t = r["resourceType"].as_str().unwrap();
            let profile = match t {
                "Observation" => "Observation-results-laboratory-pathology-uv-ips".to_string(),
                t => format!("{t}-uv-ips"),
            };
            let check = fhir
                .post(&format!("{t}/$validate?profile={IPS}{profile}"), r)
                .await;
            let found = errors(&check);
            if !found.is_empty() {
                *nonconforming
                    .entry(format!("{profile}: {}", found[0]))
                    .or_default() += 1;
            }
        }
        eprintln!("entries not conforming to their IPS profile: {nonconforming:#?}");
        // What Synthea records fits the IPS profiles but for the performer of a lab result
        // (Observation-results-laboratory-pathology-uv-ips requires one; Synthea records none).
        for k in nonconforming.keys() {
            assert!(
                k.starts_with("Observation-results-laboratory-pathology-uv-ips")
                    && k.contains("performer"),
                "{nonconforming:#?}"
            );
        }

        // The same record gives the same document, but for its identifier and timestamp.
        let again = fhir.get(&format!("Patient/{id}/$summary")).await.json();
        assert_ne!(again["identifier"], doc["identifier"]);
        assert_eq!(without_instance(&again), without_instance(&doc));

        // An independent strict R4 parser reads it.
        if let Ok(python) = std::env::var("CARAPACE_PYTHON_CLIENTS") {
            let file = std::env::temp_dir().join(format!("ips-{}.json", std::process::id()));
            std::fs::write(&file, doc.to_string()).unwrap();
            let out = std::process::Command::new(&python)
                .arg("-c")
                .arg(
                    "import json, sys\n\
                     from fhirclient.models.bundle import Bundle\n\
                     b = Bundle(json.load(open(sys.argv[1])))\n\
                     c = b.entry[0].resource\n\
                     print(b.type, c.resource_type, len(c.section), len(b.entry))",
                )
                .arg(&file)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&file);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let sections = composition["section"].as_array().unwrap().len();
            let entries = doc["entry"].as_array().unwrap().len();
            assert_eq!(
                stdout.trim(),
                format!("document Composition {sections} {entries}")
            );
        } else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CARAPACE_PYTHON_CLIENTS is unset (tests/run installs fhirclient)"
            );
            eprintln!("SKIPPED: the fhirclient parse (set CARAPACE_PYTHON_CLIENTS)");
        }
    }
    // Listed in the CapabilityStatement.
    let caps = fhir.get("metadata").await.json();
    let patient = caps["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert!(patient["operation"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["name"] == "summary"));
}

fn created(r: &HttpResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

async fn get_as(stack: &Stack, token: &str, path: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http(
        "GET",
        &stack.server.url(path),
        &[("Authorization", auth.as_str()), ("Accept", FHIR_JSON)],
        None,
    )
    .await
    .unwrap()
}

/// The references of a summary's section `code`.
fn section_refs(doc: &Value, code: &str) -> Vec<String> {
    doc["entry"][0]["resource"]["section"]
        .as_array()
        .unwrap_or_else(|| panic!("a document: {doc}"))
        .iter()
        .find(|s| s["code"]["coding"][0]["code"] == code)
        .map(|s| {
            s["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["reference"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn bundle_refs(doc: &Value) -> Vec<String> {
    doc["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let r = &e["resource"];
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect()
}

/// The summary holds only what the caller may read: another patient's token is refused as if the
/// patient did not exist, a label above the caller's ceiling and a consent's deny leave their
/// resources out (a required section then says it has no information), and the operation is
/// audited.
#[tokio::test]
async fn the_summary_is_read_through_the_gate() {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    f.put(
        "Practitioner/pr-1",
        &json!({"resourceType": "Practitioner", "id": "pr-1"}),
    )
    .await;
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1970-01-01"});
    let a = created(&f.post("Patient", &patient("Alpha")).await);
    let b = created(&f.post("Patient", &patient("Bravo")).await);
    let allergy = |label: Option<&str>| {
        let mut r = json!({"resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]},
            "patient": {"reference": format!("Patient/{a}")}});
        if let Some(code) = label {
            r["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": code}]});
        }
        r
    };
    let plain = created(&f.post("AllergyIntolerance", &allergy(None)).await);
    let restricted = created(&f.post("AllergyIntolerance", &allergy(Some("R"))).await);
    let condition = created(
        &f.post(
            "Condition",
            &json!({"resourceType": "Condition",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "subject": {"reference": format!("Patient/{a}")}}),
        )
        .await,
    );
    let (plain, restricted, condition) = (
        format!("AllergyIntolerance/{plain}"),
        format!("AllergyIntolerance/{restricted}"),
        format!("Condition/{condition}"),
    );

    // The system client (ceiling: normal) sees all but the restricted allergy.
    let summary = f.get(&format!("Patient/{a}/$summary")).await;
    assert_eq!(summary.status, 200, "{}", summary.text());
    let doc = summary.json();
    assert_eq!(section_refs(&doc, "48765-2"), std::slice::from_ref(&plain));
    assert_eq!(
        section_refs(&doc, "11450-4"),
        std::slice::from_ref(&condition)
    );
    assert!(!bundle_refs(&doc).contains(&restricted));

    // The patient sees their own record whole; another patient's token is refused as missing.
    stack.token_user("patient-a", "patient", None).await;
    let own = stack
        .token("patient-a", Role::Patient, "patient/*.rs", Some(&a))
        .await
        .unwrap();
    let doc = get_as(&stack, &own, &format!("Patient/{a}/$summary"))
        .await
        .json();
    let mut allergies = section_refs(&doc, "48765-2");
    allergies.sort();
    let mut both = vec![plain.clone(), restricted.clone()];
    both.sort();
    assert_eq!(allergies, both);
    let other = stack
        .token("patient-b", Role::Patient, "patient/*.rs", Some(&b))
        .await
        .unwrap();
    let refused = get_as(&stack, &other, &format!("Patient/{a}/$summary")).await;
    let unknown = get_as(&stack, &other, "Patient/no-such-patient/$summary").await;
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert_eq!(refused.status, unknown.status);
    assert!(!refused.text().contains("Alpha"));
    // A client without a scope to read Patients is refused; an unknown patient is 404.
    let narrow = stack
        .token("narrow", Role::System, "system/Observation.rs", None)
        .await
        .unwrap();
    assert_eq!(
        get_as(&stack, &narrow, &format!("Patient/{a}/$summary"))
            .await
            .status,
        403
    );
    assert_eq!(f.get("Patient/no-such-patient/$summary").await.status, 404);
    // POST: with no body, or a Parameters body naming the IPS Bundle profile, the same document;
    // another profile, or a body that is not Parameters, refused.
    let auth = stack.server.bearer();
    let empty = http(
        "POST",
        &stack.server.url(&format!("Patient/{a}/$summary")),
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(empty.status, 200, "{}", empty.text());
    let got = f.get(&format!("Patient/{a}/$summary")).await.json();
    assert_eq!(without_instance(&empty.json()), without_instance(&got));
    let with_profile = |profile: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "profile", "valueCanonical": profile}]})
    };
    let posted = f
        .post(
            &format!("Patient/{a}/$summary"),
            &with_profile(&format!("{IPS}Bundle-uv-ips")),
        )
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(without_instance(&posted.json()), without_instance(&got));
    for body in [with_profile("http://example.org/other"), patient("Other")] {
        let r = f.post(&format!("Patient/{a}/$summary"), &body).await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    assert_eq!(
        f.get(&format!(
            "Patient/{a}/$summary?profile=http://example.org/other"
        ))
        .await
        .status,
        400
    );

    // A practitioner A consented to, but with a deny for Conditions: the restricted allergy (within
    // a practitioner's ceiling) is there, the condition is not, and the problem list says it has
    // no information.
    stack.token_user("dr", "practitioner", Some("pr-1")).await;
    assert_eq!(
        f.post("Consent", &permit_consent(&a, "Practitioner/pr-1"))
            .await
            .status,
        201
    );
    assert_eq!(
        f.post(
            "Consent",
            &consent(&a, "deny", Some("Practitioner/pr-1"), &["Condition"], None)
        )
        .await
        .status,
        201
    );
    let dr = stack
        .token("dr", Role::Practitioner, "user/*.rs", None)
        .await
        .unwrap();
    let r = get_as(&stack, &dr, &format!("Patient/{a}/$summary")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let mut allergies = section_refs(&doc, "48765-2");
    allergies.sort();
    assert_eq!(allergies, both);
    assert!(section_refs(&doc, "11450-4").is_empty());
    assert!(!bundle_refs(&doc).contains(&condition));
    let problems = doc["entry"][0]["resource"]["section"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"]["coding"][0]["code"] == "11450-4")
        .unwrap()
        .clone();
    assert_eq!(problems["emptyReason"]["coding"][0]["code"], "unavailable");
    // B's record stays closed to the practitioner.
    assert_eq!(
        get_as(&stack, &dr, &format!("Patient/{b}/$summary"))
            .await
            .status,
        404
    );

    // An analytics caller under A's research consent gets the summary de-identified: no name,
    // in the narratives neither, and pseudonyms for ids.
    let mut research = consent(&a, "permit", None, &[], None);
    research["provision"]["purpose"] =
        json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]);
    assert_eq!(f.post("Consent", &research).await.status, 201);
    stack.token_user("analyst", "analytics", None).await;
    let analyst = stack
        .token("analyst", Role::Analytics, "user/*.rs", None)
        .await
        .unwrap();
    let r = get_as(&stack, &analyst, &format!("Patient/{a}/$summary")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("Alpha"), "{}", r.text());
    assert!(!r.text().contains(&a), "{}", r.text());
    let doc = r.json();
    let allergies = section_refs(&doc, "48765-2");
    assert_eq!(allergies.len(), 1, "{doc}");
    assert_ne!(allergies[0], plain);
    assert!(bundle_refs(&doc).contains(&allergies[0]));

    // Audited as an operation on A's record, the refusals too.
    let events = stack.audit_events("_count=100").await;
    let summaries: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["what"]["reference"] == format!("Patient/{a}/$summary"))
        })
        .collect();
    assert!(summaries.len() >= 5, "{events:#?}");
}
