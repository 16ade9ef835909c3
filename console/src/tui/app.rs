//! The application state: which screen is shown, what each holds, how keys become [`Action`]s and
//! what an action does. Drawing (in `view`) reads the state only; [`App::apply`] is the one place
//! that calls the core, and long work (chain verification, rewrap, export) runs there as a [`Job`]
//! on its own task while the screen keeps answering.

use super::data::{AuditRow, ConsentRow, Dashboard, PatientRow, UserRow};
use super::form::{Form, FormKey};
use crate::export;
use crate::operator::scoped;
use carapace_core::access::{AccessContext, Role};
use carapace_core::core::Core;
use carapace_core::fhir::{ResourceId, ResourceType};
use carapace_core::identity::authorize::SessionPolicy;
use carapace_core::identity::{admin, tokens as auth, users};
use carapace_core::search::query;
use carapace_core::store::AuditQuery;
use carapace_core::store::{Created, StoreError};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A secret typed by the operator (a new user's password): never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What is done to a user (each audited as `user-...:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserOp {
    Create {
        username: String,
        role: Role,
        /// `Patient/<id>` or `Practitioner/<id>`.
        link: Option<String>,
        password: Secret,
    },
    Lock(String),
    Unlock(String),
    ResetMfa(String),
    SetRole(String, Role),
    /// End every session and token of the user.
    Revoke(String),
}

impl UserOp {
    /// What the operation does, as its AuditEvent names it (`user-lock:alice`).
    fn what(&self) -> String {
        match self {
            UserOp::Create { username, .. } => format!("user-create:{username}"),
            UserOp::Lock(name) => format!("user-lock:{name}"),
            UserOp::Unlock(name) => format!("user-unlock:{name}"),
            UserOp::ResetMfa(name) => format!("user-reset-mfa:{name}"),
            UserOp::SetRole(name, role) => format!("user-set-role:{name}:{}", role.as_str()),
            UserOp::Revoke(name) => format!("session-revoke:{name}"),
        }
    }
}

/// What a key (or the clock) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    SignIn,
    /// The operator was idle too long: clear everything and ask again.
    SignOut,
    /// Load the current screen again.
    Refresh,
    User(UserOp),
    FindPatients(String),
    OpenPatient(String),
    Grant {
        patient: String,
        /// `Practitioner/..`, `Organization/..`, `PractitionerRole/..`, `CareTeam/..`, or a user name
        /// (its linked Practitioner).
        actor: String,
        classes: Vec<String>,
        end: Option<String>,
    },
    /// Make a Consent inactive.
    RevokeConsent(String),
    Review {
        id: i64,
        note: String,
    },
    VerifyChain,
    Export(String),
    Rotate,
    /// The running job finished: show its result.
    JobDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    SignIn,
    Dashboard,
    Users,
    Consent,
    Audit,
    Reviews,
    Keys,
}

impl Screen {
    pub const MAIN: [(char, Screen, &'static str); 6] = [
        ('1', Screen::Dashboard, "dashboard"),
        ('2', Screen::Users, "users"),
        ('3', Screen::Consent, "consent"),
        ('4', Screen::Audit, "audit"),
        ('5', Screen::Reviews, "break-glass"),
        ('6', Screen::Keys, "keys"),
    ];
}

/// The Users screen: every user, a filter on the name, a selection.
#[derive(Debug, Default)]
pub struct UsersView {
    pub rows: Vec<UserRow>,
    pub filter: String,
    pub typing: bool,
    pub selected: usize,
}

impl UsersView {
    pub fn visible(&self) -> Vec<&UserRow> {
        let f = self.filter.to_lowercase();
        self.rows
            .iter()
            .filter(|r| f.is_empty() || r.username.to_lowercase().contains(&f))
            .collect()
    }

    fn current(&self) -> Option<String> {
        self.visible()
            .get(self.selected)
            .map(|r| r.username.clone())
    }
}

/// The consent screen: patients found, the one opened, their Consents.
#[derive(Debug, Default)]
pub struct ConsentView {
    pub query: String,
    pub patients: Vec<PatientRow>,
    pub selected_patient: usize,
    pub patient: Option<PatientRow>,
    pub consents: Vec<ConsentRow>,
    pub selected: usize,
    /// Keys move in the consent table (else in the patient list).
    pub in_consents: bool,
}

/// The audit screen's filter, as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub since: String,
    pub until: String,
    pub agent: String,
    pub patient: String,
    pub action: String,
    pub outcome: String,
    pub btg_only: bool,
}

impl AuditFilter {
    /// The core's query for this filter, or what is wrong with it.
    pub fn query(&self, count: usize) -> Result<AuditQuery, String> {
        // A date alone means the whole day: from its start, until the end of it.
        let time = |s: &str,
                    what: &str,
                    days: u64|
         -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Ok(Some(t.with_timezone(&chrono::Utc)));
            }
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.checked_add_days(chrono::Days::new(days)))
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| Some(t.and_utc()))
                .ok_or(format!(
                    "{what}: a date YYYY-MM-DD or a time like 2026-11-23T10:00:00Z"
                ))
        };
        let action = self.action.to_uppercase();
        if !action.is_empty() && !["C", "R", "U", "D", "E"].contains(&action.as_str()) {
            return Err("action: C, R, U, D or E".into());
        }
        if !self.outcome.is_empty() && !["0", "4", "8", "12"].contains(&self.outcome.as_str()) {
            return Err("outcome: 0 (success), 4, 8 or 12 (failures)".into());
        }
        let patient = match self.patient.as_str() {
            "" => None,
            p if p.starts_with("Patient/") => Some(p.to_string()),
            p => Some(format!("Patient/{p}")),
        };
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(AuditQuery {
            since: time(&self.since, "from", 0)?,
            until: time(&self.until, "until", 1)?,
            agent: opt(&self.agent),
            patient,
            action: opt(&action),
            outcome: opt(&self.outcome),
            purpose: self.btg_only.then(|| "BTG".to_string()),
            count,
            ..AuditQuery::default()
        })
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("from", &self.since),
            ("until", &self.until),
            ("agent", &self.agent),
            ("patient", &self.patient),
            ("action", &self.action),
            ("outcome", &self.outcome),
        ] {
            if !v.is_empty() {
                parts.push(format!("{name}={v}"));
            }
        }
        if self.btg_only {
            parts.push("break-the-glass only".into());
        }
        parts.join(" ")
    }
}

/// The audit screen: a page of events (newest first), a selection, the pages before.
#[derive(Debug, Default)]
pub struct AuditView {
    pub rows: Vec<AuditRow>,
    pub selected: usize,
    /// `before_id` of each page shown so far (`None` for the newest).
    pub pages: Vec<Option<i64>>,
    pub next: Option<i64>,
    pub filter: AuditFilter,
    /// Lines the detail pane is scrolled by.
    pub detail_scroll: u16,
}

/// One break-the-glass grant in the review queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub id: i64,
    pub who: String,
    pub role: String,
    pub started: String,
    pub expires: String,
    pub accesses: i64,
    pub reason: String,
    pub reviewed: String,
}

