//! Drawing: every screen and dialog from the [`App`]'s state, nothing else. Text that came from
//! users or the database goes through [`inert`] on its way to the terminal.

use super::app::{App, Enrolled, Modal, Screen};
use super::text::inert;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;
use std::sync::atomic::Ordering;

/// A `width` × `height` rectangle in the middle of `area` (clipped to it).
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn boxed(title: &str) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "))
}

fn selected() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// A table whose selected row stays in view however long it is.
fn table(
    f: &mut Frame,
    area: Rect,
    title: String,
    header: &[&'static str],
    widths: &[Constraint],
    rows: Vec<Row<'static>>,
    selection: Option<usize>,
) {
    let mut state = TableState::default().with_selected(selection);
    f.render_stateful_widget(
        Table::new(rows, widths.to_vec())
            .header(Row::new(header.to_vec()).style(bold()))
            .row_highlight_style(selected())
            .block(boxed(&title)),
        area,
        &mut state,
    );
}

/// Keys of each screen: the status line shows the first few, the help overlay all.
fn keys(screen: Screen) -> &'static [(&'static str, &'static str)] {
    match screen {
        Screen::SignIn => &[("Tab", "next field"), ("Enter", "sign in"), ("Esc", "quit")],
        Screen::Dashboard => &[("r", "refresh the figures")],
        Screen::Users => &[
            ("c", "create a user"),
            ("l", "lock (asks first)"),
            ("u", "unlock"),
            ("m", "reset MFA (asks first)"),
            ("o", "change role (asks first)"),
            ("x", "end sessions (asks first)"),
            ("/", "filter by name"),
            ("j/k", "move (PgUp/PgDn page)"),
        ],
        Screen::Consent => &[
            ("/", "find a patient"),
            ("Enter", "open the patient"),
            ("a", "grant access"),
            ("x", "revoke the consent (asks first)"),
            ("Tab", "patients ↔ consents"),
            ("j/k", "move"),
        ],
        Screen::Audit => &[
            ("f", "filter"),
            ("c", "clear the filter"),
            ("n/p", "next/previous page"),
            ("J/K", "scroll the event"),
            ("v", "verify the chain"),
            ("e", "export CSV/NDJSON"),
            ("j/k", "move"),
        ],
        Screen::Reviews => &[
            ("Enter", "mark reviewed, with a note"),
            ("a", "show reviewed grants too"),
            ("j/k", "move"),
        ],
        Screen::Keys => &[("R", "rotate the key and rewrap (asks first)")],
    }
}

