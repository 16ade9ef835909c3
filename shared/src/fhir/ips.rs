//! The International Patient Summary document (`hl7.fhir.uv.ips` 2.0.0) built from a patient's
//! resources: which resource goes in which section, and the document Bundle itself. Pure: the
//! store chooses the resources (through the gate) and hands them here.
//!
//! Section rules, after HAPI FHIR's IPS generator (its per-section search strategies), restated:
//! - Allergies and intolerances (LOINC 48765-2): `AllergyIntolerance`, unless its clinical status
//!   is `inactive` or `resolved` or its verification status `entered-in-error`.
//! - Problem list (11450-4): `Condition`, unless its clinical status is `inactive` or `resolved` or
//!   its verification status `entered-in-error` (so active, recurrence, relapse and unstated).
//! - Medication summary (10160-0): `MedicationStatement` with status `active`, `intended`,
//!   `unknown` or `on-hold`; `MedicationRequest` with status `active`, `unknown` or `on-hold`; and
//!   the `Medication` either refers to (an entry of the Bundle, in no section).
//! - Immunizations (11369-6): `Immunization`, unless `entered-in-error`.
//! - Results (30954-2): `Observation` with category `laboratory`, unless its status is
//!   `cancelled`, `entered-in-error` or `preliminary`.
//! - History of procedures (47519-4): `Procedure`, unless `entered-in-error` or `not-done`.
//!
//! The first three sections are required by the IPS Composition: when nothing qualifies they carry
//! `emptyReason` `unavailable` (ips-comp-1) and say so in their narrative; the other three are left
//! out when empty. Within a section entries are ordered newest first by their clinical date (when
//! it happened, else when it was recorded), then by type and id, so the same record always gives
//! the same document but for its identifier and timestamp.
//!
//! The author is a `Device`: this server, which assembled the document by rule — no person or
//! organisation wrote or checked it. For the same reason the Composition has no `attester`
//! (`legal` or `professional` attestation is a person's statement that the content is right); it
//! is signed off only in the sense FHIR documents are: `status` `final`, a fixed `date`, and an
//! identifier of its own, never changed afterwards.

use super::narrative::XHTML_NS;
use serde_json::{json, Value};

/// One section of the summary this server fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Allergies,
    Problems,
    Medications,
    Immunizations,
    Results,
    Procedures,
}

impl Section {
    /// In the order they appear in the Composition.
    pub const ALL: [Section; 6] = [
        Section::Allergies,
        Section::Problems,
        Section::Medications,
        Section::Immunizations,
        Section::Results,
        Section::Procedures,
    ];

    /// The LOINC code of the section.
    pub fn code(self) -> &'static str {
        match self {
            Section::Allergies => "48765-2",
            Section::Problems => "11450-4",
            Section::Medications => "10160-0",
            Section::Immunizations => "11369-6",
            Section::Results => "30954-2",
            Section::Procedures => "47519-4",
        }
    }

    fn display(self) -> &'static str {
        match self {
            Section::Allergies => "Allergies and adverse reactions Document",
            Section::Problems => "Problem list - Reported",
            Section::Medications => "History of Medication use Narrative",
            Section::Immunizations => "History of Immunization Narrative",
            Section::Results => "Relevant diagnostic tests/laboratory data Narrative",
            Section::Procedures => "History of Procedures Document",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::Allergies => "Allergies and Intolerances",
            Section::Problems => "Problem List",
            Section::Medications => "Medication Summary",
            Section::Immunizations => "Immunizations",
            Section::Results => "Results",
            Section::Procedures => "History of Procedures",
        }
    }

    /// Required by the IPS Composition (present, with `emptyReason` when empty).
    pub fn required(self) -> bool {
        matches!(
            self,
            Section::Allergies | Section::Problems | Section::Medications
        )
    }
}

/// The resource types a section may draw on.
pub const SOURCE_TYPES: [&str; 7] = [
    "AllergyIntolerance",
    "Condition",
    "MedicationStatement",
    "MedicationRequest",
    "Immunization",
    "Observation",
    "Procedure",
];

