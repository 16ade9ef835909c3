//! The structural walk: one pass over the document against [`crate::fhir::schema`]'s tables, with
//! the current location as a stack of borrowed segments (rendered as FHIRPath only for an issue)
//! and the objects around it as a stack of frames. It checks known elements, JSON shapes, arrays,
//! required elements and choices, embedded and contained resources (dom-2 to dom-5, ele-1),
//! references, and coded elements against their bindings; extensions and primitives are checked by
//! [`super::extension`] and [`super::primitives`].

use super::extension::check_extension;
use super::primitives::check_primitive;
use super::{Depth, Issue, IssueType, MAX_DEPTH, MAX_ISSUES};
use crate::fhir::printable;
use crate::fhir::schema::{self, Element, Kind, Primitive, TypeDef};
use crate::fhir::terminology;
use serde_json::{Map, Value};
use std::fmt::Write as _;

pub(super) fn walk(resource: &Value, depth: Depth, bindings: bool) -> Vec<Issue> {
    let mut c = Checker {
        bindings,
        issues: Vec::new(),
        path: Vec::with_capacity(16),
        frames: Vec::with_capacity(16),
        local_refs: Vec::new(),
        in_contained: 0,
        depth,
    };
    match resource {
        Value::Object(map) => check_resource(&mut c, map, true),
        _ => c.issue(IssueType::Structure, "a resource must be a JSON object"),
    }
    c.issues
}

/// One step of the current location. Rendered as FHIRPath only when an issue is raised.
#[derive(Clone, Copy)]
pub(super) enum Seg<'a> {
    /// An element of the definition (`name`), a primitive's `_name` (named as the primitive), or a
    /// key the definition does not have (rendered through [`printable`]).
    Name(&'a str),
    /// A position in a repeating element: `[0]`.
    Index(usize),
    /// An expanded choice, `valueQuantity`: `value.ofType(Quantity)`.
    Choice(&'static str, &'static str),
    /// Into an embedded resource, whose element is typed `Resource`: `.ofType(Patient)`, as the
    /// HL7 validator writes it (`Bundle.entry[0].resource.ofType(Patient).name[0]`) and a typed
    /// FHIRPath engine can evaluate.
    Resource(&'a str),
}

/// An object being walked: where it starts in the path and its type (`HumanName`, a backbone's
/// path `Patient.contact`, a resource type, or a primitive's type for its `_name` object). The
/// frames name the element an extension is on, for its definition's contexts.
#[derive(Clone, Copy)]
pub(super) struct Frame<'a> {
    pub(super) at: usize,
    pub(super) ty: &'static str,
    pub(super) resource: bool,
    /// An extension's url (empty for other objects): the parent of its nested extensions.
    pub(super) url: &'a str,
}

pub(super) struct Checker<'a> {
    issues: Vec<Issue>,
    pub(super) path: Vec<Seg<'a>>,
    pub(super) frames: Vec<Frame<'a>>,
    /// dom-3: the `#` references (and uris) of the resource being walked and its contained
    /// resources, each with the contained resource it is in (index + 1, 0 for the container).
    pub(super) local_refs: Vec<(&'a str, usize)>,
    /// The contained resource being walked (index + 1), 0 outside one.
    pub(super) in_contained: usize,
    depth: Depth,
    /// Check coded elements' bindings (always, but for the benchmark's structure-only row).
    bindings: bool,
}

impl<'a> Checker<'a> {
    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    /// The current location as FHIRPath.
    fn render(&self) -> String {
        let mut path = String::new();
        for seg in &self.path {
            match seg {
                Seg::Name(name) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    // Unknown keys come from the client: never echo them raw.
                    path.push_str(&printable(name));
                }
                Seg::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
                Seg::Choice(base, ty) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    let _ = write!(path, "{base}.ofType({ty})");
                }
                Seg::Resource(ty) => {
                    let _ = write!(path, ".ofType({})", printable(ty));
                }
            }
        }
        path
    }

    pub(super) fn issue(&mut self, code: IssueType, message: impl Into<String>) {
        if self.full() {
            return;
        }
        let path = self.render();
        self.issues.push(Issue::error(code, path, message));
    }

    fn issue_at(&mut self, name: &'a str, code: IssueType, message: impl Into<String>) {
        self.path.push(Seg::Name(name));
        self.issue(code, message);
        self.path.pop();
    }
}

