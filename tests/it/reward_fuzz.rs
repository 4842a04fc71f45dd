//! Bench-style fuzzing of the verifier: a proptest "any string" suite with 10^6 cases.
//! The 10^6 forms are ignored in the default suite (minutes); run them with
//! `cargo test --release --test reward_fuzz -- --ignored`. The default suite runs the same
//! generators on 10^5 cases each (`CURES_REWARD_FUZZ_CASES` overrides), well under a minute in
//! release (and `cures bench reward-fuzz` runs a token-soup fuzzer over 10^6 cases).

use cures::reward::{score, verify, RewardConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const LATEX_SOUP: &str = "(\\\\(boxed|frac|sqrt|left|right|pi|infty|le|pm|cup|in|text|begin\\{pmatrix\\}|end\\{pmatrix\\})|[{}()\\[\\]0-9xye^_+*/=<>,.$ !|&:;%-]){0,50}";

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
    runner(cases)
        .run(&(any::<String>(), any::<String>()), |(p, g)| {
            let _ = score(&p, &g, &cfg);
            let _ = verify(&format!("\\boxed{{{p}}}"), &g);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

fn latex_soup(cases: u32) {
    let cfg = RewardConfig::lenient();
    runner(cases)
        .run(&(LATEX_SOUP, LATEX_SOUP), |(p, g)| {
            let _ = score(&p, &g, &cfg);
            let _ = verify(&format!("\\boxed{{{p}}}"), &format!("${g}$"));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
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
