//! FHIRPath Patch (R4 `fhirpatch.html`): a `Parameters` resource whose `operation` parameters
//! add, insert, delete, replace and move elements located by FHIRPath.
//!
//! Paths are evaluated by the core's FHIRPath engine ([`super::fhirpath`]), which hands back
//! references into the document; each result is then found in the document by identity, which
//! gives its place (the object holding it, its property and, in a list, its index) without a
//! second, location-tracking evaluator. A primitive's `_name` shadow (its id and extensions)
//! moves with it: lists of primitives keep their shadow list aligned.
//!
//! No crate does this over `serde_json` with R4's element types (the FHIRPath crates compared in
//! [`super::fhirpath`] evaluate, none patches). The result is not checked here: the store
//! validates it as it validates any update, with the one validator.

use super::fhirpath::{Item, Path, Ty};
use super::schema::{self, Kind, TypeDef};
use serde_json::{Map, Value};

/// Operations in one patch, and items one path's evaluation may build (over all its steps): a
/// client's paths run on the server's CPU, so their cost is bounded.
const MAX_OPERATIONS: usize = 100;
const PATH_BUDGET: usize = 100_000;

/// Why a patch does not apply: a message naming the operation and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError(pub String);

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `$meta-add`: put each profile, tag and security label of `meta` (a `Meta`) into `doc.meta`
/// that is not there yet (a coding is there when its system and code are). Answers whether
/// anything changed.
pub fn meta_add(doc: &mut Value, meta: &Value) -> Result<bool, PatchError> {
    let mut changed = false;
    for (key, same) in META_LISTS {
        let Some(items) = meta.get(key) else { continue };
        let items = items
            .as_array()
            .ok_or_else(|| PatchError(format!("meta.{key} must be a list")))?;
        for item in items {
            let object = doc
                .as_object_mut()
                .ok_or_else(|| PatchError("the resource is not an object".into()))?;
            let target = object
                .entry("meta")
                .or_insert_with(|| Value::Object(Map::new()));
            let list = target
                .as_object_mut()
                .ok_or_else(|| PatchError("the resource's meta is not an object".into()))?
                .entry(key.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(list) = list else {
                return Err(PatchError(format!(
                    "the resource's meta.{key} is not a list"
                )));
            };
            if !list.iter().any(|have| same(have, item)) {
                list.push(item.clone());
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// `$meta-delete`: take each profile, tag and security label of `meta` out of `doc.meta`.
/// Answers whether anything changed.
pub fn meta_delete(doc: &mut Value, meta: &Value) -> Result<bool, PatchError> {
    let mut changed = false;
    for (key, same) in META_LISTS {
        let Some(items) = meta.get(key) else { continue };
        let items = items
            .as_array()
            .ok_or_else(|| PatchError(format!("meta.{key} must be a list")))?;
        let Some(own) = doc.get_mut("meta").and_then(Value::as_object_mut) else {
            return Ok(changed);
        };
        if let Some(Value::Array(list)) = own.get_mut(key) {
            let before = list.len();
            list.retain(|have| !items.iter().any(|item| same(have, item)));
            changed |= list.len() != before;
            if list.is_empty() {
                own.remove(key);
            }
        }
    }
    Ok(changed)
}

type Same = fn(&Value, &Value) -> bool;

/// The lists of `Meta` the operations change, and when two of their items are the same.
const META_LISTS: [(&str, Same); 3] = [
    ("profile", |a, b| a == b),
    ("tag", same_coding),
    ("security", same_coding),
];

fn same_coding(a: &Value, b: &Value) -> bool {
    a.get("system") == b.get("system") && a.get("code") == b.get("code")
}

/// Is this body a FHIRPath Patch (a `Parameters` resource)?
pub fn is_fhirpath_patch(body: &Value) -> bool {
    body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
}

/// Apply every `operation` of `patch` (a `Parameters`) to `doc`, in order; all or nothing (the
/// caller keeps `doc` only when this answers `Ok`).
pub fn apply(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let params = patch
        .get("parameter")
        .and_then(Value::as_array)
        .ok_or_else(|| PatchError("a FHIRPath Patch needs operation parameters".into()))?;
    if params.is_empty() {
        return Err(PatchError(
            "a FHIRPath Patch needs operation parameters".into(),
        ));
    }
    if params.len() > MAX_OPERATIONS {
        return Err(PatchError(format!(
            "a FHIRPath Patch may hold at most {MAX_OPERATIONS} operations"
        )));
    }
    for (n, param) in params.iter().enumerate() {
        let which = format!("operation {}", n + 1);
        if param.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(PatchError(format!(
                "{which}: every parameter of a FHIRPath Patch is named 'operation'"
            )));
        }
        let op = Operation::parse(param).map_err(|e| PatchError(format!("{which}: {e}")))?;
        op.apply(doc)
            .map_err(|e| PatchError(format!("{which} ({} {}): {e}", op.kind, op.path)))?;
    }
    Ok(())
}

struct Operation<'p> {
    kind: &'p str,
    path: &'p str,
    parts: &'p [Value],
}

impl<'p> Operation<'p> {
    fn parse(param: &'p Value) -> Result<Operation<'p>, String> {
        let parts = param
            .get("part")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let kind = part_text(parts, "type")?.ok_or("it has no type")?;
        if !matches!(kind, "add" | "insert" | "delete" | "replace" | "move") {
            return Err(format!(
                "type '{}' is none of add, insert, delete, replace, move",
                super::printable(kind)
            ));
        }
        let path = part_text(parts, "path")?.ok_or("it has no path")?;
        Ok(Operation { kind, path, parts })
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        let part = find_part(self.parts, name).ok_or_else(|| format!("it has no {name}"))?;
        part.get("valueInteger")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("{name} must be a valueInteger of 0 or more"))
    }

    fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let found = locate(doc, self.path)?;
        match self.kind {
            "add" => {
                let name = part_text(self.parts, "name")?.ok_or("it has no name")?;
                let [container] = found.as_slice() else {
                    return Err(format!(
                        "the path matches {} elements, not one",
                        found.len()
                    ));
                };
                let Some(def) = container.def else {
                    return Err("the path is not an element that holds others".into());
                };
                let value = self.value(def, name)?;
                let target = container.node_mut(doc).and_then(Value::as_object_mut);
                let object = target.ok_or("the path is not an element that holds others")?;
                add(object, def, name, value)
            }
            "insert" => {
                let index = self.index("index")?;
                let list = same_list(&found)?;
                let def = list.container_def(doc)?;
                let value = self.value(def, &list.key)?;
                let object = list.container_mut(doc)?;
                let len = object
                    .get(&list.key)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if index > len {
                    return Err(format!("index {index} is past the list's end ({len})"));
                }
                splice(object, &list.key, index, Some(value), None);
                Ok(())
            }
            "delete" => match found.as_slice() {
                [] => Ok(()),
                [one] => {
                    let object = one.container_mut(doc)?;
                    match one.index {
                        Some(i) => {
                            splice(object, &one.key, i, None, None);
                        }
                        None => {
                            object.remove(&one.key);
                            object.remove(&format!("_{}", one.key));
                        }
                    }
                    Ok(())
                }
                many => Err(format!("the path matches {} elements, not one", many.len())),
            },
            "replace" => {
                let [one] = found.as_slice() else {
                    return Err(format!(
                        "the path matches {} elements, not one",
                        found.len()
                    ));
                };
                let def = one.container_def(doc)?;
                let base = match one.choice_base {
                    Some(ref base) => base.clone(),
                    None => one.key.clone(),
                };
                let value = self.value(def, &base)?;
                if value.key != one.key {
                    // A choice replaced by another of its types (`valueString` for a
                    // `valueQuantity`).
                    let object = one.container_mut(doc)?;
                    object.remove(&one.key);
                    object.remove(&format!("_{}", one.key));
                    return add(object, def, &base, value);
                }
                let object = one.container_mut(doc)?;
                match one.index {
                    Some(i) => {
                        splice(object, &one.key, i, None, None);
                        splice(object, &one.key, i, Some(value), None);
                    }
                    None => set(object, value),
                }
                Ok(())
            }
            "move" => {
                let (source, destination) = (self.index("source")?, self.index("destination")?);
                let list = same_list(&found)?;
                let object = list.container_mut(doc)?;
                let len = object
                    .get(&list.key)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if source >= len || destination >= len {
                    return Err(format!(
                        "source {source} and destination {destination} must be below the \
                         list's length ({len})"
                    ));
                }
                let moved = splice(object, &list.key, source, None, None);
                splice(object, &list.key, destination, None, Some(moved));
                Ok(())
            }
            _ => Err("unknown operation type".into()),
        }
    }

    /// The operation's `value`: a `value[x]` (a primitive with its `_value[x]` shadow, or a
    /// datatype), or parts naming the children of a backbone element; typed by element `name`
    /// of `def`.
    fn value(&self, def: &'static TypeDef, name: &str) -> Result<NewValue, String> {
        let part = find_part(self.parts, "value").ok_or("it has no value")?;
        new_value(part, def, name)
    }
}

/// A value to put into an object: the property it goes in (`valueQuantity` for a choice), the
/// JSON value and, for a primitive, its shadow.
struct NewValue {
    key: String,
    is_array: bool,
    value: Value,
    shadow: Option<Value>,
}

fn new_value(part: &Value, def: &'static TypeDef, name: &str) -> Result<NewValue, String> {
    let typed = part
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, _)| k.starts_with("value") && k.len() > 5);
    let (key, element) = match typed {
        Some((k, _)) => {
            let suffix = &k[5..];
            match def.element(name) {
                Some(e) if e.choice.is_none() => (name.to_string(), Some(e)),
                _ => {
                    let key = format!("{name}{suffix}");
                    let element = def.element(&key);
                    (key, element)
                }
            }
        }
        None => (name.to_string(), def.element(name)),
    };
    let element = element.ok_or_else(|| {
        format!(
            "{} has no element '{}' of this value's type",
            def.name(),
            super::printable(&key)
        )
    })?;
    let (value, shadow) = match typed {
        Some((k, v)) => (v.clone(), part.get(format!("_{k}")).cloned()),
        None => {
            let Kind::Complex(i) = element.kind else {
                return Err(format!("{key} needs a value[x]"));
            };
            let inner = schema::type_at(i).ok_or("an unknown element type")?;
            let mut object = Map::new();
            for child in part
                .get("part")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let child_name = child
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("a value part has no name")?;
                let v = new_value(child, inner, child_name)?;
                add(&mut object, inner, child_name, v)?;
            }
            if object.is_empty() {
                return Err(format!("{key} needs a value[x] or parts"));
            }
            (Value::Object(object), None)
        }
    };
    Ok(NewValue {
        key,
        is_array: element.is_array,
        value,
        shadow,
    })
}

