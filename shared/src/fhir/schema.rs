//! The R4 definitions as lookup tables: every resource, complex datatype and backbone element with
//! its JSON properties, compiled from the official StructureDefinitions by `shared/fhir-r4/generate.py`
//! (its docstring describes the file format) and embedded at build time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

const SCHEMA_JSON: &str = include_str!("../../fhir-r4/schema.json");
const COMPARTMENT_JSON: &str = include_str!("../../fhir-r4/compartment-patient.json");

/// The ids of the Bundles in the official package (`hl7.fhir.r4.examples`) that hold its
/// definitions (every StructureDefinition, SearchParameter, ValueSet...) rather than examples: what
/// the tables here are generated from, skipped where the examples are run.
pub const PACKAGE_DEFINITION_BUNDLES: [&str; 12] = [
    "resources",
    "types",
    "searchParams",
    "dataelements",
    "extensions",
    "profiles-others",
    "terminologies",
    "valuesets",
    "v2-valuesets",
    "v3-valuesets",
    "conceptmaps",
    "valueset-expansions",
];

/// FNV-1a: the tables are fixed at start-up and element names are short, so a simple hash beats
/// SipHash; a client choosing keys cannot grow a table, only probe it.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub(crate) type FastMap<V> = HashMap<Box<str>, V, BuildHasherDefault<Fnv>>;

/// The R4 primitive types (datatypes.html), each with its own JSON form and lexical rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    const ALL: [Primitive; 20] = [
        Primitive::Base64Binary,
        Primitive::Boolean,
        Primitive::Canonical,
        Primitive::Code,
        Primitive::Date,
        Primitive::DateTime,
        Primitive::Decimal,
        Primitive::Id,
        Primitive::Instant,
        Primitive::Integer,
        Primitive::Markdown,
        Primitive::Oid,
        Primitive::PositiveInt,
        Primitive::String,
        Primitive::Time,
        Primitive::UnsignedInt,
        Primitive::Uri,
        Primitive::Url,
        Primitive::Uuid,
        Primitive::Xhtml,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Base64Binary => "base64Binary",
            Primitive::Boolean => "boolean",
            Primitive::Canonical => "canonical",
            Primitive::Code => "code",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Decimal => "decimal",
            Primitive::Id => "id",
            Primitive::Instant => "instant",
            Primitive::Integer => "integer",
            Primitive::Markdown => "markdown",
            Primitive::Oid => "oid",
            Primitive::PositiveInt => "positiveInt",
            Primitive::String => "string",
            Primitive::Time => "time",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::Uri => "uri",
            Primitive::Url => "url",
            Primitive::Uuid => "uuid",
            Primitive::Xhtml => "xhtml",
        }
    }

    fn from_name(name: &str) -> Option<Primitive> {
        Primitive::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What an element holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primitive(Primitive),
    /// A complex datatype or backbone element: an index for [`type_at`].
    Complex(usize),
    /// An embedded resource (`contained`, `Bundle.entry.resource`), typed by its own `resourceType`.
    Resource,
}

/// One JSON property of a type.
#[derive(Debug)]
pub struct Element {
    name: Box<str>,
    /// `_name`, the property carrying a primitive's id and extensions; empty for other kinds.
    shadow: Box<str>,
    pub kind: Kind,
    /// The element repeats (max != "1"): its JSON form is an array.
    pub is_array: bool,
    pub min: u32,
    /// For an expanded choice (`valueQuantity`), its group in [`TypeDef::choice_name`].
    pub choice: Option<usize>,
}

impl Element {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shadow_name(&self) -> &str {
        &self.shadow
    }

    pub fn is_primitive(&self) -> bool {
        matches!(self.kind, Kind::Primitive(_))
    }
}

/// A required element, or a required choice satisfied by any of its expansions.
#[derive(Debug)]
pub struct Required {
    /// `status`, or `value[x]` for a choice.
    name: Box<str>,
    /// Indexes into [`TypeDef::elements`].
    pub elements: Vec<usize>,
}

impl Required {
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug)]
pub struct TypeDef {
    name: Box<str>,
    elements: Vec<Element>,
    by_name: FastMap<usize>,
    /// Choice base names (`value`); an object may hold at most one element of each.
    choices: Vec<Box<str>>,
    required: Vec<Required>,
}

impl TypeDef {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn element(&self, name: &str) -> Option<&Element> {
        self.by_name.get(name).and_then(|&i| self.elements.get(i))
    }

    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// An element's place in the definition's order (the order FHIR XML gives elements): its
    /// index in [`TypeDef::elements`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn choice_name(&self, group: usize) -> &str {
        self.choices.get(group).map(|c| &**c).unwrap_or("")
    }

    pub fn required(&self) -> &[Required] {
        &self.required
    }
}

