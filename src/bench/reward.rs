//! `cures bench reward`: verifications per second on realistic (prediction, gold) pairs —
//! long chains of thought ending in a box, a mix of correct and near-miss answers over many
//! answer kinds — against HuggingFace Math-Verify (`scripts/bench/reward_ref.py`) on the same
//! pairs, plus the agreement of the two verdicts. `cures bench reward-fuzz`: random strings
//! through the verifier, counting panics and the slowest case.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{reference_python, repo_file};
use crate::reward::{score, RewardConfig};

/// One generated pair.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// Model output (chain of thought, usually ending in a box).
    pub prediction: String,
    /// Gold answer.
    pub gold: String,
    /// What the generator meant: equivalent or not.
    pub label: bool,
    /// Answer kind.
    pub kind: &'static str,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// (kind, gold, equivalent alternative forms, near misses)
fn answer(r: &mut ChaCha8Rng) -> (&'static str, String, Vec<String>, Vec<String>) {
    let k = r.random_range(0..15);
    let a = r.random_range(1..40i64);
    let b = r.random_range(2..30i64);
    let c = r.random_range(-20..20i64);
    match k {
        0 => {
            let n = r.random_range(0..100_000i64);
            let mut alt = vec![
                n.to_string(),
                format!("{n}.0"),
                format!("{n} \\text{{ apples}}"),
            ];
            if n >= 1000 {
                alt.push(format!("{},{:03}", n / 1000, n % 1000));
                alt.push(format!("{}{{,}}{:03}", n / 1000, n % 1000));
            }
            (
                "integer",
                n.to_string(),
                alt,
                vec![(n + 1).to_string(), (n * 10 + 1).to_string()],
            )
        }
        1 => {
            let g = gcd(a, b);
            let (p, q) = (a / g, b / g);
            let q = if q == 1 { q + 2 } else { q };
            let mut alt = vec![
                format!("\\dfrac{{{p}}}{{{q}}}"),
                format!("{p}/{q}"),
                format!("\\frac{{{}}}{{{}}}", 2 * p, 2 * q),
            ];
            if 1000 % q == 0 || q == 8 || q == 16 {
                alt.push(format!("{}", p as f64 / q as f64));
            }
            (
                "fraction",
                format!("\\frac{{{p}}}{{{q}}}"),
                alt,
                vec![
                    format!("\\frac{{{p}}}{{{}}}", q + 1),
                    format!("\\frac{{{q}}}{{{p}}}"),
                ],
            )
        }
        2 => {
            let m = [2, 3, 5, 6, 7, 10, 11, 13][r.random_range(0..8)];
            (
                "sqrt",
                format!("{a}\\sqrt{{{m}}}"),
                vec![
                    format!("\\sqrt{{{}}}", a * a * m),
                    if m < 10 {
                        format!("{a} \\sqrt {m}")
                    } else {
                        format!("{a} \\sqrt{{{m}}}")
                    },
                ],
                vec![
                    format!("{a}\\sqrt{{{}}}", m + 1),
                    format!("{}\\sqrt{{{m}}}", a + 1),
                ],
            )
        }
        3 => (
            "pi",
            format!("\\frac{{{a}\\pi}}{{{b}}}"),
            vec![format!("\\frac{{{a}}}{{{b}}}\\pi"), format!("{a}\\pi/{b}")],
            vec![
                format!("\\frac{{{a}\\pi}}{{{}}}", b + 1),
                format!("\\frac{{{a}}}{{{b}}}"),
            ],
        ),
        4 => {
            let (lo, hi) = (c, c + a);
            (
                "interval",
                format!("[{lo}, {hi})"),
                vec![
                    format!("[{lo},{hi})"),
                    format!("x \\in \\left[{lo}, {hi}\\right)"),
                ],
                vec![format!("({lo}, {hi})"), format!("[{lo}, {hi}]")],
            )
        }
        5 => (
            "tuple",
            format!("({c}, {a})"),
            vec![
                format!("\\left( {c}, {a} \\right)"),
                format!("(x, y) = ({c},{a})"),
            ],
            vec![format!("({a}, {c})"), format!("({c}, {})", a + 1)],
        ),
        6 => (
            "set",
            format!("\\{{{c}, {a}, {}\\}}", a + b),
            vec![
                format!("{}, {c}, {a}", a + b),
                format!("\\{{{a}, {}, {c}\\}}", a + b),
            ],
            vec![format!("{c}, {a}"), format!("{c}, {a}, {}", a + b + 1)],
        ),
        7 => {
            let names = [
                "Evelyn", "Carla", "Debra", "Angela", "Briana", "odd", "even",
            ];
            let n = *names.choose(r).unwrap_or(&"odd");
            let m = *names.choose(r).unwrap_or(&"even");
            let wrong = if m == n { "none" } else { m };
            (
                "text",
                format!("\\text{{{n}}}"),
                vec![n.to_string(), format!("\\textbf{{{n}}}")],
                vec![wrong.to_string()],
            )
        }
        8 => (
            "percent",
            format!("{a}\\%"),
            vec![a.to_string(), format!("{a}\\%"), format!("{a} percent")],
            vec![format!("{}\\%", a + 5)],
        ),
        9 => (
            "degrees",
            format!("{}^\\circ", a * 5),
            vec![format!("{}", a * 5), format!("{}^{{\\circ}}", a * 5)],
            vec![format!("{}^\\circ", a * 5 + 90)],
        ),
        10 => (
            "polynomial",
            format!("x^2 + {}x + {}", a + b, a * b),
            vec![
                format!("(x+{a})(x+{b})"),
                format!("{} + {}x + x^2", a * b, a + b),
            ],
            vec![
                format!("(x+{a})(x-{b})"),
                format!("x^2 + {}x + {}", a + b, a * b + 1),
            ],
        ),
        11 => {
            let c = if c == 0 { 7 } else { c };
            (
                "equation",
                format!("y = {a}x + {c}"),
                vec![format!("{a}x + {c}"), format!("y - {c} = {a}x")],
                vec![format!("y = {a}x - {c}"), format!("y = {}x + {c}", a + 1)],
            )
        }
        12 => {
            let d = r.random_range(1..400i64);
            let v = d as f64 / 4.0;
            (
                "decimal",
                format!("{v}"),
                vec![
                    format!("\\frac{{{d}}}{{4}}"),
                    if d % 4 == 0 {
                        format!("{v}.0")
                    } else {
                        format!("{v}0")
                    },
                ],
                vec![format!("{}", v + 0.01), format!("\\frac{{{d}}}{{5}}")],
            )
        }
        13 => (
            "matrix",
            format!("\\begin{{pmatrix}} {a} & {b} \\\\ {c} & 1 \\end{{pmatrix}}"),
            vec![format!(
                "\\begin{{bmatrix}}{a}&{b}\\\\{c}&1\\end{{bmatrix}}"
            )],
            vec![format!(
                "\\begin{{pmatrix}} {a} & {b} \\\\ {c} & 2 \\end{{pmatrix}}"
            )],
        ),
        _ => {
            let m = [2, 3, 5, 7][r.random_range(0..4)];
            (
                "plus_minus",
                format!("{a} \\pm \\sqrt{{{m}}}"),
                vec![format!("{a}+\\sqrt{{{m}}}, {a}-\\sqrt{{{m}}}")],
                vec![
                    format!("{a} + \\sqrt{{{m}}}"),
                    format!("{a} \\pm \\sqrt{{{}}}", m + 1),
                ],
            )
        }
    }
}

