//! The last step before data leaves the store: for an `analytics` caller, every resource is
//! de-identified ([`crate::deid`]) — after the gate chose it and after its audit events named the
//! real patients, before any front sees it. Every interaction that hands out resources returns
//! through [`Store::audited`] (search, `$everything`, `$summary`, history, AuditEvents, writes) or
//! [`Store::read`]/[`Store::vread`], all of which call [`Outgoing::release`] (the store's own
//! lookups — a conditional write's match — use the unreleased `read_stored`); a Bulk export's rows pass
//! [`Store::releaser`] in `store/export.rs`. A new result type cannot be returned through
//! `audited` without saying what release does to it.

use super::history::{HistoryEntry, HistoryPage};
use super::{EverythingPage, Store, StoreError, StoredResource};
use crate::access::{AccessContext, Role};
use crate::deid::{Deidentifier, Rules};
use std::sync::Arc;

/// Key scope of the data key pseudonyms and date shifts are keyed by.
const DEID_SCOPE: &str = "deid/pseudonym";

/// The de-identifier and the year ages are counted to, for one answer.
pub(crate) struct Release<'a> {
    pub deid: &'a Deidentifier,
    pub this_year: i32,
}

/// What a result becomes on its way out to a caller who sees de-identified data only.
pub(crate) trait Outgoing: Sized {
    fn release(self, deid: &Release<'_>) -> Self;
}

impl Store {
    /// The de-identifier for `ctx`, if its data leaves de-identified (analytics callers).
    pub(crate) async fn releaser(
        &self,
        ctx: &AccessContext,
    ) -> Result<Option<Arc<Deidentifier>>, StoreError> {
        if ctx.role != Role::Analytics {
            return Ok(None);
        }
        let rules = self.deid_rules.clone().ok_or(StoreError::Integrity)?;
        let deid = self
            .deid
            .get_or_try_init(|| async {
                let (_, key) = self.dek_for_scope(DEID_SCOPE).await?;
                let key =
                    crate::crypto::Dek::from_bytes(key.expose()).ok_or(StoreError::Integrity)?;
                Ok::<_, StoreError>(Arc::new(Deidentifier::new((*rules).clone(), key)))
            })
            .await?;
        Ok(Some(deid.clone()))
    }

    /// `value` as `ctx` may receive it.
    pub(crate) async fn release<T: Outgoing>(
        &self,
        ctx: &AccessContext,
        value: T,
    ) -> Result<T, StoreError> {
        Ok(match self.releaser(ctx).await? {
            Some(deid) => value.release(&Release {
                deid: &deid,
                this_year: chrono::Datelike::year(&self.clock.now()),
            }),
            None => value,
        })
    }

    /// The de-identification rules in force (`CARAPACE_DEID_RULES`, or Safe Harbor).
    pub fn deid_rules(&self) -> Option<&Rules> {
        self.deid_rules.as_deref()
    }

