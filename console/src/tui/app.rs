//! The application state: which screen is shown, what each holds, how keys become [`Action`]s and
//! what an action does. Drawing reads the state only; `apply` is the one place that calls the core.

use super::text::inert;
use carapace_core::access::AccessContext;
use carapace_core::core::Core;
use carapace_core::users;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table};
use ratatui::Frame;
use std::time::{Duration, Instant};

/// What a key (or the clock) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    SignIn,
    Refresh,
    /// The operator was idle too long: clear everything and ask again.
    SignOut,
    /// Confirmed in the dialog: lock this user (revokes their sessions).
    Lock(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    SignIn,
    Dashboard,
    Users,
    Audit,
}

/// One AuditEvent as the audit screen lists it, and the event itself for the detail pane.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub recorded: String,
    pub agent: String,
    pub action: String,
    pub outcome: String,
    pub subtype: String,
    pub patient: String,
    pub event: serde_json::Value,
}

impl AuditRow {
    pub fn from_event(id: i64, event: serde_json::Value) -> AuditRow {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let patient = event["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"]["code"] == "1")
            .map(|e| text(&e["what"]["reference"]))
            .unwrap_or_default();
        AuditRow {
            id,
            recorded: text(&event["recorded"]).chars().take(19).collect(),
            agent: text(&event["agent"][0]["who"]["display"]),
            action: text(&event["action"]),
            outcome: text(&event["outcome"]),
            subtype: text(&event["subtype"][0]["code"]),
            patient,
            event,
        }
    }
}

/// The audit screen: a page of events (newest first), a selection, the pages before.
#[derive(Debug, Default)]
pub struct AuditView {
    pub rows: Vec<AuditRow>,
    selected: usize,
    /// `before_id` of each page shown so far (`None` for the newest).
    pages: Vec<Option<i64>>,
    pub next: Option<i64>,
}

/// One user as the Users screen lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub role: String,
    pub linked: String,
    pub locked: bool,
    pub mfa: bool,
}

/// The Users screen: every user, a filter on the name, a selection, and a pending confirmation.
#[derive(Debug, Default)]
pub struct Users {
    pub rows: Vec<UserRow>,
    filter: String,
    typing: bool,
    selected: usize,
    confirm: Option<String>,
}

impl Users {
    fn visible(&self) -> Vec<&UserRow> {
        let f = self.filter.to_lowercase();
        self.rows
            .iter()
            .filter(|r| f.is_empty() || r.username.to_lowercase().contains(&f))
            .collect()
    }
}

/// The sign-in form: username, password (never shown), TOTP or recovery code.
#[derive(Debug, Default)]
struct SignInForm {
    fields: [String; 3],
    focus: usize,
    message: Option<String>,
}

/// What the dashboard shows, loaded when it opens and on `r`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dashboard {
    pub key_provider: String,
    pub resources: i64,
    pub versions: i64,
    pub audit_events: i64,
    pub users: i64,
    pub key_versions: Vec<(i32, i64)>,
    pub open_reviews: usize,
}

pub struct App {
    pub screen: Screen,
    form: SignInForm,
    operator: Option<AccessContext>,
    pub dashboard: Dashboard,
    pub users: Users,
    pub audit: AuditView,
    help: bool,
    idle: Duration,
    last_key: Instant,
}

const LABELS: [&str; 3] = ["username", "password", "TOTP or recovery code"];

impl App {
    pub fn new(idle: Duration) -> App {
        App {
            screen: Screen::SignIn,
            form: SignInForm::default(),
            operator: None,
            dashboard: Dashboard::default(),
            users: Users::default(),
            audit: AuditView::default(),
            help: false,
            idle,
            last_key: Instant::now(),
        }
    }

