//! The write interactions: `create`, `update`, `patch` and `delete`. Each validates, passes the
//! gate, seals the new version under its key scope's data key, indexes it and records its audit
//! event in one transaction; a refusal is audited outside it.

use super::audited::{Event, Recorded};
use super::binary::{Content, PendingBinaries, Staged};
use super::index::PrefixRows;
use super::subscription::{self, Admitted};
use super::summaries::Within;
use super::{head_row, index, patient_of, Store, StoreError, StoredResource};
use crate::access::policy::Label;
use crate::access::{AccessContext, Denied, Permission};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::crypto::{self, Binding, Dek};
use crate::fhir::patch as fhir_patch;
use crate::fhir::validate::{self, Issue};
use crate::fhir::{ResourceId, ResourceType};
use crate::search::index::IndexRows;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sqlx::Row;
use std::sync::Arc;

/// What an update did.
/// A change to a resource's current version, made in the store: the patched result is
/// validated, gated and audited as any update is, on the version it was made from (`If-Match`).
pub enum Patch<'a> {
    /// JSON Patch (RFC 6902).
    Json(&'a json_patch::Patch),
    /// FHIRPath Patch (a `Parameters` resource; [`crate::fhir::patch`]).
    FhirPath(&'a Value),
    /// `$meta-add` with this `Meta`.
    MetaAdd(&'a Value),
    /// `$meta-delete` with this `Meta`.
    MetaDelete(&'a Value),
}

pub struct Updated {
    pub resource: StoredResource,
    pub created: bool,
}

/// What a create did: a new resource, or (conditional create) the one that already matched.
pub enum Created {
    New(StoredResource),
    Existing(StoredResource),
}

/// What a delete did.
pub enum Deleted {
    Now { version_id: i64 },
    Already,
}

/// A create or update checked and keyed, ready to be written inside a transaction.
pub(super) struct Prepared {
    pub(super) resource_type: ResourceType,
    pub(super) id: String,
    pub(super) resource: Value,
    pub(super) scope: String,
    pub(super) dek_id: i64,
    pub(super) dek: Arc<Dek>,
    pub(super) index: IndexRows,
    /// The server chose the id (a create, a conditional update that matched nothing): no caller
    /// learns anything from where it lands.
    pub(super) server_id: bool,
    /// A Binary's content, staged for the version this write makes.
    pub(super) content: Option<Staged>,
    /// A Subscription as admitted: its owner is recorded with the write.
    pub(super) subscription: Option<Admitted>,
}

/// A new resource, stamped as version 1, sealed and indexed: all an insert needs, without the
/// parsed tree (a transaction of thousands of entries holds only these).
pub(super) struct NewResource {
    pub(super) resource_type: ResourceType,
    pub(super) id: String,
    pub(super) scope: String,
    pub(super) dek_id: i64,
    pub(super) sealed: Vec<u8>,
    pub(super) index: IndexRows,
    pub(super) content: Option<uuid::Uuid>,
    pub(super) subscription: Option<Admitted>,
}

/// New resources are inserted this many to a statement.
const INSERT_CHUNK: usize = 500;

/// Stamp a prepared create as version 1 at `now` and seal it; the body is returned too, for the
/// callers that answer with it.
pub(super) fn seal_new(
    prepared: Prepared,
    now: DateTime<Utc>,
) -> Result<(NewResource, Vec<u8>), StoreError> {
    let Prepared {
        resource_type,
        id,
        mut resource,
        scope,
        dek_id,
        dek,
        index,
        server_id: _,
        content,
        subscription,
    } = prepared;
    stamp_meta(&mut resource, 1, now);
    let body = serialize(&resource)?;
    let sealed = crypto::seal(
        &dek,
        Binding {
            resource_type: resource_type.as_str(),
            id: &id,
            version_id: 1,
            compartment: &scope,
        },
        &body,
    );
    Ok((
        NewResource {
            resource_type,
            id,
            scope,
            dek_id,
            sealed,
            index,
            content: content.map(|c| c.upload),
            subscription,
        },
        body,
    ))
}

/// One row of `resource_versions`.
struct NewVersion<'a> {
    pub(super) resource_type: ResourceType,
    pub(super) id: &'a str,
    pub(super) version_id: i64,
    pub(super) at: DateTime<Utc>,
    /// POST, PUT or DELETE.
    pub(super) method: &'static str,
    pub(super) dek_id: Option<i64>,
    pub(super) sealed: Option<&'a [u8]>,
    pub(super) content: Option<uuid::Uuid>,
}

/// Take a transaction-scoped advisory lock per condition (`Type?query`), in one order so that two
/// transactions never wait on each other: two concurrent `ifNoneExist` creates of the same patient
/// make one resource, not two. The locks go with the transaction.
pub(super) async fn lock_conditions(
    tx: &mut sqlx::PgConnection,
    conditions: &[String],
) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = conditions
        .iter()
        .map(|c| {
            let digest = crate::crypto::sha256(c.as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            i64::from_le_bytes(first)
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k)
           FROM (SELECT k FROM unnest($1::int8[]) WITH ORDINALITY AS u(k, n) ORDER BY n) s",
    )
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_version(tx: &mut sqlx::PgConnection, v: NewVersion<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO resource_versions
                (resource_type, id, version_id, last_updated, method, dek_id, sealed, content)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(v.resource_type.as_str())
    .bind(v.id)
    .bind(v.version_id)
    .bind(v.at)
    .bind(v.method)
    .bind(v.dek_id)
    .bind(v.sealed)
    .bind(v.content)
    .execute(tx)
    .await?;
    Ok(())
}

async fn upsert_head(
    tx: &mut sqlx::PgConnection,
    resource_type: ResourceType,
    id: &str,
    version_id: i64,
    deleted: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO resources (resource_type, id, version_id, deleted) VALUES ($1, $2, $3, $4)
         ON CONFLICT (resource_type, id) DO UPDATE SET version_id = $3, deleted = $4",
    )
    .bind(resource_type.as_str())
    .bind(id)
    .bind(version_id)
    .bind(deleted)
    .execute(tx)
    .await?;
    Ok(())
}

/// The resource must be a JSON object of the URL's type and valid R4.
pub(super) fn check_resource(
    resource_type: ResourceType,
    resource: &Value,
) -> Result<(), StoreError> {
    let declared = resource.get("resourceType").and_then(Value::as_str);
    if let Some(declared) = declared {
        if declared != resource_type.as_str() && crate::fhir::schema::is_resource_type(declared) {
            return Err(StoreError::Invalid(vec![Issue::invalid(
                "resourceType",
                format!(
                    "resourceType '{declared}' does not match the URL's type '{resource_type}'"
                ),
            )]));
        }
    }
    // A resource must read back: one built in memory (a patch's result) never passed the
    // intake's parse and its depth limit.
    if crate::fhir::json::depth(resource) > crate::fhir::json::MAX_STORED_DEPTH {
        return Err(StoreError::Invalid(vec![Issue::invalid(
            resource_type.as_str(),
            format!(
                "the resource nests more than {} levels deep",
                crate::fhir::json::MAX_STORED_DEPTH
            ),
        )]));
    }
    validate::validate_resource(resource).map_err(StoreError::Invalid)
}

pub(super) fn set_id(resource: &mut Value, id: &str) {
    if let Value::Object(map) = resource {
        map.insert("id".into(), Value::String(id.to_string()));
    }
}

/// Set `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta` as the client sent it.
pub(super) fn stamp_meta(resource: &mut Value, version_id: i64, at: DateTime<Utc>) {
    let Value::Object(map) = resource else { return };
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        meta.insert("versionId".into(), Value::String(version_id.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true)),
        );
    }
}

