//! Checking a resource against a compiled profile: the walk over the element tree and the JSON
//! together (with the location as a stack of segments), cardinality, types and choice
//! restrictions, fixed and pattern values, the bindings the profile adds or tightens, and its
//! invariants; slicing (slice cardinality, closed slicing) with [`super::slicing`]'s discriminators.

use super::slicing::slice_matches;
use super::{DiscriminatorKind, Node, Profile, Slicing, MAX_DEPTH, MAX_ISSUES};
use crate::fhir::terminology;
use crate::fhir::validate::{Depth, Issue, IssueType, Severity};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Check `resource` against `profile`: the profiled type, the root's invariants, then the tree.
pub(super) fn check(profile: &Profile, resource: &Value, depth: Depth) -> Vec<Issue> {
    let mut c = Check {
        profile,
        resource,
        depth,
        issues: Vec::new(),
        path: Vec::with_capacity(16),
    };
    let Some(map) = resource.as_object() else {
        c.error(IssueType::Structure, "a resource must be a JSON object");
        return c.issues;
    };
    if map.get("resourceType").and_then(Value::as_str) != Some(profile.resource_type.as_str()) {
        c.error(
            IssueType::Structure,
            format!("the profile constrains {}", profile.resource_type),
        );
        return c.issues;
    }
    c.path.push(Seg::Name(&profile.resource_type));
    c.invariants(&profile.root, resource, &profile.resource_type);
    c.node(&profile.root, map);
    c.issues
}

/// A segment of the current location; rendered only for an issue.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Name(&'a str),
    Index(usize),
    /// `.ofType(T)` after a choice element's name.
    OfType(&'a str),
}

/// One value found for an element: the value and, for a choice element, its type.
pub(super) struct Item<'a> {
    /// `null` for a primitive present only as `_name` (an id or extensions, no value).
    pub(super) value: &'a Value,
    /// The position in the JSON array, for a repeating element.
    index: Option<usize>,
    /// A choice element's type (`Quantity` for `valueQuantity`).
    pub(super) type_code: Option<&'a str>,
}

struct Check<'p, 'a> {
    profile: &'p Profile,
    resource: &'a Value,
    depth: Depth,
    issues: Vec<Issue>,
    path: Vec<Seg<'a>>,
}

static NULL: Value = Value::Null;

