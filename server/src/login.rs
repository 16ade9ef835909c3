//! The browser side of the authorization-code flow: `/auth/authorize`, a server-rendered sign-in page
//! (password, then TOTP), and a consent page. Every value put into HTML is escaped; pages are never
//! cached or framed.
//!
//! Every form POST (sign-in, TOTP, consent) carries an anti-forgery token, checked in [`handle`]
//! before anything else is done; a missing or wrong one gets 403. The TOTP and consent forms carry
//! their session's token (bound server-side to the session). The sign-in form has no session yet:
//! it is a double-submitted token, in a cookie set with the page and in the form. The cookie is
//! `SameSite=Strict` (another site's page cannot make the browser send it) and, over https,
//! `__Host-` prefixed (no sibling subdomain can plant one), so another site cannot sign the
//! browser in to an account of its choosing (login CSRF).

use crate::oauth::{origin, read_form};
use crate::outcome::HttpResponse;
use crate::AppState;
use bytes::Bytes;
use carapace_core::identity::authorize::{self, AuthorizeError, AuthorizeRequest, WebSession};
use carapace_core::identity::users::{self, PendingLogin};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;

const COOKIE: &str = "carapace_session";
/// The sign-in form's anti-forgery cookie; `__Host-` prefixed when it can be `Secure`.
const LOGIN_COOKIE: &str = "carapace_login";
const LOGIN_COOKIE_SECURE: &str = "__Host-carapace_login";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str, cookie: Option<String>) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Carapace</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>body{{font-family:sans-serif;max-width:28em;\
         margin:3em auto}}label,input,button{{display:block;margin:.4em 0}}input{{width:100%}}.err{{color:#b00}}</style>\
         </head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    );
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .header("X-Frame-Options", "DENY")
        .header("Referrer-Policy", "no-referrer")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        );
    if let Some(c) = cookie {
        builder = builder.header("Set-Cookie", c);
    }
    builder
        .body(Full::new(Bytes::from(html)))
        .unwrap_or_default()
}

fn redirect(location: &str, cookie: Option<String>) -> HttpResponse {
    let mut builder = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("Location", location)
        .header("Cache-Control", "no-store");
    if let Some(c) = cookie {
        builder = builder.header("Set-Cookie", c);
    }
    builder.body(Full::new(Bytes::new())).unwrap_or_default()
}

/// Secure whenever the public base is https, including behind a TLS-terminating proxy.
fn secure(state: &AppState) -> bool {
    state.config.tls.is_some() || state.base.starts_with("https://")
}

fn session_cookie(state: &AppState, token: &str) -> String {
    let secure = if secure(state) { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/auth; HttpOnly; SameSite=Lax{secure}")
}

fn named_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
        })
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    named_cookie(headers, COOKIE)
}

fn login_cookie_name(state: &AppState) -> &'static str {
    if secure(state) {
        LOGIN_COOKIE_SECURE
    } else {
        LOGIN_COOKIE
    }
}

/// The sign-in form's anti-forgery token the browser brought, if any.
fn login_csrf(state: &AppState, headers: &HeaderMap) -> Option<String> {
    named_cookie(headers, login_cookie_name(state)).filter(|v| !v.is_empty())
}

/// The anti-forgery token for a sign-in page: the browser's own if it has one (so two tabs both
/// work), else a fresh one with the cookie that sets it.
fn login_csrf_for_page(state: &AppState, headers: &HeaderMap) -> (String, Option<String>) {
    match login_csrf(state, headers) {
        Some(token) => (token, None),
        None => {
            let token = authorize::new_csrf_token();
            let secure = if secure(state) { "; Secure" } else { "" };
            let cookie = format!(
                "{}={token}; Path=/; HttpOnly; SameSite=Strict{secure}",
                login_cookie_name(state)
            );
            (token, Some(cookie))
        }
    }
}

/// A sign-in page for this browser (with its anti-forgery token).
fn login_page_for(
    state: &AppState,
    headers: &HeaderMap,
    query: &str,
    error: Option<&str>,
) -> HttpResponse {
    let (csrf, cookie) = login_csrf_for_page(state, headers);
    login_page(query, &csrf, error, cookie)
}

/// A form POST without the right anti-forgery token: nothing is done.
fn forged() -> HttpResponse {
    tracing::info!("a sign-in form arrived without its anti-forgery token; refused");
    page(
        StatusCode::FORBIDDEN,
        "Cannot continue",
        "<p class=\"err\">The form is stale; start again.</p>",
        None,
    )
}

