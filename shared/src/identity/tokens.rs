//! SMART on FHIR authorization: registered backend clients, the `client_credentials` grant with
//! `private_key_jwt` client assertions (RS384, ES384), and opaque access tokens.
//!
//! Access tokens are opaque: 256 random bits, base64url, stored only as their SHA-256, looked up in
//! the database when a server first sees them and then kept in its [`TokenCache`] until any token
//! may have ended (the database notifies every server). A database dump yields no usable token.
//! A token names the client it was issued to and, from the authorization-code flow, its refresh
//! family; [`lookup`] refuses it once that client is disabled or that family revoked.
//!
//! Introspection (RFC 7662) tells who holds a token, so [`introspect`] answers only administrators
//! and backend clients registered for it.

use crate::access::{role_allows, AccessContext, Context, Role, Scope};
use crate::clock::Clock;
use crate::crypto::sha256;
use crate::db::Db;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde_json::Value;
use sqlx::Row;
use std::net::IpAddr;

/// Access tokens live five minutes (SMART Backend Services' upper bound).
pub const ACCESS_TOKEN_SECONDS: i64 = 300;
/// A client assertion may not expire more than five minutes ahead.
const MAX_ASSERTION_LIFETIME: i64 = 300;

pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An OAuth 2.0 error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    fn invalid_client(description: impl Into<String>) -> OAuthError {
        OAuthError::new(401, "invalid_client", description)
    }

    /// A failure of the server, not the client: 503 `temporarily_unavailable` (retry) when the
    /// database is away, else 500 `server_error`. The cause is logged, never sent.
    pub fn server(e: impl std::error::Error + 'static) -> OAuthError {
        tracing::error!(error = %e, "token endpoint failure");
        let away = (&e as &dyn std::error::Error)
            .downcast_ref::<sqlx::Error>()
            .is_some_and(|db| crate::db::failure(db) == crate::db::DbFailure::Unavailable);
        if away {
            OAuthError::new(
                503,
                "temporarily_unavailable",
                "the authorization server is unavailable; retry shortly",
            )
        } else {
            OAuthError::new(500, "server_error", "the authorization server failed")
        }
    }
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// Who the token is for: the client id or the user name.
    pub subject: String,
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
    pub patient: Option<String>,
    /// Only for user apps (authorization-code flow); rotated on every use.
    pub refresh_token: Option<String>,
    /// OpenID Connect (`openid` granted): the signed sign-in assertion.
    pub id_token: Option<String>,
    /// SMART launch context: the EHR launch's encounter.
    pub encounter: Option<String>,
}

/// A registered backend client, as listed by the console.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub disabled: bool,
    /// Registered to call the introspection endpoint.
    pub introspect: bool,
}

pub async fn list_clients(pool: &Db) -> Result<Vec<Client>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT client_id, name, scopes, disabled, introspect FROM clients ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Client {
                client_id: r.try_get("client_id")?,
                name: r.try_get("name")?,
                scopes: r.try_get("scopes")?,
                disabled: r.try_get("disabled")?,
                introspect: r.try_get("introspect")?,
            })
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: String,
}