#[derive(Debug, Default)]
pub struct ReviewsView {
    pub rows: Vec<GrantRow>,
    pub selected: usize,
    /// Reviewed grants too.
    pub all: bool,
}

#[derive(Debug, Default)]
pub struct KeysView {
    pub provider: String,
    pub versions: Vec<(i32, i64)>,
    pub external_calls: u64,
    /// When the figures were read: the screen reads them again every second, so a rewrap run
    /// elsewhere (another console, `keys rotate`) shows its progress here too.
    pub loaded: Option<Instant>,
}

/// A user just created or re-enrolled: what they need, shown once.
#[derive(Clone)]
pub struct Enrolled {
    pub username: String,
    pub uri: Option<String>,
    pub codes: Vec<String>,
}

/// The TOTP seed and the recovery codes never reach debug output.
impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("username", &self.username)
            .field("codes", &self.codes.len())
            .finish_non_exhaustive()
    }
}

/// Which form a dialog is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormKind {
    CreateUser,
    SetRole(String),
    FindPatient,
    Grant(String),
    AuditFilter,
    Review(i64),
    Export,
}

/// A dialog over the screen; it takes every key until it closes.
#[derive(Debug, Clone)]
pub enum Modal {
    Form(FormKind, Form),
    /// `y` runs the action; anything else closes.
    Confirm(String, Action),
    Enrollment(Enrolled),
    Message(String),
}

/// Progress of a job: `done` of `total` (0 when the total is not known).
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Progress {
    fn set(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
}

/// Long work on its own task; its result is a line for the operator.
pub struct Job {
    pub title: &'static str,
    pub progress: Arc<Progress>,
    handle: tokio::task::JoinHandle<String>,
}

pub struct App {
    pub screen: Screen,
    pub sign_in: Form,
    pub operator: Option<AccessContext>,
    pub dashboard: Dashboard,
    pub users: UsersView,
    pub consent: ConsentView,
    pub audit: AuditView,
    pub reviews: ReviewsView,
    pub keys: KeysView,
    pub modal: Option<Modal>,
    pub help: bool,
    pub job: Option<Job>,
    /// The result of the last chain verification in this console.
    pub chain: String,
    sessions: SessionPolicy,
    /// The core's clock when the last action ran (`YYYYmmdd-HHMMSS`), for default file names.
    stamp: String,
    idle: Duration,
    last_key: Instant,
}

/// Audit events per page.
pub const AUDIT_PAGE: usize = 50;
/// Rows PageUp/PageDown move in long lists.
const PAGE_STEP: usize = 20;

/// Scopes of the operator's FHIR work, per task.
const PATIENT_SCOPES: [&str; 3] = [
    "user/Patient.rs",
    "user/Consent.cruds",
    "user/Practitioner.rs",
];
const AUDIT_SCOPES: [&str; 1] = ["user/AuditEvent.rs"];

fn sign_in_form() -> Form {
    Form::new(
        "Sign in",
        &[
            ("username", false),
            ("password", true),
            ("TOTP or recovery code", true),
        ],
    )
    .hint("Sign in as an administrator. Tab moves between fields, Enter signs in.")
}

fn move_in(selected: &mut usize, len: usize, key: KeyCode) -> bool {
    let last = len.saturating_sub(1);
    *selected = match key {
        KeyCode::Down | KeyCode::Char('j') => (*selected + 1).min(last),
        KeyCode::Up | KeyCode::Char('k') => selected.saturating_sub(1),
        KeyCode::PageDown => (*selected + PAGE_STEP).min(last),
        KeyCode::PageUp => selected.saturating_sub(PAGE_STEP),
        KeyCode::Home | KeyCode::Char('g') => 0,
        KeyCode::End | KeyCode::Char('G') => last,
        _ => return false,
    };
    true
}

fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::Invalid(issues) => issues
            .iter()
            .take(3)
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect::<Vec<_>>()
            .join("; "),
        e => e.to_string(),
    }
}

impl App {
    pub fn new(sessions: SessionPolicy) -> App {
        let idle = sessions
            .idle
            .to_std()
            .unwrap_or(Duration::from_secs(15 * 60));
        App {
            screen: Screen::SignIn,
            sign_in: sign_in_form(),
            operator: None,
            dashboard: Dashboard::default(),
            users: UsersView::default(),
            consent: ConsentView::default(),
            audit: AuditView::default(),
            reviews: ReviewsView::default(),
            keys: KeysView::default(),
            modal: None,
            help: false,
            job: None,
            chain: "not verified in this session (4, then v)".into(),
            sessions,
            stamp: String::new(),
            idle,
            last_key: Instant::now(),
        }
    }

