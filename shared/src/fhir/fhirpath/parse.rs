//! The syntax tree and its parser: a precedence-climbing parser over the tokens into [`Expr`],
//! with the functions the subset knows ([`Func`], and how many arguments each takes), regular
//! expressions compiled once, and bounds on length and nesting so no expression can exhaust the
//! stack.

use super::lex::lex;
use super::lex::Tok;
use super::{unsupported, Res, Unsupported};
use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Union,
    Add,
    Sub,
    Concat,
    Mul,
    Div,
    IntDiv,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Empty,
    Exists,
    Count,
    Not,
    All,
    Where,
    Select,
    First,
    Last,
    Tail,
    IsDistinct,
    Distinct,
    HasValue,
    Matches,
    ReplaceMatches,
    StartsWith,
    EndsWith,
    Contains,
    Substring,
    Length,
    Lower,
    Upper,
    ToInteger,
    ToString,
    Combine,
    Intersect,
    Union,
    Iif,
    Trace,
    Children,
    Descendants,
    OfType,
    As,
    Is,
    Resolve,
    AllTrue,
    AnyTrue,
}

fn func(name: &str) -> Option<Func> {
    Some(match name {
        "empty" => Func::Empty,
        "exists" => Func::Exists,
        "count" => Func::Count,
        "not" => Func::Not,
        "all" => Func::All,
        "where" => Func::Where,
        "select" => Func::Select,
        "first" => Func::First,
        "last" => Func::Last,
        "tail" => Func::Tail,
        "isDistinct" => Func::IsDistinct,
        "distinct" => Func::Distinct,
        "hasValue" => Func::HasValue,
        "matches" => Func::Matches,
        "replaceMatches" => Func::ReplaceMatches,
        "startsWith" => Func::StartsWith,
        "endsWith" => Func::EndsWith,
        "contains" => Func::Contains,
        "substring" => Func::Substring,
        "length" => Func::Length,
        "lower" => Func::Lower,
        "upper" => Func::Upper,
        "toInteger" => Func::ToInteger,
        "toString" => Func::ToString,
        "combine" => Func::Combine,
        "intersect" => Func::Intersect,
        "union" => Func::Union,
        "iif" => Func::Iif,
        "trace" => Func::Trace,
        "children" => Func::Children,
        "descendants" => Func::Descendants,
        "ofType" => Func::OfType,
        "as" => Func::As,
        "is" => Func::Is,
        "resolve" => Func::Resolve,
        "allTrue" => Func::AllTrue,
        "anyTrue" => Func::AnyTrue,
        _ => return None,
    })
}

/// Argument counts each function accepts (min, max).
fn arity(f: Func) -> (usize, usize) {
    match f {
        Func::Exists => (0, 1),
        Func::All | Func::Where | Func::Select | Func::Matches => (1, 1),
        Func::StartsWith | Func::EndsWith | Func::Contains => (1, 1),
        Func::Combine | Func::Intersect | Func::Union => (1, 1),
        Func::OfType | Func::As | Func::Is => (1, 1),
        Func::ReplaceMatches => (2, 2),
        Func::Substring => (1, 2),
        Func::Iif => (2, 3),
        Func::Trace => (1, 2),
        _ => (0, 0),
    }
}

