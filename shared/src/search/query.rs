//! Parsing a FHIR search (R4 `search.html`) into what the store runs: filters (AND of OR-lists,
//! with chains and reverse chains), sort keys, includes, paging and result shaping.

use super::index;
use super::params::{self, Kind, SearchParam};
use crate::fhir::{printable, ResourceType};

/// The most entries a page may hold; larger `_count`s are reduced to it.
pub const MAX_COUNT: usize = 1000;
pub const DEFAULT_COUNT: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    None,
    Exact,
    Not,
    Text,
    OfType,
    /// `:Patient` on a reference parameter.
    Type(String),
    Below,
    Above,
}

#[derive(Debug, Clone)]
pub enum Filter {
    /// `_id` (OR-list).
    Id(Vec<String>),
    /// `_lastUpdated` (OR-list of prefixed dates).
    LastUpdated(Vec<String>),
    /// `:missing=true|false`.
    Missing { code: String, missing: bool },
    /// An indexed parameter with an OR-list of values.
    Param {
        param: &'static SearchParam,
        modifier: Modifier,
        values: Vec<String>,
    },
    /// `ref:Type.inner`: resources whose `ref` points at a `Type` matching `inner`.
    Chain {
        code: String,
        targets: Vec<String>,
        inner: Box<Filter>,
    },
    /// `_has:Source:ref:inner`: resources some `Source` points at through `ref`, where the `Source`
    /// matches `inner`.
    Has {
        source: ResourceType,
        code: String,
        inner: Box<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub code: String,
    pub descending: bool,
    pub kind: SortKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKind {
    Id,
    LastUpdated,
    /// A date, number or quantity parameter: sorted in the database on the (shifted) range.
    Range,
    /// A string, token, uri or reference parameter: sorted on the decrypted values.
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source: ResourceType,
    /// `None` for `*` (every reference parameter).
    pub code: Option<String>,
    pub target: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Summary {
    #[default]
    None,
    True,
    Count,
    Data,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    None,
    Estimate,
    #[default]
    Accurate,
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub resource_type: ResourceType,
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub total: Total,
    /// The paging cursor (`_page`), opaque and sealed.
    pub cursor: Option<String>,
    /// The parameters that define the result, as given (for `self`/`next` links and to bind cursors).
    pub kept: Vec<(String, String)>,
    /// Parameters ignored (unknown or unsupported), named for the warning.
    pub ignored: Vec<String>,
    /// A compartment search (`GET Patient/[id]/Observation?…`): only resources in this patient's
    /// compartment (R4 `compartmentdefinition-patient`), whichever reference puts them there.
    pub compartment: Option<crate::fhir::ResourceId>,
}

impl SearchQuery {
    /// The first parameter of this search (its chains and `_has` included) that could single out
    /// a person: names, identifiers, telecoms, addresses below the state, dates finer than a year,
    /// or a sort by a date or a value; a birth or death date that could reach anyone 90 or older
    /// in `this_year` (whose years of birth de-identification makes one value). What an
    /// analytics caller, who receives de-identified data only, may not search by; `None` when
    /// the search is clear of them.
    pub fn reidentifying(&self, this_year: i32) -> Option<String> {
        /// A quantity comparison past 89 in no unit, or in a unit of time: it could count ages.
        fn past_89(values: &[String]) -> bool {
            values.iter().any(|v| {
                let v = v.trim_start_matches(|c: char| c.is_ascii_lowercase());
                let mut parts = v.split('|');
                let number = parts.next().and_then(|n| n.parse::<f64>().ok());
                let unit = parts.nth(1).unwrap_or("");
                let years = match unit {
                    "" | "a" => number,
                    "mo" => number.map(|n| n / 12.0),
                    "wk" => number.map(|n| n / 52.0),
                    "d" => number.map(|n| n / 365.0),
                    _ => None,
                };
                years.is_some_and(|y| y > 89.0)
            })
        }
        fn date_finer_than_year(values: &[String]) -> bool {
            values.iter().any(|v| {
                let v = v.trim_start_matches(|c: char| c.is_ascii_lowercase());
                v.len() > 4
            })
        }
        // A year-only value that selects no one 90 or older: `[eq|ge|gt|sa]YYYY` after the cut.
        let reaches_the_oldest = |values: &[String]| {
            values.iter().any(|v| {
                let prefix: String = v.chars().take_while(|c| c.is_ascii_lowercase()).collect();
                let year = v[prefix.len()..]
                    .get(..4)
                    .and_then(|y| y.parse::<i32>().ok());
                !matches!(prefix.as_str(), "" | "eq" | "ge" | "gt" | "sa")
                    || year.is_none_or(|y| y <= this_year - 90)
            })
        };
        fn walk(f: &Filter, oldest: &dyn Fn(&[String]) -> bool) -> Option<String> {
            match f {
                Filter::Id(_) | Filter::Missing { .. } => None,
                Filter::LastUpdated(values) => {
                    date_finer_than_year(values).then(|| "_lastUpdated finer than a year".into())
                }
                Filter::Param {
                    param,
                    values,
                    modifier,
                } => {
                    // Strings are names and free text (which de-identified answers leave out, so
                    // a search on them would be an oracle); a code's `:text` is its free text too.
                    use super::params::Kind as K;
                    let text = (param.kind == K::String
                        && !matches!(param.code.as_str(), "address-state" | "address-country"))
                        || *modifier == Modifier::Text
                        // URIs name documents and sources; composites pair a code with a value
                        // the answers may leave out.
                        || matches!(param.kind, K::Uri | K::Composite)
                        // An age in a quantity past 89 (answers say "90 or more").
                        || (matches!(param.kind, K::Quantity | K::Number) && past_89(values));
                    let personal =
                        text || param.paths.iter().any(|p| {
                            matches!(
                                p.datatype.as_str(),
                                "HumanName" | "Identifier" | "ContactPoint" | "Address"
                            )
                        }) || matches!(
                            param.code.as_str(),
                            "name"
                                | "family"
                                | "given"
                                | "phonetic"
                                | "identifier"
                                | "telecom"
                                | "phone"
                                | "email"
                                | "address"
                                | "address-city"
                                | "address-postalcode"
                        ) || (param.kind == super::params::Kind::Date
                            && date_finer_than_year(values))
                            || (matches!(param.code.as_str(), "birthdate" | "death-date")
                                && oldest(values));
                    personal.then(|| param.code.clone())
                }
                Filter::Chain { inner, .. } | Filter::Has { inner, .. } => walk(inner, oldest),
            }
        }
        if let Some(code) = self
            .filters
            .iter()
            .find_map(|f| walk(f, &reaches_the_oldest))
        {
            return Some(code);
        }
        self.sort
            .iter()
            .find(|k| {
                matches!(
                    k.kind,
                    SortKind::LastUpdated | SortKind::Range | SortKind::Value
                )
            })
            .map(|k| format!("_sort={}", k.code))
    }

    /// Every resource type the search reads besides its own: the targets of its chains and the
    /// sources of its `_has` filters, at any depth. Matching on them is reading them (a chain on
    /// `subject:Patient.name` tells whether a patient has that name), so each needs the scopes a
    /// search of that type needs.
    pub fn joined_types(&self) -> Vec<&str> {
        fn walk<'a>(f: &'a Filter, out: &mut Vec<&'a str>) {
            match f {
                Filter::Chain { targets, inner, .. } => {
                    out.extend(targets.iter().map(String::as_str));
                    walk(inner, out);
                }
                Filter::Has { source, inner, .. } => {
                    out.push(source.as_str());
                    walk(inner, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for f in &self.filters {
            walk(f, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Why a search was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSearch(pub String);

fn bad(msg: impl Into<String>) -> BadSearch {
    BadSearch(msg.into())
}

/// Split an OR-list on commas not escaped with `\`, unescaping `\,` (other escapes stay for the
/// token and composite parsers).
pub fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => {
                    if let Some(last) = out.last_mut() {
                        last.push(',')
                    }
                }
                Some(n) => {
                    if let Some(last) = out.last_mut() {
                        last.push('\\');
                        last.push(n);
                    }
                }
                None => {}
            },
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c)
                }
            }
        }
    }
    out
}

/// Parse a search on `resource_type`. With `strict`, unknown parameters are an error instead of
/// being ignored.
pub fn parse(
    resource_type: ResourceType,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<SearchQuery, BadSearch> {
    let mut q = SearchQuery {
        resource_type,
        filters: vec![],
        sort: vec![],
        count: DEFAULT_COUNT,
        includes: vec![],
        revincludes: vec![],
        summary: Summary::None,
        elements: None,
        total: Total::Accurate,
        cursor: None,
        kept: vec![],
        ignored: vec![],
        compartment: None,
    };
    for (name, value) in pairs {
        // Every name and value here may reach SQL (ids, reference targets, URLs are bound as
        // text), and PostgreSQL text holds no NUL: refuse it here, for every search, conditional
        // create, update, delete and conditional reference alike.
        if name.contains('\0') || value.contains('\0') {
            return Err(bad(format!(
                "search parameter '{}' holds a NUL character",
                printable(name)
            )));
        }
        let keep = match name.as_str() {
            "_count" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad("_count must be a whole number"))?;
                q.count = n.min(MAX_COUNT);
                if n == 0 {
                    q.summary = Summary::Count;
                }
                true
            }
            "_page" => {
                q.cursor = Some(value.clone());
                false
            }
            "_format" | "_pretty" => false,
            "_sort" => {
                q.sort = parse_sort(resource_type, value)?;
                if q.sort.is_empty() {
                    if strict {
                        return Err(bad("_sort names no sort key"));
                    }
                    q.ignored.push("_sort (empty)".into());
                }
                !q.sort.is_empty()
            }
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let include = parse_include(value, name.ends_with(":iterate"))?;
                if name.starts_with("_include") {
                    q.includes.push(include);
                } else {
                    q.revincludes.push(include);
                }
                true
            }
            "_summary" => {
                q.summary = match value.as_str() {
                    "true" => Summary::True,
                    "count" => Summary::Count,
                    "data" => Summary::Data,
                    "text" => Summary::Text,
                    "false" => Summary::None,
                    _ => return Err(bad("_summary must be true, false, count, data or text")),
                };
                true
            }
            "_elements" => {
                q.elements = Some(
                    value
                        .split(',')
                        .map(|e| e.trim().to_string())
                        .filter(|e| !e.is_empty())
                        .collect(),
                );
                true
            }
            "_total" => {
                q.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => return Err(bad("_total must be none, estimate or accurate")),
                };
                true
            }
            _ => match parse_filter(resource_type.as_str(), name, value)? {
                Some(f) => {
                    q.filters.push(f);
                    true
                }
                None if strict => {
                    return Err(bad(format!(
                        "unknown or unsupported search parameter '{}' for {resource_type}",
                        printable(name)
                    )))
                }
                None => {
                    q.ignored.push(printable(name));
                    false
                }
            },
        };
        if keep {
            q.kept.push((name.clone(), value.clone()));
        }
    }
    Ok(q)
}

