//! Primitives in their lexical forms: JSON types, numeric ranges, string rules (length, code,
//! id, uri, base64, xhtml through [`crate::fhir::narrative`]) and the date, time, oid and uuid
//! regexes of R4's datatypes.html, with calendar checks the regexes cannot make.

use super::walk::Checker;
use super::{IssueType, MAX_STRING};
use crate::fhir::narrative;
use crate::fhir::schema::Primitive;
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

pub(super) fn check_primitive<'a>(c: &mut Checker<'a>, value: &'a Value, p: Primitive) {
    match p {
        Primitive::Boolean => {
            if !value.is_boolean() {
                c.issue(
                    IssueType::Structure,
                    "must be a JSON boolean (true or false)",
                );
            }
        }
        Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
            let Value::Number(n) = value else {
                c.issue(
                    IssueType::Structure,
                    format!("must be a JSON number ({})", p.name()),
                );
                return;
            };
            let min = match p {
                Primitive::PositiveInt => 1,
                Primitive::UnsignedInt => 0,
                _ => i64::from(i32::MIN),
            };
            // The number's own text (arbitrary_precision): `1.0` and `1e2` are not integers.
            match n.as_str().parse::<i64>() {
                Ok(v) if v >= min && v <= i64::from(i32::MAX) => {}
                _ => c.issue(
                    IssueType::Value,
                    format!("must be a whole number in the range of {}", p.name()),
                ),
            }
        }
        Primitive::Decimal => {
            if !value.is_number() {
                c.issue(IssueType::Structure, "must be a JSON number (decimal)");
            }
        }
        _ => {
            let Value::String(s) = value else {
                c.issue(
                    IssueType::Structure,
                    format!("must be a JSON string ({})", p.name()),
                );
                return;
            };
            check_string(c, s, p);
        }
    }
}

fn check_string<'a>(c: &mut Checker<'a>, s: &'a str, p: Primitive) {
    if s.is_empty() {
        c.issue(IssueType::Value, "strings must not be empty");
        return;
    }
    // R4 counts characters. A narrative is not a string: the official examples carry xhtml over 1 MB.
    if s.len() > MAX_STRING
        && !matches!(p, Primitive::Base64Binary | Primitive::Xhtml)
        && s.chars().count() > MAX_STRING
    {
        c.issue(IssueType::Value, "string is longer than 1 MB");
        return;
    }
    // UTF-8 continuation bytes are >= 0x80, so a byte scan finds exactly the control characters.
    if s.bytes()
        .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'))
    {
        c.issue(
            IssueType::Value,
            "control characters are not allowed in FHIR strings",
        );
        return;
    }
    let ok = match p {
        Primitive::Code => is_code(s),
        Primitive::Id => {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        Primitive::Uri | Primitive::Url | Primitive::Canonical => {
            // dom-3 counts a uri, url or canonical `#id` as a reference to a contained resource.
            if s.starts_with('#') {
                c.local_refs.push((s, c.in_contained));
            }
            !s.bytes().any(is_xml_space)
        }
        Primitive::Oid => matches_pattern(|p| &p.oid, s),
        Primitive::Uuid => matches_pattern(|p| &p.uuid, s),
        Primitive::Date => matches_pattern(|p| &p.date, s) && day_exists(s),
        Primitive::DateTime => matches_pattern(|p| &p.date_time, s) && day_exists(s),
        Primitive::Instant => matches_pattern(|p| &p.instant, s) && day_exists(s),
        Primitive::Time => matches_pattern(|p| &p.time, s),
        Primitive::Base64Binary => is_base64(s),
        // Narrative is markup every EHR renders: txt-1 and txt-2 with a real XML parser, and each
        // problem named at this element (`Patient.text.div`).
        Primitive::Xhtml => {
            if let Err(problems) = narrative::check(s) {
                for problem in problems {
                    c.issue(IssueType::Invariant, problem);
                }
            }
            return;
        }
        _ => true,
    };
    if !ok {
        c.issue(IssueType::Value, format!("not a valid {}", p.name()));
    }
}

