//! One TOML schema for every command: typed, defaulted, validated.
//!
//! A config file is read with [`Config::load`], which parses the TOML (errors carry the file,
//! line and key), applies `--set key=value` overrides, fills defaults and validates the
//! combination (errors name the key and the reason). `cures check --config FILE` prints the
//! resolved result. Later subsystems add their own sections here.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Paper's scale (docs/algorithm.md §1): m = 1024 prompts, N = 8192 completions per step.
const DEFAULT_PROMPTS: usize = 1024;
const DEFAULT_BUDGET: usize = 8192;

/// A configuration error that names the offending key (or file) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    // The cause is in the message and not also a `source`, so `{:#}` prints it once.
    #[error("cannot read config {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    /// TOML syntax or schema error (unknown key, wrong type); the message carries line/column.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A `--set` override that is not `key=value` or cannot be applied.
    #[error("--set {spec}: {reason}")]
    Override { spec: String, reason: String },
    /// A value (or combination of values) that is out of range.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// serde's "unknown field `x`, expected one of `a`, `b`" with the nearest known key named
/// ("did you mean `problem_key`?") when one is close (about a third of its letters differ).
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message.to_string();
    };
    let Some((unknown, rest)) = rest.split_once('`') else {
        return message.to_string();
    };
    let known: Vec<&str> = rest
        .split("expected one of ")
        .nth(1)
        .or_else(|| rest.split("expected ").nth(1))
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .split(", ")
        .map(|k| k.trim().trim_matches('`'))
        .filter(|k| !k.is_empty())
        .collect();
    let best = known.iter().map(|k| (edit_distance(unknown, k), *k)).min();
    match best {
        Some((d, k)) if d > 0 && d <= k.len().div_ceil(3) => {
            let hint = format!(" (did you mean `{k}`?)");
            message
                .split('\n')
                .map(|l| {
                    if l.contains("unknown field `") {
                        format!("{l}{hint}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => message.to_string(),
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The whole configuration of a cures job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run name; outputs go under `results/.../<name>/`.
    pub name: String,
    /// Master seed: every random stream of the job is derived from it.
    pub seed: u64,
    /// Per-step batch shape: prompts m and completion budget N.
    pub batch: BatchConfig,
    /// Prompt sampling, rollout allocation and posterior settings.
    pub curriculum: CurriculumConfig,
    /// Iterations over disjoint subsets (Algorithm 1) or streaming.
    pub iterations: IterationConfig,
    /// Synthetic prompt pool for `cures simulate`.
    pub simulate: SimulateConfig,
    /// The policy checkpoint and where it runs.
    pub model: ModelSection,
    /// Training and evaluation data.
    pub data: DataConfig,
    /// The generated CPU testbed (used where `data.train` / `data.eval` say `testbed`).
    pub testbed: crate::testbed::TestbedConfig,
    /// Rollout engine and sampling.
    pub rollout: crate::rollout::RolloutConfig,
    /// Optimiser and loss.
    pub train: crate::train::TrainConfig,
    /// Run length, logging, evaluation and checkpoint cadence.
    pub run: RunConfig,
    /// Supervised warm start of the testbed policy (`cures sft`).
    pub sft: SftConfig,
    /// Reward values and answer-extraction fallbacks.
    pub reward: crate::reward::RewardConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "cures".to_string(),
            seed: 0,
            batch: BatchConfig::default(),
            curriculum: CurriculumConfig::default(),
            iterations: IterationConfig::default(),
            simulate: SimulateConfig::default(),
            model: ModelSection::default(),
            data: DataConfig::default(),
            testbed: crate::testbed::TestbedConfig::default(),
            rollout: crate::rollout::RolloutConfig::default(),
            train: crate::train::TrainConfig::default(),
            run: RunConfig::default(),
            sft: SftConfig::default(),
            reward: crate::reward::RewardConfig::default(),
        }
    }
}

/// `[model]`: the policy checkpoint (HF directory) and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// HF checkpoint directory (config.json, safetensors, tokenizer.json).
    pub path: String,
    /// Parameter dtype while training: `f32` | `bf16` | `f16`.
    pub dtype: String,
    /// `auto` (CUDA when available) | `cpu` | `cuda`.
    pub device: String,
    /// dtype of saved checkpoints.
    pub save_dtype: String,
    /// `[model.lora]`: train LoRA adapters on the frozen base (unset: full fine-tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: "results/testbed/policy".to_string(),
            dtype: "f32".to_string(),
            device: "auto".to_string(),
            save_dtype: "f32".to_string(),
            lora: None,
        }
    }
}

/// `[model.lora]`: LoRA adapters (PEFT's names), kept in fp32 whatever `model.dtype` is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank r.
    pub r: i64,
    /// lora_alpha (scale = alpha / r); default r.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Modules among q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    #[serde(default = "all_projections")]
    pub target_modules: Vec<String>,
    /// Only 0 (no dropout) is implemented.
    #[serde(default)]
    pub dropout: f64,
}