async fn current_session(state: &AppState, headers: &HeaderMap) -> Option<(String, WebSession)> {
    let token = cookie_value(headers)?;
    match authorize::session(&state.store, &state.config.sessions, &token).await {
        Ok(Some(s)) => Some((token, s)),
        _ => None,
    }
}

/// Sign-ins, successful or not, go into the audit trail (the name as typed, shown inert).
async fn audit_sign_in(state: &AppState, username: &str, what: &str, success: bool) {
    let ctx =
        carapace_core::access::AccessContext::operator(&carapace_core::fhir::printable(username));
    if let Err(e) = state.store.record_admin(&ctx, what, success).await {
        tracing::error!(error = %e, "could not audit a sign-in");
    }
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

fn login_page(
    query: &str,
    csrf: &str,
    error: Option<&str>,
    cookie: Option<String>,
) -> HttpResponse {
    let err = error
        .map(|e| format!("<p class=\"err\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{err}<form method=\"post\" action=\"/auth/login\">{}{}\
         <label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button id=\"sign-in\" type=\"submit\">Sign in</button></form>",
        hidden("continue", query),
        hidden("csrf", csrf)
    );
    page(
        if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        "Sign in",
        &body,
        cookie,
    )
}

fn totp_page(query: &str, csrf: &str, error: Option<&str>, cookie: Option<String>) -> HttpResponse {
    let err = error
        .map(|e| format!("<p class=\"err\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{err}<form method=\"post\" action=\"/auth/login/totp\">{}{}\
         <label for=\"code\">Authenticator code (or a recovery code)</label>\
         <input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required>\
         <button id=\"verify\" type=\"submit\">Verify</button></form>",
        hidden("continue", query),
        hidden("csrf", csrf)
    );
    page(
        if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        "Two-step verification",
        &body,
        cookie,
    )
}

fn consent_page(
    query: &str,
    request: &AuthorizeRequest,
    session: &WebSession,
    scopes: &[String],
) -> HttpResponse {
    let items: String = scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect();
    let body = format!(
        "<p>Signed in as <strong>{user}</strong>.</p><p><strong>{app}</strong> asks for:</p><ul id=\"scopes\">{items}</ul>\
         <form method=\"post\" action=\"/auth/consent\">{cont}{csrf}\
         <button id=\"allow\" name=\"decision\" value=\"allow\" type=\"submit\">Allow</button>\
         <button id=\"deny\" name=\"decision\" value=\"deny\" type=\"submit\">Deny</button></form>",
        user = escape(&session.user.username),
        app = escape(&request.client_name),
        cont = hidden("continue", query),
        csrf = hidden("csrf", &session.csrf),
    );
    page(StatusCode::OK, "Allow access?", &body, None)
}

fn error_redirect(redirect_uri: &str, state: &str, error: &str, description: &str) -> HttpResponse {
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("error", error)
        .append_pair("error_description", description)
        .append_pair("state", state)
        .finish();
    redirect(&format!("{redirect_uri}{sep}{query}"), None)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn validated(state: &AppState, query: &str) -> Result<AuthorizeRequest, HttpResponse> {
    match authorize::validate(state.store.pool(), &state.base, &parse_query(query)).await {
        Ok(r) => Ok(r),
        Err(AuthorizeError::Show(msg)) => Err(page(
            StatusCode::BAD_REQUEST,
            "Cannot continue",
            &format!("<p class=\"err\">{}</p>", escape(&msg)),
            None,
        )),
        Err(AuthorizeError::Redirect {
            redirect_uri,
            state,
            error,
            description,
        }) => Err(error_redirect(&redirect_uri, &state, error, &description)),
    }
}

/// Serve `/auth/authorize`, `/auth/login`, `/auth/login/totp`, `/auth/consent`, `/auth/logout`.
/// `peer` is the client's address (trusted proxies honoured): sign-in failures are limited per
/// address.
pub async fn handle(state: &AppState, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let (parts, body) = req.into_parts();
    if path == "/auth/authorize" && method == Method::GET {
        return authorize_get(state, &parts.headers, &query).await;
    }
    if method != Method::POST {
        return page(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "", None);
    }
    let form = match read_form(&parts.headers, body).await {
        Ok(f) => f,
        Err(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "<p>The form could not be read.</p>",
                None,
            )
        }
    };
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let cont = field("continue");
    let presented = field("csrf");
    let headers = &parts.headers;
    match path.as_str() {
        "/auth/login" => {
            // Before anything is looked at: no password is checked, no failure counted.
            let Some(expected) = login_csrf(state, headers)
                .filter(|expected| authorize::csrf_matches(expected, &presented))
            else {
                return forged();
            };
            login_post(
                state,
                peer,
                &cont,
                &expected,
                &field("username"),
                &field("password"),
            )
            .await
        }
        "/auth/login/totp" | "/auth/consent" => {
            let Some((token, session)) = current_session(state, headers).await else {
                return login_page_for(
                    state,
                    headers,
                    &cont,
                    Some("your sign-in expired; sign in again"),
                );
            };
            if !authorize::csrf_matches(&session.csrf, &presented) {
                return forged();
            }
            if path == "/auth/login/totp" {
                totp_post(state, &cont, &token, &session, &field("code")).await
            } else {
                let picked = Picked {
                    patient: form
                        .iter()
                        .find(|(k, _)| k == "patient")
                        .map(|(_, v)| v.as_str()),
                    search: &field("patient_search"),
                };
                consent_post(state, headers, &cont, &session, &field("decision"), picked).await
            }
        }
        "/auth/logout" => {
            // Signing out needs no token: at worst another site signs the browser out.
            if let Some(token) = cookie_value(headers) {
                let _ = authorize::end_session(&state.store, &token).await;
            }
            page(
                StatusCode::OK,
                "Signed out",
                "<p>You are signed out.</p>",
                Some(format!("{COOKIE}=; Path=/auth; Max-Age=0; HttpOnly")),
            )
        }
        _ => page(StatusCode::NOT_FOUND, "Not found", "", None),
    }
}

async fn authorize_get(state: &AppState, headers: &HeaderMap, query: &str) -> HttpResponse {
    let request = match validated(state, query).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match current_session(state, headers).await {
        Some((_, session)) if session.verified => {
            consent_page(query, &request, &session, &request.scopes)
        }
        Some((_, session)) => totp_page(query, &session.csrf, None, None),
        None => login_page_for(state, headers, query, None),
    }
}

async fn login_post(
    state: &AppState,
    peer: SocketAddr,
    query: &str,
    csrf: &str,
    username: &str,
    password: &str,
) -> HttpResponse {
    if let Err(resp) = validated(state, query).await {
        return resp;
    }
    let now = state.store.now();
    let pending: PendingLogin =
        match users::verify_credentials(&state.store, now, Some(peer.ip()), username, password)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::info!("browser sign-in refused");
                audit_sign_in(state, username, "web-login-password", false).await;
                return login_page(query, csrf, Some(&e.to_string()), None);
            }
        };
    let unavailable = || {
        login_page(
            query,
            csrf,
            Some("the sign-in service is unavailable"),
            None,
        )
    };
    // A fresh session at every sign-in (no fixation); verified once the second factor is done.
    let verified = !pending.needs_mfa;
    if verified && users::succeed(&state.store, &pending).await.is_err() {
        return unavailable();
    }
    let started = match authorize::start_session(&state.store, pending.user_id, verified).await {
        Ok(t) => t,
        Err(_) => return unavailable(),
    };
    let cookie = Some(session_cookie(state, &started.token));
    if verified {
        audit_sign_in(state, username, "web-login", true).await;
        redirect(
            &format!("{}/auth/authorize?{query}", origin(&state.base)),
            cookie,
        )
    } else {
        totp_page(query, &started.csrf, None, cookie)
    }
}

async fn totp_post(
    state: &AppState,
    query: &str,
    token: &str,
    session: &WebSession,
    code: &str,
) -> HttpResponse {
    let pending = PendingLogin {
        user_id: session.user_id,
        username: session.user.username.clone(),
        needs_mfa: true,
    };
    let retry = |error: &str| totp_page(query, &session.csrf, Some(error), None);
    if let Err(e) = users::check_code(&state.store, state.store.now(), &pending, code).await {
        audit_sign_in(state, &pending.username, "web-login-totp", false).await;
        return retry(&e.to_string());
    }
    audit_sign_in(state, &pending.username, "web-login", true).await;
    if users::succeed(&state.store, &pending).await.is_err() {
        return retry("the sign-in service is unavailable");
    }
    // Rotate: the half-signed-in session ends, a verified one begins.
    let _ = authorize::end_session(&state.store, token).await;
    match authorize::start_session(&state.store, session.user_id, true).await {
        Ok(new) => redirect(
            &format!("{}/auth/authorize?{query}", origin(&state.base)),
            Some(session_cookie(state, &new.token)),
        ),
        Err(_) => retry("the sign-in service is unavailable"),
    }
}

/// What the patient picker's form brought: the chosen patient, or a search of the list.
struct Picked<'a> {
    patient: Option<&'a str>,
    search: &'a str,
}