const FILLER: &[&str] = &[
    "Let $x$ be the number of items, so that $x + {a} = {b}$ and therefore $x = {c}$.",
    "We first note that $\\frac{{{a}}}{{{b}}}$ cannot be simplified further, since $\\gcd({a}, {b})$ is small.",
    "Squaring both sides gives $(y - {a})^2 = {b}$, and expanding, $y^2 - {c}y + {a} = 0$.",
    "By the quadratic formula, the roots are $t = \\frac{{-{a} \\pm \\sqrt{{{b}}}}}{{2}}$.",
    "Now we check the case $n = {a}$: the sum is ${a} + {b} = {c}$, which is too large.",
    "Next, multiply by ${b}$ to clear denominators: ${a}k = {c}$.",
    "So the area is $\\frac{{1}}{{2}} \\cdot {a} \\cdot {b} = {c}$ square units, as computed above.",
    "Wait, let me double-check this step. If $m = {a}$ then $m^2 = {c}$, which matches.",
    "Hence the probability is $\\frac{{{a}}}{{{b}}}$ for this part, and we continue with the next case.",
    "Using the identity $\\sin^2\\theta + \\cos^2\\theta = 1$, we get $\\cos\\theta = \\frac{{{a}}}{{{b}}}$.",
    "The sequence satisfies $a_{{n+1}} = a_n + {a}$, so $a_{{10}} = {c}$.",
    "Therefore we need $x > {a}$ and $x < {b}$ simultaneously, i.e. the interval $({a}, {b})$.",
];

