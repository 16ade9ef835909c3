//! The full-screen console. First driven through its own event handling (keys → actions → the
//! core, exactly as the binary's event loop does) against a real PostgreSQL and OpenBao, each
//! screen drawn on ratatui's `TestBackend` and compared with an `insta` snapshot (ids, times and
//! secrets filtered); then the real `carapace-console` binary inside `tmux`, against a running
//! server, asserting on the captured screen.

use carapace_console::tui::{App, Modal, Screen};
use carapace_core::access::{Role, Scope};
use carapace_core::config::Config;
use carapace_core::core::Core;
use carapace_core::identity::admin;
use carapace_core::identity::users;
use carapace_tests::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::json;

const ADMIN_PASSWORD: &str = "correct horse battery staple 7";

/// The console's app and the core it works on (as the `carapace_console` role).
struct Console {
    app: App,
    core: Core,
}

impl Console {
    async fn open(stack: &Stack) -> Console {
        let env: std::collections::HashMap<String, String> =
            stack.server.env.iter().cloned().collect();
        let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        let core = Core::open_console(&config).await.unwrap();
        Console {
            app: App::new(config.sessions),
            core,
        }
    }

    /// One key, handled as the event loop handles it.
    async fn press(&mut self, code: KeyCode) {
        if let Some(action) = self.app.handle_key(KeyEvent::new(code, KeyModifiers::NONE)) {
            // Boxed, as the console's event loop does: `apply`'s future (the largest of every
            // operation's) does not fit a test thread's 2 MiB stack inline in a debug build.
            Box::pin(self.app.apply(action, &self.core)).await;
        }
    }

    async fn chars(&mut self, text: &str) {
        for c in text.chars() {
            self.press(KeyCode::Char(c)).await;
        }
    }

    /// Type into a form: each value, then Tab (Enter after the last).
    async fn fill(&mut self, values: &[&str]) {
        for (i, v) in values.iter().enumerate() {
            self.chars(v).await;
            let last = i + 1 == values.len();
            self.press(if last { KeyCode::Enter } else { KeyCode::Tab })
                .await;
        }
    }

    fn screen(&self, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| self.app.draw(f)).unwrap();
        format!("{}", terminal.backend())
    }

    fn message(&self) -> String {
        match &self.app.modal {
            Some(Modal::Message(m)) => m.clone(),
            other => panic!("expected a message, found {other:?}"),
        }
    }
}

/// Filters for what changes from run to run: generated ids, times, ports, key names, secrets.
fn snapshot(name: &str, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots");
    settings.set_prepend_module_to_snapshot(false);
    for (pattern, replacement) in [
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f-]*…?", "[uuid]"),
        (r"\b[0-9a-f]{5,}…", "[uuid…]"),
        (r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}", "[code]"),
        (
            r"(Consent|Patient|Practitioner)/[0-9a-f]{2}[0-9a-f-]*…?",
            "$1/[uuid]",
        ),
        (
            r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}(:\d{0,2}){0,2}(\.\d+)?Z?",
            "[time]",
        ),
        (r"\b20\d{2}-[\d-]*", "[date]"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]"),
        (r"carapace-[0-9a-f]{6,}…?", "carapace-[key]"),
        (r"secret=[A-Z2-7]+", "secret=[secret]"),
        (r"[█▀▄][█▀▄ ]{8,}[█▀▄]", "[qr]"),
        (r"(?m)^│(\s*)\d+(\s)", "│$1[id]$2"),
        (r"\d+ events verified", "[n] events verified"),
        (r"\b\d+:[0-9a-f]{64}\b", "[head]"),
        (r"(audit events\s+)\d+", "$1[n]"),
        (r"(server\s+running)[^│]*", "$1 …"),
        (r"carapace-audit-\d{8}-\d{6}", "carapace-audit-[stamp]"),
        (r"\d+ to the key provider", "[n] to the key provider"),
    ] {
        settings.add_filter(pattern, replacement);
    }
    settings.bind(|| insta::assert_snapshot!(name, text));
}

fn code(uri: &str) -> String {
    totp_rs::TOTP::from_url_unchecked(uri)
        .unwrap()
        .generate_current()
        .unwrap()
}

/// A patient, a practitioner (with a user linked to them and a token), and an administrator.
struct Ward {
    stack: Stack,
    admin_uri: String,
    dr_token: String,
}

