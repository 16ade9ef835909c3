//! The end of a record: legal holds, purging history past its retention, hard-deleting a
//! resource's old versions, and erasing a patient by crypto-shredding.
//!
//! What removes a version is in the database (`migrations/0015_retention_erasure.sql`:
//! `carapace_purge_versions`, `carapace_erase_patient`), which checks legal holds itself, so no
//! caller can forget them. These methods are administrators' (the server's retention task runs as
//! its own operator context) and each is audited with counts, never content.

use super::{RetentionConfig, Store, StoreError};
use crate::access::{AccessContext, Denied, Role};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::{ResourceId, ResourceType};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// Rows removed per call of the purge function: each call is one short transaction.
const PURGE_BATCH: i32 = 1000;

/// A legal hold as the console lists it.
#[derive(Debug, Clone)]
pub struct LegalHold {
    pub id: i64,
    pub patient: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_at: DateTime<Utc>,
}

/// What an erasure removed, and whether it reaches backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub resources: i64,
    pub versions: i64,
    /// The patient's own key-encryption key was destroyed in the key provider: every copy of the
    /// wrapped data key (backups, dumps) is now useless. False when the data key was still wrapped
    /// by the main key (written before per-patient keys and not yet moved) or had none.
    pub kek_destroyed: bool,
    /// When the patient's data key got its own KEK, if later than the key was made (a key moved
    /// from the main key): backups taken before then can still open the patient.
    pub main_key_until: Option<DateTime<Utc>>,
}

/// Non-current versions purged (or, on a dry run, due) per resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPurge {
    pub per_type: Vec<(ResourceType, i64)>,
}

impl HistoryPurge {
    pub fn total(&self) -> i64 {
        self.per_type.iter().map(|(_, n)| n).sum()
    }
}

/// The reference a hold or an erasure names: `Patient/<id>` with a valid id.
pub fn patient_scope(reference: &str) -> Result<String, StoreError> {
    let id = reference
        .strip_prefix("Patient/")
        .and_then(|id| ResourceId::parse(id).ok())
        .ok_or_else(|| StoreError::BadRequest(format!("`{reference}` is not Patient/<id>")))?;
    Ok(format!("Patient/{id}"))
}

fn administrators_only(ctx: &AccessContext) -> Result<(), StoreError> {
    if ctx.role == Role::Admin {
        Ok(())
    } else {
        Err(Denied::AdministratorsOnly.into())
    }
}

/// SQLSTATEs the two functions raise.
fn refusal(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("CH001") => {
                return StoreError::Conflict("the patient is under a legal hold".into())
            }
            Some("CH002") => {
                return StoreError::Conflict(
                    "a user account belongs to this patient: remove it first".into(),
                )
            }
            Some("CH004") => {
                tracing::error!("an erasure found a data key row naming another patient's KEK");
                return StoreError::Integrity;
            }
            _ => {}
        }
    }
    e.into()
}

fn record(
    store: &Store,
    what: String,
    patient: Option<String>,
    interaction: Interaction,
) -> AuditRecord {
    AuditRecord {
        outcome: Outcome::Success,
        ..refused(store, what, patient, interaction)
    }
}

/// The event of a refused (or failed) operation on a patient's record.
fn refused(
    store: &Store,
    what: String,
    patient: Option<String>,
    interaction: Interaction,
) -> AuditRecord {
    AuditRecord {
        query: None,
        interaction,
        outcome: Outcome::MinorFailure,
        recorded: store.clock.now(),
        what: Some(what),
        patient,
    }
}

