//! The terminology that ships with R4 (4.0.1) and the bindings of every element: the one place that
//! knows which codes a value set holds, how a code system's concepts nest, and which value set an
//! element is bound to. `shared/fhir-r4/generate.py` compiles the tables from the official
//! CodeSystem and ValueSet resources (its docstring describes `terminology.json`); they are embedded
//! at build time and parsed once, on first use.
//!
//! - [`value_set`](fn@value_set) (`url` or `url|version`) → [`ValueSet`]: its
//!   [`ValueSet::expansion`], computed at generation time from `compose` (concept lists, whole systems, `is-a` / `descendent-of` /
//!   `is-not-a` / `in` / `regex` / `=` filters on a shipped hierarchy, included value sets,
//!   excludes), and [`ValueSet::contains`] in O(1). A value set that draws on a system that does not
//!   ship (SNOMED CT, LOINC, UCUM, BCP-47, ...) or on a filter we cannot compute has no expansion, and
//!   every membership question about it is [`Membership::Unknown`]: it never refuses anything.
//!   Expansions keep abstract (`notSelectable`) and deprecated concepts, so they may be a superset
//!   of the ones the spec publishes, never a subset.
//! - [`code_system`](fn@code_system) → [`CodeSystem`]: [`CodeSystem::lookup`] (display,
//!   definition), [`CodeSystem::descendants`] / [`CodeSystem::ancestors`] over the hierarchy (nested concepts and
//!   the `child` / `parent` / `subsumedBy` properties; it may be a DAG). Codes compare case
//!   sensitively only where the CodeSystem says `caseSensitive: true`.
//! - [`binding`] (`Patient`, `gender`) → [`Binding`]: strength and value set of an element of type
//!   code, Coding or CodeableConcept, keyed like [`super::schema`] (`Observation.component` / `code`,
//!   `Observation` / `valueCodeableConcept`).
//! - [`check_binding`]: what the validator reports for one bound value (see its doc for the rules).
//! - [`is_external`]: large external terminologies R4 refers to but does not ship (out of scope).

mod bindings;
mod code_system;
mod load;
#[cfg(test)]
mod tests;
mod value_set;

pub use bindings::{check_binding, Binding, BoundType, Finding, Strength};
pub use code_system::CodeSystem;
pub use value_set::ValueSet;

use load::parse;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::LazyLock;

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

/// A shipped value set by canonical: `url` or `url|version` (the version must match when given).
pub fn value_set(canonical: &str) -> Option<&'static ValueSet> {
    by_canonical(
        canonical,
        &TABLES.value_set_by_url,
        &TABLES.value_sets,
        |vs| vs.version,
    )
}

/// A shipped code system by url (`url|version` accepted as for [`value_set`](fn@value_set)).
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
