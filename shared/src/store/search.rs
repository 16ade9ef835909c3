//! Search over the blind index: SQL built from a parsed [`SearchQuery`], keyset paging with sealed
//! cursors, `_include`/`_revinclude`, and the index writes that keep the index in step with the
//! resources (inside the write's transaction).

use super::audited::{Event, Recorded};
use super::{DekRow, Store, StoreError, StoredResource};
use crate::access::policy::Plan;
use crate::access::{AccessContext, Permission};
use crate::audit::Interaction;
use crate::crypto::{self, Dek};
use crate::fhir::ResourceType;
use crate::search::cursor::{open_cursor, query_digest, seal_cursor, Cursor};
use crate::search::index::{self, Class, IndexKeys};
use crate::search::params::{self, Kind};
use crate::search::query::{BadSearch, Include, SearchQuery, SortKind, Summary, Total};
use crate::search::sql::{push_sort_value, Builder};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use std::collections::HashSet;
use std::sync::Arc;

/// The keys of the index classes and the key that seals paging cursors.
pub(crate) struct SearchKeys {
    pub(crate) index: IndexKeys,
    cursor: Dek,
}

/// One page of search results.
pub struct SearchResult {
    pub matches: Vec<StoredResource>,
    pub included: Vec<StoredResource>,
    pub total: Option<u64>,
    pub next: Option<String>,
    pub previous: Option<String>,
}

/// Sorting on decrypted values is done in memory, for at most this many matches.
const MAX_VALUE_SORT: usize = 2000;
/// `_include:iterate` stops after this many rounds, and includes stop at this many resources.
const MAX_INCLUDE_ROUNDS: usize = 4;
const MAX_INCLUDED: usize = 1000;

impl From<BadSearch> for StoreError {
    fn from(e: BadSearch) -> StoreError {
        StoreError::BadRequest(e.0)
    }
}

/// A page of matches, its links and the number of all matches (if known without a count).
struct Page {
    matches: Vec<StoredResource>,
    next: Option<String>,
    previous: Option<String>,
    total: Option<u64>,
}

/// The scopes of a search: a search of its type, and of every type its chains and `_has`
/// filters match on. The one check both entry points (searches and conditional matches) pass.
pub(super) fn authorize_search(
    ctx: &AccessContext,
    query: &SearchQuery,
    this_year: i32,
) -> Result<(), StoreError> {
    ctx.check(query.resource_type.as_str(), Permission::Search)?;
    for joined in query.joined_types() {
        ctx.check(joined, Permission::Search)?;
    }
    // What analytics callers receive is de-identified; so is what they may search by.
    if ctx.role == crate::access::Role::Analytics {
        if let Some(param) = query.reidentifying(this_year) {
            return Err(
                crate::access::Denied::Reidentifying(format!("searching by {param}")).into(),
            );
        }
    }
    Ok(())
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::BadRequest(msg.into())
}

impl Store {
    pub(crate) async fn search_keys(&self) -> Result<Arc<SearchKeys>, StoreError> {
        self.search_keys
            .get_or_try_init(|| async {
                let mut deks = Vec::new();
                for class in Class::ALL {
                    let (_, dek) = self.dek_for_scope(class.scope()).await?;
                    deks.push(Dek::from_bytes(dek.expose()).ok_or(StoreError::Integrity)?);
                }
                let (_, cursor) = self.dek_for_scope("index/cursor").await?;
                let keys: [Dek; 5] = deks.try_into().map_err(|_| StoreError::Integrity)?;
                Ok(Arc::new(SearchKeys {
                    index: IndexKeys::new(keys),
                    cursor: Dek::from_bytes(cursor.expose()).ok_or(StoreError::Integrity)?,
                }))
            })
            .await
            .cloned()
    }