const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
const ALLERGY_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// The section `doc` (a resource of `resource_type`) belongs in, if any (the rules above).
pub fn section_of(resource_type: &str, doc: &Value) -> Option<Section> {
    let status = doc["status"].as_str().unwrap_or("");
    let (section, included) = match resource_type {
        "AllergyIntolerance" => (
            Section::Allergies,
            !has_coding(
                &doc["clinicalStatus"],
                ALLERGY_CLINICAL,
                &["inactive", "resolved"],
            ) && !has_coding(
                &doc["verificationStatus"],
                ALLERGY_VERIFICATION,
                &["entered-in-error"],
            ),
        ),
        "Condition" => (
            Section::Problems,
            !has_coding(
                &doc["clinicalStatus"],
                CONDITION_CLINICAL,
                &["inactive", "resolved"],
            ) && !has_coding(
                &doc["verificationStatus"],
                CONDITION_VERIFICATION,
                &["entered-in-error"],
            ),
        ),
        "MedicationStatement" => (
            Section::Medications,
            matches!(status, "active" | "intended" | "unknown" | "on-hold"),
        ),
        "MedicationRequest" => (
            Section::Medications,
            matches!(status, "active" | "unknown" | "on-hold"),
        ),
        "Immunization" => (Section::Immunizations, status != "entered-in-error"),
        "Observation" => (
            Section::Results,
            doc["category"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| has_coding(c, OBSERVATION_CATEGORY, &["laboratory"]))
            }) && !matches!(status, "cancelled" | "entered-in-error" | "preliminary"),
        ),
        "Procedure" => (
            Section::Procedures,
            !matches!(status, "entered-in-error" | "not-done"),
        ),
        _ => return None,
    };
    included.then_some(section)
}

/// `Medication/<id>` that a medication entry refers to (relative references only: absolute ones
/// name other servers, or this one by a URL the store does not follow).
pub fn medication_of(doc: &Value) -> Option<&str> {
    doc["medicationReference"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Medication/"))
        .filter(|id| !id.contains('/'))
}

fn has_coding(concept: &Value, system: &str, codes: &[&str]) -> bool {
    concept["coding"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["system"].as_str() == Some(system)
                && c["code"].as_str().is_some_and(|code| codes.contains(&code))
        })
    })
}

/// A resource going into the document, as the caller may receive it.
pub struct Resource {
    pub resource_type: String,
    pub id: String,
    pub body: Value,
}

/// What a document is made of.
pub struct Contents {
    pub patient: Resource,
    /// The section entries, each with the section [`section_of`] gave it (decided on the stored
    /// body, before any de-identification).
    pub entries: Vec<(Section, Resource)>,
    /// Resources the entries refer to that go in no section (Medications).
    pub referenced: Vec<Resource>,
}

/// The `fullUrl` of the Device entry that authors every summary: this server, so always the same.
const AUTHOR_URL: &str = "urn:uuid:5d0b1f3e-6a7c-4c2e-9f8e-3a1d2b4c5e6f";