fn all_projections() -> Vec<String> {
    crate::policy::ALL_TARGETS.map(str::to_string).to_vec()
}

impl LoraSection {
    /// The policy's LoRA settings.
    pub fn policy_config(&self) -> crate::policy::LoraConfig {
        crate::policy::LoraConfig {
            r: self.r,
            alpha: self.alpha.unwrap_or(self.r as f64),
            target_modules: self.target_modules.clone(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.r) {
            return Err(invalid(
                "model.lora.r",
                format!("must lie in [1, 4096], got {}", self.r),
            ));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0 && a <= 1e6) {
                return Err(invalid(
                    "model.lora.alpha",
                    format!("must lie in (0, 1e6], got {a}"),
                ));
            }
        }
        if self.dropout != 0.0 {
            return Err(invalid(
                "model.lora.dropout",
                format!("only 0 is implemented, got {}", self.dropout),
            ));
        }
        self.policy_config()
            .targets()
            .map_err(|e| invalid("model.lora.target_modules", e.to_string()))?;
        Ok(())
    }
}

/// `[data]`: the training prompts and the held-out sets. `testbed` names the generated testbed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training set: a `.jsonl` / `.json` (lines or one array) / `.csv` / `.parquet` file, a
    /// Hugging Face dataset folder (shards under `data/`), or `testbed`.
    pub train: String,
    /// Held-out sets evaluated every `run.eval_every` steps (files or `testbed`).
    pub eval: Vec<String>,
    /// At most this many problems per held-out set (0 = all).
    pub eval_max: usize,
    /// Training prompts longer than this many tokens (after the template) are dropped at load
    /// and counted; 0 = the model's context (`max_position_embeddings`) minus
    /// `rollout.max_tokens`, so every kept prompt fits with a whole completion.
    pub max_prompt_tokens: usize,
    /// The field holding the problem text.
    pub problem_key: String,
    /// The field holding the answer.
    pub answer_key: String,
    /// A field holding a worked solution whose last `\boxed{}` is the answer, for rows without
    /// `answer_key` (MATH, NuminaMath: `"solution"`); empty = none.
    pub solution_key: String,
    /// The field holding a row's id (rows without one are numbered).
    pub id_key: String,
    /// The field holding a level: an integer or a string ending in one (`"Level 3"`).
    pub level_key: String,
    /// Dataset folders: the split read for training (files `<split>.EXT` or shards
    /// `<split>-NNNNN-of-NNNNN.EXT`, matched by exact name).
    pub train_split: String,
    /// Dataset folders: the split read for the held-out sets.
    pub eval_split: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: "testbed".to_string(),
            eval: vec!["testbed".to_string()],
            eval_max: 0,
            max_prompt_tokens: 0,
            problem_key: "problem".to_string(),
            answer_key: "answer".to_string(),
            solution_key: String::new(),
            id_key: "id".to_string(),
            level_key: "level".to_string(),
            train_split: "train".to_string(),
            eval_split: "test".to_string(),
        }
    }
}

/// `[run]`: length and cadence of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Cap on the total number of steps (default: iterations.subsets × iterations.steps).
    pub steps: Option<usize>,
    /// Run directory (default `results/runs/<name>`).
    pub out: Option<String>,
    /// Held-out evaluation every k steps (and before the first and after the last; 0 = never).
    pub eval_every: usize,
    /// Sampling temperature of the held-out evaluation (0 = greedy pass@1).
    pub eval_temperature: f64,
    /// Samples per held-out problem when `eval_temperature` > 0 (accuracy = mean, avg@k).
    pub eval_samples: usize,
    /// Also score each held-out problem by the teacher-forced probability of its correct answer:
    /// this text, `{answer}` filled in, after the prompt (one forward pass per problem;
    /// `eval.csv` `answer_prob`, the mean over problems). Empty = off.
    pub eval_answer_template: String,
    /// Checkpoint every k steps (and at the end; 0 = only at the end).
    pub checkpoint_every: usize,
    /// Per-prompt posterior trace every k steps (0 = only at the end).
    pub prompts_every: usize,
    /// Completions per step copied to `rollouts.jsonl`.
    pub log_rollouts: usize,
    /// Checkpoints kept (older ones are deleted; at least 1).
    pub keep_checkpoints: usize,
    /// Also write every steps.csv / eval.csv row as TensorBoard scalars under
    /// `<run dir>/tensorboard/` (`tensorboard --logdir <run dir>`).
    pub tensorboard: bool,
    /// Memory of the device the trainer runs on (`80GiB`, `141GB`): `cures run` refuses a plan
    /// that does not fit it. Empty: the machine's memory for `model.device = "cpu"`, unknown
    /// (not checked) for a GPU.
    pub device_memory: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            steps: None,
            out: None,
            eval_every: 10,
            eval_temperature: 0.0,
            eval_samples: 1,
            eval_answer_template: String::new(),
            checkpoint_every: 10,
            prompts_every: 10,
            log_rollouts: 8,
            keep_checkpoints: 2,
            tensorboard: true,
            device_memory: String::new(),
        }
    }
}

