//! De-identification: what an `analytics` caller receives, after the gate and before it leaves
//! the store (`Store::release`). Rules name FHIR elements — by type (`type:HumanName`, every node
//! of that datatype or primitive anywhere, extensions and contained resources included), or by
//! the type that holds them (`Coding.display`, `Patient.birthDate`; `Resource.id` for any resource)
//! — and a method: `keep`, `redact`, `generalise` (dates to their year, addresses to state and
//! country, ages over 89 to "90 or more"), `pseudonymise` (keyed HMAC: stable under one key,
//! irreversible without it), `dateshift` (a keyed per-patient offset of up to a year, precision
//! kept) or `perturb` (a keyed ±10% on a decimal). The first rule that names a node decides it;
//! a complex node no rule names is walked into; a primitive no rule names is kept. The default
//! rules (`shared/deid-safe-harbor.json`) follow HIPAA Safe Harbor; `CARAPACE_DEID_RULES` names
//! another file, in the spirit of Microsoft's FHIR anonymisation tool.
//!
//! The walk follows the R4 definitions (`fhir::schema`), so a rule on `HumanName` reaches a name
//! wherever R4 puts one. Written here rather than taken from a crate: no Rust crate de-identifies
//! FHIR, and the rules must walk this server's own type tables.

use crate::crypto::Dek;
use crate::fhir::schema::{self, Kind, TypeDef};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// The Safe Harbor rules that ship.
pub const SAFE_HARBOR: &str = include_str!("../../deid-safe-harbor.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Keep,
    Redact,
    Generalise,
    Pseudonymise,
    Dateshift,
    Perturb,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    /// Every node of this datatype or primitive.
    Type(String),
    /// Element `element` of type `holder` (`Resource` for any resource).
    Path { holder: String, element: String },
}

#[derive(Debug, Clone)]
struct Rule {
    selector: Selector,
    method: Method,
}

#[derive(Deserialize)]
struct RulesFile {
    name: String,
    /// The v3 ObservationValue label the result carries (`PSEUDED`, `ANONYED`).
    label: String,
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
struct RuleFile {
    path: String,
    method: Method,
}

/// A set of rules, parsed and checked.
#[derive(Debug, Clone)]
pub struct Rules {
    pub name: String,
    pub label: String,
    rules: Vec<Rule>,
    /// SHA-256 of the rules' text: what the audit trail records when they change.
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
#[error("de-identification rules: {0}")]
pub struct BadRules(pub String);

impl Rules {
    pub fn safe_harbor() -> Result<Rules, BadRules> {
        Rules::parse(SAFE_HARBOR)
    }

    /// Parse a rules file; every path must name an R4 type or an element of one.
    pub fn parse(text: &str) -> Result<Rules, BadRules> {
        let file: RulesFile =
            serde_json::from_str(text).map_err(|e| BadRules(format!("not a rules file: {e}")))?;
        if !matches!(
            file.label.as_str(),
            "PSEUDED" | "ANONYED" | "MASKED" | "REDACTED"
        ) {
            return Err(BadRules(format!(
                "label '{}' is not a v3 ObservationValue de-identification code",
                file.label
            )));
        }
        let mut rules = Vec::new();
        for r in file.rules {
            let selector = match r.path.strip_prefix("type:") {
                Some(t) => {
                    if schema::type_def(t).is_none() && !is_primitive(t) {
                        return Err(BadRules(format!("'{}' names no R4 type", r.path)));
                    }
                    Selector::Type(t.to_string())
                }
                None => {
                    let (holder, element) = r.path.rsplit_once('.').ok_or_else(|| {
                        BadRules(format!("'{}' is neither type:T nor T.element", r.path))
                    })?;
                    let known = holder == "Resource"
                        || holder == "Resource.meta"
                        || schema::type_def(holder).is_some_and(|t| t.element(element).is_some());
                    if !known {
                        return Err(BadRules(format!("'{}' names no R4 element", r.path)));
                    }
                    Selector::Path {
                        holder: holder.to_string(),
                        element: element.to_string(),
                    }
                }
            };
            rules.push(Rule {
                selector,
                method: r.method,
            });
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Rules {
            name: file.name,
            label: file.label,
            rules,
            digest,
        })
    }

