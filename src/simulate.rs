//! `cures simulate`: run any strategy against synthetic prompts whose true accuracies are known,
//! to tune τ, N and n_min before spending GPU hours.
//!
//! Each prompt's true accuracy is drawn from a mixture (Beta shapes and point masses at 0 or 1).
//! A group of n rollouts of prompt i succeeds s ~ Binomial(n, p_i) times. Learning is modelled by
//! a drift: each completion of an informative (mixed-reward) group raises that prompt's logit
//! by `simulate.drift`, so the posterior goes stale the way it does in real training.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Binomial, Distribution};
use serde::Serialize;

use crate::config::Config;
use crate::curriculum::{Curriculum, CurriculumError};

/// One simulated step (a row of `sim_steps.csv`).
#[derive(Debug, Clone, Serialize)]
pub struct SimStep {
    /// Step index (0-based).
    pub step: u64,
    /// Iteration index.
    pub iteration: u64,
    /// Distinct prompts in the batch.
    pub distinct_prompts: usize,
    /// Completions generated in the step (= batch.budget).
    pub completions: u64,
    /// Completions in groups whose rewards were all equal (no gradient).
    pub wasted_completions: u64,
    /// wasted / completions.
    pub wasted_fraction: f64,
    /// Fraction of groups with all-equal rewards.
    pub zero_var_group_frac: f64,
    /// Mean reward over the step's completions.
    pub mean_reward: f64,
    /// Mean |p̂ − p| over the current pool before the step.
    pub posterior_mae: f64,
    /// Mean |p̂ − p| over the batch's prompts before the step.
    pub batch_mae: f64,
    /// H(ρ) in nats.
    pub rho_entropy: f64,
    /// Mean p̂ of the batch (per group).
    pub mean_p_hat: f64,
    /// Mean true accuracy of the pool after the step.
    pub pool_true_acc: f64,
    /// Smallest, mean and largest n_i.
    pub n_min: u32,
    /// Mean n_i over groups.
    pub n_mean: f64,
    /// Largest n_i.
    pub n_max: u32,
    /// Cumulative training completions.
    pub cum_completions: u64,
    /// Cumulative pre-rollouts (init stage).
    pub cum_init_completions: u64,
}

/// Totals of a simulation (printed, and the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct SimSummary {
    /// Strategy name.
    pub strategy: String,
    /// Steps simulated.
    pub steps: u64,
    /// Training completions (Σ over steps).
    pub completions: u64,
    /// Pre-rollouts spent by init stages.
    pub init_completions: u64,
    /// Completions in zero-variance groups / all training completions.
    pub wasted_fraction: f64,
    /// Mean over steps of the pool's mean |p̂ − p|.
    pub posterior_mae: f64,
    /// Mean over steps of the batch's mean |p̂ − p|.
    pub batch_mae: f64,
    /// Mean H(ρ) over steps.
    pub rho_entropy: f64,
    /// Mean true accuracy over all prompts at the start.
    pub true_acc_start: f64,
    /// Mean true accuracy over all prompts at the end (learning under drift).
    pub true_acc_end: f64,
}

/// Result of [`simulate`].
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Per-step rows.
    pub steps: Vec<SimStep>,
    /// Totals.
    pub summary: SimSummary,
    /// Final per-prompt rows, with the true accuracy.
    pub prompts: Vec<SimPrompt>,
}

/// Per-prompt row of the simulation's `prompts.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct SimPrompt {
    /// Prompt id.
    pub id: u32,
    /// True accuracy at the end.
    pub p_true: f64,
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// Posterior mean.
    pub p_hat: f64,
    /// ρ in the last pool (0 outside it).
    pub rho: f64,
    /// Steps that drew it.
    pub times_sampled: u32,
    /// Rollouts at the last draw.
    pub last_n: u32,
}

fn sample_accuracies(config: &Config, rng: &mut ChaCha8Rng) -> Result<Vec<f64>, String> {
    let sim = &config.simulate;
    let total_w: f64 = sim.difficulty.iter().map(|d| d.weight).sum();
    let mut betas = Vec::with_capacity(sim.difficulty.len());
    for (i, d) in sim.difficulty.iter().enumerate() {
        betas.push(match d.value {
            Some(_) => None,
            None => Some(
                Beta::new(d.alpha, d.beta).map_err(|e| format!("simulate.difficulty[{i}]: {e}"))?,
            ),
        });
    }
    Ok((0..sim.prompts)
        .map(|_| {
            let mut u = rng.random::<f64>() * total_w;
            let mut k = sim.difficulty.len() - 1;
            for (j, d) in sim.difficulty.iter().enumerate() {
                if u < d.weight {
                    k = j;
                    break;
                }
                u -= d.weight;
            }
            match (&betas[k], sim.difficulty[k].value) {
                (_, Some(v)) => v,
                (Some(b), None) => b.sample(rng),
                (None, None) => 0.5,
            }
        })
        .collect())
}

fn binomial(n: u32, p: f64, rng: &mut ChaCha8Rng) -> u32 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    match Binomial::new(u64::from(n), p) {
        Ok(b) => b.sample(rng) as u32,
        Err(_) => (0..n).filter(|_| rng.random::<f64>() < p).count() as u32,
    }
}

fn drift_up(p: f64, amount: f64) -> f64 {
    if p <= 0.0 || p >= 1.0 || amount == 0.0 {
        return p;
    }
    let logit = (p / (1.0 - p)).ln() + amount;
    (1.0 / (1.0 + (-logit).exp())).clamp(1e-9, 1.0 - 1e-9)
}

