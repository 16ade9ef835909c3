//! A small form component: labelled one-line fields, one focused, secrets masked. Used for
//! sign-in, creating users, granting consent, audit filters, review notes and exports.

use super::text::inert;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

/// What a key did to the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKey {
    /// Enter on the last field.
    Submit,
    /// Esc.
    Cancel,
    Edited,
}

#[derive(Clone)]
struct Field {
    label: &'static str,
    value: String,
    secret: bool,
}

/// Labelled fields and a focus; `error` is shown under them (after a refused submit).
#[derive(Clone)]
pub struct Form {
    pub title: String,
    fields: Vec<Field>,
    focus: usize,
    pub hint: Option<String>,
    pub error: Option<String>,
}

/// Secrets typed into a form never reach debug output or logs.
impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|x| {
                if x.secret {
                    format!("{}: …", x.label)
                } else {
                    format!("{}: {:?}", x.label, x.value)
                }
            })
            .collect();
        f.debug_struct("Form")
            .field("title", &self.title)
            .field("fields", &fields)
            .field("error", &self.error)
            .finish()
    }
}

/// Longest value a field takes (a keyboard is not a bulk channel).
const MAX_FIELD: usize = 256;

impl Form {
    /// `fields`: label and whether it is a secret (drawn as dots).
    pub fn new(title: &str, fields: &[(&'static str, bool)]) -> Form {
        Form {
            title: title.to_string(),
            fields: fields
                .iter()
                .map(|&(label, secret)| Field {
                    label,
                    value: String::new(),
                    secret,
                })
                .collect(),
            focus: 0,
            hint: None,
            error: None,
        }
    }

    pub fn hint(mut self, hint: &str) -> Form {
        self.hint = Some(hint.to_string());
        self
    }

    pub fn with(mut self, field: usize, value: &str) -> Form {
        if let Some(f) = self.fields.get_mut(field) {
            f.value = value.to_string();
        }
        self
    }

    /// The value of field `i`, trimmed (secrets as typed).
    pub fn value(&self, i: usize) -> &str {
        self.fields.get(i).map_or("", |f| {
            if f.secret {
                f.value.as_str()
            } else {
                f.value.trim()
            }
        })
    }

    pub fn key(&mut self, key: KeyEvent) -> FormKey {
        let n = self.fields.len().max(1);
        match key.code {
            KeyCode::Esc => return FormKey::Cancel,
            KeyCode::Tab | KeyCode::Down => self.focus = (self.focus + 1) % n,
            KeyCode::BackTab | KeyCode::Up => self.focus = (self.focus + n - 1) % n,
            KeyCode::Enter if self.focus + 1 < n => self.focus += 1,
            KeyCode::Enter => return FormKey::Submit,
            KeyCode::Backspace => {
                if let Some(f) = self.fields.get_mut(self.focus) {
                    f.value.pop();
                }
            }
            KeyCode::Char(c) if !c.is_control() => {
                if let Some(f) = self.fields.get_mut(self.focus) {
                    if f.value.chars().count() < MAX_FIELD {
                        f.value.push(c);
                    }
                }
            }
            _ => {}
        }
        FormKey::Edited
    }

    /// Lines: one per field (`›` marks the focus), then the hint and the error.
    pub fn lines(&self, width: usize) -> Vec<Line<'static>> {
        let label_width = self.fields.iter().map(|f| f.label.len()).max().unwrap_or(0);
        let room = width.saturating_sub(label_width + 3).max(1);
        let mut lines: Vec<Line> = self
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let value = if f.secret {
                    "•".repeat(f.value.chars().count().min(room))
                } else {
                    // The end of what is typed stays in view.
                    let chars: Vec<char> = f.value.chars().collect();
                    let tail: String = chars[chars.len().saturating_sub(room)..].iter().collect();
                    inert(&tail, room)
                };
                let marker = if i == self.focus { "›" } else { " " };
                Line::from(format!("{marker} {:<label_width$} {value}", f.label))
            })
            .collect();
        if let Some(hint) = &self.hint {
            lines.push(Line::from(""));
            lines.push(Line::from(inert(hint, width.max(1) * 3)));
        }
        if let Some(error) = &self.error {
            lines.push(Line::from(""));
            lines.push(Line::from(format!("✗ {}", inert(error, width.max(1) * 2))));
        }
        lines
    }

    /// Drawn as a dialog over `area`.
    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let width = area.width.saturating_sub(4).clamp(20, 76);
        let inner = usize::from(width.saturating_sub(2)).max(1);
        let lines = self.lines(inner);
        // Wrapped lines take more rows than there are lines.
        let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
        let height = (rows as u16 + 2).min(area.height);
        let dialog = super::view::centered(area, width + 2, height);
        f.render_widget(Clear, dialog);
        f.render_widget(
            Paragraph::new(lines).wrap(Wrap { trim: false }).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" {} ", self.title)),
            ),
            dialog,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyModifiers;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn enter_moves_on_until_the_last_field_which_submits() {
        let mut form = Form::new("t", &[("a", false), ("secret", true)]);
        form.key(key(KeyCode::Char('x')));
        assert_eq!(form.key(key(KeyCode::Enter)), FormKey::Edited);
        for c in "  pw  ".chars() {
            form.key(key(KeyCode::Char(c)));
        }
        assert_eq!(form.key(key(KeyCode::Enter)), FormKey::Submit);
        assert_eq!(form.value(0), "x");
        assert_eq!(form.value(1), "  pw  ", "secrets are taken as typed");
        let drawn: Vec<String> = form.lines(40).iter().map(|l| l.to_string()).collect();
        assert!(drawn.iter().all(|l| !l.contains("pw")), "{drawn:?}");
        assert_eq!(form.key(key(KeyCode::Esc)), FormKey::Cancel);
    }

    #[test]
    fn a_field_takes_at_most_its_limit() {
        let mut form = Form::new("t", &[("a", false)]);
        for _ in 0..1000 {
            form.key(key(KeyCode::Char('y')));
        }
        assert_eq!(form.value(0).len(), MAX_FIELD);
    }
}