fn serialize(resource: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(resource).map_err(|_| {
        StoreError::Invalid(vec![Issue::invalid(
            String::new(),
            "resource could not be serialised",
        )])
    })
}

impl Store {
    /// Create a resource with a server-assigned id. With `if_none_exist`, first look for a match and
    /// return it instead (conditional create).
    pub async fn create(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<Created, StoreError> {
        self.create_with(ctx, resource_type, resource, if_none_exist, None)
            .await
    }

    /// Create a Binary whose content arrives raw (`binary` holds its `contentType` and
    /// `securityContext`).
    pub async fn create_binary(
        &self,
        ctx: &AccessContext,
        binary: Value,
        content: Content,
    ) -> Result<Created, StoreError> {
        self.create_with(ctx, ResourceType::BINARY, binary, None, Some(content))
            .await
    }

    async fn create_with(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        resource: Value,
        if_none_exist: Option<&str>,
        content: Option<Content>,
    ) -> Result<Created, StoreError> {
        let event = Event::new(Interaction::Create, resource_type.to_string());
        self.audited(
            ctx,
            event,
            async {
                ctx.check(resource_type.as_str(), Permission::Create)?;
                check_resource(resource_type, &resource)?;
                self.check_declared_profiles(ctx, &resource, Within::Alone)
                    .await?;
                // A conditional create holds its condition's lock from the match to the commit.
                let mut held = None;
                let _slot = match if_none_exist {
                    Some(_) => Some(self.conditional_slot().await?),
                    None => None,
                };
                if let Some(query) = if_none_exist {
                    let mut tx = self.begin_for(ctx).await?;
                    lock_conditions(&mut tx, &[format!("{resource_type}?{query}")]).await?;
                    if let Some(existing) =
                        self.conditional_match(ctx, resource_type, query).await?
                    {
                        return Ok(Created::Existing(existing));
                    }
                    held = Some(tx);
                }
                let id = uuid::Uuid::new_v4().to_string();
                let references = self.references_to_check(0, &resource);
                let mut prefixes = PrefixRows::default();
                let prepared = self
                    .prepare_create(
                        ctx,
                        resource_type,
                        resource,
                        &id,
                        &mut prefixes,
                        content,
                        &Default::default(),
                    )
                    .await?;
                let upload = prepared.content.as_ref().map(|c| c.upload);
                let written = async {
                    self.write_prefixes(prefixes).await?;
                    let now = self.clock.now();
                    let (new, body) = seal_new(prepared, now)?;
                    let mut tx = match held {
                        Some(tx) => tx,
                        None => self.begin_for(ctx).await?,
                    };
                    self.insert_new(&mut tx, ctx, std::slice::from_ref(&new), now)
                        .await?;
                    self.check_references(&mut tx, ctx, &references).await?;
                    tx.commit().await?;
                    self.policy_inputs.written(new.resource_type);
                    Ok::<_, StoreError>((new, body, now))
                }
                .await;
                let (new, body, now) = match (written, upload) {
                    (Ok(w), _) => w,
                    (Err(e), Some(upload)) => {
                        self.discard_upload(upload).await;
                        return Err(e);
                    }
                    (Err(e), None) => return Err(e),
                };
                Ok(Created::New(StoredResource {
                    resource_type,
                    patient: patient_of(&new.scope),
                    id: new.id,
                    version_id: 1,
                    last_updated: now,
                    body,
                }))
            }
            .await,
            |_| Recorded::InItsTransaction,
        )
        .await
    }

    /// Everything a create needs before the database transaction: id set, compartment checked, data
    /// key in hand (which may need the key provider).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn prepare_create(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        mut resource: Value,
        id: &str,
        prefixes: &mut PrefixRows,
        content: Option<Content>,
        pending: &PendingBinaries,
    ) -> Result<Prepared, StoreError> {
        set_id(&mut resource, id);
        let subscription = self.admit_subscription(ctx, resource_type, &mut resource)?;
        let scope = self.scope_for(ctx, resource_type, id, &resource).await?;
        self.check_write(ctx, Permission::Create, resource_type, &scope, &resource)
            .await?;
        let (dek_id, dek) = self.dek_for_scope(&scope).await?;
        let index = self.index_rows(resource_type, &resource, prefixes).await?;
        // Last: nothing after it can fail and leave a staged content behind.
        let content = self
            .prepare_payload(
                ctx,
                resource_type,
                id,
                1,
                &mut resource,
                (dek_id, &dek),
                content,
                pending,
            )
            .await?;
        Ok(Prepared {
            resource_type,
            id: id.to_string(),
            resource,
            scope,
            dek_id,
            dek,
            index,
            server_id: true,
            content,
            subscription,
        })
    }

