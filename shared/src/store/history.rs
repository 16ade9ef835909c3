//! The history interactions (instance, type and system `_history`): versions newest first, each
//! through the gate, paged by a sealed cursor.

use super::audited::{Event, Recorded};
use super::{reach, DekRow, Store, StoreError, MAX_FILL_ROUNDS, MAX_HISTORY_COUNT};
use crate::access::{AccessContext, Permission};
use crate::audit::Interaction;
use crate::fhir::{ResourceId, ResourceType};
use crate::search::interaction_params::HistoryQuery;
use chrono::{DateTime, Utc};
use sqlx::Row;

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

pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Sealed: opaque to the client, bound to history pages.
    pub next: Option<String>,
}

impl Store {
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
        let (interaction, what) = match (resource_type, id) {
            (Some(t), Some(i)) => (Interaction::HistoryInstance, Some(format!("{t}/{i}"))),
            (Some(t), None) => (Interaction::HistoryType, Some(t.to_string())),
            _ => (Interaction::HistorySystem, None),
        };
        let event = Event {
            interaction,
            what,
            query: None,
            patient: None,
        };
        // A refused or failed history is audited too; a served one once, as before.
        self.audited(
            ctx,
            event,
            async {
                // System history needs a wildcard scope; `*` is no resource type, so only `*` scopes match.
                ctx.check(resource_type.map_or("*", |t| t.as_str()), Permission::Read)?;
                super::release::since_allowed(ctx, query.since)?;
                // An erased resource's history is gone with it.
                if let (Some(t), Some(i)) = (resource_type, id) {
                    if let erased @ StoreError::Erased(_) = self.missing(ctx, t, i.as_str()).await? {
                        return Err(erased);
                    }
                }
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
                Ok(HistoryPage { entries, next })
            }
            .await,
            |_| Recorded::Here(vec![None]),
        )
        .await
    }
}
