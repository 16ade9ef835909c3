//! Data keys: the key of a scope (made and wrapped by the key provider on first use, cached
//! unwrapped), opening a sealed resource body under its key and row binding, sealed secrets of the
//! identity layer, and re-wrapping every key under the provider's newest key version.

use super::{Store, StoreError};
use crate::access::{AccessContext, Denied};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::crypto::keys::{KeyError, PatientKek};
use crate::crypto::{self, Binding, Dek};
use crate::fhir::ResourceType;
use sqlx::Row;
use std::sync::Arc;
use std::time::Instant;

/// Key scope of the data key that seals identity secrets (TOTP seeds).
const IDENTITY_SCOPE: &str = "identity";

/// Key scope of the data key that names patients' key-encryption keys.
const KEK_NAMES_SCOPE: &str = "keys/kek-names";

fn secret_aad(purpose: &str) -> Vec<u8> {
    format!("carapace/secret/v1/{purpose}").into_bytes()
}

pub(super) struct DekRow {
    pub(super) id: i64,
    pub(super) scope: String,
    pub(super) wrapped: String,
}

impl Store {
    /// Rewrap every stored data key under the key provider's newest key version, in batches, while
    /// the server keeps serving: the DEKs themselves do not change, so cached keys stay valid.
    /// Returns how many keys were rewrapped.
    pub async fn rewrap_all(
        &self,
        ctx: &AccessContext,
        progress: impl FnMut(u64, u64),
    ) -> Result<u64, StoreError> {
        // An administrator's operation (refused, and audited as refused, to anyone else).
        if ctx.role != crate::access::Role::Admin {
            self.record_admin(ctx, "key-rotation", false).await?;
            return Err(Denied::AdministratorsOnly.into());
        }
        // Audited when it starts (it may run long, or be stopped) and when it fails, besides the
        // completion event.
        self.record_admin(ctx, "key-rotation-start", true).await?;
        let result = async {
        let mut progress = progress;
        let started = self.clock.now();
        let target: i32 = self.keys.rotate().await?;
        // Main-key DEKs wrapped under an older version; every patient's DEK (its KEK is rotated
        // first, or made when the DEK still had none).
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM data_keys
              WHERE (wrapped NOT LIKE 'kek:%' AND scope NOT LIKE 'Patient/%' AND key_version < $1)
                 OR scope LIKE 'Patient/%'",
        )
        .bind(target)
        .fetch_one(&self.pool)
        .await?;
        let total = u64::try_from(total).unwrap_or(0);
        let mut done = 0u64;
        let mut after = 0i64;
        loop {
            let batch = sqlx::query(
                "SELECT id, scope, wrapped FROM data_keys
                  WHERE ((wrapped NOT LIKE 'kek:%' AND scope NOT LIKE 'Patient/%' AND key_version < $1)
                         OR (scope LIKE 'Patient/%' AND (rewrapped_at IS NULL OR rewrapped_at < $3)))
                    AND id > $2 ORDER BY id LIMIT 100",
            )
            .bind(target)
            .bind(after)
            .bind(started)
            .fetch_all(&self.pool)
            .await?;
            if batch.is_empty() {
                break;
            }
            for row in &batch {
                let key = DekRow::from_parts(row)?;
                let own = self.kek_for(&key.scope).await?;
                let (rewrapped, adopted) = match (PatientKek::of(&key.wrapped), own) {
                    // Only the scope's own KEK is rotated: a row naming another is refused.
                    (Some(named), Some(own)) if named == own => {
                        self.keys.rotate_kek(&own).await?;
                        (self.keys.rewrap(&key.wrapped).await?, false)
                    }
                    (Some(_), _) => {
                        tracing::error!(scope_id = key.id, "a data key row names another scope's KEK");
                        return Err(StoreError::Integrity);
                    }
                    (None, Some(own)) => (self.keys.adopt(&key.wrapped, &own).await?, true),
                    (None, None) => (self.keys.rewrap(&key.wrapped).await?, false),
                };
                self.replace_wrapped(&key, &rewrapped, adopted).await?;
                after = key.id;
                done += 1;
                progress(done, total);
            }
        }
        let mut tx = self.pool.begin().await?;
        self.audit_in(
            &mut tx,
            ctx,
            &AuditRecord {
                query: None,
                interaction: Interaction::Update,
                outcome: Outcome::Success,
                recorded: self.clock.now(),
                what: Some(format!("urn:carapace:key-rotation:v{target}")),
                patient: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(done)
    }
    .await;
        if result.is_err() {
            self.record_admin(ctx, "key-rotation", false).await?;
        }
        result
    }

    /// Store a key's new wrapped form in place of the one read. Only what was read is replaced: a
    /// concurrent rewrap (or erasure) of the same row wins. (A KEK made meanwhile is the scope's
    /// own, whoever made it: names are derived from the scope, so nothing is left over.)
    /// `adopted` records when a patient's key first got its own KEK.
    async fn replace_wrapped(
        &self,
        key: &DekRow,
        rewrapped: &crate::crypto::keys::WrappedDek,
        adopted: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE data_keys SET wrapped = $1, key_version = $2, rewrapped_at = $3,
                    kek_since = CASE WHEN $6 THEN $3 ELSE kek_since END
              WHERE id = $4 AND wrapped = $5",
        )
        .bind(&rewrapped.wrapped)
        .bind(rewrapped.key_version)
        .bind(self.clock.now())
        .bind(key.id)
        .bind(&key.wrapped)
        .bind(adopted)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The name of a patient scope's key-encryption key: HMAC-SHA-256 of the scope under the data
    /// key `keys/kek-names` (wrapped by the main key, cached like any DEK). Derived, never read
    /// from a row, so a row copied from another patient cannot make the store use or destroy that
    /// patient's KEK; `None` for a scope that is not a patient's.
    pub(super) async fn kek_for(&self, scope: &str) -> Result<Option<PatientKek>, StoreError> {
        use hmac::Mac;
        if !scope.starts_with("Patient/") {
            return Ok(None);
        }
        let (_, key) = self.dek_for_scope_under(KEK_NAMES_SCOPE, None).await?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose())
            .map_err(|_| StoreError::Integrity)?;
        mac.update(b"carapace/patient-kek/v1/");
        mac.update(scope.as_bytes());
        Ok(Some(PatientKek::derived(&mac.finalize().into_bytes())))
    }

