//! The stages of one step, each handing a typed value to the next:
//! sample → allocate (the curriculum's plan) → generate → score → observe → advantages → update
//! → publish. `iteration_start` is stage 0 (pre-rollouts) at the start of an iteration.

use anyhow::{Context, Result};

use super::{Counters, StepRow};
use crate::config::Config;
use crate::curriculum::{Curriculum, StepPlan};
use crate::data::Example;
use crate::policy::Policy;
use crate::reward;
use crate::rollout::{Completion, RolloutEngine, RolloutRequest};
use crate::rundir::schema::PromptTraceRow;
use crate::train::{GradRollout, GroupRewards, Sample};

/// The prompts of a run with their encodings.
pub(crate) struct Prompts<'a> {
    pub train: &'a [Example],
    pub ids: &'a [Vec<i64>],
}

/// Generated completions with the requests they answer.
pub(crate) struct Generated {
    pub requests: Vec<RolloutRequest>,
    pub comps: Vec<Completion>,
    pub stale: u64,
    /// Requests the servers refused (they got no completions and sit this step out).
    pub skipped: Vec<usize>,
}

/// Generate: `n` completions for each `(prompt, n)`; request `k`'s seed derives from
/// (run seed, step, `salt | k`).
pub(crate) fn generate(
    engine: &mut dyn RolloutEngine,
    cfg: &Config,
    prompts: &Prompts<'_>,
    groups: impl Iterator<Item = (u32, usize)>,
    step: u64,
    salt: u64,
) -> Result<Generated> {
    let requests: Vec<RolloutRequest> = groups
        .enumerate()
        .map(|(k, (p, n))| RolloutRequest {
            prompt_ids: prompts.ids[p as usize].clone(),
            n,
            seed: seed_for(cfg.seed, step, salt | k as u64),
        })
        .collect();
    let what = || {
        let n: usize = requests.iter().map(|r| r.n).sum();
        let longest = requests
            .iter()
            .map(|r| r.prompt_ids.len())
            .max()
            .unwrap_or(0);
        format!(
            "{} prompts, {n} completions of up to {longest} prompt + {} new tokens; \
             rollout.max_batch = {}",
            requests.len(),
            cfg.rollout.max_tokens,
            cfg.rollout.max_batch
        )
    };
    let comps = crate::fault::scope(crate::fault::Phase::Generate, what, || {
        engine.generate(&requests, &cfg.rollout)
    })?;
    let stale = engine.last_stats().stale_completions;
    let skipped = engine.last_skipped().to_vec();
    Ok(Generated {
        requests,
        comps,
        stale,
        skipped,
    })
}

/// Scored completions of a step.
pub(crate) struct Scored {
    pub verdicts: Vec<reward::Verdict>,
    pub successes: Vec<u32>,
    pub groups: Vec<GroupRewards>,
}

/// Score every completion against its prompt's gold answer.
pub(crate) fn score(cfg: &Config, prompts: &Prompts<'_>, plan: &StepPlan, g: &Generated) -> Scored {
    let verdicts: Vec<reward::Verdict> = g
        .comps
        .iter()
        .map(|c| {
            let p = plan.groups[c.request].prompt as usize;
            reward::score(&c.text, &prompts.train[p].answer, &cfg.reward)
        })
        .collect();
    let mut successes = vec![0u32; plan.groups.len()];
    let mut groups: Vec<GroupRewards> = plan
        .groups
        .iter()
        .map(|g| GroupRewards {
            rewards: Vec::new(),
            tokens: Vec::new(),
            p_hat: g.p_hat,
        })
        .collect();
    for (c, v) in g.comps.iter().zip(&verdicts) {
        successes[c.request] += u32::from(v.equivalent);
        let gr = &mut groups[c.request];
        gr.rewards.push(v.reward);
        gr.tokens.push(c.token_ids.len());
    }
    Scored {
        verdicts,
        successes,
        groups,
    }
}

/// The training samples: each completion with its group-relative advantage.
pub(crate) fn samples(g: &Generated, adv: &[Vec<f64>]) -> Vec<Sample> {
    let mut next = vec![0usize; g.requests.len()];
    g.comps
        .iter()
        .map(|c| {
            let k = next[c.request];
            next[c.request] += 1;
            Sample {
                prompt: g.requests[c.request].prompt_ids.clone(),
                completion: c.token_ids.clone(),
                advantage: adv[c.request][k],
            }
        })
        .collect()
}

/// Stage 0 of an iteration: N' pre-rollouts of its prompts (not trained on) observed by the
/// posterior, with the gradient-σ statistics when σ is the gradient estimator. Returns the
/// completions generated, the stale ones regenerated and the completion tokens.
pub(crate) fn iteration_start(
    engine: &mut dyn RolloutEngine,
    cfg: &Config,
    policy: &Policy,
    prompts: &Prompts<'_>,
    cur: &mut Curriculum,
    counters: &Counters,
) -> Result<(u64, u64, u64)> {
    let it = cur.begin_iteration();
    if it.init_prompts.is_empty() {
        return Ok((0, 0, 0));
    }
    let n = it.init_rollouts as usize;
    let groups = it.init_prompts.iter().map(|&p| (p, n));
    let g = generate(engine, cfg, prompts, groups, counters.step, 1 << 40)?;
    let mut succ = vec![0u32; g.requests.len()];
    let correct: Vec<bool> = g
        .comps
        .iter()
        .map(|c| {
            let p = it.init_prompts[c.request] as usize;
            let ok = reward::score(&c.text, &prompts.train[p].answer, &cfg.reward).equivalent;
            succ[c.request] += u32::from(ok);
            ok
        })
        .collect();
    let outcomes: Vec<(u32, u32, u32)> = it
        .init_prompts
        .iter()
        .zip(&succ)
        .enumerate()
        .filter(|(k, _)| !g.skipped.contains(k))
        .map(|(_, (&p, &s))| (p, s, it.init_rollouts))
        .collect();
    cur.observe_init(&outcomes)?;
    if cfg.curriculum.sigma == crate::config::SigmaKind::Gradient {
        let what = || format!("gradient-σ statistics of {} prompts", it.init_prompts.len());
        crate::fault::scope(crate::fault::Phase::Logprobs, what, || {
            update_gradient_stats(policy, cfg, cur, &it.init_prompts, &g, &correct)
        })?;
    }
    let tokens = g.comps.iter().map(|c| c.token_ids.len() as u64).sum();
    Ok((g.comps.len() as u64, g.stale, tokens))
}

