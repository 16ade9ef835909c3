//! Delivering Subscriptions: the outbox (migration 0022). Writes that an active Subscription's
//! type queued (`subscription_writes`, by a trigger in the writing transaction) are matched
//! through the search engine and the gate **as each Subscription's owner** — the criteria with
//! `_id` of the written resources, run as the owner's search — and become notifications
//! (`subscription_notifications`), which a node claims with `FOR UPDATE SKIP LOCKED`, leases,
//! sends (the server's `hooks.rs`: this floor has no HTTP), and settles: deleted on success,
//! retried with exponential back-off on failure; the Subscription's `status` goes to `error`
//! (with its `error` text) after [`ERROR_AFTER`] failures in a row and back to `active` on the
//! next success. Every delivery and failure is audited as the owner.

use super::keys::DekRow;
use super::subscription::{origin_of, read_channel};
use super::write::Prepared;
use super::{head_row, Store, StoreError};
use crate::access::{AccessContext, Role, Scope};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::{ResourceId, ResourceType};
use serde_json::Value;
use sqlx::Row;
use std::collections::HashMap;

/// Failed deliveries in a row after which the Subscription's status is `error`.
pub const ERROR_AFTER: i32 = 3;
/// Attempts after which a notification is given up (audited as failed).
pub const MAX_ATTEMPTS: i32 = 10;
/// How long a claimed notification is a node's to send before another may take it: past the
/// sender's own time-out.
const LEASE_SECONDS: i64 = 60;
/// Writes matched per fan-out round, and notifications claimed per round.
const BATCH: i64 = 100;

/// The principal of the server's own writes of a Subscription's status.
pub const NOTIFIER: &str = "carapace-subscriptions";

/// One notification to send: where, with which headers, and the body (none: a ping). Its
/// `Debug` shows neither the headers (they may hold credentials) nor the body (PHI).
pub struct Delivery {
    pub seq: i64,
    pub subscription: String,
    pub endpoint: url::Url,
    /// The endpoint may be plain http or at a non-public address (an administrator listed its
    /// origin in `CARAPACE_SUBSCRIPTION_ALLOWED_ORIGINS`).
    pub any_address: bool,
    /// Sent as given, never logged.
    pub headers: Vec<(String, String)>,
    /// The resource as the owner may read it (`application/fhir+json`), or none (a ping).
    pub body: Option<Vec<u8>>,
    /// Refused before sending (the endpoint no longer allowed): the failure to record.
    pub refused: Option<String>,
    owner: AccessContext,
    criteria: String,
    what: String,
    patient: Option<String>,
    attempts: i32,
    /// The Subscription's version and status as read for this delivery.
    version_id: i64,
    status: String,
    error: Option<String>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("seq", &self.seq)
            .field("subscription", &self.subscription)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// The context the server writes a Subscription's status under.
fn notifier() -> AccessContext {
    AccessContext {
        principal: NOTIFIER.into(),
        role: Role::System,
        scopes: Scope::parse("system/Subscription.cruds")
            .into_iter()
            .collect(),
        patient: None,
        purpose_of_use: None,
        btg_reason: None,
        address: None,
        client: None,
        plan: Default::default(),
    }
}

/// The owner's context, rebuilt from its row (a fresh plan: consents as they are now).
fn owner_of(row: &sqlx::postgres::PgRow) -> Result<Option<AccessContext>, StoreError> {
    let Some(role) = Role::parse(&row.try_get::<String, _>("role")?) else {
        return Ok(None);
    };
    let scopes: Vec<String> = row.try_get("scopes")?;
    Ok(Some(AccessContext {
        principal: row.try_get("principal")?,
        role,
        scopes: scopes
            .iter()
            .filter_map(|s| Scope::parse(s).ok())
            .filter(|s| crate::access::role_allows(role, s.context))
            .collect(),
        patient: row.try_get("patient")?,
        purpose_of_use: None,
        btg_reason: None,
        address: None,
        client: row.try_get("client_id")?,
        plan: Default::default(),
    }))
}

/// The delay before attempt `attempts + 1`: the base, doubled per attempt made, at most an hour.
fn back_off(base: std::time::Duration, attempts: i32) -> chrono::Duration {
    let factor = 1u32 << attempts.clamp(1, 20).saturating_sub(1);
    let delay = base
        .saturating_mul(factor)
        .min(std::time::Duration::from_secs(3600));
    chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1))
}

