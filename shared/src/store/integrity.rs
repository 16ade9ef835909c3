//! Referential integrity (`CARAPACE_REFERENTIAL_INTEGRITY`): a write's references to resources of
//! this server — relative `Type/id[/_history/vid]`, or absolute under this server's base — must
//! name resources that exist and are not deleted (and a version that exists), checked inside the
//! write's database transaction after its rows are written, so that a transaction's entries may
//! refer to each other and not to what it deletes.
//!
//! The check goes through the access gate and tells the caller nothing it could not read: a
//! reference to a resource the caller may not see passes, whether or not it exists. So a target
//! is refused only when the caller would see it if it were there: a row in reach (the
//! transaction's row-level security) that is deleted and that the gate shows, or no row at all
//! where the caller's reach covers every place the resource could be (its own compartment for a
//! Patient, outside every compartment for a type no patient compartment holds, everywhere for a
//! type a patient compartment may hold). A caller whose reach some compartment narrows cannot
//! tell an Observation id that is missing from one in another record, so for them such
//! references pass unchecked.

use super::{head_row, Store, StoreError};
use crate::access::policy::Label;
use crate::access::{AccessContext, Permission};
use crate::fhir::reference::{resource_references, Reference};
use crate::fhir::validate::{Issue, IssueType};
use crate::fhir::ResourceType;
use serde_json::Value;
use sqlx::Row;
use std::collections::HashMap;

/// Whether writes are checked, and the base URL absolute references to this server start with.
#[derive(Debug, Default)]
pub(super) struct Integrity {
    pub on: bool,
    /// The public FHIR base (no trailing slash), known once the server listens.
    pub base: std::sync::OnceLock<String>,
}

/// A reference a write makes to a resource of this server, checked before the commit.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    /// The transaction entry it is in (0 for a single write).
    pub entry: usize,
    /// FHIRPath of the `Reference` element.
    pub path: String,
    pub resource_type: ResourceType,
    pub id: String,
    /// The version named by `/_history/vid`; a version id that is no number is 0, which no
    /// version of this server has.
    pub version: Option<i64>,
}

/// Up to this many distinct targets are probed one by one; more go in one batched statement.
const FEW_TARGETS: usize = 4;

/// Why a target is refused.
enum Broken {
    Missing,
    Deleted,
    NoSuchVersion,
}

impl Store {
    /// The store with referential integrity on or off (on by default).
    pub fn with_referential_integrity(mut self, on: bool) -> Store {
        self.integrity.on = on;
        self
    }

    /// The public FHIR base URL this server answers at: absolute references under it are this
    /// server's references too. Set once (later calls are ignored).
    pub fn serve_at(&self, base: &str) {
        let _ = self
            .integrity
            .base
            .set(base.trim_end_matches('/').to_string());
    }

