//! String normalisation of an answer span: the MATH `strip_string` family plus unicode and
//! list separators. One pass over the commands, then word-level fixes; no regex.

/// Commands dropped together with nothing else (spacing, sizing, `\left`/`\right`).
const DROP: &[&str] = &[
    "left",
    "right",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "biggl",
    "biggr",
    "displaystyle",
    "textstyle",
    "scriptstyle",
    "limits",
    "nolimits",
    "quad",
    "qquad",
    "enspace",
    "hfill",
    "circ",
    "degree",
    "dollar",
    "mathstrut",
];

/// Commands whose `{argument}` is kept as plain content.
const UNWRAP: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textrm",
    "textsf",
    "texttt",
    "textnormal",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mathtt",
    "mathnormal",
    "mbox",
    "hbox",
    "operatorname",
    "boldsymbol",
    "bm",
    "pmb",
    "emph",
    "textup",
    "displaystyle",
    "boxed",
    "fbox",
    "mathbb",
    "mathcal",
    "overline",
    "overrightarrow",
    "vec",
    "hat",
    "bar",
    "tilde",
    "widehat",
    "underline",
];

/// Styling commands dropped with their first (colour) argument; what they style stays:
/// `\color{red}{5}`, `\textcolor{blue}{5}`, `\colorbox{yellow}{5}` (an optional `[model]`
/// first, as in `\color[rgb]{1,0,0}`).
const DROP_ARG: &[&str] = &["color", "textcolor", "colorbox"];

/// Commands renamed (`\dfrac` → `\frac`, ...).
fn rename(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "dfrac" | "tfrac" | "cfrac" | "frac" => "\\frac",
        "leq" | "le" | "leqslant" | "leqq" => "\\le",
        "geq" | "ge" | "geqslant" | "geqq" => "\\ge",
        "neq" | "ne" => "\\neq",
        "lt" => "<",
        "gt" => ">",
        "cdot" | "times" | "ast" | "cdotp" => "*",
        "div" => "/",
        "lbrace" => "\\{",
        "rbrace" => "\\}",
        "lvert" | "rvert" | "vert" | "mid" => "|",
        "colon" => ":",
        "varpi" => "\\pi",
        "infin" => "\\infty",
        "land" | "wedge" => ",",
        _ => return None,
    })
}

fn unicode(c: char) -> Option<&'static str> {
    Some(match c {
        '−' | '–' | '—' | '‐' | '‑' => "-",
        '×' | '·' | '⋅' | '∗' => "*",
        '÷' => "/",
        '≤' | '⩽' => "\\le ",
        '≥' | '⩾' => "\\ge ",
        '≠' => "\\neq ",
        '≈' => "\\approx ",
        'π' => "\\pi ",
        '∞' => "\\infty ",
        '√' => "\\sqrt ",
        '°' | '∘' => "",
        '²' => "^2",
        '³' => "^3",
        '∪' => "\\cup ",
        '∩' => "\\cap ",
        '∈' => "\\in ",
        '±' => "\\pm ",
        '\u{a0}' | '\u{2009}' | '\u{202f}' | '\u{2002}' | '\u{2003}' => " ",
        '€' | '£' | '¥' | '₹' => "",
        // Vulgar fractions: `3½` is then a mixed number (parse.rs).
        '½' => "\\frac{1}{2}",
        '⅓' => "\\frac{1}{3}",
        '⅔' => "\\frac{2}{3}",
        '¼' => "\\frac{1}{4}",
        '¾' => "\\frac{3}{4}",
        '⅕' => "\\frac{1}{5}",
        '⅖' => "\\frac{2}{5}",
        '⅗' => "\\frac{3}{5}",
        '⅘' => "\\frac{4}{5}",
        '⅙' => "\\frac{1}{6}",
        '⅚' => "\\frac{5}{6}",
        '⅐' => "\\frac{1}{7}",
        '⅛' => "\\frac{1}{8}",
        '⅜' => "\\frac{3}{8}",
        '⅝' => "\\frac{5}{8}",
        '⅞' => "\\frac{7}{8}",
        '⅑' => "\\frac{1}{9}",
        '⅒' => "\\frac{1}{10}",
        '⁄' => "/",
        _ => return None,
    })
}

/// Normalise an answer span. `plain`: no LaTeX context, so `2,74` may be a decimal comma.
pub fn normalize(s: &str, plain: bool) -> String {
    let s = commands(s);
    let s = words(&s);
    let s = strip_units(&s);
    let mut s = s.trim().to_string();
    while s.ends_with('.') || s.ends_with(',') || s.ends_with(';') {
        s.pop();
        s = s.trim_end().to_string();
    }
    number_separators(&s, plain)
}

