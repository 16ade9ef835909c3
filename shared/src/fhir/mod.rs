//! FHIR R4 (4.0.1) resource handling: strict JSON intake, structural validation against the R4
//! definitions, and the parsed newtypes (`ResourceType`, `ResourceId`) every other layer takes.

pub mod json;
pub mod schema;
pub mod validate;

use std::fmt;

/// An R4 resource type name, known to the R4 definitions. The only way in is [`ResourceType::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub fn parse(name: &str) -> Option<ResourceType> {
        schema::resource_types()
            .find(|t| *t == name)
            .map(ResourceType)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Every R4 resource type, sorted.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        schema::resource_types().map(ResourceType)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A logical resource id: `[A-Za-z0-9\-\.]{1,64}` (R4 `id` datatype).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a resource id is 1 to 64 letters, digits, '-' or '.'")]
pub struct InvalidId;

impl ResourceId {
    pub fn parse(s: &str) -> Result<ResourceId, InvalidId> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            Ok(ResourceId(s.to_string()))
        } else {
            Err(InvalidId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-supplied name (element, parameter, type) made safe to echo in an error or a log: at most
/// 64 visible ASCII characters, anything else shown as `?`. Never used for values, which may be PHI.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_r4_id_type() {
        assert!(ResourceId::parse("abc-1.2").is_ok());
        assert!(ResourceId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a/b", "a b", "ä", &"a".repeat(65)] {
            assert_eq!(ResourceId::parse(bad), Err(InvalidId), "{bad}");
        }
    }

    #[test]
    fn printable_names_are_inert() {
        assert_eq!(printable("a\u{1b}[31mb\n"), "a?[31mb?");
        assert_eq!(printable(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn resource_types_come_from_r4() {
        assert_eq!(
            ResourceType::parse("Patient").map(|t| t.as_str()),
            Some("Patient")
        );
        assert!(ResourceType::parse("patient").is_none());
        assert!(ResourceType::parse("Element").is_none());
        assert!(ResourceType::all().count() > 140);
    }
}
