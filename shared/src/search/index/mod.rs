//! What a resource contributes to the search index, computed on every write inside the write's
//! transaction. Nothing here is PHI in the clear:
//!
//! * strings, tokens, uris, quantity units and composite pairs become keyed blind indexes —
//!   HMAC-SHA-256 (truncated to 128 bits) under one key per parameter class, over the parameter
//!   code, a match kind and the normalised value. A value searched by prefix (a string, a token's
//!   text, a uri under `:below`) is indexed once, by its whole; the prefix dictionary leads from the
//!   blind index of each prefix (up to [`MAX_PREFIX`] characters) to it, so the default
//!   starts-with search is an equality lookup;
//! * dates become millisecond ranges shifted by a secret per-parameter offset (derived from the
//!   date-class key): order and distances within one parameter survive, absolute dates do not;
//! * numbers and quantity values are stored as they are (they identify no one on their own);
//! * references are stored as `(type, id)` — the resource graph is already visible in the data-key
//!   scopes, and ids are opaque.
//!
//! ARCHITECTURE.md lists what each of these leaks and why that is acceptable.

use super::params::{self, Kind, Path, SearchParam};
use crate::crypto::Dek;
use crate::fhir::reference::Reference;
use chrono::{DateTime, Months, NaiveDate, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;

/// Strings are indexed by their normalised prefixes up to this many characters.
pub const MAX_PREFIX: usize = 32;

/// Ranges without a bound (an open Period) use these, unshifted.
pub const LOWEST: f64 = -9.0e15;
pub const HIGHEST: f64 = 9.0e15;

/// The parameter classes, each with its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    String,
    Token,
    Uri,
    Quantity,
    Date,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::String,
        Class::Token,
        Class::Uri,
        Class::Quantity,
        Class::Date,
    ];

    /// The key scope of this class's key in `data_keys`.
    pub fn scope(self) -> &'static str {
        match self {
            Class::String => "index/string",
            Class::Token => "index/token",
            Class::Uri => "index/uri",
            Class::Quantity => "index/quantity",
            Class::Date => "index/date",
        }
    }
}

/// The index keys, loaded once from the key provider (wrapped in `data_keys` like any data key).
pub struct IndexKeys {
    keys: [Dek; 5],
}

impl IndexKeys {
    pub fn new(keys: [Dek; 5]) -> IndexKeys {
        IndexKeys { keys }
    }

    fn key(&self, class: Class) -> &[u8; 32] {
        let at = Class::ALL.iter().position(|c| *c == class).unwrap_or(0);
        self.keys[at].expose()
    }

    /// The blind index of `value` for parameter `param`, match kind `kind`.
    pub fn blind(&self, class: Class, param: &str, kind: &str, value: &str) -> Vec<u8> {
        self.blind_bytes(class, param, kind, value.as_bytes())
    }

    pub fn blind_bytes(&self, class: Class, param: &str, kind: &str, value: &[u8]) -> Vec<u8> {
        #[allow(clippy::expect_used)] // HMAC accepts keys of any length
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key(class)).expect("HMAC takes any key length");
        mac.update(param.as_bytes());
        mac.update(&[0]);
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        mac.finalize().into_bytes()[..16].to_vec()
    }

    /// The secret shift applied to every instant of parameter `param`, in milliseconds (within
    /// ±50 years).
    pub fn date_offset(&self, param: &str) -> f64 {
        let h = self.blind(Class::Date, param, "offset", "");
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&h[..8]);
        const SPAN: u64 = 100 * 365 * 24 * 3600 * 1000;
        (u64::from_le_bytes(raw) % SPAN) as f64 - (SPAN / 2) as f64
    }

    /// A date range `[lo, hi)` in the shifted, inclusive form stored in the index.
    pub fn shift(&self, param: &str, lo: Option<i64>, hi_exclusive: Option<i64>) -> (f64, f64) {
        let offset = self.date_offset(param);
        (
            lo.map_or(LOWEST, |v| v as f64 + offset),
            hi_exclusive.map_or(HIGHEST, |v| (v - 1) as f64 + offset),
        )
    }
}

