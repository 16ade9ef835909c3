//! The authorization-code flow for user apps, driven over HTTP like a browser: sign-in page,
//! TOTP, consent, PKCE S256, exact redirect URIs, single-use codes, rotating refresh tokens, and
//! browser sessions with idle and absolute timeouts (on a controlled clock).

use carapace_core::access::Role;
use carapace_core::clock::{Clock, FixedClock};
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::identity::admin;
use carapace_core::identity::authorize;
use carapace_core::identity::users::NewUser;
use carapace_tests::*;
use std::sync::Arc;

const REDIRECT: &str = "http://127.0.0.1:9/callback";

struct App {
    client_id: String,
}

async fn setup(stack: &Stack) -> (App, String, String) {
    let fhir = stack.fhir();
    let p = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Own"}]}),
        )
        .await
        .json();
    let other = fhir
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Other"}]}),
        )
        .await
        .json();
    let db = stack.db().await;
    let client_id = admin::register_app(
        &db.clone().into(),
        &carapace_core::clock::SystemClock,
        "Patient portal",
        &[REDIRECT.to_string()],
        &[
            "launch/patient".into(),
            "patient/*.rs".into(),
            "user/*.rs".into(),
            "offline_access".into(),
        ],
    )
    .await
    .unwrap();
    (
        App { client_id },
        p["id"].as_str().unwrap().to_string(),
        other["id"].as_str().unwrap().to_string(),
    )
}

fn authorize_url(
    stack: &Stack,
    app: &App,
    challenge: &str,
    method: &str,
    redirect: &str,
    state: &str,
) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &app.client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "launch/patient patient/*.rs offline_access")
        .append_pair("state", state)
        .append_pair("aud", &stack.server.base)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", method)
        .finish();
    format!("{}/auth/authorize?{q}", stack.server.origin())
}

async fn core_for(stack: &Stack, clock: Arc<dyn Clock>) -> Core {
    let env: std::collections::HashMap<String, String> = stack.server.env.iter().cloned().collect();
    Core::open_with_clock(
        &Config::from_lookup(|k| env.get(k).cloned()).unwrap(),
        clock,
    )
    .await
    .unwrap()
}

/// With a signed-in browser: open the consent page, allow, return the code from the redirect.
async fn allow(
    stack: &Stack,
    browser: &mut Browser,
    app: &App,
    challenge: &str,
    state: &str,
) -> String {
    let consent = browser
        .get(&authorize_url(
            stack, app, challenge, "S256", REDIRECT, state,
        ))
        .await;
    let cont = hidden_field(&consent.text(), "continue")
        .unwrap_or_else(|| panic!("{} {}", consent.status, consent.text()));
    let csrf = hidden_field(&consent.text(), "csrf").unwrap();
    let done = browser
        .post_form(
            &format!("{}/auth/consent", stack.server.origin()),
            &[("decision", "allow"), ("csrf", &csrf), ("continue", &cont)],
        )
        .await;
    let location = done.header("location").unwrap();
    form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string()
}

