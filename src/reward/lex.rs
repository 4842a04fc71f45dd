//! The answer's tokens: numbers (with scientific notation read as a power of ten), letters,
//! commands, operators, environments; redundant grouping collapsed without recursion.
//! Bounds: number literal length ([`MAX_DIGITS`]).

use super::parse::is_function_name;

/// Longest number literal (digits).
const MAX_DIGITS: usize = 400;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Num(String),
    Letter(char),
    Cmd(String),
    Op(char),
    Begin(String),
    End(String),
    RowSep,
    SetOpen,
    SetClose,
}

pub(super) fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let st = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else if i < b.len() && b[i] == b'.' && st == i {
                i += 1;
            }
            if i - st > MAX_DIGITS {
                return Err("number too long".into());
            }
            let mantissa = &s[st..i];
            if let Some((sign, exp, end)) = sci_exponent(b, i, mantissa) {
                // `1.2e3`, `5E-4`: the mantissa times a power of ten, exactly.
                out.push(Tok::Op('('));
                out.push(Tok::Num(mantissa.to_string()));
                out.push(Tok::Op('*'));
                out.push(Tok::Num("10".into()));
                out.push(Tok::Op('^'));
                out.push(Tok::Op('{'));
                if sign {
                    out.push(Tok::Op('-'));
                }
                out.push(Tok::Num(exp.to_string()));
                out.push(Tok::Op('}'));
                out.push(Tok::Op(')'));
                i = end;
                continue;
            }
            out.push(Tok::Num(mantissa.to_string()));
        } else if c == b'\\' {
            let st = i + 1;
            let mut j = st;
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == st {
                match b.get(st) {
                    Some(b'\\') => out.push(Tok::RowSep),
                    Some(b'{') => out.push(Tok::SetOpen),
                    Some(b'}') => out.push(Tok::SetClose),
                    Some(b'|') => out.push(Tok::Op('|')),
                    _ => return Err(format!("unknown escape at byte {i}")),
                }
                i = st + 1;
                continue;
            }
            let name = &s[st..j];
            i = j;
            if name == "begin" || name == "end" {
                let mut k = i;
                while k < b.len() && b[k] == b' ' {
                    k += 1;
                }
                if k < b.len() && b[k] == b'{' {
                    let e = s[k..].find('}').ok_or("unclosed environment name")? + k;
                    let env = s[k + 1..e].trim().to_string();
                    out.push(if name == "begin" {
                        Tok::Begin(env)
                    } else {
                        Tok::End(env)
                    });
                    i = e + 1;
                    continue;
                }
                return Err("environment without a name".into());
            }
            out.push(Tok::Cmd(name.to_string()));
        } else if c.is_ascii_alphabetic() {
            let st = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let w = &s[st..i];
            if is_function_name(w) {
                out.push(Tok::Cmd(w.to_string()));
            } else if w == "infty" || w == "inf" {
                out.push(Tok::Cmd("infty".into()));
            } else if w == "pi" {
                out.push(Tok::Cmd("pi".into()));
            } else {
                out.extend(w.chars().map(Tok::Letter));
            }
        } else if c.is_ascii() {
            let two = &b[i..(i + 2).min(b.len())];
            match two {
                b"<=" => {
                    out.push(Tok::Cmd("le".into()));
                    i += 2;
                    continue;
                }
                b">=" => {
                    out.push(Tok::Cmd("ge".into()));
                    i += 2;
                    continue;
                }
                b"!=" => {
                    out.push(Tok::Cmd("neq".into()));
                    i += 2;
                    continue;
                }
                b"==" => {
                    out.push(Tok::Op('='));
                    i += 2;
                    continue;
                }
                _ => {}
            }
            if b"+-*/^_()[]{},;=<>!|&:'".contains(&c) {
                out.push(Tok::Op(c as char));
                i += 1;
            } else {
                return Err(format!("unexpected {:?}", c as char));
            }
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            if ch.is_alphabetic() {
                out.push(Tok::Letter(ch));
            } else {
                return Err(format!("unexpected {ch:?}"));
            }
            i += ch.len_utf8();
        }
    }
    Ok(out)
}

/// Drop redundant grouping: `{{x}}` → `{x}`, `((x))` → `(x)`, however deep, without recursion
/// (one pass with a stack of open brackets). A group whose only content is another group of
/// the same kind means the same thing.
pub(super) fn collapse_groups(t: Vec<Tok>) -> Vec<Tok> {
    let pair = |a: &Tok, b: &Tok| {
        matches!(
            (a, b),
            (Tok::Op('{'), Tok::Op('}')) | (Tok::Op('('), Tok::Op(')'))
        )
    };
    let mut close_of = vec![usize::MAX; t.len()];
    let mut open: Vec<usize> = Vec::new();
    for (k, tok) in t.iter().enumerate() {
        match tok {
            Tok::Op('{') | Tok::Op('(') | Tok::Op('[') => open.push(k),
            Tok::Op('}') | Tok::Op(')') | Tok::Op(']') => {
                if let Some(o) = open.pop() {
                    close_of[o] = k;
                }
            }
            _ => {}
        }
    }
    let mut drop = vec![false; t.len()];
    for k in 0..t.len().saturating_sub(1) {
        let c = close_of[k];
        if c == usize::MAX || c < 2 || !pair(&t[k], &t[c]) {
            continue;
        }
        if close_of[k + 1] == c - 1 && pair(&t[k + 1], &t[c - 1]) && t[k] == t[k + 1] {
            // `\frac{{1}}{2}`: the inner `{1}` stays, the outer pair goes.
            drop[k] = true;
            drop[c] = true;
        }
    }
    if !drop.contains(&true) {
        return t;
    }
    t.into_iter()
        .zip(drop)
        .filter_map(|(tok, d)| (!d).then_some(tok))
        .collect()
}

/// Scientific notation after the number `mantissa` that ends at byte `i`: `e`/`E`, an optional
/// sign, one to three digits, and no letter after them. `2e-1` with a bare integer mantissa
/// other than 1 reads as `2e - 1` (Euler's number), as a competition answer would mean it;
/// `2e3`, `2e+3`, `1e-6` and `2.5e-3` are powers of ten. Returns (negative, exponent, end).
fn sci_exponent<'a>(b: &'a [u8], i: usize, mantissa: &str) -> Option<(bool, &'a str, usize)> {
    if !matches!(b.get(i), Some(b'e') | Some(b'E')) {
        return None;
    }
    let mut j = i + 1;
    let sign = b.get(j).copied().filter(|c| *c == b'+' || *c == b'-');
    if sign.is_some() {
        j += 1;
    }
    let st = j;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let digits = j - st;
    if digits == 0 || digits > 3 || b.get(j).is_some_and(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    if sign == Some(b'-') && b[i] == b'e' && !mantissa.contains('.') && mantissa != "1" {
        return None;
    }
    let exp = std::str::from_utf8(&b[st..j]).ok()?;
    Some((sign == Some(b'-'), exp, j))
}
