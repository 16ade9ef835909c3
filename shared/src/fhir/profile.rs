//! Profiles: a StructureDefinition's snapshot compiled once into a [`Profile`] that checks a
//! resource against the constraints the profile adds to R4 — cardinality, types (choice
//! restrictions), fixed and pattern values, slicing (discriminators `value`, `pattern`, `type`,
//! `exists`; slice cardinality; closed slicing), the bindings the profile adds or tightens (by
//! [`super::terminology`], for the value sets that ship with R4) and the invariants the profile adds
//! (FHIRPath, by [`super::invariants`]). The base R4 rules are the validator's
//! ([`super::validate`]); a profile only narrows them, so this module reports only what the
//! profile says beyond R4.
//!
//! Pure: no storage. The store finds a profile's StructureDefinition by its canonical URL, compiles
//! it here once per stored version and keeps the result.
//!
//! Not checked (yet): bindings to value sets that do not ship with R4 (an implementation guide's
//! own, or SNOMED CT / LOINC based ones); type profiles of referenced or nested elements
//! (`Reference(X-profile)`, an extension's own definition); `ordered` slicing; the `profile`
//! discriminator and discriminator paths with functions (`resolve()`, `extension(url)`): such a
//! slicing is skipped, never guessed.

use super::invariants::Invariant;
use super::printable;
use super::terminology::{self, Binding, BoundType, Strength};
use super::validate::{Depth, Issue, IssueType, Severity};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Issues a single profile check reports at most.
const MAX_ISSUES: usize = 100;
/// Nesting the check follows; a snapshot is finite, but a document assembled in code is not.
const MAX_DEPTH: usize = 64;

/// A compiled profile: what [`Profile::check`] needs, nothing else.
#[derive(Debug)]
pub struct Profile {
    url: String,
    /// How issues name the profile: its URL, or its name when the URL is too long to echo.
    label: String,
    resource_type: String,
    root: Node,
}

/// Why a StructureDefinition cannot be used as a profile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the StructureDefinition has no snapshot (only snapshot profiles are supported)")]
    NoSnapshot,
    #[error("the StructureDefinition is not a resource profile")]
    NotAResourceProfile,
    #[error("the StructureDefinition's snapshot is malformed: {0}")]
    Malformed(&'static str),
}

/// One element of the snapshot, with its children and slices.
#[derive(Debug)]
struct Node {
    /// The element path of the definition (`Patient.name`), for messages.
    path: String,
    /// The JSON name without `[x]` (`name`, `deceased`).
    name: String,
    /// `_name`: where a primitive's id and extensions are.
    shadow: String,
    choice: bool,
    min: u32,
    /// `None` is `*`.
    max: Option<u32>,
    /// Type codes (`HumanName`, `dateTime`).
    types: Vec<String>,
    /// Canonicals of the types' profiles, without version (an extension slice's URL).
    type_profiles: Vec<String>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    /// The constraints the profile adds (those of R4 itself are the validator's).
    invariants: Vec<Invariant>,
    /// The binding as the snapshot states it (`strength`, value set canonical), until
    /// [`settle_bindings`] keeps it in `binding` only if it differs from R4's and can be judged.
    stated_binding: Option<(Strength, String)>,
    binding: Option<Binding>,
    children: Vec<Node>,
    slicing: Option<Slicing>,
    slices: Vec<Slice>,
}

#[derive(Debug)]
struct Slicing {
    discriminators: Vec<Discriminator>,
    closed: bool,
}