/// Sign in and consent; returns the redirect's query.
async fn sign_in_and_allow(
    stack: &Stack,
    browser: &mut Browser,
    url: &str,
    user: &str,
    password: &str,
) -> Vec<(String, String)> {
    let login = browser.get(url).await;
    assert_eq!(login.status, 200, "{}", login.text());
    assert!(login
        .text()
        .contains("<form method=\"post\" action=\"/auth/login\">"));
    let cont = hidden_field(&login.text(), "continue").unwrap();
    let login_csrf = hidden_field(&login.text(), "csrf").unwrap();
    let r = browser
        .post_form(
            &format!("{}/auth/login", stack.server.origin()),
            &[
                ("username", user),
                ("password", password),
                ("continue", &cont),
                ("csrf", &login_csrf),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let consent = browser.get(&r.header("location").unwrap()).await;
    assert_eq!(consent.status, 200);
    assert!(consent.text().contains("Patient portal") && consent.text().contains("patient/*.rs"));
    let csrf = hidden_field(&consent.text(), "csrf").unwrap();
    let done = browser
        .post_form(
            &format!("{}/auth/consent", stack.server.origin()),
            &[("decision", "allow"), ("csrf", &csrf), ("continue", &cont)],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.text());
    let location = done.header("location").unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

async fn token(stack: &Stack, fields: &[(&str, &str)]) -> HttpResponse {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        ser.append_pair(k, v);
    }
    http(
        "POST",
        &stack.server.token_url(),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(ser.finish().into_bytes()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_patient_app_gets_a_token_for_its_patient_only() {
    // One address runs many sign-ins and consents here in a second or two, more than the
    // default `/auth` burst (20) allows one address (tests/e2e/rate_limits.rs tests that limit).
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![("CARAPACE_RATE_LIMIT_AUTH".into(), "100".into())],
    )
    .await
    .unwrap();
    let (app, own, other) = setup(&stack).await;
    let core = core_for(&stack, Arc::new(carapace_core::clock::SystemClock)).await;
    admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "pat.own",
            role: Role::Patient,
            patient_id: Some(&own),
            practitioner_id: None,
            password: "my own long password",
        },
    )
    .await
    .unwrap();

    let (verifier, challenge) = pkce();
    let mut browser = Browser::new();
    let redirect = sign_in_and_allow(
        &stack,
        &mut browser,
        &authorize_url(&stack, &app, &challenge, "S256", REDIRECT, "st-1"),
        "pat.own",
        "my own long password",
    )
    .await;
    let get = |k: &str| {
        redirect
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("state").as_deref(), Some("st-1"), "state comes back");
    let code = get("code").unwrap();

    // The wrong verifier, another redirect URI, another client: refused, and the code is spent.
    let base = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("client_id", app.client_id.as_str()),
    ];
    let mut wrong = base.to_vec();
    wrong.push((
        "code_verifier",
        "not-the-verifier-not-the-verifier-not-the-verifier",
    ));
    let r = token(&stack, &wrong).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    let mut right = base.to_vec();
    right.push(("code_verifier", &verifier));
    assert_eq!(
        token(&stack, &right).await.status,
        400,
        "a code is tried once"
    );

    // A fresh flow (the session is reused: straight to consent), exchanged properly.
    let (verifier, challenge) = pkce();
    let consent = browser
        .get(&authorize_url(
            &stack, &app, &challenge, "S256", REDIRECT, "st-2",
        ))
        .await;
    assert!(
        consent.text().contains("Allow access?"),
        "{}",
        consent.text()
    );
    let cont = hidden_field(&consent.text(), "continue").unwrap();
    let csrf = hidden_field(&consent.text(), "csrf").unwrap();
    let forged = browser
        .post_form(
            &format!("{}/auth/consent", stack.server.origin()),
            &[
                ("decision", "allow"),
                ("csrf", "forged"),
                ("continue", &cont),
            ],
        )
        .await;
    assert_eq!(forged.status, 403, "CSRF token checked");
    let done = browser
        .post_form(
            &format!("{}/auth/consent", stack.server.origin()),
            &[("decision", "allow"), ("csrf", &csrf), ("continue", &cont)],
        )
        .await;
    let location = done.header("location").unwrap();
    let code = form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let mut mismatch = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://127.0.0.1:9/other"),
        ("client_id", app.client_id.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    assert_eq!(token(&stack, &mismatch).await.status, 400);
    // (that attempt spent the code; one more flow for the real exchange)
    let (verifier, challenge) = pkce();
    let code = allow(&stack, &mut browser, &app, &challenge, "st-3").await;
    mismatch[1] = ("code", code.as_str());
    mismatch[2] = ("redirect_uri", REDIRECT);
    mismatch[4] = ("code_verifier", verifier.as_str());
    let r = token(&stack, &mismatch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["patient"], own.as_str());
    // The launch context and refresh markers granted are answered too (SMART lists them).
    assert_eq!(
        t["scope"], "patient/*.rs launch/patient offline_access",
        "user/ scopes are not for patients"
    );
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();

    let read = |path: String, token: String| {
        let url = stack.server.url(&path);
        async move {
            http(
                "GET",
                &url,
                &[("Authorization", &format!("Bearer {token}"))],
                None,
            )
            .await
            .unwrap()
            .status
        }
    };
    assert_eq!(read(format!("Patient/{own}"), access.clone()).await, 200);
    assert_eq!(read(format!("Patient/{other}"), access.clone()).await, 404);

    // Refresh rotates; a reused refresh token revokes the family.
    let r = token(
        &stack,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rotated, refresh);
    assert_eq!(
        read(
            format!("Patient/{own}"),
            r.json()["access_token"].as_str().unwrap().to_string()
        )
        .await,
        200
    );
    let replay = token(
        &stack,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(replay.status, 400);
    let after = token(
        &stack,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rotated),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(
        after.status, 400,
        "the whole family is revoked after a replay"
    );

    // Revoking a refresh token (RFC 7009) ends it for good.
    let (verifier, challenge) = pkce();
    let code = allow(&stack, &mut browser, &app, &challenge, "st-r").await;
    let r = token(
        &stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &app.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let fresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let revoke = http(
        "POST",
        &format!("{}/auth/revoke", stack.server.origin()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(format!("token={fresh}").into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(revoke.status, 200);
    let r = token(
        &stack,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &fresh),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "a revoked refresh token is dead");

    // Deny sends the user back with access_denied.
    let consent = browser
        .get(&authorize_url(
            &stack,
            &app,
            &pkce().1,
            "S256",
            REDIRECT,
            "st-4",
        ))
        .await;
    let (cont, csrf) = (
        hidden_field(&consent.text(), "continue").unwrap(),
        hidden_field(&consent.text(), "csrf").unwrap(),
    );
    let denied = browser
        .post_form(
            &format!("{}/auth/consent", stack.server.origin()),
            &[("decision", "deny"), ("csrf", &csrf), ("continue", &cont)],
        )
        .await;
    assert!(denied
        .header("location")
        .unwrap()
        .contains("error=access_denied"));
    // Disabling the app ends its users' refresh tokens and stops code exchanges.
    let (verifier, challenge) = pkce();
    let code = allow(&stack, &mut browser, &app, &challenge, "st-6").await;
    let r = token(
        &stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &app.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let live_refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert!(carapace_core::identity::admin::disable_client(
        &stack.db().await.into(),
        &carapace_core::clock::SystemClock,
        &app.client_id
    )
    .await
    .unwrap());
    let r = token(
        &stack,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &live_refresh),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = browser
        .get(&authorize_url(
            &stack,
            &app,
            &pkce().1,
            "S256",
            REDIRECT,
            "st-7",
        ))
        .await;
    assert_eq!(r.status, 400, "a disabled app cannot start a flow");

    // The operator sees the browser session and ends it: the next visit asks to sign in again.
    let admin = carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        "ops",
        Role::Admin,
        &[],
        None,
    )
    .await
    .unwrap()
    .access_token;
    let console = |args: Vec<&'static str>| {
        let mut env = stack.server.env.clone();
        env.push(("CARAPACE_ADMIN_TOKEN".into(), admin.clone()));
        async move {
            let out = tokio::process::Command::new(bin_path("carapace-console"))
                .args(args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    let listed = console(vec!["session", "list", "pat.own"]).await;
    assert!(
        listed
            .lines()
            .any(|l| l.contains("browser") && l.contains("pat.own")),
        "{listed}"
    );
    // The app is disabled, so the access tokens pat.own holds through it are dead and not listed.
    assert!(
        !listed
            .lines()
            .any(|l| l.contains("token") && l.contains("pat.own")),
        "{listed}"
    );
    console(vec!["session", "revoke", "pat.own"]).await;
    let db = stack.db().await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM web_sessions s JOIN users u ON u.id = s.user_id
          WHERE u.username = 'pat.own' AND s.revoked_at IS NULL",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(open, 0, "the browser session ended");
    core.shutdown().await;
}

#[tokio::test]
async fn pkce_plain_redirect_mismatch_and_totp_replay_are_refused() {
    let stack = Stack::start().await.unwrap();
    let (app, _, _) = setup(&stack).await;
    let mut browser = Browser::new();

    // PKCE plain: back to the app with invalid_request, and the state.
    let r = browser
        .get(&authorize_url(
            &stack,
            &app,
            &pkce().1,
            "plain",
            REDIRECT,
            "s",
        ))
        .await;
    assert_eq!(r.status, 303);
    let loc = r.header("location").unwrap();
    assert!(
        loc.starts_with(REDIRECT)
            && loc.contains("error=invalid_request")
            && loc.contains("state=s"),
        "{loc}"
    );
    // redirect_uri mismatch: shown to the user, never redirected.
    for uri in [
        "http://127.0.0.1:9/callback/evil",
        "http://127.0.0.1:9/callbac",
        "http://evil.example/callback",
    ] {
        let r = browser
            .get(&authorize_url(&stack, &app, &pkce().1, "S256", uri, "s"))
            .await;
        assert_eq!(r.status, 400, "{uri}");
        assert!(r.header("location").is_none());
        assert!(r.text().contains("redirect_uri does not match"));
    }

    // A practitioner signs in with password, then TOTP; the same code cannot be used twice.
    let core = core_for(&stack, Arc::new(carapace_core::clock::SystemClock)).await;
    let enrolled = admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "dr.web",
            role: Role::Practitioner,
            patient_id: None,
            practitioner_id: Some("pr"),
            password: "practitioner passphrase",
        },
    )
    .await
    .unwrap();
    let uri = enrolled.totp_uri.unwrap();
    let code = totp_rs::TOTP::from_url_unchecked(&uri)
        .unwrap()
        .generate_current()
        .unwrap();
    let url = authorize_url(&stack, &app, &pkce().1, "S256", REDIRECT, "s2")
        .replace("launch%2Fpatient+patient%2F*.rs", "user%2F*.rs");
    for attempt in 0..2 {
        let mut b = Browser::new();
        let login = b.get(&url).await;
        let cont = hidden_field(&login.text(), "continue").unwrap();
        let login_csrf = hidden_field(&login.text(), "csrf").unwrap();
        let wrong = b
            .post_form(
                &format!("{}/auth/login", stack.server.origin()),
                &[
                    ("username", "dr.web"),
                    ("password", "wrong password!!"),
                    ("continue", &cont),
                    ("csrf", &login_csrf),
                ],
            )
            .await;
        assert_eq!(wrong.status, 401);
        assert!(wrong.text().contains("invalid username, password or code"));
        let totp_page = b
            .post_form(
                &format!("{}/auth/login", stack.server.origin()),
                &[
                    ("username", "dr.web"),
                    ("password", "practitioner passphrase"),
                    ("continue", &cont),
                    ("csrf", &login_csrf),
                ],
            )
            .await;
        assert_eq!(totp_page.status, 200);
        let totp_csrf = hidden_field(&totp_page.text(), "csrf").unwrap();
        assert!(totp_page.text().contains("Two-step verification"));
        // Half signed in is not signed in: the authorize page asks for the code again.
        assert!(b.get(&url).await.text().contains("Two-step verification"));
        let r = b
            .post_form(
                &format!("{}/auth/login/totp", stack.server.origin()),
                &[("code", &code), ("continue", &cont), ("csrf", &totp_csrf)],
            )
            .await;
        if attempt == 0 {
            assert_eq!(r.status, 303, "{}", r.text());
            assert!(b
                .get(&r.header("location").unwrap())
                .await
                .text()
                .contains("Allow access?"));
        } else {
            assert_eq!(r.status, 401, "the same TOTP code twice");
            assert!(r.text().contains("invalid username, password or code"));
        }
    }
    core.shutdown().await;
}

#[tokio::test]
async fn browser_sessions_time_out_and_end_on_password_change() {
    let stack = Stack::start().await.unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-23T08:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(FixedClock::new(start));
    let core = core_for(&stack, clock.clone()).await;
    let store = &core.store;
    // The defaults a hospital gets unless it configures otherwise.
    let policy = Config::from_lookup(|_| None).unwrap().sessions;
    assert_eq!(
        (policy.idle.num_minutes(), policy.absolute.num_hours()),
        (15, 8)
    );
    admin::create_user(
        store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "pat.clock",
            role: Role::Patient,
            patient_id: Some("p"),
            practitioner_id: None,
            password: "patient passphrase",
        },
    )
    .await
    .unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE username = 'pat.clock'")
        .fetch_one(&stack.db().await)
        .await
        .unwrap();

    // Idle timeout: 15 minutes without use.
    let s = authorize::start_session(store, id, true)
        .await
        .unwrap()
        .token;
    clock.advance(chrono::Duration::minutes(14));
    assert!(authorize::session(store, &policy, &s)
        .await
        .unwrap()
        .is_some());
    clock.advance(chrono::Duration::minutes(14));
    assert!(
        authorize::session(store, &policy, &s)
            .await
            .unwrap()
            .is_some(),
        "use resets the idle clock"
    );
    clock.advance(chrono::Duration::minutes(16));
    assert!(
        authorize::session(store, &policy, &s)
            .await
            .unwrap()
            .is_none(),
        "idle for 16 minutes"
    );

    // Absolute timeout: 8 hours however busy.
    let s = authorize::start_session(store, id, true)
        .await
        .unwrap()
        .token;
    for _ in 0..47 {
        clock.advance(chrono::Duration::minutes(10));
        assert!(authorize::session(store, &policy, &s)
            .await
            .unwrap()
            .is_some());
    }
    clock.advance(chrono::Duration::minutes(14));
    assert!(
        authorize::session(store, &policy, &s)
            .await
            .unwrap()
            .is_none(),
        "past 8 hours"
    );

    // A password change ends every session.
    let s = authorize::start_session(store, id, true)
        .await
        .unwrap()
        .token;
    assert!(authorize::session(store, &policy, &s)
        .await
        .unwrap()
        .is_some());
    admin::set_password(store, "pat.clock", "a new patient passphrase")
        .await
        .unwrap();
    assert!(authorize::session(store, &policy, &s)
        .await
        .unwrap()
        .is_none());
    core.shutdown().await;
}

/// The status of `GET Patient/{id}` with an access token.
async fn read_status(stack: &Stack, id: &str, token: &str) -> u16 {
    http(
        "GET",
        &stack.server.url(&format!("Patient/{id}")),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
    .unwrap()
    .status
}

/// Exchange a code for tokens: (access token, refresh token).
async fn exchange(stack: &Stack, app: &App, code: &str, verifier: &str) -> (String, String) {
    let r = token(
        stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", &app.client_id),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    (
        t["access_token"].as_str().unwrap().to_string(),
        t["refresh_token"].as_str().unwrap().to_string(),
    )
}

async fn create_patient_user(stack: &Stack, username: &str, patient: &str, password: &str) {
    let core = core_for(stack, Arc::new(carapace_core::clock::SystemClock)).await;
    admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username,
            role: Role::Patient,
            patient_id: Some(patient),
            practitioner_id: None,
            password,
        },
    )
    .await
    .unwrap();
    core.shutdown().await;
}

/// Defect 13 (issue 13): a user app's access tokens are bound to the app and to their refresh
/// family. A replayed refresh token revokes the family — and with it the live access token — and
/// disabling the app ends its users' access tokens at once, not only its refresh tokens.
#[tokio::test]
async fn app_access_tokens_die_with_their_refresh_family_and_their_app() {
    let stack = Stack::start().await.unwrap();
    let (app, own, _) = setup(&stack).await;
    create_patient_user(&stack, "pat.bound", &own, "a bound patient passphrase").await;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new();
    let redirect = sign_in_and_allow(
        &stack,
        &mut browser,
        &authorize_url(&stack, &app, &challenge, "S256", REDIRECT, "b-1"),
        "pat.bound",
        "a bound patient passphrase",
    )
    .await;
    let code = redirect
        .iter()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .clone();
    let (first_access, first_refresh) = exchange(&stack, &app, &code, &verifier).await;
    let rotate = |refresh: String| {
        let stack = &stack;
        let client_id = app.client_id.clone();
        async move {
            token(
                stack,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("client_id", &client_id),
                ],
            )
            .await
        }
    };
    let r = rotate(first_refresh.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let live_access = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(read_status(&stack, &own, &live_access).await, 200);
    assert_eq!(read_status(&stack, &own, &first_access).await, 200);

    // The rotated-away refresh token comes back (theft): the family is revoked, and every access
    // token it produced stops working on the next request.
    assert_eq!(rotate(first_refresh).await.status, 400);
    assert_eq!(
        read_status(&stack, &own, &live_access).await,
        401,
        "the live access token dies with its family"
    );
    assert_eq!(read_status(&stack, &own, &first_access).await, 401);

    // A new sign-in is a new family, unaffected.
    let (verifier, challenge) = pkce();
    let code = allow(&stack, &mut browser, &app, &challenge, "b-2").await;
    let (access, _) = exchange(&stack, &app, &code, &verifier).await;
    assert_eq!(read_status(&stack, &own, &access).await, 200);

    // Disabling the app (as `carapace-console client disable` does): its users' access tokens end.
    assert!(carapace_core::identity::admin::disable_client(
        &stack.db().await.into(),
        &carapace_core::clock::SystemClock,
        &app.client_id
    )
    .await
    .unwrap());
    // The server learns of a change made outside it (here: straight in the database) by
    // notification, so the refusal comes within the notification's delay.
    assert_eq!(
        status_within(401, || read_status(&stack, &own, &access)).await,
        401,
        "a disabled app's access token is refused"
    );
}

/// Defect 13 (issue 13): every sign-in form POST needs its anti-forgery token. The sign-in form's is
/// double-submitted (a `SameSite=Strict` cookie set with the page, and a hidden field); without it,
/// or with a wrong one, the POST is refused with 403 and nothing is done — no password checked, no
/// failure counted, no session started. The TOTP form carries its session's token.
#[tokio::test]
async fn sign_in_forms_without_their_anti_forgery_token_are_refused() {
    let stack = Stack::start().await.unwrap();
    let (app, own, _) = setup(&stack).await;
    create_patient_user(&stack, "pat.csrf", &own, "a csrf patient passphrase").await;
    let login_url = format!("{}/auth/login", stack.server.origin());
    let url = authorize_url(&stack, &app, &pkce().1, "S256", REDIRECT, "c-1");

    let mut browser = Browser::new();
    let login = browser.get(&url).await;
    assert_eq!(login.status, 200);
    let set = login.header("set-cookie").unwrap();
    assert!(
        set.starts_with("carapace_login=") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cont = hidden_field(&login.text(), "continue").unwrap();
    let csrf = hidden_field(&login.text(), "csrf").unwrap();
    let credentials = |password: &'static str| {
        vec![
            ("username", "pat.csrf"),
            ("password", password),
            ("continue", cont.as_str()),
        ]
    };

    // Without the field, with a wrong one, and from another site's page (the field, but no
    // cookie: a cross-site form cannot make the browser send a SameSite=Strict cookie): 403.
    let mut wrong = credentials("a csrf patient passphrase");
    wrong.push(("csrf", "forged-forged-forged"));
    let mut cross_site = credentials("a csrf patient passphrase");
    cross_site.push(("csrf", &csrf));
    for (fields, fresh) in [
        (credentials("a csrf patient passphrase"), false),
        (wrong, false),
        (cross_site, true),
    ] {
        let mut b = if fresh {
            Browser::new()
        } else {
            Browser {
                cookies: browser.cookies.clone(),
            }
        };
        let r = b.post_form(&login_url, &fields).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.header("set-cookie").is_none(), "no session is started");
        assert!(r.text().contains("The form is stale"), "{}", r.text());
    }
    // Nothing was counted: ten forged wrong-password POSTs engage no back-off.
    for _ in 0..10 {
        let r = browser
            .post_form(&login_url, &credentials("not the password!"))
            .await;
        assert_eq!(r.status, 403);
    }
    let mut right = credentials("a csrf patient passphrase");
    right.push(("csrf", &csrf));
    let r = browser.post_form(&login_url, &right).await;
    assert_eq!(r.status, 303, "the real form still signs in: {}", r.text());

    // The TOTP form carries its session's token.
    let core = core_for(&stack, Arc::new(carapace_core::clock::SystemClock)).await;
    let enrolled = admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "dr.csrf",
            role: Role::Practitioner,
            patient_id: None,
            practitioner_id: Some("pr"),
            password: "practitioner csrf passphrase",
        },
    )
    .await
    .unwrap();
    core.shutdown().await;
    let url = url.replace("launch%2Fpatient+patient%2F*.rs", "user%2F*.rs");
    let mut b = Browser::new();
    let login = b.get(&url).await;
    let cont = hidden_field(&login.text(), "continue").unwrap();
    let csrf = hidden_field(&login.text(), "csrf").unwrap();
    let totp_page = b
        .post_form(
            &login_url,
            &[
                ("username", "dr.csrf"),
                ("password", "practitioner csrf passphrase"),
                ("continue", &cont),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(totp_page.status, 200, "{}", totp_page.text());
    let totp_csrf = hidden_field(&totp_page.text(), "csrf").unwrap();
    let code = totp_rs::TOTP::from_url_unchecked(enrolled.totp_uri.as_deref().unwrap())
        .unwrap()
        .generate_current()
        .unwrap();
    let totp_url = format!("{}/auth/login/totp", stack.server.origin());
    for forged in ["", "forged", csrf.as_str()] {
        let r = b
            .post_form(
                &totp_url,
                &[("code", &code), ("continue", &cont), ("csrf", forged)],
            )
            .await;
        assert_eq!(r.status, 403, "TOTP with csrf '{forged}': {}", r.text());
    }
    let r = b
        .post_form(
            &totp_url,
            &[("code", &code), ("continue", &cont), ("csrf", &totp_csrf)],
        )
        .await;
    assert_eq!(
        r.status,
        303,
        "the code was not spent by the refused POSTs: {}",
        r.text()
    );
}

/// Defect 13 (issue 13): sign-in failures are limited per client address across usernames
/// (password spraying), the address computed honouring CARAPACE_TRUSTED_PROXIES. Past the limit,
/// even the right password from that address gets the one generic answer; other addresses are
/// unaffected.
#[tokio::test]
async fn an_address_that_fails_across_usernames_is_refused() {
    let stack = Stack::start_with(
        Bao::start_dev().await.unwrap(),
        vec![
            ("CARAPACE_LOGIN_ADDRESS_FAILURES".into(), "3".into()),
            ("CARAPACE_TRUSTED_PROXIES".into(), "127.0.0.1/32".into()),
        ],
    )
    .await
    .unwrap();
    let (app, own, _) = setup(&stack).await;
    create_patient_user(&stack, "pat.spray", &own, "a sprayed patient passphrase").await;
    let login_url = format!("{}/auth/login", stack.server.origin());
    let url = authorize_url(&stack, &app, &pkce().1, "S256", REDIRECT, "s-1");
    let mut browser = Browser::new();
    let login = browser.get(&url).await;
    let cont = hidden_field(&login.text(), "continue").unwrap();
    let csrf = hidden_field(&login.text(), "csrf").unwrap();
    let cookie = browser.cookie_header();
    let sign_in = |from: &'static str, username: &'static str, password: &'static str| {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("username", username)
            .append_pair("password", password)
            .append_pair("continue", &cont)
            .append_pair("csrf", &csrf)
            .finish();
        let (url, cookie) = (login_url.clone(), cookie.clone());
        async move {
            http(
                "POST",
                &url,
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Cookie", &cookie),
                    ("X-Forwarded-For", from),
                ],
                Some(body.into_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let sprayer = "203.0.113.9";
    for username in ["alice.x", "bob.x", "carol.x"] {
        let r = sign_in(sprayer, username, "Spring2026!spray").await;
        assert_eq!(r.status, 401);
    }
    let r = sign_in(sprayer, "pat.spray", "a sprayed patient passphrase").await;
    assert_eq!(r.status, 401, "the address is backing off: {}", r.text());
    assert!(r.text().contains("invalid username, password or code"));
    let r = sign_in("198.51.100.7", "pat.spray", "a sprayed patient passphrase").await;
    assert_eq!(r.status, 303, "another address signs in: {}", r.text());
}
