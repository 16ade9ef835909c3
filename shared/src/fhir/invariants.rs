//! The R4 invariants (`ElementDefinition.constraint`): every FHIRPath constraint of a resource's
//! definition, of its backbone elements and of every datatype it holds, evaluated at each instance
//! with [`super::fhirpath`] (which says why we evaluate FHIRPath ourselves). The constraints are
//! compiled once from `constraints.json` (written by `shared/fhir-r4/generate.py`).
//!
//! An error-severity constraint that fails refuses the write; a warning is reported by
//! `$validate` only ([`Depth::Report`]). A constraint this evaluator cannot compile or evaluate
//! never refuses a write: `$validate` names it as not checked.

use super::fhirpath::{Item, Path, Unsupported};
use super::schema::{self, Element, Kind, TypeDef};
use super::validate::{Depth, Issue, IssueType, Severity};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

const CONSTRAINTS_JSON: &str = include_str!("../../fhir-r4/constraints.json");

/// Constraints checked natively elsewhere, and so skipped here.
const NATIVE: &[(&str, &str)] = &[
    // "All FHIR elements must have a @value or children": the structural walk refuses empty
    // objects, arrays and nulls (validate/walk.rs).
    ("ele-1", "validate/walk.rs (structural walk)"),
    // "Must have either extensions or value[x], not both": validate/extension.rs `check_extension`.
    ("ext-1", "validate/extension.rs"),
    // dom-2 (no nested contained), dom-3 (contained resources referenced from the container),
    // dom-4 (no meta.versionId/lastUpdated), dom-5 (no security labels): validate/walk.rs, on each
    // `contained[i]`.
    ("dom-2", "validate/walk.rs (contained resources)"),
    ("dom-3", "validate/walk.rs (contained resources)"),
    ("dom-4", "validate/walk.rs (contained resources)"),
    ("dom-5", "validate/walk.rs (contained resources)"),
    // The narrative's XHTML: a real XML parser with R4's allow-list.
    ("txt-1", "narrative.rs"),
    ("txt-2", "narrative.rs"),
];

/// R4 4.0.1 expressions that are wrong as published, with the expression we evaluate instead.
/// (Two more corrections live in the evaluator, as the HL7 validator's engine reads them: on an
/// empty input `is`, `startsWith`, `endsWith` and `contains` give false, which ref-1, bdl-8 and
/// ras-2 rely on; and [`corrected_name_rule`] below.)
const CORRECTED: &[(&str, &str)] = &[
    // ref-1: a contained resource may point at its container with `#` (R4 dom-3 says so), which
    // R4's text refuses (`''` is no contained id); R5 adds the case.
    (
        "ref-1",
        "reference.startsWith('#').not() or (reference.substring(1) in %rootResource.contained.id) or (reference = '#' and %rootResource != %resource)",
    ),
    // per-1: `start <= end` is empty when the two agree to the coarser precision (`2021-03` and
    // `2021-03-01`), so R4's text refuses overlapping periods. R5 compares
    // `start.lowBoundary() <= end.highBoundary()`, which holds exactly when `start <= end` is not
    // false.
    (
        "per-1",
        "start.hasValue().not() or end.hasValue().not() or (start <= end) or (start <= end).empty()",
    ),
];

/// The canonical resources' `xxx-0` warning (`name.matches('[A-Z]([A-Za-z0-9_]){0,254}')`, "Name
/// should be usable as an identifier") fires on a resource without a name, which R4 allows
/// (`name` is 0..1): R5 guards it with `name.exists() implies`, and so do we.
fn corrected_name_rule(key: &str, expression: &str) -> Option<String> {
    (key.ends_with("-0") && expression.starts_with("name.matches("))
        .then(|| format!("name.exists() implies {expression}"))
}

/// One compiled constraint.
#[derive(Debug)]
pub struct Invariant {
    key: Box<str>,
    severity: Severity,
    human: Box<str>,
    path: Result<Path, Unsupported>,
}