impl Store {
    /// Refuse anyone but an administrator, the refusal audited as `what`.
    async fn administrators_only(&self, ctx: &AccessContext, what: &str) -> Result<(), StoreError> {
        if let Err(e) = administrators_only(ctx) {
            self.record_admin(ctx, what, false).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Record a refused (or failed) operation on a patient's record.
    async fn record_refused(
        &self,
        ctx: &AccessContext,
        what: String,
        patient: Option<String>,
        interaction: Interaction,
    ) -> Result<(), StoreError> {
        self.audit_record(ctx, &refused(self, what, patient, interaction))
            .await
    }

    /// Commit `tx` with the AuditEvent of what it did (a success), the one way every change here
    /// is recorded: nothing commits unrecorded.
    async fn commit_recorded(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        ctx: &AccessContext,
        what: String,
        patient: Option<String>,
        interaction: Interaction,
    ) -> Result<(), StoreError> {
        let event = record(self, what, patient, interaction);
        self.audit_in(&mut tx, ctx, &event).await?;
        tx.commit().await?;
        crate::db::Forgets::forget_all(&*self.policy_inputs);
        Ok(())
    }

    /// Place a legal hold on a patient's data and audit events (administrators; audited).
    pub async fn place_hold(
        &self,
        ctx: &AccessContext,
        patient: &str,
        reason: &str,
    ) -> Result<i64, StoreError> {
        let scope = patient_scope(patient)?;
        self.administrators_only(ctx, "legal-hold").await?;
        if reason.trim().is_empty() {
            return Err(StoreError::BadRequest("a legal hold needs a reason".into()));
        }
        let sealed = self.seal_secret("legal-hold", reason.as_bytes()).await?;
        let mut tx = self.pool.begin().await?;
        // The erasure function takes the same lock: a hold and an erasure do not cross.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('carapace-hold:' || $1, 0))")
            .bind(&scope)
            .execute(&mut *tx)
            .await?;
        let erased: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erasures WHERE scope = $1)")
                .bind(&scope)
                .fetch_one(&mut *tx)
                .await?;
        if erased {
            drop(tx);
            self.record_refused(
                ctx,
                "urn:carapace:legal-hold".into(),
                Some(scope.clone()),
                Interaction::Admin,
            )
            .await?;
            return Err(StoreError::Erased(scope));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO legal_holds (patient, reason_sealed, placed_by, placed_at)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&scope)
        .bind(&sealed)
        .bind(&ctx.principal)
        .bind(self.clock.now())
        .fetch_one(&mut *tx)
        .await?;
        let what = format!("urn:carapace:legal-hold:{id}");
        self.commit_recorded(tx, ctx, what, Some(scope), Interaction::Admin)
            .await?;
        Ok(id)
    }

    /// Release a hold (administrators; audited). Purges and erasure apply again once no hold on
    /// the patient is in force.
    pub async fn release_hold(&self, ctx: &AccessContext, id: i64) -> Result<(), StoreError> {
        self.administrators_only(ctx, "legal-hold-release").await?;
        let mut tx = self.pool.begin().await?;
        let patient: Option<String> = sqlx::query_scalar(
            "UPDATE legal_holds SET released_by = $1, released_at = $2
              WHERE id = $3 AND released_at IS NULL RETURNING patient",
        )
        .bind(&ctx.principal)
        .bind(self.clock.now())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(patient) = patient else {
            return Err(StoreError::NotFound(format!("legal hold {id} in force")));
        };
        let what = format!("urn:carapace:legal-hold-release:{id}");
        self.commit_recorded(tx, ctx, what, Some(patient), Interaction::Admin)
            .await
    }

    /// Holds in force, oldest first, with their reasons (administrators).
    pub async fn holds(&self, ctx: &AccessContext) -> Result<Vec<LegalHold>, StoreError> {
        self.administrators_only(ctx, "legal-hold-list").await?;
        // Reasons are opened for the operator: that is a read of sealed text, recorded.
        self.record_admin(ctx, "legal-hold-list", true).await?;
        let rows = sqlx::query(
            "SELECT id, patient, reason_sealed, placed_by, placed_at FROM legal_holds
              WHERE released_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut holds = Vec::with_capacity(rows.len());
        for row in rows {
            let sealed: Vec<u8> = row.try_get("reason_sealed")?;
            let reason = self.open_secret("legal-hold", &sealed).await?;
            holds.push(LegalHold {
                id: row.try_get("id")?,
                patient: row.try_get("patient")?,
                reason: String::from_utf8_lossy(&reason).into_owned(),
                placed_by: row.try_get("placed_by")?,
                placed_at: row.try_get("placed_at")?,
            });
        }
        Ok(holds)
    }

    /// Erase a patient's record by crypto-shredding (administrators; audited; refused under a
    /// legal hold): every resource sealed in the patient's compartment and every version sealed
    /// under its data key is removed with its index rows, the data key's row is removed, tombstones
    /// keep the ids answering 410, and then the patient's key-encryption key is destroyed in the
    /// key provider — which is what reaches backups taken before. Audit events stay (they hold no
    /// PHI in the clear and are sealed under the audit trail's own key). Asked again for an
    /// erased patient, it finishes what a failure left (the KEK's destruction) and reports it.
    pub async fn erase_patient(
        &self,
        ctx: &AccessContext,
        patient: &str,
    ) -> Result<Erasure, StoreError> {
        let scope = patient_scope(patient)?;
        self.administrators_only(ctx, "erase").await?;
        let done = sqlx::query(
            "SELECT resources, versions, kek_since, erased_at FROM erasures WHERE scope = $1",
        )
        .bind(&scope)
        .fetch_optional(&self.pool)
        .await?;
        let (resources, versions, main_key_until) = match done {
            Some(row) => (
                row.try_get("resources")?,
                row.try_get("versions")?,
                None::<DateTime<Utc>>,
            ),
            None => {
                let kek = self.kek_for(&scope).await?.ok_or(StoreError::Integrity)?;
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query("SELECT * FROM carapace_erase_patient($1, $2, $3, $4)")
                    .bind(&scope)
                    .bind(&ctx.principal)
                    .bind(self.clock.now())
                    .bind(kek.name())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(refusal);
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        drop(tx);
                        self.record_refused(
                            ctx,
                            format!("urn:carapace:erasure:{scope}"),
                            Some(scope.clone()),
                            Interaction::Delete,
                        )
                        .await?;
                        return Err(e);
                    }
                };
                let resources: i64 = row.try_get("erased_resources_n")?;
                let versions: i64 = row.try_get("erased_versions_n")?;
                let since: Option<DateTime<Utc>> = row.try_get("erased_kek_since")?;
                let created: Option<DateTime<Utc>> = row.try_get("erased_key_created")?;
                let what = format!(
                    "urn:carapace:erasure:{scope}:resources={resources}:versions={versions}"
                );
                self.commit_recorded(tx, ctx, what, Some(scope.clone()), Interaction::Delete)
                    .await?;
                let moved_later = match (since, created) {
                    (Some(since), Some(created)) => {
                        (since > created + chrono::Duration::seconds(1)).then_some(since)
                    }
                    _ => None,
                };
                (resources, versions, moved_later)
            }
        };
        self.cache.forget_scope(&scope);
        let kek_destroyed = self.finish_erasure(ctx, &scope).await?;
        Ok(Erasure {
            resources,
            versions,
            kek_destroyed,
            main_key_until,
        })
    }

