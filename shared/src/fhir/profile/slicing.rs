//! Slicing's discriminators: whether an item belongs to a slice by `value`, `pattern`, `type` and
//! `exists`, read from the slice's own elements (fixed or pattern values, types, cardinality) and
//! the item's values at the discriminator's path. [`super::check`] counts the slices and closes them.

use super::check::{matches_pattern, Item};
use super::{Discriminator, DiscriminatorKind, Node, Slice};
use serde_json::Value;

/// Does `item` belong to `slice` by every discriminator?
pub(super) fn slice_matches(
    discriminators: &[Discriminator],
    slice: &Slice,
    item: &Item<'_>,
) -> bool {
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
