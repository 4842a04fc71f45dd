//! Find the answer span in a model output (or a gold that carries `$..$`, a box or a whole
//! solution). Linear scans over bytes, no regex; every span is capped at [`MAX_ANSWER`] bytes.

use super::RewardConfig;

/// Longest answer span we accept (bytes); longer spans are "no answer". A resource limit far
/// above any real answer.
pub const MAX_ANSWER: usize = 64 << 10;
/// Longest text that can be a bare answer (no prose, no box).
const MAX_BARE: usize = 1000;
/// At most this many boxes are joined into one list answer.
const MAX_JOINED_BOXES: usize = 16;

/// Which extraction steps run after the box and `####` (which always run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The whole text is a bare answer (no prose): that answer.
    pub bare: bool,
    /// "... final answer is X".
    pub final_answer: bool,
    /// The last `$..$` / `\(..\)` / `\[..\]` / `$$..$$` span.
    pub last_latex: bool,
    /// The last number of the text.
    pub last_number: bool,
    /// Last resort: the whole text (golds only).
    pub whole: bool,
}

impl Options {
    /// The prediction-side options of a reward config.
    pub fn from_config(cfg: &RewardConfig) -> Self {
        Self {
            bare: true,
            final_answer: cfg.fallback_final_answer,
            last_latex: cfg.fallback_last_latex,
            last_number: cfg.fallback_last_number,
            whole: false,
        }
    }

    /// Golds are trusted: every fallback on.
    pub fn gold() -> Self {
        Self {
            bare: true,
            final_answer: true,
            last_latex: true,
            last_number: true,
            whole: true,
        }
    }
}

/// How the answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `\boxed{..}` / `\fbox{..}` (several joined when only separators lie between them).
    Boxed,
    /// GSM8K `#### X`.
    Hashes,
    /// The whole text.
    Bare,
    /// "final answer is X".
    FinalAnswer,
    /// The last math span.
    LastLatex,
    /// The last number.
    LastNumber,
}

/// An extracted answer span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The raw span (LaTeX-ish), trimmed.
    pub text: String,
    /// Plain text context (no LaTeX math delimiters): `2,74` may be a decimal comma.
    pub plain: bool,
    /// Where it came from.
    pub source: Source,
}

fn answer(text: &str, plain: bool, source: Source) -> Option<Answer> {
    let t = text.trim();
    if t.is_empty() || t.len() > MAX_ANSWER {
        return None;
    }
    Some(Answer {
        text: undouble(t),
        plain,
        source,
    })
}

/// Extract the answer of `text`.
pub fn extract(text: &str, opt: &Options) -> Option<Answer> {
    // "The final answer is X. I hope it is correct." (the MATH few-shot format) wins over
    // boxes, as in Math-Verify.
    if opt.final_answer {
        if let Some((a, plain)) = final_answer(text, true) {
            if let Some(a) = answer(&a, plain, Source::FinalAnswer) {
                return Some(a);
            }
        }
    }
    if let Some(a) = last_boxed(text) {
        return answer(&a, false, Source::Boxed);
    }
    if let Some(a) = hashes(text) {
        return answer(a, true, Source::Hashes);
    }
    if opt.bare {
        // A gold may be a long bare answer; a prediction that long is prose.
        let cap = if opt.whole { MAX_ANSWER } else { MAX_BARE };
        if let Some((a, plain)) = bare(text, cap) {
            return answer(&a, plain, Source::Bare);
        }
    }
    if opt.final_answer {
        if let Some((a, plain)) = final_answer(text, false) {
            if let Some(a) = answer(&a, plain, Source::FinalAnswer) {
                return Some(a);
            }
        }
    }
    // The last math span or the last number, whichever comes last in the text.
    let latex = if opt.last_latex {
        last_latex_at(text)
    } else {
        None
    };
    let number = if opt.last_number {
        last_number(text).map(|n| (n, n.as_ptr() as usize - text.as_ptr() as usize))
    } else {
        None
    };
    match (latex, number) {
        (Some((l, _, end)), Some((n, at))) if at >= end => {
            answer(n, true, Source::LastNumber).or_else(|| answer(&l, false, Source::LastLatex))
        }
        (Some((l, _, _)), n) => answer(&l, false, Source::LastLatex)
            .or_else(|| n.and_then(|(n, _)| answer(n, true, Source::LastNumber))),
        (None, Some((n, _))) => answer(n, true, Source::LastNumber),
        (None, None) if opt.whole => answer(text, false, Source::Bare),
        (None, None) => None,
    }
}

