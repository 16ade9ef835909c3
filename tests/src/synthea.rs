//! Synthea-shaped data: the real Synthea export (`*.json.bz2` transaction and batch bundles, read
//! with `bzcat`) when a directory is given, or a generated set of the same shape — shared
//! organizations, locations and practitioners loaded as batches with `ifNoneExist`, then one
//! transaction per patient whose entries point at each other by `urn:uuid` and at the shared
//! resources by conditional references (`Practitioner?identifier=...`).

use serde_json::{json, Value};
use std::path::Path;

/// A bundle to load, in order: shared batches first, then patient transactions.
pub struct NamedBundle {
    pub name: String,
    pub bundle: Value,
}

const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// Bundles from a Synthea export directory: `0-hospital*` and `0-practitioner*` batches first.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<NamedBundle>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") || n.ends_with(".json.bz2"))
        .collect();
    // hospitals, then practitioners, then patients
    names.sort_by_key(|n| {
        (
            !n.starts_with("0-hospital"),
            !n.starts_with("0-"),
            n.clone(),
        )
    });
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let bytes = if name.ends_with(".bz2") {
            let o = std::process::Command::new("bzcat").arg(&path).output()?;
            anyhow::ensure!(o.status.success(), "bzcat {name} failed");
            o.stdout
        } else {
            std::fs::read(&path)?
        };
        out.push(NamedBundle {
            name,
            bundle: serde_json::from_slice(&bytes)?,
        });
    }
    Ok(out)
}

/// A small deterministic pseudo-random sequence (no dependency, same data every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

const FAMILIES: [&str; 8] = [
    "Okafor",
    "Lindqvist",
    "García",
    "Nguyen",
    "Schäfer",
    "O'Brien",
    "Kowalski",
    "Haddad",
];
const GIVEN: [&str; 8] = [
    "Amara",
    "Björn",
    "José",
    "Linh",
    "Jürgen",
    "Siobhan",
    "Agnieszka",
    "Omar",
];
/// LOINC codes with a unit, as Synthea's vital signs and labs.
const OBSERVATIONS: [(&str, &str, &str, f64); 6] = [
    ("8302-2", "Body Height", "cm", 170.0),
    ("29463-7", "Body Weight", "kg", 70.0),
    ("8867-4", "Heart rate", "/min", 70.0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 120.0),
    ("2339-0", "Glucose", "mg/dL", 90.0),
    ("39156-5", "Body mass index", "kg/m2", 24.0),
];
const CONDITIONS: [(&str, &str); 4] = [
    ("44054006", "Diabetes"),
    ("38341003", "Hypertension"),
    ("195662009", "Acute viral pharyngitis"),
    ("10509002", "Acute bronchitis"),
];

/// `patients` patient transactions of about `per_patient` entries, after the shared batches.
pub fn generate(patients: usize, per_patient: usize) -> Vec<NamedBundle> {
    let mut rng = Lcg(42);
    let orgs = 5;
    let practitioners = 10;
    let mut hospital = Vec::new();
    for i in 0..orgs {
        for (t, extra) in [
            (
                "Organization",
                json!({"name": format!("Clinic {i}"), "active": true}),
            ),
            (
                "Location",
                json!({"name": format!("Clinic {i} main site"), "status": "active"}),
            ),
        ] {
            let mut r = json!({"resourceType": t,
                               "identifier": [{"system": SYNTHEA, "value": format!("{t}-{i}")}]});
            merge(&mut r, extra);
            hospital.push(
                json!({"resource": r, "request": {"method": "POST", "url": t,
                "ifNoneExist": format!("identifier={SYNTHEA}|{t}-{i}")}}),
            );
        }
    }
    let mut staff = Vec::new();
    for i in 0..practitioners {
        let npi = format!("99999{i:05}");
        staff.push(json!({"resource": {"resourceType": "Practitioner", "active": true,
            "identifier": [{"system": NPI, "value": npi}],
            "name": [{"family": FAMILIES[i % 8], "given": [GIVEN[(i + 3) % 8]], "prefix": ["Dr."]}]},
            "request": {"method": "POST", "url": "Practitioner",
                        "ifNoneExist": format!("identifier={NPI}|{npi}")}}));
    }
    let batch =
        |entry: Vec<Value>| json!({"resourceType": "Bundle", "type": "batch", "entry": entry});
    let mut out = vec![
        NamedBundle {
            name: "0-hospitalInformation.json".into(),
            bundle: batch(hospital),
        },
        NamedBundle {
            name: "0-practitionerInformation.json".into(),
            bundle: batch(staff),
        },
    ];
    for p in 0..patients {
        let patient_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let family = FAMILIES[rng.next(8)];
        let given = GIVEN[rng.next(8)];
        let mut entry = vec![json!({"fullUrl": patient_url, "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": SYNTHEA, "value": format!("patient-{p}")},
                           {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                            "system": "http://hospital.smarthealthit.org", "value": format!("MRN-{p:06}")}],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": if p % 2 == 0 { "female" } else { "male" },
            "birthDate": format!("{}-{:02}-{:02}", 1940 + rng.next(70), 1 + rng.next(12), 1 + rng.next(28)),
            "address": [{"line": [format!("{} Main Street", 1 + rng.next(900))], "city": "Springfield",
                         "state": "MA", "postalCode": format!("01{:03}", rng.next(1000))}],
            "telecom": [{"system": "phone", "value": format!("555-{:04}", rng.next(10000))}]},
            "request": {"method": "POST", "url": "Patient"}})];
        let subject = json!({"reference": patient_url});
        while entry.len() < per_patient {
            let encounter_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            let org = rng.next(orgs);
            let day = format!(
                "20{:02}-{:02}-{:02}",
                10 + rng.next(14),
                1 + rng.next(12),
                1 + rng.next(28)
            );
            entry.push(json!({"fullUrl": encounter_url, "resource": {
                "resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003",
                                      "display": "Encounter for check up"}]}],
                "subject": subject,
                "participant": [{"individual": {"reference":
                    format!("Practitioner?identifier={NPI}|99999{:05}", rng.next(practitioners))}}],
                "period": {"start": format!("{day}T09:00:00Z"), "end": format!("{day}T09:30:00Z")},
                "location": [{"location": {"reference":
                    format!("Location?identifier={SYNTHEA}|Location-{org}")}}],
                "serviceProvider": {"reference": format!("Organization?identifier={SYNTHEA}|Organization-{org}")}},
                "request": {"method": "POST", "url": "Encounter"}}));
            let context = json!({"reference": encounter_url});
            for (code, display, unit, base) in OBSERVATIONS {
                let value = base * (0.8 + rng.next(400) as f64 / 1000.0);
                entry.push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": {
                    "resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
                    "subject": subject, "encounter": context,
                    "effectiveDateTime": format!("{day}T09:10:00Z"), "issued": format!("{day}T09:10:00.000Z"),
                    "valueQuantity": {"value": (value * 10.0).round() / 10.0, "unit": unit,
                                      "system": "http://unitsofmeasure.org", "code": unit}},
                    "request": {"method": "POST", "url": "Observation"}}));
            }
            if rng.next(3) == 0 {
                let (code, display) = CONDITIONS[rng.next(CONDITIONS.len())];
                entry.push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": {
                    "resourceType": "Condition",
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}], "text": display},
                    "subject": subject, "encounter": context, "onsetDateTime": format!("{day}T09:20:00Z")},
                    "request": {"method": "POST", "url": "Condition"}}));
            }
        }
        out.push(NamedBundle {
            name: format!("patient-{p}.json"),
            bundle: json!({"resourceType": "Bundle", "type": "transaction", "entry": entry}),
        });
    }
    out
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        t.extend(e);
    }
}