/// The patient picker: the patients the practitioner may see (a search narrows them), each a
/// button that posts the consent again with its id; the form carries the session's anti-forgery
/// token like the consent form.
fn picker_page(
    query: &str,
    request: &AuthorizeRequest,
    session: &WebSession,
    search: &str,
    choices: &[carapace_core::identity::picker::PatientChoice],
) -> HttpResponse {
    let cont = hidden("continue", query);
    let csrf = hidden("csrf", &session.csrf);
    let items: String = if choices.is_empty() {
        "<p id=\"no-patients\">No patient you may see matches.</p>".into()
    } else {
        choices
            .iter()
            .map(|c| {
                format!(
                    "<li><button type=\"submit\" name=\"patient\" value=\"{id}\" id=\"patient-{id}\">{label}</button></li>",
                    id = escape(&c.id),
                    label = escape(&c.label)
                )
            })
            .collect()
    };
    let body = format!(
        "<p><strong>{app}</strong> opens one patient's record. Choose the patient.</p>\
         <form method=\"post\" action=\"/auth/consent\">{cont}{csrf}{allow}\
         <label for=\"patient-search\">Name</label><input id=\"patient-search\" name=\"patient_search\" value=\"{search}\">\
         <button id=\"search\" type=\"submit\">Search</button></form>\
         <form method=\"post\" action=\"/auth/consent\">{cont}{csrf}{allow}<ul id=\"patients\">{items}</ul></form>",
        app = escape(&request.client_name),
        allow = hidden("decision", "allow"),
        search = escape(search),
    );
    page(StatusCode::OK, "Choose a patient", &body, None)
}

