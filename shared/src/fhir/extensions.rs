//! The core R4 extension definitions (the 393 StructureDefinitions of `Bundle-extensions.json`) as
//! a lookup table: where each may be used, which `value[x]` types it takes, whether it is a modifier,
//! and the sub-extensions of a complex one. Compiled by `shared/fhir-r4/generate.py`
//! (`extensions.json`, format in its docstring) and embedded at build time; the validator consults
//! it for every extension whose url is a core one. Other extensions are open by design.

use super::schema::FastMap;
use std::sync::LazyLock;

const EXTENSIONS_JSON: &str = include_str!("../../fhir-r4/extensions.json");

/// One core extension definition.
#[derive(Debug)]
pub struct Definition {
    /// Element paths or type names it may be used on (`Patient`, `Element`, `HumanName.given`);
    /// `None` when a context we do not decide (fhirpath, extension) allows it anywhere.
    pub contexts: Option<Vec<Box<str>>>,
    /// The `value[x]` types it allows (`Address`, `dateTime`); empty for a complex extension.
    pub types: Vec<Box<str>>,
    /// It changes the meaning of its holder: it must be a `modifierExtension`, and only such.
    pub modifier: bool,
    /// A complex extension's sub-extensions: url (`code`) and the value types it allows.
    pub parts: Vec<(Box<str>, Vec<Box<str>>)>,
}

impl Definition {
    pub fn allows_type(&self, ty: &str) -> bool {
        self.types.iter().any(|t| **t == *ty)
    }

    /// The value types of a sub-extension of this (complex) extension, if it defines one by `url`.
    pub fn part(&self, url: &str) -> Option<&[Box<str>]> {
        self.parts
            .iter()
            .find(|(u, _)| **u == *url)
            .map(|(_, t)| t.as_slice())
    }
}

/// Parsed once; a malformed embedded table (the tests prove it is not) yields an empty one, which
/// checks no extension rather than panicking.
static TABLE: LazyLock<FastMap<Definition>> = LazyLock::new(|| parse().unwrap_or_default());

fn parse() -> Option<FastMap<Definition>> {
    use serde_json::Value;
    let strings = |v: &Value| -> Option<Vec<Box<str>>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(Box::from))
            .collect()
    };
    let raw: Value = serde_json::from_str(EXTENSIONS_JSON).ok()?;
    let mut table = FastMap::default();
    for (url, spec) in raw.as_object()? {
        let spec = spec.as_array()?;
        let contexts = match spec.first()? {
            Value::Null => None,
            v => Some(strings(v)?),
        };
        let parts = spec
            .get(3)?
            .as_object()?
            .iter()
            .map(|(u, t)| Some((Box::from(u.as_str()), strings(t)?)))
            .collect::<Option<Vec<_>>>()?;
        table.insert(
            Box::from(url.as_str()),
            Definition {
                contexts,
                types: strings(spec.get(1)?)?,
                modifier: spec.get(2)?.as_u64()? == 1,
                parts,
            },
        );
    }
    Some(table)
}

/// The definition of a core extension, by its url.
pub fn definition(url: &str) -> Option<&'static Definition> {
    TABLE.get(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_extensions_are_all_there() {
        assert_eq!(TABLE.len(), 393);
        let birth_place =
            definition("http://hl7.org/fhir/StructureDefinition/patient-birthPlace").unwrap();
        assert_eq!(
            birth_place.contexts.as_deref(),
            Some(&[Box::from("Patient")][..])
        );
        assert!(birth_place.allows_type("Address") && !birth_place.allows_type("string"));
        assert!(!birth_place.modifier && birth_place.parts.is_empty());
        let nationality =
            definition("http://hl7.org/fhir/StructureDefinition/patient-nationality").unwrap();
        assert!(nationality.types.is_empty());
        assert_eq!(
            nationality.part("code"),
            Some(&[Box::from("CodeableConcept")][..])
        );
        assert!(nationality.part("colour").is_none());
        // FHIRPath System types in the snapshot are named by their FHIR type.
        let birth_time =
            definition("http://hl7.org/fhir/StructureDefinition/patient-birthTime").unwrap();
        assert!(birth_time.allows_type("dateTime"));
        assert!(TABLE.values().any(|d| d.modifier));
        assert!(definition("http://example.org/mine").is_none());
    }
}
