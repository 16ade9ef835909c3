//! People: administrators, practitioners and patients. Passwords hashed with Argon2id (OWASP
//! parameters), TOTP (RFC 6238) second factor with single-use codes and a sealed seed, one-time
//! recovery codes stored hashed, and lockout by exponential back-off.
//!
//! Every login failure — unknown user, wrong password, wrong or replayed code, back-off in force,
//! locked account, an address over its limit — is the same [`LoginError::Invalid`], and every one
//! costs the same Argon2id work, so neither the message nor the timing tells them apart.
//!
//! Back-off is decided before anything is verified: an attempt is first *admitted* — counted as a
//! failure in one atomic step, for the user and for the client address — and only an admitted
//! attempt is checked against the real hash or seed. A right answer takes its count back. So N
//! parallel guesses cannot all be verified before the first is counted: once the count reaches the
//! free attempts, the rest are refused unverified. Failures decay (they stop counting once the
//! last one is older than [`SignInLimits::decay`]) and an address that fails too often across
//! usernames (password spraying) is refused for the rest of its window.

use crate::access::Role;
use crate::store::{Store, StoreError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::net::IpAddr;
use std::sync::LazyLock;

pub const MIN_PASSWORD_LEN: usize = 12;
const MAX_PASSWORD_LEN: usize = 1024;
/// Failures allowed before back-off starts.
const FREE_ATTEMPTS: i32 = 5;
/// Back-off doubles from 30 s per failure past the free ones, capped at 15 minutes: never permanent.
const BACKOFF_BASE_SECONDS: i64 = 30;
const BACKOFF_MAX_SECONDS: i64 = 15 * 60;
pub(super) const RECOVERY_CODES: usize = 10;

pub use crate::access::SignInLimits;

const TOTP_STEP: i64 = 30;

/// A small built-in list of the most common passwords of 12+ characters.
const COMMON_PASSWORDS: &[&str] = &[
    "123456789012",
    "1234567890123",
    "12345678901234",
    "qwertyuiop123",
    "password1234",
    "password12345",
    "passwordpassword",
    "qwertyuiopasdf",
    "iloveyou1234",
    "123123123123",
    "111111111111",
    "000000000000",
    "abcdefghijkl",
    "abc123abc123",
    "letmein12345",
    "welcome12345",
    "administrator",
    "Administrator1",
    "changeme1234",
    "trustno11234",
    "qwerty123456",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "zaq12wsxcde3",
    "monkey123456",
    "football1234",
    "baseball1234",
    "superman1234",
    "starwars1234",
    "princess1234",
    "sunshine1234",
    "passw0rd1234",
    "p@ssw0rd1234",
    "Password1234",
    "Password123!",
    "Welcome12345",
    "Summer2024!!",
    "Winter2024!!",
    "hospital1234",
    "doctor123456",
    "nurse1234567",
    "patient12345",
    "healthcare12",
    "qwertyqwerty",
    "asdfghjkl123",
];

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("user '{0}' already exists")]
    Exists(String),
    #[error("no such user")]
    NotFound,
    #[error("an administrator already exists; bootstrap is refused")]
    AdminExists,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// The only answer a failed login gets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("invalid username, password or code")]
    Invalid,
    #[error("the sign-in service is unavailable")]
    Unavailable,
}

/// Shown once at creation or MFA reset: the TOTP enrolment URI and the recovery codes.
#[derive(Debug)]
pub struct Enrollment {
    pub totp_uri: Option<String>,
    pub recovery_codes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub patient_id: Option<String>,
    pub practitioner_id: Option<String>,
    pub admin_locked: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub mfa_enrolled: bool,
}

impl User {
    /// The resource the user is linked to: `Patient/<id>` or `Practitioner/<id>`, if any.
    pub fn link(&self) -> Option<String> {
        self.patient_id
            .as_ref()
            .map(|p| format!("Patient/{p}"))
            .or_else(|| {
                self.practitioner_id
                    .as_ref()
                    .map(|p| format!("Practitioner/{p}"))
            })
    }
}

