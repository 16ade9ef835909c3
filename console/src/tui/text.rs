//! Text from users and the database shown inert: control characters (ANSI escapes, newlines)
//! replaced, and cut to fit.

/// `text` with every control character replaced by `�`, cut to `max` characters (`…` marks a cut).
pub fn inert(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
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
    }
}
