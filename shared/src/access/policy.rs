//! The access policy: the one place that decides whether a caller may touch a patient's data.
//!
//! A decision combines, in this order: the token's scopes (already limited to what the role may
//! hold, [`crate::access`]), the role, the patient's privacy consents, and the resource's security
//! labels. [`decide`] makes the decision for one resource; [`Plan`] holds the same decisions for
//! every compartment and type at once, for a whole request, so that searches can be narrowed in SQL
//! (`Plan::visible` calls the same functions as `decide`).
//!
//! # The policy
//!
//! - **Patients** see and write their own compartment (their launch patient), nothing else.
//! - **Practitioners** see a patient's compartment only under an active `patient-privacy` Consent
//!   of that patient that permits them: a provision naming them (`Practitioner/<id>` of their user),
//!   a `PractitionerRole` of theirs, its `Organization`, or a `CareTeam` they take part in — or a
//!   provision naming no actor (everyone). A deny that applies wins over any permit. With
//!   `CARAPACE_CONSENT_DEFAULT=permit` a patient without consents is open to practitioners (denies
//!   still apply). Resources outside any patient compartment (Organization, Practitioner, ...) are
//!   visible to them.
//! - **Analytics** users read like practitioners with purpose of use `HRESCH` (research): only
//!   patients whose consent permits it; never restricted data; never write; never break the glass.
//! - **System** clients and **admins** are institutional: consent does not narrow them, their
//!   scopes do; they never see restricted (`R`) or very restricted (`V`) data.
//! - **Break-the-glass** (purpose `BTG`, for the roles configured) lets a practitioner see every
//!   compartment and every label for a bounded time, each access audited and queued for review.
//! - **Security labels** (`meta.security`, v3 Confidentiality): `V` is hidden from everyone but the
//!   patient and break-the-glass; `R` is hidden from analytics, system clients and admins.
//! - **Consents** themselves are written only by their patient, an administrator, or a system
//!   client (the EHR recording a consent taken at the front desk) — never by the practitioners
//!   they would open data to.
//!
//! # Consent evaluation
//!
//! A `Consent` counts when `status` is `active` and its `scope` is `patient-privacy`. Its
//! `provision` applies to a request when each of its `actor`s, `period`, `purpose` and `class` (by
//! resource type, `http://hl7.org/fhir/resource-types`) is absent or matches. Nested provisions are
//! exceptions: the most deeply nested applying provision decides (a deny among siblings wins).
//! Narrowing the policy cannot express (`code`, `data`, `dataPeriod`, `securityLabel`) is refused
//! when the Consent is written, rather than ignored.

use crate::access::{AccessContext, Permission, Role};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";
const PURPOSE_OF_USE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// What the deployment decides (`CARAPACE_CONSENT_DEFAULT`, `CARAPACE_BTG_ROLES`).
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Practitioners see patients without any applying consent.
    pub default_permit: bool,
    /// Roles that may break the glass (practitioner only, or also admin).
    pub btg_roles: Vec<Role>,
    /// How long one break-the-glass assertion lasts.
    pub btg_duration: chrono::Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_permit: false,
            btg_roles: vec![Role::Practitioner],
            btg_duration: chrono::Duration::minutes(60),
        }
    }
}

/// Confidentiality of a resource: the highest of its `meta.security` v3 Confidentiality codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Label {
    Normal,
    Restricted,
    VeryRestricted,
}

impl Label {
    pub fn of(resource: &Value) -> Label {
        let mut label = Label::Normal;
        let codings = resource
            .pointer("/meta/security")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for c in codings {
            if c.get("system").and_then(Value::as_str) != Some(CONFIDENTIALITY) {
                continue;
            }
            let this = match c.get("code").and_then(Value::as_str) {
                Some("R") => Label::Restricted,
                Some("V") => Label::VeryRestricted,
                _ => Label::Normal,
            };
            label = label.max(this);
        }
        label
    }