    /// Destroy an erasure's KEK if that is still to do, audited; true once it is destroyed (false
    /// when the erased key had no KEK of its own). The KEK destroyed is the one derived from the
    /// scope, and only if the erasure's row names that one.
    async fn finish_erasure(&self, ctx: &AccessContext, scope: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT kek, kek_destroyed FROM erasures WHERE scope = $1")
            .bind(scope)
            .fetch_one(&self.pool)
            .await?;
        let named: Option<String> = row.try_get("kek")?;
        let destroyed: Option<DateTime<Utc>> = row.try_get("kek_destroyed")?;
        let Some(named) = named else {
            return Ok(false);
        };
        if destroyed.is_some() {
            return Ok(true);
        }
        let kek = self.kek_for(scope).await?.ok_or(StoreError::Integrity)?;
        if kek.name() != named {
            tracing::error!("an erasure's row names another patient's KEK; not destroyed");
            return Err(StoreError::Integrity);
        }
        if let Err(e) = self.keys.destroy_kek(&kek).await {
            self.record_refused(
                ctx,
                format!("urn:carapace:erasure-key:{scope}"),
                Some(scope.to_string()),
                Interaction::Delete,
            )
            .await?;
            return Err(e.into());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE erasures SET kek_destroyed = $1 WHERE scope = $2")
            .bind(self.clock.now())
            .bind(scope)
            .execute(&mut *tx)
            .await?;
        let what = format!("urn:carapace:erasure-key:{scope}");
        self.commit_recorded(tx, ctx, what, Some(scope.to_string()), Interaction::Delete)
            .await?;
        Ok(true)
    }

    /// Destroy the KEKs of erasures whose destruction failed (the key provider was down), each on
    /// its own: one that fails is logged and the others go on. Administrators (the console's
    /// `retention run`: the server's key-provider credentials may not delete keys). Returns how
    /// many were destroyed and how many failed.
    pub async fn finish_erasures(&self, ctx: &AccessContext) -> Result<(u64, u64), StoreError> {
        administrators_only(ctx)?;
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT scope FROM erasures WHERE kek IS NOT NULL AND kek_destroyed IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let (mut done, mut failed) = (0, 0);
        for scope in pending {
            self.cache.forget_scope(&scope);
            match self.finish_erasure(ctx, &scope).await {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::error!(error = %e, "destroying an erased patient's KEK failed");
                }
            }
        }
        Ok((done, failed))
    }

    /// After restoring a backup taken before some erasures: the erased patients' rows are back,
    /// but their KEKs are not (the key provider is the ledger). The patients whose KEK the
    /// provider no longer has — answered "no such key", never a failure to ask. The main key is
    /// checked first (a wrong mount, key name or Vault would otherwise make everyone look erased).
    pub async fn erasures_to_reconcile(
        &self,
        ctx: &AccessContext,
    ) -> Result<Vec<String>, StoreError> {
        administrators_only(ctx)?;
        // A real call under the main key: this is the key provider this database was written with.
        self.kek_for("Patient/reconcile-probe").await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT scope, wrapped FROM data_keys
              WHERE scope LIKE 'Patient/%' AND wrapped LIKE 'kek:%' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut gone = Vec::new();
        for (scope, wrapped) in rows {
            let own = self.kek_for(&scope).await?.ok_or(StoreError::Integrity)?;
            if crate::crypto::keys::PatientKek::of(&wrapped).as_ref() != Some(&own) {
                tracing::error!("a data key row names another patient's KEK; left as it is");
                continue;
            }
            if !self.keys.kek_exists(&own).await? {
                gone.push(scope);
            }
        }
        Ok(gone)
    }