/// Lowercase, accents removed, whitespace collapsed: what string search compares.
pub fn normalise(s: &str) -> String {
    let folded: String = s
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The prefixes of a normalised string that string search can match: 1 to [`MAX_PREFIX`] chars.
pub fn prefixes(normalised: &str) -> impl Iterator<Item = &str> {
    normalised
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take(MAX_PREFIX)
        .map(move |end| &normalised[..end])
}

/// Index `text` for starts-with search under match kind `kind`: the resource row is the blind
/// index of its longest prefix (the whole, up to [`MAX_PREFIX`] characters), and every prefix
/// leads to it through the dictionary. A search for a prefix looks up the same blind index.
fn index_prefixes(
    keys: &IndexKeys,
    class: Class,
    code: &'static str,
    kind: &str,
    text: &str,
    rows: &mut IndexRows,
) {
    let n = normalise(text);
    let blinds: Vec<Vec<u8>> = prefixes(&n)
        .map(|p| keys.blind(class, code, kind, p))
        .collect();
    let Some(full) = blinds.last().cloned() else {
        return;
    };
    rows.hashes.push((code, full.clone()));
    rows.prefixes
        .extend(blinds.into_iter().map(|p| (p, full.clone())));
}

/// Rows a resource puts into the three index tables, and the prefix-dictionary rows its values
/// need.
#[derive(Debug, Default)]
pub struct IndexRows {
    /// `(param, blind index)`.
    pub hashes: Vec<(&'static str, Vec<u8>)>,
    /// `(prefix, full)`: prefix-dictionary rows. A value searched by prefix (a string, a token's
    /// text, a uri under `:below`) is indexed on the resource once, by the blind index of the whole
    /// (`full`); the dictionary, shared by every resource with that value, leads from each blind
    /// prefix to it. A code's display text repeated on thousands of Observations costs one row
    /// each, not one per prefix.
    pub prefixes: Vec<(Vec<u8>, Vec<u8>)>,
    /// `(param, target type, target id)`; an empty type for a non-FHIR (canonical, external) URL.
    pub refs: Vec<(&'static str, String, String)>,
    pub ranges: Vec<RangeRow>,
}

#[derive(Debug, Clone)]
pub struct RangeRow {
    pub param: &'static str,
    pub lo: f64,
    pub hi: f64,
    /// Quantity unit as `system|code` and as `code` (blind indexes).
    pub unit_sc: Option<Vec<u8>>,
    pub unit_c: Option<Vec<u8>>,
    /// A composite's first (token) component.
    pub comp: Option<Vec<u8>>,
}

impl RangeRow {
    /// A date's `[lo, hi)` (epoch ms, open ends as `None`), shifted for parameter `param`.
    fn date(
        keys: &IndexKeys,
        param: &'static str,
        lo: Option<i64>,
        hi: Option<i64>,
        comp: Option<Vec<u8>>,
    ) -> RangeRow {
        let (lo, hi) = keys.shift(param, lo, hi);
        RangeRow {
            param,
            lo,
            hi,
            unit_sc: None,
            unit_c: None,
            comp,
        }
    }
}

/// A token value: `system|code`, with its display text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Token {
    pub system: Option<String>,
    pub code: Option<String>,
    pub text: Option<String>,
    /// An Identifier's type codings (`:of-type`).
    pub of_type: Vec<(String, String)>,
}

fn s(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// The tokens of one value of a token parameter.
pub fn tokens(value: &Value, datatype: &str) -> Vec<Token> {
    match datatype {
        "Coding" => vec![Token {
            system: s(value.get("system")),
            code: s(value.get("code")),
            text: s(value.get("display")),
            of_type: vec![],
        }],
        "CodeableConcept" => {
            let mut out: Vec<Token> = value
                .get("coding")
                .and_then(Value::as_array)
                .map(|c| c.iter().flat_map(|c| tokens(c, "Coding")).collect())
                .unwrap_or_default();
            if let Some(text) = s(value.get("text")) {
                out.push(Token {
                    text: Some(text),
                    ..Token::default()
                });
            }
            out
        }
        "Identifier" => {
            let of_type = value
                .pointer("/type/coding")
                .and_then(Value::as_array)
                .map(|c| {
                    c.iter()
                        .filter_map(|c| Some((s(c.get("system"))?, s(c.get("code"))?)))
                        .collect()
                })
                .unwrap_or_default();
            vec![Token {
                system: s(value.get("system")),
                code: s(value.get("value")),
                text: s(value.pointer("/type/text")),
                of_type,
            }]
        }
        "ContactPoint" => vec![Token {
            code: s(value.get("value")),
            ..Token::default()
        }],
        "boolean" => vec![Token {
            code: value.as_bool().map(|b| b.to_string()),
            ..Token::default()
        }],
        // `deceased` as a dateTime means deceased: true.
        "date" | "dateTime" => vec![Token {
            code: Some("true".into()),
            ..Token::default()
        }],
        _ => match value {
            Value::String(v) => vec![Token {
                code: Some(v.clone()),
                ..Token::default()
            }],
            _ => vec![],
        },
    }
}

/// The blind indexes a token matches under: `c` (code, any system), `sc` (system|code), `nc` (a
/// code without system), `s` (system).
pub fn token_hashes(keys: &IndexKeys, param: &str, token: &Token) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(code) = &token.code {
        out.push(keys.blind(Class::Token, param, "c", code));
        match &token.system {
            Some(system) => {
                out.push(keys.blind(Class::Token, param, "sc", &format!("{system}|{code}")))
            }
            None => out.push(keys.blind(Class::Token, param, "nc", code)),
        }
    }
    if let Some(system) = &token.system {
        out.push(keys.blind(Class::Token, param, "s", system));
    }
    out
}

/// The strings of one value of a string parameter (a name or address: each of its parts).
pub fn strings(value: &Value, datatype: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut take = |v: Option<&Value>| match v {
        Some(Value::String(x)) => out.push(x.clone()),
        Some(Value::Array(items)) => {
            out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
        }
        _ => {}
    };
    match datatype {
        "HumanName" => {
            for part in ["text", "family", "given", "prefix", "suffix"] {
                take(value.get(part));
            }
        }
        "Address" => {
            for part in [
                "text",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                take(value.get(part));
            }
        }
        _ => take(Some(value)),
    }
    out
}

/// `[lo, hi)` in epoch milliseconds of a FHIR date, dateTime or instant, by its precision.
pub fn date_range(value: &str) -> Option<(i64, i64)> {
    if !value.is_ascii() {
        return None;
    }
    let day = |y: i32, m: u32, d: u32| -> Option<DateTime<Utc>> {
        let date = NaiveDate::from_ymd_opt(y, m, d)?;
        Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
    };
    let num = |s: &str| s.parse::<u32>().ok();
    let (lo, hi) = match value.len() {
        4 => {
            let y = i32::try_from(num(value)?).ok()?;
            (day(y, 1, 1)?, day(y + 1, 1, 1)?)
        }
        7 if value.as_bytes()[4] == b'-' => {
            let y = i32::try_from(num(&value[..4])?).ok()?;
            let lo = day(y, num(&value[5..7])?, 1)?;
            (lo, lo.checked_add_months(Months::new(1))?)
        }
        10 if value.as_bytes()[4] == b'-' && value.as_bytes()[7] == b'-' => {
            let y = i32::try_from(num(&value[..4])?).ok()?;
            let lo = day(y, num(&value[5..7])?, num(&value[8..10])?)?;
            (lo, lo + chrono::Duration::days(1))
        }
        _ => {
            let t = DateTime::parse_from_rfc3339(value)
                .or_else(|_| DateTime::parse_from_rfc3339(&format!("{value}Z")))
                .or_else(|_| DateTime::parse_from_rfc3339(&format!("{value}:00Z")))
                .ok()?
                .to_utc();
            let precision = if value.contains('.') {
                1
            } else if value.len() <= 16 {
                60_000
            } else {
                1000
            };
            let lo = t.timestamp_millis();
            return Some((lo, lo + precision));
        }
    };
    Some((lo.timestamp_millis(), hi.timestamp_millis()))
}

/// `[lo, hi)` of a date-typed value (date, dateTime, instant, Period, Timing events).
pub fn date_ranges(value: &Value, datatype: &str) -> Vec<(Option<i64>, Option<i64>)> {
    match datatype {
        "Period" => {
            let start = value
                .get("start")
                .and_then(Value::as_str)
                .and_then(date_range);
            let end = value
                .get("end")
                .and_then(Value::as_str)
                .and_then(date_range);
            if start.is_none() && end.is_none() {
                return vec![];
            }
            vec![(start.map(|s| s.0), end.map(|e| e.1))]
        }
        "Timing" => value
            .get("event")
            .and_then(Value::as_array)
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e.as_str().and_then(date_range))
                    .map(|(lo, hi)| (Some(lo), Some(hi)))
                    .collect()
            })
            .unwrap_or_default(),
        _ => value
            .as_str()
            .and_then(date_range)
            .map(|(lo, hi)| vec![(Some(lo), Some(hi))])
            .unwrap_or_default(),
    }
}