#[derive(Debug, Default)]
struct Schema {
    types: Vec<TypeDef>,
    by_name: FastMap<usize>,
    /// Concrete resource types, sorted.
    resources: Vec<Box<str>>,
    patient_compartment: FastMap<Vec<String>>,
}

/// The schema, parsed once. The embedded files are generated and tested; a malformed one fails
/// every test, and in production yields an empty schema that rejects every resource rather than
/// a panic.
static SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse().unwrap_or_default());

fn parse() -> Option<Schema> {
    use serde_json::Value;
    let raw: Value = serde_json::from_str(SCHEMA_JSON).ok()?;
    let mut resources = raw["resources"]
        .as_array()?
        .iter()
        .map(|s| s.as_str().map(Box::from))
        .collect::<Option<Vec<Box<str>>>>()?;
    resources.sort_unstable();
    let raw_types = raw["types"].as_object()?;
    // Indexes first, so that elements can point at types defined later in the file.
    let by_name: FastMap<usize> = raw_types
        .keys()
        .enumerate()
        .map(|(i, k)| (Box::from(k.as_str()), i))
        .collect();
    let mut types = Vec::with_capacity(raw_types.len());
    for (name, props) in raw_types {
        let mut t = TypeDef {
            name: Box::from(name.as_str()),
            elements: Vec::new(),
            by_name: FastMap::default(),
            choices: Vec::new(),
            required: Vec::new(),
        };
        for (prop, spec) in props.as_object()? {
            let spec = spec.as_array()?;
            let type_name = spec.first()?.as_str()?;
            let kind = if let Some(p) = Primitive::from_name(type_name) {
                Kind::Primitive(p)
            } else if type_name == "Resource" {
                Kind::Resource
            } else {
                // `#Questionnaire.item` (a contentReference) reuses that backbone's table.
                let target = type_name.trim_start_matches('#');
                Kind::Complex(*by_name.get(target)?)
            };
            let is_array = spec.get(1).and_then(Value::as_u64).unwrap_or(0) == 1;
            let min = spec.get(2).and_then(Value::as_u64).unwrap_or(0);
            let choice = match spec.get(3).and_then(Value::as_str) {
                Some(base) => Some(match t.choices.iter().position(|c| &**c == base) {
                    Some(i) => i,
                    None => {
                        t.choices.push(Box::from(base));
                        t.choices.len() - 1
                    }
                }),
                None => None,
            };
            let index = t.elements.len();
            if min > 0 {
                match choice {
                    Some(group) => {
                        let label = format!("{}[x]", t.choice_name(group));
                        match t.required.iter_mut().find(|r| *r.name == *label) {
                            Some(r) => r.elements.push(index),
                            None => t.required.push(Required {
                                name: label.into(),
                                elements: vec![index],
                            }),
                        }
                    }
                    None => t.required.push(Required {
                        name: Box::from(prop.as_str()),
                        elements: vec![index],
                    }),
                }
            }
            let shadow = if matches!(kind, Kind::Primitive(_)) {
                format!("_{prop}").into()
            } else {
                Box::from("")
            };
            t.by_name.insert(Box::from(prop.as_str()), index);
            t.elements.push(Element {
                name: Box::from(prop.as_str()),
                shadow,
                kind,
                is_array,
                min: u32::try_from(min).ok()?,
                choice,
            });
        }
        types.push(t);
    }
    let compartment: Value = serde_json::from_str(COMPARTMENT_JSON).ok()?;
    let mut patient_compartment = FastMap::default();
    for (rt, paths) in compartment.as_object()? {
        let paths = paths
            .as_array()?
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()?;
        patient_compartment.insert(Box::from(rt.as_str()), paths);
    }
    Some(Schema {
        types,
        by_name,
        resources,
        patient_compartment,
    })
}

/// A concrete R4 resource type (not `Resource` or `DomainResource`).
pub fn is_resource_type(name: &str) -> bool {
    SCHEMA
        .resources
        .binary_search_by(|r| (**r).cmp(name))
        .is_ok()
}

/// Every concrete R4 resource type, sorted.
pub fn resource_types() -> impl Iterator<Item = &'static str> {
    SCHEMA.resources.iter().map(|r| &**r)
}

/// Reference paths (relative to the resource, e.g. `participant.actor`) that put a resource in a
/// patient's compartment; empty if the type is not in the compartment.
pub fn patient_compartment_paths(resource_type: &str) -> &'static [String] {
    SCHEMA
        .patient_compartment
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The table of a resource, complex datatype (`HumanName`) or backbone element (`Patient.contact`).
pub fn type_def(name: &str) -> Option<&'static TypeDef> {
    SCHEMA.by_name.get(name).and_then(|&i| SCHEMA.types.get(i))
}