    /// The label of a stored body (JSON); parsed only when it names the Confidentiality system.
    pub fn of_body(body: &[u8]) -> Label {
        let names_system = body
            .windows(CONFIDENTIALITY.len())
            .any(|w| w == CONFIDENTIALITY.as_bytes());
        if !names_system {
            return Label::Normal;
        }
        // An unreadable body is the most restricted, not the least.
        serde_json::from_slice::<Value>(body)
            .map(|v| Label::of(&v))
            .unwrap_or(Label::VeryRestricted)
    }

    /// The v3 Confidentiality code of a label that hides data.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Label::Normal => None,
            Label::Restricted => Some("R"),
            Label::VeryRestricted => Some("V"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Permit,
    Deny,
}

/// One `provision` of a Consent, with its exceptions.
#[derive(Debug, Clone, PartialEq)]
struct Provision {
    effect: Option<Effect>,
    actors: Vec<String>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    purposes: Vec<String>,
    classes: Vec<String>,
    exceptions: Vec<Provision>,
}

/// A patient's privacy Consent, as the policy reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRule {
    /// `Patient/<id>`.
    pub patient: String,
    root: Provision,
}

/// Why a Consent cannot be enforced as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnenforceableConsent(pub String);

impl ConsentRule {
    /// Read a Consent: `Ok(None)` when it does not take part in access decisions (not active, or
    /// not a privacy consent); an error when it asks for narrowing the policy cannot enforce.
    pub fn parse(consent: &Value) -> Result<Option<ConsentRule>, UnenforceableConsent> {
        let privacy = consent
            .pointer("/scope/coding")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("code").and_then(Value::as_str) == Some("patient-privacy"))
            });
        let root = match consent.get("provision") {
            Some(p) => parse_provision(p, "Consent.provision")?,
            None => return Ok(None),
        };
        let active = consent.get("status").and_then(Value::as_str) == Some("active");
        let Some(patient) = consent
            .pointer("/patient/reference")
            .and_then(Value::as_str)
            .filter(|r| r.starts_with("Patient/"))
        else {
            return Ok(None);
        };
        if !privacy || !active {
            return Ok(None);
        }
        Ok(Some(ConsentRule {
            patient: patient.to_string(),
            root,
        }))
    }

    /// What this consent says for `who` asking for `resource_type` now: `None` if it says nothing.
    pub fn effect(&self, who: &Asker<'_>, resource_type: Option<&str>) -> Option<Effect> {
        evaluate(&self.root, who, resource_type, None)
    }

    /// The resource types this consent narrows by (each may be decided differently).
    fn classes(&self) -> BTreeSet<String> {
        fn walk(p: &Provision, out: &mut BTreeSet<String>) {
            out.extend(p.classes.iter().cloned());
            for e in &p.exceptions {
                walk(e, out);
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.root, &mut out);
        out
    }
}

fn parse_provision(p: &Value, path: &str) -> Result<Provision, UnenforceableConsent> {
    for unsupported in ["code", "data", "dataPeriod", "securityLabel"] {
        if p.get(unsupported).is_some() {
            return Err(UnenforceableConsent(format!(
                "{path}.{unsupported} cannot be enforced by this server; narrow by \
                 provision.class (resource types), actor, period or purpose"
            )));
        }
    }
    let effect = match p.get("type").and_then(Value::as_str) {
        Some("permit") => Some(Effect::Permit),
        Some("deny") => Some(Effect::Deny),
        _ => None,
    };
    let actors = p
        .get("actor")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.pointer("/reference/reference").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let instant = |k: &str| -> Result<Option<DateTime<Utc>>, UnenforceableConsent> {
        match p.pointer(&format!("/period/{k}")).and_then(Value::as_str) {
            None => Ok(None),
            Some(s) => crate::fhir::date_search_range(s)
                .map(|r| if k == "start" { r.lo } else { r.hi })
                .map_err(|_| {
                    UnenforceableConsent(format!("{path}.period.{k} is not a valid dateTime"))
                }),
        }
    };
    let classes = p
        .get("class")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let system = c.get("system").and_then(Value::as_str);
            let code = c.get("code").and_then(Value::as_str).unwrap_or_default();
            if system.is_some_and(|s| s != RESOURCE_TYPES)
                || !crate::fhir::schema::is_resource_type(code)
            {
                return Err(UnenforceableConsent(format!(
                    "{path}.class must name resource types ({RESOURCE_TYPES})"
                )));
            }
            Ok(code.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let purposes = p
        .get("purpose")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| {
            c.get("system")
                .and_then(Value::as_str)
                .is_none_or(|s| s == PURPOSE_OF_USE)
        })
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let exceptions = p
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| parse_provision(e, &format!("{path}.provision[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Provision {
        effect,
        actors,
        start: instant("start")?,
        end: instant("end")?,
        purposes,
        classes,
        exceptions,
    })
}

