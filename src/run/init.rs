//! `cures init`: stage 0 of Algorithm 1 on its own.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{device_of, encode_prompt, load_dataset, make_engine, seed_for};
use crate::config::Config;
use crate::metrics::{write_atomic, write_csv_atomic as write_csv};
use crate::policy::{parse_kind, Policy};
use crate::reward;
use crate::rollout::RolloutRequest;
use crate::train::GradRollout;

/// One row of `init.csv`: a prompt's stage-0 outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRow {
    /// Prompt id.
    pub id: String,
    /// Level, when the dataset has levels.
    pub level: Option<u32>,
    /// Correct pre-rollouts.
    pub successes: u32,
    /// Pre-rollouts (N').
    pub rollouts: u32,
    /// Posterior mean after the pre-rollouts.
    pub p_hat: f64,
    /// Bernoulli σ = √(p̂(1−p̂)).
    pub sigma_bernoulli: f64,
    /// Gradient σ (Eq. 21) when `curriculum.sigma = "gradient"`, else empty.
    pub sigma_gradient: Option<f64>,
    /// E‖G‖² over correct rollouts (gradient estimator only).
    pub sq_norm_correct: Option<f64>,
    /// E‖G‖² over wrong rollouts (gradient estimator only).
    pub sq_norm_wrong: Option<f64>,
}

/// What `cures init` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InitSummary {
    /// Prompts rolled out.
    pub prompts: usize,
    /// Completions generated.
    pub completions: usize,
    /// Mean accuracy over all pre-rollouts.
    pub accuracy: f64,
    /// Prompts never solved.
    pub never_solved: usize,
    /// Prompts always solved.
    pub always_solved: usize,
    /// Wall seconds.
    pub wall_s: f64,
}

/// `cures init`: stage 0 of Algorithm 1 on its own — N' rollouts of every prompt of the dataset
/// (`iterations.init_rollouts`), the posterior after them and, with `curriculum.sigma =
/// "gradient"`, the per-prompt gradient class statistics. Writes `init.csv` and the posterior
/// (`init_posterior.json`) to `out`: a map of the dataset's difficulty for this model.
pub fn init(cfg: &Config, out: &Path, quiet: bool) -> Result<InitSummary> {
    let t0 = Instant::now();
    let n = cfg.iterations.init_rollouts;
    if n == 0 {
        bail!("iterations.init_rollouts is 0: nothing to roll out (set it, e.g. --set iterations.init_rollouts=4)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let train = load_dataset(&cfg.data.train, cfg, false)
        .with_context(|| format!("data.train = {:?}", cfg.data.train))?;
    let policy = Policy::load(
        Path::new(&cfg.model.path),
        device_of(cfg)?,
        parse_kind(&cfg.model.dtype)?,
    )
    .with_context(|| format!("model.path = {}", cfg.model.path))?;
    let mut engine = make_engine(cfg, &policy)?;
    let prior = crate::curriculum::BetaPrior {
        alpha: cfg.curriculum.prior_alpha,
        beta: cfg.curriculum.prior_beta,
    };
    let mut posterior = crate::curriculum::Posterior::new(train.len(), prior, 1.0);
    let mut rows = Vec::with_capacity(train.len());
    let bar = crate::metrics::progress_bar(train.len() as u64, "init", !quiet);
    let (mut completions, mut correct_total) = (0usize, 0usize);
    // Chunks keep memory bounded and the progress bar moving.
    for (chunk_no, chunk) in (0..train.len()).collect::<Vec<_>>().chunks(256).enumerate() {
        let requests: Vec<RolloutRequest> = chunk
            .iter()
            .map(|&i| {
                Ok(RolloutRequest {
                    prompt_ids: encode_prompt(&policy, cfg, &train[i].problem)?,
                    n,
                    seed: seed_for(cfg.seed, u64::MAX, (chunk_no as u64) << 32 | i as u64),
                })
            })
            .collect::<Result<_>>()?;
        let comps = engine.generate(&requests, &cfg.rollout)?;
        let correct: Vec<bool> = comps
            .iter()
            .map(|c| {
                reward::score(&c.text, &train[chunk[c.request]].answer, &cfg.reward).equivalent
            })
            .collect();
        completions += comps.len();
        correct_total += correct.iter().filter(|&&c| c).count();
        for (k, &i) in chunk.iter().enumerate() {
            let s = comps
                .iter()
                .zip(&correct)
                .filter(|(c, &ok)| c.request == k && ok)
                .count() as u32;
            posterior.observe(i, s, n as u32);
            let p = posterior.mean(i);
            let mut row = InitRow {
                id: train[i].id.clone(),
                level: train[i].level,
                successes: s,
                rollouts: n as u32,
                p_hat: p,
                sigma_bernoulli: crate::curriculum::allocation::sigma_bernoulli(p),
                sigma_gradient: None,
                sq_norm_correct: None,
                sq_norm_wrong: None,
            };
            if cfg.curriculum.sigma == crate::config::SigmaKind::Gradient {
                let rollouts: Vec<GradRollout<'_>> = comps
                    .iter()
                    .zip(&correct)
                    .filter(|(c, _)| c.request == k)
                    .map(|(c, &ok)| GradRollout {
                        prompt: &requests[k].prompt_ids,
                        completion: &c.token_ids,
                        correct: ok,
                    })
                    .collect();
                let st = crate::train::gradient_class_stats(
                    &policy,
                    &cfg.train.grad_stat_params,
                    &rollouts,
                )?;
                let fallback = st
                    .sq_norm_correct
                    .or(st.sq_norm_wrong)
                    .unwrap_or(0.0)
                    .sqrt();
                row.sigma_gradient = Some(crate::curriculum::allocation::sigma_gradient(
                    p, &st, fallback,
                ));
                row.sq_norm_correct = st.sq_norm_correct;
                row.sq_norm_wrong = st.sq_norm_wrong;
            }
            rows.push(row);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_csv(&out.join("init.csv"), &rows)?;
    write_atomic(
        &out.join("init_posterior.json"),
        &serde_json::to_vec(&posterior)?,
    )?;
    Ok(InitSummary {
        prompts: train.len(),
        completions,
        accuracy: correct_total as f64 / completions.max(1) as f64,
        never_solved: rows.iter().filter(|r| r.successes == 0).count(),
        always_solved: rows.iter().filter(|r| r.successes == r.rollouts).count(),
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
