//! Bindings: an element's strength and value set ([`Binding`]), and [`check_binding`], what the
//! validator reports for one bound code, Coding or CodeableConcept.

use super::{Membership, ValueSet, TABLES};
use crate::fhir::printable;
use crate::fhir::validate::{Depth, IssueType, Severity};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    Required,
    Extensible,
    Preferred,
    Example,
}

impl Strength {
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Required => "required",
            Strength::Extensible => "extensible",
            Strength::Preferred => "preferred",
            Strength::Example => "example",
        }
    }
}

/// The datatype of a bound element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundType {
    Code,
    Coding,
    CodeableConcept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub strength: Strength,
    /// The value set's canonical url, without version.
    pub value_set: &'static str,
    pub bound_type: BoundType,
    /// The shipped value set, resolved once (an index into the tables).
    pub(super) resolved: Option<usize>,
}

impl Binding {
    /// A binding to a shipped value set (a profile's own binding, say).
    pub fn to(strength: Strength, value_set: &'static ValueSet, bound_type: BoundType) -> Binding {
        Binding {
            strength,
            value_set: value_set.url(),
            bound_type,
            resolved: TABLES.value_set_by_url.get(value_set.url()).copied(),
        }
    }

    /// The bound value set, if it ships.
    pub fn value_set(&self) -> Option<&'static ValueSet> {
        self.resolved.and_then(|i| TABLES.value_sets.get(i))
    }
}

/// What [`check_binding`] found for one bound value; the validator adds the element's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: IssueType,
    pub message: String,
}

/// Judge one value (a `code` string, a Coding or a CodeableConcept object; for a repeating
/// element, one item) of an element with this binding. Conservative by design, since an example
/// the HL7 validator accepts must not be refused:
/// - only an enumerable value set judges; a code of a system it does not draw from, a Coding
///   without a system, or a CodeableConcept without codings is never "not in";
/// - a CodeableConcept is not in the value set only when it has codings, none is in it, and every
///   one is from a system the value set draws from;
/// - required: an error (`code-invalid`) at every depth; extensible: a warning, preferred: a note,
///   both only at [`Depth::Report`]; example bindings are not checked. At `Report`, a required
///   binding that cannot be judged is noted as `not-supported` information.
///
/// Messages name the value set and echo only codes and systems (through [`printable`]), never
/// displays or text. Nothing is allocated unless something is reported.
pub fn check_binding(binding: &Binding, value: &Value, depth: Depth) -> Option<Finding> {
    let report = depth == Depth::Report;
    match binding.strength {
        Strength::Example => return None,
        Strength::Required => {}
        Strength::Extensible | Strength::Preferred if report => {}
        _ => return None,
    }
    let vs = binding.value_set();
    let membership = match vs {
        Some(vs) => membership(vs, binding.bound_type, value)?,
        None => Membership::Unknown,
    };
    let strength = binding.strength.as_str();
    let named = || match vs {
        Some(vs) if !vs.name.is_empty() => format!("{} ({})", binding.value_set, vs.name),
        _ => binding.value_set.to_string(),
    };
    match membership {
        Membership::In => None,
        Membership::NotIn => {
            let what = match (binding.bound_type, value) {
                (BoundType::Code, Value::String(code)) => format!("'{}' is not", printable(code)),
                (BoundType::Coding, _) => format!(
                    "the code '{}' of system {} is not",
                    printable(value.get("code").and_then(Value::as_str).unwrap_or("")),
                    printable(value.get("system").and_then(Value::as_str).unwrap_or(""))
                ),
                _ => "none of the codings is".to_string(),
            };
            let (severity, message) = match binding.strength {
                Strength::Required => (Severity::Error, format!("{what} in the required value set {}", named())),
                Strength::Extensible => (
                    Severity::Warning,
                    format!("{what} in the extensible value set {}: use it when a code of it fits", named()),
                ),
                _ => (Severity::Information, format!("{what} in the {strength} value set {}", named())),
            };
            Some(Finding {
                severity,
                code: IssueType::CodeInvalid,
                message,
            })
        }
        Membership::Unknown if report && binding.strength == Strength::Required => Some(Finding {
            severity: Severity::Information,
            code: IssueType::NotSupported,
            message: match vs.and_then(ValueSet::expansion) {
                Some(_) => format!(
                    "the code cannot be checked against the required value set {}: its system is not one the value set draws from (or no system is given)",
                    named()
                ),
                None => format!(
                    "the code cannot be checked against the required value set {}: it draws on terminology that is not shipped here",
                    named()
                ),
            },
        }),
        Membership::Unknown => None,
    }
}

/// Membership of one bound value; `None` when there is nothing to judge (no code at all).
pub(super) fn membership(
    vs: &ValueSet,
    bound_type: BoundType,
    value: &Value,
) -> Option<Membership> {
    let coding = |c: &Value| -> Option<Membership> {
        let code = c.get("code")?.as_str()?;
        Some(match c.get("system").and_then(Value::as_str) {
            Some(system) => vs.contains(Some(system), code),
            None => Membership::Unknown,
        })
    };
    match bound_type {
        BoundType::Code => Some(vs.contains(None, value.as_str()?)),
        BoundType::Coding => coding(value),
        BoundType::CodeableConcept => {
            let mut all_not_in = None;
            for c in value.get("coding")?.as_array()? {
                match coding(c) {
                    Some(Membership::In) => return Some(Membership::In),
                    Some(Membership::NotIn) => {
                        all_not_in.get_or_insert(true);
                    }
                    _ => all_not_in = Some(false),
                }
            }
            match all_not_in {
                Some(true) => Some(Membership::NotIn),
                Some(false) => Some(Membership::Unknown),
                None => None,
            }
        }
    }
}
