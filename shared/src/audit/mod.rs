//! The audit trail: an R4 `AuditEvent`, shaped after IHE Basic Audit Log Patterns, for every
//! interaction. Events carry references, codes and the caller, never resource content.
//!
//! Writes record their event in the same transaction as the data. Reads record theirs through
//! [`AuditWriter`], which commits concurrent events together (group commit) and answers each caller
//! only once its event is durable, so no read is answered without a committed audit row.

use crate::access::AccessContext;
use crate::crypto::Dek;
use crate::db::Db;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::Row as _;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

mod archive; // archived segments of the chain: their lines and their check

pub use archive::{
    archivable, from_hex, segment_page, to_hex, ArchiveHeader, ArchivedEvent, Segment,
    SegmentCheck, ARCHIVE_FORMAT,
};

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
    /// A break-the-glass assertion (the grant opened).
    BreakGlass,
    /// Bulk Data `$export`: a kick-off, a file handed out, a patient's data written to a job.
    Export,
    /// A Subscription's notification sent to its endpoint (or failing to reach it).
    Notify,
}

impl Interaction {
    /// Create, update or delete: an interaction that writes data (and records its success in its
    /// own transaction).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Interaction::Create | Interaction::Update | Interaction::Delete
        )
    }

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
            Interaction::BreakGlass => "break-glass",
            Interaction::Export => "export",
            Interaction::Notify => "subscription-notification",
        }
    }

    /// DICOM/FHIR audit action: C, R, U, D or E.
    pub fn action(self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Update => "U",
            Interaction::Delete => "D",
            Interaction::Admin | Interaction::BreakGlass => "E",
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
    /// A search's query string (kept sealed with the event: it may name a patient).
    pub query: Option<String>,
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
        if let Some(grant) = ctx.plan.get().and_then(|p| p.btg) {
            // The reason is kept sealed with the grant; the event points at it.
            entity.push(json!({
                "what": {"identifier": {"system": "urn:carapace:break-glass", "value": grant.to_string()}},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "4"},
                "description": "break-the-glass grant",
            }));
        }
        if let Some(query) = &self.query {
            use base64::Engine;
            entity.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                "query": base64::engine::general_purpose::STANDARD.encode(query),
            }));
        }
        if let Some(what) = &self.what {
            entity.push(json!({
                "what": {"reference": what},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            }));
        }
        // An export is DICOM's Export event (as BALP's and IHE's data-export patterns record it),
        // subtyped by the Bulk Data operation; everything else a RESTful operation.
        let (event_type, subtype) = match self.interaction {
            Interaction::Export => (
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM",
                       "code": "110106", "display": "Export"}),
                json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": "operation"},
                       {"system": "urn:ietf:rfc:3986",
                        "code": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]),
            ),
            // A notification is data leaving for a recipient's endpoint: DICOM's Export event too.
            Interaction::Notify => (
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM",
                       "code": "110106", "display": "Export"}),
                json!([{"system": "urn:carapace:audit-subtype",
                        "code": "subscription-notification"}]),
            ),
            _ => (
                json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                       "code": "rest", "display": "RESTful Operation"}),
                json!([{"system": "http://hl7.org/fhir/restful-interaction",
                        "code": self.interaction.code()}]),
            ),
        };
        let mut event = json!({
            "resourceType": "AuditEvent",
            "type": event_type,
            "subtype": subtype,
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

/// The audit trail's keys, data keys wrapped by the key provider and loaded on the first audit
/// write ([`AuditWriter::set_keys`]): `chain` (scope `audit/chain`) for the HMAC links, `seal`
/// (scope `audit/events`, row `seal_id` of `data_keys`) to seal the events. Without them nothing
/// is audited, so nothing is served (fail closed).
pub struct AuditKeys {
    pub chain: Dek,
    pub seal: Dek,
    pub seal_id: i64,
}

pub type ChainKey = Arc<OnceLock<AuditKeys>>;

/// Additional data of a sealed event (its place in the chain is not known when it is sealed; its
/// tag, which the chain links, covers the ciphertext).
pub const EVENT_AAD: &[u8] = b"carapace/audit-event/v2";

/// The tag of an event: HMAC-SHA-256 under the chain key over everything its row says (the
/// sealed event and the columns it is searched by). Made when the event is written; the chainer
/// links tags, and only events whose tag holds.
fn tag(key: &Dek, row: &Row<'_>, sealed: &[u8]) -> Vec<u8> {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(b"carapace/audit-tag/v1");
    mac.update(&row.recorded.timestamp_micros().to_le_bytes());
    for part in [
        row.action.as_ref(),
        row.outcome.as_ref(),
        row.principal.as_ref(),
        row.patient.as_deref().unwrap_or(""),
        row.subtype.as_ref(),
        row.purpose.as_deref().unwrap_or(""),
    ] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    mac.update(sealed);
    mac.finalize().into_bytes().to_vec()
}

/// The link of a chained tag: HMAC-SHA-256 over the previous link, the place and the tag.
fn tag_link(key: &Dek, previous: &[u8], seq: i64, tag: &[u8]) -> Vec<u8> {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(previous);
    mac.update(&seq.to_le_bytes());
    mac.update(tag);
    mac.finalize().into_bytes().to_vec()
}

impl AuditWriter {
    /// Insert one event per record, all by the same caller, inside the caller's transaction.
    pub async fn record_all_in(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        records: &[AuditRecord],
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<Row<'_>> = records.iter().map(|r| Row::new(r, ctx)).collect();
        insert_rows(conn, &self.key, &rows).await
    }

    /// Load the keys; until then every audit write fails.
    pub fn set_keys(&self, keys: AuditKeys) {
        let _ = self.key.set(keys);
    }

    pub fn has_chain_key(&self) -> bool {
        self.key.get().is_some()
    }

    pub fn keys(&self) -> Option<&AuditKeys> {
        self.key.get()
    }
}

/// One `audit_events` row.
struct Row<'a> {
    recorded: DateTime<Utc>,
    action: Cow<'a, str>,
    outcome: Cow<'a, str>,
    principal: Cow<'a, str>,
    patient: Option<Cow<'a, str>>,
    subtype: Cow<'a, str>,
    purpose: Option<Cow<'a, str>>,
    content: Content,
}

/// What an event holds: sealed (from migration 0008 on), or the plaintext event of older rows.
enum Content {
    /// The event to seal when it is chained (its place is bound into the seal).
    ToSeal(Value),
    Sealed(Vec<u8>),
    Plain(Value),
}

impl Row<'static> {
    fn new(r: &AuditRecord, ctx: &AccessContext) -> Row<'static> {
        Row {
            recorded: r.recorded,
            action: Cow::Borrowed(r.interaction.action()),
            outcome: Cow::Borrowed(r.outcome.code()),
            principal: Cow::Owned(ctx.principal.clone()),
            patient: r.patient.clone().map(Cow::Owned),
            subtype: Cow::Borrowed(r.interaction.code()),
            purpose: ctx.purpose_of_use.clone().map(Cow::Owned),
            content: Content::ToSeal(r.to_event(ctx)),
        }
    }
}