/// What an object is, for the rules that differ between them.
#[derive(Clone, Copy)]
enum Holder {
    Resource,
    /// A complex datatype or backbone element.
    Element,
    /// A primitive's `_name` object; `has_value` when the primitive also has a value.
    Primitive(Primitive, bool),
}

pub(super) const ELE_1: &str = "ele-1: All FHIR elements must have a @value or children";

fn check_resource<'a>(c: &mut Checker<'a>, map: &'a Map<String, Value>, root: bool) {
    let rt = match map.get("resourceType") {
        Some(Value::String(rt)) if schema::is_resource_type(rt) => rt.as_str(),
        Some(Value::String(_)) => {
            c.issue_at(
                "resourceType",
                IssueType::Structure,
                "resourceType is not an R4 resource type",
            );
            return;
        }
        _ => {
            c.issue_at(
                "resourceType",
                IssueType::Structure,
                "resourceType is missing or not a string",
            );
            return;
        }
    };
    let Some(def) = schema::type_def(rt) else {
        c.issue(IssueType::Invalid, "resource type has no definition");
        return;
    };
    // A resource's own paths start with its type (`Patient.name`); an embedded one keeps its place
    // and names its type (`Bundle.entry[0].resource.ofType(Patient).name`).
    let contained = match c.path.as_slice() {
        [.., Seg::Name("contained"), Seg::Index(i)] => Some(*i),
        _ => None,
    };
    c.path.push(if root {
        Seg::Name(rt)
    } else {
        Seg::Resource(rt)
    });
    // dom-5: a contained resource carries no security label of its own (its container's label
    // is the one the access gate decides on, so a label here would be ignored, not honoured).
    if contained.is_some() && map.get("meta").and_then(|m| m.get("security")).is_some() {
        c.path.push(Seg::Name("meta"));
        c.issue_at(
            "security",
            IssueType::Invariant,
            "dom-5: a contained resource must not have a security label: label the container",
        );
        c.path.pop();
    }
    // A contained resource's references count for its container (dom-3); any other resource has
    // its own.
    let refs_from = c.local_refs.len();
    let outer = c.in_contained;
    if let Some(i) = contained {
        c.in_contained = i + 1;
    }
    check_object(c, map, def, Holder::Resource);
    c.in_contained = outer;
    if contained.is_none() {
        if let Some(Value::Array(items)) = map.get("contained") {
            check_contained(c, items, refs_from);
        }
        c.local_refs.truncate(refs_from);
    }
    c.path.pop();
}

/// dom-2, dom-3, dom-4 on a resource's `contained` (each reported at `Patient.contained[i]`):
/// no nested contained resources, no meta.versionId or meta.lastUpdated, an id, and a reference
/// to it from elsewhere in the resource (`#id`), or from it to the container (`#`). References
/// were collected in the one walk; this is linear in references + contained resources.
fn check_contained<'a>(c: &mut Checker<'a>, items: &'a [Value], refs_from: usize) {
    c.path.push(Seg::Name("contained"));
    for (i, item) in items.iter().enumerate() {
        let Value::Object(res) = item else { continue };
        c.path.push(Seg::Index(i));
        if res.contains_key("contained") {
            c.issue(
                IssueType::Invariant,
                "dom-2: If the resource is contained in another resource, it SHALL NOT contain nested Resources",
            );
        }
        let meta = res.get("meta");
        if meta.is_some_and(|m| m.get("versionId").is_some() || m.get("lastUpdated").is_some()) {
            c.issue(
                IssueType::Invariant,
                "dom-4: If a resource is contained in another resource, it SHALL NOT have a meta.versionId or a meta.lastUpdated",
            );
        }
        match res.get("id").and_then(Value::as_str) {
            None => c.issue(
                IssueType::Invariant,
                "dom-3: a contained resource needs an id, to be referenced from its container",
            ),
            Some(id) => {
                let refs = c.local_refs.get(refs_from..).unwrap_or(&[]);
                let referenced = refs.iter().any(|&(r, from)| {
                    r.strip_prefix('#') == Some(id) || (r == "#" && from == i + 1)
                });
                if !referenced {
                    c.issue(
                        IssueType::Invariant,
                        "dom-3: If the resource is contained in another resource, it SHALL be referred to from elsewhere in the resource or SHALL refer to the containing resource",
                    );
                }
            }
        }
        c.path.pop();
    }
    c.path.pop();
}

