//! The terminology that ships with R4 (4.0.1) and the bindings of every element: the one place that
//! knows which codes a value set holds, how a code system's concepts nest, and which value set an
//! element is bound to. `shared/fhir-r4/generate.py` compiles the tables from the official
//! CodeSystem and ValueSet resources (its docstring describes `terminology.json`); they are embedded
//! at build time and parsed once, on first use.
//!
//! - [`value_set`] (`url` or `url|version`) → [`ValueSet`]: its [`ValueSet::expansion`], computed at
//!   generation time from `compose` (concept lists, whole systems, `is-a` / `descendent-of` /
//!   `is-not-a` / `in` / `regex` / `=` filters on a shipped hierarchy, included value sets,
//!   excludes), and [`ValueSet::contains`] in O(1). A value set that draws on a system that does not
//!   ship (SNOMED CT, LOINC, UCUM, BCP-47, ...) or on a filter we cannot compute has no expansion, and
//!   every membership question about it is [`Membership::Unknown`]: it never refuses anything.
//!   Expansions keep abstract (`notSelectable`) and deprecated concepts, so they may be a superset
//!   of the ones the spec publishes, never a subset.
//! - [`code_system`] → [`CodeSystem`]: [`CodeSystem::lookup`] (display, definition),
//!   [`CodeSystem::descendants`] / [`CodeSystem::ancestors`] over the hierarchy (nested concepts and
//!   the `child` / `parent` / `subsumedBy` properties; it may be a DAG). Codes compare case
//!   sensitively only where the CodeSystem says `caseSensitive: true`.
//! - [`binding`] (`Patient`, `gender`) → [`Binding`]: strength and value set of an element of type
//!   code, Coding or CodeableConcept, keyed like [`super::schema`] (`Observation.component` / `code`,
//!   `Observation` / `valueCodeableConcept`).
//! - [`check_binding`]: what the validator reports for one bound value (see its doc for the rules).
//! - [`is_external`]: large external terminologies R4 refers to but does not ship (out of scope).

use super::printable;
use super::validate::{Depth, IssueType, Severity};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{LazyLock, OnceLock};

const TERMINOLOGY_JSON: &str = include_str!("../../fhir-r4/terminology.json");

/// Fixed tables of short keys: the schema tables' FNV-1a hasher.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<super::schema::Fnv>>;

/// Large terminologies R4 binds to but does not ship; codes from them are never judged here.
const EXTERNAL: &[&str] = &[
    "http://snomed.info/sct",
    "http://loinc.org",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://unitsofmeasure.org",
    "urn:ietf:bcp:13",
    "urn:ietf:bcp:47",
    "urn:iso:std:iso:3166",
    "urn:iso:std:iso:3166:-2",
    "urn:iso:std:iso:4217",
    "urn:iso:std:iso:11073:10101",
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-9-cm",
    "http://hl7.org/fhir/sid/cvx",
    "http://hl7.org/fhir/sid/ndc",
    "http://www.ama-assn.org/go/cpt",
    "http://nucc.org/provider-taxonomy",
    "http://unstats.un.org/unsd/methods/m49/m49.htm",
    "http://www.whocc.no/atc",
    "http://www.genenames.org",
    "http://www.ensembl.org",
    "http://www.ncbi.nlm.nih.gov/nuccore",
    "http://www.ncbi.nlm.nih.gov/clinvar",
    "http://www.ncbi.nlm.nih.gov/projects/SNP",
    "http://www.sequenceontology.org",
    "http://varnomen.hgvs.org",
    "http://cancer.sanger.ac.uk/cancergenome/projects/cosmic",
    "http://www.ebi.ac.uk/ipd/imgt/hla",
    "https://www.iana.org/time-zones",
    "urn:ietf:rfc:3986",
];

/// A large external terminology (SNOMED CT, LOINC, RxNorm, UCUM, BCP-13/47, ISO 3166/4217, ICD,
/// CPT, ...) that R4 refers to but does not ship: out of scope here, "unknown" rather than "wrong".
pub fn is_external(system: &str) -> bool {
    EXTERNAL.contains(&system.trim_end_matches('/'))
}

/// One member of an expansion; `version` is the code system's version where it ships, else empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concept {
    pub system: &'static str,
    pub version: &'static str,
    pub code: &'static str,
    /// Empty when neither the value set nor a shipped code system gives one.
    pub display: &'static str,
}

/// A concept of a shipped code system, as `$lookup` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConceptDef {
    pub code: &'static str,
    pub display: &'static str,
    /// Empty when the CodeSystem gives none.
    pub definition: &'static str,
}

/// Whether a code is a member of a value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    In,
    NotIn,
    /// The value set cannot be enumerated here, or the code's system is not one it draws from.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    Required,
    Extensible,
    Preferred,
    Example,
}

