//! The audit trail: an R4 `AuditEvent`, shaped after IHE Basic Audit Log Patterns, for every
//! interaction. Events carry references, codes and the caller, never resource content.
//!
//! Writes record their event in the same transaction as the data. Reads record theirs through
//! [`AuditWriter`], which commits concurrent events together (group commit) and answers each caller
//! only once its event is durable, so no read is answered without a committed audit row.

use crate::access::AccessContext;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::borrow::Cow;
use tokio::sync::{mpsc, oneshot};

/// The RESTful interaction being audited (the BALP subtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Create,
    Update,
    Delete,
    HistoryInstance,
    /// `$everything` and other operations that read PHI.
    Operation,
    Search,
    HistoryType,
    HistorySystem,
    Capabilities,
    /// An administrative action or a sign-in (console, token endpoint).
    Admin,
}

impl Interaction {
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Operation => "operation",
            Interaction::Search => "search-type",
            Interaction::Capabilities => "capabilities",
            Interaction::Admin => "admin",
        }
    }

    /// DICOM/FHIR audit action: C, R, U, D or E.
    pub fn action(self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Update => "U",
            Interaction::Delete => "D",
            Interaction::Admin => "E",
            _ => "R",
        }
    }
}

/// AuditEvent.outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The request failed for a reason on the caller's side (not found, invalid, conflict).
    MinorFailure,
    /// The server could not serve the request.
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
        }
    }
}

/// One auditable interaction.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub interaction: Interaction,
    pub outcome: Outcome,
    pub recorded: DateTime<Utc>,
    /// `Type/id` or `Type/id/_history/n` of the resource acted on, or `Type` for type-level calls.
    pub what: Option<String>,
    /// `Patient/<id>` whose compartment the resource is in, if any.
    pub patient: Option<String>,
}

impl AuditRecord {
    pub fn to_event(&self, ctx: &AccessContext) -> Value {
        let mut agent = json!({
            "type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP", "display": "information recipient"}]},
            "who": {"display": ctx.principal},
            "requestor": true,
            "role": [{"coding": [{"system": "urn:carapace:role", "code": ctx.role.as_str()}]}],
        });
        if let Some(addr) = ctx.address {
            agent["network"] = json!({"address": addr.to_string(), "type": "2"});
        }
        if let Some(pou) = &ctx.purpose_of_use {
            agent["purposeOfUse"] = json!([{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": pou}]}]);
        }
        let mut entity = Vec::new();
        if let Some(patient) = &self.patient {
            entity.push(json!({
                "what": {"reference": patient},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }));
        }
        if let Some(what) = &self.what {
            entity.push(json!({
                "what": {"reference": what},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            }));
        }
        let mut event = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                     "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                         "code": self.interaction.code()}],
            "action": self.interaction.action(),
            "recorded": self.recorded.to_rfc3339_opts(SecondsFormat::Micros, true),
            "outcome": self.outcome.code(),
            "agent": [agent],
            "source": {"observer": {"display": "carapace"},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                 "code": "4", "display": "Application Server"}]},
        });
        if !entity.is_empty() {
            event["entity"] = Value::Array(entity);
        }
        event
    }
}

/// Insert one event inside the caller's transaction.
pub async fn record_in(
    conn: &mut sqlx::PgConnection,
    ctx: &AccessContext,
    record: &AuditRecord,
) -> Result<(), sqlx::Error> {
    record_all_in(conn, ctx, std::slice::from_ref(record)).await
}

/// Insert one event per record, all by the same caller, inside the caller's transaction.
pub async fn record_all_in(
    conn: &mut sqlx::PgConnection,
    ctx: &AccessContext,
    records: &[AuditRecord],
) -> Result<(), sqlx::Error> {
    let rows: Vec<Row<'_>> = records
        .iter()
        .map(|r| Row {
            recorded: r.recorded,
            action: r.interaction.action(),
            outcome: r.outcome.code(),
            principal: Cow::Borrowed(&ctx.principal),
            event: r.to_event(ctx),
        })
        .collect();
    insert_rows(conn, &rows).await
}

/// One `audit_events` row.
struct Row<'a> {
    recorded: DateTime<Utc>,
    action: &'static str,
    outcome: &'static str,
    principal: Cow<'a, str>,
    event: Value,
}

/// Insert rows with one statement.
async fn insert_rows<'c, E: sqlx::PgExecutor<'c>>(
    conn: E,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded).collect();
    let action: Vec<&str> = rows.iter().map(|r| r.action).collect();
    let outcome: Vec<&str> = rows.iter().map(|r| r.outcome).collect();
    let principal: Vec<&str> = rows.iter().map(|r| r.principal.as_ref()).collect();
    let event: Vec<sqlx::types::Json<&Value>> =
        rows.iter().map(|r| sqlx::types::Json(&r.event)).collect();
    sqlx::query(
        "INSERT INTO audit_events (recorded, action, outcome, principal, event)
         SELECT * FROM UNNEST($1::timestamptz[], $2::char(1)[], $3::text[], $4::text[], $5::jsonb[])",
    )
    .bind(recorded)
    .bind(action)
    .bind(outcome)
    .bind(principal)
    .bind(event)
    .execute(conn)
    .await?;
    Ok(())
}

struct Pending {
    row: Row<'static>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Group-committing writer for events that are not part of a data transaction (reads, failures).
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Pending>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit trail unavailable: {0}")]
pub struct AuditError(pub String);

const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Start the writer task on `pool`.
    pub fn start(pool: PgPool) -> AuditWriter {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_writer(pool, rx));
        AuditWriter { tx }
    }

    /// Record an event; returns once it is committed.
    pub async fn record(
        &self,
        ctx: &AccessContext,
        record: &AuditRecord,
    ) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        let pending = Pending {
            row: Row {
                recorded: record.recorded,
                action: record.interaction.action(),
                outcome: record.outcome.code(),
                principal: Cow::Owned(ctx.principal.clone()),
                event: record.to_event(ctx),
            },
            done,
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| AuditError("writer stopped".into()))?;
        wait.await
            .map_err(|_| AuditError("writer stopped".into()))?
            .map_err(AuditError)
    }
}

async fn run_writer(pool: PgPool, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (rows, waiting): (Vec<Row<'static>>, Vec<_>) =
            batch.drain(..).map(|p| (p.row, p.done)).unzip();
        let result = insert_rows(&pool, &rows).await.map_err(|e| {
            tracing::error!(error = %e, events = rows.len(), "audit batch failed");
            "could not write the audit trail".to_string()
        });
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}
