//! The encrypted, versioned resource store: create, read, vread, update, delete and history of any
//! R4 resource over PostgreSQL, every body sealed under its compartment's data key before it is sent
//! to the database, every interaction audited.

use crate::access::policy::Label;
use crate::access::{AccessContext, Denied, Permission};
use crate::audit::{self, AuditRecord, AuditWriter, Interaction, Outcome};
use crate::clock::Clock;
use crate::crypto::dek_cache::DekCache;
use crate::crypto::dek_cache::DekCacheConfig;
use crate::crypto::keys::{KeyError, KeyProvider};
use crate::crypto::{self, Binding, Dek};
use crate::fhir::reference::key_scope;
use crate::fhir::validate::{self, Issue};
use crate::fhir::{ResourceId, ResourceType};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::Instant;

/// The query of [`head_row`] (a macro, so that its locking form is a constant too).
macro_rules! head_sql {
    () => {
        "SELECT h.version_id, h.deleted, v.sealed, k.id AS dek_id, k.scope, k.wrapped
           FROM resources h
           JOIN resource_versions v
             ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
           LEFT JOIN data_keys k ON k.id = v.dek_id
          WHERE h.resource_type = $1 AND h.id = $2"
    };
}

mod admin;
mod integrity;
mod profiles;
mod reach;
mod search;
mod trail;
use crate::search::index::IndexRows;
pub use profiles::ValidateMode;
pub use reach::{BtgGrant, OperatorCounts};
use search::PrefixRows;
pub use search::SearchResult;
pub use trail::{AuditPage, AuditQuery};

/// Why a store call failed. The server maps each to one HTTP status and OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not known")]
    NotFound(String),
    #[error("{resource} was deleted")]
    Gone {
        resource: String,
        version_id: i64,
        last_updated: DateTime<Utc>,
    },
    #[error("the resource is invalid")]
    Invalid(Vec<Issue>),
    /// References to resources of this server that do not exist or were deleted (each an issue
    /// at its element): 400.
    #[error("the resource refers to resources this server does not have")]
    Unresolved(Vec<Issue>),
    #[error("version conflict: expected version {expected}, current is {current}")]
    VersionConflict { expected: i64, current: String },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    /// A patch that does not apply (a failed `test`, a missing path): 422.
    #[error("{0}")]
    PatchFailed(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A stored body failed to open: tampered, moved between rows, or sealed under another key.
    #[error("stored resource failed its integrity check")]
    Integrity,
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A malformed or unsupported request (a search the server cannot serve): 400.
    #[error("{0}")]
    BadRequest(String),
    /// Refused by the access policy (scopes, role, compartment).
    #[error(transparent)]
    Denied(#[from] Denied),
}

/// A resource version as read back from the store; `body` is its JSON, exactly as stored.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub resource_type: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub body: Vec<u8>,
    /// `Patient/<id>` whose compartment the resource is sealed in, if any.
    pub patient: Option<String>,
}

impl StoredResource {
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }
}

/// One entry of a history page: a version with its body, or a deletion.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub resource_type: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub method: String,
    pub body: Option<Vec<u8>>,
}

/// Position after the last row a history page read (newest first); sealed before it leaves the
/// store, as it may name a row the caller was not shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct HistoryCursor {
    pub last_updated: DateTime<Utc>,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub since: Option<DateTime<Utc>>,
    pub count: usize,
    /// A page's sealed `next` position (`_page`).
    pub after: Option<String>,
}

pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Sealed: opaque to the client, bound to history pages.
    pub next: Option<String>,
}

/// A `$everything` request: `_since`, `_type`, `_count` and the sealed paging position.
#[derive(Debug, Clone, Default)]
pub struct EverythingQuery {
    pub since: Option<DateTime<Utc>>,
    pub types: Vec<ResourceType>,
    pub count: usize,
    pub after: Option<String>,
}

pub struct EverythingPage {
    pub entries: Vec<StoredResource>,
    /// Sealed: opaque to the client, bound to `$everything` pages.
    pub next: Option<String>,
}

pub use crate::fhir::InstantRange;

/// One entry of a transaction.
pub enum TxEntry {
    Create {
        resource_type: ResourceType,
        resource: EntryResource,
        full_url: Option<String>,
        /// Conditional create: the entry does nothing when this query matches one resource.
        if_none_exist: Option<String>,
    },
    Update {
        resource_type: ResourceType,
        target: Target,
        resource: EntryResource,
        if_match: Option<i64>,
        full_url: Option<String>,
    },
    Delete {
        resource_type: ResourceType,
        target: Target,
    },
    Read {
        resource_type: ResourceType,
        id: ResourceId,
        version: Option<i64>,
    },
}

/// A transaction entry's resource: parsed, or the entry's raw JSON object (its body was checked
/// whole for well-formedness and duplicate keys), parsed only when the entry's turn comes, so that
/// a Bundle of thousands of entries is never held as one parsed tree.
pub enum EntryResource {
    Parsed(Value),
    Raw(bytes::Bytes),
}

impl EntryResource {
    /// The parsed resource, leaving `Null` behind.
    fn take(&mut self) -> Result<Value, StoreError> {
        match std::mem::replace(self, EntryResource::Parsed(Value::Null)) {
            EntryResource::Parsed(v) => Ok(v),
            EntryResource::Raw(raw) => serde_json::from_slice(&raw).map_err(|_| {
                StoreError::BadRequest("the entry's resource is not valid JSON".into())
            }),
        }
    }
}

/// Where a transaction entry's write landed: what its response names.
#[derive(Debug, Clone)]
pub struct Written {
    pub resource_type: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
}

impl From<&StoredResource> for Written {
    fn from(r: &StoredResource) -> Written {
        Written {
            resource_type: r.resource_type,
            id: r.id.clone(),
            version_id: r.version_id,
            last_updated: r.last_updated,
        }
    }
}

/// What an update or delete applies to: an id, or a conditional search query (`identifier=a|b`).
#[derive(Debug, Clone)]
pub enum Target {
    Id(ResourceId),
    Query(String),
}

pub enum TxResult {
    Created(Written),
    /// A conditional create that matched an existing resource.
    Existing(Written),
    Updated(Updated),
    Deleted(Deleted),
    /// Reads run after the commit; each has its own outcome (a failed read does not undo writes).
    Read(Result<StoredResource, StoreError>),
    Skipped,
}

/// Which entry made a transaction fail, and why. Nothing was written.
#[derive(Debug)]
pub struct TxFailure {
    pub index: usize,
    pub error: StoreError,
}

/// What an update did.
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

