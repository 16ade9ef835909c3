//! Compiling a StructureDefinition's snapshot: the element tree by element id (children, slices
//! and their children), each element's cardinality, types, fixed and pattern values, bindings
//! (settled against R4's own) and invariants, and the slicings' discriminators.

use super::{CompileError, Discriminator, DiscriminatorKind, Node, Slice, Slicing};
use crate::fhir::invariants::Invariant;
use crate::fhir::terminology::{self, Binding, BoundType, Strength};
use serde_json::Value;

/// Build the element tree from snapshot order, by element id: `A.b` is a child of `A`,
/// `A.b:s` a slice of `A.b`, `A.b:s.c` a child of that slice.
pub(super) fn build_tree(elements: &[Value]) -> Result<Node, CompileError> {
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