/// `\s` in the R4 regexes (XML Schema): space, tab, CR, LF — not Unicode spaces such as NBSP.
fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace.
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |x: Option<&u8>| x.is_some_and(|&x| is_xml_space(x));
    !edge(b.first())
        && !edge(b.last())
        && !b
            .windows(2)
            .any(|w| is_xml_space(w[0]) && is_xml_space(w[1]))
}

/// RFC 4648 base64 with padding; whitespace (line breaks) is allowed anywhere.
fn is_base64(s: &str) -> bool {
    let mut count = 0usize;
    let mut padding = 0usize;
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if padding == 0 => count += 1,
            b'=' if padding < 2 => {
                padding += 1;
                count += 1;
            }
            b if is_xml_space(b) => {}
            _ => return false,
        }
    }
    count.is_multiple_of(4)
}

struct Patterns {
    date: Regex,
    date_time: Regex,
    instant: Regex,
    time: Regex,
    oid: Regex,
    uuid: Regex,
}

/// The regexes of datatypes.html, anchored. Constant patterns always compile (the tests prove it);
/// were one not to, every value of that type is refused rather than the process panicking.
static PATTERNS: LazyLock<Option<Patterns>> = LazyLock::new(|| {
    const YEAR: &str = "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)";
    const MONTH: &str = "(0[1-9]|1[0-2])";
    const DAY: &str = "(0[1-9]|[1-2][0-9]|3[0-1])";
    const TIME: &str = "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?";
    const ZONE: &str = "(Z|(\\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))";
    let re = |s: String| Regex::new(&format!("^{s}$")).ok();
    Some(Patterns {
        date: re(format!("{YEAR}(-{MONTH}(-{DAY})?)?"))?,
        date_time: re(format!("{YEAR}(-{MONTH}(-{DAY}(T{TIME}{ZONE})?)?)?"))?,
        instant: re(format!("{YEAR}-{MONTH}-{DAY}T{TIME}{ZONE}"))?,
        time: re(TIME.to_string())?,
        oid: re(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+".to_string())?,
        uuid: re(
            "urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".to_string(),
        )?,
    })
});

fn matches_pattern(pick: impl Fn(&Patterns) -> &Regex, s: &str) -> bool {
    PATTERNS.as_ref().is_some_and(|p| pick(p).is_match(s))
}

/// The regexes allow `02-31`; a full date must also exist in the calendar. Called after the regex
/// matched, so the digits are where they should be.
fn day_exists(s: &str) -> bool {
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
        return true; // a partial date: year or year-month
    };
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days
}

#[cfg(test)]
mod tests {
    use super::super::tests::{issues, parse, paths, patient_with};
    use super::super::*;
    use serde_json::json;

