//! The terminology operations over what ships with R4 (`carapace_core::fhir::terminology`):
//! `ValueSet/$expand`, `CodeSystem/$lookup`, `ValueSet/$validate-code` and
//! `CodeSystem/$validate-code`, by GET (query parameters) or POST (a `Parameters` body). They
//! read no stored resource, only the shipped tables. Large external systems (SNOMED CT, LOINC,
//! RxNorm, ...) are out of scope: `$lookup` answers 404 for them, `$validate-code` a `false`
//! result with an informational issue saying the system is unknown here.

use super::answer::Answer;
use super::dispatch::Input;
use crate::outcome::ApiError;
use crate::AppState;
use carapace_core::fhir::printable;
use carapace_core::fhir::terminology::{self, CodeSystem, Membership, ValueSet};
use carapace_core::fhir::validate::{Issue, IssueType, Severity};
use chrono::SecondsFormat;
use hyper::StatusCode;
use serde_json::{json, Value};

/// The most concepts one `$expand` page holds (`count` is reduced to it).
pub const MAX_EXPAND_COUNT: usize = 1000;

/// Which operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Expand,
    Lookup,
    ValidateValueSet,
    ValidateCodeSystem,
}

impl Operation {
    /// The operation at `Type/$name`, if it is one of these.
    pub fn of(resource_type: &str, name: &str) -> Option<Operation> {
        Some(match (resource_type, name) {
            ("ValueSet", "$expand") => Operation::Expand,
            ("ValueSet", "$validate-code") => Operation::ValidateValueSet,
            ("CodeSystem", "$lookup") => Operation::Lookup,
            ("CodeSystem", "$validate-code") => Operation::ValidateCodeSystem,
            _ => return None,
        })
    }
}

/// Serve one terminology operation.
pub async fn serve(
    state: &AppState,
    by_post: bool,
    input: Input<'_>,
    op: Operation,
) -> Result<Answer, ApiError> {
    let args = if by_post {
        let (headers, body) = input.body.http()?;
        let body = super::intake::read_resource(state, headers, body).await?;
        Args::from_parameters(&body)?
    } else {
        Args::from_query(input.params)
    };
    let answer = match op {
        Operation::Expand => expand(state, &args)?,
        Operation::Lookup => lookup(&args)?,
        Operation::ValidateValueSet => validate_in_value_set(&args)?,
        Operation::ValidateCodeSystem => validate_in_code_system(&args)?,
    };
    Ok(Answer::Json(answer.to_string().into_bytes()))
}

/// The operation's input parameters, by name: strings (query parameters, primitive `value[x]`)
/// or the JSON of a `valueCoding` / `valueCodeableConcept`.
struct Args(Vec<(String, Value)>);

impl Args {
    fn from_query(params: &[(String, String)]) -> Args {
        Args(
            params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }

    fn from_parameters(body: &Value) -> Result<Args, ApiError> {
        if body["resourceType"] != "Parameters" {
            return Err(ApiError::bad_request(
                "POST to a terminology operation takes a Parameters resource",
            ));
        }
        let mut out = Vec::new();
        for p in body["parameter"].as_array().into_iter().flatten() {
            let Some(name) = p["name"].as_str() else {
                continue;
            };
            let value = p.as_object().and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .map(|(_, v)| v.clone())
            });
            if let Some(v) = value {
                out.push((name.to_string(), v));
            }
        }
        Ok(Args(out))
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn object(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| v.is_object())
    }

    fn number(&self, name: &str) -> Result<Option<usize>, ApiError> {
        let Some((_, v)) = self.0.iter().find(|(k, _)| k == name) else {
            return Ok(None);
        };
        let n = match v {
            Value::String(s) => s.parse::<usize>().ok(),
            other => other.as_u64().and_then(|n| usize::try_from(n).ok()),
        };
        n.map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be a whole number, 0 or more"))
        })
    }

    /// `url` (with `version` appended as `url|version` when `version_param` is given).
    fn canonical(&self, url_param: &str, version_param: &str) -> Option<String> {
        let url = self.text(url_param)?;
        Some(match self.text(version_param) {
            Some(v) => format!("{url}|{v}"),
            None => url.to_string(),
        })
    }

    /// The codings to judge: `code` (+ `system`, `display`), `coding`, or every coding of
    /// `codeableConcept`. `coding` by GET is `system|code`.
    fn codings(&self) -> Vec<Coding> {
        let of = |v: &Value| Coding {
            system: v["system"].as_str().map(str::to_string),
            code: v["code"].as_str().unwrap_or_default().to_string(),
            display: v["display"].as_str().map(str::to_string),
        };
        if let Some(code) = self.text("code") {
            return vec![Coding {
                system: self.text("system").map(str::to_string),
                code: code.to_string(),
                display: self.text("display").map(str::to_string),
            }];
        }
        if let Some(c) = self.object("coding") {
            return vec![of(c)];
        }
        if let Some(token) = self.text("coding") {
            let (system, code) = token.split_once('|').unwrap_or(("", token));
            return vec![Coding {
                system: (!system.is_empty()).then(|| system.to_string()),
                code: code.to_string(),
                display: None,
            }];
        }
        self.object("codeableConcept")
            .and_then(|cc| cc["coding"].as_array())
            .map(|codings| codings.iter().map(of).collect())
            .unwrap_or_default()
    }
}

