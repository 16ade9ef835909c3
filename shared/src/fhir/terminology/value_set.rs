//! A shipped value set: its expansion (computed at generation time), grouped by system and indexed
//! on first use, so membership ([`ValueSet::contains`]) is O(1) and honours each system's case
//! sensitivity.

use super::{lowered, Concept, FastMap, Membership, TABLES};
use std::sync::OnceLock;

/// The members of one system in an expansion, indexed on first use.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) system: &'static str,
    /// The shipped code system (for its case sensitivity), if any.
    pub(super) code_system: Option<usize>,
    /// Indexes into [`ValueSet::expansion`].
    pub(super) range: std::ops::Range<usize>,
}

#[derive(Debug)]
pub struct ValueSet {
    pub(super) url: &'static str,
    pub(super) version: &'static str,
    pub(super) name: &'static str,
    pub(super) title: &'static str,
    pub(super) expansion: Option<Vec<Concept>>,
    pub(super) groups: Vec<Group>,
    /// Built on first use, see [`ValueSet::members`].
    pub(super) index: OnceLock<Vec<FastMap<Box<str>, usize>>>,
}

impl ValueSet {
    pub fn url(&self) -> &'static str {
        self.url
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn title(&self) -> &'static str {
        self.title
    }

    /// Every member, grouped by system in the value set's order; `None` when the value set cannot
    /// be enumerated from what ships.
    pub fn expansion(&self) -> Option<&[Concept]> {
        self.expansion.as_deref()
    }

    /// The systems the expansion draws from (empty when it is not enumerable).
    pub fn systems(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.groups.iter().map(|g| g.system)
    }

    fn case_sensitive(&self, group: &Group) -> bool {
        group
            .code_system
            .and_then(|i| TABLES.code_systems.get(i))
            .is_none_or(|cs| cs.case_sensitive)
    }

    /// Per group, code → index into the expansion. A case-insensitive group holds each code as
    /// given and lower-cased, so that an exact code is found without allocating.
    fn members(&self) -> &[FastMap<Box<str>, usize>] {
        self.index.get_or_init(|| {
            let Some(expansion) = &self.expansion else {
                return Vec::new();
            };
            self.groups
                .iter()
                .map(|group| {
                    let sensitive = self.case_sensitive(group);
                    let mut map = FastMap::default();
                    for i in group.range.clone() {
                        if let Some(c) = expansion.get(i) {
                            map.entry(Box::from(c.code)).or_insert(i);
                            if !sensitive {
                                map.entry(c.code.to_lowercase().into_boxed_str())
                                    .or_insert(i);
                            }
                        }
                    }
                    map
                })
                .collect()
        })
    }

    /// The member of group `g` with this code, if any.
    fn find(&self, g: usize, code: &str) -> Option<&Concept> {
        let group = self.groups.get(g)?;
        let members = self.members().get(g)?;
        let hit = match members.get(code) {
            Some(i) => *i,
            None if !self.case_sensitive(group) => *lowered(code, |low| members.get(low))?,
            None => return None,
        };
        self.expansion.as_ref()?.get(hit)
    }

    /// Is `code` (of `system`) in this value set? With no system (a `code` element) any system of
    /// the value set may hold it. A system the value set does not draw from is `Unknown`: the
    /// conservative answer, since only systems we can enumerate are judged.
    pub fn contains(&self, system: Option<&str>, code: &str) -> Membership {
        if self.expansion.is_none() {
            return Membership::Unknown;
        }
        let mut judged = false;
        for (g, group) in self.groups.iter().enumerate() {
            if system.is_some_and(|s| s != group.system) {
                continue;
            }
            judged = true;
            if self.find(g, code).is_some() {
                return Membership::In;
            }
        }
        // With no system every group was judged (an empty value set holds nothing).
        if judged || system.is_none() {
            Membership::NotIn
        } else {
            Membership::Unknown
        }
    }

    /// The member with this system and code, as it is in the expansion (its display).
    pub fn concept(&self, system: &str, code: &str) -> Option<&Concept> {
        let g = self.groups.iter().position(|g| g.system == system)?;
        self.find(g, code)
    }
}
