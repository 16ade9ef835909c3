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
    // objects, arrays and nulls (validate.rs).
    ("ele-1", "validate.rs (structural walk)"),
    // "Must have either extensions or value[x], not both": validate.rs `check_extension`.
    ("ext-1", "validate.rs (extensions)"),
    // Contained resources referenced from the container: validate.rs.
    ("dom-3", "validate.rs (contained resources)"),
    // No security labels on contained resources: validate.rs.
    ("dom-5", "validate.rs (contained resources)"),
    // The narrative's XHTML: a real XML parser with R4's allow-list.
    ("txt-1", "narrative.rs"),
    ("txt-2", "narrative.rs"),
];

/// R4 4.0.1 expressions that are wrong as published, with the expression we evaluate instead
/// (`None`: not evaluated) and why. The HL7 validator carries the same corrections.
const CORRECTED: &[(&str, Option<&str>, &str)] = &[];

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
    pub fn holds(&self, node: &Value, type_name: &str, resource: &Value) -> Result<bool, Unsupported> {
        let def = schema::type_def(type_name)
            .ok_or_else(|| Unsupported(format!("unknown type {type_name}")))?;
        let res = Item::resource(resource)
            .ok_or_else(|| Unsupported("not a resource".into()))?;
        self.holds_on(Item::complex(node, def), res.clone(), res)
    }

    fn holds_on<'a>(&self, node: Item<'a>, resource: Item<'a>, root: Item<'a>) -> Result<bool, Unsupported> {
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
            let expression = match CORRECTED.iter().find(|(k, _, _)| *k == key) {
                Some((_, Some(fixed), _)) => fixed,
                Some((_, None, _)) => continue,
                None => field(3),
            };
            ids.push(t.invariants.len());
            t.invariants
                .push(Invariant::compile(key, field(1), field(2), expression));
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
    fn content(&mut self, value: &'a Value, def: &'static TypeDef, resource: &Item<'a>, root: &Item<'a>) {
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
                            let Some(t) = schema::type_def(rt) else { return };
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
    fn complex(&mut self, value: &'a Value, def: &'static TypeDef, resource: &Item<'a>, root: &Item<'a>) {
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

    #[test]
    fn every_r4_invariant_compiles() {
        let failed: Vec<String> = TABLE
            .invariants
            .iter()
            .filter_map(|i| i.path.as_ref().err().map(|e| format!("{}: {}", i.key, e.0)))
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(TABLE.invariants.len() > 200, "{}", TABLE.invariants.len());
    }
}