/// Add `v` as element `name` of `object`: appended to a list, or set if the element is single
/// and absent.
fn add(
    object: &mut Map<String, Value>,
    def: &'static TypeDef,
    name: &str,
    v: NewValue,
) -> Result<(), String> {
    if v.is_array {
        let len = object
            .get(&v.key)
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let key = v.key.clone();
        splice(object, &key, len, Some(v), None);
        return Ok(());
    }
    // One element of a choice at a time: `valueString` beside a `valueQuantity` is refused.
    let taken = def.elements().iter().any(|e| {
        object.contains_key(e.name())
            && (e.name() == v.key
                || (e.choice.is_some() && def.element(&v.key).and_then(|n| n.choice) == e.choice))
    });
    if taken {
        return Err(format!(
            "{} already has {}: replace it",
            def.name(),
            super::printable(name)
        ));
    }
    set(object, v);
    Ok(())
}

fn set(object: &mut Map<String, Value>, v: NewValue) {
    let shadow = format!("_{}", v.key);
    object.remove(&shadow);
    if let Some(s) = v.shadow {
        object.insert(shadow, s);
    }
    object.insert(v.key, v.value);
}

/// In list `key` of `object` (and its shadow list `_key`, kept aligned): remove the item at
/// `index` (returned), or insert `new` (or a removed item, `moved`) there. An emptied list goes.
fn splice(
    object: &mut Map<String, Value>,
    key: &str,
    index: usize,
    new: Option<NewValue>,
    moved: Option<(Value, Value)>,
) -> (Value, Value) {
    let shadow_key = format!("_{key}");
    let len = object
        .get(key)
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let insert = match (new, moved) {
        (Some(v), _) => Some((v.value, v.shadow.unwrap_or(Value::Null))),
        (None, Some(m)) => Some(m),
        (None, None) => None,
    };
    let mut shadows = match object.remove(&shadow_key) {
        Some(Value::Array(s)) => s,
        _ => Vec::new(),
    };
    shadows.resize(len, Value::Null);
    let list = object
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(vec![list.take()]);
    }
    let Value::Array(items) = list else {
        return (Value::Null, Value::Null);
    };
    let removed = match insert {
        Some((value, shadow)) => {
            let at = index.min(items.len());
            items.insert(at, value);
            shadows.insert(at, shadow);
            (Value::Null, Value::Null)
        }
        None if index < items.len() => (items.remove(index), shadows.remove(index)),
        None => (Value::Null, Value::Null),
    };
    if items.is_empty() {
        object.remove(key);
    }
    if shadows.iter().any(|s| !s.is_null()) {
        object.insert(shadow_key, Value::Array(shadows));
    }
    removed
}

