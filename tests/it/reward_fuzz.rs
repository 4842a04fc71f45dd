//! Bench-style fuzzing of the verifier: a proptest "any string" suite with 10^6 cases.
//! The 10^6 forms are ignored in the default suite (minutes); run them with
//! `cargo test --release --test reward_fuzz -- --ignored`. The default suite runs the same
//! generators on 10^5 cases each (`CURES_REWARD_FUZZ_CASES` overrides), well under a minute in
//! release (and `cures bench reward-fuzz` runs a token-soup fuzzer over 10^6 cases).
//!
//! Each pair must finish within [`PAIR_BOUND`]: a guard against a pathological (exponential)
//! input, not a speed claim (a pair takes microseconds; `cures bench reward` measures speed).

use std::cell::Cell;
use std::time::{Duration, Instant};

use cures::reward::{score, verify, RewardConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const LATEX_SOUP: &str = "(\\\\(boxed|frac|tfrac|sqrt|left|right|pi|infty|le|pm|cup|in|text|overline|dot|ldots|color\\{red\\}|begin\\{pmatrix\\}|end\\{pmatrix\\})|[{}()\\[\\]0-9xyeEABC^_+*/=<>,.$ !|&:;%-]|½|…){0,50}";

/// The most one pair (both calls) may take, even in an unoptimised build on a loaded machine.
const PAIR_BOUND: Duration = Duration::from_secs(2);

/// Time `f` on each pair and fail with the slowest pair when it is over [`PAIR_BOUND`].
struct Slowest {
    worst: Cell<Duration>,
    pair: std::cell::RefCell<(String, String)>,
}

impl Slowest {
    fn new() -> Self {
        Slowest {
            worst: Cell::new(Duration::ZERO),
            pair: std::cell::RefCell::new((String::new(), String::new())),
        }
    }

    fn time(&self, p: &str, g: &str, f: impl FnOnce()) {
        let t = Instant::now();
        f();
        let d = t.elapsed();
        if d > self.worst.get() {
            self.worst.set(d);
            *self.pair.borrow_mut() = (p.to_string(), g.to_string());
        }
    }

    fn check(&self) {
        let (p, g) = self.pair.borrow().clone();
        assert!(
            self.worst.get() <= PAIR_BOUND,
            "a pair took {:?} (bound {PAIR_BOUND:?}): prediction {p:?}, gold {g:?}",
            self.worst.get()
        );
    }
}

/// Cases of the default (bounded) runs.
fn bounded_cases() -> u32 {
    std::env::var("CURES_REWARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Never panics (nor hangs: the suite is bounded in time by CI).
fn any_string(cases: u32) {
    let cfg = RewardConfig::lenient();
    let slow = Slowest::new();
    runner(cases)
        .run(&(any::<String>(), any::<String>()), |(p, g)| {
            slow.time(&p, &g, || {
                let _ = score(&p, &g, &cfg);
                let _ = verify(&format!("\\boxed{{{p}}}"), &g);
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    slow.check();
}

fn latex_soup(cases: u32) {
    let cfg = RewardConfig::lenient();
    let slow = Slowest::new();
    runner(cases)
        .run(&(LATEX_SOUP, LATEX_SOUP), |(p, g)| {
            slow.time(&p, &g, || {
                let _ = score(&p, &g, &cfg);
                let _ = verify(&format!("\\boxed{{{p}}}"), &format!("${g}$"));
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    slow.check();
}

#[test]
fn any_string_bounded() {
    let _serial = crate::support::serial();
    any_string(bounded_cases());
}

#[test]
fn latex_soup_bounded() {
    let _serial = crate::support::serial();
    latex_soup(bounded_cases());
}

#[test]
#[ignore = "1e6 cases: run with --ignored"]
fn any_string_million_cases() {
    let _serial = crate::support::serial();
    any_string(1_000_000);
}

#[test]
#[ignore = "1e6 cases: run with --ignored"]
fn latex_soup_million_cases() {
    let _serial = crate::support::serial();
    latex_soup(1_000_000);
}
