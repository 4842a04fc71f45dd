//! Numeric evaluation of expression trees: exact big rationals where possible (bounded sizes),
//! f64 otherwise.

use num_bigint::BigInt;
use num_integer::Integer;

use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

use super::parse::{Const, Expr};

/// Largest exact rational kept (numerator + denominator bits); larger results become f64.
const MAX_BITS: u64 = 16384;
/// Largest |integer exponent| computed exactly.
const MAX_EXP: i64 = 1000;

/// A value: exact or approximate.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// Exact rational.
    Q(BigRational),
    /// Approximation (may be ±∞, never NaN).
    F(f64),
}

impl Val {
    /// As f64 (large rationals may round to ±∞).
    pub fn to_f64(&self) -> f64 {
        match self {
            Val::Q(q) => q.to_f64().unwrap_or(f64::NAN),
            Val::F(f) => *f,
        }
    }

    fn is_zero(&self) -> bool {
        match self {
            Val::Q(q) => q.is_zero(),
            Val::F(f) => *f == 0.0,
        }
    }
}

fn bits(q: &BigRational) -> u64 {
    q.numer().bits() + q.denom().bits()
}

fn q(v: BigRational) -> Option<Val> {
    if bits(&v) > MAX_BITS {
        let x = v.to_f64()?;
        // Too large for f64 as well: undefined rather than a false ±∞.
        x.is_finite().then_some(Val::F(x))
    } else {
        Some(Val::Q(v))
    }
}

fn f(x: f64) -> Option<Val> {
    (!x.is_nan()).then_some(Val::F(x))
}

/// Variable values.
pub type Env = [(String, BigRational)];

/// Evaluate a scalar expression (None: undefined, non-scalar, unknown symbol, too large).
pub fn eval(e: &Expr, env: &Env) -> Option<Val> {
    match e {
        Expr::Num(n) => Some(Val::Q(n.clone())),
        Expr::Const(Const::Pi) => f(std::f64::consts::PI),
        Expr::Const(Const::E) => f(std::f64::consts::E),
        Expr::Const(Const::Inf) => f(f64::INFINITY),
        Expr::Sym(s) => env
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, v)| Val::Q(v.clone())),
        Expr::Neg(a) => match eval(a, env)? {
            Val::Q(x) => Some(Val::Q(-x)),
            Val::F(x) => f(-x),
        },
        Expr::Add(ts) => {
            let mut acc = Val::Q(BigRational::zero());
            for t in ts {
                acc = add(acc, eval(t, env)?)?;
            }
            Some(acc)
        }
        Expr::Mul(ts) => {
            let mut acc = Val::Q(BigRational::one());
            for t in ts {
                acc = mul(acc, eval(t, env)?)?;
            }
            Some(acc)
        }
        Expr::Div(a, b) => div(eval(a, env)?, eval(b, env)?),
        Expr::Pow(a, b) => pow(eval(a, env)?, eval(b, env)?),
        Expr::Fact(a) => {
            let n = match eval(a, env)? {
                Val::Q(x) if x.is_integer() => x.to_integer().to_i64()?,
                _ => return None,
            };
            if !(0..=300).contains(&n) {
                return None;
            }
            let mut r = BigInt::one();
            for k in 2..=n {
                r *= k;
            }
            q(BigRational::from_integer(r))
        }
        Expr::Func(name, args) => func(name, args, env),
        _ => None,
    }
}

fn add(a: Val, b: Val) -> Option<Val> {
    match (a, b) {
        (Val::Q(x), Val::Q(y)) => q(x + y),
        (a, b) => {
            let (x, y) = (a.to_f64(), b.to_f64());
            finite_from(x, y, x + y)
        }
    }
}

