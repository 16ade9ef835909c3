//! The job table (`migrations/0013_export.sql`): kick-off, status, cancel, the runner's claim and
//! heartbeat, expiry, and the administrator's list and cancel.

use super::request::{ExportRequest, Level};
use super::{owner, ExportError, Exporter, MAX_ATTEMPTS, STALE_SECONDS};
use crate::access::{AccessContext, Denied, Permission, Role, Scope};
use crate::fhir::{ResourceId, ResourceType};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

/// Purpose of the sealed kick-off request (bound, with the job, into its additional data).
const REQUEST_PURPOSE: &str = "export-request";

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Complete => "complete",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "complete" => JobState::Complete,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }
}

/// What the kick-off request was, kept sealed with the job.
#[derive(Serialize, Deserialize)]
pub(super) struct Sealed {
    pub url: String,
    pub request: ExportRequest,
}

/// One file of a finished job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// `output`, `error` or `deleted`.
    pub kind: String,
    pub resource_type: String,
    pub name: String,
    pub count: i64,
    pub bytes: i64,
}

/// A finished job's manifest (IG `export.html#response---complete-status`).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub job: String,
    pub transaction_time: DateTime<Utc>,
    pub request: String,
    pub files: Vec<ManifestFile>,
    pub members_left_out: Option<i32>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Manifest {
    /// The manifest as the IG's JSON, its files' URLs under `base`.
    pub fn to_json(&self, base: &str) -> Value {
        let list = |kind: &str| -> Vec<Value> {
            self.files
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| {
                    json!({"type": f.resource_type, "url": format!("{base}/_export/{}/{}", self.job, f.name),
                           "count": f.count})
                })
                .collect()
        };
        let mut manifest = json!({
            "transactionTime": self.transaction_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "request": self.request,
            "requiresAccessToken": true,
            "output": list("output"),
            "error": list("error"),
        });
        let deleted = list("deleted");
        if !deleted.is_empty() {
            manifest["deleted"] = Value::Array(deleted);
        }
        if let Some(n) = self.members_left_out {
            manifest["extension"] = json!({"https://carapace.dev/fhir/bulk/members-left-out": n});
        }
        manifest
    }
}

/// A job's status as its owner polls it.
#[derive(Debug, Clone)]
pub enum Status {
    InProgress {
        state: JobState,
        progress: String,
    },
    Complete(Manifest),
    /// The job failed; the words name why (no PHI).
    Failed(String),
}

/// One job as the administrator's console lists it (no request: it may name a patient).
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub id: String,
    pub principal: String,
    pub client_id: Option<String>,
    pub level: String,
    pub state: JobState,
    pub progress: String,
    pub resources: i64,
    pub bytes: i64,
    pub files: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// A job the runner claimed, with the authority it runs under.
pub(super) struct Claimed {
    pub id: String,
    pub ctx: AccessContext,
    pub sealed: Sealed,
    /// The run's number (1, 2, ...): fences every later write of the run (a run overtaken by
    /// another claim can neither beat, finish nor fail the job).
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// The additional data of a job's sealed request: bound to its job.
fn request_aad(id: &str) -> Vec<u8> {
    format!("{REQUEST_PURPOSE}\0{id}").into_bytes()
}

/// May `ctx` see a job that `scopes` and `patient` started? Its owner (subject and client, in the
/// query) with at least the job's scopes and the same launch patient: a narrower token of the same
/// client (a script's, a refreshed one) or another patient's launch does not reach the export.
fn may_see(ctx: &AccessContext, scopes: &[String], patient: &Option<String>) -> bool {
    let mine: Vec<String> = ctx.scopes.iter().map(Scope::to_string).collect();
    ctx.patient == *patient && scopes.iter().all(|s| mine.contains(s))
}

fn audit_what(id: &str) -> String {
    format!("urn:carapace:export:{id}")
}

impl Exporter {
    /// Start a job: checked against the caller's scopes now (and run under their whole plan
    /// later); 429 when the caller already has as many jobs queued or running as they may. The
    /// kick-off is audited, refused or not.
    pub async fn kick_off(
        &self,
        ctx: &AccessContext,
        request: ExportRequest,
        url: &str,
    ) -> Result<String, ExportError> {
        let id = uuid::Uuid::new_v4().to_string();
        let result = self.kick_off_inner(ctx, request, url, &id).await;
        match &result {
            // An accepted kick-off committed with its event.
            Ok(()) => self.wake.notify_one(),
            Err(_) => {
                self.store
                    .audit_export(
                        ctx,
                        "urn:carapace:export:refused",
                        &[ctx.compartment()],
                        false,
                    )
                    .await?
            }
        }
        result.map(|()| id)
    }

