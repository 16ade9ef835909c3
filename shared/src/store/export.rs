//! What a Bulk Data export reads: the current resources of one type that the caller's searches
//! would return (the same SQL, built by the same [`Builder`] under the same plan: scopes, role,
//! consent, labels), narrowed to patients and to a `_since`, streamed from one read-only snapshot
//! so that every file of a job reflects one `transactionTime` and memory holds one row at a time.
//! Writing the files, the jobs and their audit are the `export` floor's.

use super::search::{authorize_search, SearchKeys};
use super::{reach, Store, StoreError, StoredResource};
use crate::access::policy::Plan;
use crate::access::{AccessContext, Permission};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::ResourceType;
use crate::search::query::SearchQuery;
use crate::search::sql::Builder;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::Row;
use std::sync::Arc;

/// Whose records a slice of an export covers.
#[derive(Debug, Clone, Copy)]
pub enum Patients<'a> {
    /// Every resource of the type (a system-level export).
    Any,
    /// Resources in some patient's compartment (a Patient-level export of every patient).
    InSome,
    /// Resources in the compartment of one of these patients (ids): a `patient` parameter, a
    /// Group's members, a patient's own record.
    Only(&'a [String]),
}

/// One type of an export: which of its resources go into the files.
#[derive(Debug, Clone, Copy)]
pub struct Slice<'a> {
    pub resource_type: ResourceType,
    /// `_typeFilter` searches of this type: a resource matching any of them is exported; none
    /// means all.
    pub filters: &'a [SearchQuery],
    /// `_since`: only resources changed at or after it.
    pub since: Option<DateTime<Utc>>,
    pub patients: Patients<'a>,
}

/// Why reading an export stopped: the store failed, or the sink (the file being written) did.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Sink(#[from] std::io::Error),
}

impl From<crate::access::Denied> for ReadError {
    fn from(e: crate::access::Denied) -> ReadError {
        ReadError::Store(e.into())
    }
}

impl From<crate::search::query::BadSearch> for ReadError {
    fn from(e: crate::search::query::BadSearch) -> ReadError {
        ReadError::Store(e.into())
    }
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> ReadError {
        ReadError::Store(e.into())
    }
}

/// One read-only snapshot of the store, as one caller sees it.
pub struct ExportReader<'s> {
    store: &'s Store,
    ctx: AccessContext,
    plan: Arc<Plan>,
    keys: Arc<SearchKeys>,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// For an analytics caller, what every resource passes before it is written.
    release: Option<Arc<crate::deid::Deidentifier>>,
    /// The snapshot's time: nothing written after it is read (Bulk Data `transactionTime`).
    pub transaction_time: DateTime<Utc>,
}

impl Store {
    /// Open a snapshot for an export under `ctx` (its plan computed now: a consent revoked before
    /// the job runs is honoured).
    pub async fn export_reader(&self, ctx: &AccessContext) -> Result<ExportReader<'_>, StoreError> {
        let ctx = AccessContext {
            plan: Default::default(),
            ..ctx.clone()
        };
        let plan = self.plan(&ctx).await?;
        let keys = self.search_keys().await?;
        let release = self.releaser(&ctx).await?;
        let mut tx = crate::db::begin_snapshot_with_reach(&self.pool, &plan.row_reach()).await?;
        // The snapshot is taken by this first statement; the clock is read after it, so every
        // write the snapshot holds was committed before `transaction_time`.
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        let transaction_time = self.clock.now();
        Ok(ExportReader {
            store: self,
            ctx,
            plan,
            keys,
            tx,
            release,
            transaction_time,
        })
    }

    /// Record export events (kick-off, a file handed out, a patient whose data a job wrote), each
    /// naming the job (`what`), through the group-committing writer.
    pub async fn audit_export(
        &self,
        ctx: &AccessContext,
        what: &str,
        patients: &[Option<String>],
        success: bool,
    ) -> Result<(), StoreError> {
        let recorded = self.clock.now();
        let outcome = if success {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        };
        let records: Vec<AuditRecord> = patients
            .iter()
            .map(|patient| AuditRecord {
                interaction: Interaction::Export,
                outcome,
                recorded,
                what: Some(what.to_string()),
                patient: patient.clone(),
                query: None,
            })
            .collect();
        for batch in records.chunks(500) {
            self.audit_records(ctx, batch).await?;
        }
        Ok(())
    }
}