#[derive(Debug)]
struct Discriminator {
    kind: DiscriminatorKind,
    /// The path relative to the sliced element, split on `.` (`$this` is the empty path).
    path: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscriminatorKind {
    Value,
    Pattern,
    Type,
    Exists,
    /// `profile` or a path this module cannot follow (`resolve()`): the slicing is not checked.
    Unsupported,
}

#[derive(Debug)]
struct Slice {
    name: String,
    node: Node,
}

impl Profile {
    /// Compile a StructureDefinition (JSON) that profiles a resource type.
    pub fn compile(sd: &Value) -> Result<Profile, CompileError> {
        if sd.get("kind").and_then(Value::as_str) != Some("resource") {
            return Err(CompileError::NotAResourceProfile);
        }
        let resource_type = sd
            .get("type")
            .and_then(Value::as_str)
            .ok_or(CompileError::NotAResourceProfile)?
            .to_string();
        let elements = sd
            .get("snapshot")
            .and_then(|s| s.get("element"))
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
            .ok_or(CompileError::NoSnapshot)?;
        let root = build_tree(elements)?;
        if root.path != resource_type {
            return Err(CompileError::Malformed(
                "the first element is not the profiled type",
            ));
        }
        let url = sd
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let label = match printable(&url) {
            short if short == url => short,
            _ => printable(sd.get("name").and_then(Value::as_str).unwrap_or_default()),
        };
        Ok(Profile {
            url,
            label,
            resource_type,
            root,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every way `resource` fails this profile, in document order: errors, and warnings (a
    /// warning-severity invariant that fails, one this module cannot evaluate); empty when it
    /// conforms.
    pub fn check(&self, resource: &Value) -> Vec<Issue> {
        self.check_at(resource, Depth::Report)
    }

    /// [`Profile::check`] for a write ([`Depth::Write`]: what could refuse it, binding warnings
    /// and notes left out) or for `$validate` ([`Depth::Report`]).
    pub fn check_at(&self, resource: &Value, depth: Depth) -> Vec<Issue> {
        let mut c = Check {
            profile: self,
            resource,
            depth,
            issues: Vec::new(),
            path: Vec::with_capacity(16),
        };
        let Some(map) = resource.as_object() else {
            c.error(IssueType::Structure, "a resource must be a JSON object");
            return c.issues;
        };
        if map.get("resourceType").and_then(Value::as_str) != Some(self.resource_type.as_str()) {
            c.error(
                IssueType::Structure,
                format!("the profile constrains {}", self.resource_type),
            );
            return c.issues;
        }
        c.path.push(Seg::Name(&self.resource_type));
        c.invariants(&self.root, resource, &self.resource_type);
        c.node(&self.root, map);
        c.issues
    }
}

/// Build the element tree from snapshot order, by element id: `A.b` is a child of `A`,
/// `A.b:s` a slice of `A.b`, `A.b:s.c` a child of that slice.
fn build_tree(elements: &[Value]) -> Result<Node, CompileError> {
    struct Flat {
        id: String,
        node: Node,
        /// `(parent id, is a slice of it)`.
        parent: Option<(String, Option<String>)>,
    }
    let mut flat: Vec<Flat> = Vec::with_capacity(elements.len());
    for (i, e) in elements.iter().enumerate() {
        let path = e
            .get("path")
            .and_then(Value::as_str)
            .ok_or(CompileError::Malformed("an element has no path"))?;
        let id = e.get("id").and_then(Value::as_str).unwrap_or(path);
        let parent = if i == 0 {
            None
        } else {
            let (head, last) = id
                .rsplit_once('.')
                .ok_or(CompileError::Malformed("an element id outside the type"))?;
            match last.split_once(':') {
                // `A.b:s` (and a reslice `A.b:s/t`, kept as a slice of `A.b`)
                Some((base, slice)) => Some((format!("{head}.{base}"), Some(slice.to_string()))),
                None => Some((head.to_string(), None)),
            }
        };
        flat.push(Flat {
            id: id.to_string(),
            node: compile_node(e, path)?,
            parent,
        });
    }
    // Attach from the last element up, so a node has all its children before it is attached.
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, f) in flat.iter().enumerate() {
        index.insert(f.id.clone(), i);
    }
    let mut nodes: Vec<Option<Node>> = Vec::with_capacity(flat.len());
    let mut parents = Vec::with_capacity(flat.len());
    for f in flat {
        nodes.push(Some(f.node));
        parents.push(f.parent);
    }
    for i in (1..nodes.len()).rev() {
        let Some((parent_id, slice)) = parents[i].take() else {
            continue;
        };
        let Some(&p) = index.get(&parent_id) else {
            return Err(CompileError::Malformed("an element's parent is missing"));
        };
        if p >= i {
            return Err(CompileError::Malformed("elements are out of order"));
        }
        let Some(node) = nodes[i].take() else {
            continue;
        };
        let Some(parent) = nodes[p].as_mut() else {
            continue;
        };
        match slice {
            Some(name) => parent.slices.push(Slice { name, node }),
            None => parent.children.push(node),
        }
    }
    let mut root = nodes
        .first_mut()
        .and_then(Option::take)
        .ok_or(CompileError::NoSnapshot)?;
    fn restore_order(n: &mut Node) {
        n.children.reverse();
        n.slices.reverse();
        n.children.iter_mut().for_each(restore_order);
        n.slices.iter_mut().for_each(|s| restore_order(&mut s.node));
    }
    restore_order(&mut root);
    let own_type = root.path.clone();
    settle_bindings(&mut root, &own_type);
    Ok(root)
}

/// Keep a child's binding only where the profile changes R4's (R4's own are the validator's) and
/// the value set ships here; `own_type` names `node`'s definition as the binding table does (a
/// resource, a datatype, or a backbone element's path).
fn settle_bindings(node: &mut Node, own_type: &str) {
    for child in &mut node.children {
        settle_binding(child, own_type);
    }
}

/// [`settle_bindings`] for one element `child` of the definition `own_type`, then its children.
fn settle_binding(child: &mut Node, own_type: &str) {
    if let Some((strength, canonical)) = child.stated_binding.take() {
        let bound = child.types.iter().find_map(|t| match t.as_str() {
            "code" => Some((BoundType::Code, t.as_str())),
            "Coding" => Some((BoundType::Coding, t.as_str())),
            "CodeableConcept" => Some((BoundType::CodeableConcept, t.as_str())),
            _ => None,
        });
        let url = canonical.split('|').next().unwrap_or(&canonical);
        if let (Some((bound_type, type_code)), Some(vs)) =
            (bound, terminology::value_set(&canonical))
        {
            let property = if child.choice {
                format!("{}{}", child.name, upper_first(type_code))
            } else {
                child.name.clone()
            };
            let base = terminology::binding(own_type, &property);
            if !base.is_some_and(|b| b.strength == strength && b.value_set == url) {
                child.binding = Some(Binding::to(strength, vs, bound_type));
            }
        }
    }
    let inner = match child_type(child) {
        Some(t) => t.to_string(),
        None => child.path.clone(),
    };
    for grandchild in &mut child.children {
        settle_binding(grandchild, &inner);
    }
    // A slice is the element again, narrowed: bound and defined where the element is.
    for slice in &mut child.slices {
        settle_binding(&mut slice.node, own_type);
    }
}

/// The definition a node's children belong to: its one complex datatype, or (a backbone element,
/// several types, none) `None`, meaning its own path.
fn child_type(node: &Node) -> Option<&str> {
    match node.types.as_slice() {
        [t] if t != "BackboneElement"
            && t != "Element"
            && t.starts_with(|c: char| c.is_ascii_uppercase()) =>
        {
            Some(t.as_str())
        }
        _ => None,
    }
}

fn upper_first(s: &str) -> String {
    let mut cs = s.chars();
    match cs.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + cs.as_str(),
        None => String::new(),
    }
}

fn compile_node(e: &Value, path: &str) -> Result<Node, CompileError> {
    let last = path.rsplit('.').next().unwrap_or(path);
    let (name, choice) = match last.strip_suffix("[x]") {
        Some(base) => (base, true),
        None => (last, false),
    };
    let min = e
        .get("min")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    let max = match e.get("max").and_then(Value::as_str) {
        None | Some("*") => None,
        Some(m) => Some(
            m.parse::<u32>()
                .map_err(|_| CompileError::Malformed("an element's max is not a number"))?,
        ),
    };
    let mut types = Vec::new();
    let mut type_profiles = Vec::new();
    for t in e
        .get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(code) = t.get("code").and_then(Value::as_str) {
            types.push(code.to_string());
        }
        for p in t
            .get("profile")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_str() {
                type_profiles.push(p.split('|').next().unwrap_or(p).to_string());
            }
        }
    }
    let mut fixed = None;
    let mut pattern = None;
    if let Some(map) = e.as_object() {
        for (k, v) in map {
            if is_typed_key(k, "fixed") {
                fixed = Some(v.clone());
            } else if is_typed_key(k, "pattern") {
                pattern = Some(v.clone());
            }
        }
    }
    let invariants = e
        .get("constraint")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| {
            // R4's own constraints (`source` a core definition) are already checked for every
            // resource by the validator.
            !c.get("source")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(CORE_DEFINITIONS))
        })
        .filter_map(|c| {
            let text = |k: &str| c.get(k).and_then(Value::as_str);
            Some(Invariant::compile(
                text("key")?,
                text("severity").unwrap_or("error"),
                text("human").unwrap_or_default(),
                text("expression")?,
            ))
        })
        .collect();
    let stated_binding = e.get("binding").and_then(|b| {
        let strength = match b.get("strength").and_then(Value::as_str)? {
            "required" => Strength::Required,
            "extensible" => Strength::Extensible,
            "preferred" => Strength::Preferred,
            _ => return None,
        };
        Some((strength, b.get("valueSet")?.as_str()?.to_string()))
    });
    let slicing = e.get("slicing").map(|s| Slicing {
        discriminators: s
            .get("discriminator")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(compile_discriminator)
            .collect(),
        closed: s.get("rules").and_then(Value::as_str) == Some("closed"),
    });
    Ok(Node {
        path: path.to_string(),
        name: name.to_string(),
        shadow: format!("_{name}"),
        choice,
        min,
        max,
        types,
        type_profiles,
        fixed,
        pattern,
        invariants,
        stated_binding,
        binding: None,
        children: Vec::new(),
        slicing,
        slices: Vec::new(),
    })
}

