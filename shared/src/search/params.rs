//! The R4 search parameters, compiled from the official SearchParameter definitions by
//! `fhir-r4/generate.py` (see its header for the format), and the evaluation of their paths over a
//! resource's JSON.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

const SEARCH_PARAMS_JSON: &str = include_str!("../../fhir-r4/search-params.json");

/// A search parameter's type (R4 `search-param-type`, without `special`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "number" => Kind::Number,
            "date" => Kind::Date,
            "string" => Kind::String,
            "token" => Kind::Token,
            "reference" => Kind::Reference,
            "composite" => Kind::Composite,
            "quantity" => Kind::Quantity,
            "uri" => Kind::Uri,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Number => "number",
            Kind::Date => "date",
            Kind::String => "string",
            Kind::Token => "token",
            Kind::Reference => "reference",
            Kind::Composite => "composite",
            Kind::Quantity => "quantity",
            Kind::Uri => "uri",
        }
    }
}

/// One step of a compiled path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A JSON property; arrays are flattened.
    Prop(String),
    /// `where(name='value')`: keep elements whose `name` is `value`.
    Where(String, String),
    /// `where(resolve() is Type)`: keep references to `Type`.
    Resolve(String),
}

/// A path from a resource (or a composite's base element) to values of one FHIR datatype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub steps: Vec<Step>,
    pub datatype: String,
}

#[derive(Debug, Clone)]
pub struct Component {
    pub kind: Kind,
    pub paths: Vec<Path>,
}

#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub kind: Kind,
    pub paths: Vec<Path>,
    /// Target resource types of a reference parameter.
    pub targets: Vec<String>,
    /// The canonical URL of the SearchParameter definition.
    pub url: String,
    pub components: Vec<Component>,
    /// For a parameter whose paths are exactly those of other parameters of its type and kind
    /// together (`Observation.combo-code` = `code` | `component-code`): their codes. Such a
    /// parameter is not indexed; a search on it asks its parts.
    pub union_of: Vec<String>,
}

type Table = HashMap<String, HashMap<String, SearchParam>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| parse(SEARCH_PARAMS_JSON).unwrap_or_default())
}