    /// A search: the matching page, narrowed to what the caller may see, with its includes. One
    /// AuditEvent per patient whose data the page returned (IHE BALP), or one for the search when it
    /// returned none.
    pub async fn search(
        &self,
        ctx: &AccessContext,
        query: &SearchQuery,
    ) -> Result<SearchResult, StoreError> {
        // The query as the server understood it (the parameters it used); sealed with the event.
        let text = {
            let mut text = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &query.kept {
                text.append_pair(k, v);
            }
            match &query.compartment {
                Some(patient) => format!(
                    "Patient/{patient}/{}?{}",
                    query.resource_type,
                    text.finish()
                ),
                None => format!("{}?{}", query.resource_type, text.finish()),
            }
        };
        let event = Event {
            query: Some(text),
            patient: ctx.compartment(),
            ..Event::new(Interaction::Search, query.resource_type.to_string())
        };
        // One event per patient whose data the page returned, or one for the search.
        let patients = |r: &SearchResult| {
            let mut patients: Vec<Option<String>> = r
                .matches
                .iter()
                .chain(&r.included)
                .flat_map(|x| {
                    super::reach::compartments_of(
                        x.resource_type,
                        &x.id,
                        x.patient.as_deref(),
                        &x.body,
                    )
                })
                .flatten()
                .map(Some)
                .collect();
            patients.sort();
            patients.dedup();
            if patients.is_empty() {
                patients.push(ctx.compartment());
            }
            Recorded::Here(patients)
        };
        self.audited(
            ctx,
            event,
            async {
                authorize_search(ctx, query, chrono::Datelike::year(&self.clock.now()))?;
                let plan = self.plan(ctx).await?;
                let keys = self.search_keys().await?;
                let digest = query_digest(query);
                let cursor = match &query.cursor {
                    Some(c) => Some(open_cursor(&keys.cursor, c, &digest)?),
                    None => None,
                };
                let now = self.clock.now().timestamp_millis();
                // One transaction for the whole search, under the caller's row-level security, on
                // the replica when it has caught up; it only reads, so it is dropped (rolled back
                // with the connection's next statement).
                let reach = plan.row_reach();
                let (mut tx, on_replica) = self.begin_search(&reach).await?;
                match self
                    .search_in(&mut tx, ctx, &plan, query, &keys, &digest, cursor.clone(), now)
                    .await
                {
                    // A standby may cancel a query that conflicts with what it replays: the
                    // primary answers instead.
                    Err(StoreError::Database(e)) if on_replica => {
                        tracing::warn!(error = %e, "a search failed on the replica; searching the primary");
                        drop(tx);
                        let mut tx = self.begin_with(&reach).await?;
                        self.search_in(&mut tx, ctx, &plan, query, &keys, &digest, cursor, now)
                            .await
                    }
                    page => page,
                }
            }
            .await,
            patients,
        )
        .await
    }

    /// One search page (or count) in `tx`.
    #[allow(clippy::too_many_arguments)]
    async fn search_in(
        &self,
        tx: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        plan: &Plan,
        query: &SearchQuery,
        keys: &SearchKeys,
        digest: &str,
        cursor: Option<Cursor>,
        now: i64,
    ) -> Result<SearchResult, StoreError> {
        if query.summary == Summary::Count {
            return Ok(SearchResult {
                matches: vec![],
                included: vec![],
                total: Some(count_matches(&mut *tx, plan, &keys.index, query, now).await?),
                next: None,
                previous: None,
            });
        }
        let by_value = query.sort.iter().any(|k| k.kind == SortKind::Value);
        let page = if by_value {
            self.page_sorted_in_memory(&mut *tx, plan, query, keys, digest, cursor, now)
                .await?
        } else {
            self.page_by_keyset(&mut *tx, plan, query, keys, digest, cursor, now)
                .await?
        };
        let (matches, next, previous) = (page.matches, page.next, page.previous);
        let total = match (query.total, page.total) {
            (Total::None, _) => None,
            (_, Some(n)) => Some(n),
            // A page past the last match (the data changed under a cursor) counts on its own.
            (_, None) => Some(count_matches(&mut *tx, plan, &keys.index, query, now).await?),
        };
        let included = self.includes(&mut *tx, ctx, plan, query, &matches).await?;
        Ok(SearchResult {
            matches,
            included,
            total,
            next,
            previous,
        })
    }

