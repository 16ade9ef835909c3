//! Structural validation of R4 JSON resources against the R4 definitions: known elements only, the
//! right JSON types, arrays where (and only where) the definition repeats, primitives in their lexical
//! forms, required elements present, embedded resources checked as resources. Every problem is named
//! by a FHIRPath-like location (`Patient.name[0].given[1]`).
//!
//! This runs on every write, so it walks the document once over the precomputed tables of
//! [`super::schema`], and allocates no strings unless it finds a problem: the current location is a
//! stack of borrowed segments, rendered into a path only for an issue.

use super::narrative;
use super::printable;
use super::schema::{self, Element, Kind, Primitive, TypeDef};
use super::terminology;
use regex::Regex;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::sync::LazyLock;

/// One problem found in a resource; safe to show to the client (element paths, never values).
///
/// `path` is a FHIRPath expression (`Patient.name[0].given[1]`, `Observation.value.ofType(Quantity)`)
/// and is rendered as both the issue's `expression` and its legacy `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueType,
    pub path: String,
    pub message: String,
}

/// `OperationOutcome.issue.severity`. Only errors refuse a write; warnings and information are
/// reported by `$validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// The `OperationOutcome.issue.code`s (R4 value set `issue-type`) that validation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    /// Content invalid against the specification or a profile (the generic code).
    Invalid,
    /// A structural problem: unknown element, wrong JSON type, wrong array-ness.
    Structure,
    /// A required element is missing.
    Required,
    /// A primitive's value is not in its lexical space.
    Value,
    /// A FHIRPath invariant (constraint) failed.
    Invariant,
    /// A code is not in the value set its binding names.
    CodeInvalid,
    /// An extension is used where its definition does not allow it, or with the wrong value.
    Extension,
    /// A referenced resource does not exist.
    NotFound,
    /// Something the validator cannot check (an unknown code system, a profile it does not have).
    NotSupported,
    /// A rule of this server (business rule) rather than of R4.
    BusinessRule,
    /// Nothing wrong: a note for the caller.
    Informational,
}

impl IssueType {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::Extension => "extension",
            IssueType::NotFound => "not-found",
            IssueType::NotSupported => "not-supported",
            IssueType::BusinessRule => "business-rule",
            IssueType::Informational => "informational",
        }
    }
}

impl Issue {
    /// An error of the generic `invalid` type.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue::error(IssueType::Invalid, path, message)
    }

    pub fn error(code: IssueType, path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn warning(code: IssueType, path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Warning,
            code,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity <= Severity::Error
    }

    /// The issue as an `OperationOutcome.issue` element.
    pub fn to_json(&self) -> Value {
        let mut issue = serde_json::json!({
            "severity": self.severity.as_str(),
            "code": self.code.as_str(),
            "diagnostics": self.message,
        });
        if !self.path.is_empty() {
            issue["expression"] = serde_json::json!([self.path]);
            issue["location"] = serde_json::json!([self.path]);
        }
        issue
    }
}

const MAX_ISSUES: usize = 100;
/// Path segments (names and indexes) deep enough for any real resource. Parsed bodies are already
/// bounded by the JSON reader, but a value assembled in code (a patch result) is not, and recursion
/// must not be able to exhaust the stack.
const MAX_DEPTH: usize = 256;
/// R4 caps strings at 1 MB (1024 * 1024 characters); base64Binary and xhtml are bounded only by
/// the body limit.
const MAX_STRING: usize = 1024 * 1024;

/// How much a validation run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// On every write: errors only (a warning never refuses a write, so it is not computed).
    Write,
    /// For `$validate`: errors, warnings and information.
    Report,
}

