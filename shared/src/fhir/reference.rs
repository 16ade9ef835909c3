//! FHIR references (R4 `references.html`), parsed once by the strict grammar and used by every
//! part of the core that reads one: the key scope and the compartments a resource is in, the
//! search index, search values, the access policy and validation. A reference two parts read
//! differently is how data gets sealed in one patient's record and indexed in another's, so
//! nothing outside this module splits a reference string.
//!
//! The grammar (R4 `Reference.reference`, `references.html#literal`):
//! - relative to this server: `Type/id` or `Type/id/_history/vid` — nothing else, exactly;
//! - absolute and RESTful: `http(s)://base/Type/id[/_history/vid]`, matched (as the spec's regex
//!   does) by its last segments;
//! - other absolute URIs (canonical URLs, external non-RESTful ones), kept whole;
//! - `urn:uuid:<uuid>` and `urn:oid:<oid>` (Bundle-internal);
//! - `#id` (or `#` alone) for a contained resource;
//! - `Type?query`, a conditional reference, resolved inside a transaction.

use super::{printable, ResourceId, ResourceType};
use std::fmt;

/// A parsed literal reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    /// A resource by type and id: relative (`base` is `None`) or at the end of an absolute URL.
    Resource {
        resource_type: ResourceType,
        id: &'a str,
        version: Option<&'a str>,
        base: Option<&'a str>,
    },
    /// `#id` (`""` for `#`, the containing resource).
    Contained(&'a str),
    /// `urn:uuid:...` or `urn:oid:...`.
    Urn(&'a str),
    /// `Type?query`.
    Conditional {
        resource_type: ResourceType,
        query: &'a str,
    },
    /// Any other absolute URI (a canonical, an external system's URL), compared whole.
    Url(&'a str),
}

/// Why a reference string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BadReference(String);

impl fmt::Display for BadReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> BadReference {
    BadReference(msg.into())
}

/// `[A-Za-z0-9\-\.]{1,64}`: the id datatype, also used for version ids.
fn is_id(s: &str) -> bool {
    ResourceId::parse(s).is_ok()
}

/// The resource type named by a path segment: exactly an R4 type name.
fn resource_type(s: &str) -> Option<ResourceType> {
    ResourceType::parse(s)
}

impl<'a> Reference<'a> {
    /// Parse a `Reference.reference` (or a reference search value, see [`SearchTarget::parse`]).
    pub fn parse(s: &'a str) -> Result<Reference<'a>, BadReference> {
        if s.is_empty() {
            return Err(bad("a reference must not be empty"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("a reference holds no spaces or control characters"));
        }
        if let Some(id) = s.strip_prefix('#') {
            return if id.is_empty() || is_id(id) {
                Ok(Reference::Contained(id))
            } else {
                Err(bad(
                    "a contained reference is '#' and the contained resource's id",
                ))
            };
        }
        if let Some(uuid) = s.strip_prefix("urn:uuid:") {
            return if is_uuid(uuid) {
                Ok(Reference::Urn(s))
            } else {
                Err(bad("urn:uuid: must be followed by a UUID"))
            };
        }
        if let Some(oid) = s.strip_prefix("urn:oid:") {
            return if is_oid(oid) {
                Ok(Reference::Urn(s))
            } else {
                Err(bad("urn:oid: must be followed by an OID"))
            };
        }
        if let Some((t, query)) = s.split_once('?') {
            // Only `Type?query` is conditional; an absolute URL may carry a query of its own.
            if !t.contains([':', '/']) {
                let resource_type = resource_type(t).ok_or_else(|| {
                    bad(format!(
                        "'{}' in a conditional reference is not an R4 resource type",
                        printable(t)
                    ))
                })?;
                if query.is_empty() {
                    return Err(bad("a conditional reference needs search parameters"));
                }
                return Ok(Reference::Conditional {
                    resource_type,
                    query,
                });
            }
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
                return Ok(restful_tail(rest)
                    .map(|(resource_type, id, version, at)| Reference::Resource {
                        resource_type,
                        id,
                        version,
                        base: Some(&s[..scheme.len() + 3 + at]),
                    })
                    .unwrap_or(Reference::Url(s)));
            }
        }
        if is_absolute_uri(s) {
            return Ok(Reference::Url(s));
        }
        // Relative: exactly `Type/id` or `Type/id/_history/vid`.
        let parts: Vec<&str> = s.split('/').collect();
        let (t, id, version) = match parts.as_slice() {
            [t, id] => (*t, *id, None),
            [t, id, "_history", v] => (*t, *id, Some(*v)),
            _ => {
                return Err(bad(
                    "a relative reference is Type/id or Type/id/_history/version",
                ))
            }
        };
        let resource_type = resource_type(t).ok_or_else(|| {
            bad(format!(
                "'{}' in a reference is not an R4 resource type",
                printable(t)
            ))
        })?;
        if !is_id(id) || version.is_some_and(|v| !is_id(v)) {
            return Err(bad(
                "a reference's id (and version) is 1 to 64 letters, digits, '-' or '.'",
            ));
        }
        Ok(Reference::Resource {
            resource_type,
            id,
            version,
            base: None,
        })
    }

    /// The resource this names, by type and id, if it names one.
    pub fn target(&self) -> Option<(ResourceType, &'a str)> {
        match self {
            Reference::Resource {
                resource_type, id, ..
            } => Some((*resource_type, id)),
            _ => None,
        }
    }

    /// The patient whose compartment this reference puts a resource in: `Patient/<id>`.
    pub fn patient_compartment(&self) -> Option<String> {
        match self.target() {
            Some((t, id)) if t.as_str() == "Patient" => Some(format!("Patient/{id}")),
            _ => None,
        }
    }
}

/// `Type/id[/_history/vid]` at the end of an absolute URL's part after the scheme, with the byte
/// offset (in `rest`) where `Type` starts. The base before it must hold a host.
fn restful_tail(rest: &str) -> Option<(ResourceType, &str, Option<&str>, usize)> {
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    let (t_at, version) = if n >= 5 && parts[n - 2] == "_history" {
        (n - 4, Some(parts[n - 1]))
    } else if n >= 3 {
        (n - 2, None)
    } else {
        return None;
    };
    let t = resource_type(parts[t_at])?;
    let id = parts[t_at + 1];
    if !is_id(id) || version.is_some_and(|v| !is_id(v)) || parts[0].is_empty() {
        return None;
    }
    let offset: usize = parts[..t_at].iter().map(|p| p.len() + 1).sum();
    Some((t, id, version, offset))
}

/// `scheme:...` with an RFC 3986 scheme.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    !rest.is_empty()
        && scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_oid(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

/// A reference search value (`subject=Patient/1`, `subject=1` with `:Patient` or a single target
/// type, an absolute URL): the target type (if named) and id, or the whole URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchTarget<'a> {
    Resource {
        resource_type: Option<ResourceType>,
        id: &'a str,
    },
    Url(&'a str),
}

impl<'a> SearchTarget<'a> {
    /// Parse with the same grammar as stored references; a bare id is an id of any target type.
    pub fn parse(value: &'a str) -> Result<SearchTarget<'a>, BadReference> {
        if is_id(value) {
            return Ok(SearchTarget::Resource {
                resource_type: None,
                id: value,
            });
        }
        match Reference::parse(value)? {
            Reference::Resource {
                resource_type, id, ..
            } => Ok(SearchTarget::Resource {
                resource_type: Some(resource_type),
                id,
            }),
            Reference::Url(u) => Ok(SearchTarget::Url(u)),
            _ => Err(bad(
                "a reference search value is an id, Type/id or an absolute URL",
            )),
        }
    }
}

/// Every patient compartment a resource is in, by the R4 Patient CompartmentDefinition's
/// reference paths, in the order of those paths (a Patient is first in its own): `Patient/<id>`.
/// The key scope is the first; the access policy decides on all of them.
pub fn patient_compartments(
    resource_type: ResourceType,
    id: &str,
    resource: &serde_json::Value,
) -> Vec<String> {
    let mut out = Vec::new();
    if resource_type.as_str() == "Patient" {
        out.push(format!("Patient/{id}"));
    }
    for path in super::schema::patient_compartment_paths(resource_type.as_str()) {
        let mut current = vec![resource];
        for step in path.split('.') {
            let mut next = Vec::new();
            for v in current {
                match v.get(step) {
                    Some(serde_json::Value::Array(items)) => next.extend(items.iter()),
                    Some(other) => next.push(other),
                    None => {}
                }
            }
            current = next;
        }
        for v in current {
            let Some(text) = v.get("reference").and_then(serde_json::Value::as_str) else {
                continue;
            };
            if let Some(p) = Reference::parse(text)
                .ok()
                .and_then(|r| r.patient_compartment())
            {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The compartments the access policy decides on: [`patient_compartments`], except that a
/// Patient is in its own alone — `Patient.link` points at another record of (usually) the same
/// person, and a patient reading their own record sees that link, not the other record.
pub fn access_compartments(
    resource_type: ResourceType,
    id: &str,
    resource: &serde_json::Value,
) -> Vec<String> {
    if resource_type.as_str() == "Patient" {
        return vec![format!("Patient/{id}")];
    }
    patient_compartments(resource_type, id, resource)
}

/// A literal reference to a resource by type and id, as found in a resource: the FHIRPath of its
/// `Reference` element, in the validator's form (`Observation.performer[0]`,
/// `Patient.extension[0].value.ofType(Reference)`,
/// `Observation.contained[0].ofType(Specimen).subject`), and the parsed `reference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    pub path: String,
    pub reference: Reference<'a>,
}

/// Every `Reference` element of a resource (and of its contained resources) whose `reference`
/// names a resource by type and id ([`Reference::Resource`], relative or absolute), walked by the
/// R4 definitions so that each comes with its FHIRPath. Contained (`#id`), `urn:` and conditional
/// references, other URLs, logical references (an `identifier` alone) and canonicals (a `canonical`
/// is a primitive, never a `Reference`) are not returned; nor are the references inside resources a
/// Bundle or a Parameters carries, which resolve inside that Bundle (R4 `bundle.html#references`).
/// The resource is expected to have passed validation (an unknown element is skipped here).
pub fn resource_references(resource: &serde_json::Value) -> Vec<Found<'_>> {
    let mut out = Vec::new();
    let Some(map) = resource.as_object() else {
        return out;
    };
    let Some(rt) = map.get("resourceType").and_then(serde_json::Value::as_str) else {
        return out;
    };
    if let Some(def) = super::schema::type_def(rt) {
        let mut path = String::from(rt);
        walk_references(map, def, &mut path, 0, &mut out);
    }
    out
}

/// Deeper than validation allows: nothing more is walked (validation refused it already).
const MAX_REFERENCE_DEPTH: usize = 64;

fn walk_references<'a>(
    map: &'a serde_json::Map<String, serde_json::Value>,
    def: &'static super::schema::TypeDef,
    path: &mut String,
    depth: usize,
    out: &mut Vec<Found<'a>>,
) {
    use super::schema::{type_at, type_def, Kind};
    use serde_json::Value;
    if depth > MAX_REFERENCE_DEPTH {
        return;
    }
    if def.name() == "Reference" {
        if let Some(Value::String(text)) = map.get("reference") {
            if let Ok(reference @ Reference::Resource { .. }) = Reference::parse(text) {
                out.push(Found {
                    path: path.clone(),
                    reference,
                });
            }
        }
    }
    for (key, value) in map {
        // A primitive's `_name` holds its id and extensions, which may hold references; they
        // belong to the primitive's own path.
        let (name, el_def) = match key.strip_prefix('_') {
            Some(base) if def.element(base).is_some_and(|e| e.is_primitive()) => {
                (base, type_def("Element"))
            }
            Some(_) => continue,
            None => match def.element(key).map(|e| e.kind) {
                Some(Kind::Complex(i)) => (key.as_str(), type_at(i)),
                Some(Kind::Resource) if key == "contained" => (key.as_str(), None),
                _ => continue,
            },
        };
        let mark = path.len();
        path.push('.');
        match def.element(key).and_then(|e| e.choice) {
            Some(group) => {
                let type_name = el_def.map(|t| t.name()).unwrap_or_default();
                path.push_str(def.choice_name(group));
                path.push_str(".ofType(");
                path.push_str(type_name);
                path.push(')');
            }
            None => path.push_str(name),
        }
        let mut visit = |v: &'a Value, path: &mut String| {
            let Value::Object(child) = v else { return };
            match el_def {
                Some(t) => walk_references(child, t, path, depth + 1, out),
                // Into a contained resource, typed as the validator names it:
                // `Observation.contained[0].ofType(Specimen).subject`.
                None => {
                    if let Some(t) = child
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .and_then(type_def)
                    {
                        let at = path.len();
                        path.push_str(".ofType(");
                        path.push_str(t.name());
                        path.push(')');
                        walk_references(child, t, path, depth + 1, out);
                        path.truncate(at);
                    }
                }
            }
        };
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = path.len();
                    {
                        use std::fmt::Write;
                        let _ = write!(path, "[{i}]");
                    }
                    visit(item, path);
                    path.truncate(at);
                }
            }
            other => visit(other, path),
        }
        path.truncate(mark);
    }
}

/// The key scope of a resource: its (first) patient's compartment if it has one, else its type.
pub fn key_scope(
    resource_type: crate::fhir::ResourceType,
    id: &str,
    resource: &serde_json::Value,
) -> String {
    patient_compartments(resource_type, id, resource)
        .into_iter()
        .next()
        .unwrap_or_else(|| format!("type/{resource_type}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Option<(String, String)> {
        Reference::parse(s)
            .ok()?
            .target()
            .map(|(t, i)| (t.to_string(), i.to_string()))
    }

    #[test]
    fn relative_references_are_exactly_type_and_id() {
        assert_eq!(target("Patient/p1"), Some(("Patient".into(), "p1".into())));
        assert_eq!(
            target("Patient/p1/_history/2"),
            Some(("Patient".into(), "p1".into()))
        );
        for bad in [
            "Patient/B/_history/1/Patient/A",
            "Patient/a/b",
            "Patient/",
            "/Patient/a",
            "Patient",
            "patient/a",
            "Patent/a",
            "Patient/a b",
            "Patient/a\u{0}",
            "Patient/a/_history/",
            "Patient/a/_history/1/x",
            "",
            "#a b",
            "urn:uuid:nope",
            "urn:oid:1..2",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn absolute_urls_name_their_last_type_and_id() {
        assert_eq!(
            target("https://ehr.example/fhir/Patient/p2/_history/3"),
            Some(("Patient".into(), "p2".into()))
        );
        // Whatever sits in the base, every reader sees the same target.
        assert_eq!(
            target("http://x/Patient/B/_history/1/Patient/A"),
            Some(("Patient".into(), "A".into()))
        );
        assert_eq!(
            Reference::parse("http://hl7.org/fhir/ValueSet/my-vs|4.0.1").unwrap(),
            Reference::Url("http://hl7.org/fhir/ValueSet/my-vs|4.0.1")
        );
        assert_eq!(
            Reference::parse("http://example.org").unwrap(),
            Reference::Url("http://example.org")
        );
    }

    #[test]
    fn other_forms() {
        assert_eq!(Reference::parse("#c1").unwrap(), Reference::Contained("c1"));
        assert_eq!(Reference::parse("#").unwrap(), Reference::Contained(""));
        assert!(matches!(
            Reference::parse("urn:uuid:6f1a9d3e-0b7c-4e7a-9d2f-1a2b3c4d5e6f").unwrap(),
            Reference::Urn(_)
        ));
        assert!(matches!(
            Reference::parse("urn:oid:1.2.840.113619").unwrap(),
            Reference::Urn(_)
        ));
        assert!(matches!(
            Reference::parse("Patient?identifier=urn:mrn|1").unwrap(),
            Reference::Conditional { .. }
        ));
        assert!(Reference::parse("Patent?identifier=x").is_err());
    }

    #[test]
    fn search_values_use_the_same_grammar() {
        assert_eq!(
            SearchTarget::parse("p1").unwrap(),
            SearchTarget::Resource {
                resource_type: None,
                id: "p1"
            }
        );
        assert!(SearchTarget::parse("Patient/B/_history/1/Patient/A").is_err());
        assert!(SearchTarget::parse("a\u{0}b").is_err());
    }

    fn found(resource: serde_json::Value) -> Vec<(String, String)> {
        resource_references(&resource)
            .into_iter()
            .map(|f| {
                let (t, id) = f.reference.target().unwrap_or_else(|| unreachable!());
                (f.path, format!("{t}/{id}"))
            })
            .collect()
    }

    #[test]
    fn resource_references_come_with_their_fhirpath() {
        let obs = serde_json::json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "performer": [
                {"reference": "#c1"},
                {"reference": "Practitioner/d1/_history/2"},
                {"identifier": {"value": "logical", "assigner": {"reference": "Organization/o1"}}},
            ],
            "hasMember": [{"reference": "urn:uuid:6f1a9d3e-0b7c-4e7a-9d2f-1a2b3c4d5e6f"}],
            "derivedFrom": [{"reference": "https://other.example/fhir/Observation/o9"}],
            "focus": [{"reference": "Patient?identifier=a|b"}],
            "extension": [{"url": "u", "valueReference": {"reference": "Device/dv1"}}],
            "_status": {"extension": [{"url": "u", "valueReference": {"reference": "Device/dv2"}}]},
            "contained": [{"resourceType": "Specimen", "id": "c1",
                           "subject": {"reference": "Patient/p2"}}],
            "instantiatesCanonical": ["http://example.org/PlanDefinition/x"],
        });
        assert_eq!(
            found(obs),
            [
                ("Observation.subject".into(), "Patient/p1".into()),
                ("Observation.performer[1]".into(), "Practitioner/d1".into()),
                (
                    "Observation.performer[2].identifier.assigner".into(),
                    "Organization/o1".into()
                ),
                ("Observation.derivedFrom[0]".into(), "Observation/o9".into()),
                (
                    "Observation.extension[0].value.ofType(Reference)".into(),
                    "Device/dv1".into()
                ),
                (
                    "Observation.status.extension[0].value.ofType(Reference)".into(),
                    "Device/dv2".into()
                ),
                (
                    "Observation.contained[0].ofType(Specimen).subject".into(),
                    "Patient/p2".into()
                ),
            ]
        );
        // A Bundle's entries refer to each other; they are not this server's references.
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Observation",
                                    "subject": {"reference": "Patient/p1"}}}]});
        assert!(found(bundle).is_empty());
    }
}
