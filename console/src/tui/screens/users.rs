//! The Users screen: every user with their role, link, state, MFA and sessions; a name filter;
//! creating users and the audited operations on one (lock, unlock, reset MFA, change role, end
//! sessions), the destructive ones asking first.

use super::{move_in, Step};
use crate::tui::app::{Action, Enrolled, FormKind, Modal};
use crate::tui::data::UserRow;
use crate::tui::form::Form;
use crate::tui::text::inert;
use crate::tui::view::table;
use carapace_core::access::{AccessContext, Role};
use carapace_core::core::Core;
use carapace_core::identity::authorize::SessionPolicy;
use carapace_core::identity::{admin, tokens, users};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Row;
use ratatui::Frame;

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[
    ("c", "create a user"),
    ("l", "lock (asks first)"),
    ("u", "unlock"),
    ("m", "reset MFA (asks first)"),
    ("o", "change role (asks first)"),
    ("x", "end sessions (asks first)"),
    ("/", "filter by name"),
    ("j/k", "move (PgUp/PgDn page)"),
];

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

/// The Users screen: every user, a filter on the name, a selection.
#[derive(Debug, Default)]
pub struct UsersView {
    pub rows: Vec<UserRow>,
    pub filter: String,
    pub typing: bool,
    pub selected: usize,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or("role: admin, practitioner, patient or analytics".to_string())
}

/// The new-user form's values as the operation, or what is wrong (checked as the core would).
pub fn submit_create(form: &Form) -> Result<Step, String> {
    let username = form.value(0).to_string();
    users::check_username(&username).map_err(|e| e.to_string())?;
    let role = parse_role(form.value(1))?;
    let link = match form.value(2) {
        "" => None,
        l if l.starts_with("Patient/") || l.starts_with("Practitioner/") => Some(l.to_string()),
        _ => return Err("link: Patient/<id> or Practitioner/<id>, or empty".into()),
    };
    if form.value(3) != form.value(4) {
        return Err("the two passwords differ".into());
    }
    users::check_password_policy(&username, form.value(3)).map_err(|e| e.to_string())?;
    Ok(Step::Do(Action::User(UserOp::Create {
        username,
        role,
        link,
        password: Secret(form.value(3).to_string()),
    })))
}

/// The change-role form: asks first.
pub fn submit_role(name: &str, form: &Form) -> Result<Step, String> {
    let role = parse_role(form.value(0))?;
    Ok(Step::confirm(
        format!(
            "Make {} {} and end their sessions?",
            inert(name, 32),
            role.as_str()
        ),
        Action::User(UserOp::SetRole(name.to_string(), role)),
    ))
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

    /// A key on this screen (`None`: not one of its keys).
    pub fn key(&mut self, key: KeyEvent) -> Option<Step> {
        if self.typing {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => self.typing = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => {
                    self.filter.push(c);
                    self.selected = 0;
                }
                _ => {}
            }
            return Some(Step::Stay);
        }
        let count = self.visible().len();
        if move_in(&mut self.selected, count, key.code) {
            return Some(Step::Stay);
        }
        if key.code == KeyCode::Char('/') {
            self.typing = true;
            return Some(Step::Stay);
        }
        if key.code == KeyCode::Char('c') {
            return Some(Step::form(
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
        let name = self.current()?;
        let shown = inert(&name, 32);
        Some(match key.code {
            // Destructive actions ask first.
            KeyCode::Char('l') => Step::confirm(
                format!("Lock {shown} and end their sessions?"),
                Action::User(UserOp::Lock(name)),
            ),
            KeyCode::Char('u') => Step::Do(Action::User(UserOp::Unlock(name))),
            KeyCode::Char('m') => Step::confirm(
                format!(
                    "Reset {shown}'s MFA? Their authenticator and recovery codes stop working."
                ),
                Action::User(UserOp::ResetMfa(name)),
            ),
            KeyCode::Char('x') => Step::confirm(
                format!("End every session and token of {shown}?"),
                Action::User(UserOp::Revoke(name)),
            ),
            KeyCode::Char('o') => Step::form(
                FormKind::SetRole(name),
                Form::new(&format!("Role of {shown}"), &[("new role", false)])
                    .hint("admin, practitioner, patient or analytics"),
            ),
            _ => return None,
        })
    }

    /// Every user, with their active sessions counted.
    pub async fn load(&mut self, core: &Core, sessions: &SessionPolicy) {
        let store = &core.store;
        let list = users::list(store).await.unwrap_or_default();
        let tokens = tokens::active_tokens(store.pool(), store.now(), None, sessions)
            .await
            .unwrap_or_default();
        self.rows = list
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
        self.selected = self.selected.min(self.visible().len().saturating_sub(1));
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let visible = self.visible();
        let rows: Vec<Row> = visible
            .iter()
            .map(|u| {
                Row::new(vec![
                    inert(&u.username, 24),
                    u.role.clone(),
                    inert(&u.linked, 40),
                    if u.locked { "locked" } else { "active" }.to_string(),
                    if u.mfa { "TOTP" } else { "none" }.to_string(),
                    u.sessions.to_string(),
                ])
            })
            .collect();
        let title = if self.filter.is_empty() && !self.typing {
            format!("Users ({})", visible.len())
        } else {
            format!(
                "Users matching '{}{}' ({})",
                inert(&self.filter, 24),
                if self.typing { "▏" } else { "" },
                visible.len()
            )
        };
        table(
            f,
            area,
            title,
            &["USER", "ROLE", "LINKED TO", "STATE", "MFA", "SESSIONS"],
            &[
                Constraint::Length(24),
                Constraint::Length(13),
                Constraint::Min(10),
                Constraint::Length(7),
                Constraint::Length(5),
                Constraint::Length(8),
            ],
            rows,
            (!visible.is_empty()).then_some(self.selected),
        );
    }
}

/// Run `op` as the operator `ctx` (each operation checks the operator's role and audits itself,
/// with its change): the dialog that shows the result (an enrolment is shown once).
pub async fn run(op: UserOp, core: &Core, ctx: &AccessContext) -> Modal {
    let store = &core.store;
    let what = op.what();
    let enrolled = |username: String, e: users::Enrollment| {
        Some(Enrolled {
            username,
            uri: e.totp_uri,
            codes: e.recovery_codes,
        })
    };
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
            admin::create_user(store, ctx, &new)
                .await
                .map(|e| enrolled(username.clone(), e))
                .map_err(|e| e.to_string())
        }
        UserOp::Lock(name) => admin::lock(store, ctx, &name)
            .await
            .map(|()| None)
            .map_err(|e| e.to_string()),
        UserOp::Unlock(name) => admin::unlock(store, ctx, &name)
            .await
            .map(|()| None)
            .map_err(|e| e.to_string()),
        UserOp::ResetMfa(name) => admin::reset_mfa(store, ctx, &name)
            .await
            .map(|e| enrolled(name.clone(), e))
            .map_err(|e| e.to_string()),
        UserOp::SetRole(name, role) => admin::set_role(store, ctx, &name, role)
            .await
            .map(|()| None)
            .map_err(|e| e.to_string()),
        UserOp::Revoke(name) => admin::end_sessions(store, ctx, &name)
            .await
            .map(|_| None)
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(Some(enrolled)) => Modal::Enrollment(enrolled),
        Ok(None) => Modal::Message(format!("Done: {}", inert(&what, 80))),
        Err(e) => Modal::Message(format!("Refused: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::tui::app::tests::{key, signed_in};
    use crate::tui::Screen;

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
}
