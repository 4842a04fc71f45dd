//! CurES as the paper (and, as an option, the released code) defines it, in real runs and on
//! the shipped configs: σ = 0 ⇒ no completions, pre-rollouts only where a strategy reads them
//! and counted as compute, the released sampler's weights (docs/algorithm.md §8).

use std::path::Path;

use cures::config::Config;
use cures::curriculum::allocation::sigma_bernoulli;
use cures::curriculum::{Curriculum, WeightRule};

use crate::run_e2e::{policy_dir, read_csv, small_run_args};

fn col(head: &[String], name: &str) -> usize {
    head.iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {head:?}"))
}

fn run(out: &Path, sets: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
    let model = policy_dir().to_str().expect("utf8");
    let mut args = small_run_args(model, out.to_str().expect("utf8"), "3");
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cures run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_csv(&out.join("steps.csv"))
}

#[test]
fn max_likelihood_skips_zero_sigma_prompts_and_counts_pre_rollouts() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (head, rows) = run(
        &tmp.path().join("ml"),
        &[
            "curriculum.p_estimate=max_likelihood",
            "curriculum.zero_sigma=skip",
        ],
    );
    assert_eq!(rows.len(), 3);
    let num = |r: &Vec<String>, c: &str| -> u64 { r[col(&head, c)].parse().expect(c) };
    // 140 training prompts in 2 subsets of 70, N' = 4: 280 pre-rollouts at step 1.
    assert_eq!(num(&rows[0], "cum_init_completions"), 280);
    assert!(num(&rows[0], "cum_init_tokens") > 0);
    let skipped: u64 = rows.iter().map(|r| num(r, "zero_sigma_prompts")).sum();
    assert!(skipped > 0, "0/4 and 4/4 prompts are drawn and get nothing");
    for r in &rows {
        // Budget 24 over the σ > 0 prompts (n_max 8): all of N unless they cannot take it.
        assert!(num(r, "completions") <= 24);
        assert!(num(r, "n_min") >= 2, "σ > 0 prompts keep n_min: {r:?}");
        assert_eq!(
            num(r, "cum_generated_completions"),
            num(r, "cum_completions") + num(r, "cum_init_completions")
        );
    }
    // The same with n_min: nothing skipped, every step exactly N.
    let (head2, rows2) = run(
        &tmp.path().join("nmin"),
        &[
            "curriculum.p_estimate=max_likelihood",
            "curriculum.zero_sigma=n_min",
        ],
    );
    for r in &rows2 {
        assert_eq!(r[col(&head2, "zero_sigma_prompts")], "0");
        assert_eq!(r[col(&head2, "completions")], "24");
    }
}

#[test]
fn grpo_generates_no_pre_rollouts() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (head, rows) = run(
        &tmp.path().join("grpo"),
        &["curriculum.strategy=grpo", "iterations.init_rollouts=4"],
    );
    for r in &rows {
        assert_eq!(r[col(&head, "cum_init_completions")], "0", "{r:?}");
        assert_eq!(
            r[col(&head, "sec_init")].parse::<f64>().map(|s| s < 0.05),
            Ok(true)
        );
    }
}

/// configs/released-code.toml on hand-made counts (N' = 4, c = 0..4, repeated): ρ is the
/// released sampler's w_i = exp(√(p̂(1−p̂))/t_i) with p̂ = (c+1)/6 and t_i = 100(c+1), the
/// §8 table; the allocation is n_i ∝ σ(c/4) with 0/4 and 4/4 prompts skipped.
#[test]
fn released_code_config_gives_the_released_weights_and_allocation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = Config::load(&root.join("configs/released-code.toml"), &[]).expect("config");
    // Small enough for a test, the rest as shipped: 1 pool of 100 prompts, 20 drawn.
    cfg.batch.prompts = 20;
    cfg.batch.budget = 200;
    cfg.curriculum.n_max = Some(40);
    cfg.iterations.subsets = 1;
    let mut cur = Curriculum::new(&cfg, 100).expect("curriculum");
    let it = cur.begin_iteration();
    assert_eq!(it.init_prompts.len(), 100);
    let outcomes: Vec<(u32, u32, u32)> = (0..100u32).map(|p| (p, p % 5, 4)).collect();
    cur.observe_init(&outcomes).expect("observe");
    let table = [1.003734, 1.002360, 1.001668, 1.001179, 1.000746];
    let sum: f64 = (0..100).map(|p| table[p % 5]).sum();
    for local in 0..100u32 {
        let c = cur.sampler().prompt(local) % 5;
        let rho = cur.sampler().rho(local);
        let want = table[c as usize] / sum;
        // The table has 6 digits.
        assert!(
            (rho / want - 1.0).abs() < 1e-6,
            "c = {c}: ρ {rho} vs {want}"
        );
    }
    assert!(matches!(
        cur.strategy().weight_rule(),
        WeightRule::ReleasedCode
    ));
    let plan = cur.plan_step().expect("plan");
    let sigma = |c: u32| sigma_bernoulli(f64::from(c) / 4.0);
    let live: f64 = plan
        .groups
        .iter()
        .map(|g| sigma(g.prompt % 5) * f64::from(g.multiplicity))
        .sum();
    for g in &plan.groups {
        let c = g.prompt % 5;
        if c == 0 || c == 4 {
            assert_eq!(g.n, 0, "c = {c}: σ(c/4) = 0 gets nothing");
        } else {
            let want = 200.0 * sigma(c) * f64::from(g.multiplicity) / live;
            assert!(
                (f64::from(g.n) - want).abs() < 1.0,
                "c = {c}: n {} vs {want:.2}",
                g.n
            );
        }
    }
    assert_eq!(plan.completions(), 200);
    assert_eq!(
        u64::from(plan.zero_sigma),
        plan.groups
            .iter()
            .filter(|g| g.prompt % 5 == 0 || g.prompt % 5 == 4)
            .count() as u64
    );
}