    /// The method for element `element` of type `type_name`, held by `holder` (a type name; the
    /// resource's own type, with `is_root`, for the resource's top-level elements).
    fn method(
        &self,
        holder: &str,
        is_root: bool,
        element: &str,
        type_name: &str,
    ) -> Option<Method> {
        self.rules.iter().find_map(|r| {
            let hit = match &r.selector {
                Selector::Type(t) => t == type_name,
                Selector::Path {
                    holder: h,
                    element: e,
                } => {
                    e == element
                        && (h == holder
                            || (is_root && h == "Resource")
                            || (h == "Resource.meta" && holder == "Meta"))
                }
            };
            hit.then_some(r.method)
        })
    }
}

/// The Quantity datatype and its R4 profiles.
fn is_quantity(name: &str) -> bool {
    matches!(
        name,
        "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity" | "MoneyQuantity"
    )
}

/// Elements that hold a birth date (Patient, RelatedPerson, Person, Practitioner,
/// FamilyMemberHistory): their years are aggregated at 90, their extensions (a birth time) go.
fn is_birth(element: &str) -> bool {
    matches!(element, "birthDate" | "bornDate")
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "base64Binary"
            | "boolean"
            | "canonical"
            | "code"
            | "date"
            | "dateTime"
            | "decimal"
            | "id"
            | "instant"
            | "integer"
            | "markdown"
            | "oid"
            | "positiveInt"
            | "string"
            | "time"
            | "unsignedInt"
            | "uri"
            | "url"
            | "uuid"
            | "xhtml"
    )
}

/// Applies one set of rules under one key.
pub struct Deidentifier {
    rules: Rules,
    key: Dek,
}

/// What a node becomes.
enum Outcome {
    Keep,
    Remove,
    Replace(Value),
}

impl Deidentifier {
    pub fn new(rules: Rules, key: Dek) -> Deidentifier {
        Deidentifier { rules, key }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The keyed pseudonym of a resource id (of `Type/id`): 32 hex digits, a valid FHIR id.
    pub fn pseudonym(&self, resource_type: &str, id: &str) -> String {
        hex(&self.mac(&[b"id", resource_type.as_bytes(), id.as_bytes()])[..16])
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.key.expose()) else {
            return vec![0; 32];
        };
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// De-identify a resource in place; `patient` (an id) keys date shifts, `this_year` is the
    /// year ages are counted to (ages over 89 are aggregated).
    pub fn apply(&self, resource: &mut Value, patient: Option<&str>, this_year: i32) {
        let Some(obj) = resource.as_object_mut() else {
            return;
        };
        let Some(rt) = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return;
        };
        let Some(def) = schema::type_def(&rt) else {
            return;
        };
        let ctx = Walk {
            resource_type: &rt,
            patient: patient.unwrap_or(""),
            this_year,
        };
        self.object(obj, def, true, &ctx);
        // Every result says what was done to it.
        let meta = obj
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            let security = meta
                .entry("security")
                .or_insert_with(|| Value::Array(vec![]));
            if let Some(labels) = security.as_array_mut() {
                labels.push(serde_json::json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": self.rules.label}));
            }
        }
    }

    fn object(&self, obj: &mut Map<String, Value>, def: &TypeDef, is_root: bool, ctx: &Walk<'_>) {
        let names: Vec<String> = obj.keys().cloned().collect();
        for name in names {
            if name == "resourceType" {
                continue;
            }
            let (element_name, shadow) = match name.strip_prefix('_') {
                Some(n) => (n, true),
                None => (name.as_str(), false),
            };
            let Some(element) = def.element(element_name) else {
                continue;
            };
            let type_name = match element.kind {
                Kind::Primitive(p) => p.name().to_string(),
                Kind::Complex(i) => schema::type_at(i)
                    .map(|t| t.name().to_string())
                    .unwrap_or_default(),
                Kind::Resource => String::new(),
            };
            let method = self
                .rules
                .method(def.name(), is_root, element_name, &type_name);
            let Some(value) = obj.get_mut(&name) else {
                continue;
            };
            if shadow {
                // A primitive's extensions and id follow the primitive: gone with it, walked as
                // Element otherwise (a kept primitive's too: its extensions are not kept with it).
                if is_birth(element_name) {
                    obj.remove(&name);
                    continue;
                }
                if method.is_some()
                    && !matches!(
                        method,
                        Some(
                            Method::Generalise
                                | Method::Dateshift
                                | Method::Perturb
                                | Method::Pseudonymise
                        )
                    )
                {
                    obj.remove(&name);
                    continue;
                }
                if let Some(elem) = schema::type_def("Element") {
                    self.each(value, |v| {
                        if let Some(o) = v.as_object_mut() {
                            self.object(o, elem, false, ctx);
                        }
                        Outcome::Keep
                    });
                }
                continue;
            }
            let path = (def.name(), element_name);
            let outcome_of = |v: &mut Value| -> Outcome {
                match (element.kind, method) {
                    (_, Some(Method::Keep)) => Outcome::Keep,
                    (_, Some(Method::Redact)) => Outcome::Remove,
                    (Kind::Resource, _) => {
                        // A contained resource keeps its local id (`#id` references name it); a
                        // Bundle's or a Parameters' resources are resources of their own.
                        let contained = element_name == "contained";
                        let Some(o) = v.as_object_mut() else {
                            return Outcome::Remove;
                        };
                        let rt = o
                            .get("resourceType")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        let Some(inner) = rt.as_deref().and_then(schema::type_def) else {
                            return Outcome::Remove;
                        };
                        if contained {
                            self.object(o, inner, false, ctx);
                        } else {
                            let walk = Walk {
                                resource_type: rt.as_deref().unwrap_or(""),
                                ..*ctx
                            };
                            self.object(o, inner, true, &walk);
                        }
                        Outcome::Keep
                    }
                    (Kind::Primitive(_), Some(m)) => self.primitive(v, m, &type_name, path, ctx),
                    (Kind::Complex(_), Some(m)) => self.complex(v, m, &type_name, ctx),
                    (Kind::Complex(i), None) => {
                        let (Some(o), Some(inner)) = (v.as_object_mut(), schema::type_at(i)) else {
                            return Outcome::Keep;
                        };
                        self.object(o, inner, false, ctx);
                        // What the rules emptied goes: an extension without its value, a
                        // concept without its text or codings.
                        let hollow = o.keys().all(|k| k == "id")
                            || (inner.name() == "Extension"
                                && !o.keys().any(|k| k.starts_with("value") || k == "extension"));
                        if hollow {
                            Outcome::Remove
                        } else {
                            Outcome::Keep
                        }
                    }
                    (Kind::Primitive(_), None) => Outcome::Keep,
                }
            };
            let keep = self.each(value, outcome_of);
            if !keep {
                obj.remove(&name);
                obj.remove(&format!("_{name}"));
            }
        }
    }