impl Strength {
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Required => "required",
            Strength::Extensible => "extensible",
            Strength::Preferred => "preferred",
            Strength::Example => "example",
        }
    }
}

/// The datatype of a bound element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundType {
    Code,
    Coding,
    CodeableConcept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub strength: Strength,
    /// The value set's canonical url, without version.
    pub value_set: &'static str,
    pub bound_type: BoundType,
    /// The shipped value set, resolved once (an index into the tables).
    resolved: Option<usize>,
}

impl Binding {
    /// A binding to a shipped value set (a profile's own binding, say).
    pub fn to(strength: Strength, value_set: &'static ValueSet, bound_type: BoundType) -> Binding {
        Binding {
            strength,
            value_set: value_set.url(),
            bound_type,
            resolved: TABLES.value_set_by_url.get(value_set.url()).copied(),
        }
    }

    /// The bound value set, if it ships.
    pub fn value_set(&self) -> Option<&'static ValueSet> {
        self.resolved.and_then(|i| TABLES.value_sets.get(i))
    }
}

#[derive(Debug)]
struct ConceptRow {
    code: &'static str,
    display: &'static str,
    definition: &'static str,
    parents: Vec<u32>,
}

#[derive(Debug)]
pub struct CodeSystem {
    url: &'static str,
    version: &'static str,
    name: &'static str,
    content: &'static str,
    case_sensitive: bool,
    concepts: Vec<ConceptRow>,
    children: Vec<Vec<u32>>,
    by_code: FastMap<&'static str, u32>,
    /// Lower-cased codes, for a system that is not case sensitive.
    by_lower: FastMap<Box<str>, u32>,
}

impl CodeSystem {
    pub fn url(&self) -> &'static str {
        self.url
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The CodeSystem's `content`: `complete` for every system whose codes are all here;
    /// `not-present`, `example`, `fragment` or `supplement` otherwise.
    pub fn content(&self) -> &'static str {
        self.content
    }

    pub fn is_complete(&self) -> bool {
        self.content == "complete"
    }

    pub fn is_case_sensitive(&self) -> bool {
        self.case_sensitive
    }

    /// Some concept has a parent.
    pub fn is_hierarchical(&self) -> bool {
        self.concepts.iter().any(|c| !c.parents.is_empty())
    }

    /// Every concept, in the CodeSystem's order (parents before their nested children).
    pub fn concepts(&self) -> impl Iterator<Item = ConceptDef> + '_ {
        self.concepts.iter().map(ConceptRow::def)
    }

    fn index(&self, code: &str) -> Option<u32> {
        if let Some(&i) = self.by_code.get(code) {
            return Some(i);
        }
        if self.case_sensitive {
            return None;
        }
        lowered(code, |low| self.by_lower.get(low).copied())
    }

    fn row(&self, i: u32) -> Option<&ConceptRow> {
        self.concepts.get(i as usize)
    }

    /// The concept with this code (compared as the system's case sensitivity says).
    pub fn lookup(&self, code: &str) -> Option<ConceptDef> {
        self.index(code)
            .and_then(|i| self.row(i))
            .map(ConceptRow::def)
    }

    /// The codes below `code` (not itself), nearest first; empty for an unknown code.
    pub fn descendants(&self, code: &str) -> Vec<&'static str> {
        self.closure(code, |i| self.children.get(i as usize))
    }

    /// The codes above `code` (not itself), nearest first; empty for an unknown code.
    pub fn ancestors(&self, code: &str) -> Vec<&'static str> {
        self.closure(code, |i| self.row(i).map(|r| &r.parents))
    }

    /// The codes directly above `code` (its parents); empty for a top or unknown code.
    pub fn parents(&self, code: &str) -> Vec<&'static str> {
        self.index(code)
            .and_then(|i| self.row(i))
            .map(|r| {
                r.parents
                    .iter()
                    .filter_map(|&p| self.row(p))
                    .map(|p| p.code)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The codes directly below `code` (its children); empty for a leaf or unknown code.
    pub fn children(&self, code: &str) -> Vec<&'static str> {
        self.index(code)
            .and_then(|i| self.children.get(i as usize))
            .map(|c| {
                c.iter()
                    .filter_map(|&j| self.row(j))
                    .map(|r| r.code)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `code` is `ancestor` or below it (`ancestor` subsumes `code`); false if either is unknown.
    pub fn subsumes(&self, ancestor: &str, code: &str) -> bool {
        let (Some(top), Some(start)) = (self.index(ancestor), self.index(code)) else {
            return false;
        };
        top == start
            || self
                .ancestors(code)
                .iter()
                .any(|c| self.by_code.get(c) == Some(&top))
    }

    fn closure<'s>(
        &'s self,
        code: &str,
        next: impl Fn(u32) -> Option<&'s Vec<u32>>,
    ) -> Vec<&'static str> {
        let Some(start) = self.index(code) else {
            return Vec::new();
        };
        let mut seen = vec![false; self.concepts.len()];
        let mut queue = std::collections::VecDeque::from([start]);
        let mut out = Vec::new();
        if let Some(s) = seen.get_mut(start as usize) {
            *s = true;
        }
        while let Some(i) = queue.pop_front() {
            for &j in next(i).map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(s) = seen.get_mut(j as usize) {
                    if !*s {
                        *s = true;
                        queue.push_back(j);
                        if let Some(r) = self.row(j) {
                            out.push(r.code);
                        }
                    }
                }
            }
        }
        out
    }
}