    /// Give every patient's data key written before per-patient KEKs one of its own (run by the
    /// server in the background at start-up; `keys rotate` does it too). Until then erasing that
    /// patient cannot reach backups, which hold the key wrapped under the main key. Returns how
    /// many keys moved.
    pub async fn adopt_patient_keks(&self) -> Result<u64, StoreError> {
        let mut moved = 0u64;
        let mut after = 0i64;
        loop {
            let batch = sqlx::query(
                "SELECT id, scope, wrapped FROM data_keys
                  WHERE scope LIKE 'Patient/%' AND wrapped NOT LIKE 'kek:%' AND id > $1
                  ORDER BY id LIMIT 100",
            )
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            for row in &batch {
                let key = DekRow::from_parts(row)?;
                let kek = self
                    .kek_for(&key.scope)
                    .await?
                    .ok_or(StoreError::Integrity)?;
                let adopted = self.keys.adopt(&key.wrapped, &kek).await?;
                self.replace_wrapped(&key, &adopted, true).await?;
                after = key.id;
                moved += 1;
            }
        }
    }

    /// Seal a small server secret (a TOTP seed) under the identity data key, bound to `purpose`.
    /// The result carries the data key's id, so it can be opened after key rotation.
    pub async fn seal_secret(
        &self,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let (dek_id, dek) = self.dek_for_scope(IDENTITY_SCOPE).await?;
        let mut out = dek_id.to_be_bytes().to_vec();
        out.extend(crypto::seal_with_aad(&dek, &secret_aad(purpose), plaintext));
        Ok(out)
    }

    pub async fn open_secret(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (id, body) = sealed.split_at_checked(8).ok_or(StoreError::Integrity)?;
        let dek_id = i64::from_be_bytes(id.try_into().map_err(|_| StoreError::Integrity)?);
        let row = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE id = $1")
            .bind(dek_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::Integrity)?;
        let key = DekRow::from_parts(&row)?;
        let dek = self.dek_by_id(&key).await?;
        crypto::open_with_aad(&dek, &secret_aad(purpose), body).map_err(|_| StoreError::Integrity)
    }