    /// Apply `f` to a value or each item of an array; whether anything is left.
    fn each(&self, value: &mut Value, mut f: impl FnMut(&mut Value) -> Outcome) -> bool {
        match value {
            Value::Array(items) => {
                let mut kept = Vec::with_capacity(items.len());
                for mut item in std::mem::take(items) {
                    match f(&mut item) {
                        Outcome::Keep => kept.push(item),
                        Outcome::Replace(v) => kept.push(v),
                        Outcome::Remove => {}
                    }
                }
                *items = kept;
                !items.is_empty()
            }
            v => match f(v) {
                Outcome::Keep => true,
                Outcome::Replace(new) => {
                    *v = new;
                    true
                }
                Outcome::Remove => false,
            },
        }
    }

    fn primitive(
        &self,
        v: &mut Value,
        method: Method,
        type_name: &str,
        path: (&str, &str),
        ctx: &Walk<'_>,
    ) -> Outcome {
        match method {
            Method::Keep => Outcome::Keep,
            Method::Redact => Outcome::Remove,
            Method::Pseudonymise => match v.as_str() {
                Some(text) if path.1 == "id" => {
                    Outcome::Replace(Value::String(self.pseudonym(ctx.resource_type, text)))
                }
                Some(text) => Outcome::Replace(Value::String(hex(
                    &self.mac(&[b"value", text.as_bytes()])[..16]
                ))),
                None => Outcome::Remove,
            },
            Method::Generalise => match (type_name, v.as_str()) {
                ("date" | "dateTime", Some(text)) => {
                    let Some(year) = text.get(..4).and_then(|y| y.parse::<i32>().ok()) else {
                        return Outcome::Remove;
                    };
                    // Ages over 89: the year of birth of anyone 90 or older is one value.
                    let year = if is_birth(path.1) {
                        year.max(ctx.this_year - 90)
                    } else {
                        year
                    };
                    Outcome::Replace(Value::String(format!("{year:04}")))
                }
                _ => Outcome::Remove,
            },
            Method::Dateshift => match (type_name, v.as_str()) {
                ("date" | "dateTime", Some(text)) => {
                    match shift(text, self.shift_days(ctx.patient)) {
                        Some(shifted) => Outcome::Replace(Value::String(shifted)),
                        None => Outcome::Remove,
                    }
                }
                _ => Outcome::Remove,
            },
            Method::Perturb => match v.as_f64() {
                Some(x) => {
                    let noise = self.unit(&[
                        b"perturb",
                        path.0.as_bytes(),
                        path.1.as_bytes(),
                        ctx.patient.as_bytes(),
                        x.to_string().as_bytes(),
                    ]);
                    let y = x * (0.9 + 0.2 * noise);
                    serde_json::Number::from_f64((y * 1000.0).round() / 1000.0)
                        .map(|n| Outcome::Replace(Value::Number(n)))
                        .unwrap_or(Outcome::Remove)
                }
                None => Outcome::Remove,
            },
        }
    }

