//! The authorization server's HTTP endpoints: SMART configuration, token, revocation, introspection,
//! and turning a request's bearer token into an `AccessContext`.

use crate::outcome::{ApiError, HttpResponse};
use crate::AppState;
use bytes::Bytes;
use carapace_core::access::AccessContext;
use carapace_core::identity::tokens::{self, IntrospectError, OAuthError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use std::net::SocketAddr;

const FORM_LIMIT: usize = 64 * 1024;

/// Origin (scheme://host:port) of the FHIR base, where `/auth/*` lives.
pub fn origin(base: &str) -> &str {
    base.strip_suffix("/fhir").unwrap_or(base)
}

pub fn token_url(base: &str) -> String {
    format!("{}/auth/token", origin(base))
}

/// `GET /fhir/.well-known/smart-configuration`: exactly what this server supports.
pub fn smart_configuration(base: &str) -> HttpResponse {
    let origin = origin(base);
    let body = json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/auth/authorize"),
        "token_endpoint": format!("{origin}/auth/token"),
        "revocation_endpoint": format!("{origin}/auth/revoke"),
        "introspection_endpoint": format!("{origin}/auth/introspect"),
        "jwks_uri": format!("{origin}/auth/jwks"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient", "offline_access",
                             "online_access", "system/*.cruds", "system/*.rs", "user/*.cruds",
                             "user/*.rs", "patient/*.cruds", "patient/*.rs"],
        "response_types_supported": ["code"],
        "capabilities": ["client-confidential-asymmetric", "client-public", "launch-ehr",
                         "launch-standalone", "context-ehr-patient", "context-ehr-encounter",
                         "context-standalone-patient", "context-banner", "sso-openid-connect",
                         "permission-patient", "permission-user", "permission-offline",
                         "permission-v1", "permission-v2"],
    });
    json_response(StatusCode::OK, &body)
}

/// The CapabilityStatement's `rest.security`: SMART on FHIR, with the OAuth endpoints in the
/// `oauth-uris` extension (SMART App Launch 2.x).
pub fn capability_security(base: &str) -> serde_json::Value {
    let origin = origin(base);
    json!({
        "service": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "authorize", "valueUri": format!("{origin}/auth/authorize")},
                {"url": "token", "valueUri": format!("{origin}/auth/token")},
                {"url": "revoke", "valueUri": format!("{origin}/auth/revoke")},
                {"url": "introspect", "valueUri": format!("{origin}/auth/introspect")},
            ]
        }]
    })
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn oauth_error(e: &OAuthError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = json_response(
        status,
        &json!({"error": e.error, "error_description": e.description}),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert("Retry-After", hyper::header::HeaderValue::from_static("5"));
    }
    resp
}

/// RFC 6749's answer when the server cannot decide now (its database is away): retry.
fn temporarily_unavailable() -> HttpResponse {
    oauth_error(&OAuthError {
        status: 503,
        error: "temporarily_unavailable",
        description: "the server cannot check tokens right now; retry shortly".into(),
    })
}