impl Store {
    /// A Subscription as stored now (the server's own read of its configuration, not a
    /// caller's): version, body; `None` when it is gone.
    async fn stored_subscription(&self, id: &str) -> Result<Option<(i64, Value)>, StoreError> {
        let t = subscription_type()?;
        let mut tx = self.begin_internal().await?;
        let row = head_row(&mut tx, t, id, false).await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<bool, _>("deleted")? {
            return Ok(None);
        }
        let version_id: i64 = row.try_get("version_id")?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let body = self
            .open_body(t, id, version_id, &DekRow::from_row(&row)?, &sealed)
            .await?;
        let body = serde_json::from_slice(&body).map_err(|_| StoreError::Integrity)?;
        Ok(Some((version_id, body)))
    }

    /// Does the account that work was started as (a Subscription's owner, a Bulk export's
    /// caller) still stand: not locked, the same role; its client enabled?
    pub async fn principal_stands(&self, ctx: &AccessContext) -> Result<bool, StoreError> {
        let person = if ctx.role == Role::System {
            true
        } else {
            sqlx::query_scalar::<_, bool>(
                "SELECT role = $2 AND NOT admin_locked FROM users WHERE username = $1",
            )
            .bind(&ctx.principal)
            .bind(ctx.role.as_str())
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(false)
        };
        let client = match ctx
            .client
            .as_deref()
            .or((ctx.role == Role::System).then_some(ctx.principal.as_str()))
        {
            Some(c) => sqlx::query_scalar::<_, bool>(
                "SELECT NOT disabled FROM clients WHERE client_id = $1",
            )
            .bind(c)
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(false),
            None => true,
        };
        Ok(person && client)
    }

