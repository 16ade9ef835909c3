//! The SQL of a search, built from a parsed [`SearchQuery`](super::query::SearchQuery): `FROM ...
//! WHERE` over the current resources of one type, each filter an `EXISTS` (or an id set) over the
//! blind index tables, the caller's reach ([`Plan`]) applied to every resource a search touches
//! (matches, chained targets, `_has` sources). Values are blinded with the index keys before they
//! are bound; nothing here runs a query.

use super::index::{self, Class, IndexKeys, HIGHEST, LOWEST, MAX_PREFIX};
use super::params::{self, Kind};
use super::query::{BadSearch, Filter, Modifier, SearchQuery, SortKind};
use crate::access::policy::{Plan, SqlReach};
use crate::fhir::reference::SearchTarget;
use sqlx::{Postgres, QueryBuilder};

pub(crate) fn push_sort_value(
    qb: &mut QueryBuilder<'static, Postgres>,
    kind: SortKind,
    v: f64,
    id: &str,
) {
    match kind {
        SortKind::Id => {
            qb.push_bind(id.to_string());
        }
        _ => {
            qb.push_bind(v);
        }
    }
}

/// Builds the SQL of a search: `FROM ... WHERE` over the current resources of one type, each filter
/// an `EXISTS` over the index tables.
pub(crate) struct Builder<'k> {
    pub(crate) qb: QueryBuilder<'static, Postgres>,
    pub(crate) keys: &'k IndexKeys,
    pub(crate) now_ms: i64,
    pub(crate) alias: usize,
    /// Writing a parameter as the set of ids it matches (`(SELECT a.id FROM ...)`) rather than as
    /// an `EXISTS` test of one resource.
    pub(crate) as_set: bool,
    /// Every filter is an id set (see [`Builder::push_matches`]): index scans intersected, then
    /// primary-key lookups, a plan whose shape no value changes, so the statement is prepared once
    /// per connection and reused. A statement with `EXISTS` tests is planned for each search's own
    /// values instead: a generic plan blind to how common a code is or how large a patient's record
    /// is was measured a hundred times slower.
    pub(crate) reusable: bool,
    /// What the caller may see ([`Plan`]), applied to every resource a search touches: its
    /// matches, chained targets and `_has` sources.
    pub(crate) reach: SqlReach,
    pub(crate) sees_everything: bool,
    pub(crate) hidden_labels: Vec<&'static str>,
}