pub struct Store {
    pool: PgPool,
    keys: Arc<KeyProvider>,
    cache: DekCache,
    clock: Arc<dyn Clock>,
    audit: AuditWriter,
    search_keys: tokio::sync::OnceCell<Arc<search::SearchKeys>>,
    /// Whole values this process has written to the prefix dictionary (see `search_prefix`).
    known_prefixes: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Conditional writes hold a connection (their transaction, with the conditions' locks) while
    /// they match on others; at most half the pool does so at once, so matches always find one.
    conditional_slots: tokio::sync::Semaphore,
    policy: crate::access::policy::PolicyConfig,
    /// Back-off decay and the per-address limit on sign-in failures (see `users`).
    sign_in: crate::access::SignInLimits,
    /// Each consent version's rule (or `None`: it decides nothing), by (id, version): versions
    /// never change, so a rule is parsed once; which versions are current is read per request.
    consent_rules: ConsentRules,
    /// `CARAPACE_ENFORCE_PROFILES`: writes must conform to the stored profiles they declare.
    enforce_profiles: bool,
    profiles: profiles::ProfileCache,
    /// Referential integrity: on, and the base URL of this server's absolute references.
    integrity: integrity::Integrity,
}

type ConsentRules = std::sync::Mutex<
    std::collections::HashMap<(String, i64), Option<(String, crate::access::policy::ConsentRule)>>,
>;

const MAX_HISTORY_COUNT: usize = 1000;

/// A history or `$everything` page is filled past rows the caller may not see for at most this
/// many further reads of the database, then ends early (its sealed position goes on past them).
const MAX_FILL_ROUNDS: usize = 8;

/// Key scope of the data key of the audit chain's HMAC links.
const AUDIT_CHAIN_SCOPE: &str = "audit/chain";

/// Key scope of the data key that seals AuditEvents.
const AUDIT_EVENTS_SCOPE: &str = "audit/events";

/// Key scope of the data key that seals identity secrets (TOTP seeds).
const IDENTITY_SCOPE: &str = "identity";

fn secret_aad(purpose: &str) -> Vec<u8> {
    format!("carapace/secret/v1/{purpose}").into_bytes()
}

impl Store {
    pub fn new(
        pool: PgPool,
        keys: Arc<KeyProvider>,
        cache: DekCacheConfig,
        clock: Arc<dyn Clock>,
        policy: crate::access::policy::PolicyConfig,
    ) -> Store {
        let audit = AuditWriter::start(pool.clone());
        let conditional_slots = (pool.options().get_max_connections() as usize / 2).max(1);
        Store {
            pool,
            keys,
            cache: DekCache::new(cache),
            clock,
            audit,
            search_keys: tokio::sync::OnceCell::new(),
            known_prefixes: Default::default(),
            conditional_slots: tokio::sync::Semaphore::new(conditional_slots),
            policy,
            sign_in: crate::access::SignInLimits::default(),
            consent_rules: Default::default(),
            enforce_profiles: false,
            profiles: Default::default(),
            integrity: integrity::Integrity {
                on: true,
                base: Default::default(),
            },
        }
    }

    /// The store refusing writes that fail a stored profile their `meta.profile` declares.
    pub fn with_profile_enforcement(mut self, on: bool) -> Store {
        self.enforce_profiles = on;
        self
    }

    /// The store with these sign-in limits (the defaults otherwise).
    pub fn with_sign_in_limits(mut self, limits: crate::access::SignInLimits) -> Store {
        self.sign_in = limits;
        self
    }

