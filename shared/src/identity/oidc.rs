//! OpenID Connect for SMART apps (`openid fhirUser`): the signed `id_token` of a token response
//! and the key set that verifies it. Signed ES256 by the key provider (`crypto::signing`): under
//! Vault the private key never leaves Vault transit.

use crate::crypto::keys::{KeyError, KeyProvider};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// How long an id_token may be presented (it asserts a sign-in, it grants nothing).
pub const ID_TOKEN_SECONDS: i64 = 300;

/// Where this server answers as an OpenID provider.
#[derive(Debug, Clone, Copy)]
pub struct Issuer<'a> {
    /// The `iss` of every id_token: the server's origin, where `/auth/*` and
    /// `/.well-known/openid-configuration` are.
    pub issuer: &'a str,
    /// The FHIR base, which `fhirUser` URLs are under.
    pub fhir_base: &'a str,
}

/// What an id_token says.
#[derive(Debug, Clone)]
pub struct IdClaims<'a> {
    pub subject: &'a str,
    pub client_id: &'a str,
    /// `Patient/<id>` or `Practitioner/<id>`, relative: made absolute under the FHIR base.
    pub fhir_user: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Sign an id_token (OIDC Core §2: iss, sub, aud, exp, iat, and nonce when the request had one;
/// SMART's `fhirUser` when the `fhirUser` scope was granted and the user has a FHIR resource).
pub async fn id_token(
    keys: &KeyProvider,
    issuer: Issuer<'_>,
    claims: &IdClaims<'_>,
) -> Result<String, KeyError> {
    let key = keys.current_signing_key().await?;
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.kid});
    let iat = claims.now.timestamp();
    let mut body = json!({
        "iss": issuer.issuer,
        "sub": claims.subject,
        "aud": claims.client_id,
        "iat": iat,
        "exp": iat + ID_TOKEN_SECONDS,
    });
    if let Some(nonce) = claims.nonce {
        body["nonce"] = json!(nonce);
    }
    if let Some(user) = claims.fhir_user {
        body["fhirUser"] = json!(format!("{}/{user}", issuer.fhir_base));
    }
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(body.to_string())
    );
    let signature = keys.sign_es256(&key.kid, input.as_bytes()).await?;
    Ok(format!("{input}.{}", B64URL.encode(signature)))
}

/// The JSON Web Key Set of `/auth/jwks`.
pub async fn jwks(keys: &KeyProvider) -> Result<Value, KeyError> {
    let keys: Vec<Value> = keys
        .signing_keys()
        .await?
        .iter()
        .map(|k| k.to_json())
        .collect();
    Ok(json!({ "keys": keys }))
}

/// `/.well-known/openid-configuration`: the provider metadata OIDC Discovery requires, for
/// exactly what this server does.
pub fn configuration(issuer: Issuer<'_>) -> Value {
    let origin = issuer.issuer;
    json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/auth/authorize"),
        "token_endpoint": format!("{origin}/auth/token"),
        "jwks_uri": format!("{origin}/auth/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "fhirUser"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
    })
}