/// `[sft]`: the tiny testbed policy and its supervised warm start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Where the warm-started checkpoint is written.
    pub out: String,
    /// Hidden size.
    pub hidden: i64,
    /// Layers.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// Key/value heads (GQA).
    pub kv_heads: i64,
    /// MLP width.
    pub intermediate: i64,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate (cosine decay to 10%).
    pub lr: f64,
    /// Relative weight of each level among the warm-start problems, easiest level first (the
    /// levels beyond the list use its last value). Controls the difficulty spread before RL.
    pub level_share: Vec<f64>,
    /// Seed.
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            out: "results/testbed/policy".to_string(),
            hidden: 128,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            intermediate: 384,
            steps: 1500,
            batch: 64,
            lr: 2e-3,
            level_share: vec![4.0, 4.0, 3.0, 2.0, 0.5, 0.5, 0.5],
            seed: 0,
        }
    }
}

/// `[batch]`: m prompts and N completions per step (Σ n_i = N exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// m: prompts drawn per step (draws, before merging duplicates).
    pub prompts: usize,
    /// N: completions generated per step, over all prompts of the batch.
    pub budget: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            prompts: DEFAULT_PROMPTS,
            budget: DEFAULT_BUDGET,
        }
    }
}

/// Which method decides the batch and the rollout counts (docs/algorithm.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// CurES: ρ ∝ exp(√(p̂(1−p̂))/τ), n_i ∝ σ_i.
    Cures,
    /// Uniform sampling, equal n per prompt.
    Grpo,
    /// Uniform over prompts whose observed accuracy is strictly between 0 and 1; equal n.
    #[value(name = "speed_rl", alias = "speed-rl")]
    SpeedRl,
    /// Uniform sampling, n_i ∝ G_i/√(p_i + a/p_i^(b−1)), n_i = 0 when p_i = 0.
    Gvm,
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrategyKind::Cures => "cures",
            StrategyKind::Grpo => "grpo",
            StrategyKind::SpeedRl => "speed_rl",
            StrategyKind::Gvm => "gvm",
        })
    }
}

/// How the per-prompt sampling temperature is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemperatureRule {
    /// The paper: one global τ.
    Global,
    /// The released code: t_i = 100·(c_i + 1) per prompt (≈ uniform).
    ReleasedCode,
}

/// Draw the batch with or without replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replacement {
    /// The paper: i.i.d. draws from ρ; a prompt drawn k times is one merged group.
    WithReplacement,
    /// The released code: successive draws without replacement within a batch.
    WithoutReplacement,
}

/// σ_i estimator for Neyman allocation (docs/algorithm.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaKind {
    /// σ_i ∝ √(p̂(1−p̂)): gradient-free.
    Bernoulli,
    /// Eq. 21 from per-prompt class statistics of ∇ log π.
    Gradient,
}

/// When observed rewards update the posterior.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosteriorUpdates {
    /// The paper: after every step.
    EveryStep,
    /// The released code: only from the N' pre-rollouts at iteration start.
    IterationStart,
}

/// Which accuracy estimate enters σ_i.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PEstimate {
    /// The paper: posterior mean α/(α+β).
    PosteriorMean,
    /// The released code: maximum likelihood c/n from observed counts (prior mean if unobserved).
    MaxLikelihood,
}

/// How a drawn batch's budget is split (`curriculum.allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationRule {
    /// The strategy's own rule: CurES n_i ∝ σ_i, GVM's weights, equal for GRPO and Speed-RL.
    Strategy,
    /// The same n for every drawn prompt (N/m, within n_min..n_max): with `strategy = "cures"`,
    /// CurES's prompt sampling alone (the study's `cures_sampling_only` arm).
    Equal,
}

/// What a drawn prompt whose σ is 0 gets (`curriculum.zero_sigma`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroSigma {
    /// The paper's n_i ∝ σ_i: no completions (a 0/k or k/k prompt has no gradient to give).
    Skip,
    /// `curriculum.n_min` completions, like every other drawn prompt.
    NMin,
}