/// Run the configured strategy for `simulate.steps` steps (default T·M). `on_step` is called
/// after every step (progress reporting).
pub fn simulate(config: &Config, mut on_step: impl FnMut(&SimStep)) -> anyhow::Result<Simulation> {
    let mut world_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x51_u64);
    let mut p_true = sample_accuracies(config, &mut world_rng).map_err(anyhow::Error::msg)?;
    let true_acc_start = p_true.iter().sum::<f64>() / p_true.len() as f64;
    let mut cur = Curriculum::new(config, p_true.len())?;
    let total_steps = config
        .simulate
        .steps
        .unwrap_or(config.iterations.subsets * config.iterations.steps)
        as u64;
    let drift = config.simulate.drift;
    let mut rows = Vec::with_capacity(total_steps as usize);
    let mut cum = 0u64;
    let mut cum_init = 0u64;
    for _ in 0..total_steps {
        if cur.iteration_due() {
            let it = cur.begin_iteration();
            let outcomes: Vec<(u32, u32, u32)> = it
                .init_prompts
                .iter()
                .map(|&g| {
                    let s = binomial(it.init_rollouts, p_true[g as usize], &mut world_rng);
                    (g, s, it.init_rollouts)
                })
                .collect();
            cum_init += outcomes.len() as u64 * u64::from(it.init_rollouts);
            cur.observe_init(&outcomes)?;
        }
        let pool_mae = {
            let s = cur.sampler();
            let post = cur.posterior();
            let pool = s.pool();
            pool.iter()
                .map(|&g| (post.mean(g as usize) - p_true[g as usize]).abs())
                .sum::<f64>()
                / pool.len().max(1) as f64
        };
        let plan = cur.plan_step()?;
        let mut successes = Vec::with_capacity(plan.groups.len());
        let (mut wasted, mut zero_var_groups, mut reward_sum) = (0u64, 0usize, 0u64);
        let mut batch_mae = 0.0;
        for g in &plan.groups {
            let p = p_true[g.prompt as usize];
            batch_mae += (cur.posterior().mean(g.prompt as usize) - p).abs();
            let s = binomial(g.n, p, &mut world_rng);
            successes.push(s);
            reward_sum += u64::from(s);
            if g.n > 0 && (s == 0 || s == g.n) {
                wasted += u64::from(g.n);
                zero_var_groups += 1;
            }
            if g.n > 0 && s > 0 && s < g.n {
                p_true[g.prompt as usize] = drift_up(p, drift * f64::from(g.n));
            }
        }
        cur.observe_step(&plan, &successes)
            .map_err(|e: CurriculumError| anyhow::anyhow!(e))?;
        let completions = plan.completions();
        cum += completions;
        let groups = plan.groups.len().max(1);
        let pool = cur.sampler().pool();
        let row = SimStep {
            step: plan.step,
            iteration: plan.iteration,
            distinct_prompts: plan.groups.len(),
            completions,
            wasted_completions: wasted,
            wasted_fraction: wasted as f64 / completions.max(1) as f64,
            zero_var_group_frac: zero_var_groups as f64 / groups as f64,
            mean_reward: reward_sum as f64 / completions.max(1) as f64,
            posterior_mae: pool_mae,
            batch_mae: batch_mae / groups as f64,
            rho_entropy: plan.rho_entropy,
            mean_p_hat: plan.groups.iter().map(|g| g.p_hat).sum::<f64>() / groups as f64,
            pool_true_acc: pool.iter().map(|&g| p_true[g as usize]).sum::<f64>()
                / pool.len().max(1) as f64,
            n_min: plan.groups.iter().map(|g| g.n).min().unwrap_or(0),
            n_mean: completions as f64 / groups as f64,
            n_max: plan.groups.iter().map(|g| g.n).max().unwrap_or(0),
            cum_completions: cum,
            cum_init_completions: cum_init,
        };
        on_step(&row);
        rows.push(row);
    }
    let n = rows.len().max(1) as f64;
    let wasted: u64 = rows.iter().map(|r| r.wasted_completions).sum();
    let summary = SimSummary {
        strategy: config.curriculum.strategy.to_string(),
        steps: rows.len() as u64,
        completions: cum,
        init_completions: cum_init,
        wasted_fraction: wasted as f64 / cum.max(1) as f64,
        posterior_mae: rows.iter().map(|r| r.posterior_mae).sum::<f64>() / n,
        batch_mae: rows.iter().map(|r| r.batch_mae).sum::<f64>() / n,
        rho_entropy: rows.iter().map(|r| r.rho_entropy).sum::<f64>() / n,
        true_acc_start,
        true_acc_end: p_true.iter().sum::<f64>() / p_true.len() as f64,
    };
    let prompts = cur
        .prompt_rows()
        .into_iter()
        .map(|r| SimPrompt {
            id: r.id,
            p_true: p_true[r.id as usize],
            alpha: r.alpha,
            beta: r.beta,
            p_hat: r.p_hat,
            rho: r.rho,
            times_sampled: r.times_sampled,
            last_n: r.last_n,
        })
        .collect();
    Ok(Simulation {
        steps: rows,
        summary,
        prompts,
    })
}

/// Write `sim_steps.csv`, `prompts.csv` and `summary.json` into `dir` (created), atomically.
pub fn write_outputs(
    sim: &Simulation,
    config: &Config,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::metrics::write_csv_atomic(&dir.join("sim_steps.csv"), &sim.steps)?;
    crate::metrics::write_csv_atomic(&dir.join("prompts.csv"), &sim.prompts)?;
    crate::metrics::write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&sim.summary)?.as_bytes(),
    )?;
    crate::metrics::write_atomic(&dir.join("config.toml"), config.to_toml().as_bytes())?;
    Ok(())
}