pub struct NewUser<'a> {
    pub username: &'a str,
    pub role: Role,
    pub patient_id: Option<&'a str>,
    pub practitioner_id: Option<&'a str>,
    pub password: &'a str,
}

fn argon2() -> Argon2<'static> {
    // OWASP: Argon2id, 19 MiB, 2 iterations, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash verified when the user does not exist, so unknown users cost the same time.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("carapace-timing-equaliser").unwrap_or_default());

pub(super) fn hash_password(password: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Invalid(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Invalid(e.to_string()))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Usernames: 3–64 of lower-case letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(username: &str) -> Result<(), UserError> {
    let ok = (3..=64).contains(&username.len())
        && username.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'@')
        });
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(
            "a username is 3 to 64 lower-case letters, digits, '.', '_', '-' or '@'".into(),
        ))
    }
}

/// Minimum length, not a common password, not the username.
pub fn check_password_policy(username: &str, password: &str) -> Result<(), UserError> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(UserError::Invalid(format!(
            "a password has at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(UserError::Invalid("the password is too long".into()));
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS.iter().any(|c| c.to_lowercase() == lower) {
        return Err(UserError::Invalid("this password is too common".into()));
    }
    if lower.contains(&username.to_lowercase()) {
        return Err(UserError::Invalid(
            "the password must not contain the username".into(),
        ));
    }
    Ok(())
}

pub(super) fn role_needs_mfa(role: Role) -> bool {
    matches!(role, Role::Admin | Role::Practitioner)
}

pub(super) fn totp(secret: &[u8], username: &str) -> Option<totp_rs::TOTP> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret.to_vec(),
        Some("Carapace".to_string()),
        username.to_string(),
    )
    .ok()
}

pub(super) fn recovery_hash(code: &str) -> String {
    let normalised: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    hex(&Sha256::digest(normalised.as_bytes()))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn admin_exists(store: &Store) -> Result<bool, UserError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')")
            .fetch_one(store.pool())
            .await?,
    )
}

/// Check username, password and (for roles that need it) a TOTP or recovery code at `now`: the
/// console's sign-in, which has no client address (it runs on the operator's own terminal).
pub async fn login(
    store: &Store,
    now: DateTime<Utc>,
    username: &str,
    password: &str,
    code: Option<&str>,
) -> Result<User, LoginError> {
    let pending = verify_credentials(store, now, None, username, password).await?;
    if pending.needs_mfa {
        check_code(store, now, &pending, code.unwrap_or("")).await?;
    }
    succeed(store, &pending).await
}

/// A user whose password was right, before the second factor.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    pub user_id: i64,
    pub username: String,
    pub needs_mfa: bool,
}

fn unavailable(e: &dyn std::fmt::Display) -> LoginError {
    tracing::error!(error = %e, "login check failed");
    LoginError::Unavailable
}

/// First step: the password, from `address` (the client's, as the server computes it; `None` for
/// the console). The attempt is admitted (and counted) for the address and the user before the
/// password is verified; a right password takes the user's and the address's count back.
pub async fn verify_credentials(
    store: &Store,
    now: DateTime<Utc>,
    address: Option<IpAddr>,
    username: &str,
    password: &str,
) -> Result<PendingLogin, LoginError> {
    let limits = store.sign_in_limits();
    let address = address.map(address_key);
    if let Some(key) = &address {
        if !admit_address(store, now, &limits, key).await? {
            refuse_in_equal_time(password);
            return Err(LoginError::Invalid);
        }
    }
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(store.pool())
        .await
        .map_err(|e| unavailable(&e))?;
    let Some(row) = row else {
        refuse_in_equal_time(password);
        return Err(LoginError::Invalid);
    };
    let id: i64 = row.try_get("id").map_err(|e| unavailable(&e))?;
    let hash: String = row.try_get("password_hash").map_err(|e| unavailable(&e))?;
    let role_text: String = row.try_get("role").map_err(|e| unavailable(&e))?;
    let Some(admitted) = admit_user(store, now, &limits, id).await? else {
        // Locked or backing off: refused without looking at the password.
        refuse_in_equal_time(password);
        return Err(LoginError::Invalid);
    };
    if !verify_password(password, &hash) {
        return Err(LoginError::Invalid);
    }
    let role = Role::parse(&role_text).ok_or(LoginError::Invalid)?;
    // A right password is not a failure; the second factor, if any, is admitted on its own.
    take_back(store, &admitted, address.as_deref()).await?;
    Ok(PendingLogin {
        user_id: id,
        username: username.to_string(),
        needs_mfa: role_needs_mfa(role),
    })
}