fn check_object<'a>(
    c: &mut Checker<'a>,
    map: &'a Map<String, Value>,
    def: &'static TypeDef,
    holder: Holder,
) {
    if map.is_empty() {
        c.issue(IssueType::Invariant, ELE_1);
        return;
    }
    if c.path.len() > MAX_DEPTH {
        c.issue(IssueType::Structure, "elements are nested too deeply");
        return;
    }
    // ele-1: an id alone is neither a value nor a child.
    let id_only = map.len() == 1 && map.contains_key("id");
    match holder {
        Holder::Element | Holder::Primitive(_, false) if id_only => {
            c.issue(IssueType::Invariant, ELE_1);
        }
        _ => {}
    }
    c.frames.push(Frame {
        at: c.path.len(),
        ty: match holder {
            Holder::Primitive(p, _) => p.name(),
            _ => def.name(),
        },
        resource: matches!(holder, Holder::Resource),
        url: match map.get("url") {
            Some(Value::String(url)) if def.name() == "Extension" => url,
            _ => "",
        },
    });
    check_members(c, map, def, holder);
    if def.name() == "Extension" {
        check_extension(c, map);
    }
    if def.name() == "Reference" {
        check_reference(c, map);
    }
    c.frames.pop();
}

fn check_members<'a>(
    c: &mut Checker<'a>,
    map: &'a Map<String, Value>,
    def: &'static TypeDef,
    holder: Holder,
) {
    // One bit per choice group (`value[x]`) seen so far; the schema test keeps groups under 64.
    let mut choices: u64 = 0;
    for (key, value) in map {
        if c.full() {
            return;
        }
        if matches!(holder, Holder::Resource) && key == "resourceType" {
            continue;
        }
        if let Some(base) = key.strip_prefix('_') {
            match def.element(base) {
                Some(el) if el.is_primitive() => {
                    // `_valueString` alone stands for the choice; with `valueString` it is counted once.
                    c.path.push(seg(el, def));
                    if !map.contains_key(base) {
                        note_choice(c, &mut choices, el, def);
                    }
                    check_shadow(c, value, el, map.get(base));
                    c.path.pop();
                }
                _ => c.issue_at(
                    key,
                    IssueType::Structure,
                    format!("unknown element '{}'", printable(key)),
                ),
            }
            continue;
        }
        let Some(el) = def.element(key) else {
            c.issue_at(
                key,
                IssueType::Structure,
                format!("unknown element '{}'", printable(key)),
            );
            continue;
        };
        c.path.push(seg(el, def));
        note_choice(c, &mut choices, el, def);
        let before = c.issues.len();
        check_element(c, value, el, map);
        // A value already refused for its form is not judged against its binding too.
        if c.bindings
            && !c
                .issues
                .get(before..)
                .is_some_and(|new| new.iter().any(Issue::is_error))
        {
            check_bound(c, value, el, def, key);
        }
        c.path.pop();
    }
    for req in def.required() {
        let present = req
            .elements
            .iter()
            .filter_map(|&i| def.elements().get(i))
            .any(|e| {
                map.contains_key(e.name())
                    || (!e.shadow_name().is_empty() && map.contains_key(e.shadow_name()))
            });
        if !present {
            // `answer[x]` is `answer` in FHIRPath.
            let name = req.name();
            c.issue_at(
                name.strip_suffix("[x]").unwrap_or(name),
                IssueType::Required,
                format!("required element '{name}' is missing"),
            );
        }
    }
}

