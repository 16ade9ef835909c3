//! FHIR GraphQL (R4 `graphql.html`): a query over the store, resolved through the same gated
//! reads and searches as REST, so whatever GraphQL hands out a read or search would have handed
//! out, audited the same way (one event per read or search it makes).
//!
//! What a query may ask (`exec.rs` does it):
//! - at the system level (`[base]/$graphql`): `Type(id: "x") { … }` one resource (a read),
//!   `TypeList(param: value, _count: n) { … }` a search (argument names with `-` written with
//!   `_`: `general_practitioner`; a list value repeats the parameter);
//! - at the instance level (`[base]/[Type]/[id]/$graphql`): the resource itself is the root;
//! - on any resource: its elements by their JSON names (backbone elements, primitives, arrays,
//!   choice types as `valueQuantity`, a primitive's extensions as `_birthDate`), `resource`
//!   on a Reference (a read as the caller; `resource(type: Patient)` only if it is a Patient),
//!   `TypeList(_reference: param, …)` the resources of a type whose `param` refers to it;
//! - on a list of elements: `name(use: official)` keeps the elements whose property has that
//!   value, `_count` and `_offset` cut the list;
//! - aliases, fragments and inline fragments (`... on Patient`, checked on resources), variables,
//!   `@skip` and `@include`, `__typename`.
//!
//! Not supported, and refused with a clear error: mutations and subscriptions, `Connection`
//! types, `_include`/`_revinclude`/`_summary`/`_elements`/`_page`/`_total` on lists (paging: a
//! list is its search's first page), the FHIR directives (`@flatten`, `@first`, `@singleton`,
//! `@slice`) and `fhirpath` arguments. There is no schema: an element a resource does not have
//! answers `null`, and a field's type is known from the data.
//!
//! Limits (each refused as a whole with 400, naming the limit): the query's text, its bracket
//! nesting (checked before the parser runs, so no input can recurse it deep), its field depth
//! after fragments, its size after fragments, the resources it resolves, a list's `_count`, and
//! the answer's size.
//!
//! The parser: `async-graphql-parser` (the parser of async-graphql, kept with it; a typed AST
//! with positions, fragments and variables, and a recursion limit of its own). Compared:
//! `apollo-parser` (a lossless, error-tolerant syntax tree made for tooling: every node an
//! `Option` to walk by hand) and `graphql-parser` (a typed AST too, released rarely). Only the
//! parser is used: the FHIR GraphQL schema would be every R4 type's, and resolving fields from
//! the stored JSON needs no schema.

mod exec;

use crate::access::AccessContext;
use crate::fhir::{ResourceId, ResourceType};
use crate::store::{Store, StoreError};

/// The query text's limit, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// How deep `{`, `[` and `(` may nest in the text.
pub const MAX_NESTING: usize = 48;
/// How deep fields may nest, fragments expanded.
pub const MAX_DEPTH: usize = 16;
/// How many fields the query holds, fragments expanded.
pub const MAX_FIELDS: usize = 5_000;
/// How many resources one query may resolve (reads, list matches and references together).
pub const MAX_RESOURCES: usize = 200;
/// How many searches one query may run (each is a query and an audited search, matches or not).
pub const MAX_SEARCHES: usize = 50;
/// The most matches a list may ask for (`_count`); also its default.
pub const MAX_LIST: usize = 100;
/// The answer's limit, in bytes (about: the values and names it holds).
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A GraphQL request: the query, its variables (a JSON object) and the operation to run.
#[derive(Debug, Default)]
pub struct Request {
    pub query: String,
    pub variables: Option<serde_json::Value>,
    pub operation_name: Option<String>,
}

/// What the query starts from: the system (`[base]/$graphql`) or one resource
/// (`[base]/[Type]/[id]/$graphql`).
#[derive(Debug, Clone)]
pub enum Root {
    System,
    Instance(ResourceType, ResourceId),
}

/// An executed query: `data`, and the errors of the fields that answered `null`.
#[derive(Debug)]
pub struct Response {
    pub data: serde_json::Value,
    pub errors: Vec<FieldError>,
}

/// A field that could not be answered (its value is `null`).
#[derive(Debug)]
pub struct FieldError {
    /// Response keys and list indexes from the root.
    pub path: Vec<serde_json::Value>,
    /// Where the field is in the query: line and column.
    pub line: usize,
    pub column: usize,
    pub cause: Cause,
}

/// Why a field answered `null`.
#[derive(Debug)]
pub enum Cause {
    /// The store refused it as it would refuse the read or search (not found, deleted, a scope
    /// the caller lacks, a search it cannot run).
    Store(StoreError),
    /// The query asks what this data cannot give (an object without a selection, an unknown
    /// search parameter, ...).
    Query(String),
}

/// Why a query was not run (or stopped): nothing is answered but the refusal.
#[derive(Debug)]
pub enum Refusal {
    /// Not a query this server runs: syntax, an unknown fragment or variable, a mutation.
    Bad(String),
    /// Over one of the limits above.
    Limit(String),
    /// The store failed (unavailable, integrity, audit), or the instance root is not there to
    /// this caller: answered as the read would be.
    Store(StoreError),
}

impl Store {
    /// Run a GraphQL query as `ctx`. `base` is this server's FHIR base URL (an absolute
    /// reference under it is resolved like a relative one).
    pub async fn graphql(
        &self,
        ctx: &AccessContext,
        base: &str,
        root: Root,
        request: Request,
    ) -> Result<Response, Refusal> {
        exec::run(self, ctx, base, root, request).await
    }
}

/// Refuse text nested deeper than [`MAX_NESTING`] before any parser sees it (strings and
/// comments skipped): the parser's own recursion then stays shallow whatever it is sent.
pub(crate) fn check_nesting(text: &str) -> Result<(), Refusal> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Refusal::Limit(format!(
                        "the query nests deeper than {MAX_NESTING} levels"
                    )));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A GraphQL argument name as the FHIR search parameter it stands for: `_` for `-`, except a
/// leading `_` (`_count`, `_lastUpdated`).
pub(crate) fn search_name(argument: &str) -> String {
    match argument.strip_prefix('_') {
        Some(rest) => format!("_{}", rest.replace('_', "-")),
        None => argument.replace('_', "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let deep = "{".repeat(MAX_NESTING + 1);
        assert!(matches!(check_nesting(&deep), Err(Refusal::Limit(_))));
        let fine = format!("{}{}", "{a ".repeat(MAX_NESTING), "}".repeat(MAX_NESTING));
        assert!(check_nesting(&fine).is_ok());
        let quoted = format!(
            "{{ Patient(id: \"{0}\") {{ id }} # {0}\n x: \"\"\"{0}\"\"\" }}",
            "{".repeat(500)
        );
        assert!(check_nesting(&quoted).is_ok());
        assert!(check_nesting(&format!("\"\\\"{}", "[".repeat(100))).is_ok());
    }

    #[test]
    fn argument_names_become_search_parameters() {
        assert_eq!(search_name("general_practitioner"), "general-practitioner");
        assert_eq!(search_name("_count"), "_count");
        assert_eq!(search_name("_last_updated"), "_last-updated");
        assert_eq!(search_name("name"), "name");
    }
}