/// Per-prompt gradient class statistics (Eq. 21) from scored rollouts of `prompts`.
pub(crate) fn update_gradient_stats(
    policy: &Policy,
    cfg: &Config,
    cur: &mut Curriculum,
    prompts: &[u32],
    g: &Generated,
    correct: &[bool],
) -> Result<()> {
    for (k, &p) in prompts.iter().enumerate() {
        let rollouts: Vec<GradRollout<'_>> = g
            .comps
            .iter()
            .zip(correct)
            .filter(|(c, _)| c.request == k)
            .map(|(c, &ok)| GradRollout {
                prompt: &g.requests[k].prompt_ids,
                completion: &c.token_ids,
                correct: ok,
            })
            .collect();
        let stats =
            crate::train::gradient_class_stats(policy, &cfg.train.grad_stat_params, &rollouts)
                .context("gradient-σ statistics")?;
        cur.gradient_stats_mut()
            .insert(p, stats, rollouts.len() as u64);
    }
    Ok(())
}

/// The `rollouts.jsonl` lines of a step (the first `run.log_rollouts` completions).
pub(crate) fn rollout_lines(
    cfg: &Config,
    prompts: &Prompts<'_>,
    plan: &StepPlan,
    g: &Generated,
    s: &Scored,
    step: u64,
) -> Result<Vec<String>> {
    g.comps
        .iter()
        .zip(&s.verdicts)
        .take(cfg.run.log_rollouts)
        .map(|(c, v)| {
            let e = &prompts.train[plan.groups[c.request].prompt as usize];
            Ok(serde_json::to_string(&serde_json::json!({
                "step": step,
                "prompt_id": e.id,
                "problem": e.problem,
                "answer": e.answer,
                "completion": c.text,
                "extracted": v.extracted,
                "reward": v.reward,
                "equivalent": v.equivalent,
                "finish_reason": c.finish_reason,
                "weight_version": c.weight_version,
            }))?)
        })
        .collect()
}

/// A per-request sampling seed from (run seed, step, request).
pub(crate) fn seed_for(seed: u64, step: u64, k: u64) -> u64 {
    let mut x =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}
/// The step's figures from its plan, completions and rewards.
pub(crate) fn fill_row(
    row: &mut StepRow,
    plan: &StepPlan,
    comps: &[Completion],
    requests: &[RolloutRequest],
    groups: &[GroupRewards],
    successes: &[u32],
) {
    row.prompts = plan.draws;
    let live: Vec<usize> = (0..plan.groups.len())
        .filter(|&i| plan.groups[i].n > 0)
        .collect();
    row.distinct_prompts = live.len();
    row.completions = comps.len() as u64;
    row.prompt_tokens = comps
        .iter()
        .map(|c| requests[c.request].prompt_ids.len() as u64)
        .sum();
    row.completion_tokens = comps.iter().map(|c| c.token_ids.len() as u64).sum();
    let rewards: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.rewards.iter().copied())
        .collect();
    row.mean_reward = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    row.accuracy = successes.iter().map(|&s| f64::from(s)).sum::<f64>() / comps.len().max(1) as f64;
    let zero_var = live
        .iter()
        .filter(|&&i| groups[i].rewards.iter().all(|&r| r == groups[i].rewards[0]))
        .count();
    row.zero_var_group_frac = zero_var as f64 / live.len().max(1) as f64;
    let ns: Vec<u32> = live.iter().map(|&i| plan.groups[i].n).collect();
    row.n_min = ns.iter().copied().min().unwrap_or(0);
    row.n_max = ns.iter().copied().max().unwrap_or(0);
    row.n_mean = ns.iter().map(|&n| f64::from(n)).sum::<f64>() / ns.len().max(1) as f64;
    row.rho_entropy = plan.rho_entropy;
    row.zero_sigma_prompts = u64::from(plan.zero_sigma);
    row.mean_p_hat =
        live.iter().map(|&i| plan.groups[i].p_hat).sum::<f64>() / live.len().max(1) as f64;
}

/// The `prompts.csv` rows of a trace: every prompt that can be drawn or has been.
pub(crate) fn trace_rows(cur: &Curriculum, train: &[Example], step: u64) -> Vec<PromptTraceRow> {
    let mut trace = Vec::new();
    for r in cur.prompt_rows() {
        if r.rho <= 0.0 && r.times_sampled == 0 {
            continue;
        }
        trace.push(PromptTraceRow {
            step,
            id: train[r.id as usize].id.clone(),
            alpha: r.alpha,
            beta: r.beta,
            p_hat: r.p_hat,
            rho: r.rho,
            times_sampled: r.times_sampled,
            last_n: r.last_n,
        });
    }
    trace
}
