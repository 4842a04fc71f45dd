//! Equivalence of two parsed answers: structure first (lists, sets, tuples, intervals,
//! relations, matrices), then values (exact, numeric, or at several points for variables).

use std::cell::Cell;

use num_rational::BigRational;

use super::eval::{close, eval, Val};
use super::extract::Answer;
use super::normalize::normalize;
use super::parse::{parse, text_key, Const, Expr, RelOp};

/// Points at which expressions with variables are compared.
const TRIALS: usize = 6;
/// Numerators/denominators of the point values (positive, distinct ratios).
const PT_NUM: [i64; 16] = [3, 5, 11, 2, 13, 7, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53];
const PT_DEN: [i64; 5] = [2, 3, 1, 5, 7];
/// Scalar comparisons allowed per verification (bounds set matching).
const BUDGET: u32 = 4000;
/// Most elements expanded from `±` in one answer.
const MAX_PM: usize = 16;

/// Are two extracted answers equivalent?
pub fn answers_equivalent(gold: &Answer, pred: &Answer, tol: f64) -> bool {
    let gn = normalize(&gold.text, gold.plain);
    let pn = normalize(&pred.text, pred.plain);
    strings_equivalent(&gn, &pn, tol)
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Are two normalised answers equivalent?
pub fn strings_equivalent(gn: &str, pn: &str, tol: f64) -> bool {
    let (gs, ps) = (squash(gn), squash(pn));
    if gs.is_empty() || ps.is_empty() {
        return false;
    }
    if gs == ps {
        return true;
    }
    // Multiple choice: the letters decide, whatever text follows them.
    if let (Some(g), Some(p)) = (choice(gn), choice(pn)) {
        return g == p;
    }
    match (parse(gn), parse(pn)) {
        (Ok(g), Ok(p)) => {
            if matches!(g, Expr::Text(_)) || matches!(p, Expr::Text(_)) {
                let (a, b) = (text_key(gn), text_key(pn));
                return !a.is_empty() && a == b;
            }
            let c = Cmp {
                tol,
                budget: Cell::new(BUDGET),
            };
            c.eq(&g, &p, 0)
        }
        _ => false,
    }
}

/// A multiple-choice answer: a capital letter A–J alone, in parentheses, or followed by `)`,
/// with any text after it: `C`, `(C)`, `C)`, `(C) 12`. Not `(A, B)` or `x`.
fn choice(s: &str) -> Option<char> {
    let t = s.trim();
    let (letter, rest) = match t.strip_prefix('(') {
        Some(r) => {
            let mut cs = r.trim_start().chars();
            let c = cs.next()?;
            (c, Some(cs.as_str().trim_start().strip_prefix(')')?))
        }
        None => {
            let mut cs = t.chars();
            let c = cs.next()?;
            let r = cs.as_str().trim_start();
            (
                c,
                if r.is_empty() {
                    Some(r)
                } else {
                    r.strip_prefix(')')
                },
            )
        }
    };
    rest?;
    ('A'..='J').contains(&letter).then_some(letter)
}

/// The base of a number written with one (`101_2` parses to `base2(5)`).
fn base_of(name: &str) -> Option<u32> {
    name.strip_prefix("base")?.parse().ok()
}

/// The integer whose decimal digits `q` shows, read in base `b` (`101` in base 2 is 5); `None`
/// when a digit is not one of base `b`.
fn digits_in_base(q: &BigRational, b: u32) -> Option<BigRational> {
    if !q.is_integer() || q < &BigRational::from_integer(0.into()) {
        return None;
    }
    let mut v = num_bigint::BigInt::from(0);
    for ch in q.to_integer().to_string().chars() {
        let d = ch.to_digit(10)?;
        if d >= b {
            return None;
        }
        v = v * b + d;
    }
    Some(BigRational::from_integer(v))
}

struct Cmp {
    tol: f64,
    budget: Cell<u32>,
}

/// A left-hand side that names the answer (`x`, `f(x)`, `|AB|`, `V_1:V_2`, `(p, q)`): no
/// numbers, no sums.
fn name_like(e: &Expr) -> bool {
    match e {
        Expr::Sym(_) => true,
        Expr::Const(Const::E) => true,
        Expr::Mul(v) | Expr::Tuple(v) => v.iter().all(name_like),
        Expr::Div(a, b) => name_like(a) && name_like(b),
        Expr::Func(n, a) if n == "abs" => a.iter().all(name_like),
        _ => false,
    }
}

fn is_ineq(op: RelOp) -> bool {
    matches!(op, RelOp::Lt | RelOp::Le | RelOp::Gt | RelOp::Ge)
}

fn neg_inf() -> Expr {
    Expr::Neg(Box::new(Expr::Const(Const::Inf)))
}

/// Simplify the top of a relation: `≈` tails, equality chains, `x ∈ S`, `a < x < b`.
fn reduce(e: &Expr) -> Expr {
    let Expr::Rel(items, ops) = e else {
        return e.clone();
    };
    let (mut items, mut ops) = (items.clone(), ops.clone());
    // `x = 1/3 ≈ 0.33`: drop everything from the first ≈ (unless it is `x ≈ 11`).
    if let Some(k) = ops.iter().position(|o| *o == RelOp::Approx) {
        if k >= 1 {
            items.truncate(k + 1);
            ops.truncate(k);
        } else {
            ops[0] = RelOp::Eq;
            items.truncate(2);
            ops.truncate(1);
        }
    }
    if ops.len() >= 2 && ops.iter().all(|o| *o == RelOp::Eq) {
        return items.pop().unwrap_or(Expr::Text(String::new()));
    }
    if ops.len() == 1 && ops[0] == RelOp::In && name_like(&items[0]) {
        return items.pop().unwrap_or(Expr::Text(String::new()));
    }
    if ops.len() == 2 && ops.iter().all(|o| is_ineq(*o)) && name_like(&items[1]) {
        let up = ops.iter().all(|o| matches!(o, RelOp::Lt | RelOp::Le));
        let down = ops.iter().all(|o| matches!(o, RelOp::Gt | RelOp::Ge));
        if up || down {
            let (lo, hi, lc, hc) = if up {
                (
                    &items[0],
                    &items[2],
                    ops[0] == RelOp::Le,
                    ops[1] == RelOp::Le,
                )
            } else {
                (
                    &items[2],
                    &items[0],
                    ops[1] == RelOp::Ge,
                    ops[0] == RelOp::Ge,
                )
            };
            return Expr::Interval(Box::new(lo.clone()), Box::new(hi.clone()), lc, hc);
        }
    }
    if ops.len() == 1 && ops[0] == RelOp::Eq && items.len() == 2 {
        // `x = 1 ± 2` stays a relation; element expansion handles it.
    }
    Expr::Rel(items, ops)
}

/// `x < 5` → (−∞, 5); `5 ≤ x` → [5, ∞) (one side name-like).
fn ineq_interval(items: &[Expr], ops: &[RelOp]) -> Option<Expr> {
    if ops.len() != 1 || items.len() != 2 || !is_ineq(ops[0]) {
        return None;
    }
    let (l, r) = (&items[0], &items[1]);
    let inf = || Expr::Const(Const::Inf);
    let (name_left, other) = if name_like(l) {
        (true, r)
    } else if name_like(r) {
        (false, l)
    } else {
        return None;
    };
    // Normalise to `name op other`.
    let op = if name_left {
        ops[0]
    } else {
        match ops[0] {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            _ => RelOp::Le,
        }
    };
    let o = Box::new(other.clone());
    Some(match op {
        RelOp::Lt => Expr::Interval(Box::new(neg_inf()), o, false, false),
        RelOp::Le => Expr::Interval(Box::new(neg_inf()), o, false, true),
        RelOp::Gt => Expr::Interval(o, Box::new(inf()), false, false),
        _ => Expr::Interval(o, Box::new(inf()), true, false),
    })
}

/// The elements of a list-like answer, with `±` expanded; None for a single non-list value.
fn elements(e: &Expr) -> Option<Vec<Expr>> {
    let items: Vec<Expr> = match e {
        Expr::List(v) | Expr::Set(v) => v.clone(),
        Expr::Pm(..) => vec![e.clone()],
        Expr::Rel(items, ops)
            if ops.len() == 1 && ops[0] == RelOp::Eq && matches!(items[1], Expr::Pm(..)) =>
        {
            vec![items[1].clone()]
        }
        _ => return None,
    };
    let items = group_periodic(items);
    let mut out = Vec::new();
    for it in items {
        let it = match &it {
            Expr::Rel(items, ops)
                if ops.len() == 1
                    && ops[0] == RelOp::Eq
                    && name_like(&items[0])
                    && matches!(items[1], Expr::Pm(..)) =>
            {
                items[1].clone()
            }
            _ => it,
        };
        for x in expand_pm(&it) {
            out.push(x);
            if out.len() > 4 * MAX_PM + 256 {
                return Some(out);
            }
        }
    }
    Some(out)
}

/// `p=5, q=2; p=7, q=2` → `(5, 2), (7, 2)`: equations whose names repeat with a period k ≥ 2
/// (at least twice) become k-tuples of their values.
fn group_periodic(items: Vec<Expr>) -> Vec<Expr> {
    let mut names = Vec::with_capacity(items.len());
    let mut values = Vec::with_capacity(items.len());
    for it in &items {
        match it {
            Expr::Rel(v, ops) if ops.len() == 1 && ops[0] == RelOp::Eq && name_like(&v[0]) => {
                names.push(&v[0]);
                values.push(&v[1]);
            }
            _ => return items,
        }
    }
    let n = names.len();
    for k in 2..=n / 2 {
        if n % k != 0 {
            continue;
        }
        let distinct = (0..k).all(|i| (0..i).all(|j| names[i] != names[j]));
        if distinct && (0..n).all(|i| names[i] == names[i % k]) {
            return values
                .chunks(k)
                .map(|c| Expr::Tuple(c.iter().map(|x| (*x).clone()).collect()))
                .collect();
        }
    }
    items
}

/// The value of a sum / product / negation of matrices (and scalars), if that is what `e` is.
fn matrix_value(e: &Expr, depth: usize) -> Option<Vec<Vec<Expr>>> {
    if depth > 8 {
        return None;
    }
    match e {
        Expr::Matrix(r) => Some(r.clone()),
        Expr::Neg(a) => Some(
            matrix_value(a, depth + 1)?
                .into_iter()
                .map(|r| r.into_iter().map(|x| Expr::Neg(Box::new(x))).collect())
                .collect(),
        ),
        Expr::Add(v) => {
            let mut acc: Option<Vec<Vec<Expr>>> = None;
            for t in v {
                let m = matrix_value(t, depth + 1)?;
                acc = Some(match acc {
                    None => m,
                    Some(a) => {
                        if a.len() != m.len() || a.iter().zip(&m).any(|(x, y)| x.len() != y.len()) {
                            return None;
                        }
                        a.into_iter()
                            .zip(m)
                            .map(|(x, y)| {
                                x.into_iter()
                                    .zip(y)
                                    .map(|(p, q)| Expr::Add(vec![p, q]))
                                    .collect()
                            })
                            .collect()
                    }
                });
            }
            acc
        }
        Expr::Mul(v) if v.iter().any(|x| matches!(x, Expr::Matrix(_))) => {
            let mut scalars = Vec::new();
            let mut acc: Option<Vec<Vec<Expr>>> = None;
            for t in v {
                if is_scalar(t) {
                    scalars.push(t.clone());
                    continue;
                }
                let m = matrix_value(t, depth + 1)?;
                acc = Some(match acc {
                    None => m,
                    Some(a) => {
                        let inner = m.len();
                        if a.iter().any(|r| r.len() != inner)
                            || inner == 0
                            || a.len() * m[0].len() > 256
                        {
                            return None;
                        }
                        (0..a.len())
                            .map(|i| {
                                (0..m[0].len())
                                    .map(|j| {
                                        Expr::Add(
                                            (0..inner)
                                                .map(|k| {
                                                    Expr::Mul(vec![
                                                        a[i][k].clone(),
                                                        m[k][j].clone(),
                                                    ])
                                                })
                                                .collect(),
                                        )
                                    })
                                    .collect()
                            })
                            .collect()
                    }
                });
            }
            let m = acc?;
            if scalars.is_empty() {
                return Some(m);
            }
            Some(
                m.into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|x| {
                                let mut f = scalars.clone();
                                f.push(x);
                                Expr::Mul(f)
                            })
                            .collect()
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// `a ± b` → [a + b, a − b] (nested ± expanded, at most [`MAX_PM`] results).
fn expand_pm(e: &Expr) -> Vec<Expr> {
    fn has_pm(e: &Expr) -> bool {
        match e {
            Expr::Pm(..) => true,
            Expr::Neg(a) | Expr::Fact(a) => has_pm(a),
            Expr::Add(v) | Expr::Mul(v) | Expr::Func(_, v) => v.iter().any(has_pm),
            Expr::Div(a, b) | Expr::Pow(a, b) => has_pm(a) || has_pm(b),
            _ => false,
        }
    }
    if !has_pm(e) {
        return vec![e.clone()];
    }
    fn go(e: &Expr, out: &mut Vec<Expr>) {
        // Replace the first ± by + and −, recurse.
        fn first(e: &Expr, plus: bool) -> Option<Expr> {
            Some(match e {
                Expr::Pm(a, b) => {
                    let b = if plus {
                        (**b).clone()
                    } else {
                        Expr::Neg(b.clone())
                    };
                    match a {
                        Some(a) => Expr::Add(vec![(**a).clone(), b]),
                        None => b,
                    }
                }
                Expr::Neg(a) => Expr::Neg(Box::new(first(a, plus)?)),
                Expr::Fact(a) => Expr::Fact(Box::new(first(a, plus)?)),
                Expr::Add(v) | Expr::Mul(v) | Expr::Func(_, v) => {
                    let k = v.iter().position(has_pm)?;
                    let mut w = v.clone();
                    w[k] = first(&v[k], plus)?;
                    match e {
                        Expr::Add(_) => Expr::Add(w),
                        Expr::Mul(_) => Expr::Mul(w),
                        Expr::Func(n, _) => Expr::Func(n.clone(), w),
                        _ => return None,
                    }
                }
                Expr::Div(a, b) | Expr::Pow(a, b) => {
                    let (a2, b2) = if has_pm(a) {
                        (first(a, plus)?, (**b).clone())
                    } else {
                        ((**a).clone(), first(b, plus)?)
                    };
                    match e {
                        Expr::Div(..) => Expr::Div(Box::new(a2), Box::new(b2)),
                        _ => Expr::Pow(Box::new(a2), Box::new(b2)),
                    }
                }
                _ => return None,
            })
        }
        if out.len() >= MAX_PM {
            return;
        }
        if !has_pm(e) {
            out.push(e.clone());
            return;
        }
        for plus in [true, false] {
            if let Some(x) = first(e, plus) {
                go(&x, out);
            }
        }
    }
    let mut out = Vec::new();
    go(e, &mut out);
    out
}

fn free_syms(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Sym(s) => {
            if !out.contains(s) && out.len() < 32 {
                out.push(s.clone());
            }
        }
        Expr::Neg(a) | Expr::Fact(a) => free_syms(a, out),
        Expr::Div(a, b) | Expr::Pow(a, b) | Expr::Interval(a, b, _, _) => {
            free_syms(a, out);
            free_syms(b, out);
        }
        Expr::Pm(a, b) => {
            if let Some(a) = a {
                free_syms(a, out);
            }
            free_syms(b, out);
        }
        Expr::Add(v)
        | Expr::Mul(v)
        | Expr::Func(_, v)
        | Expr::Tuple(v)
        | Expr::Set(v)
        | Expr::List(v)
        | Expr::Union(v)
        | Expr::Rel(v, _) => v.iter().for_each(|x| free_syms(x, out)),
        Expr::Matrix(rows) => rows.iter().flatten().for_each(|x| free_syms(x, out)),
        Expr::Num(_) | Expr::Const(_) | Expr::Text(_) => {}
    }
}

fn point(t: usize, i: usize) -> BigRational {
    let n = PT_NUM[(t * 3 + i * 5) % PT_NUM.len()];
    let d = PT_DEN[(t + 2 * i) % PT_DEN.len()];
    BigRational::new(n.into(), d.into())
}

fn is_scalar(e: &Expr) -> bool {
    match e {
        Expr::Num(_) | Expr::Const(_) | Expr::Sym(_) => true,
        Expr::Neg(a) | Expr::Fact(a) => is_scalar(a),
        Expr::Div(a, b) | Expr::Pow(a, b) => is_scalar(a) && is_scalar(b),
        Expr::Add(v) | Expr::Mul(v) | Expr::Func(_, v) => v.iter().all(is_scalar),
        _ => false,
    }
}

impl Cmp {
    fn spend(&self) -> bool {
        let b = self.budget.get();
        if b == 0 {
            return false;
        }
        self.budget.set(b - 1);
        true
    }

    /// Values of `f` at the comparison points (None where undefined); empty if `f` has no
    /// variables and is evaluated once.
    fn values(&self, es: &[&Expr]) -> Vec<Vec<Option<Val>>> {
        let mut syms = Vec::new();
        for e in es {
            free_syms(e, &mut syms);
        }
        let trials = if syms.is_empty() { 1 } else { TRIALS };
        (0..trials)
            .map(|t| {
                let env: Vec<(String, BigRational)> = syms
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), point(t, i)))
                    .collect();
                es.iter().map(|e| eval(e, &env)).collect()
            })
            .collect()
    }

    fn scalar_eq(&self, g: &Expr, p: &Expr) -> bool {
        if !self.spend() {
            return false;
        }
        let rows = self.values(&[g, p]);
        let mut ok = 0;
        for r in &rows {
            match (&r[0], &r[1]) {
                (Some(a), Some(b)) => {
                    if !close(a, b, self.tol) {
                        return false;
                    }
                    ok += 1;
                }
                (None, None) => {}
                _ => return false,
            }
        }
        if ok == 0 {
            return g == p;
        }
        ok >= rows.len().min(2)
    }

    /// f = c·g for one constant c ≠ 0 (c > 0 when `positive`) at every point.
    fn proportional(&self, f: &Expr, g: &Expr, positive: bool) -> bool {
        if !self.spend() || !is_scalar(f) || !is_scalar(g) {
            return false;
        }
        let rows = self.values(&[f, g]);
        let mut ratio: Option<Val> = None;
        let mut ok = 0;
        for r in &rows {
            let (Some(a), Some(b)) = (&r[0], &r[1]) else {
                continue;
            };
            let (fa, fb) = (a.to_f64(), b.to_f64());
            if fa.abs() < 1e-300 || fb.abs() < 1e-300 {
                if close(a, &Val::F(0.0), self.tol) != close(b, &Val::F(0.0), self.tol) {
                    return false;
                }
                continue;
            }
            let q = match (a, b) {
                (Val::Q(x), Val::Q(y)) => Val::Q(x / y),
                _ => Val::F(fa / fb),
            };
            match &ratio {
                None => {
                    if positive && q.to_f64() <= 0.0 {
                        return false;
                    }
                    ratio = Some(q);
                }
                Some(r0) => {
                    if !close(r0, &q, self.tol) {
                        return false;
                    }
                }
            }
            ok += 1;
        }
        ok >= 2 || (ok == 1 && rows.len() == 1)
    }

    fn all_pairs(&self, g: &[Expr], p: &[Expr], d: usize) -> bool {
        g.len() == p.len() && g.iter().zip(p).all(|(a, b)| self.eq(a, b, d + 1))
    }

    fn set_eq(&self, g: &[Expr], p: &[Expr], d: usize) -> bool {
        if g.is_empty() || p.is_empty() {
            return g.is_empty() && p.is_empty();
        }
        g.iter().all(|a| p.iter().any(|b| self.eq(a, b, d + 1)))
            && p.iter().all(|b| g.iter().any(|a| self.eq(a, b, d + 1)))
    }

    fn rel_eq(&self, gi: &[Expr], go: &[RelOp], pi: &[Expr], po: &[RelOp], d: usize) -> bool {
        if go.len() == 1 && po.len() == 1 {
            let (g0, g1, p0, p1) = (&gi[0], &gi[1], &pi[0], &pi[1]);
            match (go[0], po[0]) {
                (RelOp::Eq, RelOp::Eq) | (RelOp::Ne, RelOp::Ne) => {
                    if (self.eq(g0, p0, d + 1) && self.eq(g1, p1, d + 1))
                        || (self.eq(g0, p1, d + 1) && self.eq(g1, p0, d + 1))
                    {
                        return true;
                    }
                    let fg = Expr::Add(vec![g0.clone(), Expr::Neg(Box::new(g1.clone()))]);
                    let fp = Expr::Add(vec![p0.clone(), Expr::Neg(Box::new(p1.clone()))]);
                    return self.proportional(&fg, &fp, false);
                }
                (a, b) if is_ineq(a) && is_ineq(b) => {
                    // `l < r` ⇔ r − l > 0.
                    let canon = |l: &Expr, r: &Expr, op: RelOp| -> (Expr, bool) {
                        let (lo, hi) = match op {
                            RelOp::Lt | RelOp::Le => (l, r),
                            _ => (r, l),
                        };
                        (
                            Expr::Add(vec![hi.clone(), Expr::Neg(Box::new(lo.clone()))]),
                            matches!(op, RelOp::Lt | RelOp::Gt),
                        )
                    };
                    let (fg, sg) = canon(g0, g1, a);
                    let (fp, sp) = canon(p0, p1, b);
                    return sg == sp && self.proportional(&fg, &fp, true);
                }
                _ => return false,
            }
        }
        go == po && self.all_pairs(gi, pi, d)
    }

    fn eq(&self, g: &Expr, p: &Expr, d: usize) -> bool {
        if d > 32 || self.budget.get() == 0 {
            return false;
        }
        let mut g = reduce(g);
        let mut p = reduce(p);
        for e in [&mut g, &mut p] {
            if matches!(e, Expr::Add(_) | Expr::Mul(_) | Expr::Neg(_)) {
                if let Some(m) = matrix_value(e, 0) {
                    *e = Expr::Matrix(m);
                }
            }
        }
        // A base asked for by the gold (`101_2`): the prediction in that base, with or without
        // its subscript (`101`), not the same value in base ten (`5`). A base given by the
        // prediction alone is a value (`204_5` for 54).
        match (&g, &p) {
            (Expr::Func(gb, gv), Expr::Func(pb, pv))
                if base_of(gb).is_some() && base_of(pb).is_some() =>
            {
                return self.eq(&gv[0], &pv[0], d + 1);
            }
            (Expr::Func(gb, gv), Expr::Num(q)) => {
                if let Some(b) = base_of(gb) {
                    return digits_in_base(q, b).is_some_and(|v| gv[0] == Expr::Num(v));
                }
            }
            (_, Expr::Func(pb, pv)) if base_of(pb).is_some() => {
                return self.eq(&g, &pv[0], d + 1);
            }
            _ => {}
        }
        match (&g, &p) {
            (Expr::Rel(gi, go), Expr::Rel(pi, po)) => return self.rel_eq(gi, go, pi, po, d),
            (Expr::Rel(gi, go), other) => {
                if go.len() == 1 && go[0] == RelOp::Eq && name_like(&gi[0]) {
                    return self.eq(&gi[1], other, d + 1);
                }
                if matches!(other, Expr::Interval(..) | Expr::Union(_) | Expr::Tuple(_)) {
                    if let Some(iv) = ineq_interval(gi, go) {
                        return self.eq(&iv, other, d + 1);
                    }
                }
                return false;
            }
            (other, Expr::Rel(pi, po)) => {
                if po.len() == 1 && po[0] == RelOp::Eq {
                    return self.eq(other, &pi[1], d + 1);
                }
                if matches!(other, Expr::Interval(..) | Expr::Union(_) | Expr::Tuple(_)) {
                    if let Some(iv) = ineq_interval(pi, po) {
                        return self.eq(other, &iv, d + 1);
                    }
                }
                return false;
            }
            _ => {}
        }
        let ge = elements(&g);
        let pe = elements(&p);
        if ge.is_some() || pe.is_some() {
            // A set against a tuple: Math-Verify compares them in order.
            if let (Some(gv), Expr::Tuple(pv)) = (&ge, &p) {
                if gv.len() == pv.len() {
                    return self.all_pairs(gv, pv, d);
                }
            }
            if let (Expr::Tuple(gv), Some(pv)) = (&g, &pe) {
                if gv.len() == pv.len() {
                    return self.all_pairs(gv, pv, d);
                }
            }
            let gv = ge.unwrap_or_else(|| vec![g.clone()]);
            let pv = pe.unwrap_or_else(|| vec![p.clone()]);
            if gv.len() == 1 && pv.len() == 1 && gv[0] == g && pv[0] == p {
                return false;
            }
            return self.set_eq(&gv, &pv, d);
        }
        match (&g, &p) {
            (Expr::Tuple(a), Expr::Tuple(b)) => self.all_pairs(a, b, d),
            (Expr::Tuple(t), Expr::Interval(lo, hi, lc, hc))
            | (Expr::Interval(lo, hi, lc, hc), Expr::Tuple(t)) => {
                t.len() == 2 && !lc && !hc && self.eq(&t[0], lo, d + 1) && self.eq(&t[1], hi, d + 1)
            }
            (Expr::Interval(a0, a1, ac0, ac1), Expr::Interval(b0, b1, bc0, bc1)) => {
                ac0 == bc0 && ac1 == bc1 && self.eq(a0, b0, d + 1) && self.eq(a1, b1, d + 1)
            }
            (Expr::Union(a), Expr::Union(b)) => self.set_eq(a, b, d),
            (Expr::Union(a), other) | (other, Expr::Union(a)) => {
                a.len() == 1 && self.eq(&a[0], other, d + 1)
            }
            (Expr::Matrix(a), Expr::Matrix(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.all_pairs(x, y, d))
            }
            (Expr::Text(a), Expr::Text(b)) => a == b,
            (a, b) if is_scalar(a) && is_scalar(b) => self.scalar_eq(a, b),
            _ => false,
        }
    }
}
