//! The policy update of one step (cures-algorithm.md §5): old log-probs recomputed with the
//! trainer's weights, reference log-probs from the iteration's reference policy, one epoch over
//! the step's completions in mini-batches (one optimiser step each), micro-batches by token budget
//! with exact gradient accumulation (token-mean over the mini-batch), grad-norm clipping, AdamW.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::advantage::AdvantageKind;
use super::loss::{ppo_loss, LossConfig, LossInputs};
use crate::curriculum::ClassStats;
use crate::policy::Policy;

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
        if self.eps.is_nan()
            || self.eps <= 0.0
            || !self.weight_decay.is_finite()
            || self.weight_decay < 0.0
        {
            return Err(bad("eps", "eps must be > 0 and weight_decay ≥ 0".into()));
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
        if !(self.kl_coef >= 0.0 && self.entropy_coef >= 0.0) {
            return Err(bad(
                "kl_coef",
                "kl_coef and entropy_coef must be ≥ 0".into(),
            ));
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

/// AdamW with PyTorch's semantics (decoupled decay, bias correction), state kept as named
/// tensors so it can be checkpointed and resumed bit-exactly.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
}

impl AdamW {
    /// Over every variable of `vs` that requires grad, in name order.
    pub fn new(vs: &tch::nn::VarStore) -> Self {
        let vars: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let params: Vec<(String, Tensor)> = vars.into_iter().collect();
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            params,
            m,
            v,
            step: 0,
        }
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Zero every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; when above `max_norm` (> 0), scale them down to it.
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let mut sq = 0.0;
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                sq += g
                    .to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for (_, p) in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
        norm
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, cfg: &TrainConfig) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self
                .params
                .iter_mut()
                .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(m.kind());
                let _ = p.g_mul_scalar_(1.0 - cfg.lr * cfg.weight_decay);
                let _ = m.g_mul_scalar_(cfg.beta1);
                let _ = m.g_add_(&(&g * (1.0 - cfg.beta1)));
                let _ = v.g_mul_scalar_(cfg.beta2);
                let _ = v.g_add_(&(g.square() * (1.0 - cfg.beta2)));
                let denom = v.sqrt() / bc2.sqrt() + cfg.eps;
                let upd = (&*m / denom) * (cfg.lr / bc1);
                let _ = p.g_sub_(&upd.to_kind(p.kind()));
            }
        });
    }

    /// Save moments and step count as safetensors (`<name>.m`, `<name>.v`, `__step__`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let step = Tensor::from_slice(&[self.step]);
        let mut named: Vec<(String, &Tensor)> = vec![("__step__".to_string(), &step)];
        for ((n, _), (m, v)) in self.params.iter().zip(self.m.iter().zip(&self.v)) {
            named.push((format!("{n}.m"), m));
            named.push((format!("{n}.v"), v));
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        Tensor::write_safetensors(&refs, path)
            .with_context(|| format!("cannot write optimiser state {}", path.display()))
    }

    /// Restore what [`AdamW::save`] wrote (the parameter set must match).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let loaded: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read optimiser state {}", path.display()))?
            .into_iter()
            .collect();
        let step = loaded
            .get("__step__")
            .with_context(|| format!("{}: no __step__ tensor", path.display()))?;
        self.step = step.int64_value(&[0]);
        for ((n, p), (m, v)) in self
            .params
            .iter()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            for (suffix, dst) in [("m", &mut *m), ("v", &mut *v)] {
                let src = loaded
                    .get(&format!("{n}.{suffix}"))
                    .with_context(|| format!("{}: no optimiser state for {n}", path.display()))?;
                if src.size() != p.size() {
                    bail!(
                        "{}: optimiser state for {n} has the wrong shape",
                        path.display()
                    );
                }
                *dst = src.to_device(p.device()).to_kind(dst.kind());
            }
        }
        Ok(())
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

/// Flat per-token log-probs of a set of samples, in order (no grad).
fn flat_logprobs(policy: &Policy, seqs: &[(Vec<i64>, Vec<i64>)], budget: usize) -> Result<Tensor> {
    let lps = tch::no_grad(|| policy.logprobs(seqs, budget))?;
    let parts: Vec<Tensor> = lps.into_iter().map(|s| s.logprobs).collect();
    Ok(Tensor::cat(&parts, 0))
}

/// Runs the policy update of a step.
pub struct Trainer {
    cfg: TrainConfig,
    opt: AdamW,
}

