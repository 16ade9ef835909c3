//! The break-the-glass screen: the grants waiting for review (or all of them), the reason each
//! gave, and marking one reviewed with a note (audited).

use super::{move_in, Step};
use crate::operator::scoped;
use crate::tui::app::{Action, FormKind, Modal};
use crate::tui::form::Form;
use crate::tui::text::inert;
use crate::tui::view::{boxed, table};
use carapace_core::core::Core;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Paragraph, Row, Wrap};
use ratatui::Frame;

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[
    ("Enter", "mark reviewed, with a note"),
    ("a", "show reviewed grants too"),
    ("j/k", "move"),
];

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

/// The review form for grant `id`: a note is required.
pub fn submit_review(id: i64, form: &Form) -> Result<Step, String> {
    match form.value(0) {
        "" => Err("a review needs a note".into()),
        note => Ok(Step::Do(Action::Review {
            id,
            note: note.to_string(),
        })),
    }
}

/// Mark grant `id` reviewed with `note`, as the operator: the result as a message.
pub async fn review(core: &Core, operator: &str, id: i64, note: &str) -> Modal {
    let message = match core
        .store
        .review_btg(&scoped(operator, &[]), id, note)
        .await
    {
        Ok(true) => format!("Grant {id} marked reviewed."),
        Ok(false) => format!("Grant {id} is not waiting for review."),
        Err(e) => format!("Not reviewed: {e}"),
    };
    Modal::Message(message)
}

impl ReviewsView {
    /// A key on this screen (`None`: not one of its keys).
    pub fn key(&mut self, key: KeyEvent) -> Option<Step> {
        if move_in(&mut self.selected, self.rows.len(), key.code) {
            return Some(Step::Stay);
        }
        Some(match key.code {
            KeyCode::Char('a') => {
                self.all = !self.all;
                Step::Do(Action::Refresh)
            }
            KeyCode::Enter | KeyCode::Char('m') => {
                let grant = self.rows.get(self.selected)?;
                if !grant.reviewed.is_empty() {
                    return Some(Step::Stay);
                }
                let id = grant.id;
                Step::form(
                    FormKind::Review(id),
                    Form::new(&format!("Review grant {id}"), &[("note", false)])
                        .hint("What was checked and found; kept sealed with the grant."),
                )
            }
            _ => return None,
        })
    }

    /// The queue (reading it is audited: the reasons name patients' circumstances).
    pub async fn load(&mut self, core: &Core, operator: &str) {
        let grants = core.store.btg_grants(self.all, 500).await;
        if let Err(e) = core
            .store
            .record_admin(&scoped(operator, &[]), "btg-list", true)
            .await
        {
            tracing::error!(error = %e, "could not audit the review queue");
        }
        let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M").to_string();
        self.rows = grants
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
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let [list, detail] =
            Layout::vertical([Constraint::Min(5), Constraint::Length(6)]).areas(area);
        let rows: Vec<Row> = self
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
                if self.all { "" } else { " waiting for review" },
                self.rows.len()
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
            (!self.rows.is_empty()).then_some(self.selected),
        );
        let reason = self
            .rows
            .get(self.selected)
            .map(|g| inert(&g.reason, 500))
            .unwrap_or_default();
        f.render_widget(
            Paragraph::new(reason)
                .wrap(Wrap { trim: true })
                .block(boxed("Reason given")),
            detail,
        );
    }
}
