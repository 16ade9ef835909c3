//! The parameters of the history interaction (`_count`, `_since`, `_page`) and of
//! `Patient/$everything` (those and `_type`), parsed from a request's query pairs like a search's
//! (`query.rs`). Other parameters are ignored, as R4 lets a server do for these interactions.

use super::query::BadSearch;
use crate::fhir::{printable, since_instant, ResourceType};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub since: Option<DateTime<Utc>>,
    pub count: usize,
    /// A page's sealed `next` position (`_page`).
    pub after: Option<String>,
}

/// A `$everything` request: `_since`, `_type`, `_count` and the sealed paging position.
#[derive(Debug, Clone, Default)]
pub struct EverythingQuery {
    pub since: Option<DateTime<Utc>>,
    pub types: Vec<ResourceType>,
    pub count: usize,
    pub after: Option<String>,
}

/// Entries per history or `$everything` page when `_count` is not given.
pub const DEFAULT_PAGE_COUNT: usize = 50;

/// `_history` at system, type or instance level.
pub fn parse_history(pairs: &[(String, String)]) -> Result<HistoryQuery, BadSearch> {
    let mut query = HistoryQuery {
        count: DEFAULT_PAGE_COUNT,
        ..HistoryQuery::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => query.count = count(value)?,
            "_since" => query.since = Some(since_instant(value).map_err(BadSearch)?),
            "_page" => query.after = Some(value.clone()),
            _ => {}
        }
    }
    Ok(query)
}

/// `Patient/{id}/$everything`.
pub fn parse_everything(pairs: &[(String, String)]) -> Result<EverythingQuery, BadSearch> {
    let mut query = EverythingQuery {
        count: DEFAULT_PAGE_COUNT,
        ..EverythingQuery::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => query.count = count(value)?,
            "_since" => query.since = Some(since_instant(value).map_err(BadSearch)?),
            "_type" => {
                for t in value.split(',').filter(|t| !t.is_empty()) {
                    query
                        .types
                        .push(ResourceType::parse(t.trim()).ok_or_else(|| {
                            BadSearch(format!(
                                "_type: '{}' is not an R4 resource type",
                                printable(t)
                            ))
                        })?);
                }
            }
            "_page" => query.after = Some(value.clone()),
            _ => {}
        }
    }
    Ok(query)
}

fn count(value: &str) -> Result<usize, BadSearch> {
    value
        .parse::<usize>()
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| BadSearch("_count must be a positive whole number".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn history_takes_count_since_and_page() {
        let q = parse_history(&pairs(&[
            ("_count", "5"),
            ("_since", "2024-01"),
            ("_page", "cursor"),
            ("_other", "x"),
        ]))
        .unwrap();
        assert_eq!(q.count, 5);
        assert_eq!(q.since.unwrap().to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(q.after.as_deref(), Some("cursor"));
        assert_eq!(parse_history(&[]).unwrap().count, DEFAULT_PAGE_COUNT);
    }

    #[test]
    fn everything_takes_types() {
        let q = parse_everything(&pairs(&[("_type", "Observation, Condition,")])).unwrap();
        let types: Vec<&str> = q.types.iter().map(|t| t.as_str()).collect();
        assert_eq!(types, ["Observation", "Condition"]);
    }

    #[test]
    fn bad_values_are_refused_naming_the_parameter() {
        for (name, value, says) in [
            ("_count", "0", "_count must be a positive whole number"),
            ("_count", "-1", "_count must be a positive whole number"),
            ("_since", "yesterday", "_since is an instant"),
        ] {
            let e = parse_history(&pairs(&[(name, value)])).unwrap_err();
            assert!(e.0.starts_with(says), "{name}={value}: {}", e.0);
            let e = parse_everything(&pairs(&[(name, value)])).unwrap_err();
            assert!(e.0.starts_with(says), "{name}={value}: {}", e.0);
        }
        let e = parse_everything(&pairs(&[("_type", "Observation,Nope")])).unwrap_err();
        assert_eq!(e.0, "_type: 'Nope' is not an R4 resource type");
    }
}