async fn ward() -> Ward {
    let stack = Stack::start().await.unwrap();
    let f = stack.fhir();
    for (path, body) in [
        (
            "Practitioner/pr-house",
            json!({"resourceType": "Practitioner", "id": "pr-house",
                   "name": [{"family": "House", "given": ["Gregory"]}]}),
        ),
        (
            "Practitioner/pr-wilson",
            json!({"resourceType": "Practitioner", "id": "pr-wilson",
                   "name": [{"family": "Wilson", "given": ["James"]}]}),
        ),
        (
            "Patient/pat-ada",
            json!({"resourceType": "Patient", "id": "pat-ada", "birthDate": "1815-12-10",
                   "identifier": [{"system": "urn:mrn", "value": "MRN-1001"}],
                   "name": [{"family": "Lovelace", "given": ["Ada"]}]}),
        ),
        (
            "Patient/pat-evil",
            json!({"resourceType": "Patient", "id": "pat-evil",
                   "identifier": [{"system": "urn:mrn", "value": "MRN-6666"}],
                   "name": [{"family": format!("Lovelace\u{202e}gnp.exe{}", "x".repeat(300)), "given": ["Eve"]}]}),
        ),
    ] {
        let r = f.put(path, &body).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let console = Console::open(&stack).await;
    let enrolled = admin::bootstrap_admin(&console.core.store, "root.admin", ADMIN_PASSWORD)
        .await
        .unwrap();
    admin::create_user(
        &console.core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        &users::NewUser {
            username: "dr.house",
            role: Role::Practitioner,
            patient_id: None,
            practitioner_id: Some("pr-house"),
            password: "vicodin and a cane 42",
        },
    )
    .await
    .unwrap();
    let dr_token = practitioner_token(&stack, "dr.house").await;
    console.core.shutdown().await;
    Ward {
        stack,
        admin_uri: enrolled.totp_uri.unwrap(),
        dr_token,
    }
}

/// A token for a practitioner user, as their EHR session would hold.
async fn practitioner_token(stack: &Stack, username: &str) -> String {
    carapace_core::identity::tokens::issue(
        &stack.db().await.into(),
        chrono::Utc::now(),
        username,
        Role::Practitioner,
        &[Scope::parse("user/*.rs").unwrap()],
        None,
    )
    .await
    .unwrap()
    .access_token
}

/// The status of `GET path` with `token` (and more headers).
async fn status_as(stack: &Stack, token: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let auth = format!("Bearer {token}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    http("GET", &stack.server.url(path), &all, None)
        .await
        .unwrap()
        .status
}

impl Ward {
    async fn dr_reads(&self, path: &str, headers: &[(&str, &str)]) -> u16 {
        status_as(&self.stack, &self.dr_token, path, headers).await
    }
}

#[tokio::test]
async fn every_screen_against_the_real_core() {
    let ward = ward().await;
    // The practitioner has no consent yet: Ada's record is not there for them.
    assert_eq!(ward.dr_reads("Patient/pat-ada", &[]).await, 404);
    // They break the glass once, for the review queue.
    let reason = [
        ("X-Purpose-Of-Use", "BTG"),
        (
            "X-Break-Glass-Reason",
            "unconscious in ED; =HYPERLINK(\"x\") no consent on file",
        ),
    ];
    assert_eq!(ward.dr_reads("Patient/pat-evil", &reason).await, 200);

    let mut c = Console::open(&ward.stack).await;
    // Sign-in: the password never drawn; a wrong code refused with the one generic answer.
    c.fill(&["root.admin"]).await;
    c.chars(ADMIN_PASSWORD).await;
    snapshot("tui_sign_in_80x24", &c.screen(80, 24));
    assert!(!c.screen(80, 24).contains("horse"));
    c.press(KeyCode::Tab).await;
    c.chars("000000").await;
    c.press(KeyCode::Enter).await;
    assert_eq!(c.app.screen, Screen::SignIn);
    assert!(c
        .screen(80, 24)
        .contains("invalid username, password or code"));
    c.fill(&["root.admin", ADMIN_PASSWORD, &code(&ward.admin_uri)])
        .await;
    assert_eq!(c.app.screen, Screen::Dashboard, "{}", c.screen(100, 30));

    // Dashboard: health, counts, keys, the failed sign-in just made, the open review.
    let dash = c.screen(120, 30);
    snapshot("tui_dashboard_120x30", &dash);
    assert!(dash.contains("PostgreSQL 15"), "{dash}");
    assert!(dash.contains("1 open"), "{dash}");
    assert!(
        dash.contains("root.admin"),
        "the failed sign-in is listed: {dash}"
    );
    snapshot("tui_dashboard_80x24", &c.screen(80, 24));

    // Users: create a practitioner user; the enrolment (QR, URI, codes) is shown once.
    c.chars("2").await;
    c.press(KeyCode::Char('c')).await;
    c.fill(&[
        "dr.cuddy",
        "practitioner",
        "Practitioner/pr-house",
        "short",
        "short",
    ])
    .await;
    assert!(
        c.screen(100, 30).contains("at least"),
        "the password policy answers in the form: {}",
        c.screen(100, 30)
    );
    c.press(KeyCode::Esc).await;
    c.press(KeyCode::Char('c')).await;
    c.fill(&[
        "dr.cuddy",
        "practitioner",
        "Practitioner/pr-house",
        "dean of medicine 2026",
        "dean of medicine 2026",
    ])
    .await;
    let Some(Modal::Enrollment(enrolled)) = &c.app.modal else {
        panic!("no enrolment shown: {}", c.screen(100, 30));
    };
    let uri = enrolled.uri.clone().unwrap();
    assert!(uri.starts_with("otpauth://totp/Carapace:dr.cuddy?"));
    assert_eq!(enrolled.codes.len(), 10);
    let big = c.screen(200, 50);
    assert!(big.contains('█'), "the QR code is drawn at 200x50");
    snapshot("tui_enrolment_200x50", &big);
    snapshot("tui_enrolment_80x24", &c.screen(80, 24));
    c.press(KeyCode::Enter).await;
    // The enrolment works: the new user signs in with a code from it.
    let user = users::login(
        &c.core.store,
        c.core.store.now(),
        "dr.cuddy",
        "dean of medicine 2026",
        Some(&code(&uri)),
    )
    .await
    .unwrap();
    assert_eq!(user.role, Role::Practitioner);

    // Lock through the confirm dialog (n cancels, y locks), then unlock.
    c.chars("/cuddy").await;
    c.press(KeyCode::Enter).await;
    c.press(KeyCode::Char('l')).await;
    snapshot("tui_users_confirm_80x24", &c.screen(80, 24));
    c.press(KeyCode::Char('n')).await;
    assert!(
        !users::find(&c.core.store, "dr.cuddy")
            .await
            .unwrap()
            .admin_locked
    );
    c.press(KeyCode::Char('l')).await;
    c.press(KeyCode::Char('y')).await;
    assert!(
        users::find(&c.core.store, "dr.cuddy")
            .await
            .unwrap()
            .admin_locked
    );
    c.press(KeyCode::Enter).await;
    snapshot("tui_users_locked_80x24", &c.screen(80, 24));
    c.press(KeyCode::Char('u')).await;
    c.press(KeyCode::Enter).await;
    assert!(
        !users::find(&c.core.store, "dr.cuddy")
            .await
            .unwrap()
            .admin_locked
    );
    // Change role asks for the role, then to confirm.
    c.press(KeyCode::Char('o')).await;
    c.fill(&["analytics"]).await;
    c.press(KeyCode::Char('y')).await;
    c.press(KeyCode::Enter).await;
    assert_eq!(
        users::find(&c.core.store, "dr.cuddy").await.unwrap().role,
        Role::Analytics
    );
    // Clear the filter: every user.
    c.chars("/").await;
    for _ in 0..5 {
        c.press(KeyCode::Backspace).await;
    }
    c.press(KeyCode::Enter).await;
    snapshot("tui_users_120x30", &c.screen(120, 30));

    // Consent: find Ada by name (blind index), grant dr.house by user name, see it tabulated.
    c.chars("3").await;
    c.press(KeyCode::Char('/')).await;
    c.fill(&["Lovelace"]).await;
    assert_eq!(c.app.consent.patients.len(), 2, "both Lovelaces");
    c.press(KeyCode::Char('/')).await;
    for _ in 0.."Lovelace".len() {
        c.press(KeyCode::Backspace).await;
    }
    c.fill(&["MRN-1001"]).await;
    assert_eq!(c.app.consent.patients.len(), 1, "by identifier");
    c.press(KeyCode::Enter).await;
    c.press(KeyCode::Char('a')).await;
    c.fill(&["dr.house", "", ""]).await;
    assert!(
        c.message().contains("Practitioner/pr-house may now see"),
        "{}",
        c.message()
    );
    c.press(KeyCode::Enter).await;
    snapshot("tui_consent_120x30", &c.screen(120, 30));
    assert_eq!(
        ward.dr_reads("Patient/pat-ada", &[]).await,
        200,
        "the grant acts"
    );
    // Revoke (asks first): access ends.
    c.press(KeyCode::Char('x')).await;
    c.press(KeyCode::Char('y')).await;
    assert!(c.message().contains("inactive"), "{}", c.message());
    c.press(KeyCode::Enter).await;
    assert_eq!(
        ward.dr_reads("Patient/pat-ada", &[]).await,
        404,
        "the revocation acts"
    );
    // Hostile patient text is inert.
    c.press(KeyCode::Char('/')).await;
    for _ in 0.."MRN-1001".len() {
        c.press(KeyCode::Backspace).await;
    }
    c.fill(&["MRN-6666"]).await;
    let evil = c.screen(120, 30);
    assert!(
        !evil.contains('\u{202e}'),
        "bidi overrides are not obeyed: {evil:?}"
    );
    assert!(evil.contains("Eve Lovelace\u{fffd}"), "{evil}");
    assert!(!evil.contains(&"x".repeat(40)), "long text is cut: {evil}");
    snapshot("tui_consent_hostile_80x24", &c.screen(80, 24));

    // Audit: the console's own actions are there, with the operator as agent.
    c.chars("4").await;
    snapshot("tui_audit_120x30", &c.screen(120, 30));
    let whats: Vec<String> = c.app.audit.rows.iter().map(|r| r.what.clone()).collect();
    for expected in [
        "user-create:dr.cuddy",
        "user-lock:dr.cuddy",
        "console-login",
    ] {
        assert!(
            whats.iter().any(|w| w == expected),
            "{expected} in {whats:?}"
        );
    }
    assert!(c
        .app
        .audit
        .rows
        .iter()
        .any(|r| r.what.starts_with("Consent/") && r.action == "C" && r.agent == "root.admin"));
    // Filter: creations by the operator only.
    c.press(KeyCode::Char('f')).await;
    c.fill(&["", "", "root.admin", "", "C", "", "n"]).await;
    assert!(!c.app.audit.rows.is_empty());
    assert!(c
        .app
        .audit
        .rows
        .iter()
        .all(|r| r.action == "C" && r.agent == "root.admin"));
    snapshot("tui_audit_filtered_80x24", &c.screen(80, 24));
    // Break-the-glass only.
    c.press(KeyCode::Char('f')).await;
    c.press(KeyCode::Tab).await;
    c.press(KeyCode::Tab).await;
    for _ in 0.."root.admin".len() {
        c.press(KeyCode::Backspace).await;
    }
    c.press(KeyCode::Tab).await;
    c.press(KeyCode::Tab).await;
    c.press(KeyCode::Backspace).await;
    c.press(KeyCode::Tab).await;
    c.press(KeyCode::Tab).await;
    c.press(KeyCode::Backspace).await;
    c.fill(&["y"]).await;
    assert!(!c.app.audit.rows.is_empty());
    assert!(c.app.audit.rows.iter().all(|r| r.agent == "dr.house"));
    // A bad filter is answered in the form.
    c.press(KeyCode::Char('f')).await;
    c.chars("yesterday").await;
    for _ in 0..6 {
        c.press(KeyCode::Tab).await;
    }
    c.press(KeyCode::Enter).await;
    assert!(
        c.screen(100, 30).contains("from: a date"),
        "{}",
        c.screen(100, 30)
    );
    c.press(KeyCode::Esc).await;
    c.press(KeyCode::Char('c')).await;

    // Verify the chain off the UI thread; the result is shown and remembered on the dashboard.
    c.press(KeyCode::Char('v')).await;
    assert!(c.app.job.is_some());
    c.app.finish_job(&c.core).await;
    assert!(
        c.message().starts_with("Audit chain intact"),
        "{}",
        c.message()
    );
    c.press(KeyCode::Enter).await;
    c.chars("1").await;
    snapshot("tui_dashboard_verified_120x30", &c.screen(120, 30));
    c.chars("4").await;

    // Export the filtered trail: CSV, operator-only, formula-safe; never over a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.csv");
    c.press(KeyCode::Char('f')).await;
    c.fill(&["", "", "dr.house", "", "", "", "n"]).await;
    c.press(KeyCode::Char('e')).await;
    for _ in 0..40 {
        c.press(KeyCode::Backspace).await;
    }
    c.fill(&[path.to_str().unwrap()]).await;
    c.app.finish_job(&c.core).await;
    assert!(c.message().starts_with("Exported"), "{}", c.message());
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("id,recorded,action"));
    assert!(
        rows.len() > 2 && rows[1..].iter().all(|r| r.contains("dr.house")),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    c.press(KeyCode::Enter).await;
    c.press(KeyCode::Char('e')).await;
    for _ in 0..40 {
        c.press(KeyCode::Backspace).await;
    }
    c.fill(&[path.to_str().unwrap()]).await;
    c.app.finish_job(&c.core).await;
    assert!(c.message().starts_with("Export failed"), "{}", c.message());
    c.press(KeyCode::Enter).await;

    // Break-the-glass review queue: the reason shown inert; a note marks it reviewed.
    c.chars("5").await;
    snapshot("tui_reviews_120x30", &c.screen(120, 30));
    c.press(KeyCode::Enter).await;
    c.press(KeyCode::Enter).await;
    assert!(c.screen(100, 30).contains("a review needs a note"));
    c.fill(&["called the patient's ward; justified"]).await;
    assert!(c.message().contains("reviewed"), "{}", c.message());
    c.press(KeyCode::Enter).await;
    assert!(c.app.reviews.rows.is_empty());
    let grants = c.core.store.btg_grants(true, 10).await.unwrap();
    assert_eq!(grants[0].reviewed_by.as_deref(), Some("root.admin"));

    // Keys: rotate (asks first) and rewrap with progress; every data key moves to v2.
    c.chars("6").await;
    snapshot("tui_keys_80x24", &c.screen(80, 24));
    c.press(KeyCode::Char('R')).await;
    c.press(KeyCode::Char('y')).await;
    assert!(c.app.job.is_some());
    c.screen(80, 24); // drawn with the progress bar while it runs
    c.app.finish_job(&c.core).await;
    assert!(
        c.message().starts_with("Rotation complete"),
        "{}",
        c.message()
    );
    c.press(KeyCode::Enter).await;
    let versions = c.core.store.key_versions().await.unwrap();
    assert!(versions.iter().all(|(v, _)| *v == 2), "{versions:?}");
    snapshot("tui_keys_rotated_80x24", &c.screen(80, 24));

    // Help lists the screen's keys; q quits.
    c.press(KeyCode::Char('?')).await;
    snapshot("tui_keys_help_80x24", &c.screen(80, 24));
    c.press(KeyCode::Char('x')).await;
    assert_eq!(
        c.app
            .handle_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)),
        Some(carapace_console::tui::Action::Quit)
    );
    // Every screen and dialog draws at every size without panicking, down to a single cell.
    c.press(KeyCode::Char('2')).await;
    c.press(KeyCode::Char('c')).await;
    for screen in [
        Screen::SignIn,
        Screen::Dashboard,
        Screen::Users,
        Screen::Consent,
        Screen::Audit,
        Screen::Reviews,
        Screen::Keys,
        Screen::Exports,
    ] {
        c.app.screen = screen;
        for (w, h) in [(1, 1), (20, 5), (40, 10), (80, 24), (200, 50)] {
            c.screen(w, h);
        }
    }
    c.press(KeyCode::Esc).await;
    c.app.screen = Screen::Users;

    // An operator locked by another administrator is signed out at their next action.
    admin::lock(
        &c.core.store,
        &carapace_core::access::AccessContext::operator("test-admin"),
        "root.admin",
    )
    .await
    .unwrap();
    c.press(KeyCode::Char('r')).await;
    assert_eq!(c.app.screen, Screen::SignIn);
    assert!(c.app.operator.is_none());
    assert!(
        c.screen(80, 24).contains("account changed"),
        "{}",
        c.screen(80, 24)
    );
    c.core.shutdown().await;
}

