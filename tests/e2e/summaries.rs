//! Machine-generated summaries (`conformance/ig/`): the summary DocumentReference, its model
//! Device and its Provenance posted in one transaction, as the IG's example does; the profiles
//! built in (checked with no StructureDefinition posted, never weakened by one); and the companion
//! rule: a summary written without its Provenance is refused and nothing is written.

use base64::Engine as _;
use carapace_tests::*;

const SUMMARY: &str = "https://carapace.dev/fhir/StructureDefinition/machine-summary";
const CANARY: &str = "Zqxsummarycanary: exertional chest pain, cardiology asked";

fn ig_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/ig")
}

/// The IG's example transaction (Patient, source document, Device, summary, Provenance), the
/// summary's text replaced by the canary.
fn example() -> Value {
    let text = std::fs::read_to_string(ig_dir().join("examples/Bundle-summary-transaction.json"))
        .expect("the IG's example Bundle");
    let mut bundle: Value = serde_json::from_str(&text).unwrap();
    let data = base64::engine::general_purpose::STANDARD.encode(CANARY);
    summary_entry(&mut bundle)["resource"]["content"][0]["attachment"]["data"] = json!(data);
    bundle
}

/// The entry of `bundle` whose resource is `resource_type` and declares `profile`'s name.
fn entry_of<'a>(bundle: &'a mut Value, resource_type: &str, profile: &str) -> &'a mut Value {
    bundle["entry"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| {
            e["resource"]["resourceType"] == resource_type
                && e["resource"]["meta"]["profile"][0]
                    .as_str()
                    .is_some_and(|p| p.ends_with(profile))
        })
        .unwrap()
}

fn summary_entry(bundle: &mut Value) -> &mut Value {
    entry_of(bundle, "DocumentReference", "/machine-summary")
}

fn provenance(bundle: &mut Value) -> &mut Value {
    &mut entry_of(bundle, "Provenance", "/summary-provenance")["resource"]
}

/// `Type/id` of a transaction-response entry's location.
fn located(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().unwrap();
    let path = location.split("/fhir/").nth(1).unwrap_or(location);
    path.split("/_history").next().unwrap().to_string()
}

async fn versions(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&stack.db().await)
        .await
        .unwrap()
}

/// A 4xx OperationOutcome whose text has every one of `words`.
fn refused(r: &HttpResponse, words: &[&str], what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "{what}");
    for w in words {
        assert!(r.text().contains(w), "{what}: no {w:?} in {}", r.text());
    }
}