impl ConceptRow {
    fn def(&self) -> ConceptDef {
        ConceptDef {
            code: self.code,
            display: self.display,
            definition: self.definition,
        }
    }
}

/// The members of one system in an expansion, indexed on first use.
#[derive(Debug)]
struct Group {
    system: &'static str,
    /// The shipped code system (for its case sensitivity), if any.
    code_system: Option<usize>,
    /// Indexes into [`ValueSet::expansion`].
    range: std::ops::Range<usize>,
}

#[derive(Debug)]
pub struct ValueSet {
    url: &'static str,
    version: &'static str,
    name: &'static str,
    title: &'static str,
    expansion: Option<Vec<Concept>>,
    groups: Vec<Group>,
    /// Built on first use, see [`ValueSet::members`].
    index: OnceLock<Vec<FastMap<Box<str>, usize>>>,
}

impl ValueSet {
    pub fn url(&self) -> &'static str {
        self.url
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn title(&self) -> &'static str {
        self.title
    }

    /// Every member, grouped by system in the value set's order; `None` when the value set cannot
    /// be enumerated from what ships.
    pub fn expansion(&self) -> Option<&[Concept]> {
        self.expansion.as_deref()
    }

    /// The systems the expansion draws from (empty when it is not enumerable).
    pub fn systems(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.groups.iter().map(|g| g.system)
    }

    fn case_sensitive(&self, group: &Group) -> bool {
        group
            .code_system
            .and_then(|i| TABLES.code_systems.get(i))
            .is_none_or(|cs| cs.case_sensitive)
    }

    /// Per group, code → index into the expansion. A case-insensitive group holds each code as
    /// given and lower-cased, so that an exact code is found without allocating.
    fn members(&self) -> &[FastMap<Box<str>, usize>] {
        self.index.get_or_init(|| {
            let Some(expansion) = &self.expansion else {
                return Vec::new();
            };
            self.groups
                .iter()
                .map(|group| {
                    let sensitive = self.case_sensitive(group);
                    let mut map = FastMap::default();
                    for i in group.range.clone() {
                        if let Some(c) = expansion.get(i) {
                            map.entry(Box::from(c.code)).or_insert(i);
                            if !sensitive {
                                map.entry(c.code.to_lowercase().into_boxed_str())
                                    .or_insert(i);
                            }
                        }
                    }
                    map
                })
                .collect()
        })
    }

    /// The member of group `g` with this code, if any.
    fn find(&self, g: usize, code: &str) -> Option<&Concept> {
        let group = self.groups.get(g)?;
        let members = self.members().get(g)?;
        let hit = match members.get(code) {
            Some(i) => *i,
            None if !self.case_sensitive(group) => *lowered(code, |low| members.get(low))?,
            None => return None,
        };
        self.expansion.as_ref()?.get(hit)
    }

    /// Is `code` (of `system`) in this value set? With no system (a `code` element) any system of
    /// the value set may hold it. A system the value set does not draw from is `Unknown`: the
    /// conservative answer, since only systems we can enumerate are judged.
    pub fn contains(&self, system: Option<&str>, code: &str) -> Membership {
        if self.expansion.is_none() {
            return Membership::Unknown;
        }
        let mut judged = false;
        for (g, group) in self.groups.iter().enumerate() {
            if system.is_some_and(|s| s != group.system) {
                continue;
            }
            judged = true;
            if self.find(g, code).is_some() {
                return Membership::In;
            }
        }
        // With no system every group was judged (an empty value set holds nothing).
        if judged || system.is_none() {
            Membership::NotIn
        } else {
            Membership::Unknown
        }
    }

    /// The member with this system and code, as it is in the expansion (its display).
    pub fn concept(&self, system: &str, code: &str) -> Option<&Concept> {
        let g = self.groups.iter().position(|g| g.system == system)?;
        self.find(g, code)
    }
}

