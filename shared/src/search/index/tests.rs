//! The index rows a resource contributes: what each class of parameter writes, and that the key
//! scope, the policy and the index agree on a resource's compartments.

use super::*;
use serde_json::json;

fn keys() -> IndexKeys {
    IndexKeys::new(std::array::from_fn(|i| {
        Dek::from_bytes(&[i as u8 + 1; 32]).unwrap()
    }))
}

/// Issue 13's property: for any resource, the compartments its key scope, its index rows and
/// the policy see are the same set, and validation accepts exactly the references the one
/// grammar reads. Resources are generated (a fixed seed, so a failure replays) with references
/// of every form — relative, versioned, absolute, planted (`Patient/B/_history/1/Patient/A`),
/// contained, urn, conditional, malformed — at compartment paths and elsewhere.
#[test]
fn key_scope_index_and_policy_see_the_same_compartments() {
    use crate::fhir::reference::{access_compartments, Reference};
    use crate::fhir::ResourceType;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let keys = keys();
    let reference = |rng: &mut rand::rngs::StdRng| -> String {
        let p = ["A", "B", "c-3", "d.4"][rng.gen_range(0..4)];
        let q = ["A", "B", "c-3"][rng.gen_range(0..3)];
        match rng.gen_range(0..12) {
            0 => format!("Patient/{p}"),
            1 => format!("Patient/{p}/_history/{}", rng.gen_range(1..9)),
            2 => format!("https://ehr.example/fhir/Patient/{p}"),
            3 => format!("Patient/{q}/_history/1/Patient/{p}"),
            4 => format!("https://x.example/Patient/{q}/_history/1/Patient/{p}"),
            5 => format!("Group/{p}"),
            6 => "#c1".to_string(),
            7 => "urn:uuid:6f1a9d3e-0b7c-4e7a-9d2f-1a2b3c4d5e6f".to_string(),
            8 => format!("Patient?identifier=urn:mrn|{p}"),
            9 => format!("patient/{p}"),
            10 => format!("Patient/{p} "),
            _ => format!("Practitioner/{p}"),
        }
    };
    let refs = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<Value> {
        (0..n)
            .map(|_| json!({"reference": reference(rng)}))
            .collect()
    };
    for round in 0..2000 {
        let one = refs(&mut rng, 1).remove(0);
        let n = rng.gen_range(1..4);
        let many = refs(&mut rng, n);
        let n = rng.gen_range(0..3);
        let some = refs(&mut rng, n);
        let focus = refs(&mut rng, 1);
        let (rt, resource) = match round % 4 {
            0 => (
                "Observation",
                json!({"resourceType": "Observation", "id": "o",
                    "subject": one, "performer": some, "focus": focus}),
            ),
            1 => {
                let members: Vec<Value> = many.into_iter().map(|r| json!({"entity": r})).collect();
                (
                    "Group",
                    json!({"resourceType": "Group", "id": "g", "member": members}),
                )
            }
            2 => {
                let actors: Vec<Value> = many.into_iter().map(|r| json!({"actor": r})).collect();
                (
                    "Appointment",
                    json!({"resourceType": "Appointment", "id": "ap", "participant": actors}),
                )
            }
            _ => (
                "Encounter",
                json!({"resourceType": "Encounter", "id": "e", "subject": one}),
            ),
        };
        let t = ResourceType::parse(rt).unwrap();
        let id = resource["id"].as_str().unwrap();
        let policy: Vec<String> = access_compartments(t, id, &resource);
        // The key scope is the first of them (or the type's own scope).
        let scope = crate::fhir::reference::key_scope(t, id, &resource);
        match policy.first() {
            Some(first) => assert_eq!(&scope, first, "{resource}"),
            None => assert_eq!(scope, format!("type/{rt}"), "{resource}"),
        }
        // The index holds every other one, so SQL decides on the same set.
        let rows = index_resource(&keys, rt, &resource);
        let mut indexed: Vec<String> = rows
            .refs
            .iter()
            .filter(|(code, _, _)| *code == "_compartment")
            .map(|(_, t, id)| format!("{t}/{id}"))
            .collect();
        if scope.starts_with("Patient/") {
            indexed.insert(0, scope.clone());
        }
        let mut want = policy.clone();
        want.sort();
        indexed.sort();
        assert_eq!(indexed, want, "{resource}");
        // Every patient the index names through a reference is one the grammar reads there.
        for (_, target_type, target_id) in &rows.refs {
            if target_type == "Patient" {
                assert!(
                    !target_id.contains('/') && !target_id.contains(' '),
                    "{resource}: indexed {target_id}"
                );
            }
        }
        // Validation refuses exactly the references the grammar does not read.
        let bad_refs = {
            let mut n = 0;
            let mut stack = vec![&resource];
            while let Some(v) = stack.pop() {
                match v {
                    Value::Object(m) => {
                        if let Some(Value::String(r)) = m.get("reference") {
                            n += usize::from(Reference::parse(r).is_err());
                        }
                        stack.extend(m.values());
                    }
                    Value::Array(items) => stack.extend(items.iter()),
                    _ => {}
                }
            }
            n
        };
        let issues = crate::fhir::validate::validate_resource(&resource)
            .err()
            .unwrap_or_default();
        let ref_issues = issues
            .iter()
            .filter(|i| i.path.ends_with(".reference"))
            .count();
        assert_eq!(ref_issues, bad_refs, "{resource}: {issues:?}");
    }
}

