//! Structural validation of R4 JSON resources against the R4 definitions: known elements only, the
//! right JSON types, arrays where (and only where) the definition repeats, primitives in their lexical
//! forms, required elements present, embedded resources checked as resources. Every problem is named
//! by a FHIRPath-like location (`Patient.name[0].given[1]`).

use super::printable;
use super::schema::{self, TypeDef};
use regex::Regex;
use serde_json::{Map, Value};
use std::sync::LazyLock;

/// One problem found in a resource; safe to show to the client (element paths, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

const MAX_ISSUES: usize = 100;
/// Strings longer than this are refused (base64Binary and xhtml are bounded by the body limit).
const MAX_STRING: usize = 1024 * 1024;

struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn issue(&mut self, path: &str, message: impl Into<String>) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue {
                path: path.to_string(),
                message: message.into(),
            });
        }
    }
}

/// Check a resource; `Err` lists every problem found (at most 100).
pub fn validate_resource(resource: &Value) -> Result<(), Vec<Issue>> {
    let mut c = Checker { issues: Vec::new() };
    check_resource(&mut c, resource, "");
    if c.issues.is_empty() {
        Ok(())
    } else {
        Err(c.issues)
    }
}

fn check_resource(c: &mut Checker, value: &Value, at: &str) {
    let Value::Object(map) = value else {
        c.issue(at, "a resource must be a JSON object");
        return;
    };
    let rt = match map.get("resourceType") {
        Some(Value::String(rt)) if schema::is_resource_type(rt) => rt.as_str(),
        Some(Value::String(_)) => {
            let path = join(at, "resourceType");
            c.issue(&path, "resourceType is not an R4 resource type");
            return;
        }
        _ => {
            c.issue(
                &join(at, "resourceType"),
                "resourceType is missing or not a string",
            );
            return;
        }
    };
    let Some(def) = schema::type_def(rt) else {
        c.issue(at, "resource type has no definition");
        return;
    };
    // A resource's own path starts with its type (`Patient.name`); an embedded one keeps its place
    // (`Bundle.entry[0].resource.name`).
    let path = if at.is_empty() {
        rt.to_string()
    } else {
        at.to_string()
    };
    check_object(c, map, def, &path, true);
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn check_object(
    c: &mut Checker,
    map: &Map<String, Value>,
    def: &TypeDef,
    path: &str,
    is_resource: bool,
) {
    if map.is_empty() {
        c.issue(path, "an object must not be empty");
        return;
    }
    for (key, value) in map {
        if is_resource && key == "resourceType" {
            continue;
        }
        let here = format!("{path}.{key}");
        if let Some(base) = key.strip_prefix('_') {
            match def.elements.get(base) {
                Some(el) if schema::is_primitive(el.type_name) => {
                    check_primitive_extension(c, value, el.is_array, map.get(base), &here)
                }
                _ => c.issue(&here, format!("unknown element '{}'", printable(key))),
            }
            continue;
        }
        let Some(el) = def.elements.get(key.as_str()) else {
            c.issue(&here, format!("unknown element '{}'", printable(key)));
            continue;
        };
        if el.is_array {
            let Value::Array(items) = value else {
                c.issue(&here, "this element repeats: it must be a JSON array");
                continue;
            };
            if items.is_empty() {
                c.issue(&here, "arrays must not be empty");
            }
            let shadow = map.get(&format!("_{key}")).and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{here}[{i}]");
                if item.is_null() {
                    // A null is only a placeholder for a value carried by the `_key` array.
                    let covered = schema::is_primitive(el.type_name)
                        && shadow.and_then(|s| s.get(i)).is_some_and(|s| !s.is_null());
                    if !covered {
                        c.issue(&item_path, "null is not a value");
                    }
                    continue;
                }
                check_value(c, item, el.type_name, &item_path);
            }
        } else {
            if value.is_array() {
                c.issue(
                    &here,
                    "this element does not repeat: it must not be an array",
                );
                continue;
            }
            check_value(c, value, el.type_name, &here);
        }
    }
    for alternatives in &def.required {
        let present = alternatives
            .iter()
            .any(|k| map.contains_key(*k) || map.contains_key(&format!("_{k}")));
        if !present {
            let name = alternatives.first().copied().unwrap_or("");
            let name = if alternatives.len() > 1 {
                // value[x]: name the choice, not its first expansion.
                common_prefix(alternatives)
            } else {
                name.to_string()
            };
            c.issue(&format!("{path}.{name}"), "required element is missing");
        }
    }
}

fn common_prefix(names: &[&str]) -> String {
    let first = names.first().copied().unwrap_or("");
    let len = first
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(first.len()))
        .take_while(|&i| names.iter().all(|n| n.get(..i) == first.get(..i)))
        .last()
        .unwrap_or(0);
    format!("{}[x]", &first[..len])
}

