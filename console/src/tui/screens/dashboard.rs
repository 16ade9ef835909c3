//! The dashboard, first after sign-in: the health of the database, the key provider and the
//! server's audit chaining, what is stored, who can sign in, open break-the-glass reviews and the
//! latest failed sign-ins — independent questions asked at once.

use super::audit::AUDIT_SCOPES;
use crate::operator::scoped;
use crate::tui::data::AuditRow;
use crate::tui::text::inert;
use crate::tui::view::boxed;
use carapace_core::core::Core;
use carapace_core::identity::authorize::SessionPolicy;
use carapace_core::identity::tokens;
use carapace_core::store::AuditQuery;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::{Row, Table};
use ratatui::Frame;
use std::time::Duration;

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[("r", "refresh the figures")];

/// What the dashboard shows, loaded when it opens and on `r`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dashboard {
    pub database: String,
    pub key_provider: String,
    /// Whether a server is chaining the audit trail (its chainer empties the queue every second).
    pub server: String,
    pub patients: i64,
    pub resources: i64,
    pub versions: i64,
    pub by_type: Vec<(String, i64)>,
    pub audit_events: i64,
    pub users: i64,
    pub sessions: usize,
    pub key_versions: Vec<(i32, i64)>,
    pub open_reviews: usize,
    /// `(when, who)` of the latest failed sign-ins.
    pub failed_logins: Vec<(String, String)>,
    /// The last chain verification in this console, if any.
    pub chain: String,
}

impl Dashboard {
    /// The figures, as `operator`; `chain` is the last verification in this console.
    pub async fn load(
        core: &Core,
        operator: &str,
        policy: &SessionPolicy,
        chain: &str,
    ) -> Dashboard {
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
        let ctx = scoped(operator, &AUDIT_SCOPES);
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
            match tokio::time::timeout(Duration::from_secs(3), core.keys.generate_for(None)).await {
                Ok(Ok(_)) => format!("answering · {}", core.keys.describe()),
                Ok(Err(e)) => format!("FAILING ({e}) · {}", core.keys.describe()),
                Err(_) => format!("NOT ANSWERING in 3 s · {}", core.keys.describe()),
            }
        };
        let sessions = async {
            tokens::active_tokens(pool, store.now(), None, policy)
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
        Dashboard {
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
            chain: chain.to_string(),
        }
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let d = self;
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
}
