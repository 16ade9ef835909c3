//! Search over the blind index: SQL built from a parsed [`SearchQuery`], keyset paging with sealed
//! cursors, `_include`/`_revinclude`, and the index writes that keep the index in step with the
//! resources (inside the write's transaction).

use super::audited::{Event, Recorded};
use super::{DekRow, Store, StoreError, StoredResource};
use crate::access::policy::{Plan, SqlReach};
use crate::access::{AccessContext, Permission};
use crate::audit::Interaction;
use crate::crypto::{self, Dek};
use crate::fhir::reference::SearchTarget;
use crate::fhir::ResourceType;
use crate::search::index::{self, Class, IndexKeys, IndexRows, HIGHEST, LOWEST, MAX_PREFIX};
use crate::search::params::{self, Kind};
use crate::search::query::{
    BadSearch, Filter, Include, Modifier, SearchQuery, SortKind, Summary, Total,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder, Row};
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

#[derive(Serialize, Deserialize)]
struct Cursor {
    /// Digest of the query the cursor belongs to.
    q: String,
    /// `n` for the page after `v`/`i`, `p` for the page before.
    d: char,
    v: Vec<f64>,
    i: String,
    /// Offset, for searches sorted in memory.
    o: usize,
}

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

/// Prefix-dictionary rows gathered from the writes of one request, each whole value once.
#[derive(Default)]
pub(crate) struct PrefixRows {
    wholes: HashSet<Vec<u8>>,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
}

/// How many whole values a process remembers having written to the prefix dictionary (16 bytes
/// each; forgotten all at once when full, which only costs rewriting rows that are there).
const KNOWN_PREFIXES: usize = 200_000;