/// A place in the document: the object holding an element (by the steps from the root), its
/// property, and its index in a list; with the element's own type when it holds others.
#[derive(Debug, Clone)]
struct Place {
    parent: Vec<Step>,
    key: String,
    index: Option<usize>,
    /// Set when the element is the root (the resource itself).
    root: bool,
    /// The element's type, when it is a resource, datatype or backbone element.
    def: Option<&'static TypeDef>,
    /// For an expanded choice (`valueQuantity`), its base name (`value`).
    choice_base: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

impl Place {
    fn node_mut<'d>(&self, doc: &'d mut Value) -> Option<&'d mut Value> {
        if self.root {
            return Some(doc);
        }
        let object = walk_mut(doc, &self.parent)?.as_object_mut()?;
        let node = object.get_mut(&self.key)?;
        match self.index {
            Some(i) => node.get_mut(i),
            None => Some(node),
        }
    }

    fn container_mut<'d>(&self, doc: &'d mut Value) -> Result<&'d mut Map<String, Value>, String> {
        if self.root {
            return Err("the resource itself cannot be replaced, moved or deleted".into());
        }
        walk_mut(doc, &self.parent)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| "the element's container was not found".into())
    }

    /// The type of the object holding the element.
    fn container_def(&self, doc: &Value) -> Result<&'static TypeDef, String> {
        if self.root {
            return Err("the resource itself cannot be replaced, moved or deleted".into());
        }
        let mut def = Item::resource(doc)
            .and_then(|i| match i {
                Item::Node { ty: Ty::Def(d), .. } => Some(d),
                _ => None,
            })
            .ok_or("the document is not a resource")?;
        let mut node = doc;
        for step in &self.parent {
            match step {
                Step::Key(k) => {
                    node = node.get(k).ok_or("the element's container was not found")?;
                    let next = match def.element(k).map(|e| e.kind) {
                        Some(Kind::Complex(i)) => schema::type_at(i),
                        Some(Kind::Resource) => node
                            .get("resourceType")
                            .or_else(|| node.get(0).and_then(|n| n.get("resourceType")))
                            .and_then(Value::as_str)
                            .and_then(schema::type_def),
                        _ => None,
                    };
                    def = next.ok_or("the element's container has no known type")?;
                }
                Step::Index(i) => {
                    node = node.get(i).ok_or("the element's container was not found")?;
                    if let Some(rt) = node.get("resourceType").and_then(Value::as_str) {
                        def = schema::type_def(rt).ok_or("an unknown resource type")?;
                    }
                }
            }
        }
        Ok(def)
    }
}