fn parse_sort(resource_type: ResourceType, value: &str) -> Result<Vec<SortKey>, BadSearch> {
    let mut keys = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (code, descending) = match part.strip_prefix('-') {
            Some(c) => (c, true),
            None => (part, false),
        };
        let kind = match code {
            "_id" => SortKind::Id,
            "_lastUpdated" => SortKind::LastUpdated,
            _ => match params::lookup(resource_type.as_str(), code).map(|p| p.kind) {
                Some(Kind::Date | Kind::Number | Kind::Quantity) => SortKind::Range,
                Some(Kind::String | Kind::Token | Kind::Uri | Kind::Reference) => SortKind::Value,
                _ => {
                    return Err(bad(format!(
                        "cannot sort {resource_type} by '{}'",
                        printable(code)
                    )))
                }
            },
        };
        keys.push(SortKey {
            code: code.to_string(),
            descending,
            kind,
        });
    }
    Ok(keys)
}

/// The reference parameter `code` of `source`, or a 400 naming it.
fn reference_param(source: ResourceType, code: &str) -> Result<&'static SearchParam, BadSearch> {
    params::lookup(source.as_str(), code)
        .filter(|p| p.kind == Kind::Reference)
        .ok_or_else(|| {
            bad(format!(
                "{source} has no reference search parameter '{}'",
                printable(code)
            ))
        })
}