    /// Stored data keys by key version, for status displays.
    pub async fn key_versions(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_version, count(*) AS n FROM data_keys GROUP BY key_version ORDER BY key_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_version")?, r.try_get("n")?)))
            .collect()
    }

    pub(super) async fn open_body(
        &self,
        resource_type: ResourceType,
        id: &str,
        version_id: i64,
        key: &DekRow,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let dek = self.dek_by_id(key).await?;
        crypto::open(
            &dek,
            Binding {
                resource_type: resource_type.as_str(),
                id,
                version_id,
                compartment: &key.scope,
            },
            sealed,
        )
        .map_err(|e| {
            // No PHI here: type, id and version are identifiers, not content.
            tracing::error!(%resource_type, %id, version_id, error = %e, "sealed body did not open");
            StoreError::Integrity
        })
    }

    pub(super) async fn dek_by_id(&self, key: &DekRow) -> Result<Arc<Dek>, StoreError> {
        if let Some(dek) = self.cache.get(key.id, Instant::now()) {
            return Ok(dek);
        }
        let dek = self
            .keys
            .unwrap_dek(&key.wrapped)
            .await
            .map_err(|e| match e {
                KeyError::Rejected(_) => StoreError::Integrity,
                other => StoreError::Key(other),
            })?;
        Ok(self.cache.insert(key.id, &key.scope, dek, Instant::now()))
    }

    /// The data key for a key scope, creating it on first use.
    pub(super) async fn dek_for_scope(&self, scope: &str) -> Result<(i64, Arc<Dek>), StoreError> {
        if let Some(hit) = self.cache.get_scope(scope, Instant::now()) {
            return Ok(hit);
        }
        let kek = self.kek_for(scope).await?;
        self.dek_for_scope_under(scope, kek).await
    }

    /// [`Store::dek_for_scope`] with the scope's KEK known (`None`: the main key).
    async fn dek_for_scope_under(
        &self,
        scope: &str,
        kek: Option<PatientKek>,
    ) -> Result<(i64, Arc<Dek>), StoreError> {
        if let Some(hit) = self.cache.get_scope(scope, Instant::now()) {
            return Ok(hit);
        }
        let existing = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = existing {
            let key = DekRow::from_parts(&row)?;
            return Ok((key.id, self.dek_by_id(&key).await?));
        }
        // An erased patient's record stays erased: nothing is sealed for it again (a trigger on
        // data_keys refuses it too, for a first write racing the erasure).
        let erased: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erasures WHERE scope = $1)")
                .bind(scope)
                .fetch_one(&self.pool)
                .await?;
        if erased {
            return Err(StoreError::Erased(
                "the patient record this belongs to".into(),
            ));
        }
        let (dek, wrapped) = self.keys.generate_for(kek.as_ref()).await?;
        let now = self.clock.now();
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO data_keys (scope, wrapped, key_version, created_at, kek_since)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scope) DO NOTHING RETURNING id",
        )
        .bind(scope)
        .bind(&wrapped.wrapped)
        .bind(wrapped.key_version)
        .bind(now)
        .bind(kek.as_ref().map(|_| now))
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(id) => Ok((id, self.cache.insert(id, scope, dek, Instant::now()))),
            None => {
                // Another request created this scope's key first: use theirs.
                let row = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE scope = $1")
                    .bind(scope)
                    .fetch_one(&self.pool)
                    .await?;
                let key = DekRow::from_parts(&row)?;
                Ok((key.id, self.dek_by_id(&key).await?))
            }
        }
    }
}

impl DekRow {
    pub(super) fn from_row(row: &sqlx::postgres::PgRow) -> Result<DekRow, StoreError> {
        Ok(DekRow {
            id: row
                .try_get::<Option<i64>, _>("dek_id")?
                .ok_or(StoreError::Integrity)?,
            scope: row
                .try_get::<Option<String>, _>("scope")?
                .ok_or(StoreError::Integrity)?,
            wrapped: row
                .try_get::<Option<String>, _>("wrapped")?
                .ok_or(StoreError::Integrity)?,
        })
    }

    pub(super) fn from_parts(row: &sqlx::postgres::PgRow) -> Result<DekRow, StoreError> {
        Ok(DekRow {
            id: row.try_get("id")?,
            scope: row.try_get("scope")?,
            wrapped: row.try_get("wrapped")?,
        })
    }
}