/// Look `code` up lower-cased: in a stack buffer for the short ASCII codes terminologies use (no
/// allocation on the validator's path), through `to_lowercase` otherwise.
fn lowered<T>(code: &str, find: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    let mut buf = [0u8; 64];
    match buf.get_mut(..code.len()) {
        Some(dst) if code.is_ascii() => {
            dst.copy_from_slice(code.as_bytes());
            dst.make_ascii_lowercase();
            find(std::str::from_utf8(dst).ok()?)
        }
        _ => find(&code.to_lowercase()),
    }
}

struct Tables {
    code_systems: Vec<CodeSystem>,
    code_system_by_url: FastMap<&'static str, usize>,
    value_sets: Vec<ValueSet>,
    value_set_by_url: FastMap<&'static str, usize>,
    /// Type path → JSON property → binding.
    bindings: FastMap<&'static str, FastMap<&'static str, Binding>>,
}

/// The code systems, value sets and bindings, parsed once. The embedded file is generated and
/// tested; were it malformed, every table is empty (every binding unknown, nothing refused) rather
/// than the process panicking.
static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    parse().unwrap_or_else(|| Tables {
        code_systems: Vec::new(),
        code_system_by_url: FastMap::default(),
        value_sets: Vec::new(),
        value_set_by_url: FastMap::default(),
        bindings: FastMap::default(),
    })
});

#[derive(Deserialize)]
struct RawFile<'a> {
    #[serde(rename = "codeSystems", borrow)]
    code_systems: Vec<RawCodeSystem<'a>>,
    #[serde(rename = "valueSets")]
    value_sets: Vec<RawValueSet>,
    bindings: HashMap<String, HashMap<String, (String, String, String)>>,
}

#[derive(Deserialize)]
struct RawCodeSystem<'a>(
    String,
    String,
    String,
    String,
    u8,
    #[serde(borrow)] Vec<RawConcept<'a>>,
);

/// Codes, displays and definitions are most of the file: borrowed from it where they have no
/// JSON escapes, copied (once) where they do.
#[derive(Deserialize)]
struct RawConcept<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
    #[serde(default, borrow)]
    display: Cow<'a, str>,
    #[serde(default, borrow)]
    definition: Cow<'a, str>,
    #[serde(default)]
    parents: Vec<u32>,
}

#[derive(Deserialize)]
struct RawValueSet(String, String, String, String, Option<Vec<RawGroup>>);

/// One system of an expansion: url, version, indexes of shipped concepts, listed [code, display?].
#[derive(Deserialize)]
struct RawGroup(String, String, Vec<u32>, Vec<Vec<String>>);