fn walk_mut<'d>(doc: &'d mut Value, steps: &[Step]) -> Option<&'d mut Value> {
    let mut node = doc;
    for step in steps {
        node = match step {
            Step::Key(k) => node.get_mut(k)?,
            Step::Index(i) => node.get_mut(*i)?,
        };
    }
    Some(node)
}

/// The places of `path`'s results in `doc`. Only elements of the document can be patched: a
/// path that yields a computed value (`name.count()`) is refused.
fn locate(doc: &Value, path: &str) -> Result<Vec<Place>, String> {
    let compiled = Path::compile(path)
        .map_err(|e| format!("the path is not FHIRPath this server evaluates: {}", e.0))?;
    let root = Item::resource(doc).ok_or("the document is not a resource")?;
    let items = compiled
        .evaluate_within(root.clone(), root.clone(), root, PATH_BUDGET)
        .map_err(|e| format!("the path could not be evaluated: {}", e.0))?;
    // Every element's place, found in one walk of the document (not one walk per result).
    let mut index = std::collections::HashMap::new();
    if !items.is_empty() {
        let mut steps = Vec::new();
        walk(doc, &mut steps, &mut index);
    }
    let mut places = Vec::new();
    for item in items {
        let Item::Node { value, shadow, ty } = item else {
            return Err("the path yields a value, not an element of the resource".into());
        };
        let target = value.or(shadow).ok_or("the path yields an empty element")?;
        let steps = index
            .get(&std::ptr::from_ref(target))
            .cloned()
            .ok_or("the path yields an element outside the resource")?;
        let def = match ty {
            Ty::Def(d) => Some(d),
            Ty::Primitive(_) => None,
        };
        places.push(place(doc, steps, def));
    }
    Ok(places)
}