/// `[curriculum]`: the CurES engine's knobs. Defaults follow the paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurriculumConfig {
    /// Strategy: `cures` | `grpo` | `speed_rl` | `gvm`.
    pub strategy: StrategyKind,
    /// τ of ρ ∝ exp(√(p̂(1−p̂))/τ); 0.1 → ρ(0.5)/ρ(1/6) = 3.6.
    pub tau: f64,
    /// `global` (paper) or `released_code` (t_i = 100(c_i+1)).
    pub temperature: TemperatureRule,
    /// `with_replacement` (paper) or `without_replacement`.
    pub sampling: Replacement,
    /// `bernoulli` or `gradient`.
    pub sigma: SigmaKind,
    /// Lower bound on n_i for a drawn prompt (2 so group-relative advantages exist).
    pub n_min: usize,
    /// Upper bound on n_i for a drawn prompt; default N/4.
    pub n_max: Option<usize>,
    /// Beta prior α_0.
    pub prior_alpha: f64,
    /// Beta prior β_0.
    pub prior_beta: f64,
    /// Forgetting λ ∈ (0, 1]: α ← λα + (1−λ)α_0 before adding a sampled prompt's counts. 1 = off.
    pub forgetting: f64,
    /// Reset the posteriors of an iteration's subset at its start (paper: true).
    pub reset_each_iteration: bool,
    /// `every_step` (paper) or `iteration_start` (released code).
    pub posterior_updates: PosteriorUpdates,
    /// `posterior_mean` (paper) or `max_likelihood` (released code) for p inside σ.
    pub p_estimate: PEstimate,
    /// CurES: what a drawn prompt with σ = 0 gets: `skip` (the paper's n ∝ σ: none) or `n_min`.
    pub zero_sigma: ZeroSigma,
    /// `strategy` (its own rule: CurES n_i ∝ σ_i) or `equal` (the same n per drawn prompt).
    pub allocation: AllocationRule,
    /// GVM's a (default 1e-3).
    pub gvm_a: f64,
    /// GVM's b (default 2).
    pub gvm_b: f64,
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::Cures,
            tau: 0.1,
            temperature: TemperatureRule::Global,
            sampling: Replacement::WithReplacement,
            sigma: SigmaKind::Bernoulli,
            n_min: 2,
            n_max: None,
            prior_alpha: 1.0,
            prior_beta: 1.0,
            forgetting: 1.0,
            reset_each_iteration: true,
            posterior_updates: PosteriorUpdates::EveryStep,
            p_estimate: PEstimate::PosteriorMean,
            zero_sigma: ZeroSigma::Skip,
            allocation: AllocationRule::Strategy,
            gvm_a: 1e-3,
            gvm_b: 2.0,
        }
    }
}

impl CurriculumConfig {
    /// n_max resolved against the budget (default N/4, never below n_min).
    pub fn n_max_for(&self, batch: &BatchConfig) -> usize {
        self.n_max
            .unwrap_or_else(|| (batch.budget / 4).max(self.n_min))
    }
}

/// Subsets (Algorithm 1) or one streaming pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IterationMode {
    /// T disjoint subsets, M steps each, init rollouts at each start.
    Subsets,
    /// One pool over the whole dataset, no iterations (optionally with forgetting).
    Streaming,
}

/// `[iterations]`: Algorithm 1's outer loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IterationConfig {
    /// `subsets` (paper) or `streaming`.
    pub mode: IterationMode,
    /// T: number of disjoint subsets (paper: 15).
    pub subsets: usize,
    /// M: steps per iteration (paper: 10).
    pub steps: usize,
    /// N': pre-rollouts per prompt at the start of an iteration (paper: 4; 0 = none).
    pub init_rollouts: usize,
}

impl Default for IterationConfig {
    fn default() -> Self {
        Self {
            mode: IterationMode::Subsets,
            subsets: 15,
            steps: 10,
            init_rollouts: 4,
        }
    }
}

/// One component of the synthetic accuracy distribution: Beta(alpha, beta), or a point mass
/// at `value` when `value` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DifficultyComponent {
    /// Relative weight of this component in the mixture.
    pub weight: f64,
    /// Beta shape α (ignored when `value` is set).
    #[serde(default = "one")]
    pub alpha: f64,
    /// Beta shape β (ignored when `value` is set).
    #[serde(default = "one")]
    pub beta: f64,
    /// Point mass: every prompt of this component has exactly this accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// `[simulate]`: the synthetic pool of `cures simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulateConfig {
    /// Number of synthetic prompts.
    pub prompts: usize,
    /// Total steps to simulate (default: iterations.subsets × iterations.steps).
    pub steps: Option<usize>,
    /// Mixture of true-accuracy distributions.
    pub difficulty: Vec<DifficultyComponent>,
    /// Learning drift: each completion in an informative (mixed-reward) group raises that
    /// prompt's true logit by this much.
    pub drift: f64,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        Self {
            prompts: 20_000,
            steps: None,
            // Typical of a math set for a mid-size model: many too-hard and too-easy prompts.
            difficulty: vec![
                DifficultyComponent {
                    weight: 0.3,
                    alpha: 1.0,
                    beta: 1.0,
                    value: Some(0.0),
                },
                DifficultyComponent {
                    weight: 0.3,
                    alpha: 1.0,
                    beta: 1.0,
                    value: Some(1.0),
                },
                DifficultyComponent {
                    weight: 0.4,
                    alpha: 0.7,
                    beta: 0.7,
                    value: None,
                },
            ],
            drift: 0.002,
        }
    }
}