/// The IPS document Bundle: Composition first, then the Patient, the section entries (section by
/// section, each newest first), the referenced resources (by id), and the author. `base` is this server's FHIR base (entries'
/// `fullUrl`s), `identifier` a fresh UUID (the Bundle's identifier and the Composition's id),
/// `timestamp` the instant it was made.
pub fn document(contents: Contents, base: &str, identifier: &str, timestamp: &str) -> Value {
    let Contents {
        patient,
        mut entries,
        mut referenced,
    } = contents;
    entries.sort_by(|(sa, a), (sb, b)| {
        sa.cmp(sb)
            .then_with(|| sort_date(b).cmp(&sort_date(a)))
            .then_with(|| a.resource_type.cmp(&b.resource_type))
            .then_with(|| a.id.cmp(&b.id))
    });
    referenced.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
    let medications: Vec<(&str, &Value)> = referenced
        .iter()
        .filter(|r| r.resource_type == "Medication")
        .map(|r| (r.id.as_str(), &r.body))
        .collect();
    let mut sections = Vec::new();
    for section in Section::ALL {
        let members: Vec<&Resource> = entries
            .iter()
            .filter(|(s, _)| *s == section)
            .map(|(_, r)| r)
            .collect();
        if members.is_empty() && !section.required() {
            continue;
        }
        let mut s = json!({
            "title": section.title(),
            "code": {"coding": [{"system": "http://loinc.org", "code": section.code(),
                "display": section.display()}]},
            "text": {"status": "generated", "div": section_narrative(section, &members, &medications)},
        });
        if members.is_empty() {
            s["emptyReason"] = json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                "code": "unavailable", "display": "Unavailable"}]});
        } else {
            s["entry"] = members
                .iter()
                .map(|r| json!({"reference": format!("{}/{}", r.resource_type, r.id)}))
                .collect();
        }
        sections.push(s);
    }
    let name = patient_name(&patient.body);
    let confidentiality = confidentiality(
        std::iter::once(&patient)
            .chain(entries.iter().map(|(_, r)| r))
            .chain(&referenced)
            .map(|r| &r.body),
    );
    let composition = json!({
        "resourceType": "Composition",
        "id": identifier,
        "text": {"status": "generated", "div": format!(
            "<div xmlns=\"{XHTML_NS}\"><p>International Patient Summary of {}, assembled by this \
             server from the stored record.</p></div>",
            escape(&name))},
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "60591-5",
            "display": "Patient summary Document"}]},
        "subject": {"reference": format!("Patient/{}", patient.id)},
        "date": timestamp,
        "author": [{"reference": AUTHOR_URL}],
        "title": format!("International Patient Summary of {name}"),
        "confidentiality": confidentiality,
        "section": sections,
    });
    let author = json!({
        "resourceType": "Device",
        "text": {"status": "generated", "div": format!(
            "<div xmlns=\"{XHTML_NS}\"><p>Carapace FHIR server {}</p></div>",
            env!("CARGO_PKG_VERSION"))},
        "deviceName": [{"name": "Carapace FHIR server", "type": "user-friendly-name"}],
        "version": [{"value": env!("CARGO_PKG_VERSION")}],
    });
    let full_url = |r: &Resource| format!("{base}/{}/{}", r.resource_type, r.id);
    let mut entry = vec![
        json!({"fullUrl": format!("urn:uuid:{identifier}"), "resource": composition}),
        json!({"fullUrl": full_url(&patient), "resource": patient.body}),
    ];
    for r in entries.iter().map(|(_, r)| r).chain(&referenced) {
        entry.push(json!({"fullUrl": full_url(r), "resource": r.body}));
    }
    entry.push(json!({"fullUrl": AUTHOR_URL, "resource": author}));
    json!({
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{identifier}")},
        "type": "document",
        "timestamp": timestamp,
        "entry": entry,
    })
}

/// The date an entry is ordered by: when it happened (or was recorded), else empty.
fn clinical_date(r: &Resource) -> String {
    let b = &r.body;
    let candidates: &[&Value] = &[
        &b["onsetDateTime"],
        &b["onsetPeriod"]["start"],
        &b["effectiveDateTime"],
        &b["effectivePeriod"]["start"],
        &b["occurrenceDateTime"],
        &b["performedDateTime"],
        &b["performedPeriod"]["start"],
        &b["authoredOn"],
        &b["dateAsserted"],
        &b["recordedDate"],
        &b["issued"],
    ];
    candidates
        .iter()
        .find_map(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

/// [`clinical_date`] as a key that orders in time: a dateTime with a zone in UTC, a date (or a
/// partial one) as written.
fn sort_date(r: &Resource) -> String {
    let date = clinical_date(r);
    match chrono::DateTime::parse_from_rfc3339(&date) {
        Ok(t) => t
            .to_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        Err(_) => date,
    }
}

/// The highest confidentiality (v3 Confidentiality, `U` < `L` < `M` < `N` < `R` < `V`) any
/// included resource is labelled with; `N` when none says.
fn confidentiality<'a>(bodies: impl Iterator<Item = &'a Value>) -> &'static str {
    const ORDER: [&str; 6] = ["U", "L", "M", "N", "R", "V"];
    let mut highest = 3;
    for body in bodies {
        for label in body["meta"]["security"].as_array().into_iter().flatten() {
            if label["system"].as_str()
                == Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality")
            {
                if let Some(i) = ORDER.iter().position(|c| label["code"].as_str() == Some(c)) {
                    highest = highest.max(i);
                }
            }
        }
    }
    ORDER[highest]
}