/// A quantity's value (or a Range's low..high) with its unit.
pub struct QuantityValue {
    pub lo: f64,
    pub hi: f64,
    pub system: Option<String>,
    pub code: Option<String>,
    pub unit: Option<String>,
}

fn number_of(v: Option<&Value>) -> Option<f64> {
    let v = v?;
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

pub fn quantities(value: &Value, datatype: &str) -> Vec<QuantityValue> {
    match datatype {
        "Range" => {
            let lo = number_of(value.pointer("/low/value"));
            let hi = number_of(value.pointer("/high/value"));
            if lo.is_none() && hi.is_none() {
                return vec![];
            }
            let unit = value.get("low").or(value.get("high"));
            vec![QuantityValue {
                lo: lo.unwrap_or(LOWEST),
                hi: hi.unwrap_or(HIGHEST),
                system: unit.and_then(|u| s(u.get("system"))),
                code: unit.and_then(|u| s(u.get("code"))),
                unit: unit.and_then(|u| s(u.get("unit"))),
            }]
        }
        "Money" => number_of(value.get("value"))
            .map(|v| QuantityValue {
                lo: v,
                hi: v,
                system: Some("urn:iso:std:iso:4217".into()),
                code: s(value.get("currency")),
                unit: None,
            })
            .into_iter()
            .collect(),
        "integer" | "decimal" | "positiveInt" | "unsignedInt" => number_of(Some(value))
            .map(|v| QuantityValue {
                lo: v,
                hi: v,
                system: None,
                code: None,
                unit: None,
            })
            .into_iter()
            .collect(),
        _ => number_of(value.get("value"))
            .map(|v| QuantityValue {
                lo: v,
                hi: v,
                system: s(value.get("system")),
                code: s(value.get("code")),
                unit: s(value.get("unit")),
            })
            .into_iter()
            .collect(),
    }
}

/// The prefixes of a uri that `:below` matches: the uri cut after each `/`, and the whole.
pub fn uri_prefixes(uri: &str) -> Vec<&str> {
    let mut out: Vec<&str> = uri
        .match_indices('/')
        .map(|(i, _)| &uri[..i])
        .filter(|p| !p.is_empty() && !p.ends_with(':') && !p.ends_with('/'))
        .collect();
    out.push(uri);
    out
}

/// Whether the index can serve this parameter (composites: a token followed by a token, string,
/// quantity, number or date).
pub fn supported(param: &SearchParam) -> bool {
    match param.kind {
        Kind::Composite => {
            param.components.len() == 2
                && param.components[0].kind == Kind::Token
                && matches!(
                    param.components[1].kind,
                    Kind::Token | Kind::String | Kind::Quantity | Kind::Number | Kind::Date
                )
        }
        _ => true,
    }
}

/// The parameters indexed from the database's own columns rather than the resource body.
pub fn from_columns(code: &str) -> bool {
    matches!(code, "_id" | "_lastUpdated")
}

/// The hashes of a value for the composite's second component (token or string kinds).
fn component_hashes(
    keys: &IndexKeys,
    param: &str,
    kind: Kind,
    value: &Value,
    datatype: &str,
) -> Vec<Vec<u8>> {
    match kind {
        Kind::Token => tokens(value, datatype)
            .iter()
            .flat_map(|t| token_hashes(keys, param, t))
            .collect(),
        Kind::String => strings(value, datatype)
            .iter()
            .flat_map(|v| {
                let n = normalise(v);
                prefixes(&n)
                    .map(|p| keys.blind(Class::String, param, "p", p))
                    .collect::<Vec<_>>()
            })
            .collect(),
        _ => vec![],
    }
}

/// Everything `resource` contributes to the index.
pub fn index_resource(keys: &IndexKeys, resource_type: &str, resource: &Value) -> IndexRows {
    let mut rows = IndexRows::default();
    for param in params::for_type(resource_type) {
        if from_columns(&param.code) || !supported(param) || !param.union_of.is_empty() {
            continue;
        }
        index_param(keys, param, resource, &mut rows);
    }
    // The patient compartments it is in besides its key scope's (the first), by the same function
    // that gives the key scope, so that searches decide on all of them in SQL (`_compartment`).
    if let Some(rt) = crate::fhir::ResourceType::parse(resource_type) {
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for c in crate::fhir::reference::access_compartments(rt, id, resource)
            .iter()
            .skip(1)
        {
            if let Some(patient) = c.strip_prefix("Patient/") {
                rows.refs
                    .push(("_compartment", "Patient".to_string(), patient.to_string()));
            }
        }
    }
    rows.hashes.sort();
    rows.hashes.dedup();
    rows.prefixes.sort();
    rows.prefixes.dedup();
    rows
}

fn values<'a>(root: &'a Value, paths: &'a [Path]) -> Vec<(&'a Value, &'a str)> {
    paths
        .iter()
        .flat_map(|p| {
            params::evaluate(root, p)
                .into_iter()
                .map(move |v| (v, p.datatype.as_str()))
        })
        .collect()
}