    /// Record the rules in force: a set not seen before (its digest) is an administrative event
    /// in the audit trail, so a change of rules is on record with when it took effect.
    pub async fn record_deid_rules(&self, operator: &AccessContext) -> Result<bool, StoreError> {
        let Some(rules) = self.deid_rules.clone() else {
            return Ok(false);
        };
        // The rules in force are those last recorded: a set different from them (new, or one
        // run before and left) is recorded again, with the time it took effect.
        let latest: Option<String> = sqlx::query_scalar(
            "SELECT digest FROM deid_rules_seen ORDER BY first_seen DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let new = latest.as_deref() != Some(rules.digest.as_str());
        if new {
            sqlx::query(
                "INSERT INTO deid_rules_seen (digest, name, first_seen) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO UPDATE SET first_seen = EXCLUDED.first_seen",
            )
            .bind(&rules.digest)
            .bind(&rules.name)
            .bind(self.clock.now())
            .execute(&self.pool)
            .await?;
        }
        if new {
            self.record_admin(operator, &format!("deid-rules:{}", rules.digest), true)
                .await?;
        }
        Ok(new)
    }
}

/// `_since` for an analytics caller: whole years only (a finer one, moved by halves, would find
/// when a record was written — the date of care — to the second).
pub(super) fn since_allowed(
    ctx: &AccessContext,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), StoreError> {
    use chrono::{Datelike, Timelike};
    let whole_year = |t: chrono::DateTime<chrono::Utc>| {
        t.month() == 1 && t.day() == 1 && t.num_seconds_from_midnight() == 0 && t.nanosecond() == 0
    };
    match since {
        Some(t) if ctx.role == Role::Analytics && !whole_year(t) => {
            Err(crate::access::Denied::Reidentifying("_since finer than a year".into()).into())
        }
        _ => Ok(()),
    }
}

/// One resource: its body de-identified, its id a pseudonym (so links and `fullUrl`s name the
/// pseudonym), its time cut to the year (`Last-Modified`).
pub(crate) fn release_resource(deid: &Release<'_>, mut r: StoredResource) -> StoredResource {
    let patient = r
        .patient
        .as_deref()
        .and_then(|p| p.strip_prefix("Patient/"))
        .map(str::to_string);
    // The id the rules give the body (a pseudonym under Safe Harbor) is the one links and
    // `fullUrl`s name; a body without one keeps no id the rules did not give.
    let (body, id) = match serde_json::from_slice::<serde_json::Value>(&r.body) {
        Ok(mut doc) => {
            deid.deid
                .apply(&mut doc, patient.as_deref(), deid.this_year);
            let id = doc["id"].as_str().map(str::to_string);
            (serde_json::to_vec(&doc).unwrap_or_default(), id)
        }
        // A body that is not JSON is not handed out at all.
        Err(_) => (b"{}".to_vec(), None),
    };
    r.body = body;
    r.id = id.unwrap_or_else(|| deid.deid.pseudonym(r.resource_type.as_str(), &r.id));
    r.last_updated = year_of(r.last_updated);
    r.patient = None;
    r
}

fn year_of(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike, TimeZone};
    chrono::Utc
        .with_ymd_and_hms(t.year(), 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(t)
}

impl Outgoing for StoredResource {
    fn release(self, deid: &Release<'_>) -> Self {
        release_resource(deid, self)
    }
}

impl Outgoing for super::SearchResult {
    fn release(mut self, deid: &Release<'_>) -> Self {
        self.matches = self
            .matches
            .into_iter()
            .map(|r| release_resource(deid, r))
            .collect();
        self.included = self
            .included
            .into_iter()
            .map(|r| release_resource(deid, r))
            .collect();
        self
    }
}

impl Outgoing for EverythingPage {
    fn release(mut self, deid: &Release<'_>) -> Self {
        self.entries = self
            .entries
            .into_iter()
            .map(|r| release_resource(deid, r))
            .collect();
        self
    }
}

impl Outgoing for HistoryPage {
    fn release(mut self, deid: &Release<'_>) -> Self {
        self.entries = self
            .entries
            .into_iter()
            .map(|e| release_entry(deid, e))
            .collect();
        self
    }
}

fn release_entry(deid: &Release<'_>, mut e: HistoryEntry) -> HistoryEntry {
    match e.body.take() {
        Some(body) => {
            let r = release_resource(
                deid,
                StoredResource {
                    resource_type: e.resource_type,
                    id: e.id.clone(),
                    version_id: e.version_id,
                    last_updated: e.last_updated,
                    body,
                    patient: None,
                },
            );
            e.body = Some(r.body);
            e.id = r.id;
        }
        // A deletion names the resource as its versions' bodies would.
        None => e.id = deid.deid.pseudonym(e.resource_type.as_str(), &e.id),
    }
    e.last_updated = year_of(e.last_updated);
    e
}

// Writes: analytics callers never write (the policy refuses), but what a write hands back — a
// conditional create's existing match above all — is released like a read.
impl Outgoing for super::Created {
    fn release(self, deid: &Release<'_>) -> Self {
        match self {
            super::Created::New(r) => super::Created::New(release_resource(deid, r)),
            super::Created::Existing(r) => super::Created::Existing(release_resource(deid, r)),
        }
    }
}
impl Outgoing for super::Updated {
    fn release(mut self, deid: &Release<'_>) -> Self {
        self.resource = release_resource(deid, self.resource);
        self
    }
}
// A deletion carries a version number; AuditEvents are not for analytics callers (the policy
// refuses) and hold references and codes only.
impl Outgoing for super::Deleted {
    fn release(self, _: &Release<'_>) -> Self {
        self
    }
}
impl Outgoing for super::AuditPage {
    fn release(self, _: &Release<'_>) -> Self {
        self
    }
}
