//! What the policy needs from the database for one request: the caller's actor references, the
//! consents that may name them, and break-the-glass grants. The decisions themselves are made in
//! [`crate::access::policy`].

use super::policy_inputs::Inputs;
use super::{Store, StoreError};
use crate::access::policy::{ConsentRule, Label, Plan, Reason, RowReach, SqlReach};
use crate::access::{AccessContext, Denied, Permission, Role};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::fhir::ResourceType;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Parsed consent versions kept in memory (then the cache starts over).
const MAX_CACHED_CONSENTS: usize = 100_000;

/// The longest break-the-glass reason kept.
const MAX_REASON: usize = 1000;

/// One break-the-glass grant, as the review queue shows it.
#[derive(Debug, Clone)]
pub struct BtgGrant {
    pub id: i64,
    pub principal: String,
    pub role: String,
    pub reason: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accesses: i64,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub reviewed_by: Option<String>,
    pub note: Option<String>,
}

impl Store {
    /// The policy's decisions for this request, computed on first use, from the caller's actors
    /// and consents as the database holds them now (kept between requests only while every
    /// change to them is heard: [`super::policy_inputs`]).
    pub(crate) async fn plan(&self, ctx: &AccessContext) -> Result<Arc<Plan>, StoreError> {
        if let Some(plan) = ctx.plan.get() {
            return Ok(plan.clone());
        }
        let now = self.clock.now();
        let btg = self.break_glass(ctx, now).await?;
        let inputs = match ctx.role {
            Role::Practitioner | Role::Analytics if btg.is_none() => {
                match self.policy_inputs.get(&ctx.principal, ctx.role) {
                    Ok(inputs) => inputs,
                    Err(generation) => {
                        let actors = self.actors_of(ctx).await?;
                        let consents = self.consents_naming(&actors).await?;
                        let inputs = Arc::new(Inputs { actors, consents });
                        self.policy_inputs.keep(
                            &ctx.principal,
                            ctx.role,
                            generation,
                            inputs.clone(),
                        );
                        inputs
                    }
                }
            }
            _ => Arc::new(Inputs {
                actors: Vec::new(),
                consents: BTreeMap::new(),
            }),
        };
        let plan = Arc::new(Plan::build(
            ctx,
            &self.policy,
            btg,
            &inputs.actors,
            &inputs.consents,
            now,
        ));
        Ok(ctx.plan.get_or_init(|| plan).clone())
    }