fn patient_name(patient: &Value) -> String {
    let Some(name) = patient["name"].as_array().and_then(|n| n.first()) else {
        return "the patient".into();
    };
    if let Some(text) = name["text"].as_str() {
        return text.to_string();
    }
    let mut parts: Vec<&str> = name["given"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    parts.extend(name["family"].as_str());
    if parts.is_empty() {
        "the patient".into()
    } else {
        parts.join(" ")
    }
}

/// A CodeableConcept as a person reads it: its text, else its first coding's display or code.
fn concept_text(concept: &Value) -> String {
    if let Some(text) = concept["text"].as_str() {
        return text.to_string();
    }
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c["display"].as_str().or_else(|| c["code"].as_str()))
        .unwrap_or("")
        .to_string()
}

/// What an entry is: its code (for a medication, the medication's code, from the entry or from
/// the Medication it refers to).
fn what(r: &Resource, medications: &[(&str, &Value)]) -> String {
    let b = &r.body;
    match r.resource_type.as_str() {
        "Immunization" => concept_text(&b["vaccineCode"]),
        "MedicationStatement" | "MedicationRequest" => {
            if b["medicationCodeableConcept"].is_object() {
                concept_text(&b["medicationCodeableConcept"])
            } else {
                medication_of(b)
                    .and_then(|id| medications.iter().find(|(m, _)| *m == id))
                    .map(|(_, m)| concept_text(&m["code"]))
                    .unwrap_or_default()
            }
        }
        _ => concept_text(&b["code"]),
    }
}

fn status(r: &Resource) -> String {
    let b = &r.body;
    match b["status"].as_str() {
        Some(s) => s.to_string(),
        None => concept_text(&b["clinicalStatus"]),
    }
}

