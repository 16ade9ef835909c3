//! Test data: where the official R4 examples and the IPS package are, and Consent resources.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The official R4 examples directory (`package/` of `hl7.fhir.r4.examples`), if fetched:
/// `CARAPACE_R4_EXAMPLES`, else `.cache/r4-examples/package` at the workspace root.
pub fn examples_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARAPACE_R4_EXAMPLES") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let p = root.join(".cache/r4-examples/package");
    p.exists().then_some(p)
}

/// The International Patient Summary package directory (`package/` of `hl7.fhir.uv.ips` 2.0.0), if
/// fetched: `CARAPACE_IPS_PACKAGE`, else `.cache/ips/package` at the workspace root.
pub fn ips_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARAPACE_IPS_PACKAGE") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let p = root.join(".cache/ips/package");
    p.exists().then_some(p)
}

/// An active privacy Consent of `patient` (an id) permitting `actor` (`Practitioner/x`,
/// `Organization/y`; `None` for everyone), optionally only for resource types `classes` and until
/// `end`.
pub fn consent(
    patient: &str,
    effect: &str,
    actor: Option<&str>,
    classes: &[&str],
    end: Option<&str>,
) -> Value {
    let mut provision = serde_json::json!({"type": effect});
    if let Some(actor) = actor {
        provision["actor"] = serde_json::json!([{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
            "reference": {"reference": actor}
        }]);
    }
    if !classes.is_empty() {
        provision["class"] = classes
            .iter()
            .map(|c| serde_json::json!({"system": "http://hl7.org/fhir/resource-types", "code": c}))
            .collect();
    }
    if let Some(end) = end {
        provision["period"] = serde_json::json!({"start": "2000-01-01", "end": end});
    }
    serde_json::json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        // ppc-1: a Consent names its policy.
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision
    })
}

/// [`consent`]: a permit for `actor`, every type, no end.
pub fn permit_consent(patient: &str, actor: &str) -> Value {
    consent(patient, "permit", Some(actor), &[], None)
}