fn parse_paths(v: &Value) -> Option<Vec<Path>> {
    v.as_array()?
        .iter()
        .map(|p| {
            let items = p.as_array()?;
            let (datatype, steps) = items.split_last()?;
            let steps = steps
                .iter()
                .map(|s| {
                    let s = s.as_str()?;
                    Some(if let Some(rest) = s.strip_prefix("?resolve=") {
                        Step::Resolve(rest.to_string())
                    } else if let Some(rest) = s.strip_prefix('?') {
                        let (name, value) = rest.split_once('=')?;
                        Step::Where(name.to_string(), value.to_string())
                    } else {
                        Step::Prop(s.to_string())
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Path {
                steps,
                datatype: datatype.as_str()?.to_string(),
            })
        })
        .collect()
}

fn parse(json: &str) -> Option<Table> {
    let root: Value = serde_json::from_str(json).ok()?;
    let mut out = Table::new();
    for (rt, params) in root.as_object()? {
        let mut by_code = HashMap::new();
        for (code, spec) in params.as_object()? {
            let spec = spec.as_array()?;
            let kind = Kind::parse(spec.first()?.as_str()?)?;
            let paths = parse_paths(spec.get(1)?)?;
            let targets = spec
                .get(2)
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let url = spec.get(3)?.as_str()?.to_string();
            let mut components = Vec::new();
            if let Some(comps) = spec.get(4).and_then(Value::as_array) {
                for c in comps {
                    let c = c.as_array()?;
                    components.push(Component {
                        kind: Kind::parse(c.first()?.as_str()?)?,
                        paths: parse_paths(c.get(1)?)?,
                    });
                }
            }
            by_code.insert(
                code.clone(),
                SearchParam {
                    code: code.clone(),
                    kind,
                    paths,
                    targets,
                    url,
                    components,
                    union_of: vec![],
                },
            );
        }
        find_unions(&mut by_code);
        out.insert(rt.clone(), by_code);
    }
    Some(out)
}

/// Mark the string, token and uri parameters of one type that are unions of others (see
/// [`SearchParam::union_of`]). Parts are plain parameters with fewer paths, so there are no chains.
fn find_unions(by_code: &mut HashMap<String, SearchParam>) {
    let hashed = |k: Kind| matches!(k, Kind::String | Kind::Token | Kind::Uri);
    let mut unions = Vec::new();
    for p in by_code
        .values()
        .filter(|p| hashed(p.kind) && p.paths.len() > 1)
    {
        let mut parts: Vec<&SearchParam> = by_code
            .values()
            .filter(|q| {
                q.code != p.code
                    && q.kind == p.kind
                    && !q.paths.is_empty()
                    && q.paths.len() < p.paths.len()
                    && q.paths.iter().all(|path| p.paths.contains(path))
            })
            .collect();
        parts.sort_by(|a, b| a.code.cmp(&b.code));
        let covered = p
            .paths
            .iter()
            .all(|path| parts.iter().any(|q| q.paths.contains(path)));
        if covered {
            unions.push((
                p.code.clone(),
                parts.iter().map(|q| q.code.clone()).collect(),
            ));
        }
    }
    for (code, parts) in unions {
        if let Some(p) = by_code.get_mut(&code) {
            p.union_of = parts;
        }
    }
}

/// The search parameter `code` of `resource_type`, if R4 defines one we can serve.
pub fn lookup(resource_type: &str, code: &str) -> Option<&'static SearchParam> {
    table().get(resource_type)?.get(code)
}

/// Every parameter of a type, sorted by code (for the CapabilityStatement).
pub fn for_type(resource_type: &str) -> Vec<&'static SearchParam> {
    let mut params: Vec<_> = table()
        .get(resource_type)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    params.sort_by(|a, b| a.code.cmp(&b.code));
    params
}

/// The values a path reaches in `root`.
pub fn evaluate<'a>(root: &'a Value, path: &Path) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in &path.steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Prop(name) => match v.get(name) {
                    Some(Value::Array(items)) => next.extend(items.iter()),
                    Some(x) => next.push(x),
                    None => {}
                },
                Step::Where(name, want) => {
                    if v.get(name).and_then(Value::as_str) == Some(want.as_str()) {
                        next.push(v);
                    }
                }
                Step::Resolve(target) => {
                    let reference = v.get("reference").and_then(Value::as_str).unwrap_or("");
                    if reference_type(reference) == Some(target.as_str()) {
                        next.push(v);
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// The resource type a literal reference points at: `Patient/1`, `http://x/fhir/Patient/1`,
/// `Patient/1/_history/2`.
pub fn reference_type(reference: &str) -> Option<&str> {
    let (t, _) = split_reference(reference)?;
    Some(t)
}

/// `(type, id)` of a literal reference, relative or absolute; `None` for contained (`#x`),
/// `urn:` and malformed references.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    crate::fhir::reference::Reference::parse(reference)
        .ok()?
        .target()
        .map(|(t, id)| (t.as_str(), id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_r4_parameters_are_compiled() {
        let name = lookup("Patient", "name").unwrap();
        assert_eq!(name.kind, Kind::String);
        assert_eq!(name.paths[0].datatype, "HumanName");
        let date = lookup("Observation", "date").unwrap();
        assert!(
            date.paths.len() >= 3,
            "effective[x] fans out over its types"
        );
        let cvq = lookup("Observation", "code-value-quantity").unwrap();
        assert_eq!(cvq.components.len(), 2);
        assert!(lookup("Encounter", "_tag").is_some() && lookup("Encounter", "nope").is_none());
        assert!(for_type("Patient").len() > 20);
    }

    #[test]
    fn unions_of_other_parameters_are_found() {
        let combo = lookup("Observation", "combo-code").unwrap();
        assert_eq!(combo.union_of, ["code", "component-code"]);
        let concept = lookup("Observation", "combo-value-concept").unwrap();
        assert_eq!(
            concept.union_of,
            ["component-value-concept", "value-concept"]
        );
        assert!(lookup("Observation", "code").unwrap().union_of.is_empty());
        assert!(lookup("Patient", "name").unwrap().union_of.is_empty());
        let unions: Vec<String> = crate::fhir::schema::resource_types()
            .flat_map(|t| for_type(t).into_iter().map(move |p| (t, p)))
            .filter(|(_, p)| !p.union_of.is_empty())
            .map(|(t, p)| format!("{t}.{} = {}", p.code, p.union_of.join(" | ")))
            .collect();
        assert_eq!(
            unions,
            [
                "Observation.combo-code = code | component-code",
                "Observation.combo-data-absent-reason = component-data-absent-reason | data-absent-reason",
                "Observation.combo-value-concept = component-value-concept | value-concept",
            ]
        );
    }

    #[test]
    fn paths_filter_by_where_and_resolve() {
        let patient = json!({"telecom": [{"system": "phone", "value": "555"},
                                         {"system": "email", "value": "a@b"}]});
        let phone = lookup("Patient", "phone").unwrap();
        let found = evaluate(&patient, &phone.paths[0]);
        assert_eq!(found, vec![&json!({"system": "phone", "value": "555"})]);
        let obs = json!({"subject": {"reference": "Group/1"}});
        let patient_param = lookup("Observation", "patient").unwrap();
        assert!(evaluate(&obs, &patient_param.paths[0]).is_empty());
        assert_eq!(
            split_reference("http://x/fhir/Patient/7/_history/2"),
            Some(("Patient", "7"))
        );
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(split_reference("urn:uuid:1234"), None);
    }
}