impl<'k> Builder<'k> {
    pub(crate) fn new(keys: &'k IndexKeys, now_ms: i64, plan: &Plan) -> Builder<'k> {
        Builder {
            qb: QueryBuilder::new(""),
            keys,
            now_ms,
            alias: 0,
            as_set: false,
            reusable: false,
            reach: plan.sql_lists(),
            sees_everything: plan.sees_everything(),
            hidden_labels: plan.hidden_labels(),
        }
    }

    /// ` AND` resource row `h` (of `resources`) is one the caller may see: its compartment and
    /// type within the plan, and no security label above the caller's ceiling (by the blind index
    /// of `_security`).
    pub(crate) fn push_reach(&mut self, h: &str, rt: &str) -> Result<(), BadSearch> {
        self.push_compartments(h);
        self.push_labels(h, rt)
    }

    /// ` AND` row `h` is in a compartment, and of a type there, that the plan opens — its key
    /// scope's and every other patient compartment it is in (the `_compartment` rows of its
    /// index, [`crate::fhir::reference::patient_compartments`]).
    pub(crate) fn push_compartments(&mut self, h: &str) {
        if !self.sees_everything {
            self.push_compartment_case(&format!("{h}.compartment"), &format!("{h}.resource_type"));
            let e = self.next_alias();
            self.qb.push(format!(
                " AND NOT EXISTS (SELECT 1 FROM search_ref {e} WHERE {e}.resource_type = \
                 {h}.resource_type AND {e}.id = {h}.id AND {e}.param = '_compartment' AND NOT \
                 (true"
            ));
            self.push_compartment_case(
                &format!("('Patient/' || {e}.target_id)"),
                &format!("{h}.resource_type"),
            );
            self.qb.push("))");
        }
    }

    /// ` AND` compartment `c` (a key scope, or NULL outside any) is open for type `rt` in the plan.
    pub(crate) fn push_compartment_case(&mut self, c: &str, rt: &str) {
        {
            let pair = format!("({c} || '|' || {rt})");
            self.qb.push(format!(" AND (CASE WHEN {c} IS NULL THEN "));
            self.qb.push_bind(self.reach.others);
            self.qb.push(format!(" WHEN {c} = ANY("));
            self.qb.push_bind(self.reach.decided.clone());
            self.qb.push(format!(") THEN (({c} = ANY("));
            self.qb.push_bind(self.reach.open.clone());
            self.qb.push(format!(") AND NOT {pair} = ANY("));
            self.qb.push_bind(self.reach.closed_typed.clone());
            self.qb.push(format!(")) OR {pair} = ANY("));
            self.qb.push_bind(self.reach.open_typed.clone());
            self.qb.push(")) ELSE ");
            self.qb.push_bind(self.reach.default);
            self.qb.push(" END)");
        }
    }

    /// ` AND` row `h` (of type `rt`) carries no security label above the caller's ceiling.
    pub(crate) fn push_labels(&mut self, h: &str, rt: &str) -> Result<(), BadSearch> {
        if !self.hidden_labels.is_empty() {
            let mut hashes = Vec::new();
            for code in self.hidden_labels.clone() {
                let value = format!("{}|{code}", crate::access::policy::CONFIDENTIALITY);
                hashes.extend(self.token_query("_security", &Modifier::None, &value)?);
            }
            // The labelled resources of the type are found once per statement (few, as a rule)
            // and each row is looked up among them, rather than probing the index per row.
            let l = self.next_alias();
            self.qb.push(format!(
                " AND {h}.id NOT IN (SELECT {l}.id FROM search_hash {l} WHERE {l}.resource_type = "
            ));
            self.qb.push_bind(rt.to_string());
            self.qb
                .push(format!(" AND {l}.param = '_security' AND {l}.h = ANY("));
            self.qb.push_bind(hashes);
            self.qb.push("))");
        }
        Ok(())
    }

    pub(crate) fn next_alias(&mut self) -> String {
        self.alias += 1;
        format!("x{}", self.alias)
    }

    /// Open `[NOT] EXISTS (SELECT 1 FROM table a WHERE` the row belongs to resource `id` of `rt` and
    /// parameter `code`; the caller adds its conditions and closes the parenthesis. Returns `a`.
    ///
    /// Building a set ([`Builder::as_set`]), it opens `(SELECT a.id FROM table a WHERE` the row is
    /// of `rt` and `code` instead: the same conditions, closed the same way, give the ids matched.
    pub(crate) fn open_exists(
        &mut self,
        negate: bool,
        table: &str,
        rt: &str,
        id: &str,
        code: &str,
    ) -> String {
        let a = self.next_alias();
        if self.as_set {
            self.qb.push(format!(
                "(SELECT {a}.id FROM {table} {a} WHERE {a}.resource_type = "
            ));
            self.qb.push_bind(rt.to_string());
        } else {
            self.qb.push(if negate { "NOT EXISTS" } else { "EXISTS" });
            self.qb.push(format!(
                " (SELECT 1 FROM {table} {a} WHERE {a}.resource_type = "
            ));
            self.qb.push_bind(rt.to_string());
            self.qb.push(format!(" AND {a}.id = {id}"));
        }
        self.qb.push(format!(" AND {a}.param = "));
        self.qb.push_bind(code.to_string());
        a
    }

    /// `SELECT m.id, m.version_id FROM resources m ...`: the current resources matching every
    /// filter, only those sealed in the caller's compartment for a patient-context caller.
    ///
    /// Positive parameter filters (`patient=X`, `code=Y`: the common case) are read as sets of ids
    /// from their index rows and intersected, each an index-only scan planned on its own; only the
    /// ids in every set are looked up in `resources`. (Index rows exist for current resources only:
    /// a delete clears them.) The other filters test each of those resources with `EXISTS`.
    pub(crate) fn push_matches(&mut self, query: &SearchQuery) -> Result<(), BadSearch> {
        let rt = query.resource_type.as_str();
        let (sets, tests): (Vec<&Filter>, Vec<&Filter>) = query.filters.iter().partition(
            |f| matches!(f, Filter::Param { modifier, .. } if *modifier != Modifier::Not),
        );
        self.reusable = tests.is_empty();
        self.qb.push("SELECT m.id, m.version_id FROM ");
        // A compartment search's compartment is one more set: the resources sealed under the
        // patient's key scope and those whose index names the patient among the other
        // compartments they are in (`_compartment`), by the same function that gives the key
        // scope ([`crate::fhir::reference::access_compartments`]).
        let compartment = query.compartment.as_ref().map(|p| p.as_str());
        if !sets.is_empty() || compartment.is_some() {
            // INTERSECT returns each id once; one set alone may hold an id twice.
            let single = sets.len() + usize::from(compartment.is_some()) == 1;
            self.qb.push(if single {
                "(SELECT DISTINCT i.id FROM ("
            } else {
                "("
            });
            self.as_set = true;
            for (i, f) in sets.iter().enumerate() {
                if i > 0 {
                    self.qb.push(" INTERSECT ");
                }
                self.filter(rt, "", f)?;
            }
            self.as_set = false;
            if let Some(patient) = compartment {
                if !sets.is_empty() {
                    self.qb.push(" INTERSECT ");
                }
                let (c, e) = (self.next_alias(), self.next_alias());
                self.qb.push(format!(
                    "(SELECT {c}.id FROM resources {c} WHERE {c}.resource_type = "
                ));
                self.qb.push_bind(rt.to_string());
                self.qb.push(format!(" AND {c}.compartment = "));
                self.qb.push_bind(format!("Patient/{patient}"));
                self.qb.push(format!(
                    " UNION SELECT {e}.id FROM search_ref {e} WHERE {e}.resource_type = "
                ));
                self.qb.push_bind(rt.to_string());
                self.qb.push(format!(
                    " AND {e}.param = '_compartment' AND {e}.target_type = 'Patient' AND \
                     {e}.target_id = "
                ));
                self.qb.push_bind(patient.to_string());
                self.qb.push(")");
            }
            self.qb.push(if single { ") i) ids" } else { ") ids" });
            self.qb.push(" JOIN resources m ON m.resource_type = ");
            self.qb.push_bind(rt.to_string());
            self.qb.push(" AND m.id = ids.id");
        } else {
            self.qb.push("resources m");
        }
        self.qb.push(" WHERE m.resource_type = ");
        self.qb.push_bind(rt.to_string());
        self.qb.push(" AND NOT m.deleted");
        self.push_reach("m", rt)?;
        for f in tests {
            self.qb.push(" AND ");
            self.filter(rt, "m.id", f)?;
        }
        Ok(())
    }

    pub(crate) fn sort_expr(&mut self, rt: &str, kind: SortKind, code: &str, descending: bool) {
        match kind {
            SortKind::Id => {
                self.qb.push("h.id");
            }
            SortKind::LastUpdated => {
                self.qb
                    .push("(extract(epoch FROM v.last_updated) * 1000)::float8");
            }
            _ => {
                let (agg, missing) = if descending {
                    ("max(s.hi)", LOWEST)
                } else {
                    ("min(s.lo)", HIGHEST)
                };
                self.qb.push(format!(
                    "COALESCE((SELECT {agg} FROM search_range s WHERE s.resource_type = "
                ));
                self.qb.push_bind(rt.to_string());
                self.qb
                    .push(" AND s.id = h.id AND s.comp IS NULL AND s.param = ");
                self.qb.push_bind(code.to_string());
                self.qb.push(format!("), {missing:e})"));
            }
        }
    }

    pub(crate) fn filter(&mut self, rt: &str, id: &str, f: &Filter) -> Result<(), BadSearch> {
        match f {
            Filter::Id(ids) => {
                self.qb.push(format!("{id} = ANY("));
                self.qb.push_bind(ids.clone());
                self.qb.push(")");
            }
            Filter::LastUpdated(values) => {
                let a = self.next_alias();
                self.qb.push(format!(
                    "EXISTS (SELECT 1 FROM resources {a}h JOIN resource_versions {a}v
                       ON {a}v.resource_type = {a}h.resource_type AND {a}v.id = {a}h.id
                      AND {a}v.version_id = {a}h.version_id
                    WHERE {a}h.resource_type = "
                ));
                self.qb.push_bind(rt.to_string());
                self.qb.push(format!(" AND {a}h.id = {id} AND ("));
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        self.qb.push(" OR ");
                    }
                    let range = crate::fhir::date_search_range(value).map_err(bad)?;
                    self.qb.push(format!("(({a}v.last_updated >= COALESCE("));
                    self.qb.push_bind(range.lo);
                    self.qb.push(format!(
                        "::timestamptz, '-infinity')) AND ({a}v.last_updated < COALESCE("
                    ));
                    self.qb.push_bind(range.hi);
                    self.qb.push("::timestamptz, 'infinity'))) <> ");
                    self.qb.push_bind(range.negate);
                }
                self.qb.push("))");
            }
            Filter::Missing { code, missing } => {
                if code == "_id" || code == "_lastUpdated" {
                    self.qb.push(if *missing { "false" } else { "true" });
                    return Ok(());
                }
                let param = params::lookup(rt, code)
                    .ok_or_else(|| bad(format!("unknown search parameter '{code}'")))?;
                self.present(rt, id, param, !*missing);
            }
            Filter::Param {
                param,
                modifier,
                values,
            } => self.param(rt, id, param, modifier, values)?,
            Filter::Chain {
                code,
                targets,
                inner,
            } => {
                let a = self.next_alias();
                self.qb.push(format!(
                    "EXISTS (SELECT 1 FROM search_ref {a} JOIN resources {a}h
                       ON {a}h.resource_type = {a}.target_type AND {a}h.id = {a}.target_id
                      AND NOT {a}h.deleted
                    WHERE {a}.resource_type = "
                ));
                self.qb.push_bind(rt.to_string());
                self.qb.push(format!(" AND {a}.id = {id} AND {a}.param = "));
                self.qb.push_bind(code.clone());
                // A chain never looks into a resource the caller may not see.
                self.push_compartments(&format!("{a}h"));
                self.qb.push(" AND (");
                for (i, t) in targets.iter().enumerate() {
                    if i > 0 {
                        self.qb.push(" OR ");
                    }
                    self.qb.push(format!("({a}.target_type = "));
                    self.qb.push_bind(t.clone());
                    self.push_labels(&format!("{a}h"), t)?;
                    self.qb.push(" AND ");
                    self.filter(t, &format!("{a}.target_id"), inner)?;
                    self.qb.push(")");
                }
                self.qb.push("))");
            }
            Filter::Has {
                source,
                code,
                inner,
            } => {
                let a = self.next_alias();
                self.qb.push(format!(
                    "EXISTS (SELECT 1 FROM search_ref {a} JOIN resources {a}h
                       ON {a}h.resource_type = {a}.resource_type AND {a}h.id = {a}.id
                      AND NOT {a}h.deleted
                    WHERE {a}.resource_type = "
                ));
                self.qb.push_bind(source.to_string());
                self.qb.push(format!(" AND {a}.param = "));
                self.qb.push_bind(code.clone());
                self.qb.push(format!(" AND {a}.target_type = "));
                self.qb.push_bind(rt.to_string());
                self.qb.push(format!(" AND {a}.target_id = {id}"));
                // Nor does `_has`: only sources the caller may see count.
                self.push_reach(&format!("{a}h"), source.as_str())?;
                self.qb.push(" AND ");
                self.filter(source.as_str(), &format!("{a}.id"), inner)?;
                self.qb.push(")");
            }
        }
        Ok(())
    }

    /// Whether resource `id` has (or, `!present`, lacks) any value of `param`: a row of its
    /// table. A union has a value when one of its parts has.
    pub(crate) fn present(
        &mut self,
        rt: &str,
        id: &str,
        param: &params::SearchParam,
        present: bool,
    ) {
        if !param.union_of.is_empty() {
            self.qb.push(if present { "(" } else { "NOT (" });
            for (i, part) in param.union_of.iter().enumerate() {
                if i > 0 {
                    self.qb.push(" OR ");
                }
                if let Some(part) = params::lookup(rt, part) {
                    self.present(rt, id, part, true);
                } else {
                    self.qb.push("false");
                }
            }
            self.qb.push(")");
            return;
        }
        let second = param.components.get(1).map(|c| c.kind);
        let table = match (param.kind, second) {
            (Kind::Reference, _) => "search_ref",
            (Kind::Date | Kind::Number | Kind::Quantity, _) => "search_range",
            (Kind::Composite, Some(Kind::Date | Kind::Number | Kind::Quantity)) => "search_range",
            _ => "search_hash",
        };
        self.open_exists(!present, table, rt, id, &param.code);
        self.qb.push(")");
    }

    /// An indexed parameter: an `EXISTS` over its table, the OR-list inside.
    pub(crate) fn param(
        &mut self,
        rt: &str,
        id: &str,
        param: &params::SearchParam,
        modifier: &Modifier,
        values: &[String],
    ) -> Result<(), BadSearch> {
        let code = param.code.as_str();
        if !param.union_of.is_empty() {
            // Any part matching; `:not` is no part matching.
            let negate = *modifier == Modifier::Not;
            let inner = if negate { &Modifier::None } else { modifier };
            self.qb.push(if negate { "NOT (" } else { "(" });
            for (i, part) in param.union_of.iter().enumerate() {
                if i > 0 {
                    self.qb.push(if self.as_set { " UNION " } else { " OR " });
                }
                let part = params::lookup(rt, part).ok_or(BadSearch(
                    "a composite parameter names a component this server does not know".into(),
                ))?;
                self.param(rt, id, part, inner, values)?;
            }
            self.qb.push(")");
            return Ok(());
        }
        match param.kind {
            Kind::Reference => {
                let a = self.open_exists(false, "search_ref", rt, id, code);
                self.qb.push(" AND (");
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        self.qb.push(" OR ");
                    }
                    let (t, target_id) = reference_value(param, modifier, value)?;
                    self.qb.push(format!("({a}.target_id = "));
                    self.qb.push_bind(target_id);
                    if let Some(t) = t {
                        self.qb.push(format!(" AND {a}.target_type = "));
                        self.qb.push_bind(t);
                    }
                    self.qb.push(")");
                }
                self.qb.push("))");
            }
            Kind::Date | Kind::Number | Kind::Quantity => {
                let a = self.open_exists(false, "search_range", rt, id, code);
                self.qb.push(format!(" AND {a}.comp IS NULL AND ("));
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        self.qb.push(" OR ");
                    }
                    self.range_test(&a, code, param.kind, value)?;
                }
                self.qb.push("))");
            }
            Kind::Composite => {
                let second = param.components[1].kind;
                if matches!(second, Kind::Token | Kind::String) {
                    let mut hashes = Vec::new();
                    for value in values {
                        let (first, rest) = split_composite(value)?;
                        for h1 in self.token_query(code, &Modifier::None, first)? {
                            let seconds = match second {
                                Kind::Token => self.token_query(code, &Modifier::None, rest)?,
                                _ => vec![self.string_query(code, &Modifier::None, rest)],
                            };
                            for h2 in seconds {
                                let pair = [h1.as_slice(), h2.as_slice()].concat();
                                hashes.push(self.keys.blind_bytes(Class::Token, code, "x", &pair));
                            }
                        }
                    }
                    self.hash_exists(rt, id, code, hashes, false, false);
                } else {
                    let a = self.open_exists(false, "search_range", rt, id, code);
                    self.qb.push(" AND (");
                    for (i, value) in values.iter().enumerate() {
                        if i > 0 {
                            self.qb.push(" OR ");
                        }
                        let (first, rest) = split_composite(value)?;
                        let firsts = self.token_query(code, &Modifier::None, first)?;
                        self.qb.push(format!("({a}.comp = ANY("));
                        self.qb.push_bind(firsts);
                        self.qb.push(") AND ");
                        self.range_test(&a, code, second, rest)?;
                        self.qb.push(")");
                    }
                    self.qb.push("))");
                }
            }
            Kind::String | Kind::Token | Kind::Uri => {
                let mut hashes = Vec::new();
                for value in values {
                    match param.kind {
                        Kind::String => hashes.push(self.string_query(code, modifier, value)),
                        Kind::Token => hashes.extend(self.token_query(code, modifier, value)?),
                        _ => hashes.extend(self.uri_query(code, modifier, value)),
                    }
                }
                // Starts-with searches go through the prefix dictionary.
                let by_prefix = match param.kind {
                    Kind::String => *modifier != Modifier::Exact,
                    Kind::Token => *modifier == Modifier::Text,
                    _ => *modifier == Modifier::Below,
                };
                let negate = *modifier == Modifier::Not;
                self.hash_exists(rt, id, code, hashes, negate, by_prefix);
            }
        }
        Ok(())
    }

    /// `[NOT] EXISTS` a `search_hash` row of parameter `code` with one of `hashes`, or (`by_prefix`)
    /// with a value one of `hashes` leads to in the prefix dictionary.
    pub(crate) fn hash_exists(
        &mut self,
        rt: &str,
        id: &str,
        code: &str,
        hashes: Vec<Vec<u8>>,
        negate: bool,
        by_prefix: bool,
    ) {
        let a = self.open_exists(negate, "search_hash", rt, id, code);
        if by_prefix {
            self.qb.push(format!(
                " AND {a}.h IN (SELECT d.whole FROM search_prefix d WHERE d.prefix = ANY("
            ));
            self.qb.push_bind(hashes);
            self.qb.push(")))");
        } else {
            self.qb.push(format!(" AND {a}.h = ANY("));
            self.qb.push_bind(hashes);
            self.qb.push("))");
        }
    }

    pub(crate) fn string_query(&self, code: &str, modifier: &Modifier, value: &str) -> Vec<u8> {
        if *modifier == Modifier::Exact {
            return self.keys.blind(Class::String, code, "e", value);
        }
        let n = index::normalise(value);
        let prefix: String = n.chars().take(MAX_PREFIX).collect();
        self.keys.blind(Class::String, code, "p", &prefix)
    }

    pub(crate) fn token_query(
        &self,
        code: &str,
        modifier: &Modifier,
        value: &str,
    ) -> Result<Vec<Vec<u8>>, BadSearch> {
        let k = |kind: &str, v: &str| self.keys.blind(Class::Token, code, kind, v);
        Ok(match modifier {
            Modifier::Text => {
                let n = index::normalise(value);
                let prefix: String = n.chars().take(MAX_PREFIX).collect();
                vec![k("t", &prefix)]
            }
            Modifier::OfType => {
                if value.split('|').count() != 3 {
                    return Err(bad(format!(
                        "'{code}:of-type' takes type-system|type-code|value"
                    )));
                }
                vec![k("ot", value)]
            }
            _ => match split_unescaped(value, '|') {
                Some((system, code_part)) => match (system.is_empty(), code_part.is_empty()) {
                    (true, true) => return Err(bad(format!("'{code}' has an empty token"))),
                    (true, false) => vec![k("nc", &unescape(code_part))],
                    (false, true) => vec![k("s", &unescape(system))],
                    (false, false) => vec![k(
                        "sc",
                        &format!("{}|{}", unescape(system), unescape(code_part)),
                    )],
                },
                None => vec![k("c", &unescape(value))],
            },
        })
    }

    pub(crate) fn uri_query(&self, code: &str, modifier: &Modifier, value: &str) -> Vec<Vec<u8>> {
        let k = |kind: &str, v: &str| self.keys.blind(Class::Uri, code, kind, v);
        match modifier {
            Modifier::Below => vec![k("b", value)],
            Modifier::Above => index::uri_prefixes(value)
                .into_iter()
                .map(|p| k("e", p))
                .collect(),
            _ => vec![k("e", value)],
        }
    }

    /// One prefixed date, number or quantity value against range row `a`.
    pub(crate) fn range_test(
        &mut self,
        a: &str,
        code: &str,
        kind: Kind,
        value: &str,
    ) -> Result<(), BadSearch> {
        let (prefix, rest) = match value.get(..2) {
            Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
                (p, &value[2..])
            }
            _ => ("eq", value),
        };
        let (qlo, qhi, point) = match kind {
            Kind::Date => {
                let (lo, hi) = index::date_range(rest).ok_or_else(|| {
                    // The value is not echoed: a search value may be PHI (a birth date).
                    bad(format!(
                        "a value of '{code}' is not a FHIR date or dateTime"
                    ))
                })?;
                let (slo, shi) = self.keys.shift(code, Some(lo), Some(hi));
                (slo, shi, None)
            }
            _ => {
                let (number, unit) = match rest.split_once('|') {
                    Some((n, u)) => (n, Some(u)),
                    None => (rest, None),
                };
                if unit.is_some() && kind == Kind::Number {
                    return Err(bad(format!(
                        "a value of '{code}' is a number, without a unit"
                    )));
                }
                if let Some(unit) = unit {
                    let (system, unit_code) = unit.split_once('|').unwrap_or(("", unit));
                    if unit_code.contains('|') {
                        return Err(bad(format!(
                            "a value of '{code}' is [prefix]number|system|code: it has too many '|'"
                        )));
                    }
                    if !unit_code.is_empty() {
                        if system.is_empty() {
                            self.qb.push(format!("{a}.unit_c = "));
                            self.qb.push_bind(self.keys.blind(
                                Class::Quantity,
                                code,
                                "c",
                                unit_code,
                            ));
                        } else {
                            self.qb.push(format!("{a}.unit_sc = "));
                            self.qb.push_bind(self.keys.blind(
                                Class::Quantity,
                                code,
                                "sc",
                                &format!("{system}|{unit_code}"),
                            ));
                        }
                        self.qb.push(" AND ");
                    }
                }
                let (v, half) = parse_number(number)
                    .ok_or_else(|| bad(format!("a value of '{code}' is not a number")))?;
                (v - half, v + half, Some(v))
            }
        };
        let (lo, hi) = (format!("{a}.lo"), format!("{a}.hi"));
        match (prefix, point) {
            // Dates: the value's range against the target's range (R4 search.html 3.1.1.4.2).
            ("eq", None) => self.cmp2(&lo, ">=", qlo, "AND", &hi, "<=", qhi),
            ("ne", None) => self.cmp2(&lo, "<", qlo, "OR", &hi, ">", qhi),
            ("gt", None) => self.cmp1(&hi, ">", qhi),
            ("lt", None) => self.cmp1(&lo, "<", qlo),
            ("ge", None) => self.cmp2(&hi, ">", qhi, "OR", &lo, ">=", qlo),
            ("le", None) => self.cmp2(&lo, "<", qlo, "OR", &hi, "<=", qhi),
            ("sa", None) => self.cmp1(&lo, ">", qhi),
            ("eb", None) => self.cmp1(&hi, "<", qlo),
            ("ap", None) => {
                let gap = ((self.now_ms as f64 + self.keys.date_offset(code)) - qlo).abs() * 0.1;
                self.cmp2(&lo, "<=", qhi + gap, "AND", &hi, ">=", qlo - gap)
            }
            // Numbers: the target value against the search value's precision range.
            ("eq", Some(_)) => self.cmp2(&lo, ">=", qlo, "AND", &hi, "<", qhi),
            ("ne", Some(_)) => self.cmp2(&lo, "<", qlo, "OR", &hi, ">=", qhi),
            ("gt" | "sa", Some(v)) => self.cmp1(&hi, ">", v),
            ("lt" | "eb", Some(v)) => self.cmp1(&lo, "<", v),
            ("ge", Some(v)) => self.cmp1(&hi, ">=", v),
            ("le", Some(v)) => self.cmp1(&lo, "<=", v),
            (_, Some(v)) => {
                let gap = (v * 0.1).abs();
                self.cmp2(&lo, "<=", v + gap, "AND", &hi, ">=", v - gap)
            }
            _ => return Err(bad("unknown prefix")),
        }
        Ok(())
    }

    pub(crate) fn cmp1(&mut self, col: &str, op: &str, v: f64) {
        self.qb.push(format!("{col} {op} "));
        self.qb.push_bind(v);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cmp2(
        &mut self,
        c1: &str,
        op1: &str,
        v1: f64,
        join: &str,
        c2: &str,
        op2: &str,
        v2: f64,
    ) {
        self.qb.push("(");
        self.cmp1(c1, op1, v1);
        self.qb.push(format!(" {join} "));
        self.cmp1(c2, op2, v2);
        self.qb.push(")");
    }
}