/// The `client_credentials` grant (SMART Backend Services): verify the client assertion, then issue
/// a short-lived access token for the requested scopes the client is registered for.
pub async fn client_credentials(
    pool: &Db,
    clock: &dyn Clock,
    token_url: &str,
    form: &[(String, String)],
) -> Result<IssuedToken, OAuthError> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
        return Err(OAuthError::invalid_client(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let assertion = field("client_assertion")
        .ok_or_else(|| OAuthError::invalid_client("client_assertion is missing"))?;
    let now = clock.now();
    let client_id = verify_assertion(pool, now, token_url, assertion).await?;

    let registered: Vec<String> =
        sqlx::query_scalar("SELECT scopes FROM clients WHERE client_id = $1")
            .bind(&client_id)
            .fetch_one(pool)
            .await
            .map_err(OAuthError::server)?;
    let registered: Vec<Scope> = registered
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .collect();
    let requested = field("scope").unwrap_or("");
    let mut granted = Vec::new();
    for s in requested.split_whitespace() {
        let scope =
            Scope::parse(s).map_err(|e| OAuthError::new(400, "invalid_scope", e.to_string()))?;
        if scope.context != Context::System {
            return Err(OAuthError::new(
                400,
                "invalid_scope",
                "backend clients get system/ scopes only",
            ));
        }
        if registered.iter().any(|r| covers(r, &scope)) {
            granted.push(scope);
        }
    }
    if granted.is_empty() {
        return Err(OAuthError::new(
            400,
            "invalid_scope",
            "none of the requested scopes is registered for this client",
        ));
    }
    let binding = Binding {
        client_id: Some(&client_id),
        refresh_family: None,
        markers: &[],
    };
    issue_bound(pool, now, &client_id, Role::System, &granted, None, binding)
        .await
        .map_err(OAuthError::server)
}

/// Does registered scope `r` grant everything `s` asks for?
pub(crate) fn covers(r: &Scope, s: &Scope) -> bool {
    let wider_type = r.resource_type.is_none() || r.resource_type == s.resource_type;
    let text_r = r.to_string();
    let text_s = s.to_string();
    let letters = |t: &str| t.rsplit('.').next().unwrap_or("").to_string();
    r.context == s.context
        && wider_type
        && letters(&text_s)
            .chars()
            .all(|c| letters(&text_r).contains(c))
}

/// Verify a `private_key_jwt` client assertion; returns the client id.
async fn verify_assertion(
    pool: &Db,
    now: DateTime<Utc>,
    token_url: &str,
    assertion: &str,
) -> Result<String, OAuthError> {
    // Read the header ourselves first: `alg: none` and HMAC algorithms are refused outright, before
    // any key is looked at (an HS256 "signature" made with our public key must never verify).
    let mut parts = assertion.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OAuthError::invalid_client(
            "the client assertion is not a signed JWT",
        ));
    };
    let header: Value = B64URL
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| OAuthError::invalid_client("the client assertion header is not JSON"))?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS384") => jsonwebtoken::Algorithm::RS384,
        Some("ES384") => jsonwebtoken::Algorithm::ES384,
        _ => {
            return Err(OAuthError::invalid_client(
                "the client assertion must be signed with RS384 or ES384",
            ))
        }
    };
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| OAuthError::invalid_client("the client assertion header has no kid"))?;
    let unverified: Value = B64URL
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| OAuthError::invalid_client("the client assertion claims are not JSON"))?;
    let client_id = unverified
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| OAuthError::invalid_client("the client assertion has no iss"))?
        .to_string();
    let row =
        sqlx::query("SELECT jwks, disabled FROM clients WHERE client_id = $1 AND kind = 'backend'")
            .bind(&client_id)
            .fetch_optional(pool)
            .await
            .map_err(OAuthError::server)?
            .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    if row
        .try_get::<bool, _>("disabled")
        .map_err(OAuthError::server)?
    {
        return Err(OAuthError::invalid_client("the client is disabled"));
    }
    let jwks: sqlx::types::Json<Value> = row
        .try_get::<Option<sqlx::types::Json<Value>>, _>("jwks")
        .map_err(OAuthError::server)?
        .ok_or_else(|| OAuthError::invalid_client("the client has no keys"))?;
    let matching: Vec<&Value> = jwks
        .0
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
                .collect()
        })
        .unwrap_or_default();
    let [key] = matching.as_slice() else {
        return Err(OAuthError::invalid_client(
            "no single registered key has this kid",
        ));
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value((*key).clone())
        .map_err(|_| OAuthError::invalid_client("the registered key is not usable"))?;
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk)
        .map_err(|_| OAuthError::invalid_client("the registered key is not usable"))?;
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[client_id.as_str()]);
    validation.sub = Some(client_id.clone());
    // Expiry is checked below against our clock, not the library's.
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &decoding, &validation)
        .map_err(|e| OAuthError::invalid_client(format!("the client assertion is not valid: {e}")))?
        .claims;
    if claims.iss != client_id || claims.sub != client_id {
        return Err(OAuthError::invalid_client(
            "iss and sub must both be the client id",
        ));
    }
    let exp = DateTime::<Utc>::from_timestamp(claims.exp, 0)
        .ok_or_else(|| OAuthError::invalid_client("exp is not a time"))?;
    if exp <= now {
        return Err(OAuthError::invalid_client(
            "the client assertion has expired",
        ));
    }
    if exp > now + Duration::seconds(MAX_ASSERTION_LIFETIME) {
        return Err(OAuthError::invalid_client(
            "exp may be at most five minutes ahead",
        ));
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(OAuthError::invalid_client("jti is missing"));
    }
    sqlx::query("DELETE FROM client_assertions_seen WHERE expires_at < $1")
        .bind(now)
        .execute(pool)
        .await
        .map_err(OAuthError::server)?;
    let fresh = sqlx::query(
        "INSERT INTO client_assertions_seen (client_id, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(&client_id)
    .bind(&claims.jti)
    .bind(exp)
    .execute(pool)
    .await
    .map_err(OAuthError::server)?
    .rows_affected()
        == 1;
    if !fresh {
        return Err(OAuthError::invalid_client(
            "this client assertion (jti) was already used",
        ));
    }
    Ok(client_id)
}