/// Where R4's own definitions live; their constraints are not a profile's.
const CORE_DEFINITIONS: &str = "http://hl7.org/fhir/StructureDefinition/";

/// `fixedCode`, `patternCodeableConcept`: the prefix, then a type name.
fn is_typed_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

fn compile_discriminator(d: &Value) -> Discriminator {
    let path = d.get("path").and_then(Value::as_str).unwrap_or("$this");
    let kind = match d.get("type").and_then(Value::as_str) {
        Some("value") => DiscriminatorKind::Value,
        Some("pattern") => DiscriminatorKind::Pattern,
        Some("type") => DiscriminatorKind::Type,
        Some("exists") => DiscriminatorKind::Exists,
        _ => DiscriminatorKind::Unsupported,
    };
    let segments: Vec<String> = path
        .split('.')
        .filter(|s| *s != "$this")
        .map(str::to_string)
        .collect();
    // Only plain element names are followed (no functions such as `resolve()`, `extension(..)`).
    let plain = segments
        .iter()
        .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
    Discriminator {
        kind: if plain {
            kind
        } else {
            DiscriminatorKind::Unsupported
        },
        path: segments,
    }
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
struct Item<'a> {
    /// `null` for a primitive present only as `_name` (an id or extensions, no value).
    value: &'a Value,
    /// The position in the JSON array, for a repeating element.
    index: Option<usize>,
    /// A choice element's type (`Quantity` for `valueQuantity`).
    type_code: Option<&'a str>,
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
fn matches_pattern(value: &Value, pattern: &Value) -> bool {
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

/// Does `item` belong to `slice` by every discriminator?
fn slice_matches(discriminators: &[Discriminator], slice: &Slice, item: &Item<'_>) -> bool {
    discriminators.iter().all(|d| {
        let def = descend(&slice.node, &d.path);
        match d.kind {
            DiscriminatorKind::Value | DiscriminatorKind::Pattern => {
                let expected = def
                    .and_then(|n| n.fixed.as_ref().or(n.pattern.as_ref()))
                    .map(Expected::Value)
                    .or_else(|| {
                        // An extension slice names its URL by its type's profile.
                        (d.path == ["url"])
                            .then(|| slice.node.type_profiles.first())
                            .flatten()
                            .map(|u| Expected::Url(u.as_str()))
                    });
                let Some(expected) = expected else {
                    return false;
                };
                values_at(item.value, &d.path)
                    .iter()
                    .any(|v| match &expected {
                        Expected::Value(e) => matches_pattern(v, e),
                        Expected::Url(u) => v.as_str() == Some(u),
                    })
            }
            DiscriminatorKind::Type => {
                let Some(def) = def else { return false };
                if d.path.is_empty() {
                    if let Some(t) = item.type_code {
                        return def.types.iter().any(|x| x == t);
                    }
                }
                // A resource in `Bundle.entry.resource` or `contained`: its resourceType.
                values_at(item.value, &d.path).iter().any(|v| {
                    v.get("resourceType")
                        .and_then(Value::as_str)
                        .is_some_and(|rt| def.types.iter().any(|x| x == rt))
                })
            }
            DiscriminatorKind::Exists => {
                let Some(def) = def else { return false };
                let present = !values_at(item.value, &d.path).is_empty();
                if def.min >= 1 {
                    present
                } else if def.max == Some(0) {
                    !present
                } else {
                    false
                }
            }
            DiscriminatorKind::Unsupported => false,
        }
    })
}

enum Expected<'a> {
    Value(&'a Value),
    Url(&'a str),
}

/// The definition at a discriminator path below a slice (the slice itself for `$this`).
fn descend<'n>(node: &'n Node, path: &[String]) -> Option<&'n Node> {
    let mut n = node;
    for seg in path {
        n = n.children.iter().find(|c| c.name == *seg)?;
    }
    Some(n)
}

/// The values at a plain path below `value` (arrays flattened, as FHIRPath does).
fn values_at<'a>(value: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut current = vec![value];
    for seg in path {
        let mut next = Vec::new();
        for v in current {
            match v.get(seg.as_str()) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(Value::Null) | None => {}
                Some(x) => next.push(x),
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A StructureDefinition of the IPS 2.0.0 package (`CARAPACE_IPS_PACKAGE`), if fetched.
    fn ips(name: &str) -> Option<Value> {
        let Some(dir) = std::env::var_os("CARAPACE_IPS_PACKAGE") else {
            eprintln!("SKIPPED: set CARAPACE_IPS_PACKAGE to the hl7.fhir.uv.ips 2.0.0 package dir");
            return None;
        };
        let text = std::fs::read_to_string(std::path::Path::new(&dir).join(name)).unwrap();
        Some(serde_json::from_str(&text).unwrap())
    }

    fn paths(issues: &[Issue]) -> Vec<(&str, IssueType)> {
        issues.iter().map(|i| (i.path.as_str(), i.code)).collect()
    }

    const PATIENT: &str = "StructureDefinition-Patient-uv-ips.json";

    #[test]
    fn ips_patient_needs_a_name_and_a_birth_date() {
        let Some(sd) = ips(PATIENT) else { return };
        let profile = Profile::compile(&sd).unwrap();
        assert_eq!(
            profile.url(),
            "http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips"
        );
        let good = json!({"resourceType": "Patient", "name": [{"family": "Doe"}],
            "birthDate": "1970-01-01", "identifier": [{"value": "a"}, {"value": "b"}]});
        assert_eq!(profile.check(&good), vec![]);
        let bad = json!({"resourceType": "Patient", "gender": "female"});
        let issues = profile.check(&bad);
        assert_eq!(
            paths(&issues),
            [
                ("Patient.name", IssueType::Required),
                ("Patient.birthDate", IssueType::Required)
            ],
            "{issues:?}"
        );
        assert!(issues.iter().all(Issue::is_error));
        assert!(issues[0].message.contains("Patient-uv-ips"), "{issues:?}");
        // ips-pat-1 (a profile invariant): a name needs a family, given or text.
        let nameless = json!({"resourceType": "Patient", "name": [{"text": "x"}, {"use": "official"}],
            "birthDate": "1970"});
        let issues = profile.check(&nameless);
        assert_eq!(
            paths(&issues),
            [("Patient.name[1]", IssueType::Invariant)],
            "{issues:?}"
        );
        assert!(issues[0].message.starts_with("ips-pat-1: "), "{issues:?}");
        // A birth date carried only as an extension (`_birthDate`) is present.
        let shadow = json!({"resourceType": "Patient", "name": [{"text": "x"}],
            "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}});
        assert_eq!(profile.check(&shadow), vec![]);
        let wrong_type = json!({"resourceType": "Observation"});
        assert_eq!(
            paths(&profile.check(&wrong_type)),
            [("", IssueType::Structure)]
        );
    }

    #[test]
    fn closed_extension_slicing_refuses_unknown_extensions() {
        let Some(mut sd) = ips(PATIENT) else { return };
        let elements = sd["snapshot"]["element"].as_array_mut().unwrap();
        let ext = elements
            .iter_mut()
            .find(|e| e["id"] == "Patient.extension")
            .unwrap();
        ext["slicing"]["rules"] = json!("closed");
        let profile = Profile::compile(&sd).unwrap();
        let pronouns = "http://hl7.org/fhir/StructureDefinition/individual-pronouns";
        let known = json!({"resourceType": "Patient", "name": [{"text": "x"}],
            "birthDate": "1970", "extension": [{"url": pronouns, "valueString": "x"}]});
        assert_eq!(profile.check(&known), vec![]);
        let unknown = json!({"resourceType": "Patient", "name": [{"text": "x"}],
            "birthDate": "1970", "extension": [{"url": pronouns, "valueString": "x"},
            {"url": "http://example.org/unknown", "valueString": "x"}]});
        assert_eq!(
            paths(&profile.check(&unknown)),
            [("Patient.extension[1]", IssueType::Structure)]
        );
        // Open as published: the same unknown extension is fine.
        let open = Profile::compile(&ips(PATIENT).unwrap()).unwrap();
        assert_eq!(open.check(&unknown), vec![]);
    }

    #[test]
    fn a_binding_the_profile_tightens_is_checked() {
        let Some(mut sd) = ips(PATIENT) else { return };
        let elements = sd["snapshot"]["element"].as_array_mut().unwrap();
        let marital = elements
            .iter_mut()
            .find(|e| e["id"] == "Patient.maritalStatus")
            .unwrap();
        // R4 binds maritalStatus extensibly; this profile requires the value set.
        marital["binding"]["strength"] = json!("required");
        let profile = Profile::compile(&sd).unwrap();
        let with_status = |code: &str| {
            json!({"resourceType": "Patient", "name": [{"text": "x"}], "birthDate": "1970",
                "maritalStatus": {"coding": [{"system":
                    "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": code}]}})
        };
        assert_eq!(profile.check(&with_status("M")), vec![]);
        let issues = profile.check_at(&with_status("Q"), Depth::Write);
        assert_eq!(
            paths(&issues),
            [("Patient.maritalStatus", IssueType::CodeInvalid)],
            "{issues:?}"
        );
        assert!(issues[0].is_error());
        // As published (R4's own binding, and R4's own `name.use`), the validator's business.
        let published = Profile::compile(&ips(PATIENT).unwrap()).unwrap();
        let mut odd_use = with_status("Q");
        odd_use["name"][0]["use"] = json!("nickname-ish");
        assert_eq!(published.check(&odd_use), vec![]);
    }

    fn tobacco() -> Value {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2",
                "display": "Tobacco smoking status"}], "text": "Smoking"},
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2020-01-01"})
    }

    #[test]
    fn patterns_fixed_cardinality_and_choice_types() {
        let Some(sd) = ips("StructureDefinition-Observation-tobaccouse-uv-ips.json") else {
            return;
        };
        let profile = Profile::compile(&sd).unwrap();
        assert_eq!(profile.check(&tobacco()), vec![]);
        let mut wrong_code = tobacco();
        wrong_code["code"]["coding"][0]["code"] = json!("1234-5");
        assert_eq!(
            paths(&profile.check(&wrong_code)),
            [("Observation.code", IssueType::Value)]
        );
        let mut period = tobacco();
        period.as_object_mut().unwrap().remove("effectiveDateTime");
        period["effectivePeriod"] = json!({"start": "2020"});
        assert_eq!(
            paths(&profile.check(&period)),
            [("Observation.effective.ofType(Period)", IssueType::Structure)]
        );
        let mut component = tobacco();
        component["component"] = json!([{"code": {"text": "x"}}]);
        assert_eq!(
            paths(&profile.check(&component)),
            [("Observation.component", IssueType::Structure)]
        );
        // A fixed value must be the value exactly (Flag-alert fixes `status`).
        let Some(flag) = ips("StructureDefinition-Flag-alert-uv-ips.json") else {
            return;
        };
        let flag = Profile::compile(&flag).unwrap();
        let alert = json!({"resourceType": "Flag", "status": "inactive", "code": {"text": "x"},
            "subject": {"reference": "Patient/p"}});
        assert!(paths(&flag.check(&alert)).contains(&("Flag.status", IssueType::Value)));
    }

    #[test]
    fn value_slices_count_their_matches() {
        let Some(sd) =
            ips("StructureDefinition-Observation-results-laboratory-pathology-uv-ips.json")
        else {
            return;
        };
        let profile = Profile::compile(&sd).unwrap();
        let lab = |category: &str| {
            json!({"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": category}]}],
                "code": {"text": "x"}, "subject": {"reference": "Patient/p"},
                "effectiveDateTime": "2020", "performer": [{"reference": "Practitioner/x"}],
                "valueString": "x"})
        };
        assert_eq!(profile.check(&lab("laboratory")), vec![]);
        // ips-2, the profile's invariant on the resource: a value, a reason for its absence, ...
        let mut valueless = lab("laboratory");
        valueless.as_object_mut().unwrap().remove("valueString");
        let issues = profile.check(&valueless);
        assert_eq!(paths(&issues), [("Observation", IssueType::Invariant)]);
        assert!(issues[0].message.starts_with("ips-2: "), "{issues:?}");
        assert!(issues[0].is_error());
        let issues = profile.check(&lab("imaging"));
        assert_eq!(
            paths(&issues),
            [("Observation.category", IssueType::Required)],
            "{issues:?}"
        );
        assert!(issues[0].message.contains("category:laboratory"));
        let mut twice = lab("laboratory");
        let again = twice["category"][0].clone();
        twice["category"].as_array_mut().unwrap().push(again);
        assert_eq!(
            paths(&profile.check(&twice)),
            [("Observation.category", IssueType::Structure)]
        );
    }

    /// Every example the IPS package ships conforms to the package's profiles it declares (no
    /// false positives), and each declared profile is one of the package's.
    #[test]
    fn the_ips_examples_conform_to_their_profiles() {
        let Some(dir) = std::env::var_os("CARAPACE_IPS_PACKAGE") else {
            eprintln!("SKIPPED: set CARAPACE_IPS_PACKAGE to the hl7.fhir.uv.ips 2.0.0 package dir");
            return;
        };
        let dir = std::path::Path::new(&dir);
        let mut profiles = std::collections::HashMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("StructureDefinition-") {
                continue;
            }
            let sd: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if let Ok(p) = Profile::compile(&sd) {
                profiles.insert(p.url().to_string(), p);
            }
        }
        assert!(profiles.len() >= 25, "{} profiles compiled", profiles.len());
        let mut checked = 0;
        for entry in std::fs::read_dir(dir.join("example")).unwrap() {
            let path = entry.unwrap().path();
            let example: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let declared = example["meta"]["profile"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for url in declared.iter().filter_map(Value::as_str) {
                let Some(p) = profiles.get(url.split('|').next().unwrap()) else {
                    continue;
                };
                let issues = p.check(&example);
                assert_eq!(issues, vec![], "{} against {url}", path.display());
                checked += 1;
            }
        }
        assert!(checked >= 30, "{checked} examples checked");
    }

    #[test]
    fn a_definition_without_snapshot_is_refused() {
        let sd = json!({"resourceType": "StructureDefinition", "kind": "resource",
            "type": "Patient", "differential": {"element": []}});
        assert!(matches!(
            Profile::compile(&sd),
            Err(CompileError::NoSnapshot)
        ));
        let ext = json!({"resourceType": "StructureDefinition", "kind": "complex-type",
            "type": "Extension"});
        assert!(matches!(
            Profile::compile(&ext),
            Err(CompileError::NotAResourceProfile)
        ));
    }
}