    fn complex(&self, v: &mut Value, method: Method, type_name: &str, ctx: &Walk<'_>) -> Outcome {
        let Some(o) = v.as_object_mut() else {
            return Outcome::Remove;
        };
        match (method, type_name) {
            (Method::Keep, _) => Outcome::Keep,
            (Method::Redact, _) => Outcome::Remove,
            (Method::Pseudonymise, "Reference") => {
                let target = o
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(|r| crate::fhir::reference::Reference::parse(r).ok())
                    .and_then(|r| {
                        r.target()
                            .map(|(t, id)| format!("{t}/{}", self.pseudonym(t.as_str(), id)))
                    });
                let mut out = Map::new();
                if let Some(t) = o.get("type").cloned() {
                    out.insert("type".into(), t);
                }
                match target {
                    Some(reference) => {
                        out.insert("reference".into(), Value::String(reference));
                        Outcome::Replace(Value::Object(out))
                    }
                    // A contained (`#id`) reference stays: it names nothing outside.
                    None if o
                        .get("reference")
                        .and_then(Value::as_str)
                        .is_some_and(|r| r.starts_with('#')) =>
                    {
                        out.insert("reference".into(), o["reference"].clone());
                        Outcome::Replace(Value::Object(out))
                    }
                    None => Outcome::Remove,
                }
            }
            (Method::Generalise, "Address") => {
                o.retain(|k, _| k == "state" || k == "country" || k == "use" || k == "type");
                if o.contains_key("state") || o.contains_key("country") {
                    Outcome::Keep
                } else {
                    Outcome::Remove
                }
            }
            (Method::Generalise, t) if is_quantity(t) => {
                // Coded parts only: a unit other than its UCUM code is free text; extensions go.
                let code = o.get("code").and_then(Value::as_str).map(str::to_string);
                o.retain(|k, v| match k.as_str() {
                    "value" | "comparator" | "system" | "code" | "currency" => true,
                    "unit" => v.as_str() == code.as_deref(),
                    _ => false,
                });
                // Ages over 89, in whatever time unit, become "90 years or more".
                let years = match (o.get("value").and_then(Value::as_f64), code.as_deref()) {
                    (Some(v), Some("a")) => Some(v),
                    (Some(v), Some("mo")) => Some(v / 12.0),
                    (Some(v), Some("wk")) => Some(v / 52.0),
                    (Some(v), Some("d")) => Some(v / 365.0),
                    _ => None,
                };
                if years.is_some_and(|y| y > 89.0) {
                    o.insert("value".into(), Value::from(90));
                    o.insert("comparator".into(), Value::String(">=".into()));
                    o.insert("code".into(), Value::String("a".into()));
                    if o.contains_key("unit") {
                        o.insert("unit".into(), Value::String("a".into()));
                    }
                }
                if o.is_empty() {
                    Outcome::Remove
                } else {
                    Outcome::Keep
                }
            }
            (Method::Generalise | Method::Dateshift, "Period") => {
                for end in ["start", "end"] {
                    if let Some(mut x) = o.remove(end) {
                        if let Outcome::Replace(new) =
                            self.primitive(&mut x, method, "dateTime", ("Period", end), ctx)
                        {
                            o.insert(end.into(), new);
                        }
                    }
                }
                if o.is_empty() {
                    Outcome::Remove
                } else {
                    Outcome::Keep
                }
            }
            // A method that means nothing for this type removes it: never pass data unchanged
            // that a rule meant to alter.
            _ => Outcome::Remove,
        }
    }

    /// A keyed per-patient shift of up to a year either way, in days.
    fn shift_days(&self, patient: &str) -> i64 {
        (self.unit(&[b"dateshift", patient.as_bytes()]) * 730.0) as i64 - 365
    }

    /// A keyed number in [0, 1).
    fn unit(&self, parts: &[&[u8]]) -> f64 {
        let mac = self.mac(parts);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&mac[..8]);
        (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy)]
struct Walk<'a> {
    resource_type: &'a str,
    patient: &'a str,
    this_year: i32,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A date or dateTime moved by `days`, its precision kept (a year stays a year).
fn shift(text: &str, days: i64) -> Option<String> {
    use chrono::{Datelike, Duration, NaiveDate};
    match text.len() {
        4 => Some(text.to_string()),
        7 => {
            let d = NaiveDate::parse_from_str(&format!("{text}-15"), "%Y-%m-%d").ok()?
                + Duration::days(days);
            Some(format!("{:04}-{:02}", d.year(), d.month()))
        }
        10 => {
            let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()? + Duration::days(days);
            Some(d.format("%Y-%m-%d").to_string())
        }
        _ => {
            let t = chrono::DateTime::parse_from_rfc3339(text).ok()? + Duration::days(days);
            Some(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        }
    }
}

#[cfg(test)]
mod tests;