struct Coding {
    system: Option<String>,
    code: String,
    display: Option<String>,
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::not_found(message)
}

/// `ValueSet/$expand`: the shipped value set's members, filtered (case-insensitive substring of
/// code or display) and paged (`offset`, `count`).
fn expand(state: &AppState, args: &Args) -> Result<Value, ApiError> {
    let canonical = args.canonical("url", "valueSetVersion").ok_or_else(|| {
        ApiError::bad_request("$expand needs url: the canonical of a value set that ships with R4")
    })?;
    let vs = terminology::value_set(&canonical)
        .ok_or_else(|| not_found("no value set with that url (and version) ships with R4"))?;
    let members = vs.expansion().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-supported",
            format!(
                "{} cannot be expanded here: it draws on a code system that does not ship with \
                 R4 (such as SNOMED CT or LOINC) or on a filter that cannot be computed",
                vs.url()
            ),
        )
    })?;
    let filter = args.text("filter").map(str::to_lowercase);
    let offset = args.number("offset")?.unwrap_or(0);
    let count = args
        .number("count")?
        .unwrap_or(MAX_EXPAND_COUNT)
        .min(MAX_EXPAND_COUNT);
    let kept: Vec<&terminology::Concept> = members
        .iter()
        .filter(|c| {
            filter.as_deref().is_none_or(|f| {
                c.code.to_lowercase().contains(f) || c.display.to_lowercase().contains(f)
            })
        })
        .collect();
    let contains: Vec<Value> = kept
        .iter()
        .skip(offset)
        .take(count)
        .map(|c| {
            let mut m = json!({"system": c.system, "code": c.code});
            if !c.version.is_empty() {
                m["version"] = json!(c.version);
            }
            if !c.display.is_empty() {
                m["display"] = json!(c.display);
            }
            m
        })
        .collect();
    let mut parameter = vec![
        json!({"name": "offset", "valueInteger": offset}),
        json!({"name": "count", "valueInteger": count}),
    ];
    if let Some(f) = args.text("filter") {
        parameter.push(json!({"name": "filter", "valueString": f}));
    }
    let mut out = value_set_header(vs);
    out["expansion"] = json!({
        "identifier": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "timestamp": state.store.now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "total": kept.len(),
        "offset": offset,
        "parameter": parameter,
    });
    if !contains.is_empty() {
        out["expansion"]["contains"] = Value::Array(contains);
    }
    Ok(out)
}

fn value_set_header(vs: &ValueSet) -> Value {
    // The shipped tables keep no publication status: `unknown` says so rather than guess.
    let mut out = json!({"resourceType": "ValueSet", "url": vs.url(), "status": "unknown"});
    for (k, v) in [
        ("version", vs.version()),
        ("name", vs.name()),
        ("title", vs.title()),
    ] {
        if !v.is_empty() {
            out[k] = json!(v);
        }
    }
    out
}