/// Raw strings with every backslash doubled (`\\frac{1}{2}`): undo the doubling when no single
/// backslash command occurs.
fn undouble(s: &str) -> String {
    let b = s.as_bytes();
    let (mut doubled, mut single) = (false, false);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if i + 2 < b.len() + 1 && i + 1 < b.len() && b[i + 1] == b'\\' {
                if i + 2 < b.len() && b[i + 2].is_ascii_alphabetic() {
                    doubled = true;
                }
                i += 2;
                continue;
            }
            if i + 1 < b.len() && b[i + 1].is_ascii_alphabetic() {
                single = true;
            }
        }
        i += 1;
    }
    if doubled && !single {
        s.replace("\\\\", "\\")
    } else {
        s.to_string()
    }
}

/// Index of the matching `}` for the `{` at `open` (escaped braces skipped), or None.
pub(crate) fn match_brace(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Why a prediction is malformed, if it is: its last `\boxed{`/`\fbox{` is never closed (a
/// completion cut off inside its answer).
pub fn malformed(text: &str) -> Option<String> {
    let (start, kw) = rfind_box(text, text.len())?;
    let b = text.as_bytes();
    let mut i = start + kw;
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    (b.get(i) == Some(&b'{') && match_brace(b, i).is_none()).then(|| {
        format!(
            "the last {} at byte {start} is never closed",
            &text[start..start + kw]
        )
    })
}

/// The box that starts at `start` (index of the backslash of `\boxed`/`\fbox`):
/// (content, end index exclusive). `None` when the command is not a box: a longer command
/// (`\fboxsep`), a starred form, or a mention without an argument (`in \boxed.`).
fn box_at(text: &str, start: usize, kw_len: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    let mut i = start + kw_len;
    if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'*') {
        return None; // \boxedfoo, \fboxsep: another command; \boxed*: not a box
    }
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    if i >= b.len() {
        return None;
    }
    if b[i] == b'{' {
        match match_brace(b, i) {
            Some(j) => Some((&text[i + 1..j], j + 1)),
            // Unbalanced: the rest of the text (capped by the caller).
            None => Some((&text[i + 1..], b.len())),
        }
    } else {
        // `\boxed 5` (or `\boxed5`): a token up to whitespace or `$`, which starts like an
        // answer; `\boxed.` or `\boxed)` is a mention of the command, not a box.
        let spaced = i > start + kw_len;
        let starts = b[i].is_ascii_digit()
            || (spaced && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'\\'));
        if !starts {
            return None;
        }
        let s = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'$' {
            i += 1;
        }
        let t = &text[s..i];
        let t = t.strip_suffix('.').unwrap_or(t);
        (!t.is_empty()).then_some((t, i))
    }
}

/// Last `\boxed`/`\fbox` box before `end`: (start, keyword length). Occurrences that are no
/// box (see [`box_at`]) are passed over.
fn rfind_box(text: &str, end: usize) -> Option<(usize, usize)> {
    let mut cur = end;
    loop {
        let hay = &text[..cur];
        let a = hay.rfind("\\boxed").map(|p| (p, 6));
        let b = hay.rfind("\\fbox").map(|p| (p, 5));
        let (p, kw) = match (a, b) {
            (Some(x), Some(y)) => {
                if x.0 > y.0 {
                    x
                } else {
                    y
                }
            }
            (Some(x), None) => x,
            (None, Some(y)) => y,
            (None, None) => return None,
        };
        if box_at(text, p, kw).is_some() {
            return Some((p, kw));
        }
        cur = p;
    }
}

/// The last box of a worked solution (a dataset's gold), exactly: `Ok(None)` when there is
/// none; an error for a last box that cannot be read (never closed, or starred: `\boxed*{..}`).
pub fn solution_box(text: &str) -> Result<Option<String>, String> {
    let starred = ["\\boxed*", "\\fbox*"]
        .iter()
        .filter_map(|k| text.rfind(k))
        .max();
    let last = rfind_box(text, text.len());
    if let Some(s) = starred {
        if last.is_none_or(|(p, _)| s > p) {
            return Err(format!("its last box, at byte {s}, is starred (\\boxed*)"));
        }
    }
    let Some((start, kw)) = last else {
        return Ok(None);
    };
    if let Some(reason) = malformed(text) {
        return Err(reason);
    }
    let Some((content, _)) = box_at(text, start, kw) else {
        return Ok(None);
    };
    let content = content.trim();
    if content.len() > MAX_ANSWER {
        return Err(format!("its last box holds {} bytes", content.len()));
    }
    Ok((!content.is_empty()).then(|| content.to_string()))
}

