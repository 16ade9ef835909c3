//! The R4 definitions as lookup tables: every resource, complex datatype and backbone element with
//! its JSON properties, compiled from the official StructureDefinitions by `shared/fhir-r4/generate.py`
//! and embedded at build time.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// One JSON property of a type.
#[derive(Debug)]
pub struct Element {
    /// A primitive (`date`), a complex type (`HumanName`), a backbone path (`Patient.contact`) or
    /// `Resource` for embedded resources.
    pub type_name: &'static str,
    pub is_array: bool,
}

#[derive(Debug, Default)]
pub struct TypeDef {
    pub elements: HashMap<&'static str, Element>,
    /// Required elements: each entry lists the property names that satisfy it (several for a
    /// required choice such as `value[x]`).
    pub required: Vec<Vec<&'static str>>,
}

pub struct Schema {
    pub types: HashMap<&'static str, TypeDef>,
    pub primitives: HashSet<&'static str>,
    pub resources: Vec<&'static str>,
    pub patient_compartment: HashMap<&'static str, Vec<String>>,
}

const SCHEMA_JSON: &str = include_str!("../../fhir-r4/schema.json");
const COMPARTMENT_JSON: &str = include_str!("../../fhir-r4/compartment-patient.json");

/// The schema, parsed once. The embedded files are generated and tested; a malformed one would fail
/// every test, so parsing falls back to an empty schema rather than panicking in production.
pub static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    parse().unwrap_or_else(|| Schema {
        types: HashMap::new(),
        primitives: HashSet::new(),
        resources: Vec::new(),
        patient_compartment: HashMap::new(),
    })
});

fn leak(s: &str) -> &'static str {
    // The schema lives for the whole process; its strings are interned once at start-up.
    Box::leak(s.to_string().into_boxed_str())
}

fn parse() -> Option<Schema> {
    let raw: serde_json::Value = serde_json::from_str(SCHEMA_JSON).ok()?;
    let strings = |v: &serde_json::Value| -> Option<Vec<&'static str>> {
        v.as_array()?.iter().map(|s| s.as_str().map(leak)).collect()
    };
    let primitives: HashSet<&'static str> = strings(&raw["primitives"])?.into_iter().collect();
    let mut resources = strings(&raw["resources"])?;
    resources.sort_unstable();
    let mut types = HashMap::new();
    for (name, def) in raw["types"].as_object()? {
        let mut t = TypeDef::default();
        for (prop, spec) in def["e"].as_object()? {
            t.elements.insert(
                leak(prop),
                Element {
                    type_name: leak(spec[0].as_str()?),
                    is_array: spec[1].as_bool()?,
                },
            );
        }
        for req in def["req"].as_array()? {
            t.required.push(strings(req)?);
        }
        types.insert(leak(name), t);
    }
    let compartment: serde_json::Value = serde_json::from_str(COMPARTMENT_JSON).ok()?;
    let mut patient_compartment = HashMap::new();
    for (rt, paths) in compartment.as_object()? {
        let paths = paths
            .as_array()?
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()?;
        patient_compartment.insert(leak(rt), paths);
    }
    Some(Schema {
        types,
        primitives,
        resources,
        patient_compartment,
    })
}

pub fn is_resource_type(name: &str) -> bool {
    SCHEMA.resources.binary_search(&name).is_ok()
}

/// Every concrete R4 resource type, sorted.
pub fn resource_types() -> impl Iterator<Item = &'static str> {
    SCHEMA.resources.iter().copied()
}

/// Reference paths (relative to the resource) that put a resource in a patient's compartment.
pub fn patient_compartment_paths(resource_type: &str) -> &'static [String] {
    SCHEMA
        .patient_compartment
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn type_def(name: &str) -> Option<&'static TypeDef> {
    SCHEMA.types.get(name)
}

pub fn is_primitive(name: &str) -> bool {
    SCHEMA.primitives.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_r4_tables_are_complete() {
        assert_eq!(resource_types().count(), 146);
        assert!(is_resource_type("Patient") && !is_resource_type("DomainResource"));
        let patient = type_def("Patient").unwrap();
        assert_eq!(patient.elements["birthDate"].type_name, "date");
        assert!(patient.elements["name"].is_array);
        assert_eq!(patient.elements["deceasedBoolean"].type_name, "boolean");
        assert_eq!(patient.elements["contact"].type_name, "Patient.contact");
        let obs = type_def("Observation").unwrap();
        assert!(obs.required.iter().any(|r| r == &vec!["status"]));
        assert_eq!(
            type_def("Questionnaire.item").unwrap().elements["item"].type_name,
            "Questionnaire.item"
        );
        assert_eq!(patient_compartment_paths("Encounter"), ["subject"]);
        assert!(patient_compartment_paths("Organization").is_empty());
    }
}