/// The link of one event: HMAC-SHA-256 over the previous link and everything the row says (for a
/// sealed event, its ciphertext and the columns it is searched by).
fn link(key: &Dek, previous: &[u8], seq: i64, row: &Row<'_>) -> Vec<u8> {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(previous);
    mac.update(&seq.to_le_bytes());
    mac.update(&row.recorded.timestamp_micros().to_le_bytes());
    for part in [
        row.action.as_ref(),
        row.outcome.as_ref(),
        row.principal.as_ref(),
    ] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    // Only plaintext events were chained on their own row; a sealed one there matches nothing.
    match &row.content {
        Content::Plain(event) | Content::ToSeal(event) => {
            let mut bytes = Vec::new();
            canonical(event, &mut bytes);
            mac.update(&bytes);
        }
        Content::Sealed(sealed) => mac.update(sealed),
    }
    mac.finalize().into_bytes().to_vec()
}

/// JSON with object keys sorted at every level, so that an event hashes the same before it is
/// stored and after `jsonb` has reordered it.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// Insert rows with one statement, each sealed and tagged; a trigger queues them for the chainer
/// ([`chain_pending`]). No lock is taken: concurrent writers commit independently.
async fn insert_rows<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    key: &ChainKey,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    let keys = key
        .get()
        .ok_or_else(|| sqlx::Error::Protocol("the audit keys are not loaded".into()))?;
    let mut sealed = Vec::with_capacity(rows.len());
    let mut tags = Vec::with_capacity(rows.len());
    for row in rows {
        let mut plain = Vec::new();
        if let Content::ToSeal(event) = &row.content {
            canonical(event, &mut plain);
        }
        let ciphertext = crate::crypto::seal_with_aad(&keys.seal, EVENT_AAD, &plain);
        tags.push(tag(&keys.chain, row, &ciphertext));
        sealed.push(ciphertext);
    }
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded).collect();
    let action: Vec<&str> = rows.iter().map(|r| r.action.as_ref()).collect();
    let outcome: Vec<&str> = rows.iter().map(|r| r.outcome.as_ref()).collect();
    let principal: Vec<&str> = rows.iter().map(|r| r.principal.as_ref()).collect();
    let patient: Vec<Option<&str>> = rows.iter().map(|r| r.patient.as_deref()).collect();
    let subtype: Vec<&str> = rows.iter().map(|r| r.subtype.as_ref()).collect();
    let purpose: Vec<Option<&str>> = rows.iter().map(|r| r.purpose.as_deref()).collect();
    sqlx::query(
        "INSERT INTO audit_events
                (recorded, action, outcome, principal, patient, subtype, purpose, sealed, tag,
                 dek_id)
         SELECT *, $10 FROM UNNEST($1::timestamptz[], $2::char(1)[], $3::text[], $4::text[],
                                   $5::text[], $6::text[], $7::text[], $8::bytea[], $9::bytea[])",
    )
    .bind(recorded)
    .bind(action)
    .bind(outcome)
    .bind(principal)
    .bind(patient)
    .bind(subtype)
    .bind(purpose)
    .bind(&sealed)
    .bind(&tags)
    .bind(keys.seal_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The columns of an event that its tag covers.
const EVENT_COLUMNS: &str =
    "e.id, e.recorded, e.action, e.outcome, e.principal, e.patient, e.subtype, e.purpose, e.event, \
     e.sealed, e.tag";

fn stored_row(r: &sqlx::postgres::PgRow) -> Result<(Row<'static>, Option<Vec<u8>>), sqlx::Error> {
    let sealed: Option<Vec<u8>> = r.try_get("sealed")?;
    let event: Option<sqlx::types::Json<Value>> = r.try_get("event")?;
    let row = Row {
        recorded: r.try_get("recorded")?,
        action: Cow::Owned(r.try_get::<String, _>("action")?),
        outcome: Cow::Owned(r.try_get::<String, _>("outcome")?),
        principal: Cow::Owned(r.try_get::<String, _>("principal")?),
        patient: r.try_get::<Option<String>, _>("patient")?.map(Cow::Owned),
        subtype: Cow::Owned(
            r.try_get::<Option<String>, _>("subtype")?
                .unwrap_or_default(),
        ),
        purpose: r.try_get::<Option<String>, _>("purpose")?.map(Cow::Owned),
        content: match (&sealed, event) {
            (Some(s), _) => Content::Sealed(s.clone()),
            (None, Some(e)) => Content::Plain(e.0),
            (None, None) => Content::Plain(Value::Null),
        },
    };
    Ok((row, sealed))
}

/// Chain the queued events, oldest first, in batches: lock the head, link each queued tag, record
/// the links and advance the head in one transaction. Returns how many were chained. Tags are not
/// checked here (only the queue is read); `verify_chain` recomputes each from its event.
/// Events chained per transaction at most.
pub const CHAIN_BATCH: u64 = 5000;

pub async fn chain_pending(
    conn: &mut sqlx::PgConnection,
    keys: &AuditKeys,
) -> Result<u64, sqlx::Error> {
    let head = sqlx::query("SELECT seq, link FROM audit_chain_head FOR UPDATE")
        .fetch_one(&mut *conn)
        .await?;
    let mut seq: i64 = head.try_get("seq")?;
    let mut previous: Vec<u8> = head.try_get("link")?;
    let rows = sqlx::query("SELECT event_id, tag FROM audit_unchained ORDER BY event_id LIMIT $1")
        .bind(CHAIN_BATCH as i64)
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut seqs, mut ids, mut links) = (vec![], vec![], vec![]);
    for r in &rows {
        let id: i64 = r.try_get("event_id")?;
        let t: Vec<u8> = r.try_get("tag")?;
        seq += 1;
        previous = tag_link(&keys.chain, &previous, seq, &t);
        seqs.push(seq);
        ids.push(id);
        links.push(previous.clone());
    }
    sqlx::query(
        "INSERT INTO audit_links (seq, event_id, link)
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::bytea[])",
    )
    .bind(&seqs)
    .bind(&ids)
    .bind(&links)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM audit_unchained WHERE event_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE audit_chain_head SET seq = $1, link = $2")
        .bind(seq)
        .bind(&previous)
        .execute(&mut *conn)
        .await?;
    Ok(u64::try_from(ids.len()).unwrap_or(0))
}