fn is_word_at(b: &[u8], i: usize, w: &[u8]) -> bool {
    b.len() >= i + w.len()
        && b[i..i + w.len()].eq_ignore_ascii_case(w)
        && (i == 0 || !b[i - 1].is_ascii_alphabetic())
        && (i + w.len() == b.len() || !b[i + w.len()].is_ascii_alphabetic())
}

/// Text between two boxes that only separates answers: `, `, ` and `, `\quad \text{or} \quad`.
fn separator_gap(gap: &str) -> bool {
    if gap.len() > 60 {
        return false;
    }
    let b = gap.as_bytes();
    let mut clean = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
            i = j.max(i + 1);
            continue;
        }
        if !matches!(
            b[i],
            b'$' | b'{' | b'}' | b'(' | b')' | b'[' | b']' | b'.' | b',' | b';' | b'~'
        ) && !b[i].is_ascii_whitespace()
        {
            clean.push(b[i] as char);
        }
        i += 1;
    }
    if !clean.chars().any(|c| c.is_ascii_alphanumeric()) {
        return true;
    }
    (0..b.len()).any(|i| is_word_at(b, i, b"and") || is_word_at(b, i, b"or"))
}

/// The last box, joined with the boxes before it while only separators lie between them.
fn last_boxed(text: &str) -> Option<String> {
    let (start, kw) = rfind_box(text, text.len())?;
    let (content, _) = box_at(text, start, kw)?;
    let mut parts = vec![content];
    let mut cur = start;
    while parts.len() < MAX_JOINED_BOXES {
        let Some((s, kw)) = rfind_box(text, cur) else {
            break;
        };
        let Some((c, end)) = box_at(text, s, kw) else {
            break;
        };
        if end > cur || !separator_gap(&text[end..cur]) {
            break;
        }
        parts.push(c);
        cur = s;
    }
    parts.reverse();
    let joined = parts.join(", ");
    (joined.len() <= MAX_ANSWER).then_some(joined)
}

/// GSM8K: the last `#### X` line.
fn hashes(text: &str) -> Option<&str> {
    let p = text.rfind("####")?;
    let rest = &text[p + 4..];
    let line = rest.split('\n').next().unwrap_or("");
    let line = line.trim().trim_start_matches('#').trim();
    let line = line.strip_suffix('.').unwrap_or(line);
    (!line.is_empty()).then_some(line)
}

/// Math spans `$$..$$`, `\[..\]`, `\(..\)`, `$..$` (single line): (start, content start,
/// content end, end), in text order. At most `cap` spans are kept (the last ones).
fn math_spans(text: &str, cap: usize) -> Vec<(usize, usize, usize, usize)> {
    let b = text.as_bytes();
    let mut out: Vec<(usize, usize, usize, usize)> = Vec::new();
    let find = |from: usize, pat: &[u8], single_line: bool| -> Option<usize> {
        let mut j = from;
        while j + pat.len() <= b.len() {
            if single_line && b[j] == b'\n' {
                return None;
            }
            if b[j] == b'\\' && pat[0] != b'\\' {
                j += 2;
                continue;
            }
            if &b[j..j + pat.len()] == pat && !(pat[0] == b'$' && j > 0 && b[j - 1] == b'\\') {
                return Some(j);
            }
            j += 1;
        }
        None
    };
    let mut i = 0;
    while i < b.len() {
        let (open, close, single): (usize, &[u8], bool) = if b[i] == b'$' {
            if i + 1 < b.len() && b[i + 1] == b'$' {
                (2, b"$$", false)
            } else {
                (1, b"$", true)
            }
        } else if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'[' => (2, b"\\]", false),
                b'(' => (2, b"\\)", false),
                b'$' => {
                    i += 2;
                    continue;
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
        } else {
            i += 1;
            continue;
        };
        match find(i + open, close, single) {
            Some(j) => {
                out.push((i, i + open, j, j + close.len()));
                if out.len() > cap {
                    out.remove(0);
                }
                i = j + close.len();
            }
            None => i += open,
        }
    }
    out
}

const ALLOWED_WORDS: &[&str] = &[
    "and",
    "or",
    "percent",
    "percentage",
    "pct",
    "sin",
    "cos",
    "tan",
    "sec",
    "csc",
    "cot",
    "log",
    "exp",
    "sqrt",
];