    async fn kick_off_inner(
        &self,
        ctx: &AccessContext,
        mut request: ExportRequest,
        url: &str,
        id: &str,
    ) -> Result<(), ExportError> {
        // A patient exports their own record, and nothing else.
        if ctx.role == Role::Patient || ctx.patient.is_some() {
            let own = ctx.patient.clone().ok_or(Denied::OutsideCompartment)?;
            if request.level != Level::Patient || request.patients.iter().any(|p| *p != own) {
                return Err(ExportError::Denied(Denied::OutsideCompartment));
            }
            request.patients = vec![own];
        }
        for t in request.types.iter().flatten() {
            ctx.check(t, Permission::Search)?;
        }
        for t in &request.type_filters {
            let rt = t.split('?').next().and_then(ResourceType::parse);
            if let Some(rt) = rt {
                for q in request.filters_of(rt)? {
                    ctx.check(q.resource_type.as_str(), Permission::Search)?;
                    for joined in q.joined_types() {
                        ctx.check(joined, Permission::Search)?;
                    }
                }
            }
        }
        if request.latest_provenance {
            ctx.check("Provenance", Permission::Search)?;
        }
        if let Level::Group(group) = &request.level {
            // The Group must be one the caller may read (a read, audited as one).
            let gid = ResourceId::parse(group).map_err(|_| ExportError::NotFound)?;
            let rt = ResourceType::parse("Group").ok_or(ExportError::NotFound)?;
            self.store.read(ctx, rt, &gid).await?;
        }
        let (principal, client) = owner(ctx);
        let sealed = serde_json::to_vec(&Sealed {
            url: url.to_string(),
            request: request.clone(),
        })
        .map_err(|_| ExportError::NotFound)?;
        let mut tx = self.store.pool().begin().await?;
        // One kick-off per owner at a time decides the limit (two racing kick-offs cannot both
        // pass it).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('export:' || $1 || ':' || coalesce($2, ''), 0))")
            .bind(principal)
            .bind(client)
            .execute(&mut *tx)
            .await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM export_jobs WHERE principal = $1 AND client_id IS NOT DISTINCT FROM $2
               AND state IN ('queued', 'running')",
        )
        .bind(principal)
        .bind(client)
        .fetch_one(&mut *tx)
        .await?;
        if active >= self.config.per_client {
            return Err(ExportError::TooMany(format!(
                "this client already has {active} export job(s) in progress (at most {} at a time); \
                 wait for it to finish or cancel it",
                self.config.per_client
            )));
        }
        // The job's own key (destroyed with the job) seals its request and its files.
        let key = self.store.export_key(id, true).await?;
        let sealed = crate::crypto::seal_with_aad(&key, &request_aad(id), &sealed);
        let scopes: Vec<String> = ctx.scopes.iter().map(Scope::to_string).collect();
        let group = match &request.level {
            Level::Group(g) => Some(g.clone()),
            _ => None,
        };
        sqlx::query(
            "INSERT INTO export_jobs (id, principal, client_id, role, scopes, patient, level,
                                      group_id, request, state, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', $10)",
        )
        .bind(id)
        .bind(principal)
        .bind(client)
        .bind(ctx.role.as_str())
        .bind(&scopes)
        .bind(&ctx.patient)
        .bind(request.level.as_str())
        .bind(group)
        .bind(&sealed)
        .bind(self.store.now())
        .execute(&mut *tx)
        .await?;
        self.store
            .audit_export_in(&mut tx, ctx, &audit_what(id), ctx.compartment())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Open a job's sealed request with its key.
    pub(super) async fn open_request(
        &self,
        id: &str,
        sealed: &[u8],
    ) -> Result<Sealed, ExportError> {
        let key = self.store.export_key(id, false).await?;
        let plain = crate::crypto::open_with_aad(&key, &request_aad(id), sealed)
            .map_err(|_| crate::store::StoreError::Integrity)?;
        serde_json::from_slice(&plain).map_err(|_| crate::store::StoreError::Integrity.into())
    }