    /// Everything an update needs before the database transaction, as [`Store::prepare_create`]
    /// for a create: the id checked against the resource's, compartment, data key, content.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn prepare_update(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        mut resource: Value,
        server_id: bool,
        prefixes: &mut PrefixRows,
        content: Option<Content>,
        pending: &PendingBinaries,
    ) -> Result<Prepared, StoreError> {
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id.as_str() => {}
            Some(_) => {
                return Err(StoreError::Invalid(vec![Issue::invalid(
                    format!("{resource_type}.id"),
                    "the id in the resource does not match the id in the URL",
                )]))
            }
            None => {
                return Err(StoreError::Invalid(vec![Issue::invalid(
                    format!("{resource_type}.id"),
                    "an update must carry the resource's id",
                )]))
            }
        }
        let subscription = self.admit_subscription(ctx, resource_type, &mut resource)?;
        let scope = self
            .scope_for(ctx, resource_type, id.as_str(), &resource)
            .await?;
        self.check_write(ctx, Permission::Update, resource_type, &scope, &resource)
            .await?;
        let (dek_id, dek) = self.dek_for_scope(&scope).await?;
        // A Binary's content is sealed for the version it will be: the next one now. Should
        // another write come first, this one is refused as a conflict when it is written.
        let next_version = if resource_type == ResourceType::BINARY {
            let mut conn = self.begin_for(ctx).await?;
            let head = head_row(&mut conn, resource_type, id.as_str(), false).await?;
            conn.commit().await?;
            match head {
                Some(row) => row.try_get::<i64, _>("version_id")? + 1,
                None => 1,
            }
        } else {
            0
        };
        let index = self.index_rows(resource_type, &resource, prefixes).await?;
        // Last: nothing after it can fail and leave a staged content behind.
        let content = self
            .prepare_payload(
                ctx,
                resource_type,
                id.as_str(),
                next_version,
                &mut resource,
                (dek_id, &dek),
                content,
                pending,
            )
            .await?;
        Ok(Prepared {
            resource_type,
            id: id.as_str().to_string(),
            resource,
            scope,
            dek_id,
            dek,
            index,
            server_id,
            content,
            subscription,
        })
    }

    /// Insert new resources as their version 1, with their index rows and one audit event each,
    /// a few statements per [`INSERT_CHUNK`] resources whatever their number.
    pub(super) async fn insert_new(
        &self,
        tx: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        new: &[NewResource],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut records = Vec::with_capacity(new.len());
        for chunk in new.chunks(INSERT_CHUNK) {
            let types: Vec<&str> = chunk.iter().map(|n| n.resource_type.as_str()).collect();
            let ids: Vec<&str> = chunk.iter().map(|n| n.id.as_str()).collect();
            let dek_ids: Vec<i64> = chunk.iter().map(|n| n.dek_id).collect();
            let sealed: Vec<&[u8]> = chunk.iter().map(|n| n.sealed.as_slice()).collect();
            let contents: Vec<Option<uuid::Uuid>> = chunk.iter().map(|n| n.content).collect();
            sqlx::query(
                "INSERT INTO resource_versions
                        (resource_type, id, version_id, last_updated, method, dek_id, sealed, content)
                 SELECT t, i, 1, $3, 'POST', k, s, c
                   FROM unnest($1::text[], $2::text[], $4::int8[], $5::bytea[], $6::uuid[])
                        AS u(t, i, k, s, c)",
            )
            .bind(&types)
            .bind(&ids)
            .bind(now)
            .bind(&dek_ids)
            .bind(&sealed)
            .bind(&contents)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO resources (resource_type, id, version_id, deleted)
                 SELECT t, i, 1, false FROM unnest($1::text[], $2::text[]) AS u(t, i)",
            )
            .bind(&types)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            let index: Vec<(ResourceType, &str, &IndexRows)> = chunk
                .iter()
                .map(|n| (n.resource_type, n.id.as_str(), &n.index))
                .collect();
            index::insert_index(&mut *tx, &index).await?;
            let subscriptions: Vec<(&str, &Admitted)> = chunk
                .iter()
                .filter_map(|n| n.subscription.as_ref().map(|s| (n.id.as_str(), s)))
                .collect();
            subscription::record_owners(&mut *tx, ctx, &subscriptions, now).await?;
            records.extend(chunk.iter().map(|n| AuditRecord {
                query: None,
                interaction: Interaction::Create,
                outcome: Outcome::Success,
                recorded: now,
                what: Some(format!("{}/{}/_history/1", n.resource_type, n.id)),
                patient: patient_of(&n.scope),
            }));
        }
        // Chained last: the chain head stays locked from here to the commit.
        self.audit_all_in(&mut *tx, ctx, &records).await?;
        Ok(())
    }

    /// Replace a resource, creating it with the client's id if it does not exist. `if_match` is the
    /// version the client last saw.
    pub async fn update(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<Updated, StoreError> {
        self.update_with(ctx, resource_type, id, resource, if_match, None)
            .await
    }

    /// Replace a Binary with content that arrives raw (`binary` holds its id, `contentType` and
    /// `securityContext`).
    pub async fn update_binary(
        &self,
        ctx: &AccessContext,
        id: &ResourceId,
        binary: Value,
        if_match: Option<i64>,
        content: Content,
    ) -> Result<Updated, StoreError> {
        self.update_with(
            ctx,
            ResourceType::BINARY,
            id,
            binary,
            if_match,
            Some(content),
        )
        .await
    }

    async fn update_with(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        resource: Value,
        if_match: Option<i64>,
        content: Option<Content>,
    ) -> Result<Updated, StoreError> {
        let event = Event::new(Interaction::Update, format!("{resource_type}/{id}"));
        self.audited(
            ctx,
            event,
            async {
                ctx.check(resource_type.as_str(), Permission::Update)?;
                check_resource(resource_type, &resource)?;
                self.check_declared_profiles(ctx, &resource, Within::Alone)
                    .await?;
                let references = self.references_to_check(0, &resource);
                let mut prefixes = PrefixRows::default();
                let mut prepared = self
                    .prepare_update(
                        ctx,
                        resource_type,
                        id,
                        resource,
                        false,
                        &mut prefixes,
                        content,
                        &Default::default(),
                    )
                    .await?;
                let upload = prepared.content.as_ref().map(|c| c.upload);
                let written = async {
                    self.write_prefixes(prefixes).await?;
                    // Two clients creating the same new id race on the primary key; the loser
                    // retries once as an ordinary update.
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let mut tx = self.begin_for(ctx).await?;
                        match self
                            .write_update(&mut tx, ctx, &mut prepared, if_match)
                            .await
                        {
                            Ok(updated) => {
                                self.check_references(&mut tx, ctx, &references).await?;
                                tx.commit().await?;
                                self.policy_inputs.written(resource_type);
                                return Ok(updated);
                            }
                            Err(StoreError::Database(sqlx::Error::Database(db)))
                                if db.code().as_deref() == Some("23505") && attempt < 3 => {}
                            // Still taken: the id exists where the caller may not see (row-level
                            // security hid its head), which looks like any resource they cannot see.
                            Err(StoreError::Database(sqlx::Error::Database(db)))
                                if db.code().as_deref() == Some("23505") =>
                            {
                                return Err(StoreError::NotFound(format!("{resource_type}/{id}")))
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                .await;
                if let (Err(_), Some(upload)) = (&written, upload) {
                    self.discard_upload(upload).await;
                }
                written
            }
            .await,
            |_| Recorded::InItsTransaction,
        )
        .await
    }

    /// Write the next version of a prepared resource inside `tx`.
    pub(super) async fn write_update(
        &self,
        tx: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        prepared: &mut Prepared,
        if_match: Option<i64>,
    ) -> Result<Updated, StoreError> {
        let resource_type = prepared.resource_type;
        let id = ResourceId::parse(&prepared.id).map_err(|_| StoreError::Integrity)?;
        let id = &id;
        let scope = prepared.scope.as_str();
        let (dek_id, dek) = (prepared.dek_id, prepared.dek.clone());
        let resource = &mut prepared.resource;
        let head = head_row(&mut *tx, resource_type, id.as_str(), true).await?;
        let current: Option<i64> = match &head {
            Some(row) => Some(row.try_get("version_id")?),
            None => None,
        };
        // A write is allowed only on what the caller may read: a hidden resource (another
        // compartment, a label above the caller's) is answered as missing, before its version
        // can be compared.
        if let Some(row) = &head {
            let Some(stored) = self
                .stored_label(&mut *tx, ctx, resource_type, id.as_str(), row)
                .await?
            else {
                return Err(StoreError::NotFound(format!("{resource_type}/{id}")));
            };
            // Declassifying is the patient's alone: whoever else may read a labelled version
            // may not write it back less restricted for those who may not.
            if !crate::access::policy::may_lower_label(ctx, stored, Label::of(resource)) {
                return Err(Denied::LabelLowered.into());
            }
            // A document stays in the record it was written into: moving it out (a PUT naming
            // another securityContext, or none) would take it from its patient's access, exports
            // and erasure.
            if resource_type == ResourceType::BINARY
                && row.try_get::<Option<String>, _>("scope")?.as_deref() != Some(scope)
            {
                return Err(StoreError::BadRequest(
                    "a Binary stays in the record it was written to: send the same \
                     securityContext (X-Security-Context), or write a new Binary"
                        .into(),
                ));
            }
        }
        // Update-as-create with an id of the client's choosing is for callers no compartment
        // narrows: for anyone else a fresh id and an id hidden from them answer alike (404), so
        // PUT is no oracle for what exists in other records.
        if head.is_none() && !prepared.server_id && !crate::access::policy::may_choose_ids(ctx) {
            return Err(StoreError::NotFound(format!("{resource_type}/{id}")));
        }
        // An erased resource's id is never used again (a trigger on `resources` refuses it too).
        if head.is_none() {
            if let err @ StoreError::Erased(_) =
                self.missing(ctx, resource_type, id.as_str()).await?
            {
                return Err(err);
            }
        }
        // Updating a deleted resource brings it back: a creation, continuing its version line.
        let exists = match &head {
            Some(row) => !row.try_get::<bool, _>("deleted")?,
            None => false,
        };
        if !exists {
            ctx.check(resource_type.as_str(), Permission::Create)?;
        }
        if let Some(expected) = if_match {
            if current != Some(expected) {
                return Err(StoreError::VersionConflict {
                    expected,
                    current: current.map_or("none".into(), |v| v.to_string()),
                });
            }
        }
        let version_id = current.unwrap_or(0) + 1;
        if let Some(staged) = &prepared.content {
            if staged.version_id != version_id {
                return Err(StoreError::Conflict(format!(
                    "{resource_type}/{id} changed while its content was uploaded; send it again"
                )));
            }
        }
        let now = self.clock.now();
        stamp_meta(resource, version_id, now);
        let body = serialize(resource)?;
        let sealed = crypto::seal(
            &dek,
            Binding {
                resource_type: resource_type.as_str(),
                id: id.as_str(),
                version_id,
                compartment: scope,
            },
            &body,
        );
        insert_version(
            &mut *tx,
            NewVersion {
                resource_type,
                id: id.as_str(),
                version_id,
                at: now,
                method: "PUT",
                dek_id: Some(dek_id),
                sealed: Some(&sealed),
                content: prepared.content.as_ref().map(|c| c.upload),
            },
        )
        .await?;
        upsert_head(&mut *tx, resource_type, id.as_str(), version_id, false).await?;
        index::clear_index(&mut *tx, resource_type, id.as_str()).await?;
        index::insert_index(&mut *tx, &[(resource_type, id.as_str(), &prepared.index)]).await?;
        if let Some(admitted) = &prepared.subscription {
            subscription::record_owners(&mut *tx, ctx, &[(id.as_str(), admitted)], now).await?;
        }
        let record = AuditRecord {
            query: None,
            interaction: if exists {
                Interaction::Update
            } else {
                Interaction::Create
            },
            outcome: Outcome::Success,
            recorded: now,
            what: Some(format!("{resource_type}/{id}/_history/{version_id}")),
            patient: patient_of(scope),
        };
        self.audit_in(&mut *tx, ctx, &record).await?;
        Ok(Updated {
            resource: StoredResource {
                resource_type,
                id: id.as_str().to_string(),
                version_id,
                last_updated: now,
                body,
                patient: patient_of(scope),
            },
            created: !exists,
        })
    }

    /// Apply a JSON Patch (RFC 6902) to the current version and store the result as a new version.
    /// Needs read and update access; the patched resource is validated like any update, and the id
    /// and type cannot be patched away. Concurrent changes between read and write give a version
    /// conflict rather than a lost update.
    pub async fn patch(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        patch: Patch<'_>,
        if_match: Option<i64>,
    ) -> Result<Updated, StoreError> {
        let (doc, version_id) = match self
            .apply_patch(ctx, resource_type, id, patch, if_match)
            .await
        {
            Ok((_, current, false)) => {
                // `$meta-add` of what is there already: no new version; the answer is the
                // version as it is, read as a read is (gated, audited).
                let resource = self.vread(ctx, resource_type, id, current).await?;
                return Ok(Updated {
                    resource,
                    created: false,
                });
            }
            Ok((doc, version_id, true)) => (doc, version_id),
            Err(e) => {
                let event = Event::new(Interaction::Update, format!("{resource_type}/{id}"));
                let refused = Err(e);
                return self
                    .audited(ctx, event, refused, |_| Recorded::InItsTransaction)
                    .await;
            }
        };
        // `update` audits its own outcome; the version read is the If-Match, so a concurrent change
        // is a conflict, not a lost update.
        self.update(ctx, resource_type, id, doc, Some(version_id))
            .await
    }

    /// The patched document, the version it was made from, and whether it changed.
    async fn apply_patch(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        patch: Patch<'_>,
        if_match: Option<i64>,
    ) -> Result<(Value, i64, bool), StoreError> {
        ctx.check(resource_type.as_str(), Permission::Update)?;
        if resource_type == ResourceType::BINARY {
            return Err(StoreError::Unsupported(
                "a Binary is replaced whole (PUT), not patched".into(),
            ));
        }
        let current = self.read_stored(ctx, resource_type, id).await?;
        if let Some(expected) = if_match {
            if expected != current.version_id {
                return Err(StoreError::VersionConflict {
                    expected,
                    current: current.version_id.to_string(),
                });
            }
        }
        let mut doc: Value =
            serde_json::from_slice(&current.body).map_err(|_| StoreError::Integrity)?;
        let failed = |e: &dyn std::fmt::Display| {
            StoreError::PatchFailed(format!("the patch does not apply: {e}"))
        };
        let changed = match patch {
            Patch::Json(p) => json_patch::patch(&mut doc, p)
                .map(|()| true)
                .map_err(|e| failed(&e))?,
            Patch::FhirPath(p) => fhir_patch::apply(&mut doc, p)
                .map(|()| true)
                .map_err(|e| failed(&e))?,
            Patch::MetaAdd(meta) => fhir_patch::meta_add(&mut doc, meta).map_err(|e| failed(&e))?,
            Patch::MetaDelete(meta) => {
                fhir_patch::meta_delete(&mut doc, meta).map_err(|e| failed(&e))?
            }
        };
        let same_identity = doc.get("resourceType").and_then(Value::as_str)
            == Some(resource_type.as_str())
            && doc.get("id").and_then(Value::as_str) == Some(id.as_str());
        if !same_identity {
            return Err(StoreError::Invalid(vec![Issue::invalid(
                format!("{resource_type}.id"),
                "a patch may not change the resource's type or id",
            )]));
        }
        Ok((doc, current.version_id, changed))
    }

    /// Logically delete a resource: its history stays, reads answer 410 Gone.
    pub async fn delete(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<Deleted, StoreError> {
        let event = Event::new(Interaction::Delete, format!("{resource_type}/{id}"));
        self.audited(
            ctx,
            event,
            async {
                ctx.check(resource_type.as_str(), Permission::Delete)?;
                let mut tx = self.begin_for(ctx).await?;
                let deleted = self.write_delete(&mut tx, ctx, resource_type, id).await?;
                tx.commit().await?;
                self.policy_inputs.written(resource_type);
                Ok(deleted)
            }
            .await,
            |_| Recorded::InItsTransaction,
        )
        .await
    }

    pub(super) async fn write_delete(
        &self,
        tx: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<Deleted, StoreError> {
        let head = head_row(&mut *tx, resource_type, id.as_str(), true).await?;
        let head = match head {
            Some(row)
                if !self
                    .stored_visible(&mut *tx, ctx, resource_type, id.as_str(), &row)
                    .await? =>
            {
                None
            }
            other => other,
        };
        let Some(head) = head else {
            return Err(StoreError::NotFound(format!("{resource_type}/{id}")));
        };
        if head.try_get::<bool, _>("deleted")? {
            return Ok(Deleted::Already);
        }
        let scope: Option<String> = head.try_get("scope")?;
        // The deletion keeps its compartment's key reference, so it stays inside that compartment.
        let dek_id: Option<i64> = head.try_get("dek_id")?;
        let version_id = head.try_get::<i64, _>("version_id")? + 1;
        let now = self.clock.now();
        insert_version(
            &mut *tx,
            NewVersion {
                resource_type,
                id: id.as_str(),
                version_id,
                at: now,
                method: "DELETE",
                dek_id,
                sealed: None,
                content: None,
            },
        )
        .await?;
        upsert_head(&mut *tx, resource_type, id.as_str(), version_id, true).await?;
        index::clear_index(&mut *tx, resource_type, id.as_str()).await?;
        subscription::record_deleted(&mut *tx, resource_type, id.as_str()).await?;
        let record = AuditRecord {
            query: None,
            interaction: Interaction::Delete,
            outcome: Outcome::Success,
            recorded: now,
            what: Some(format!("{resource_type}/{id}/_history/{version_id}")),
            patient: scope.as_deref().and_then(patient_of),
        };
        self.audit_in(&mut *tx, ctx, &record).await?;
        Ok(Deleted::Now { version_id })
    }

    pub(super) async fn conditional_slot(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.conditional_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Unsupported("the store is closing".into()))
    }
}