    pub fn sign_in_limits(&self) -> crate::access::SignInLimits {
        self.sign_in
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn keys(&self) -> &KeyProvider {
        &self.keys
    }

    /// Unwrapped data keys currently cached.
    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Create a resource with a server-assigned id. With `if_none_exist`, first look for a match and
    /// return it instead (conditional create).
    pub async fn create(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<Created, StoreError> {
        let result = self
            .create_inner(ctx, resource_type, resource, if_none_exist)
            .await;
        self.audit_if_failed(
            ctx,
            Interaction::Create,
            || resource_type.to_string(),
            result,
        )
        .await
    }

    async fn create_inner(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<Created, StoreError> {
        ctx.check(resource_type.as_str(), Permission::Create)?;
        check_resource(resource_type, &resource)?;
        self.check_declared_profiles(ctx, &resource).await?;
        // A conditional create holds its condition's lock from the match to the commit.
        let mut held = None;
        let _slot = match if_none_exist {
            Some(_) => Some(self.conditional_slot().await?),
            None => None,
        };
        if let Some(query) = if_none_exist {
            let mut tx = self.begin_for(ctx).await?;
            lock_conditions(&mut tx, &[format!("{resource_type}?{query}")]).await?;
            if let Some(existing) = self.conditional_match(ctx, resource_type, query).await? {
                return Ok(Created::Existing(existing));
            }
            held = Some(tx);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let references = self.references_to_check(0, &resource);
        let mut prefixes = PrefixRows::default();
        let prepared = self
            .prepare_create(ctx, resource_type, resource, &id, &mut prefixes)
            .await?;
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
        Ok(Created::New(StoredResource {
            resource_type,
            patient: patient_of(&new.scope),
            id: new.id,
            version_id: 1,
            last_updated: now,
            body,
        }))
    }

    /// Everything a create needs before the database transaction: id set, compartment checked, data
    /// key in hand (which may need the key provider).
    async fn prepare_create(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        mut resource: Value,
        id: &str,
        prefixes: &mut PrefixRows,
    ) -> Result<Prepared, StoreError> {
        set_id(&mut resource, id);
        let scope = key_scope(resource_type, id, &resource);
        self.check_write(ctx, Permission::Create, resource_type, &scope, &resource)
            .await?;
        let (dek_id, dek) = self.dek_for_scope(&scope).await?;
        let index = self.index_rows(resource_type, &resource, prefixes).await?;
        Ok(Prepared {
            resource_type,
            id: id.to_string(),
            resource,
            scope,
            dek_id,
            dek,
            index,
            server_id: true,
        })
    }

    /// Insert new resources as their version 1, with their index rows and one audit event each,
    /// a few statements per [`INSERT_CHUNK`] resources whatever their number.
    async fn insert_new(
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
            sqlx::query(
                "INSERT INTO resource_versions
                        (resource_type, id, version_id, last_updated, method, dek_id, sealed)
                 SELECT t, i, 1, $3, 'POST', k, s
                   FROM unnest($1::text[], $2::text[], $4::int8[], $5::bytea[]) AS u(t, i, k, s)",
            )
            .bind(&types)
            .bind(&ids)
            .bind(now)
            .bind(&dek_ids)
            .bind(&sealed)
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
            search::insert_index(&mut *tx, &index).await?;
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

    /// The one resource a conditional query (`identifier=sys|val`) matches: `None` for no match,
    /// 412 for several. The query must hold at least one search parameter.
    pub async fn conditional_match(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        query: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
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
                match self.read(ctx, resource_type, &id).await {
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

    /// The current version of a resource.
    pub async fn read(
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
            Ok(None) => Err(StoreError::NotFound(reference.clone())),
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
        let result = self
            .update_inner(ctx, resource_type, id, resource, if_match)
            .await;
        self.audit_if_failed(
            ctx,
            Interaction::Update,
            || format!("{resource_type}/{id}"),
            result,
        )
        .await
    }

    async fn update_inner(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<Updated, StoreError> {
        ctx.check(resource_type.as_str(), Permission::Update)?;
        check_resource(resource_type, &resource)?;
        self.check_declared_profiles(ctx, &resource).await?;
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
        let scope = key_scope(resource_type, id.as_str(), &resource);
        self.check_write(ctx, Permission::Update, resource_type, &scope, &resource)
            .await?;
        let references = self.references_to_check(0, &resource);
        let (dek_id, dek) = self.dek_for_scope(&scope).await?;
        let mut prefixes = PrefixRows::default();
        let index = self
            .index_rows(resource_type, &resource, &mut prefixes)
            .await?;
        self.write_prefixes(prefixes).await?;
        let mut prepared = Prepared {
            resource_type,
            id: id.as_str().to_string(),
            resource,
            scope,
            dek_id,
            dek,
            index,
            server_id: false,
        };
        // Two clients creating the same new id race on the primary key; the loser retries once as an
        // ordinary update.
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
                    return Ok(updated);
                }
                Err(StoreError::Database(sqlx::Error::Database(db)))
                    if db.code().as_deref() == Some("23505") && attempt < 3 => {}
                // Still taken: the id exists where the caller may not see (row-level security
                // hid its head), which looks like any resource they cannot see.
                Err(StoreError::Database(sqlx::Error::Database(db)))
                    if db.code().as_deref() == Some("23505") =>
                {
                    return Err(StoreError::NotFound(format!("{resource_type}/{id}")))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Write the next version of a prepared resource inside `tx`.
    async fn write_update(
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
        }
        // Update-as-create with an id of the client's choosing is for callers no compartment
        // narrows: for anyone else a fresh id and an id hidden from them answer alike (404), so
        // PUT is no oracle for what exists in other records.
        if head.is_none() && !prepared.server_id && !crate::access::policy::may_choose_ids(ctx) {
            return Err(StoreError::NotFound(format!("{resource_type}/{id}")));
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
            },
        )
        .await?;
        upsert_head(&mut *tx, resource_type, id.as_str(), version_id, false).await?;
        search::clear_index(&mut *tx, resource_type, id.as_str()).await?;
        search::insert_index(&mut *tx, &[(resource_type, id.as_str(), &prepared.index)]).await?;
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
        patch: &json_patch::Patch,
        if_match: Option<i64>,
    ) -> Result<Updated, StoreError> {
        let (doc, version_id) = match self
            .apply_patch(ctx, resource_type, id, patch, if_match)
            .await
        {
            Ok(prepared) => prepared,
            Err(e) => {
                let what = || format!("{resource_type}/{id}");
                return self
                    .audit_if_failed(ctx, Interaction::Update, what, Err(e))
                    .await;
            }
        };
        // `update` audits its own outcome; the version read is the If-Match, so a concurrent change
        // is a conflict, not a lost update.
        self.update(ctx, resource_type, id, doc, Some(version_id))
            .await
    }

    /// The patched document and the version it was made from.
    async fn apply_patch(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
        patch: &json_patch::Patch,
        if_match: Option<i64>,
    ) -> Result<(Value, i64), StoreError> {
        ctx.check(resource_type.as_str(), Permission::Update)?;
        let current = self.read(ctx, resource_type, id).await?;
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
        json_patch::patch(&mut doc, patch)
            .map_err(|e| StoreError::PatchFailed(format!("the patch does not apply: {e}")))?;
        let same_identity = doc.get("resourceType").and_then(Value::as_str)
            == Some(resource_type.as_str())
            && doc.get("id").and_then(Value::as_str) == Some(id.as_str());
        if !same_identity {
            return Err(StoreError::Invalid(vec![Issue::invalid(
                format!("{resource_type}.id"),
                "a patch may not change the resource's type or id",
            )]));
        }
        Ok((doc, current.version_id))
    }

    /// Logically delete a resource: its history stays, reads answer 410 Gone.
    pub async fn delete(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<Deleted, StoreError> {
        let result = self.delete_inner(ctx, resource_type, id).await;
        self.audit_if_failed(
            ctx,
            Interaction::Delete,
            || format!("{resource_type}/{id}"),
            result,
        )
        .await
    }

    async fn delete_inner(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<Deleted, StoreError> {
        ctx.check(resource_type.as_str(), Permission::Delete)?;
        let mut tx = self.begin_for(ctx).await?;
        let deleted = self.write_delete(&mut tx, ctx, resource_type, id).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn write_delete(
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
            },
        )
        .await?;
        upsert_head(&mut *tx, resource_type, id.as_str(), version_id, true).await?;
        search::clear_index(&mut *tx, resource_type, id.as_str()).await?;
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

    /// History of one resource, of a type, or of the whole server, newest first. A version is
    /// handed out when the caller may see it and the resource as it is now (a label raised or a
    /// record moved later hides the earlier versions too); pages are filled past what is left out,
    /// and the `next` position is sealed, so neither tells what was skipped.
    pub async fn history(
        &self,
        ctx: &AccessContext,
        resource_type: Option<ResourceType>,
        id: Option<&ResourceId>,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        // System history needs a wildcard scope; `*` is no resource type, so only `*` scopes match.
        ctx.check(resource_type.map_or("*", |t| t.as_str()), Permission::Read)?;
        let count = query.count.clamp(1, MAX_HISTORY_COUNT);
        let mut after: Option<HistoryCursor> = match &query.after {
            Some(text) => Some(self.open_position("history", text).await?),
            None => None,
        };
        let plan = self.plan(ctx).await?;
        let reach = plan.sql_lists();
        let sql = format!(
            "SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.method, v.sealed,
                    k.id AS dek_id, k.scope, k.wrapped
               FROM resource_versions v
               LEFT JOIN data_keys k ON k.id = v.dek_id
              WHERE ($1::text IS NULL OR v.resource_type = $1)
                AND ($2::text IS NULL OR v.id = $2)
                AND ($3::timestamptz IS NULL OR v.last_updated >= $3)
                AND ($4::timestamptz IS NULL
                     OR (v.last_updated, v.resource_type, v.id, v.version_id) < ($4, $5, $6, $7))
                AND {}
              ORDER BY v.last_updated DESC, v.resource_type DESC, v.id DESC, v.version_id DESC
              LIMIT $8",
            reach::reach_condition("k.scope", "v.resource_type", 9)
        );
        let mut tx = self.begin_for(ctx).await?;
        let mut entries = Vec::with_capacity(count);
        let mut next = None;
        // Whether the caller may see each resource as it is now, asked once per resource.
        let mut now_visible: std::collections::HashMap<(ResourceType, String), bool> =
            Default::default();
        'pages: for round in 0..MAX_FILL_ROUNDS {
            let q = sqlx::query(&sql)
                .bind(resource_type.map(|t| t.as_str()))
                .bind(id.map(|i| i.as_str()))
                .bind(query.since)
                .bind(after.as_ref().map(|c| c.last_updated))
                .bind(after.as_ref().map(|c| c.resource_type.clone()))
                .bind(after.as_ref().map(|c| c.id.clone()))
                .bind(after.as_ref().map(|c| c.version_id))
                .bind(i64::try_from(count + 1).unwrap_or(i64::MAX));
            let rows = reach::bind_reach(q, &reach).fetch_all(&mut *tx).await?;
            let exhausted = rows.len() <= count;
            for row in &rows {
                if entries.len() == count {
                    next = after.clone();
                    break 'pages;
                }
                let type_name: String = row.try_get("resource_type")?;
                let entry_type = ResourceType::parse(&type_name).ok_or(StoreError::Integrity)?;
                let entry_id: String = row.try_get("id")?;
                let version_id: i64 = row.try_get("version_id")?;
                let last_updated: DateTime<Utc> = row.try_get("last_updated")?;
                after = Some(HistoryCursor {
                    last_updated,
                    resource_type: type_name,
                    id: entry_id.clone(),
                    version_id,
                });
                let key = (entry_type, entry_id.clone());
                let current = match now_visible.get(&key) {
                    Some(v) => *v,
                    None => {
                        let v = self
                            .current_visible(&mut tx, ctx, entry_type, &entry_id)
                            .await?;
                        now_visible.insert(key, v);
                        v
                    }
                };
                if !current {
                    continue;
                }
                let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
                let body = match sealed {
                    Some(sealed) => {
                        let key = DekRow::from_row(row)?;
                        let body = self
                            .open_body(entry_type, &entry_id, version_id, &key, &sealed)
                            .await?;
                        if !reach::body_visible(&plan, entry_type, &entry_id, &body) {
                            continue;
                        }
                        Some(body)
                    }
                    // A deletion of a version the caller could not see is left out like it.
                    None => {
                        if !self
                            .stored_visible(&mut tx, ctx, entry_type, &entry_id, row)
                            .await?
                        {
                            continue;
                        }
                        None
                    }
                };
                entries.push(HistoryEntry {
                    resource_type: entry_type,
                    id: entry_id,
                    version_id,
                    last_updated,
                    method: row.try_get("method")?,
                    body,
                });
            }
            if exhausted {
                break;
            }
            // Still short after this many rounds of hidden rows: the page ends here, and the
            // sealed position carries on past them.
            if round + 1 == MAX_FILL_ROUNDS {
                next = after.clone();
            }
        }
        drop(tx);
        let next = match next {
            Some(c) => Some(self.seal_position("history", &c).await?),
            None => None,
        };
        let (interaction, what) = match (resource_type, id) {
            (Some(t), Some(i)) => (Interaction::HistoryInstance, Some(format!("{t}/{i}"))),
            (Some(t), None) => (Interaction::HistoryType, Some(t.to_string())),
            _ => (Interaction::HistorySystem, None),
        };
        let record = AuditRecord {
            query: None,
            interaction,
            outcome: Outcome::Success,
            recorded: self.clock.now(),
            what,
            patient: None,
        };
        self.audit_record(ctx, &record).await?;
        Ok(HistoryPage { entries, next })
    }

    /// A FHIR `transaction`: every write commits together in one database transaction or none
    /// does. Entries run in the order the spec requires (DELETE, POST, PUT, then reads), new ids are
    /// assigned up front and `urn:uuid:` references between entries are resolved to them. On failure
    /// the index of the entry that failed comes back with its error; nothing is written.
    pub async fn transaction(
        &self,
        ctx: &AccessContext,
        mut entries: Vec<TxEntry>,
    ) -> Result<Vec<TxResult>, TxFailure> {
        let fail = |index: usize| move |error: StoreError| TxFailure { index, error };
        self.plan(ctx).await.map_err(fail(0))?;
        // Conditional creates, updates and deletes hold their conditions' locks from the match to
        // the commit: the database transaction begins first when there are any.
        let conditions: Vec<String> = entries
            .iter()
            .filter_map(|e| match e {
                TxEntry::Create {
                    resource_type,
                    if_none_exist: Some(q),
                    ..
                }
                | TxEntry::Update {
                    resource_type,
                    target: Target::Query(q),
                    ..
                }
                | TxEntry::Delete {
                    resource_type,
                    target: Target::Query(q),
                } => Some(format!("{resource_type}?{q}")),
                _ => None,
            })
            .collect();
        let mut held = None;
        let mut _slot = None;
        if !conditions.is_empty() {
            _slot = Some(self.conditional_slot().await.map_err(fail(0))?);
            let mut tx = self.begin_for(ctx).await.map_err(fail(0))?;
            lock_conditions(&mut tx, &conditions)
                .await
                .map_err(|e| fail(0)(e.into()))?;
            held = Some(tx);
        }
        // 0. Conditional entries become plain ones (or no-ops), like the conditional references
        // below.
        let mut existing: Vec<Option<StoredResource>> = (0..entries.len()).map(|_| None).collect();
        // Conditional updates that matched nothing get an id of the server's choosing.
        let mut server_ids = vec![false; entries.len()];
        for (i, entry) in entries.iter_mut().enumerate() {
            match entry {
                TxEntry::Create {
                    resource_type,
                    if_none_exist: Some(query),
                    ..
                } => {
                    existing[i] = self
                        .conditional_match(ctx, *resource_type, query)
                        .await
                        .map_err(fail(i))?;
                }
                TxEntry::Update {
                    resource_type,
                    target: target @ Target::Query(_),
                    resource,
                    ..
                } => {
                    let Target::Query(query) = &*target else {
                        continue;
                    };
                    let mut value = resource.take().map_err(fail(i))?;
                    let id = match self
                        .conditional_match(ctx, *resource_type, query)
                        .await
                        .map_err(fail(i))?
                    {
                        Some(found) => found.id,
                        None => match value.get("id").and_then(Value::as_str) {
                            Some(id) => id.to_string(),
                            None => {
                                server_ids[i] = true;
                                uuid::Uuid::new_v4().to_string()
                            }
                        },
                    };
                    if value
                        .get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|b| b != id)
                    {
                        return Err(fail(i)(StoreError::Invalid(vec![Issue::invalid(
                            format!("{resource_type}.id"),
                            "the id in the resource is not the one the condition matched",
                        )])));
                    }
                    set_id(&mut value, &id);
                    *resource = EntryResource::Parsed(value);
                    *target = Target::Id(ResourceId::parse(&id).map_err(|_| {
                        fail(i)(StoreError::BadRequest(
                            "the resource id is not valid".into(),
                        ))
                    })?);
                }
                TxEntry::Delete {
                    resource_type,
                    target,
                } => {
                    if let Target::Query(query) = target {
                        match self
                            .conditional_match(ctx, *resource_type, query)
                            .await
                            .map_err(fail(i))?
                        {
                            Some(found) => {
                                *target = Target::Id(
                                    ResourceId::parse(&found.id)
                                        .map_err(|_| fail(i)(StoreError::Integrity))?,
                                )
                            }
                            None => existing[i] = None,
                        }
                    }
                }
                _ => {}
            }
        }
        // R4 (http.html#trules): if the resources that deletes, creates and updates act on
        // overlap — conditional ones as resolved — the transaction fails.
        let mut touched: std::collections::HashMap<String, usize> = Default::default();
        for (i, entry) in entries.iter().enumerate() {
            let target = match (entry, &existing[i]) {
                (TxEntry::Create { resource_type, .. }, Some(found)) => {
                    Some(format!("{resource_type}/{}", found.id))
                }
                (
                    TxEntry::Update {
                        resource_type,
                        target: Target::Id(id),
                        ..
                    }
                    | TxEntry::Delete {
                        resource_type,
                        target: Target::Id(id),
                    },
                    _,
                ) => Some(format!("{resource_type}/{id}")),
                _ => None,
            };
            if let Some(target) = target {
                if let Some(first) = touched.insert(target.clone(), i) {
                    return Err(fail(i)(StoreError::BadRequest(format!(
                        "entries {first} and {i} both act on {target}: a transaction acts on \
                         each resource once"
                    ))));
                }
            }
        }
        // 1. Ids for new resources, and what each fullUrl now means.
        let mut resolved: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        let mut new_ids: Vec<Option<String>> = vec![None; entries.len()];
        for (i, entry) in entries.iter().enumerate() {
            let full_url = match entry {
                TxEntry::Create { full_url, .. } | TxEntry::Update { full_url, .. } => {
                    full_url.clone()
                }
                _ => None,
            };
            let target = match entry {
                TxEntry::Create { resource_type, .. } => match &existing[i] {
                    Some(found) => Some(format!("{resource_type}/{}", found.id)),
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        new_ids[i] = Some(id.clone());
                        Some(format!("{resource_type}/{id}"))
                    }
                },
                TxEntry::Update {
                    resource_type,
                    target: Target::Id(id),
                    ..
                } => Some(format!("{resource_type}/{id}")),
                _ => None,
            };
            if let (Some(url), Some(target)) = (full_url, target) {
                if resolved.insert(url, target).is_some() {
                    return Err(fail(i)(StoreError::Invalid(vec![Issue::invalid(
                        format!("Bundle.entry[{i}].fullUrl"),
                        "two entries have the same fullUrl",
                    )])));
                }
            }
        }
        // 2. One entry at a time (outside the database transaction: this may call the key provider
        // and runs conditional searches): parse, point references at the resolved ids, check, key,
        // index, and seal new resources, keeping only what the inserts need.
        let now = self.clock.now();
        let mut prefixes = PrefixRows::default();
        let mut creates: Vec<(usize, NewResource)> = Vec::new();
        let mut updates: Vec<Option<Prepared>> = (0..entries.len()).map(|_| None).collect();
        // Checked after every write, so that entries may refer to each other.
        let mut references = Vec::new();
        for (i, entry) in entries.iter_mut().enumerate() {
            match entry {
                TxEntry::Create { .. } if existing[i].is_some() => {}
                TxEntry::Create {
                    resource_type,
                    resource,
                    ..
                } => {
                    let mut resource = resource.take().map_err(fail(i))?;
                    self.resolve_entry_references(ctx, &mut resource, &mut resolved)
                        .await
                        .map_err(fail(i))?;
                    ctx.check(resource_type.as_str(), Permission::Create)
                        .map_err(|e| fail(i)(e.into()))?;
                    check_resource(*resource_type, &resource).map_err(fail(i))?;
                    self.check_declared_profiles(ctx, &resource)
                        .await
                        .map_err(fail(i))?;
                    references.extend(self.references_to_check(i, &resource));
                    let id = new_ids[i].clone().unwrap_or_default();
                    let prepared = self
                        .prepare_create(ctx, *resource_type, resource, &id, &mut prefixes)
                        .await
                        .map_err(fail(i))?;
                    let (new, _body) = seal_new(prepared, now).map_err(fail(i))?;
                    creates.push((i, new));
                }
                TxEntry::Update {
                    resource_type,
                    target,
                    resource,
                    ..
                } => {
                    let Target::Id(id) = target else {
                        return Err(fail(i)(StoreError::Integrity));
                    };
                    let mut resource = resource.take().map_err(fail(i))?;
                    self.resolve_entry_references(ctx, &mut resource, &mut resolved)
                        .await
                        .map_err(fail(i))?;
                    ctx.check(resource_type.as_str(), Permission::Update)
                        .map_err(|e| fail(i)(e.into()))?;
                    check_resource(*resource_type, &resource).map_err(fail(i))?;
                    self.check_declared_profiles(ctx, &resource)
                        .await
                        .map_err(fail(i))?;
                    if resource.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                        return Err(fail(i)(StoreError::Invalid(vec![Issue::invalid(
                            format!("{resource_type}.id"),
                            "the id in the resource does not match the entry's URL",
                        )])));
                    }
                    references.extend(self.references_to_check(i, &resource));
                    let scope = key_scope(*resource_type, id.as_str(), &resource);
                    self.check_write(ctx, Permission::Update, *resource_type, &scope, &resource)
                        .await
                        .map_err(fail(i))?;
                    let (dek_id, dek) = self.dek_for_scope(&scope).await.map_err(fail(i))?;
                    let index = self
                        .index_rows(*resource_type, &resource, &mut prefixes)
                        .await
                        .map_err(fail(i))?;
                    updates[i] = Some(Prepared {
                        resource_type: *resource_type,
                        id: id.as_str().to_string(),
                        resource,
                        scope,
                        dek_id,
                        dek,
                        index,
                        server_id: server_ids[i],
                    });
                }
                TxEntry::Delete { resource_type, .. } => {
                    ctx.check(resource_type.as_str(), Permission::Delete)
                        .map_err(|e| fail(i)(e.into()))?;
                }
                TxEntry::Read { .. } => {}
            }
        }
        self.write_prefixes(prefixes).await.map_err(fail(0))?;
        // 3. All writes in one database transaction, in the spec's order: deletes, creates (all
        // inserted together), updates.
        let mut results: Vec<Option<TxResult>> = (0..entries.len()).map(|_| None).collect();
        let mut tx = match held {
            Some(tx) => tx,
            None => self.begin_for(ctx).await.map_err(fail(0))?,
        };
        for (i, entry) in entries.iter().enumerate() {
            if let TxEntry::Delete {
                resource_type,
                target,
            } = entry
            {
                let deleted = match target {
                    Target::Id(id) => {
                        match self.write_delete(&mut tx, ctx, *resource_type, id).await {
                            // Deleting what is not there is not an error (R4 http.html#delete).
                            Err(StoreError::NotFound(_)) => Deleted::Already,
                            other => other.map_err(fail(i))?,
                        }
                    }
                    Target::Query(_) => Deleted::Already,
                };
                results[i] = Some(TxResult::Deleted(deleted));
            }
        }
        let new: Vec<NewResource> = creates
            .into_iter()
            .map(|(i, n)| {
                results[i] = Some(TxResult::Created(Written {
                    resource_type: n.resource_type,
                    id: n.id.clone(),
                    version_id: 1,
                    last_updated: now,
                }));
                n
            })
            .collect();
        let first_create = results
            .iter()
            .position(|r| matches!(r, Some(TxResult::Created(_))))
            .unwrap_or(0);
        self.insert_new(&mut tx, ctx, &new, now)
            .await
            .map_err(fail(first_create))?;
        drop(new);
        for (i, entry) in entries.iter().enumerate() {
            if let (TxEntry::Update { if_match, .. }, Some(mut p)) = (entry, updates[i].take()) {
                let updated = self
                    .write_update(&mut tx, ctx, &mut p, *if_match)
                    .await
                    .map_err(fail(i))?;
                results[i] = Some(TxResult::Updated(updated));
            }
        }
        let broken = self
            .unresolved(&mut tx, ctx, &references)
            .await
            .map_err(fail(0))?;
        if let Some(&(first, _)) = broken.first() {
            let issues = broken
                .into_iter()
                .filter(|(i, _)| *i == first)
                .map(|(_, issue)| issue)
                .collect();
            return Err(fail(first)(StoreError::Unresolved(issues)));
        }
        tx.commit().await.map_err(|e| fail(0)(e.into()))?;
        // 4. Reads see the committed state.
        for (i, entry) in entries.iter().enumerate() {
            if let TxEntry::Read {
                resource_type,
                id,
                version,
            } = entry
            {
                let r = match version {
                    Some(v) => self.vread(ctx, *resource_type, id, *v).await,
                    None => self.read(ctx, *resource_type, id).await,
                };
                results[i] = Some(TxResult::Read(r));
            }
        }
        for (i, found) in existing.into_iter().enumerate() {
            if let Some(found) = found {
                results[i] = Some(TxResult::Existing(Written::from(&found)));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(TxResult::Skipped))
            .collect())
    }

    async fn conditional_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.conditional_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Unsupported("the store is closing".into()))
    }

    /// Point a transaction entry's references at what they resolve to: fullUrls of other entries
    /// (already in `resolved`) and conditional references (`Patient?identifier=a|b`), each of which
    /// must match exactly one resource and is looked up once per transaction.
    async fn resolve_entry_references(
        &self,
        ctx: &AccessContext,
        resource: &mut Value,
        resolved: &mut std::collections::HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut wanted = Vec::new();
        conditional_references(resource, &mut wanted);
        for reference in wanted {
            if resolved.contains_key(&reference) {
                continue;
            }
            let (type_name, query) = reference.split_once('?').unwrap_or_default();
            let rt = ResourceType::parse(type_name).ok_or_else(|| {
                StoreError::BadRequest(format!(
                    "conditional reference to an unknown type '{}'",
                    crate::fhir::printable(type_name)
                ))
            })?;
            let found = self
                .conditional_match(ctx, rt, query)
                .await?
                .ok_or_else(|| {
                    StoreError::BadRequest(format!(
                        "the conditional reference {type_name}?... matches no resource"
                    ))
                })?;
            resolved.insert(reference, format!("{rt}/{}", found.id));
        }
        resolve_references(resource, resolved);
        // A `urn:` reference that names no entry of the transaction would be stored pointing
        // nowhere (R4: the transaction fails). A Bundle's own entries refer to each other.
        if resource.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            if let Some(dangling) = first_urn_reference(resource) {
                return Err(StoreError::BadRequest(format!(
                    "the reference {} names no entry of this transaction",
                    crate::fhir::printable(dangling)
                )));
            }
        }
        Ok(())
    }

    /// `Patient/{id}/$everything`: the current resources in the patient's compartment (every resource
    /// sealed under the patient's key scope), narrowed to the types the caller may read, ordered by
    /// type and id, one page at a time.
    pub async fn everything(
        &self,
        ctx: &AccessContext,
        patient: &ResourceId,
        query: &EverythingQuery,
    ) -> Result<EverythingPage, StoreError> {
        let scope = format!("Patient/{patient}");
        let reference = format!("Patient/{patient}/$everything");
        let result = self.everything_inner(ctx, patient, &scope, query).await;
        let record = AuditRecord {
            query: None,
            interaction: Interaction::Operation,
            outcome: match &result {
                Ok(_) => Outcome::Success,
                Err(e) => outcome_of(e),
            },
            recorded: self.clock.now(),
            what: Some(reference),
            patient: result.as_ref().ok().map(|_| scope.clone()),
        };
        self.audit_record(ctx, &record).await?;
        result
    }

    async fn everything_inner(
        &self,
        ctx: &AccessContext,
        patient: &ResourceId,
        scope: &str,
        query: &EverythingQuery,
    ) -> Result<EverythingPage, StoreError> {
        ctx.check("Patient", Permission::Read)?;
        let plan = self.plan(ctx).await?;
        let open: Vec<&str> = ResourceType::all()
            .map(|t| t.as_str())
            .filter(|t| ctx.check(t, Permission::Read).is_ok())
            .filter(|t| plan.visible(Some(scope), t))
            .collect();
        // A compartment the caller may see nothing of looks like a patient that does not exist.
        if open.is_empty() {
            return Err(StoreError::NotFound(format!("Patient/{patient}")));
        }
        let mut after: Option<(String, String)> = match &query.after {
            Some(text) => Some(self.open_position("everything", text).await?),
            None => None,
        };
        let mut tx = self.begin_for(ctx).await?;
        // The patient must exist (and not be deleted) for its compartment to be asked for.
        read_head(&mut tx, patient).await?;
        let readable: Vec<&str> = open
            .into_iter()
            .filter(|t| query.types.is_empty() || query.types.iter().any(|q| q.as_str() == *t))
            .collect();
        let count = query.count.clamp(1, MAX_HISTORY_COUNT);
        let mut entries = Vec::with_capacity(count);
        let mut next = None;
        // Pages are filled past what the caller may not see (a label, another patient's
        // compartment), and the sealed position never tells what was skipped.
        'pages: for round in 0..MAX_FILL_ROUNDS {
            let rows = sqlx::query(
                "SELECT h.resource_type, h.id, v.version_id, v.last_updated, v.sealed,
                        k.id AS dek_id, k.scope, k.wrapped
                   FROM resources h
                   JOIN resource_versions v
                     ON v.resource_type = h.resource_type AND v.id = h.id
                    AND v.version_id = h.version_id
                   JOIN data_keys k ON k.id = v.dek_id
                  WHERE h.compartment = $1 AND NOT h.deleted
                    AND h.resource_type = ANY($2)
                    AND ($3::timestamptz IS NULL OR v.last_updated >= $3)
                    AND ($4::text IS NULL OR (h.resource_type, h.id) > ($4, $5))
                  ORDER BY h.resource_type, h.id
                  LIMIT $6",
            )
            .bind(scope)
            .bind(&readable)
            .bind(query.since)
            .bind(after.as_ref().map(|(t, _)| t.clone()))
            .bind(after.as_ref().map(|(_, i)| i.clone()))
            .bind(i64::try_from(count + 1).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            let exhausted = rows.len() <= count;
            for row in &rows {
                if entries.len() == count {
                    next = after.clone();
                    break 'pages;
                }
                let type_name: String = row.try_get("resource_type")?;
                let resource_type = ResourceType::parse(&type_name).ok_or(StoreError::Integrity)?;
                let entry = self.open_row(resource_type, row).await?;
                after = Some((type_name, entry.id.clone()));
                if reach::body_visible(&plan, resource_type, &entry.id, &entry.body) {
                    entries.push(entry);
                }
            }
            if exhausted {
                break;
            }
            if round + 1 == MAX_FILL_ROUNDS {
                next = after.clone();
            }
        }
        drop(tx);
        let next = match next {
            Some(position) => Some(self.seal_position("everything", &position).await?),
            None => None,
        };
        Ok(EverythingPage { entries, next })
    }

    /// One statement in a transaction of its own under the caller's row-level security.
    pub(crate) async fn fetch_all_for<'q>(
        &self,
        ctx: &AccessContext,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
        let mut tx = self.begin_for(ctx).await?;
        let rows = query.fetch_all(&mut *tx).await?;
        // Read only: the rollback goes out with the connection's next statement.
        drop(tx);
        Ok(rows)
    }

    /// Rewrap every stored data key under the key provider's newest key version, in batches, while
    /// the server keeps serving: the DEKs themselves do not change, so cached keys stay valid.
    /// Returns how many keys were rewrapped.
    pub async fn rewrap_all(
        &self,
        ctx: &AccessContext,
        progress: impl FnMut(u64, u64),
    ) -> Result<u64, StoreError> {
        // An administrator's operation (refused, and audited as refused, to anyone else).
        if ctx.role != crate::access::Role::Admin {
            self.record_admin(ctx, "key-rotation", false).await?;
            return Err(Denied::AdministratorsOnly.into());
        }
        // Audited when it starts (it may run long, or be stopped) and when it fails, besides the
        // completion event.
        self.record_admin(ctx, "key-rotation-start", true).await?;
        let result = self.rewrap_all_inner(ctx, progress).await;
        if result.is_err() {
            self.record_admin(ctx, "key-rotation", false).await?;
        }
        result
    }

    async fn rewrap_all_inner(
        &self,
        ctx: &AccessContext,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, StoreError> {
        let target: i32 = self.keys.rotate().await?;
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE key_version < $1")
                .bind(target)
                .fetch_one(&self.pool)
                .await?;
        let total = u64::try_from(total).unwrap_or(0);
        let mut done = 0u64;
        let mut after = 0i64;
        loop {
            let batch = sqlx::query(
                "SELECT id, wrapped FROM data_keys WHERE key_version < $1 AND id > $2 ORDER BY id LIMIT 100",
            )
            .bind(target)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            if batch.is_empty() {
                break;
            }
            for row in &batch {
                let id: i64 = row.try_get("id")?;
                let wrapped: String = row.try_get("wrapped")?;
                let rewrapped = self.keys.rewrap(&wrapped).await?;
                // Only replace what we read: a concurrent rewrap of the same row wins harmlessly.
                sqlx::query(
                    "UPDATE data_keys SET wrapped = $1, key_version = $2, rewrapped_at = $3
                      WHERE id = $4 AND wrapped = $5",
                )
                .bind(&rewrapped.wrapped)
                .bind(rewrapped.key_version)
                .bind(self.clock.now())
                .bind(id)
                .bind(&wrapped)
                .execute(&self.pool)
                .await?;
                after = id;
                done += 1;
                progress(done, total);
            }
        }
        let mut tx = self.pool.begin().await?;
        self.audit_in(
            &mut tx,
            ctx,
            &AuditRecord {
                query: None,
                interaction: Interaction::Update,
                outcome: Outcome::Success,
                recorded: self.clock.now(),
                what: Some(format!("urn:carapace:key-rotation:v{target}")),
                patient: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Seal a small server secret (a TOTP seed) under the identity data key, bound to `purpose`.
    /// The result carries the data key's id, so it can be opened after key rotation.
    pub async fn seal_secret(
        &self,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let (dek_id, dek) = self.dek_for_scope(IDENTITY_SCOPE).await?;
        let mut out = dek_id.to_be_bytes().to_vec();
        out.extend(crypto::seal_with_aad(&dek, &secret_aad(purpose), plaintext));
        Ok(out)
    }

    pub async fn open_secret(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (id, body) = sealed.split_at_checked(8).ok_or(StoreError::Integrity)?;
        let dek_id = i64::from_be_bytes(id.try_into().map_err(|_| StoreError::Integrity)?);
        let row = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE id = $1")
            .bind(dek_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::Integrity)?;
        let key = DekRow::from_parts(&row)?;
        let dek = self.dek_by_id(&key).await?;
        crypto::open_with_aad(&dek, &secret_aad(purpose), body).map_err(|_| StoreError::Integrity)
    }

    /// Audit an administrative action or sign-in: `what` names it (`user-create:alice`).
    pub async fn record_admin(
        &self,
        ctx: &AccessContext,
        what: &str,
        success: bool,
    ) -> Result<(), StoreError> {
        let outcome = if success {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        };
        self.audit_record(ctx, &admin::admin_record(self, what, outcome))
            .await
    }

    /// Load the audit trail's keys (data keys under scopes `audit/chain` and `audit/events`),
    /// once. Until they are loaded (the key provider may be down at start-up) every audit write
    /// tries again, and fails while it cannot: no request is served unaudited.
    pub async fn load_audit_key(&self) -> Result<(), StoreError> {
        if !self.audit.has_chain_key() {
            let chain = self.audit_key().await?;
            let (seal_id, seal) = self.dek_for_scope(AUDIT_EVENTS_SCOPE).await?;
            let seal = Dek::from_bytes(seal.expose()).ok_or(StoreError::Integrity)?;
            self.audit.set_keys(audit::AuditKeys {
                chain,
                seal,
                seal_id,
            });
        }
        Ok(())
    }

    /// Record an event through the group-committing writer; returns once it is committed.
    async fn audit_record(
        &self,
        ctx: &AccessContext,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.audit_records(ctx, std::slice::from_ref(record)).await
    }

    /// Record events through the group-committing writer (committed together when they can be);
    /// returns once all are committed.
    async fn audit_records(
        &self,
        ctx: &AccessContext,
        records: &[AuditRecord],
    ) -> Result<(), StoreError> {
        self.load_audit_key().await?;
        Ok(self.audit.record_all(ctx, records).await?)
    }

    /// Record an event inside the caller's transaction.
    async fn audit_in(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.audit_all_in(conn, ctx, std::slice::from_ref(record))
            .await
    }

    /// Record an event per record inside the caller's transaction.
    async fn audit_all_in(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        records: &[AuditRecord],
    ) -> Result<(), StoreError> {
        self.load_audit_key().await?;
        Ok(self.audit.record_all_in(conn, ctx, records).await?)
    }

    async fn audit_key(&self) -> Result<Dek, StoreError> {
        let (_, dek) = self.dek_for_scope(AUDIT_CHAIN_SCOPE).await?;
        Dek::from_bytes(dek.expose()).ok_or(StoreError::Integrity)
    }

    /// Chain the audit events committed since the last run, in batches, until none wait (see
    /// [`audit::chain_pending`]). The server runs it continually; `audit verify` first.
    pub async fn chain_audit(&self) -> Result<u64, StoreError> {
        self.load_audit_key().await?;
        let keys = self.audit.keys().ok_or(StoreError::Integrity)?;
        let mut chained = 0;
        loop {
            let mut tx = self.begin_internal().await?;
            let n = audit::chain_pending(&mut tx, keys).await?;
            tx.commit().await?;
            chained += n;
            if n == 0 {
                return Ok(chained);
            }
        }
    }

    /// Walk the audit chain and report the first event edited, deleted, reordered or inserted
    /// (after chaining what waits).
    pub async fn verify_audit_chain(
        &self,
        anchor: Option<&(i64, Vec<u8>)>,
        progress: impl FnMut(u64, u64),
    ) -> Result<audit::ChainReport, StoreError> {
        self.chain_audit().await?;
        let key = self.audit_key().await?;
        Ok(audit::verify_chain(&self.pool, &key, anchor, progress).await?)
    }

    /// Stored data keys by key version, for status displays.
    pub async fn key_versions(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_version, count(*) AS n FROM data_keys GROUP BY key_version ORDER BY key_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_version")?, r.try_get("n")?)))
            .collect()
    }

    async fn open_body(
        &self,
        resource_type: ResourceType,
        id: &str,
        version_id: i64,
        key: &DekRow,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let dek = self.dek_by_id(key).await?;
        crypto::open(
            &dek,
            Binding {
                resource_type: resource_type.as_str(),
                id,
                version_id,
                compartment: &key.scope,
            },
            sealed,
        )
        .map_err(|e| {
            // No PHI here: type, id and version are identifiers, not content.
            tracing::error!(%resource_type, %id, version_id, error = %e, "sealed body did not open");
            StoreError::Integrity
        })
    }

    async fn dek_by_id(&self, key: &DekRow) -> Result<Arc<Dek>, StoreError> {
        if let Some(dek) = self.cache.get(key.id, Instant::now()) {
            return Ok(dek);
        }
        let dek = self
            .keys
            .unwrap_dek(&key.wrapped)
            .await
            .map_err(|e| match e {
                KeyError::Rejected(_) => StoreError::Integrity,
                other => StoreError::Key(other),
            })?;
        Ok(self.cache.insert(key.id, &key.scope, dek, Instant::now()))
    }

    /// The data key for a key scope, creating it on first use.
    async fn dek_for_scope(&self, scope: &str) -> Result<(i64, Arc<Dek>), StoreError> {
        if let Some(hit) = self.cache.get_scope(scope, Instant::now()) {
            return Ok(hit);
        }
        let existing = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = existing {
            let key = DekRow::from_parts(&row)?;
            return Ok((key.id, self.dek_by_id(&key).await?));
        }
        let (dek, wrapped) = self.keys.generate().await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO data_keys (scope, wrapped, key_version, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (scope) DO NOTHING RETURNING id",
        )
        .bind(scope)
        .bind(&wrapped.wrapped)
        .bind(wrapped.key_version)
        .bind(self.clock.now())
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(id) => Ok((id, self.cache.insert(id, scope, dek, Instant::now()))),
            None => {
                // Another request created this scope's key first: use theirs.
                let row = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE scope = $1")
                    .bind(scope)
                    .fetch_one(&self.pool)
                    .await?;
                let key = DekRow::from_parts(&row)?;
                Ok((key.id, self.dek_by_id(&key).await?))
            }
        }
    }

    /// A refused or failed write is audited too, outside the (rolled back) data transaction.
    async fn audit_if_failed<T>(
        &self,
        ctx: &AccessContext,
        interaction: Interaction,
        what: impl FnOnce() -> String,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(error) = &result {
            let record = AuditRecord {
                query: None,
                interaction,
                outcome: outcome_of(error),
                recorded: self.clock.now(),
                what: Some(what()),
                patient: None,
            };
            if let Err(e) = self.audit_record(ctx, &record).await {
                tracing::error!(error = %e, "could not audit a failed request");
            }
        }
        result
    }
}

/// A create or update checked and keyed, ready to be written inside a transaction.
struct Prepared {
    resource_type: ResourceType,
    id: String,
    resource: Value,
    scope: String,
    dek_id: i64,
    dek: Arc<Dek>,
    index: IndexRows,
    /// The server chose the id (a create, a conditional update that matched nothing): no caller
    /// learns anything from where it lands.
    server_id: bool,
}

/// A new resource, stamped as version 1, sealed and indexed: all an insert needs, without the
/// parsed tree (a transaction of thousands of entries holds only these).
struct NewResource {
    resource_type: ResourceType,
    id: String,
    scope: String,
    dek_id: i64,
    sealed: Vec<u8>,
    index: IndexRows,
}

/// New resources are inserted this many to a statement.
const INSERT_CHUNK: usize = 500;

/// Stamp a prepared create as version 1 at `now` and seal it; the body is returned too, for the
/// callers that answer with it.
fn seal_new(prepared: Prepared, now: DateTime<Utc>) -> Result<(NewResource, Vec<u8>), StoreError> {
    let Prepared {
        resource_type,
        id,
        mut resource,
        scope,
        dek_id,
        dek,
        index,
        server_id: _,
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
        },
        body,
    ))
}

struct DekRow {
    id: i64,
    scope: String,
    wrapped: String,
}

impl DekRow {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<DekRow, StoreError> {
        Ok(DekRow {
            id: row
                .try_get::<Option<i64>, _>("dek_id")?
                .ok_or(StoreError::Integrity)?,
            scope: row
                .try_get::<Option<String>, _>("scope")?
                .ok_or(StoreError::Integrity)?,
            wrapped: row
                .try_get::<Option<String>, _>("wrapped")?
                .ok_or(StoreError::Integrity)?,
        })
    }

    fn from_parts(row: &sqlx::postgres::PgRow) -> Result<DekRow, StoreError> {
        Ok(DekRow {
            id: row.try_get("id")?,
            scope: row.try_get("scope")?,
            wrapped: row.try_get("wrapped")?,
        })
    }
}

fn outcome_of(e: &StoreError) -> Outcome {
    match e {
        StoreError::Key(_)
        | StoreError::Integrity
        | StoreError::Audit(_)
        | StoreError::Database(_) => Outcome::SeriousFailure,
        _ => Outcome::MinorFailure,
    }
}

/// One row of `resource_versions`.
struct NewVersion<'a> {
    resource_type: ResourceType,
    id: &'a str,
    version_id: i64,
    at: DateTime<Utc>,
    /// POST, PUT or DELETE.
    method: &'static str,
    dek_id: Option<i64>,
    sealed: Option<&'a [u8]>,
}

/// Take a transaction-scoped advisory lock per condition (`Type?query`), in one order so that two
/// transactions never wait on each other: two concurrent `ifNoneExist` creates of the same patient
/// make one resource, not two. The locks go with the transaction.
async fn lock_conditions(
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
        "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, method, dek_id, sealed)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(v.resource_type.as_str())
    .bind(v.id)
    .bind(v.version_id)
    .bind(v.at)
    .bind(v.method)
    .bind(v.dek_id)
    .bind(v.sealed)
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
fn check_resource(resource_type: ResourceType, resource: &Value) -> Result<(), StoreError> {
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
    validate::validate_resource(resource).map_err(StoreError::Invalid)
}

fn set_id(resource: &mut Value, id: &str) {
    if let Value::Object(map) = resource {
        map.insert("id".into(), Value::String(id.to_string()));
    }
}

/// Set `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta` as the client sent it.
fn stamp_meta(resource: &mut Value, version_id: i64, at: DateTime<Utc>) {
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

/// Replace every `reference` that names a transaction entry's fullUrl (`urn:uuid:...`) with the
/// entry's resolved `Type/id`.
/// Every conditional reference (`Type?query`) in a resource.
fn conditional_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(r))
                        if r.split_once('?').is_some_and(|(t, _)| {
                            !t.is_empty() && !t.contains(['/', ':', '#'])
                        }) =>
                    {
                        out.push(r.clone())
                    }
                    _ => conditional_references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// The first `reference` that is still a `urn:` (after resolution: one that named no entry).
fn first_urn_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("reference", Value::String(r)) if r.starts_with("urn:") => Some(r.as_str()),
            _ => first_urn_reference(v),
        }),
        Value::Array(items) => items.iter().find_map(first_urn_reference),
        _ => None,
    }
}