/// Check a resource before it is written; `Err` lists every error found (at most 100).
pub fn validate_resource(resource: &Value) -> Result<(), Vec<Issue>> {
    let mut issues = run(resource, Depth::Write);
    issues.retain(Issue::is_error);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// Check a resource for `$validate`: every error, warning and note, in document order.
pub fn validate_report(resource: &Value) -> Vec<Issue> {
    run(resource, Depth::Report)
}

fn run(resource: &Value, depth: Depth) -> Vec<Issue> {
    let mut c = Checker {
        issues: Vec::new(),
        path: Vec::with_capacity(16),
        depth,
    };
    match resource {
        Value::Object(map) => check_resource(&mut c, map, true),
        _ => c.issue("a resource must be a JSON object"),
    }
    c.issues
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Name(&'a str),
    Index(usize),
}

struct Checker<'a> {
    issues: Vec<Issue>,
    path: Vec<Seg<'a>>,
    depth: Depth,
}

impl<'a> Checker<'a> {
    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    fn issue(&mut self, message: impl Into<String>) {
        if self.full() {
            return;
        }
        let path = self.render();
        self.issues.push(Issue::invalid(path, message));
    }

    fn render(&self) -> String {
        let mut path = String::new();
        for seg in &self.path {
            match seg {
                Seg::Name(name) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    // Unknown keys come from the client: never echo them raw.
                    path.push_str(&printable(name));
                }
                Seg::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
            }
        }
        path
    }

    fn issue_at(&mut self, name: &'a str, message: impl Into<String>) {
        self.path.push(Seg::Name(name));
        self.issue(message);
        self.path.pop();
    }
}

fn check_resource<'a>(c: &mut Checker<'a>, map: &'a Map<String, Value>, root: bool) {
    let rt = match map.get("resourceType") {
        Some(Value::String(rt)) if schema::is_resource_type(rt) => rt.as_str(),
        Some(Value::String(_)) => {
            c.issue_at("resourceType", "resourceType is not an R4 resource type");
            return;
        }
        _ => {
            c.issue_at("resourceType", "resourceType is missing or not a string");
            return;
        }
    };
    let Some(def) = schema::type_def(rt) else {
        c.issue("resource type has no definition");
        return;
    };
    // A resource's own paths start with its type (`Patient.name`); an embedded one keeps its place
    // (`Bundle.entry[0].resource.name`).
    if root {
        c.path.push(Seg::Name(rt));
    }
    // dom-5: a contained resource carries no security label of its own (its container's label
    // is the one the access gate decides on, so a label here would be ignored, not honoured).
    let contained = matches!(
        c.path.as_slice(),
        [.., Seg::Name("contained"), Seg::Index(_)]
    );
    if contained && map.get("meta").and_then(|m| m.get("security")).is_some() {
        c.path.push(Seg::Name("meta"));
        c.issue_at(
            "security",
            "a contained resource must not have a security label (dom-5): label the container",
        );
        c.path.pop();
    }
    check_object(c, map, def, true);
    if root {
        c.path.pop();
    }
}

fn check_object<'a>(
    c: &mut Checker<'a>,
    map: &'a Map<String, Value>,
    def: &'static TypeDef,
    is_resource: bool,
) {
    if map.is_empty() {
        c.issue("an object must not be empty");
        return;
    }
    if c.path.len() > MAX_DEPTH {
        c.issue("elements are nested too deeply");
        return;
    }
    // One bit per choice group (`value[x]`) seen so far; the schema test keeps groups under 64.
    let mut choices: u64 = 0;
    for (key, value) in map {
        if c.full() {
            return;
        }
        if is_resource && key == "resourceType" {
            continue;
        }
        if let Some(base) = key.strip_prefix('_') {
            match def.element(base) {
                Some(el) if el.is_primitive() => {
                    // `_valueString` alone stands for the choice; with `valueString` it is counted once.
                    if !map.contains_key(base) {
                        note_choice(c, &mut choices, el, def, key);
                    }
                    c.path.push(Seg::Name(key));
                    check_shadow(c, value, el, map.get(base));
                    c.path.pop();
                }
                _ => c.issue_at(key, format!("unknown element '{}'", printable(key))),
            }
            continue;
        }
        let Some(el) = def.element(key) else {
            c.issue_at(key, format!("unknown element '{}'", printable(key)));
            continue;
        };
        note_choice(c, &mut choices, el, def, key);
        c.path.push(Seg::Name(key));
        let before = c.issues.len();
        check_element(c, value, el, map);
        // A value already refused for its form is not judged against its binding too.
        if c.issues.len() == before {
            check_bound(c, value, el, def, key);
        }
        c.path.pop();
    }
    for req in def.required() {
        let present = req
            .elements
            .iter()
            .filter_map(|&i| def.elements().get(i))
            .any(|e| {
                map.contains_key(e.name())
                    || (!e.shadow_name().is_empty() && map.contains_key(e.shadow_name()))
            });
        if !present {
            c.issue_at(req.name(), "required element is missing");
        }
    }
    if def.name() == "Extension" {
        check_extension(c, map);
    }
    if def.name() == "Reference" {
        check_reference(c, map);
    }
}

