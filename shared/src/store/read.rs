//! The read interactions: `read`, `vread` and conditional matching (`If-None-Exist`, conditional
//! update and delete), each through the gate; a refused read answers as a missing one.

use super::{outcome_of, patient_of, reach, DekRow, Store, StoreError, StoredResource};
use crate::access::{AccessContext, Permission};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::{ResourceId, ResourceType};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// The current version of a resource with its key (what the gate decides on), locked for a write
/// when `for_update`: `version_id`, `deleted`, `sealed`, `dek_id`, `scope`, `wrapped`.
pub(super) async fn head_row(
    conn: &mut sqlx::PgConnection,
    resource_type: ResourceType,
    id: &str,
    for_update: bool,
) -> Result<Option<sqlx::postgres::PgRow>, sqlx::Error> {
    let sql = if for_update {
        concat!(head_sql!(), " FOR UPDATE OF h")
    } else {
        head_sql!()
    };
    sqlx::query(sql)
        .bind(resource_type.as_str())
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub(super) async fn read_head(
    conn: &mut sqlx::PgConnection,
    patient: &ResourceId,
) -> Result<(), StoreError> {
    let deleted: Option<bool> = sqlx::query_scalar(
        "SELECT deleted FROM resources WHERE resource_type = 'Patient' AND id = $1",
    )
    .bind(patient.as_str())
    .fetch_optional(conn)
    .await?;
    match deleted {
        Some(false) => Ok(()),
        _ => Err(StoreError::NotFound(format!("Patient/{patient}"))),
    }
}

pub(super) fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl Store {
    /// Why a resource that has no row is missing: erased (410, its id kept as a tombstone) or
    /// never here (404). Only a caller who could have seen every record learns that an id was
    /// erased; to anyone else it is as unknown as an id never used (an id of a client's choosing,
    /// such as an MRN, would otherwise tell that a person was erased).
    pub(super) async fn missing(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &str,
    ) -> Result<StoreError, StoreError> {
        let reference = format!("{resource_type}/{id}");
        if !self.plan(ctx).await?.sees_everything() {
            return Ok(StoreError::NotFound(reference));
        }
        let erased: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM erased_resources WHERE resource_type = $1 AND id = $2)",
        )
        .bind(resource_type.as_str())
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(if erased {
            StoreError::Erased(reference)
        } else {
            StoreError::NotFound(reference)
        })
    }

    /// The one resource a conditional query (`identifier=sys|val`) matches: `None` for no match,
    /// 412 for several. The query must hold at least one search parameter.
    pub async fn conditional_match(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        query: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        // A conditional match is the first step of a write: only a caller who may write the
        // type learns what it matches (an analytics or read-only caller's conditional
        // create would otherwise be an oracle, answered before any write check).
        let rt = resource_type.as_str();
        if ctx.role == crate::access::Role::Analytics {
            return Err(crate::access::Denied::ReadOnlyRole("analytics").into());
        }
        ctx.check(rt, Permission::Create)
            .or_else(|_| ctx.check(rt, Permission::Update))
            .or_else(|_| ctx.check(rt, Permission::Delete))?;
        let pairs = form_pairs(query);
        let parsed = crate::search::query::parse(resource_type, &pairs, true)?;
        if parsed.filters.is_empty() {
            return Err(StoreError::BadRequest(
                "a conditional request needs search parameters, such as identifier=system|value"
                    .into(),
            ));
        }
        let ids = self.matching_ids(ctx, &parsed, 2).await?;
        match ids.as_slice() {
            [] => Ok(None),
            [one] => {
                let id = ResourceId::parse(one).map_err(|_| StoreError::Integrity)?;
                // The match as it is stored: a write's business, never handed out as it is.
                match self.read_stored(ctx, resource_type, &id).await {
                    Ok(found) => Ok(Some(found)),
                    Err(StoreError::NotFound(_) | StoreError::Gone { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            _ => Err(StoreError::PreconditionFailed(format!(
                "the conditional query matches more than one {resource_type}"
            ))),
        }
    }

    /// The current version of a resource, as the caller may receive it (de-identified for
    /// analytics callers).
    pub async fn read(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredResource, StoreError> {
        let stored = self.read_stored(ctx, resource_type, id).await?;
        let stored = self.with_content(ctx, stored, false).await?;
        self.release(ctx, stored).await
    }

    /// [`Store::read`] as stored: through the gate and audited, not yet released.
    pub(super) async fn read_stored(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredResource, StoreError> {
        if let Err(denied) = ctx.check(resource_type.as_str(), Permission::Read) {
            let denied = Err(denied.into());
            return self
                .finish_read(ctx, Interaction::Read, resource_type, id, denied)
                .await;
        }
        let query = sqlx::query(
            "SELECT v.version_id, v.last_updated, v.sealed, k.id AS dek_id, k.scope, k.wrapped
               FROM resources h
               JOIN resource_versions v
                 ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
               LEFT JOIN data_keys k ON k.id = v.dek_id
              WHERE h.resource_type = $1 AND h.id = $2",
        )
        .bind(resource_type.as_str())
        .bind(id.as_str());
        let row = self
            .fetch_all_for(ctx, query)
            .await
            .map(|rows| rows.into_iter().next());
        self.finish_read(ctx, Interaction::Read, resource_type, id, row)
            .await
    }

    /// One version of a resource.
    pub async fn vread(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        version_id: i64,
    ) -> Result<StoredResource, StoreError> {
        let stored = self
            .vread_stored(ctx, resource_type, id, version_id)
            .await?;
        let stored = self.with_content(ctx, stored, true).await?;
        self.release(ctx, stored).await
    }

    /// A Binary read passes its securityContext's gate too (and answers without its content,
    /// which [`Store::read_binary_resource`] and [`Store::open_binary`] give); any other resource
    /// as it is.
    async fn with_content(
        &self,
        ctx: &AccessContext,
        stored: StoredResource,
        older: bool,
    ) -> Result<StoredResource, StoreError> {
        if stored.resource_type == ResourceType::BINARY {
            self.binary_gate(ctx, &stored, older).await?;
        }
        Ok(stored)
    }

    pub(super) async fn vread_stored(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        version_id: i64,
    ) -> Result<StoredResource, StoreError> {
        if let Err(denied) = ctx.check(resource_type.as_str(), Permission::Read) {
            let denied = Err(denied.into());
            return self
                .finish_read(ctx, Interaction::Vread, resource_type, id, denied)
                .await;
        }
        let query = sqlx::query(
            "SELECT v.version_id, v.last_updated, v.sealed, k.id AS dek_id, k.scope, k.wrapped
               FROM resource_versions v
               LEFT JOIN data_keys k ON k.id = v.dek_id
              WHERE v.resource_type = $1 AND v.id = $2 AND v.version_id = $3",
        )
        .bind(resource_type.as_str())
        .bind(id.as_str())
        .bind(version_id);
        let row = self
            .fetch_all_for(ctx, query)
            .await
            .map(|rows| rows.into_iter().next());
        self.finish_read(ctx, Interaction::Vread, resource_type, id, row)
            .await
    }

    async fn finish_read(
        &self,
        ctx: &AccessContext,
        interaction: Interaction,
        resource_type: ResourceType,
        id: &ResourceId,
        row: Result<Option<sqlx::postgres::PgRow>, StoreError>,
    ) -> Result<StoredResource, StoreError> {
        let reference = format!("{resource_type}/{id}");
        let plan = self.plan(ctx).await;
        let row = match (plan, row) {
            (Err(e), _) => Err(e),
            (Ok(_), row) => row,
        };
        let result = match row {
            Err(e) => Err(e),
            Ok(None) => Err(self.missing(ctx, resource_type, id.as_str()).await?),
            // Another compartment's data looks exactly like data that does not exist.
            Ok(Some(row)) if !reach::visible(ctx, resource_type, &row)? => {
                Err(StoreError::NotFound(reference.clone()))
            }
            Ok(Some(row)) => {
                let version_id: i64 = row.try_get("version_id")?;
                let last_updated: DateTime<Utc> = row.try_get("last_updated")?;
                let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
                match sealed {
                    // A deleted resource the caller could not have seen is as missing as any.
                    None => {
                        let mut tx = self.begin_for(ctx).await?;
                        if self
                            .stored_visible(&mut tx, ctx, resource_type, id.as_str(), &row)
                            .await?
                        {
                            Err(StoreError::Gone {
                                resource: reference.clone(),
                                version_id,
                                last_updated,
                            })
                        } else {
                            Err(StoreError::NotFound(reference.clone()))
                        }
                    }
                    Some(sealed) => {
                        let key = DekRow::from_row(&row)?;
                        match self
                            .open_body(resource_type, id.as_str(), version_id, &key, &sealed)
                            .await
                        {
                            // A label above the caller's ceiling, or another patient's
                            // compartment it is in, hides it like any other refusal.
                            Ok(body)
                                if !ctx.plan.get().is_some_and(|p| {
                                    reach::body_visible(p, resource_type, id.as_str(), &body)
                                }) =>
                            {
                                Err(StoreError::NotFound(reference.clone()))
                            }
                            Ok(body) => Ok(StoredResource {
                                resource_type,
                                id: id.as_str().to_string(),
                                version_id,
                                last_updated,
                                body,
                                patient: patient_of(&key.scope),
                            }),
                            Err(e) => Err(e),
                        }
                    }
                }
            }
        };
        // An older version is handed out only while the resource as it is now may be seen: a
        // label raised later, or a move to another record, hides what came before.
        let result = match result {
            Ok(_) | Err(StoreError::Gone { .. }) if interaction == Interaction::Vread => {
                let mut tx = self.begin_for(ctx).await?;
                if self
                    .current_visible(&mut tx, ctx, resource_type, id.as_str())
                    .await?
                {
                    result
                } else {
                    Err(StoreError::NotFound(reference.clone()))
                }
            }
            other => other,
        };
        // One event per patient record the answer is part of (a Group of A and B is a read of
        // both records, and each patient's "who accessed my record" shows it).
        let (outcome, what, patients) = match &result {
            Ok(r) => (
                Outcome::Success,
                format!("{reference}/_history/{}", r.version_id),
                reach::compartments_of(resource_type, &r.id, r.patient.as_deref(), &r.body),
            ),
            Err(e) => (outcome_of(e), reference, vec![None]),
        };
        let recorded = self.clock.now();
        let records: Vec<AuditRecord> = patients
            .into_iter()
            .map(|patient| AuditRecord {
                query: None,
                interaction,
                outcome,
                recorded,
                what: Some(what.clone()),
                patient,
            })
            .collect();
        self.audit_records(ctx, &records).await?;
        result
    }
}