fn parse_include(value: &str, iterate: bool) -> Result<Include, BadSearch> {
    let mut parts = value.split(':');
    let source = parts
        .next()
        .and_then(ResourceType::parse)
        .ok_or_else(|| bad("_include and _revinclude take Type:parameter[:Target]"))?;
    let code = match parts.next() {
        Some("*") => None,
        Some(code) => Some(reference_param(source, code)?.code.clone()),
        None => return Err(bad("_include and _revinclude take Type:parameter[:Target]")),
    };
    let target = match parts.next() {
        Some(t) => Some(
            ResourceType::parse(t)
                .ok_or_else(|| bad(format!("'{}' is not a resource type", printable(t))))?
                .to_string(),
        ),
        None => None,
    };
    Ok(Include {
        source,
        code,
        target,
        iterate,
    })
}

/// One parameter (name with modifiers or chain, and its value) as a filter; `None` when the
/// parameter is unknown for the type.
fn parse_filter(resource_type: &str, name: &str, value: &str) -> Result<Option<Filter>, BadSearch> {
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(resource_type, rest, value).map(Some);
    }
    if let Some((head, tail)) = name.split_once('.') {
        return parse_chain(resource_type, head, tail, value);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad(":missing takes true or false")),
        };
        if code != "_id" && code != "_lastUpdated" {
            let known = params::lookup(resource_type, code).filter(|p| index::supported(p));
            if known.is_none() {
                return Ok(None);
            }
        }
        return Ok(Some(Filter::Missing {
            code: code.to_string(),
            missing,
        }));
    }
    match (code, modifier) {
        ("_id", None) => return Ok(Some(Filter::Id(split_values(value)))),
        ("_lastUpdated", None) => return Ok(Some(Filter::LastUpdated(split_values(value)))),
        ("_id" | "_lastUpdated", Some(m)) => {
            return Err(bad(format!(
                "modifier ':{}' is not supported on {code}",
                printable(m)
            )))
        }
        _ => {}
    }
    let Some(param) = params::lookup(resource_type, code).filter(|p| index::supported(p)) else {
        return Ok(None);
    };
    if let (Kind::Token, Some(m @ ("in" | "not-in" | "below" | "above"))) = (param.kind, modifier) {
        // A set of codes from the shipped terminology, searched as an OR-list of `system|code`
        // tokens (each blind-indexed as any other); `:not-in` is `:not` of that list.
        return Ok(Some(Filter::Param {
            param,
            modifier: if m == "not-in" {
                Modifier::Not
            } else {
                Modifier::None
            },
            values: terminology_values(&param.code, m, value)?,
        }));
    }
    let modifier = parse_modifier(param, modifier)?;
    let values = split_values(value);
    if values.iter().any(String::is_empty) {
        return Err(bad(format!(
            "parameter '{}' has an empty value",
            printable(name)
        )));
    }
    Ok(Some(Filter::Param {
        param,
        modifier,
        values,
    }))
}

