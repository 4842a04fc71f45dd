//! A bounded recursive-descent parser from a normalised answer to an expression tree.
//!
//! Bounds: input length ([`MAX_PARSE`]), nesting depth ([`MAX_DEPTH`]); tokens come from `lex`.
//! Anything outside the grammar is an error (the caller then compares strings).

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};

use super::lex::{collapse_groups, tokenize, Tok};

/// Longest normalised answer that is parsed (bytes): a resource limit, far above any real
/// answer (longer identical answers still compare equal as strings).
pub const MAX_PARSE: usize = 16 << 10;
/// Deepest nesting of the parser, in recursion levels (a bracket or a `\frac` argument costs
/// four): 128 nested brackets after redundant ones are collapsed, which keeps the recursion
/// under 1 MiB of stack in an unoptimised build (tested on a 2 MiB thread).
pub const MAX_DEPTH: usize = 512;

/// Named constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Const {
    /// π
    Pi,
    /// Euler's e
    E,
    /// ∞
    Inf,
}

/// Relation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    /// `=`
    Eq,
    /// `≈`
    Approx,
    /// `≠`
    Ne,
    /// `<`
    Lt,
    /// `≤`
    Le,
    /// `>`
    Gt,
    /// `≥`
    Ge,
    /// `∈`
    In,
}

/// Expression tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Exact number.
    Num(BigRational),
    /// π, e, ∞.
    Const(Const),
    /// A variable (subscripts included in the name: `x_1`).
    Sym(String),
    /// −a
    Neg(Box<Expr>),
    /// Σ terms
    Add(Vec<Expr>),
    /// Π factors
    Mul(Vec<Expr>),
    /// a / b
    Div(Box<Expr>, Box<Expr>),
    /// a ^ b
    Pow(Box<Expr>, Box<Expr>),
    /// Known function (sin, sqrt, root, log, ...) applied to arguments.
    Func(String, Vec<Expr>),
    /// n!
    Fact(Box<Expr>),
    /// a ± b (a None: ±b).
    Pm(Option<Box<Expr>>, Box<Expr>),
    /// (a, b, ...): ordered.
    Tuple(Vec<Expr>),
    /// {a, b, ...}: unordered.
    Set(Vec<Expr>),
    /// a, b, ... at the top level: a list of answers (unordered).
    List(Vec<Expr>),
    /// Interval with closed (true) / open ends.
    Interval(Box<Expr>, Box<Expr>, bool, bool),
    /// A ∪ B ∪ ...
    Union(Vec<Expr>),
    /// Matrix rows.
    Matrix(Vec<Vec<Expr>>),
    /// a op b op c ...
    Rel(Vec<Expr>, Vec<RelOp>),
    /// Plain text (lower-case alphanumerics).
    Text(String),
}

/// Functions known by name (with or without a backslash).
pub fn is_function_name(w: &str) -> bool {
    matches!(
        w,
        "sin"
            | "cos"
            | "tan"
            | "sec"
            | "csc"
            | "cot"
            | "arcsin"
            | "arccos"
            | "arctan"
            | "sinh"
            | "cosh"
            | "tanh"
            | "ln"
            | "log"
            | "exp"
            | "sqrt"
            | "lg"
    )
}