    /// The references of `resource` the integrity check looks at; none when it is off.
    pub(super) fn references_to_check(&self, entry: usize, resource: &Value) -> Vec<Wanted> {
        if !self.integrity.on {
            return Vec::new();
        }
        let ours = self.integrity.base.get();
        resource_references(resource)
            .into_iter()
            .filter_map(|found| match found.reference {
                Reference::Resource {
                    resource_type,
                    id,
                    version,
                    base,
                } => {
                    let local = match base {
                        None => true,
                        Some(b) => ours.is_some_and(|o| b.trim_end_matches('/') == o),
                    };
                    local.then(|| Wanted {
                        entry,
                        path: found.path,
                        resource_type,
                        id: id.to_string(),
                        version: version.map(|v| v.parse().unwrap_or(0)),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Refuse a single write whose references name what is not there (see the module doc).
    pub(super) async fn check_references(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        wanted: &[Wanted],
    ) -> Result<(), StoreError> {
        let broken = self.unresolved(conn, ctx, wanted).await?;
        if broken.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Unresolved(
                broken.into_iter().map(|(_, i)| i).collect(),
            ))
        }
    }

    /// The references among `wanted` that the caller may be told are broken, each as its entry
    /// and an issue, in the order given. One query for all of them; a second look (the gate on
    /// the stored version) only for targets that are deleted or lack the version named.
    pub(super) async fn unresolved(
        &self,
        conn: &mut sqlx::PgConnection,
        ctx: &AccessContext,
        wanted: &[Wanted],
    ) -> Result<Vec<(usize, Issue)>, StoreError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // Each target once, however often it is named.
        let mut unique: HashMap<(ResourceType, &str, Option<i64>), usize> = HashMap::new();
        let mut targets: Vec<(ResourceType, &str, Option<i64>)> = Vec::new();
        let slots: Vec<usize> = wanted
            .iter()
            .map(|w| {
                let key = (w.resource_type, w.id.as_str(), w.version);
                *unique.entry(key).or_insert_with(|| {
                    targets.push(key);
                    targets.len() - 1
                })
            })
            .collect();
        // (slot, deleted, has the version named) of every target that has a row in reach.
        let mut found: Vec<(usize, bool, bool)> = Vec::with_capacity(targets.len());
        if targets.len() <= FEW_TARGETS {
            // A write names few resources: one primary-key probe each, by a statement whose
            // plan does not depend on how many there are.
            for (slot, &(rt, id, version)) in targets.iter().enumerate() {
                let row = sqlx::query(
                    "SELECT h.deleted,
                            ($3::int8 IS NULL OR EXISTS (
                                SELECT 1 FROM resource_versions v
                                 WHERE v.resource_type = $1 AND v.id = $2 AND v.version_id = $3
                                   AND v.sealed IS NOT NULL)) AS has_version
                       FROM resources h WHERE h.resource_type = $1 AND h.id = $2",
                )
                .bind(rt.as_str())
                .bind(id)
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = row {
                    found.push((slot, row.try_get("deleted")?, row.try_get("has_version")?));
                }
            }
        } else {
            let types: Vec<&str> = targets.iter().map(|t| t.0.as_str()).collect();
            let ids: Vec<&str> = targets.iter().map(|t| t.1).collect();
            let versions: Vec<Option<i64>> = targets.iter().map(|t| t.2).collect();
            let rows = sqlx::query(
                "SELECT u.n, h.deleted,
                        (u.v IS NULL OR EXISTS (
                            SELECT 1 FROM resource_versions v
                             WHERE v.resource_type = u.t AND v.id = u.i AND v.version_id = u.v
                               AND v.sealed IS NOT NULL)) AS has_version
                   FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY AS u(t, i, v, n)
                  -- One primary-key probe per target, not a hash of the whole table.
                  CROSS JOIN LATERAL (
                        SELECT r.deleted FROM resources r
                         WHERE r.resource_type = u.t AND r.id = u.i
                         LIMIT 1) h",
            )
            .bind(&types)
            .bind(&ids)
            .bind(&versions)
            .fetch_all(&mut *conn)
            .await?;
            for row in &rows {
                let n: i64 = row.try_get("n")?;
                let slot = usize::try_from(n - 1).map_err(|_| StoreError::Integrity)?;
                found.push((slot, row.try_get("deleted")?, row.try_get("has_version")?));
            }
        }
        // `None`: the target may be named; otherwise why not. No row in reach: missing, when
        // the caller would have seen it there.
        let mut verdicts: Vec<Option<Broken>> = targets
            .iter()
            .map(|&(rt, id, _)| would_see(ctx, rt, id).then_some(Broken::Missing))
            .collect();
        for (slot, deleted, has_version) in found {
            let Some(&(rt, id, version)) = targets.get(slot) else {
                return Err(StoreError::Integrity);
            };
            let broken = match version {
                Some(_) if !has_version => Some(Broken::NoSuchVersion),
                Some(_) => None,
                None if deleted => Some(Broken::Deleted),
                None => None,
            };
            // What the gate hides passes, as if it were there.
            let shown = match broken {
                None => false,
                Some(_) => match head_row(&mut *conn, rt, id, false).await? {
                    Some(head) => self.stored_visible(conn, ctx, rt, id, &head).await?,
                    None => false,
                },
            };
            verdicts[slot] = if shown { broken } else { None };
        }
        Ok(wanted
            .iter()
            .zip(slots)
            .filter_map(|(w, slot)| {
                let why = verdicts.get(slot)?.as_ref()?;
                let t = w.resource_type;
                let message = match why {
                    Broken::Missing => {
                        format!("refers to a {t} that does not exist on this server")
                    }
                    Broken::Deleted => format!("refers to a {t} that was deleted"),
                    Broken::NoSuchVersion => {
                        format!("refers to a version of a {t} that does not exist")
                    }
                };
                Some((
                    w.entry,
                    Issue::error(IssueType::NotFound, w.path.clone(), message),
                ))
            })
            .collect())
    }
}

/// Would the caller see a resource of type `rt` with this id wherever it could be stored? Only
/// then may a missing one be reported missing.
fn would_see(ctx: &AccessContext, rt: ResourceType, id: &str) -> bool {
    let Some(plan) = ctx.plan.get() else {
        return false;
    };
    let may = |compartment: Option<&str>| {
        plan.decide(
            ctx,
            Permission::Read,
            rt.as_str(),
            compartment,
            Label::Normal,
        )
        .allowed
    };
    if rt.as_str() == "Patient" {
        may(Some(&format!("Patient/{id}")))
    } else if crate::fhir::schema::patient_compartment_paths(rt.as_str()).is_empty() {
        may(None)
    } else {
        may(None) && plan.sees_all_compartments()
    }
}