/// `Reference.reference` by the one grammar every other reader of references uses
/// ([`super::reference`]): a reference the key scope and the index could read differently is
/// refused here.
fn check_reference<'a>(c: &mut Checker<'a>, map: &'a Map<String, Value>) {
    if let Some(Value::String(text)) = map.get("reference") {
        if let Err(e) = super::reference::Reference::parse(text) {
            c.issue_at("reference", format!("not a valid reference: {e}"));
        }
    }
}

fn note_choice<'a>(
    c: &mut Checker<'a>,
    seen: &mut u64,
    el: &Element,
    def: &'static TypeDef,
    key: &'a str,
) {
    let Some(group) = el.choice.filter(|g| *g < 64) else {
        return;
    };
    let bit = 1u64 << group;
    if *seen & bit != 0 {
        c.issue_at(
            key,
            format!("only one of {}[x] may be present", def.choice_name(group)),
        );
    }
    *seen |= bit;
}

/// ext-1: an extension carries either a value or nested extensions, never both, never neither.
fn check_extension(c: &mut Checker<'_>, map: &Map<String, Value>) {
    let has_value = map
        .keys()
        .any(|k| k.starts_with("value") || k.starts_with("_value"));
    let has_nested = map.contains_key("extension");
    if has_value && has_nested {
        c.issue("an extension has either a value[x] or nested extensions, not both");
    } else if !has_value && !has_nested {
        c.issue("an extension needs a value[x] or nested extensions");
    }
}

fn check_element<'a>(
    c: &mut Checker<'a>,
    value: &'a Value,
    el: &'static Element,
    map: &'a Map<String, Value>,
) {
    if !el.is_array {
        match value {
            Value::Array(_) => c.issue("this element does not repeat: it must not be an array"),
            Value::Null => c.issue("null is not a value"),
            _ => check_value(c, value, el.kind),
        }
        return;
    }
    let items = match value {
        Value::Array(items) => items,
        Value::Null => return c.issue("null is not a value"),
        _ => return c.issue("this element repeats: it must be a JSON array"),
    };
    if items.is_empty() {
        c.issue("arrays must not be empty");
        return;
    }
    // A repeating primitive may hold null where its `_name` array carries that entry's extensions.
    let shadow = if el.is_primitive() {
        map.get(el.shadow_name()).and_then(Value::as_array)
    } else {
        None
    };
    for (i, item) in items.iter().enumerate() {
        if c.full() {
            return;
        }
        c.path.push(Seg::Index(i));
        if item.is_null() {
            let covered = shadow.and_then(|s| s.get(i)).is_some_and(|s| !s.is_null());
            if !covered {
                c.issue(if el.is_primitive() {
                    "null is not a value (only a placeholder for an entry of the '_' array)"
                } else {
                    "null is not a value"
                });
            }
        } else {
            check_value(c, item, el.kind);
        }
        c.path.pop();
    }
}