/// Command-level rewriting (one pass, with brace matching for unwrapped commands).
fn commands(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            let st = i + 1;
            let mut j = st;
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == st {
                // Symbol command: `\!`, `\,`, `\%`, `\$`, `\{`, `\\`, ...
                let n = b.get(st).copied();
                match n {
                    Some(b'!')
                        if out.ends_with(',') && {
                            let o = out.as_bytes();
                            o.len() >= 2 && o[o.len() - 2].is_ascii_digit()
                        } =>
                    {
                        // `16,\!386`: a thousands separator.
                        out.pop();
                        i = st + 1;
                        while i < b.len() && b[i] == b' ' {
                            i += 1;
                        }
                    }
                    Some(b'!') | Some(b',') | Some(b';') | Some(b':') | Some(b' ') | Some(b'>') => {
                        out.push(' ');
                        i = st + 1;
                    }
                    Some(b'%') | Some(b'$') => i = st + 1,
                    Some(b'{') | Some(b'}') | Some(b'\\') => {
                        out.push('\\');
                        out.push(n.unwrap_or(b' ') as char);
                        i = st + 1;
                    }
                    Some(b'|') => {
                        out.push('|');
                        i = st + 1;
                    }
                    _ => {
                        out.push('\\');
                        i = st;
                    }
                }
                continue;
            }
            let name = &s[st..j];
            if DROP.contains(&name) {
                if name == "quad" || name == "qquad" {
                    out.push(' ');
                }
                // `\left.` / `\right.`: the dot is an invisible delimiter.
                if (name == "left" || name == "right") && b.get(j) == Some(&b'.') {
                    j += 1;
                }
                i = j;
                continue;
            }
            if let Some(k) = repeating(s, j, name, &mut out) {
                i = k;
                continue;
            }
            if DROP_ARG.contains(&name) {
                let mut k = skip_spaces(b, j);
                if b.get(k) == Some(&b'[') {
                    if let Some(e) = s[k..].find(']') {
                        k = skip_spaces(b, k + e + 1);
                    }
                }
                i = match b.get(k) {
                    Some(b'{') => super::extract::match_brace(b, k).map_or(j, |e| e + 1),
                    _ => j,
                };
                continue;
            }
            if UNWRAP.contains(&name) {
                let mut k = j;
                while k < b.len() && b[k] == b' ' {
                    k += 1;
                }
                if k < b.len() && b[k] == b'{' {
                    if let Some(e) = super::extract::match_brace(b, k) {
                        let inner = commands(&s[k + 1..e]);
                        out.push(' ');
                        out.push_str(&inner);
                        out.push(' ');
                        i = e + 1;
                        continue;
                    }
                }
                i = j;
                continue;
            }
            if let Some(r) = rename(name) {
                out.push_str(r);
                if r.starts_with('\\') {
                    out.push(' ');
                }
                i = j;
                continue;
            }
            out.push_str(&s[i..j]);
            if j < b.len() && b[j].is_ascii_alphabetic() {
                out.push(' ');
            }
            i = j;
            continue;
        }
        if c == b'%' || c == b'$' {
            i += 1;
            continue;
        }
        if c == b'{' {
            // `14{,}916`, `14 {, }916`: a thousands separator.
            let mut k = i + 1;
            while k < b.len() && b[k] == b' ' {
                k += 1;
            }
            if b.get(k) == Some(&b',') {
                k += 1;
                while k < b.len() && b[k] == b' ' {
                    k += 1;
                }
                if b.get(k) == Some(&b'}') {
                    i = k + 1;
                    continue;
                }
            }
        }
        if c == b'^' {
            // `^\circ`, `^{\circ}`.
            let rest = &s[i + 1..];
            for pat in ["{\\circ}", "\\circ", "{\\degree}", "\\degree"] {
                if rest.starts_with(pat) {
                    i += 1 + pat.len();
                    break;
                }
            }
            if i < b.len() && b[i] == b'^' {
                out.push('^');
                i += 1;
            }
            continue;
        }
        if c == b'.' && s[i..].starts_with("...") && repeat_tail(&mut out) {
            i += 3;
            continue;
        }
        if c.is_ascii() {
            out.push(c as char);
            i += 1;
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        if ch == '…' {
            if !repeat_tail(&mut out) {
                out.push_str("\\ldots ");
            }
            i += ch.len_utf8();
            continue;
        }
        match unicode(ch) {
            Some(r) => out.push_str(r),
            None => out.push(ch),
        }
        i += ch.len_utf8();
    }
    out
}

/// Most digits a repeating decimal is rewritten from (longer ones are left as written).
const MAX_REPEAT_DIGITS: usize = 60;

