//! What the screens show, as plain rows made from the core's answers (no drawing, no I/O here),
//! and the FHIR Consent the consent screen writes.

use serde_json::{json, Value};

/// One AuditEvent as the audit screen lists it, and the event itself for the detail pane.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub recorded: String,
    pub agent: String,
    pub action: String,
    pub outcome: String,
    pub subtype: String,
    pub patient: String,
    /// What was acted on (a resource, or `urn:carapace:admin:...` for administration).
    pub what: String,
    pub event: Value,
}

impl AuditRow {
    pub fn from_event(id: i64, event: Value) -> AuditRow {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let entity = |patient: bool| {
            crate::export::entity_references(&event, patient)
                .next()
                .unwrap_or_default()
                .trim_start_matches("urn:carapace:admin:")
                .to_string()
        };
        AuditRow {
            id,
            recorded: text(&event["recorded"])
                .replace('T', " ")
                .chars()
                .take(19)
                .collect(),
            agent: text(&event["agent"][0]["who"]["display"]),
            action: text(&event["action"]),
            outcome: text(&event["outcome"]),
            subtype: text(&event["subtype"][0]["code"]),
            patient: entity(true),
            what: entity(false),
            event,
        }
    }
}

/// One user as the Users screen lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub role: String,
    pub linked: String,
    pub locked: bool,
    pub mfa: bool,
    pub sessions: usize,
}

/// A patient found on the consent screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRow {
    pub id: String,
    pub name: String,
    pub birth: String,
    pub identifier: String,
}

impl PatientRow {
    pub fn from_resource(id: &str, p: &Value) -> PatientRow {
        let name = p["name"]
            .as_array()
            .and_then(|n| n.first())
            .map(|n| {
                let given: Vec<&str> = n["given"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!(
                    "{} {}",
                    given.join(" "),
                    n["family"].as_str().unwrap_or_default()
                )
                .trim()
                .to_string()
            })
            .unwrap_or_default();
        PatientRow {
            id: id.to_string(),
            name,
            birth: p["birthDate"].as_str().unwrap_or_default().to_string(),
            identifier: p["identifier"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// A Consent as the consent screen tabulates it: who, permit/deny, what, period, purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRow {
    pub id: String,
    pub status: String,
    pub effect: String,
    pub who: String,
    pub what: String,
    pub period: String,
    pub purpose: String,
}

impl ConsentRow {
    pub fn from_resource(id: &str, c: &Value) -> ConsentRow {
        let p = &c["provision"];
        let list = |v: &Value, f: &dyn Fn(&Value) -> Option<String>| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(f)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let who = list(&p["actor"], &|a| {
            a["reference"]["reference"].as_str().map(str::to_string)
        });
        let what = list(&p["class"], &|c| c["code"].as_str().map(str::to_string));
        let purpose = list(&p["purpose"], &|c| c["code"].as_str().map(str::to_string));
        let exceptions = p["provision"].as_array().map_or(0, Vec::len);
        let period = match (p["period"]["start"].as_str(), p["period"]["end"].as_str()) {
            (None, None) => "always".to_string(),
            (s, e) => format!("{} → {}", s.unwrap_or("…"), e.unwrap_or("…")),
        };
        ConsentRow {
            id: id.to_string(),
            status: c["status"].as_str().unwrap_or_default().to_string(),
            effect: p["type"].as_str().unwrap_or("deny").to_string()
                + &if exceptions > 0 {
                    format!(" +{exceptions}")
                } else {
                    String::new()
                },
            who: if who.is_empty() { "anyone".into() } else { who },
            what: if what.is_empty() {
                "all records".into()
            } else {
                what
            },
            period,
            purpose: if purpose.is_empty() {
                "any".into()
            } else {
                purpose
            },
        }
    }
}

/// The Consent the console writes to grant `actor` (`Practitioner/..`, `Organization/..`, ...)
/// access to `patient`'s record: a `patient-privacy` permit, for some resource types or all, until
/// `end` or without end.
pub fn grant_consent(
    patient: &str,
    actor: &str,
    classes: &[String],
    end: Option<&str>,
    today: &str,
) -> Value {
    let mut provision = json!({
        "type": "permit",
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
            "reference": {"reference": actor}
        }],
        "period": {"start": today},
    });
    if let Some(end) = end {
        provision["period"]["end"] = json!(end);
    }
    if !classes.is_empty() {
        provision["class"] = classes
            .iter()
            .map(|c| json!({"system": "http://hl7.org/fhir/resource-types", "code": c}))
            .collect();
    }
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": today,
        // ppc-1: a Consent names its policy; this one is an opt-in to sharing.
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_consent_reads_back_as_its_row() {
        let c = grant_consent(
            "p1",
            "Practitioner/dr",
            &["Observation".into()],
            Some("2027-01-01"),
            "2026-11-23",
        );
        let row = ConsentRow::from_resource("c1", &c);
        assert_eq!(row.effect, "permit");
        assert_eq!(row.who, "Practitioner/dr");
        assert_eq!(row.what, "Observation");
        assert_eq!(row.period, "2026-11-23 → 2027-01-01");
        assert_eq!(row.status, "active");
    }
}