/// The tables live as long as the process: their strings are leaked once, so that every answer
/// can hand out `&'static str` without copying.
fn leak(s: impl Into<Cow<'static, str>>) -> &'static str {
    match s.into() {
        Cow::Borrowed(s) => s,
        Cow::Owned(s) if s.is_empty() => "",
        Cow::Owned(s) => Box::leak(s.into_boxed_str()),
    }
}

fn parse() -> Option<Tables> {
    let raw: RawFile = serde_json::from_str(TERMINOLOGY_JSON).ok()?;
    let mut code_systems = Vec::with_capacity(raw.code_systems.len());
    let mut code_system_by_url = FastMap::default();
    for RawCodeSystem(url, version, name, content, case_sensitive, concepts) in raw.code_systems {
        let concepts: Vec<ConceptRow> = concepts
            .into_iter()
            .map(|c| ConceptRow {
                code: leak(c.code),
                display: leak(c.display),
                definition: leak(c.definition),
                parents: c.parents,
            })
            .collect();
        let mut children = vec![Vec::new(); concepts.len()];
        let mut by_code = FastMap::default();
        let mut by_lower = FastMap::default();
        let case_sensitive = case_sensitive == 1;
        for (i, c) in concepts.iter().enumerate() {
            let i = u32::try_from(i).ok()?;
            for &p in &c.parents {
                children.get_mut(p as usize)?.push(i);
            }
            by_code.entry(c.code).or_insert(i);
            if !case_sensitive {
                by_lower.entry(c.code.to_lowercase().into()).or_insert(i);
            }
        }
        let url = leak(url);
        code_system_by_url.insert(url, code_systems.len());
        code_systems.push(CodeSystem {
            url,
            version: leak(version),
            name: leak(name),
            content: leak(content),
            case_sensitive,
            concepts,
            children,
            by_code,
            by_lower,
        });
    }
    let mut value_sets = Vec::with_capacity(raw.value_sets.len());
    let mut value_set_by_url = FastMap::default();
    for RawValueSet(url, version, name, title, expansion) in raw.value_sets {
        let mut groups = Vec::new();
        let expansion = match expansion {
            None => None,
            Some(raw_groups) => {
                let mut members = Vec::new();
                for RawGroup(system, version, shipped, listed) in raw_groups {
                    let cs_index = code_system_by_url.get(system.as_str()).copied();
                    let cs = cs_index.and_then(|i| code_systems.get(i));
                    let system = cs.map(|cs| cs.url).unwrap_or_else(|| leak(system));
                    let version = cs.map(|cs| cs.version).unwrap_or_else(|| leak(version));
                    let start = members.len();
                    for i in shipped {
                        let row = cs?.concepts.get(i as usize)?;
                        members.push(Concept {
                            system,
                            version,
                            code: row.code,
                            display: row.display,
                        });
                    }
                    for pair in listed {
                        let mut pair = pair.into_iter();
                        members.push(Concept {
                            system,
                            version,
                            code: leak(pair.next()?),
                            display: leak(pair.next().unwrap_or_default()),
                        });
                    }
                    groups.push(Group {
                        system,
                        code_system: cs_index,
                        range: start..members.len(),
                    });
                }
                Some(members)
            }
        };
        let url = leak(url);
        value_set_by_url.insert(url, value_sets.len());
        value_sets.push(ValueSet {
            url,
            version: leak(version),
            name: leak(name),
            title: leak(title),
            expansion,
            groups,
            index: OnceLock::new(),
        });
    }
    let mut bindings = FastMap::default();
    for (type_name, props) in raw.bindings {
        let table: &mut FastMap<&'static str, Binding> =
            bindings.entry(leak(type_name)).or_default();
        for (prop, (strength, value_set, bound_type)) in props {
            let strength = match strength.as_str() {
                "r" => Strength::Required,
                "e" => Strength::Extensible,
                "p" => Strength::Preferred,
                _ => Strength::Example,
            };
            let bound_type = match bound_type.as_str() {
                "code" => BoundType::Code,
                "Coding" => BoundType::Coding,
                _ => BoundType::CodeableConcept,
            };
            table.insert(
                leak(prop),
                Binding {
                    strength,
                    resolved: value_set_by_url.get(value_set.as_str()).copied(),
                    value_set: leak(value_set),
                    bound_type,
                },
            );
        }
    }
    Some(Tables {
        code_systems,
        code_system_by_url,
        value_sets,
        value_set_by_url,
        bindings,
    })
}

/// A shipped value set by canonical: `url` or `url|version` (the version must match when given).
pub fn value_set(canonical: &str) -> Option<&'static ValueSet> {
    by_canonical(
        canonical,
        &TABLES.value_set_by_url,
        &TABLES.value_sets,
        |vs| vs.version,
    )
}

/// A shipped code system by url (`url|version` accepted as for [`value_set`]).
pub fn code_system(canonical: &str) -> Option<&'static CodeSystem> {
    by_canonical(
        canonical,
        &TABLES.code_system_by_url,
        &TABLES.code_systems,
        |cs| cs.version,
    )
}

fn by_canonical<T>(
    canonical: &str,
    by_url: &FastMap<&'static str, usize>,
    all: &'static [T],
    version_of: impl Fn(&T) -> &str,
) -> Option<&'static T> {
    let (url, version) = match canonical.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (canonical, None),
    };
    let found = by_url.get(url).and_then(|&i| all.get(i))?;
    match version {
        Some(v) if !version_of(found).is_empty() && v != version_of(found) => None,
        _ => Some(found),
    }
}

/// Every shipped value set, in url order.
pub fn value_sets() -> impl Iterator<Item = &'static ValueSet> {
    TABLES.value_sets.iter()
}

/// Every shipped code system, in url order.
pub fn code_systems() -> impl Iterator<Item = &'static CodeSystem> {
    TABLES.code_systems.iter()
}

/// The binding of `property` (a JSON property name, choices expanded: `valueCodeableConcept`) in
/// the type or backbone element `type_path` (`Patient`, `Patient.contact`, `Quantity`).
pub fn binding(type_path: &str, property: &str) -> Option<Binding> {
    TABLES.bindings.get(type_path)?.get(property).copied()
}

/// What [`check_binding`] found for one bound value; the validator adds the element's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: IssueType,
    pub message: String,
}