async fn consent_post(
    state: &AppState,
    headers: &HeaderMap,
    query: &str,
    session: &WebSession,
    decision: &str,
    picked: Picked<'_>,
) -> HttpResponse {
    let request = match validated(state, query).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !session.verified {
        return login_page_for(
            state,
            headers,
            query,
            Some("your sign-in expired; sign in again"),
        );
    }
    if decision != "allow" {
        return error_redirect(
            &request.redirect_uri,
            &request.state,
            "access_denied",
            "the user declined",
        );
    }
    let (scopes, patient, encounter) =
        match authorize::decide(&state.store, &session.user, &request, picked.patient).await {
            Ok(authorize::Decision::Grant {
                scopes,
                patient,
                encounter,
            }) => (scopes, patient, encounter),
            Ok(authorize::Decision::ChoosePatient) => {
                return match carapace_core::identity::picker::choices(
                    &state.store,
                    &session.user,
                    picked.search,
                )
                .await
                {
                    Ok(choices) => picker_page(query, &request, session, picked.search, &choices),
                    Err(e) => {
                        tracing::error!(error = %e, "the patient picker could not search");
                        error_redirect(
                            &request.redirect_uri,
                            &request.state,
                            "server_error",
                            "try again",
                        )
                    }
                }
            }
            Err(authorize::Refusal::Scope(why)) => {
                return error_redirect(&request.redirect_uri, &request.state, "invalid_scope", &why)
            }
            Err(authorize::Refusal::Unavailable) => {
                return error_redirect(
                    &request.redirect_uri,
                    &request.state,
                    "server_error",
                    "try again",
                )
            }
        };
    match authorize::issue_code(
        &state.store,
        &request,
        session.user_id,
        &scopes,
        patient.as_deref(),
        encounter.as_deref(),
    )
    .await
    {
        Ok(code) => {
            let sep = if request.redirect_uri.contains('?') {
                '&'
            } else {
                '?'
            };
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("code", &code)
                .append_pair("state", &request.state)
                .finish();
            redirect(&format!("{}{sep}{q}", request.redirect_uri), None)
        }
        Err(_) => error_redirect(
            &request.redirect_uri,
            &request.state,
            "server_error",
            "try again",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#x27;y&#x27;&lt;/script&gt;"
        );
    }
}
