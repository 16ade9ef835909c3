//! Loading the embedded `terminology.json` (written by `shared/fhir-r4/generate.py`) into the
//! tables: code systems with their concept rows and hierarchy, value sets with their expansion
//! groups, and the bindings by type path and property.

use super::bindings::{Binding, BoundType, Strength};
use super::code_system::{CodeSystem, ConceptRow};
use super::value_set::{Group, ValueSet};
use super::{Concept, FastMap, Tables};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

pub(super) const TERMINOLOGY_JSON: &str = include_str!("../../../fhir-r4/terminology.json");

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

pub(super) fn parse() -> Option<Tables> {
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