fn resolve_references(value: &mut Value, resolved: &std::collections::HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "reference" {
                    if let Some(target) = v.as_str().and_then(|r| resolved.get(r)) {
                        *v = Value::String(target.clone());
                        continue;
                    }
                }
                resolve_references(v, resolved);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| resolve_references(v, resolved)),
        _ => {}
    }
}

/// The current version of a resource with its key (what the gate decides on), locked for a write
/// when `for_update`: `version_id`, `deleted`, `sealed`, `dek_id`, `scope`, `wrapped`.
async fn head_row(
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

async fn read_head(conn: &mut sqlx::PgConnection, patient: &ResourceId) -> Result<(), StoreError> {
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

fn patient_of(scope: &str) -> Option<String> {
    scope.starts_with("Patient/").then(|| scope.to_string())
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn observations_are_keyed_to_their_patient() {
        let t = ResourceType::parse("Observation").unwrap();
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(key_scope(t, "o1", &obs), "Patient/p1");
        let absolute = json!({"resourceType": "Observation",
            "subject": {"reference": "https://ehr.example/fhir/Patient/p2/_history/3"}});
        assert_eq!(key_scope(t, "o1", &absolute), "Patient/p2");
        let group = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert_eq!(key_scope(t, "o1", &group), "type/Observation");
        let patient = ResourceType::parse("Patient").unwrap();
        assert_eq!(key_scope(patient, "p9", &json!({})), "Patient/p9");
        let org = ResourceType::parse("Organization").unwrap();
        assert_eq!(key_scope(org, "o", &json!({})), "type/Organization");
    }

    #[test]
    fn meta_keeps_client_fields() {
        let mut r = json!({"resourceType": "Patient", "meta": {"profile": ["http://x"]}});
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .to_utc();
        stamp_meta(&mut r, 3, at);
        assert_eq!(r["meta"]["profile"][0], "http://x");
        assert_eq!(r["meta"]["versionId"], "3");
        assert_eq!(r["meta"]["lastUpdated"], "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn form_pairs_decode() {
        assert_eq!(
            form_pairs("_id=a%2Fb&x=1+2"),
            vec![("_id".into(), "a/b".into()), ("x".into(), "1 2".into())]
        );
    }
}