/// What an access token lives and dies with besides its own expiry and revocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Binding<'a> {
    /// The client it was issued to: disabling the client ends it.
    pub client_id: Option<&'a str>,
    /// The refresh-token family it came from (authorization-code flow): revoking the family, as a
    /// replayed refresh token does, ends it.
    pub refresh_family: Option<uuid::Uuid>,
    /// Non-resource scopes granted with it (`openid`, `fhirUser`, `launch/patient`, ...): kept
    /// with the token and answered in `scope`, by the token endpoint and by introspection.
    pub markers: &'a [&'a str],
}

/// Issue an operator's access token (the console's sign-in): bound to no client.
pub async fn issue(
    pool: &Db,
    now: DateTime<Utc>,
    subject: &str,
    role: Role,
    scopes: &[Scope],
    patient: Option<&str>,
) -> Result<IssuedToken, sqlx::Error> {
    issue_bound(
        pool,
        now,
        subject,
        role,
        scopes,
        patient,
        Binding::default(),
    )
    .await
}

/// Issue an access token bound to a client and, for user apps, a refresh family.
pub async fn issue_bound(
    pool: &Db,
    now: DateTime<Utc>,
    subject: &str,
    role: Role,
    scopes: &[Scope],
    patient: Option<&str>,
    binding: Binding<'_>,
) -> Result<IssuedToken, sqlx::Error> {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = B64URL.encode(raw);
    let mut scope_strings: Vec<String> = scopes.iter().map(Scope::to_string).collect();
    scope_strings.extend(binding.markers.iter().map(|m| m.to_string()));
    sqlx::query(
        "INSERT INTO access_tokens
           (token_hash, subject, role, scopes, patient, issued_at, expires_at, client_id,
            refresh_family)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(sha256(token.as_bytes()))
    .bind(subject)
    .bind(role.as_str())
    .bind(&scope_strings)
    .bind(patient)
    .bind(now)
    .bind(now + Duration::seconds(ACCESS_TOKEN_SECONDS))
    .bind(binding.client_id)
    .bind(binding.refresh_family)
    .execute(pool)
    .await?;
    Ok(IssuedToken {
        subject: subject.to_string(),
        access_token: token,
        expires_in: ACCESS_TOKEN_SECONDS,
        scope: scope_strings.join(" "),
        patient: patient.map(str::to_string),
        refresh_token: None,
        id_token: None,
        encounter: None,
    })
}

/// What an active token says about its holder.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub subject: String,
    /// The client it was issued to (`None` for operator tokens).
    pub client_id: Option<String>,
    pub role: Role,
    pub scopes: Vec<Scope>,
    pub patient: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Every scope it was granted as text, non-resource ones included (for introspection).
    pub granted: Vec<String>,
}

/// The one definition of a live access token (`t`, at time `$1`), for every lookup and listing:
/// unexpired, unrevoked, its client (if any) not disabled, its refresh family (if any) not revoked.
/// A family is revoked as a whole (refresh-token replay, RFC 7009 revocation, disabling the app,
/// ending the user's sessions), so one revoked member marks it.
const LIVE_TOKEN: &str = "t.revoked_at IS NULL AND t.expires_at > $1
    AND (t.client_id IS NULL
         OR EXISTS (SELECT 1 FROM clients c WHERE c.client_id = t.client_id AND NOT c.disabled))
    AND (t.refresh_family IS NULL
         OR NOT EXISTS (SELECT 1 FROM refresh_tokens r
                         WHERE r.family = t.refresh_family AND r.revoked_at IS NOT NULL))";

/// Look up a bearer token: `None` unless it is live (see [`LIVE_TOKEN`]).
pub async fn lookup(
    pool: &Db,
    now: DateTime<Utc>,
    token: &str,
) -> Result<Option<TokenInfo>, sqlx::Error> {
    if token.is_empty() || token.len() > 512 {
        return Ok(None);
    }
    let row = sqlx::query(&format!(
        "SELECT t.subject, t.client_id, t.role, t.scopes, t.patient, t.issued_at, t.expires_at
           FROM access_tokens t
          WHERE t.token_hash = $2 AND {LIVE_TOKEN}"
    ))
    .bind(now)
    .bind(sha256(token.as_bytes()))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let Some(role) = Role::parse(&row.try_get::<String, _>("role")?) else {
        return Ok(None);
    };
    let scopes: Vec<String> = row.try_get("scopes")?;
    Ok(Some(TokenInfo {
        subject: row.try_get("subject")?,
        client_id: row.try_get("client_id")?,
        role,
        // Defence in depth: a stored scope the role may not hold is dropped, not honoured.
        scopes: scopes
            .iter()
            .filter_map(|s| Scope::parse(s).ok())
            .filter(|s| role_allows(role, s.context))
            .collect(),
        patient: row.try_get("patient")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        granted: scopes,
    }))
}