/// The table behind [`Kind::Complex`].
pub fn type_at(index: usize) -> Option<&'static TypeDef> {
    SCHEMA.types.get(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(t: &str, e: &str) -> &'static Element {
        type_def(t)
            .unwrap()
            .element(e)
            .unwrap_or_else(|| panic!("{t}.{e}"))
    }

    #[test]
    fn the_r4_tables_are_complete() {
        assert_eq!(resource_types().count(), 146);
        let all: Vec<_> = resource_types().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(is_resource_type("Patient") && is_resource_type("ValueSet"));
        assert!(!is_resource_type("DomainResource") && !is_resource_type("HumanName"));

        let birth = element("Patient", "birthDate");
        assert_eq!(birth.kind, Kind::Primitive(Primitive::Date));
        assert_eq!(birth.shadow_name(), "_birthDate");
        assert!(!birth.is_array);
        assert!(element("Patient", "name").is_array);
        assert_eq!(
            element("Patient", "id").kind,
            Kind::Primitive(Primitive::Id)
        );
        // Element ids are plain strings; only a resource's logical id is an `id`.
        assert_eq!(
            element("HumanName", "id").kind,
            Kind::Primitive(Primitive::String)
        );
        assert_eq!(
            element("Extension", "url").kind,
            Kind::Primitive(Primitive::Uri)
        );
        let deceased = element("Patient", "deceasedBoolean");
        assert_eq!(deceased.kind, Kind::Primitive(Primitive::Boolean));
        let patient = type_def("Patient").unwrap();
        assert_eq!(patient.choice_name(deceased.choice.unwrap()), "deceased");
        assert!(patient.element("deceased[x]").is_none());
        assert!(patient.element("deceasedString").is_none());
        let Kind::Complex(contact) = element("Patient", "contact").kind else {
            panic!("Patient.contact is a backbone element")
        };
        assert_eq!(type_at(contact).unwrap().name(), "Patient.contact");
        assert_eq!(element("Patient", "contained").kind, Kind::Resource);
        assert_eq!(element("Bundle.entry", "resource").kind, Kind::Resource);
        assert_eq!(
            element("Parameters.parameter", "resource").kind,
            Kind::Resource
        );
        let Kind::Complex(q) = element("Questionnaire.item", "item").kind else {
            panic!("Questionnaire.item.item is a content reference")
        };
        assert_eq!(type_at(q).unwrap().name(), "Questionnaire.item");
        let Kind::Complex(quantity) = element("Observation", "valueQuantity").kind else {
            panic!("Observation.valueQuantity is a Quantity")
        };
        assert_eq!(type_at(quantity).unwrap().name(), "Quantity");

        let required = |t: &str| -> Vec<&str> {
            type_def(t)
                .unwrap()
                .required()
                .iter()
                .map(Required::name)
                .collect()
        };
        assert_eq!(required("Observation"), ["status", "code"]);
        assert_eq!(required("Extension"), ["url"]);
        assert_eq!(
            required("Questionnaire.item.enableWhen"),
            ["question", "operator", "answer[x]"]
        );
        assert!(required("Patient").is_empty());
        // The validator tracks choices in a u64 bitset.
        assert!(SCHEMA.types.iter().all(|t| t.choices.len() < 64));
    }

    #[test]
    fn the_patient_compartment_follows_the_r4_definition() {
        assert_eq!(patient_compartment_paths("Encounter"), ["subject"]);
        assert_eq!(
            patient_compartment_paths("Observation"),
            ["subject", "performer"]
        );
        assert_eq!(
            patient_compartment_paths("Appointment"),
            ["participant.actor"]
        );
        assert_eq!(patient_compartment_paths("Patient"), ["link.other"]);
        assert!(patient_compartment_paths("Organization").is_empty());
        assert!(patient_compartment_paths("Nonsense").is_empty());
        assert_eq!(SCHEMA.patient_compartment.len(), 66);
        // Every path walks Reference-typed elements of its resource.
        for (rt, paths) in &SCHEMA.patient_compartment {
            for path in paths {
                let mut t = type_def(rt).unwrap();
                for step in path.split('.') {
                    match t.element(step).map(|e| e.kind) {
                        Some(Kind::Complex(next)) => t = type_at(next).unwrap(),
                        _ => panic!("{rt}.{path}"),
                    }
                }
                assert_eq!(t.name(), "Reference", "{rt}.{path}");
            }
        }
    }
}
