//! The kick-off request of a Bulk Data export (IG 2.0.0 `export.html#query-parameters`), parsed
//! once from a GET's query or a POST's `Parameters` body into an [`ExportRequest`]. Unknown or
//! unsupported parameters are refused unless the client asked for `Prefer: handling=lenient`;
//! then they are named in the job's error file.

use crate::fhir::{printable, ResourceType};
use crate::search::query::{self, SearchQuery};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What is exported: the whole server, every patient, or a Group's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    System,
    Patient,
    Group(String),
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Patient => "patient",
            Level::Group(_) => "group",
        }
    }
}

/// An export request as the server understood it (kept sealed with its job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: Level,
    /// `_type`; none: every type the caller may search (at Patient and Group level, those of
    /// the Patient compartment).
    pub types: Option<Vec<String>>,
    pub since: Option<DateTime<Utc>>,
    /// `_typeFilter`: `Type?query`, each checked as a search of its type.
    pub type_filters: Vec<String>,
    /// `_elements`: `element` (every type) or `Type.element`.
    pub elements: Vec<String>,
    /// `patient` (POST): ids of the patients to export.
    pub patients: Vec<String>,
    /// `includeAssociatedData=LatestProvenanceResources`.
    pub latest_provenance: bool,
    /// Parameters ignored under `handling=lenient`, named for the error file.
    pub ignored: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

/// At most this many `patient` parameters, `_typeFilter` searches and `_elements` per kick-off.
const MAX_PATIENTS: usize = 10_000;
const MAX_FILTERS: usize = 50;
const MAX_ELEMENTS: usize = 100;

/// The media types `_outputFormat` may name (the IG's NDJSON and its abbreviations).
const NDJSON: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

impl ExportRequest {
    /// Parse a GET kick-off's query parameters. `_format` is the REST API's and is skipped here.
    pub fn from_query(
        level: Level,
        params: &[(String, String)],
        lenient: bool,
    ) -> Result<ExportRequest, BadRequest> {
        let mut r = ExportRequest::empty(level);
        for (name, value) in params {
            if name == "patient" {
                // The IG takes `patient` in a POST body only: a GET's URL would carry the ids
                // into logs and histories.
                r.refuse_or_ignore(lenient, name, "is accepted in a POST Parameters body only")?;
                continue;
            }
            r.take(name, value, lenient)?;
        }
        r.check()?;
        Ok(r)
    }

