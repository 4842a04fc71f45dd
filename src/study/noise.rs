//! `cures study noise-scale`: the gradient noise scale of GRPO's loss at the study's start, in
//! completions, to choose a regime where a method's informative completions per step matter.
//!
//! The simple noise scale B = tr(Σ)/|G|² (McCandlish et al. 2018, "An Empirical Model of
//! Large-Batch Training", App. A): with |G_B|² the squared norm of a gradient over B
//! completions, E|G_B|² = |G|² + tr(Σ)/B, so two batch sizes give both unknowns. Two GRPO runs
//! from the study's start with the weights held still (lr 1e-30: every step draws fresh prompts
//! and completions at the same weights; one optimiser step per step, so steps.csv `grad_norm` is
//! the whole step's gradient before clipping): `prompts` × n completions and `small` × n.
//! Below B, doubling the completions per step nearly halves the gradient's noise, so a method
//! that makes more of them informative should learn faster per completion; far above it, it
//! cannot.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::Config;
use crate::run::{run, RunOptions, StepRow};

/// What `cures study noise-scale` measures.
#[derive(Debug, Clone, Serialize)]
pub struct NoiseScale {
    /// Completions per step of the large and the small batch.
    pub big: usize,
    /// Small batch.
    pub small: usize,
    /// Steps (gradient samples) per batch size.
    pub steps: usize,
    /// Mean |G_B|² over steps, large batch.
    pub sq_norm_big: f64,
    /// Mean |G_B|² over steps, small batch.
    pub sq_norm_small: f64,
    /// |G|² estimate.
    pub true_sq_norm: f64,
    /// tr(Σ) estimate (per completion).
    pub trace_sigma: f64,
    /// B_simple = tr(Σ)/|G|², in completions (all of them: the loss is a mean over every
    /// completion's tokens, zero-advantage ones included; NaN when |G|² is not resolved: ≤ 0).
    pub noise_scale: f64,
    /// Its 95% bootstrap interval (2 000 resamples of the steps of each batch size; NaN ends
    /// when more than 2.5% of the resamples leave |G|² unresolved).
    pub noise_scale_lo: f64,
    /// Upper end.
    pub noise_scale_hi: f64,
    /// Mean share of informative groups (reward variance > 0) over the large batch's steps.
    pub informative_frac: f64,
    /// GRPO's informative completions per step at the large batch (big × informative_frac).
    pub informative_per_step: f64,
    /// Wall seconds.
    pub wall_s: f64,
}

/// The two estimates from mean squared gradient norms at batch sizes `b_big` > `b_small`:
/// (|G|², tr(Σ)).
pub fn estimate(b_big: f64, s_big: f64, b_small: f64, s_small: f64) -> (f64, f64) {
    let g2 = (b_big * s_big - b_small * s_small) / (b_big - b_small);
    let tr = (s_small - s_big) / (1.0 / b_small - 1.0 / b_big);
    (g2, tr)
}