/// A code, Coding or CodeableConcept element against its binding ([`terminology::check_binding`]
/// decides; this only walks a repeating element's items and names the path).
fn check_bound<'a>(
    c: &mut Checker<'a>,
    value: &'a Value,
    el: &'static Element,
    def: &'static TypeDef,
    key: &'a str,
) {
    let coded = match el.kind {
        Kind::Primitive(p) => p == Primitive::Code,
        Kind::Complex(i) => {
            schema::type_at(i).is_some_and(|t| matches!(t.name(), "Coding" | "CodeableConcept"))
        }
        Kind::Resource => false,
    };
    let Some(binding) = coded
        .then(|| terminology::binding(def.name(), key))
        .flatten()
    else {
        return;
    };
    let one = |c: &mut Checker<'a>, item: &Value| {
        if let Some(f) = terminology::check_binding(&binding, item, c.depth) {
            if !c.full() {
                let path = c.render();
                let message = format!("{path}: {}", f.message);
                c.issues.push(Issue {
                    severity: f.severity,
                    code: f.code,
                    path,
                    message,
                });
            }
        }
    };
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                c.path.push(Seg::Index(i));
                one(c, item);
                c.path.pop();
            }
        }
        _ => one(c, value),
    }
}

/// `_birthDate` / `_given`: a primitive's id and extensions, aligned with its values.
fn check_shadow<'a>(
    c: &mut Checker<'a>,
    value: &'a Value,
    el: &'static Element,
    values: Option<&'a Value>,
) {
    let Some(holder) = schema::type_def("Element") else {
        c.issue("no definition for Element");
        return;
    };
    if !el.is_array {
        match value {
            Value::Object(m) => check_object(c, m, holder, false),
            Value::Null => c.issue("null is not a value"),
            _ => c.issue("a primitive's id and extensions are a JSON object"),
        }
        return;
    }
    let items = match value {
        Value::Array(items) => items,
        Value::Null => return c.issue("null is not a value"),
        _ => return c.issue("this element repeats: it must be a JSON array"),
    };
    if items.is_empty() {
        c.issue("arrays must not be empty");
        return;
    }
    let values = values.and_then(Value::as_array);
    if let Some(values) = values {
        if values.len() != items.len() {
            c.issue(format!("must have as many entries as '{}'", el.name()));
        }
    }
    for (i, item) in items.iter().enumerate() {
        if c.full() {
            return;
        }
        c.path.push(Seg::Index(i));
        match item {
            Value::Object(m) => check_object(c, m, holder, false),
            Value::Null => {
                let covered = values.and_then(|v| v.get(i)).is_some_and(|v| !v.is_null());
                if !covered {
                    c.issue(format!(
                        "null is only a placeholder for an entry that has a value in '{}'",
                        el.name()
                    ));
                }
            }
            _ => c.issue("a primitive's id and extensions are a JSON object"),
        }
        c.path.pop();
    }
}

fn check_value<'a>(c: &mut Checker<'a>, value: &'a Value, kind: Kind) {
    match kind {
        Kind::Primitive(p) => check_primitive(c, value, p),
        Kind::Resource => match value {
            Value::Object(map) => check_resource(c, map, false),
            _ => c.issue("an embedded resource must be a JSON object"),
        },
        Kind::Complex(index) => {
            let Some(def) = schema::type_at(index) else {
                c.issue("element has no definition");
                return;
            };
            match value {
                Value::Object(map) => check_object(c, map, def, false),
                _ => c.issue(format!("must be a JSON object ({})", def.name())),
            }
        }
    }
}

fn check_primitive(c: &mut Checker<'_>, value: &Value, p: Primitive) {
    match p {
        Primitive::Boolean => {
            if !value.is_boolean() {
                c.issue("must be a JSON boolean (true or false)");
            }
        }
        Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
            let Value::Number(n) = value else {
                c.issue(format!("must be a JSON number ({})", p.name()));
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
                _ => c.issue(format!(
                    "must be a whole number in the range of {}",
                    p.name()
                )),
            }
        }
        Primitive::Decimal => {
            if !value.is_number() {
                c.issue("must be a JSON number (decimal)");
            }
        }
        _ => {
            let Value::String(s) = value else {
                c.issue(format!("must be a JSON string ({})", p.name()));
                return;
            };
            check_string(c, s, p);
        }
    }
}