impl Config {
    /// Read `path`, apply `overrides` (`key.path=value`), fill defaults and validate.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.display().to_string(),
            cause,
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), overrides)
    }

    /// Parse TOML text (`origin` names it in errors), apply overrides and validate.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        // Parse the file on its own first so schema errors point at its lines.
        let parsed: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: with_suggestion(&e.to_string()),
        })?;
        let config = if overrides.is_empty() {
            parsed
        } else {
            let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
            for spec in overrides {
                apply_override(&mut value, spec)?;
            }
            Config::deserialize(toml::Value::Table(value)).map_err(|e| ConfigError::Parse {
                origin: format!("{origin} (after --set {})", overrides.join(" --set ")),
                message: with_suggestion(&e.to_string()),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// The resolved config as TOML (defaults filled in), as `cures check` prints it.
    pub fn to_toml(&self) -> String {
        let mut resolved = self.clone();
        resolved.curriculum.n_max = Some(self.curriculum.n_max_for(&self.batch));
        toml::to_string_pretty(&resolved).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// Check every value and combination; the error names the key and the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.train.validate()?;
        if let Some(l) = &self.model.lora {
            l.validate()?;
        }
        for (k, v) in [
            ("data.train_split", &self.data.train_split),
            ("data.eval_split", &self.data.eval_split),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(
                    k,
                    "is empty: name one split of the dataset folder (e.g. \"train\"); an empty \
                     split would read every split, the held-out ones too",
                ));
            }
        }
        if self.rollout.sync == crate::rollout::openai::SyncKind::VllmLora
            && self.model.lora.is_none()
        {
            return Err(invalid(
                "rollout.sync",
                "\"vllm_lora\" publishes LoRA adapters, but [model.lora] is not set: set \
                 model.lora.r (e.g. --set model.lora.r=16), or use rollout.sync = \"vllm_full\"",
            ));
        }
        self.rollout.validate()?;
        self.reward
            .validate()
            .map_err(|e| invalid("reward", e.to_string()))?;
        for (k, v) in [
            ("model.dtype", &self.model.dtype),
            ("model.save_dtype", &self.model.save_dtype),
        ] {
            if !["f32", "float32", "bf16", "bfloat16", "f16", "float16"].contains(&v.as_str()) {
                return Err(invalid(k, format!("{v:?} is not one of f32, bf16, f16")));
            }
        }
        if let Ok(kind) = crate::policy::parse_kind(&self.model.dtype) {
            self.train
                .precision
                .resolve(kind)
                .map_err(|r| invalid("train.precision", r))?;
        }
        if !["auto", "cpu", "cuda"].contains(&self.model.device.as_str()) {
            return Err(invalid(
                "model.device",
                format!("{:?} is not one of auto, cpu, cuda", self.model.device),
            ));
        }
        if self.run.steps == Some(0) {
            return Err(invalid("run.steps", "must be at least 1"));
        }
        if !(self.run.eval_temperature.is_finite() && self.run.eval_temperature >= 0.0) {
            return Err(invalid("run.eval_temperature", "must be ≥ 0"));
        }
        if self.run.keep_checkpoints == 0 {
            return Err(invalid("run.keep_checkpoints", "must be at least 1"));
        }
        if self.sft.heads <= 0
            || self.sft.kv_heads <= 0
            || self.sft.hidden % self.sft.heads != 0
            || self.sft.heads % self.sft.kv_heads != 0
        {
            return Err(invalid(
                "sft.heads",
                "sft.hidden must be a multiple of sft.heads, and sft.heads of sft.kv_heads",
            ));
        }
        if !(self.sft.lr.is_finite() && self.sft.lr > 0.0) {
            return Err(invalid(
                "sft.lr",
                format!("must be a positive number, got {}", self.sft.lr),
            ));
        }
        for (k, v) in [
            ("sft.hidden", self.sft.hidden),
            ("sft.layers", self.sft.layers),
            ("sft.intermediate", self.sft.intermediate),
        ] {
            if !(1..=MAX_SFT_SIZE).contains(&v) {
                return Err(invalid(
                    k,
                    format!("must lie in [1, {MAX_SFT_SIZE}], got {v}"),
                ));
            }
        }
        for (k, v) in [("sft.steps", self.sft.steps), ("sft.batch", self.sft.batch)] {
            if !(1..=MAX_COUNT).contains(&v) {
                return Err(invalid(k, format!("must lie in [1, {MAX_COUNT}], got {v}")));
            }
        }
        if !self.run.device_memory.is_empty() {
            crate::train::plan::parse_bytes(&self.run.device_memory)
                .map_err(|r| invalid("run.device_memory", r))?;
        }
        let b = &self.batch;
        let c = &self.curriculum;
        // Per-step sizes are allocated: bounded far above any real batch (the paper's is 8192
        // completions), so a typo is refused here rather than by the allocator.
        for (k, v) in [
            ("batch.prompts", Some(b.prompts)),
            ("batch.budget", Some(b.budget)),
            ("curriculum.n_max", c.n_max),
            ("rollout.max_batch", Some(self.rollout.max_batch.max(1))),
        ] {
            match v {
                Some(0) => return Err(invalid(k, "must be at least 1")),
                Some(v) if v > MAX_BATCH => {
                    return Err(invalid(
                        k,
                        format!("{v} is over {MAX_BATCH} (a step's completions)"),
                    ))
                }
                _ => {}
            }
        }
        if self.rollout.max_tokens > MAX_TOKENS {
            return Err(invalid(
                "rollout.max_tokens",
                format!("{} is over {MAX_TOKENS}", self.rollout.max_tokens),
            ));
        }
        if !(c.tau.is_finite() && c.tau > 0.0) {
            return Err(invalid(
                "curriculum.tau",
                format!("must be a positive number, got {}", c.tau),
            ));
        }
        if c.tau < 1e-3 {
            return Err(invalid(
                "curriculum.tau",
                format!(
                    "{} is below 0.001: ρ would weigh p = 0.5 over p = 1/6 by more than e^{:.0} \
                     (a point mass); use τ ≥ 0.001",
                    c.tau,
                    (0.5 - (5.0f64 / 36.0).sqrt()) / c.tau
                ),
            ));
        }
        let n_max = c.n_max_for(b);
        if c.n_min == 0 && c.strategy == StrategyKind::Cures {
            return Err(invalid(
                "curriculum.n_min",
                "must be at least 1 for the cures strategy (2 recommended: group-relative advantages need two rollouts)",
            ));
        }
        if c.n_min.saturating_mul(b.prompts) > b.budget {
            return Err(invalid(
                "curriculum.n_min",
                format!(
                    "curriculum.n_min * batch.prompts ({}) exceeds batch.budget ({})",
                    c.n_min.saturating_mul(b.prompts),
                    b.budget
                ),
            ));
        }
        if n_max < c.n_min {
            return Err(invalid(
                "curriculum.n_max",
                format!("n_max ({n_max}) is below curriculum.n_min ({})", c.n_min),
            ));
        }
        if n_max.saturating_mul(b.prompts) < b.budget {
            return Err(invalid(
                "curriculum.n_max",
                format!(
                    "curriculum.n_max * batch.prompts ({}) is below batch.budget ({}): the budget cannot be spent",
                    n_max.saturating_mul(b.prompts),
                    b.budget
                ),
            ));
        }
        for (key, v) in [
            ("curriculum.prior_alpha", c.prior_alpha),
            ("curriculum.prior_beta", c.prior_beta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(key, format!("must be a positive number, got {v}")));
            }
        }
        if !(c.forgetting > 0.0 && c.forgetting <= 1.0) {
            return Err(invalid(
                "curriculum.forgetting",
                format!(
                    "λ must lie in (0, 1] (1 disables forgetting), got {}",
                    c.forgetting
                ),
            ));
        }
        if !(c.gvm_a.is_finite() && c.gvm_a > 0.0) {
            return Err(invalid("curriculum.gvm_a", "must be a positive number"));
        }
        if !c.gvm_b.is_finite() {
            return Err(invalid("curriculum.gvm_b", "must be a finite number"));
        }
        let it = &self.iterations;
        if it.subsets == 0 {
            return Err(invalid("iterations.subsets", "must be at least 1"));
        }
        if it.steps == 0 {
            return Err(invalid("iterations.steps", "must be at least 1"));
        }
        if !self.run.eval_answer_template.is_empty()
            && !self.run.eval_answer_template.contains("{answer}")
        {
            return Err(invalid(
                "run.eval_answer_template",
                format!(
                    "{:?} has no {{answer}} to fill in (\"\" turns the answer probability off)",
                    self.run.eval_answer_template
                ),
            ));
        }
        if self.run.eval_samples > MAX_EVAL_SAMPLES {
            return Err(invalid(
                "run.eval_samples",
                format!(
                    "{} is over {MAX_EVAL_SAMPLES} samples per held-out problem",
                    self.run.eval_samples
                ),
            ));
        }
        for (k, v) in [
            ("testbed.train_per_level", self.testbed.train_per_level),
            ("testbed.heldout_per_level", self.testbed.heldout_per_level),
        ] {
            if v > MAX_TESTBED_PER_LEVEL {
                return Err(invalid(
                    k,
                    format!("{v} is over {MAX_TESTBED_PER_LEVEL} problems per level"),
                ));
            }
        }
        if it.init_rollouts > MAX_BATCH {
            return Err(invalid(
                "iterations.init_rollouts",
                format!(
                    "{} is over {MAX_BATCH} (a prompt's pre-rollouts)",
                    it.init_rollouts
                ),
            ));
        }
        for (k, v) in [
            ("iterations.subsets", it.subsets),
            ("iterations.steps", it.steps),
            ("run.steps", self.run.steps.unwrap_or(1)),
        ] {
            if v > MAX_COUNT {
                return Err(invalid(k, format!("{v} is over {MAX_COUNT}")));
            }
        }
        if it.subsets.saturating_mul(it.steps) > MAX_COUNT {
            return Err(invalid(
                "iterations.steps",
                format!(
                    "iterations.subsets x iterations.steps = {} x {} is over {MAX_COUNT} steps",
                    it.subsets, it.steps
                ),
            ));
        }
        self.simulate.validate()?;
        Ok(())
    }

    /// What is valid but probably not what the user meant, one line each (`cures check` and
    /// `cures run` print them).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let (b, c) = (&self.batch, &self.curriculum);
        if let Some(n_max) = c.n_max {
            // The most one prompt can get: the budget less n_min for each other prompt.
            let reach = b
                .budget
                .saturating_sub(c.n_min.saturating_mul(b.prompts.saturating_sub(1)));
            if n_max > b.budget {
                w.push(format!(
                    "curriculum.n_max = {n_max} exceeds batch.budget = {}: no prompt can get \
                     more than {reach} rollouts in a step (the budget less curriculum.n_min = {} \
                     for each of the other {} prompts)",
                    b.budget,
                    c.n_min,
                    b.prompts.saturating_sub(1)
                ));
            }
        }
        w
    }

    /// Checks that need the dataset size: every pool must be non-empty and, without
    /// replacement, hold at least `batch.prompts` prompts.
    pub fn validate_pool(&self, dataset_len: usize) -> Result<(), ConfigError> {
        if dataset_len == 0 {
            return Err(invalid("dataset", "is empty: no prompts to train on"));
        }
        let pool = match self.iterations.mode {
            IterationMode::Streaming => dataset_len,
            IterationMode::Subsets => {
                if self.iterations.subsets > dataset_len {
                    return Err(invalid(
                        "iterations.subsets",
                        format!(
                            "{} subsets of a dataset of {dataset_len} prompts would leave some empty",
                            self.iterations.subsets
                        ),
                    ));
                }
                dataset_len / self.iterations.subsets
            }
        };
        let need = POOL_FACTOR * self.batch.prompts;
        if self.curriculum.sampling == Replacement::WithoutReplacement && pool < need {
            return Err(invalid(
                "batch.prompts",
                format!(
                    "a pool of {pool} prompts (dataset {dataset_len} / iterations.subsets {}) \
                     is under {POOL_FACTOR} x the {} drawn without replacement per step: \
                     each step would take most of the pool, so the selection could hardly \
                     differ from uniform; use fewer iterations.subsets or a smaller \
                     batch.prompts",
                    self.pool_divisor(),
                    self.batch.prompts,
                ),
            ));
        }
        Ok(())
    }

    fn pool_divisor(&self) -> usize {
        match self.iterations.mode {
            IterationMode::Streaming => 1,
            IterationMode::Subsets => self.iterations.subsets,
        }
    }

    /// What a valid pool may still get wrong, one line each: a pool under 4x the prompts drawn
    /// per step (with replacement) leaves ρ little room to select.
    pub fn pool_warnings(&self, dataset_len: usize) -> Vec<String> {
        let pool = dataset_len / self.pool_divisor().max(1);
        let need = POOL_FACTOR * self.batch.prompts;
        if self.curriculum.sampling == Replacement::WithReplacement && pool < need {
            let distinct = expected_distinct(pool, self.batch.prompts);
            vec![format!(
                "each pool holds {pool} prompts (dataset {dataset_len} / iterations.subsets \
                 {}), under {POOL_FACTOR} x the {} drawn per step: about {distinct:.0} of them \
                 appear in every batch under uniform draws, so selection by ρ can change \
                 little; use fewer iterations.subsets",
                self.pool_divisor(),
                self.batch.prompts
            )]
        } else {
            Vec::new()
        }
    }
}

