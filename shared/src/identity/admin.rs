//! The administrative operations on people, clients and roles — the only code that creates,
//! changes or retires them (`tests/layers.py` checks that no other file writes those rows). The
//! operations on people (create, lock, unlock, role, MFA reset, ending sessions) take the
//! operator's [`AccessContext`], are refused to anyone but an administrator, and record their event
//! in the change's transaction, a refusal too ([`Store::audit_admin_result`]). Client and app
//! registration and disabling a client take no operator yet: the console's commands, run by a
//! signed-in administrator, record them. Setting a password (no command calls it; the tests use
//! it to set up) is not audited. Sign-in's own
//! bookkeeping (failure counts, the last TOTP step used) stays with sign-in in [`super::users`].

use super::authorize::{redirect_uri_allowed, OTHER_SCOPES};
use super::tokens::OAuthError;
use super::users::{
    check_password_policy, check_username, hash_password, hex, recovery_hash, role_needs_mfa, totp,
    Enrollment, NewUser, UserError, RECOVERY_CODES,
};
use crate::access::{AccessContext, Context, Role, Scope};
use crate::clock::Clock;
use crate::db::Db;
use crate::store::Store;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde_json::Value;

/// Fresh TOTP seed (sealed) and recovery codes for a user; returns what to show once.
async fn enroll(
    store: &Store,
    tx: &mut sqlx::PgConnection,
    user_id: i64,
    username: &str,
    with_totp: bool,
) -> Result<Enrollment, UserError> {
    let mut totp_uri = None;
    let mut sealed = None;
    if with_totp {
        let mut secret = [0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let t = totp(&secret, username)
            .ok_or_else(|| UserError::Invalid("cannot make a TOTP seed".into()))?;
        totp_uri = Some(t.get_url());
        sealed = Some(
            store
                .seal_secret(&format!("totp/{user_id}"), &secret)
                .await?,
        );
        zeroize::Zeroize::zeroize(&mut secret);
    }
    sqlx::query("UPDATE users SET totp_sealed = $2, totp_last_step = 0 WHERE id = $1")
        .bind(user_id)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut raw = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let text = hex(&raw);
        let code = format!(
            "{}-{}-{}-{}",
            &text[0..4],
            &text[4..8],
            &text[8..12],
            &text[12..16]
        );
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user_id)
            .bind(recovery_hash(&code))
            .execute(&mut *tx)
            .await?;
        codes.push(code);
    }
    Ok(Enrollment {
        totp_uri,
        recovery_codes: codes,
    })
}

/// Create a user (an administrative operation: the operator must be an administrator, and the
/// creation is audited with it). Admins and practitioners are enrolled in TOTP at once.
pub async fn create_user(
    store: &Store,
    ctx: &AccessContext,
    new: &NewUser<'_>,
) -> Result<Enrollment, UserError> {
    let what = format!("user-create:{}", new.username);
    let result = async {
        let mut tx = store.begin_admin(ctx).await?;
        let enrollment = insert_user(store, &mut tx, new).await?;
        store.commit_admin(tx, ctx, &what).await?;
        Ok(enrollment)
    }
    .await;
    store.audit_admin_result(ctx, &what, result).await
}

/// The checks and the rows of a new user, inside `tx`.
async fn insert_user(
    store: &Store,
    tx: &mut sqlx::PgConnection,
    new: &NewUser<'_>,
) -> Result<Enrollment, UserError> {
    check_username(new.username)?;
    check_password_policy(new.username, new.password)?;
    match new.role {
        Role::Patient if new.patient_id.is_none() => {
            return Err(UserError::Invalid(
                "a patient user needs --patient ID".into(),
            ))
        }
        Role::Practitioner if new.practitioner_id.is_none() => {
            return Err(UserError::Invalid(
                "a practitioner user needs --practitioner ID".into(),
            ))
        }
        Role::System => {
            return Err(UserError::Invalid(
                "system access is for registered clients".into(),
            ))
        }
        _ => {}
    }
    let hash = hash_password(new.password)?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO users (username, role, patient_id, practitioner_id, password_hash, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username) DO NOTHING RETURNING id",
    )
    .bind(new.username)
    .bind(new.role.as_str())
    .bind(new.patient_id)
    .bind(new.practitioner_id)
    .bind(hash)
    .bind(store.now())
    .fetch_optional(&mut *tx)
    .await?;
    let id = id.ok_or_else(|| UserError::Exists(new.username.to_string()))?;
    enroll(store, tx, id, new.username, role_needs_mfa(new.role)).await
}

