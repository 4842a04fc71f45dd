//! The policy update of one step (docs/algorithm.md §5): old log-probs recomputed with the
//! trainer's weights, reference log-probs from the iteration's reference policy, one epoch over
//! the step's completions in mini-batches (one optimiser step each), micro-batches by token budget
//! with exact gradient accumulation (token-mean over the mini-batch), grad-norm clipping, AdamW.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::advantage::AdvantageKind;
use super::loss::{ppo_loss, LossConfig, LossInputs};
use super::optim::{dtype_epsilon, pure_precision_loss, AdamW, AdamWParams, Precision};
use crate::curriculum::ClassStats;
use crate::fault::{self, Phase};
use crate::policy::{Policy, TrainPass};

/// `[train]`: optimiser and loss settings. Defaults follow the paper (§5) except the learning
/// rate, which the testbed configs raise (1e-6 is for 1.5B+ models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Constant learning rate.
    pub lr: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Optimiser steps per training step (the step's completions split into this many
    /// mini-batches, one epoch).
    pub mini_batches: usize,
    /// Padded tokens per micro-batch (memory bound of one forward/backward).
    pub micro_batch_tokens: usize,
    /// Advantage estimator: `grpo` | `rpp` | `paper` | `dr_grpo`.
    pub advantage: AdvantageKind,
    /// PPO clip ε.
    pub clip_eps: f64,
    /// Dual clip c for negative advantages.
    pub dual_clip: f64,
    /// k3 KL coefficient (0 skips the reference forward entirely).
    pub kl_coef: f64,
    /// Entropy bonus coefficient.
    pub entropy_coef: f64,
    /// Parameters whose per-rollout gradients feed the `gradient` σ estimator (name prefixes).
    pub grad_stat_params: Vec<String>,
    /// `auto` (bf16_mixed for bf16/f16 weights, else fp32) | `bf16_mixed` (fp32 master weights,
    /// moments and gradient accumulation, bf16 compute) | `fp32` | `pure` (moments and updates
    /// in the weights' dtype: loses updates below its resolution).
    pub precision: Precision,
    /// Recompute each decoder block's activations in the backward pass instead of keeping them
    /// (about one more forward of compute for a fraction of the activation memory).
    pub activation_checkpointing: bool,
    /// Completion tokens per LM-head chunk: the log-softmax never holds more than this many
    /// rows of `[vocab]` fp32 logits (0 = off: a whole micro-batch at once).
    pub logits_chunk_tokens: usize,
    /// Where the KL reference model lives: `same` (the trainer's device) | `cpu` | `cuda:N`.
    /// Not loaded at all when `kl_coef = 0`.
    pub ref_device: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: 1.0,
            mini_batches: 1,
            micro_batch_tokens: 16384,
            advantage: AdvantageKind::Grpo,
            clip_eps: 0.2,
            dual_clip: 3.0,
            kl_coef: 0.001,
            entropy_coef: 0.0,
            grad_stat_params: vec!["model.embed_tokens.weight".to_string()],
            precision: Precision::Auto,
            activation_checkpointing: false,
            logits_chunk_tokens: crate::policy::DEFAULT_CHUNK_TOKENS,
            ref_device: "same".to_string(),
        }
    }
}

impl TrainConfig {
    /// The loss part.
    pub fn loss(&self) -> LossConfig {
        LossConfig {
            clip_eps: self.clip_eps,
            dual_clip: self.dual_clip,
            kl_coef: self.kl_coef,
            entropy_coef: self.entropy_coef,
        }
    }