    /// The id and current version of the most recently written resource matching `query` that
    /// the caller may see (the StructureDefinition a profile URL names), without reading it.
    pub(crate) async fn latest_match(
        &self,
        ctx: &AccessContext,
        query: &SearchQuery,
    ) -> Result<Option<(String, i64)>, StoreError> {
        authorize_search(ctx, query, chrono::Datelike::year(&self.clock.now()))?;
        let plan = self.plan(ctx).await?;
        let keys = self.search_keys().await?;
        let mut b = Builder::new(&keys.index, self.clock.now().timestamp_millis(), &plan);
        b.qb.push("SELECT f.id, f.version_id FROM (");
        b.push_matches(query)?;
        b.qb.push(") f JOIN resource_versions v ON v.resource_type = ");
        b.qb.push_bind(query.resource_type.as_str().to_string());
        b.qb.push(
            " AND v.id = f.id AND v.version_id = f.version_id \
             ORDER BY v.last_updated DESC, f.id LIMIT 1",
        );
        let rows = self
            .fetch_all_for(ctx, b.qb.build().persistent(b.reusable))
            .await?;
        match rows.first() {
            Some(r) => Ok(Some((r.try_get("id")?, r.try_get("version_id")?))),
            None => Ok(None),
        }
    }

    /// The ids of every resource matching a conditional query (for conditional create, update,
    /// delete and references), at most `limit`.
    pub(crate) async fn matching_ids(
        &self,
        ctx: &AccessContext,
        query: &SearchQuery,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        authorize_search(ctx, query, chrono::Datelike::year(&self.clock.now()))?;
        let plan = self.plan(ctx).await?;
        let keys = self.search_keys().await?;
        let mut b = Builder::new(&keys.index, self.clock.now().timestamp_millis(), &plan);
        b.qb.push("SELECT f.id FROM (");
        b.push_matches(query)?;
        b.qb.push(") f LIMIT ");
        b.qb.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self
            .fetch_all_for(ctx, b.qb.build().persistent(b.reusable))
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn page_by_keyset(
        &self,
        conn: &mut sqlx::PgConnection,
        plan: &Plan,
        query: &SearchQuery,
        keys: &SearchKeys,
        digest: &str,
        cursor: Option<Cursor>,
        now: i64,
    ) -> Result<Page, StoreError> {
        let rt = query.resource_type;
        let backwards = cursor.as_ref().is_some_and(|c| c.d == 'p');
        let mut b = Builder::new(&keys.index, now, plan);
        // Every row carries the number of matches: the count costs no second search.
        let total = if query.total == Total::None {
            "NULL::int8"
        } else {
            "(SELECT count(*) FROM found)"
        };
        // The page is cut from the matches (sort values computed on the matches alone), then
        // joined to its versions and keys (only the page's rows are looked up).
        b.qb.push(
            "SELECT p.*, pv.last_updated, pv.sealed, pk.id AS dek_id, pk.scope, pk.wrapped FROM (",
        );
        b.qb.push("WITH found AS MATERIALIZED (");
        b.push_matches(query)?;
        b.qb.push(format!(") SELECT {total} AS total, h.id, h.version_id"));
        for (i, key) in query.sort.iter().enumerate() {
            b.qb.push(", ");
            b.sort_expr(rt.as_str(), key.kind, &key.code, key.descending);
            b.qb.push(format!(" AS s{i}"));
        }
        b.qb.push(" FROM found h");
        if query.sort.iter().any(|k| k.kind == SortKind::LastUpdated) {
            b.qb.push(" JOIN resource_versions v ON v.resource_type = ");
            b.qb.push_bind(rt.as_str());
            b.qb.push(" AND v.id = h.id AND v.version_id = h.version_id");
        }
        b.qb.push(" WHERE true");
        if let Some(c) = &cursor {
            if c.v.len() != query.sort.len() {
                return Err(bad("_page does not belong to this search"));
            }
            // (s0, s1, ..., id) after (or before) the cursor's position, each key in its direction.
            b.qb.push(" AND (");
            for i in 0..=query.sort.len() {
                if i > 0 {
                    b.qb.push(" OR ");
                }
                b.qb.push("(");
                for (j, key) in query.sort.iter().enumerate().take(i) {
                    b.sort_expr(rt.as_str(), key.kind, &key.code, key.descending);
                    b.qb.push(" = ");
                    push_sort_value(&mut b.qb, key.kind, c.v[j], &c.i);
                    b.qb.push(" AND ");
                }
                let ascending = match query.sort.get(i) {
                    Some(key) => !key.descending,
                    None => true,
                };
                let op = if ascending != backwards { " > " } else { " < " };
                match query.sort.get(i) {
                    Some(key) => {
                        b.sort_expr(rt.as_str(), key.kind, &key.code, key.descending);
                        b.qb.push(op);
                        push_sort_value(&mut b.qb, key.kind, c.v[i], &c.i);
                    }
                    None => {
                        b.qb.push("h.id");
                        b.qb.push(op);
                        b.qb.push_bind(c.i.clone());
                    }
                }
                b.qb.push(")");
            }
            b.qb.push(")");
        }
        let order = |table: &str| {
            let mut order = String::from(" ORDER BY ");
            for (i, key) in query.sort.iter().enumerate() {
                let desc = key.descending != backwards;
                order.push_str(&format!(
                    "{table}s{i} {}, ",
                    if desc { "DESC" } else { "ASC" }
                ));
            }
            order.push_str(&format!(
                "{table}id {}",
                if backwards { "DESC" } else { "ASC" }
            ));
            order
        };
        b.qb.push(order(""));
        b.qb.push(" LIMIT ");
        b.qb.push_bind(i64::try_from(query.count + 1).unwrap_or(i64::MAX));
        b.qb.push(") p JOIN resource_versions pv ON pv.resource_type = ");
        b.qb.push_bind(rt.as_str());
        b.qb.push(" AND pv.id = p.id AND pv.version_id = p.version_id");
        b.qb.push(" JOIN data_keys pk ON pk.id = pv.dek_id");
        b.qb.push(order("p."));
        let rows =
            b.qb.build()
                .persistent(b.reusable)
                .fetch_all(&mut *conn)
                .await?;
        let more = rows.len() > query.count;
        let mut page: Vec<(StoredResource, Vec<f64>)> = Vec::with_capacity(query.count);
        for row in rows.iter().take(query.count) {
            let mut vals = Vec::new();
            for (i, key) in query.sort.iter().enumerate() {
                vals.push(match key.kind {
                    SortKind::Id => 0.0,
                    _ => row.try_get::<f64, _>(format!("s{i}").as_str())?,
                });
            }
            page.push((self.open_row(rt, row).await?, vals));
        }
        if backwards {
            page.reverse();
        }
        let seal = |d: char, (r, v): &(StoredResource, Vec<f64>)| {
            seal_cursor(
                &keys.cursor,
                &Cursor {
                    q: digest.to_string(),
                    d,
                    v: v.clone(),
                    i: r.id.clone(),
                    o: 0,
                },
            )
        };
        // Going forwards, a further page exists when we read one row more; going backwards, the
        // page we came from always follows.
        let (has_next, has_prev) = if backwards {
            (true, more)
        } else {
            (more, cursor.is_some())
        };
        let next = if has_next {
            page.last().map(|p| seal('n', p))
        } else {
            None
        };
        let previous = if has_prev {
            page.first().map(|p| seal('p', p))
        } else {
            None
        };
        let total = match rows.first() {
            Some(row) => row
                .try_get::<Option<i64>, _>("total")?
                .map(|n| u64::try_from(n).unwrap_or(0)),
            // No rows: on a first page that means no matches; past it, count on its own.
            None if cursor.is_none() => Some(0),
            None => None,
        };
        Ok(Page {
            matches: page.into_iter().map(|(r, _)| r).collect(),
            next,
            previous,
            total,
        })
    }

    /// Sorting by string, token, uri or reference values needs the decrypted resources: every match
    /// (up to [`MAX_VALUE_SORT`]) is opened and sorted here, and pages are offsets into that order.
    #[allow(clippy::too_many_arguments)]
    async fn page_sorted_in_memory(
        &self,
        conn: &mut sqlx::PgConnection,
        plan: &Plan,
        query: &SearchQuery,
        keys: &SearchKeys,
        digest: &str,
        cursor: Option<Cursor>,
        now: i64,
    ) -> Result<Page, StoreError> {
        let rt = query.resource_type;
        let mut b = Builder::new(&keys.index, now, plan);
        b.push_matches(query)?;
        b.qb.push(" ORDER BY m.id LIMIT ");
        b.qb.push_bind(i64::try_from(MAX_VALUE_SORT + 1).unwrap_or(i64::MAX));
        let rows =
            b.qb.build()
                .persistent(b.reusable)
                .fetch_all(&mut *conn)
                .await?;
        if rows.len() > MAX_VALUE_SORT {
            return Err(bad(format!(
                "sorting by an encrypted parameter is limited to {MAX_VALUE_SORT} matches; narrow \
                 the search or sort by _id, _lastUpdated or a date"
            )));
        }
        let wanted = rows
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("version_id")?)))
            .collect::<Result<Vec<(String, i64)>, sqlx::Error>>()?;
        let mut all = Vec::with_capacity(rows.len());
        for r in self.load_versions(&mut *conn, rt, &wanted).await? {
            let doc: Value = serde_json::from_slice(&r.body).map_err(|_| StoreError::Integrity)?;
            let sort_values: Vec<String> = query
                .sort
                .iter()
                .map(|k| sort_text(rt.as_str(), &k.code, &doc, k.descending))
                .collect();
            all.push((r, sort_values));
        }
        all.sort_by(|(ra, a), (rb, b)| {
            for (i, key) in query.sort.iter().enumerate() {
                let ord = match key.kind {
                    SortKind::Id => ra.id.cmp(&rb.id),
                    SortKind::LastUpdated => ra.last_updated.cmp(&rb.last_updated),
                    _ => a[i].cmp(&b[i]),
                };
                let ord = if key.descending { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            ra.id.cmp(&rb.id)
        });
        let offset = cursor.map_or(0, |c| c.o);
        let page: Vec<StoredResource> = all
            .into_iter()
            .skip(offset)
            .take(query.count)
            .map(|(r, _)| r)
            .collect();
        let at = |o: usize| {
            seal_cursor(
                &keys.cursor,
                &Cursor {
                    q: digest.to_string(),
                    d: 'n',
                    v: vec![],
                    i: String::new(),
                    o,
                },
            )
        };
        let next = (offset + query.count < rows.len()).then(|| at(offset + query.count));
        let previous = (offset > 0).then(|| at(offset.saturating_sub(query.count)));
        Ok(Page {
            matches: page,
            next,
            previous,
            total: Some(rows.len() as u64),
        })
    }

    pub(super) async fn open_row(
        &self,
        resource_type: ResourceType,
        row: &sqlx::postgres::PgRow,
    ) -> Result<StoredResource, StoreError> {
        let id: String = row.try_get("id")?;
        let version_id: i64 = row.try_get("version_id")?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let key = DekRow::from_row(row)?;
        let body = self
            .open_body(resource_type, &id, version_id, &key, &sealed)
            .await?;
        Ok(StoredResource {
            resource_type,
            id,
            version_id,
            last_updated: row.try_get("last_updated")?,
            body,
            patient: super::patient_of(&key.scope),
        })
    }

    /// `_include` and `_revinclude` (with `:iterate`), each resource at most once, never one the
    /// caller may not read.
    async fn includes(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        plan: &Plan,
        query: &SearchQuery,
        matches: &[StoredResource],
    ) -> Result<Vec<StoredResource>, StoreError> {
        if query.includes.is_empty() && query.revincludes.is_empty() {
            return Ok(vec![]);
        }
        let mut seen: HashSet<(String, String)> = matches
            .iter()
            .map(|r| (r.resource_type.to_string(), r.id.clone()))
            .collect();
        let mut out: Vec<StoredResource> = Vec::new();
        let mut frontier: Vec<(String, String)> = seen.iter().cloned().collect();
        for round in 0..MAX_INCLUDE_ROUNDS {
            let mut wanted: Vec<(String, String)> = Vec::new();
            for inc in &query.includes {
                if round > 0 && !inc.iterate {
                    continue;
                }
                wanted.extend(self.include_targets(inc, &frontier).await?);
            }
            for inc in &query.revincludes {
                if round > 0 && !inc.iterate {
                    continue;
                }
                wanted.extend(self.revinclude_sources(inc, &frontier).await?);
            }
            wanted.retain(|w| seen.insert(w.clone()));
            if wanted.is_empty() {
                break;
            }
            let loaded = self.load_current_in(conn, ctx, plan, &wanted).await?;
            frontier = loaded
                .iter()
                .map(|r| (r.resource_type.to_string(), r.id.clone()))
                .collect();
            out.extend(loaded);
            if out.len() >= MAX_INCLUDED {
                out.truncate(MAX_INCLUDED);
                break;
            }
        }
        Ok(out)
    }

    async fn include_targets(
        &self,
        inc: &Include,
        from: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ids: Vec<&str> = from
            .iter()
            .filter(|(t, _)| t == inc.source.as_str())
            .map(|(_, i)| i.as_str())
            .collect();
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let rows = sqlx::query(
            "SELECT DISTINCT target_type, target_id FROM search_ref
              WHERE resource_type = $1 AND id = ANY($2) AND ($3::text IS NULL OR param = $3)
                AND ($4::text IS NULL OR target_type = $4) AND target_type <> ''",
        )
        .bind(inc.source.as_str())
        .bind(&ids)
        .bind(inc.code.as_deref())
        .bind(inc.target.as_deref())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("target_type")?, r.try_get("target_id")?)))
            .collect()
    }

    async fn revinclude_sources(
        &self,
        inc: &Include,
        to: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if to.is_empty() {
            return Ok(vec![]);
        }
        let (types, ids): (Vec<&str>, Vec<&str>) =
            to.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
        let rows = sqlx::query(
            "SELECT DISTINCT r.resource_type, r.id FROM search_ref r
               JOIN unnest($3::text[], $4::text[]) AS t(target_type, target_id)
                 ON r.target_type = t.target_type AND r.target_id = t.target_id
              WHERE r.resource_type = $1 AND ($2::text IS NULL OR r.param = $2)",
        )
        .bind(inc.source.as_str())
        .bind(inc.code.as_deref())
        .bind(&types)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("resource_type")?, r.try_get("id")?)))
            .collect()
    }

    /// The versions `wanted` (`(id, version)` of `resource_type`, found by a search), opened, in
    /// the order asked. Versions never change, so what the search found is what is read.
    async fn load_versions(
        &self,
        conn: &mut sqlx::PgConnection,
        resource_type: ResourceType,
        wanted: &[(String, i64)],
    ) -> Result<Vec<StoredResource>, StoreError> {
        if wanted.is_empty() {
            return Ok(vec![]);
        }
        let (ids, versions): (Vec<&str>, Vec<i64>) =
            wanted.iter().map(|(i, v)| (i.as_str(), *v)).unzip();
        let rows = sqlx::query(
            "SELECT v.id, v.version_id, v.last_updated, v.sealed, k.id AS dek_id, k.scope, k.wrapped
               FROM unnest($2::text[], $3::int8[]) WITH ORDINALITY AS w(id, version_id, n)
               JOIN resource_versions v
                 ON v.resource_type = $1 AND v.id = w.id AND v.version_id = w.version_id
               JOIN data_keys k ON k.id = v.dek_id
              ORDER BY w.n",
        )
        .bind(resource_type.as_str())
        .bind(&ids)
        .bind(&versions)
        .fetch_all(conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.open_row(resource_type, row).await?);
        }
        Ok(out)
    }

    /// The current versions of `wanted` that exist and that the caller may read (inside the
    /// caller's transaction); others are left out silently.
    pub(super) async fn load_current_in(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        plan: &Plan,
        wanted: &[(String, String)],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let readable: Vec<(String, String)> = wanted
            .iter()
            .filter(|(t, _)| ctx.check(t, Permission::Read).is_ok())
            .cloned()
            .collect();
        let mut loaded = self.load_rows(conn, &readable).await?;
        loaded.retain(|r| {
            plan.visible(r.patient.as_deref(), r.resource_type.as_str())
                && super::reach::body_visible(plan, r.resource_type, &r.id, &r.body)
        });
        Ok(loaded)
    }

    /// The current versions of `wanted` that exist, as far as `conn`'s row-level security lets
    /// through (for a caller's transaction, or the store's own to read the policy's consents).
    pub(super) async fn load_rows(
        &self,
        conn: &mut sqlx::PgConnection,
        wanted: &[(String, String)],
    ) -> Result<Vec<StoredResource>, StoreError> {
        if wanted.is_empty() {
            return Ok(vec![]);
        }
        let (types, ids): (Vec<&str>, Vec<&str>) =
            wanted.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
        let rows = sqlx::query(
            "SELECT h.resource_type, h.id, v.version_id, v.last_updated, v.sealed,
                    k.id AS dek_id, k.scope, k.wrapped
               FROM unnest($1::text[], $2::text[]) AS w(resource_type, id)
               JOIN resources h ON h.resource_type = w.resource_type AND h.id = w.id
               JOIN resource_versions v
                 ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
               JOIN data_keys k ON k.id = v.dek_id
              WHERE NOT h.deleted
              ORDER BY h.resource_type, h.id",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let type_name: String = row.try_get("resource_type")?;
            let rt = ResourceType::parse(&type_name).ok_or(StoreError::Integrity)?;
            out.push(self.open_row(rt, row).await?);
        }
        Ok(out)
    }
}