/// Every chained event: on its own row (migrations 0005 to 0008), or through `audit_links` (0009
/// on).
const CHAINED: &str = "(SELECT seq, id AS event_id, link, true AS own_row FROM audit_events
                         WHERE seq IS NOT NULL
                        UNION ALL
                        SELECT seq, event_id, link, false FROM audit_links)";

/// The link before the first event of the chain.
pub const GENESIS_LINK: [u8; 32] = [0u8; 32];

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Chained events checked (of the live trail, from its start).
    pub checked: u64,
    /// Events recorded before the chain existed (migration 0005), not covered.
    pub unchained: u64,
    /// Events committed and waiting for the chainer (normally a fraction of a second's worth).
    pub pending: u64,
    /// The first break: where, and what is wrong there.
    pub broken: Option<(i64, String)>,
    /// The last event verified: its sequence number and link. Kept somewhere the database's
    /// administrators cannot reach, it is an anchor: a later `verify` given it proves nothing
    /// up to it was cut from the end of the chain.
    pub head: (i64, Vec<u8>),
    /// Where the live trail starts: its first sequence number and the link before it (the end
    /// link of the last archive; `(1, zeros)` while nothing is archived).
    pub start: (i64, Vec<u8>),
    /// Archived segments recorded (`audit_archives`), which join up from sequence 1 to the start.
    pub archives: u64,
    /// Events before the start kept in the table under a legal hold, each checked by its tag
    /// (their links are checked with their archive).
    pub kept: u64,
    /// The anchor given lies before the start, in this archive (its file name): proven there by
    /// `audit verify --archive`, not here.
    pub anchor_archived: Option<String>,
}