    /// The operator signed in (their name), if any.
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_ref().map(|o| o.principal.as_str())
    }

    fn ctx(&self, scopes: &[&str]) -> AccessContext {
        scoped(self.operator().unwrap_or_default(), scopes)
    }

    fn form(&mut self, kind: FormKind, form: Form) -> Option<Action> {
        self.modal = Some(Modal::Form(kind, form));
        None
    }

    fn confirm(&mut self, text: String, action: Action) -> Option<Action> {
        self.modal = Some(Modal::Confirm(text, action));
        None
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        self.last_key = Instant::now();
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        if self.help {
            self.help = false;
            return None;
        }
        if let Some(modal) = self.modal.take() {
            return self.modal_key(modal, key);
        }
        if self.screen == Screen::SignIn {
            return match self.sign_in.key(key) {
                FormKey::Submit => Some(Action::SignIn),
                FormKey::Cancel => Some(Action::Quit),
                FormKey::Edited => None,
            };
        }
        let handled = match self.screen {
            Screen::Users => self.users_key(key),
            Screen::Consent => self.consent_key(key),
            Screen::Audit => self.audit_key(key),
            Screen::Reviews => self.reviews_key(key),
            Screen::Keys => self.keys_key(key),
            Screen::Dashboard | Screen::SignIn => None,
        };
        if let Some(action) = handled {
            return action;
        }
        match key.code {
            KeyCode::Char('q') if self.job.is_some() => self.confirm(
                "A job is still running and stops if the console quits. Quit anyway?".into(),
                Action::Quit,
            ),
            KeyCode::Char('q') => Some(Action::Quit),
            // Esc backs out to the dashboard; q quits.
            KeyCode::Esc if self.screen != Screen::Dashboard => self.open(Screen::Dashboard),
            KeyCode::Char('?') => {
                self.help = true;
                None
            }
            KeyCode::Char('r') => Some(Action::Refresh),
            KeyCode::Char(c) => match Screen::MAIN.iter().find(|(k, ..)| *k == c) {
                Some(&(_, screen, _)) => self.open(screen),
                None => None,
            },
            _ => None,
        }
    }

    fn open(&mut self, screen: Screen) -> Option<Action> {
        self.screen = screen;
        if screen == Screen::Audit {
            self.audit.pages = vec![None];
        }
        Some(Action::Refresh)
    }

    fn modal_key(&mut self, modal: Modal, key: KeyEvent) -> Option<Action> {
        match modal {
            Modal::Confirm(_, action) => (key.code == KeyCode::Char('y')).then_some(action),
            Modal::Enrollment(_) | Modal::Message(_)
                if matches!(key.code, KeyCode::Enter | KeyCode::Esc | KeyCode::Char('q')) =>
            {
                None
            }
            keep @ (Modal::Enrollment(_) | Modal::Message(_)) => {
                self.modal = Some(keep);
                None
            }
            Modal::Form(kind, mut form) => match form.key(key) {
                FormKey::Cancel => None,
                FormKey::Edited => self.form(kind, form),
                FormKey::Submit => match self.submit(&kind, &form) {
                    Ok(action) => action,
                    Err(error) => {
                        form.error = Some(error);
                        self.form(kind, form)
                    }
                },
            },
        }
    }

    /// A form's values as the action it asks for (or a dialog after it), or what is wrong.
    fn submit(&mut self, kind: &FormKind, form: &Form) -> Result<Option<Action>, String> {
        let parse_role = |s: &str| {
            Role::parse(s).ok_or("role: admin, practitioner, patient or analytics".to_string())
        };
        match kind {
            FormKind::CreateUser => {
                let username = form.value(0).to_string();
                users::check_username(&username).map_err(|e| e.to_string())?;
                let role = parse_role(form.value(1))?;
                let link = match form.value(2) {
                    "" => None,
                    l if l.starts_with("Patient/") || l.starts_with("Practitioner/") => {
                        Some(l.to_string())
                    }
                    _ => return Err("link: Patient/<id> or Practitioner/<id>, or empty".into()),
                };
                if form.value(3) != form.value(4) {
                    return Err("the two passwords differ".into());
                }
                users::check_password_policy(&username, form.value(3))
                    .map_err(|e| e.to_string())?;
                Ok(Some(Action::User(UserOp::Create {
                    username,
                    role,
                    link,
                    password: Secret(form.value(3).to_string()),
                })))
            }
            FormKind::SetRole(name) => {
                let role = parse_role(form.value(0))?;
                Ok(self.confirm(
                    format!(
                        "Make {} {} and end their sessions?",
                        super::inert(name, 32),
                        role.as_str()
                    ),
                    Action::User(UserOp::SetRole(name.clone(), role)),
                ))
            }
            FormKind::FindPatient => match form.value(0) {
                "" => Err("type a name or an identifier".into()),
                q => Ok(Some(Action::FindPatients(q.to_string()))),
            },
            FormKind::Grant(patient) => {
                let actor = form.value(0).to_string();
                if actor.is_empty() {
                    return Err("who: a user name, or Practitioner/<id>, Organization/<id>, PractitionerRole/<id>, CareTeam/<id>".into());
                }
                let mut classes = Vec::new();
                for c in form.value(1).split([',', ' ']).filter(|c| !c.is_empty()) {
                    ResourceType::parse(c).ok_or(format!("records: {c} is not a resource type"))?;
                    classes.push(c.to_string());
                }
                let end = match form.value(2) {
                    "" => None,
                    e => {
                        chrono::NaiveDate::parse_from_str(e, "%Y-%m-%d")
                            .map_err(|_| "until: a date YYYY-MM-DD, or empty".to_string())?;
                        Some(e.to_string())
                    }
                };
                Ok(Some(Action::Grant {
                    patient: patient.clone(),
                    actor,
                    classes,
                    end,
                }))
            }
            FormKind::AuditFilter => {
                let btg = form.value(6).to_lowercase();
                let filter = AuditFilter {
                    since: form.value(0).to_string(),
                    until: form.value(1).to_string(),
                    agent: form.value(2).to_string(),
                    patient: form.value(3).to_string(),
                    action: form.value(4).to_uppercase(),
                    outcome: form.value(5).to_string(),
                    btg_only: btg.starts_with('y'),
                };
                filter.query(AUDIT_PAGE)?;
                self.audit.filter = filter;
                self.audit.pages = vec![None];
                Ok(Some(Action::Refresh))
            }
            FormKind::Review(id) => match form.value(0) {
                "" => Err("a review needs a note".into()),
                note => Ok(Some(Action::Review {
                    id: *id,
                    note: note.to_string(),
                })),
            },
            FormKind::Export => match form.value(0) {
                "" => Err("a file name, ending .csv or .ndjson".into()),
                path => Ok(Some(Action::Export(path.to_string()))),
            },
        }
    }

    fn users_key(&mut self, key: KeyEvent) -> Option<Option<Action>> {
        let users = &mut self.users;
        if users.typing {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => users.typing = false,
                KeyCode::Backspace => {
                    users.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && users.filter.chars().count() < 64 => {
                    users.filter.push(c);
                    users.selected = 0;
                }
                _ => {}
            }
            return Some(None);
        }
        let count = users.visible().len();
        if move_in(&mut users.selected, count, key.code) {
            return Some(None);
        }
        if key.code == KeyCode::Char('/') {
            users.typing = true;
            return Some(None);
        }
        if key.code == KeyCode::Char('c') {
            return Some(self.form(
                FormKind::CreateUser,
                Form::new(
                    "New user",
                    &[
                        ("user name", false),
                        ("role", false),
                        ("linked to", false),
                        ("password", true),
                        ("password again", true),
                    ],
                )
                .hint("role: admin, practitioner, patient or analytics · linked to: Practitioner/<id> or Patient/<id> · passwords: 12+ characters"),
            ));
        }
        let name = users.current()?;
        let shown = super::inert(&name, 32);
        Some(match key.code {
            // Destructive actions ask first.
            KeyCode::Char('l') => self.confirm(
                format!("Lock {shown} and end their sessions?"),
                Action::User(UserOp::Lock(name)),
            ),
            KeyCode::Char('u') => Some(Action::User(UserOp::Unlock(name))),
            KeyCode::Char('m') => self.confirm(
                format!(
                    "Reset {shown}'s MFA? Their authenticator and recovery codes stop working."
                ),
                Action::User(UserOp::ResetMfa(name)),
            ),
            KeyCode::Char('x') => self.confirm(
                format!("End every session and token of {shown}?"),
                Action::User(UserOp::Revoke(name)),
            ),
            KeyCode::Char('o') => self.form(
                FormKind::SetRole(name),
                Form::new(&format!("Role of {shown}"), &[("new role", false)])
                    .hint("admin, practitioner, patient or analytics"),
            ),
            _ => return None,
        })
    }

    fn consent_key(&mut self, key: KeyEvent) -> Option<Option<Action>> {
        let view = &mut self.consent;
        if view.in_consents {
            if move_in(&mut view.selected, view.consents.len(), key.code) {
                return Some(None);
            }
        } else if move_in(&mut view.selected_patient, view.patients.len(), key.code) {
            return Some(None);
        }
        match key.code {
            KeyCode::Char('/') => Some(
                self.form(
                    FormKind::FindPatient,
                    Form::new("Find a patient", &[("name or identifier", false)])
                        .with(0, &self.consent.query.clone()),
                ),
            ),
            KeyCode::Tab => {
                view.in_consents = !view.in_consents && view.patient.is_some();
                Some(None)
            }
            KeyCode::Enter if !view.in_consents => Some(
                view.patients
                    .get(view.selected_patient)
                    .map(|p| Action::OpenPatient(p.id.clone())),
            ),
            KeyCode::Char('a') => {
                let patient = view.patient.clone()?;
                Some(self.form(
                    FormKind::Grant(patient.id.clone()),
                    Form::new(
                        &format!("Grant access to {}", super::inert(&patient.name, 40)),
                        &[("who", false), ("records", false), ("until", false)],
                    )
                    .hint("who: a user name or Practitioner/<id>, Organization/<id> · records: resource types, empty for all · until: YYYY-MM-DD, empty for no end"),
                ))
            }
            KeyCode::Char('x') if view.in_consents => {
                let c = view.consents.get(view.selected)?;
                if c.status != "active" {
                    return Some(None);
                }
                let text = format!(
                    "Revoke consent {} ({} for {})?",
                    super::inert(&c.id, 40),
                    c.effect,
                    super::inert(&c.who, 40)
                );
                let action = Action::RevokeConsent(c.id.clone());
                Some(self.confirm(text, action))
            }
            _ => None,
        }
    }

    fn audit_key(&mut self, key: KeyEvent) -> Option<Option<Action>> {
        let audit = &mut self.audit;
        if move_in(&mut audit.selected, audit.rows.len(), key.code) {
            audit.detail_scroll = 0;
            return Some(None);
        }
        Some(match key.code {
            // The detail pane scrolls through the whole event.
            KeyCode::Char('J') => {
                audit.detail_scroll = audit.detail_scroll.saturating_add(5);
                None
            }
            KeyCode::Char('K') => {
                audit.detail_scroll = audit.detail_scroll.saturating_sub(5);
                None
            }
            KeyCode::Char('n') | KeyCode::Right if audit.next.is_some() => {
                audit.pages.push(audit.next);
                Some(Action::Refresh)
            }
            KeyCode::Char('p') | KeyCode::Left if audit.pages.len() > 1 => {
                audit.pages.pop();
                Some(Action::Refresh)
            }
            KeyCode::Char('f') => {
                let f = audit.filter.clone();
                self.form(
                    FormKind::AuditFilter,
                    Form::new(
                        "Filter the audit trail",
                        &[
                            ("from", false),
                            ("until", false),
                            ("agent", false),
                            ("patient", false),
                            ("action", false),
                            ("outcome", false),
                            ("break-the-glass only", false),
                        ],
                    )
                    .with(0, &f.since)
                    .with(1, &f.until)
                    .with(2, &f.agent)
                    .with(3, &f.patient)
                    .with(4, &f.action)
                    .with(5, &f.outcome)
                    .with(6, if f.btg_only { "y" } else { "n" })
                    .hint("dates YYYY-MM-DD (UTC) · action C R U D E · outcome 0 ok, 4/8/12 failed · y/n"),
                )
            }
            KeyCode::Char('c') => {
                audit.filter = AuditFilter::default();
                audit.pages = vec![None];
                Some(Action::Refresh)
            }
            KeyCode::Char('v') if self.job.is_none() => Some(Action::VerifyChain),
            KeyCode::Char('e') if self.job.is_none() => {
                let name = format!("carapace-audit-{}.csv", self.stamp);
                self.form(
                    FormKind::Export,
                    Form::new("Export the filtered trail", &[("file", false)])
                        .with(0, &name)
                        .hint("ending .csv (spreadsheet-safe) or .ndjson; written 0600, never over a file"),
                )
            }
            _ => return None,
        })
    }

    fn reviews_key(&mut self, key: KeyEvent) -> Option<Option<Action>> {
        let view = &mut self.reviews;
        if move_in(&mut view.selected, view.rows.len(), key.code) {
            return Some(None);
        }
        Some(match key.code {
            KeyCode::Char('a') => {
                view.all = !view.all;
                Some(Action::Refresh)
            }
            KeyCode::Enter | KeyCode::Char('m') => {
                let grant = view.rows.get(view.selected)?;
                if !grant.reviewed.is_empty() {
                    return Some(None);
                }
                let id = grant.id;
                self.form(
                    FormKind::Review(id),
                    Form::new(&format!("Review grant {id}"), &[("note", false)])
                        .hint("What was checked and found; kept sealed with the grant."),
                )
            }
            _ => return None,
        })
    }

    fn keys_key(&mut self, key: KeyEvent) -> Option<Option<Action>> {
        (key.code == KeyCode::Char('R') && self.job.is_none()).then(|| {
            self.confirm(
                "Rotate the key-encryption key and rewrap every data key under the new version?"
                    .into(),
                Action::Rotate,
            )
        })
    }

    /// The clock: sign out after the idle timeout; notice a finished job.
    pub fn tick(&mut self) -> Option<Action> {
        // A result waits for the open dialog (an enrolment shown once, a half-typed form).
        if self.job.as_ref().is_some_and(|j| j.handle.is_finished())
            && self.modal.is_none()
            && !self.help
            && self.operator.is_some()
        {
            return Some(Action::JobDone);
        }
        if self.operator.is_some() && self.last_key.elapsed() >= self.idle {
            return Some(Action::SignOut);
        }
        let stale = self
            .keys
            .loaded
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        (self.screen == Screen::Keys && self.modal.is_none() && stale).then_some(Action::Refresh)
    }

    /// Wait for the running job and show its result (tests, and nothing else).
    pub async fn finish_job(&mut self, core: &Core) {
        while self.job.as_ref().is_some_and(|j| !j.handle.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.apply(Action::JobDone, core).await;
    }

    /// Do what an action asks; the only place the core is called.
    pub async fn apply(&mut self, action: Action, core: &Core) {
        self.stamp = core.store.now().format("%Y%m%d-%H%M%S").to_string();
        if self.operator.is_none() && !matches!(action, Action::SignIn | Action::Quit) {
            return;
        }
        // The operator may have been locked, demoted or removed since signing in.
        if !matches!(action, Action::Quit | Action::SignIn | Action::SignOut)
            && !self.operator_still_admin(core).await
        {
            self.sign_out(core, "the operator's account changed: signed out")
                .await;
            return;
        }
        match action {
            Action::Quit if self.operator.is_none() => {}
            Action::Quit => {
                if let Err(e) = core
                    .store
                    .record_admin(&self.ctx(&[]), "console-quit", true)
                    .await
                {
                    tracing::error!(error = %e, "could not audit the end of the session");
                }
            }
            Action::SignOut => {
                let minutes = self.idle.as_secs() / 60;
                self.sign_out(core, &format!("signed out after {minutes} min idle"))
                    .await;
            }
            Action::SignIn => {
                let (username, password, code) = (
                    self.sign_in.value(0).to_string(),
                    self.sign_in.value(1).to_string(),
                    self.sign_in.value(2).to_string(),
                );
                self.sign_in = sign_in_form();
                match crate::operator::sign_in(core, &username, &password, &code).await {
                    Ok(Some(ctx)) => {
                        self.operator = Some(ctx);
                        self.screen = Screen::Dashboard;
                        self.load(core).await;
                    }
                    Ok(None) => self.sign_in.error = Some(users::LoginError::Invalid.to_string()),
                    Err(e) => {
                        tracing::error!(error = %e, "console sign-in failed");
                        self.sign_in.error = Some("the sign-in service is unavailable".into());
                    }
                }
            }
            Action::Refresh => self.load(core).await,
            Action::User(op) => self.user_op(op, core).await,
            Action::FindPatients(q) => self.find_patients(q, core).await,
            Action::OpenPatient(id) => {
                self.consent.patient = self.consent.patients.iter().find(|p| p.id == id).cloned();
                self.consent.in_consents = true;
                self.consent.selected = 0;
                self.load_consents(core).await;
            }
            Action::Grant {
                patient,
                actor,
                classes,
                end,
            } => {
                let result = self
                    .grant(core, &patient, &actor, &classes, end.as_deref())
                    .await;
                if let Err(refused) = &result {
                    // Refused before a Consent reached the store (which audits what it sees).
                    if !refused.starts_with("store: ") {
                        let what = format!("consent-grant:Patient/{patient}");
                        if let Err(e) = core.store.record_admin(&self.ctx(&[]), &what, false).await
                        {
                            tracing::error!(error = %e, "could not audit a refused grant");
                        }
                    }
                }
                let message = match result {
                    Ok((id, actor)) => format!(
                        "Consent/{id} written: {} may now see this record.",
                        super::inert(&actor, 60)
                    ),
                    Err(e) => format!("Not granted: {e}"),
                };
                self.modal = Some(Modal::Message(message));
                self.load_consents(core).await;
            }
            Action::RevokeConsent(id) => {
                let message = match self.revoke_consent(core, &id).await {
                    Ok(()) => format!("Consent/{id} is now inactive; access ends with it."),
                    Err(e) => format!("Not revoked: {e}"),
                };
                self.modal = Some(Modal::Message(message));
                self.load_consents(core).await;
            }
            Action::Review { id, note } => {
                let ctx = self.ctx(&[]);
                let message = match core.store.review_btg(&ctx, id, &note).await {
                    Ok(true) => format!("Grant {id} marked reviewed."),
                    Ok(false) => format!("Grant {id} is not waiting for review."),
                    Err(e) => format!("Not reviewed: {e}"),
                };
                self.modal = Some(Modal::Message(message));
                self.load(core).await;
            }
            Action::VerifyChain => self.verify(core),
            Action::Export(path) => self.export(core, path),
            Action::Rotate => self.rotate(core),
            Action::JobDone => {
                if let Some(job) = self.job.take() {
                    let message = job
                        .handle
                        .await
                        .unwrap_or_else(|_| format!("{} stopped unexpectedly", job.title));
                    if job.title == "verifying the audit chain" {
                        self.chain = message.clone();
                    }
                    self.modal = Some(Modal::Message(message));
                    self.load(core).await;
                }
            }
        }
    }

    async fn operator_still_admin(&self, core: &Core) -> bool {
        let Some(name) = self.operator() else {
            return false;
        };
        matches!(users::find(&core.store, name).await,
            Ok(u) if u.role == Role::Admin && !u.admin_locked)
    }

    /// End the operator's session (audited): everything on screen is cleared; a running job goes
    /// on (it audits itself) and its result waits for the next sign-in.
    async fn sign_out(&mut self, core: &Core, why: &str) {
        if self.operator.is_some() {
            if let Err(e) = core
                .store
                .record_admin(&self.ctx(&[]), "console-sign-out", true)
                .await
            {
                tracing::error!(error = %e, "could not audit the sign-out");
            }
        }
        let job = self.job.take();
        *self = App::new(self.sessions);
        self.job = job;
        self.sign_in.error = Some(why.to_string());
    }

    /// Load what the current screen shows.
    async fn load(&mut self, core: &Core) {
        match self.screen {
            Screen::SignIn => {}
            // On the heap: eleven queries joined make a large future.
            Screen::Dashboard => Box::pin(self.load_dashboard(core)).await,
            Screen::Users => self.load_users(core).await,
            Screen::Consent => self.load_consents(core).await,
            Screen::Audit => self.load_audit(core).await,
            Screen::Reviews => self.load_reviews(core).await,
            Screen::Keys => {
                self.keys = KeysView {
                    provider: core.keys.describe(),
                    versions: core.store.key_versions().await.unwrap_or_default(),
                    external_calls: core.keys.external_calls(),
                    loaded: Some(Instant::now()),
                }
            }
        }
    }

    async fn user_op(&mut self, op: UserOp, core: &Core) {
        let store = &core.store;
        // Each operation checks the operator's role and audits itself, with its change.
        let ctx = self.ctx(&[]);
        let what = op.what();
        let result: Result<Option<Enrolled>, String> = match op {
            UserOp::Create {
                username,
                role,
                link,
                password,
            } => {
                let (patient, practitioner) = match link.as_deref().map(|l| l.split_once('/')) {
                    Some(Some(("Patient", id))) => (Some(id), None),
                    Some(Some(("Practitioner", id))) => (None, Some(id)),
                    _ => (None, None),
                };
                let new = users::NewUser {
                    username: &username,
                    role,
                    patient_id: patient,
                    practitioner_id: practitioner,
                    password: &password.0,
                };
                let r = admin::create_user(store, &ctx, &new).await.map(|e| {
                    Some(Enrolled {
                        username: username.clone(),
                        uri: e.totp_uri,
                        codes: e.recovery_codes,
                    })
                });
                r.map_err(|e| e.to_string())
            }
            UserOp::Lock(name) => admin::lock(store, &ctx, &name)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
            UserOp::Unlock(name) => admin::unlock(store, &ctx, &name)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
            UserOp::ResetMfa(name) => {
                let r = admin::reset_mfa(store, &ctx, &name).await.map(|e| {
                    Some(Enrolled {
                        username: name.clone(),
                        uri: e.totp_uri,
                        codes: e.recovery_codes,
                    })
                });
                r.map_err(|e| e.to_string())
            }
            UserOp::SetRole(name, role) => admin::set_role(store, &ctx, &name, role)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
            UserOp::Revoke(name) => admin::end_sessions(store, &ctx, &name)
                .await
                .map(|_| None)
                .map_err(|e| e.to_string()),
        };
        self.modal = Some(match result {
            Ok(Some(enrolled)) => Modal::Enrollment(enrolled),
            Ok(None) => Modal::Message(format!("Done: {}", super::inert(&what, 80))),
            Err(e) => Modal::Message(format!("Refused: {e}")),
        });
        self.load_users(core).await;
    }

    async fn find_patients(&mut self, q: String, core: &Core) {
        let ctx = self.ctx(&PATIENT_SCOPES);
        let mut found: Vec<PatientRow> = Vec::new();
        // An identifier (system|value or a bare value), then names: both served by the blind index.
        for param in ["identifier", "name"] {
            let pairs = [
                (param.to_string(), q.clone()),
                ("_count".into(), "50".into()),
            ];
            let Some(Ok(query)) =
                ResourceType::parse("Patient").map(|t| query::parse(t, &pairs, false))
            else {
                continue;
            };
            match core.store.search(&ctx, &query).await {
                Ok(result) => {
                    for r in result.matches {
                        if found.iter().all(|p| p.id != r.id) {
                            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                            found.push(PatientRow::from_resource(&r.id, &body));
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "patient search failed"),
            }
        }
        self.consent = ConsentView {
            query: q,
            patients: found,
            ..ConsentView::default()
        };
    }

    async fn load_consents(&mut self, core: &Core) {
        let Some(patient) = self.consent.patient.clone() else {
            return;
        };
        let ctx = self.ctx(&PATIENT_SCOPES);
        let pairs = [
            ("patient".to_string(), format!("Patient/{}", patient.id)),
            ("_count".into(), "100".into()),
        ];
        let Some(consent) = ResourceType::parse("Consent") else {
            return;
        };
        let rows = match query::parse(consent, &pairs, false) {
            Ok(query) => match core.store.search(&ctx, &query).await {
                Ok(result) => result
                    .matches
                    .iter()
                    .map(|r| {
                        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        ConsentRow::from_resource(&r.id, &body)
                    })
                    .collect(),
                Err(e) => {
                    tracing::error!(error = %e, "consent search failed");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        self.consent.consents = rows;
        self.consent.selected = self
            .consent
            .selected
            .min(self.consent.consents.len().saturating_sub(1));
    }

    async fn grant(
        &self,
        core: &Core,
        patient: &str,
        actor: &str,
        classes: &[String],
        end: Option<&str>,
    ) -> Result<(String, String), String> {
        let actor = if actor.contains('/') {
            let kind = actor.split('/').next().unwrap_or_default();
            if ![
                "Practitioner",
                "Organization",
                "PractitionerRole",
                "CareTeam",
            ]
            .contains(&kind)
            {
                return Err(
                    "who: Practitioner/, Organization/, PractitionerRole/ or CareTeam/".into(),
                );
            }
            actor.to_string()
        } else {
            let user = users::find(&core.store, actor)
                .await
                .map_err(|_| format!("no user '{}'", super::inert(actor, 32)))?;
            let id = user.practitioner_id.ok_or(format!(
                "'{}' is not linked to a Practitioner",
                super::inert(actor, 32)
            ))?;
            format!("Practitioner/{id}")
        };
        let today = core.store.now().format("%Y-%m-%d").to_string();
        let body = super::data::grant_consent(patient, &actor, classes, end, &today);
        let consent = ResourceType::parse("Consent").ok_or("no Consent type")?;
        match core
            .store
            .create(&self.ctx(&PATIENT_SCOPES), consent, body, None)
            .await
        {
            Ok(Created::New(r) | Created::Existing(r)) => Ok((r.id, actor)),
            Err(e) => Err(format!("store: {}", store_message(&e))),
        }
    }

    async fn revoke_consent(&self, core: &Core, id: &str) -> Result<(), String> {
        let ctx = self.ctx(&PATIENT_SCOPES);
        let consent = ResourceType::parse("Consent").ok_or("no Consent type")?;
        let id = ResourceId::parse(id).map_err(|e| e.to_string())?;
        let stored = core
            .store
            .read(&ctx, consent, &id)
            .await
            .map_err(|e| store_message(&e))?;
        let mut body: Value = serde_json::from_slice(&stored.body).map_err(|e| e.to_string())?;
        body["status"] = "inactive".into();
        core.store
            .update(&ctx, consent, &id, body, Some(stored.version_id))
            .await
            .map(|_| ())
            .map_err(|e| store_message(&e))
    }

    fn spawn(
        &mut self,
        title: &'static str,
        work: impl FnOnce(Arc<Progress>) -> tokio::task::JoinHandle<String>,
    ) {
        let progress = Arc::new(Progress::default());
        let handle = work(progress.clone());
        self.job = Some(Job {
            title,
            progress,
            handle,
        });
    }

    fn verify(&mut self, core: &Core) {
        let store = core.store.clone();
        let ctx = self.ctx(&[]);
        self.spawn("verifying the audit chain", move |progress| {
            tokio::spawn(async move {
                let report = store
                    .verify_audit_chain(None, |done, total| progress.set(done, total))
                    .await;
                let (ok, message) = match report {
                    Ok(r) => match r.broken {
                        None => (
                            true,
                            format!(
                                "Audit chain intact: {} events verified; head {}:{}",
                                r.checked,
                                r.head.0,
                                hex::encode(&r.head.1)
                            ),
                        ),
                        Some((at, why)) => (
                            false,
                            format!(
                                "Audit chain BROKEN at event {at}: {}",
                                super::inert(&why, 120)
                            ),
                        ),
                    },
                    Err(e) => (false, format!("Could not verify the chain: {e}")),
                };
                if let Err(e) = store.record_admin(&ctx, "audit-verify", ok).await {
                    tracing::error!(error = %e, "could not audit the verification");
                }
                message
            })
        });
    }

    fn export(&mut self, core: &Core, path: String) {
        let query = match self.audit.filter.query(1000) {
            Ok(q) => q,
            Err(e) => {
                self.modal = Some(Modal::Message(e));
                return;
            }
        };
        let store = core.store.clone();
        let ctx = self.ctx(&AUDIT_SCOPES);
        let admin = self.ctx(&[]);
        self.spawn("exporting the audit trail", move |progress| {
            tokio::spawn(async move {
                let format = export::Format::of_path(&path);
                let result: anyhow::Result<u64> = async {
                    let file = export::create_private(&path)?;
                    let mut out = export::Writer::new(format, std::io::BufWriter::new(file))?;
                    let mut query = query;
                    let mut n = 0;
                    loop {
                        let page = store.audit_events(&ctx, &query).await?;
                        for (id, event) in &page.events {
                            out.write(*id, event)?;
                            n += 1;
                        }
                        progress.set(n, 0);
                        match page.next {
                            Some(next) => query.before_id = Some(next),
                            None => break,
                        }
                    }
                    out.finish()?;
                    Ok(n)
                }
                .await;
                let what = format!(
                    "audit-export:{}:{}",
                    if format == export::Format::Csv {
                        "csv"
                    } else {
                        "ndjson"
                    },
                    result.as_ref().map_or(0, |n| *n)
                );
                if let Err(e) = store.record_admin(&admin, &what, result.is_ok()).await {
                    tracing::error!(error = %e, "could not audit the export");
                }
                match result {
                    Ok(n) => format!("Exported {n} events to {}", super::inert(&path, 80)),
                    Err(e) => format!("Export failed: {}", super::inert(&e.to_string(), 120)),
                }
            })
        });
    }

    fn rotate(&mut self, core: &Core) {
        let store = core.store.clone();
        let ctx = self.ctx(&[]);
        self.spawn("rewrapping data keys", move |progress| {
            tokio::spawn(async move {
                match store
                    .rewrap_all(&ctx, |done, total| progress.set(done, total))
                    .await
                {
                    Ok(n) => format!("Rotation complete: {n} data keys rewrapped."),
                    Err(e) => format!("Rotation failed: {e}"),
                }
            })
        });
    }

    async fn load_audit(&mut self, core: &Core) {
        let mut query = match self.audit.filter.query(AUDIT_PAGE) {
            Ok(q) => q,
            Err(e) => {
                self.modal = Some(Modal::Message(e));
                return;
            }
        };
        if self.audit.pages.is_empty() {
            self.audit.pages.push(None);
        }
        query.before_id = self.audit.pages.last().copied().flatten();
        match core
            .store
            .audit_events(&self.ctx(&AUDIT_SCOPES), &query)
            .await
        {
            Ok(page) => {
                self.audit.rows = page
                    .events
                    .into_iter()
                    .map(|(id, e)| AuditRow::from_event(id, e))
                    .collect();
                self.audit.next = page.next;
                self.audit.selected = 0;
            }
            Err(e) => tracing::error!(error = %e, "could not read the audit trail"),
        }
    }

    async fn load_reviews(&mut self, core: &Core) {
        let grants = core.store.btg_grants(self.reviews.all, 500).await;
        if let Err(e) = core
            .store
            .record_admin(&self.ctx(&[]), "btg-list", true)
            .await
        {
            tracing::error!(error = %e, "could not audit the review queue");
        }
        let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M").to_string();
        self.reviews.rows = grants
            .unwrap_or_default()
            .into_iter()
            .map(|g| GrantRow {
                id: g.id,
                who: g.principal,
                role: g.role,
                started: time(g.started_at),
                expires: time(g.expires_at),
                accesses: g.accesses,
                reason: g.reason,
                reviewed: g.reviewed_by.unwrap_or_default(),
            })
            .collect();
        self.reviews.selected = self
            .reviews
            .selected
            .min(self.reviews.rows.len().saturating_sub(1));
    }

    async fn load_users(&mut self, core: &Core) {
        let store = &core.store;
        let list = users::list(store).await.unwrap_or_default();
        let tokens = auth::active_tokens(store.pool(), store.now(), None, &self.sessions)
            .await
            .unwrap_or_default();
        self.users.rows = list
            .into_iter()
            .map(|u| UserRow {
                role: u.role.as_str().to_string(),
                linked: u.link().unwrap_or_default(),
                locked: u.admin_locked,
                mfa: u.mfa_enrolled,
                sessions: tokens.iter().filter(|t| t.subject == u.username).count(),
                username: u.username,
            })
            .collect();
        self.users.selected = self
            .users
            .selected
            .min(self.users.visible().len().saturating_sub(1));
    }

    async fn load_dashboard(&mut self, core: &Core) {
        let store = &core.store;
        let pool = store.pool();
        let database = async {
            store
                .database_version()
                .await
                .map_or("unreachable".into(), |v| {
                    format!(
                        "PostgreSQL {v}{}",
                        if core.cluster.is_some() {
                            " (embedded)"
                        } else {
                            ""
                        }
                    )
                })
        };
        let server = async {
            match store.chain_queue().await {
                Ok((0, _)) => "running (audit chain up to date)".to_string(),
                Ok((n, Some(age))) if age < 10.0 => format!("running ({n} queued for the chain)"),
                Ok((n, age)) => format!(
                    "not chaining: {n} events waiting for {:.0} s (is carapace-server running?)",
                    age.unwrap_or_default()
                ),
                Err(_) => "unknown".into(),
            }
        };
        let failed = AuditQuery {
            subtype: Some("admin".into()),
            outcome: Some("4".into()),
            count: 50,
            ..AuditQuery::default()
        };
        let ctx = self.ctx(&AUDIT_SCOPES);
        let failed_logins = async {
            store
                .audit_events(&ctx, &failed)
                .await
                .map(|page| {
                    page.events
                        .into_iter()
                        .map(|(id, e)| AuditRow::from_event(id, e))
                        .filter(|r| r.what.contains("login"))
                        .take(5)
                        .map(|r| (r.recorded, r.agent))
                        .collect()
                })
                .unwrap_or_default()
        };
        // A real call (a data key made and thrown away), bounded: a sealed or unreachable Vault
        // shows here rather than on the next write.
        let key_provider = async {
            match tokio::time::timeout(Duration::from_secs(3), core.keys.generate()).await {
                Ok(Ok(_)) => format!("answering · {}", core.keys.describe()),
                Ok(Err(e)) => format!("FAILING ({e}) · {}", core.keys.describe()),
                Err(_) => format!("NOT ANSWERING in 3 s · {}", core.keys.describe()),
            }
        };
        let sessions = async {
            auth::active_tokens(pool, store.now(), None, &self.sessions)
                .await
                .map_or(0, |t| t.len())
        };
        // Independent questions, asked at once (the pool has connections to spare).
        let (
            database,
            server,
            by_type,
            failed_logins,
            counts,
            key_provider,
            operator_counts,
            sessions,
            key_versions,
            reviews,
        ) = tokio::join!(
            database,
            server,
            store.resource_types(),
            failed_logins,
            store.resource_counts(),
            key_provider,
            store.operator_counts(),
            sessions,
            store.key_versions(),
            store.btg_grants(false, 1000),
        );
        let by_type = by_type.unwrap_or_default();
        let (resources, versions) = counts.unwrap_or((-1, -1));
        let (audit_events, users) = operator_counts.map_or((-1, -1), |c| (c.audit_events, c.users));
        self.dashboard = Dashboard {
            database,
            key_provider,
            server,
            patients: by_type
                .iter()
                .find(|(t, _)| t == "Patient")
                .map_or(0, |(_, n)| *n),
            resources,
            versions,
            by_type,
            audit_events,
            users,
            sessions,
            key_versions: key_versions.unwrap_or_default(),
            open_reviews: reviews.map_or(0, |g| g.len()),
            failed_logins,
            chain: self.chain.clone(),
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crossterm::event::KeyEvent;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn signed_in(idle_ms: i64) -> App {
        let mut app = App::new(SessionPolicy {
            idle: chrono::Duration::milliseconds(idle_ms),
            absolute: chrono::Duration::hours(8),
        });
        app.operator = Some(AccessContext::operator("root.admin"));
        app.screen = Screen::Dashboard;
        app
    }

    #[test]
    fn the_idle_clock_signs_out_only_a_signed_in_operator() {
        let mut app = App::new(SessionPolicy {
            idle: chrono::Duration::zero(),
            absolute: chrono::Duration::hours(8),
        });
        assert_eq!(app.tick(), None, "nobody to sign out");
        app.operator = Some(AccessContext::operator("root.admin"));
        assert_eq!(app.tick(), Some(Action::SignOut));
        let mut busy = signed_in(60_000);
        busy.handle_key(key(KeyCode::Char('2')));
        assert_eq!(busy.tick(), None, "a key resets the clock");
    }

    #[test]
    fn destructive_user_actions_ask_first_and_n_cancels() {
        let mut app = signed_in(60_000);
        app.screen = Screen::Users;
        app.users.rows = vec![UserRow {
            username: "dr.house".into(),
            role: "practitioner".into(),
            linked: String::new(),
            locked: false,
            mfa: true,
            sessions: 1,
        }];
        for (k, op) in [
            ('l', UserOp::Lock("dr.house".into())),
            ('m', UserOp::ResetMfa("dr.house".into())),
            ('x', UserOp::Revoke("dr.house".into())),
        ] {
            assert_eq!(
                app.handle_key(key(KeyCode::Char(k))),
                None,
                "{k} asks first"
            );
            assert!(matches!(app.modal, Some(Modal::Confirm(..))));
            assert_eq!(app.handle_key(key(KeyCode::Char('n'))), None);
            assert!(app.modal.is_none(), "n closes the dialog");
            app.handle_key(key(KeyCode::Char(k)));
            assert_eq!(
                app.handle_key(key(KeyCode::Char('y'))),
                Some(Action::User(op))
            );
        }
        // Unlocking is not destructive: no dialog.
        assert_eq!(
            app.handle_key(key(KeyCode::Char('u'))),
            Some(Action::User(UserOp::Unlock("dr.house".into())))
        );
    }

    #[test]
    fn a_new_user_form_refuses_what_the_core_would_and_never_prints_the_password() {
        let mut app = signed_in(60_000);
        app.screen = Screen::Users;
        app.handle_key(key(KeyCode::Char('c')));
        let mut typed = |text: &str, then: KeyCode| {
            for c in text.chars() {
                app.handle_key(key(KeyCode::Char(c)));
            }
            app.handle_key(key(then))
        };
        typed("dr.who", KeyCode::Tab);
        typed("surgeon", KeyCode::Tab);
        typed("", KeyCode::Tab);
        typed("a long enough password", KeyCode::Tab);
        assert_eq!(typed("a long enough password", KeyCode::Enter), None);
        let Some(Modal::Form(_, form)) = &app.modal else {
            panic!("the form stays open");
        };
        assert!(form.error.as_deref().unwrap().starts_with("role:"));
        let action = Action::User(UserOp::Create {
            username: "x".into(),
            role: Role::Admin,
            link: None,
            password: Secret("hunter2hunter2".into()),
        });
        assert!(!format!("{action:?}").contains("hunter2"));
    }

    #[test]
    fn audit_filters_are_checked_before_they_are_run() {
        let ok = AuditFilter {
            since: "2026-11-01".into(),
            until: "2026-11-23T10:00:00Z".into(),
            agent: "dr.house".into(),
            patient: "pat-1".into(),
            action: "R".into(),
            outcome: "0".into(),
            btg_only: true,
        }
        .query(50)
        .unwrap();
        assert_eq!(ok.patient.as_deref(), Some("Patient/pat-1"));
        assert_eq!(ok.purpose.as_deref(), Some("BTG"));
        assert_eq!(ok.since.unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        for bad in [
            AuditFilter {
                since: "yesterday".into(),
                ..AuditFilter::default()
            },
            AuditFilter {
                action: "X".into(),
                ..AuditFilter::default()
            },
            AuditFilter {
                outcome: "1".into(),
                ..AuditFilter::default()
            },
        ] {
            assert!(bad.query(50).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn q_quits_esc_backs_out_and_help_closes_on_any_key() {
        let mut app = signed_in(60_000);
        app.screen = Screen::Keys;
        assert_eq!(app.handle_key(key(KeyCode::Esc)), Some(Action::Refresh));
        assert_eq!(app.screen, Screen::Dashboard);
        app.handle_key(key(KeyCode::Char('?')));
        assert!(app.help);
        assert_eq!(app.handle_key(key(KeyCode::Char('q'))), None);
        assert!(!app.help);
        assert_eq!(app.handle_key(key(KeyCode::Char('q'))), Some(Action::Quit));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(
            App::new(SessionPolicy::default()).handle_key(ctrl_c),
            Some(Action::Quit)
        );
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        use ratatui::backend::TestBackend;
        use ratatui::Terminal;
        let mut app = signed_in(60_000);
        app.modal = Some(Modal::Enrollment(Enrolled {
            username: "x".repeat(300),
            uri: Some("otpauth://totp/Carapace:x?secret=JBSWY3DPEHPK3PXP&issuer=Carapace".into()),
            codes: vec!["0000-0000-0000-0000".into(); 10],
        }));
        for &(_, screen, _) in Screen::MAIN.iter() {
            app.screen = screen;
            for (w, h) in [(1, 1), (10, 3), (20, 5), (45, 12)] {
                let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
                terminal.draw(|f| app.draw(f)).unwrap();
            }
        }
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_job_waits_for_the_open_dialog() {
        let mut app = App::new(SessionPolicy::default());
        app.operator = Some(AccessContext::operator("root.admin"));
        app.screen = Screen::Users;
        app.job = Some(Job {
            title: "exporting the audit trail",
            progress: Arc::default(),
            handle: tokio::spawn(async { "Exported 3 events".to_string() }),
        });
        while !app.job.as_ref().is_some_and(|j| j.handle.is_finished()) {
            tokio::task::yield_now().await;
        }
        app.modal = Some(Modal::Enrollment(Enrolled {
            username: "dr.who".into(),
            uri: Some("otpauth://totp/Carapace:dr.who?secret=JBSWY3DPEHPK3PXP".into()),
            codes: vec!["0123-4567-89ab-cdef".into()],
        }));
        assert_eq!(
            app.tick(),
            None,
            "the enrolment is shown once: not replaced"
        );
        assert!(
            !format!("{:?}", app.modal).contains("JBSWY3DP"),
            "no secret in debug output"
        );
        assert!(!format!("{:?}", app.modal).contains("0123-4567"));
        app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(app.tick(), Some(Action::JobDone));
        // q while a job runs asks first.
        app.job = Some(Job {
            title: "rewrapping data keys",
            progress: Arc::default(),
            handle: tokio::spawn(std::future::pending()),
        });
        assert_eq!(
            app.handle_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)),
            None
        );
        assert_eq!(
            app.handle_key(KeyEvent::new(KeyCode::Char('y'), KeyModifiers::NONE)),
            Some(Action::Quit)
        );
    }
}

#[cfg(test)]
mod keys_tests {
    use super::*;

    #[test]
    fn the_keys_screen_reads_its_figures_again_every_second() {
        let mut app = App::new(SessionPolicy::default());
        app.operator = Some(AccessContext::operator("root.admin"));
        app.screen = Screen::Keys;
        assert_eq!(app.tick(), Some(Action::Refresh));
        app.keys.loaded = Some(Instant::now());
        assert_eq!(app.tick(), None, "fresh figures are kept");
        app.screen = Screen::Users;
        app.keys.loaded = None;
        assert_eq!(app.tick(), None, "other screens load on keys only");
    }
}