impl Trainer {
    /// A trainer over the policy's trainable parameters.
    pub fn new(cfg: TrainConfig, policy: &Policy) -> Self {
        let opt = AdamW::new(policy.trainable_var_store());
        Self { cfg, opt }
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

    /// One epoch over `samples` in `mini_batches` optimiser steps. `reference` supplies the KL
    /// anchor (skipped when `kl_coef` is 0 or it is `None`).
    pub fn update(
        &mut self,
        policy: &Policy,
        reference: Option<&Policy>,
        samples: &[Sample],
    ) -> Result<UpdateStats> {
        let samples: Vec<&Sample> = samples
            .iter()
            .filter(|s| !s.completion.is_empty())
            .collect();
        if samples.is_empty() {
            return Ok(UpdateStats::default());
        }
        let budget = self.cfg.micro_batch_tokens;
        let seqs: Vec<(Vec<i64>, Vec<i64>)> = samples
            .iter()
            .map(|s| (s.prompt.clone(), s.completion.clone()))
            .collect();
        // π_old with the weights that generated the rollouts (before any update of this step).
        let old_all = flat_logprobs(policy, &seqs, budget)?;
        let ref_all = match (reference, self.cfg.kl_coef > 0.0) {
            (Some(r), true) => Some(flat_logprobs(r, &seqs, budget)?),
            _ => None,
        };
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0i64);
        for (_, c) in &seqs {
            offsets.push(offsets[offsets.len() - 1] + c.len() as i64);
        }
        let loss_cfg = self.cfg.loss();
        let k = self.cfg.mini_batches.min(samples.len());
        let mut stats = UpdateStats::default();
        let total_tokens = offsets[seqs.len()] as usize;
        // Mini-batch j takes samples j, j+k, j+2k, ...: every prompt's group is spread evenly.
        for j in 0..k {
            let idx: Vec<usize> = (j..samples.len()).step_by(k).collect();
            let mb_tokens: i64 = idx.iter().map(|&i| offsets[i + 1] - offsets[i]).sum();
            self.opt.zero_grad();
            let mb_seqs: Vec<(Vec<i64>, Vec<i64>)> = idx.iter().map(|&i| seqs[i].clone()).collect();
            for micro in Policy::micro_batches(&mb_seqs, budget) {
                let batch: Vec<&(Vec<i64>, Vec<i64>)> =
                    micro.iter().map(|&m| &mb_seqs[m]).collect();
                let out = policy.logprobs_batch(&batch)?;
                let logp = Tensor::cat(&out.iter().map(|o| &o.logprobs).collect::<Vec<_>>(), 0);
                let entropy = Tensor::cat(&out.iter().map(|o| &o.entropy).collect::<Vec<_>>(), 0);
                let mut old = Vec::new();
                let mut refs = Vec::new();
                let mut adv = Vec::new();
                for &m in &micro {
                    let i = idx[m];
                    let (a, b) = (offsets[i], offsets[i + 1]);
                    old.push(old_all.narrow(0, a, b - a));
                    if let Some(r) = &ref_all {
                        refs.push(r.narrow(0, a, b - a));
                    }
                    adv.push(Tensor::full(
                        [b - a],
                        samples[i].advantage,
                        (Kind::Float, logp.device()),
                    ));
                }
                let old = Tensor::cat(&old, 0);
                let adv = Tensor::cat(&adv, 0);
                let ref_t = (!refs.is_empty()).then(|| Tensor::cat(&refs, 0));
                let mask = logp.ones_like().detach();
                let out = ppo_loss(
                    &LossInputs {
                        logp: &logp,
                        old_logp: &old,
                        ref_logp: ref_t.as_ref(),
                        entropy: Some(&entropy),
                        advantages: &adv,
                        mask: &mask,
                    },
                    &loss_cfg,
                );
                (out.sum / mb_tokens as f64).backward();
                stats.loss += out.pg_sum / total_tokens as f64;
                stats.kl += out.kl_sum / total_tokens as f64;
                stats.clip_frac += out.clipped / total_tokens as f64;
                stats.entropy +=
                    entropy.detach().sum(Kind::Double).double_value(&[]) / total_tokens as f64;
            }
            let norm = self.opt.clip_grad_norm(self.cfg.grad_clip);
            if !norm.is_finite() {
                bail!("gradient norm is {norm} at optimiser step {}: refusing to apply it (lower train.lr?)", self.opt.steps() + 1);
            }
            stats.grad_norm += norm / k as f64;
            self.opt.step(&self.cfg);
        }
        stats.tokens = total_tokens;
        Ok(stats)
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
/// parameters named by `prefixes`, over one prompt's rollouts (cures-algorithm.md §4, Eq. 21):
/// E‖G‖² per class and ‖E₁[G] − E₀[G]‖² when both classes are present.
pub fn gradient_class_stats(
    policy: &Policy,
    prefixes: &[String],
    rollouts: &[GradRollout<'_>],
) -> Result<ClassStats> {
    // Trainable parameters only (with LoRA, name adapter tensors in `grad_stat_params`).
    let vars: BTreeMap<String, Tensor> = policy
        .trainable_var_store()
        .variables()
        .into_iter()
        .collect();
    let params: Vec<Tensor> = vars
        .into_iter()
        .filter(|(n, t)| t.requires_grad() && prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .map(|(_, t)| t)
        .collect();
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
