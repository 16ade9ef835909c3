//! FHIR R4 (4.0.1) resource handling: strict JSON intake (and FHIR XML, read and written through
//! it), structural validation against the R4 definitions, and the parsed newtypes (`ResourceType`,
//! `ResourceId`) every other layer takes.

pub mod extensions;
pub mod fhirpath;
pub mod invariants;
pub mod ips;
pub mod json;
pub mod narrative;
pub mod patch;
pub mod profile;
pub mod reference;
pub mod schema;
pub mod terminology;
pub mod validate;
pub mod xml;

use std::fmt;

/// An R4 resource type name, known to the R4 definitions. The only way in is [`ResourceType::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// `Binary`, which the store keeps apart (its content is chunked).
    pub const BINARY: ResourceType = ResourceType("Binary");
    pub const PATIENT: ResourceType = ResourceType("Patient");

    /// Is a resource of this type in a patient's compartment (R4 CompartmentDefinition
    /// `patient`; a Patient is in its own)?
    pub fn in_patient_compartment(self) -> bool {
        self == ResourceType::PATIENT || !schema::patient_compartment_paths(self.0).is_empty()
    }

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

/// Parse a `_since` value (`_history`, `$everything`): an instant (`2024-01-01T10:00:00Z`, a
/// zone required), or a date — `2024`, `2024-01`, `2024-01-01` — meaning the start of that year,
/// month or day in UTC. A dateTime with a time but no zone is refused: its instant is unknown.
pub fn since_instant(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let bad = || {
        "_since is an instant such as 2024-01-01T00:00:00Z, or a date (2024, 2024-01, \
         2024-01-01: its start, in UTC)"
            .to_string()
    };
    if !value.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    if matches!(value.len(), 4 | 7 | 10) {
        return date_search_range(value)
            .ok()
            .and_then(|r| r.lo)
            .ok_or_else(bad);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.to_utc())
        .map_err(|_| bad())
}

/// A half-open instant range `[lo, hi)`, or everything outside it when `negate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstantRange {
    pub lo: Option<chrono::DateTime<chrono::Utc>>,
    pub hi: Option<chrono::DateTime<chrono::Utc>>,
    pub negate: bool,
}

/// Parse a date search value with its prefix (`ge2024-01`, `2024-01-02T10:00:00Z`) into the range
/// of instants it selects, following the spec's precision semantics: `2024-01` means all of January.
/// `ap` is refused rather than guessed.
pub fn date_search_range(value: &str) -> Result<InstantRange, String> {
    use chrono::{DateTime, Months, NaiveDate, TimeZone, Utc};
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
            (p, &value[2..])
        }
        _ => ("eq", value),
    };
    let bad = || format!("'{}' is not a FHIR date or dateTime", printable(value));
    let day = |y: i32, m: u32, d: u32| -> Result<DateTime<Utc>, String> {
        let date = NaiveDate::from_ymd_opt(y, m, d).ok_or_else(bad)?;
        Ok(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).ok_or_else(bad)?))
    };
    let digits = |s: &str| s.parse::<u32>().map_err(|_| bad());
    // Byte slicing below is safe only on ASCII.
    if !rest.is_ascii() {
        return Err(bad());
    }
    let (lo, hi) = match rest.len() {
        4 => {
            let y = i32::try_from(digits(rest)?).map_err(|_| bad())?;
            (day(y, 1, 1)?, day(y + 1, 1, 1)?)
        }
        7 if rest.as_bytes()[4] == b'-' => {
            let y = i32::try_from(digits(&rest[..4])?).map_err(|_| bad())?;
            let lo = day(y, digits(&rest[5..7])?, 1)?;
            (lo, lo.checked_add_months(Months::new(1)).ok_or_else(bad)?)
        }
        10 if rest.as_bytes()[4] == b'-' && rest.as_bytes()[7] == b'-' => {
            let y = i32::try_from(digits(&rest[..4])?).map_err(|_| bad())?;
            let lo = day(y, digits(&rest[5..7])?, digits(&rest[8..10])?)?;
            (lo, lo + chrono::Duration::days(1))
        }
        _ => {
            // A full dateTime: to the second (or finer, given with fractions) in its own zone.
            let t = DateTime::parse_from_rfc3339(rest)
                .or_else(|_| DateTime::parse_from_rfc3339(&format!("{rest}Z")))
                .map_err(|_| bad())?
                .to_utc();
            let precision = if rest.contains('.') {
                chrono::Duration::microseconds(1)
            } else {
                chrono::Duration::seconds(1)
            };
            (t, t + precision)
        }
    };
    use InstantRange as R;
    Ok(match prefix {
        "eq" => R {
            lo: Some(lo),
            hi: Some(hi),
            negate: false,
        },
        "ne" => R {
            lo: Some(lo),
            hi: Some(hi),
            negate: true,
        },
        "gt" | "sa" => R {
            lo: Some(hi),
            hi: None,
            negate: false,
        },
        "ge" => R {
            lo: Some(lo),
            hi: None,
            negate: false,
        },
        "lt" | "eb" => R {
            lo: None,
            hi: Some(lo),
            negate: false,
        },
        "le" => R {
            lo: None,
            hi: Some(hi),
            negate: false,
        },
        _ => return Err("the 'ap' prefix is not supported".into()),
    })
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
    fn date_ranges_follow_precision() {
        let r = date_search_range("2024-02").unwrap();
        assert_eq!(r.lo.unwrap().to_rfc3339(), "2024-02-01T00:00:00+00:00");
        assert_eq!(r.hi.unwrap().to_rfc3339(), "2024-03-01T00:00:00+00:00");
        let ge = date_search_range("ge2024").unwrap();
        assert_eq!(
            (ge.lo.unwrap().to_rfc3339(), ge.hi),
            ("2024-01-01T00:00:00+00:00".into(), None)
        );
        let gt = date_search_range("gt2024-12-31").unwrap();
        assert_eq!(gt.lo.unwrap().to_rfc3339(), "2025-01-01T00:00:00+00:00");
        let lt = date_search_range("lt2024-01-01T10:00:00+02:00").unwrap();
        assert_eq!(lt.hi.unwrap().to_rfc3339(), "2024-01-01T08:00:00+00:00");
        assert!(date_search_range("ne2024").unwrap().negate);
        assert!(date_search_range("ap2024").is_err());
        assert!(date_search_range("2024-13").is_err() && date_search_range("yesterday").is_err());
        assert!(
            date_search_range("2024-0é-01").is_err(),
            "no panic on multi-byte input"
        );
    }

    #[test]
    fn since_takes_an_instant_or_the_start_of_a_date_in_utc() {
        let at = |v: &str| since_instant(v).map(|t| t.to_rfc3339());
        assert_eq!(at("2020").unwrap(), "2020-01-01T00:00:00+00:00");
        assert_eq!(at("2020-03").unwrap(), "2020-03-01T00:00:00+00:00");
        assert_eq!(at("2020-03-04").unwrap(), "2020-03-04T00:00:00+00:00");
        assert_eq!(
            at("2020-03-04T10:00:00+02:00").unwrap(),
            "2020-03-04T08:00:00+00:00"
        );
        for bad in [
            "2020-03-04T10:00:00",
            "2020-03-04T10:00",
            "ge2020",
            "2020-13",
            "2020-02-30",
            "yesterday",
            "",
        ] {
            assert!(at(bad).is_err(), "{bad}");
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
