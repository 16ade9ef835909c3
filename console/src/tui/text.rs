//! Text from users and the database shown inert: control characters (ANSI escapes, newlines)
//! replaced, and cut to fit.

/// Characters that would change how the rest of the line is shown: bidirectional overrides,
/// embeddings and isolates (the "Trojan Source" characters), line and paragraph separators and
/// zero-width or invisible marks.
fn reorders(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// `text` with every control character (ANSI escapes, newlines) and every character that reorders
/// the display replaced by `�`, cut to `max` characters (`…` marks a cut).
pub fn inert(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_control() || reorders(c) {
                '\u{fffd}'
            } else {
                c
            }
        })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_and_newlines_are_shown_not_obeyed() {
        assert_eq!(
            super::inert("a\u{1b}[31mred\nx", 40),
            "a\u{fffd}[31mred\u{fffd}x"
        );
        assert_eq!(super::inert("abcdef", 4), "abc…");
        assert_eq!(super::inert("exe\u{202e}fdp", 40), "exe\u{fffd}fdp");
    }
}
