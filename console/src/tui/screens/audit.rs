//! The audit screen: the trail a page at a time (newest first) with one event in full, a filter
//! checked before it runs, and two jobs on their own task: verifying the hash chain and exporting
//! the filtered trail (CSV or NDJSON).

use super::{move_in, Step};
use crate::export;
use crate::operator::scoped;
use crate::tui::app::{Action, FormKind, Job};
use crate::tui::data::AuditRow;
use crate::tui::form::Form;
use crate::tui::text::inert;
use crate::tui::view::{boxed, table};
use carapace_core::core::Core;
use carapace_core::store::AuditQuery;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row};
use ratatui::Frame;

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[
    ("f", "filter"),
    ("c", "clear the filter"),
    ("n/p", "next/previous page"),
    ("J/K", "scroll the event"),
    ("v", "verify the chain"),
    ("e", "export CSV/NDJSON"),
    ("j/k", "move"),
];

/// Audit events per page.
pub const AUDIT_PAGE: usize = 50;

/// Scopes of the operator's reading of the trail.
pub const AUDIT_SCOPES: [&str; 1] = ["user/AuditEvent.rs"];

/// The title of the verification job; its result is also kept for the dashboard.
pub const VERIFY_JOB: &str = "verifying the audit chain";

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

/// The export form: the file to write.
pub fn submit_export(form: &Form) -> Result<Step, String> {
    match form.value(0) {
        "" => Err("a file name, ending .csv or .ndjson".into()),
        path => Ok(Step::Do(Action::Export(path.to_string()))),
    }
}

impl AuditView {
    /// A key on this screen (`None`: not one of its keys). `busy`: a job runs (no second one);
    /// `stamp` names the default export file.
    pub fn key(&mut self, key: KeyEvent, busy: bool, stamp: &str) -> Option<Step> {
        if move_in(&mut self.selected, self.rows.len(), key.code) {
            self.detail_scroll = 0;
            return Some(Step::Stay);
        }
        Some(match key.code {
            // The detail pane scrolls through the whole event.
            KeyCode::Char('J') => {
                self.detail_scroll = self.detail_scroll.saturating_add(5);
                Step::Stay
            }
            KeyCode::Char('K') => {
                self.detail_scroll = self.detail_scroll.saturating_sub(5);
                Step::Stay
            }
            KeyCode::Char('n') | KeyCode::Right if self.next.is_some() => {
                self.pages.push(self.next);
                Step::Do(Action::Refresh)
            }
            KeyCode::Char('p') | KeyCode::Left if self.pages.len() > 1 => {
                self.pages.pop();
                Step::Do(Action::Refresh)
            }
            KeyCode::Char('f') => {
                let f = &self.filter;
                Step::form(
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
                self.filter = AuditFilter::default();
                self.pages = vec![None];
                Step::Do(Action::Refresh)
            }
            KeyCode::Char('v') if !busy => Step::Do(Action::VerifyChain),
            KeyCode::Char('e') if !busy => {
                let name = format!("carapace-audit-{stamp}.csv");
                Step::form(
                    FormKind::Export,
                    Form::new("Export the filtered trail", &[("file", false)])
                        .with(0, &name)
                        .hint("ending .csv (spreadsheet-safe) or .ndjson; written 0600, never over a file"),
                )
            }
            _ => return None,
        })
    }

    /// The filter form: checked, then the first page of what it selects.
    pub fn submit_filter(&mut self, form: &Form) -> Result<Step, String> {
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
        self.filter = filter;
        self.pages = vec![None];
        Ok(Step::Do(Action::Refresh))
    }

    /// The page shown, or what is wrong with the filter.
    pub async fn load(&mut self, core: &Core, operator: &str) -> Result<(), String> {
        let mut query = self.filter.query(AUDIT_PAGE)?;
        if self.pages.is_empty() {
            self.pages.push(None);
        }
        query.before_id = self.pages.last().copied().flatten();
        match core
            .store
            .audit_events(&scoped(operator, &AUDIT_SCOPES), &query)
            .await
        {
            Ok(page) => {
                self.rows = page
                    .events
                    .into_iter()
                    .map(|(id, e)| AuditRow::from_event(id, e))
                    .collect();
                self.next = page.next;
                self.selected = 0;
            }
            Err(e) => tracing::error!(error = %e, "could not read the audit trail"),
        }
        Ok(())
    }

    /// Export the filtered trail to `path` (the export is audited with its size), or what is
    /// wrong with the filter.
    pub fn export(&self, core: &Core, operator: &str, path: String) -> Result<Job, String> {
        let query = self.filter.query(1000)?;
        let store = core.store.clone();
        let ctx = scoped(operator, &AUDIT_SCOPES);
        let admin = scoped(operator, &[]);
        Ok(Job::spawn("exporting the audit trail", move |progress| {
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
                    Ok(n) => format!("Exported {n} events to {}", inert(&path, 80)),
                    Err(e) => format!("Export failed: {}", inert(&e.to_string(), 120)),
                }
            })
        }))
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let [list, detail] =
            Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
        let rows: Vec<Row> = self
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
        let filter = self.filter.describe();
        let title = format!(
            "Audit trail, page {}{}",
            self.pages.len().max(1),
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
            (!self.rows.is_empty()).then_some(self.selected),
        );
        let lines: Vec<Line> = self
            .rows
            .get(self.selected)
            .map(|r| serde_json::to_string_pretty(&r.event).unwrap_or_default())
            .unwrap_or_default()
            .lines()
            .skip(usize::from(self.detail_scroll))
            .take(usize::from(detail.height.saturating_sub(2)))
            .map(|l| Line::from(inert(l, usize::from(detail.width.saturating_sub(2)))))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(boxed("Event (J/K scroll)")),
            detail,
        );
    }
}

/// Walk the whole hash chain (audited after the walk, with its outcome).
pub fn verify(core: &Core, operator: &str) -> Job {
    let store = core.store.clone();
    let ctx = scoped(operator, &[]);
    Job::spawn(VERIFY_JOB, move |progress| {
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
                        format!("Audit chain BROKEN at event {at}: {}", inert(&why, 120)),
                    ),
                },
                Err(e) => (false, format!("Could not verify the chain: {e}")),
            };
            if let Err(e) = store.record_admin(&ctx, "audit-verify", ok).await {
                tracing::error!(error = %e, "could not audit the verification");
            }
            message
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::AuditFilter;

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
}