impl<'p: 'a, 'a> Check<'p, 'a> {
    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    fn render(&self) -> String {
        let mut path = String::new();
        for seg in &self.path {
            match seg {
                Seg::Name(n) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(n);
                }
                Seg::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
                Seg::OfType(t) => {
                    let _ = write!(path, ".ofType({t})");
                }
            }
        }
        path
    }

    fn error(&mut self, code: IssueType, message: impl std::fmt::Display) {
        if self.full() {
            return;
        }
        let path = self.render();
        let message = format!("{message} (profile {})", self.profile.label);
        self.issues.push(Issue::error(code, path, message));
    }

    /// Check the children of `node` in the object `map` (the current location).
    fn node(&mut self, node: &'p Node, map: &'a Map<String, Value>) {
        if self.path.len() > MAX_DEPTH {
            return;
        }
        for child in &node.children {
            if self.full() {
                return;
            }
            let items = items_of(map, child);
            self.path.push(Seg::Name(&child.name));
            self.cardinality(child, items.len(), &child.path, None);
            self.path.pop();
            for item in &items {
                self.at(child, item, |c| c.item(child, item));
            }
            if let Some(slicing) = &child.slicing {
                self.slicing(child, slicing, &items);
            }
        }
    }

    /// Run `f` with the location of `item` of `node` pushed.
    fn at(&mut self, node: &'p Node, item: &Item<'a>, f: impl FnOnce(&mut Self)) {
        let depth = self.path.len();
        self.path.push(Seg::Name(&node.name));
        if let Some(t) = item.type_code {
            self.path.push(Seg::OfType(t));
        }
        if let Some(i) = item.index {
            self.path.push(Seg::Index(i));
        }
        f(self);
        self.path.truncate(depth);
    }

    /// `count` values of `node` (or of its slice `slice`) against the profile's min and max.
    fn cardinality(&mut self, node: &Node, count: usize, element: &str, slice: Option<&str>) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let below = count < node.min;
        let above = node.max.is_some_and(|max| count > max);
        if !below && !above {
            return;
        }
        let what = match slice {
            Some(slice) => format!("{element}:{slice}"),
            None => element.to_string(),
        };
        if below {
            self.error(
                IssueType::Required,
                format_args!(
                    "{what}: minimum required = {}, but only found {count}",
                    node.min
                ),
            );
        }
        if let (true, Some(max)) = (above, node.max) {
            self.error(
                IssueType::Structure,
                format_args!("{what}: maximum allowed = {max}, but found {count}"),
            );
        }
    }

    /// One value of an element: its type, fixed and pattern value, then its own children.
    fn item(&mut self, node: &'p Node, item: &Item<'a>) {
        if node.choice {
            if let Some(t) = item.type_code {
                if !node.types.is_empty() && !node.types.iter().any(|x| x == t) {
                    self.error(
                        IssueType::Structure,
                        format_args!(
                            "{}: the type {t} is not allowed (allowed: {})",
                            node.path,
                            node.types.join(", ")
                        ),
                    );
                    return;
                }
            }
        }
        if let Some(fixed) = &node.fixed {
            if item.value != fixed {
                self.error(
                    IssueType::Value,
                    format_args!("{}: the value must be the profile's fixed value", node.path),
                );
            }
        }
        if let Some(pattern) = &node.pattern {
            if !matches_pattern(item.value, pattern) {
                self.error(
                    IssueType::Value,
                    format_args!(
                        "{}: the value does not match the profile's pattern",
                        node.path
                    ),
                );
            }
        }
        if let Some(binding) = &node.binding {
            if let Some(found) = terminology::check_binding(binding, item.value, self.depth) {
                if !self.full() {
                    let path = self.render();
                    self.issues.push(Issue {
                        severity: found.severity,
                        code: found.code,
                        path,
                        message: format!("{} (profile {})", found.message, self.profile.label),
                    });
                }
            }
        }
        if let Value::Object(map) = item.value {
            if !node.invariants.is_empty() {
                // A backbone element's definition is named by its path (`Patient.contact`).
                let type_name = match item.type_code.or(node.types.first().map(String::as_str)) {
                    Some("BackboneElement" | "Element") | None => node.path.as_str(),
                    Some(t) => t,
                };
                self.invariants(node, item.value, type_name);
            }
            self.node(node, map);
        }
    }

    /// The profile's constraints on `value` (the current location), of FHIR type `type_name`.
    fn invariants(&mut self, node: &Node, value: &Value, type_name: &str) {
        for inv in &node.invariants {
            // A warning never refuses a write: not evaluated for one.
            if self.depth == Depth::Write && inv.severity() != Severity::Error {
                continue;
            }
            match inv.holds(value, type_name, self.resource) {
                Ok(true) => {}
                Ok(false) => {
                    if self.full() {
                        return;
                    }
                    let message = format!("{} (profile {})", inv.message(), self.profile.label);
                    let path = self.render();
                    self.issues.push(match inv.severity() {
                        Severity::Warning | Severity::Information => {
                            Issue::warning(IssueType::Invariant, path, message)
                        }
                        Severity::Error | Severity::Fatal => {
                            Issue::error(IssueType::Invariant, path, message)
                        }
                    });
                }
                // Never a reason to refuse: reported as not checked.
                Err(_) if self.depth == Depth::Write => {}
                Err(_) => {
                    if self.full() {
                        return;
                    }
                    let message = format!(
                        "{}: this invariant of profile {} could not be evaluated, so it was not checked",
                        inv.key(),
                        self.profile.label
                    );
                    let path = self.render();
                    self.issues
                        .push(Issue::warning(IssueType::NotSupported, path, message));
                }
            }
        }
    }

    fn slicing(&mut self, node: &'p Node, slicing: &'p Slicing, items: &[Item<'a>]) {
        if slicing.discriminators.is_empty()
            || slicing
                .discriminators
                .iter()
                .any(|d| d.kind == DiscriminatorKind::Unsupported)
        {
            return;
        }
        let mut counts = vec![0usize; node.slices.len()];
        for item in items {
            let found = node
                .slices
                .iter()
                .position(|s| slice_matches(&slicing.discriminators, s, item));
            match found {
                Some(s) => {
                    counts[s] += 1;
                    let slice = &node.slices[s];
                    self.at(node, item, |c| c.item(&slice.node, item));
                }
                None if slicing.closed => {
                    self.at(node, item, |c| {
                        c.error(
                            IssueType::Structure,
                            format_args!(
                                "{}: this element matches none of the profile's slices, and the \
                                 slicing is closed",
                                node.path
                            ),
                        )
                    });
                }
                None => {}
            }
        }
        self.path.push(Seg::Name(&node.name));
        for (slice, count) in node.slices.iter().zip(counts) {
            self.cardinality(&slice.node, count, &node.path, Some(&slice.name));
        }
        self.path.pop();
    }
}