fn check_string(c: &mut Checker<'_>, s: &str, p: Primitive) {
    if s.is_empty() {
        c.issue("strings must not be empty");
        return;
    }
    // R4 counts characters. A narrative is not a string: the official examples carry xhtml over 1 MB.
    if s.len() > MAX_STRING
        && !matches!(p, Primitive::Base64Binary | Primitive::Xhtml)
        && s.chars().count() > MAX_STRING
    {
        c.issue("string is longer than 1 MB");
        return;
    }
    // UTF-8 continuation bytes are >= 0x80, so a byte scan finds exactly the control characters.
    if s.bytes()
        .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'))
    {
        c.issue("control characters are not allowed in FHIR strings");
        return;
    }
    let ok = match p {
        Primitive::Code => is_code(s),
        Primitive::Id => {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        Primitive::Uri | Primitive::Url | Primitive::Canonical => !s.bytes().any(is_xml_space),
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
                    c.issue(problem);
                }
            }
            return;
        }
        _ => true,
    };
    if !ok {
        c.issue(format!("not a valid {}", p.name()));
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
    use super::*;
    use serde_json::json;

    fn issues(v: Value) -> Vec<Issue> {
        validate_resource(&v).err().unwrap_or_default()
    }

    fn paths(v: Value) -> Vec<String> {
        issues(v).into_iter().map(|i| i.path).collect()
    }

    /// Parse text the way the server does, keeping numbers' text.
    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn patient_with(field: &str, value: Value) -> Value {
        let mut p = json!({"resourceType": "Patient"});
        p[field] = value;
        p
    }

    #[test]
    fn a_well_formed_patient_passes() {
        let p = json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678Z",
                     "profile": ["http://example.org/p"]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
            "name": [{"family": "Chalmers", "given": ["Peter", "James"], "_given": [null, {"extension": [
                {"url": "http://example.org/x", "valueString": "y"}]}]}],
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                          "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
            "deceasedBoolean": false,
            "multipleBirthInteger": 2,
            "photo": [{"contentType": "image/png", "data": "aGVs\r\nbG8="}],
            "contact": [{"relationship": [{"text": "mother"}], "name": {"family": "X"}}],
            "managingOrganization": {"reference": "#o1"},
            "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}]
        });
        assert_eq!(issues(p), vec![]);
    }

    #[test]
    fn the_top_level_must_be_a_known_resource() {
        assert_eq!(paths(json!([1])), [""]);
        assert_eq!(paths(json!({"id": "x"})), ["resourceType"]);
        assert_eq!(paths(json!({"resourceType": 5})), ["resourceType"]);
        assert_eq!(paths(json!({"resourceType": "Patent"})), ["resourceType"]);
        assert_eq!(
            paths(json!({"resourceType": "DomainResource"})),
            ["resourceType"]
        );
        assert_eq!(
            paths(json!({"resourceType": "HumanName"})),
            ["resourceType"]
        );
        assert_eq!(issues(json!({"resourceType": "Patient"})), vec![]);
    }

    #[test]
    fn unknown_elements_and_misplaced_resource_type_are_named() {
        assert_eq!(
            paths(json!({"resourceType": "Patient", "colour": "red"})),
            ["Patient.colour"]
        );
        let i = issues(json!({"resourceType": "Patient", "colour": "red"}));
        assert_eq!(i[0].message, "unknown element 'colour'");
        assert_eq!(
            paths(json!({"resourceType": "Patient", "name": [{"resourceType": "HumanName"}]})),
            ["Patient.name[0].resourceType"]
        );
        assert_eq!(
            paths(json!({"resourceType": "Patient", "_colour": {}})),
            ["Patient._colour"]
        );
        // `_x` exists only for primitives.
        assert_eq!(
            paths(json!({"resourceType": "Patient", "_name": [{"id": "a"}]})),
            ["Patient._name"]
        );
        // The abstract choice name and choices of types it does not allow are not elements.
        assert_eq!(
            paths(json!({"resourceType": "Patient", "deceased[x]": true, "deceasedString": "x"})),
            ["Patient.deceased[x]", "Patient.deceasedString"]
        );
        // Client keys are echoed only as printable ASCII.
        let i = issues(json!({"resourceType": "Patient", "a\u{1b}b": 1}));
        assert_eq!(i[0].path, "Patient.a?b");
        assert_eq!(i[0].message, "unknown element 'a?b'");
    }

    #[test]
    fn arrays_nulls_and_empty_values_are_checked() {
        let cases = [
            (
                json!({"resourceType": "Patient", "name": {"family": "x"}}),
                "Patient.name",
            ),
            (
                json!({"resourceType": "Patient", "gender": ["male"]}),
                "Patient.gender",
            ),
            (
                json!({"resourceType": "Patient", "name": []}),
                "Patient.name",
            ),
            (
                json!({"resourceType": "Patient", "name": [{}]}),
                "Patient.name[0]",
            ),
            (
                json!({"resourceType": "Patient", "name": [null]}),
                "Patient.name[0]",
            ),
            (
                json!({"resourceType": "Patient", "name": null}),
                "Patient.name",
            ),
            (
                json!({"resourceType": "Patient", "birthDate": null}),
                "Patient.birthDate",
            ),
            (
                json!({"resourceType": "Patient", "maritalStatus": {}}),
                "Patient.maritalStatus",
            ),
            (
                json!({"resourceType": "Patient", "maritalStatus": "M"}),
                "Patient.maritalStatus",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a", 3]}]}),
                "Patient.name[0].given[1]",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
                "Patient.name[0].given[1]",
            ),
            (
                json!({"resourceType": "Patient", "contact": [{"name": {"given": []}}]}),
                "Patient.contact[0].name.given",
            ),
        ];
        for (resource, path) in cases {
            assert_eq!(paths(resource.clone()), [path], "{resource}");
        }
    }

    #[test]
    fn primitive_extensions_are_aligned_with_their_values() {
        let ok = [
            json!({"resourceType": "Patient", "_birthDate": {"id": "b", "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}}),
            json!({"resourceType": "Patient", "name": [{"given": [null, "b"], "_given": [{"id": "g"}, null]}]}),
            json!({"resourceType": "Patient", "name": [{"_given": [{"id": "g"}]}]}),
            json!({"resourceType": "Patient", "_deceasedBoolean": {"id": "d"}}),
        ];
        for resource in ok {
            assert_eq!(issues(resource.clone()), vec![], "{resource}");
        }
        let cases = [
            (
                json!({"resourceType": "Patient", "_birthDate": "x"}),
                "Patient._birthDate",
            ),
            (
                json!({"resourceType": "Patient", "_birthDate": null}),
                "Patient._birthDate",
            ),
            (
                json!({"resourceType": "Patient", "_birthDate": {}}),
                "Patient._birthDate",
            ),
            (
                json!({"resourceType": "Patient", "_birthDate": [{"id": "b"}]}),
                "Patient._birthDate",
            ),
            (
                json!({"resourceType": "Patient", "_birthDate": {"url": "u"}}),
                "Patient._birthDate.url",
            ),
            (
                json!({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "u"}]}}),
                "Patient._birthDate.extension[0]",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": {"id": "g"}}]}),
                "Patient.name[0]._given",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [{"id": "g"}]}]}),
                "Patient.name[0]._given",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"_given": [null]}]}),
                "Patient.name[0]._given[0]",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [3]}]}),
                "Patient.name[0]._given[0]",
            ),
        ];
        for (resource, path) in cases {
            assert_eq!(paths(resource.clone()), [path], "{resource}");
        }
        // Both sides null at one position: each side is reported.
        assert_eq!(
            paths(
                json!({"resourceType": "Patient", "name": [{"given": [null], "_given": [null]}]})
            ),
            ["Patient.name[0].given[0]", "Patient.name[0]._given[0]"]
        );
        assert_eq!(
            paths(
                json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [{"id": "g"}]}]})
            ),
            ["Patient.name[0].given[1]", "Patient.name[0]._given"]
        );
    }

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
            assert_eq!(paths(p), [format!("Patient.{field}")], "{field} = {value}");
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
                    "dosageInstruction": [{{"timing": {{"repeat": {{"{field}": {v}}}}}}}]}}"#
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
        assert_eq!(paths(obs("\"1.5\"")), ["Observation.valueQuantity.value"]);
        assert_eq!(paths(obs("true")), ["Observation.valueQuantity.value"]);
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
            (json!({"valueTime": "25:00:00"}), "Observation.valueTime"),
            (json!({"valueTime": "10:00"}), "Observation.valueTime"),
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
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"> </div>"}}]}),
                "Observation.contained[0].text.div",
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
                issues(photo(json!({"data": good, "size": 0}))),
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
            ["NamingSystem.extension[0].valueOid"]
        );
        assert_eq!(
            paths(oid("2.16.840")),
            ["NamingSystem.extension[0].valueOid"]
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
            ["Patient.extension[0].valueUuid"]
        );
    }

    #[test]
    fn required_elements_and_choices() {
        assert_eq!(
            paths(json!({"resourceType": "Observation", "code": {"text": "x"}})),
            ["Observation.status"]
        );
        // A required primitive may be present through its extensions only.
        let absent = json!({"resourceType": "Observation", "code": {"text": "x"}, "_status": {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
        assert_eq!(issues(absent), vec![]);
        assert_eq!(
            paths(
                json!({"resourceType": "Questionnaire", "status": "draft", "item": [
                {"linkId": "1", "type": "choice", "enableWhen": [{"question": "0", "operator": "exists"}]}]})
            ),
            ["Questionnaire.item[0].enableWhen[0].answer[x]"]
        );
        let two = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "valueString": "a", "valueBoolean": true});
        assert_eq!(paths(two), ["Observation.valueBoolean"]);
        let two = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "valueString": "a", "_valueBoolean": {"id": "b"}});
        assert_eq!(paths(two), ["Observation._valueBoolean"]);
        let one = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "valueString": "a", "_valueString": {"id": "s"}});
        assert_eq!(issues(one), vec![]);
    }

    #[test]
    fn extensions_have_a_url_and_one_value_or_nested_extensions() {
        let ext = |e: Value| json!({"resourceType": "Patient", "extension": [e]});
        assert_eq!(
            paths(ext(json!({"valueString": "x"}))),
            ["Patient.extension[0].url"]
        );
        assert_eq!(
            paths(ext(
                json!({"url": "u", "valueString": "x", "valueBoolean": true})
            )),
            ["Patient.extension[0].valueBoolean"]
        );
        assert_eq!(
            paths(ext(
                json!({"url": "u", "valueString": "x", "extension": [{"url": "v", "valueCode": "c"}]})
            )),
            ["Patient.extension[0]"]
        );
        assert_eq!(paths(ext(json!({"url": "u"}))), ["Patient.extension[0]"]);
        assert_eq!(
            paths(ext(json!({"url": "u", "valueFoo": 1}))),
            ["Patient.extension[0].valueFoo"]
        );
        assert_eq!(
            issues(ext(
                json!({"url": "u", "extension": [{"url": "v", "valueCodeableConcept": {"text": "t"}}]})
            )),
            vec![]
        );
        assert_eq!(
            issues(ext(json!({"url": "u", "_valueCode": {"id": "c"}}))),
            vec![]
        );
        assert_eq!(
            paths(ext(json!({"url": "u", "valueReference": {"reference": 1}}))),
            ["Patient.extension[0].valueReference.reference"]
        );
        let modifier = json!({"resourceType": "Patient", "modifierExtension": [{"url": "u", "valueBoolean": "no"}]});
        assert_eq!(
            paths(modifier),
            ["Patient.modifierExtension[0].valueBoolean"]
        );
    }

    #[test]
    fn embedded_resources_are_checked_as_resources() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
             "resource": {"resourceType": "Patient", "gender": 1}},
            {"resource": {"resourceType": "Nonsense"}},
            {"resource": {"gender": "male"}},
            {"resource": "Patient/1"}
        ]});
        assert_eq!(
            paths(bundle),
            [
                "Bundle.entry[0].resource.gender",
                "Bundle.entry[1].resource.resourceType",
                "Bundle.entry[2].resource.resourceType",
                "Bundle.entry[3].resource",
            ]
        );
        let contained = json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Organization", "id": "o", "colour": "red"}]});
        assert_eq!(paths(contained), ["Patient.contained[0].colour"]);
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "p", "resource": {"resourceType": "Observation", "code": {"text": "x"}}}]});
        assert_eq!(paths(params), ["Parameters.parameter[0].resource.status"]);
        let q = json!({"resourceType": "Questionnaire", "status": "draft", "item": [
            {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "bogus": 1}]}]});
        assert_eq!(paths(q), ["Questionnaire.item[0].item[0].bogus"]);
        let vs = json!({"resourceType": "ValueSet", "status": "draft", "compose": {
            "include": [{"system": "http://x"}], "exclude": [{"system": "http://y", "colour": 1}]}});
        assert_eq!(paths(vs), ["ValueSet.compose.exclude[0].colour"]);
    }

    #[test]
    fn issues_are_collected_and_capped() {
        let p = json!({"resourceType": "Patient", "a": 1, "gender": 2, "name": [{"given": [3]}]});
        assert_eq!(
            paths(p),
            ["Patient.a", "Patient.gender", "Patient.name[0].given[0]"]
        );
        let many: Map<String, Value> = (0..300).map(|i| (format!("x{i}"), json!(1))).collect();
        let mut p = Value::Object(many);
        p["resourceType"] = json!("Patient");
        assert_eq!(issues(p).len(), MAX_ISSUES);
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let nest = |levels: usize| {
            let mut ext = json!({"url": "u", "valueString": "x"});
            for _ in 0..levels {
                // Moved, not serialised as `json!` would: building must not recurse either.
                let mut outer = Map::new();
                outer.insert("url".into(), json!("u"));
                outer.insert("extension".into(), Value::Array(vec![ext]));
                ext = Value::Object(outer);
            }
            let mut patient = Map::new();
            patient.insert("resourceType".into(), json!("Patient"));
            patient.insert("extension".into(), Value::Array(vec![ext]));
            Value::Object(patient)
        };
        assert_eq!(issues(nest(100)), vec![]);
        let value = nest(5_000);
        let deep = validate_resource(&value).unwrap_err();
        // Dropping a 5,000-deep Value recurses too; leak it rather than risk the test's stack.
        std::mem::forget(value);
        assert_eq!(deep.len(), 1);
        assert_eq!(deep[0].message, "elements are nested too deeply");
        assert!(deep[0]
            .path
            .starts_with("Patient.extension[0].extension[0]."));
    }

    #[test]
    fn official_examples_validate() {
        let Some(dir) = std::env::var_os("CARAPACE_R4_EXAMPLES") else {
            eprintln!("SKIPPED: set CARAPACE_R4_EXAMPLES to the hl7.fhir.r4.examples package dir");
            return;
        };
        let mut total = 0;
        let mut failed = Vec::new();
        let mut times = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".json") || name == "package.json" || name.starts_with('.') {
                continue;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // The definition bundles (all StructureDefinitions, SearchParameters, ValueSets...) are
            // the package's payload rather than examples.
            if v["resourceType"] == "Bundle"
                && [
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
                ]
                .iter()
                .any(|b| v["id"] == *b)
            {
                continue;
            }
            total += 1;
            let start = std::time::Instant::now();
            let result = validate_resource(&v);
            times.push(start.elapsed());
            if let Err(issues) = result {
                let kinds: std::collections::BTreeSet<_> =
                    issues.iter().map(|i| i.message.as_str()).collect();
                failed.push(format!(
                    "{name}: {} issue(s) {kinds:?}, e.g. {}",
                    issues.len(),
                    issues[0].path
                ));
            }
        }
        times.sort();
        eprintln!(
            "{} of {total} official examples validate ({} fail); validation time median {:?}, p90 {:?}",
            total - failed.len(),
            failed.len(),
            times.get(times.len() / 2).copied().unwrap_or_default(),
            times.get(times.len() * 9 / 10).copied().unwrap_or_default(),
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