fn place(doc: &Value, mut steps: Vec<Step>, def: Option<&'static TypeDef>) -> Place {
    let index = match steps.last() {
        Some(Step::Index(i)) => {
            let i = *i;
            steps.pop();
            Some(i)
        }
        _ => None,
    };
    let key = match steps.pop() {
        Some(Step::Key(k)) => k,
        _ => {
            return Place {
                parent: vec![],
                key: String::new(),
                index: None,
                root: true,
                def,
                choice_base: None,
            }
        }
    };
    // A primitive found by its shadow (`_given`) is the element `given`.
    let key = match key.strip_prefix('_') {
        Some(k) => k.to_string(),
        None => key,
    };
    let choice_base = Place {
        parent: steps.clone(),
        key: key.clone(),
        index,
        root: false,
        def: None,
        choice_base: None,
    }
    .container_def(doc)
    .ok()
    .and_then(|d| {
        let group = d.element(&key)?.choice?;
        Some(d.choice_name(group).to_string())
    });
    Place {
        parent: steps,
        key,
        index,
        root: false,
        def,
        choice_base,
    }
}

/// Record the steps to every value of `node` by its address (the FHIRPath engine hands back
/// references into the document, so an address is an element's identity).
fn walk(
    node: &Value,
    steps: &mut Vec<Step>,
    index: &mut std::collections::HashMap<*const Value, Vec<Step>>,
) {
    index.insert(std::ptr::from_ref(node), steps.clone());
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                steps.push(Step::Key(k.clone()));
                walk(v, steps, index);
                steps.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                steps.push(Step::Index(i));
                walk(v, steps, index);
                steps.pop();
            }
        }
        _ => {}
    }
}