/// A repeating decimal marked after the decimal `out` ends with: `0.\overline{3}`,
/// `0.1\bar{6}`, `0.\dot{3}`, `0.\dot{1}4\dot{2}` (the dots mark the block's ends) and
/// `0.999\ldots` (a block written twice, then dots). Writes the exact fraction in place of
/// the decimal and returns where the text goes on; `None` leaves everything as it was (a
/// segment `\overline{AB}`, a list `1, 2, \ldots`, `3.14159\ldots`).
fn repeating(s: &str, j: usize, name: &str, out: &mut String) -> Option<usize> {
    let b = s.as_bytes();
    match name {
        "ldots" | "cdots" | "dots" | "dotsc" => repeat_tail(out).then_some(j),
        "overline" | "bar" | "dot" => {
            let (block, mut k) = digit_arg(b, j)?;
            let mut block = block.to_string();
            if name == "dot" {
                // `\dot{1}4\dot{2}`: the block runs to the second dot.
                let mut m = k;
                while m < b.len() && b[m].is_ascii_digit() {
                    m += 1;
                }
                if s[m..].starts_with("\\dot") {
                    if let Some((last, e)) = digit_arg(b, m + 4) {
                        block.push_str(&s[k..m]);
                        block.push_str(last);
                        k = e;
                    }
                }
            }
            let (st, dot) = trailing_decimal(out)?;
            let decimals = out.trim_end()[dot + 1..].to_string();
            write_fraction(out, st, dot, &decimals, &block).then_some(k)
        }
        _ => None,
    }
}

/// The digits of `{123}` or of one digit after a command ending at `j`, and where they end.
fn digit_arg(b: &[u8], j: usize) -> Option<(&str, usize)> {
    let k = skip_spaces(b, j);
    let (st, e, end) = match b.get(k)? {
        b'{' => {
            let st = skip_spaces(b, k + 1);
            let mut e = st;
            while e < b.len() && b[e].is_ascii_digit() {
                e += 1;
            }
            let close = skip_spaces(b, e);
            if b.get(close) != Some(&b'}') {
                return None;
            }
            (st, e, close + 1)
        }
        c if c.is_ascii_digit() => (k, k + 1, k + 1),
        _ => return None,
    };
    let digits = std::str::from_utf8(&b[st..e]).ok()?;
    (!digits.is_empty()).then_some((digits, end))
}

/// `out` ends (before spaces) with a decimal `I.A` (`I`, `A` digits, `I` may be empty, `A`
/// too): the byte offsets of `I` and of the point.
fn trailing_decimal(out: &str) -> Option<(usize, usize)> {
    let b = out.trim_end().as_bytes();
    let mut k = b.len();
    while k > 0 && b[k - 1].is_ascii_digit() {
        k -= 1;
    }
    if k == 0 || b[k - 1] != b'.' {
        return None;
    }
    let dot = k - 1;
    let mut st = dot;
    while st > 0 && b[st - 1].is_ascii_digit() {
        st -= 1;
    }
    if st > 0 && (b[st - 1] == b'.' || b[st - 1].is_ascii_alphanumeric()) {
        return None;
    }
    Some((st, dot))
}

/// `0.999` followed by dots: the shortest block (up to 6 digits) written at least twice at the
/// end of the decimals repeats forever.
fn repeat_tail(out: &mut String) -> bool {
    let Some((st, dot)) = trailing_decimal(out) else {
        return false;
    };
    let decimals = out.trim_end()[dot + 1..].to_string();
    let d = decimals.as_bytes();
    for r in 1..=6.min(d.len() / 2) {
        if d[d.len() - r..] == d[d.len() - 2 * r..d.len() - r] {
            let (head, block) = decimals.split_at(decimals.len() - r);
            return write_fraction(out, st, dot, head, block);
        }
    }
    false
}

/// Replace the decimal at `out[st..]` (point at `dot`) by `I.A(R)` as an exact fraction:
/// (IAR − IA) / (9…9 0…0), one 9 per digit of the block R and one 0 per digit of A.
fn write_fraction(out: &mut String, st: usize, dot: usize, a: &str, block: &str) -> bool {
    let int = &out[st..dot];
    if int.len() + a.len() + block.len() > MAX_REPEAT_DIGITS {
        return false;
    }
    let parse = |t: String| -> num_bigint::BigInt { t.parse().unwrap_or_default() };
    let num = parse(format!("0{int}{a}{block}")) - parse(format!("0{int}{a}"));
    let den = format!("{}{}", "9".repeat(block.len()), "0".repeat(a.len()));
    out.truncate(st);
    out.push_str(&format!("\\frac{{{num}}}{{{den}}} "));
    true
}

fn skip_spaces(b: &[u8], mut k: usize) -> usize {
    while k < b.len() && b[k] == b' ' {
        k += 1;
    }
    k
}

