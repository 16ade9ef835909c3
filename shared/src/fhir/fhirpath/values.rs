//! Values: the System values items compare as ([`Sys`]), dates and times with their precision
//! (compared to their common precision, across time zones), Quantities, equality and ordering with
//! three-valued results, string conversions, and type tests (`is`, `as`, `ofType`).

use super::{unsupported, Item, Res, Ty};
use crate::fhir::schema::{self, Primitive};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// A comparable System value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Sys<'a> {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Cow<'a, str>),
    Date(Temporal),
    Time(Temporal),
}

/// A date, dateTime or time with the precision it was written in: `parts` are year, month, day,
/// hour, minute, second and millisecond (a time uses hour..millisecond), `len` how many are given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Temporal {
    parts: [i64; 7],
    len: usize,
    /// Offset from UTC in minutes, if written.
    tz: Option<i64>,
}

fn parse_date(s: &str) -> Option<Temporal> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = [0i64; 7];
    let mut len = 0;
    for (i, p) in date.split('-').enumerate() {
        if i > 2 || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parts[i] = p.parse().ok()?;
        len = i + 1;
    }
    let mut tz = None;
    if let Some(t) = time {
        if len != 3 {
            return None;
        }
        let (clock, offset) = split_tz(t);
        tz = offset;
        let time = parse_clock(clock)?;
        parts[3..].copy_from_slice(&time.parts[..4]);
        len = 3 + time.len;
    }
    Some(Temporal { parts, len, tz })
}

fn split_tz(t: &str) -> (&str, Option<i64>) {
    if let Some(clock) = t.strip_suffix('Z') {
        return (clock, Some(0));
    }
    if let Some(at) = t.rfind(['+', '-']) {
        let (clock, off) = t.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut hm = off[1..].split(':');
        let h: i64 = hm.next().and_then(|h| h.parse().ok()).unwrap_or(0);
        let m: i64 = hm.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        return (clock, Some(sign * (h * 60 + m)));
    }
    (t, None)
}

fn parse_clock(t: &str) -> Option<Temporal> {
    let mut parts = [0i64; 7];
    let (hms, frac) = match t.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (t, None),
    };
    let mut len = 0;
    for (i, p) in hms.split(':').enumerate() {
        if i > 2 || p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parts[i] = p.parse().ok()?;
        len = i + 1;
    }
    if let Some(f) = frac {
        if len != 3 || f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ms: String = f.chars().chain("000".chars()).take(3).collect();
        parts[3] = ms.parse().ok()?;
        len = 4;
    }
    Some(Temporal {
        parts,
        len,
        tz: None,
    })
}

impl Temporal {
    /// Shift a dateTime with a time zone to UTC, so that instants in different zones compare.
    fn utc(self) -> Temporal {
        let Some(offset) = self.tz else { return self };
        if self.len < 5 || offset == 0 {
            return self;
        }
        let p = self.parts;
        let Some(local) = chrono::NaiveDate::from_ymd_opt(
            i32::try_from(p[0]).unwrap_or(0),
            u32::try_from(p[1]).unwrap_or(1),
            u32::try_from(p[2]).unwrap_or(1),
        )
        .and_then(|d| {
            d.and_hms_opt(
                u32::try_from(p[3]).unwrap_or(0),
                u32::try_from(p[4]).unwrap_or(0),
                0,
            )
        }) else {
            return self;
        };
        let t = local - chrono::Duration::minutes(offset);
        use chrono::{Datelike, Timelike};
        let mut parts = p;
        parts[0] = i64::from(t.year());
        parts[1] = i64::from(t.month());
        parts[2] = i64::from(t.day());
        parts[3] = i64::from(t.hour());
        parts[4] = i64::from(t.minute());
        Temporal {
            parts,
            len: self.len,
            tz: Some(0),
        }
    }