impl App {
    pub fn draw(&self, f: &mut Frame) {
        let area = f.area();
        let job = u16::from(self.job.is_some());
        let [title, body, progress, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(job),
            Constraint::Length(1),
        ])
        .areas(area);
        self.draw_title(f, title);
        match self.screen {
            Screen::SignIn => self.sign_in.draw(f, body),
            Screen::Dashboard => self.draw_dashboard(f, body),
            Screen::Users => self.draw_users(f, body),
            Screen::Consent => self.draw_consent(f, body),
            Screen::Audit => self.draw_audit(f, body),
            Screen::Reviews => self.draw_reviews(f, body),
            Screen::Keys => self.draw_keys(f, body),
        }
        if let Some(job) = &self.job {
            let done = job.progress.done.load(Ordering::Relaxed);
            let total = job.progress.total.load(Ordering::Relaxed);
            let (ratio, label) = if total > 0 {
                (
                    (done as f64 / total as f64).clamp(0.0, 1.0),
                    format!("{}: {done}/{total}", job.title),
                )
            } else {
                (0.0, format!("{}: {done}", job.title))
            };
            f.render_widget(Gauge::default().ratio(ratio).label(label), progress);
        }
        let mut line: Vec<String> = keys(self.screen)
            .iter()
            .take(4)
            .map(|(k, what)| format!("{k} {what}"))
            .collect();
        if self.screen != Screen::SignIn {
            line.push("? help · q quit".into());
        }
        f.render_widget(Paragraph::new(line.join(" · ")), status);
        if let Some(modal) = &self.modal {
            self.draw_modal(f, body, modal);
        }
        if self.help {
            self.draw_help(f, body);
        }
    }

    fn draw_title(&self, f: &mut Frame, area: Rect) {
        let mut spans = vec![Span::styled("Carapace console", bold())];
        if let Some(operator) = self.operator() {
            spans.push(Span::raw(format!("  {}  ", inert(operator, 24))));
            for (key, screen, name) in Screen::MAIN {
                let text = format!("{key} {name} ");
                spans.push(if screen == self.screen {
                    Span::styled(text, selected())
                } else {
                    Span::raw(text)
                });
            }
        } else {
            spans.push(Span::raw("  not signed in"));
        }
        f.render_widget(Paragraph::new(Line::from(spans)), area);
    }

    fn draw_help(&self, f: &mut Frame, area: Rect) {
        let mut lines: Vec<Line> = keys(self.screen)
            .iter()
            .map(|(k, what)| Line::from(format!("{k:>6}  {what}")))
            .collect();
        lines.push(Line::from(""));
        for (k, what) in [
            ("1-6", "dashboard, users, consent, audit, break-glass, keys"),
            ("r", "load again"),
            ("Esc", "close a dialog, or back to the dashboard"),
            ("q", "quit (Ctrl-C too)"),
            ("?", "this help; any key closes it"),
        ] {
            lines.push(Line::from(format!("{k:>6}  {what}")));
        }
        let dialog = centered(area, 64, lines.len() as u16 + 2);
        f.render_widget(Clear, dialog);
        f.render_widget(Paragraph::new(lines).block(boxed("Keys")), dialog);
    }

    fn draw_modal(&self, f: &mut Frame, area: Rect, modal: &Modal) {
        match modal {
            Modal::Form(_, form) => form.draw(f, area),
            Modal::Confirm(text, _) => {
                let dialog = centered(area, 70, 5);
                f.render_widget(Clear, dialog);
                f.render_widget(
                    Paragraph::new(vec![
                        Line::from(inert(text, 200)),
                        Line::from(""),
                        Line::from("y yes · any other key no"),
                    ])
                    .wrap(Wrap { trim: true })
                    .block(boxed("Confirm")),
                    dialog,
                );
            }
            Modal::Message(text) => {
                let dialog = centered(area, 76, 6);
                f.render_widget(Clear, dialog);
                f.render_widget(
                    Paragraph::new(vec![
                        Line::from(inert(text, 300)),
                        Line::from(""),
                        Line::from("Enter to close"),
                    ])
                    .wrap(Wrap { trim: true })
                    .block(boxed("Result")),
                    dialog,
                );
            }
            Modal::Enrollment(enrolled) => draw_enrollment(f, area, enrolled),
        }
    }

    fn draw_dashboard(&self, f: &mut Frame, area: Rect) {
        let d = &self.dashboard;
        // Side by side when there is room; on a narrow terminal the health table takes the width.
        let [left, right] = if area.width >= 100 {
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area)
        } else {
            Layout::vertical([Constraint::Length(12), Constraint::Min(0)]).areas(area)
        };
        let pair = |k: &str, v: String| Row::new(vec![k.to_string(), v]);
        let rows = vec![
            pair("database", inert(&d.database, 60)),
            pair("key provider", inert(&d.key_provider, 80)),
            pair("server", inert(&d.server, 80)),
            pair("audit chain", inert(&d.chain, 80)),
            pair("patients", d.patients.to_string()),
            pair(
                "resources",
                format!("{} current, {} versions", d.resources, d.versions),
            ),
            pair("users", d.users.to_string()),
            pair("active sessions", d.sessions.to_string()),
            pair("audit events", d.audit_events.to_string()),
            pair("break-glass reviews", format!("{} open", d.open_reviews)),
        ];
        f.render_widget(
            Table::new(rows, [Constraint::Length(20), Constraint::Min(10)]).block(boxed("Health")),
            left,
        );
        let [types, keys, failed] = Layout::vertical([
            Constraint::Min(3),
            Constraint::Length(d.key_versions.len() as u16 + 2),
            Constraint::Length(d.failed_logins.len().max(1) as u16 + 2),
        ])
        .areas(right);
        let rows: Vec<Row> = d
            .by_type
            .iter()
            .map(|(t, n)| Row::new(vec![inert(t, 30), n.to_string()]))
            .collect();
        f.render_widget(
            Table::new(rows, [Constraint::Min(12), Constraint::Length(10)])
                .block(boxed("Resources by type")),
            types,
        );
        let rows: Vec<Row> = d
            .key_versions
            .iter()
            .map(|(v, n)| Row::new(vec![format!("v{v}"), n.to_string()]))
            .collect();
        f.render_widget(
            Table::new(rows, [Constraint::Length(6), Constraint::Min(6)])
                .block(boxed("Data keys by key version")),
            keys,
        );
        let rows: Vec<Row> = if d.failed_logins.is_empty() {
            vec![Row::new(vec!["none".to_string()])]
        } else {
            d.failed_logins
                .iter()
                .map(|(when, who)| Row::new(vec![inert(when, 19), inert(who, 32)]))
                .collect()
        };
        f.render_widget(
            Table::new(rows, [Constraint::Length(20), Constraint::Min(8)])
                .block(boxed("Recent failed sign-ins")),
            failed,
        );
    }

    fn draw_users(&self, f: &mut Frame, area: Rect) {
        let visible = self.users.visible();
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
        let title = if self.users.filter.is_empty() && !self.users.typing {
            format!("Users ({})", visible.len())
        } else {
            format!(
                "Users matching '{}{}' ({})",
                inert(&self.users.filter, 24),
                if self.users.typing { "▏" } else { "" },
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
            (!visible.is_empty()).then_some(self.users.selected),
        );
    }

    fn draw_consent(&self, f: &mut Frame, area: Rect) {
        let c = &self.consent;
        // Patients above, their consents below: the consent table needs the width.
        let [left, right] = Layout::vertical([
            Constraint::Length((c.patients.len().clamp(1, 8) + 3) as u16),
            Constraint::Min(4),
        ])
        .areas(area);
        let rows: Vec<Row> = c
            .patients
            .iter()
            .map(|p| {
                Row::new(vec![
                    inert(&p.name, 60),
                    inert(&p.birth, 10),
                    inert(&p.identifier, 40),
                ])
            })
            .collect();
        let title = if c.query.is_empty() {
            "Patients: / to find".to_string()
        } else {
            format!("Patients '{}' ({})", inert(&c.query, 20), c.patients.len())
        };
        table(
            f,
            left,
            title,
            &["NAME", "BORN", "IDENTIFIER"],
            &[
                Constraint::Min(20),
                Constraint::Length(10),
                Constraint::Length(30),
            ],
            rows,
            (!c.patients.is_empty() && !c.in_consents).then_some(c.selected_patient),
        );
        let Some(patient) = &c.patient else {
            f.render_widget(
                Paragraph::new("Find a patient with /, open them with Enter.")
                    .block(boxed("Consents")),
                right,
            );
            return;
        };
        let rows: Vec<Row> = c
            .consents
            .iter()
            .map(|r| {
                Row::new(vec![
                    inert(&r.id, 8),
                    inert(&r.status, 9),
                    inert(&r.effect, 9),
                    inert(&r.who, 40),
                    inert(&r.what, 30),
                    inert(&r.period, 25),
                    inert(&r.purpose, 12),
                ])
            })
            .collect();
        table(
            f,
            right,
            format!(
                "Consents of {} (Patient/{})",
                inert(&patient.name, 30),
                inert(&patient.id, 40)
            ),
            &["ID", "STATUS", "EFFECT", "WHO", "WHAT", "PERIOD", "PURPOSE"],
            &[
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Min(16),
                Constraint::Length(20),
                Constraint::Length(23),
                Constraint::Length(7),
            ],
            rows,
            (!c.consents.is_empty() && c.in_consents).then_some(c.selected),
        );
    }

    fn draw_audit(&self, f: &mut Frame, area: Rect) {
        let [list, detail] =
            Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
        let rows: Vec<Row> = self
            .audit
            .rows
            .iter()
            .map(|r| {
                Row::new(vec![
                    r.id.to_string(),
                    inert(&r.recorded, 19),
                    inert(&r.agent, 20),
                    inert(&r.action, 1),
                    inert(&r.outcome, 2),
                    inert(&r.subtype, 16),
                    inert(r.patient.trim_start_matches("Patient/"), 14),
                    inert(&r.what, 60),
                ])
            })
            .collect();
        let filter = self.audit.filter.describe();
        let title = format!(
            "Audit trail, page {}{}",
            self.audit.pages.len().max(1),
            if filter.is_empty() {
                String::new()
            } else {
                format!(" · {}", inert(&filter, 80))
            }
        );
        table(
            f,
            list,
            title,
            &[
                "ID", "RECORDED", "AGENT", "A", "O", "SUBTYPE", "PATIENT", "WHAT",
            ],
            &[
                Constraint::Length(6),
                Constraint::Length(19),
                Constraint::Length(16),
                Constraint::Length(1),
                Constraint::Length(2),
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Min(10),
            ],
            rows,
            (!self.audit.rows.is_empty()).then_some(self.audit.selected),
        );
        let lines: Vec<Line> = self
            .audit
            .rows
            .get(self.audit.selected)
            .map(|r| serde_json::to_string_pretty(&r.event).unwrap_or_default())
            .unwrap_or_default()
            .lines()
            .skip(usize::from(self.audit.detail_scroll))
            .take(usize::from(detail.height.saturating_sub(2)))
            .map(|l| Line::from(inert(l, usize::from(detail.width.saturating_sub(2)))))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(boxed("Event (J/K scroll)")),
            detail,
        );
    }

    fn draw_reviews(&self, f: &mut Frame, area: Rect) {
        let [list, detail] =
            Layout::vertical([Constraint::Min(5), Constraint::Length(6)]).areas(area);
        let rows: Vec<Row> = self
            .reviews
            .rows
            .iter()
            .map(|g| {
                Row::new(vec![
                    g.id.to_string(),
                    inert(&g.who, 20),
                    inert(&g.role, 12),
                    g.started.clone(),
                    g.expires.clone(),
                    g.accesses.to_string(),
                    if g.reviewed.is_empty() {
                        "open".to_string()
                    } else {
                        format!("by {}", inert(&g.reviewed, 16))
                    },
                ])
            })
            .collect();
        table(
            f,
            list,
            format!(
                "Break-the-glass grants{} ({})",
                if self.reviews.all {
                    ""
                } else {
                    " waiting for review"
                },
                self.reviews.rows.len()
            ),
            &[
                "ID", "WHO", "ROLE", "STARTED", "EXPIRES", "ACCESSES", "REVIEW",
            ],
            &[
                Constraint::Length(5),
                Constraint::Length(20),
                Constraint::Length(12),
                Constraint::Length(16),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Min(6),
            ],
            rows,
            (!self.reviews.rows.is_empty()).then_some(self.reviews.selected),
        );
        let reason = self
            .reviews
            .rows
            .get(self.reviews.selected)
            .map(|g| inert(&g.reason, 500))
            .unwrap_or_default();
        f.render_widget(
            Paragraph::new(reason)
                .wrap(Wrap { trim: true })
                .block(boxed("Reason given")),
            detail,
        );
    }

    fn draw_keys(&self, f: &mut Frame, area: Rect) {
        let k = &self.keys;
        let total: i64 = k.versions.iter().map(|(_, n)| n).sum::<i64>().max(1);
        let newest = k.versions.iter().map(|(v, _)| *v).max().unwrap_or_default();
        let mut lines = vec![
            Line::from(format!("provider   {}", inert(&k.provider, 100))),
            Line::from(format!(
                "calls      {} to the key provider since the console started",
                k.external_calls
            )),
            Line::from(""),
            Line::from(Span::styled(
                "data keys by key-encryption key version",
                bold(),
            )),
        ];
        for (v, n) in &k.versions {
            let bar = "■".repeat(((*n * 40) / total) as usize);
            let note = if *v == newest { "  (newest)" } else { "" };
            lines.push(Line::from(format!("v{v:<4} {n:>8}  {bar}{note}")));
        }
        if k.versions.len() > 1 {
            let older: i64 = k
                .versions
                .iter()
                .filter(|(v, _)| *v < newest)
                .map(|(_, n)| n)
                .sum();
            lines.push(Line::from(""));
            lines.push(Line::from(format!(
                "{older} of {total} data keys still under older versions (read every second)."
            )));
            lines.push(Line::from(
                "Keys under older versions: a rotation's rewrap has not finished (R rotates again and rewraps every key).",
            ));
        }
        f.render_widget(Paragraph::new(lines).block(boxed("Keys")), area);
    }
}