fn filler(r: &mut ChaCha8Rng, chars: usize) -> String {
    let mut s = String::with_capacity(chars + 200);
    while s.len() < chars {
        let t = FILLER.choose(r).copied().unwrap_or("");
        let (a, b, c) = (
            r.random_range(1..100),
            r.random_range(2..100),
            r.random_range(1..1000),
        );
        s.push_str(
            &t.replace("{a}", &a.to_string())
                .replace("{b}", &b.to_string())
                .replace("{c}", &c.to_string())
                .replace("{{", "{")
                .replace("}}", "}"),
        );
        s.push(if r.random_bool(0.2) { '\n' } else { ' ' });
    }
    s
}

/// `n` deterministic pairs (about 60 % equivalent, 5 % unboxed).
pub fn generate_pairs(n: usize, seed: u64) -> Vec<Pair> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (kind, gold, alts, misses) = answer(&mut r);
            let correct = r.random_bool(0.6);
            let ans = if correct {
                alts.choose(&mut r).cloned().unwrap_or_else(|| gold.clone())
            } else {
                misses.choose(&mut r).cloned().unwrap_or_default()
            };
            let len = r.random_range(800..3000);
            let mut p = filler(&mut r, len);
            let boxed = r.random_bool(0.95);
            if boxed {
                p.push_str(&format!(
                    "\nTherefore, the final answer is $\\boxed{{{ans}}}$."
                ));
            } else {
                p.push_str(&format!("\nSo the result should be {ans}, I think."));
            }
            Pair {
                prediction: p,
                gold,
                label: correct && boxed,
                kind,
            }
        })
        .collect()
}

/// Bench parameters.
#[derive(Debug, Clone)]
pub struct RewardBench {
    /// Pairs generated.
    pub pairs: usize,
    /// Pairs given to Math-Verify (0: all).
    pub reference_pairs: usize,
    /// Run the reference.
    pub reference: bool,
}

/// The figures (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct RewardBenchResult {
    /// Pairs.
    pub pairs: usize,
    /// Mean prediction length (chars).
    pub mean_prediction_chars: f64,
    /// cures verifications per second, one thread.
    pub cures_per_s: f64,
    /// cures verifications per second, all cores.
    pub cures_parallel_per_s: f64,
    /// Math-Verify verifications per second, one thread (null when it could not run).
    pub math_verify_per_s: Option<f64>,
    /// cures_per_s / math_verify_per_s.
    pub ratio: Option<f64>,
    /// Fraction of the reference's pairs where both verdicts agree.
    pub agreement: Option<f64>,
    /// Pairs the reference scored.
    pub reference_pairs: usize,
    /// cures verdict == generator label.
    pub cures_label_accuracy: f64,
    /// Math-Verify verdict == generator label.
    pub math_verify_label_accuracy: Option<f64>,
    /// Disagreements per answer kind (cures vs Math-Verify).
    pub disagreements_by_kind: std::collections::BTreeMap<String, usize>,
}

struct RefOut {
    per_s: f64,
    verdicts: Vec<bool>,
}