/// The scopes of a search: a search of its type, and of every type its chains and `_has`
/// filters match on. The one check both entry points (searches and conditional matches) pass.
fn authorize_search(ctx: &AccessContext, query: &SearchQuery) -> Result<(), StoreError> {
    ctx.check(query.resource_type.as_str(), Permission::Search)?;
    for joined in query.joined_types() {
        ctx.check(joined, Permission::Search)?;
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

    /// The index rows of a resource about to be written; its prefix-dictionary rows go to
    /// `prefixes`, to be written before the write's transaction.
    pub(crate) async fn index_rows(
        &self,
        resource_type: ResourceType,
        resource: &Value,
        prefixes: &mut PrefixRows,
    ) -> Result<IndexRows, StoreError> {
        let keys = self.search_keys().await?;
        let mut rows = index::index_resource(&keys.index, resource_type.as_str(), resource);
        let known = self
            .known_prefixes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new: HashSet<Vec<u8>> = rows
            .prefixes
            .iter()
            .map(|(_, whole)| whole)
            .filter(|w| !known.contains(*w) && !prefixes.wholes.contains(*w))
            .cloned()
            .collect();
        drop(known);
        prefixes.rows.extend(
            std::mem::take(&mut rows.prefixes)
                .into_iter()
                .filter(|(_, whole)| new.contains(whole)),
        );
        prefixes.wholes.extend(new);
        Ok(rows)
    }

    /// Write gathered prefix-dictionary rows (on their own: they name no resource, so a write that
    /// is later rolled back leaves nothing that matters), sorted so that concurrent writers take
    /// their locks in one order.
    pub(crate) async fn write_prefixes(&self, mut prefixes: PrefixRows) -> Result<(), StoreError> {
        if prefixes.rows.is_empty() {
            return Ok(());
        }
        prefixes.rows.sort();
        for chunk in prefixes.rows.chunks(10_000) {
            let (p, w): (Vec<&[u8]>, Vec<&[u8]>) = chunk
                .iter()
                .map(|(p, w)| (p.as_slice(), w.as_slice()))
                .unzip();
            sqlx::query(
                "INSERT INTO search_prefix (prefix, whole)
                 SELECT * FROM unnest($1::bytea[], $2::bytea[]) ON CONFLICT DO NOTHING",
            )
            .bind(&p)
            .bind(&w)
            .execute(&self.pool)
            .await?;
        }
        let mut known = self
            .known_prefixes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() + prefixes.wholes.len() > KNOWN_PREFIXES {
            known.clear();
        }
        known.extend(prefixes.wholes);
        Ok(())
    }

    /// A search: the matching page, narrowed to what the caller may see, with its includes. One
    /// AuditEvent per patient whose data the page returned (IHE BALP), or one for the search when it
    /// returned none.
    pub async fn search(
        &self,
        ctx: &AccessContext,
        query: &SearchQuery,
    ) -> Result<SearchResult, StoreError> {
        let work = async {
            authorize_search(ctx, query)?;
            let plan = self.plan(ctx).await?;
            let keys = self.search_keys().await?;
            let digest = query_digest(query);
            let cursor = match &query.cursor {
                Some(c) => Some(open_cursor(&keys.cursor, c, &digest)?),
                None => None,
            };
            let now = self.clock.now().timestamp_millis();
            // One transaction for the whole search, under the caller's row-level security; it only
            // reads, so it is dropped (rolled back with the connection's next statement).
            let mut tx = self.begin_for(ctx).await?;
            if query.summary == Summary::Count {
                return Ok(SearchResult {
                    matches: vec![],
                    included: vec![],
                    total: Some(count_matches(&mut tx, &plan, &keys.index, query, now).await?),
                    next: None,
                    previous: None,
                });
            }
            let by_value = query.sort.iter().any(|k| k.kind == SortKind::Value);
            let page = if by_value {
                self.page_sorted_in_memory(&mut tx, &plan, query, &keys, &digest, cursor, now)
                    .await?
            } else {
                self.page_by_keyset(&mut tx, &plan, query, &keys, &digest, cursor, now)
                    .await?
            };
            let (matches, next, previous) = (page.matches, page.next, page.previous);
            let total = match (query.total, page.total) {
                (Total::None, _) => None,
                (_, Some(n)) => Some(n),
                // A page past the last match (the data changed under a cursor) counts on its own.
                (_, None) => Some(count_matches(&mut tx, &plan, &keys.index, query, now).await?),
            };
            let included = self.includes(&mut tx, ctx, &plan, query, &matches).await?;
            drop(tx);
            Ok(SearchResult {
                matches,
                included,
                total,
                next,
                previous,
            })
        };
        // The query as the server understood it (the parameters it used); sealed with the event.
        let text = {
            let mut text = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &query.kept {
                text.append_pair(k, v);
            }
            format!("{}?{}", query.resource_type, text.finish())
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
        self.audited(ctx, event, work, patients).await
    }

    /// The id and current version of the most recently written resource matching `query` that
    /// the caller may see (the StructureDefinition a profile URL names), without reading it.
    pub(crate) async fn latest_match(
        &self,
        ctx: &AccessContext,
        query: &SearchQuery,
    ) -> Result<Option<(String, i64)>, StoreError> {
        authorize_search(ctx, query)?;
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
        authorize_search(ctx, query)?;
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

    /// Index again the resources listed in `search_reindex` (indexed under an earlier scheme, see
    /// migration 0004), a batch at a time, each in its own transaction with the resources' heads
    /// locked so that a concurrent update is never overwritten by an older index. Returns how many
    /// were indexed. Searches may miss a listed resource until its turn.
    pub async fn reindex_pending(&self) -> Result<u64, StoreError> {
        let mut done = 0;
        loop {
            let mut tx = self.begin_internal().await?;
            let pending = sqlx::query(
                "SELECT resource_type, id FROM search_reindex
                  ORDER BY resource_type, id LIMIT 200 FOR UPDATE SKIP LOCKED",
            )
            .fetch_all(&mut *tx)
            .await?;
            if pending.is_empty() {
                return Ok(done);
            }
            let mut types = Vec::with_capacity(pending.len());
            let mut ids = Vec::with_capacity(pending.len());
            for row in &pending {
                types.push(row.try_get::<String, _>("resource_type")?);
                ids.push(row.try_get::<String, _>("id")?);
            }
            let current = sqlx::query(
                "SELECT h.resource_type, h.id, v.version_id, v.last_updated, v.sealed,
                        k.id AS dek_id, k.scope, k.wrapped
                   FROM unnest($1::text[], $2::text[]) AS w(resource_type, id)
                   JOIN resources h ON h.resource_type = w.resource_type AND h.id = w.id
                   JOIN resource_versions v
                     ON v.resource_type = h.resource_type AND v.id = h.id
                    AND v.version_id = h.version_id
                   JOIN data_keys k ON k.id = v.dek_id
                  WHERE NOT h.deleted
                    FOR UPDATE OF h",
            )
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            let mut prefixes = PrefixRows::default();
            let mut indexed = Vec::with_capacity(current.len());
            for row in &current {
                let type_name: String = row.try_get("resource_type")?;
                let rt = ResourceType::parse(&type_name).ok_or(StoreError::Integrity)?;
                let stored = self.open_row(rt, row).await?;
                let resource: Value =
                    serde_json::from_slice(&stored.body).map_err(|_| StoreError::Integrity)?;
                let rows = self.index_rows(rt, &resource, &mut prefixes).await?;
                indexed.push((rt, stored.id, rows));
            }
            self.write_prefixes(prefixes).await?;
            for (t, i) in types.iter().zip(&ids) {
                let rt = ResourceType::parse(t).ok_or(StoreError::Integrity)?;
                clear_index(&mut tx, rt, i).await?;
            }
            let refs: Vec<(ResourceType, &str, &IndexRows)> = indexed
                .iter()
                .map(|(rt, id, rows)| (*rt, id.as_str(), rows))
                .collect();
            insert_index(&mut tx, &refs).await?;
            sqlx::query(
                "DELETE FROM search_reindex
                  WHERE (resource_type, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            )
            .bind(&types)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            done += pending.len() as u64;
        }
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
    async fn load_current_in(
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

/// Replace a resource's index rows (inside the write's transaction).
/// Remove a resource's index rows (before it is indexed again, or when it is deleted).
pub(crate) async fn clear_index(
    tx: &mut sqlx::PgConnection,
    resource_type: ResourceType,
    id: &str,
) -> Result<(), sqlx::Error> {
    for table in ["search_hash", "search_ref", "search_range"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE resource_type = $1 AND id = $2"
        ))
        .bind(resource_type.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Insert the index rows of many resources: one statement per table, whatever their number.
pub(crate) async fn insert_index(
    tx: &mut sqlx::PgConnection,
    resources: &[(ResourceType, &str, &IndexRows)],
) -> Result<(), sqlx::Error> {
    let (mut types, mut ids, mut params, mut hashes) = (vec![], vec![], vec![], vec![]);
    for (rt, id, rows) in resources {
        for (p, h) in &rows.hashes {
            types.push(rt.as_str());
            ids.push(*id);
            params.push(*p);
            hashes.push(h.as_slice());
        }
    }
    if !hashes.is_empty() {
        sqlx::query(
            "INSERT INTO search_hash (resource_type, id, param, h)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&params)
        .bind(&hashes)
        .execute(&mut *tx)
        .await?;
    }
    let (mut types, mut ids, mut params, mut target_types, mut targets) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (rt, id, rows) in resources {
        for (p, t, target) in &rows.refs {
            types.push(rt.as_str());
            ids.push(*id);
            params.push(*p);
            target_types.push(t.as_str());
            targets.push(target.as_str());
        }
    }
    if !targets.is_empty() {
        sqlx::query(
            "INSERT INTO search_ref (resource_type, id, param, target_type, target_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&params)
        .bind(&target_types)
        .bind(&targets)
        .execute(&mut *tx)
        .await?;
    }
    let ranges = resources
        .iter()
        .flat_map(|(rt, id, rows)| rows.ranges.iter().map(move |r| (rt.as_str(), *id, r)));
    let (mut types, mut ids, mut params, mut lo, mut hi) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut unit_sc, mut unit_c, mut comp) = (vec![], vec![], vec![]);
    for (rt, id, r) in ranges {
        types.push(rt);
        ids.push(id);
        params.push(r.param);
        lo.push(r.lo);
        hi.push(r.hi);
        unit_sc.push(r.unit_sc.as_deref());
        unit_c.push(r.unit_c.as_deref());
        comp.push(r.comp.as_deref());
    }
    if !params.is_empty() {
        sqlx::query(
            "INSERT INTO search_range (resource_type, id, param, lo, hi, unit_sc, unit_c, comp)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[],
                                  $6::bytea[], $7::bytea[], $8::bytea[])",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&params)
        .bind(&lo)
        .bind(&hi)
        .bind(&unit_sc)
        .bind(&unit_c)
        .bind(&comp)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

fn push_sort_value(qb: &mut QueryBuilder<'static, Postgres>, kind: SortKind, v: f64, id: &str) {
    match kind {
        SortKind::Id => {
            qb.push_bind(id.to_string());
        }
        _ => {
            qb.push_bind(v);
        }
    }
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

fn query_digest(query: &SearchQuery) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(query.resource_type.as_str());
    for (k, v) in &query.kept {
        h.update([0]);
        h.update(k);
        h.update([1]);
        h.update(v);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const CURSOR_AAD: &[u8] = b"carapace/search-cursor/v1";

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

fn seal_cursor(key: &Dek, cursor: &Cursor) -> String {
    use base64::Engine;
    let json = serde_json::to_vec(cursor).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crypto::seal_with_aad(key, CURSOR_AAD, &json))
}

fn open_cursor(key: &Dek, text: &str, digest: &str) -> Result<Cursor, StoreError> {
    use base64::Engine;
    let invalid = || bad("_page is not a paging cursor of this search (it may have been altered)");
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid())?;
    let json = crypto::open_with_aad(key, CURSOR_AAD, &sealed).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&json).map_err(|_| invalid())?;
    if cursor.q != digest || !matches!(cursor.d, 'n' | 'p') {
        return Err(invalid());
    }
    Ok(cursor)
}

/// Builds the SQL of a search: `FROM ... WHERE` over the current resources of one type, each filter
/// an `EXISTS` over the index tables.
struct Builder<'k> {
    qb: QueryBuilder<'static, Postgres>,
    keys: &'k IndexKeys,
    now_ms: i64,
    alias: usize,
    /// Writing a parameter as the set of ids it matches (`(SELECT a.id FROM ...)`) rather than as
    /// an `EXISTS` test of one resource.
    as_set: bool,
    /// Every filter is an id set (see [`Builder::push_matches`]): index scans intersected, then
    /// primary-key lookups, a plan whose shape no value changes, so the statement is prepared once
    /// per connection and reused. A statement with `EXISTS` tests is planned for each search's own
    /// values instead: a generic plan blind to how common a code is or how large a patient's record
    /// is was measured a hundred times slower.
    reusable: bool,
    /// What the caller may see ([`Plan`]), applied to every resource a search touches: its
    /// matches, chained targets and `_has` sources.
    reach: SqlReach,
    sees_everything: bool,
    hidden_labels: Vec<&'static str>,
}

impl<'k> Builder<'k> {
    fn new(keys: &'k IndexKeys, now_ms: i64, plan: &Plan) -> Builder<'k> {
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
    fn push_reach(&mut self, h: &str, rt: &str) -> Result<(), StoreError> {
        self.push_compartments(h);
        self.push_labels(h, rt)
    }

    /// ` AND` row `h` is in a compartment, and of a type there, that the plan opens — its key
    /// scope's and every other patient compartment it is in (the `_compartment` rows of its
    /// index, [`crate::fhir::reference::patient_compartments`]).
    fn push_compartments(&mut self, h: &str) {
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
    fn push_compartment_case(&mut self, c: &str, rt: &str) {
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
    fn push_labels(&mut self, h: &str, rt: &str) -> Result<(), StoreError> {
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

    fn next_alias(&mut self) -> String {
        self.alias += 1;
        format!("x{}", self.alias)
    }

    /// Open `[NOT] EXISTS (SELECT 1 FROM table a WHERE` the row belongs to resource `id` of `rt` and
    /// parameter `code`; the caller adds its conditions and closes the parenthesis. Returns `a`.
    ///
    /// Building a set ([`Builder::as_set`]), it opens `(SELECT a.id FROM table a WHERE` the row is
    /// of `rt` and `code` instead: the same conditions, closed the same way, give the ids matched.
    fn open_exists(&mut self, negate: bool, table: &str, rt: &str, id: &str, code: &str) -> String {
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
    fn push_matches(&mut self, query: &SearchQuery) -> Result<(), StoreError> {
        let rt = query.resource_type.as_str();
        let (sets, tests): (Vec<&Filter>, Vec<&Filter>) = query.filters.iter().partition(
            |f| matches!(f, Filter::Param { modifier, .. } if *modifier != Modifier::Not),
        );
        self.reusable = tests.is_empty();
        self.qb.push("SELECT m.id, m.version_id FROM ");
        if !sets.is_empty() {
            // INTERSECT returns each id once; one set alone may hold an id twice.
            let single = sets.len() == 1;
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

    fn sort_expr(&mut self, rt: &str, kind: SortKind, code: &str, descending: bool) {
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

    fn filter(&mut self, rt: &str, id: &str, f: &Filter) -> Result<(), StoreError> {
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
    fn present(&mut self, rt: &str, id: &str, param: &params::SearchParam, present: bool) {
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
    fn param(
        &mut self,
        rt: &str,
        id: &str,
        param: &params::SearchParam,
        modifier: &Modifier,
        values: &[String],
    ) -> Result<(), StoreError> {
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
                let part = params::lookup(rt, part).ok_or(StoreError::Integrity)?;
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
    fn hash_exists(
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

    fn string_query(&self, code: &str, modifier: &Modifier, value: &str) -> Vec<u8> {
        if *modifier == Modifier::Exact {
            return self.keys.blind(Class::String, code, "e", value);
        }
        let n = index::normalise(value);
        let prefix: String = n.chars().take(MAX_PREFIX).collect();
        self.keys.blind(Class::String, code, "p", &prefix)
    }

    fn token_query(
        &self,
        code: &str,
        modifier: &Modifier,
        value: &str,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
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

    fn uri_query(&self, code: &str, modifier: &Modifier, value: &str) -> Vec<Vec<u8>> {
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
    fn range_test(
        &mut self,
        a: &str,
        code: &str,
        kind: Kind,
        value: &str,
    ) -> Result<(), StoreError> {
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

    fn cmp1(&mut self, col: &str, op: &str, v: f64) {
        self.qb.push(format!("{col} {op} "));
        self.qb.push_bind(v);
    }

    #[allow(clippy::too_many_arguments)]
    fn cmp2(&mut self, c1: &str, op1: &str, v1: f64, join: &str, c2: &str, op2: &str, v2: f64) {
        self.qb.push("(");
        self.cmp1(c1, op1, v1);
        self.qb.push(format!(" {join} "));
        self.cmp1(c2, op2, v2);
        self.qb.push(")");
    }
}

/// A number and half its precision: `100` is 99.5..100.5, `1.50` is 1.495..1.505.
fn parse_number(s: &str) -> Option<(f64, f64)> {
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

fn split_composite(value: &str) -> Result<(&str, &str), StoreError> {
    split_unescaped(value, '$').ok_or_else(|| bad("a composite value is first$second"))
}

/// Split at the first `sep` not escaped with `\`.
fn split_unescaped(value: &str, sep: char) -> Option<(&str, &str)> {
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

fn unescape(value: &str) -> String {
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
fn reference_value(
    param: &params::SearchParam,
    modifier: &Modifier,
    value: &str,
) -> Result<(Option<String>, String), StoreError> {
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