/// The new user's TOTP enrolment: a QR code drawn with half blocks (light modules as blocks, for a
/// dark terminal) when it fits, the URI, and the recovery codes, all shown this once.
fn draw_enrollment(f: &mut Frame, area: Rect, e: &Enrolled) {
    let qr: Vec<String> = e
        .uri
        .as_deref()
        .and_then(|uri| qrcode::QrCode::with_error_correction_level(uri, qrcode::EcLevel::L).ok())
        .map(|code| {
            code.render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .quiet_zone(true)
                .build()
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let qr_width = qr.first().map_or(0, |l| l.chars().count()) as u16;
    let mut text = vec![Line::from(Span::styled(
        format!("User {} created. Shown once:", inert(&e.username, 32)),
        bold(),
    ))];
    if let Some(uri) = &e.uri {
        text.push(Line::from(""));
        text.push(Line::from("TOTP enrolment URI (for an authenticator app):"));
        text.push(Line::from(inert(uri, 300)));
    }
    text.push(Line::from(""));
    text.push(Line::from("Recovery codes (each works once):"));
    for pair in e.codes.chunks(2) {
        text.push(Line::from(format!("  {}", pair.join("   "))));
    }
    let fits = area.width >= qr_width + 40 && area.height >= qr.len() as u16 + 2;
    if !qr.is_empty() && !fits {
        text.push(Line::from(""));
        text.push(Line::from(format!(
            "(The QR code needs a {}×{} terminal: enlarge this one, or type the URI.)",
            qr_width + 40,
            qr.len() + 4
        )));
    }
    text.push(Line::from(""));
    text.push(Line::from("Enter when they have it"));
    let dialog = centered(area, area.width, area.height);
    f.render_widget(Clear, dialog);
    let block = boxed("Enrolment");
    let inner = block.inner(dialog);
    f.render_widget(block, dialog);
    let text_area = if fits && !qr.is_empty() {
        let [code, rest] =
            Layout::horizontal([Constraint::Length(qr_width + 2), Constraint::Min(10)])
                .areas(inner);
        f.render_widget(
            Paragraph::new(qr.into_iter().map(Line::from).collect::<Vec<_>>()),
            code,
        );
        rest
    } else {
        inner
    };
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }), text_area);
}