/// The Argon2id work of a real check, on a hash nobody's password matches: a refusal takes as long
/// as a verification.
fn refuse_in_equal_time(password: &str) {
    verify_password(password, &DUMMY_HASH);
}

/// Second step: a TOTP or recovery code. Admitted (and counted) before the code is checked, like
/// the password.
pub async fn check_code(
    store: &Store,
    now: DateTime<Utc>,
    pending: &PendingLogin,
    code: &str,
) -> Result<(), LoginError> {
    let limits = store.sign_in_limits();
    if admit_user(store, now, &limits, pending.user_id)
        .await?
        .is_none()
    {
        return Err(LoginError::Invalid);
    }
    let row = sqlx::query("SELECT totp_sealed, totp_last_step FROM users WHERE id = $1")
        .bind(pending.user_id)
        .fetch_one(store.pool())
        .await
        .map_err(|e| unavailable(&e))?;
    let sealed: Option<Vec<u8>> = row.try_get("totp_sealed").map_err(|e| unavailable(&e))?;
    let last_step: i64 = row.try_get("totp_last_step").map_err(|e| unavailable(&e))?;
    let ok = match sealed {
        Some(sealed) if !code.is_empty() => {
            check_second_factor(
                store,
                now,
                pending.user_id,
                &pending.username,
                code,
                &sealed,
                last_step,
            )
            .await?
        }
        _ => false,
    };
    // A wrong code is already counted; a right one is followed by `succeed`, which clears it.
    if ok {
        Ok(())
    } else {
        Err(LoginError::Invalid)
    }
}

/// Both steps passed: clear the back-off.
pub async fn succeed(store: &Store, pending: &PendingLogin) -> Result<User, LoginError> {
    sqlx::query(
        "UPDATE users SET failed_logins = 0, locked_until = NULL, last_failed_at = NULL WHERE id = $1",
    )
    .bind(pending.user_id)
    .execute(store.pool())
    .await
    .map_err(|e| unavailable(&e))?;
    find(store, &pending.username)
        .await
        .map_err(|_| LoginError::Unavailable)
}

/// An attempt let through the user's back-off and counted as a failure, with what it changed, so
/// a right answer can take it back.
struct Admitted {
    user_id: i64,
    /// The back-off this attempt started (when it was at or past the free attempts).
    lock_set: Option<DateTime<Utc>>,
    /// The (expired or absent) back-off before it.
    lock_before: Option<DateTime<Utc>>,
}

/// How long to back off after `failed` counted failures, if at all: doubling from 30 s per failure
/// past the free ones, capped at 15 minutes.
fn backoff(failed: i32) -> Option<Duration> {
    if failed < FREE_ATTEMPTS {
        return None;
    }
    let doublings = u32::try_from(failed - FREE_ATTEMPTS)
        .unwrap_or(u32::MAX)
        .min(10);
    Some(Duration::seconds(
        (BACKOFF_BASE_SECONDS << doublings).min(BACKOFF_MAX_SECONDS),
    ))
}