fn check_primitive_extension(
    c: &mut Checker,
    value: &Value,
    is_array: bool,
    sibling: Option<&Value>,
    path: &str,
) {
    let Some(element) = schema::type_def("Element") else {
        return;
    };
    let check_one = |c: &mut Checker, v: &Value, p: &str| match v {
        Value::Object(m) => check_object(c, m, element, p, false),
        _ => c.issue(p, "a primitive's extension holder must be a JSON object"),
    };
    if is_array {
        let Value::Array(items) = value else {
            c.issue(path, "this element repeats: it must be a JSON array");
            return;
        };
        if let Some(Value::Array(values)) = sibling {
            if values.len() != items.len() {
                c.issue(path, "must have as many entries as the values it extends");
            }
        }
        for (i, item) in items.iter().enumerate() {
            if !item.is_null() {
                check_one(c, item, &format!("{path}[{i}]"));
            }
        }
    } else {
        check_one(c, value, path);
    }
}

fn check_value(c: &mut Checker, value: &Value, type_name: &str, path: &str) {
    if schema::is_primitive(type_name) {
        check_primitive(c, value, type_name, path);
        return;
    }
    if type_name == "Resource" {
        check_resource(c, value, path);
        return;
    }
    let Some(def) = schema::type_def(type_name) else {
        c.issue(path, format!("no definition for type {type_name}"));
        return;
    };
    match value {
        Value::Object(map) => {
            check_object(c, map, def, path, false);
            if type_name == "Extension" {
                let values = map.keys().filter(|k| k.starts_with("value")).count();
                let nested = map.contains_key("extension");
                if values > 1 || (values == 1 && nested) {
                    c.issue(
                        path,
                        "an extension has either one value[x] or nested extensions",
                    );
                }
            }
        }
        _ => c.issue(path, format!("must be a JSON object ({type_name})")),
    }
}

static DATE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$").ok()
});
static DATE_TIME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$").ok()
});
static INSTANT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$").ok()
});
static TIME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?$").ok()
});
static OID: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$").ok());
static UUID: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$").ok()
});

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// A full date (YYYY-MM-DD prefix) must exist in the calendar: the regexes allow 02-31.
fn calendar_ok(s: &str) -> bool {
    match s.get(..10) {
        Some(d) if s.len() >= 10 => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok(),
        _ => true,
    }
}

fn check_primitive(c: &mut Checker, value: &Value, type_name: &str, path: &str) {
    match type_name {
        "boolean" => {
            if !value.is_boolean() {
                c.issue(path, "must be a JSON boolean (true or false)");
            }
        }
        "integer" | "positiveInt" | "unsignedInt" => {
            let Value::Number(n) = value else {
                c.issue(path, format!("must be a JSON number ({type_name})"));
                return;
            };
            let text = n.to_string();
            let min = match type_name {
                "positiveInt" => 1,
                "unsignedInt" => 0,
                _ => i64::from(i32::MIN),
            };
            match text.parse::<i64>() {
                Ok(v) if v >= min && v <= i64::from(i32::MAX) => {}
                _ => c.issue(
                    path,
                    format!("must be a whole number in the range of {type_name}"),
                ),
            }
        }
        "decimal" => {
            if !value.is_number() {
                c.issue(path, "must be a JSON number (decimal)");
            }
        }
        _ => {
            let Value::String(s) = value else {
                c.issue(path, format!("must be a JSON string ({type_name})"));
                return;
            };
            check_string(c, s, type_name, path);
        }
    }
}