impl Invariant {
    /// Compile a constraint (`severity` is `error` or `warning`, as in ElementDefinition).
    pub fn compile(key: &str, severity: &str, human: &str, expression: &str) -> Invariant {
        Invariant {
            key: key.into(),
            severity: if severity == "error" {
                Severity::Error
            } else {
                Severity::Warning
            },
            human: human.into(),
            path: Path::compile(expression),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The constraint's text for an issue: `key: human`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.key, self.human)
    }

    /// Whether the constraint holds on `node`, an element of FHIR type `type_name` (a resource,
    /// datatype or backbone name as in the schema) inside `resource`. `Err` when it cannot be
    /// evaluated (never a reason to refuse).
    pub fn holds(
        &self,
        node: &Value,
        type_name: &str,
        resource: &Value,
    ) -> Result<bool, Unsupported> {
        let def = schema::type_def(type_name)
            .ok_or_else(|| Unsupported(format!("unknown type {type_name}")))?;
        let res = Item::resource(resource).ok_or_else(|| Unsupported("not a resource".into()))?;
        self.holds_on(Item::complex(node, def), res.clone(), res)
    }

    fn holds_on<'a>(
        &self,
        node: Item<'a>,
        resource: Item<'a>,
        root: Item<'a>,
    ) -> Result<bool, Unsupported> {
        let path = self.path.as_ref().map_err(Clone::clone)?;
        let result = path.evaluate(node, resource, root)?;
        // Singleton evaluation: an empty result is not `true`, so the constraint fails (as in
        // the HL7 validator); a non-boolean single item counts as true.
        Ok(match result.as_slice() {
            [] => false,
            [Item::Bool(b)] => *b,
            [_] => true,
            _ => return Err(Unsupported("several results".into())),
        })
    }
}

struct Table {
    invariants: Vec<Invariant>,
    /// By the address of a type's [`TypeDef`].
    by_type: HashMap<usize, Vec<usize>>,
    /// By the address of an [`Element`] of a definition.
    by_element: HashMap<usize, Vec<usize>>,
    domain_resource: usize,
}

fn addr<T>(t: &T) -> usize {
    std::ptr::from_ref(t) as usize
}

static TABLE: LazyLock<Table> = LazyLock::new(load);

fn load() -> Table {
    let mut t = Table {
        invariants: Vec::new(),
        by_type: HashMap::new(),
        by_element: HashMap::new(),
        domain_resource: schema::type_def("DomainResource").map_or(0, addr),
    };
    let Ok(raw) = serde_json::from_str::<Value>(CONSTRAINTS_JSON) else {
        return t;
    };
    let mut compile = |list: &Value| -> Vec<usize> {
        let mut ids = Vec::new();
        for c in list.as_array().into_iter().flatten() {
            let field = |i: usize| c.get(i).and_then(Value::as_str).unwrap_or("");
            let key = field(0);
            if NATIVE.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let expression = match CORRECTED.iter().find(|(k, _)| *k == key) {
                Some((_, fixed)) => (*fixed).to_string(),
                None => corrected_name_rule(key, field(3)).unwrap_or_else(|| field(3).to_string()),
            };
            ids.push(t.invariants.len());
            t.invariants
                .push(Invariant::compile(key, field(1), field(2), &expression));
        }
        ids
    };
    let mut by_type = HashMap::new();
    for (name, list) in raw["types"].as_object().into_iter().flatten() {
        if let Some(def) = schema::type_def(name) {
            let ids = compile(list);
            if !ids.is_empty() {
                by_type.insert(addr(def), ids);
            }
        }
    }
    let mut by_element = HashMap::new();
    for (path, list) in raw["elements"].as_object().into_iter().flatten() {
        let Some((parent, name)) = path.rsplit_once('.') else {
            continue;
        };
        let Some(def) = schema::type_def(parent) else {
            continue;
        };
        let ids = compile(list);
        if ids.is_empty() {
            continue;
        }
        // `probability[x]` names every expansion of the choice.
        let base = name.strip_suffix("[x]");
        for el in def.elements() {
            let matches = match base {
                Some(b) => el.choice.is_some_and(|g| def.choice_name(g) == b),
                None => el.name() == name,
            };
            if matches {
                by_element.insert(addr(el), ids.clone());
            }
        }
    }
    t.by_type = by_type;
    t.by_element = by_element;
    t
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Name(&'a str),
    Index(usize),
    /// A choice element: `value.ofType(Quantity)`.
    Choice(&'a str, &'a str),
}

struct Walker<'a, 'o> {
    depth: Depth,
    out: &'o mut Vec<Issue>,
    path: Vec<Seg<'a>>,
}

const MAX_ISSUES: usize = 100;

/// Evaluate every invariant of `resource` (already structurally valid) and of everything in it,
/// adding an issue per failure: errors always, warnings and not-evaluated notes at
/// [`Depth::Report`].
pub fn check(resource: &Value, depth: Depth, out: &mut Vec<Issue>) {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return;
    };
    let Some(def) = schema::type_def(rt) else {
        return;
    };
    let mut w = Walker {
        depth,
        out,
        path: vec![Seg::Name(rt)],
    };
    let item = Item::complex(resource, def);
    w.resource(resource, def, &item);
}