pub async fn read_form(
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Vec<(String, String)>, OAuthError> {
    let form_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let bad = |d: &str| OAuthError {
        status: 400,
        error: "invalid_request",
        description: d.to_string(),
    };
    if !form_type {
        return Err(bad("send application/x-www-form-urlencoded"));
    }
    let bytes = crate::fhir::intake::read_limited(body, FORM_LIMIT, None)
        .await
        .map_err(|_| bad("the request body could not be read"))?
        .ok_or_else(|| bad("the form is too large"))?;
    Ok(form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// Where this server answers as an OpenID provider.
pub fn issuer(base: &str) -> carapace_core::identity::oidc::Issuer<'_> {
    carapace_core::identity::oidc::Issuer {
        issuer: origin(base),
        fhir_base: base,
    }
}

/// `GET /.well-known/openid-configuration` (at the origin and at the FHIR base).
pub fn openid_configuration(base: &str) -> HttpResponse {
    json_response(
        StatusCode::OK,
        &carapace_core::identity::oidc::configuration(issuer(base)),
    )
}

/// `GET /auth/jwks`: the public keys that verify id_tokens.
async fn jwks(state: &AppState) -> HttpResponse {
    match carapace_core::identity::oidc::jwks(state.store.keys()).await {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            tracing::error!(error = %e, "the signing keys could not be read");
            temporarily_unavailable()
        }
    }
}

/// `POST /auth/token`, `/auth/revoke`, `/auth/introspect`; `GET /auth/jwks`.
pub async fn handle(state: &AppState, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let path = req.uri().path().to_string();
    if path == "/auth/jwks" && req.method() == hyper::Method::GET {
        return jwks(state).await;
    }
    if req.method() != hyper::Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "invalid_request", "error_description": "use POST"}),
        );
    }
    let (parts, body) = req.into_parts();
    let form = match read_form(&parts.headers, body).await {
        Ok(f) => f,
        Err(e) => return oauth_error(&e),
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let pool = state.store.pool();
    let clock = state.store.clock();
    match path.as_str() {
        "/auth/token" => {
            let result = match field("grant_type").as_deref() {
                Some("client_credentials") => {
                    tokens::client_credentials(pool, clock, &token_url(&state.base), &form).await
                }
                Some("authorization_code") => {
                    carapace_core::identity::authorize::exchange_code(
                        &state.store,
                        issuer(&state.base),
                        &form,
                    )
                    .await
                }
                Some("refresh_token") => {
                    carapace_core::identity::authorize::refresh(
                        &state.store,
                        issuer(&state.base),
                        &form,
                    )
                    .await
                }
                _ => Err(OAuthError {
                    status: 400,
                    error: "unsupported_grant_type",
                    description: "supported: client_credentials, authorization_code, refresh_token"
                        .into(),
                }),
            };
            match result {
                Ok(t) => {
                    tracing::info!(peer = %peer.ip(), "access token issued");
                    audit_token(state, &t.subject, peer, true).await;
                    let mut body = json!({"access_token": t.access_token, "token_type": "bearer",
                                          "expires_in": t.expires_in, "scope": t.scope});
                    if let Some(r) = t.refresh_token {
                        body["refresh_token"] = json!(r);
                    }
                    if let Some(p) = t.patient {
                        body["patient"] = json!(p);
                        // Nothing of Carapace shows the patient beside the app: it must.
                        body["need_patient_banner"] = json!(true);
                    }
                    if let Some(e) = t.encounter {
                        body["encounter"] = json!(e);
                    }
                    if let Some(id) = t.id_token {
                        body["id_token"] = json!(id);
                    }
                    json_response(StatusCode::OK, &body)
                }
                Err(e) => {
                    tracing::info!(peer = %peer.ip(), error = e.error, "token request refused");
                    audit_token(
                        state,
                        field("client_id").as_deref().unwrap_or("unknown"),
                        peer,
                        false,
                    )
                    .await;
                    oauth_error(&e)
                }
            }
        }
        "/auth/revoke" => {
            if let Some(token) = field("token") {
                if let Err(e) = tokens::revoke(pool, clock.now(), &token).await {
                    return oauth_error(&OAuthError {
                        status: 503,
                        error: "temporarily_unavailable",
                        description: {
                            tracing::error!(error = %e, "revocation failed");
                            "try again".into()
                        },
                    });
                }
            }
            json_response(StatusCode::OK, &json!({}))
        }
        "/auth/introspect" => {
            // RFC 7662 §2.1: the endpoint is protected; who may use it is the core's rule.
            let caller = match bearer(state, &parts.headers).await {
                Ok(Some(caller)) => caller,
                Ok(None) => {
                    return oauth_error(&OAuthError::new(
                        401,
                        "invalid_token",
                        "introspection needs an administrator's or a registered client's token",
                    ))
                }
                Err(e) => {
                    tracing::warn!(message = %e.message, "introspection: caller not checked");
                    return temporarily_unavailable();
                }
            };
            let token = field("token").unwrap_or_default();
            let info = match tokens::introspect(pool, clock.now(), &caller, &token).await {
                Ok(info) => info,
                Err(IntrospectError::Forbidden) => {
                    return oauth_error(&OAuthError::new(
                        403,
                        "insufficient_scope",
                        "introspection is for administrators and for clients registered with --introspect",
                    ))
                }
                Err(IntrospectError::Database(e)) => {
                    tracing::error!(error = %e, "introspection failed");
                    return oauth_error(&OAuthError::new(
                        503,
                        "temporarily_unavailable",
                        "try again",
                    ));
                }
            };
            let body = match info {
                None => json!({"active": false}),
                Some(i) => {
                    // SMART's introspection: the resource scopes still honoured, the other
                    // scopes granted, and fhirUser when `fhirUser` was granted.
                    let mut scope: Vec<String> = i.scopes.iter().map(|s| s.to_string()).collect();
                    scope.extend(
                        i.granted
                            .iter()
                            .filter(|s| !carapace_core::access::is_resource_scope(s))
                            .cloned(),
                    );
                    let fhir_user = if i.granted.iter().any(|s| s == "fhirUser") {
                        carapace_core::identity::users::find(&state.store, &i.subject)
                            .await
                            .ok()
                            .and_then(|u| u.link())
                            .map(|link| format!("{}/{link}", state.base))
                    } else {
                        None
                    };
                    let mut body = json!({
                        "active": true,
                        "sub": i.subject,
                        "scope": scope.join(" "),
                        "iat": i.issued_at.timestamp(),
                        "exp": i.expires_at.timestamp(),
                        "token_type": "bearer",
                    });
                    if let Some(client) = i.client_id {
                        body["client_id"] = json!(client);
                    }
                    if let Some(p) = i.patient {
                        body["patient"] = json!(p);
                    }
                    if let Some(user) = fhir_user {
                        body["fhirUser"] = json!(user);
                    }
                    body
                }
            };
            json_response(StatusCode::OK, &body)
        }
        _ => ApiError::not_found("no such endpoint").into_response(),
    }
}