    /// The caller's job, neither cancelled nor expired: not found for anyone but its owner with
    /// at least its scopes ([`may_see`]).
    pub(super) async fn owned_job(
        &self,
        ctx: &AccessContext,
        id: &str,
    ) -> Result<sqlx::postgres::PgRow, ExportError> {
        let (principal, client) = owner(ctx);
        let row = sqlx::query(
            "SELECT state, progress, error, transaction_time, request, members_left_out, expires_at,
                    scopes, patient, resources, attempts
               FROM export_jobs
              WHERE id = $1 AND principal = $2 AND client_id IS NOT DISTINCT FROM $3
                AND state <> 'cancelled' AND (expires_at IS NULL OR expires_at > $4)",
        )
        .bind(id)
        .bind(principal)
        .bind(client)
        .bind(self.store.now())
        .fetch_optional(self.store.pool())
        .await?
        .ok_or(ExportError::NotFound)?;
        let scopes: Vec<String> = row.try_get("scopes")?;
        if !may_see(ctx, &scopes, &row.try_get("patient")?) {
            return Err(ExportError::NotFound);
        }
        Ok(row)
    }

    /// A job's status, for its owner only (another's job is not found).
    pub async fn status(&self, ctx: &AccessContext, id: &str) -> Result<Status, ExportError> {
        let row = self.owned_job(ctx, id).await?;
        let state = JobState::parse(&row.try_get::<String, _>("state")?);
        match state {
            JobState::Queued | JobState::Running => Ok(Status::InProgress {
                state,
                progress: format!(
                    "{}, {} resources written",
                    row.try_get::<String, _>("progress")?,
                    row.try_get::<i64, _>("resources")?
                ),
            }),
            JobState::Failed | JobState::Cancelled => Ok(Status::Failed(
                row.try_get::<Option<String>, _>("error")?
                    .unwrap_or_else(|| "the export failed".into()),
            )),
            JobState::Complete => {
                let sealed: Vec<u8> = row.try_get("request")?;
                let sealed = self.open_request(id, &sealed).await?;
                let files = self.files_of(id).await?;
                Ok(Status::Complete(Manifest {
                    job: id.to_string(),
                    transaction_time: row
                        .try_get::<Option<DateTime<Utc>>, _>("transaction_time")?
                        .unwrap_or_default(),
                    request: sealed.url,
                    files,
                    members_left_out: row.try_get("members_left_out")?,
                    expires_at: row.try_get("expires_at")?,
                }))
            }
        }
    }

    /// Jobs waiting and running, across every server on this database (the metrics' gauges).
    pub async fn active_jobs(&self) -> Result<(i64, i64), ExportError> {
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running')
               FROM export_jobs WHERE state IN ('queued', 'running')",
        )
        .fetch_one(self.store.pool())
        .await?;
        Ok(counts)
    }