impl TokenInfo {
    pub fn access_context(
        &self,
        address: Option<IpAddr>,
        purpose_of_use: Option<String>,
    ) -> AccessContext {
        AccessContext {
            principal: self.subject.clone(),
            role: self.role,
            scopes: self.scopes.clone(),
            patient: self.patient.clone(),
            purpose_of_use,
            btg_reason: None,
            address,
            client: self.client_id.clone(),
            plan: Default::default(),
        }
    }
}

/// Why an introspection request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    /// The caller is neither an administrator nor a client registered to introspect.
    #[error("introspection is for administrators and clients registered for it")]
    Forbidden,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// RFC 7662: what `token` says about its holder, for a `caller` allowed to ask — an administrator
/// signed in at the console (a token bound to no client: an app an administrator signed in to does
/// not inherit this), or a backend client registered with `introspect`. Anyone else learns nothing,
/// not even whether the token is active. `Ok(None)` is an inactive token.
pub async fn introspect(
    pool: &Db,
    now: DateTime<Utc>,
    caller: &TokenInfo,
    token: &str,
) -> Result<Option<TokenInfo>, IntrospectError> {
    let allowed = match caller.role {
        Role::Admin => caller.client_id.is_none(),
        Role::System => sqlx::query_scalar::<_, bool>(
            "SELECT introspect FROM clients
              WHERE client_id = $1 AND kind = 'backend' AND NOT disabled",
        )
        .bind(&caller.subject)
        .fetch_optional(pool)
        .await?
        .unwrap_or(false),
        _ => false,
    };
    if !allowed {
        return Err(IntrospectError::Forbidden);
    }
    Ok(lookup(pool, now, token).await?)
}

/// Revoke a token (RFC 7009): takes effect on the next request. Unknown tokens are not an error.
/// A refresh token ends with its whole family (every token rotated from the same sign-in).
pub async fn revoke(pool: &Db, now: DateTime<Utc>, token: &str) -> Result<(), sqlx::Error> {
    let hash = sha256(token.as_bytes());
    for sql in [
        "UPDATE access_tokens SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
        "UPDATE refresh_tokens SET revoked_at = $2
          WHERE revoked_at IS NULL
            AND family = (SELECT family FROM refresh_tokens WHERE token_hash = $1)",
    ] {
        sqlx::query(sql).bind(&hash).bind(now).execute(pool).await?;
    }
    Ok(())
}

/// An active token or browser session as the console lists it; `id` is a prefix of its hash, never
/// the secret itself.
#[derive(Debug, Clone)]
pub struct ActiveToken {
    pub id: String,
    /// `token` (API access token) or `browser` (sign-in session).
    pub kind: String,
    pub subject: String,
    pub role: String,
    pub issued_at: DateTime<Utc>,
    /// When it ends if unused: expiry for tokens, idle cut-off for browser sessions.
    pub expires_at: DateTime<Utc>,
}