/// Most completions (or prompts) in one step, and most rows the embedded engine decodes at once.
pub const MAX_BATCH: usize = 1 << 20;
/// Most tokens of one completion.
pub const MAX_TOKENS: usize = 1 << 20;
/// Most steps, subsets, iterations or SFT steps and rows.
pub const MAX_COUNT: usize = 1_000_000_000;

/// The most samples per held-out problem (avg@k / pass@k reach k = 1024 in the literature).
pub const MAX_EVAL_SAMPLES: usize = 1024;

/// The most synthetic problems per level of the testbed.
pub const MAX_TESTBED_PER_LEVEL: usize = 100_000;
/// Most prompts of a simulated pool.
pub const MAX_POOL: usize = 100_000_000;
/// Largest width or depth of the SFT testbed model.
const MAX_SFT_SIZE: i64 = 1 << 16;
/// Longest timeout, in seconds (a day).
pub const MAX_DURATION_S: f64 = 86_400.0;

/// A pool should hold this many times the prompts drawn per step.
pub const POOL_FACTOR: usize = 4;

/// Expected distinct prompts among `m` uniform draws with replacement from `pool`.
fn expected_distinct(pool: usize, m: usize) -> f64 {
    let n = pool as f64;
    n * (1.0 - (1.0 - 1.0 / n.max(1.0)).powf(m as f64))
}