/// The provision's own decision, or that of its most specific applying exception. `inherited` is
/// the nearest enclosing provision's type, for exceptions that do not state one.
fn evaluate(
    p: &Provision,
    who: &Asker<'_>,
    resource_type: Option<&str>,
    inherited: Option<Effect>,
) -> Option<Effect> {
    let applies = (p.actors.is_empty() || p.actors.iter().any(|a| who.actors.contains(a)))
        && p.start.is_none_or(|s| who.now >= s)
        && p.end.is_none_or(|e| who.now < e)
        && (p.purposes.is_empty() || p.purposes.iter().any(|x| x == who.purpose))
        && (p.classes.is_empty()
            || resource_type.is_some_and(|t| p.classes.iter().any(|c| c == t)));
    if !applies {
        return None;
    }
    let own = p.effect.or(inherited);
    let mut decided = None;
    for e in &p.exceptions {
        match evaluate(e, who, resource_type, own) {
            Some(Effect::Deny) => return Some(Effect::Deny),
            Some(Effect::Permit) => decided = Some(Effect::Permit),
            None => {}
        }
    }
    decided.or(own)
}

/// Who is asking, as consents see them.
#[derive(Debug, Clone)]
pub struct Asker<'a> {
    /// References that name the caller in `provision.actor` (`Practitioner/p1`, `Organization/o1`).
    pub actors: &'a [String],
    /// Purpose of use (`TREAT` unless asserted; `HRESCH` for analytics).
    pub purpose: &'a str,
    pub now: DateTime<Utc>,
}

/// The verdict of all of a patient's consents for one type: any deny wins, then any permit.
pub fn consent_effect(
    consents: &[ConsentRule],
    who: &Asker<'_>,
    resource_type: Option<&str>,
) -> Option<Effect> {
    let mut permit = false;
    for c in consents {
        match c.effect(who, resource_type) {
            Some(Effect::Deny) => return Some(Effect::Deny),
            Some(Effect::Permit) => permit = true,
            None => {}
        }
    }
    permit.then_some(Effect::Permit)
}

/// Why access was granted or refused; recorded in logs and tests, never sent to clients (a refused
/// read looks like a missing resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoScope,
    RoleForbids,
    OutsideCompartment,
    OwnCompartment,
    Institutional,
    NotPatientData,
    ConsentPermits,
    ConsentDenies,
    NoConsent,
    DefaultPermit,
    Labelled,
    BreakGlass,
    ConsentManagedByPatient,
    /// Decided from a [`Plan`]: within, or outside, what the request's consents open.
    InReach,
    OutOfReach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

impl Decision {
    fn allow(reason: Reason) -> Decision {
        Decision {
            allowed: true,
            reason,
        }
    }
    fn deny(reason: Reason) -> Decision {
        Decision {
            allowed: false,
            reason,
        }
    }
}

/// The highest label a caller may see.
pub fn label_ceiling(role: Role, btg: bool) -> Label {
    match role {
        _ if btg => Label::VeryRestricted,
        Role::Patient => Label::VeryRestricted,
        Role::Practitioner => Label::Restricted,
        Role::Analytics | Role::System | Role::Admin => Label::Normal,
    }
}