    /// FHIRPath comparison: `None` when the values are equal to the coarser precision but one is
    /// more precise (the answer is unknown). Seconds and milliseconds are one precision.
    fn compare(self, other: Temporal, date_offset: usize) -> Option<Ordering> {
        let (a, b) = if self.tz.is_some() && other.tz.is_some() {
            (self.utc(), other.utc())
        } else {
            (self, other)
        };
        let sec = date_offset + 2; // index of seconds
        let level = |t: &Temporal| if t.len > sec { sec + 1 } else { t.len };
        let common = level(&a).min(level(&b));
        for i in 0..common.min(7) {
            let (x, y) = if i == sec {
                (
                    a.parts[i] * 1000 + a.parts[i + 1],
                    b.parts[i] * 1000 + b.parts[i + 1],
                )
            } else {
                (a.parts[i], b.parts[i])
            };
            if x != y {
                return Some(x.cmp(&y));
            }
        }
        if level(&a) == level(&b) {
            Some(Ordering::Equal)
        } else {
            None
        }
    }
}

fn prim_sys<'a>(p: Primitive, v: &'a Value) -> Option<Sys<'a>> {
    Some(match (p, v) {
        (_, Value::Bool(b)) => Sys::Bool(*b),
        (Primitive::Decimal, Value::Number(n)) => Sys::Dec(n.as_f64()?),
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => Sys::Int(i),
            None => Sys::Dec(n.as_f64()?),
        },
        (Primitive::Date | Primitive::DateTime | Primitive::Instant, Value::String(s)) => {
            match parse_date(s) {
                Some(t) => Sys::Date(t),
                None => Sys::Str(Cow::Borrowed(s)),
            }
        }
        (Primitive::Time, Value::String(s)) => match parse_clock(s) {
            Some(t) => Sys::Time(t),
            None => Sys::Str(Cow::Borrowed(s)),
        },
        (_, Value::String(s)) => Sys::Str(Cow::Borrowed(s)),
        _ => return None,
    })
}

pub(super) fn sys<'a>(item: &Item<'a>) -> Option<Sys<'a>> {
    match item {
        Item::Node {
            value: Some(v),
            ty: Ty::Primitive(p),
            ..
        } => prim_sys(*p, v),
        Item::Node { .. } => None,
        Item::Bool(b) => Some(Sys::Bool(*b)),
        Item::Int(i) => Some(Sys::Int(*i)),
        Item::Dec(d) => Some(Sys::Dec(*d)),
        Item::Str(s) => Some(Sys::Str(s.clone())),
    }
}

pub(super) fn string<'a>(item: &Item<'a>) -> Option<Cow<'a, str>> {
    match item {
        Item::Str(s) => Some(s.clone()),
        Item::Node {
            value: Some(Value::String(s)),
            ty: Ty::Primitive(_),
            ..
        } => Some(Cow::Borrowed(s.as_str())),
        _ => None,
    }
}

pub(super) fn to_string<'a>(item: &Item<'a>) -> Option<Cow<'a, str>> {
    match item {
        Item::Node {
            value: Some(v),
            ty: Ty::Primitive(_),
            ..
        } => match v {
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        },
        Item::Node { .. } => None,
        Item::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Item::Int(i) => Some(Cow::Owned(i.to_string())),
        Item::Dec(d) => Some(Cow::Owned(d.to_string())),
        Item::Str(s) => Some(s.clone()),
    }
}

pub(super) fn num(s: &Sys) -> Option<f64> {
    match s {
        #[expect(clippy::cast_precision_loss, reason = "FHIR integers are 32-bit")]
        Sys::Int(i) => Some(*i as f64),
        Sys::Dec(d) => Some(*d),
        _ => None,
    }
}

