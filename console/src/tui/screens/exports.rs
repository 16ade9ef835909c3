//! The exports screen: every Bulk Data export job (newest first) with its client, state, progress
//! and size — read again every second, so a running job's progress shows — and cancelling one
//! (asks first; audited as an administrative action). No request is shown: it may name a patient.

use super::{move_in, Step};
use crate::operator::scoped;
use crate::tui::app::{Action, Modal};
use crate::tui::text::inert;
use crate::tui::view::{boxed, table};
use carapace_core::core::Core;
use carapace_core::export::{ExportError, Exporter, JobState, JobSummary};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row};
use ratatui::Frame;
use std::time::{Duration, Instant};

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[
    ("c", "cancel the export (asks first)"),
    ("j/k", "move (PgUp/PgDn page)"),
];

#[derive(Debug, Default)]
pub struct ExportsView {
    pub rows: Vec<JobSummary>,
    pub selected: usize,
    /// Why the jobs could not be read, if they could not.
    pub error: Option<String>,
    /// When the jobs were read: the screen reads them again every second.
    pub loaded: Option<Instant>,
}

/// A job's id as the table shows it: its first 8 characters.
pub fn short(id: &str) -> String {
    inert(&id.chars().take(8).collect::<String>(), 8)
}

/// Who asked: the token's subject, and the client it was issued to when that is another name.
pub fn requester(job: &JobSummary) -> String {
    match job.client_id.as_deref() {
        Some(c) if c != job.principal => format!("{} via {c}", job.principal),
        _ => job.principal.clone(),
    }
}

/// `bytes` for a reader: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A time as the screen shows it, to the minute.
fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// Cancel job `id` as the operator (the core audits it): the result as a message.
pub async fn cancel(core: &Core, operator: &str, id: &str) -> Modal {
    let shown = short(id);
    let message = match Exporter::cancel_as_operator(&core.store, &scoped(operator, &[]), id).await
    {
        Ok(()) => format!("Export {shown} cancelled: the server stops it and removes its files."),
        Err(ExportError::NotFound) => {
            format!("Export {shown} is not there to cancel: already cancelled or removed.")
        }
        Err(e) => format!("Not cancelled: {e}"),
    };
    Modal::Message(message)
}

impl ExportsView {
    /// A key on this screen (`None`: not one of its keys).
    pub fn key(&mut self, key: KeyEvent) -> Option<Step> {
        if move_in(&mut self.selected, self.rows.len(), key.code) {
            return Some(Step::Stay);
        }
        match key.code {
            KeyCode::Char('c') => {
                let job = self.rows.get(self.selected)?;
                if job.state == JobState::Cancelled {
                    return Some(Step::Stay);
                }
                Some(Step::confirm(
                    format!(
                        "Cancel export {} of {}? The server stops it and removes its files.",
                        inert(&job.id, 40),
                        inert(&requester(job), 60)
                    ),
                    Action::CancelExportJob(job.id.clone()),
                ))
            }
            _ => None,
        }
    }

