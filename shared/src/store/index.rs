//! Keeping the blind index in step with the resources: the index rows of a version written in the
//! write's own transaction, the prefix rows of string parameters, and re-indexing what a change of
//! the search parameters left behind.

use super::{Store, StoreError};
use crate::fhir::ResourceType;
use crate::search::index::{self, IndexRows};
use serde_json::Value;
use sqlx::Row;
use std::collections::HashSet;

/// Prefix-dictionary rows gathered from the writes of one request, each whole value once.
#[derive(Default)]
pub(crate) struct PrefixRows {
    wholes: HashSet<Vec<u8>>,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
}

/// How many whole values a process remembers having written to the prefix dictionary (16 bytes
/// each; forgotten all at once when full, which only costs rewriting rows that are there).
const KNOWN_PREFIXES: usize = 200_000;

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

impl Store {
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
            crate::db::Forgets::forget_all(&*self.policy_inputs);
            done += pending.len() as u64;
        }
    }
}