/// Words of >= 3 ASCII letters that are not LaTeX commands or allowed words.
fn prose_words(s: &str) -> usize {
    let b = s.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() {
            let st = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let cmd = st > 0 && b[st - 1] == b'\\'
                || s[..st].ends_with("\\begin{")
                || s[..st].ends_with("\\end{");
            let w = &s[st..i];
            if !cmd && w.len() >= 3 && !ALLOWED_WORDS.iter().any(|a| a.eq_ignore_ascii_case(w)) {
                n += 1;
            }
        } else {
            i += 1;
        }
    }
    n
}

/// Sentence words that never occur in a bare answer.
fn has_stopword(s: &str) -> bool {
    const STOP: &[&[u8]] = &[
        b"is",
        b"it",
        b"the",
        b"so",
        b"we",
        b"to",
        b"of",
        b"be",
        b"at",
        b"by",
        b"if",
        b"this",
        b"that",
        b"which",
        b"thus",
        b"hence",
        b"therefore",
        b"answer",
        b"are",
        b"was",
    ];
    let b = s.as_bytes();
    (0..b.len()).any(|i| (i == 0 || b[i - 1] != b'\\') && STOP.iter().any(|w| is_word_at(b, i, w)))
}

/// The whole text when it is itself an answer (no prose): (answer, plain).
fn bare(text: &str, cap: usize) -> Option<(String, bool)> {
    let t = text.trim();
    if t.is_empty() || t.len() > cap || t.contains("\n\n") {
        return None;
    }
    let spans = math_spans(t, 64);
    if spans.is_empty() {
        if prose_words(t) > 1
            || has_stopword(t)
            || t.contains(": ")
            || t.contains(". ")
            || t.contains('?')
        {
            return None;
        }
        return Some((t.to_string(), !t.contains('\\')));
    }
    let mut outside = String::new();
    let mut whole = String::new();
    let mut last = 0;
    for &(s, cs, ce, e) in &spans {
        outside.push_str(&t[last..s]);
        whole.push_str(&t[last..s]);
        whole.push(' ');
        whole.push_str(&t[cs..ce]);
        whole.push(' ');
        last = e;
    }
    outside.push_str(&t[last..]);
    whole.push_str(&t[last..]);
    let ok = outside
        .chars()
        .all(|c| c.is_whitespace() || ",.;%".contains(c) || c.is_ascii_alphabetic());
    if !ok || prose_words(&outside) > 0 {
        return None;
    }
    Some((whole, false))
}

/// Case-insensitive ASCII rfind.
fn rfind_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// "final answer ... is X" (X up to "I hope", a sentence end, or a line end): (answer, plain).
fn final_answer(text: &str, strict: bool) -> Option<(String, bool)> {
    let b = text.as_bytes();
    let key: &[u8] = if strict {
        b"final answer is"
    } else {
        b"final answer"
    };
    let p = rfind_ci(b, key)?;
    let mut seg = &text[p + key.len()..];
    if strict {
        let h = rfind_ci(&seg.as_bytes()[..seg.len().min(300)], b"i hope")?;
        seg = &seg[..h];
    }
    if seg.len() > 400 {
        let mut cut = 400;
        while !seg.is_char_boundary(cut) {
            cut -= 1;
        }
        seg = &seg[..cut];
    }
    let sb = seg.as_bytes();
    let mut end = seg.len();
    if let Some(h) = rfind_ci(sb, b"i hope") {
        end = end.min(h);
    }
    for pat in ["\n", ". ", "<|"] {
        if let Some(k) = seg.find(pat) {
            end = end.min(k);
        }
    }
    let mut seg = seg[..end].trim();
    seg = seg.trim_start_matches(':').trim();
    // After the last " is " (the answer follows the verb), else after "The final answer:".
    let sb = seg.as_bytes();
    let mut after_is = None;
    for i in 0..sb.len() {
        if is_word_at(sb, i, b"is") {
            after_is = Some(i + 2);
        }
    }
    let cand = match after_is {
        Some(i) => seg[i..].trim().trim_start_matches(':').trim(),
        None => seg,
    };
    let cand = cand.trim_end_matches('.').trim();
    let cand = cand.trim_matches('"');
    let cand = cand.strip_prefix("\\\"").unwrap_or(cand);
    let cand = cand.strip_suffix("\\").unwrap_or(cand).trim();
    if cand.is_empty() {
        return None;
    }
    if let Some((a, plain)) = bare(cand, MAX_BARE) {
        return Some((a, plain));
    }
    if let Some(a) = last_latex(cand) {
        return Some((a, false));
    }
    last_number(cand).map(|n| (n.to_string(), true))
}