fn index_param(
    keys: &IndexKeys,
    param: &'static SearchParam,
    resource: &Value,
    rows: &mut IndexRows,
) {
    let code = param.code.as_str();
    for (value, datatype) in values(resource, &param.paths) {
        match param.kind {
            Kind::String => {
                for v in strings(value, datatype) {
                    index_prefixes(keys, Class::String, code, "p", &v, rows);
                    rows.hashes
                        .push((code, keys.blind(Class::String, code, "e", &v)));
                }
            }
            Kind::Token => {
                for t in tokens(value, datatype) {
                    for h in token_hashes(keys, code, &t) {
                        rows.hashes.push((code, h));
                    }
                    if let Some(text) = &t.text {
                        index_prefixes(keys, Class::Token, code, "t", text, rows);
                    }
                    if let Some(value) = &t.code {
                        for (ts, tc) in &t.of_type {
                            let v = format!("{ts}|{tc}|{value}");
                            rows.hashes
                                .push((code, keys.blind(Class::Token, code, "ot", &v)));
                        }
                    }
                }
            }
            Kind::Uri => {
                if let Some(uri) = value.as_str() {
                    let plain = uri.split('|').next().unwrap_or(uri);
                    for u in [uri, plain] {
                        // `:below` leads through the dictionary from each path prefix to the
                        // exact index of the whole.
                        let exact = keys.blind(Class::Uri, code, "e", u);
                        for p in uri_prefixes(u) {
                            rows.prefixes
                                .push((keys.blind(Class::Uri, code, "b", p), exact.clone()));
                        }
                        rows.hashes.push((code, exact));
                    }
                }
            }
            Kind::Reference => {
                let reference = match (datatype, value) {
                    ("Reference", v) => v.get("reference").and_then(Value::as_str),
                    (_, Value::String(v)) => Some(v.as_str()),
                    _ => None,
                };
                let Some(reference) = reference else { continue };
                match Reference::parse(reference) {
                    Ok(Reference::Resource {
                        resource_type, id, ..
                    }) => rows.refs.push((code, resource_type.to_string(), id.into())),
                    // Only a plain absolute URL (canonical or external) is kept whole: anything
                    // else (a conditional `Type?identifier=...` outside a transaction, a urn) may
                    // carry PHI and is not indexed.
                    Ok(Reference::Url(url)) if url.contains("://") && !url.contains(['?', '#']) => {
                        let plain = url.split('|').next().unwrap_or(url);
                        rows.refs.push((code, String::new(), plain.into()));
                    }
                    _ => {}
                }
            }
            Kind::Date => {
                for (lo, hi) in date_ranges(value, datatype) {
                    rows.ranges.push(RangeRow::date(keys, code, lo, hi, None));
                }
            }
            Kind::Number | Kind::Quantity => {
                for q in quantities(value, datatype) {
                    push_quantity(keys, code, &q, None, rows);
                }
            }
            Kind::Composite => index_composite(keys, param, value, rows),
        }
    }
}