/// A number and half its precision: `100` is 99.5..100.5, `1.50` is 1.495..1.505.
pub(crate) fn parse_number(s: &str) -> Option<(f64, f64)> {
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (s, 0),
    };
    let decimals = mantissa
        .split_once('.')
        .map_or(0, |(_, f)| i32::try_from(f.len()).unwrap_or(0));
    Some((v, 0.5 * 10f64.powi(exp - decimals)))
}

pub(crate) fn split_composite(value: &str) -> Result<(&str, &str), BadSearch> {
    split_unescaped(value, '$').ok_or_else(|| bad("a composite value is first$second"))
}

/// Split at the first `sep` not escaped with `\`.
pub(crate) fn split_unescaped(value: &str, sep: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            return Some((&value[..i], &value[i + c.len_utf8()..]));
        }
    }
    None
}

pub(crate) fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A reference search value as (type, id-or-url), read by the same grammar as stored references
/// ([`SearchTarget`]).
pub(crate) fn reference_value(
    param: &params::SearchParam,
    modifier: &Modifier,
    value: &str,
) -> Result<(Option<String>, String), BadSearch> {
    let target = SearchTarget::parse(value).map_err(|e| {
        bad(format!(
            "the value of '{}' is not a reference: {e}",
            param.code
        ))
    })?;
    match target {
        SearchTarget::Resource {
            resource_type: Some(t),
            id,
        } => {
            if let Modifier::Type(want) = modifier {
                if want != t.as_str() {
                    return Err(bad(format!(
                        "'{}:{want}' was given a reference to a {t}",
                        param.code
                    )));
                }
            }
            Ok((Some(t.to_string()), id.to_string()))
        }
        // A canonical or external URL: compared whole (without a |version).
        SearchTarget::Url(url) => {
            let plain = url.split('|').next().unwrap_or(url);
            Ok((Some(String::new()), plain.to_string()))
        }
        SearchTarget::Resource {
            resource_type: None,
            id,
        } => {
            let t = match modifier {
                Modifier::Type(t) => Some(t.clone()),
                _ if param.targets.len() == 1 => Some(param.targets[0].clone()),
                _ => None,
            };
            Ok((t, id.to_string()))
        }
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> BadSearch {
    BadSearch(msg.into())
}