/// The shipped code system a `system` names, or why there is none: 404, saying whether it is a
/// large external terminology (out of scope) or simply not one that ships with R4.
fn shipped_system(system: &str, version: Option<&str>) -> Result<&'static CodeSystem, ApiError> {
    if terminology::is_external(system) {
        return Err(not_found(
            "the code system is a large external terminology (SNOMED CT, LOINC, RxNorm, ...): \
             out of scope here, only the code systems that ship with R4 are served",
        ));
    }
    let canonical = match version {
        Some(v) => format!("{system}|{v}"),
        None => system.to_string(),
    };
    terminology::code_system(&canonical)
        .ok_or_else(|| not_found("no code system with that url (and version) ships with R4"))
}

/// `CodeSystem/$lookup`: name, version, display, and the concept's parents and children (and
/// definition) as properties.
fn lookup(args: &Args) -> Result<Value, ApiError> {
    let coding = args.codings().into_iter().next();
    let (Some(system), Some(code)) = (
        coding.as_ref().and_then(|c| c.system.clone()),
        coding
            .as_ref()
            .map(|c| c.code.clone())
            .filter(|c| !c.is_empty()),
    ) else {
        return Err(ApiError::bad_request(
            "$lookup needs system and code (or coding)",
        ));
    };
    let cs = shipped_system(&system, args.text("version"))?;
    let concept = cs.lookup(&code).ok_or_else(|| {
        not_found(format!(
            "'{}' is not a code of {}",
            printable(&code),
            cs.url()
        ))
    })?;
    let mut parameter = vec![json!({"name": "name", "valueString": cs.name()})];
    if !cs.version().is_empty() {
        parameter.push(json!({"name": "version", "valueString": cs.version()}));
    }
    if !concept.display.is_empty() {
        parameter.push(json!({"name": "display", "valueString": concept.display}));
    }
    let property = |code: &str, value: Value| {
        json!({"name": "property", "part": [
        {"name": "code", "valueCode": code}, value]})
    };
    if !concept.definition.is_empty() {
        parameter.push(property(
            "definition",
            json!({"name": "value", "valueString": concept.definition}),
        ));
    }
    for p in cs.parents(concept.code) {
        parameter.push(property("parent", json!({"name": "value", "valueCode": p})));
    }
    for c in cs.children(concept.code) {
        parameter.push(property("child", json!({"name": "value", "valueCode": c})));
    }
    Ok(json!({"resourceType": "Parameters", "parameter": parameter}))
}