impl<'a> Walker<'a, '_> {
    fn render(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Name(n) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(n);
                }
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
                Seg::Choice(base, ty) => {
                    let _ = write!(s, ".{base}.ofType({ty})");
                }
            }
        }
        s
    }

    fn evaluate(&mut self, ids: &[usize], node: &Item<'a>, resource: &Item<'a>, root: &Item<'a>) {
        let table = &*TABLE;
        for &id in ids {
            let Some(inv) = table.invariants.get(id) else {
                continue;
            };
            if self.out.len() >= MAX_ISSUES {
                return;
            }
            if self.depth == Depth::Write && inv.severity != Severity::Error {
                continue;
            }
            // dom-6 asks a resource for its narrative; a contained resource is described by its
            // container's narrative (R4 resource.html), so it is not asked.
            if &*inv.key == "dom-6" && is_contained(resource, root) {
                continue;
            }
            match inv.holds_on(node.clone(), resource.clone(), root.clone()) {
                Ok(true) => {}
                Ok(false) => {
                    let issue = Issue {
                        severity: inv.severity,
                        code: IssueType::Invariant,
                        path: self.render(),
                        message: inv.message(),
                    };
                    self.out.push(issue);
                }
                Err(_) if self.depth == Depth::Report => {
                    let issue = Issue {
                        severity: Severity::Information,
                        code: IssueType::NotSupported,
                        path: self.render(),
                        message: format!("{}: this invariant could not be evaluated", inv.key),
                    };
                    self.out.push(issue);
                }
                Err(_) => {}
            }
        }
    }

    /// A resource: its own constraints (and DomainResource's), then its content. It is its own
    /// `%resource`; `root` is the container of a contained resource, else the resource itself.
    fn resource(&mut self, value: &'a Value, def: &'static TypeDef, root: &Item<'a>) {
        let item = Item::complex(value, def);
        let table = &*TABLE;
        if let Some(ids) = table.by_type.get(&addr(def)) {
            self.evaluate(ids, &item, &item, root);
        }
        if def.element("text").is_some() {
            if let Some(ids) = table.by_type.get(&table.domain_resource) {
                self.evaluate(ids, &item, &item, root);
            }
        }
        self.content(value, def, &item, root);
    }

    /// The elements of an object of type `def`.
    fn content(
        &mut self,
        value: &'a Value,
        def: &'static TypeDef,
        resource: &Item<'a>,
        root: &Item<'a>,
    ) {
        let Value::Object(map) = value else { return };
        let table = &*TABLE;
        for (key, v) in map {
            let (el, shadow_only) = match def.element(key) {
                Some(el) => (el, false),
                None => match key.strip_prefix('_').and_then(|b| def.element(b)) {
                    Some(el) => (el, true),
                    None => continue,
                },
            };
            let seg = match el.choice {
                Some(g) => Seg::Choice(def.choice_name(g), kind_name(el)),
                None => Seg::Name(el.name()),
            };
            self.path.push(seg);
            if shadow_only {
                // A primitive's id and extensions: extensions hold typed values too.
                if let Some(element) = schema::type_def("Element") {
                    self.each(v, el.is_array, |w, v| w.complex(v, element, resource, root));
                }
            } else {
                let element_ids = table.by_element.get(&addr(el));
                let shadow = if el.is_primitive() {
                    map.get(el.shadow_name())
                } else {
                    None
                };
                match el.kind {
                    Kind::Primitive(_) => {
                        if let Some(ids) = element_ids {
                            let shadows = shadow.and_then(Value::as_array);
                            let mut i = 0;
                            self.each(v, el.is_array, |w, v| {
                                let s = if el.is_array {
                                    shadows.and_then(|a| a.get(i))
                                } else {
                                    shadow
                                };
                                i += 1;
                                if let Some(node) = Item::node(Some(v), s, el.kind) {
                                    w.evaluate(ids, &node, resource, root);
                                }
                            });
                        }
                    }
                    Kind::Complex(i) => {
                        if let Some(t) = schema::type_at(i) {
                            self.each(v, el.is_array, |w, v| {
                                if let Some(ids) = element_ids {
                                    w.evaluate(ids, &Item::complex(v, t), resource, root);
                                }
                                w.complex(v, t, resource, root);
                            });
                        }
                    }
                    Kind::Resource => {
                        let contained = key == "contained";
                        self.each(v, el.is_array, |w, v| {
                            let Some(rt) = v.get("resourceType").and_then(Value::as_str) else {
                                return;
                            };
                            let Some(t) = schema::type_def(rt) else {
                                return;
                            };
                            if contained {
                                w.resource(v, t, root);
                            } else {
                                let own = Item::complex(v, t);
                                w.resource(v, t, &own);
                            }
                        });
                    }
                }
            }
            self.path.pop();
        }
    }

    /// A complex datatype or backbone element: its type's constraints, then its content.
    fn complex(
        &mut self,
        value: &'a Value,
        def: &'static TypeDef,
        resource: &Item<'a>,
        root: &Item<'a>,
    ) {
        if let Some(ids) = TABLE.by_type.get(&addr(def)) {
            self.evaluate(ids, &Item::complex(value, def), resource, root);
        }
        self.content(value, def, resource, root);
    }

    /// Each value of a property (indexed when the element repeats).
    fn each(&mut self, v: &'a Value, is_array: bool, mut f: impl FnMut(&mut Self, &'a Value)) {
        match v {
            Value::Array(items) if is_array => {
                for (i, item) in items.iter().enumerate() {
                    if item.is_null() {
                        continue;
                    }
                    self.path.push(Seg::Index(i));
                    f(self, item);
                    self.path.pop();
                }
            }
            Value::Null => {}
            v => f(self, v),
        }
    }
}