    /// The optimiser part.
    pub fn adamw(&self) -> AdamWParams {
        AdamWParams {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// The reference model's device, given the trainer's.
    pub fn reference_device(&self, trainer: Device) -> Result<Device, crate::config::ConfigError> {
        parse_device(&self.ref_device, trainer)
            .and_then(|d| crate::backend::check_device(d).map(|()| d))
            .map_err(|reason| crate::config::ConfigError::Invalid {
                key: "train.ref_device".into(),
                reason,
            })
    }

    /// Range checks; errors name the key.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let bad = |k: &str, r: String| crate::config::ConfigError::Invalid {
            key: format!("train.{k}"),
            reason: r,
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(
                "lr",
                format!("must be a positive number, got {}", self.lr),
            ));
        }
        for (k, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(k, format!("must lie in [0, 1), got {v}")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(bad(
                "eps",
                format!("must be a positive number, got {}", self.eps),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight_decay",
                format!("must be a number ≥ 0, got {}", self.weight_decay),
            ));
        }
        if self.grad_clip.is_nan() || self.grad_clip < 0.0 {
            return Err(bad(
                "grad_clip",
                format!("must be ≥ 0, got {}", self.grad_clip),
            ));
        }
        if self.mini_batches == 0 {
            return Err(bad("mini_batches", "must be at least 1".into()));
        }
        if self.micro_batch_tokens == 0 {
            return Err(bad("micro_batch_tokens", "must be at least 1".into()));
        }
        if !(self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            return Err(bad(
                "clip_eps",
                format!("must lie in (0, 1), got {}", self.clip_eps),
            ));
        }
        if self.dual_clip.is_nan() || self.dual_clip < 1.0 {
            return Err(bad(
                "dual_clip",
                format!("must be ≥ 1, got {}", self.dual_clip),
            ));
        }
        parse_device(&self.ref_device, Device::Cpu).map_err(|r| bad("ref_device", r))?;
        for (k, v) in [
            ("kl_coef", self.kl_coef),
            ("entropy_coef", self.entropy_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(k, format!("must be a number ≥ 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// One completion to train on.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Prompt token ids.
    pub prompt: Vec<i64>,
    /// Completion token ids (non-empty).
    pub completion: Vec<i64>,
    /// Advantage, broadcast over the completion's tokens.
    pub advantage: f64,
}

/// `same` | `cpu` | `cuda` | `cuda:N`, relative to the trainer's device.
pub(crate) fn parse_device(s: &str, trainer: Device) -> Result<Device, String> {
    match s {
        "same" | "" => Ok(trainer),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("{other:?} is not one of same, cpu, cuda, cuda:N")),
    }
}

/// Statistics of one update.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateStats {
    /// Token-mean PPO loss (before the update, averaged over mini-batches).
    pub loss: f64,
    /// Token-mean k3 KL to the reference.
    pub kl: f64,
    /// Gradient norm before clipping (mean over mini-batches).
    pub grad_norm: f64,
    /// Fraction of tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// Mean entropy of the policy over the trained tokens.
    pub entropy: f64,
    /// Tokens trained on.
    pub tokens: usize,
}

/// Flat per-token log-probs of a set of samples, in order (no grad), on `device`.
fn flat_logprobs(
    policy: &Policy,
    seqs: &[(Vec<i64>, Vec<i64>)],
    cfg: &TrainConfig,
    device: Device,
) -> Result<Tensor> {
    let parts = tch::no_grad(|| {
        policy.token_logprobs(seqs, cfg.micro_batch_tokens, cfg.logits_chunk_tokens)
    })?;
    Ok(Tensor::cat(&parts, 0).to_device(device))
}

/// The KL anchor of an iteration: a second policy (its weights at the iteration's start), or,
/// with LoRA, the policy's own frozen base with the adapter of the iteration's start (no second
/// copy of the base).
pub enum Reference {
    /// A full copy of the policy.
    Model(Box<Policy>),
    /// Adapter weights by name ([`Policy::lora_snapshot`]).
    Adapter(Vec<(String, Tensor)>),
}

impl Reference {
    /// Make the reference the policy as it is now (an iteration's start).
    pub fn refresh(&mut self, policy: &Policy) -> Result<()> {
        match self {
            Reference::Model(r) => r
                .var_store_mut()
                .copy(policy.var_store())
                .context("cannot copy the policy into the reference"),
            Reference::Adapter(snap) => {
                *snap = policy.lora_snapshot()?;
                Ok(())
            }
        }
    }
}

/// Runs the policy update of a step.
pub struct Trainer {
    cfg: TrainConfig,
    opt: AdamW,
}

impl Trainer {
    /// A trainer over the policy's trainable parameters, in `train.precision` resolved against
    /// the policy's dtype (an impossible combination is an error naming both keys).
    pub fn new(cfg: TrainConfig, policy: &Policy) -> Result<Self> {
        let lora = policy.lora_config().is_some();
        if lora && !matches!(cfg.precision, Precision::Auto | Precision::Fp32) {
            return Err(crate::config::ConfigError::Invalid {
                key: "train.precision".into(),
                reason: format!(
                    "{}: with [model.lora] the adapters and their moments are fp32 over the \
                     frozen base in any dtype; leave train.precision = \"auto\"",
                    cfg.precision.name()
                ),
            }
            .into());
        }
        let precision = cfg
            .precision
            .resolve(policy.trainable_kind())
            .map_err(|reason| crate::config::ConfigError::Invalid {
                key: "train.precision".into(),
                reason,
            })?;
        let vs = policy.trainable_var_store();
        if precision == Precision::Pure && policy.kind() != Kind::Float {
            let vars = vs.variables();
            let lost = pure_precision_loss(vars.values(), cfg.lr);
            if lost > 0.01 {
                tracing::warn!(
                    "train.precision = \"pure\" with {:?} weights: an AdamW step of about lr = {:e} \
                     is below the dtype's resolution (ε = {:e}) for {:.0}% of the weights, which \
                     will not change; use train.precision = \"bf16_mixed\"",
                    policy.kind(),
                    cfg.lr,
                    dtype_epsilon(policy.kind()),
                    100.0 * lost
                );
            }
        }
        let opt = AdamW::new(vs, precision)?;
        Ok(Self { cfg, opt })
    }

    /// The optimiser (for checkpoints).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The optimiser, mutable (for resume).
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The precision in force (`auto` resolved).
    pub fn precision(&self) -> Precision {
        self.opt.precision()
    }

    /// One epoch over `samples` in `mini_batches` optimiser steps. `reference` supplies the KL
    /// anchor (skipped when `kl_coef` is 0 or it is `None`).
    pub fn update(
        &mut self,
        policy: &Policy,
        reference: Option<&Reference>,
        samples: &[Sample],
    ) -> Result<UpdateStats> {
        let samples: Vec<&Sample> = samples
            .iter()
            .filter(|s| !s.completion.is_empty())
            .collect();
        if samples.is_empty() {
            return Ok(UpdateStats::default());
        }
        let dev = policy.device();
        let budget = self.cfg.micro_batch_tokens;
        let seqs: Vec<(Vec<i64>, Vec<i64>)> = samples
            .iter()
            .map(|s| (s.prompt.clone(), s.completion.clone()))
            .collect();
        // π_old with the weights that generated the rollouts (before any update of this step).
        let tokens: usize = seqs.iter().map(|(p, c)| p.len() + c.len()).sum();
        let what = || {
            format!(
                "{} sequences, {tokens} tokens, in forward passes of up to \
                 train.micro_batch_tokens = {budget}",
                seqs.len()
            )
        };
        let (old_all, ref_all) = fault::scope(Phase::Logprobs, what, || {
            let old_all = flat_logprobs(policy, &seqs, &self.cfg, dev)?;
            let ref_all = match (reference, self.cfg.kl_coef > 0.0) {
                (Some(Reference::Model(r)), true) => Some(flat_logprobs(r, &seqs, &self.cfg, dev)?),
                (Some(Reference::Adapter(snap)), true) => Some(
                    policy
                        .with_lora_weights(snap, || flat_logprobs(policy, &seqs, &self.cfg, dev))?,
                ),
                _ => None,
            };
            Ok((old_all, ref_all))
        })?;
        fault::scope(Phase::Update, what, || {
            self.update_from(policy, &samples, &seqs, &old_all, ref_all.as_ref())
        })
    }

    /// The update proper, from the step's π_old (and reference) log-probs.
    fn update_from(
        &mut self,
        policy: &Policy,
        samples: &[&Sample],
        seqs: &[(Vec<i64>, Vec<i64>)],
        old_all: &Tensor,
        ref_all: Option<&Tensor>,
    ) -> Result<UpdateStats> {
        let dev = policy.device();
        let budget = self.cfg.micro_batch_tokens;
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0i64);
        for (_, c) in seqs {
            offsets.push(offsets[offsets.len() - 1] + c.len() as i64);
        }
        let adv_all = {
            let mut v = Vec::with_capacity(offsets[seqs.len()] as usize);
            for (s, (_, c)) in samples.iter().zip(seqs) {
                v.extend(std::iter::repeat_n(s.advantage as f32, c.len()));
            }
            Tensor::from_slice(&v).to_device(dev)
        };
        let loss_cfg = self.cfg.loss();
        let pass = TrainPass {
            chunk_tokens: self.cfg.logits_chunk_tokens,
            checkpoint: self.cfg.activation_checkpointing,
            entropy_grad: self.cfg.entropy_coef != 0.0,
        };
        let k = self.cfg.mini_batches.min(samples.len());
        let total_tokens = offsets[seqs.len()] as usize;
        let zero = || Tensor::zeros([], (Kind::Double, dev));
        let (mut pg, mut kl, mut clipped, mut ent) = (zero(), zero(), zero(), zero());
        let mut grad_norm = 0.0;
        // Mini-batch j takes samples j, j+k, j+2k, ...: every prompt's group is spread evenly.
        for j in 0..k {
            let idx: Vec<usize> = (j..samples.len()).step_by(k).collect();
            let mb_tokens: i64 = idx.iter().map(|&i| offsets[i + 1] - offsets[i]).sum();
            self.opt.zero_grad()?;
            let mb_seqs: Vec<(Vec<i64>, Vec<i64>)> = idx.iter().map(|&i| seqs[i].clone()).collect();
            for micro in Policy::micro_batches(&mb_seqs, budget) {
                let batch: Vec<&(Vec<i64>, Vec<i64>)> =
                    micro.iter().map(|&m| &mb_seqs[m]).collect();
                fault::detail(|| {
                    let tokens: usize = batch.iter().map(|(p, c)| p.len() + c.len()).sum();
                    let longest = batch.iter().map(|(p, c)| p.len() + c.len()).max();
                    format!(
                        "mini-batch {} of {k}: a micro-batch of {} sequences, {tokens} tokens \
                         (longest {}); train.micro_batch_tokens = {budget}",
                        j + 1,
                        batch.len(),
                        longest.unwrap_or(0)
                    )
                });
                // The micro-batch's per-token inputs, flat in batch order.
                let pick = |all: &Tensor| -> Tensor {
                    let parts: Vec<Tensor> = micro
                        .iter()
                        .map(|&m| {
                            let i = idx[m];
                            all.narrow(0, offsets[i], offsets[i + 1] - offsets[i])
                        })
                        .collect();
                    Tensor::cat(&parts, 0)
                };
                let old = pick(old_all);
                let refs = ref_all.map(pick);
                let adv = pick(&adv_all);
                policy.train_batch(&batch, &pass, |c| {
                    let n = c.logprobs.size()[0];
                    let mask = c.logprobs.ones_like().detach();
                    let ref_c = refs.as_ref().map(|r| r.narrow(0, c.offset, n));
                    let out = ppo_loss(
                        &LossInputs {
                            logp: &c.logprobs,
                            old_logp: &old.narrow(0, c.offset, n),
                            ref_logp: ref_c.as_ref(),
                            entropy: Some(&c.entropy),
                            advantages: &adv.narrow(0, c.offset, n),
                            mask: &mask,
                        },
                        &loss_cfg,
                    );
                    pg += &out.pg_sum;
                    kl += &out.kl_sum;
                    clipped += &out.clipped;
                    ent += c.entropy.detach().sum(Kind::Double);
                    Ok(out.sum / mb_tokens as f64)
                })?;
                self.opt.accumulate()?;
            }
            let norm = self.opt.clip_grad_norm(self.cfg.grad_clip)?;
            if !norm.is_finite() {
                bail!(
                    "gradient norm is {norm} at optimiser step {}: refusing to apply it (lower \
                     train.lr = {:e}, or train.kl_coef = {:e}, train.entropy_coef = {:e}, \
                     train.weight_decay = {:e} if one of them is extreme)",
                    self.opt.steps() + 1,
                    self.cfg.lr,
                    self.cfg.kl_coef,
                    self.cfg.entropy_coef,
                    self.cfg.weight_decay
                );
            }
            grad_norm += norm / k as f64;
            self.opt.step(&self.cfg.adamw())?;
        }
        let per_token = |t: &Tensor| t.double_value(&[]) / total_tokens as f64;
        Ok(UpdateStats {
            loss: per_token(&pg),
            kl: per_token(&kl),
            grad_norm,
            clip_frac: per_token(&clipped),
            entropy: per_token(&ent),
            tokens: total_tokens,
        })
    }
}

/// One rollout for the `gradient` σ estimator.
pub struct GradRollout<'a> {
    /// Prompt tokens.
    pub prompt: &'a [i64],
    /// Completion tokens.
    pub completion: &'a [i64],
    /// Whether it was rewarded as correct.
    pub correct: bool,
}

/// Per-class statistics of G = ∇ log π(y|x) (summed over completion tokens) with respect to the
/// parameters named by `prefixes`, over one prompt's rollouts (docs/algorithm.md §4, Eq. 21):
/// E‖G‖² per class and ‖E₁[G] − E₀[G]‖² when both classes are present.
pub fn gradient_class_stats(
    policy: &Policy,
    prefixes: &[String],
    rollouts: &[GradRollout<'_>],
) -> Result<ClassStats> {
    // Trainable parameters only. With LoRA the adapters are: those whose names contain a
    // prefix's module path (`model.layers.3.` matches `base_model.model.model.layers.3....`),
    // and all of them when no prefix names one (the default, the embeddings, is frozen).
    let vars: BTreeMap<String, Tensor> = policy
        .trainable_var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let lora = policy.lora_config().is_some();
    let named = |n: &str| {
        prefixes
            .iter()
            .any(|p| n.starts_with(p.as_str()) || (lora && n.contains(p.as_str())))
    };
    let mut params: Vec<Tensor> = vars
        .iter()
        .filter(|(n, _)| named(n))
        .map(|(_, t)| t.shallow_clone())
        .collect();
    if lora && params.is_empty() {
        params = vars.values().map(Tensor::shallow_clone).collect();
    }
    if params.is_empty() {
        bail!("train.grad_stat_params {prefixes:?} matches no parameter of the policy");
    }
    let mut sums: [Option<Vec<Tensor>>; 2] = [None, None];
    let mut sq = [0.0f64; 2];
    let mut count = [0usize; 2];
    for r in rollouts {
        if r.completion.is_empty() || r.prompt.is_empty() {
            continue;
        }
        let seq = (r.prompt.to_vec(), r.completion.to_vec());
        let lp = policy.logprobs_batch(&[&seq])?;
        let total = lp[0].logprobs.sum(Kind::Float);
        let grads = Tensor::run_backward(&[total], &params, false, false);
        let c = usize::from(r.correct);
        count[c] += 1;
        sq[c] += grads
            .iter()
            .map(|g| {
                g.to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum::<f64>();
        match &mut sums[c] {
            None => sums[c] = Some(grads.iter().map(|g| g.to_kind(Kind::Double)).collect()),
            Some(acc) => {
                for (a, g) in acc.iter_mut().zip(&grads) {
                    *a = &*a + g.to_kind(Kind::Double);
                }
            }
        }
    }
    let mean_sq = |c: usize| (count[c] > 0).then(|| sq[c] / count[c] as f64);
    let mean_diff_sq = match (&sums[1], &sums[0]) {
        (Some(s1), Some(s0)) => s1
            .iter()
            .zip(s0)
            .map(|(a, b)| {
                let d = a / count[1] as f64 - b / count[0] as f64;
                d.square().sum(Kind::Double).double_value(&[])
            })
            .sum(),
        _ => 0.0,
    };
    Ok(ClassStats {
        sq_norm_correct: mean_sq(1),
        sq_norm_wrong: mean_sq(0),
        mean_diff_sq,
    })
}