/// A `$validate-code` answer: `result`, `message` when there is something to say, `display` when
/// known, and for what cannot be judged here (an unknown system, a value set that cannot be
/// enumerated) an `issues` OperationOutcome with one issue of severity information saying so.
fn verdict(
    result: bool,
    message: Option<String>,
    display: Option<&str>,
    unjudged: Option<String>,
) -> Value {
    let mut parameter = vec![json!({"name": "result", "valueBoolean": result})];
    if let Some(m) = message.as_ref().or(unjudged.as_ref()) {
        parameter.push(json!({"name": "message", "valueString": m}));
    }
    if let Some(d) = display.filter(|d| !d.is_empty()) {
        parameter.push(json!({"name": "display", "valueString": d}));
    }
    if let Some(why) = unjudged {
        let issue = Issue {
            severity: Severity::Information,
            code: IssueType::NotSupported,
            path: String::new(),
            message: why,
        };
        parameter.push(json!({"name": "issues", "resource": {
            "resourceType": "OperationOutcome", "issue": [issue.to_json()]}}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// A system whose codes are all here (not a large external one, nor a shipped fragment).
fn known_system(system: &str) -> bool {
    !terminology::is_external(system)
        && terminology::code_system(system).is_some_and(CodeSystem::is_complete)
}

const UNKNOWN_SYSTEM: &str = "the code system is unknown here: only the code systems that ship \
    with R4 are served (large external terminologies such as SNOMED CT, LOINC and RxNorm are out \
    of scope), so the code cannot be judged";

/// Is a display the concept's? Compared ignoring case and surrounding spaces.
fn same_display(given: &str, known: &str) -> bool {
    given.trim().eq_ignore_ascii_case(known.trim())
}

/// `ValueSet/$validate-code`: is the code (any coding of a CodeableConcept) in the value set?
fn validate_in_value_set(args: &Args) -> Result<Value, ApiError> {
    let canonical = args.canonical("url", "valueSetVersion").ok_or_else(|| {
        ApiError::bad_request("$validate-code needs url: the canonical of a value set")
    })?;
    let vs = terminology::value_set(&canonical)
        .ok_or_else(|| not_found("no value set with that url (and version) ships with R4"))?;
    let codings = args.codings();
    if codings.is_empty() {
        return Err(ApiError::bad_request(
            "$validate-code needs code (with system), coding or codeableConcept",
        ));
    }
    let mut message = None;
    let mut unjudged = None;
    for c in &codings {
        let system = c.system.as_deref();
        // Whatever the value set says, the system itself is not one whose codes are known here.
        if system.is_some_and(|s| !known_system(s)) {
            unjudged = Some(UNKNOWN_SYSTEM.to_string());
        }
        match vs.contains(system, &c.code) {
            Membership::In => {
                let display = system
                    .and_then(|s| vs.concept(s, &c.code))
                    .map(|m| m.display)
                    .filter(|d| !d.is_empty())
                    .or_else(|| {
                        system
                            .and_then(terminology::code_system)
                            .and_then(|cs| cs.lookup(&c.code))
                            .map(|d| d.display)
                    });
                if let (Some(given), Some(known)) = (c.display.as_deref(), display) {
                    if !same_display(given, known) {
                        message = Some(format!(
                            "the display is not the one of code '{}' (which is '{known}')",
                            printable(&c.code)
                        ));
                        continue;
                    }
                }
                return Ok(verdict(true, None, display, None));
            }
            Membership::Unknown if vs.expansion().is_none() => {
                unjudged = Some(format!(
                    "{} cannot be enumerated here (it draws on a code system that does not ship \
                     with R4, or on a filter that cannot be computed), so the code cannot be judged",
                    vs.url()
                ));
            }
            // Not a member, or of a system the value set does not draw on.
            Membership::NotIn | Membership::Unknown => {
                message.get_or_insert_with(|| {
                    format!(
                        "the code '{}' is not in the value set {}",
                        printable(&c.code),
                        vs.url()
                    )
                });
            }
        }
    }
    Ok(verdict(false, message, None, unjudged))
}

/// `CodeSystem/$validate-code`: is the code one of the system's?
fn validate_in_code_system(args: &Args) -> Result<Value, ApiError> {
    let coding = args.codings().into_iter().next();
    let url = args
        .text("url")
        .map(str::to_string)
        .or_else(|| coding.as_ref().and_then(|c| c.system.clone()))
        .ok_or_else(|| {
            ApiError::bad_request("$validate-code needs url: the canonical of a code system")
        })?;
    let Some(coding) = coding.filter(|c| !c.code.is_empty()) else {
        return Err(ApiError::bad_request(
            "$validate-code needs code (or coding)",
        ));
    };
    let canonical = match args.text("version") {
        Some(v) => format!("{url}|{v}"),
        None => url.clone(),
    };
    let Some(cs) = terminology::code_system(&canonical).filter(|_| !terminology::is_external(&url))
    else {
        return Ok(verdict(false, None, None, Some(UNKNOWN_SYSTEM.to_string())));
    };
    match cs.lookup(&coding.code) {
        Some(concept) => match coding.display.as_deref() {
            Some(given) if !concept.display.is_empty() && !same_display(given, concept.display) => {
                Ok(verdict(
                    false,
                    Some(format!(
                        "the display is not the one of code '{}' (which is '{}')",
                        printable(concept.code),
                        concept.display
                    )),
                    Some(concept.display),
                    None,
                ))
            }
            _ => Ok(verdict(true, None, Some(concept.display), None)),
        },
        None if !cs.is_complete() => Ok(verdict(
            false,
            None,
            None,
            Some(format!(
                "{} does not ship whole with R4 (its content is '{}'), so the code cannot be \
                 judged",
                cs.url(),
                cs.content()
            )),
        )),
        None => Ok(verdict(
            false,
            Some(format!(
                "'{}' is not a code of {}",
                printable(&coding.code),
                cs.url()
            )),
            None,
            None,
        )),
    }
}