    /// Match the writes queued since the last round against the active Subscriptions of their
    /// types, each as its owner, and queue a notification per match. The writes are taken with
    /// `FOR UPDATE SKIP LOCKED` and removed in the transaction that queues their notifications,
    /// so each is matched once whichever node takes it. Returns the notifications queued.
    pub async fn fan_out_subscriptions(&self) -> Result<usize, StoreError> {
        let mut tx = self.begin_internal().await?;
        let writes = sqlx::query(
            "SELECT seq, resource_type, id, version_id FROM subscription_writes
              ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if writes.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(writes.len());
        // Per type, the latest version written of each resource.
        let mut by_type: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for w in &writes {
            seqs.push(w.try_get::<i64, _>("seq")?);
            let version: i64 = w.try_get("version_id")?;
            let latest = by_type
                .entry(w.try_get("resource_type")?)
                .or_default()
                .entry(w.try_get("id")?)
                .or_insert(version);
            *latest = (*latest).max(version);
        }
        let types: Vec<&str> = by_type.keys().map(String::as_str).collect();
        let owners = sqlx::query(
            "SELECT id, criteria_type, principal, client_id, role, scopes, patient
               FROM subscription_owners WHERE active AND criteria_type = ANY($1)",
        )
        .bind(&types)
        .fetch_all(&mut *tx)
        .await?;
        let now = self.now();
        let mut queued: Vec<(String, String, String, i64, Option<String>)> = Vec::new();
        for owner in &owners {
            let subscription: String = owner.try_get("id")?;
            let criteria_type: String = owner.try_get("criteria_type")?;
            let Some(written) = by_type.get(&criteria_type) else {
                continue;
            };
            let Some(ctx) = owner_of(owner)? else {
                continue;
            };
            match self
                .matches_as_owner(&subscription, &ctx, written.keys().map(String::as_str))
                .await
            {
                Ok(matched) => {
                    for (id, patient) in matched {
                        let version = written.get(&id).copied().unwrap_or(0);
                        queued.push((
                            subscription.clone(),
                            criteria_type.clone(),
                            id,
                            version,
                            patient,
                        ));
                    }
                }
                // A refusal of the owner's search (scopes narrowed since, an account locked)
                // notifies nothing; anything else is tried again with the writes.
                Err(
                    StoreError::Denied(_) | StoreError::BadRequest(_) | StoreError::NotFound(_),
                ) => {}
                // The database or the key provider away: every owner would fail alike, so the
                // writes are matched again later.
                Err(e @ (StoreError::Database(_) | StoreError::Key(_))) => return Err(e),
                // One owner's failure (an unreadable consent, say) must not hold back everyone
                // else's notifications: that owner misses these writes, and the log says so.
                // (The error's text is not logged: a store error may name a resource.)
                Err(_) => {
                    tracing::warn!(subscription = %subscription,
                        "a Subscription's owner could not be matched; its notifications for these writes are skipped");
                }
            }
        }
        if !queued.is_empty() {
            let subs: Vec<&str> = queued.iter().map(|q| q.0.as_str()).collect();
            let types: Vec<&str> = queued.iter().map(|q| q.1.as_str()).collect();
            let ids: Vec<&str> = queued.iter().map(|q| q.2.as_str()).collect();
            let versions: Vec<i64> = queued.iter().map(|q| q.3).collect();
            let patients: Vec<Option<&str>> = queued.iter().map(|q| q.4.as_deref()).collect();
            sqlx::query(
                "INSERT INTO subscription_notifications
                        (subscription_id, resource_type, resource_id, version_id, patient, due,
                         created_at)
                 SELECT s, t, i, v, p, $6, $6
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
                        AS u(s, t, i, v, p)",
            )
            .bind(&subs)
            .bind(&types)
            .bind(&ids)
            .bind(&versions)
            .bind(&patients)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM subscription_writes WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queued.len())
    }

    /// Which of `ids` the Subscription's criteria match, searched as its owner: the search
    /// engine and the gate decide, so nothing the owner may not see is ever matched. Each id with
    /// the patient whose record it is in.
    async fn matches_as_owner<'a>(
        &self,
        subscription: &str,
        owner: &AccessContext,
        ids: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let Some((_, body)) = self.stored_subscription(subscription).await? else {
            return Ok(vec![]);
        };
        if !self.principal_stands(owner).await? {
            return Ok(vec![]);
        }
        let criteria = body.get("criteria").and_then(Value::as_str).unwrap_or("");
        let (type_name, query) = criteria.split_once('?').unwrap_or((criteria, ""));
        let resource_type = ResourceType::parse(type_name)
            .ok_or_else(|| StoreError::BadRequest("criteria".into()))?;
        let ids: Vec<&str> = ids.collect();
        let mut pairs = super::read::form_pairs(query);
        pairs.push(("_id".into(), ids.join(",")));
        pairs.push(("_count".into(), ids.len().to_string()));
        let parsed = crate::search::query::parse(resource_type, &pairs, true)?;
        let found = self.search(owner, &parsed).await?;
        Ok(found
            .matches
            .into_iter()
            .filter(|m| ids.contains(&m.id.as_str()))
            .map(|m| (m.id, m.patient))
            .collect())
    }

