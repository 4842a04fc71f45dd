//! Bench-style fuzzing of the verifier: a proptest "any string" suite with 10^6 cases.
//! Ignored in the default suite (minutes); run it with
//! `cargo test --release --test reward_fuzz -- --ignored`. A few thousand cases of the same
//! properties run by default in the library's unit tests (and `cures bench reward-fuzz`
//! runs a token-soup fuzzer over 10^6 cases).

use cures::reward::{score, verify, RewardConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
#[ignore = "1e6 cases: run with --ignored"]
fn any_string_million_cases() {
    let cfg = RewardConfig::lenient();
    let mut runner = TestRunner::new(Config {
        cases: 1_000_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(any::<String>(), any::<String>()), |(p, g)| {
            let _ = score(&p, &g, &cfg);
            let _ = verify(&format!("\\boxed{{{p}}}"), &g);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
#[ignore = "1e6 cases: run with --ignored"]
fn latex_soup_million_cases() {
    let cfg = RewardConfig::lenient();
    let mut runner = TestRunner::new(Config {
        cases: 1_000_000,
        failure_persistence: None,
        ..Config::default()
    });
    let s = "(\\\\(boxed|frac|sqrt|left|right|pi|infty|le|pm|cup|in|text|begin\\{pmatrix\\}|end\\{pmatrix\\})|[{}()\\[\\]0-9xye^_+*/=<>,.$ !|&:;%-]){0,50}";
    runner
        .run(&(s, s), |(p, g)| {
            let _ = score(&p, &g, &cfg);
            let _ = verify(&format!("\\boxed{{{p}}}"), &format!("${g}$"));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