/// The purpose of use consents are matched against.
pub fn purpose(ctx: &AccessContext) -> &str {
    match (ctx.role, ctx.purpose_of_use.as_deref()) {
        (Role::Analytics, _) => "HRESCH",
        (_, Some(p)) => p,
        _ => "TREAT",
    }
}

/// May this caller create a resource with an id of its choosing (update-as-create)? Only callers
/// no compartment narrows — system clients and administrators without a launch patient: for
/// anyone else, a 201 for a fresh id beside a 404 for an id in a record hidden from them would
/// tell what exists there.
pub fn may_choose_ids(ctx: &AccessContext) -> bool {
    ctx.patient.is_none() && matches!(ctx.role, Role::System | Role::Admin)
}

/// The label a write is decided at: the label the new version carries — a caller may only write
/// what it may read — except that a system client (the source EHR, the labelling authority) may
/// write data labelled above what it reads itself ("write-up": it labels what it sends, and
/// cannot read it back). It still writes only over versions it may read: it can raise a label,
/// never drop one.
pub fn write_label(ctx: &AccessContext, label: Label) -> Label {
    if ctx.role == Role::System {
        Label::Normal
    } else {
        label
    }
}

/// May this caller replace a version labelled `stored` by one labelled `new`? Lowering a label
/// (declassifying: R to none, V to R) is for the patient whose record it is; everyone else may
/// keep or raise it.
pub fn may_lower_label(ctx: &AccessContext, stored: Label, new: Label) -> bool {
    new >= stored || ctx.role == Role::Patient
}

/// One request for one resource, with everything the decision needs.
pub struct Request<'a> {
    pub ctx: &'a AccessContext,
    pub config: &'a PolicyConfig,
    /// Break-the-glass is in force for this caller (asserted, allowed, unexpired).
    pub btg: bool,
    pub actors: &'a [String],
    pub now: DateTime<Utc>,
    pub interaction: Permission,
    /// `None`: a type no consent names (used to decide for all such types at once).
    pub resource_type: Option<&'a str>,
    /// `Patient/<id>` whose compartment holds the resource, or `None`.
    pub compartment: Option<&'a str>,
    pub label: Label,
    /// The patient's consents (those that count), when `compartment` is a patient.
    pub consents: &'a [ConsentRule],
}

/// The decision: scopes ∩ role ∩ consent ∩ labels.
pub fn decide(r: &Request<'_>) -> Decision {
    match preconditions(r.ctx, r.interaction, r.resource_type.unwrap_or("*")) {
        Some(refused) => refused,
        None => reach(r),
    }
}

/// The scopes and the role's rules for writes: a refusal, or `None` to go on to [`reach`].
fn preconditions(
    ctx: &AccessContext,
    interaction: Permission,
    resource_type: &str,
) -> Option<Decision> {
    if ctx.check(resource_type, interaction).is_err() {
        return Some(Decision::deny(Reason::NoScope));
    }
    let writes = !matches!(interaction, Permission::Read | Permission::Search);
    if writes && ctx.role == Role::Analytics {
        return Some(Decision::deny(Reason::RoleForbids));
    }
    if writes
        && resource_type == "Consent"
        && !matches!(ctx.role, Role::Patient | Role::Admin | Role::System)
    {
        return Some(Decision::deny(Reason::ConsentManagedByPatient));
    }
    None
}

