//! The screens, one file each: its state, the keys it takes (turned into a [`Step`]), what it
//! loads from the core and how it is drawn. The [`App`](super::App) shell owns them all, switches
//! between them, runs the dialogs they open and the actions they ask for.

pub mod audit;
pub mod consent;
pub mod dashboard;
pub mod exports;
pub mod keys;
pub mod reviews;
pub mod sign_in;
pub mod users;

use super::app::{Action, FormKind, Modal};
use super::form::Form;
use carapace_core::store::StoreError;
use crossterm::event::KeyCode;

/// What a screen made of a key it took.
#[derive(Debug)]
pub enum Step {
    /// Handled on the screen (a move, a toggle); nothing else to do.
    Stay,
    /// An action for [`App::apply`](super::App::apply).
    Do(Action),
    /// A dialog over the screen.
    Show(Modal),
}

impl Step {
    fn form(kind: FormKind, form: Form) -> Step {
        Step::Show(Modal::Form(kind, form))
    }

    /// Destructive actions ask first: `y` runs `action`.
    fn confirm(text: String, action: Action) -> Step {
        Step::Show(Modal::Confirm(text, action))
    }
}

/// Rows PageUp/PageDown move in long lists.
const PAGE_STEP: usize = 20;

/// Move a selection in a list of `len` rows; whether `key` was a move.
fn move_in(selected: &mut usize, len: usize, key: KeyCode) -> bool {
    let last = len.saturating_sub(1);
    *selected = match key {
        KeyCode::Down | KeyCode::Char('j') => (*selected + 1).min(last),
        KeyCode::Up | KeyCode::Char('k') => selected.saturating_sub(1),
        KeyCode::PageDown => (*selected + PAGE_STEP).min(last),
        KeyCode::PageUp => selected.saturating_sub(PAGE_STEP),
        KeyCode::Home | KeyCode::Char('g') => 0,
        KeyCode::End | KeyCode::Char('G') => last,
        _ => return false,
    };
    true
}

/// A store refusal as one line for the operator (the first few validation issues).
fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::Invalid(issues) => issues
            .iter()
            .take(3)
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect::<Vec<_>>()
            .join("; "),
        e => e.to_string(),
    }
}
