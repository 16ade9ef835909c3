//! The profiles this server knows without anyone posting them: the machine-generated summary
//! implementation guide of `conformance/ig/` (the summary DocumentReference, the model Device, the
//! summary Provenance), embedded at build time and compiled once.

use super::{CompileError, Profile};
use serde_json::Value;
use std::sync::{Arc, LazyLock};

/// The implementation guide the built-in profiles belong to.
pub const GUIDE: &str = "https://carapace.dev/fhir/ImplementationGuide/carapace-summaries";
/// The machine-generated summary (a DocumentReference).
pub const SUMMARY: &str = "https://carapace.dev/fhir/StructureDefinition/machine-summary";
/// The model that generated a summary (a Device).
pub const SUMMARY_MODEL: &str = "https://carapace.dev/fhir/StructureDefinition/summary-model";
/// How a summary was made (a Provenance): the one a summary must be written with.
pub const SUMMARY_PROVENANCE: &str =
    "https://carapace.dev/fhir/StructureDefinition/summary-provenance";

/// The embedded StructureDefinitions of the resource profiles, as `conformance/ig/` has them.
pub const DEFINITIONS: [&str; 3] = [
    include_str!("../../../../conformance/ig/StructureDefinition-machine-summary.json"),
    include_str!("../../../../conformance/ig/StructureDefinition-summary-model.json"),
    include_str!("../../../../conformance/ig/StructureDefinition-summary-provenance.json"),
];

/// A built-in profile, or why it could not be compiled (a build defect the unit tests catch; a
/// write declaring it is then refused rather than let through unchecked).
pub type Builtin = Result<Arc<Profile>, String>;

static COMPILED: LazyLock<Vec<(&'static str, Builtin)>> = LazyLock::new(|| {
    [SUMMARY, SUMMARY_MODEL, SUMMARY_PROVENANCE]
        .into_iter()
        .zip(DEFINITIONS)
        .map(|(url, text)| (url, compile(url, text)))
        .collect()
});

fn compile(url: &str, text: &str) -> Builtin {
    let sd: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let profile = Profile::compile(&sd).map_err(|e: CompileError| e.to_string())?;
    if profile.url() != url {
        return Err("the embedded StructureDefinition has another url".into());
    }
    Ok(Arc::new(profile))
}

/// The built-in profile a canonical names (`url` or `url|version`: any version of a built-in URL
/// is the built-in profile, so no version string escapes it), or `None` if it is not built in.
pub fn builtin(canonical: &str) -> Option<&'static Builtin> {
    let url = canonical.split('|').next().unwrap_or(canonical);
    COMPILED.iter().find(|(u, _)| *u == url).map(|(_, p)| p)
}

/// The built-in profile of a resource type, for the CapabilityStatement's `supportedProfile`.
pub fn for_type(resource_type: &str) -> Option<&'static str> {
    match resource_type {
        "DocumentReference" => Some(SUMMARY),
        "Device" => Some(SUMMARY_MODEL),
        "Provenance" => Some(SUMMARY_PROVENANCE),
        _ => None,
    }
}