fn push_quantity(
    keys: &IndexKeys,
    code: &'static str,
    q: &QuantityValue,
    comp: Option<&Vec<u8>>,
    rows: &mut IndexRows,
) {
    let unit_sc = match (&q.system, &q.code) {
        (Some(s), Some(c)) => Some(keys.blind(Class::Quantity, code, "sc", &format!("{s}|{c}"))),
        _ => None,
    };
    let mut units: Vec<&String> = q.code.iter().chain(q.unit.iter()).collect();
    units.dedup();
    if units.is_empty() {
        units.push(const { &String::new() });
    }
    for unit in units {
        let unit_c = (!unit.is_empty()).then(|| keys.blind(Class::Quantity, code, "c", unit));
        rows.ranges.push(RangeRow {
            param: code,
            lo: q.lo,
            hi: q.hi,
            unit_sc: unit_sc.clone(),
            unit_c,
            comp: comp.cloned(),
        });
    }
}

fn index_composite(
    keys: &IndexKeys,
    param: &'static SearchParam,
    base: &Value,
    rows: &mut IndexRows,
) {
    let code = param.code.as_str();
    let (first, second) = (&param.components[0], &param.components[1]);
    let firsts: Vec<Vec<u8>> = values(base, &first.paths)
        .into_iter()
        .flat_map(|(v, dt)| component_hashes(keys, code, Kind::Token, v, dt))
        .collect();
    if firsts.is_empty() {
        return;
    }
    for (v, dt) in values(base, &second.paths) {
        match second.kind {
            Kind::Token | Kind::String => {
                for h2 in component_hashes(keys, code, second.kind, v, dt) {
                    for h1 in &firsts {
                        let pair = [h1.as_slice(), h2.as_slice()].concat();
                        rows.hashes
                            .push((code, keys.blind_bytes(Class::Token, code, "x", &pair)));
                    }
                }
            }
            Kind::Quantity | Kind::Number => {
                for q in quantities(v, dt) {
                    for h1 in &firsts {
                        push_quantity(keys, code, &q, Some(h1), rows);
                    }
                }
            }
            Kind::Date => {
                for (lo, hi) in date_ranges(v, dt) {
                    for h1 in &firsts {
                        rows.ranges
                            .push(RangeRow::date(keys, code, lo, hi, Some(h1.clone())));
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