fn mul(a: Val, b: Val) -> Option<Val> {
    match (a, b) {
        (Val::Q(x), Val::Q(y)) => {
            if bits(&x) + bits(&y) > 2 * MAX_BITS {
                let (a, b) = (x.to_f64()?, y.to_f64()?);
                return finite_from(a, b, a * b);
            }
            q(x * y)
        }
        (a, b) => {
            let (x, y) = (a.to_f64(), b.to_f64());
            finite_from(x, y, x * y)
        }
    }
}

fn div(a: Val, b: Val) -> Option<Val> {
    if b.is_zero() {
        return None;
    }
    match (a, b) {
        (Val::Q(x), Val::Q(y)) => q(x / y),
        (a, b) => {
            let r = a.to_f64() / b.to_f64();
            f(r)
        }
    }
}

/// Exact n-th root of a non-negative rational, if it is one.
fn exact_root(x: &BigRational, n: u32) -> Option<BigRational> {
    if x.is_negative() || n == 0 {
        return None;
    }
    let rn = x.numer().nth_root(n);
    let rd = x.denom().nth_root(n);
    (num_traits::pow(rn.clone(), n as usize) == *x.numer()
        && num_traits::pow(rd.clone(), n as usize) == *x.denom())
    .then(|| BigRational::new(rn, rd))
}

fn int_pow(b: &BigRational, e: i64) -> Option<Val> {
    if e.abs() > MAX_EXP || (bits(b) as i64).saturating_mul(e.abs()) > 2 * MAX_BITS as i64 {
        let r = b.to_f64()?.powf(e as f64);
        return r.is_finite().then_some(Val::F(r));
    }
    if e < 0 && b.is_zero() {
        return None;
    }
    let p = num_traits::pow(b.clone(), e.unsigned_abs() as usize);
    q(if e < 0 { p.recip() } else { p })
}

fn pow(a: Val, b: Val) -> Option<Val> {
    if let (Val::Q(x), Val::Q(y)) = (&a, &b) {
        if y.is_integer() {
            if let Some(e) = y.to_integer().to_i64() {
                return int_pow(x, e);
            }
        } else if let (Some(p), Some(d)) = (y.numer().to_i64(), y.denom().to_u32()) {
            if d <= 64 && p.abs() <= MAX_EXP {
                if let Some(r) = exact_root(x, d) {
                    return int_pow(&r, p);
                }
                if x.is_negative() && d % 2 == 1 {
                    if let Some(r) = exact_root(&-x.clone(), d) {
                        return int_pow(&-r, p);
                    }
                    let m = (-x.clone()).to_f64()?.powf(1.0 / d as f64);
                    return f((-m).powi(i32::try_from(p).ok()?));
                }
            }
        }
    }
    let (x, y) = (a.to_f64(), b.to_f64());
    if x < 0.0 && y.fract() != 0.0 {
        return None;
    }
    let r = x.powf(y);
    (r.is_finite() || x.is_infinite()).then_some(())?;
    f(r)
}

/// Finite results only for arithmetic on finite inputs (overflow is undefined, not ∞).
fn finite_from(a: f64, b: f64, r: f64) -> Option<Val> {
    if r.is_finite() || a.is_infinite() || b.is_infinite() {
        f(r)
    } else {
        None
    }
}