/// Equality of two items: `None` when unknown (dates of different precision).
pub(super) fn equal(a: &Item, b: &Item) -> Option<bool> {
    match (sys(a), sys(b)) {
        (Some(x), Some(y)) => match (&x, &y) {
            (Sys::Date(p), Sys::Date(q)) => p.compare(*q, 3).map(|o| o == Ordering::Equal),
            (Sys::Time(p), Sys::Time(q)) => p.compare(*q, 0).map(|o| o == Ordering::Equal),
            (Sys::Str(p), Sys::Str(q)) => Some(p == q),
            (Sys::Bool(p), Sys::Bool(q)) => Some(p == q),
            _ => match (num(&x), num(&y)) {
                (Some(p), Some(q)) => Some(p == q),
                _ => Some(false),
            },
        },
        (None, None) => match (a, b) {
            (Item::Node { value: Some(x), .. }, Item::Node { value: Some(y), .. }) => Some(x == y),
            _ => Some(false),
        },
        _ => Some(false),
    }
}

/// The value and unit of a Quantity element, for comparisons.
pub(super) fn quantity<'a>(item: &Item<'a>) -> Option<(f64, &'a str)> {
    let Item::Node {
        value: Some(Value::Object(m)),
        ty: Ty::Def(def),
        ..
    } = item
    else {
        return None;
    };
    if !matches!(
        def.name(),
        "Quantity" | "Age" | "Count" | "Distance" | "Duration"
    ) {
        return None;
    }
    let value = m.get("value")?.as_f64()?;
    let unit = m
        .get("code")
        .or_else(|| m.get("unit"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Some((value, unit))
}

pub(super) fn compare(a: &Item, b: &Item) -> Res<Option<Ordering>> {
    if let (Some((x, ux)), Some((y, uy))) = (quantity(a), quantity(b)) {
        if ux != uy {
            return unsupported("comparison of quantities in different units");
        }
        return Ok(x.partial_cmp(&y));
    }
    let (Some(x), Some(y)) = (sys(a), sys(b)) else {
        return unsupported("comparison of non-primitive values");
    };
    Ok(match (&x, &y) {
        (Sys::Date(p), Sys::Date(q)) => p.compare(*q, 3),
        (Sys::Time(p), Sys::Time(q)) => p.compare(*q, 0),
        (Sys::Str(p), Sys::Str(q)) => Some(p.cmp(q)),
        _ => match (num(&x), num(&y)) {
            (Some(p), Some(q)) => p.partial_cmp(&q),
            _ => return unsupported("comparison of values of different types"),
        },
    })
}

/// Whether `item` is of the type named `name` (or derives from it). A FHIR primitive also is of
/// the System type of the same name (`boolean` is `Boolean`), as R4's que-7 (`answer is Boolean`)
/// and the HL7 validator read it.
pub(super) fn is_type(item: &Item, name: &str) -> bool {
    match item {
        Item::Node {
            ty: Ty::Primitive(p),
            ..
        } => p.name().eq_ignore_ascii_case(name),
        Item::Node {
            ty: Ty::Def(def), ..
        } => {
            let own = def.name();
            own == name
                || (schema::is_resource_type(own)
                    && (name == "Resource"
                        || (name == "DomainResource" && def.element("text").is_some())))
                || (name == "Quantity" && quantity(item).is_some())
        }
        Item::Bool(_) => name == "Boolean",
        Item::Int(_) => name == "Integer",
        Item::Dec(_) => name == "Decimal",
        Item::Str(_) => name == "String",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_compare_to_their_common_precision() {
        let d = |s: &str| parse_date(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(
            d("2021-03").compare(d("2021-04-01"), 3),
            Some(Ordering::Less)
        );
        assert_eq!(d("2021-03").compare(d("2021-03-01"), 3), None);
        assert_eq!(
            d("2021-03-04T10:00:00+02:00").compare(d("2021-03-04T08:00:00Z"), 3),
            Some(Ordering::Equal)
        );
        assert_eq!(
            d("2021-03-04T10:00:00.5Z").compare(d("2021-03-04T10:00:00Z"), 3),
            Some(Ordering::Greater)
        );
        assert!(parse_date("2021-13x").is_none());
    }
}