/// The path step of a defined element: its name, or `base.ofType(Type)` for a choice.
fn seg(el: &'static Element, def: &'static TypeDef) -> Seg<'static> {
    match el.choice {
        Some(group) => Seg::Choice(def.choice_name(group), type_name(el.kind)),
        None => Seg::Name(el.name()),
    }
}

pub(super) fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Primitive(p) => p.name(),
        Kind::Complex(i) => schema::type_at(i).map_or("Element", TypeDef::name),
        Kind::Resource => "Resource",
    }
}

/// `Reference.reference` by the one grammar every other reader of references uses
/// ([`crate::fhir::reference`]): a reference the key scope and the index could read differently is
/// refused here. A local one (`#id`) is noted for dom-3.
fn check_reference<'a>(c: &mut Checker<'a>, map: &'a Map<String, Value>) {
    if let Some(Value::String(text)) = map.get("reference") {
        if text.starts_with('#') {
            c.local_refs.push((text, c.in_contained));
        }
        if let Err(e) = crate::fhir::reference::Reference::parse(text) {
            c.issue_at(
                "reference",
                IssueType::Value,
                format!("not a valid reference: {e}"),
            );
        }
    }
}

/// At most one element of a choice group; called with the element's step on the path.
fn note_choice(c: &mut Checker<'_>, seen: &mut u64, el: &Element, def: &'static TypeDef) {
    let Some(group) = el.choice.filter(|g| *g < 64) else {
        return;
    };
    let bit = 1u64 << group;
    if *seen & bit != 0 {
        c.issue(
            IssueType::Structure,
            format!("only one of {}[x] may be present", def.choice_name(group)),
        );
    }
    *seen |= bit;
}

fn check_element<'a>(
    c: &mut Checker<'a>,
    value: &'a Value,
    el: &'static Element,
    map: &'a Map<String, Value>,
) {
    if !el.is_array {
        match value {
            Value::Array(_) => c.issue(
                IssueType::Structure,
                "this element does not repeat: it must not be an array",
            ),
            Value::Null => c.issue(IssueType::Structure, "null is not a value"),
            _ => check_value(c, value, el.kind),
        }
        return;
    }
    let items = match value {
        Value::Array(items) => items,
        Value::Null => return c.issue(IssueType::Structure, "null is not a value"),
        _ => {
            return c.issue(
                IssueType::Structure,
                "this element repeats: it must be a JSON array",
            )
        }
    };
    if items.is_empty() {
        c.issue(IssueType::Structure, "arrays must not be empty");
        return;
    }
    // A repeating primitive may hold null where its `_name` array carries that entry's extensions.
    let shadow = if el.is_primitive() {
        map.get(el.shadow_name()).and_then(Value::as_array)
    } else {
        None
    };
    for (i, item) in items.iter().enumerate() {
        if c.full() {
            return;
        }
        c.path.push(Seg::Index(i));
        if item.is_null() {
            let covered = shadow.and_then(|s| s.get(i)).is_some_and(|s| !s.is_null());
            if !covered {
                c.issue(
                    IssueType::Structure,
                    if el.is_primitive() {
                        "null is not a value (only a placeholder for an entry of the '_' array)"
                    } else {
                        "null is not a value"
                    },
                );
            }
        } else {
            check_value(c, item, el.kind);
        }
        c.path.pop();
    }
}

