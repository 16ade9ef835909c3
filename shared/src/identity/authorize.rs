//! The SMART App Launch authorization-code flow for user apps: registered app clients with exact
//! redirect URIs, browser sign-in sessions (idle and absolute timeouts, rotated at sign-in), PKCE
//! (`S256` only), single-use authorization codes, and refresh tokens that rotate on use (a reused one
//! revokes its whole family).

use crate::access::{role_allows, Context, Role, Scope};
use crate::crypto::sha256;
use crate::db::Db;
use crate::identity::oidc::{self, Issuer};
use crate::identity::tokens::{self, IssuedToken, OAuthError};
use crate::identity::users::{self, User};
use crate::store::Store;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sqlx::Row;

/// How long a browser sign-in lasts (`CARAPACE_SESSION_IDLE_MINUTES`, default 15;
/// `CARAPACE_SESSION_MAX_HOURS`, default 8).
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub absolute: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle: Duration::minutes(15),
            absolute: Duration::hours(8),
        }
    }
}
const CODE_SECONDS: i64 = 60;
const REFRESH_HOURS: i64 = 12;
/// However often it rotates, a refresh-token family ends this long after the sign-in.
const REFRESH_FAMILY_DAYS: i64 = 7;

/// Non-resource scopes an app may ask for.
pub(super) const OTHER_SCOPES: &[&str] = &[
    "launch",
    "launch/patient",
    "openid",
    "fhirUser",
    "offline_access",
    "online_access",
];

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    B64URL.encode(raw)
}

/// https anywhere, or plain http only to a loopback host (compared exactly, so
/// `http://localhost.evil.example/` is not loopback); no fragment, no whitespace, no user info.
pub(super) fn redirect_uri_allowed(uri: &str) -> bool {
    if uri.contains('#') || uri.contains(char::is_whitespace) {
        return false;
    }
    let (scheme, rest) = match uri.split_once("://") {
        Some(parts) => parts,
        None => return false,
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        }),
    };
    match scheme {
        "https" => !host.is_empty(),
        "http" => matches!(host, "127.0.0.1" | "localhost" | "::1"),
        _ => false,
    }
}

/// A valid `/auth/authorize` request.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub state: String,
    pub code_challenge: String,
    /// Requested scopes the client is registered for.
    pub scopes: Vec<String>,
    /// OpenID Connect's `nonce`, echoed in the id_token.
    pub nonce: Option<String>,
    /// An EHR launch id ([`crate::identity::launch`]), with the `launch` scope.
    pub launch: Option<String>,
}

/// Why an authorization request failed. Only errors found after the client and redirect URI are
/// known to be good may be sent back to the redirect URI; the others are shown to the user.
#[derive(Debug, Clone)]
pub enum AuthorizeError {
    /// Unknown client or redirect URI mismatch: never redirect.
    Show(String),
    Redirect {
        redirect_uri: String,
        state: String,
        error: &'static str,
        description: String,
    },
}