fn is_contained(resource: &Item, root: &Item) -> bool {
    match (resource, root) {
        (Item::Node { value: Some(a), .. }, Item::Node { value: Some(b), .. }) => {
            !std::ptr::eq(*a, *b)
        }
        _ => false,
    }
}

fn kind_name(el: &Element) -> &'static str {
    match el.kind {
        Kind::Primitive(p) => p.name(),
        Kind::Complex(i) => schema::type_at(i).map_or("", TypeDef::name),
        Kind::Resource => "Resource",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validate::{validate_report, validate_resource};
    use serde_json::json;

    /// The invariant issues of a resource at `$validate` depth, as (severity, key, path).
    fn report(resource: &Value) -> Vec<(Severity, String, String)> {
        validate_report(resource)
            .into_iter()
            .filter(|i| i.code == IssueType::Invariant)
            .map(|i| {
                let key = i.message.split(':').next().unwrap_or("").to_string();
                (i.severity, key, i.path)
            })
            .collect()
    }

    fn refused(resource: &Value) -> Vec<(String, String)> {
        match validate_resource(resource) {
            Ok(()) => Vec::new(),
            Err(issues) => issues
                .into_iter()
                .map(|i| {
                    assert_eq!(i.code, IssueType::Invariant, "{i:?}");
                    let key = i.message.split(':').next().unwrap_or("").to_string();
                    (key, i.path)
                })
                .collect(),
        }
    }

    fn errors(key: &str, path: &str) -> Vec<(String, String)> {
        vec![(key.to_string(), path.to_string())]
    }

    fn narrative() -> Value {
        json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"})
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "text": narrative(),
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
            "referenceRange": [{"low": {"value": 60, "system": "http://unitsofmeasure.org", "code": "/min"}}]
        })
    }

    #[test]
    fn every_r4_invariant_compiles() {
        let failed: Vec<String> = TABLE
            .invariants
            .iter()
            .filter_map(|i| i.path.as_ref().err().map(|e| format!("{}: {}", i.key, e.0)))
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(TABLE.invariants.len() > 200, "{}", TABLE.invariants.len());
        // Natively checked constraints are not evaluated twice.
        assert!(TABLE
            .invariants
            .iter()
            .all(|i| NATIVE.iter().all(|(k, _)| *k != &*i.key)));
    }

    #[test]
    fn valid_resources_pass() {
        assert_eq!(validate_resource(&observation()), Ok(()));
        assert!(
            report(&observation()).is_empty(),
            "{:?}",
            report(&observation())
        );
        let patient = json!({
            "resourceType": "Patient",
            "text": narrative(),
            "name": [{"family": "Doe", "period": {"start": "2020-01-01", "end": "2021-06"}}],
            "contact": [{"name": {"family": "Roe"}}],
            "managingOrganization": {"reference": "#org"},
            "contained": [{"resourceType": "Organization", "id": "org", "name": "Clinic"}]
        });
        assert_eq!(validate_resource(&patient), Ok(()));
        assert!(report(&patient).is_empty(), "{:?}", report(&patient));
    }

    #[test]
    fn obs_6_and_obs_7_are_refused_at_the_observation() {
        let mut o = observation();
        o["dataAbsentReason"] = json!({"text": "unknown"});
        assert_eq!(refused(&o), errors("obs-6", "Observation"));

        let mut o = observation();
        o["component"] = json!([{"code": o["code"].clone(), "valueString": "x"}]);
        assert_eq!(refused(&o), errors("obs-7", "Observation"));
        // A component with another code is fine.
        o["component"][0]["code"]["coding"][0]["code"] = json!("8480-6");
        assert_eq!(refused(&o), Vec::new());
    }

    #[test]
    fn pat_1_is_refused_at_the_contact() {
        let p = json!({
            "resourceType": "Patient",
            "contact": [{"name": {"family": "Roe"}}, {"gender": "female"}]
        });
        assert_eq!(refused(&p), errors("pat-1", "Patient.contact[1]"));
    }

    #[test]
    fn datatype_invariants_apply_wherever_the_type_is() {
        let backwards = json!({"start": "2021-03-04T10:00:00Z", "end": "2021-03-04T09:00:00Z"});
        let p = json!({"resourceType": "Patient", "name": [{"family": "Doe"}, {"family": "Roe", "period": backwards}]});
        assert_eq!(refused(&p), errors("per-1", "Patient.name[1].period"));
        // Inside an extension's value, named by the choice.
        let p = json!({"resourceType": "Patient", "extension": [
            {"url": "http://example.org/x", "valuePeriod": backwards}]});
        assert_eq!(
            refused(&p),
            errors("per-1", "Patient.extension[0].value.ofType(Period)")
        );
        // Inside a contained resource and a backbone element: qty-3 (a code needs a system).
        let o = json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
            "contained": [{"resourceType": "Observation", "id": "o", "status": "final",
                "code": {"text": "x"}, "referenceRange": [{"low": {"value": 1, "code": "mg"}}]}]});
        assert_eq!(
            refused(&o),
            errors("qty-3", "Patient.contained[0].referenceRange[0].low")
        );
        // Time zones are compared as instants: 10:00+02:00 is before 09:00Z.
        let p = json!({"resourceType": "Patient", "name": [{"family": "Doe",
            "period": {"start": "2021-03-04T10:00:00+02:00", "end": "2021-03-04T09:00:00Z"}}]});
        assert_eq!(refused(&p), Vec::new());
        // Different precisions that overlap are not refused.
        let p = json!({"resourceType": "Patient", "name": [{"family": "Doe",
            "period": {"start": "2021-03", "end": "2021-03-01"}}]});
        assert_eq!(refused(&p), Vec::new());
        // A contained resource may point at its container.
        let p = json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
            "contained": [{"resourceType": "Observation", "id": "o", "status": "final",
                "code": {"text": "x"}, "subject": {"reference": "#"}}]});
        assert_eq!(refused(&p), Vec::new());
        // ref-1: a local reference needs its contained resource.
        let p =
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#missing"}});
        let found = refused(&p);
        assert!(
            found.contains(&("ref-1".into(), "Patient.managingOrganization".into())),
            "{found:?}"
        );
    }

    #[test]
    fn warnings_are_reported_only_by_validate() {
        // dom-6: a resource should have a narrative.
        let p = json!({"resourceType": "Patient", "name": [{"family": "Doe"}]});
        assert_eq!(validate_resource(&p), Ok(()));
        assert_eq!(
            report(&p),
            [(
                Severity::Warning,
                "dom-6".to_string(),
                "Patient".to_string()
            )]
        );
        let mut checked = Vec::new();
        check(&p, Depth::Write, &mut checked);
        assert!(checked.is_empty());
    }

    #[test]
    fn a_profile_constraint_can_be_evaluated_on_its_own() {
        let inv = Invariant::compile(
            "us-1",
            "error",
            "a name needs a family name",
            "name.all(family.exists())",
        );
        let p = json!({"resourceType": "Patient", "name": [{"family": "Doe"}, {"given": ["J"]}]});
        assert_eq!(inv.holds(&p, "Patient", &p), Ok(false));
        let name = &p["name"][0];
        let on_name = Invariant::compile("us-2", "error", "family", "family.exists()");
        assert_eq!(on_name.holds(name, "HumanName", &p), Ok(true));
        assert_eq!(on_name.message(), "us-2: family");
        let bad = Invariant::compile("us-3", "error", "x", "name.memberOf('http://x')");
        assert!(bad.holds(&p, "Patient", &p).is_err());
    }
}