    /// The references that name this user in a consent's `provision.actor`: their Practitioner,
    /// its PractitionerRoles and their Organizations, and the CareTeams they take part in.
    async fn actors_of(&self, ctx: &AccessContext) -> Result<Vec<String>, StoreError> {
        let practitioner: Option<String> = sqlx::query_scalar(
            "SELECT practitioner_id FROM users WHERE username = $1 AND role = $2",
        )
        .bind(&ctx.principal)
        .bind(ctx.role.as_str())
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        let Some(practitioner) = practitioner else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT 'PractitionerRole' AS t, r.id FROM search_ref r
              WHERE r.resource_type = 'PractitionerRole' AND r.param = 'practitioner'
                AND r.target_type = 'Practitioner' AND r.target_id = $1
             UNION
             SELECT o.target_type, o.target_id FROM search_ref r
               JOIN search_ref o ON o.resource_type = r.resource_type AND o.id = r.id
                AND o.param = 'organization'
              WHERE r.resource_type = 'PractitionerRole' AND r.param = 'practitioner'
                AND r.target_type = 'Practitioner' AND r.target_id = $1
             UNION
             SELECT 'CareTeam', c.id FROM search_ref c
              WHERE c.resource_type = 'CareTeam' AND c.param = 'participant'
                AND c.target_type = 'Practitioner' AND c.target_id = $1",
        )
        .bind(&practitioner)
        .fetch_all(&self.pool)
        .await?;
        let mut actors = vec![format!("Practitioner/{practitioner}")];
        for row in &rows {
            let t: String = row.try_get("t")?;
            let id: String = row.try_get("id")?;
            actors.push(format!("{t}/{id}"));
        }
        Ok(actors)
    }

    /// The privacy consents that may apply to these actors — those naming one of them at the top
    /// of their provision, or naming no actor (everyone) — by the compartment they are sealed in.
    async fn consents_naming(
        &self,
        actors: &[String],
    ) -> Result<BTreeMap<String, Vec<ConsentRule>>, StoreError> {
        let mut tx = self.begin_internal().await?;
        // Which consents, at which versions, now (kept by `policy_inputs` until a change is
        // heard): a revocation (a new version, or a deletion) takes effect at once. A version's
        // rule never changes, so it is decrypted and parsed once per process (`consent_rules`).
        let current: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.id, c.version_id FROM resources c
              WHERE c.resource_type = 'Consent' AND NOT c.deleted
                AND (EXISTS (SELECT 1 FROM search_ref a
                              WHERE a.resource_type = 'Consent' AND a.id = c.id AND a.param = 'actor'
                                AND a.target_type || '/' || a.target_id = ANY($1))
                     OR NOT EXISTS (SELECT 1 FROM search_ref a
                              WHERE a.resource_type = 'Consent' AND a.id = c.id
                                AND a.param = 'actor'))",
        )
        .bind(actors)
        .fetch_all(&mut *tx)
        .await?;
        let mut rules: Vec<Option<(String, ConsentRule)>> = Vec::with_capacity(current.len());
        let mut wanted = Vec::new();
        {
            let cache = self.consent_rules.lock().unwrap_or_else(|p| p.into_inner());
            for key in &current {
                match cache.get(key) {
                    Some(rule) => rules.push(rule.clone()),
                    None => wanted.push(("Consent".to_string(), key.0.clone())),
                }
            }
        }
        let loaded = self.load_rows(&mut tx, &wanted).await?;
        tx.commit().await?;
        let mut fresh = Vec::with_capacity(loaded.len());
        for stored in loaded {
            let doc: serde_json::Value =
                serde_json::from_slice(&stored.body).map_err(|_| StoreError::Integrity)?;
            // A stored consent the policy cannot read (written before the rules) decides nothing
            // for it; only a deny could be lost that way, and writes refuse such consents.
            let rule = match (&stored.patient, ConsentRule::parse(&doc)) {
                (Some(patient), Ok(Some(rule))) if rule.patient == *patient => {
                    Some((patient.clone(), rule))
                }
                _ => None,
            };
            fresh.push(((stored.id.clone(), stored.version_id), rule));
        }
        {
            let mut cache = self.consent_rules.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() + fresh.len() > MAX_CACHED_CONSENTS {
                cache.clear();
            }
            for (key, rule) in fresh {
                rules.push(rule.clone());
                cache.insert(key, rule);
            }
        }
        let mut out: BTreeMap<String, Vec<ConsentRule>> = BTreeMap::new();
        for (patient, rule) in rules.into_iter().flatten() {
            out.entry(patient).or_default().push(rule);
        }
        Ok(out)
    }

    /// The break-the-glass grant in force for this request, if it asserts `BTG`: the caller's open
    /// grant, or a new one when a reason comes with it. Refused for roles not configured for it.
    async fn break_glass(
        &self,
        ctx: &AccessContext,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        if ctx.purpose_of_use.as_deref() != Some("BTG") {
            return Ok(None);
        }
        if !self.policy.btg_roles.contains(&ctx.role) || ctx.patient.is_some() {
            return Err(Denied::BreakGlass(format!(
                "the {} role may not break the glass",
                ctx.role.as_str()
            ))
            .into());
        }
        let open: Option<i64> = sqlx::query_scalar(
            "UPDATE btg_grants SET accesses = accesses + 1
              WHERE id = (SELECT id FROM btg_grants WHERE principal = $1 AND expires_at > $2
                           ORDER BY expires_at DESC LIMIT 1)
          RETURNING id",
        )
        .bind(&ctx.principal)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if open.is_some() {
            return Ok(open);
        }
        let reason = ctx
            .btg_reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Denied::BreakGlass(
                    "break-the-glass needs a reason (X-Break-Glass-Reason); an earlier \
                     assertion may have expired"
                        .into(),
                )
            })?;
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let sealed = self.seal_secret("btg-reason", reason.as_bytes()).await?;
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO btg_grants (principal, role, reason_sealed, started_at, expires_at, accesses)
             VALUES ($1, $2, $3, $4, $5, 1) RETURNING id",
        )
        .bind(&ctx.principal)
        .bind(ctx.role.as_str())
        .bind(&sealed)
        .bind(now)
        .bind(now + self.policy.btg_duration)
        .fetch_one(&mut *tx)
        .await?;
        let record = AuditRecord {
            query: None,
            interaction: Interaction::BreakGlass,
            outcome: Outcome::Success,
            recorded: now,
            what: Some(format!("urn:carapace:break-glass:{id}")),
            patient: None,
        };
        self.audit_in(&mut tx, ctx, &record).await?;
        tx.commit().await?;
        tracing::warn!(grant = id, principal = %ctx.principal, "break-the-glass asserted");
        Ok(Some(id))
    }

    /// Break-the-glass grants, newest first: unreviewed ones only, or all.
    pub async fn btg_grants(&self, all: bool, limit: i64) -> Result<Vec<BtgGrant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, principal, role, reason_sealed, started_at, expires_at, accesses,
                    reviewed_at, reviewed_by, note_sealed
               FROM btg_grants WHERE $1 OR reviewed_at IS NULL
              ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(all)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let reason: Vec<u8> = row.try_get("reason_sealed")?;
            let note: Option<Vec<u8>> = row.try_get("note_sealed")?;
            let note = match note {
                Some(n) => Some(self.open_secret("btg-note", &n).await?),
                None => None,
            };
            out.push(BtgGrant {
                id: row.try_get("id")?,
                principal: row.try_get("principal")?,
                role: row.try_get("role")?,
                reason: String::from_utf8_lossy(&self.open_secret("btg-reason", &reason).await?)
                    .into_owned(),
                started_at: row.try_get("started_at")?,
                expires_at: row.try_get("expires_at")?,
                accesses: row.try_get("accesses")?,
                reviewed_at: row.try_get("reviewed_at")?,
                reviewed_by: row.try_get("reviewed_by")?,
                note: note.map(|n| String::from_utf8_lossy(&n).into_owned()),
            });
        }
        Ok(out)
    }

    /// Mark a grant reviewed with a note (audited). `false` if there is no such unreviewed grant.
    pub async fn review_btg(
        &self,
        ctx: &AccessContext,
        id: i64,
        note: &str,
    ) -> Result<bool, StoreError> {
        let note: String = note.trim().chars().take(MAX_REASON).collect();
        let sealed = self.seal_secret("btg-note", note.as_bytes()).await?;
        let now = self.clock.now();
        // Reviewing is an administrator's (refused to anyone else before anything is written).
        let mut tx = self.begin_admin(ctx).await?;
        let done = sqlx::query(
            "UPDATE btg_grants SET reviewed_at = $2, reviewed_by = $3, note_sealed = $4
              WHERE id = $1 AND reviewed_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(&ctx.principal)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let record = AuditRecord {
            query: None,
            interaction: Interaction::Admin,
            outcome: if done {
                Outcome::Success
            } else {
                Outcome::MinorFailure
            },
            recorded: now,
            what: Some(format!("urn:carapace:admin:btg-review:{id}")),
            patient: None,
        };
        self.audit_in(&mut tx, ctx, &record).await?;
        tx.commit().await?;
        Ok(done)
    }
}