/// The values of `node`'s element in `map`: the JSON property (an array's items, or the single
/// value), its `_name` companion for primitives, and for a choice element the `nameType` present.
fn items_of<'a>(map: &'a Map<String, Value>, node: &'a Node) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    if node.choice {
        for (key, value) in map {
            let Some(suffix) = key.strip_prefix(node.name.as_str()) else {
                continue;
            };
            if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
            out.push(Item {
                value,
                index: None,
                type_code: Some(type_of_suffix(suffix, node)),
            });
        }
        // `_valueString` alone stands for the choice.
        if out.is_empty() {
            for key in map.keys() {
                let Some(suffix) = key.strip_prefix(node.shadow.as_str()) else {
                    continue;
                };
                if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                    out.push(Item {
                        value: &NULL,
                        index: None,
                        type_code: Some(type_of_suffix(suffix, node)),
                    });
                }
            }
        }
        return out;
    }
    let value = map.get(node.name.as_str());
    let shadow = map.get(node.shadow.as_str());
    match (value, shadow) {
        (Some(Value::Array(values)), shadow) => {
            let shadow_len = shadow.and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..values.len().max(shadow_len) {
                let v = values.get(i).unwrap_or(&NULL);
                let present =
                    !v.is_null() || shadow.and_then(|s| s.get(i)).is_some_and(|s| !s.is_null());
                if present {
                    out.push(Item {
                        value: v,
                        index: Some(i),
                        type_code: None,
                    });
                }
            }
        }
        (None, Some(Value::Array(shadow))) => {
            for (i, s) in shadow.iter().enumerate() {
                if !s.is_null() {
                    out.push(Item {
                        value: &NULL,
                        index: Some(i),
                        type_code: None,
                    });
                }
            }
        }
        (Some(v), _) if !v.is_null() => out.push(Item {
            value: v,
            index: None,
            type_code: None,
        }),
        (_, Some(s)) if !s.is_null() => out.push(Item {
            value: &NULL,
            index: None,
            type_code: None,
        }),
        _ => {}
    }
    out
}

/// The type code a choice suffix stands for (`Quantity`, `dateTime` for `DateTime`), as the
/// element's own type list spells it; a suffix of no allowed type is returned as it is.
fn type_of_suffix<'a>(suffix: &'a str, node: &'a Node) -> &'a str {
    node.types
        .iter()
        .find(|t| {
            let mut cs = t.chars();
            cs.next().is_some_and(|c| {
                suffix.starts_with(c.to_ascii_uppercase()) && suffix[1..] == *cs.as_str()
            })
        })
        .map_or(suffix, String::as_str)
}

/// Does `value` carry everything `pattern` has (R4 `pattern[x]`: arrays match when every pattern
/// item matches some value item)?
pub(super) fn matches_pattern(value: &Value, pattern: &Value) -> bool {
    match (pattern, value) {
        (Value::Object(p), Value::Object(v)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| matches_pattern(vv, pv))),
        (Value::Array(p), Value::Array(v)) => p
            .iter()
            .all(|pi| v.iter().any(|vi| matches_pattern(vi, pi))),
        // A single pattern against a repeating value, as in `coding` patterns.
        (p, Value::Array(v)) if !p.is_array() => v.iter().any(|vi| matches_pattern(vi, p)),
        (p, v) => p == v,
    }
}
