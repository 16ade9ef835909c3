//! The lexer: FHIRPath text into tokens (identifiers, quoted identifiers, strings, numbers,
//! `%variables`, `$this` and symbols), refusing what the subset does not read.

use super::{unsupported, Res, Unsupported};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    /// A backtick-delimited identifier (`div`): never a keyword.
    Quoted(String),
    Str(String),
    Int(i64),
    Dec(f64),
    Var(String),
    This,
    Sym(&'static str),
}

pub(super) fn lex(src: &str) -> Res<Vec<Tok>> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '\'' || c == '`' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&ch) = chars.get(i) else {
                    return unsupported("unterminated string");
                };
                i += 1;
                if ch == quote {
                    break;
                }
                if ch == '\\' {
                    let Some(&esc) = chars.get(i) else {
                        return unsupported("unterminated escape");
                    };
                    i += 1;
                    match esc {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        'r' => s.push('\r'),
                        'f' => s.push('\u{c}'),
                        '\'' | '"' | '`' | '\\' | '/' => s.push(esc),
                        'u' => {
                            let hex: String = chars.get(i..i + 4).unwrap_or(&[]).iter().collect();
                            let code = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| Unsupported("bad \\u escape".into()))?;
                            s.push(code);
                            i += 4;
                        }
                        // R4's regular expressions are written with regex escapes (`\s`, `\.`,
                        // `\[`) inside string literals; keep them for the regex.
                        other => {
                            s.push('\\');
                            s.push(other);
                        }
                    }
                } else {
                    s.push(ch);
                }
            }
            out.push(if quote == '`' {
                Tok::Quoted(s)
            } else {
                Tok::Str(s)
            });
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let is_dec =
                chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
            if is_dec {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text: String = chars[start..i].iter().collect();
            out.push(if is_dec {
                Tok::Dec(text.parse().map_err(|_| Unsupported("bad number".into()))?)
            } else {
                Tok::Int(text.parse().map_err(|_| Unsupported("bad number".into()))?)
            });
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        if c == '%' {
            i += 1;
            if chars.get(i) == Some(&'\'') || chars.get(i) == Some(&'`') {
                // %'name' / %`name`
                let quote = chars[i];
                let start = i + 1;
                i = start;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
                out.push(Tok::Var(chars[start..i.min(chars.len())].iter().collect()));
                i += 1;
            } else {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Var(chars[start..i].iter().collect()));
            }
            continue;
        }
        if c == '$' {
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i].is_alphanumeric() {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if name != "this" {
                return unsupported(format!("${name}"));
            }
            out.push(Tok::This);
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let sym = match two.as_str() {
            "<=" => Some("<="),
            ">=" => Some(">="),
            "!=" => Some("!="),
            "!~" => Some("!~"),
            _ => None,
        };
        if let Some(s) = sym {
            out.push(Tok::Sym(s));
            i += 2;
            continue;
        }
        let sym = match c {
            '.' => ".",
            '(' => "(",
            ')' => ")",
            '[' => "[",
            ']' => "]",
            '{' => "{",
            '}' => "}",
            ',' => ",",
            '=' => "=",
            '~' => "~",
            '<' => "<",
            '>' => ">",
            '|' => "|",
            '&' => "&",
            '+' => "+",
            '-' => "-",
            '*' => "*",
            '/' => "/",
            _ => return unsupported(format!("character {c:?}")),
        };
        out.push(Tok::Sym(sym));
        i += 1;
    }
    Ok(out)
}