fn run_reference(pairs: &[Pair]) -> Result<RefOut, String> {
    let script = repo_file("scripts/bench/reward_ref.py")
        .ok_or("scripts/bench/reward_ref.py not found (run from the repository root)")?;
    let py = reference_python("math_verify")?;
    let path =
        std::env::temp_dir().join(format!("cures-reward-bench-{}.jsonl", std::process::id()));
    let mut body = String::new();
    for p in pairs {
        body.push_str(&serde_json::to_string(p).map_err(|e| e.to_string())?);
        body.push('\n');
    }
    std::fs::write(&path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let out = Command::new(&py)
        .arg(&script)
        .arg("--input")
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let v = super::reference_json(&py, &script, out)?;
    let per_s = v
        .get("per_s")
        .and_then(|x| x.as_f64())
        .ok_or("reference output has no per_s")?;
    let verdicts: Vec<bool> = v
        .get("verdicts")
        .and_then(|x| x.as_array())
        .ok_or("reference output has no verdicts")?
        .iter()
        .map(|x| x.as_bool().unwrap_or(false))
        .collect();
    if verdicts.len() != pairs.len() {
        return Err(format!(
            "reference gave {} verdicts for {} pairs",
            verdicts.len(),
            pairs.len()
        ));
    }
    Ok(RefOut { per_s, verdicts })
}

/// Run the bench.
pub fn run(b: &RewardBench) -> Result<RewardBenchResult> {
    anyhow::ensure!(b.pairs > 0, "--pairs must be > 0");
    let pairs = generate_pairs(b.pairs, 20_251_001);
    let cfg = RewardConfig::default();
    // Warm-up, then time single-threaded passes until at least one second has gone by.
    let verdicts: Vec<bool> = pairs
        .iter()
        .map(|p| score(&p.prediction, &p.gold, &cfg).equivalent)
        .collect();
    let t0 = Instant::now();
    let mut done = 0usize;
    while t0.elapsed().as_secs_f64() < 1.0 || done == 0 {
        for p in &pairs {
            std::hint::black_box(score(&p.prediction, &p.gold, &cfg));
        }
        done += pairs.len();
    }
    let cures_per_s = done as f64 / t0.elapsed().as_secs_f64();
    // All cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t1 = Instant::now();
    let chunk = pairs.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in pairs.chunks(chunk) {
            let cfg = &cfg;
            s.spawn(move || {
                for p in part {
                    std::hint::black_box(score(&p.prediction, &p.gold, cfg));
                }
            });
        }
    });
    let cures_parallel_per_s = pairs.len() as f64 / t1.elapsed().as_secs_f64();
    let label_ok = pairs
        .iter()
        .zip(&verdicts)
        .filter(|(p, v)| p.label == **v)
        .count();
    let mut res = RewardBenchResult {
        pairs: pairs.len(),
        mean_prediction_chars: pairs.iter().map(|p| p.prediction.len() as f64).sum::<f64>()
            / pairs.len() as f64,
        cures_per_s,
        cures_parallel_per_s,
        math_verify_per_s: None,
        ratio: None,
        agreement: None,
        reference_pairs: 0,
        cures_label_accuracy: label_ok as f64 / pairs.len() as f64,
        math_verify_label_accuracy: None,
        disagreements_by_kind: Default::default(),
    };
    if !b.reference {
        eprintln!("bench reward: Math-Verify reference not run (--no-reference)");
        return Ok(res);
    }
    let m = if b.reference_pairs == 0 {
        pairs.len()
    } else {
        b.reference_pairs.min(pairs.len())
    };
    match run_reference(&pairs[..m]) {
        Ok(r) => {
            let agree = r
                .verdicts
                .iter()
                .zip(&verdicts)
                .filter(|(a, b)| a == b)
                .count();
            let mv_ok = r
                .verdicts
                .iter()
                .zip(&pairs)
                .filter(|(v, p)| **v == p.label)
                .count();
            for ((mv, ours), p) in r.verdicts.iter().zip(&verdicts).zip(&pairs) {
                if mv != ours {
                    *res.disagreements_by_kind
                        .entry(p.kind.to_string())
                        .or_default() += 1;
                }
            }
            res.math_verify_per_s = Some(r.per_s);
            res.ratio = Some(cures_per_s / r.per_s);
            res.agreement = Some(agree as f64 / m as f64);
            res.reference_pairs = m;
            res.math_verify_label_accuracy = Some(mv_ok as f64 / m as f64);
        }
        Err(e) => eprintln!("bench reward: Math-Verify reference not run: {e}"),
    }
    Ok(res)
}

/// Fuzz figures.
#[derive(Debug, Clone, Serialize)]
pub struct FuzzResult {
    /// Cases run.
    pub cases: u64,
    /// Cases that panicked (must be 0).
    pub panics: u64,
    /// Slowest case, µs.
    pub max_us: f64,
    /// Mean µs per case.
    pub mean_us: f64,
    /// Cases judged equivalent (sanity: a few, from identical strings).
    pub equivalent: u64,
}