impl ExportReader<'_> {
    /// The types with current resources this caller may search (with `deleted`, or deleted
    /// ones: a `_since` export lists deletions of a type that has nothing left), in name order.
    pub async fn types_present(&mut self, deleted: bool) -> Result<Vec<ResourceType>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT resource_type FROM resources WHERE $1 OR NOT deleted ORDER BY 1",
        )
        .bind(deleted)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(names
            .iter()
            .filter_map(|n| ResourceType::parse(n))
            .filter(|t| self.ctx.check(t.as_str(), Permission::Search).is_ok())
            .collect())
    }

    /// Which of these patients (ids) exist and the caller may see: a Group's members through the
    /// gate, as a search of `Patient?_id=` would find them.
    pub async fn visible_patients(&mut self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if self.ctx.check("Patient", Permission::Search).is_err() {
            return Ok(Vec::new());
        }
        let mut b = Builder::new(&self.keys.index, self.now_ms(), &self.plan);
        b.qb.push("SELECT h.id FROM resources h WHERE h.resource_type = 'Patient' AND NOT h.deleted AND h.id = ANY(");
        b.qb.push_bind(ids.to_vec());
        b.qb.push(")");
        b.push_reach("h", "Patient")?;
        let rows = b.qb.build().fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    fn now_ms(&self) -> i64 {
        self.transaction_time.timestamp_millis()
    }

    /// ` AND` resource row `r` belongs to the slice's patients.
    fn push_patients(b: &mut Builder<'_>, r: &str, patients: Patients<'_>) {
        match patients {
            Patients::Any => {}
            Patients::InSome => {
                b.qb.push(format!(" AND {r}.compartment IS NOT NULL"));
            }
            Patients::Only(ids) => {
                let scopes: Vec<String> = ids.iter().map(|p| format!("Patient/{p}")).collect();
                b.qb.push(format!(" AND ({r}.compartment = ANY("));
                b.qb.push_bind(scopes);
                b.qb.push(format!(
                    ") OR EXISTS (SELECT 1 FROM search_ref c WHERE c.resource_type = {r}.resource_type \
                     AND c.id = {r}.id AND c.param = '_compartment' AND c.target_id = ANY("
                ));
                b.qb.push_bind(ids.to_vec());
                b.qb.push(")))");
            }
        }
    }

    /// The slice's matches (ids and current versions): the union of its filters' searches.
    fn push_matches(&self, b: &mut Builder<'_>, slice: &Slice<'_>) -> Result<(), StoreError> {
        let all;
        let queries: &[SearchQuery] = if slice.filters.is_empty() {
            all = [crate::search::query::parse(
                slice.resource_type,
                &[],
                false,
            )?];
            &all
        } else {
            slice.filters
        };
        for (i, query) in queries.iter().enumerate() {
            authorize_search(
                &self.ctx,
                query,
                chrono::Datelike::year(&self.transaction_time),
            )?;
            if i > 0 {
                b.qb.push(" UNION ");
            }
            b.qb.push("(");
            b.push_matches(query)?;
            b.qb.push(")");
        }
        Ok(())
    }

    /// Every resource of the slice, opened, handed to `each` with the patient compartments it is
    /// in (for the job's audit), one row at a time; returns how many.
    pub async fn each_resource(
        &mut self,
        slice: &Slice<'_>,
        mut each: impl FnMut(&StoredResource, Vec<Option<String>>) -> std::io::Result<()>,
    ) -> Result<u64, ReadError> {
        let rt = slice.resource_type;
        self.ctx.check(rt.as_str(), Permission::Search)?;
        super::release::since_allowed(&self.ctx, slice.since)?;
        let keys = self.keys.clone();
        let mut b = Builder::new(&keys.index, self.now_ms(), &self.plan);
        b.qb.push(
            "SELECT f.id, f.version_id, v.last_updated, v.sealed, k.id AS dek_id, k.scope, \
             k.wrapped FROM (",
        );
        self.push_matches(&mut b, slice)?;
        b.qb.push(") f JOIN resources r ON r.resource_type = ");
        b.qb.push_bind(rt.as_str());
        b.qb.push(" AND r.id = f.id JOIN resource_versions v ON v.resource_type = ");
        b.qb.push_bind(rt.as_str());
        b.qb.push(
            " AND v.id = f.id AND v.version_id = f.version_id \
             JOIN data_keys k ON k.id = v.dek_id WHERE true",
        );
        if let Some(since) = slice.since {
            b.qb.push(" AND v.last_updated >= ");
            b.qb.push_bind(since);
        }
        Self::push_patients(&mut b, "r", slice.patients);
        let release = self.release.as_deref();
        let this_year = chrono::Datelike::year(&self.transaction_time);
        opened(
            self.store,
            &mut self.tx,
            rt,
            b.qb.build(),
            release,
            this_year,
            &mut each,
        )
        .await
    }

    /// Resources of the slice's type deleted at or after `since` that the caller could have seen,
    /// as `Type/id`: by compartment and type (the deletion's row), and by the last version it had
    /// — its labels and every patient it named, as history decides on a deletion. (A deletion has
    /// no index rows left: `_typeFilter` cannot be asked of it, so the type's deletions are listed
    /// whole.)
    pub async fn each_deleted(
        &mut self,
        slice: &Slice<'_>,
        since: DateTime<Utc>,
        mut each: impl FnMut(&str) -> std::io::Result<()>,
    ) -> Result<u64, ReadError> {
        let rt = slice.resource_type;
        self.ctx.check(rt.as_str(), Permission::Search)?;
        let keys = self.keys.clone();
        let mut b = Builder::new(&keys.index, self.now_ms(), &self.plan);
        b.qb.push(
            "SELECT h.id, p.version_id, p.last_updated, p.sealed, k.id AS dek_id, k.scope, \
             k.wrapped FROM resources h JOIN resource_versions v ON v.resource_type = \
             h.resource_type AND v.id = h.id AND v.version_id = h.version_id \
             LEFT JOIN LATERAL (SELECT x.version_id, x.last_updated, x.sealed, x.dek_id \
                  FROM resource_versions x WHERE x.resource_type = h.resource_type \
                   AND x.id = h.id AND x.sealed IS NOT NULL \
                 ORDER BY x.version_id DESC LIMIT 1) p ON true \
             LEFT JOIN data_keys k ON k.id = p.dek_id \
             WHERE h.deleted AND h.resource_type = ",
        );
        b.qb.push_bind(rt.as_str());
        b.qb.push(" AND v.last_updated >= ");
        b.qb.push_bind(since);
        b.push_compartments("h");
        Self::push_patients(&mut b, "h", slice.patients);
        let mut count = 0u64;
        let mut rows = b.qb.build().fetch(&mut *self.tx);
        while let Some(row) = rows.try_next().await? {
            let id: String = row.try_get("id")?;
            let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
            // Its last content decides, as for a history entry of the deletion; a resource
            // never stored with content shows nothing to hide.
            if sealed.is_some() {
                let last = self.store.open_row(rt, &row).await?;
                if !reach::body_visible(&self.plan, rt, &id, &last.body) {
                    continue;
                }
            }
            let id = match &self.release {
                Some(deid) => deid.pseudonym(rt.as_str(), &id),
                None => id,
            };
            each(&format!("{rt}/{id}"))?;
            count += 1;
        }
        Ok(count)
    }

    /// `includeAssociatedData=LatestProvenanceResources`: for the slice's resources, the latest
    /// Provenance naming each as its `target` — itself through the gate like any Provenance
    /// search. Each Provenance id goes to `each` (which skips those already written).
    pub async fn each_latest_provenance(
        &mut self,
        slice: &Slice<'_>,
        mut each: impl FnMut(&StoredResource, Vec<Option<String>>) -> std::io::Result<()>,
    ) -> Result<u64, ReadError> {
        let rt = slice.resource_type;
        let provenance = ResourceType::parse("Provenance").ok_or(StoreError::Integrity)?;
        self.ctx.check("Provenance", Permission::Search)?;
        let keys = self.keys.clone();
        let mut b = Builder::new(&keys.index, self.now_ms(), &self.plan);
        b.qb.push(
            "SELECT DISTINCT ON (t.target_id) p.id, p.version_id, v.last_updated, v.sealed, \
             k.id AS dek_id, k.scope, k.wrapped FROM (",
        );
        self.push_matches(&mut b, slice)?;
        b.qb.push(") f JOIN resources r ON r.resource_type = ");
        b.qb.push_bind(rt.as_str());
        b.qb.push(" AND r.id = f.id");
        Self::push_patients(&mut b, "r", slice.patients);
        b.qb.push(
            " JOIN search_ref t ON t.resource_type = 'Provenance' AND t.param = 'target' \
             AND t.target_type = ",
        );
        b.qb.push_bind(rt.as_str());
        b.qb.push(
            " AND t.target_id = f.id JOIN resources p ON p.resource_type = 'Provenance' \
             AND p.id = t.id AND NOT p.deleted",
        );
        b.push_reach("p", "Provenance")?;
        b.qb.push(
            " JOIN resource_versions v ON v.resource_type = 'Provenance' AND v.id = p.id \
             AND v.version_id = p.version_id JOIN data_keys k ON k.id = v.dek_id \
             ORDER BY t.target_id, v.last_updated DESC, p.id",
        );
        opened(
            self.store,
            &mut self.tx,
            provenance,
            b.qb.build(),
            self.release.as_deref(),
            chrono::Datelike::year(&self.transaction_time),
            &mut each,
        )
        .await
    }
}

