//! The policy as a table: role × scope × consent × label × interaction → decision.

use super::*;
use crate::access::Scope;
use chrono::TimeZone;
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn ctx(role: Role, scopes: &str, patient: Option<&str>) -> AccessContext {
    AccessContext {
        principal: "u".into(),
        role,
        scopes: scopes
            .split_whitespace()
            .map(|s| Scope::parse(s).unwrap())
            .collect(),
        patient: patient.map(str::to_string),
        purpose_of_use: None,
        address: None,
        btg_reason: None,
        client: None,
        plan: Default::default(),
    }
}

fn consent(provision: Value) -> Value {
    json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "provision": provision
    })
}

fn actor(r: &str) -> Value {
    json!([{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": r}}])
}

/// Named consents of patient p1 used by the table.
fn consents(name: &str) -> Vec<ConsentRule> {
    let doc = match name {
        "none" => return vec![],
        "permit-me" => consent(json!({"type": "permit", "actor": actor("Practitioner/dr")})),
        "permit-org" => consent(json!({"type": "permit", "actor": actor("Organization/org")})),
        "permit-other" => consent(json!({"type": "permit", "actor": actor("Practitioner/x")})),
        "permit-all" => consent(json!({"type": "permit"})),
        "deny-me" => consent(json!({"type": "deny", "actor": actor("Practitioner/dr")})),
        "expired" => consent(json!({"type": "permit", "actor": actor("Practitioner/dr"),
            "period": {"start": "2025-01-01", "end": "2026-01-01"}})),
        "future" => consent(json!({"type": "permit", "actor": actor("Practitioner/dr"),
            "period": {"start": "2027-01-01"}})),
        "only-obs" => consent(json!({"type": "permit", "actor": actor("Practitioner/dr"),
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]})),
        "all-but-obs" => consent(json!({"type": "permit", "actor": actor("Practitioner/dr"),
            "provision": [{"type": "deny",
              "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]})),
        "research" => consent(json!({"type": "permit",
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]})),
        "draft" => {
            let mut c = consent(json!({"type": "permit", "actor": actor("Practitioner/dr")}));
            c["status"] = json!("draft");
            c
        }
        other => panic!("no consent {other}"),
    };
    ConsentRule::parse(&doc).unwrap().into_iter().collect()
}

struct Case {
    role: Role,
    scopes: &'static str,
    launch: Option<&'static str>,
    consent: &'static str,
    label: Label,
    interaction: Permission,
    resource_type: &'static str,
    compartment: Option<&'static str>,
    btg: bool,
    default_permit: bool,
    expect: (bool, Reason),
}

const USER_ALL: &str = "user/*.cruds";
const READ: Permission = Permission::Read;

fn case(role: Role, scopes: &'static str, consent: &'static str, expect: (bool, Reason)) -> Case {
    Case {
        role,
        scopes,
        launch: None,
        consent,
        label: Label::Normal,
        interaction: READ,
        resource_type: "Observation",
        compartment: Some("Patient/p1"),
        btg: false,
        default_permit: false,
        expect,
    }
}

#[test]
fn the_policy_table() {
    use Reason::*;
    use Role::*;
    let yes = |r| (true, r);
    let no = |r| (false, r);
    let cases = vec![
        // Practitioners: consent decides, default deny.
        case(Practitioner, USER_ALL, "none", no(NoConsent)),
        case(Practitioner, USER_ALL, "permit-me", yes(ConsentPermits)),
        case(Practitioner, USER_ALL, "permit-org", yes(ConsentPermits)),
        case(Practitioner, USER_ALL, "permit-other", no(NoConsent)),
        case(Practitioner, USER_ALL, "permit-all", yes(ConsentPermits)),
        case(Practitioner, USER_ALL, "deny-me", no(ConsentDenies)),
        case(Practitioner, USER_ALL, "expired", no(NoConsent)),
        case(Practitioner, USER_ALL, "future", no(NoConsent)),
        case(Practitioner, USER_ALL, "draft", no(NoConsent)),
        case(Practitioner, USER_ALL, "only-obs", yes(ConsentPermits)),
        Case {
            resource_type: "Condition",
            ..case(Practitioner, USER_ALL, "only-obs", no(NoConsent))
        },
        case(Practitioner, USER_ALL, "all-but-obs", no(ConsentDenies)),
        Case {
            resource_type: "Condition",
            ..case(Practitioner, USER_ALL, "all-but-obs", yes(ConsentPermits))
        },
        // Research consent is not for treatment.
        case(Practitioner, USER_ALL, "research", no(NoConsent)),
        // Scopes come first.
        case(Practitioner, "user/Condition.rs", "permit-me", no(NoScope)),
        Case {
            interaction: Permission::Update,
            ..case(Practitioner, "user/*.rs", "permit-me", no(NoScope))
        },
        Case {
            interaction: Permission::Update,
            ..case(Practitioner, USER_ALL, "permit-me", yes(ConsentPermits))
        },
        Case {
            interaction: Permission::Create,
            ..case(Practitioner, USER_ALL, "none", no(NoConsent))
        },
        // Consents are the patient's to write.
        Case {
            interaction: Permission::Create,
            resource_type: "Consent",
            ..case(
                Practitioner,
                USER_ALL,
                "permit-me",
                no(ConsentManagedByPatient),
            )
        },
        // Default permit: open unless denied.
        Case {
            default_permit: true,
            ..case(Practitioner, USER_ALL, "none", yes(DefaultPermit))
        },
        Case {
            default_permit: true,
            ..case(Practitioner, USER_ALL, "deny-me", no(ConsentDenies))
        },
        // Labels.
        Case {
            label: Label::Restricted,
            ..case(Practitioner, USER_ALL, "permit-me", yes(ConsentPermits))
        },
        Case {
            label: Label::VeryRestricted,
            ..case(Practitioner, USER_ALL, "permit-me", no(Labelled))
        },
        // Break-the-glass opens everything, labels included.
        Case {
            btg: true,
            ..case(Practitioner, USER_ALL, "none", yes(BreakGlass))
        },
        Case {
            btg: true,
            ..case(Practitioner, USER_ALL, "deny-me", yes(BreakGlass))
        },
        Case {
            btg: true,
            label: Label::VeryRestricted,
            ..case(Practitioner, USER_ALL, "none", yes(BreakGlass))
        },
        // Not patient data.
        Case {
            resource_type: "Organization",
            compartment: None,
            ..case(Practitioner, USER_ALL, "none", yes(NotPatientData))
        },
        // A practitioner launched in a patient context is narrowed to it, consent still applies.
        Case {
            launch: Some("p1"),
            ..case(
                Practitioner,
                "patient/*.rs",
                "permit-me",
                yes(ConsentPermits),
            )
        },
        Case {
            launch: Some("p1"),
            ..case(Practitioner, "patient/*.rs", "none", no(NoConsent))
        },
        Case {
            launch: Some("p2"),
            ..case(
                Practitioner,
                "patient/*.rs",
                "permit-me",
                no(OutsideCompartment),
            )
        },
        // Patients: their own compartment, whatever the consents, every label.
        Case {
            launch: Some("p1"),
            ..case(Patient, "patient/*.rs", "deny-me", yes(OwnCompartment))
        },
        Case {
            launch: Some("p1"),
            label: Label::VeryRestricted,
            ..case(Patient, "patient/*.rs", "none", yes(OwnCompartment))
        },
        Case {
            launch: Some("p2"),
            ..case(
                Patient,
                "patient/*.rs",
                "permit-all",
                no(OutsideCompartment),
            )
        },
        Case {
            launch: Some("p1"),
            resource_type: "Organization",
            compartment: None,
            ..case(Patient, "patient/*.rs", "none", no(OutsideCompartment))
        },
        Case {
            launch: Some("p1"),
            interaction: Permission::Create,
            resource_type: "Consent",
            ..case(Patient, "patient/*.cruds", "none", yes(OwnCompartment))
        },
        Case {
            launch: Some("p1"),
            interaction: Permission::Create,
            ..case(Patient, "patient/*.rs", "none", no(NoScope))
        },
        // Analytics: research consents only, never labels, never writes.
        case(Analytics, "user/*.rs", "research", yes(ConsentPermits)),
        case(Analytics, "user/*.rs", "permit-all", yes(ConsentPermits)),
        case(Analytics, "user/*.rs", "none", no(NoConsent)),
        Case {
            default_permit: true,
            ..case(Analytics, "user/*.rs", "none", no(NoConsent))
        },
        Case {
            label: Label::Restricted,
            ..case(Analytics, "user/*.rs", "research", no(Labelled))
        },
        Case {
            interaction: Permission::Create,
            ..case(Analytics, USER_ALL, "research", no(RoleForbids))
        },
        // System clients and admins: scopes decide; restricted labels never.
        case(System, "system/*.rs", "deny-me", yes(Institutional)),
        case(System, "system/Patient.rs", "none", no(NoScope)),
        Case {
            interaction: Permission::Create,
            resource_type: "Consent",
            ..case(System, "system/*.cruds", "none", yes(Institutional))
        },
        Case {
            label: Label::Restricted,
            ..case(System, "system/*.rs", "none", no(Labelled))
        },
        case(Admin, USER_ALL, "none", yes(Institutional)),
        Case {
            label: Label::VeryRestricted,
            ..case(Admin, USER_ALL, "none", no(Labelled))
        },
        Case {
            interaction: Permission::Update,
            resource_type: "Consent",
            ..case(Admin, USER_ALL, "none", yes(Institutional))
        },
    ];
    let actors = vec![
        "Practitioner/dr".to_string(),
        "Organization/org".to_string(),
    ];
    for (i, c) in cases.iter().enumerate() {
        let ctx = ctx(c.role, c.scopes, c.launch);
        let config = PolicyConfig {
            default_permit: c.default_permit,
            ..PolicyConfig::default()
        };
        let rules = consents(c.consent);
        let d = decide(&Request {
            ctx: &ctx,
            config: &config,
            btg: c.btg,
            actors: &actors,
            now: now(),
            interaction: c.interaction,
            resource_type: Some(c.resource_type),
            compartment: c.compartment,
            label: c.label,
            consents: &rules,
        });
        assert_eq!(
            (d.allowed, d.reason),
            c.expect,
            "case {i}: {:?} {} consent={} {:?} {:?} {}",
            c.role,
            c.scopes,
            c.consent,
            c.label,
            c.interaction,
            c.resource_type
        );
        // The plan built for the request agrees: its reach for reads of unlabelled data, and its
        // decision for every interaction and label.
        let mut by_patient = BTreeMap::new();
        if !rules.is_empty() {
            by_patient.insert("Patient/p1".to_string(), rules.clone());
        }
        let plan = Plan::build(
            &ctx,
            &config,
            c.btg.then_some(1),
            &actors,
            &by_patient,
            now(),
        );
        if c.interaction == READ && c.label == Label::Normal && !matches!(d.reason, Reason::NoScope)
        {
            assert_eq!(
                plan.visible(c.compartment, c.resource_type),
                d.allowed,
                "plan disagrees in case {i}"
            );
        }
        let from_plan = plan.decide(&ctx, c.interaction, c.resource_type, c.compartment, c.label);
        assert_eq!(
            from_plan.allowed, d.allowed,
            "plan decision disagrees in case {i}"
        );
    }
}

#[test]
fn nested_exceptions_and_denies_among_consents() {
    let who = Asker {
        actors: &["Practitioner/dr".to_string()],
        purpose: "TREAT",
        now: now(),
    };
    // Deny everything, except Observations for me; inside that, except for a period long gone.
    let nested = ConsentRule::parse(&consent(json!({
        "type": "deny",
        "provision": [{"type": "permit", "actor": actor("Practitioner/dr"),
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
            "provision": [{"type": "deny", "period": {"end": "2020-01-01"}}]}]
    })))
    .unwrap()
    .unwrap();
    assert_eq!(
        nested.effect(&who, Some("Observation")),
        Some(Effect::Permit)
    );
    assert_eq!(nested.effect(&who, Some("Condition")), Some(Effect::Deny));
    let permit = consents("permit-me");
    let deny = consents("deny-me");
    let both: Vec<ConsentRule> = permit.into_iter().chain(deny).collect();
    assert_eq!(consent_effect(&both, &who, None), Some(Effect::Deny));
}

#[test]
fn consents_the_policy_cannot_enforce_are_refused() {
    let by_code = consent(json!({"type": "permit", "code": [{"text": "x"}]}));
    let err = ConsentRule::parse(&by_code).unwrap_err();
    assert!(err.0.contains("provision.code"), "{err}");
    let nested = consent(
        json!({"type": "permit", "provision": [{"type": "deny", "securityLabel": [{"code": "R"}]}]}),
    );
    assert!(ConsentRule::parse(&nested)
        .unwrap_err()
        .0
        .contains("provision[0].securityLabel"));
    let bad_class = consent(
        json!({"type": "permit", "class": [{"system": "http://loinc.org", "code": "1-8"}]}),
    );
    assert!(ConsentRule::parse(&bad_class).is_err());
    // Not a privacy consent: it takes no part.
    let mut treatment = consent(json!({"type": "deny"}));
    treatment["scope"]["coding"][0]["code"] = json!("treatment");
    assert_eq!(ConsentRule::parse(&treatment).unwrap(), None);
}

#[test]
fn labels_read_from_meta_security() {
    let r = json!({"meta": {"security": [
        {"system": CONFIDENTIALITY, "code": "N"},
        {"system": CONFIDENTIALITY, "code": "R"}]}});
    assert_eq!(Label::of(&r), Label::Restricted);
    let other = json!({"meta": {"security": [{"system": "urn:x", "code": "V"}]}});
    assert_eq!(Label::of(&other), Label::Normal);
    let plan = Plan::build(
        &ctx(Role::System, "system/*.rs", None),
        &PolicyConfig::default(),
        None,
        &[],
        &BTreeMap::new(),
        now(),
    );
    assert_eq!(plan.hidden_labels(), vec!["R", "V"]);
    assert!(!plan.label_visible(&r) && plan.visible(Some("Patient/p9"), "Observation"));
}