/// Check an authorization request (`params` is its query) for the FHIR server `aud`.
pub async fn validate(
    pool: &Db,
    aud: &str,
    params: &[(String, String)],
) -> Result<AuthorizeRequest, AuthorizeError> {
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let client_id =
        field("client_id").ok_or_else(|| AuthorizeError::Show("client_id is missing".into()))?;
    let row = sqlx::query(
        "SELECT name, redirect_uris, scopes FROM clients WHERE client_id = $1 AND kind = 'app' AND NOT disabled",
    )
    .bind(&client_id)
    .fetch_optional(pool)
    .await
    .map_err(|_| AuthorizeError::Show("the authorization service is unavailable".into()))?
    .ok_or_else(|| AuthorizeError::Show("unknown application".into()))?;
    let registered_uris: Vec<String> = row.try_get("redirect_uris").unwrap_or_default();
    let redirect_uri = field("redirect_uri")
        .ok_or_else(|| AuthorizeError::Show("redirect_uri is missing".into()))?;
    // Exact match only: no prefix, no normalisation.
    if !registered_uris.iter().any(|u| u == &redirect_uri) {
        return Err(AuthorizeError::Show(
            "redirect_uri does not match the application's registration".into(),
        ));
    }
    let state = field("state").unwrap_or_default();
    let fail = |error: &'static str, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description: description.to_string(),
    };
    if field("response_type").as_deref() != Some("code") {
        return Err(fail(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    if state.is_empty() {
        return Err(fail("invalid_request", "state is required"));
    }
    match field("code_challenge_method").as_deref() {
        Some("S256") => {}
        Some("plain") => {
            return Err(fail(
                "invalid_request",
                "PKCE plain is not allowed; use S256",
            ))
        }
        _ => {
            return Err(fail(
                "invalid_request",
                "code_challenge_method must be S256",
            ))
        }
    }
    let code_challenge = field("code_challenge").unwrap_or_default();
    if code_challenge.len() != 43 || B64URL.decode(&code_challenge).is_err() {
        return Err(fail(
            "invalid_request",
            "code_challenge must be a base64url SHA-256",
        ));
    }
    if field("aud").as_deref().map(|a| a.trim_end_matches('/')) != Some(aud) {
        return Err(fail(
            "invalid_request",
            "aud must be this FHIR server's base URL",
        ));
    }
    let registered: Vec<String> = row.try_get("scopes").unwrap_or_default();
    let scopes: Vec<String> = field("scope")
        .unwrap_or_default()
        .split_whitespace()
        .filter(|s| registered.iter().any(|r| r == s))
        .map(str::to_string)
        .collect();
    let nonce = field("nonce").filter(|n| !n.is_empty());
    if nonce.as_ref().is_some_and(|n| n.len() > 512) {
        return Err(fail(
            "invalid_request",
            "nonce is longer than 512 characters",
        ));
    }
    let launch = field("launch").filter(|l| !l.is_empty());
    if launch.is_some() && !scopes.iter().any(|s| s == "launch") {
        return Err(fail(
            "invalid_scope",
            "an EHR launch needs the launch scope, registered for this application",
        ));
    }
    if !scopes.iter().any(|s| Scope::parse(s).is_ok()) {
        return Err(fail(
            "invalid_scope",
            "no requested resource scope is registered for this application",
        ));
    }
    Ok(AuthorizeRequest {
        client_id,
        client_name: row.try_get("name").unwrap_or_default(),
        redirect_uri,
        state,
        code_challenge,
        scopes,
        nonce,
        launch,
    })
}

/// What a signed-in user's consent leads to.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Issue a code for these resource scopes and launch context.
    Grant {
        scopes: Vec<Scope>,
        patient: Option<String>,
        /// The EHR launch's encounter.
        encounter: Option<String>,
    },
    /// A practitioner asked for `launch/patient` without a launch: they choose the patient first
    /// ([`crate::identity::picker`]).
    ChoosePatient,
}

/// Why a consent cannot lead to a code: sent to the app as `invalid_scope` (or, when the store
/// could not answer, `server_error`).
#[derive(Debug, Clone)]
pub enum Refusal {
    Scope(String),
    Unavailable,
}

/// What a signed-in user is granted of a request: resource scopes their role allows, and the
/// launch patient — a patient user's own, or for a practitioner the one `chosen` in the picker,
/// which must be a patient the gate lets them read. With a patient, every scope of the token is
/// narrowed to that patient's compartment.
pub async fn decide(
    store: &Store,
    user: &User,
    request: &AuthorizeRequest,
    chosen: Option<&str>,
) -> Result<Decision, Refusal> {
    let refuse = |why: &str| Err(Refusal::Scope(why.to_string()));
    let wants_patient = request.scopes.iter().any(|s| s == "launch/patient");
    // An EHR launch brings its patient: no picker. Redeemed here, once, when the user allows.
    let launched = match (&request.launch, user.role) {
        (None, _) => None,
        (Some(launch), Role::Practitioner) => {
            match crate::identity::launch::redeem(store, launch).await {
                Ok(Some(context)) => Some(context),
                Ok(None) => return refuse("the launch is unknown, used or expired"),
                Err(e) => {
                    tracing::error!(error = %e, "a launch could not be redeemed");
                    return Err(Refusal::Unavailable);
                }
            }
        }
        (Some(_), _) => return refuse("an EHR launch is for practitioners"),
    };
    let chosen = launched.as_ref().map(|l| l.patient.as_str()).or(chosen);
    let patient = match (
        wants_patient || launched.is_some(),
        user.role,
        &user.patient_id,
    ) {
        (false, _, _) => None,
        (true, Role::Patient, Some(p)) => Some(p.clone()),
        (true, Role::Practitioner, _) => match chosen {
            None => return Ok(Decision::ChoosePatient),
            // The gate decides a launch's patient as it does a picked one.
            Some(id) => match crate::identity::picker::may_choose(store, user, id).await {
                Ok(true) => Some(id.to_string()),
                Ok(false) => return refuse("that patient is not one this user may see"),
                Err(e) => {
                    tracing::error!(error = %e, "the patient picker could not check a choice");
                    return Err(Refusal::Unavailable);
                }
            },
        },
        (true, _, _) => return refuse("launch/patient needs a patient or practitioner user"),
    };
    let scopes: Vec<Scope> = request
        .scopes
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .filter(|s| role_allows(user.role, s.context))
        // Patient scopes mean nothing without a launch patient.
        .filter(|s| s.context != Context::Patient || patient.is_some())
        .collect();
    if user.role == Role::Patient && patient.is_none() {
        return refuse("a patient signs in to apps with launch/patient");
    }
    if scopes.is_empty() {
        return refuse("none of the requested scopes fits this user's role");
    }
    Ok(Decision::Grant {
        scopes,
        patient,
        encounter: launched.and_then(|l| l.encounter),
    })
}

/// Issue a single-use authorization code (60 s).
pub async fn issue_code(
    store: &Store,
    request: &AuthorizeRequest,
    user_id: i64,
    scopes: &[Scope],
    patient: Option<&str>,
    encounter: Option<&str>,
) -> Result<String, sqlx::Error> {
    let code = random_token();
    let mut scopes: Vec<String> = scopes.iter().map(Scope::to_string).collect();
    // Refresh tokens only for apps that asked for them; the marker rides along with the grant.
    if request
        .scopes
        .iter()
        .any(|s| s == "offline_access" || s == "online_access")
    {
        scopes.push("offline_access".into());
    }
    // OpenID Connect, and the launch context granted: markers too, answered in `scope`.
    for marker in ["openid", "fhirUser"] {
        if request.scopes.iter().any(|s| s == marker) {
            scopes.push(marker.into());
        }
    }
    if patient.is_some() {
        for marker in ["launch", "launch/patient"] {
            if request.scopes.iter().any(|s| s == marker) {
                scopes.push(marker.into());
            }
        }
    }
    sqlx::query(
        "INSERT INTO authorization_codes
           (code_hash, client_id, user_id, redirect_uri, code_challenge, scopes, patient, expires_at,
            nonce, encounter)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(sha256(code.as_bytes()))
    .bind(&request.client_id)
    .bind(user_id)
    .bind(&request.redirect_uri)
    .bind(&request.code_challenge)
    .bind(&scopes)
    .bind(patient)
    .bind(store.now() + Duration::seconds(CODE_SECONDS))
    .bind(&request.nonce)
    .bind(encounter)
    .execute(store.pool())
    .await?;
    Ok(code)
}

/// A disabled app gets no tokens, whatever codes or refresh tokens it still holds.
async fn ensure_client_active(pool: &Db, client_id: &str) -> Result<(), OAuthError> {
    let active: Option<bool> =
        sqlx::query_scalar("SELECT NOT disabled FROM clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(pool)
            .await
            .map_err(OAuthError::server)?;
    if active == Some(true) {
        Ok(())
    } else {
        Err(OAuthError::new(
            400,
            "invalid_grant",
            "the application is disabled",
        ))
    }
}

fn s256(verifier: &str) -> String {
    B64URL.encode(sha256(verifier.as_bytes()))
}

async fn user_row(pool: &Db, user_id: i64) -> Result<(String, Role), OAuthError> {
    let row = sqlx::query("SELECT username, role, admin_locked FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .map_err(OAuthError::server)?;
    if row
        .try_get::<bool, _>("admin_locked")
        .map_err(OAuthError::server)?
    {
        return Err(OAuthError::new(
            400,
            "invalid_grant",
            "the account is locked",
        ));
    }
    let role: String = row.try_get("role").map_err(OAuthError::server)?;
    Ok((
        row.try_get("username").map_err(OAuthError::server)?,
        Role::parse(&role).ok_or_else(|| OAuthError::new(400, "invalid_grant", "unknown role"))?,
    ))
}

/// `grant_type=authorization_code`: redeem a code once, with the PKCE verifier and the same
/// redirect URI.
pub async fn exchange_code(
    store: &Store,
    issuer: Issuer<'_>,
    form: &[(String, String)],
) -> Result<IssuedToken, OAuthError> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let invalid_grant = |d: &str| OAuthError::new(400, "invalid_grant", d);
    let code = field("code").ok_or_else(|| invalid_grant("code is missing"))?;
    let verifier =
        field("code_verifier").ok_or_else(|| invalid_grant("code_verifier is missing"))?;
    let now = store.now();
    let mut tx = store.pool().begin().await.map_err(OAuthError::server)?;
    // Consumed even when the rest fails: a code is tried once.
    let row = sqlx::query(
        "UPDATE authorization_codes SET used_at = $2
          WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
          RETURNING client_id, user_id, redirect_uri, code_challenge, scopes, patient, nonce,
                    encounter",
    )
    .bind(sha256(code.as_bytes()))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(OAuthError::server)?;
    tx.commit().await.map_err(OAuthError::server)?;
    let row = row.ok_or_else(|| invalid_grant("the code is unknown, used or expired"))?;
    let get = |name: &str| -> Result<String, OAuthError> {
        row.try_get(name).map_err(OAuthError::server)
    };
    if field("client_id") != Some(get("client_id")?.as_str()) {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if field("redirect_uri") != Some(get("redirect_uri")?.as_str()) {
        return Err(invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    if s256(verifier) != get("code_challenge")? {
        return Err(invalid_grant("the PKCE code_verifier does not match"));
    }
    let user_id: i64 = row.try_get("user_id").map_err(OAuthError::server)?;
    let scopes: Vec<String> = row.try_get("scopes").map_err(OAuthError::server)?;
    let patient: Option<String> = row.try_get("patient").map_err(OAuthError::server)?;
    let nonce: Option<String> = row.try_get("nonce").map_err(OAuthError::server)?;
    let encounter: Option<String> = row.try_get("encounter").map_err(OAuthError::server)?;
    let client_id = get("client_id")?;
    ensure_client_active(store.pool(), &client_id).await?;
    tokens_for(
        store,
        issuer,
        &client_id,
        user_id,
        Granted {
            scopes: &scopes,
            access: &scopes,
            patient: patient.as_deref(),
            encounter: encounter.as_deref(),
            nonce: nonce.as_deref(),
        },
        (uuid::Uuid::new_v4(), store.now()),
    )
    .await
}

/// What a code or refresh token carries into the tokens it is traded for.
struct Granted<'a> {
    /// Everything granted at sign-in (resource scopes and markers), kept by the refresh token.
    scopes: &'a [String],
    /// What this access token gets: `scopes`, or fewer when a refresh asked for fewer.
    access: &'a [String],
    patient: Option<&'a str>,
    encounter: Option<&'a str>,
    nonce: Option<&'a str>,
}

/// The markers that are answered in a token response's `scope` besides its resource scopes.
const ANSWERED_MARKERS: &[&str] = &[
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
];

async fn tokens_for(
    store: &Store,
    issuer: Issuer<'_>,
    client_id: &str,
    user_id: i64,
    granted: Granted<'_>,
    (family, family_started): (uuid::Uuid, DateTime<Utc>),
) -> Result<IssuedToken, OAuthError> {
    let Granted {
        scopes,
        access,
        patient,
        encounter,
        nonce,
    } = granted;
    let (username, role) = user_row(store.pool(), user_id).await?;
    let parsed: Vec<Scope> = access
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .filter(|s| role_allows(role, s.context))
        .collect();
    let now = store.now();
    // Bound to the app and the family: disabling the app, or a replay that revokes the family,
    // ends this access token too, not only the refresh tokens.
    let markers: Vec<&str> = ANSWERED_MARKERS
        .iter()
        .copied()
        .filter(|m| access.iter().any(|s| s == m))
        .collect();
    let binding = tokens::Binding {
        client_id: Some(client_id),
        refresh_family: Some(family),
        markers: &markers,
    };
    let mut issued = tokens::issue_bound(
        store.pool(),
        now,
        &username,
        role,
        &parsed,
        patient,
        binding,
    )
    .await
    .map_err(OAuthError::server)?;
    issued.encounter = encounter.map(str::to_string);
    if access.iter().any(|s| s == "openid") {
        let user = users::find(store, &username)
            .await
            .map_err(|_| OAuthError::new(400, "invalid_grant", "the user is gone"))?;
        let link = user.link();
        let claims = oidc::IdClaims {
            subject: &username,
            client_id,
            fhir_user: link
                .as_deref()
                .filter(|_| access.iter().any(|s| s == "fhirUser")),
            nonce,
            now,
        };
        issued.id_token = Some(
            oidc::id_token(store.keys(), issuer, &claims)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "could not sign an id_token");
                    OAuthError::new(
                        503,
                        "temporarily_unavailable",
                        "the id_token could not be signed; retry shortly",
                    )
                })?,
        );
    }
    if !scopes.iter().any(|s| s == "offline_access") {
        return Ok(issued);
    }
    let refresh = random_token();
    // Rotation never outlives the sign-in it came from by more than REFRESH_FAMILY_DAYS.
    let expires = (now + Duration::hours(REFRESH_HOURS))
        .min(family_started + Duration::days(REFRESH_FAMILY_DAYS));
    sqlx::query(
        "INSERT INTO refresh_tokens
           (token_hash, family, family_started, client_id, user_id, scopes, patient, expires_at,
            encounter)
         VALUES ($1, $2, $8, $3, $4, $5, $6, $7, $9)",
    )
    .bind(sha256(refresh.as_bytes()))
    .bind(family)
    .bind(client_id)
    .bind(user_id)
    .bind(scopes)
    .bind(patient)
    .bind(expires)
    .bind(family_started)
    .bind(encounter)
    .execute(store.pool())
    .await
    .map_err(OAuthError::server)?;
    issued.refresh_token = Some(refresh);
    Ok(issued)
}

/// `grant_type=refresh_token`: rotate. A refresh token works once; presenting a used one again
/// (theft or replay) revokes every token of its family.
pub async fn refresh(
    store: &Store,
    issuer: Issuer<'_>,
    form: &[(String, String)],
) -> Result<IssuedToken, OAuthError> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let invalid_grant = |d: &str| OAuthError::new(400, "invalid_grant", d);
    let token = field("refresh_token").ok_or_else(|| invalid_grant("refresh_token is missing"))?;
    let now = store.now();
    let hash = sha256(token.as_bytes());
    let row = sqlx::query(
        "SELECT family, family_started, client_id, user_id, scopes, patient, expires_at, used_at,
                revoked_at, encounter
           FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(store.pool())
    .await
    .map_err(OAuthError::server)?
    .ok_or_else(|| invalid_grant("unknown refresh token"))?;
    let family: uuid::Uuid = row.try_get("family").map_err(OAuthError::server)?;
    let family_started: DateTime<Utc> =
        row.try_get("family_started").map_err(OAuthError::server)?;
    let used: Option<DateTime<Utc>> = row.try_get("used_at").map_err(OAuthError::server)?;
    let revoked: Option<DateTime<Utc>> = row.try_get("revoked_at").map_err(OAuthError::server)?;
    if used.is_some() {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .bind(now)
        .execute(store.pool())
        .await
        .map_err(OAuthError::server)?;
        tracing::warn!("a rotated refresh token was presented again; its family is revoked");
        return Err(invalid_grant("the refresh token was already used"));
    }
    let expires: DateTime<Utc> = row.try_get("expires_at").map_err(OAuthError::server)?;
    if revoked.is_some() || expires <= now {
        return Err(invalid_grant("the refresh token is no longer valid"));
    }
    let client_id: String = row.try_get("client_id").map_err(OAuthError::server)?;
    if field("client_id") != Some(client_id.as_str()) {
        return Err(invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    ensure_client_active(store.pool(), &client_id).await?;
    let user_id: i64 = row.try_get("user_id").map_err(OAuthError::server)?;
    let scopes: Vec<String> = row.try_get("scopes").map_err(OAuthError::server)?;
    let patient: Option<String> = row.try_get("patient").map_err(OAuthError::server)?;
    let encounter: Option<String> = row.try_get("encounter").map_err(OAuthError::server)?;
    // Checked before the token is used up, so a refused narrowing can be asked again.
    let access = match field("scope") {
        None => scopes.clone(),
        Some(asked) => narrowed(&scopes, asked)?,
    };
    let claimed = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
    )
    .bind(&hash)
    .bind(now)
    .execute(store.pool())
    .await
    .map_err(OAuthError::server)?
    .rows_affected();
    if claimed != 1 {
        return Err(invalid_grant("the refresh token was already used"));
    }
    tokens_for(
        store,
        issuer,
        &client_id,
        user_id,
        Granted {
            scopes: &scopes,
            access: &access,
            patient: patient.as_deref(),
            encounter: encounter.as_deref(),
            nonce: None,
        },
        (family, family_started),
    )
    .await
}

/// A refresh's `scope` (RFC 6749 §6): each asked scope must be within what was granted — a
/// resource scope covered by a granted one, a marker granted as such; anything wider is refused.
fn narrowed(granted: &[String], asked: &str) -> Result<Vec<String>, OAuthError> {
    let wider = |s: &str| {
        OAuthError::new(
            400,
            "invalid_scope",
            format!(
                "'{}' was not granted; a refresh may only narrow the scopes",
                crate::fhir::printable(s)
            ),
        )
    };
    let granted_scopes: Vec<Scope> = granted
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .collect();
    let mut out = Vec::new();
    for s in asked.split_whitespace() {
        match Scope::parse(s) {
            Ok(scope) if granted_scopes.iter().any(|g| tokens::covers(g, &scope)) => {
                out.push(scope.to_string())
            }
            Ok(_) => return Err(wider(s)),
            Err(_) if granted.iter().any(|g| g == s) => out.push(s.to_string()),
            Err(_) => return Err(wider(s)),
        }
    }
    if !out.iter().any(|s| Scope::parse(s).is_ok()) {
        return Err(OAuthError::new(
            400,
            "invalid_scope",
            "a refresh must keep at least one resource scope",
        ));
    }
    Ok(out)
}

/// A browser sign-in session.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub user: User,
    pub user_id: i64,
    /// The second factor is done (or not needed).
    pub verified: bool,
    pub csrf: String,
}

/// A fresh anti-forgery token: for the sign-in form, which has no session yet (the front sets it
/// in a cookie and in the form, and a POST must bring both).
pub fn new_csrf_token() -> String {
    random_token()
}

/// Does a form's anti-forgery token match the expected one? Constant time (`subtle`, the RustCrypto
/// crate made for this comparison), and an empty token never matches.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// A session just started: the cookie value and the anti-forgery token its forms carry.
#[derive(Debug, Clone)]
pub struct StartedSession {
    pub token: String,
    pub csrf: String,
}

/// Start a session (at sign-in: a fresh token every time).
pub async fn start_session(
    store: &Store,
    user_id: i64,
    verified: bool,
) -> Result<StartedSession, sqlx::Error> {
    let token = random_token();
    let csrf = random_token();
    let now = store.now();
    sqlx::query(
        "INSERT INTO web_sessions (token_hash, user_id, verified, csrf, created_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(sha256(token.as_bytes()))
    .bind(user_id)
    .bind(verified)
    .bind(&csrf)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(StartedSession { token, csrf })
}

/// The session behind a cookie, if it is still alive (idle and absolute timeouts); touches it.
pub async fn session(
    store: &Store,
    policy: &SessionPolicy,
    token: &str,
) -> Result<Option<WebSession>, sqlx::Error> {
    let now = store.now();
    let row = sqlx::query(
        "UPDATE web_sessions s SET last_seen = $2
           FROM users u
          WHERE s.token_hash = $1 AND u.id = s.user_id AND s.revoked_at IS NULL AND NOT u.admin_locked
            AND s.last_seen > $2 - $3::interval AND s.created_at > $2 - $4::interval
          RETURNING s.user_id, s.verified, s.csrf, u.username",
    )
    .bind(sha256(token.as_bytes()))
    .bind(now)
    .bind(format!("{} seconds", policy.idle.num_seconds()))
    .bind(format!("{} seconds", policy.absolute.num_seconds()))
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let username: String = row.try_get("username")?;
    let Ok(user) = users::find(store, &username).await else {
        return Ok(None);
    };
    Ok(Some(WebSession {
        user,
        user_id: row.try_get("user_id")?,
        verified: row.try_get("verified")?,
        csrf: row.try_get("csrf")?,
    }))
}

pub async fn end_session(store: &Store, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE web_sessions SET revoked_at = $2 WHERE token_hash = $1")
        .bind(sha256(token.as_bytes()))
        .bind(store.now())
        .execute(store.pool())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_or_exact_loopback() {
        for ok in [
            "https://portal.example/cb",
            "http://127.0.0.1:9/cb",
            "http://localhost/cb",
            "http://[::1]:8/x",
        ] {
            assert!(redirect_uri_allowed(ok), "{ok}");
        }
        for bad in [
            "http://localhost.evil.example/cb",
            "http://127.0.0.1.evil.example/",
            "http://evil.example/cb",
            "https://portal.example/cb#frag",
            "https://user@portal.example/",
            "javascript:alert(1)",
            "ftp://x/",
        ] {
            assert!(!redirect_uri_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
