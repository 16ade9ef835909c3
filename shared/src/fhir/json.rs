//! Strict JSON intake for FHIR resources: lossless numbers, no duplicate keys, bounded depth.
//!
//! serde_json (with `arbitrary_precision` and `preserve_order`) keeps `1.50` as `1.50` and keeps the
//! client's key order, so a stored resource is exactly what was sent. It silently lets a later duplicate
//! key win, which FHIR forbids and which hides what the client meant, so a first pass rejects duplicates.
//! serde_json's own recursion limit (128) bounds nesting, so a 10,000-deep document is an error, not a
//! stack overflow.

use super::printable;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Why a body is not acceptable JSON; the message is safe to show to the client (it carries positions,
/// never content).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct JsonError(pub String);

/// How deeply a stored resource may nest: what every later parse of it (serde_json's recursion
/// limit, 128) reads back whole, with room for the Bundle a resource travels in (`Bundle.entry[i].
/// resource` adds three levels). A document built in memory — a patch's result — never passed
/// the intake's parse, so the store checks this on every write ([`depth`]).
pub const MAX_STORED_DEPTH: usize = 124;

/// The nesting depth of a value (a scalar is 0, `{}` and `[]` are 1), counted without recursion.
pub fn depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Object(m) => Box::new(m.values()),
            serde_json::Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// Parse a request body into a JSON value, refusing duplicate object keys.
pub fn parse(body: &[u8]) -> Result<serde_json::Value, JsonError> {
    let text = check(body)?;
    serde_json::from_str::<serde_json::Value>(text).map_err(|e| JsonError(describe(&e)))
}

/// Check a request body without building it: UTF-8, well-formed, no duplicate object keys, bounded
/// depth. Returns it as text, for a caller that deserialises it piecemeal.
pub fn check(body: &[u8]) -> Result<&str, JsonError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        JsonError(format!(
            "body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    serde_json::from_str::<DuplicateCheck>(text).map_err(|e| JsonError(describe(&e)))?;
    Ok(text)
}

fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json's messages quote unknown input only for `unknown variant` style errors, which
    // `Value` never raises; they name line and column, which is what a client needs.
    format!("invalid JSON: {msg}")
}

/// Walks the document once and fails on the first object with a repeated key.
struct DuplicateCheck;

impl<'de> Deserialize<'de> for DuplicateCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DuplicateCheckVisitor)
    }
}

struct DuplicateCheckVisitor;

impl<'de> Visitor<'de> for DuplicateCheckVisitor {
    type Value = DuplicateCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_string<E>(self, _: String) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_unit<E>(self) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }
    fn visit_none<E>(self) -> Result<DuplicateCheck, E> {
        Ok(DuplicateCheck)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DuplicateCheck, A::Error> {
        while seq.next_element::<DuplicateCheck>()?.is_some() {}
        Ok(DuplicateCheck)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DuplicateCheck, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key '{}'",
                    printable(&key)
                )));
            }
            map.next_value::<DuplicateCheck>()?;
        }
        Ok(DuplicateCheck)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_decimal_precision_and_key_order() {
        let v = parse(br#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"id":"a"}"#)
            .unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"id":"a"}"#
        );
    }

    #[test]
    fn depth_counts_containers_without_recursion() {
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        let mut deep = serde_json::json!(null);
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert_eq!(depth(&deep), 100_000);
        // Dropping it recursively would overflow the stack; unwind it level by level.
        while let serde_json::Value::Array(mut a) = deep {
            deep = a.pop().unwrap_or_default();
        }
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        let err = parse(br#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        assert!(err.0.contains("duplicate key 'b'"), "{err}");
        assert!(parse(br#"{"a":[{"b":1},{"b":2}]}"#).is_ok());
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        let body = "[".repeat(10_000) + &"]".repeat(10_000);
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(err.0.contains("recursion limit"), "{err}");
    }

    #[test]
    fn refuses_lone_surrogates_and_bad_utf8() {
        assert!(parse(br#"{"a":"\ud800"}"#).is_err());
        assert!(parse(b"{\"a\":\"\xff\"}").is_err());
    }
}