/// Does `resource`'s `meta.profile` declare `url` (in any version)?
pub fn declares(resource: &Value, url: &str) -> bool {
    resource
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|p| p.split('|').next() == Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validate::{self, Depth, Issue};

    const EXAMPLE: &str =
        include_str!("../../../../conformance/ig/examples/Bundle-summary-transaction.json");

    /// The example transaction's entries, `urn:uuid:` references replaced by `Type/n` (as the
    /// store resolves them before it checks profiles), by resource type.
    fn example(resource_type: &str, declaring: Option<&str>) -> Value {
        let mut text = EXAMPLE.to_string();
        let bundle: Value = serde_json::from_str(EXAMPLE).unwrap();
        for (i, e) in bundle["entry"].as_array().unwrap().iter().enumerate() {
            let url = e["fullUrl"].as_str().unwrap();
            let rt = e["resource"]["resourceType"].as_str().unwrap();
            text = text.replace(url, &format!("{rt}/e{i}"));
        }
        let bundle: Value = serde_json::from_str(&text).unwrap();
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| {
                r["resourceType"] == resource_type && declaring.is_none_or(|p| declares(r, p))
            })
            .unwrap()
    }

    fn errors(url: &str, resource: &Value) -> Vec<Issue> {
        let profile = builtin(url).unwrap().as_ref().unwrap();
        profile
            .check_at(resource, Depth::Write)
            .into_iter()
            .filter(Issue::is_error)
            .collect()
    }

    /// Every resource of the IG is valid R4 by this server's own validator.
    #[test]
    fn the_implementation_guide_is_valid_r4() {
        let others = [
            include_str!("../../../../conformance/ig/StructureDefinition-summary-confidence.json"),
            include_str!(
                "../../../../conformance/ig/StructureDefinition-summary-processing-time.json"
            ),
            include_str!(
                "../../../../conformance/ig/StructureDefinition-summary-input-tokens.json"
            ),
            include_str!(
                "../../../../conformance/ig/StructureDefinition-summary-output-tokens.json"
            ),
            include_str!("../../../../conformance/ig/CodeSystem-summary-type.json"),
            include_str!("../../../../conformance/ig/ImplementationGuide-carapace-summaries.json"),
            EXAMPLE,
        ];
        for text in DEFINITIONS.into_iter().chain(others) {
            let r: Value = serde_json::from_str(text).unwrap();
            let errors: Vec<Issue> = validate::validate_report(&r)
                .into_iter()
                .filter(Issue::is_error)
                .collect();
            assert_eq!(errors, vec![], "{}", r["id"]);
        }
    }

    #[test]
    fn every_builtin_profile_compiles_and_the_example_conforms() {
        for (url, rt) in [
            (SUMMARY, "DocumentReference"),
            (SUMMARY_MODEL, "Device"),
            (SUMMARY_PROVENANCE, "Provenance"),
        ] {
            let r = example(rt, Some(url));
            assert!(
                validate::validate_resource(&r).is_ok(),
                "{rt} is not valid R4"
            );
            assert_eq!(errors(url, &r), vec![], "{rt}");
        }
        // Any version of a built-in URL is the built-in profile.
        assert!(builtin(&format!("{SUMMARY}|9.9")).is_some());
        assert!(builtin("https://carapace.dev/fhir/StructureDefinition/other").is_none());
    }

    #[test]
    fn the_provenance_profile_needs_confidence_in_range_time_in_ms_and_a_device() {
        let good = example("Provenance", Some(SUMMARY_PROVENANCE));
        let mut high = good.clone();
        high["extension"][0]["valueDecimal"] = serde_json::json!(1.5);
        assert!(errors(SUMMARY_PROVENANCE, &high)
            .iter()
            .any(|i| i.message.contains("between 0 and 1")));
        let mut none = good.clone();
        none["extension"].as_array_mut().unwrap().remove(0);
        assert!(errors(SUMMARY_PROVENANCE, &none)
            .iter()
            .any(|i| i.message.contains("extension:confidence")));
        let mut seconds = good.clone();
        seconds["extension"][1]["valueDuration"]["code"] = serde_json::json!("s");
        assert!(!errors(SUMMARY_PROVENANCE, &seconds).is_empty());
        let mut person = good.clone();
        person["agent"][0]["who"]["reference"] = serde_json::json!("Practitioner/p1");
        assert!(errors(SUMMARY_PROVENANCE, &person)
            .iter()
            .any(|i| i.message.contains("assembler")));
        let mut role = good;
        role["entity"][0]["role"] = serde_json::json!("derivation");
        assert!(!errors(SUMMARY_PROVENANCE, &role).is_empty());
    }

    #[test]
    fn the_summary_profile_needs_inline_text_about_a_patient() {
        let good = example("DocumentReference", Some(SUMMARY));
        let mut pdf = good.clone();
        pdf["content"][0]["attachment"]["contentType"] = serde_json::json!("application/pdf");
        assert!(errors(SUMMARY, &pdf)
            .iter()
            .any(|i| i.message.contains("text/plain")));
        let mut linked = good.clone();
        let attachment = linked["content"][0]["attachment"].as_object_mut().unwrap();
        attachment.remove("data");
        attachment.insert("url".into(), serde_json::json!("Binary/b1"));
        assert_eq!(
            errors(SUMMARY, &linked).len(),
            2,
            "{:?}",
            errors(SUMMARY, &linked)
        );
        let mut group = good.clone();
        group["subject"]["reference"] = serde_json::json!("Group/g1");
        assert!(!errors(SUMMARY, &group).is_empty());
        let mut untyped = good;
        untyped["type"]["coding"][0]["code"] = serde_json::json!("other");
        assert!(!errors(SUMMARY, &untyped).is_empty());
    }

    #[test]
    fn the_model_profile_needs_a_provider_a_model_name_and_a_version() {
        let good = example("Device", Some(SUMMARY_MODEL));
        for field in ["manufacturer", "version", "deviceName"] {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(field);
            assert!(!errors(SUMMARY_MODEL, &bad).is_empty(), "{field}");
        }
        let mut nameless = good;
        nameless["deviceName"][0]["type"] = serde_json::json!("user-friendly-name");
        assert!(!errors(SUMMARY_MODEL, &nameless).is_empty());
    }
}