/// Admit an attempt for a user and count it as a failure, atomically (the row is locked for the
/// decision): `None` when the account is locked or backing off. The attempt that reaches the free
/// attempts starts the back-off itself, so attempts racing it are refused unverified.
async fn admit_user(
    store: &Store,
    now: DateTime<Utc>,
    limits: &SignInLimits,
    user_id: i64,
) -> Result<Option<Admitted>, LoginError> {
    // PostgreSQL keeps microseconds: the lock is compared exactly when it is taken back.
    let now = now.trunc_subsecs(6);
    let mut tx = store.pool().begin().await.map_err(|e| unavailable(&e))?;
    let row = sqlx::query(
        "SELECT failed_logins, last_failed_at, locked_until, admin_locked FROM users
          WHERE id = $1 FOR UPDATE",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| unavailable(&e))?;
    let failed: i32 = row.try_get("failed_logins").map_err(|e| unavailable(&e))?;
    let last_failed: Option<DateTime<Utc>> =
        row.try_get("last_failed_at").map_err(|e| unavailable(&e))?;
    let locked_until: Option<DateTime<Utc>> =
        row.try_get("locked_until").map_err(|e| unavailable(&e))?;
    let admin_locked: bool = row.try_get("admin_locked").map_err(|e| unavailable(&e))?;
    if admin_locked || locked_until.is_some_and(|t| now < t) {
        return Ok(None);
    }
    // Failures decay: once the last one is older than the window, counting starts over.
    let failed = if last_failed.is_some_and(|t| t > now - limits.decay) {
        failed.saturating_add(1)
    } else {
        1
    };
    let lock_set = backoff(failed).map(|wait| now + wait);
    sqlx::query(
        "UPDATE users SET failed_logins = $2, last_failed_at = $3, locked_until = $4 WHERE id = $1",
    )
    .bind(user_id)
    .bind(failed)
    .bind(now)
    .bind(lock_set)
    .execute(&mut *tx)
    .await
    .map_err(|e| unavailable(&e))?;
    tx.commit().await.map_err(|e| unavailable(&e))?;
    Ok(Some(Admitted {
        user_id,
        lock_set,
        lock_before: locked_until,
    }))
}

/// A right answer: take back what admitting it counted (for the user, and for the address). The
/// back-off it started is lifted only if no later failure replaced it.
async fn take_back(
    store: &Store,
    admitted: &Admitted,
    address: Option<&str>,
) -> Result<(), LoginError> {
    sqlx::query(
        "UPDATE users SET failed_logins = GREATEST(failed_logins - 1, 0),
                locked_until = CASE WHEN locked_until IS NOT DISTINCT FROM $2 THEN $3
                                    ELSE locked_until END
          WHERE id = $1",
    )
    .bind(admitted.user_id)
    .bind(admitted.lock_set)
    .bind(admitted.lock_before)
    .execute(store.pool())
    .await
    .map_err(|e| unavailable(&e))?;
    if let Some(key) = address {
        sqlx::query(
            "UPDATE sign_in_addresses SET failures = GREATEST(failures - 1, 0) WHERE address = $1",
        )
        .bind(key)
        .execute(store.pool())
        .await
        .map_err(|e| unavailable(&e))?;
    }
    Ok(())
}

/// What the per-address limit counts by: the address itself for IPv4, its /64 for IPv6 (one
/// subscriber's allocation, which an attacker can draw fresh addresses from at will).
fn address_key(address: IpAddr) -> String {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
    }
}

/// Admit an attempt from an address and count it, in one statement: false once the address has
/// had its failures for the window (the window starts over when it has passed).
async fn admit_address(
    store: &Store,
    now: DateTime<Utc>,
    limits: &SignInLimits,
    key: &str,
) -> Result<bool, LoginError> {
    let window = format!("{} seconds", limits.address_window.num_seconds());
    // Windows long past are forgotten (the table holds only addresses that failed lately).
    sqlx::query("DELETE FROM sign_in_addresses WHERE window_started <= $1 - $2::interval")
        .bind(now)
        .bind(&window)
        .execute(store.pool())
        .await
        .map_err(|e| unavailable(&e))?;
    let admitted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO sign_in_addresses AS a (address, failures, window_started) VALUES ($1, 1, $2)
         ON CONFLICT (address) DO UPDATE SET
             failures = CASE WHEN a.window_started <= $2 - $3::interval THEN 1
                             ELSE a.failures + 1 END,
             window_started = CASE WHEN a.window_started <= $2 - $3::interval THEN $2
                                   ELSE a.window_started END
          WHERE a.window_started <= $2 - $3::interval OR a.failures < $4
         RETURNING failures",
    )
    .bind(key)
    .bind(now)
    .bind(&window)
    .bind(limits.address_failures)
    .fetch_optional(store.pool())
    .await
    .map_err(|e| unavailable(&e))?;
    Ok(admitted.is_some())
}

