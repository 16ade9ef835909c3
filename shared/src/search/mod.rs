//! FHIR search over encrypted data: the R4 parameter definitions, what each resource contributes to
//! the blind index, and the parsing of search requests. The store runs the searches
//! (`store/search.rs`).

pub(crate) mod cursor;
pub mod index;
pub mod interaction_params;
pub mod params;
pub mod query;
pub(crate) mod sql;

use query::Summary;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

const SUMMARY_JSON: &str = include_str!("../../fhir-r4/summary.json");

fn summary_elements(resource_type: &str) -> &'static [String] {
    static TABLE: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    TABLE
        .get_or_init(|| serde_json::from_str(SUMMARY_JSON).unwrap_or_default())
        .get(resource_type)
        .map_or(&[], Vec::as_slice)
}

/// Apply `_summary` (true, text, data) and `_elements` to a resource of a search result. A
/// resource cut down this way carries the `SUBSETTED` tag, as the spec requires.
pub fn shape(resource: &mut Value, summary: Summary, elements: Option<&[String]>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let resource_type = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let before = obj.len();
    let always = ["resourceType", "id", "meta"];
    match (summary, elements) {
        (Summary::True, _) => {
            let keep = summary_elements(&resource_type);
            obj.retain(|k, _| always.contains(&k.as_str()) || keep.iter().any(|e| e == k));
        }
        (Summary::Text, _) => {
            obj.retain(|k, _| always.contains(&k.as_str()) || k == "text");
        }
        (Summary::Data, _) => {
            obj.remove("text");
        }
        (_, Some(elements)) => {
            obj.retain(|k, _| {
                always.contains(&k.as_str())
                    || elements.iter().any(|e| {
                        e == k
                            || k.strip_prefix(e.as_str()).is_some_and(|rest| {
                                rest.starts_with(|c: char| c.is_ascii_uppercase())
                            })
                    })
            });
        }
        _ => {}
    }
    if obj.len() != before {
        let meta = obj
            .entry("meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| Value::Array(vec![]));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(serde_json::json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED"}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_and_elements_cut_and_tag() {
        let mut p = json!({"resourceType": "Patient", "id": "1", "text": {"status": "generated"},
                           "gender": "male", "photo": [{"url": "x"}], "deceasedBoolean": false});
        shape(&mut p.clone(), Summary::None, None);
        let mut s = p.clone();
        shape(&mut s, Summary::True, None);
        assert!(s.get("photo").is_none() && s.get("text").is_none());
        assert_eq!(s["gender"], "male");
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
        shape(&mut p, Summary::None, Some(&["deceased".to_string()]));
        assert_eq!(p["deceasedBoolean"], false);
        assert!(p.get("gender").is_none());
    }
}
