//! `cures bench curriculum`: the time of one full curriculum step at scale — observe the
//! previous step's N outcomes (posterior + ρ refresh), draw m prompts, allocate N — against the
//! Python references in `scripts/bench/curriculum_ref.py` run in the same command: (a) the
//! authors' style (per-prompt Python loops, `np.random.choice(replace=False, p=ρ)`) and (b) a
//! vectorised numpy step.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use serde::Serialize;

use super::{median, percentile, reference_figure, reference_python, repo_file};
use crate::config::{Config, IterationMode};
use crate::curriculum::Curriculum;

/// Bench parameters.
#[derive(Debug, Clone)]
pub struct CurriculumBench {
    /// Pool size.
    pub prompts: usize,
    /// m.
    pub batch: usize,
    /// N.
    pub budget: usize,
    /// Timed steps (after warm-up).
    pub steps: usize,
    /// Run the Python references too.
    pub reference: bool,
}

/// The figures (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct CurriculumBenchResult {
    /// Pool size.
    pub prompts: usize,
    /// m.
    pub batch: usize,
    /// N.
    pub budget: usize,
    /// Median ms of one cures step.
    pub step_ms: f64,
    /// 90th percentile ms of one cures step.
    pub step_p90_ms: f64,
    /// Median ms of the authors'-style Python step (null when it could not run).
    pub ref_loop_ms: Option<f64>,
    /// Median ms of the vectorised numpy step (null when it could not run).
    pub ref_numpy_ms: Option<f64>,
    /// ref_loop_ms / step_ms.
    pub speedup_vs_loop: Option<f64>,
    /// ref_numpy_ms / step_ms.
    pub speedup_vs_numpy: Option<f64>,
}

/// Time the Rust step.
pub fn time_cures_step(b: &CurriculumBench) -> Result<Vec<f64>> {
    let mut cfg = Config::default();
    cfg.batch.prompts = b.batch;
    cfg.batch.budget = b.budget;
    cfg.iterations.mode = IterationMode::Streaming;
    cfg.iterations.init_rollouts = 4;
    cfg.validate().context("bench parameters")?;
    let mut cur = Curriculum::new(&cfg, b.prompts)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let p_true: Vec<f64> = (0..b.prompts).map(|_| rng.random::<f64>()).collect();
    let outcomes = |plan_groups: &[(u32, u32)], rng: &mut ChaCha8Rng| -> Vec<u32> {
        plan_groups
            .iter()
            .map(|&(g, n)| {
                Binomial::new(u64::from(n), p_true[g as usize])
                    .map(|d| d.sample(rng) as u32)
                    .unwrap_or(0)
            })
            .collect()
    };
    // Stage 0 (untimed): N' = 4 pre-rollouts of every prompt so ρ is not flat.
    let it = cur.begin_iteration();
    let init: Vec<(u32, u32, u32)> = it
        .init_prompts
        .iter()
        .map(|&g| {
            let s = outcomes(&[(g, 4)], &mut rng)[0];
            (g, s, 4)
        })
        .collect();
    cur.observe_init(&init)?;
    let mut plan = cur.plan_step()?;
    let mut succ = outcomes(
        &plan
            .groups
            .iter()
            .map(|g| (g.prompt, g.n))
            .collect::<Vec<_>>(),
        &mut rng,
    );
    let warmup = (b.steps / 10).max(3);
    let mut times = Vec::with_capacity(b.steps);
    for i in 0..warmup + b.steps {
        let t0 = Instant::now();
        cur.observe_step(&plan, &succ)?;
        plan = cur.plan_step()?;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            times.push(dt);
        }
        debug_assert_eq!(plan.completions(), b.budget as u64);
        succ = outcomes(
            &plan
                .groups
                .iter()
                .map(|g| (g.prompt, g.n))
                .collect::<Vec<_>>(),
            &mut rng,
        );
    }
    Ok(times)
}

/// Run one Python reference mode; Err carries the reason it could not run.
fn run_reference(b: &CurriculumBench, mode: &str, steps: usize) -> Result<f64, String> {
    let script = repo_file("scripts/bench/curriculum_ref.py")
        .ok_or("scripts/bench/curriculum_ref.py not found (run from the repository root)")?;
    let py = reference_python("numpy")?;
    let out = Command::new(&py)
        .arg(&script)
        .args(["--mode", mode])
        .args(["--prompts", &b.prompts.to_string()])
        .args(["--batch", &b.batch.to_string()])
        .args(["--budget", &b.budget.to_string()])
        .args(["--steps", &steps.to_string()])
        .output();
    reference_figure(&py, &script, out, "step_ms")
}

/// Run the bench: cures first, then each reference (their failures become nulls + stderr).
pub fn run(b: &CurriculumBench) -> Result<CurriculumBenchResult> {
    let times = time_cures_step(b)?;
    let step_ms = median(&times);
    let (mut ref_loop_ms, mut ref_numpy_ms) = (None, None);
    if b.reference {
        match run_reference(b, "loop", 3) {
            Ok(ms) => ref_loop_ms = Some(ms),
            Err(e) => eprintln!("bench curriculum: reference (a) authors' loop not run: {e}"),
        }
        match run_reference(b, "numpy", 20) {
            Ok(ms) => ref_numpy_ms = Some(ms),
            Err(e) => eprintln!("bench curriculum: reference (b) numpy not run: {e}"),
        }
    } else {
        eprintln!("bench curriculum: references not run (--no-reference)");
    }
    Ok(CurriculumBenchResult {
        prompts: b.prompts,
        batch: b.batch,
        budget: b.budget,
        step_ms,
        step_p90_ms: percentile(&times, 0.9),
        ref_loop_ms,
        ref_numpy_ms,
        speedup_vs_loop: ref_loop_ms.map(|r| r / step_ms),
        speedup_vs_numpy: ref_numpy_ms.map(|r| r / step_ms),
    })
}