impl SimulateConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.prompts == 0 {
            return Err(invalid(
                "simulate.prompts",
                "must be at least 1 (empty dataset)",
            ));
        }
        if self.prompts > MAX_POOL {
            return Err(invalid(
                "simulate.prompts",
                format!("{} is over {MAX_POOL} prompts", self.prompts),
            ));
        }
        if self.difficulty.is_empty() {
            return Err(invalid(
                "simulate.difficulty",
                "needs at least one component",
            ));
        }
        for (i, d) in self.difficulty.iter().enumerate() {
            let key = |f: &str| format!("simulate.difficulty[{i}].{f}");
            if !(d.weight.is_finite() && d.weight > 0.0) {
                return Err(invalid(&key("weight"), "must be a positive number"));
            }
            match d.value {
                Some(v) if !(0.0..=1.0).contains(&v) => {
                    return Err(invalid(
                        &key("value"),
                        format!("{v} is not an accuracy in [0, 1]"),
                    ))
                }
                Some(_) => {}
                None => {
                    for (f, v) in [("alpha", d.alpha), ("beta", d.beta)] {
                        if !(v.is_finite() && v > 0.0) {
                            return Err(invalid(&key(f), "must be a positive number"));
                        }
                    }
                }
            }
        }
        if !(self.drift.is_finite() && self.drift >= 0.0) {
            return Err(invalid("simulate.drift", "must be ≥ 0"));
        }
        Ok(())
    }
}

