//! The full-screen console (`carapace-console` with no subcommand): ratatui over crossterm, one
//! event loop, screens that turn keys into [`Action`]s and draw themselves; work that touches the
//! database or the key provider runs as an effect of an action, never inside drawing, and long
//! work (chain verification, rewrap, export) on its own task with its progress on screen.
//!
//! `app` is the shell (screen switching, dialogs, jobs, [`App::apply`]); `screens/` has one file
//! per screen with its state, keys, loading and drawing; `view` draws the frame and the dialogs;
//! `form`, `data` and `text` are the pieces the screens share (forms, rows, inert text).

mod app;
mod data;
mod form;
mod screens;
pub mod text;
mod view;

pub use app::{Action, App, Modal, Screen};
pub use screens::exports::requester;
pub use text::inert;

use anyhow::Context;
use carapace_core::core::Core;
use carapace_core::identity::authorize::SessionPolicy;
use crossterm::event::{self, Event, KeyEvent, KeyEventKind};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::time::Duration;

/// Restore the terminal: raw mode off, main screen back. Also run by the panic hook, so a panic
/// never leaves the operator's terminal unusable.
fn restore() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(std::io::stdout(), LeaveAlternateScreen);
}

pub async fn run(core: &Core, sessions: SessionPolicy) -> anyhow::Result<()> {
    // A panic on the UI thread restores the terminal before the message is printed. (A job's
    // task that panics is reported as a failed job instead, the screen left as it is.)
    let ui = std::thread::current().id();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == ui {
            restore();
        }
        default_hook(info);
    }));
    enable_raw_mode().context("the console needs a terminal")?;
    crossterm::execute!(std::io::stdout(), EnterAlternateScreen)?;
    let result = event_loop(core, sessions).await;
    restore();
    result
}

enum Input {
    Key(KeyEvent),
    /// The terminal changed size: draw again at once.
    Resize,
}

async fn event_loop(core: &Core, sessions: SessionPolicy) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    // Terminal events are read on their own thread and sent here, so the loop also wakes for the
    // clock (idle sign-out, job progress).
    let (events, mut incoming) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || loop {
        let input = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => Input::Key(key),
            Ok(Event::Resize(..)) => Input::Resize,
            Ok(_) => continue,
            Err(_) => return,
        };
        if events.blocking_send(input).is_err() {
            return;
        }
    });
    let mut app = App::new(sessions);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        terminal.draw(|f| app.draw(f))?;
        let action = tokio::select! {
            input = incoming.recv() => match input {
                Some(Input::Key(key)) => app.handle_key(key),
                Some(Input::Resize) => {
                    terminal.autoresize()?;
                    None
                }
                None => Some(Action::Quit),
            },
            _ = tick.tick() => app.tick(),
        };
        if let Some(action) = action {
            let quit = action == Action::Quit;
            // Quitting goes through `apply` too: the end of the session is audited.
            // Boxed: the future of `apply` is the largest of every operation's.
            Box::pin(app.apply(action, core)).await;
            if quit {
                return Ok(());
            }
        }
    }
}