/// Keep a capture for the README when `CARAPACE_CAPTURE_DIR` is set.
fn keep(name: &str, screen: &str) {
    if let Ok(dir) = std::env::var("CARAPACE_CAPTURE_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.txt"), screen).unwrap();
    }
}

#[tokio::test]
async fn the_real_console_binary_in_tmux() {
    let ward = ward().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut env = ward.stack.server.env.clone();
    env.push((
        "CARAPACE_CONSOLE_LOG".into(),
        log.path().display().to_string(),
    ));
    let t = Tmux::start(&bin_path("carapace-console"), &env, 120, 36);

    // Sign in with the TOTP code.
    t.wait_for("Sign in as an administrator", 30);
    t.type_text("root.admin");
    t.keys(&["Tab"]);
    t.type_text(ADMIN_PASSWORD);
    t.keys(&["Tab"]);
    t.type_text(&code(&ward.admin_uri));
    t.keys(&["Enter"]);
    let dashboard = t.wait_for("Health", 30);
    assert!(dashboard.contains("PostgreSQL 15"), "{dashboard}");
    assert!(!dashboard.contains(ADMIN_PASSWORD));
    keep("dashboard", &dashboard);

    // Create a practitioner user linked to their Practitioner resource.
    t.keys(&["2"]);
    t.wait_for("Users (2)", 10);
    t.keys(&["c"]);
    t.wait_for("New user", 10);
    for (value, then) in [
        ("dr.wilson", "Tab"),
        ("practitioner", "Tab"),
        ("Practitioner/pr-wilson", "Tab"),
        ("oncology is a team sport", "Tab"),
        ("oncology is a team sport", "Enter"),
    ] {
        t.type_text(value);
        t.keys(&[then]);
    }
    let enrolment = t.wait_for("User dr.wilson created", 30);
    assert!(
        enrolment.contains("otpauth://totp/Carapace:dr.wilson"),
        "{enrolment}"
    );
    assert!(enrolment.contains("Recovery codes"), "{enrolment}");
    assert!(enrolment.contains('█'), "a QR code at 120x36: {enrolment}");
    t.keys(&["Enter"]);
    let users = t.wait_for("Users (3)", 10);
    assert!(
        users.contains("dr.wilson") && users.contains("Practitioner/pr-wilson"),
        "{users}"
    );
    keep("users", &users);

    // The new practitioner cannot see Ada's record until a consent names them.
    let wilson = practitioner_token(&ward.stack, "dr.wilson").await;
    let wilson_reads = || status_as(&ward.stack, &wilson, "Patient/pat-ada", &[]);
    assert_eq!(wilson_reads().await, 404);

    // Grant it from the consent screen.
    t.keys(&["3", "/"]);
    t.wait_for("Find a patient", 10);
    t.type_text("MRN-1001");
    t.keys(&["Enter"]);
    t.wait_for("Ada Lovelace", 10);
    t.keys(&["Enter"]);
    t.wait_for("Consents of Ada Lovelace", 10);
    t.keys(&["a"]);
    t.wait_for("Grant access to Ada Lovelace", 10);
    t.type_text("dr.wilson");
    t.keys(&["Tab", "Tab", "Enter"]);
    t.wait_for("may now see this record", 10);
    t.keys(&["Enter"]);
    let consent = t.wait_gone("Enter to close", 10);
    assert!(consent.contains("Practitioner/pr-wilson"), "{consent}");
    assert!(consent.contains("active"), "{consent}");
    keep("consent", &consent);
    assert_eq!(
        wilson_reads().await,
        200,
        "the consent granted in the console acts"
    );

    // The audit screen shows what the operator did (and the practitioner's read).
    t.keys(&["4"]);
    t.wait_for("Audit trail", 10);
    // The table may still be drawing when its title shows: wait for its oldest row listed here.
    let audit = t.wait_for("user-create:dr.wilson", 10);
    for expected in [
        "user-create:dr.wilson",
        "Consent/",
        "console-login",
        "dr.wilson",
    ] {
        assert!(audit.contains(expected), "{expected} in:\n{audit}");
    }
    keep("audit", &audit);

    // Verify the chain, with the result on screen.
    t.keys(&["v"]);
    let verified = t.wait_for("Audit chain intact", 60);
    keep("verified", &verified);
    t.keys(&["Enter"]);
    t.wait_gone("Enter to close", 10);

    // A smaller terminal redraws at its size.
    t.resize(80, 24);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let small = t.wait_for("Audit trail", 10);
    assert!(small.lines().all(|l| l.chars().count() <= 80), "{small}");
    assert_eq!(small.lines().count(), 24, "{small}");

    // Break-the-glass and keys screens open; q quits and the program ends.
    t.keys(&["5"]);
    t.wait_for("Break-the-glass grants", 10);
    t.keys(&["6"]);
    keep(
        "keys",
        &t.wait_for("data keys by key-encryption key version", 10),
    );
    t.keys(&["q"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while t.running() {
        assert!(std::time::Instant::now() < deadline, "q did not quit");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The end of the session is audited too.
    let ended = ward
        .stack
        .audit_events("agent=root.admin&subtype=admin")
        .await;
    assert!(
        ended
            .iter()
            .any(|e| e["entity"][0]["what"]["reference"] == "urn:carapace:admin:console-quit"),
        "{ended:?}"
    );
    // The log file has what happened, never a password or a patient's name.
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(!logged.contains(ADMIN_PASSWORD) && !logged.contains("oncology is a team sport"));
    assert!(!logged.contains("Lovelace"), "{logged}");
}

/// Run from another directory the console used to start a second, empty cluster under a fresh
/// master key, then refuse every sign-in. Now it refuses before creating anything (no cluster, no
/// key, not even its log), naming the absolute path it looked at and how to point it at the
/// server's: for the full-screen console and the subcommands alike, bootstrap included.
#[test]
fn the_console_refuses_a_data_directory_the_server_did_not_make() {
    let elsewhere = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(elsewhere.path()).unwrap();
    let missing = root.join("carapace-data");
    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let log = root.join("console.log");
    let commands: [&[&str]; 3] = [
        &["status"],
        &["bootstrap-admin", "--username", "ops", "--password-stdin"],
        &[],
    ];
    for dir in [&missing, &empty] {
        for args in commands {
            let env = vec![
                ("CARAPACE_DATA_DIR".to_string(), dir.display().to_string()),
                (
                    "CARAPACE_CONSOLE_LOG".to_string(),
                    log.display().to_string(),
                ),
            ];
            let (ok, _, err) = console(&env, args, None);
            assert!(!ok, "{args:?} on {}: {err}", dir.display());
            assert!(
                err.contains(&format!("no Carapace data directory at {}", dir.display()))
                    && err.contains("CARAPACE_DATA_DIR="),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!missing.exists(), "nothing created");
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing created"
    );
    assert!(!log.exists(), "refused before its log file too");

    // The newcomer's case: the default `./carapace-data`, from a directory the server never ran in.
    let out = std::process::Command::new(bin_path("carapace-console"))
        .arg("status")
        .current_dir(&root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(!missing.exists(), "nothing created");
}

/// The command-line console as a newcomer uses it: the TOTP code is asked for on the terminal once
/// the console has started (a code set before a build expires), on standard error so that
/// `TOKEN=$(carapace-console login)` captures the token alone; listings show names as typed
/// (`Ward EHR`, not `Ward?EHR`) with escapes still neutralised.
#[tokio::test]
async fn the_command_line_console_asks_on_the_terminal_and_lists_names_as_typed() {
    let ward = ward().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("login.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nTOKEN=$(\"$CONSOLE\" login)\ncase \"$TOKEN\" in\n  *TOTP*|'') echo \"NO TOKEN: $TOKEN\" ;;\n  *) echo \"a token of ${#TOKEN} characters\" ;;\nesac\nsleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut env = ward.stack.server.env.clone();
    env.extend([
        ("CARAPACE_OPERATOR".to_string(), "root.admin".to_string()),
        (
            "CARAPACE_OPERATOR_PASSWORD".to_string(),
            ADMIN_PASSWORD.to_string(),
        ),
        (
            "CONSOLE".to_string(),
            bin_path("carapace-console").display().to_string(),
        ),
    ]);
    let t = Tmux::start(&script, &env, 100, 20);
    t.wait_for("TOTP or recovery code:", 60);
    t.type_text(&code(&ward.admin_uri));
    t.keys(&["Enter"]);
    let screen = t.wait_for(" characters", 30);
    assert!(screen.contains("a token of "), "{screen}");

    let env = ward.stack.console_env("root.admin").await;
    let (_, jwk) = BackendClient::keypair(jsonwebtoken::Algorithm::ES384);
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let jwks = jwks.display().to_string();
    for name in ["Ward EHR", "Evil\u{1b}[2J\nlab"] {
        let (ok, _, err) = console(
            &env,
            &[
                "client",
                "register",
                "--name",
                name,
                "--jwks-file",
                &jwks,
                "--scope",
                "system/*.rs",
            ],
            None,
        );
        assert!(ok, "{err}");
    }
    let (ok, out, err) = console(&env, &["client", "list"], None);
    assert!(ok, "{err}");
    assert!(out.contains(" Ward EHR "), "{out}");
    assert!(out.contains("Evil\u{fffd}[2J\u{fffd}lab"), "{out}");
    assert!(!out.contains('\u{1b}'), "{out}");
}

/// A Bulk Data export job as the server's kick-off would leave it, written straight into the
/// table (its sealed request is never read by the listing, so any bytes do).
#[derive(Default)]
struct JobRow<'a> {
    id: &'a str,
    principal: &'a str,
    client: Option<&'a str>,
    level: &'a str,
    state: &'a str,
    progress: &'a str,
    resources: i64,
    bytes: i64,
    /// Output files registered for it.
    files: &'a [&'a str],
    error: Option<&'a str>,
    minutes_ago: i32,
}

impl JobRow<'_> {
    async fn insert(&self, db: &sqlx::PgPool) {
        let running = self.state == "running";
        sqlx::query(
            "INSERT INTO export_jobs (id, principal, client_id, role, scopes, level, request, state,
                                      progress, resources, bytes, error, created_at, heartbeat,
                                      expires_at)
             VALUES ($1, $2, $3, 'practitioner', ARRAY['system/*.rs'], $4, $5, $6, $7, $8, $9,
                     $10, now() - make_interval(mins => $11),
                     CASE WHEN $12 THEN now() + interval '1 hour' END,
                     CASE WHEN $12 THEN NULL ELSE now() + interval '1 hour' END)",
        )
        .bind(self.id)
        .bind(self.principal)
        .bind(self.client)
        .bind(self.level)
        .bind(vec![0u8])
        .bind(self.state)
        .bind(self.progress)
        .bind(self.resources)
        .bind(self.bytes)
        .bind(self.error)
        .bind(self.minutes_ago)
        // A running job's worker is alive: a heartbeat ahead of the clock keeps the server's
        // runner from claiming it again while the test looks at it.
        .bind(running)
        .execute(db)
        .await
        .unwrap();
        for (i, resource_type) in self.files.iter().enumerate() {
            sqlx::query(
                "INSERT INTO export_files (job_id, name, position, kind, resource_type, count, bytes)
                 VALUES ($1, $2, $3, 'output', $4, 1, 1)",
            )
            .bind(self.id)
            .bind(format!("{resource_type}.{i}.ndjson"))
            .bind(i as i32)
            .bind(resource_type)
            .execute(db)
            .await
            .unwrap();
        }
    }
}

/// A job's state in the table: cancelled, or already removed by the server's clean-up (which
/// takes cancelled jobs within seconds).
async fn job_state(db: &sqlx::PgPool, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM export_jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .unwrap()
}

const RUNNING_JOB: &str = "5e1f0c2a-7d4b-4c8e-9a31-2b6d8f0e4a17";

#[tokio::test]
async fn the_exports_screen_lists_jobs_and_cancels_one() {
    let ward = ward().await;
    let db = ward.stack.db().await;
    for job in [
        JobRow {
            id: RUNNING_JOB,
            principal: "dr.house",
            client: Some("ward-portal"),
            level: "patient",
            state: "running",
            progress: "Observation",
            resources: 1200,
            bytes: 345_678,
            minutes_ago: 1,
            ..JobRow::default()
        },
        JobRow {
            id: "c0ffee00-1111-4222-8333-444455556666",
            principal: "ward-ehr",
            client: Some("ward-ehr"),
            level: "system",
            state: "complete",
            progress: "complete",
            resources: 52_000,
            bytes: 73 << 20,
            files: &["Patient", "Observation", "Observation"],
            minutes_ago: 30,
            ..JobRow::default()
        },
        JobRow {
            id: "f00dface-1111-4222-8333-444455556666",
            principal: "ward-ehr",
            client: Some("ward-ehr"),
            level: "group",
            state: "failed",
            progress: "failed",
            error: Some("the export failed on the server"),
            minutes_ago: 90,
            ..JobRow::default()
        },
    ] {
        job.insert(&db).await;
    }

    let mut c = Console::open(&ward.stack).await;
    c.fill(&["root.admin", ADMIN_PASSWORD, &code(&ward.admin_uri)])
        .await;
    assert_eq!(c.app.screen, Screen::Dashboard, "{}", c.screen(100, 30));
    c.chars("7").await;
    assert_eq!(c.app.screen, Screen::Exports);
    assert_eq!(c.app.exports.rows.len(), 3, "{}", c.screen(120, 30));
    let screen = c.screen(120, 30);
    snapshot("tui_exports_120x30", &screen);
    for expected in [
        "5e1f0c2a",
        "dr.house via ward-portal",
        "337.6 KiB",
        "73.0 MiB",
        "7 exports",
    ] {
        assert!(screen.contains(expected), "{expected} in:\n{screen}");
    }
    // The selected job in full below the table: why the failed one failed.
    c.press(KeyCode::Char('G')).await;
    let failed = c.screen(120, 30);
    assert!(
        failed.contains("error     the export failed on the server"),
        "{failed}"
    );
    c.press(KeyCode::Char('g')).await;

    // Cancel the running one: asks first (n keeps it), then the core cancels it, audited.
    c.press(KeyCode::Char('c')).await;
    assert!(
        matches!(&c.app.modal, Some(Modal::Confirm(text, _)) if text.contains(RUNNING_JOB)),
        "{}",
        c.screen(120, 30)
    );
    c.press(KeyCode::Char('n')).await;
    assert_eq!(
        job_state(&db, RUNNING_JOB).await.as_deref(),
        Some("running")
    );
    c.press(KeyCode::Char('c')).await;
    c.press(KeyCode::Char('y')).await;
    assert!(
        c.message().starts_with("Export 5e1f0c2a cancelled"),
        "{}",
        c.message()
    );
    assert!(
        matches!(
            job_state(&db, RUNNING_JOB).await.as_deref(),
            None | Some("cancelled")
        ),
        "the job is cancelled"
    );
    c.press(KeyCode::Enter).await;
    assert!(c
        .app
        .exports
        .rows
        .iter()
        .all(|j| j.id != RUNNING_JOB || j.state.as_str() == "cancelled"));
    let admin = ward
        .stack
        .audit_events("agent=root.admin&subtype=admin")
        .await;
    let cancelled = format!("urn:carapace:admin:export-cancel:{RUNNING_JOB}");
    assert!(
        admin.iter().any(
            |e| e["entity"][0]["what"]["reference"] == cancelled.as_str() && e["outcome"] == "0"
        ),
        "{admin:?}"
    );
    c.core.shutdown().await;
}

/// `export list` and `export cancel` as a script runs them: a plain table, exit status 0 for a
/// cancelled job, and a clear refusal (non-zero) for an id that is not there.
#[tokio::test]
async fn the_export_subcommands_list_and_cancel_jobs() {
    const JOB: &str = "0a2b4c6d-1111-4222-8333-444455556666";
    let stack = Stack::start().await.unwrap();
    let db = stack.db().await;
    JobRow {
        id: JOB,
        principal: "ward-ehr",
        client: Some("ward-ehr"),
        level: "system",
        state: "complete",
        progress: "complete",
        resources: 12,
        bytes: 4096,
        files: &["Patient"],
        minutes_ago: 5,
        ..JobRow::default()
    }
    .insert(&db)
    .await;
    let env = stack.console_env("root.admin").await;

    let (ok, out, err) = console(&env, &["export", "list"], None);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    for column in [
        "ID",
        "CLIENT",
        "LEVEL",
        "STATE",
        "RESOURCES",
        "BYTES",
        "FILES",
        "CREATED",
        "EXPIRES",
    ] {
        assert!(header.contains(column), "{column} in {header}");
    }
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with(JOB))
        .unwrap_or_else(|| panic!("the job is listed: {out}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..7],
        &[JOB, "ward-ehr", "system", "complete", "12", "4096", "1"],
        "{out}"
    );

    let (ok, out, err) = console(&env, &["export", "cancel", JOB], None);
    assert!(ok, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    assert!(
        matches!(
            job_state(&db, JOB).await.as_deref(),
            None | Some("cancelled")
        ),
        "the job is cancelled"
    );

    for id in ["no-such-job", JOB] {
        let (ok, _, err) = console(&env, &["export", "cancel", id], None);
        assert!(!ok, "cancelling {id} again fails");
        assert!(
            err.contains(&format!("no export job {id} to cancel")),
            "{id}: {err}"
        );
    }
}