#[test]
fn strings_are_folded_for_search() {
    assert_eq!(normalise("  Ünal  de   la Peña "), "unal de la pena");
    let p: Vec<_> = prefixes("pe").collect();
    assert_eq!(p, vec!["p", "pe"]);
    assert_eq!(prefixes(&"x".repeat(50)).count(), MAX_PREFIX);
}

#[test]
fn dates_have_precision_ranges() {
    let (lo, hi) = date_range("2024-02").unwrap();
    assert_eq!(hi - lo, 29 * 86_400_000);
    let (lo, hi) = date_range("2024-02-01T10:00:00+01:00").unwrap();
    assert_eq!((lo % 86_400_000, hi - lo), (9 * 3_600_000, 1000));
    assert!(date_range("2024-13").is_none() && date_range("soon").is_none());
}

#[test]
fn a_patient_is_indexed_without_cleartext() {
    let k = keys();
    let patient = json!({"resourceType": "Patient", "id": "p1",
        "name": [{"family": "Peña", "given": ["Ana"]}],
        "identifier": [{"system": "urn:mrn", "value": "12345"}],
        "birthDate": "1970-05-06",
        "managingOrganization": {"reference": "Organization/o1"}});
    let rows = index_resource(&k, "Patient", &patient);
    // The resource holds the whole folded name; the dictionary leads each prefix to it.
    let family = k.blind(Class::String, "family", "p", "pena");
    assert!(rows.hashes.contains(&("family", family.clone())));
    let pen = k.blind(Class::String, "family", "p", "pen");
    assert!(!rows.hashes.iter().any(|(_, h)| *h == pen));
    assert!(rows.prefixes.contains(&(pen, family.clone())));
    assert!(rows.prefixes.contains(&(family.clone(), family)));
    let mrn = k.blind(Class::Token, "identifier", "sc", "urn:mrn|12345");
    assert!(rows.hashes.contains(&("identifier", mrn)));
    assert!(rows
        .refs
        .contains(&("organization", "Organization".into(), "o1".into())));
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient?identifier=urn:mrn|12345"},
        "performer": [{"reference": "http://other.example/fhir/Practitioner/9"}]});
    let obs_rows = index_resource(&k, "Observation", &obs);
    assert!(
        !format!("{obs_rows:?}").contains("12345"),
        "a conditional reference is not indexed in the clear"
    );
    assert!(obs_rows
        .refs
        .contains(&("performer", "Practitioner".into(), "9".into())));
    let birth = rows.ranges.iter().find(|r| r.param == "birthdate").unwrap();
    let (lo, _) = date_range("1970-05-06").unwrap();
    assert_ne!(birth.lo, lo as f64, "dates are shifted");
    assert_eq!(birth.hi - birth.lo, 86_400_000.0 - 1.0);
    let dump = format!("{rows:?}");
    for secret in ["Pe", "12345", "1970"] {
        assert!(!dump.contains(secret), "{secret} in the index rows");
    }
}