/// The most codes a terminology modifier (`:in`, `:not-in`, `:below`, `:above`) stands for; a
/// larger set is refused rather than sent to the database as that many index lookups.
pub const MAX_EXPANSION: usize = 1000;

/// The `system|code` tokens a terminology modifier on token parameter `code` stands for: the
/// members of the value sets named (`:in`, `:not-in`), or the codes at and below (`:below`) or
/// above (`:above`) a `system|code` of a shipped hierarchy. Refused, saying why, for a value set
/// that does not ship or cannot be enumerated, a system without a shipped hierarchy, or a set
/// larger than [`MAX_EXPANSION`].
fn terminology_values(code: &str, modifier: &str, value: &str) -> Result<Vec<String>, BadSearch> {
    use crate::fhir::terminology;
    // The token grammar's escapes, so that a code holding `|` or `\` stays one code.
    let token = |system: &str, c: &str| {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('|', "\\|");
        format!("{}|{}", esc(system), esc(c))
    };
    let mut out: Vec<String> = Vec::new();
    for v in split_values(value) {
        match modifier {
            "in" | "not-in" => {
                let vs = terminology::value_set(&v).ok_or_else(|| {
                    bad(format!(
                        "'{code}:{modifier}' names a value set this server does not have (it \
                         knows the value sets that ship with R4)"
                    ))
                })?;
                let expansion = vs.expansion().ok_or_else(|| {
                    bad(format!(
                        "'{code}:{modifier}': the value set {} cannot be enumerated here (it \
                         draws on a code system that does not ship, such as SNOMED CT or LOINC, \
                         or on a filter that cannot be computed)",
                        vs.url()
                    ))
                })?;
                out.extend(expansion.iter().map(|c| token(c.system, c.code)));
            }
            _ => {
                let Some((system, c)) = v
                    .split_once('|')
                    .filter(|(s, c)| !s.is_empty() && !c.is_empty())
                else {
                    return Err(bad(format!(
                        "'{code}:{modifier}' takes system|code (a code of a code system whose \
                         hierarchy ships with R4)"
                    )));
                };
                let cs = terminology::code_system(system)
                    .filter(|cs| cs.is_hierarchical())
                    .ok_or_else(|| {
                        bad(if terminology::is_external(system) {
                            format!(
                                "'{code}:{modifier}': the code system is a large external one \
                                 (SNOMED CT, LOINC, RxNorm, ...) whose hierarchy is out of scope"
                            )
                        } else {
                            format!(
                                "'{code}:{modifier}': the code system is not one whose hierarchy \
                                 ships with R4"
                            )
                        })
                    })?;
                let Some(concept) = cs.lookup(c) else {
                    return Err(bad(format!(
                        "'{code}:{modifier}': '{}' is not a code of {}",
                        printable(c),
                        cs.url()
                    )));
                };
                let related = if modifier == "below" {
                    cs.descendants(concept.code)
                } else {
                    cs.ancestors(concept.code)
                };
                out.push(token(cs.url(), concept.code));
                out.extend(related.into_iter().map(|r| token(cs.url(), r)));
            }
        }
        if out.len() > MAX_EXPANSION {
            return Err(bad(format!(
                "'{code}:{modifier}' stands for more than {MAX_EXPANSION} codes; narrow it"
            )));
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_modifier(param: &SearchParam, modifier: Option<&str>) -> Result<Modifier, BadSearch> {
    let Some(m) = modifier else {
        return Ok(Modifier::None);
    };
    let ok = match (param.kind, m) {
        (Kind::String, "exact") => Modifier::Exact,
        (Kind::String, "contains") => {
            return Err(bad(format!(
                "':contains' is not supported on '{}': string values are encrypted and indexed \
                 only by their leading characters (use the default starts-with search or :exact)",
                param.code
            )))
        }
        (Kind::Token, "not") => Modifier::Not,
        (Kind::Token, "text") => Modifier::Text,
        (Kind::Token, "of-type") if param.paths.iter().any(|p| p.datatype == "Identifier") => {
            Modifier::OfType
        }
        (Kind::Uri, "below") => Modifier::Below,
        (Kind::Uri, "above") => Modifier::Above,
        (Kind::Reference, t) if ResourceType::parse(t).is_some() => {
            if !param.targets.is_empty() && !param.targets.iter().any(|x| x == t) {
                return Err(bad(format!("'{}' cannot refer to a {t}", param.code)));
            }
            Modifier::Type(t.to_string())
        }
        _ => {
            return Err(bad(format!(
                "modifier ':{}' is not supported on the {} parameter '{}'",
                printable(m),
                param.kind.as_str(),
                param.code
            )))
        }
    };
    Ok(ok)
}

fn parse_chain(
    resource_type: &str,
    head: &str,
    tail: &str,
    value: &str,
) -> Result<Option<Filter>, BadSearch> {
    let (code, target) = match head.split_once(':') {
        Some((c, t)) => (c, Some(t)),
        None => (head, None),
    };
    let Some(param) = params::lookup(resource_type, code).filter(|p| p.kind == Kind::Reference)
    else {
        return Ok(None);
    };
    let targets: Vec<String> = match target {
        Some(t) => {
            if ResourceType::parse(t).is_none()
                || (!param.targets.is_empty() && !param.targets.iter().any(|x| x == t))
            {
                return Err(bad(format!("'{code}' cannot refer to a {}", printable(t))));
            }
            vec![t.to_string()]
        }
        None => param.targets.clone(),
    };
    let inner_code = tail.split(['.', ':']).next().unwrap_or(tail);
    let mut inner = None;
    let mut valid_targets = Vec::new();
    for t in &targets {
        let known = inner_code == "_id"
            || inner_code == "_lastUpdated"
            || params::lookup(t, inner_code).is_some();
        if !known {
            continue;
        }
        if let Some(f) = parse_filter(t, tail, value)? {
            inner.get_or_insert(f);
            valid_targets.push(t.clone());
        }
    }
    let Some(inner) = inner else {
        return Err(bad(format!(
            "no target of '{code}' has a search parameter '{}'",
            printable(inner_code)
        )));
    };
    Ok(Some(Filter::Chain {
        code: param.code.clone(),
        targets: valid_targets,
        inner: Box::new(inner),
    }))
}

fn parse_has(resource_type: &str, rest: &str, value: &str) -> Result<Filter, BadSearch> {
    let shape = || bad("_has takes _has:Type:reference:parameter=value");
    let mut parts = rest.splitn(3, ':');
    let source = parts
        .next()
        .and_then(ResourceType::parse)
        .ok_or_else(shape)?;
    let code = parts.next().ok_or_else(shape)?;
    let inner_name = parts.next().ok_or_else(shape)?;
    let param = reference_param(source, code)?;
    if !param.targets.is_empty() && !param.targets.iter().any(|t| t == resource_type) {
        return Err(bad(format!(
            "{source}.{code} cannot refer to a {resource_type}"
        )));
    }
    let inner = parse_filter(source.as_str(), inner_name, value)?.ok_or_else(|| {
        bad(format!(
            "{source} has no search parameter '{}'",
            printable(inner_name)
        ))
    })?;
    Ok(Filter::Has {
        source,
        code: param.code.clone(),
        inner: Box::new(inner),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    fn obs(q: &str) -> Result<SearchQuery, BadSearch> {
        parse(
            ResourceType::parse("Observation").unwrap(),
            &pairs(q),
            false,
        )
    }

    fn token_values(q: &str) -> (Modifier, Vec<String>) {
        match obs(q).unwrap().filters.into_iter().next() {
            Some(Filter::Param {
                modifier, values, ..
            }) => (modifier, values),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn terminology_modifiers_become_lists_of_codes() {
        let status = "http://hl7.org/fhir/observation-status";
        let (m, values) = token_values("status:in=http://hl7.org/fhir/ValueSet/observation-status");
        assert_eq!(m, Modifier::None);
        assert!(values.contains(&format!("{status}|final")), "{values:?}");
        assert!(values.contains(&format!("{status}|amended")) && values.len() == 8);
        let (m, not_in) =
            token_values("status:not-in=http://hl7.org/fhir/ValueSet/observation-status");
        assert_eq!((m, not_in), (Modifier::Not, values));
        // `amended` is below nothing; `corrected` is below `amended`.
        let (_, below) = token_values(&format!("status:below={status}|amended"));
        assert!(below.contains(&format!("{status}|corrected")), "{below:?}");
        assert!(!below.contains(&format!("{status}|final")));
        let (_, above) = token_values(&format!("status:above={status}|corrected"));
        assert!(above.contains(&format!("{status}|amended")), "{above:?}");
        for (q, says) in [
            ("code:in=http://example.org/ValueSet/nope", "does not have"),
            (
                "code:in=http://hl7.org/fhir/ValueSet/observation-codes",
                "cannot be enumerated",
            ),
            ("code:below=http://loinc.org|1234-5", "out of scope"),
            ("code:below=1234-5", "system|code"),
            (
                "status:below=http://hl7.org/fhir/observation-status|nope",
                "not a code",
            ),
        ] {
            let e = obs(q).unwrap_err();
            assert!(e.0.contains(says), "{q}: {}", e.0);
        }
    }

    #[test]
    fn or_lists_split_on_unescaped_commas() {
        assert_eq!(split_values("a,b\\,c"), vec!["a", "b,c"]);
        assert_eq!(split_values("x|y"), vec!["x|y"]);
    }

    #[test]
    fn chains_and_reverse_chains_nest() {
        let q = obs("encounter:Encounter.subject:Patient.family=X").unwrap();
        let Filter::Chain {
            code,
            targets,
            inner,
        } = &q.filters[0]
        else {
            panic!("a chain")
        };
        assert_eq!(
            (code.as_str(), targets.as_slice()),
            ("encounter", &["Encounter".to_string()][..])
        );
        assert!(matches!(**inner, Filter::Chain { .. }));
        let p = parse(
            ResourceType::parse("Patient").unwrap(),
            &pairs("_has:Observation:patient:_has:Provenance:target:agent=Practitioner/1"),
            false,
        )
        .unwrap();
        let Filter::Has { inner, .. } = &p.filters[0] else {
            panic!("_has")
        };
        assert!(matches!(**inner, Filter::Has { .. }));
    }

    #[test]
    fn unknown_parameters_are_ignored_or_refused() {
        let q = obs("foo=1&code=x").unwrap();
        assert_eq!(q.ignored, vec!["foo"]);
        assert!(parse(
            ResourceType::parse("Observation").unwrap(),
            &pairs("foo=1"),
            true
        )
        .is_err());
        assert!(obs("code:contains=x").is_err(), "modifier not for tokens");
        assert!(parse(
            ResourceType::parse("Patient").unwrap(),
            &pairs("name:contains=x"),
            false
        )
        .unwrap_err()
        .0
        .contains("encrypted"));
        assert!(obs("_sort=foo").is_err() && obs("_count=x").is_err());
        assert_eq!(obs("_count=5000").unwrap().count, MAX_COUNT);
        assert_eq!(
            obs("_sort=-date,_id").unwrap().sort[0].kind,
            SortKind::Range
        );
    }
}