/// Parse a decimal literal exactly.
pub fn decimal(s: &str) -> Option<BigRational> {
    let (int, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let digits = format!("{int}{frac}");
    let digits = if digits.is_empty() { "0" } else { &digits };
    let n: BigInt = digits.parse().ok()?;
    let d = num_traits::pow(BigInt::from(10), frac.len());
    Some(BigRational::new(n, d))
}

/// Does the string look like prose (a word of 3+ letters that is not a function)?
fn is_texty(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Environment names and subscripts are not prose.
        if b[i] == b'{'
            && i > 0
            && (b[i - 1] == b'_' || s[..i].ends_with("\\begin") || s[..i].ends_with("\\end"))
        {
            match super::extract::match_brace(b, i) {
                Some(e) => {
                    i = e + 1;
                    continue;
                }
                None => return false,
            }
        }
        if b[i].is_ascii_alphabetic() {
            let st = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let cmd = st > 0 && b[st - 1] == b'\\';
            let w = &s[st..i];
            if !cmd && w.len() >= 3 && !is_function_name(w) && w != "infty" && w != "inf" {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// Canonical text form: lower-case alphanumerics.
pub fn text_key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Parse a normalised answer.
pub fn parse(s: &str) -> Result<Expr, String> {
    if s.len() > MAX_PARSE {
        return Err("answer too long to parse".into());
    }
    if is_texty(s) {
        return Ok(Expr::Text(text_key(s)));
    }
    let toks = collapse_groups(tokenize(s)?);
    if toks.is_empty() {
        return Err("empty answer".into());
    }
    let mut p = Parser {
        t: toks,
        i: 0,
        depth: 0,
    };
    let items = p.list(&[])?;
    if p.i != p.t.len() {
        return Err(format!("unexpected {:?}", p.t[p.i]));
    }
    match items.len() {
        0 => Err("empty answer".into()),
        1 => Ok(items
            .into_iter()
            .next()
            .unwrap_or(Expr::Text(String::new()))),
        _ => Ok(Expr::List(items)),
    }
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
    depth: usize,
}

fn is_op(t: Option<&Tok>, c: char) -> bool {
    matches!(t, Some(Tok::Op(x)) if *x == c)
}

fn is_cmd(t: Option<&Tok>, n: &str) -> bool {
    matches!(t, Some(Tok::Cmd(x)) if x == n)
}

fn relop(t: Option<&Tok>) -> Option<RelOp> {
    match t? {
        Tok::Op('=') => Some(RelOp::Eq),
        Tok::Op('<') => Some(RelOp::Lt),
        Tok::Op('>') => Some(RelOp::Gt),
        Tok::Cmd(c) => match c.as_str() {
            "le" => Some(RelOp::Le),
            "ge" => Some(RelOp::Ge),
            "neq" => Some(RelOp::Ne),
            "approx" | "simeq" | "sim" | "equiv" | "cong" => Some(RelOp::Approx),
            "in" => Some(RelOp::In),
            "Rightarrow" | "implies" | "to" | "rightarrow" | "Longrightarrow" => {
                Some(RelOp::Approx)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Commands that are values (symbols) or start a value.
fn value_cmd(c: &str) -> bool {
    !matches!(
        c,
        "le" | "ge"
            | "neq"
            | "approx"
            | "simeq"
            | "sim"
            | "equiv"
            | "cong"
            | "in"
            | "cup"
            | "cap"
            | "pm"
            | "mp"
            | "setminus"
            | "Rightarrow"
            | "implies"
            | "to"
            | "rightarrow"
            | "Longrightarrow"
            | "rfloor"
            | "rceil"
            | "dots"
            | "ldots"
            | "cdots"
            | "over"
    )
}

fn starts_primary(t: Option<&Tok>) -> bool {
    match t {
        Some(Tok::Num(_)) | Some(Tok::Letter(_)) | Some(Tok::SetOpen) | Some(Tok::Begin(_)) => true,
        Some(Tok::Op('(')) => true,
        Some(Tok::Cmd(c)) => value_cmd(c),
        _ => false,
    }
}

/// A token that closes (`opening` false) or opens (`opening` true) an item of a list, a group
/// or a side of a relation.
fn item_boundary(t: &Tok, opening: bool) -> bool {
    match t {
        Tok::Op(',') | Tok::Op(';') | Tok::Op('&') | Tok::RowSep => true,
        Tok::Op('(') | Tok::Op('[') | Tok::Op('{') | Tok::SetOpen => opening,
        Tok::Op(')') | Tok::Op(']') | Tok::Op('}') | Tok::SetClose => !opening,
        t => relop(Some(t)).is_some(),
    }
}

fn int_value(e: &Expr) -> Option<i64> {
    match e {
        Expr::Num(q) if q.is_integer() => i64::try_from(q.to_integer()).ok(),
        _ => None,
    }
}

/// Raw canonical text of a token run (for subscripts in names).
fn tok_text(ts: &[Tok]) -> String {
    let mut s = String::new();
    for t in ts {
        match t {
            Tok::Num(n) => s.push_str(n),
            Tok::Letter(c) => s.push(*c),
            Tok::Cmd(c) => {
                s.push('\\');
                s.push_str(c);
            }
            Tok::Op(c) => s.push(*c),
            _ => s.push('?'),
        }
    }
    s
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn eat_op(&mut self, c: char) -> bool {
        if is_op(self.peek(), c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err("nesting too deep".into())
        } else {
            Ok(())
        }
    }

    /// Comma/semicolon separated items until a closing token (not consumed).
    fn list(&mut self, stops: &[Tok]) -> Result<Vec<Expr>, String> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(t) if stops.contains(t) => break,
                Some(Tok::Op(',')) | Some(Tok::Op(';')) => {
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            let e = self.rel()?;
            items.push(e);
            if !(self.eat_op(',') || self.eat_op(';')) {
                break;
            }
        }
        self.depth -= 1;
        Ok(items)
    }

    fn rel(&mut self) -> Result<Expr, String> {
        let first = self.union()?;
        let mut items = vec![first];
        let mut ops = Vec::new();
        while let Some(op) = relop(self.peek()) {
            self.i += 1;
            ops.push(op);
            items.push(self.union()?);
        }
        if ops.is_empty() {
            Ok(items.pop().unwrap_or(Expr::Text(String::new())))
        } else {
            Ok(Expr::Rel(items, ops))
        }
    }

    fn union(&mut self) -> Result<Expr, String> {
        let a = self.additive()?;
        if !is_cmd(self.peek(), "cup") {
            return Ok(a);
        }
        let mut parts = vec![a];
        while is_cmd(self.peek(), "cup") {
            self.i += 1;
            parts.push(self.additive()?);
        }
        Ok(Expr::Union(parts))
    }

    fn additive(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let mut terms: Vec<Expr> = Vec::new();
        let mut pm_pending: Option<Expr> = None;
        let mut first = true;
        loop {
            let sign = match self.peek() {
                Some(Tok::Op('+')) => {
                    self.i += 1;
                    1
                }
                Some(Tok::Op('-')) => {
                    self.i += 1;
                    -1
                }
                Some(Tok::Cmd(c)) if c == "pm" || c == "mp" => {
                    self.i += 1;
                    0
                }
                _ if first => 1,
                _ => break,
            };
            first = false;
            let t = self.term()?;
            match sign {
                1 => terms.push(t),
                -1 => terms.push(Expr::Neg(Box::new(t))),
                _ => {
                    if pm_pending.is_some() {
                        return Err("several ± in one sum".into());
                    }
                    pm_pending = Some(t);
                }
            }
        }
        self.depth -= 1;
        let base = match terms.len() {
            0 => None,
            1 => terms.pop(),
            _ => Some(Expr::Add(terms)),
        };
        match (base, pm_pending) {
            (Some(b), None) => Ok(b),
            (b, Some(p)) => Ok(Expr::Pm(b.map(Box::new), Box::new(p))),
            (None, None) => Err("empty expression".into()),
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        if let Some(m) = self.mixed_number() {
            return Ok(m);
        }
        let mut acc = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.i += 1;
                    let r = self.unary()?;
                    acc = mul(acc, r);
                }
                Some(Tok::Op('/')) | Some(Tok::Op(':')) => {
                    self.i += 1;
                    let r = self.unary()?;
                    acc = Expr::Div(Box::new(acc), Box::new(r));
                }
                t if starts_primary(t) => {
                    let r = self.power()?;
                    acc = mul(acc, r);
                }
                _ => break,
            }
        }
        Ok(acc)
    }

    /// A mixed number, `3\frac{1}{2}` or `3 1/2` (= 7/2, never 3 · 1/2): a whole number and a
    /// proper fraction of positive integers that make up a whole item (between separators,
    /// brackets or relations, after at most a sign). Next to an operator or a variable
    /// (`1+2\frac12`, `2\frac12x`, `2\frac12^2`) it stays a product. `None` leaves the parser
    /// where it was.
    fn mixed_number(&mut self) -> Option<Expr> {
        let st = self.i;
        let whole = match self.t.get(st) {
            Some(Tok::Num(w)) if w.bytes().all(|c| c.is_ascii_digit()) => decimal(w)?,
            _ => return None,
        };
        let starts = match st.checked_sub(1).map(|k| &self.t[k]) {
            None => true,
            Some(Tok::Op('-')) | Some(Tok::Op('+')) => {
                st == 1 || item_boundary(&self.t[st - 2], true)
            }
            Some(t) => item_boundary(t, true),
        };
        if !starts {
            return None;
        }
        let int = |e: &Expr| match e {
            Expr::Num(q) if q.is_integer() && q > &BigRational::zero() => Some(q.clone()),
            _ => None,
        };
        let parts = match (self.t.get(st + 1), self.t.get(st + 2), self.t.get(st + 3)) {
            (Some(Tok::Cmd(c)), _, _) if c == "frac" => {
                self.i = st + 1;
                match self.primary() {
                    Ok(Expr::Div(a, b)) => int(&a).zip(int(&b)),
                    _ => None,
                }
            }
            (Some(Tok::Num(a)), Some(Tok::Op('/')), Some(Tok::Num(b))) => {
                self.i = st + 4;
                decimal(a)
                    .map(Expr::Num)
                    .and_then(|a| int(&a))
                    .zip(decimal(b).map(Expr::Num).and_then(|b| int(&b)))
            }
            _ => None,
        };
        let ends = self.peek().is_none_or(|t| item_boundary(t, false));
        match parts {
            Some((a, b)) if a < b && ends => Some(Expr::Add(vec![
                Expr::Num(whole),
                Expr::Div(Box::new(Expr::Num(a)), Box::new(Expr::Num(b))),
            ])),
            _ => {
                self.i = st;
                None
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let r = match self.peek() {
            Some(Tok::Op('-')) => {
                self.i += 1;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Some(Tok::Op('+')) => {
                self.i += 1;
                self.unary()
            }
            _ => self.power(),
        };
        self.depth -= 1;
        r
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.postfix()?;
        if self.eat_op('^') {
            let e = self.exponent()?;
            let p = Expr::Pow(Box::new(base), Box::new(e));
            // Postfix after a power: `\sqrt[3]{x}^2!` is rare; allow `'` and `!` anyway.
            return Ok(p);
        }
        Ok(base)
    }

    fn exponent(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let r = if self.eat_op('{') {
            let e = self.rel_in_group('}')?;
            Ok(e)
        } else if self.eat_op('-') {
            Ok(Expr::Neg(Box::new(self.exponent()?)))
        } else {
            self.postfix()
        };
        self.depth -= 1;
        r
    }

    /// The content of a group closed by `close` (consumed): one item, or a tuple.
    fn rel_in_group(&mut self, close: char) -> Result<Expr, String> {
        let items = self.list(&[Tok::Op(close)])?;
        if !self.eat_op(close) {
            return Err(format!("missing {close}"));
        }
        match items.len() {
            1 => Ok(items
                .into_iter()
                .next()
                .unwrap_or(Expr::Text(String::new()))),
            0 => Err("empty group".into()),
            _ if close == '}' => Ok(Expr::Set(items)),
            _ => Ok(Expr::Tuple(items)),
        }
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Op('!')) => {
                    self.i += 1;
                    e = Expr::Fact(Box::new(e));
                }
                Some(Tok::Op('\'')) => {
                    self.i += 1;
                    e = match e {
                        Expr::Sym(s) => Expr::Sym(format!("{s}'")),
                        other => Expr::Func("prime".into(), vec![other]),
                    };
                }
                Some(Tok::Op('_')) => {
                    self.i += 1;
                    let sub = self.subscript_tokens()?;
                    e = match e {
                        Expr::Num(q) => base_n(&q, &sub)?,
                        Expr::Sym(s) => Expr::Sym(format!("{s}_{}", tok_text(&sub))),
                        Expr::Const(Const::E) => Expr::Sym(format!("e_{}", tok_text(&sub))),
                        other => other,
                    };
                }
                _ => break,
            }
        }
        Ok(e)
    }

    /// Raw tokens of a subscript: `{...}` or one token.
    fn subscript_tokens(&mut self) -> Result<Vec<Tok>, String> {
        if self.eat_op('{') {
            let st = self.i;
            let mut depth = 1usize;
            while let Some(t) = self.peek() {
                match t {
                    Tok::Op('{') => depth += 1,
                    Tok::Op('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                self.i += 1;
            }
            if !self.eat_op('}') {
                return Err("unclosed subscript".into());
            }
            Ok(self.t[st..self.i - 1].to_vec())
        } else {
            match self.peek().cloned() {
                Some(t) => {
                    self.i += 1;
                    Ok(vec![t])
                }
                None => Err("empty subscript".into()),
            }
        }
    }

    /// `{...}` or a single token argument (`\frac12`, `\sqrt3`).
    fn arg(&mut self) -> Result<Expr, String> {
        if self.eat_op('{') {
            return self.rel_in_group('}');
        }
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.i += 1;
                // `\frac12`: one digit per argument.
                if n.len() > 1 && n.bytes().all(|c| c.is_ascii_digit()) {
                    let (a, rest) = n.split_at(1);
                    self.t.insert(self.i, Tok::Num(rest.to_string()));
                    return num(a);
                }
                num(&n)
            }
            Some(Tok::Letter(_)) | Some(Tok::Cmd(_)) => self.primary(),
            _ => Err("missing argument".into()),
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let r = self.primary_inner();
        self.depth -= 1;
        r
    }

    fn primary_inner(&mut self) -> Result<Expr, String> {
        let Some(t) = self.peek().cloned() else {
            return Err("unexpected end".into());
        };
        self.i += 1;
        match t {
            Tok::Num(n) => num(&n),
            Tok::Letter('e') => Ok(Expr::Const(Const::E)),
            Tok::Letter(c) => Ok(Expr::Sym(c.to_string())),
            Tok::SetOpen => {
                let items = self.list(&[Tok::SetClose])?;
                if self.peek() != Some(&Tok::SetClose) {
                    return Err("missing \\}".into());
                }
                self.i += 1;
                Ok(Expr::Set(items))
            }
            Tok::Op('(') | Tok::Op('[') => {
                let open_closed = t == Tok::Op('[');
                let items = self.list(&[Tok::Op(')'), Tok::Op(']')])?;
                let close_closed = match self.peek() {
                    Some(Tok::Op(')')) => false,
                    Some(Tok::Op(']')) => true,
                    _ => return Err("unclosed bracket".into()),
                };
                self.i += 1;
                match items.len() {
                    0 => Err("empty brackets".into()),
                    1 if open_closed == close_closed => Ok(items
                        .into_iter()
                        .next()
                        .unwrap_or(Expr::Text(String::new()))),
                    2 if open_closed || close_closed => {
                        let mut it = items.into_iter();
                        let (a, b) = (it.next(), it.next());
                        match (a, b) {
                            (Some(a), Some(b)) => Ok(Expr::Interval(
                                Box::new(a),
                                Box::new(b),
                                open_closed,
                                close_closed,
                            )),
                            _ => Err("bad interval".into()),
                        }
                    }
                    _ if open_closed != close_closed => Err("bad interval".into()),
                    _ => Ok(Expr::Tuple(items)),
                }
            }
            Tok::Op('{') => self.rel_in_group('}'),
            Tok::Op('|') => {
                let e = self.additive()?;
                if !self.eat_op('|') {
                    return Err("missing |".into());
                }
                Ok(Expr::Func("abs".into(), vec![e]))
            }
            Tok::Begin(env) => self.matrix(&env),
            Tok::Cmd(c) => self.command(&c),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn command(&mut self, c: &str) -> Result<Expr, String> {
        match c {
            "frac" | "binom" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Ok(if c == "frac" {
                    Expr::Div(Box::new(a), Box::new(b))
                } else {
                    Expr::Func("binom".into(), vec![a, b])
                })
            }
            "sqrt" => {
                if self.eat_op('[') {
                    let n = self.additive()?;
                    if !self.eat_op(']') {
                        return Err("missing ] in root".into());
                    }
                    let a = self.arg()?;
                    return Ok(Expr::Func("root".into(), vec![a, n]));
                }
                let a = if is_op(self.peek(), '(') {
                    self.primary()?
                } else {
                    self.arg()?
                };
                Ok(Expr::Func("sqrt".into(), vec![a]))
            }
            "pi" => Ok(Expr::Const(Const::Pi)),
            "infty" => Ok(Expr::Const(Const::Inf)),
            "lfloor" | "lceil" => {
                let e = self.additive()?;
                let close = if c == "lfloor" { "rfloor" } else { "rceil" };
                if !is_cmd(self.peek(), close) {
                    return Err(format!("missing \\{close}"));
                }
                self.i += 1;
                Ok(Expr::Func(
                    if c == "lfloor" { "floor" } else { "ceil" }.into(),
                    vec![e],
                ))
            }
            f if is_function_name(f) || matches!(f, "arcsec" | "arccsc" | "arccot") => {
                let mut name = f.to_string();
                if name == "lg" {
                    name = "log10".into();
                }
                // `\log_2 8`
                let mut base = None;
                if name == "log" && self.eat_op('_') {
                    let st = self.i;
                    let sub = self.subscript_tokens()?;
                    let _ = st;
                    let mut p = Parser {
                        t: sub,
                        i: 0,
                        depth: self.depth,
                    };
                    base = Some(p.additive()?);
                }
                // `\sin^2 x`: the power applies to the value.
                let mut pow = None;
                if self.eat_op('^') {
                    pow = Some(self.exponent()?);
                }
                let a = if is_op(self.peek(), '(') {
                    self.primary()?
                } else {
                    self.power()?
                };
                let mut v = match base {
                    Some(b) => Expr::Div(
                        Box::new(Expr::Func("ln".into(), vec![a])),
                        Box::new(Expr::Func("ln".into(), vec![b])),
                    ),
                    None => Expr::Func(name, vec![a]),
                };
                if let Some(p) = pow {
                    v = Expr::Pow(Box::new(v), Box::new(p));
                }
                Ok(v)
            }
            "sum" | "prod" | "int" | "lim" | "max" | "min" | "gcd" | "lcm" => {
                Err(format!("\\{c} is not evaluated"))
            }
            _ if !value_cmd(c) => Err(format!("unexpected \\{c}")),
            // Greek letters and other names are symbols.
            other => Ok(Expr::Sym(format!("\\{other}"))),
        }
    }

    fn matrix(&mut self, env: &str) -> Result<Expr, String> {
        let known = [
            "matrix",
            "pmatrix",
            "bmatrix",
            "Bmatrix",
            "vmatrix",
            "Vmatrix",
            "smallmatrix",
            "array",
        ];
        if !known.contains(&env) {
            return Err(format!("environment {env} not supported"));
        }
        if env == "array" && self.eat_op('{') {
            while let Some(t) = self.peek().cloned() {
                self.i += 1;
                if t == Tok::Op('}') {
                    break;
                }
            }
        }
        let mut rows: Vec<Vec<Expr>> = Vec::new();
        let mut row: Vec<Expr> = Vec::new();
        loop {
            match self.peek() {
                None => return Err(format!("unclosed {env}")),
                Some(Tok::End(e)) => {
                    if e != env {
                        return Err("mismatched environment".into());
                    }
                    self.i += 1;
                    break;
                }
                Some(Tok::RowSep) => {
                    self.i += 1;
                    rows.push(std::mem::take(&mut row));
                    continue;
                }
                Some(Tok::Op('&')) => {
                    return Err("empty matrix cell".into());
                }
                _ => {}
            }
            row.push(self.additive()?);
            if self.eat_op('&') {
                continue;
            }
        }
        if !row.is_empty() {
            rows.push(row);
        }
        rows.retain(|r| !r.is_empty());
        if rows.is_empty() {
            return Err("empty matrix".into());
        }
        let w = rows[0].len();
        if rows.iter().any(|r| r.len() != w) {
            return Err("ragged matrix".into());
        }
        Ok(Expr::Matrix(rows))
    }
}

fn num(n: &str) -> Result<Expr, String> {
    decimal(n)
        .map(Expr::Num)
        .ok_or_else(|| format!("bad number {n}"))
}

fn mul(a: Expr, b: Expr) -> Expr {
    match a {
        Expr::Mul(mut v) => {
            v.push(b);
            Expr::Mul(v)
        }
        a => Expr::Mul(vec![a, b]),
    }
}

/// `204_5`: digits of an integer in base n (2..=36; digits must be < n), kept as `base5(54)`:
/// its value where it is computed with, its base where the gold asks for one (equiv.rs).
fn base_n(q: &BigRational, sub: &[Tok]) -> Result<Expr, String> {
    let base_txt = tok_text(sub);
    let base: u32 = base_txt
        .parse()
        .map_err(|_| format!("bad base {base_txt}"))?;
    if !(2..=36).contains(&base) || !q.is_integer() || q < &BigRational::zero() {
        return Err("bad base-n number".into());
    }
    let digits = q.to_integer().to_string();
    let mut v = BigInt::zero();
    for ch in digits.chars() {
        let d = ch.to_digit(10).ok_or("bad digit")?;
        if d >= base {
            return Err(format!("digit {d} in base {base}"));
        }
        v = v * base + d;
    }
    Ok(Expr::Func(
        format!("base{base}"),
        vec![Expr::Num(BigRational::from_integer(v))],
    ))
}

#[allow(dead_code)]
fn one() -> BigRational {
    BigRational::one()
}

#[allow(dead_code)]
pub(crate) fn as_int(e: &Expr) -> Option<i64> {
    int_value(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        for s in [
            "\\frac {1}{2}",
            "2\\sqrt{2}",
            "(1, 2)",
            "[0, 1)",
            "\\{1, 2\\}",
            "x = 5",
            "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
            "\\sin^2(x) + \\cos^2 x",
            "1 \\pm \\sqrt{19}",
            "204_5",
            "x_{1}",
            "10^{\\frac{\\sqrt{13} - 5}{6}}",
            "\\sqrt[3]{x}^2",
            "|x - 2|",
            "\\frac94\\pi",
        ] {
            assert!(parse(s).is_ok(), "{s}: {:?}", parse(s));
        }
        assert!(matches!(parse("odd"), Ok(Expr::Text(_))));
        assert!(parse("((((").is_err());
    }
}