/// Measure at `config`'s start: `prompts` × `per_prompt` completions per step vs `small` ×
/// `per_prompt`, `steps` steps each, run directories under `work`.
pub fn measure(
    config: &Path,
    set: &[String],
    work: &Path,
    (prompts, small, per_prompt): (usize, usize, usize),
    steps: usize,
    quiet: bool,
) -> Result<NoiseScale> {
    anyhow::ensure!(
        small >= 1 && small < prompts && per_prompt >= 2 && steps >= 2,
        "noise-scale: need 1 ≤ --small < --prompts, --per-prompt ≥ 2 and --steps ≥ 2"
    );
    let t = std::time::Instant::now();
    let mut per_step: Vec<Vec<f64>> = Vec::new();
    let mut informative = 0.0;
    for (label, m) in [("big", prompts), ("small", small)] {
        let mut s = set.to_vec();
        s.extend([
            "curriculum.strategy=grpo".to_string(),
            "train.lr=1e-30".into(),
            "train.mini_batches=1".into(),
            "iterations.subsets=1".into(),
            format!("iterations.steps={steps}"),
            "run.eval_every=0".into(),
            format!("batch.prompts={m}"),
            format!("batch.budget={}", m * per_prompt),
            format!("curriculum.n_max={per_prompt}"),
            format!("name=noise-{label}"),
        ]);
        let cfg = Config::load(config, &s)?;
        let dir = work.join(label);
        run(RunOptions {
            config: cfg,
            out: Some(dir.clone()),
            resume: false,
            overwrite: true,
            quiet,
        })
        .with_context(|| format!("noise-scale: the {label} batch's run"))?;
        let rows: Vec<StepRow> = crate::rundir::read_csv(&dir.join("steps.csv"))?;
        anyhow::ensure!(!rows.is_empty(), "noise-scale: {label} run made no steps");
        if label == "big" {
            informative = rows
                .iter()
                .map(|r| 1.0 - r.zero_var_group_frac)
                .sum::<f64>()
                / rows.len() as f64;
        }
        per_step.push(rows.iter().map(|r| r.grad_norm * r.grad_norm).collect());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sq = [mean(&per_step[0]), mean(&per_step[1])];
    let (big, sm) = (prompts * per_prompt, small * per_prompt);
    let (g2, tr) = estimate(big as f64, sq[0], sm as f64, sq[1]);
    let (lo, hi) = bootstrap(big as f64, &per_step[0], sm as f64, &per_step[1]);
    Ok(NoiseScale {
        big,
        small: sm,
        steps,
        sq_norm_big: sq[0],
        sq_norm_small: sq[1],
        true_sq_norm: g2,
        trace_sigma: tr,
        noise_scale: if g2 > 0.0 { tr / g2 } else { f64::NAN },
        noise_scale_lo: lo,
        noise_scale_hi: hi,
        informative_frac: informative,
        informative_per_step: big as f64 * informative,
        wall_s: t.elapsed().as_secs_f64(),
    })
}

/// The 95% percentile bootstrap interval of B from per-step squared norms (an unresolved |G|²
/// counts as B = +∞).
pub fn bootstrap(b_big: f64, big: &[f64], b_small: f64, small: &[f64]) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let draw = |v: &[f64], rng: &mut rand_chacha::ChaCha8Rng| {
        (0..v.len())
            .map(|_| v[rng.random_range(0..v.len())])
            .sum::<f64>()
            / v.len() as f64
    };
    let mut bs: Vec<f64> = (0..2000)
        .map(|_| {
            let (g2, tr) = estimate(b_big, draw(big, &mut rng), b_small, draw(small, &mut rng));
            if g2 > 0.0 {
                tr / g2
            } else {
                f64::INFINITY
            }
        })
        .collect();
    bs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let x = bs[((bs.len() - 1) as f64 * q).round() as usize];
        if x.is_finite() {
            x
        } else {
            f64::NAN
        }
    };
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_batch_estimator_recovers_known_values() {
        // |G|² = 2, tr(Σ) = 300: E|G_B|² = 2 + 300/B.
        let s = |b: f64| 2.0 + 300.0 / b;
        let (g2, tr) = estimate(128.0, s(128.0), 16.0, s(16.0));
        assert!(
            (g2 - 2.0).abs() < 1e-9 && (tr - 300.0).abs() < 1e-9,
            "{g2} {tr}"
        );
        assert!((tr / g2 - 150.0).abs() < 1e-6);
        // Steps without spread: the bootstrap interval is the point.
        let (lo, hi) = bootstrap(128.0, &[s(128.0); 5], 16.0, &[s(16.0); 5]);
        assert!(
            (lo - 150.0).abs() < 1e-6 && (hi - 150.0).abs() < 1e-6,
            "{lo} {hi}"
        );
        // Spread widens it around the point.
        let (lo, hi) = bootstrap(
            128.0,
            &[s(128.0) * 0.9, s(128.0) * 1.1, s(128.0)],
            16.0,
            &[s(16.0) * 0.9, s(16.0) * 1.1, s(16.0)],
        );
        assert!(lo < 150.0 && hi > 150.0, "{lo} {hi}");
    }
}