/// The number of all matches of a search.
async fn count_matches(
    conn: &mut sqlx::PgConnection,
    plan: &Plan,
    keys: &IndexKeys,
    query: &SearchQuery,
    now: i64,
) -> Result<u64, StoreError> {
    let mut b = Builder::new(keys, now, plan);
    b.qb.push("SELECT count(*) AS n FROM (");
    b.push_matches(query)?;
    b.qb.push(") f");
    let row = b.qb.build().persistent(b.reusable).fetch_one(conn).await?;
    let n: i64 = row.try_get("n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The first value of a string/token/uri/reference parameter, normalised, for sorting; missing
/// values sort last.
fn sort_text(resource_type: &str, code: &str, doc: &Value, descending: bool) -> String {
    let missing = if descending { "" } else { "\u{10FFFF}" };
    let Some(param) = params::lookup(resource_type, code) else {
        return missing.into();
    };
    let mut found: Vec<String> = Vec::new();
    for path in &param.paths {
        for v in params::evaluate(doc, path) {
            match param.kind {
                Kind::String => found.extend(index::strings(v, &path.datatype)),
                Kind::Token => found.extend(
                    index::tokens(v, &path.datatype)
                        .into_iter()
                        .filter_map(|t| t.code.or(t.text)),
                ),
                Kind::Reference => {
                    if let Some(r) = v.get("reference").and_then(Value::as_str) {
                        found.push(r.to_string());
                    }
                }
                _ => {
                    if let Some(s) = v.as_str() {
                        found.push(s.to_string());
                    }
                }
            }
        }
    }
    let mut found: Vec<String> = found.iter().map(|s| index::normalise(s)).collect();
    found.sort();
    let pick = if descending {
        found.last()
    } else {
        found.first()
    };
    pick.cloned().unwrap_or_else(|| missing.into())
}

impl Store {
    /// Seal a paging position of history or `$everything` (`purpose` binds it to its kind) as
    /// search cursors are: it may name a row the page left out, which the client must not read.
    pub(super) async fn seal_position<T: Serialize>(
        &self,
        purpose: &str,
        position: &T,
    ) -> Result<String, StoreError> {
        use base64::Engine;
        let keys = self.search_keys().await?;
        let json = serde_json::to_vec(position).map_err(|_| StoreError::Integrity)?;
        let aad = format!("carapace/page/v1/{purpose}");
        Ok(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crypto::seal_with_aad(
                &keys.cursor,
                aad.as_bytes(),
                &json,
            )),
        )
    }

    /// The position [`Store::seal_position`] sealed, or 400 for anything else.
    pub(super) async fn open_position<T: serde::de::DeserializeOwned>(
        &self,
        purpose: &str,
        text: &str,
    ) -> Result<T, StoreError> {
        use base64::Engine;
        let invalid =
            || bad("_page is not a paging position of this list (it may have been altered)");
        let keys = self.search_keys().await?;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid())?;
        let aad = format!("carapace/page/v1/{purpose}");
        let json =
            crypto::open_with_aad(&keys.cursor, aad.as_bytes(), &sealed).map_err(|_| invalid())?;
        serde_json::from_slice(&json).map_err(|_| invalid())
    }
}