/// Whether the caller reaches this compartment, type and label at all: [`decide`] without the
/// scopes and the rules for writes. [`Plan`] is built from it.
fn reach(r: &Request<'_>) -> Decision {
    let ctx = r.ctx;
    if r.label > label_ceiling(ctx.role, r.btg) {
        return Decision::deny(Reason::Labelled);
    }
    // A launch patient narrows any role to that compartment.
    if let Some(own) = ctx.compartment() {
        if r.compartment != Some(own.as_str()) {
            return Decision::deny(Reason::OutsideCompartment);
        }
        if ctx.role == Role::Patient {
            return Decision::allow(Reason::OwnCompartment);
        }
    }
    if r.compartment.is_none() {
        return Decision::allow(Reason::NotPatientData);
    }
    match ctx.role {
        Role::Patient => Decision::deny(Reason::OutsideCompartment),
        Role::System | Role::Admin => Decision::allow(Reason::Institutional),
        Role::Practitioner | Role::Analytics => {
            if r.btg {
                return Decision::allow(Reason::BreakGlass);
            }
            let who = Asker {
                actors: r.actors,
                purpose: purpose(ctx),
                now: r.now,
            };
            match consent_effect(r.consents, &who, r.resource_type) {
                Some(Effect::Permit) => Decision::allow(Reason::ConsentPermits),
                Some(Effect::Deny) => Decision::deny(Reason::ConsentDenies),
                None if r.config.default_permit && ctx.role == Role::Practitioner => {
                    Decision::allow(Reason::DefaultPermit)
                }
                None => Decision::deny(Reason::NoConsent),
            }
        }
    }
}

/// How one patient's consents decide, by type: `all` for types no consent names, and the types
/// named that decide otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PatientReach {
    all: bool,
    except: BTreeMap<String, bool>,
}

/// Every decision of one request, computed once (consents loaded once), for narrowing searches in
/// SQL and checking each row read. Built by the store from [`decide`]'s rules.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Resources outside any patient compartment.
    pub others: bool,
    /// Compartments no consent of theirs decides.
    pub default: bool,
    patients: BTreeMap<String, PatientReach>,
    /// The highest label visible.
    pub ceiling: Label,
    /// The break-the-glass grant in force, if any.
    pub btg: Option<i64>,
}

impl Plan {
    /// The plan for a caller; `consents` maps `Patient/<id>` to the consents that count (for
    /// practitioners and analytics: those that may name them).
    pub fn build(
        ctx: &AccessContext,
        config: &PolicyConfig,
        btg: Option<i64>,
        actors: &[String],
        consents: &BTreeMap<String, Vec<ConsentRule>>,
        now: DateTime<Utc>,
    ) -> Plan {
        let ceiling = label_ceiling(ctx.role, btg.is_some());
        let decide_for = |compartment: Option<&str>, t: Option<&str>, rules: &[ConsentRule]| {
            reach(&Request {
                ctx,
                config,
                btg: btg.is_some(),
                actors,
                now,
                interaction: Permission::Read,
                resource_type: t,
                compartment,
                label: Label::Normal,
                consents: rules,
            })
            .allowed
        };
        let own = ctx.compartment();
        let others = decide_for(None, None, &[]);
        // A compartment no consent decides (the id is never looked at).
        let default = decide_for(Some("Patient/"), None, &[]);
        let mut patients = BTreeMap::new();
        let mut decided: Vec<(String, &[ConsentRule])> = consents
            .iter()
            .map(|(p, rules)| (p.clone(), rules.as_slice()))
            .collect();
        if let Some(own) = own {
            if !consents.contains_key(&own) {
                decided.push((own, &[]));
            }
        }
        for (patient, rules) in decided {
            let all = decide_for(Some(&patient), None, rules);
            let mut except = BTreeMap::new();
            for t in rules.iter().flat_map(ConsentRule::classes) {
                let here = decide_for(Some(&patient), Some(&t), rules);
                if here != all {
                    except.insert(t, here);
                }
            }
            patients.insert(patient, PatientReach { all, except });
        }
        Plan {
            others,
            default,
            patients,
            ceiling,
            btg,
        }
    }

    /// [`decide`] for one resource, from the plan: the same scopes and role rules, then the
    /// compartment and type as the plan holds them (its reason is `InReach` or `OutOfReach`).
    pub fn decide(
        &self,
        ctx: &AccessContext,
        interaction: Permission,
        resource_type: &str,
        compartment: Option<&str>,
        label: Label,
    ) -> Decision {
        if let Some(refused) = preconditions(ctx, interaction, resource_type) {
            return refused;
        }
        if label > self.ceiling {
            return Decision::deny(Reason::Labelled);
        }
        if self.visible(compartment, resource_type) {
            Decision::allow(Reason::InReach)
        } else {
            Decision::deny(Reason::OutOfReach)
        }
    }