#[derive(Debug)]
pub(super) enum Expr {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String),
    EmptySet,
    This,
    Var(String),
    /// `base.name`, or `name` on the focus.
    Member(Option<Box<Expr>>, String),
    Call(Option<Box<Expr>>, Func, Vec<Expr>),
    /// A regular expression function with its literal pattern compiled once.
    Regex(Option<Box<Expr>>, Func, Box<Regex>, Option<String>),
    /// `is`/`as`/`ofType` with their type name.
    Type(Option<Box<Expr>>, Func, String),
    Index(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

/// Compile FHIRPath text into its tree.
pub(super) fn parse(src: &str) -> Res<Expr> {
    let toks = lex(src)?;
    if toks.len() > MAX_TOKENS {
        return unsupported("an expression of more than 1,024 tokens");
    }
    let mut p = Parser {
        toks,
        at: 0,
        depth: 0,
    };
    let e = p.expr(0)?;
    if p.at != p.toks.len() {
        return unsupported("trailing input");
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    /// How deep the parse is nested: expressions come from profiles clients store too, and
    /// neither parsing nor evaluating (both recursive) may exhaust the stack.
    depth: usize,
}

/// Bounds on an expression (R4's longest invariant has about 150 tokens and nests 6 deep): a
/// longer or deeper one is not compiled, so is reported as not evaluated, never run.
const MAX_TOKENS: usize = 1024;
const MAX_NESTING: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Res<()> {
        if self.eat(sym) {
            Ok(())
        } else {
            unsupported(format!("expected '{sym}'"))
        }
    }

    /// The infix operator at the cursor with its binding power.
    fn infix(&self) -> Option<(BinOp, u8)> {
        let op = match self.peek()? {
            Tok::Ident(w) => match w.as_str() {
                "implies" => BinOp::Implies,
                "or" => BinOp::Or,
                "xor" => BinOp::Xor,
                "and" => BinOp::And,
                "in" => BinOp::In,
                "contains" => BinOp::Contains,
                "div" => BinOp::IntDiv,
                "mod" => BinOp::Mod,
                _ => return None,
            },
            Tok::Sym(s) => match *s {
                "=" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                "|" => BinOp::Union,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "&" => BinOp::Concat,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                _ => return None,
            },
            _ => return None,
        };
        let power = match op {
            BinOp::Implies => 1,
            BinOp::Or | BinOp::Xor => 2,
            BinOp::And => 3,
            BinOp::In | BinOp::Contains => 4,
            BinOp::Eq | BinOp::Ne => 5,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 6,
            BinOp::Union => 7,
            BinOp::Add | BinOp::Sub | BinOp::Concat => 9,
            BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => 10,
        };
        Some((op, power))
    }

    fn expr(&mut self, min: u8) -> Res<Expr> {
        let mut left = self.unary()?;
        loop {
            // `is` / `as` bind at 8, between `|` and `+`.
            if let Some(Tok::Ident(w)) = self.peek() {
                if (w == "is" || w == "as") && min <= 8 {
                    let f = if w == "is" { Func::Is } else { Func::As };
                    self.at += 1;
                    let name = self.type_name()?;
                    left = Expr::Type(Some(Box::new(left)), f, name);
                    continue;
                }
            }
            let Some((op, power)) = self.infix() else {
                break;
            };
            if power < min {
                break;
            }
            self.at += 1;
            let right = self.expr(power + 1)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn type_name(&mut self) -> Res<String> {
        let mut name = match self.next() {
            Some(Tok::Ident(n) | Tok::Quoted(n)) => n,
            _ => return unsupported("expected a type name"),
        };
        // `FHIR.Quantity`, `System.String`: the namespace is implied by the name.
        while self.eat(".") {
            match self.next() {
                Some(Tok::Ident(n) | Tok::Quoted(n)) => name = n,
                _ => return unsupported("expected a type name"),
            }
        }
        Ok(name)
    }

    /// Every recursive path of the parser passes here, so this is where nesting is bounded.
    fn unary(&mut self) -> Res<Expr> {
        self.depth += 1;
        let parsed = if self.depth > MAX_NESTING {
            unsupported("an expression nested more than 64 deep")
        } else {
            self.unary_unbounded()
        };
        self.depth -= 1;
        parsed
    }

    fn unary_unbounded(&mut self) -> Res<Expr> {
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat("+") {
            return self.unary();
        }
        let mut e = self.term()?;
        loop {
            if self.eat(".") {
                e = self.invocation(Some(Box::new(e)))?;
            } else if self.eat("[") {
                let index = self.expr(0)?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn term(&mut self) -> Res<Expr> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(Expr::Str(s))
            }
            Some(Tok::Int(n)) => {
                self.at += 1;
                Ok(Expr::Int(n))
            }
            Some(Tok::Dec(n)) => {
                self.at += 1;
                Ok(Expr::Dec(n))
            }
            Some(Tok::Var(v)) => {
                self.at += 1;
                Ok(Expr::Var(v))
            }
            Some(Tok::This) => {
                self.at += 1;
                Ok(Expr::This)
            }
            Some(Tok::Sym("(")) => {
                self.at += 1;
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Sym("{")) => {
                self.at += 1;
                self.expect("}")?;
                Ok(Expr::EmptySet)
            }
            Some(Tok::Ident(w)) if w == "true" || w == "false" => {
                self.at += 1;
                Ok(Expr::Bool(w == "true"))
            }
            Some(Tok::Ident(_) | Tok::Quoted(_)) => self.invocation(None),
            other => unsupported(format!("unexpected {other:?}")),
        }
    }

    fn invocation(&mut self, base: Option<Box<Expr>>) -> Res<Expr> {
        let name = match self.next() {
            Some(Tok::Ident(n)) => n,
            Some(Tok::Quoted(n)) => return Ok(Expr::Member(base, n)),
            other => return unsupported(format!("unexpected {other:?} after '.'")),
        };
        if !self.eat("(") {
            return Ok(Expr::Member(base, name));
        }
        let f = func(&name).ok_or_else(|| Unsupported(format!("function {name}()")))?;
        if matches!(f, Func::OfType | Func::As | Func::Is) {
            let t = self.type_name()?;
            self.expect(")")?;
            return Ok(Expr::Type(base, f, t));
        }
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.expr(0)?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        let (lo, hi) = arity(f);
        if args.len() < lo || args.len() > hi {
            return unsupported(format!("{name}() with {} argument(s)", args.len()));
        }
        if matches!(f, Func::Matches | Func::ReplaceMatches) {
            let Some(Expr::Str(pattern)) = args.first() else {
                return unsupported(format!("{name}() with a computed pattern"));
            };
            let re = Regex::new(pattern).map_err(|_| Unsupported("bad regex".into()))?;
            let subst = match args.get(1) {
                Some(Expr::Str(s)) => Some(s.clone()),
                Some(_) => return unsupported("replaceMatches() with a computed substitution"),
                None => None,
            };
            return Ok(Expr::Regex(base, f, Box::new(re), subst));
        }
        Ok(Expr::Call(base, f, args))
    }
}
