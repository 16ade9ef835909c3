//! A shipped code system: its concepts with display and definition, the hierarchy (nested concepts
//! and the `child` / `parent` / `subsumedBy` properties, possibly a DAG) walked for descendants,
//! ancestors and subsumption, and case sensitivity as the CodeSystem declares it.

use super::{lowered, ConceptDef, FastMap};

#[derive(Debug)]
pub(super) struct ConceptRow {
    pub(super) code: &'static str,
    pub(super) display: &'static str,
    pub(super) definition: &'static str,
    pub(super) parents: Vec<u32>,
}

#[derive(Debug)]
pub struct CodeSystem {
    pub(super) url: &'static str,
    pub(super) version: &'static str,
    pub(super) name: &'static str,
    pub(super) content: &'static str,
    pub(super) case_sensitive: bool,
    pub(super) concepts: Vec<ConceptRow>,
    pub(super) children: Vec<Vec<u32>>,
    pub(super) by_code: FastMap<&'static str, u32>,
    /// Lower-cased codes, for a system that is not case sensitive.
    pub(super) by_lower: FastMap<Box<str>, u32>,
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