    /// May the caller see resources of `resource_type` in `compartment` (`Patient/<id>`, or `None`
    /// for data outside any patient compartment)? Labels are checked apart ([`Plan::label_visible`]).
    pub fn visible(&self, compartment: Option<&str>, resource_type: &str) -> bool {
        match compartment {
            None => self.others,
            Some(p) => match self.patients.get(p) {
                Some(reach) => reach
                    .except
                    .get(resource_type)
                    .copied()
                    .unwrap_or(reach.all),
                None => self.default,
            },
        }
    }

    pub fn label_visible(&self, resource: &Value) -> bool {
        Label::of(resource) <= self.ceiling
    }

    /// [`Plan::label_visible`] for a stored (JSON) body.
    pub fn label_visible_body(&self, body: &[u8]) -> bool {
        Label::of_body(body) <= self.ceiling
    }

    /// The plan as SQL arrays: the compartments consents decide, those open for every type, and
    /// `Patient/<id>|Type` pairs opened or closed against that.
    pub fn sql_lists(&self) -> SqlReach {
        let mut out = SqlReach {
            others: self.others,
            default: self.default,
            ..SqlReach::default()
        };
        for (p, reach) in &self.patients {
            out.decided.push(p.clone());
            if reach.all {
                out.open.push(p.clone());
            }
            for (t, &here) in &reach.except {
                let pair = format!("{p}|{t}");
                if here {
                    out.open_typed.push(pair);
                } else {
                    out.closed_typed.push(pair);
                }
            }
        }
        out
    }

    /// Every compartment and type is open (labels aside): nothing to narrow.
    pub fn sees_everything(&self) -> bool {
        self.others && self.default && self.patients.values().all(|p| p.all && p.except.is_empty())
    }

    /// Every patient compartment is open for every type (labels aside).
    pub fn sees_all_compartments(&self) -> bool {
        self.default && self.patients.values().all(|p| p.all && p.except.is_empty())
    }

    /// Codes of v3 Confidentiality labels hidden from this caller.
    pub fn hidden_labels(&self) -> Vec<&'static str> {
        [Label::Restricted, Label::VeryRestricted]
            .into_iter()
            .filter(|l| *l > self.ceiling)
            .filter_map(Label::code)
            .collect()
    }
}

/// [`Plan`] at the grain of compartments, for the database's row-level security (migration 0007):
/// a backstop under the store's own checks, which also narrow by type and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReach {
    /// `all`, `listed` (only `compartments`) or `all-but` (all but `compartments`).
    pub reach: &'static str,
    pub compartments: Vec<String>,
    /// Resources outside any patient compartment.
    pub others: bool,
}

impl RowReach {
    /// Everything: for the store's own reads (the policy's consents, re-indexing).
    pub fn everything() -> RowReach {
        RowReach {
            reach: "all",
            compartments: Vec::new(),
            others: true,
        }
    }
}

impl Plan {
    pub fn row_reach(&self) -> RowReach {
        if self.sees_everything() {
            return RowReach::everything();
        }
        let sees_some = |r: &PatientReach| r.all || r.except.values().any(|v| *v);
        let (reach, compartments) = if self.default {
            let closed = self.patients.iter().filter(|(_, r)| !sees_some(r));
            ("all-but", closed.map(|(p, _)| p.clone()).collect())
        } else {
            let open = self.patients.iter().filter(|(_, r)| sees_some(r));
            ("listed", open.map(|(p, _)| p.clone()).collect())
        };
        RowReach {
            reach,
            compartments,
            others: self.others,
        }
    }
}

/// [`Plan`] flattened for binding into SQL.
#[derive(Debug, Clone, Default)]
pub struct SqlReach {
    pub others: bool,
    pub default: bool,
    pub decided: Vec<String>,
    pub open: Vec<String>,
    pub open_typed: Vec<String>,
    pub closed_typed: Vec<String>,
}

#[cfg(test)]
mod tests;
