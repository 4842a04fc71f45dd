//! The typed rows of the run directory's CSV files, shared by `run`, `plot` and `study`.

use serde::{Deserialize, Serialize};

/// One row of `steps.csv` (docs/algorithm.md §9).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRow {
    /// Step (1-based: the number of updates applied after it).
    pub step: u64,
    /// Iteration (0-based).
    pub iteration: u64,
    /// Prompts drawn (m, before merging duplicates).
    pub prompts: usize,
    /// Distinct prompts.
    pub distinct_prompts: usize,
    /// Completions generated (= N).
    pub completions: u64,
    /// Prompt tokens over all completions.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Mean reward.
    pub mean_reward: f64,
    /// Fraction of completions judged correct.
    pub accuracy: f64,
    /// Fraction of groups whose rewards were all equal (no gradient).
    pub zero_var_group_frac: f64,
    /// Smallest n_i.
    pub n_min: u32,
    /// Mean n_i.
    pub n_mean: f64,
    /// Largest n_i.
    pub n_max: u32,
    /// H(ρ), nats.
    pub rho_entropy: f64,
    /// Mean p̂ of the batch (before this step's update).
    pub mean_p_hat: f64,
    /// Token-mean PPO loss.
    pub loss: f64,
    /// Token-mean k3 KL to the reference.
    pub kl: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Fraction of clipped tokens.
    pub clip_frac: f64,
    /// Mean policy entropy over trained tokens.
    pub entropy: f64,
    /// Learning rate.
    pub lr: f64,
    /// Seconds: iteration start (pre-rollouts), when this step began one.
    pub sec_init: f64,
    /// Seconds: sampling + allocation.
    pub sec_sample: f64,
    /// Seconds: generation.
    pub sec_generate: f64,
    /// Seconds: scoring.
    pub sec_reward: f64,
    /// Seconds: policy update.
    pub sec_train: f64,
    /// Seconds: weight sync.
    pub sec_sync: f64,
    /// Weight version after the sync.
    pub weight_version: u64,
    /// Cumulative training completions.
    pub cum_completions: u64,
    /// Cumulative completion tokens.
    pub cum_tokens: u64,
    /// Cumulative pre-rollouts (init stage).
    pub cum_init_completions: u64,
    /// Completions discarded as staler than `rollout.max_staleness` (and regenerated).
    #[serde(default)]
    pub stale_completions: u64,
    /// Prompts of the batch the servers refused (HTTP 4xx), skipped for the step.
    #[serde(default)]
    pub skipped_prompts: u64,
    /// Seconds of this step's publish writing the checkpoint / adapter (server sync only).
    #[serde(default)]
    pub sync_write_s: f64,
    /// Seconds of the server's reload calls.
    #[serde(default)]
    pub sync_load_s: f64,
    /// Seconds of the served-vs-trained log-prob probe.
    #[serde(default)]
    pub sync_verify_s: f64,
    /// Drawn prompts that got no completions because their σ is 0 (`curriculum.zero_sigma =
    /// "skip"`); when the others could not take the whole budget, `completions` is below N.
    #[serde(default)]
    pub zero_sigma_prompts: u64,
    /// Cumulative pre-rollout completion tokens (init stage).
    #[serde(default)]
    pub cum_init_tokens: u64,
    /// Every completion generated so far, training and pre-rollouts: the run's compute.
    #[serde(default)]
    pub cum_generated_completions: u64,
    /// Every completion token generated so far, training and pre-rollouts.
    #[serde(default)]
    pub cum_generated_tokens: u64,
}

/// One row of `eval.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    /// Steps done when evaluated.
    pub step: u64,
    /// Training completions spent so far.
    pub cum_completions: u64,
    /// Every completion generated so far (training and pre-rollouts): the cost axis.
    #[serde(default)]
    pub cum_generated_completions: u64,
    /// Benchmark name (`heldout`, `heldout/L3`, or the file stem).
    pub benchmark: String,
    /// Problems evaluated.
    pub problems: usize,
    /// Greedy pass@1.
    pub accuracy: f64,
    /// Mean teacher-forced probability of the correct answer (`run.eval_answer_template`;
    /// empty when off or in runs from before it).
    #[serde(default)]
    pub answer_prob: Option<f64>,
}

/// One row of `prompts.csv` (posterior trace).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptTraceRow {
    /// Steps done when traced.
    pub step: u64,
    /// Prompt id.
    pub id: String,
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// Posterior mean.
    pub p_hat: f64,
    /// Sampling probability.
    pub rho: f64,
    /// Times sampled.
    pub times_sampled: u32,
    /// Last n_i.
    pub last_n: u32,
}