/// The places of an insert or move: items of one list (the path names the list).
fn same_list(found: &[Place]) -> Result<Place, String> {
    let first = found
        .first()
        .ok_or("the path matches no list (add the first item with add)")?;
    if first.index.is_none()
        || found
            .iter()
            .any(|p| p.parent != first.parent || p.key != first.key)
    {
        return Err("the path is not one list".into());
    }
    Ok(first.clone())
}

fn find_part<'p>(parts: &'p [Value], name: &str) -> Option<&'p Value> {
    parts
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

/// A part's text value (`valueString`, `valueCode`, ...).
fn part_text<'p>(parts: &'p [Value], name: &str) -> Result<Option<&'p str>, String> {
    let Some(part) = find_part(parts, name) else {
        return Ok(None);
    };
    let text = part.as_object().into_iter().flatten().find_map(|(k, v)| {
        if k.starts_with("value") {
            v.as_str()
        } else {
            None
        }
    });
    text.map(Some)
        .ok_or_else(|| format!("{name} must be a text value"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: &str, path: &str, extra: Value) -> Value {
        let mut part = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        part.extend(extra.as_array().unwrap().iter().cloned());
        json!({"name": "operation", "part": part})
    }

    fn patch(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p",
               "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"],
                         "_given": [null, {"id": "g2"}]},
                        {"use": "usual", "given": ["Jim"]}],
               "birthDate": "1974-12-25"})
    }

    #[test]
    fn each_operation_type_does_what_the_spec_says() {
        let mut doc = patient();
        apply(
            &mut doc,
            &patch(vec![
                op(
                    "add",
                    "Patient",
                    json!([{"name": "name", "valueString": "gender"},
                           {"name": "value", "valueCode": "male"}]),
                ),
                op(
                    "replace",
                    "Patient.birthDate",
                    json!([{"name": "value", "valueDate": "1974-12-24"}]),
                ),
                op(
                    "insert",
                    "Patient.name[0].given",
                    json!([{"name": "value", "valueString": "Pete"},
                           {"name": "index", "valueInteger": 1}]),
                ),
                op("delete", "Patient.name.where(use = 'usual')", json!([])),
                op(
                    "move",
                    "Patient.name[0].given",
                    json!([{"name": "source", "valueInteger": 2},
                           {"name": "destination", "valueInteger": 0}]),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(doc["gender"], "male");
        assert_eq!(doc["birthDate"], "1974-12-24");
        assert_eq!(doc["name"].as_array().unwrap().len(), 1);
        assert_eq!(doc["name"][0]["given"], json!(["James", "Peter", "Pete"]));
        // The shadow list moved with its primitives.
        assert_eq!(doc["name"][0]["_given"], json!([{"id": "g2"}, null, null]));
    }

    #[test]
    fn add_types_a_choice_and_builds_backbone_elements_from_parts() {
        let mut doc = json!({"resourceType": "Observation", "status": "final",
                             "code": {"text": "x"}});
        apply(
            &mut doc,
            &patch(vec![
                op(
                    "add",
                    "Observation",
                    json!([{"name": "name", "valueString": "value"},
                           {"name": "value", "valueQuantity": {"value": 1.5, "unit": "mg"}}]),
                ),
                op(
                    "add",
                    "Observation",
                    json!([{"name": "name", "valueString": "referenceRange"},
                           {"name": "value", "part": [
                               {"name": "text", "valueString": "normal"},
                               {"name": "low", "valueQuantity": {"value": 1}}]}]),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(doc["valueQuantity"]["unit"], "mg");
        assert_eq!(
            doc["referenceRange"],
            json!([{"text": "normal", "low": {"value": 1}}])
        );
        // A second value of the choice is refused; replace changes its type.
        let again = op(
            "add",
            "Observation",
            json!([{"name": "name", "valueString": "value"},
                   {"name": "value", "valueString": "high"}]),
        );
        assert!(apply(&mut doc.clone(), &patch(vec![again])).is_err());
        apply(
            &mut doc,
            &patch(vec![op(
                "replace",
                "Observation.value",
                json!([{"name": "value", "valueString": "high"}]),
            )]),
        )
        .unwrap();
        assert_eq!(doc["valueString"], "high");
        assert!(doc.get("valueQuantity").is_none());
    }

    #[test]
    fn a_path_that_builds_too_much_is_refused() {
        let mut doc = patient();
        let costly = op(
            "delete",
            "Patient.descendants().select(%resource.descendants())",
            json!([]),
        );
        // The doc is small; make it big enough for the nesting to pass the budget.
        doc["name"] = json!((0..200)
            .map(|i| json!({"given": [format!("g{i}")]}))
            .collect::<Vec<_>>());
        let e = apply(&mut doc, &patch(vec![costly])).unwrap_err();
        assert!(e.0.contains("this many items"), "{e}");
        let many = (0..101)
            .map(|_| op("delete", "Patient.gender", json!([])))
            .collect();
        assert!(apply(&mut patient(), &patch(many))
            .unwrap_err()
            .0
            .contains("at most 100"));
    }

    #[test]
    fn meta_add_and_delete_change_only_what_is_named() {
        let mut doc = json!({"resourceType": "Patient", "meta": {"versionId": "2",
            "tag": [{"system": "s", "code": "a"}]}});
        let meta = json!({"tag": [{"system": "s", "code": "a", "display": "A"},
                                  {"system": "s", "code": "b"}],
                          "profile": ["http://p"]});
        assert!(meta_add(&mut doc, &meta).unwrap());
        assert_eq!(doc["meta"]["tag"].as_array().unwrap().len(), 2);
        assert_eq!(doc["meta"]["profile"], json!(["http://p"]));
        assert!(
            !meta_add(&mut doc, &meta).unwrap(),
            "adding again changes nothing"
        );
        assert!(meta_delete(
            &mut doc,
            &json!({"tag": [{"system": "s", "code": "a"}],
                                              "profile": ["http://p"]})
        )
        .unwrap());
        assert_eq!(
            doc["meta"],
            json!({"versionId": "2", "tag": [{"system": "s", "code": "b"}]})
        );
        assert!(!meta_delete(
            &mut doc,
            &json!({"security": [{"system": "x", "code": "R"}]})
        )
        .unwrap());
    }

    #[test]
    fn what_does_not_apply_is_refused_with_its_reason() {
        let cases = [
            (
                op(
                    "replace",
                    "Patient.name",
                    json!([{"name": "value", "valueString": "x"}]),
                ),
                "2 elements",
            ),
            (
                op(
                    "replace",
                    "Patient.name.count()",
                    json!([{"name": "value", "valueString": "x"}]),
                ),
                "a value",
            ),
            (op("delete", "Patient.name", json!([])), "not one"),
            (
                op(
                    "insert",
                    "Patient.name[0].given",
                    json!([{"name": "value", "valueString": "x"},
                                                        {"name": "index", "valueInteger": 9}]),
                ),
                "past",
            ),
            (op("frobnicate", "Patient", json!([])), "none of"),
            (
                op(
                    "add",
                    "Patient",
                    json!([{"name": "name", "valueString": "birthDate"},
                                         {"name": "value", "valueDate": "2000-01-01"}]),
                ),
                "already",
            ),
            (
                op(
                    "add",
                    "Patient",
                    json!([{"name": "name", "valueString": "nonsense"},
                                         {"name": "value", "valueString": "x"}]),
                ),
                "no element",
            ),
            (op("delete", "Patient.name.where(", json!([])), "FHIRPath"),
        ];
        for (operation, want) in cases {
            let mut doc = patient();
            let e = apply(&mut doc, &patch(vec![operation])).unwrap_err();
            assert!(e.0.contains(want), "{e}: wanted '{want}'");
        }
        // Deleting what is not there is no error.
        let mut doc = patient();
        apply(
            &mut doc,
            &patch(vec![op("delete", "Patient.deceased", json!([]))]),
        )
        .unwrap();
        assert_eq!(doc, patient());
    }
}
