//! The full-screen console (`carapace-console` with no subcommand): ratatui over crossterm, one
//! event loop, screens that turn keys into [`Action`]s and draw themselves; work that touches the
//! database or the key provider runs as an effect of an action, never inside drawing.

mod app;
mod text;

pub use text::inert;

use app::{Action, App};

use anyhow::Context;
use carapace_core::core::Core;
use crossterm::event::{self, Event};
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

pub async fn run(core: &Core, idle: Duration) -> anyhow::Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        default_hook(info);
    }));
    enable_raw_mode().context("the console needs a terminal")?;
    crossterm::execute!(std::io::stdout(), EnterAlternateScreen)?;
    let result = event_loop(core, idle).await;
    restore();
    result
}

async fn event_loop(core: &Core, idle: Duration) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    // Keys are read on their own thread and sent here, so the loop also wakes for the idle clock.
    let (keys, mut incoming) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || loop {
        match event::read() {
            Ok(Event::Key(key)) => {
                if keys.blocking_send(key).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    });
    let mut app = App::new(idle);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        terminal.draw(|f| app.draw(f))?;
        let action = tokio::select! {
            key = incoming.recv() => match key {
                Some(key) => app.handle_key(key),
                None => Some(Action::Quit),
            },
            _ = tick.tick() => app.tick(),
        };
        if let Some(action) = action {
            if action == Action::Quit {
                return Ok(());
            }
            app.apply(action, core).await;
        }
    }
}