/// `and` / `or` as list separators; percent words dropped; `,\!` thousands separators joined.
fn words(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() && (i == 0 || !b[i - 1].is_ascii_alphabetic()) {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
            let w = &s[i..j];
            let cmd = i > 0 && b[i - 1] == b'\\';
            if !cmd {
                let lw = w.to_ascii_lowercase();
                match lw.as_str() {
                    "and" | "or" => {
                        out.push(',');
                        i = j;
                        continue;
                    }
                    "percent" | "percentage" | "pct" => {
                        i = j;
                        continue;
                    }
                    _ => {}
                }
            }
            out.push_str(w);
            i = j;
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Drop trailing unit words after a number/closing bracket: `125 miles`, `15 cm^2`.
fn strip_units(s: &str) -> String {
    let mut t = s.trim_end().to_string();
    loop {
        let b = t.as_bytes();
        let mut e = b.len();
        // `^2`, `^{2}`, `^3` after a unit word.
        for suf in ["^{2}", "^{3}", "^2", "^3"] {
            if t.ends_with(suf) {
                let pre = t[..t.len() - suf.len()].trim_end();
                if pre
                    .as_bytes()
                    .last()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                {
                    e = pre.len();
                }
                break;
            }
        }
        let mut s0 = e;
        while s0 > 0 && b[s0 - 1].is_ascii_alphabetic() {
            s0 -= 1;
        }
        if e - s0 < 2 || (s0 > 0 && b[s0 - 1] == b'\\') {
            break;
        }
        let word = &t[s0..e];
        if crate::reward::parse::is_function_name(word) {
            break;
        }
        let pre = t[..s0].trim_end();
        let ok = s0 > 0
            && b[s0 - 1] == b' '
            && pre
                .as_bytes()
                .last()
                .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'}' | b')' | b']'))
            || pre.as_bytes().last().is_some_and(|c| c.is_ascii_digit()) && s0 == pre.len();
        if !ok || pre.is_empty() {
            break;
        }
        t = pre.to_string();
    }
    t
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

/// Whole-answer numbers: `1,000` / `1 000` thousands; plain `2,74` decimal comma.
fn number_separators(s: &str, plain: bool) -> String {
    let (sign, body) = match s.strip_prefix('-') {
        Some(r) => ("-", r.trim_start()),
        None => ("", s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((a, b)) if all_digits(b) => (a, Some(b)),
        Some(_) => return s.to_string(),
        None => (body, None),
    };
    for sep in [',', ' '] {
        let groups: Vec<&str> = int.split(sep).collect();
        if groups.len() >= 2
            && all_digits(groups[0])
            && groups[0].len() <= 3
            && !groups[0].starts_with('0')
            && groups[1..].iter().all(|g| g.len() == 3 && all_digits(g))
        {
            let mut r = format!("{sign}{}", groups.concat());
            if let Some(f) = frac {
                r.push('.');
                r.push_str(f);
            }
            return r;
        }
    }
    if plain && frac.is_none() {
        if let Some((a, b)) = int.split_once(',') {
            if all_digits(a) && all_digits(b) && ((b.len() != 3 && b.len() >= 2) || a == "0") {
                return format!("{sign}{a}.{b}");
            }
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn sq(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn strip_string_family() {
        assert_eq!(
            sq(&normalize("\\left( \\dfrac{1}{2} \\right)", false)),
            sq("( \\frac {1}{2} )")
        );
        assert_eq!(sq(&normalize("90^\\circ", false)), sq("90"));
        assert_eq!(sq(&normalize("50\\%", false)), sq("50"));
        assert_eq!(sq(&normalize("\\$16.50", false)), sq("16.50"));
        assert_eq!(sq(&normalize("125\\text{ miles}", false)), sq("125"));
        assert_eq!(sq(&normalize("15\\mbox{ cm}^2", false)), sq("15"));
        assert_eq!(sq(&normalize("1,000", false)), sq("1000"));
        assert_eq!(sq(&normalize("7,425,000", true)), sq("7425000"));
        assert_eq!(sq(&normalize("1 000", true)), sq("1000"));
        assert_eq!(sq(&normalize("2,74", true)), sq("2.74"));
        assert_eq!(sq(&normalize("0,111", true)), sq("0.111"));
        assert_eq!(sq(&normalize("1,2", true)), sq("1,2"));
        assert_eq!(sq(&normalize("1,22", false)), sq("1,22"));
        assert_eq!(sq(&normalize("14{,}916", false)), sq("14916"));
        assert_eq!(
            normalize("11,\\! 111,\\! 111,\\! 100", false),
            "11111111100"
        );
        assert_eq!(sq(&normalize("32, 349", false)), sq("32, 349"));
        assert_eq!(sq(&normalize("6 \\text{ and } 8", false)), sq("6  ,  8"));
        assert_eq!(sq(&normalize("x = 5.", false)), sq("x = 5"));
        assert_eq!(sq(&normalize("−3 × 2", false)), sq("-3 * 2"));
        assert_eq!(sq(&normalize("28 percent", true)), sq("28"));
    }
}