/// First run: create the first administrator, audited with them as its agent. Refused once any
/// administrator exists. (The one user creation without an operator: there is none yet.)
pub async fn bootstrap_admin(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Enrollment, UserError> {
    // Serialise concurrent bootstraps: the advisory lock is held for this transaction only.
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(4242001)")
        .execute(&mut *tx)
        .await?;
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'")
        .fetch_one(&mut *tx)
        .await?;
    if admins > 0 {
        return Err(UserError::AdminExists);
    }
    let enrollment = insert_user(
        store,
        &mut tx,
        &NewUser {
            username,
            role: Role::Admin,
            patient_id: None,
            practitioner_id: None,
            password,
        },
    )
    .await?;
    let ctx = AccessContext::operator(username);
    store
        .commit_admin(tx, &ctx, &format!("bootstrap-admin:{username}"))
        .await?;
    Ok(enrollment)
}

/// End everything the user holds — access tokens, refresh tokens, browser sessions — on a lock, role
/// change, MFA or password change.
async fn revoke_tokens(
    tx: &mut sqlx::PgConnection,
    username: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for sql in [
        "UPDATE access_tokens SET revoked_at = $2 WHERE subject = $1 AND revoked_at IS NULL",
        "UPDATE refresh_tokens SET revoked_at = $2
          WHERE revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE username = $1)",
        "UPDATE web_sessions SET revoked_at = $2
          WHERE revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE username = $1)",
    ] {
        sqlx::query(sql)
            .bind(username)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// One administrative change of a user row (`sql` binds the username, then `role`), audited as
/// `what` in its transaction; the user's tokens and sessions end with it.
async fn update_user(
    store: &Store,
    ctx: &AccessContext,
    what: &str,
    username: &str,
    sql: &str,
    role: Option<&str>,
) -> Result<(), UserError> {
    let result = async {
        let mut tx = store.begin_admin(ctx).await?;
        let mut q = sqlx::query(sql).bind(username);
        if let Some(role) = role {
            q = q.bind(role);
        }
        if q.execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(UserError::NotFound);
        }
        revoke_tokens(&mut tx, username, store.now()).await?;
        store.commit_admin(tx, ctx, what).await?;
        Ok(())
    }
    .await;
    store.audit_admin_result(ctx, what, result).await
}

/// Lock a user out (an administrative operation); their tokens and sessions end.
pub async fn lock(store: &Store, ctx: &AccessContext, username: &str) -> Result<(), UserError> {
    update_user(
        store,
        ctx,
        &format!("user-lock:{username}"),
        username,
        "UPDATE users SET admin_locked = true WHERE username = $1",
        None,
    )
    .await
}

/// Unlock a user and clear their back-off (an administrative operation).
pub async fn unlock(store: &Store, ctx: &AccessContext, username: &str) -> Result<(), UserError> {
    update_user(
        store,
        ctx,
        &format!("user-unlock:{username}"),
        username,
        "UPDATE users SET admin_locked = false, failed_logins = 0, locked_until = NULL,
                last_failed_at = NULL
          WHERE username = $1",
        None,
    )
    .await
}

/// Change a user's role (an administrative operation); their tokens and sessions end.
pub async fn set_role(
    store: &Store,
    ctx: &AccessContext,
    username: &str,
    role: Role,
) -> Result<(), UserError> {
    let what = format!("user-set-role:{username}:{}", role.as_str());
    if role == Role::System {
        let refused = Err(UserError::Invalid(
            "system access is for registered clients".into(),
        ));
        return store.audit_admin_result(ctx, &what, refused).await;
    }
    update_user(
        store,
        ctx,
        &what,
        username,
        "UPDATE users SET role = $2 WHERE username = $1",
        Some(role.as_str()),
    )
    .await
}

/// New TOTP seed and recovery codes (an administrative operation); the old ones stop working and
/// the user's tokens are revoked.
pub async fn reset_mfa(
    store: &Store,
    ctx: &AccessContext,
    username: &str,
) -> Result<Enrollment, UserError> {
    let what = format!("user-reset-mfa:{username}");
    let result = async {
        let mut tx = store.begin_admin(ctx).await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE username = $1 FOR UPDATE")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(UserError::NotFound)?;
        let enrollment = enroll(store, &mut tx, id, username, true).await?;
        revoke_tokens(&mut tx, username, store.now()).await?;
        store.commit_admin(tx, ctx, &what).await?;
        Ok(enrollment)
    }
    .await;
    store.audit_admin_result(ctx, &what, result).await
}

/// End every token and browser session of a subject (user or client), or the one whose id is
/// `target` (an administrative operation). Returns how many ended.
pub async fn end_sessions(
    store: &Store,
    ctx: &AccessContext,
    target: &str,
) -> Result<u64, UserError> {
    let what = format!("session-revoke:{target}");
    let result = async {
        let mut tx = store.begin_admin(ctx).await?;
        let n = crate::identity::tokens::revoke_matching(&mut tx, store.now(), target).await?;
        store.commit_admin(tx, ctx, &what).await?;
        Ok(n)
    }
    .await;
    store.audit_admin_result(ctx, &what, result).await
}