/// Walk the chain in order from where the live trail starts, recomputing every tag and link, and
/// report the first event that was edited, deleted, reordered or inserted; check that the
/// archives recorded join up to the start and that every event kept before it (legal holds)
/// matches its tag. `progress` gets (checked, total).
pub async fn verify_chain(
    conn: &mut sqlx::PgConnection,
    key: &Dek,
    anchor: Option<&(i64, Vec<u8>)>,
    mut progress: impl FnMut(u64, u64),
) -> Result<ChainReport, sqlx::Error> {
    let start = sqlx::query("SELECT seq, link FROM audit_chain_start")
        .fetch_one(&mut *conn)
        .await?;
    let start: (i64, Vec<u8>) = (start.try_get("seq")?, start.try_get("link")?);
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {CHAINED} c WHERE c.seq >= $1"
    ))
    .bind(start.0)
    .fetch_one(&mut *conn)
    .await?;
    let first: Option<i64> = sqlx::query_scalar(&format!("SELECT min(event_id) FROM {CHAINED} c"))
        .fetch_one(&mut *conn)
        .await?;
    let first = first.unwrap_or(i64::MAX);
    let unchained: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE seq IS NULL AND id < $1")
            .bind(first)
            .fetch_one(&mut *conn)
            .await?;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_unchained")
        .fetch_one(&mut *conn)
        .await?;
    let mut report = ChainReport {
        checked: 0,
        unchained: u64::try_from(unchained).unwrap_or(0),
        pending: u64::try_from(pending).unwrap_or(0),
        broken: None,
        head: (start.0 - 1, start.1.clone()),
        start: start.clone(),
        archives: 0,
        kept: 0,
        anchor_archived: None,
    };
    let stray: Option<i64> = sqlx::query_scalar(
        "SELECT min(e.id) FROM audit_events e
          WHERE e.seq IS NULL AND e.id > $1
            AND NOT EXISTS (SELECT 1 FROM audit_links l WHERE l.event_id = e.id)
            AND NOT EXISTS (SELECT 1 FROM audit_unchained u WHERE u.event_id = e.id)",
    )
    .bind(first)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(broken) = check_archived_part(&mut *conn, key, anchor, &mut report).await? {
        report.broken = Some(broken);
        return Ok(report);
    }
    let (mut seq, mut previous) = (start.0 - 1, start.1.clone());
    loop {
        let rows = sqlx::query(&format!(
            "SELECT c.seq AS at, c.link, c.own_row, {EVENT_COLUMNS}
               FROM {CHAINED} c JOIN audit_events e ON e.id = c.event_id
              WHERE c.seq > $1 ORDER BY c.seq LIMIT 1000"
        ))
        .bind(seq)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let at: i64 = r.try_get("at")?;
            let stored: Vec<u8> = r.try_get("link")?;
            let (row, sealed) = stored_row(r)?;
            if at != seq + 1 {
                report.broken = Some((
                    seq + 1,
                    "the event is missing (deleted or renumbered)".into(),
                ));
                return Ok(report);
            }
            let expected = if r.try_get::<bool, _>("own_row")? {
                Some(link(key, &previous, at, &row))
            } else {
                let stored_tag: Option<Vec<u8>> = r.try_get("tag")?;
                match (&sealed, stored_tag) {
                    (Some(sealed), Some(t)) if tag(key, &row, sealed) == t => {
                        Some(tag_link(key, &previous, at, &t))
                    }
                    _ => None,
                }
            };
            if expected.as_ref() != Some(&stored) {
                report.broken = Some((
                    at,
                    "the event does not match its link (edited, moved or inserted)".into(),
                ));
                return Ok(report);
            }
            if anchor.is_some_and(|(s, l)| *s == at && *l != stored) {
                report.broken = Some((at, "the event is not the anchor recorded earlier".into()));
                return Ok(report);
            }
            seq = at;
            previous = stored;
            report.checked += 1;
            report.head = (seq, previous.clone());
        }
        progress(report.checked, u64::try_from(total).unwrap_or(0));
    }
    let head = sqlx::query("SELECT seq, link FROM audit_chain_head")
        .fetch_one(&mut *conn)
        .await?;
    let (head_seq, head_link): (i64, Vec<u8>) = (head.try_get("seq")?, head.try_get("link")?);
    if head_seq != seq || head_link != previous {
        report.broken = Some((seq + 1, "events after this point are missing".into()));
    } else if let Some((at, _)) = anchor.filter(|(at, _)| *at > seq) {
        report.broken = Some((
            seq + 1,
            format!("events up to the anchor ({at}) were cut from the end"),
        ));
    } else if let Some(id) = stray {
        report.broken = Some((
            id,
            "an event outside the chain was inserted (row id)".into(),
        ));
    }
    Ok(report)
}

