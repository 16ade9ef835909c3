//! Drawing the frame around the screens from the [`App`]'s state: the title with the screen
//! tabs, the job's progress, the status line, the help overlay and the dialogs (each screen draws
//! its own body, in its file under `screens/`, with the widgets shared here). Text that came from
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

pub fn boxed(title: &str) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "))
}

pub fn selected() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

pub fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// A table whose selected row stays in view however long it is.
pub fn table(
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
            Screen::Dashboard => self.dashboard.draw(f, body),
            Screen::Users => self.users.draw(f, body),
            Screen::Consent => self.consent.draw(f, body),
            Screen::Audit => self.audit.draw(f, body),
            Screen::Reviews => self.reviews.draw(f, body),
            Screen::Keys => self.keys.draw(f, body),
            Screen::Exports => self.exports.draw(f, body),
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
        let mut line: Vec<String> = self
            .screen
            .keys()
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
        let mut lines: Vec<Line> = self
            .screen
            .keys()
            .iter()
            .map(|(k, what)| Line::from(format!("{k:>6}  {what}")))
            .collect();
        lines.push(Line::from(""));
        // The screens as the title bar numbers them.
        let numbers = format!("1-{}", Screen::MAIN.len());
        let screens = Screen::MAIN.map(|(_, _, name)| name).join(", ");
        for (k, what) in [
            (numbers.as_str(), screens.as_str()),
            ("r", "load again"),
            ("Esc", "close a dialog, or back to the dashboard"),
            ("q", "quit (Ctrl-C too)"),
            ("?", "this help; any key closes it"),
        ] {
            lines.push(Line::from(format!("{k:>6}  {what}")));
        }
        let dialog = centered(area, 72, lines.len() as u16 + 2);
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