/// Change a password (policy checked); revokes the user's tokens.
pub async fn set_password(store: &Store, username: &str, password: &str) -> Result<(), UserError> {
    check_password_policy(username, password)?;
    let hash = hash_password(password)?;
    let mut tx = store.pool().begin().await?;
    let n = sqlx::query("UPDATE users SET password_hash = $2 WHERE username = $1")
        .bind(username)
        .bind(hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(UserError::NotFound);
    }
    revoke_tokens(&mut tx, username, store.now()).await?;
    tx.commit().await?;
    Ok(())
}

/// Register a backend client with its public keys. Its scopes must be `system/` scopes.
///
/// `introspect` registers it to call the introspection endpoint (a resource server checking the
/// tokens presented to it). That is a registration option rather than a scope because it is not
/// access to FHIR data and is never asked for per token: an operator decides it once, and
/// `carapace-console client list` shows it.
pub async fn register_client(
    pool: &Db,
    clock: &dyn Clock,
    name: &str,
    jwks: &Value,
    scopes: &[String],
    introspect: bool,
) -> Result<String, OAuthError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| OAuthError::new(400, "invalid_client_metadata", "the JWKS has no keys"))?;
    for key in keys {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).map_err(|_| {
            OAuthError::new(
                400,
                "invalid_client_metadata",
                "a JWKS key is not a valid JWK",
            )
        })?;
        if jwk.common.key_id.is_none() {
            return Err(OAuthError::new(
                400,
                "invalid_client_metadata",
                "every key needs a kid",
            ));
        }
        if key.get("d").is_some() {
            return Err(OAuthError::new(
                400,
                "invalid_client_metadata",
                "the JWKS holds a private key; register public keys only",
            ));
        }
    }
    for s in scopes {
        match Scope::parse(s) {
            Ok(scope) if scope.context == Context::System => {}
            _ => {
                return Err(OAuthError::new(
                    400,
                    "invalid_client_metadata",
                    format!("'{}' is not a system/ scope", crate::fhir::printable(s)),
                ))
            }
        }
    }
    let client_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO clients (client_id, name, jwks, scopes, created_at, introspect)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&client_id)
    .bind(name)
    .bind(sqlx::types::Json(jwks))
    .bind(scopes)
    .bind(clock.now())
    .bind(introspect)
    .execute(pool)
    .await
    .map_err(OAuthError::server)?;
    Ok(client_id)
}

/// Disable a client and revoke every token it holds. Returns whether the client exists. (The access
/// tokens an app's users hold through it end too: [`lookup`] refuses tokens of a disabled client.)
pub async fn disable_client(
    pool: &Db,
    clock: &dyn Clock,
    client_id: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query("UPDATE clients SET disabled = true WHERE client_id = $1")
        .bind(client_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    // Its own tokens end, and an app's users keep no way back in through it (refresh tokens).
    for sql in [
        "UPDATE access_tokens SET revoked_at = $2 WHERE subject = $1 AND revoked_at IS NULL",
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
    ] {
        sqlx::query(sql)
            .bind(client_id)
            .bind(clock.now())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(found)
}
/// Register a user-facing app: its exact redirect URIs and the scopes it may ask for.
pub async fn register_app(
    pool: &Db,
    clock: &dyn Clock,
    name: &str,
    redirect_uris: &[String],
    scopes: &[String],
) -> Result<String, OAuthError> {
    let bad = |d: String| OAuthError::new(400, "invalid_client_metadata", d);
    if redirect_uris.is_empty() {
        return Err(bad("an app needs at least one redirect URI".into()));
    }
    for uri in redirect_uris {
        let ok = redirect_uri_allowed(uri);
        if !ok {
            return Err(bad(format!(
                "redirect URI '{}' must be https (or http on loopback) without a fragment",
                crate::fhir::printable(uri)
            )));
        }
    }
    for s in scopes {
        let ok = OTHER_SCOPES.contains(&s.as_str())
            || Scope::parse(s)
                .is_ok_and(|sc| matches!(sc.context, Context::Patient | Context::User));
        if !ok {
            return Err(bad(format!(
                "'{}' is not a scope for user apps",
                crate::fhir::printable(s)
            )));
        }
    }
    let client_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO clients (client_id, name, kind, redirect_uris, scopes, created_at)
         VALUES ($1, $2, 'app', $3, $4, $5)",
    )
    .bind(&client_id)
    .bind(name)
    .bind(redirect_uris)
    .bind(scopes)
    .bind(clock.now())
    .execute(pool)
    .await
    .map_err(OAuthError::server)?;
    Ok(client_id)
}
