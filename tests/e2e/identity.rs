//! People and the console: Argon2id passwords with a policy, single-use TOTP codes, recovery codes,
//! lockout by back-off (never forever), one generic error with equal timing, token revocation on
//! account changes — through the core with a controlled clock, and through the real
//! `carapace-console` binary as an operator scripts it.

use carapace_core::access::Role;
use carapace_core::clock::FixedClock;
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::identity::admin;
use carapace_core::identity::users::{self, LoginError, NewUser};
use carapace_tests::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn core_with_clock(stack: &Stack, clock: Arc<FixedClock>) -> Core {
    let env: std::collections::HashMap<String, String> = stack.server.env.iter().cloned().collect();
    let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    Core::open_with_clock(&config, clock).await.unwrap()
}

fn code_at(uri: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    totp_rs::TOTP::from_url_unchecked(uri)
        .unwrap()
        .generate(at.timestamp() as u64)
}

#[tokio::test]
async fn totp_is_single_use_lockout_backs_off_and_failures_look_alike() {
    let stack = Stack::start().await.unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(FixedClock::new(start));
    let core = core_with_clock(&stack, clock.clone()).await;
    let store = &core.store;
    let password = "correct horse battery staple";

    // Policy: short, common and username-containing passwords are refused.
    for weak in ["short-one", "Password1234", "dr.house-is-here"] {
        let r = admin::create_user(
            store,
            &carapace_core::access::AccessContext::operator("test-admin"),
            &NewUser {
                username: "dr.house",
                role: Role::Practitioner,
                patient_id: None,
                practitioner_id: Some("pr1"),
                password: weak,
            },
        )
        .await;
        assert!(r.is_err(), "{weak}");
    }
    let enrolled = admin::create_user(
        store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "dr.house",
            role: Role::Practitioner,
            patient_id: None,
            practitioner_id: Some("pr1"),
            password,
        },
    )
    .await
    .unwrap();
    let uri = enrolled.totp_uri.clone().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Carapace:dr.house?"),
        "{uri}"
    );
    assert_eq!(enrolled.recovery_codes.len(), 10);
    // Stored: an Argon2id hash and a sealed seed, never the secret itself.
    let db = stack.db().await;
    let (hash, sealed): (String, Vec<u8>) =
        sqlx::query_as("SELECT password_hash, totp_sealed FROM users WHERE username = 'dr.house'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(secret));

    // A practitioner needs the second factor.
    assert_eq!(
        users::login(store, clock_now(&clock), "dr.house", password, None)
            .await
            .unwrap_err(),
        LoginError::Invalid
    );
    let code = code_at(&uri, clock_now(&clock));
    assert!(
        users::login(store, clock_now(&clock), "dr.house", password, Some(&code))
            .await
            .is_ok()
    );
    // The same code again, within its window: refused.
    assert_eq!(
        users::login(store, clock_now(&clock), "dr.house", password, Some(&code))
            .await
            .unwrap_err(),
        LoginError::Invalid
    );
    // The previous step's code is older than the one used: refused too.
    let older = code_at(&uri, clock_now(&clock) - chrono::Duration::seconds(30));
    assert!(
        users::login(store, clock_now(&clock), "dr.house", password, Some(&older))
            .await
            .is_err()
    );
    // Recovery codes work once.
    let rc = enrolled.recovery_codes[0].clone();
    assert!(
        users::login(store, clock_now(&clock), "dr.house", password, Some(&rc))
            .await
            .is_ok()
    );
    assert!(
        users::login(store, clock_now(&clock), "dr.house", password, Some(&rc))
            .await
            .is_err()
    );

    // Back-off: five failures are free, then 30 s, then 60 s... even the right password waits.
    clock.advance(chrono::Duration::seconds(60));
    for _ in 0..5 {
        assert!(users::login(
            store,
            clock_now(&clock),
            "dr.house",
            "wrong password!!",
            None
        )
        .await
        .is_err());
    }
    let good = |c: &FixedClock| code_at(&uri, clock_now(c));
    assert!(
        users::login(
            store,
            clock_now(&clock),
            "dr.house",
            password,
            Some(&good(&clock))
        )
        .await
        .is_err(),
        "backing off"
    );
    clock.advance(chrono::Duration::seconds(31));
    // One more failure doubles the wait.
    assert!(users::login(
        store,
        clock_now(&clock),
        "dr.house",
        "wrong password!!",
        None
    )
    .await
    .is_err());
    clock.advance(chrono::Duration::seconds(31));
    assert!(
        users::login(
            store,
            clock_now(&clock),
            "dr.house",
            password,
            Some(&good(&clock))
        )
        .await
        .is_err(),
        "60 s now"
    );
    clock.advance(chrono::Duration::seconds(30));
    let user = users::login(
        store,
        clock_now(&clock),
        "dr.house",
        password,
        Some(&good(&clock)),
    )
    .await
    .unwrap();
    assert_eq!(user.role, Role::Practitioner);
    let row: (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT failed_logins, locked_until FROM users WHERE username = 'dr.house'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(row, (0, None), "success resets the back-off");

    // An administrator's lock is not lifted by time, only by unlock.
    admin::lock(
        store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        "dr.house",
    )
    .await
    .unwrap();
    clock.advance(chrono::Duration::hours(24));
    assert!(users::login(
        store,
        clock_now(&clock),
        "dr.house",
        password,
        Some(&good(&clock))
    )
    .await
    .is_err());
    admin::unlock(
        store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        "dr.house",
    )
    .await
    .unwrap();
    clock.advance(chrono::Duration::seconds(30));
    assert!(users::login(
        store,
        clock_now(&clock),
        "dr.house",
        password,
        Some(&good(&clock))
    )
    .await
    .is_ok());

    // Unknown user and wrong password: the same error and the same time, within noise.
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for i in 0..8 {
        let t = Instant::now();
        let e = users::login(
            store,
            clock_now(&clock),
            &format!("nobody{i}"),
            password,
            None,
        )
        .await
        .unwrap_err();
        unknown.push(t.elapsed());
        assert_eq!(e, LoginError::Invalid);
        let t = Instant::now();
        let e = users::login(
            store,
            clock_now(&clock),
            "dr.house",
            "wrong password!!",
            None,
        )
        .await
        .unwrap_err();
        wrong.push(t.elapsed());
        assert_eq!(e, LoginError::Invalid);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (u, w) = (median(&mut unknown), median(&mut wrong));
    assert!(
        u / w > 0.5 && u / w < 2.0,
        "unknown user {u:.4}s vs wrong password {w:.4}s"
    );

    // A password change revokes the user's tokens at once.
    let token = carapace_core::identity::tokens::issue(
        &db.clone().into(),
        chrono::Utc::now(),
        "dr.house",
        Role::Practitioner,
        &[carapace_core::access::Scope::parse("user/*.rs").unwrap()],
        None,
    )
    .await
    .unwrap()
    .access_token;
    assert!(carapace_core::identity::tokens::lookup(
        &db.clone().into(),
        chrono::Utc::now(),
        &token
    )
    .await
    .unwrap()
    .is_some());
    admin::set_password(store, "dr.house", "another long passphrase")
        .await
        .unwrap();
    assert!(carapace_core::identity::tokens::lookup(
        &db.clone().into(),
        chrono::Utc::now(),
        &token
    )
    .await
    .unwrap()
    .is_none());
    core.shutdown().await;
}

fn clock_now(c: &FixedClock) -> chrono::DateTime<chrono::Utc> {
    use carapace_core::clock::Clock;
    c.now()
}

#[tokio::test]
async fn an_operator_provisions_users_and_clients_from_a_script() {
    let stack = Stack::start().await.unwrap();
    let env = stack.server.env.clone();
    let run =
        |args: Vec<&'static str>, extra: Vec<(String, String)>, stdin: Option<&'static str>| {
            let mut env = env.clone();
            env.extend(extra);
            async move {
                tokio::task::spawn_blocking(move || console(&env, &args, stdin))
                    .await
                    .unwrap()
            }
        };
    let password = "a long admin passphrase";

    // No operator, no admin: commands are refused; bootstrap creates the first admin exactly once.
    let (ok, _, err) = run(vec!["user", "list"], vec![], None).await;
    assert!(!ok && err.contains("CARAPACE_ADMIN_TOKEN"), "{err}");
    let (ok, out, err) = run(
        vec![
            "bootstrap-admin",
            "--username",
            "root.admin",
            "--password-stdin",
        ],
        vec![],
        Some(password),
    )
    .await;
    assert!(ok, "{err}");
    let uri = out
        .lines()
        .find(|l| l.trim().starts_with("otpauth://"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        out.lines()
            .filter(|l| l.trim().len() == 19 && l.contains('-'))
            .count(),
        10,
        "{out}"
    );
    let (ok, _, err) = run(
        vec![
            "bootstrap-admin",
            "--username",
            "second",
            "--password-stdin",
        ],
        vec![],
        Some(password),
    )
    .await;
    assert!(!ok && err.contains("already exists"), "{err}");

    // Sign in with password + TOTP; the same code cannot sign in twice.
    let code = code_at(&uri, chrono::Utc::now());
    let creds = vec![
        ("CARAPACE_OPERATOR".to_string(), "root.admin".to_string()),
        (
            "CARAPACE_OPERATOR_PASSWORD".to_string(),
            password.to_string(),
        ),
        ("CARAPACE_OPERATOR_TOTP".to_string(), code),
    ];
    let (ok, out, err) = run(vec!["login"], creds.clone(), None).await;
    assert!(ok, "{err}");
    let admin_token = out.trim().to_string();
    let (ok, _, err) = run(vec!["login"], creds.clone(), None).await;
    assert!(
        !ok && err.contains("invalid username, password or code"),
        "replay: {err}"
    );
    let mut wrong = creds.clone();
    wrong[1].1 = "not the password".into();
    let (ok, _, err) = run(vec!["status"], wrong, None).await;
    assert!(
        !ok && err.contains("invalid username, password or code"),
        "{err}"
    );

    let admin = vec![("CARAPACE_ADMIN_TOKEN".to_string(), admin_token.clone())];
    // The admin token also works on the FHIR API (user/*.cruds).
    let meta = http(
        "GET",
        &stack.server.url("Patient/x"),
        &[("Authorization", &format!("Bearer {admin_token}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(meta.status, 404);

    // Users.
    let (ok, out, err) = run(
        vec![
            "user",
            "create",
            "--username",
            "dr.grey",
            "--role",
            "practitioner",
            "--practitioner",
            "pr-7",
            "--password-stdin",
        ],
        admin.clone(),
        Some("grey's anatomy 2005"),
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("otpauth://totp/Carapace:dr.grey"), "{out}");
    let (ok, _, err) = run(
        vec![
            "user",
            "create",
            "--username",
            "weak",
            "--role",
            "patient",
            "--patient",
            "p1",
            "--password-stdin",
        ],
        admin.clone(),
        Some("password1234"),
    )
    .await;
    assert!(!ok && err.contains("too common"), "{err}");
    let (ok, out, _) = run(vec!["user", "list"], admin.clone(), None).await;
    assert!(
        ok && out.contains("dr.grey")
            && out.contains("Practitioner/pr-7")
            && out.contains("root.admin"),
        "{out}"
    );
    assert!(
        run(vec!["user", "lock", "dr.grey"], admin.clone(), None)
            .await
            .0
    );
    let (_, out, _) = run(vec!["user", "list"], admin.clone(), None).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("dr.grey") && l.contains("locked")),
        "{out}"
    );
    assert!(
        run(vec!["user", "unlock", "dr.grey"], admin.clone(), None)
            .await
            .0
    );
    assert!(
        run(
            vec!["user", "set-role", "dr.grey", "analytics"],
            admin.clone(),
            None
        )
        .await
        .0
    );
    let (ok, out, _) = run(vec!["user", "reset-mfa", "dr.grey"], admin.clone(), None).await;
    assert!(ok && out.contains("otpauth://"));
    assert!(
        !run(vec!["user", "lock", "nobody"], admin.clone(), None)
            .await
            .0
    );

    // Clients: register from a JWKS file, get a token, list, disable.
    let (_, jwk) = BackendClient::keypair(jsonwebtoken::Algorithm::ES384);
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [jwk]}).to_string()).unwrap();
    let jwks_arg: &'static str = Box::leak(jwks_path.display().to_string().into_boxed_str());
    let (ok, out, err) = run(
        vec![
            "client",
            "register",
            "--name",
            "lab-system",
            "--jwks-file",
            jwks_arg,
            "--scope",
            "system/Observation.cruds",
        ],
        admin.clone(),
        None,
    )
    .await;
    assert!(ok, "{err}");
    let client_id = out.trim().to_string();
    assert_eq!(client_id.len(), 36);
    let (ok, out, _) = run(vec!["client", "list"], admin.clone(), None).await;
    assert!(ok && out.contains(&client_id) && out.contains("lab-system"));
    let (ok, _, err) = run(
        vec![
            "client",
            "register",
            "--name",
            "bad",
            "--jwks-file",
            jwks_arg,
            "--scope",
            "user/*.rs",
        ],
        admin.clone(),
        None,
    )
    .await;
    assert!(!ok && err.contains("system/"), "{err}");

    // Sessions: listed by subject, revoked by subject.
    let (ok, out, _) = run(vec!["session", "list"], admin.clone(), None).await;
    assert!(ok && out.contains("root.admin"), "{out}");
    let leaked: &'static str = Box::leak(client_id.clone().into_boxed_str());
    let (ok, out, _) = run(vec!["client", "disable", leaked], admin.clone(), None).await;
    assert!(ok && out.contains("disabled"), "{out}");

    // Every action is in the audit trail with the operator as agent.
    let mut events = stack
        .audit_events("agent=root.admin&action=E&_count=1000")
        .await;
    events.reverse();
    let actions: Vec<String> = events
        .iter()
        .map(|e| {
            e["entity"][0]["what"]["reference"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for expected in [
        "bootstrap-admin:root.admin",
        "console-login",
        "token-issue",
        "user-create:dr.grey",
        "user-lock:dr.grey",
        "user-unlock:dr.grey",
        "user-set-role:dr.grey:analytics",
        "user-reset-mfa:dr.grey",
        &format!("client-register:{client_id}"),
        &format!("client-disable:{client_id}"),
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a == &format!("urn:carapace:admin:{expected}")),
            "{expected} not in {actions:?}"
        );
    }
    let failed_logins = stack
        .audit_events("action=E&outcome=4&_count=1000")
        .await
        .iter()
        .filter(|e| e["entity"][0]["what"]["reference"] == "urn:carapace:admin:console-login")
        .count();
    assert_eq!(failed_logins, 2);

    // Revoking the admin's sessions ends the token at once.
    let (ok, out, _) = run(vec!["session", "revoke", "root.admin"], admin.clone(), None).await;
    assert!(ok && out.contains("revoked"), "{out}");
    assert!(!run(vec!["status"], admin.clone(), None).await.0);
}

/// Defect 13 (issue 13): a sign-in attempt is counted before its password is verified. Twenty
/// parallel wrong guesses get the five free attempts verified and no more: the rest are refused
/// unverified, so the back-off is the one five failures earn (30 s), not twenty's (15 minutes) —
/// the right password is refused while it lasts and works once it is over. Failures also decay:
/// a day later, old ones no longer count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_are_counted_before_verifying_and_failures_decay() {
    let stack = Stack::start().await.unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(FixedClock::new(start));
    let core = core_with_clock(&stack, clock.clone()).await;
    let password = "an analyst's long passphrase";
    admin::create_user(
        &core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &NewUser {
            username: "ana.lyst",
            role: Role::Analytics,
            patient_id: None,
            practitioner_id: None,
            password,
        },
    )
    .await
    .unwrap();
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let store = core.store.clone();
            let now = clock_now(&clock);
            tokio::spawn(async move {
                users::login(
                    &store,
                    now,
                    "ana.lyst",
                    &format!("guess number {i:02}!"),
                    None,
                )
                .await
            })
        })
        .collect();
    for g in guesses {
        assert_eq!(g.await.unwrap().unwrap_err(), LoginError::Invalid);
    }
    let (failed, locked_until): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT failed_logins, locked_until FROM users WHERE username = 'ana.lyst'")
            .fetch_one(&stack.db().await)
            .await
            .unwrap();
    assert_eq!(
        failed, 5,
        "only the five free attempts were verified (and counted)"
    );
    assert_eq!(locked_until, Some(start + chrono::Duration::seconds(30)));
    let store = &core.store;
    assert_eq!(
        users::login(store, clock_now(&clock), "ana.lyst", password, None)
            .await
            .unwrap_err(),
        LoginError::Invalid,
        "backing off"
    );
    clock.advance(chrono::Duration::seconds(31));
    assert!(
        users::login(store, clock_now(&clock), "ana.lyst", password, None)
            .await
            .is_ok(),
        "the back-off ends: the account is not locked for good"
    );

    // Decay: four failures, a day's pause, four more — never five within the window, no back-off.
    for _ in 0..4 {
        assert!(users::login(
            store,
            clock_now(&clock),
            "ana.lyst",
            "a wrong guess!!",
            None
        )
        .await
        .is_err());
    }
    clock.advance(chrono::Duration::hours(25));
    for _ in 0..4 {
        assert!(users::login(
            store,
            clock_now(&clock),
            "ana.lyst",
            "a wrong guess!!",
            None
        )
        .await
        .is_err());
    }
    assert!(
        users::login(store, clock_now(&clock), "ana.lyst", password, None)
            .await
            .is_ok(),
        "failures older than the window stopped counting"
    );
    core.shutdown().await;
}