impl Store {
    /// Decide a write of `resource` (`resource_type`) into key scope `scope`: scopes, role rules,
    /// and the compartment and type against the request's plan. A Consent must also be one the
    /// policy can enforce.
    pub(super) async fn check_write(
        &self,
        ctx: &AccessContext,
        interaction: Permission,
        resource_type: ResourceType,
        scope: &str,
        resource: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let plan = self.plan(ctx).await?;
        let label = crate::access::policy::write_label(ctx, Label::of(resource));
        // Every compartment the new version is in: its key scope's first, then the others.
        let id = resource
            .get("id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let mut compartments: Vec<Option<String>> =
            crate::fhir::reference::access_compartments(resource_type, id, resource)
                .into_iter()
                .map(Some)
                .collect();
        if compartments.is_empty() {
            compartments.push(super::patient_of(scope));
        }
        let decision = compartments
            .iter()
            .map(|c| {
                plan.decide(
                    ctx,
                    interaction,
                    resource_type.as_str(),
                    c.as_deref(),
                    label,
                )
            })
            .find(|d| !d.allowed)
            .unwrap_or(crate::access::policy::Decision {
                allowed: true,
                reason: Reason::InReach,
            });
        if !decision.allowed {
            return Err(match decision.reason {
                Reason::NoScope => ctx
                    .check(resource_type.as_str(), interaction)
                    .err()
                    .unwrap_or(Denied::OutsideCompartment),
                Reason::RoleForbids => Denied::ReadOnlyRole(ctx.role.as_str()),
                Reason::ConsentManagedByPatient => Denied::ConsentManagedByPatient,
                Reason::Labelled => Denied::LabelAboveCeiling,
                _ => Denied::OutsideCompartment,
            }
            .into());
        }
        if resource_type.as_str() == "AuditEvent" {
            return Err(StoreError::Unsupported(
                "AuditEvents are written by the server alone".into(),
            ));
        }
        if resource_type.as_str() == "Consent" {
            ConsentRule::parse(resource).map_err(|e| {
                StoreError::Invalid(vec![crate::fhir::validate::Issue::invalid(
                    "Consent.provision",
                    e.0,
                )])
            })?;
        }
        Ok(())
    }
}

impl Store {
    /// The gate for a stored resource a write would replace or delete, or a deleted one a read
    /// would report: may the caller see it? Its key scope's compartment, its other compartments
    /// and its label — of the version in `row`, or for a deletion of the last version with a body
    /// (a deletion keeps the label and compartments of the version it deleted). `row` has `version_id`,
    /// `sealed`, `dek_id`, `scope` and `wrapped`; `conn` reads under the caller's reach.
    pub(super) async fn stored_visible(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &str,
        row: &sqlx::postgres::PgRow,
    ) -> Result<bool, StoreError> {
        Ok(self
            .stored_label(conn, ctx, resource_type, id, row)
            .await?
            .is_some())
    }

