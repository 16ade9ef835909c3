//! EHR launch contexts (SMART `launch` scope): an administrator makes a short-lived, single-use,
//! opaque launch id bound to a patient and optionally an encounter; the app sends it as
//! `/auth/authorize?launch=…`, and the token response carries that context. Only the id's SHA-256
//! is stored (migration 0023). Who may then use the patient is still the gate's decision (the
//! signed-in practitioner must be able to read them, `authorize::decide`).

use crate::access::{AccessContext, Role};
use crate::crypto::sha256;
use crate::fhir::ResourceId;
use crate::store::{Store, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::Duration;
use rand::RngCore;
use sqlx::Row;

/// A launch id is redeemed within this long, once.
pub const LAUNCH_SECONDS: i64 = 300;

/// The context a launch id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchContext {
    pub patient: String,
    pub encounter: Option<String>,
}

/// Make a launch id for `patient` (and `encounter`): administrators only; audited
/// (`launch-create`, with the patient), refusals too.
pub async fn create(
    store: &Store,
    ctx: &AccessContext,
    patient: &str,
    encounter: Option<&str>,
) -> Result<String, StoreError> {
    let made = async {
        if ctx.role != Role::Admin {
            return Err(StoreError::Denied(
                crate::access::Denied::AdministratorsOnly,
            ));
        }
        let bad = |what: &str| StoreError::BadRequest(format!("{what} is not a resource id"));
        ResourceId::parse(patient).map_err(|_| bad("the patient"))?;
        if let Some(e) = encounter {
            ResourceId::parse(e).map_err(|_| bad("the encounter"))?;
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let launch = B64URL.encode(raw);
        let now = store.now();
        sqlx::query("DELETE FROM launch_contexts WHERE expires_at < $1")
            .bind(now)
            .execute(store.pool())
            .await?;
        sqlx::query(
            "INSERT INTO launch_contexts (launch_hash, patient, encounter, created_by, created_at,
                                          expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(sha256(launch.as_bytes()))
        .bind(patient)
        .bind(encounter)
        .bind(&ctx.principal)
        .bind(now)
        .bind(now + Duration::seconds(LAUNCH_SECONDS))
        .execute(store.pool())
        .await?;
        Ok(launch)
    }
    .await;
    let what = match ResourceId::parse(patient) {
        Ok(id) => format!("launch-create:Patient/{}", id.as_str()),
        Err(_) => "launch-create".to_string(),
    };
    store.record_admin(ctx, &what, made.is_ok()).await?;
    made
}

/// Redeem a launch id: its context, once, while it lasts; `None` when unknown, used or expired.
pub async fn redeem(store: &Store, launch: &str) -> Result<Option<LaunchContext>, StoreError> {
    if launch.is_empty() || launch.len() > 128 {
        return Ok(None);
    }
    let row = sqlx::query(
        "UPDATE launch_contexts SET used_at = $2
          WHERE launch_hash = $1 AND used_at IS NULL AND expires_at > $2
          RETURNING patient, encounter",
    )
    .bind(sha256(launch.as_bytes()))
    .bind(store.now())
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| {
        Ok(LaunchContext {
            patient: r.try_get("patient")?,
            encounter: r.try_get("encounter")?,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| StoreError::from(e))
}
