//! The functions of the subset (`exists`, `where`, `select`, `all`, `iif`, `matches`,
//! `substring`, `ofType`, `children`, `descendants`, `resolve`, `trace`, ...), each applied to its
//! input collection with its arguments evaluated on the expression's focus.

use super::eval::{boolean, children, distinct, eval, resolve, singleton, truth, Env};
use super::parse::{Expr, Func};
use super::values::{equal, string, sys, to_string, Sys};
use super::{unsupported, Item, Res, Ty};
use std::borrow::Cow;

/// Evaluate a function argument once, on the expression's focus.
fn arg<'a>(args: &[Expr], i: usize, focus: &[Item<'a>], env: &Env<'a>) -> Res<Vec<Item<'a>>> {
    match args.get(i) {
        Some(a) => eval(a, focus, env),
        None => Ok(Vec::new()),
    }
}

fn string_arg<'a>(
    args: &[Expr],
    i: usize,
    focus: &[Item<'a>],
    env: &Env<'a>,
) -> Res<Option<String>> {
    let v = arg(args, i, focus, env)?;
    Ok(singleton(&v)?.and_then(string).map(Cow::into_owned))
}

pub(super) fn call<'a>(
    f: Func,
    input: Vec<Item<'a>>,
    args: &[Expr],
    focus: &[Item<'a>],
    env: &Env<'a>,
) -> Res<Vec<Item<'a>>> {
    Ok(match f {
        Func::Empty => vec![Item::Bool(input.is_empty())],
        Func::Exists => match args.first() {
            None => vec![Item::Bool(!input.is_empty())],
            Some(c) => {
                let mut any = false;
                for it in &input {
                    if truth(&eval(c, std::slice::from_ref(it), env)?)? == Some(true) {
                        any = true;
                        break;
                    }
                }
                vec![Item::Bool(any)]
            }
        },
        Func::Count => vec![Item::Int(i64::try_from(input.len()).unwrap_or(i64::MAX))],
        Func::Not => boolean(truth(&input)?.map(|b| !b)),
        Func::All => {
            let mut all = true;
            if let Some(c) = args.first() {
                for it in &input {
                    if truth(&eval(c, std::slice::from_ref(it), env)?)? != Some(true) {
                        all = false;
                        break;
                    }
                }
            }
            vec![Item::Bool(all)]
        }
        Func::AllTrue => vec![Item::Bool(
            input
                .iter()
                .all(|i| matches!(sys(i), Some(Sys::Bool(true)))),
        )],
        Func::AnyTrue => vec![Item::Bool(
            input
                .iter()
                .any(|i| matches!(sys(i), Some(Sys::Bool(true)))),
        )],
        Func::Where => {
            let mut out = Vec::new();
            if let Some(c) = args.first() {
                for it in input {
                    if truth(&eval(c, std::slice::from_ref(&it), env)?)? == Some(true) {
                        out.push(it);
                    }
                }
            }
            out
        }
        Func::Select => {
            let mut out = Vec::new();
            if let Some(c) = args.first() {
                for it in &input {
                    out.extend(eval(c, std::slice::from_ref(it), env)?);
                }
            }
            out
        }
        Func::First => input.into_iter().take(1).collect(),
        Func::Last => input.into_iter().last().into_iter().collect(),
        Func::Tail => input.into_iter().skip(1).collect(),
        Func::IsDistinct => {
            let n = input.len();
            vec![Item::Bool(distinct(input).len() == n)]
        }
        Func::Distinct => distinct(input),
        Func::HasValue => vec![Item::Bool(matches!(
            input.as_slice(),
            [Item::Node {
                value: Some(_),
                ty: Ty::Primitive(_),
                ..
            }]
        ))],
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            // On an empty input these give false, not empty, as in the HL7 validator's engine:
            // R4's ref-1 (`reference.startsWith('#').not() or ...`) and bdl-8 are written for
            // that reading (R5 rewrote both with `exists() implies`).
            let Some(item) = singleton(&input)? else {
                return Ok(vec![Item::Bool(false)]);
            };
            let Some(s) = string(item) else {
                return unsupported("a string function on a non-string");
            };
            let Some(p) = string_arg(args, 0, focus, env)? else {
                return Ok(Vec::new());
            };
            vec![Item::Bool(match f {
                Func::StartsWith => s.starts_with(p.as_str()),
                Func::EndsWith => s.ends_with(p.as_str()),
                _ => s.contains(p.as_str()),
            })]
        }
        Func::Substring => {
            let Some(item) = singleton(&input)? else {
                return Ok(Vec::new());
            };
            let Some(s) = string(item) else {
                return unsupported("substring() on a non-string");
            };
            let int_arg = |i| -> Res<Option<i64>> {
                let v = arg(args, i, focus, env)?;
                Ok(match singleton(&v)?.and_then(sys) {
                    Some(Sys::Int(n)) => Some(n),
                    _ => None,
                })
            };
            let Some(start) = int_arg(0)?.and_then(|n| usize::try_from(n).ok()) else {
                return Ok(Vec::new());
            };
            let len = s.chars().count();
            if start >= len {
                return Ok(Vec::new());
            }
            let take = match int_arg(1)? {
                Some(n) => usize::try_from(n).unwrap_or(0),
                None => len,
            };
            vec![Item::Str(Cow::Owned(
                s.chars().skip(start).take(take).collect(),
            ))]
        }
        Func::Length => match singleton(&input)?.and_then(string) {
            Some(s) => vec![Item::Int(
                i64::try_from(s.chars().count()).unwrap_or(i64::MAX),
            )],
            None => Vec::new(),
        },
        Func::Lower | Func::Upper => match singleton(&input)?.and_then(string) {
            Some(s) => vec![Item::Str(Cow::Owned(if f == Func::Lower {
                s.to_lowercase()
            } else {
                s.to_uppercase()
            }))],
            None => Vec::new(),
        },
        Func::ToInteger => match singleton(&input)?.and_then(sys) {
            Some(Sys::Int(i)) => vec![Item::Int(i)],
            Some(Sys::Bool(b)) => vec![Item::Int(i64::from(b))],
            Some(Sys::Str(s)) => s.parse::<i64>().ok().map(Item::Int).into_iter().collect(),
            _ => Vec::new(),
        },
        Func::ToString => singleton(&input)?
            .and_then(to_string)
            .map(Item::Str)
            .into_iter()
            .collect(),
        Func::Combine => {
            let mut all = input;
            all.extend(arg(args, 0, focus, env)?);
            all
        }
        Func::Union => {
            let mut all = input;
            all.extend(arg(args, 0, focus, env)?);
            distinct(all)
        }
        Func::Intersect => {
            let other = arg(args, 0, focus, env)?;
            distinct(
                input
                    .into_iter()
                    .filter(|i| other.iter().any(|o| equal(i, o) == Some(true)))
                    .collect(),
            )
        }
        Func::Iif => {
            // The criterion and branches see the function's input as their focus.
            let scope: &[Item<'a>] = &input;
            let cond = truth(&arg(args, 0, scope, env)?)?;
            if cond == Some(true) {
                arg(args, 1, scope, env)?
            } else {
                arg(args, 2, scope, env)?
            }
        }
        Func::Trace => input,
        Func::Children => {
            let mut out = Vec::new();
            for it in &input {
                children(it, &mut out);
            }
            out
        }
        Func::Descendants => {
            let mut out = Vec::new();
            let mut frontier = input;
            while !frontier.is_empty() {
                let mut next = Vec::new();
                for it in &frontier {
                    children(it, &mut next);
                }
                out.extend(next.iter().cloned());
                frontier = next;
            }
            out
        }
        Func::Resolve => {
            let mut out = Vec::new();
            for it in &input {
                resolve(it, env, &mut out);
            }
            out
        }
        Func::Matches | Func::ReplaceMatches | Func::OfType | Func::As | Func::Is => {
            return unsupported("internal: compiled form expected");
        }
    })
}