/// Judge one value (a `code` string, a Coding or a CodeableConcept object; for a repeating
/// element, one item) of an element with this binding. Conservative by design, since an example
/// the HL7 validator accepts must not be refused:
/// - only an enumerable value set judges; a code of a system it does not draw from, a Coding
///   without a system, or a CodeableConcept without codings is never "not in";
/// - a CodeableConcept is not in the value set only when it has codings, none is in it, and every
///   one is from a system the value set draws from;
/// - required: an error (`code-invalid`) at every depth; extensible: a warning, preferred: a note,
///   both only at [`Depth::Report`]; example bindings are not checked. At `Report`, a required
///   binding that cannot be judged is noted as `not-supported` information.
///
/// Messages name the value set and echo only codes and systems (through [`printable`]), never
/// displays or text. Nothing is allocated unless something is reported.
pub fn check_binding(binding: &Binding, value: &Value, depth: Depth) -> Option<Finding> {
    let report = depth == Depth::Report;
    match binding.strength {
        Strength::Example => return None,
        Strength::Required => {}
        Strength::Extensible | Strength::Preferred if report => {}
        _ => return None,
    }
    let vs = binding.value_set();
    let membership = match vs {
        Some(vs) => membership(vs, binding.bound_type, value)?,
        None => Membership::Unknown,
    };
    let strength = binding.strength.as_str();
    let named = || match vs {
        Some(vs) if !vs.name.is_empty() => format!("{} ({})", binding.value_set, vs.name),
        _ => binding.value_set.to_string(),
    };
    match membership {
        Membership::In => None,
        Membership::NotIn => {
            let what = match (binding.bound_type, value) {
                (BoundType::Code, Value::String(code)) => format!("'{}' is not", printable(code)),
                (BoundType::Coding, _) => format!(
                    "the code '{}' of system {} is not",
                    printable(value.get("code").and_then(Value::as_str).unwrap_or("")),
                    printable(value.get("system").and_then(Value::as_str).unwrap_or(""))
                ),
                _ => "none of the codings is".to_string(),
            };
            let (severity, message) = match binding.strength {
                Strength::Required => (Severity::Error, format!("{what} in the required value set {}", named())),
                Strength::Extensible => (
                    Severity::Warning,
                    format!("{what} in the extensible value set {}: use it when a code of it fits", named()),
                ),
                _ => (Severity::Information, format!("{what} in the {strength} value set {}", named())),
            };
            Some(Finding {
                severity,
                code: IssueType::CodeInvalid,
                message,
            })
        }
        Membership::Unknown if report && binding.strength == Strength::Required => Some(Finding {
            severity: Severity::Information,
            code: IssueType::NotSupported,
            message: match vs.and_then(ValueSet::expansion) {
                Some(_) => format!(
                    "the code cannot be checked against the required value set {}: its system is not one the value set draws from (or no system is given)",
                    named()
                ),
                None => format!(
                    "the code cannot be checked against the required value set {}: it draws on terminology that is not shipped here",
                    named()
                ),
            },
        }),
        Membership::Unknown => None,
    }
}

