//! The audit trail through the FHIR API: AuditEvents for administrators (every event) and for
//! patients (the events about their own record: who accessed it). Events are opened from their
//! seal; the columns they are searched by are the only plaintext.

use super::audited::{Event, Recorded};
use super::{DekRow, Store, StoreError};
use crate::access::{AccessContext, Denied, Permission, Role};
use crate::audit::{self, Interaction};
use crate::crypto;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

/// What an AuditEvent search asks for (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub id: Option<i64>,
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Recorded before.
    pub until: Option<DateTime<Utc>>,
    /// The agent: a user name or client id.
    pub agent: Option<String>,
    /// `Patient/<id>`.
    pub patient: Option<String>,
    /// C, R, U, D or E.
    pub action: Option<String>,
    /// 0, 4 or 8.
    pub outcome: Option<String>,
    /// The interaction (`read`, `search-type`, `break-glass`, ...).
    pub subtype: Option<String>,
    /// Purpose of use (`BTG`).
    pub purpose: Option<String>,
    pub count: usize,
    /// Events older than this one (paging, newest first).
    pub before_id: Option<i64>,
}

pub struct AuditPage {
    /// `(id, AuditEvent)`, newest first.
    pub events: Vec<(i64, Value)>,
    /// The id to page on from, if there are more.
    pub next: Option<i64>,
}

const MAX_AUDIT_COUNT: usize = 1000;

impl Store {
    /// AuditEvents matching `query` that the caller may read, newest first. Reading the trail is
    /// itself audited.
    pub async fn audit_events(
        &self,
        ctx: &AccessContext,
        query: &AuditQuery,
    ) -> Result<AuditPage, StoreError> {
        let interaction = if query.id.is_some() {
            Interaction::Read
        } else {
            Interaction::Search
        };
        let what = match query.id {
            Some(id) => format!("AuditEvent/{id}"),
            None => "AuditEvent".into(),
        };
        let patient = ctx.compartment();
        let event = Event {
            patient: patient.clone(),
            ..Event::new(interaction, what)
        };
        self.audited(
            ctx,
            event,
            async {
                ctx.check(
                    "AuditEvent",
                    if query.id.is_some() {
                        Permission::Read
                    } else {
                        Permission::Search
                    },
                )?;
                let patient = match ctx.role {
                    Role::Admin => query.patient.clone(),
                    Role::Patient => {
                        let own = ctx.compartment().ok_or(Denied::Hidden)?;
                        if query.patient.as_ref().is_some_and(|p| *p != own) {
                            return Ok(AuditPage {
                                events: vec![],
                                next: None,
                            });
                        }
                        Some(own)
                    }
                    _ => return Err(Denied::AuditReaders.into()),
                };
                let count = query.count.clamp(1, MAX_AUDIT_COUNT);
                let mut tx = self.begin_for(ctx).await?;
                let rows = sqlx::query(
                    "SELECT e.id, e.event, e.sealed, k.id AS dek_id, k.scope, k.wrapped
               FROM audit_events e LEFT JOIN data_keys k ON k.id = e.dek_id
              WHERE ($1::int8 IS NULL OR e.id = $1)
                AND ($2::timestamptz IS NULL OR e.recorded >= $2)
                AND ($3::timestamptz IS NULL OR e.recorded < $3)
                AND ($4::text IS NULL OR e.principal = $4)
                AND ($5::text IS NULL OR e.patient = $5)
                AND ($6::text IS NULL OR e.action = $6)
                AND ($7::text IS NULL OR e.outcome = $7)
                AND ($8::text IS NULL OR e.subtype = $8)
                AND ($9::text IS NULL OR e.purpose = $9)
                AND ($10::int8 IS NULL OR e.id < $10)
              ORDER BY e.id DESC LIMIT $11",
                )
                // Planned afresh with the values (an unnamed statement): which filters are set decides
                // which index serves, and a cached generic plan would walk the whole trail backwards for a
                // rare subtype or outcome.
                .persistent(false)
                .bind(query.id)
                .bind(query.since)
                .bind(query.until)
                .bind(query.agent.as_deref())
                .bind(patient.as_deref())
                .bind(query.action.as_deref())
                .bind(query.outcome.as_deref())
                .bind(query.subtype.as_deref())
                .bind(query.purpose.as_deref())
                .bind(query.before_id)
                .bind(i64::try_from(count + 1).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
                drop(tx);
                let more = rows.len() > count;
                let mut events = Vec::with_capacity(count.min(rows.len()));
                for row in rows.iter().take(count) {
                    let id: i64 = row.try_get("id")?;
                    let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
                    let mut event = match sealed {
                        Some(sealed) => {
                            let dek = self.dek_by_id(&DekRow::from_row(row)?).await?;
                            let plain = crypto::open_with_aad(&dek, audit::EVENT_AAD, &sealed)
                                .map_err(|_| StoreError::Integrity)?;
                            serde_json::from_slice(&plain).map_err(|_| StoreError::Integrity)?
                        }
                        None => row
                            .try_get::<Option<sqlx::types::Json<Value>>, _>("event")?
                            .map(|j| j.0)
                            .unwrap_or(Value::Null),
                    };
                    if let Some(obj) = event.as_object_mut() {
                        obj.insert("id".into(), Value::String(id.to_string()));
                    }
                    events.push((id, event));
                }
                let next = if more {
                    events.last().map(|(id, _)| *id)
                } else {
                    None
                };
                Ok(AuditPage { events, next })
            }
            .await,
            |_| Recorded::Here(vec![patient]),
        )
        .await
    }
}