    /// [`Store::stored_visible`], with the label of the version that decided: `None` when the
    /// caller may not see it.
    pub(super) async fn stored_label(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &str,
        row: &sqlx::postgres::PgRow,
    ) -> Result<Option<Label>, StoreError> {
        if !visible(ctx, resource_type, row)? {
            return Ok(None);
        }
        let Some(plan) = ctx.plan.get() else {
            return Ok(None);
        };
        let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
        let (version_id, sealed, key) = match sealed {
            Some(sealed) => (
                row.try_get::<i64, _>("version_id")?,
                sealed,
                super::DekRow::from_row(row)?,
            ),
            None => {
                let last = sqlx::query(
                    "SELECT v.version_id, v.sealed, k.id AS dek_id, k.scope, k.wrapped
                       FROM resource_versions v JOIN data_keys k ON k.id = v.dek_id
                      WHERE v.resource_type = $1 AND v.id = $2 AND v.sealed IS NOT NULL
                        AND v.version_id < $3
                      ORDER BY v.version_id DESC LIMIT 1",
                )
                .bind(resource_type.as_str())
                .bind(id)
                .bind(row.try_get::<i64, _>("version_id")?)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(last) = last else {
                    return Ok(Some(Label::Normal));
                };
                (
                    last.try_get("version_id")?,
                    last.try_get("sealed")?,
                    super::DekRow::from_row(&last)?,
                )
            }
        };
        let body = self
            .open_body(resource_type, id, version_id, &key, &sealed)
            .await?;
        Ok(body_visible(plan, resource_type, id, &body).then(|| Label::of_body(&body)))
    }
}

impl Store {
    /// May the caller see resource `id` as it is now (its current version, or for a deleted one
    /// the version it deleted)? Every older version a caller is handed must pass this too: a label
    /// raised later, or a move to another patient's record, hides the earlier versions.
    pub(super) async fn current_visible(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        resource_type: ResourceType,
        id: &str,
    ) -> Result<bool, StoreError> {
        let head = super::head_row(&mut *conn, resource_type, id, false).await?;
        match head {
            Some(row) => {
                self.stored_visible(conn, ctx, resource_type, id, &row)
                    .await
            }
            None => Ok(false),
        }
    }
}

/// The part of the gate that needs a version's content: its label, and every patient compartment
/// it is in besides its key scope's (a Group listing A and B is hidden from whoever may not see
/// B). Every path that hands out or replaces a stored body asks this after opening it.
pub(super) fn body_visible(
    plan: &Plan,
    resource_type: ResourceType,
    id: &str,
    body: &[u8],
) -> bool {
    if !plan.label_visible_body(body) {
        return false;
    }
    if plan.sees_all_compartments() || !may_name_other_patients(resource_type, body) {
        return true;
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    crate::fhir::reference::access_compartments(resource_type, id, &doc)
        .iter()
        .all(|c| plan.visible(Some(c), resource_type.as_str()))
}

/// The patient records a version handed out is part of, for its AuditEvents: its key scope's
/// patient (`primary`) and every other compartment it is in; `[None]` for data outside any.
pub(super) fn compartments_of(
    resource_type: ResourceType,
    id: &str,
    primary: Option<&str>,
    body: &[u8],
) -> Vec<Option<String>> {
    let mut out = vec![primary.map(str::to_string)];
    if primary.is_some() && may_name_other_patients(resource_type, body) {
        if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
            for c in crate::fhir::reference::access_compartments(resource_type, id, &doc) {
                if !out.iter().any(|o| o.as_deref() == Some(c.as_str())) {
                    out.push(Some(c));
                }
            }
        }
    }
    out
}

/// A body with fewer than two `Patient/` in it names at most the patient of its key scope, so
/// the compartment test needs no parse (the common case of every read).
fn may_name_other_patients(resource_type: ResourceType, body: &[u8]) -> bool {
    if resource_type.as_str() == "Patient" {
        return false;
    }
    body.windows(8)
        .filter(|w| *w == b"Patient/")
        .nth(1)
        .is_some()
}

/// Is the stored version in `row` (with its key `scope`) one the request's plan lets the caller
/// see? The plan must have been made ([`Store::plan`]) by the call's entry point; without one,
/// nothing is visible.
pub(super) fn visible(
    ctx: &AccessContext,
    resource_type: ResourceType,
    row: &sqlx::postgres::PgRow,
) -> Result<bool, StoreError> {
    let scope: Option<String> = row.try_get("scope")?;
    let Some(plan) = ctx.plan.get() else {
        debug_assert!(false, "a store entry point did not make the request's plan");
        return Ok(false);
    };
    let compartment = scope.as_deref().and_then(super::patient_of);
    Ok(plan.visible(compartment.as_deref(), resource_type.as_str()))
}

/// The plan as a SQL condition on a row whose key scope is `scope` (`Patient/<id>`, `type/<T>` or
/// NULL) and type `rt`, binding its lists from `$first` on (six parameters; see
/// [`bind_reach`]).
pub(super) fn reach_condition(scope: &str, rt: &str, first: usize) -> String {
    let [others, default, decided, open, open_typed, closed_typed] =
        std::array::from_fn::<usize, 6, _>(|i| first + i);
    format!(
        "(CASE WHEN {scope} IS NULL OR {scope} NOT LIKE 'Patient/%' THEN ${others}::bool
               WHEN {scope} = ANY(${decided}::text[])
               THEN (({scope} = ANY(${open}::text[])
                      AND NOT ({scope} || '|' || {rt}) = ANY(${closed_typed}::text[]))
                     OR ({scope} || '|' || {rt}) = ANY(${open_typed}::text[]))
               ELSE ${default}::bool END)"
    )
}