/// The last math span's content (with a following `%` kept).
fn last_latex(text: &str) -> Option<String> {
    last_latex_at(text).map(|(s, _, _)| s)
}

/// The last math span's content, its start and its end.
fn last_latex_at(text: &str) -> Option<(String, usize, usize)> {
    let spans = math_spans(text, 1);
    let &(st, cs, ce, e) = spans.last()?;
    let mut s = text[cs..ce].to_string();
    let after = text[e..].trim_start();
    if after.starts_with('%')
        || after.starts_with("\\%")
        || after.len() >= 7 && after.as_bytes()[..7].eq_ignore_ascii_case(b"percent")
    {
        s.push('%');
    }
    (!s.trim().is_empty()).then_some((s, st, e))
}

/// The last number of the text (`-1,000.5`, `.4`, `2/3`, `12%`), anchored like Math-Verify:
/// preceded by the start, whitespace, `=`, `(`, `:` or a currency sign, so `XDY2K` gives none.
fn last_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut end = b.len();
    loop {
        // Last digit before `end`.
        let last_digit = b[..end].iter().rposition(|c| c.is_ascii_digit())?;
        let mut s = last_digit;
        while s > 0 && (b[s - 1].is_ascii_digit() || b[s - 1] == b'.' || b[s - 1] == b',') {
            s -= 1;
        }
        // Fraction a/b: extend over `digits/`.
        if s >= 2 && b[s - 1] == b'/' && b[s - 2].is_ascii_digit() {
            s -= 1;
            while s > 0 && b[s - 1].is_ascii_digit() {
                s -= 1;
            }
        }
        while s < last_digit && (b[s] == b',' || (b[s] == b'.' && !b[s + 1].is_ascii_digit())) {
            s += 1;
        }
        if s > 0 && b[s - 1] == b'-' {
            s -= 1;
        }
        let anchored = s == 0 || {
            let p = b[s - 1];
            p.is_ascii_whitespace()
                || matches!(p, b'=' | b'(' | b':' | b'$' | b'[' | b'{' | b'*')
                || !p.is_ascii()
        };
        let mut e = last_digit + 1;
        while e < b.len() && (b[e] == b' ' && e + 1 < b.len() && b[e + 1] == b'%') {
            e += 1;
        }
        if e < b.len() && b[e] == b'%' {
            e += 1;
        }
        if anchored {
            return Some(&text[s..e]);
        }
        if s == 0 {
            return None;
        }
        end = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Option<String> {
        let o = Options {
            whole: false,
            ..Options::gold()
        };
        extract(s, &o).map(|a| a.text)
    }

    #[test]
    fn boxes() {
        assert_eq!(ex("so \\boxed{\\frac{1}{2}}."), Some("\\frac{1}{2}".into()));
        assert_eq!(ex("\\boxed{1} then \\boxed{2}"), Some("2".into()));
        assert_eq!(ex("\\boxed{1} and \\boxed{2}"), Some("1, 2".into()));
        assert_eq!(ex("\\boxed 5 is it"), Some("5".into()));
        assert_eq!(ex("\\fbox{7}"), Some("7".into()));
        assert_eq!(ex("\\boxed{\\{1\\}}"), Some("\\{1\\}".into()));
        assert_eq!(ex("\\boxed{a{b}"), Some("a{b}".into()));
        assert_eq!(ex("\\\\boxed{\\\\frac{1}{2}}"), Some("\\frac{1}{2}".into()));
    }

    #[test]
    fn hashes_and_bare() {
        assert_eq!(ex("blah\n#### 42"), Some("42".into()));
        assert_eq!(ex("  $\\frac12$ "), Some("\\frac12".into()));
        assert_eq!(ex("28 percent"), Some("28 percent".into()));
        let o = Options::from_config(&RewardConfig::default());
        assert_eq!(extract("The answer is 5 apples today", &o), None);
        assert_eq!(extract("", &o), None);
    }

    #[test]
    fn fallbacks() {
        assert_eq!(
            ex("Hence. Final Answer: The final answer is $7$. I hope it is correct."),
            Some("7".into())
        );
        assert_eq!(ex("we get 3 and then x is 12 apples."), Some("12".into()));
        assert_eq!(ex("Thus $x = 3$ is the solution."), Some("x = 3".into()));
        assert_eq!(ex("AZYUK2A blah blah"), None);
        assert_eq!(ex("it is 1,000.99€ now"), Some("1,000.99".into()));
        assert_eq!(ex("P = 2/3. Yes"), Some("2/3".into()));
    }
}