    /// The operator signed in (their name), if any.
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_ref().map(|o| o.principal.as_str())
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
        if self.screen == Screen::SignIn {
            return self.sign_in_key(key);
        }
        if self.screen == Screen::Users {
            if let Some(handled) = self.users_key(key) {
                return handled;
            }
        }
        if self.screen == Screen::Audit {
            let audit = &mut self.audit;
            match key.code {
                KeyCode::Down | KeyCode::Char('j') => {
                    audit.selected = (audit.selected + 1).min(audit.rows.len().saturating_sub(1));
                    return None;
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    audit.selected = audit.selected.saturating_sub(1);
                    return None;
                }
                KeyCode::PageDown | KeyCode::Char('n') if audit.next.is_some() => {
                    audit.pages.push(audit.next);
                    return Some(Action::Refresh);
                }
                KeyCode::PageUp | KeyCode::Char('p') if audit.pages.len() > 1 => {
                    audit.pages.pop();
                    return Some(Action::Refresh);
                }
                _ => {}
            }
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
            KeyCode::Char('?') => {
                self.help = true;
                None
            }
            KeyCode::Char('r') => Some(Action::Refresh),
            KeyCode::Char('1') => {
                self.screen = Screen::Dashboard;
                Some(Action::Refresh)
            }
            KeyCode::Char('2') => {
                self.screen = Screen::Users;
                Some(Action::Refresh)
            }
            KeyCode::Char('3') => {
                self.screen = Screen::Audit;
                self.audit = AuditView {
                    pages: vec![None],
                    ..AuditView::default()
                };
                Some(Action::Refresh)
            }
            _ => None,
        }
    }

    /// Keys the Users screen takes for itself (`Some`), before the global ones.
    fn users_key(&mut self, key: KeyEvent) -> Option<Option<Action>> {
        let users = &mut self.users;
        if let Some(name) = users.confirm.clone() {
            users.confirm = None;
            return Some((key.code == KeyCode::Char('y')).then_some(Action::Lock(name)));
        }
        if users.typing {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => users.typing = false,
                KeyCode::Backspace => {
                    users.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && users.filter.len() < 64 => {
                    users.filter.push(c);
                    users.selected = 0;
                }
                _ => {}
            }
            return Some(None);
        }
        let count = users.visible().len();
        match key.code {
            KeyCode::Char('/') => users.typing = true,
            KeyCode::Down | KeyCode::Char('j') => {
                users.selected = (users.selected + 1).min(count.saturating_sub(1))
            }
            KeyCode::Up | KeyCode::Char('k') => users.selected = users.selected.saturating_sub(1),
            // Destructive: asks first.
            KeyCode::Char('l') => {
                users.confirm = users
                    .visible()
                    .get(users.selected)
                    .map(|r| r.username.clone())
            }
            _ => return None,
        }
        Some(None)
    }

    fn sign_in_key(&mut self, key: KeyEvent) -> Option<Action> {
        let form = &mut self.form;
        match key.code {
            KeyCode::Esc => Some(Action::Quit),
            KeyCode::Tab | KeyCode::Down => {
                form.focus = (form.focus + 1) % 3;
                None
            }
            KeyCode::BackTab | KeyCode::Up => {
                form.focus = (form.focus + 2) % 3;
                None
            }
            KeyCode::Enter if form.focus < 2 => {
                form.focus += 1;
                None
            }
            KeyCode::Enter => Some(Action::SignIn),
            KeyCode::Backspace => {
                form.fields[form.focus].pop();
                None
            }
            KeyCode::Char(c) if !c.is_control() && form.fields[form.focus].len() < 256 => {
                form.fields[form.focus].push(c);
                None
            }
            _ => None,
        }
    }

    /// The clock: sign out after the idle timeout.
    pub fn tick(&mut self) -> Option<Action> {
        (self.operator.is_some() && self.last_key.elapsed() >= self.idle).then_some(Action::SignOut)
    }

    /// Do what an action asks; the only place the core is called.
    pub async fn apply(&mut self, action: Action, core: &Core) {
        match action {
            Action::Quit => {}
            Action::SignOut => {
                let minutes = self.idle.as_secs() / 60;
                *self = App::new(self.idle);
                self.form.message = Some(format!("signed out after {minutes} min idle"));
            }
            Action::SignIn => {
                let [username, password, code] = std::mem::take(&mut self.form.fields);
                let signed_in = match crate::sign_in(core, &username, &password, &code).await {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        tracing::error!(error = %e, "console sign-in failed");
                        None
                    }
                };
                if let Some(ctx) = signed_in {
                    self.operator = Some(ctx);
                    self.screen = Screen::Dashboard;
                    self.form = SignInForm::default();
                    self.load_dashboard(core).await;
                } else {
                    self.form = SignInForm {
                        message: Some(users::LoginError::Invalid.to_string()),
                        ..SignInForm::default()
                    };
                }
            }
            Action::Refresh => match self.screen {
                Screen::Users => self.load_users(core).await,
                Screen::Audit => self.load_audit(core).await,
                _ => self.load_dashboard(core).await,
            },
            Action::Lock(name) => {
                let done = users::lock(&core.store, &name).await.is_ok();
                if let Some(ctx) = &self.operator {
                    if let Err(e) = core
                        .store
                        .record_admin(ctx, &format!("user-lock:{name}"), done)
                        .await
                    {
                        tracing::error!(error = %e, "could not audit a lock");
                    }
                }
                self.load_users(core).await;
            }
        }
    }

    /// A page of 50 events through the same core call the FHIR API uses (and, like it, audited).
    async fn load_audit(&mut self, core: &Core) {
        let Some(operator) = &self.operator else {
            return;
        };
        let mut ctx = operator.clone();
        ctx.scopes = carapace_core::access::Scope::parse("user/AuditEvent.rs")
            .into_iter()
            .collect();
        let query = carapace_core::store::AuditQuery {
            count: 50,
            before_id: self.audit.pages.last().copied().flatten(),
            ..Default::default()
        };
        match core.store.audit_events(&ctx, &query).await {
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

    async fn load_users(&mut self, core: &Core) {
        let list = users::list(&core.store).await.unwrap_or_default();
        self.users.rows = list
            .into_iter()
            .map(|u| UserRow {
                role: u.role.as_str().to_string(),
                linked: u
                    .practitioner_id
                    .map(|p| format!("Practitioner/{p}"))
                    .or(u.patient_id.map(|p| format!("Patient/{p}")))
                    .unwrap_or_default(),
                locked: u.admin_locked,
                mfa: u.mfa_enrolled,
                username: u.username,
            })
            .collect();
    }

    async fn load_dashboard(&mut self, core: &Core) {
        let store = &core.store;
        let pool = store.pool();
        let count = |sql: &'static str| async move {
            carapace_core::sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(pool)
                .await
                .unwrap_or(-1)
        };
        let (resources, versions) = store.resource_counts().await.unwrap_or((-1, -1));
        self.dashboard = Dashboard {
            key_provider: core.keys.describe(),
            resources,
            versions,
            audit_events: count("SELECT count(*) FROM audit_events").await,
            users: count("SELECT count(*) FROM users").await,
            key_versions: store.key_versions().await.unwrap_or_default(),
            open_reviews: store.btg_grants(false, 1000).await.map_or(0, |g| g.len()),
        };
    }

    pub fn draw(&self, f: &mut Frame) {
        let area = f.area();
        let [title, body, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(area);
        let who = self.operator().map_or("not signed in".to_string(), |o| {
            format!("operator {}", inert(o, 32))
        });
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(
                    "Carapace console",
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!("  ·  {who}")),
            ])),
            title,
        );
        match self.screen {
            Screen::SignIn => self.draw_sign_in(f, body),
            Screen::Dashboard => self.draw_dashboard(f, body),
            Screen::Users => self.draw_users(f, body),
            Screen::Audit => self.draw_audit(f, body),
        }
        let keys = match self.screen {
            Screen::SignIn => "Tab next field · Enter sign in · Esc quit",
            Screen::Dashboard => "1 dashboard · 2 users · 3 audit · r refresh · ? help · q quit",
            Screen::Audit => "j/k move · n/p page · 1 dashboard · 2 users · r refresh · q quit",
            Screen::Users => "/ filter · j/k move · l lock · 1 dashboard · r refresh · q quit",
        };
        f.render_widget(Paragraph::new(keys), status);
        if self.help {
            let help = Rect {
                x: area.width / 6,
                y: area.height / 4,
                width: (area.width * 2 / 3).max(20).min(area.width),
                height: 6.min(area.height),
            };
            f.render_widget(Clear, help);
            f.render_widget(
                Paragraph::new(vec![
                    Line::from("r  load the figures again"),
                    Line::from("?  this help (any key closes it)"),
                    Line::from("q  quit (Esc too)"),
                ])
                .block(Block::default().borders(Borders::ALL).title(" Keys ")),
                help,
            );
        }
    }

    fn draw_sign_in(&self, f: &mut Frame, area: Rect) {
        let mut lines = vec![Line::from("Sign in as an administrator."), Line::from("")];
        for (i, label) in LABELS.iter().enumerate() {
            let value = match i {
                1 => "•".repeat(self.form.fields[1].chars().count().min(32)),
                _ => inert(&self.form.fields[i], 40),
            };
            let marker = if self.form.focus == i { "›" } else { " " };
            lines.push(Line::from(format!("{marker} {label:<22} {value}")));
        }
        if let Some(message) = &self.form.message {
            lines.push(Line::from(""));
            lines.push(Line::from(inert(message, 70)));
        }
        f.render_widget(
            Paragraph::new(lines)
                .alignment(Alignment::Left)
                .block(Block::default().borders(Borders::ALL).title(" Sign in ")),
            area,
        );
    }

    fn draw_audit(&self, f: &mut Frame, area: Rect) {
        let [list, detail] =
            Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
        let rows: Vec<Row> = self
            .audit
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let row = Row::new(vec![
                    r.id.to_string(),
                    inert(&r.recorded, 19),
                    inert(&r.agent, 20),
                    inert(&r.action, 1),
                    inert(&r.outcome, 2),
                    inert(&r.subtype, 16),
                    inert(&r.patient, 48),
                ]);
                if i == self.audit.selected {
                    row.style(Style::new().add_modifier(Modifier::REVERSED))
                } else {
                    row
                }
            })
            .collect();
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(7),
                    Constraint::Length(19),
                    Constraint::Length(20),
                    Constraint::Length(3),
                    Constraint::Length(3),
                    Constraint::Length(16),
                    Constraint::Min(10),
                ],
            )
            .header(Row::new(vec![
                "ID", "RECORDED", "AGENT", "A", "O", "SUBTYPE", "PATIENT",
            ]))
            .block(Block::default().borders(Borders::ALL).title(format!(
                " Audit trail, page {} ",
                self.audit.pages.len().max(1)
            ))),
            list,
        );
        let lines: Vec<Line> = self
            .audit
            .rows
            .get(self.audit.selected)
            .map(|r| serde_json::to_string_pretty(&r.event).unwrap_or_default())
            .unwrap_or_default()
            .lines()
            .take(usize::from(detail.height.saturating_sub(2)))
            .map(|l| Line::from(inert(l, usize::from(detail.width.saturating_sub(2)))))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Event ")),
            detail,
        );
    }

    fn draw_users(&self, f: &mut Frame, area: Rect) {
        let visible = self.users.visible();
        let rows: Vec<Row> = visible
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let row = Row::new(vec![
                    inert(&u.username, 24),
                    u.role.clone(),
                    inert(&u.linked, 40),
                    if u.locked { "locked" } else { "" }.to_string(),
                    if u.mfa { "TOTP" } else { "none" }.to_string(),
                ]);
                if i == self.users.selected {
                    row.style(Style::new().add_modifier(Modifier::REVERSED))
                } else {
                    row
                }
            })
            .collect();
        let title = if self.users.filter.is_empty() && !self.users.typing {
            format!(" Users ({}) ", visible.len())
        } else {
            format!(
                " Users matching '{}' ({}) ",
                inert(&self.users.filter, 24),
                visible.len()
            )
        };
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(24),
                    Constraint::Length(13),
                    Constraint::Min(10),
                    Constraint::Length(7),
                    Constraint::Length(5),
                ],
            )
            .header(Row::new(vec!["USER", "ROLE", "LINKED TO", "LOCK", "MFA"]))
            .block(Block::default().borders(Borders::ALL).title(title)),
            area,
        );
        if let Some(name) = &self.users.confirm {
            let dialog = Rect {
                x: area.x + area.width / 6,
                y: area.y + area.height / 3,
                width: (area.width * 2 / 3).max(10).min(area.width),
                height: 3.min(area.height),
            };
            f.render_widget(Clear, dialog);
            f.render_widget(
                Paragraph::new(format!(
                    "Lock {} and end their sessions? y/n",
                    inert(name, 24)
                ))
                .block(Block::default().borders(Borders::ALL).title(" Confirm ")),
                dialog,
            );
        }
    }

    fn draw_dashboard(&self, f: &mut Frame, area: Rect) {
        let d = &self.dashboard;
        let mut rows = vec![
            Row::new(vec!["key provider".to_string(), inert(&d.key_provider, 60)]),
            Row::new(vec![
                "resources".to_string(),
                format!("{} current, {} versions", d.resources, d.versions),
            ]),
            Row::new(vec!["audit events".to_string(), d.audit_events.to_string()]),
            Row::new(vec!["users".to_string(), d.users.to_string()]),
            Row::new(vec![
                "break-glass reviews".to_string(),
                format!("{} open", d.open_reviews),
            ]),
        ];
        for (version, n) in &d.key_versions {
            rows.push(Row::new(vec![
                format!("data keys v{version}"),
                n.to_string(),
            ]));
        }
        f.render_widget(
            Table::new(rows, [Constraint::Length(22), Constraint::Min(10)])
                .block(Block::default().borders(Borders::ALL).title(" Dashboard ")),
            area,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        format!("{}", terminal.backend())
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn the_sign_in_form_masks_the_password_and_shows_input_inert() {
        let mut app = App::new(Duration::from_secs(900));
        for c in "ad\u{1b}min".chars() {
            app.handle_key(key(KeyCode::Char(c)));
        }
        app.handle_key(key(KeyCode::Tab));
        for c in "hunter2hunter2".chars() {
            app.handle_key(key(KeyCode::Char(c)));
        }
        let text = screen(&app, 80, 24);
        assert!(!text.contains("hunter2"), "the password is never drawn");
        insta::assert_snapshot!("sign_in_80x24", text);
        assert_eq!(app.handle_key(key(KeyCode::Esc)), Some(Action::Quit));
    }

    #[test]
    fn the_dashboard_renders_at_both_sizes() {
        let mut app = App::new(Duration::from_secs(900));
        app.screen = Screen::Dashboard;
        app.dashboard = Dashboard {
            key_provider: "Vault transit at http://127.0.0.1:8200".into(),
            resources: 92114,
            versions: 92200,
            audit_events: 100_000,
            users: 3,
            key_versions: vec![(1, 12), (2, 120)],
            open_reviews: 1,
        };
        insta::assert_snapshot!("dashboard_80x24", screen(&app, 80, 24));
        app.handle_key(key(KeyCode::Char('?')));
        insta::assert_snapshot!("dashboard_help_200x50", screen(&app, 200, 50));
        // Any key closes the help; q quits.
        assert_eq!(app.handle_key(key(KeyCode::Char('x'))), None);
        assert_eq!(app.handle_key(key(KeyCode::Char('q'))), Some(Action::Quit));
    }

    #[test]
    fn users_filter_and_a_lock_goes_through_a_confirmation() {
        let mut app = App::new(Duration::from_secs(900));
        app.screen = Screen::Users;
        let row = |name: &str, role: &str| UserRow {
            username: name.into(),
            role: role.into(),
            linked: String::new(),
            locked: false,
            mfa: true,
        };
        app.users.rows = vec![
            row("root.admin", "admin"),
            row("dr.house", "practitioner"),
            row("dr.\u{1b}[2Jwho", "practitioner"),
        ];
        for k in [
            KeyCode::Char('/'),
            KeyCode::Char('d'),
            KeyCode::Char('r'),
            KeyCode::Enter,
        ] {
            assert_eq!(app.handle_key(key(k)), None);
        }
        app.handle_key(key(KeyCode::Char('j')));
        app.handle_key(key(KeyCode::Char('l')));
        insta::assert_snapshot!("users_confirm_80x24", screen(&app, 80, 24));
        assert_eq!(
            app.handle_key(key(KeyCode::Char('y'))),
            Some(Action::Lock("dr.\u{1b}[2Jwho".into()))
        );
        app.handle_key(key(KeyCode::Char('l')));
        assert_eq!(app.handle_key(key(KeyCode::Char('n'))), None, "n cancels");
    }

    #[test]
    fn the_audit_screen_lists_events_and_shows_the_selected_one() {
        let mut app = App::new(Duration::from_secs(900));
        app.screen = Screen::Audit;
        let event = |agent: &str, subtype: &str| {
            serde_json::json!({"resourceType": "AuditEvent", "action": "R", "outcome": "0",
                "recorded": "2026-11-23T10:00:00.000000Z",
                "subtype": [{"code": subtype}],
                "agent": [{"who": {"display": agent}}],
                "entity": [{"type": {"code": "1"}, "what": {"reference": "Patient/p-1"}}]})
        };
        app.audit.rows = vec![
            AuditRow::from_event(12, event("dr.house", "read")),
            AuditRow::from_event(11, event("evil\u{1b}]0;x\u{7}", "search-type")),
        ];
        app.audit.pages = vec![None];
        app.handle_key(key(KeyCode::Char('j')));
        insta::assert_snapshot!("audit_80x24", screen(&app, 80, 24));
        insta::assert_snapshot!("audit_200x50", screen(&app, 200, 50));
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let app = App::new(Duration::from_secs(900));
        for (w, h) in [(1, 1), (10, 3), (20, 5)] {
            screen(&app, w, h);
        }
    }
}