/// An Observation's value as text.
fn value(b: &Value) -> String {
    if let Some(q) = b["valueQuantity"].as_object() {
        let number = q.get("value").map(Value::to_string).unwrap_or_default();
        let unit = q
            .get("unit")
            .or_else(|| q.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("");
        return format!("{number} {unit}").trim().to_string();
    }
    if b["valueCodeableConcept"].is_object() {
        return concept_text(&b["valueCodeableConcept"]);
    }
    for k in [
        "valueString",
        "valueBoolean",
        "valueInteger",
        "valueDateTime",
    ] {
        if let Some(v) = b.get(k) {
            return v.as_str().map_or_else(|| v.to_string(), str::to_string);
        }
    }
    if let Some(components) = b["component"].as_array() {
        return components
            .iter()
            .map(|c| format!("{}: {}", concept_text(&c["code"]), value(c)))
            .collect::<Vec<_>>()
            .join("; ");
    }
    String::new()
}

/// The section's narrative: a table of its entries, or a sentence saying there is none.
fn section_narrative(
    section: Section,
    members: &[&Resource],
    medications: &[(&str, &Value)],
) -> String {
    if members.is_empty() {
        return format!(
            "<div xmlns=\"{XHTML_NS}\"><p>No information is available for this section.</p></div>"
        );
    }
    let results = section == Section::Results;
    let mut html = format!("<div xmlns=\"{XHTML_NS}\"><table><thead><tr><th>Item</th>");
    if results {
        html.push_str("<th>Value</th>");
    }
    html.push_str("<th>Status</th><th>Date</th></tr></thead><tbody>");
    for r in members {
        html.push_str("<tr><td>");
        html.push_str(&escape(&what(r, medications)));
        html.push_str("</td>");
        if results {
            html.push_str("<td>");
            html.push_str(&escape(&value(&r.body)));
            html.push_str("</td>");
        }
        html.push_str("<td>");
        html.push_str(&escape(&status(r)));
        html.push_str("</td><td>");
        html.push_str(&escape(&clinical_date(r)));
        html.push_str("</td></tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

/// Text as XHTML character data.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(t: &str, id: &str, body: Value) -> Resource {
        Resource {
            resource_type: t.into(),
            id: id.into(),
            body,
        }
    }

    #[test]
    fn sections_follow_the_status_rules() {
        let allergy = |clinical: &str| json!({"clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": clinical}]}});
        assert_eq!(
            section_of("AllergyIntolerance", &allergy("active")),
            Some(Section::Allergies)
        );
        assert_eq!(section_of("AllergyIntolerance", &allergy("resolved")), None);
        let refuted = json!({"verificationStatus": {"coding": [
            {"system": CONDITION_VERIFICATION, "code": "entered-in-error"}]}});
        assert_eq!(section_of("Condition", &refuted), None);
        assert_eq!(section_of("Condition", &json!({})), Some(Section::Problems));
        assert_eq!(
            section_of("MedicationRequest", &json!({"status": "stopped"})),
            None
        );
        let lab = |status: &str| {
            json!({"status": status, "category": [{"coding": [
                {"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}]})
        };
        assert_eq!(
            section_of("Observation", &lab("final")),
            Some(Section::Results)
        );
        assert_eq!(section_of("Observation", &lab("preliminary")), None);
        assert_eq!(section_of("Observation", &json!({"status": "final"})), None);
        assert_eq!(
            section_of("Procedure", &json!({"status": "not-done"})),
            None
        );
        assert_eq!(section_of("Encounter", &json!({})), None);
    }

    #[test]
    fn a_document_is_ordered_and_its_narratives_pass_the_allow_list() {
        let patient = resource(
            "Patient",
            "p",
            json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["A<b>"], "family": "C&D"}]}),
        );
        let imm = |id: &str, date: &str| {
            resource(
                "Immunization",
                id,
                json!({"resourceType": "Immunization", "id": id, "status": "completed",
                    "vaccineCode": {"text": "<script>x</script>"}, "occurrenceDateTime": date}),
            )
        };
        let doc = document(
            Contents {
                patient,
                entries: vec![
                    (Section::Immunizations, imm("i1", "2020-01-01")),
                    (Section::Immunizations, imm("i2", "2021-01-01")),
                ],
                referenced: vec![],
            },
            "https://x/fhir",
            "u",
            "2026-01-01T00:00:00Z",
        );
        let sections = doc["entry"][0]["resource"]["section"].as_array().unwrap();
        let codes: Vec<&str> = sections
            .iter()
            .map(|s| s["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["48765-2", "11450-4", "10160-0", "11369-6"]);
        assert_eq!(
            sections[0]["emptyReason"]["coding"][0]["code"],
            "unavailable"
        );
        assert_eq!(sections[3]["entry"][0]["reference"], "Immunization/i2");
        assert_eq!(doc["entry"][2]["fullUrl"], "https://x/fhir/Immunization/i2");
        for s in sections {
            crate::fhir::narrative::check(s["text"]["div"].as_str().unwrap()).unwrap();
        }
        crate::fhir::narrative::check(doc["entry"][0]["resource"]["text"]["div"].as_str().unwrap())
            .unwrap();
    }

    #[test]
    fn entries_are_ordered_in_time_whatever_their_zone() {
        let obs = |id: &str, when: &str| {
            (
                Section::Results,
                resource(
                    "Observation",
                    id,
                    json!({"resourceType": "Observation", "id": id, "effectiveDateTime": when}),
                ),
            )
        };
        let doc = document(
            Contents {
                patient: resource(
                    "Patient",
                    "p",
                    json!({"resourceType": "Patient", "id": "p"}),
                ),
                // 22:30 UTC, then 23:00 UTC: the later one first.
                entries: vec![
                    obs("early", "2021-01-01T00:30:00+02:00"),
                    obs("late", "2020-12-31T23:00:00Z"),
                ],
                referenced: vec![],
            },
            "b",
            "u",
            "t",
        );
        let results = &doc["entry"][0]["resource"]["section"][3]["entry"];
        assert_eq!(results[0]["reference"], "Observation/late");
        assert_eq!(results[1]["reference"], "Observation/early");
    }
}