fn check_string(c: &mut Checker, s: &str, type_name: &str, path: &str) {
    if s.is_empty() {
        c.issue(path, "strings must not be empty");
        return;
    }
    if s.len() > MAX_STRING && !matches!(type_name, "base64Binary" | "xhtml") {
        c.issue(path, "string is longer than 1 MB");
        return;
    }
    if s.chars()
        .any(|ch| (ch as u32) < 32 && !matches!(ch, '\t' | '\r' | '\n'))
    {
        c.issue(path, "control characters are not allowed in FHIR strings");
        return;
    }
    let ok = match type_name {
        "string" | "markdown" => true,
        "code" => {
            !s.starts_with(char::is_whitespace)
                && !s.ends_with(char::is_whitespace)
                && !s.contains("  ")
                && !s.contains(['\t', '\r', '\n'])
        }
        "id" => {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        "uri" | "url" | "canonical" => !s.contains(char::is_whitespace),
        "oid" => matches(&OID, s),
        "uuid" => matches(&UUID, s),
        "date" => matches(&DATE, s) && calendar_ok(s),
        "dateTime" => matches(&DATE_TIME, s) && calendar_ok(s),
        "instant" => matches(&INSTANT, s) && calendar_ok(s),
        "time" => matches(&TIME, s),
        "base64Binary" => s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'+' | b'/' | b'=' | b' ' | b'\r' | b'\n' | b'\t')
        }),
        "xhtml" => s.trim_start().starts_with("<div"),
        _ => true,
    };
    if !ok {
        c.issue(path, format!("not a valid {type_name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(v: Value) -> Vec<Issue> {
        validate_resource(&v).err().unwrap_or_default()
    }

    fn paths(v: Value) -> Vec<String> {
        issues(v).into_iter().map(|i| i.path).collect()
    }

    #[test]
    fn a_well_formed_patient_passes() {
        let p = json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"profile": ["http://example.org/p"]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "name": [{"family": "Chalmers", "given": ["Peter", "James"], "_given": [null, {"extension": [
                {"url": "http://example.org/x", "valueString": "y"}]}]}],
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                          "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
            "deceasedBoolean": false,
            "multipleBirthInteger": 2,
            "contact": [{"relationship": [{"text": "mother"}], "name": {"family": "X"}}],
            "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}]
        });
        assert_eq!(issues(p), vec![]);
    }

    #[test]
    fn unknown_elements_and_misplaced_resource_type_are_named() {
        assert_eq!(
            paths(json!({"resourceType": "Patient", "colour": "red"})),
            ["Patient.colour"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": [{"resourceType": "HumanName"}]})),
            ["Patient.name[0].resourceType"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "_colour": {}})),
            ["Patient._colour"]
        );
        assert_eq!(paths(json!({"resourceType": "Patent"})), ["resourceType"]);
    }

    #[test]
    fn json_types_and_cardinality_are_checked() {
        assert_eq!(
            paths(json!({"resourceType": "Patient", "active": "true"})),
            ["Patient.active"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": {"family": "x"}})),
            ["Patient.name"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "gender": ["male"]})),
            ["Patient.gender"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": []})),
            ["Patient.name"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": [{}]})),
            ["Patient.name[0]"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": [null]})),
            ["Patient.name[0]"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": [{"given": ["a", 3]}]})),
            ["Patient.name[0].given[1]"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "birthDate": null})),
            ["Patient.birthDate"]
        );
    }

    #[test]
    fn primitives_are_checked_for_their_lexical_form() {
        let bad = [
            ("birthDate", json!("1970-13-01")),
            ("birthDate", json!("1970-02-30")),
            ("birthDate", json!("70-01-01")),
            ("deceasedDateTime", json!("2020-01-01T10:00:00")),
            ("gender", json!(" male")),
            ("gender", json!("")),
            ("multipleBirthInteger", json!(1.5)),
            ("multipleBirthInteger", json!(3_000_000_000u64)),
            ("implicitRules", json!("http://a b")),
            ("language", json!("en\u{0000}")),
        ];
        for (field, value) in bad {
            let mut p = json!({"resourceType": "Patient"});
            p[field] = value.clone();
            assert_eq!(paths(p), [format!("Patient.{field}")], "{field} = {value}");
        }
        let good = json!({"resourceType": "Patient", "birthDate": "2000", "deceasedDateTime": "2020-02-29T10:00:00.123+14:00"});
        assert_eq!(issues(good), vec![]);
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "issued": "2020-01-01", "valueQuantity": {"value": 1.50}});
        assert_eq!(paths(obs), ["Observation.issued"]);
        let id = json!({"resourceType": "Patient", "id": "a_b"});
        assert_eq!(paths(id), ["Patient.id"]);
    }

    #[test]
    fn required_elements_and_choices() {
        assert_eq!(
            paths(json!({"resourceType": "Observation", "code": {"text": "x"}})),
            ["Observation.status"]
        );
        let ext = json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]});
        assert_eq!(paths(ext), ["Patient.extension[0].url"]);
        let two = json!({"resourceType": "Patient", "extension": [{"url": "u", "valueString": "x", "valueBoolean": true}]});
        assert_eq!(paths(two), ["Patient.extension[0]"]);
        let choice = json!({"resourceType": "Patient", "deceasedString": "x"});
        assert_eq!(paths(choice), ["Patient.deceasedString"]);
    }

    #[test]
    fn embedded_resources_are_checked_as_resources() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "gender": 1}},
            {"resource": {"resourceType": "Nonsense"}}
        ]});
        assert_eq!(
            paths(bundle),
            [
                "Bundle.entry[0].resource.gender",
                "Bundle.entry[1].resource.resourceType"
            ]
        );
        let q = json!({"resourceType": "Questionnaire", "status": "draft", "item": [
            {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "bogus": 1}]}]});
        assert_eq!(paths(q), ["Questionnaire.item[0].item[0].bogus"]);
    }

    #[test]
    fn official_examples_validate() {
        let Some(dir) = std::env::var_os("CARAPACE_R4_EXAMPLES") else {
            eprintln!("SKIPPED: set CARAPACE_R4_EXAMPLES to the hl7.fhir.r4.examples package dir");
            return;
        };
        let mut total = 0;
        let mut failed = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".json") || name == "package.json" || name.starts_with('.') {
                continue;
            }
            let text = std::fs::read(&path).unwrap();
            let Ok(v) = crate::fhir::json::parse(&text) else {
                continue;
            };
            total += 1;
            if let Err(issues) = validate_resource(&v) {
                failed.push(format!("{name}: {:?}", &issues[..issues.len().min(2)]));
            }
        }
        failed.sort();
        eprintln!(
            "{} of {total} official examples validate",
            total - failed.len()
        );
        for f in &failed {
            eprintln!("  {f}");
        }
        assert!(total > 5000);
        assert!(
            failed.len() * 100 <= total,
            "more than 1% of the official examples fail"
        );
    }
}