    /// Whether the jobs are older than a second.
    pub fn stale(&self) -> bool {
        self.loaded
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    /// Every job (not audited: nothing listed is PHI); the selection stays on the same job as
    /// new ones arrive above it.
    pub async fn load(&mut self, core: &Core, operator: &str) {
        let current = self.rows.get(self.selected).map(|j| j.id.clone());
        match Exporter::list(&core.store, &scoped(operator, &[])).await {
            Ok(rows) => {
                self.rows = rows;
                self.error = None;
            }
            Err(e) => {
                self.rows.clear();
                self.error = Some(e.to_string());
            }
        }
        self.loaded = Some(Instant::now());
        self.selected = current
            .and_then(|id| self.rows.iter().position(|j| j.id == id))
            .unwrap_or(self.selected)
            .min(self.rows.len().saturating_sub(1));
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let [list, detail] =
            Layout::vertical([Constraint::Min(5), Constraint::Length(6)]).areas(area);
        let rows: Vec<Row> = self
            .rows
            .iter()
            .map(|j| {
                let ends = match (&j.error, j.expires_at) {
                    (Some(error), _) if j.state == JobState::Failed => inert(error, 80),
                    (_, Some(t)) => time(t),
                    (_, None) => String::new(),
                };
                Row::new(vec![
                    short(&j.id),
                    inert(&requester(j), 24),
                    inert(&j.level, 8),
                    j.state.as_str().to_string(),
                    inert(&j.progress, 12),
                    j.resources.to_string(),
                    size(j.bytes),
                    j.files.to_string(),
                    ends,
                ])
            })
            .collect();
        let title = match &self.error {
            None => format!("Bulk Data exports ({})", self.rows.len()),
            Some(e) => format!("Bulk Data exports: not read ({})", inert(e, 80)),
        };
        table(
            f,
            list,
            title,
            &[
                "ID",
                "CLIENT",
                "LEVEL",
                "STATE",
                "PROGRESS",
                "RESOURCES",
                "SIZE",
                "FILES",
                "EXPIRES / ERROR",
            ],
            &[
                Constraint::Length(8),
                Constraint::Length(24),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(12),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(5),
                Constraint::Min(16),
            ],
            rows,
            (!self.rows.is_empty()).then_some(self.selected),
        );
        // The selected job in full: its whole id (for `export cancel`), who, when, why it failed.
        let lines: Vec<Line> = self
            .rows
            .get(self.selected)
            .map(|j| {
                vec![
                    Line::from(format!("id        {}", inert(&j.id, 64))),
                    Line::from(format!("client    {}", inert(&requester(j), 200))),
                    Line::from(format!(
                        "created   {} · {}",
                        time(j.created_at),
                        j.expires_at
                            .map_or("expiry set when it ends".into(), |t| format!(
                                "expires {}",
                                time(t)
                            ))
                    )),
                    Line::from(match &j.error {
                        Some(error) => format!("error     {}", inert(error, 200)),
                        None => format!("progress  {}", inert(&j.progress, 200)),
                    }),
                ]
            })
            .unwrap_or_default();
        f.render_widget(Paragraph::new(lines).block(boxed("Export")), detail);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::tui::app::tests::{key, signed_in};
    use crate::tui::Screen;

    fn job(id: &str, state: JobState) -> JobSummary {
        JobSummary {
            id: id.into(),
            principal: "ehr".into(),
            client_id: Some("ehr".into()),
            level: "system".into(),
            state,
            progress: String::new(),
            resources: 0,
            bytes: 0,
            files: 0,
            created_at: chrono::DateTime::UNIX_EPOCH,
            expires_at: None,
            error: None,
        }
    }

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(size(-1), "-1 B");
    }

    #[test]
    fn cancelling_asks_first_and_a_cancelled_job_is_left_alone() {
        let mut app = signed_in(60_000);
        app.screen = Screen::Exports;
        app.exports.rows = vec![
            job("0b1c2d3e-aaaa-bbbb-cccc-000000000001", JobState::Running),
            job("9f8e7d6c-aaaa-bbbb-cccc-000000000002", JobState::Cancelled),
        ];
        assert_eq!(app.handle_key(key(KeyCode::Char('c'))), None);
        assert!(
            matches!(&app.modal, Some(Modal::Confirm(text, _)) if text.contains("0b1c2d3e-aaaa")),
            "{:?}",
            app.modal
        );
        assert_eq!(app.handle_key(key(KeyCode::Char('n'))), None);
        assert!(app.modal.is_none(), "n closes the dialog");
        app.handle_key(key(KeyCode::Char('c')));
        assert_eq!(
            app.handle_key(key(KeyCode::Char('y'))),
            Some(Action::CancelExportJob(
                "0b1c2d3e-aaaa-bbbb-cccc-000000000001".into()
            ))
        );
        app.handle_key(key(KeyCode::Char('j')));
        assert_eq!(app.handle_key(key(KeyCode::Char('c'))), None);
        assert!(app.modal.is_none(), "nothing to cancel");
    }

    #[test]
    fn the_exports_screen_reads_its_jobs_again_every_second() {
        let mut app = signed_in(60_000);
        app.screen = Screen::Exports;
        assert_eq!(app.tick(), Some(Action::Refresh));
        app.exports.loaded = Some(Instant::now());
        assert_eq!(app.tick(), None, "fresh jobs are kept");
    }
}