pub async fn active_tokens(
    pool: &Db,
    now: DateTime<Utc>,
    subject: Option<&str>,
    sessions: &crate::identity::authorize::SessionPolicy,
) -> Result<Vec<ActiveToken>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT encode(substring(t.token_hash from 1 for 8), 'hex') AS id, 'token' AS kind,
                t.subject, t.role, t.issued_at, t.expires_at
           FROM access_tokens t
          WHERE {LIVE_TOKEN} AND ($2::text IS NULL OR t.subject = $2)
         UNION ALL
         SELECT encode(substring(s.token_hash from 1 for 8), 'hex'), 'browser', u.username, u.role,
                s.created_at, LEAST(s.last_seen + $3::interval, s.created_at + $4::interval)
           FROM web_sessions s JOIN users u ON u.id = s.user_id
          WHERE s.revoked_at IS NULL AND ($2::text IS NULL OR u.username = $2)
            AND s.last_seen > $1 - $3::interval AND s.created_at > $1 - $4::interval
          ORDER BY issued_at"
    ))
    .bind(now)
    .bind(subject)
    .bind(format!("{} seconds", sessions.idle.num_seconds()))
    .bind(format!("{} seconds", sessions.absolute.num_seconds()))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ActiveToken {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                subject: r.try_get("subject")?,
                role: r.try_get("role")?,
                issued_at: r.try_get("issued_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}

/// Revoke every active token, refresh token and browser session of a subject (user or client), or
/// the one token or session whose id is `target`. Returns how many were revoked.
pub(crate) async fn revoke_matching(
    conn: &mut sqlx::PgConnection,
    now: DateTime<Utc>,
    target: &str,
) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for sql in [
        "UPDATE access_tokens SET revoked_at = $2
          WHERE revoked_at IS NULL
            AND (subject = $1 OR encode(substring(token_hash from 1 for 8), 'hex') = $1)",
        "UPDATE web_sessions SET revoked_at = $2
          WHERE revoked_at IS NULL
            AND (user_id = (SELECT id FROM users WHERE username = $1)
                 OR encode(substring(token_hash from 1 for 8), 'hex') = $1)",
        "UPDATE refresh_tokens SET revoked_at = $2
          WHERE revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE username = $1)",
    ] {
        n += sqlx::query(sql)
            .bind(target)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_scopes_cover_narrower_requests_only() {
        let p = |s: &str| Scope::parse(s).unwrap();
        assert!(covers(&p("system/*.rs"), &p("system/Observation.rs")));
        assert!(covers(&p("system/*.cruds"), &p("system/Patient.r")));
        assert!(!covers(&p("system/*.rs"), &p("system/Patient.c")));
        assert!(!covers(&p("system/Observation.rs"), &p("system/*.rs")));
        assert!(!covers(
            &p("system/Observation.rs"),
            &p("system/Patient.rs")
        ));
    }
}

/// The access tokens this process has verified, so that a request with a token seen before
/// makes no database query for it. Correct only while this process hears every change that could
/// end a token's life: the database tells (migration 0020: a NOTIFY on `carapace_tokens` from
/// triggers on `access_tokens`, `refresh_tokens` and `clients`, whoever changes them), and
/// [`crate::db::follow_changes`] forgets everything when told — and, while it is not listening (not yet
/// connected, or the connection lost), the cache is off: every lookup goes to the database.
/// An entry also ends with its token's expiry and after [`TokenCache::MAX_AGE`] at most.
///
/// Hand-written: a map behind a mutex is all it takes (moka or quick_cache would add eviction
/// policies this does not need: a full cache is simply emptied, and refilled by the next lookups).
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (TokenInfo, std::time::Instant)>>,
    /// Whether the listener is subscribed: entries are used and kept only then.
    listening: std::sync::atomic::AtomicBool,
    /// Bumped by every forgetting: a lookup that began before one does not keep its answer.
    generation: std::sync::atomic::AtomicU64,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    /// An entry is looked up again after this long, told or not.
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);
    /// Past this many entries the cache is emptied (tokens are 5-minute ones: a burst of new
    /// clients costs one query each, as without a cache).
    pub const MAX_ENTRIES: usize = 100_000;
    /// The channel migration 0020's triggers notify.
    pub const CHANNEL: &'static str = "carapace_tokens";

    /// [`lookup`], answered from memory when this process verified the token before and has
    /// heard of no change since.
    pub async fn lookup(
        &self,
        pool: &Db,
        now: DateTime<Utc>,
        token: &str,
    ) -> Result<Option<TokenInfo>, sqlx::Error> {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let hash = sha256(token.as_bytes());
        if self.listening.load(SeqCst) {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((info, at)) = entries.get(&hash) {
                if info.expires_at > now && at.elapsed() < Self::MAX_AGE {
                    self.hits.fetch_add(1, Relaxed);
                    return Ok(Some(info.clone()));
                }
            }
        }
        self.misses.fetch_add(1, Relaxed);
        let generation = self.generation.load(SeqCst);
        let info = lookup(pool, now, token).await?;
        if let Some(info) = &info {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            // Kept only if nothing was forgotten while the database answered.
            if self.listening.load(SeqCst) && self.generation.load(SeqCst) == generation {
                if entries.len() >= Self::MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(hash, (info.clone(), std::time::Instant::now()));
            }
        }
        Ok(info)
    }

    /// Forget every entry (a token may have ended).
    pub fn forget_all(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.clear();
    }

    /// Lookups answered from memory, and from the database.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Whether entries are in use (the listener is subscribed).
    pub fn is_listening(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl crate::db::Forgets for TokenCache {
    fn forget_all(&self) {
        TokenCache::forget_all(self);
    }

    fn set_listening(&self, on: bool) {
        self.listening
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}