/// A TOTP code for the current, previous or next step that is newer than the last one used, or an
/// unused recovery code. Each is consumed atomically, so it works once.
async fn check_second_factor(
    store: &Store,
    now: DateTime<Utc>,
    user_id: i64,
    username: &str,
    code: &str,
    sealed: &[u8],
    last_step: i64,
) -> Result<bool, LoginError> {
    let code = code.trim();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        let mut secret = store
            .open_secret(&format!("totp/{user_id}"), sealed)
            .await
            .map_err(|_| LoginError::Unavailable)?;
        let t = totp(&secret, username);
        zeroize::Zeroize::zeroize(&mut secret);
        let Some(t) = t else { return Ok(false) };
        let step = now.timestamp().div_euclid(TOTP_STEP);
        for candidate in [step - 1, step, step + 1] {
            if candidate <= last_step {
                continue;
            }
            let at = u64::try_from(candidate * TOTP_STEP).unwrap_or(0);
            if t.generate(at) == code {
                let used = sqlx::query(
                    "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2",
                )
                .bind(user_id)
                .bind(candidate)
                .execute(store.pool())
                .await
                .map_err(|_| LoginError::Unavailable)?
                .rows_affected();
                return Ok(used == 1);
            }
        }
        return Ok(false);
    }
    let used = sqlx::query(
        "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(recovery_hash(code))
    .bind(now)
    .execute(store.pool())
    .await
    .map_err(|_| LoginError::Unavailable)?
    .rows_affected();
    Ok(used == 1)
}

fn user_from_row(r: &sqlx::postgres::PgRow) -> Result<User, sqlx::Error> {
    let role: String = r.try_get("role")?;
    Ok(User {
        username: r.try_get("username")?,
        role: Role::parse(&role).unwrap_or(Role::Analytics),
        patient_id: r.try_get("patient_id")?,
        practitioner_id: r.try_get("practitioner_id")?,
        admin_locked: r.try_get("admin_locked")?,
        locked_until: r.try_get("locked_until")?,
        mfa_enrolled: r.try_get::<Option<Vec<u8>>, _>("totp_sealed")?.is_some(),
    })
}

const USER_COLUMNS: &str =
    "username, role, patient_id, practitioner_id, admin_locked, locked_until, totp_sealed";

pub async fn find(store: &Store, username: &str) -> Result<User, UserError> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(store.pool())
    .await?
    .ok_or(UserError::NotFound)?;
    Ok(user_from_row(&row)?)
}

pub async fn list(store: &Store) -> Result<Vec<User>, UserError> {
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY username"
    ))
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy() {
        assert!(check_password_policy("alice", "short").is_err());
        assert!(
            check_password_policy("alice", "Password1234").is_err(),
            "common"
        );
        assert!(
            check_password_policy("alice", "my-alice-is-long").is_err(),
            "contains the username"
        );
        assert!(check_password_policy("alice", "correct horse battery").is_ok());
    }

    #[test]
    fn argon2id_with_owasp_parameters() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterz", &hash));
    }

    #[test]
    fn usernames() {
        assert!(check_username("dr.who@ward-3").is_ok());
        assert!(check_username("Dr").is_err() && check_username("a b").is_err());
    }

    #[test]
    fn addresses_count_by_ipv4_address_or_ipv6_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("203.0.113.9"), "203.0.113.9");
        assert_eq!(key("::ffff:203.0.113.9"), "203.0.113.9", "v4-mapped is v4");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::7"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn backoff_starts_at_the_fifth_failure_doubles_and_is_capped() {
        assert_eq!(backoff(4), None);
        assert_eq!(backoff(5), Some(Duration::seconds(30)));
        assert_eq!(backoff(6), Some(Duration::seconds(60)));
        assert_eq!(backoff(1000), Some(Duration::minutes(15)));
    }

    #[test]
    fn recovery_codes_normalise() {
        assert_eq!(
            recovery_hash("ABCD-ef01-2345-6789"),
            recovery_hash("abcdef0123456789")
        );
    }
}