    #[test]
    fn primitives_are_checked_for_their_lexical_form() {
        let bad = [
            ("active", json!("true")),
            ("active", json!(1)),
            ("birthDate", json!("1970-13-01")),
            ("birthDate", json!("1970-02-30")),
            ("birthDate", json!("1900-02-29")),
            ("birthDate", json!("70-01-01")),
            ("birthDate", json!("1970-01-01T00:00:00Z")),
            ("birthDate", json!(19700101)),
            ("deceasedDateTime", json!("2020-01-01T10:00:00")),
            ("deceasedDateTime", json!("2020-01-01T10:00Z")),
            ("deceasedDateTime", json!("2020-01-01T24:00:00Z")),
            ("deceasedDateTime", json!("2020-01-01T10:00:00+15:00")),
            ("gender", json!(" male")),
            ("gender", json!("male ")),
            ("gender", json!("ma  le")),
            ("gender", json!("")),
            ("gender", json!(true)),
            ("multipleBirthInteger", parse("1.5")),
            ("multipleBirthInteger", parse("1.0")),
            ("multipleBirthInteger", parse("1e2")),
            ("multipleBirthInteger", parse("2147483648")),
            ("multipleBirthInteger", parse("-2147483649")),
            ("multipleBirthInteger", json!("2")),
            ("implicitRules", json!("http://a b")),
            ("language", json!("en\u{0000}")),
            ("language", json!("en\u{0007}")),
            ("id", json!("a_b")),
            ("id", json!("a".repeat(65))),
            ("id", json!("")),
        ];
        for (field, value) in bad {
            let p = patient_with(field, value.clone());
            // A choice is named by its FHIRPath type test.
            let at = match field {
                "deceasedDateTime" => "Patient.deceased.ofType(dateTime)".to_string(),
                "multipleBirthInteger" => "Patient.multipleBirth.ofType(integer)".to_string(),
                f => format!("Patient.{f}"),
            };
            assert_eq!(paths(p), [at], "{field} = {value}");
        }
        let good = [
            ("birthDate", json!("2000")),
            ("birthDate", json!("2000-02")),
            ("birthDate", json!("2000-02-29")),
            ("deceasedDateTime", json!("2020-02-29T10:00:00.123+14:00")),
            ("deceasedDateTime", json!("2020-12-31T23:59:60Z")),
            ("deceasedDateTime", json!("2020")),
            ("multipleBirthInteger", parse("-2147483648")),
            ("multipleBirthInteger", parse("-0")),
            ("id", json!("A-z.09")),
            ("id", json!("a".repeat(64))),
            // `\s` in the R4 regexes is XML whitespace: a non-breaking space is part of a code.
            // (`language`: a code whose binding, preferred, never refuses a write.)
            ("language", json!("a\u{a0}")),
            ("language", json!("a b\tc")),
        ];
        for (field, value) in good {
            assert_eq!(
                issues(patient_with(field, value.clone())),
                vec![],
                "{field} = {value}"
            );
        }
        let text = |t: &str| json!({"resourceType": "Patient", "name": [{"text": t}]});
        assert_eq!(
            issues(text("tab\tand\r\nnewlines, \u{a0}\u{7f} and ünïcødé")),
            vec![]
        );
        assert_eq!(paths(text("nul\u{0}")), ["Patient.name[0].text"]);
        assert_eq!(paths(text("escape\u{1b}")), ["Patient.name[0].text"]);
    }