/// Stream `query`'s rows (a version and its key each) from the snapshot, open each, and hand it
/// to `each` — de-identified for an analytics caller (`release`) — with the patient compartments
/// it is in (for the job's audit: the real ones); how many.
async fn opened(
    store: &Store,
    tx: &mut sqlx::PgConnection,
    rt: ResourceType,
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    release: Option<&crate::deid::Deidentifier>,
    this_year: i32,
    each: &mut impl FnMut(&StoredResource, Vec<Option<String>>) -> std::io::Result<()>,
) -> Result<u64, ReadError> {
    let mut count = 0u64;
    let mut rows = query.fetch(&mut *tx);
    while let Some(row) = rows.try_next().await? {
        let mut resource = store.open_row(rt, &row).await?;
        let patients = reach::compartments_of(
            rt,
            &resource.id,
            resource.patient.as_deref(),
            &resource.body,
        );
        if let Some(deid) = release {
            let release = super::release::Release { deid, this_year };
            resource = super::release::release_resource(&release, resource);
        }
        each(&resource, patients)?;
        count += 1;
    }
    Ok(count)
}

impl ExportReader<'_> {
    /// The patients (ids) a Group lists as `member.entity`, read from the snapshot through the
    /// gate like a read of the Group; `None` when there is no such Group the caller may see.
    pub async fn group_members(&mut self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let group = ResourceType::parse("Group").ok_or(StoreError::Integrity)?;
        if self.ctx.check("Group", Permission::Read).is_err() {
            return Ok(None);
        }
        let mut b = Builder::new(&self.keys.index, self.now_ms(), &self.plan);
        b.qb.push(
            "SELECT h.id, h.version_id, v.last_updated, v.sealed, k.id AS dek_id, k.scope, \
             k.wrapped FROM resources h JOIN resource_versions v ON v.resource_type = \
             h.resource_type AND v.id = h.id AND v.version_id = h.version_id \
             JOIN data_keys k ON k.id = v.dek_id \
             WHERE h.resource_type = 'Group' AND NOT h.deleted AND h.id = ",
        );
        b.qb.push_bind(id.to_string());
        b.push_reach("h", "Group")?;
        let Some(row) = b.qb.build().fetch_optional(&mut *self.tx).await? else {
            return Ok(None);
        };
        let resource = self.store.open_row(group, &row).await?;
        if !reach::body_visible(&self.plan, group, &resource.id, &resource.body) {
            return Ok(None);
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&resource.body).map_err(|_| StoreError::Integrity)?;
        let mut members = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let now = self.transaction_time;
        for member in doc["member"].as_array().into_iter().flatten() {
            // A former member (inactive, or whose membership period ended) is not in the cohort.
            let ended = member["period"]["end"]
                .as_str()
                .and_then(|end| crate::fhir::date_search_range(end).ok())
                .and_then(|r| r.hi)
                .is_some_and(|hi| hi < now);
            if member["inactive"] == true || ended {
                continue;
            }
            let Some(text) = member["entity"]["reference"].as_str() else {
                continue;
            };
            let patient = crate::fhir::reference::Reference::parse(text)
                .ok()
                .and_then(|r| r.patient_compartment());
            if let Some(id) = patient.as_deref().and_then(|p| p.strip_prefix("Patient/")) {
                if seen.insert(id.to_string()) {
                    members.push(id.to_string());
                }
            }
        }
        Ok(Some(members))
    }
}