/// The part of the chain before the live start: the archives recorded must join up from
/// sequence 1 to the start (each starting at the link the one before ended with), every event
/// kept there must match its tag and lie in an archive, and an anchor there must lie in an
/// archive (matching its end link, or the start's, when it is one of those). Fills `report`'s
/// archive fields; returns the first break.
async fn check_archived_part(
    conn: &mut sqlx::PgConnection,
    key: &Dek,
    anchor: Option<&(i64, Vec<u8>)>,
    report: &mut ChainReport,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let archives = sqlx::query(
        "SELECT first_seq, last_seq, start_link, end_link, file_name
           FROM audit_archives ORDER BY first_seq",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (mut next, mut link_before): (i64, Option<Vec<u8>>) = (1, None);
    for a in &archives {
        let first: i64 = a.try_get("first_seq")?;
        let last: i64 = a.try_get("last_seq")?;
        let start_link: Option<Vec<u8>> = a.try_get("start_link")?;
        if first != next || start_link != link_before {
            return Ok(Some((
                first,
                "the archives recorded do not join up (an archive's start is not the end of the \
                 one before it)"
                    .into(),
            )));
        }
        if let Some((at, l)) = anchor.filter(|(at, _)| (first..=last).contains(at)) {
            let end_link: Vec<u8> = a.try_get("end_link")?;
            if *at == last && *l != end_link {
                return Ok(Some((
                    *at,
                    "the event is not the anchor recorded earlier".into(),
                )));
            }
            report.anchor_archived = Some(a.try_get("file_name")?);
        }
        next = last + 1;
        link_before = Some(a.try_get("end_link")?);
        report.archives += 1;
    }
    let (start_seq, start_link) = &report.start;
    if *start_seq != next || *start_link != link_before.unwrap_or_else(|| GENESIS_LINK.to_vec()) {
        return Ok(Some((
            *start_seq,
            "the live trail does not start where the last archive ends".into(),
        )));
    }
    if let Some((at, _)) = anchor.filter(|(at, _)| *at < 1) {
        return Ok(Some((*at, "the anchor is before the chain's start".into())));
    }
    // Kept events: few (a hold's patients), each checked by its tag.
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(&format!(
            "SELECT c.seq AS at, c.own_row, {EVENT_COLUMNS}
               FROM {CHAINED} c JOIN audit_events e ON e.id = c.event_id
              WHERE c.seq > $1 AND c.seq < $2 ORDER BY c.seq LIMIT 1000"
        ))
        .bind(after)
        .bind(start_seq)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        for r in &rows {
            let at: i64 = r.try_get("at")?;
            // (An event chained on its own row has no tag: its link is checked in its archive.)
            if !r.try_get::<bool, _>("own_row")? {
                let (row, sealed) = stored_row(r)?;
                let stored_tag: Option<Vec<u8>> = r.try_get("tag")?;
                let holds = match (&sealed, stored_tag) {
                    (Some(sealed), Some(t)) => tag(key, &row, sealed) == t,
                    _ => false,
                };
                if !holds {
                    return Ok(Some((
                        at,
                        "an event kept under a legal hold does not match its tag (edited)".into(),
                    )));
                }
            }
            after = at;
            report.kept += 1;
        }
    }
}

