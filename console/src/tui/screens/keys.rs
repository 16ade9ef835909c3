//! The keys screen: the key provider, its calls, the data keys under each key-encryption key
//! version (read again every second, so a rewrap anywhere shows its progress), and rotation with
//! a rewrap of every data key as a job.

use super::Step;
use crate::operator::scoped;
use crate::tui::app::{Action, Job};
use crate::tui::text::inert;
use crate::tui::view::{bold, boxed};
use carapace_core::core::Core;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use std::time::{Duration, Instant};

/// Keys of the screen: the status line shows the first few, the help overlay all.
pub const KEYS: &[(&str, &str)] = &[("R", "rotate the key and rewrap (asks first)")];

#[derive(Debug, Default)]
pub struct KeysView {
    pub provider: String,
    pub versions: Vec<(i32, i64)>,
    pub external_calls: u64,
    /// When the figures were read: the screen reads them again every second, so a rewrap run
    /// elsewhere (another console, `keys rotate`) shows its progress here too.
    pub loaded: Option<Instant>,
}

impl KeysView {
    /// A key on this screen (`None`: not one of its keys). `busy`: a job runs (no second one).
    pub fn key(&self, key: KeyEvent, busy: bool) -> Option<Step> {
        (key.code == KeyCode::Char('R') && !busy).then(|| {
            Step::confirm(
                "Rotate the key-encryption key and rewrap every data key under the new version?"
                    .into(),
                Action::Rotate,
            )
        })
    }

    /// Whether the figures are older than a second.
    pub fn stale(&self) -> bool {
        self.loaded
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    pub async fn load(core: &Core) -> KeysView {
        KeysView {
            provider: core.keys.describe(),
            versions: core.store.key_versions().await.unwrap_or_default(),
            external_calls: core.keys.external_calls(),
            loaded: Some(Instant::now()),
        }
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let total: i64 = self.versions.iter().map(|(_, n)| n).sum::<i64>().max(1);
        let newest = self
            .versions
            .iter()
            .map(|(v, _)| *v)
            .max()
            .unwrap_or_default();
        let mut lines = vec![
            Line::from(format!("provider   {}", inert(&self.provider, 100))),
            Line::from(format!(
                "calls      {} to the key provider since the console started",
                self.external_calls
            )),
            Line::from(""),
            Line::from(Span::styled(
                "data keys by key-encryption key version",
                bold(),
            )),
        ];
        for (v, n) in &self.versions {
            let bar = "■".repeat(((*n * 40) / total) as usize);
            let note = if *v == newest { "  (newest)" } else { "" };
            lines.push(Line::from(format!("v{v:<4} {n:>8}  {bar}{note}")));
        }
        if self.versions.len() > 1 {
            let older: i64 = self
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

/// Rotate the key-encryption key and rewrap every data key under the new version, online.
pub fn rotate(core: &Core, operator: &str) -> Job {
    let store = core.store.clone();
    let ctx = scoped(operator, &[]);
    Job::spawn("rewrapping data keys", move |progress| {
        tokio::spawn(async move {
            match store
                .rewrap_all(&ctx, |done, total| progress.set(done, total))
                .await
            {
                Ok(n) => format!("Rotation complete: {n} data keys rewrapped."),
                Err(e) => format!("Rotation failed: {e}"),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use crate::tui::app::App;
    use crate::tui::{Action, Screen};
    use carapace_core::access::AccessContext;
    use carapace_core::identity::authorize::SessionPolicy;
    use std::time::Instant;

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