/// Issue 13, "administrative operations are core operations": creating, locking, unlocking,
/// role changes, MFA resets and ending sessions take the operator's context, are refused to anyone
/// but an administrator (nothing changes), and are audited by the core with their change.
#[tokio::test]
async fn administrative_operations_are_for_administrators_and_audit_themselves() {
    use carapace_core::access::AccessContext;
    let stack = Stack::start().await.unwrap();
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let core = core_with_clock(&stack, clock).await;
    let store = &core.store;
    let admin = AccessContext::operator("ops.admin");
    let practitioner = AccessContext {
        role: Role::Practitioner,
        ..AccessContext::operator("dr.mallory")
    };
    let new = NewUser {
        username: "nurse.joy",
        role: Role::Practitioner,
        patient_id: None,
        practitioner_id: Some("pr-joy"),
        password: "a long enough passphrase for joy",
    };
    let refused = admin::create_user(store, &practitioner, &new).await;
    assert!(refused.is_err());
    assert!(
        users::find(store, "nurse.joy").await.is_err(),
        "nothing was created"
    );
    admin::create_user(store, &admin, &new).await.unwrap();
    assert!(admin::lock(store, &practitioner, "nurse.joy")
        .await
        .is_err());
    assert!(!users::find(store, "nurse.joy").await.unwrap().admin_locked);
    assert!(
        admin::set_role(store, &practitioner, "nurse.joy", Role::Admin)
            .await
            .is_err()
    );
    assert!(admin::reset_mfa(store, &practitioner, "nurse.joy")
        .await
        .is_err());
    assert!(admin::end_sessions(store, &practitioner, "nurse.joy")
        .await
        .is_err());
    admin::lock(store, &admin, "nurse.joy").await.unwrap();
    assert!(users::find(store, "nurse.joy").await.unwrap().admin_locked);
    admin::unlock(store, &admin, "nurse.joy").await.unwrap();

    let what = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| {
                e["entity"][0]["what"]["reference"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };
    let by_admin = what(&stack.audit_events("agent=ops.admin&subtype=admin").await);
    for op in [
        "user-create:nurse.joy",
        "user-lock:nurse.joy",
        "user-unlock:nurse.joy",
    ] {
        assert!(
            by_admin.contains(&format!("urn:carapace:admin:{op}")),
            "{op}: {by_admin:?}"
        );
    }
    let refusals = stack
        .audit_events("agent=dr.mallory&subtype=admin&outcome=4")
        .await;
    assert_eq!(
        refusals.len(),
        5,
        "every refused operation is audited: {:?}",
        what(&refusals)
    );
}