/// Apply one `a.b.c=value` override to a TOML table. The value is parsed as a TOML value
/// (`0.2`, `true`, `"text"`, `[1, 2]`) and taken as a plain string when that fails
/// (`--set curriculum.strategy=grpo`).
pub fn apply_override(root: &mut toml::Table, spec: &str) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::Override {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| err("expected key=value, e.g. curriculum.tau=0.2"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|k| k.trim().is_empty()) {
        return Err(err("empty key"));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let (last, parents) = parts.split_last().ok_or_else(|| err("empty key"))?;
    let mut table = root;
    for (depth, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| {
            err(&format!(
                "`{}` is a value, not a section",
                parts[..=depth].join(".")
            ))
        })?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_toml_str(text, "test.toml", &sets)
    }

    #[test]
    fn defaults_validate() {
        let c = load("", &[]).expect("empty config is valid");
        assert_eq!(c.batch.prompts, 1024);
        assert_eq!(c.curriculum.n_max_for(&c.batch), 2048);
    }

    #[test]
    fn budget_error_names_keys_and_numbers() {
        let e = load(
            "[batch]\nprompts = 1000\nbudget = 2048\n[curriculum]\nn_min = 3\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("curriculum.n_min * batch.prompts (3000) exceeds batch.budget (2048)"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let e = load("[curriculum]\ntauu = 0.1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tauu") && e.contains("test.toml") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn tau_must_be_positive() {
        for bad in ["0", "-0.1", "nan"] {
            let e = load(&format!("[curriculum]\ntau = {bad}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("curriculum.tau"), "{e}");
        }
    }

    #[test]
    fn overrides_apply_and_are_validated() {
        let c = load(
            "",
            &["curriculum.tau=0.2", "curriculum.strategy=grpo", "seed=7"],
        )
        .unwrap();
        assert_eq!(c.curriculum.tau, 0.2);
        assert_eq!(c.curriculum.strategy, StrategyKind::Grpo);
        assert_eq!(c.seed, 7);
        let e = load("", &["curriculum.strategy=nope"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("--set"), "{e}");
        let e = load("", &["curriculum.tau"]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = load("seed = 3\n", &["seed.x=1"]).unwrap_err().to_string();
        assert!(e.contains("`seed` is a value"), "{e}");
    }

    #[test]
    fn empty_pool_and_small_pool_are_rejected() {
        let c = load("[curriculum]\nsampling = \"without_replacement\"\n", &[]).unwrap();
        assert!(c
            .validate_pool(0)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = c.validate_pool(2000).unwrap_err().to_string();
        assert!(e.starts_with("batch.prompts"), "{e}");
        // Pools of 1024 = m: each step would draw the whole pool.
        let e = c.validate_pool(1024 * 15).unwrap_err().to_string();
        assert!(e.contains("under 4 x the 1024 drawn"), "{e}");
        assert!(c.validate_pool(4 * 1024 * 15).is_ok());
        // With replacement: valid, but said.
        let c = load("", &[]).unwrap();
        assert!(c.validate_pool(1024 * 15).is_ok());
        let w = c.pool_warnings(1024 * 15);
        assert!(w.len() == 1 && w[0].contains("about 647 of them"), "{w:?}");
        assert!(c.pool_warnings(4 * 1024 * 15).is_empty());
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = load("name = \"x\"\n[batch]\nprompts = 8\nbudget = 64\n", &[]).unwrap();
        let again = load(&c.to_toml(), &[]).unwrap();
        assert_eq!(again.curriculum.n_max, Some(16));
        assert_eq!(again.batch, c.batch);
    }
}
