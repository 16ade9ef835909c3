//! How the store records what it does: the audit event of every interaction (in the write's own
//! transaction, or through the group-committing writer for reads), of every refusal (after the
//! rolled-back transaction), the audit keys, chaining and verification.
//!
//! Administrative operations are core operations: each takes the operator's [`AccessContext`], is
//! refused unless the operator is an administrator, and writes its AuditEvent in the same
//! transaction as the change — or, when it fails, on its own. The fronts call the operation and
//! never audit it themselves ([`crate::identity::admin`]; break-the-glass review in
//! [`Store::review_btg`]).

use super::{Store, StoreError};
use crate::access::{AccessContext, Denied, Role};
use crate::audit::{self, AuditRecord, Interaction, Outcome};
use crate::crypto::Dek;

/// Key scope of the data key of the audit chain's HMAC links.
const AUDIT_CHAIN_SCOPE: &str = "audit/chain";

/// Key scope of the data key that seals AuditEvents.
const AUDIT_EVENTS_SCOPE: &str = "audit/events";

pub(super) fn outcome_of(e: &StoreError) -> Outcome {
    match e {
        StoreError::Key(_)
        | StoreError::Integrity
        | StoreError::Audit(_)
        | StoreError::Database(_) => Outcome::SeriousFailure,
        _ => Outcome::MinorFailure,
    }
}

/// What an interaction's audit event names.
pub(super) struct Event {
    pub interaction: Interaction,
    /// The resource, type or operation (`Patient/1`, `Observation`, `Patient/1/$everything`);
    /// none for the whole server (system history).
    pub what: Option<String>,
    /// The query as the server understood it (searches), sealed with the event.
    pub query: Option<String>,
    /// The patient a failure is recorded against.
    pub patient: Option<String>,
}

impl Event {
    pub(super) fn new(interaction: Interaction, what: String) -> Event {
        Event {
            interaction,
            what: Some(what),
            query: None,
            patient: None,
        }
    }
}

/// Where a successful interaction's audit event is recorded.
pub(super) enum Recorded {
    /// In the interaction's own transaction, with the data (every write).
    InItsTransaction,
    /// By [`Store::audited`], one event for each of these patients (reads; `None` for data in no
    /// patient's compartment).
    Here(Vec<Option<String>>),
}

impl Store {
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
        self.audit_record(ctx, &admin_record(self, what, outcome))
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
    pub(super) async fn audit_record(
        &self,
        ctx: &AccessContext,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.audit_records(ctx, std::slice::from_ref(record)).await
    }

    /// Record events through the group-committing writer (committed together when they can be);
    /// returns once all are committed.
    pub(super) async fn audit_records(
        &self,
        ctx: &AccessContext,
        records: &[AuditRecord],
    ) -> Result<(), StoreError> {
        self.load_audit_key().await?;
        Ok(self.audit.record_all(ctx, records).await?)
    }

    /// Record an event inside the caller's transaction.
    pub(super) async fn audit_in(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        self.audit_all_in(conn, ctx, std::slice::from_ref(record))
            .await
    }

    /// Record an event per record inside the caller's transaction.
    pub(super) async fn audit_all_in(
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
        self.chain_audit_with(false).await
    }