    #[test]
    fn numeric_types_follow_their_ranges() {
        let q = |v: &str| {
            parse(&format!(
                r#"{{"resourceType": "Questionnaire", "status": "draft",
                    "item": [{{"linkId": "1", "type": "string", "maxLength": {v}}}]}}"#
            ))
        };
        assert_eq!(paths(q("10")), Vec::<String>::new());
        assert_eq!(paths(q("10.5")), ["Questionnaire.item[0].maxLength"]);
        // positiveInt and unsignedInt
        let timing = |field: &str, v: &str| {
            parse(&format!(
                r#"{{"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                    "medicationCodeableConcept": {{"text": "x"}}, "subject": {{"reference": "Patient/1"}},
                    "dosageInstruction": [{{"timing": {{"repeat": {{"when": ["MORN"], "{field}": {v}}}}}}}]}}"#
            ))
        };
        let at =
            |field: &str| format!("MedicationRequest.dosageInstruction[0].timing.repeat.{field}");
        assert_eq!(paths(timing("frequency", "1")), Vec::<String>::new());
        assert_eq!(paths(timing("frequency", "0")), [at("frequency")]);
        assert_eq!(paths(timing("count", "0")), [at("count")]);
        assert_eq!(paths(timing("count", "-1")), [at("count")]);
        assert_eq!(paths(timing("offset", "0")), Vec::<String>::new());
        assert_eq!(paths(timing("offset", "-1")), [at("offset")]);
        assert_eq!(paths(timing("offset", "4294967295")), [at("offset")]);
        // decimal: any JSON number, with its precision kept; never a string.
        let obs = |v: &str| {
            parse(&format!(
                r#"{{"resourceType": "Observation", "status": "final", "code": {{"text": "x"}},
                    "valueQuantity": {{"value": {v}}}}}"#
            ))
        };
        for good in ["1.50", "-0.0", "1e-3", "123456789012345678901234567890.5"] {
            assert_eq!(paths(obs(good)), Vec::<String>::new(), "{good}");
        }
        assert_eq!(
            paths(obs("\"1.5\"")),
            ["Observation.value.ofType(Quantity).value"]
        );
        assert_eq!(
            paths(obs("true")),
            ["Observation.value.ofType(Quantity).value"]
        );
    }

    #[test]
    fn string_types_have_their_own_rules() {
        let obs = |extra: Value| {
            let mut o =
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            o
        };
        let cases = [
            (json!({"issued": "2020-01-01"}), "Observation.issued"),
            (
                json!({"issued": "2020-01-01T10:00:00"}),
                "Observation.issued",
            ),
            (
                json!({"valueTime": "25:00:00"}),
                "Observation.value.ofType(time)",
            ),
            (
                json!({"valueTime": "10:00"}),
                "Observation.value.ofType(time)",
            ),
            (
                json!({"meta": {"profile": ["http://x y"]}}),
                "Observation.meta.profile[0]",
            ),
            (
                json!({"code": {"coding": [{"system": "a b"}]}}),
                "Observation.code.coding[0].system",
            ),
            (
                json!({"text": {"status": "generated", "div": "<p>x</p>"}}),
                "Observation.text.div",
            ),
            (
                json!({"text": {"status": "generated"}}),
                "Observation.text.div",
            ),
            // txt-1: the narrative check runs on every xhtml value, named at the element.
            (
                json!({"text": {"status": "generated",
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script></div>"}}),
                "Observation.text.div",
            ),
            (
                json!({"contained": [{"resourceType": "Patient", "id": "p", "text": {"status": "generated",
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"> </div>"}}],
                    "subject": {"reference": "#p"}}),
                "Observation.contained[0].ofType(Patient).text.div",
            ),
        ];
        for (extra, path) in cases {
            assert_eq!(paths(obs(extra.clone())), [path], "{extra}");
        }
        let good = [
            json!({"issued": "2020-01-01T10:00:00.5-03:30"}),
            json!({"valueTime": "23:59:59.999"}),
        ];
        for extra in good {
            assert_eq!(issues(obs(extra.clone())), vec![], "{extra}");
        }
        let photo = |a: Value| json!({"resourceType": "Patient", "photo": [a]});
        for bad in ["abc", "ab$=", "a=bc", "YQ==YQ==", "YQ="] {
            assert_eq!(
                paths(photo(json!({"data": bad}))),
                ["Patient.photo[0].data"],
                "{bad}"
            );
        }
        assert_eq!(paths(photo(json!({"size": -1}))), ["Patient.photo[0].size"]);
        for good in ["YWJj\nZA==", "YQ==", " YWJj ", "+/+/"] {
            assert_eq!(
                issues(photo(
                    json!({"contentType": "image/png", "data": good, "size": 0})
                )),
                vec![],
                "{good}"
            );
        }
        let binary = |data: &str| json!({"resourceType": "Binary", "contentType": "text/plain", "data": data});
        let big = "QUJD".repeat(MAX_STRING / 4 + 10);
        assert_eq!(issues(binary(&big)), vec![]);
        let long =
            json!({"resourceType": "Patient", "name": [{"text": "x".repeat(MAX_STRING + 1)}]});
        assert_eq!(paths(long), ["Patient.name[0].text"]);
        let wide = json!({"resourceType": "Patient", "name": [{"text": "é".repeat(MAX_STRING)}]});
        assert_eq!(issues(wide), vec![]);
        let div = format!(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>",
            "x".repeat(MAX_STRING)
        );
        let narrative =
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
        assert_eq!(issues(narrative), vec![]);
        let oid = |v: &str| {
            json!({"resourceType": "NamingSystem", "name": "n", "status": "draft",
            "kind": "root", "date": "2020", "uniqueId": [{"type": "oid", "value": "x"}],
            "extension": [{"url": "http://example.org/o", "valueOid": v}]})
        };
        assert_eq!(issues(oid("urn:oid:2.16.840.1.113883")), vec![]);
        assert_eq!(
            paths(oid("urn:oid:2.016")),
            ["NamingSystem.extension[0].value.ofType(oid)"]
        );
        assert_eq!(
            paths(oid("2.16.840")),
            ["NamingSystem.extension[0].value.ofType(oid)"]
        );
        let uuid = |v: &str| {
            json!({"resourceType": "Patient",
            "extension": [{"url": "http://example.org/u", "valueUuid": v}]})
        };
        assert_eq!(
            issues(uuid("urn:uuid:c757873d-ec9a-4326-a141-556f43239520")),
            vec![]
        );
        assert_eq!(
            paths(uuid("urn:uuid:C757873D-EC9A-4326-A141-556F43239520")),
            ["Patient.extension[0].value.ofType(uuid)"]
        );
    }
}
