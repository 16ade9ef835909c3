//! The application shell: which screen is shown, the dialogs over it and the job running behind
//! it. Keys go to the dialog, else to the screen (one file each under `screens/`), else to the
//! keys every screen shares; what they ask for is an [`Action`], and [`App::apply`] is the one
//! place an action reaches the core. Long work (chain verification, rewrap, export) runs as a
//! [`Job`] on its own task while the screen keeps answering.

use super::form::{Form, FormKey};
use super::screens::audit::{self, AuditView, VERIFY_JOB};
use super::screens::consent::{self, ConsentView};
use super::screens::dashboard::Dashboard;
use super::screens::exports::{self, ExportsView};
use super::screens::keys::{self, KeysView};
use super::screens::reviews::{self, ReviewsView};
use super::screens::users::{self, UserOp, UsersView};
use super::screens::{sign_in, Step};
use crate::operator::scoped;
use carapace_core::access::{AccessContext, Role};
use carapace_core::core::Core;
use carapace_core::identity::authorize::SessionPolicy;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Cancel a Bulk Data export job (by its id).
    CancelExportJob(String),
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
    Exports,
}

impl Screen {
    pub const MAIN: [(char, Screen, &'static str); 7] = [
        ('1', Screen::Dashboard, "dashboard"),
        ('2', Screen::Users, "users"),
        ('3', Screen::Consent, "consent"),
        ('4', Screen::Audit, "audit"),
        ('5', Screen::Reviews, "break-glass"),
        ('6', Screen::Keys, "keys"),
        ('7', Screen::Exports, "exports"),
    ];

    /// The screen's keys: the status line shows the first few, the help overlay all.
    pub fn keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Screen::SignIn => sign_in::KEYS,
            Screen::Dashboard => super::screens::dashboard::KEYS,
            Screen::Users => users::KEYS,
            Screen::Consent => consent::KEYS,
            Screen::Audit => audit::KEYS,
            Screen::Reviews => reviews::KEYS,
            Screen::Keys => keys::KEYS,
            Screen::Exports => exports::KEYS,
        }
    }
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
    pub fn set(&self, done: u64, total: u64) {
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

impl Job {
    /// Start `work` on its own task, reporting to a fresh [`Progress`].
    pub fn spawn(
        title: &'static str,
        work: impl FnOnce(Arc<Progress>) -> tokio::task::JoinHandle<String>,
    ) -> Job {
        let progress = Arc::new(Progress::default());
        let handle = work(progress.clone());
        Job {
            title,
            progress,
            handle,
        }
    }
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
    pub exports: ExportsView,
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

impl App {
    pub fn new(sessions: SessionPolicy) -> App {
        let idle = sessions
            .idle
            .to_std()
            .unwrap_or(Duration::from_secs(15 * 60));
        App {
            screen: Screen::SignIn,
            sign_in: sign_in::form(),
            operator: None,
            dashboard: Dashboard::default(),
            users: UsersView::default(),
            consent: ConsentView::default(),
            audit: AuditView::default(),
            reviews: ReviewsView::default(),
            keys: KeysView::default(),
            exports: ExportsView::default(),
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

    /// The operator's name, owned (for work that also borrows a screen).
    fn who(&self) -> String {
        self.operator().unwrap_or_default().to_string()
    }

    /// A screen's step: an action for [`App::apply`], or a dialog opened.
    fn step(&mut self, step: Step) -> Option<Action> {
        match step {
            Step::Stay => None,
            Step::Do(action) => Some(action),
            Step::Show(modal) => {
                self.modal = Some(modal);
                None
            }
        }
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
        let busy = self.job.is_some();
        let step = match self.screen {
            Screen::Users => self.users.key(key),
            Screen::Consent => self.consent.key(key),
            Screen::Audit => self.audit.key(key, busy, &self.stamp),
            Screen::Reviews => self.reviews.key(key),
            Screen::Keys => self.keys.key(key, busy),
            Screen::Exports => self.exports.key(key),
            Screen::Dashboard | Screen::SignIn => None,
        };
        if let Some(step) = step {
            return self.step(step);
        }
        // The keys every screen shares.
        match key.code {
            KeyCode::Char('q') if busy => self.step(Step::Show(Modal::Confirm(
                "A job is still running and stops if the console quits. Quit anyway?".into(),
                Action::Quit,
            ))),
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
                FormKey::Edited => self.step(Step::Show(Modal::Form(kind, form))),
                FormKey::Submit => match self.submit(&kind, &form) {
                    Ok(step) => self.step(step),
                    Err(error) => {
                        form.error = Some(error);
                        self.step(Step::Show(Modal::Form(kind, form)))
                    }
                },
            },
        }
    }

    /// A form's values, checked by the screen it belongs to: what it asks for, or what is wrong.
    fn submit(&mut self, kind: &FormKind, form: &Form) -> Result<Step, String> {
        match kind {
            FormKind::CreateUser => users::submit_create(form),
            FormKind::SetRole(name) => users::submit_role(name, form),
            FormKind::FindPatient => consent::submit_find(form),
            FormKind::Grant(patient) => consent::submit_grant(patient, form),
            FormKind::AuditFilter => self.audit.submit_filter(form),
            FormKind::Review(id) => reviews::submit_review(*id, form),
            FormKind::Export => audit::submit_export(form),
        }
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
        // The keys and exports screens show work going on elsewhere: read again every second.
        let stale = match self.screen {
            Screen::Keys => self.keys.stale(),
            Screen::Exports => self.exports.stale(),
            _ => false,
        };
        (stale && self.modal.is_none()).then_some(Action::Refresh)
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
        let who = self.who();
        match action {
            Action::Quit if self.operator.is_none() => {}
            Action::Quit => {
                if let Err(e) = core
                    .store
                    .record_admin(&scoped(&who, &[]), "console-quit", true)
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
                if let Some(ctx) = sign_in::sign_in(core, &mut self.sign_in).await {
                    self.operator = Some(ctx);
                    self.screen = Screen::Dashboard;
                    self.load(core).await;
                }
            }
            Action::Refresh => self.load(core).await,
            Action::User(op) => {
                self.modal = Some(users::run(op, core, &scoped(&who, &[])).await);
                self.users.load(core, &self.sessions).await;
            }
            Action::FindPatients(q) => self.consent.find(q, core, &who).await,
            Action::OpenPatient(id) => self.consent.open(&id, core, &who).await,
            Action::Grant {
                patient,
                actor,
                classes,
                end,
            } => {
                let shown = self
                    .consent
                    .grant(core, &who, &patient, &actor, &classes, end.as_deref())
                    .await;
                self.modal = Some(shown);
            }
            Action::RevokeConsent(id) => {
                self.modal = Some(self.consent.revoke(core, &who, &id).await);
            }
            Action::Review { id, note } => {
                self.modal = Some(reviews::review(core, &who, id, &note).await);
                self.load(core).await;
            }
            Action::VerifyChain => self.job = Some(audit::verify(core, &who)),
            Action::Export(path) => match self.audit.export(core, &who, path) {
                Ok(job) => self.job = Some(job),
                Err(e) => self.modal = Some(Modal::Message(e)),
            },
            Action::Rotate => self.job = Some(keys::rotate(core, &who)),
            Action::CancelExportJob(id) => {
                self.modal = Some(exports::cancel(core, &who, &id).await);
                self.load(core).await;
            }
            Action::JobDone => {
                if let Some(job) = self.job.take() {
                    let message = job
                        .handle
                        .await
                        .unwrap_or_else(|_| format!("{} stopped unexpectedly", job.title));
                    if job.title == VERIFY_JOB {
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
        matches!(carapace_core::identity::users::find(&core.store, name).await,
            Ok(u) if u.role == Role::Admin && !u.admin_locked)
    }

    /// End the operator's session (audited): everything on screen is cleared; a running job goes
    /// on (it audits itself) and its result waits for the next sign-in.
    async fn sign_out(&mut self, core: &Core, why: &str) {
        if self.operator.is_some() {
            if let Err(e) = core
                .store
                .record_admin(&scoped(&self.who(), &[]), "console-sign-out", true)
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
        let who = self.who();
        match self.screen {
            Screen::SignIn => {}
            // On the heap: eleven queries joined make a large future.
            Screen::Dashboard => {
                self.dashboard =
                    Box::pin(Dashboard::load(core, &who, &self.sessions, &self.chain)).await
            }
            Screen::Users => self.users.load(core, &self.sessions).await,
            Screen::Consent => self.consent.load(core, &who).await,
            Screen::Audit => {
                if let Err(e) = self.audit.load(core, &who).await {
                    self.modal = Some(Modal::Message(e));
                }
            }
            Screen::Reviews => self.reviews.load(core, &who).await,
            Screen::Keys => self.keys = KeysView::load(core).await,
            Screen::Exports => self.exports.load(core, &who).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    pub(crate) fn signed_in(idle_ms: i64) -> App {
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
