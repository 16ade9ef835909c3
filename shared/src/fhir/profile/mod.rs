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

pub mod builtin;
mod check;
mod compile;
mod slicing;
#[cfg(test)]
mod tests;

use super::invariants::Invariant;
use super::printable;
use super::terminology::{Binding, Strength};
use super::validate::{Depth, Issue};
use compile::build_tree;
use serde_json::Value;

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
    /// `compile::settle_bindings` keeps it in `binding` only if it differs from R4's and can be judged.
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
        check::check(self, resource, depth)
    }
}