#[tokio::test]
async fn a_summary_is_stored_with_its_model_and_provenance() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let mut bundle = example();
    let r = fhir.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    let entries = out["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    for e in entries {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
    }
    let summary = located(&entries[3]);
    let device = located(&entries[2]);
    assert!(summary.starts_with("DocumentReference/"), "{summary}");

    // The summary reads back with its text and its profile.
    let read = fhir.get(&summary).await;
    assert_eq!(read.status, 200, "{}", read.text());
    let doc = read.json();
    assert_eq!(doc["meta"]["profile"][0], SUMMARY);
    let data = doc["content"][0]["attachment"]["data"].as_str().unwrap();
    let text = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(String::from_utf8(text).unwrap(), CANARY);

    // Its Provenance is found by target, the model its agent and the extensions intact.
    let found = fhir.get(&format!("Provenance?target={summary}")).await;
    assert_eq!(found.status, 200, "{}", found.text());
    let found = found.json();
    let hits = found["entry"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    let stored = &hits[0]["resource"];
    let sent = provenance(&mut bundle).clone();
    assert_eq!(stored["extension"], sent["extension"]);
    assert_eq!(stored["target"][0]["reference"], summary.as_str());
    assert_eq!(stored["agent"][0]["who"]["reference"], device.as_str());
    let model = fhir.get(&device).await.json();
    assert_eq!(model["manufacturer"], "Example Models Ltd");

    // Sealed like any resource: neither the text nor its base64 is in the database dump.
    let dump = stack.postgres.dump(&stack.database).unwrap();
    let dump = String::from_utf8_lossy(&dump);
    assert!(dump.contains("resource_versions"), "the dump is real");
    let encoded = base64::engine::general_purpose::STANDARD.encode(CANARY);
    assert!(
        !dump.contains("Zqxsummarycanary"),
        "the dump has the summary text"
    );
    assert!(
        !dump.contains(&encoded[..24]),
        "the dump has the base64 text"
    );

    // An update of the summary is written with a new Provenance, in one transaction.
    let mut changed = doc.clone();
    changed["description"] = json!("Summary of the referral letter, regenerated");
    let mut prov = sent.clone();
    prov["target"] = json!([{"reference": format!("{summary}/_history/2")}]);
    prov["agent"][0]["who"]["reference"] = json!(device);
    prov["entity"] = json!([{"role": "source", "what": {"reference": located(&entries[1])}}]);
    let update = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": changed.clone(), "request": {"method": "PUT", "url": summary}},
        {"resource": prov, "request": {"method": "POST", "url": "Provenance"}}]});
    let r = fhir.post("", &update).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let found = fhir
        .get(&format!("Provenance?target={summary}"))
        .await
        .json();
    assert_eq!(found["entry"].as_array().unwrap().len(), 2, "{found}");

    // The CapabilityStatement names the guide and the profiles.
    let cs = fhir.get("metadata").await.json();
    assert_eq!(
        cs["implementationGuide"][0],
        "https://carapace.dev/fhir/ImplementationGuide/carapace-summaries"
    );
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let doc_ref = resources
        .iter()
        .find(|r| r["type"] == "DocumentReference")
        .unwrap();
    assert_eq!(doc_ref["supportedProfile"][0], SUMMARY);

    // An update alone is refused.
    let before = versions(&stack).await;
    changed["id"] = json!(summary.split('/').nth(1).unwrap());
    changed["description"] = json!("edited without provenance");
    let r = fhir.put(&summary, &changed).await;
    refused(&r, &["summary-provenance"], "an update alone");
    assert_eq!(versions(&stack).await, before);
}