    /// Parse a POST kick-off's `Parameters` resource.
    pub fn from_parameters(
        level: Level,
        body: &Value,
        lenient: bool,
    ) -> Result<ExportRequest, BadRequest> {
        if body["resourceType"] != "Parameters" {
            return Err(bad("a POST kick-off takes a Parameters resource"));
        }
        let mut r = ExportRequest::empty(level);
        let mut seen = std::collections::HashSet::new();
        for p in body["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("");
            if name == "patient" {
                let reference = p["valueReference"]["reference"].as_str().ok_or_else(|| {
                    bad("the patient parameter takes a valueReference to a Patient")
                })?;
                let id = reference
                    .strip_prefix("Patient/")
                    .filter(|id| crate::fhir::ResourceId::parse(id).is_ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "patient '{}' is not a Patient/id reference",
                            printable(reference)
                        ))
                    })?;
                if seen.insert(id.to_string()) {
                    r.patients.push(id.to_string());
                }
                if r.patients.len() > MAX_PATIENTS {
                    return Err(bad(format!(
                        "at most {MAX_PATIENTS} patients per kick-off (define a Group for a larger cohort)"
                    )));
                }
                continue;
            }
            let value = [
                "valueString",
                "valueInstant",
                "valueCode",
                "valueDateTime",
                "valueUri",
            ]
            .iter()
            .find_map(|k| p[*k].as_str())
            .ok_or_else(|| {
                bad(format!(
                    "parameter '{}' has no string, code, uri or instant value",
                    printable(name)
                ))
            })?;
            r.take(name, value, lenient)?;
        }
        r.check()?;
        Ok(r)
    }

    fn empty(level: Level) -> ExportRequest {
        ExportRequest {
            level,
            types: None,
            since: None,
            type_filters: vec![],
            elements: vec![],
            patients: vec![],
            latest_provenance: false,
            ignored: vec![],
        }
    }

    fn refuse_or_ignore(&mut self, lenient: bool, name: &str, why: &str) -> Result<(), BadRequest> {
        let text = format!("parameter '{}' {why}", printable(name));
        if lenient {
            self.ignored.push(text);
            Ok(())
        } else {
            Err(bad(format!(
                "{text} (send Prefer: handling=lenient to have it ignored)"
            )))
        }
    }

    fn take(&mut self, name: &str, value: &str, lenient: bool) -> Result<(), BadRequest> {
        match name {
            "_format" => {}
            "_outputFormat" => {
                if !NDJSON.contains(&value) {
                    return Err(bad(format!(
                        "_outputFormat '{}' is not supported: this server writes application/fhir+ndjson",
                        printable(value)
                    )));
                }
            }
            "_since" => {
                let since = DateTime::parse_from_rfc3339(value).map_err(|_| {
                    bad(format!(
                        "_since '{}' is not a FHIR instant (such as 2024-01-02T03:04:05Z)",
                        printable(value)
                    ))
                })?;
                self.since = Some(since.with_timezone(&Utc));
            }
            "_type" => {
                let types = self.types.get_or_insert_with(Vec::new);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if ResourceType::parse(t).is_none() {
                        return Err(bad(format!(
                            "_type '{}' is not an R4 resource type",
                            printable(t)
                        )));
                    }
                    if !types.iter().any(|x| x == t) {
                        types.push(t.to_string());
                    }
                }
            }
            "_typeFilter" => {
                for filter in split_type_filters(value) {
                    parse_type_filter(&filter)?;
                    self.type_filters.push(filter);
                }
                if self.type_filters.len() > MAX_FILTERS {
                    return Err(bad(format!(
                        "at most {MAX_FILTERS} _typeFilter searches per kick-off"
                    )));
                }
            }
            "_elements" => {
                for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let element = match e.split_once('.') {
                        Some((t, rest)) => {
                            if ResourceType::parse(t).is_none() {
                                return Err(bad(format!(
                                    "_elements '{}' names no R4 resource type",
                                    printable(e)
                                )));
                            }
                            rest
                        }
                        None => e,
                    };
                    if element.is_empty() || !element.chars().all(|c| c.is_ascii_alphanumeric()) {
                        return Err(bad(format!(
                            "_elements '{}' is not an element name (or Type.element)",
                            printable(e)
                        )));
                    }
                    self.elements.push(e.to_string());
                }
                if self.elements.len() > MAX_ELEMENTS {
                    return Err(bad(format!(
                        "at most {MAX_ELEMENTS} _elements per kick-off"
                    )));
                }
            }
            "includeAssociatedData" => {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    if v == "LatestProvenanceResources" {
                        self.latest_provenance = true;
                    } else {
                        self.refuse_or_ignore(
                            lenient,
                            &format!("includeAssociatedData={v}"),
                            "is not supported (LatestProvenanceResources is)",
                        )?;
                    }
                }
            }
            other => {
                let why = match other {
                    "_until" | "organizeOutputBy" | "allowPartialManifests" => "is not supported",
                    _ => "is not a Bulk Data kick-off parameter",
                };
                self.refuse_or_ignore(lenient, other, why)?;
            }
        }
        Ok(())
    }

    /// What holds between parameters.
    fn check(&self) -> Result<(), BadRequest> {
        if !self.patients.is_empty() && self.level == Level::System {
            return Err(bad(
                "the patient parameter is for Patient and Group exports",
            ));
        }
        for filter in &self.type_filters {
            let t = filter.split('?').next().unwrap_or("");
            if let Some(types) = &self.types {
                if !types.iter().any(|x| x == t) {
                    return Err(bad(format!(
                        "_typeFilter '{}' is on a type _type does not list",
                        printable(filter)
                    )));
                }
            }
        }
        if self.level != Level::System {
            for t in self.types.iter().flatten() {
                if !in_patient_compartment(t) {
                    return Err(bad(format!(
                        "{t} is not in the Patient compartment: a Patient or Group export holds \
                         patient records (export it at the system level)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The `_typeFilter` searches of `resource_type`, parsed.
    pub fn filters_of(&self, resource_type: ResourceType) -> Result<Vec<SearchQuery>, BadRequest> {
        let mut out = Vec::new();
        for f in &self.type_filters {
            let q = parse_type_filter(f)?;
            if q.resource_type == resource_type {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// The `_elements` that apply to `resource_type`, as element names; `None` for all elements.
    pub fn elements_of(&self, resource_type: &str) -> Option<Vec<String>> {
        let mine: Vec<String> = self
            .elements
            .iter()
            .filter_map(|e| match e.split_once('.') {
                Some((t, element)) if t == resource_type => Some(element.to_string()),
                Some(_) => None,
                None => Some(e.clone()),
            })
            .collect();
        (!mine.is_empty()).then_some(mine)
    }
}

/// Is a type in the R4 Patient CompartmentDefinition (or `Patient` itself)?
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient"
        || !crate::fhir::schema::patient_compartment_paths(resource_type).is_empty()
}

/// Split a `_typeFilter` value at the commas that begin another `Type?` filter (a comma inside a
/// search value means "or" and stays).
fn split_type_filters(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in value.split(',') {
        let starts_filter = piece
            .split_once('?')
            .is_some_and(|(t, _)| ResourceType::parse(t.trim()).is_some());
        match out.last_mut() {
            Some(last) if !starts_filter => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.trim().to_string()),
        }
    }
    out.retain(|f| !f.is_empty());
    out
}

fn parse_type_filter(filter: &str) -> Result<SearchQuery, BadRequest> {
    let (t, q) = filter.split_once('?').ok_or_else(|| {
        bad(format!(
            "_typeFilter '{}' is not Type?search-parameters",
            printable(filter)
        ))
    })?;
    let rt = ResourceType::parse(t).ok_or_else(|| {
        bad(format!(
            "_typeFilter type '{}' is not an R4 resource type",
            printable(t)
        ))
    })?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    for (name, _) in &pairs {
        // Result parameters (`_count`, `_sort`, `_include`, ...) shape a page; an export has none.
        let filter_param = matches!(
            name.as_str(),
            "_id" | "_lastUpdated" | "_tag" | "_profile" | "_security"
        ) || name.starts_with("_has:");
        if name.starts_with('_') && !filter_param {
            return Err(bad(format!(
                "_typeFilter '{}': {} is a result parameter, not a filter",
                printable(filter),
                printable(name)
            )));
        }
    }
    query::parse(rt, &pairs, true)
        .map_err(|e| bad(format!("_typeFilter '{}': {}", printable(filter), e.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_get_kick_off_reads_every_parameter() {
        let r = ExportRequest::from_query(
            Level::System,
            &pairs(&[
                ("_outputFormat", "application/ndjson"),
                ("_type", "Patient,Observation"),
                ("_since", "2024-01-02T03:04:05+01:00"),
                (
                    "_typeFilter",
                    "Observation?code=http://loinc.org|1,2,Patient?gender=female",
                ),
                ("_elements", "id,Observation.status"),
                ("includeAssociatedData", "LatestProvenanceResources"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            r.types.as_deref(),
            Some(&["Patient".to_string(), "Observation".into()][..])
        );
        assert_eq!(r.since.unwrap().to_rfc3339(), "2024-01-02T02:04:05+00:00");
        assert_eq!(
            r.type_filters,
            [
                "Observation?code=http://loinc.org|1,2",
                "Patient?gender=female"
            ]
        );
        assert!(r.latest_provenance);
        assert_eq!(r.elements_of("Observation").unwrap(), ["id", "status"]);
        assert_eq!(r.elements_of("Patient").unwrap(), ["id"]);
        let obs = ResourceType::parse("Observation").unwrap();
        assert_eq!(r.filters_of(obs).unwrap().len(), 1);
    }

    #[test]
    fn bad_and_unknown_parameters_are_refused_unless_lenient() {
        for (name, value) in [
            ("_outputFormat", "text/csv"),
            ("_since", "2024-01-02"),
            ("_type", "Nope"),
            ("_typeFilter", "Observation"),
            ("_typeFilter", "Observation?nonsense=1"),
            ("_typeFilter", "Observation?_count=5"),
            ("_elements", "Nope.id"),
            ("includeAssociatedData", "RelevantProvenanceResources"),
            ("_until", "2024-01-01T00:00:00Z"),
            ("foo", "bar"),
            ("patient", "Patient/1"),
        ] {
            assert!(
                ExportRequest::from_query(Level::Patient, &pairs(&[(name, value)]), false).is_err(),
                "{name}={value}"
            );
        }
        let lenient = ExportRequest::from_query(
            Level::Patient,
            &pairs(&[("foo", "bar"), ("includeAssociatedData", "X")]),
            true,
        )
        .unwrap();
        assert_eq!(lenient.ignored.len(), 2);
        // A filter on a type `_type` leaves out, a non-compartment type at Patient level.
        assert!(ExportRequest::from_query(
            Level::System,
            &pairs(&[
                ("_type", "Patient"),
                ("_typeFilter", "Observation?status=final")
            ]),
            false
        )
        .is_err());
        assert!(ExportRequest::from_query(
            Level::Patient,
            &pairs(&[("_type", "Practitioner")]),
            false
        )
        .is_err());
        assert!(ExportRequest::from_query(
            Level::System,
            &pairs(&[("_type", "Practitioner")]),
            false
        )
        .is_ok());
    }

    #[test]
    fn a_post_kick_off_takes_patients_from_its_parameters() {
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Observation"},
            {"name": "patient", "valueReference": {"reference": "Patient/a"}},
            {"name": "patient", "valueReference": {"reference": "Patient/b"}},
            {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"}]});
        let r = ExportRequest::from_parameters(Level::Patient, &body, false).unwrap();
        assert_eq!(r.patients, ["a", "b"]);
        let bad_ref = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": "Observation/a"}}]});
        assert!(ExportRequest::from_parameters(Level::Patient, &bad_ref, false).is_err());
        assert!(ExportRequest::from_parameters(Level::System, &body, false).is_err());
    }
}