/// A code, Coding or CodeableConcept element against its binding ([`terminology::check_binding`]
/// decides; this only walks a repeating element's items and names the path).
fn check_bound<'a>(
    c: &mut Checker<'a>,
    value: &'a Value,
    el: &'static Element,
    def: &'static TypeDef,
    key: &'a str,
) {
    let coded = match el.kind {
        Kind::Primitive(p) => p == Primitive::Code,
        Kind::Complex(i) => {
            schema::type_at(i).is_some_and(|t| matches!(t.name(), "Coding" | "CodeableConcept"))
        }
        Kind::Resource => false,
    };
    let Some(binding) = coded
        .then(|| terminology::binding(def.name(), key))
        .flatten()
    else {
        return;
    };
    let one = |c: &mut Checker<'a>, item: &Value| {
        if let Some(f) = terminology::check_binding(&binding, item, c.depth) {
            if !c.full() {
                let path = c.render();
                let message = format!("{path}: {}", f.message);
                c.issues.push(Issue {
                    severity: f.severity,
                    code: f.code,
                    path,
                    message,
                });
            }
        }
    };
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                c.path.push(Seg::Index(i));
                one(c, item);
                c.path.pop();
            }
        }
        _ => one(c, value),
    }
}

/// `_birthDate` / `_given`: a primitive's id and extensions, aligned with its values, reported at
/// the primitive's own path (`Patient.birthDate`, `Patient.name[0].given[1]`).
fn check_shadow<'a>(
    c: &mut Checker<'a>,
    value: &'a Value,
    el: &'static Element,
    values: Option<&'a Value>,
) {
    let Some(holder) = schema::type_def("Element") else {
        c.issue(IssueType::Invalid, "no definition for Element");
        return;
    };
    let Kind::Primitive(p) = el.kind else {
        return;
    };
    if !el.is_array {
        match value {
            Value::Object(m) => check_object(
                c,
                m,
                holder,
                Holder::Primitive(p, values.is_some_and(|v| !v.is_null())),
            ),
            Value::Null => c.issue(IssueType::Structure, "null is not a value"),
            _ => c.issue(
                IssueType::Structure,
                "a primitive's id and extensions are a JSON object",
            ),
        }
        return;
    }
    let items = match value {
        Value::Array(items) => items,
        Value::Null => return c.issue(IssueType::Structure, "null is not a value"),
        _ => {
            return c.issue(
                IssueType::Structure,
                "this element repeats: its id and extensions are a JSON array",
            )
        }
    };
    if items.is_empty() {
        c.issue(IssueType::Structure, "arrays must not be empty");
        return;
    }
    let values = values.and_then(Value::as_array);
    if let Some(values) = values {
        if values.len() != items.len() {
            c.issue(
                IssueType::Structure,
                format!(
                    "'_{}' must have as many entries as '{}'",
                    el.name(),
                    el.name()
                ),
            );
        }
    }
    for (i, item) in items.iter().enumerate() {
        if c.full() {
            return;
        }
        c.path.push(Seg::Index(i));
        let value = values.and_then(|v| v.get(i));
        match item {
            Value::Object(m) => check_object(
                c,
                m,
                holder,
                Holder::Primitive(p, value.is_some_and(|v| !v.is_null())),
            ),
            // A value there: nothing to add. Both sides null: the value side has said so.
            Value::Null if value.is_some() => {}
            Value::Null => c.issue(
                IssueType::Structure,
                format!(
                    "null is only a placeholder for an entry that has a value in '{}'",
                    el.name()
                ),
            ),
            _ => c.issue(
                IssueType::Structure,
                "a primitive's id and extensions are a JSON object",
            ),
        }
        c.path.pop();
    }
}

fn check_value<'a>(c: &mut Checker<'a>, value: &'a Value, kind: Kind) {
    match kind {
        Kind::Primitive(p) => check_primitive(c, value, p),
        Kind::Resource => match value {
            Value::Object(map) => check_resource(c, map, false),
            _ => c.issue(
                IssueType::Structure,
                "an embedded resource must be a JSON object",
            ),
        },
        Kind::Complex(index) => {
            let Some(def) = schema::type_at(index) else {
                c.issue(IssueType::Invalid, "element has no definition");
                return;
            };
            match value {
                Value::Object(map) => check_object(c, map, def, Holder::Element),
                _ => c.issue(
                    IssueType::Structure,
                    format!("must be a JSON object ({})", def.name()),
                ),
            }
        }
    }
}