#[tokio::test]
async fn a_summary_without_its_provenance_is_refused_and_nothing_is_written() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    // A stored StructureDefinition with the provenance profile's URL, loosened (confidence
    // optional): the built-in profile still decides.
    let sd = std::fs::read_to_string(ig_dir().join("StructureDefinition-summary-provenance.json"))
        .unwrap();
    let mut loose: Value = serde_json::from_str(&sd).unwrap();
    loose.as_object_mut().unwrap().remove("id");
    for e in loose["snapshot"]["element"].as_array_mut().unwrap() {
        if e["id"] == "Provenance.extension:confidence" {
            e["min"] = json!(0);
        }
    }
    let r = fhir.post("StructureDefinition", &loose).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // A stored Device that is not a summary model.
    let plain = json!({"resourceType": "Device", "manufacturer": "Example Models Ltd"});
    let plain = fhir.post("Device", &plain).await.created_id();
    let before = versions(&stack).await;

    // Alone: a plain create, and a batch entry.
    let summary = summary_entry(&mut example())["resource"].clone();
    let mut alone = summary.clone();
    alone["subject"] = json!({"reference": "Patient/nobody"});
    let r = fhir.post("DocumentReference", &alone).await;
    refused(&r, &["summary-provenance", "transaction"], "a plain create");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": alone, "request": {"method": "POST", "url": "DocumentReference"}}]});
    let r = fhir.post("", &batch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status = r.json()["entry"][0]["response"]["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(status.starts_with('4'), "a batch entry: {}", r.text());
    assert!(r.text().contains("summary-provenance"), "{}", r.text());

    // Transactions that lack the Provenance, or whose Provenance is not the summary's or does not
    // conform.
    let mut without = example();
    without["entry"].as_array_mut().unwrap().pop();
    let mut elsewhere = example();
    let source = elsewhere["entry"][1]["fullUrl"].clone();
    provenance(&mut elsewhere)["target"] = json!([{"reference": source}]);
    let mut no_confidence = example();
    provenance(&mut no_confidence)["extension"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    let mut too_confident = example();
    provenance(&mut too_confident)["extension"][0]["valueDecimal"] = json!(1.5);
    let mut no_device = example();
    let patient = no_device["entry"][0]["fullUrl"].clone();
    provenance(&mut no_device)["agent"] = json!([{"type": {"coding": [{"system":
        "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
        "who": {"reference": patient}}]);
    let mut unprofiled_model = example();
    entry_of(&mut unprofiled_model, "Device", "/summary-model")["resource"]
        .as_object_mut()
        .unwrap()
        .remove("meta");
    let mut stored_plain_device = example();
    provenance(&mut stored_plain_device)["agent"][0]["who"]["reference"] =
        json!(format!("Device/{plain}"));
    let mut undeclared = example();
    provenance(&mut undeclared)
        .as_object_mut()
        .unwrap()
        .remove("meta");
    for (bundle, words, what) in [
        (without, &["summary-provenance"][..], "no Provenance"),
        (
            elsewhere,
            &["summary-provenance"],
            "a Provenance of the source",
        ),
        (no_confidence, &["extension:confidence"], "no confidence"),
        (too_confident, &["between 0 and 1"], "confidence 1.5"),
        (no_device, &["assembler"], "no Device agent"),
        (
            undeclared,
            &["summary-provenance"],
            "a Provenance of no profile",
        ),
        (
            unprofiled_model,
            &["summary-model"],
            "a model Device of no profile",
        ),
        (
            stored_plain_device,
            &["summary-model"],
            "a stored Device of no profile",
        ),
    ] {
        let r = fhir.post("", &bundle).await;
        refused(&r, words, what);
        assert_eq!(
            versions(&stack).await,
            before,
            "{what}: something was written"
        );
    }
    let stored = fhir.get("DocumentReference").await.json();
    assert_eq!(
        stored["entry"].as_array().map_or(0, Vec::len),
        0,
        "{stored}"
    );
}

/// The README's example transaction, as printed, with its patient and source document made first.
#[tokio::test]
async fn the_readme_example_transaction_is_accepted() {
    let stack = Stack::start().await.unwrap();
    let fhir = stack.fhir();
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme
        .split("### Machine-generated summaries")
        .nth(1)
        .unwrap();
    let block = section.split("```json\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    let r = fhir
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await;
    let patient = r.created_id();
    let source = json!({"resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": "UmVmZXJyYWw="}}]});
    let source = fhir.post("DocumentReference", &source).await.created_id();
    let text = block
        .replace("Patient/123", &format!("Patient/{patient}"))
        .replace(
            "DocumentReference/referral-1",
            &format!("DocumentReference/{source}"),
        );
    let bundle: Value = serde_json::from_str(&text).expect("the README's example is JSON");
    let r = fhir.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let summary = located(&r.json()["entry"][1]);
    let found = fhir
        .get(&format!("Provenance?target={summary}"))
        .await
        .json();
    assert_eq!(found["entry"].as_array().unwrap().len(), 1, "{found}");
}

/// Every resource of the IG (the StructureDefinitions with their snapshots, the CodeSystem, the
/// ImplementationGuide, the example's entries) parses with `fhirclient`'s strict R4 models.
#[tokio::test]
async fn the_implementation_guide_parses_with_an_independent_r4_validator() {
    let Ok(python) = std::env::var("CARAPACE_PYTHON_CLIENTS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CARAPACE_PYTHON_CLIENTS is unset (tests/run installs fhirclient)"
        );
        eprintln!("SKIPPED: set CARAPACE_PYTHON_CLIENTS (tests/run installs fhirclient)");
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/ig_parse.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(ig_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(parsed.lines().count() >= 10, "{parsed}");
    assert!(parsed.contains("ImplementationGuide"), "{parsed}");
}