/// Token issuance and refusals are audited with the client or user as agent.
async fn audit_token(state: &AppState, subject: &str, peer: SocketAddr, success: bool) {
    let mut ctx = AccessContext::operator(&carapace_core::fhir::printable(subject));
    ctx.role = carapace_core::access::Role::System;
    ctx.address = Some(peer.ip());
    if let Err(e) = state.store.record_admin(&ctx, "token-issue", success).await {
        tracing::error!(error = %e, "could not audit a token request");
    }
}

/// The verified token behind `Authorization: Bearer ...`: `Ok(None)` if there is none or it is not
/// valid (401), `Err` (503) if the database could not say, so a valid token is never called invalid.
pub async fn bearer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<tokens::TokenInfo>, ApiError> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    state
        .tokens
        .lookup(state.store.pool(), state.store.now(), token.trim())
        .await
        .map_err(crate::outcome::token_lookup_failed)
}

/// The access context of a FHIR request, or the 401 that tells the client how to authenticate.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<AccessContext, ApiError> {
    match bearer(state, headers).await? {
        Some(info) => {
            // The caller's rate limit: here, where every request with a verified token passes.
            state
                .limits
                .check_caller(info.client_id.as_deref(), &info.subject)?;
            let (purpose, reason) = purpose_of_use(headers)?;
            let mut ctx = info.access_context(Some(peer.ip()), purpose);
            ctx.btg_reason = reason;
            Ok(ctx)
        }
        None => Err(ApiError {
            www_authenticate: Some(format!(
                "Bearer realm=\"carapace\", error=\"invalid_token\", authorization_uri=\"{}\"",
                token_url(&state.base)
            )),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "login",
                "a valid bearer access token is required (see /fhir/.well-known/smart-configuration)",
            )
        }),
    }
}

/// `X-Purpose-Of-Use` (a v3 PurposeOfUse code such as `TREAT` or `BTG`) and, for break-the-glass,
/// `X-Break-Glass-Reason` (free text, mandatory to open a break-the-glass grant).
fn purpose_of_use(headers: &HeaderMap) -> Result<(Option<String>, Option<String>), ApiError> {
    let purpose = match headers.get("x-purpose-of-use") {
        None => None,
        Some(v) => {
            let v = v.to_str().unwrap_or_default().trim();
            if v.is_empty()
                || v.len() > 20
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                return Err(ApiError::bad_request(
                    "X-Purpose-Of-Use takes one v3 PurposeOfUse code, such as TREAT or BTG",
                ));
            }
            Some(v.to_string())
        }
    };
    let reason = match headers.get("x-break-glass-reason") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request("X-Break-Glass-Reason must be visible ASCII text")
                })?
                .trim()
                .to_string(),
        ),
    };
    Ok((purpose, reason))
}