const FUZZ_TOKENS: &[&str] = &[
    "\\boxed{",
    "\\fbox{",
    "{",
    "}",
    "\\frac",
    "\\sqrt",
    "[",
    "]",
    "(",
    ")",
    "\\{",
    "\\}",
    "^",
    "_",
    "\\left",
    "\\right",
    "\\pi",
    "e",
    "x",
    "y",
    "1",
    "0",
    "9",
    "12",
    "3.5",
    ",",
    ";",
    "=",
    "<",
    "\\le",
    "\\pm",
    "\\cup",
    "\\in",
    "$",
    "$$",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "#### ",
    "\\text{",
    "and",
    " ",
    "\n",
    "-",
    "+",
    "*",
    "/",
    "!",
    "|",
    "&",
    "\\\\",
    "\\begin{pmatrix}",
    "\\end{pmatrix}",
    "%",
    "\\%",
    "^\\circ",
    "_5",
    "final answer is ",
    "−",
    "π",
    "√",
    "∞",
    "\\sin",
    "\\log_",
    "10^{",
    "9999999999",
    "\u{0}",
    "é",
    "😀",
    "\\!",
    "{,}",
    "\\infty",
];

/// Random strings (token soup and raw unicode) through `score`, counting panics.
pub fn fuzz(cases: u64, seed: u64) -> Result<FuzzResult> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let cfg = RewardConfig::lenient();
    let (mut panics, mut eqs) = (0u64, 0u64);
    let mut max_us = 0f64;
    let t0 = Instant::now();
    let gen = |r: &mut ChaCha8Rng| -> String {
        let n = r.random_range(0..40);
        if r.random_bool(0.3) {
            (0..n * 2).map(|_| r.random::<char>()).collect()
        } else {
            (0..n)
                .map(|_| *FUZZ_TOKENS.choose(r).unwrap_or(&""))
                .collect()
        }
    };
    for _ in 0..cases {
        let p = gen(&mut r);
        let g = if r.random_bool(0.2) {
            p.clone()
        } else {
            gen(&mut r)
        };
        let t = Instant::now();
        match std::panic::catch_unwind(|| score(&p, &g, &cfg)) {
            Ok(v) => eqs += u64::from(v.equivalent),
            Err(_) => {
                panics += 1;
                eprintln!("bench reward-fuzz: panic on prediction {p:?} gold {g:?}");
            }
        }
        max_us = max_us.max(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = t0.elapsed().as_secs_f64();
    Ok::<_, anyhow::Error>(FuzzResult {
        cases,
        panics,
        max_us,
        mean_us: total * 1e6 / cases.max(1) as f64,
        equivalent: eqs,
    })
    .context("fuzz")
}

/// `cures bench reward`.
#[derive(Debug, clap::Args)]
pub struct RewardBenchArgs {
    /// Generated (prediction, gold) pairs.
    #[arg(long, default_value_t = 10_000)]
    pub pairs: usize,
    /// Pairs given to Math-Verify (0: all of them).
    #[arg(long, default_value_t = 0)]
    pub reference_pairs: usize,
    /// Skip the Math-Verify reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cures bench reward-fuzz`.
#[derive(Debug, clap::Args)]
pub struct RewardFuzzArgs {
    /// Random cases.
    #[arg(long, default_value_t = 1_000_000)]
    pub cases: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `cures bench reward` and print its figures.
pub fn main(a: RewardBenchArgs) -> Result<()> {
    let r = run(&RewardBench {
        pairs: a.pairs,
        reference_pairs: a.reference_pairs,
        reference: !a.no_reference,
    })?;
    let fmt = |x: Option<f64>, p: usize| x.map_or("n/a".to_string(), |v| format!("{v:.p$}"));
    println!(
        "reward verification ({} pairs, mean prediction {:.0} chars):",
        r.pairs, r.mean_prediction_chars
    );
    println!("  cures (1 thread)   {:>12.0} /s", r.cures_per_s);
    println!("  cures (all cores)  {:>12.0} /s", r.cures_parallel_per_s);
    println!(
        "  Math-Verify        {:>12} /s   cures is {}x faster",
        fmt(r.math_verify_per_s, 1),
        fmt(r.ratio, 1)
    );
    println!(
        "  agreement {} on {} pairs; label accuracy cures {:.4}, Math-Verify {}",
        fmt(r.agreement, 4),
        r.reference_pairs,
        r.cures_label_accuracy,
        fmt(r.math_verify_label_accuracy, 4)
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// Run `cures bench reward-fuzz` and print its figures; panics are an error.
pub fn fuzz_main(a: RewardFuzzArgs) -> Result<()> {
    let r = fuzz(a.cases, a.seed)?;
    println!(
        "reward fuzz: {} cases, {} panics, mean {:.1} µs, max {:.1} µs, {} equivalent",
        r.cases, r.panics, r.mean_us, r.max_us, r.equivalent
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    anyhow::ensure!(r.panics == 0, "{} cases panicked", r.panics);
    Ok(())
}