    pub(super) async fn files_of(&self, id: &str) -> Result<Vec<ManifestFile>, ExportError> {
        let rows = sqlx::query(
            "SELECT kind, resource_type, name, count, bytes FROM export_files WHERE job_id = $1
              ORDER BY position",
        )
        .bind(id)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ManifestFile {
                    kind: r.try_get("kind")?,
                    resource_type: r.try_get("resource_type")?,
                    name: r.try_get("name")?,
                    count: r.try_get("count")?,
                    bytes: r.try_get("bytes")?,
                })
            })
            .collect()
    }

    /// `DELETE` on the status URL: the job stops (a running one at its next heartbeat), its files
    /// go; its status is not found from then on.
    pub async fn cancel(&self, ctx: &AccessContext, id: &str) -> Result<(), ExportError> {
        self.owned_job(ctx, id).await?;
        let done = sqlx::query(
            "UPDATE export_jobs SET state = 'cancelled', expires_at = $2, finished_at = $2
              WHERE id = $1 AND state <> 'cancelled'",
        )
        .bind(id)
        .bind(self.store.now())
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if done == 0 {
            return Err(ExportError::NotFound);
        }
        self.store
            .audit_export(
                ctx,
                &format!("{}/cancel", audit_what(id)),
                &[ctx.compartment()],
                true,
            )
            .await?;
        Ok(())
    }

    /// Every job, newest first, for an administrator.
    pub async fn list(
        store: &crate::store::Store,
        operator: &AccessContext,
    ) -> Result<Vec<JobSummary>, ExportError> {
        if operator.role != Role::Admin {
            return Err(Denied::AdministratorsOnly.into());
        }
        let rows = sqlx::query(
            "SELECT j.id, j.principal, j.client_id, j.level, j.state, j.progress, j.resources,
                    j.bytes, j.created_at, j.expires_at, j.error,
                    (SELECT count(*) FROM export_files f WHERE f.job_id = j.id) AS files
               FROM export_jobs j ORDER BY j.created_at DESC LIMIT 500",
        )
        .fetch_all(store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobSummary {
                    id: r.try_get("id")?,
                    principal: r.try_get("principal")?,
                    client_id: r.try_get("client_id")?,
                    level: r.try_get("level")?,
                    state: JobState::parse(&r.try_get::<String, _>("state")?),
                    progress: r.try_get("progress")?,
                    resources: r.try_get("resources")?,
                    bytes: r.try_get("bytes")?,
                    files: r.try_get("files")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// An administrator cancels any job (the console): audited as an administrative action.
    pub async fn cancel_as_operator(
        store: &crate::store::Store,
        operator: &AccessContext,
        id: &str,
    ) -> Result<(), ExportError> {
        let what = format!("export-cancel:{id}");
        if operator.role != Role::Admin {
            store.record_admin(operator, &what, false).await?;
            return Err(Denied::AdministratorsOnly.into());
        }
        let now = store.now();
        let done = sqlx::query(
            "UPDATE export_jobs SET state = 'cancelled', expires_at = $2, finished_at = $2
              WHERE id = $1 AND state IN ('queued', 'running', 'complete', 'failed')",
        )
        .bind(id)
        .bind(now)
        .execute(store.pool())
        .await?
        .rows_affected();
        store.record_admin(operator, &what, done > 0).await?;
        if done == 0 {
            return Err(ExportError::NotFound);
        }
        Ok(())
    }

    /// Take the oldest waiting job (or one whose worker went silent), if any. Times here are the
    /// database's, so that servers whose clocks differ agree on which heartbeat is stale.
    pub(super) async fn claim(&self) -> Result<Option<Claimed>, ExportError> {
        let Some(row) = sqlx::query(
            "UPDATE export_jobs SET state = 'running', attempts = attempts + 1, heartbeat = now(),
                    started_at = now(), progress = 'starting', resources = 0, bytes = 0
              WHERE id = (SELECT id FROM export_jobs
                           WHERE state = 'queued'
                              OR (state = 'running' AND heartbeat < now() - make_interval(secs => $1))
                           ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
              RETURNING id, principal, client_id, role, scopes, patient, request, attempts,
                        created_at",
        )
        .bind(STALE_SECONDS as f64)
        .fetch_optional(self.store.pool())
        .await?
        else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        let attempts: i32 = row.try_get("attempts")?;
        let decoded = self.decode_claim(&id, &row).await;
        if decoded.is_err() {
            // A job that cannot be read back never runs: it fails now, not on every claim.
            self.fail(&id, attempts, "the export could not be started", false)
                .await?;
        }
        decoded.map(Some)
    }

    async fn decode_claim(
        &self,
        id: &str,
        row: &sqlx::postgres::PgRow,
    ) -> Result<Claimed, ExportError> {
        let role = Role::parse(&row.try_get::<String, _>("role")?).ok_or(ExportError::NotFound)?;
        let scopes: Vec<String> = row.try_get("scopes")?;
        let ctx = AccessContext {
            principal: row.try_get("principal")?,
            role,
            scopes: scopes.iter().filter_map(|s| Scope::parse(s).ok()).collect(),
            patient: row.try_get("patient")?,
            client: row.try_get("client_id")?,
            purpose_of_use: None,
            btg_reason: None,
            address: None,
            plan: Default::default(),
        };
        let sealed: Vec<u8> = row.try_get("request")?;
        Ok(Claimed {
            id: id.to_string(),
            ctx,
            sealed: self.open_request(id, &sealed).await?,
            attempts: row.try_get("attempts")?,
            created_at: row.try_get("created_at")?,
        })
    }

    /// Does the account that started a job still stand: not locked or disabled, the same role?
    pub(super) async fn still_allowed(&self, ctx: &AccessContext) -> Result<bool, ExportError> {
        Ok(self.store.principal_stands(ctx).await?)
    }

    /// Say the job is alive and how far it is; `false` when it was cancelled meanwhile.
    pub(super) async fn heartbeat(
        &self,
        id: &str,
        attempt: i32,
        progress: &str,
        resources: i64,
        bytes: i64,
    ) -> Result<bool, ExportError> {
        let alive = sqlx::query(
            "UPDATE export_jobs SET heartbeat = now(), progress = $3, resources = $4, bytes = $5
              WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(progress)
        .bind(resources)
        .bind(bytes)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(alive > 0)
    }

    /// A job's end: its files registered and its state set in one transaction, so a manifest
    /// lists files only once every one of them is whole.
    pub(super) async fn finish(
        &self,
        id: &str,
        attempt: i32,
        files: &[ManifestFile],
        transaction_time: DateTime<Utc>,
        members_left_out: Option<i32>,
    ) -> Result<bool, ExportError> {
        let now = self.store.now();
        let mut tx = self.store.pool().begin().await?;
        // Files first, the state last: the job's row is locked only for the final update, so a
        // cancel never waits on a finishing job (and wins: the update then finds it cancelled).
        for (position, f) in files.iter().enumerate() {
            sqlx::query(
                "INSERT INTO export_files (job_id, name, kind, resource_type, count, bytes, position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(&f.name)
            .bind(&f.kind)
            .bind(&f.resource_type)
            .bind(f.count)
            .bind(f.bytes)
            .bind(i32::try_from(position).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE export_jobs SET state = 'complete', finished_at = $2, heartbeat = $2,
                    expires_at = $3, transaction_time = $4, members_left_out = $5,
                    progress = 'complete', resources = $6, bytes = $7
              WHERE id = $1 AND attempts = $8 AND state = 'running'",
        )
        .bind(id)
        .bind(now)
        .bind(now + chrono::Duration::seconds(self.config.ttl_seconds))
        .bind(transaction_time)
        .bind(members_left_out)
        .bind(
            files
                .iter()
                .filter(|f| f.kind == "output")
                .map(|f| f.count)
                .sum::<i64>(),
        )
        .bind(files.iter().map(|f| f.bytes).sum::<i64>())
        .bind(attempt)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A job that failed: its reason (fixed words) kept for its status until it expires.
    pub(super) async fn fail(
        &self,
        id: &str,
        attempt: i32,
        reason: &str,
        again: bool,
    ) -> Result<(), ExportError> {
        let now = self.store.now();
        let (state, expires) = if again {
            ("queued", None)
        } else {
            (
                "failed",
                Some(now + chrono::Duration::seconds(self.config.ttl_seconds)),
            )
        };
        sqlx::query(
            "UPDATE export_jobs SET state = $2, error = $3, finished_at = $4, expires_at = $5,
                    progress = $2
              WHERE id = $1 AND attempts = $6 AND state = 'running'",
        )
        .bind(id)
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(expires)
        .bind(attempt)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Remove expired and cancelled jobs: their data key first (a copy of the files then opens
    /// to nothing), their files, their rows; and any key or directory whose job is gone. One job
    /// that fails to go is logged and does not hold the others back.
    pub(super) async fn remove_expired(&self) -> Result<(), ExportError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM export_jobs WHERE expires_at <= $1 AND state <> 'running'",
        )
        .bind(self.store.now())
        .fetch_all(self.store.pool())
        .await?;
        self.store.forget_export_keys(&ids).await?;
        for id in &ids {
            if let Err(e) = self.remove_files(id) {
                tracing::warn!(job = %id, error = %e, "removing an expired export's files failed");
                continue;
            }
            sqlx::query("DELETE FROM export_jobs WHERE id = $1")
                .bind(id)
                .execute(self.store.pool())
                .await?;
            tracing::info!(job = %id, "export removed");
        }
        // Directories no job names (a job removed while its files could not be).
        let known: std::collections::HashSet<String> =
            sqlx::query_scalar::<_, String>("SELECT id FROM export_jobs")
                .fetch_all(self.store.pool())
                .await?
                .into_iter()
                .collect();
        if let Ok(entries) = std::fs::read_dir(&self.config.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if uuid::Uuid::parse_str(&name).is_ok() && !known.contains(&name) {
                    if let Err(e) = self.remove_files(&name) {
                        tracing::warn!(job = %name, error = %e, "removing an orphaned export failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Where one run of a job writes its files: a directory of its own, so that a run overtaken
    /// by another (its server stalled past the heartbeat) cannot touch the newer run's files.
    pub(super) fn run_dir(&self, id: &str, attempt: i32) -> std::path::PathBuf {
        self.config.dir.join(id).join(format!("r{attempt}"))
    }

    pub(super) fn remove_run_files(&self, id: &str, attempt: i32) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.run_dir(id, attempt)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) fn remove_files(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.config.dir.join(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) fn max_attempts_reached(attempts: i32) -> bool {
        attempts >= MAX_ATTEMPTS
    }
}