    /// Erase again, in the database, the patients [`Store::erasures_to_reconcile`] found (each on
    /// its own: one refused — a hold restored with the backup, a linked user — is reported and the
    /// others go on). Returns each patient with what happened.
    pub async fn reconcile_erasures(
        &self,
        ctx: &AccessContext,
        patients: &[String],
    ) -> Result<Vec<(String, Result<Erasure, StoreError>)>, StoreError> {
        administrators_only(ctx)?;
        let mut out = Vec::new();
        for scope in patients {
            let result = self.erase_patient(ctx, scope).await;
            out.push((scope.clone(), result));
        }
        Ok(out)
    }

    /// Purge non-current versions past the history retention of their type (or, `dry_run`,
    /// count them), sparing held patients. Administrators; audited with the counts per type.
    pub async fn purge_history(
        &self,
        ctx: &AccessContext,
        config: &RetentionConfig,
        dry_run: bool,
    ) -> Result<HistoryPurge, StoreError> {
        self.administrators_only(ctx, "retention").await?;
        let now = self.clock.now();
        let mut report = HistoryPurge::default();
        for ty in ResourceType::all() {
            let Some(days) = config.history_days(ty) else {
                continue;
            };
            let before = now - chrono::Duration::days(i64::from(days));
            let n = self
                .purge_versions(ctx, ty, None, before, dry_run, None)
                .await?;
            if n > 0 {
                report.per_type.push((ty, n));
            }
        }
        Ok(report)
    }

    /// Hard-delete every non-current version of one resource now (an administrator's `$expunge`
    /// for minimisation; refused under a legal hold, audited). The current version stays. Returns
    /// how many versions were removed.
    pub async fn expunge_history(
        &self,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<i64, StoreError> {
        self.administrators_only(ctx, "expunge").await?;
        let compartment: Option<Option<String>> = {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT set_config('carapace.reach', 'all', true)")
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar(
                "SELECT compartment FROM resources WHERE resource_type = $1 AND id = $2",
            )
            .bind(resource_type.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?
        };
        let Some(compartment) = compartment else {
            return Err(self.missing(ctx, resource_type, id.as_str()).await?);
        };
        if let Some(scope) = &compartment {
            let held: bool = sqlx::query_scalar("SELECT carapace_held($1)")
                .bind(scope)
                .fetch_one(&self.pool)
                .await?;
            if held {
                self.record_refused(
                    ctx,
                    format!("urn:carapace:expunge:{resource_type}/{id}"),
                    Some(scope.clone()),
                    Interaction::Delete,
                )
                .await?;
                return Err(StoreError::Conflict(
                    "the patient is under a legal hold".into(),
                ));
            }
        }
        let far = self.clock.now() + chrono::Duration::days(1);
        self.purge_versions(
            ctx,
            resource_type,
            Some(id.as_str()),
            far,
            false,
            compartment,
        )
        .await
    }

    /// Run the purge function in batches, each batch one transaction with its AuditEvent (the
    /// type or resource and the count: no content), so nothing is removed unrecorded.
    async fn purge_versions(
        &self,
        ctx: &AccessContext,
        ty: ResourceType,
        id: Option<&str>,
        before: DateTime<Utc>,
        dry_run: bool,
        patient: Option<String>,
    ) -> Result<i64, StoreError> {
        let mut total = 0i64;
        loop {
            let limit = if dry_run { i32::MAX } else { PURGE_BATCH };
            let mut tx = self.pool.begin().await?;
            let n: i64 = sqlx::query_scalar("SELECT carapace_purge_versions($1, $2, $3, $4, $5)")
                .bind(ty.as_str())
                .bind(id)
                .bind(before)
                .bind(limit)
                .bind(dry_run)
                .fetch_one(&mut *tx)
                .await?;
            if n > 0 && !dry_run {
                let what = match id {
                    Some(id) => format!("urn:carapace:expunge:{ty}/{id}:versions={n}"),
                    None => format!("urn:carapace:retention:{ty}:versions={n}"),
                };
                let event = record(self, what, patient.clone(), Interaction::Delete);
                self.audit_in(&mut tx, ctx, &event).await?;
            }
            tx.commit().await?;
            crate::db::Forgets::forget_all(&*self.policy_inputs);
            total += n;
            if dry_run || n < i64::from(PURGE_BATCH) {
                return Ok(total);
            }
        }
    }
}