/// Membership of one bound value; `None` when there is nothing to judge (no code at all).
fn membership(vs: &ValueSet, bound_type: BoundType, value: &Value) -> Option<Membership> {
    let coding = |c: &Value| -> Option<Membership> {
        let code = c.get("code")?.as_str()?;
        Some(match c.get("system").and_then(Value::as_str) {
            Some(system) => vs.contains(Some(system), code),
            None => Membership::Unknown,
        })
    };
    match bound_type {
        BoundType::Code => Some(vs.contains(None, value.as_str()?)),
        BoundType::Coding => coding(value),
        BoundType::CodeableConcept => {
            let mut all_not_in = None;
            for c in value.get("coding")?.as_array()? {
                match coding(c) {
                    Some(Membership::In) => return Some(Membership::In),
                    Some(Membership::NotIn) => {
                        all_not_in.get_or_insert(true);
                    }
                    _ => all_not_in = Some(false),
                }
            }
            match all_not_in {
                Some(true) => Some(Membership::NotIn),
                Some(false) => Some(Membership::Unknown),
                None => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validate::{validate_report, validate_resource, Issue};
    use serde_json::json;

    fn errors(v: Value) -> Vec<Issue> {
        validate_resource(&v).err().unwrap_or_default()
    }

    fn error_paths(v: Value) -> Vec<String> {
        errors(v).into_iter().map(|i| i.path).collect()
    }

    #[test]
    fn the_r4_terminology_ships() {
        assert_eq!(code_systems().count(), 1062);
        assert_eq!(value_sets().count(), 1316);
        let enumerable = value_sets().filter(|v| v.expansion().is_some()).count();
        assert!(enumerable > 1100, "{enumerable}");
        let gender = value_set("http://hl7.org/fhir/ValueSet/administrative-gender").unwrap();
        assert_eq!(gender.name(), "AdministrativeGender");
        let codes: Vec<_> = gender.expansion().unwrap().iter().map(|c| c.code).collect();
        assert_eq!(codes, ["male", "female", "other", "unknown"]);
        assert_eq!(
            gender.expansion().unwrap()[0],
            Concept {
                system: "http://hl7.org/fhir/administrative-gender",
                version: "4.0.1",
                code: "male",
                display: "Male",
            }
        );
        assert!(value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1").is_some());
        assert!(value_set("http://hl7.org/fhir/ValueSet/administrative-gender|3.0.2").is_none());
        assert!(value_set("http://example.org/nothing").is_none());
        // SNOMED CT and BCP-13 do not ship: value sets over them are not enumerable.
        for url in [
            "http://hl7.org/fhir/ValueSet/clinical-findings",
            "http://hl7.org/fhir/ValueSet/mimetypes",
        ] {
            let vs = value_set(url).unwrap();
            assert!(vs.expansion().is_none(), "{url}");
            assert_eq!(vs.contains(None, "anything"), Membership::Unknown);
        }
        assert!(is_external("http://snomed.info/sct") && is_external("http://loinc.org"));
        assert!(!is_external("http://hl7.org/fhir/administrative-gender"));
    }

    #[test]
    fn membership_follows_case_sensitivity_and_systems() {
        let gender = value_set("http://hl7.org/fhir/ValueSet/administrative-gender").unwrap();
        let system = "http://hl7.org/fhir/administrative-gender";
        assert_eq!(gender.contains(Some(system), "female"), Membership::In);
        assert_eq!(gender.contains(None, "female"), Membership::In);
        assert_eq!(gender.contains(Some(system), "Female"), Membership::NotIn);
        assert_eq!(gender.contains(None, "robot"), Membership::NotIn);
        assert_eq!(
            gender.contains(Some("http://example.org/g"), "x"),
            Membership::Unknown
        );
        // v2 tables do not declare case sensitivity: compared case-insensitively.
        let v2 = code_system("http://terminology.hl7.org/CodeSystem/v2-0131").unwrap();
        assert!(!v2.is_case_sensitive());
        assert_eq!(v2.lookup("c").map(|c| c.code), Some("C"));
        let vs = value_set("http://terminology.hl7.org/ValueSet/v2-0131").unwrap();
        assert_eq!(vs.contains(Some(v2.url()), "c"), Membership::In);
    }

    #[test]
    fn hierarchies_give_descendants_and_ancestors() {
        let act = code_system("http://terminology.hl7.org/CodeSystem/v3-ActCode").unwrap();
        assert!(act.is_hierarchical() && act.is_complete());
        let def = act.lookup("_ActAccountCode").unwrap();
        assert_eq!(def.display, "ActAccountCode");
        assert!(def.definition.starts_with("An account represents"));
        let below = act.descendants("_ActAccountCode");
        assert!(below.contains(&"ACCTRECEIVABLE") && below.contains(&"PBILLACCT"));
        assert!(!below.contains(&"_ActAccountCode"));
        assert_eq!(act.ancestors("ACCTRECEIVABLE"), ["_ActAccountCode"]);
        assert!(act.subsumes("_ActAccountCode", "ACCTRECEIVABLE"));
        assert!(!act.subsumes("ACCTRECEIVABLE", "_ActAccountCode"));
        // A parent named by the `child` property (not by nesting).
        assert!(act.ancestors("LFEMX").contains(&"COVMX"));
        assert!(act.descendants("nonsense").is_empty());
        // An is-a filter expanded over that hierarchy.
        let account = value_set("http://hl7.org/fhir/ValueSet/account-type").unwrap();
        assert_eq!(
            account.contains(Some(act.url()), "PBILLACCT"),
            Membership::In
        );
        assert_eq!(
            account.contains(Some(act.url()), "COVMX"),
            Membership::NotIn
        );
        let gender = code_system("http://hl7.org/fhir/administrative-gender").unwrap();
        assert!(!gender.is_hierarchical());
    }

    #[test]
    fn bindings_are_keyed_like_the_schema() {
        let b = binding("Patient", "gender").unwrap();
        assert_eq!(b.strength, Strength::Required);
        assert_eq!(
            b.value_set,
            "http://hl7.org/fhir/ValueSet/administrative-gender"
        );
        assert_eq!(b.bound_type, BoundType::Code);
        assert_eq!(
            binding("Quantity", "comparator").unwrap().strength,
            Strength::Required
        );
        assert_eq!(
            binding("Patient.contact", "relationship").map(|b| (b.strength, b.bound_type)),
            Some((Strength::Extensible, BoundType::CodeableConcept))
        );
        assert!(binding("Patient", "birthDate").is_none());
    }

    #[test]
    fn required_bindings_refuse_codes_outside_the_value_set() {
        for bad in ["robot", "mmale", "Female"] {
            let e = errors(json!({"resourceType": "Patient", "gender": bad}));
            assert_eq!(e.len(), 1, "{bad}");
            assert_eq!(e[0].path, "Patient.gender");
            assert_eq!(e[0].code, IssueType::CodeInvalid);
            assert_eq!(
                e[0].message,
                format!("Patient.gender: '{bad}' is not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender (AdministrativeGender)")
            );
        }
        let obs = |extra: Value| {
            let mut o =
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            o
        };
        assert_eq!(
            error_paths(obs(json!({"status": "bogus"}))),
            ["Observation.status"]
        );
        assert_eq!(
            error_paths(obs(
                json!({"valueQuantity": {"value": 1, "comparator": "=<"}})
            )),
            ["Observation.value.ofType(Quantity).comparator"]
        );
        assert_eq!(
            error_paths(obs(json!({"component": [{"code": {"text": "c"}},
                {"code": {"text": "d"}, "valueQuantity": {"value": 1, "comparator": "~"}}]}))),
            ["Observation.component[1].value.ofType(Quantity).comparator"]
        );
        // Repeating code elements are judged item by item.
        let cs = |codes: Value| {
            json!({"resourceType": "CapabilityStatement", "status": "draft", "date": "2020",
                   "kind": "instance", "fhirVersion": "4.0.1", "format": codes,
                   "implementation": {"description": "x"}, "rest": [{"mode": "server"}]})
        };
        assert!(errors(cs(json!(["json", "xml"]))).is_empty());
        // A Coding whose system the value set draws from, with a code it does not hold.
        let coding = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}});
        assert!(errors(coding).is_empty());
        let good = obs(json!({"valueQuantity": {"value": 1, "comparator": "<="},
            "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}]}));
        let findings: Vec<Issue> = validate_report(&good)
            .into_iter()
            .filter(|i| i.code != IssueType::Invariant)
            .collect();
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn codeable_concepts_are_judged_only_on_systems_the_value_set_draws_from() {
        let condition = |coding: Value| {
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/p"},
                   "clinicalStatus": {"coding": coding}})
        };
        let clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical";
        assert!(errors(condition(json!([{"system": clinical, "code": "active"}]))).is_empty());
        let e = errors(condition(json!([{"system": clinical, "code": "dormant"}])));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "Condition.clinicalStatus");
        assert!(
            e[0].message
                .contains("none of the codings is in the required value set"),
            "{e:?}"
        );
        // One good coding is enough; a coding of another system is not judged.
        assert!(
            errors(condition(json!([{"system": clinical, "code": "dormant"},
            {"system": clinical, "code": "active"}])))
            .is_empty()
        );
        assert!(errors(condition(
            json!([{"system": "http://example.org/local", "code": "x"}])
        ))
        .is_empty());
        assert!(errors(condition(json!([{"code": "x"}]))).is_empty());
    }

    #[test]
    fn extensible_and_preferred_bindings_only_report() {
        let patient = json!({"resourceType": "Patient", "maritalStatus": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "ZZZ"}]}});
        assert!(errors(patient.clone()).is_empty());
        // Only the binding's own finding (dom-6, for the missing narrative, is not this test's).
        let report: Vec<Issue> = validate_report(&patient)
            .into_iter()
            .filter(|i| i.code == IssueType::CodeInvalid)
            .collect();
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].severity, Severity::Warning);
        assert_eq!(report[0].path, "Patient.maritalStatus");
        assert!(report[0]
            .message
            .contains("extensible value set http://hl7.org/fhir/ValueSet/marital-status"));
    }

    #[test]
    fn codes_of_terminology_that_does_not_ship_are_never_refused() {
        // Attachment.contentType: required, BCP-13 mime types; Observation.code: LOINC (example).
        let patient = json!({"resourceType": "Patient", "photo": [{"contentType": "image/x-unheard-of"}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "tlh"}]}}]});
        assert!(errors(patient.clone()).is_empty());
        let report = validate_report(&patient);
        assert!(report.iter().all(|i| !i.is_error()), "{report:?}");
        assert!(report
            .iter()
            .any(|i| i.path == "Patient.photo[0].contentType"
                && i.severity == Severity::Information
                && i.code == IssueType::NotSupported));
    }

    #[test]
    fn the_tables_parse_quickly() {
        // Parsed once per process; measured here on fresh parses (the best of three: the first
        // also pages the embedded file in).
        let mut best = std::time::Duration::MAX;
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let tables = parse().unwrap();
            best = best.min(start.elapsed());
            assert_eq!(tables.code_systems.len(), 1062);
            assert_eq!(tables.value_sets.len(), 1316);
        }
        eprintln!(
            "terminology.json: {} bytes, parsed in {best:?}",
            TERMINOLOGY_JSON.len()
        );
    }
}