struct Pending {
    row: Row<'static>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Group-committing writer for events that are not part of a data transaction (reads, failures).
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Pending>,
    key: ChainKey,
}

#[derive(Debug, thiserror::Error)]
#[error("audit trail unavailable: {0}")]
pub struct AuditError(pub String);

const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Start the writer task on `pool`.
    pub fn start(pool: Db) -> AuditWriter {
        let (tx, rx) = mpsc::channel(4096);
        let key = ChainKey::default();
        tokio::spawn(run_writer(pool, key.clone(), rx));
        AuditWriter { tx, key }
    }

    /// Events handed to the writer and not yet taken into a batch, and how many it can hold
    /// before a request waits (readiness and metrics: is the writer keeping up?).
    pub fn queued(&self) -> (usize, usize) {
        let most = self.tx.max_capacity();
        (most - self.tx.capacity(), most)
    }

    /// Record events; returns once all are committed (together, when they arrive together).
    pub async fn record_all(
        &self,
        ctx: &AccessContext,
        records: &[AuditRecord],
    ) -> Result<(), AuditError> {
        let stopped = || AuditError("writer stopped".into());
        let mut waits = Vec::with_capacity(records.len());
        for record in records {
            let (done, wait) = oneshot::channel();
            let pending = Pending {
                row: Row::new(record, ctx),
                done,
            };
            self.tx.send(pending).await.map_err(|_| stopped())?;
            waits.push(wait);
        }
        for wait in waits {
            wait.await.map_err(|_| stopped())?.map_err(AuditError)?;
        }
        Ok(())
    }
}

async fn run_writer(pool: Db, key: ChainKey, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (rows, waiting): (Vec<Row<'static>>, Vec<_>) =
            batch.drain(..).map(|p| (p.row, p.done)).unzip();
        // One statement, committed on its own (its implicit transaction also holds the chain
        // queue's trigger insert): one round trip, where BEGIN, INSERT, COMMIT took three.
        let commit = insert_rows(&pool, &key, &rows);
        let result = commit.await.map_err(|e| {
            tracing::error!(error = %e, events = rows.len(), "audit batch failed");
            "could not write the audit trail".to_string()
        });
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}