/// What a load did.
pub struct LoadReport {
    pub bundles: usize,
    pub accepted: usize,
    pub resources: usize,
    pub seconds: f64,
    /// (bundle, status, first lines of the answer) of every bundle not wholly accepted.
    pub failures: Vec<(String, u16, String)>,
    /// The ids of the patients created.
    pub patients: Vec<String>,
}

/// POST every bundle to `base`: the shared batches one by one, then the patient transactions with
/// `concurrency` clients. A bundle is accepted when it answers 200 and every entry answers 2xx.
pub async fn load(
    base: &str,
    bearer: &str,
    bundles: Vec<NamedBundle>,
    concurrency: usize,
) -> LoadReport {
    use std::sync::{Arc, Mutex};
    let total = bundles.len();
    let (shared, patients): (Vec<NamedBundle>, Vec<NamedBundle>) = bundles
        .into_iter()
        .partition(|b| b.bundle["type"] == "batch");
    let started = std::time::Instant::now();
    let mut report = LoadReport {
        bundles: total,
        accepted: 0,
        resources: 0,
        seconds: 0.0,
        failures: vec![],
        patients: vec![],
    };
    let (base, bearer) = (base.to_string(), bearer.to_string());
    for b in shared {
        match post_bundle(base.clone(), bearer.clone(), b).await {
            Ok((n, _)) => {
                report.accepted += 1;
                report.resources += n;
            }
            Err(f) => report.failures.push(f),
        }
    }
    let queue = Arc::new(Mutex::new(patients));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let (base, bearer) = (base.clone(), bearer.clone());
        workers.push(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(b) = next else { break };
                done.push(post_bundle(base.clone(), bearer.clone(), b).await);
            }
            done
        });
    }
    for results in futures_join(workers).await {
        for r in results {
            match r {
                Ok((n, patient)) => {
                    report.accepted += 1;
                    report.resources += n;
                    report.patients.extend(patient);
                }
                Err(f) => report.failures.push(f),
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

type Posted = Result<(usize, Option<String>), (String, u16, String)>;

/// POST one bundle: the number of entries and the patient it created, or why it was not accepted.
async fn post_bundle(base: String, bearer: String, b: NamedBundle) -> Posted {
    let entries = b.bundle["entry"].as_array().map_or(0, Vec::len);
    let headers = [
        ("Content-Type", crate::FHIR_JSON),
        ("Authorization", bearer.as_str()),
    ];
    let body = b.bundle.to_string().into_bytes();
    match crate::http("POST", &format!("{base}/"), &headers, Some(body)).await {
        Ok(r) if r.status == 200 => {
            let out = r.json();
            let statuses: Vec<&str> = out["entry"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .map(|e| e["response"]["status"].as_str().unwrap_or(""))
                        .collect()
                })
                .unwrap_or_default();
            let patient = out["entry"].as_array().and_then(|e| {
                e.iter().find_map(|e| {
                    let loc = e["response"]["location"].as_str()?;
                    let (_, rest) = loc.split_once("/Patient/")?;
                    Some(rest.split('/').next()?.to_string())
                })
            });
            if statuses.len() == entries && statuses.iter().all(|s| s.starts_with('2')) {
                Ok((entries, patient))
            } else {
                let bad = statuses.iter().find(|s| !s.starts_with('2')).unwrap_or(&"");
                Err((b.name, 200, format!("an entry answered {bad}")))
            }
        }
        Ok(r) => Err((b.name, r.status, r.text().chars().take(300).collect())),
        Err(e) => Err((b.name, 0, e.to_string())),
    }
}

/// Run futures concurrently on the current task's runtime and collect their outputs.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
