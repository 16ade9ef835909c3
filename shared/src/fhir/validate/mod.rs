//! Structural validation of R4 JSON resources against the R4 definitions: known elements only, the
//! right JSON types, arrays where (and only where) the definition repeats, primitives in their lexical
//! forms, required elements present, embedded resources checked as resources; the invariants that
//! are structure (ele-1, ext-1, dom-2 to dom-5, txt-1/txt-2) natively; core extensions against their
//! definitions ([`super::extensions`]: value type, context, modifier or not). Every problem is
//! named by FHIRPath, as the HL7 validator names it (`Patient.name[0].given[1]`,
//! `Observation.value.ofType(Quantity)`, `Patient.gender` for `_gender`,
//! `Bundle.entry[0].resource.ofType(Patient)`), with its R4 issue type.
//!
//! This runs on every write, so it walks the document once over the precomputed tables of
//! [`super::schema`], and allocates no strings unless it finds a problem: the current location is a
//! stack of borrowed segments, rendered into a path only for an issue; the objects around it are a
//! stack of frames (their types), which is what an extension's context is matched against.

mod extension;
mod primitives;
#[cfg(test)]
mod tests;
mod walk;

use serde_json::Value;

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
    /// The caller may not do what the validated interaction would do (`$validate` modes).
    Forbidden,
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
            IssueType::Forbidden => "forbidden",
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

/// Parts of the write-path validator, for the validation benchmark only (which reports what
/// bindings and invariants cost): the structural walk, with or without the binding checks.
#[doc(hidden)]
pub fn validate_structure(resource: &Value, bindings: bool) -> Vec<Issue> {
    walk::walk(resource, Depth::Write, bindings)
}

fn run(resource: &Value, depth: Depth) -> Vec<Issue> {
    let mut issues = walk::walk(resource, depth, true);
    // The invariants read a structurally valid resource (types and shapes as defined).
    if !issues.iter().any(Issue::is_error) {
        super::invariants::check(resource, depth, &mut issues);
    }
    issues
}