    /// [`Store::chain_audit`]; if `wait`, waiting for another node's chainer to finish first
    /// (then chaining what it left).
    pub(super) async fn chain_audit_with(&self, wait: bool) -> Result<u64, StoreError> {
        self.load_audit_key().await?;
        let keys = self.audit.keys().ok_or(StoreError::Integrity)?;
        let mut chained = 0;
        loop {
            let mut tx = self.begin_internal().await?;
            // One chainer at a time, whichever nodes run one: the others find the lock taken and
            // leave the queue to it (rather than queue behind its lock on the chain's head, a
            // connection each). A transaction lock: safe behind a transaction-mode pooler.
            let mine: bool = sqlx::query_scalar(if wait {
                "SELECT true FROM (SELECT pg_advisory_xact_lock(hashtextextended('carapace-audit-chain', 0))) l"
            } else {
                "SELECT pg_try_advisory_xact_lock(hashtextextended('carapace-audit-chain', 0))"
            })
            .fetch_one(&mut *tx)
            .await?;
            if !mine {
                return Ok(chained);
            }
            // A holder that stalls gives the lock up rather than hold every node's chaining.
            sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '60s'")
                .execute(&mut *tx)
                .await?;
            let n = audit::chain_pending(&mut tx, keys).await?;
            tx.commit().await?;
            chained += n;
            // A short batch emptied the queue as it was: done (waiting for a queue that busy
            // nodes keep filling would never end).
            if n < audit::CHAIN_BATCH {
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
        self.chain_audit_with(true).await?;
        let key = self.audit_key().await?;
        // One snapshot for the whole walk: another node's chainer or archiver committing
        // meanwhile cannot make a sound trail look broken.
        let mut tx = crate::db::begin_snapshot_with_reach(
            &self.pool,
            &crate::access::policy::RowReach::everything(),
        )
        .await?;
        Ok(audit::verify_chain(&mut tx, &key, anchor, progress).await?)
    }

    /// The outcome of one interaction, recorded: `result` is what the interaction's work gave. A failure or refusal
    /// is recorded here, outside the (rolled back) data transaction, against `event.patient`. A
    /// success is recorded as `recorded(&value)` says: in its own transaction already (writes), or
    /// here, one event per patient whose data it returned (reads) — and a read that cannot be
    /// recorded is not returned.
    pub(super) async fn audited<T: super::release::Outgoing>(
        &self,
        ctx: &AccessContext,
        event: Event,
        result: Result<T, StoreError>,
        recorded: impl FnOnce(&T) -> Recorded,
    ) -> Result<T, StoreError> {
        let at = self.clock.now();
        let record = |outcome, patient| AuditRecord {
            query: event.query.clone(),
            interaction: event.interaction,
            outcome,
            recorded: at,
            what: event.what.clone(),
            patient,
        };
        match &result {
            Err(error) => {
                let failed = record(outcome_of(error), event.patient.clone());
                if let Err(e) = self.audit_record(ctx, &failed).await {
                    // A write's own error is the answer; a read that cannot be audited fails.
                    if !event.interaction.is_write() {
                        return Err(e);
                    }
                    tracing::error!(error = %e, "could not audit a failed request");
                }
            }
            Ok(value) => match recorded(value) {
                Recorded::InItsTransaction => {}
                Recorded::Here(patients) => {
                    let records: Vec<AuditRecord> = patients
                        .into_iter()
                        .map(|p| record(Outcome::Success, p))
                        .collect();
                    self.audit_records(ctx, &records).await?;
                }
            },
        }
        // Audited as what it was; handed out as the caller may receive it — an erased record
        // too: only a caller who could see every record learns that it was erased.
        match result {
            Ok(value) => self.release(ctx, value).await,
            Err(StoreError::Erased(what)) if !self.plan(ctx).await?.sees_everything() => {
                Err(StoreError::NotFound(what))
            }
            Err(e) => Err(e),
        }
    }
}

impl Store {
    /// The transaction of an administrative change, once the operator is known to be an
    /// administrator.
    pub(crate) async fn begin_admin(
        &self,
        ctx: &AccessContext,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        if ctx.role != Role::Admin {
            return Err(Denied::AdministratorsOnly.into());
        }
        Ok(self.pool.begin().await?)
    }

    /// Audit the change `what` (`user-lock:alice`) in its transaction, and commit both.
    pub(crate) async fn commit_admin(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        ctx: &AccessContext,
        what: &str,
    ) -> Result<(), StoreError> {
        self.audit_in(&mut tx, ctx, &admin_record(self, what, Outcome::Success))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A failed administrative operation is audited too, on its own (its change rolled back).
    pub(crate) async fn audit_admin_result<T, E: std::fmt::Display>(
        &self,
        ctx: &AccessContext,
        what: &str,
        result: Result<T, E>,
    ) -> Result<T, E> {
        if result.is_err() {
            let record = admin_record(self, what, Outcome::MinorFailure);
            if let Err(e) = self.audit_record(ctx, &record).await {
                tracing::error!(error = %e, "could not audit a failed administrative operation");
            }
        }
        result
    }
}

pub(super) fn admin_record(store: &Store, what: &str, outcome: Outcome) -> AuditRecord {
    AuditRecord {
        query: None,
        interaction: Interaction::Admin,
        outcome,
        recorded: store.clock.now(),
        what: Some(format!("urn:carapace:admin:{what}")),
        patient: None,
    }
}