fn func(name: &str, args: &[Expr], env: &Env) -> Option<Val> {
    let a = eval(args.first()?, env)?;
    if name.starts_with("base") {
        // `101_2` is the number 5 wherever it is computed with.
        return Some(a);
    }
    match name {
        "sqrt" => match &a {
            Val::Q(x) if x.is_negative() => None,
            Val::Q(x) => match exact_root(x, 2) {
                Some(r) => Some(Val::Q(r)),
                None => f(x.to_f64()?.sqrt()),
            },
            Val::F(x) if *x < 0.0 => None,
            Val::F(x) => f(x.sqrt()),
        },
        "root" => {
            let n = match eval(args.get(1)?, env)? {
                Val::Q(n) if n.is_integer() => n.to_integer().to_u32()?,
                _ => return None,
            };
            if !(1..=64).contains(&n) {
                return None;
            }
            pow(a, Val::Q(BigRational::new(BigInt::one(), BigInt::from(n))))
        }
        "abs" => match a {
            Val::Q(x) => Some(Val::Q(x.abs())),
            Val::F(x) => f(x.abs()),
        },
        "floor" => match a {
            Val::Q(x) => Some(Val::Q(x.floor())),
            Val::F(x) => f(x.floor()),
        },
        "ceil" => match a {
            Val::Q(x) => Some(Val::Q(x.ceil())),
            Val::F(x) => f(x.ceil()),
        },
        "binom" => {
            let b = eval(args.get(1)?, env)?;
            let (Val::Q(n), Val::Q(k)) = (a, b) else {
                return None;
            };
            let (n, k) = (n.to_integer().to_i64()?, k.to_integer().to_i64()?);
            if !(0..=1000).contains(&n) || k < 0 || k > n {
                return if k < 0 || k > n && n >= 0 {
                    Some(Val::Q(BigRational::zero()))
                } else {
                    None
                };
            }
            let mut r = BigInt::one();
            for i in 0..k {
                r = r * (n - i) / (i + 1);
            }
            q(BigRational::from_integer(r))
        }
        _ => {
            let x = a.to_f64();
            if let Val::Q(z) = &a {
                if z.is_zero()
                    && matches!(name, "sin" | "tan" | "arcsin" | "arctan" | "sinh" | "tanh")
                {
                    return Some(Val::Q(BigRational::zero()));
                }
                if z.is_one() && matches!(name, "ln" | "log" | "log10") {
                    return Some(Val::Q(BigRational::zero()));
                }
            }
            let r = match name {
                "sin" => x.sin(),
                "cos" => x.cos(),
                "tan" => x.tan(),
                "sec" => 1.0 / x.cos(),
                "csc" => 1.0 / x.sin(),
                "cot" => 1.0 / x.tan(),
                "arcsin" => x.asin(),
                "arccos" => x.acos(),
                "arctan" => x.atan(),
                "arcsec" => (1.0 / x).acos(),
                "arccsc" => (1.0 / x).asin(),
                "arccot" => (1.0 / x).atan(),
                "sinh" => x.sinh(),
                "cosh" => x.cosh(),
                "tanh" => x.tanh(),
                "ln" | "log" => {
                    if x <= 0.0 {
                        return None;
                    }
                    x.ln()
                }
                "log10" => {
                    if x <= 0.0 {
                        return None;
                    }
                    x.log10()
                }
                "exp" => x.exp(),
                _ => return None,
            };
            r.is_finite().then_some(())?;
            f(r)
        }
    }
}

/// `a` and `b` are equal: exactly, or within `tol` relative (and 1e-12 absolute when one side
/// is approximate).
pub fn close(a: &Val, b: &Val, tol: f64) -> bool {
    if let (Val::Q(x), Val::Q(y)) = (a, b) {
        // Exact values: equal, or (when not both integers) within the relative tolerance.
        if x == y {
            return true;
        }
        if x.is_integer() && y.is_integer() {
            return false;
        }
        let d = (x - y).abs();
        let m = x.abs().max(y.abs());
        return match (d.to_f64(), m.to_f64()) {
            (Some(d), Some(m)) if d.is_finite() && m.is_finite() => d <= tol * m,
            _ => false,
        };
    }
    let (x, y) = (a.to_f64(), b.to_f64());
    if x == y {
        return true;
    }
    if !x.is_finite() || !y.is_finite() {
        return false;
    }
    let d = (x - y).abs();
    if d <= tol * x.abs().max(y.abs()) {
        return true;
    }
    let inexact = matches!(a, Val::F(_)) || matches!(b, Val::F(_));
    inexact && d <= 1e-12
}

#[allow(dead_code)]
fn gcd_check(a: &BigInt, b: &BigInt) -> BigInt {
    a.gcd(b)
}