impl Store {
    /// The data key of one export job (scope `export/<job>`, wrapped by the key provider like every
    /// data key): made at the kick-off (`create`), only looked up after it — a job whose key was
    /// destroyed (it expired) has none, and opens nothing.
    pub async fn export_key(
        &self,
        job: &str,
        create: bool,
    ) -> Result<Arc<crate::crypto::Dek>, StoreError> {
        let scope = format!("export/{job}");
        if !create {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT id FROM data_keys WHERE scope = $1")
                    .bind(&scope)
                    .fetch_optional(&self.pool)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("the key of export {job}")));
            }
        }
        Ok(self.dek_for_scope(&scope).await?.1)
    }

    /// Destroy the data keys of these export jobs (and of any export whose job is gone — made more
    /// than ten minutes ago, so never one whose kick-off is still committing), here and
    /// in this process's cache: a copy of their files opens to nothing from then on.
    pub async fn forget_export_keys(&self, jobs: &[String]) -> Result<u64, StoreError> {
        let scopes: Vec<String> = sqlx::query_scalar(
            "DELETE FROM data_keys WHERE scope LIKE 'export/%'
                AND (substr(scope, 8) = ANY($1)
                     OR (created_at < now() - interval '10 minutes'
                         AND NOT EXISTS (SELECT 1 FROM export_jobs j WHERE j.id = substr(scope, 8))))
             RETURNING scope",
        )
        .bind(jobs)
        .fetch_all(&self.pool)
        .await?;
        for scope in &scopes {
            self.cache.forget_scope(scope);
        }
        Ok(scopes.len() as u64)
    }

    /// Record export events inside the caller's transaction (a kick-off commits with its event).
    pub async fn audit_export_in(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        what: &str,
        patient: Option<String>,
    ) -> Result<(), StoreError> {
        let record = AuditRecord {
            interaction: Interaction::Export,
            outcome: Outcome::Success,
            recorded: self.clock.now(),
            what: Some(what.to_string()),
            patient,
            query: None,
        };
        self.audit_in(conn, ctx, &record).await
    }
}