    /// Claim the notifications due now (at most [`BATCH`]): leased to this node, their attempt
    /// counted, each ready to send — its body, when the Subscription asks for one, read as the
    /// owner through the gate. Notifications of a Subscription gone, off, or whose owner no
    /// longer stands are removed unsent.
    pub async fn claim_notifications(&self) -> Result<Vec<Delivery>, StoreError> {
        let now = self.now();
        let mut tx = self.begin_internal().await?;
        let rows = sqlx::query(
            "UPDATE subscription_notifications n
                SET leased_until = $2, attempts = n.attempts + 1
              WHERE n.seq IN (SELECT seq FROM subscription_notifications
                               WHERE due <= $1 AND (leased_until IS NULL OR leased_until < $1)
                               ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED)
          RETURNING n.seq, n.subscription_id, n.resource_type, n.resource_id, n.version_id,
                    n.patient, n.attempts",
        )
        .bind(now)
        .bind(now + chrono::Duration::seconds(LEASE_SECONDS))
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            match self.prepare_delivery(&row).await {
                Ok(Some(d)) => out.push(d),
                Ok(None) => self.remove_notification(seq).await?,
                Err(e) => {
                    // Tried again when the lease ends.
                    tracing::warn!(seq, error = %e, "a notification could not be prepared");
                }
            }
        }
        Ok(out)
    }

    async fn remove_notification(&self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subscription_notifications WHERE seq = $1")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn prepare_delivery(
        &self,
        row: &sqlx::postgres::PgRow,
    ) -> Result<Option<Delivery>, StoreError> {
        let subscription: String = row.try_get("subscription_id")?;
        let owner = sqlx::query(
            "SELECT principal, client_id, role, scopes, patient FROM subscription_owners
              WHERE id = $1 AND active",
        )
        .bind(&subscription)
        .fetch_optional(&self.pool)
        .await?;
        let Some(owner) = owner.as_ref().map(owner_of).transpose()?.flatten() else {
            return Ok(None);
        };
        let Some((version_id, body)) = self.stored_subscription(&subscription).await? else {
            return Ok(None);
        };
        if !self.principal_stands(&owner).await? {
            return Ok(None);
        }
        let resource_type: String = row.try_get("resource_type")?;
        let resource_id: String = row.try_get("resource_id")?;
        let version: i64 = row.try_get("version_id")?;
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let mut delivery = Delivery {
            seq: row.try_get("seq")?,
            subscription,
            endpoint: url::Url::parse("https://invalid.invalid/")
                .map_err(|_| StoreError::Integrity)?,
            any_address: false,
            headers: vec![],
            body: None,
            refused: None,
            criteria: text("criteria").unwrap_or_default(),
            what: format!("{resource_type}/{resource_id}/_history/{version}"),
            patient: row.try_get("patient")?,
            attempts: row.try_get("attempts")?,
            version_id,
            status: text("status").unwrap_or_default(),
            error: text("error"),
            owner,
        };
        // The rules as they are now: an endpoint an administrator no longer allows fails.
        match read_channel(&self.subscription_rules, &body) {
            Ok(channel) => {
                delivery.any_address = self
                    .subscription_rules
                    .allows_any_address(&origin_of(&channel.endpoint));
                delivery.endpoint = channel.endpoint;
                delivery.headers = channel.headers;
                if channel.full_payload {
                    let t = ResourceType::parse(&resource_type).ok_or(StoreError::Integrity)?;
                    let id = ResourceId::parse(&resource_id).map_err(|_| StoreError::Integrity)?;
                    match self.read(&delivery.owner, t, &id).await {
                        Ok(found) => delivery.body = Some(found.body),
                        // Hidden from the owner now, deleted or erased: nothing to send.
                        Err(
                            StoreError::NotFound(_)
                            | StoreError::Gone { .. }
                            | StoreError::Erased(_)
                            | StoreError::Denied(_),
                        ) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(_) => {
                delivery.refused =
                    Some("the endpoint is no longer allowed by this server's settings".into());
            }
        }
        Ok(Some(delivery))
    }

    /// Record how a delivery went: `Ok` (the endpoint answered 2xx) removes the notification
    /// and makes the Subscription `active` again; `Err` (a reason without PHI: an HTTP status,
    /// a time-out) schedules the next attempt — or gives up after [`MAX_ATTEMPTS`] — and past
    /// [`ERROR_AFTER`] failures in a row sets `status` `error` with the reason as `error`.
    /// Audited as the owner either way.
    pub async fn settle_notification(
        &self,
        delivery: Delivery,
        sent: Result<(), String>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let failure = sent.err().or(delivery.refused.clone());
        let record = AuditRecord {
            interaction: Interaction::Notify,
            outcome: if failure.is_none() {
                Outcome::Success
            } else {
                Outcome::SeriousFailure
            },
            recorded: now,
            what: Some(delivery.what.clone()),
            patient: delivery.patient.clone(),
            query: Some(format!(
                "Subscription/{}: {}",
                delivery.subscription, delivery.criteria
            )),
        };
        self.audit_record(&delivery.owner, &record).await?;
        match failure {
            None => {
                sqlx::query("DELETE FROM subscription_notifications WHERE seq = $1")
                    .bind(delivery.seq)
                    .execute(&self.pool)
                    .await?;
                sqlx::query("UPDATE subscription_owners SET failures = 0 WHERE id = $1")
                    .bind(&delivery.subscription)
                    .execute(&self.pool)
                    .await?;
                if delivery.status == "error" {
                    self.write_subscription_status(&delivery, "active", None)
                        .await?;
                }
            }
            Some(reason) => {
                if delivery.attempts >= MAX_ATTEMPTS {
                    self.remove_notification(delivery.seq).await?;
                } else {
                    sqlx::query(
                        "UPDATE subscription_notifications SET due = $2, leased_until = NULL
                          WHERE seq = $1",
                    )
                    .bind(delivery.seq)
                    .bind(now + back_off(self.subscription_rules.retry_base, delivery.attempts))
                    .execute(&self.pool)
                    .await?;
                }
                let failures: Option<i32> = sqlx::query_scalar(
                    "UPDATE subscription_owners SET failures = failures + 1 WHERE id = $1
                     RETURNING failures",
                )
                .bind(&delivery.subscription)
                .fetch_optional(&self.pool)
                .await?;
                let text = format!(
                    "delivery to the endpoint failed {} times in a row; the last: {reason}",
                    ERROR_AFTER
                );
                if failures.unwrap_or(0) >= ERROR_AFTER
                    && (delivery.status != "error" || delivery.error.as_deref() != Some(&text))
                {
                    self.write_subscription_status(&delivery, "error", Some(&text))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The server's own write of a Subscription's `status` and `error`: a new version (If-Match
    /// the one the delivery read, so a client's update meanwhile wins), its owner unchanged.
    async fn write_subscription_status(
        &self,
        delivery: &Delivery,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some((version_id, mut body)) = self.stored_subscription(&delivery.subscription).await?
        else {
            return Ok(());
        };
        if version_id != delivery.version_id {
            return Ok(());
        }
        if let Value::Object(map) = &mut body {
            map.insert("status".into(), Value::String(status.into()));
            match error {
                Some(e) => map.insert("error".into(), Value::String(e.into())),
                None => map.remove("error"),
            };
        }
        let t = subscription_type()?;
        let ctx = notifier();
        let scope = self
            .scope_for(&ctx, t, &delivery.subscription, &body)
            .await?;
        let (dek_id, dek) = self.dek_for_scope(&scope).await?;
        let mut prefixes = super::index::PrefixRows::default();
        let index = self.index_rows(t, &body, &mut prefixes).await?;
        self.write_prefixes(prefixes).await?;
        let mut prepared = Prepared {
            resource_type: t,
            id: delivery.subscription.clone(),
            resource: body,
            scope,
            dek_id,
            dek,
            index,
            server_id: false,
            content: None,
            subscription: None,
        };
        let mut tx = self.begin_for(&ctx).await?;
        match self
            .write_update(&mut tx, &ctx, &mut prepared, Some(version_id))
            .await
        {
            Ok(_) => {
                tx.commit().await?;
                Ok(())
            }
            // A client wrote it meanwhile: theirs stands.
            Err(StoreError::VersionConflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn subscription_type() -> Result<ResourceType, StoreError> {
    ResourceType::parse("Subscription").ok_or(StoreError::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_the_base_up_to_an_hour() {
        let base = std::time::Duration::from_millis(100);
        assert_eq!(back_off(base, 1).num_milliseconds(), 100);
        assert_eq!(back_off(base, 2).num_milliseconds(), 200);
        assert_eq!(back_off(base, 4).num_milliseconds(), 800);
        assert_eq!(back_off(base, 40).num_seconds(), 3600);
    }
}