/// Bind the plan's lists for [`reach_condition`], in its order.
pub(super) fn bind_reach<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    reach: &'q SqlReach,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(reach.others)
        .bind(reach.default)
        .bind(&reach.decided)
        .bind(&reach.open)
        .bind(&reach.open_typed)
        .bind(&reach.closed_typed)
}

impl Store {
    /// A transaction whose row-level security lets through what the request's plan does (the
    /// settings end with it).
    pub(super) async fn begin_for(
        &self,
        ctx: &AccessContext,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let plan = self.plan(ctx).await?;
        self.begin_with(&plan.row_reach()).await
    }

    /// A transaction that sees every row: for the store's own reads (the policy's consents,
    /// re-indexing), never for what a caller asked.
    pub(super) async fn begin_internal(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.begin_with(&RowReach::everything()).await
    }

    /// A transaction for a search: on the replica, when there is one and it has replayed the
    /// primary's WAL as far as the primary had flushed it when the search began — so a client
    /// finds what it wrote before, whichever node served the write — else on the primary. The
    /// boolean says which.
    pub(super) async fn begin_search(
        &self,
        reach: &RowReach,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, bool), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some((replica, wait)) = &self.replica {
            match self.caught_up_replica(replica, *wait, reach).await {
                Ok(Some(tx)) => {
                    self.replica_searches[0].fetch_add(1, Relaxed);
                    return Ok((tx, true));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "the replica failed; searching the primary"),
            }
            self.replica_searches[1].fetch_add(1, Relaxed);
        }
        Ok((self.begin_with(reach).await?, false))
    }

    /// A transaction on `replica` once it has replayed what the primary has flushed now, or
    /// `None` if it has not within `wait`.
    async fn caught_up_replica(
        &self,
        replica: &crate::db::Db,
        wait: std::time::Duration,
        reach: &RowReach,
    ) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, sqlx::Error> {
        // Every write acknowledged before this search began is at or before this position
        // (the insert position: also with `synchronous_commit = off`, where a commit is
        // acknowledged before it is flushed).
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&self.pool)
            .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut tx = crate::db::begin_with_reach(replica, reach).await?;
            // NULL (not a standby at all) counts as behind.
            let replayed: Option<bool> =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                    .bind(&target)
                    .fetch_one(&mut *tx)
                    .await?;
            if replayed == Some(true) {
                return Ok(Some(tx));
            }
            drop(tx);
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// `BEGIN` with the row-level-security settings of `reach` ([`crate::db::begin_with_reach`]).
    pub(super) async fn begin_with(
        &self,
        reach: &RowReach,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(crate::db::begin_with_reach(&self.pool, reach).await?)
    }
}
