//! The policy loss (docs/algorithm.md §5): token-level PPO clipped surrogate with dual clip for
//! negative advantages, plus a k3 KL penalty to the reference policy.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Loss hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// PPO clip ε.
    pub clip_eps: f64,
    /// Dual clip c for negative advantages (≥ 1; the loss per token is capped at −A·c).
    pub dual_clip: f64,
    /// k3 KL coefficient.
    pub kl_coef: f64,
    /// Entropy bonus coefficient (paper: 0).
    pub entropy_coef: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            clip_eps: 0.2,
            dual_clip: 3.0,
            kl_coef: 0.001,
            entropy_coef: 0.0,
        }
    }
}

/// Per-token inputs of a micro-batch, all of one shape (e.g. the flat concatenation of the
/// micro-batch's completion tokens).
pub struct LossInputs<'a> {
    /// log π_θ of the sampled tokens (with grad).
    pub logp: &'a Tensor,
    /// log π_old (no grad).
    pub old_logp: &'a Tensor,
    /// log π_ref (no grad); `None` when the KL term is off.
    pub ref_logp: Option<&'a Tensor>,
    /// Entropy of π_θ per position (with grad); `None` when the entropy term is off.
    pub entropy: Option<&'a Tensor>,
    /// Advantages, broadcast over each completion's tokens.
    pub advantages: &'a Tensor,
    /// 1 for completion tokens, 0 for padding.
    pub mask: &'a Tensor,
}

/// The micro-batch's summed loss and statistics. The caller divides by the mini-batch's token
/// count (token-mean over the mini-batch), which makes gradient accumulation exact. The
/// statistics stay on the device (detached, f64) so a step syncs with the host once.
pub struct LossOutput {
    /// Σ over tokens of (policy loss + kl_coef·kl − entropy_coef·H): backward this / tokens.
    pub sum: Tensor,
    /// Σ of the PPO term alone.
    pub pg_sum: Tensor,
    /// Σ of the k3 KL (0 without a reference).
    pub kl_sum: Tensor,
    /// Tokens whose ratio was clipped.
    pub clipped: Tensor,
}

impl LossOutput {
    /// [`LossOutput::pg_sum`] on the host.
    pub fn pg(&self) -> f64 {
        self.pg_sum.double_value(&[])
    }
    /// [`LossOutput::kl_sum`] on the host.
    pub fn kl(&self) -> f64 {
        self.kl_sum.double_value(&[])
    }
    /// [`LossOutput::clipped`] on the host.
    pub fn clipped_tokens(&self) -> f64 {
        self.clipped.double_value(&[])
    }
}

/// k3 estimator of KL(π_θ ‖ π_ref) per token, clamped to [−10, 10].
pub fn k3_kl(logp: &Tensor, ref_logp: &Tensor) -> Tensor {
    let d = ref_logp - logp;
    (d.exp() - &d - 1.0).clamp(-10.0, 10.0)
}

/// Token-level PPO loss of a micro-batch (summed, see [`LossOutput`]).
pub fn ppo_loss(x: &LossInputs<'_>, cfg: &LossConfig) -> LossOutput {
    let adv = x.advantages.to_kind(x.logp.kind());
    let mask = x.mask.to_kind(x.logp.kind());
    // Mask before exp so padded positions never overflow.
    let log_ratio = ((x.logp - x.old_logp) * &mask).clamp(-20.0, 20.0);
    let ratio = log_ratio.exp();
    let pg1 = -&adv * &ratio;
    let pg2 = -&adv * ratio.clamp(1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps);
    let clipped_pg = pg1.maximum(&pg2);
    // Dual clip: for A < 0 the loss per token is at most −A·c.
    let pg3 = -&adv * cfg.dual_clip;
    let pg = clipped_pg
        .minimum(&pg3)
        .where_self(&adv.lt(0.0), &clipped_pg);
    let pg_masked = &pg * &mask;
    let clipped = (pg2.gt_tensor(&pg1).to_kind(Kind::Float) * &mask)
        .detach()
        .sum(Kind::Double);
    let pg_sum_t = pg_masked.sum(Kind::Float);
    let pg_sum = pg_sum_t.detach().to_kind(Kind::Double);
    let mut total = pg_sum_t;
    let mut kl_sum = Tensor::zeros([], (Kind::Double, x.logp.device()));
    if let Some(r) = x.ref_logp {
        let kl = k3_kl(x.logp, r) * &mask;
        let kl_t = kl.sum(Kind::Float);
        kl_sum = kl_t.detach().to_kind(Kind::Double);
        if cfg.kl_coef != 0.0 {
            total += kl_t * cfg.kl_coef;
        }
    }
    if let (Some(h), true) = (x.entropy, cfg.entropy_coef != 0.0) {
        total -= (h * &mask).sum(Kind::Float) * cfg.entropy_coef;
    }
    LossOutput {
        sum: total,
        pg_sum,
        kl_sum,
        clipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).reshape([1, v.len() as i64])
    }

    #[test]
    fn clip_and_dual_clip_values() {
        let cfg = LossConfig::default();
        let old = t(&[0.0, 0.0, 0.0]);
        // ratios e^0.5=1.65, e^-0.5=0.61, 1
        let logp = t(&[0.5, -0.5, 0.0]);
        let mask = t(&[1.0, 1.0, 0.0]);
        // positive advantage: min(r·A, clip(r)·A) → loss −1.2 and −0.607
        let adv = t(&[1.0, 1.0, 1.0]);
        let out = ppo_loss(
            &LossInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: None,
                entropy: None,
                advantages: &adv,
                mask: &mask,
            },
            &cfg,
        );
        let want = -1.2 - (-0.5f64).exp();
        assert!((out.pg() - want).abs() < 1e-5, "{} vs {want}", out.pg());
        // negative advantage, huge ratio: dual clip caps the loss at −A·c = 3
        let logp = t(&[3.0, 0.0, 0.0]);
        let adv = t(&[-1.0, -1.0, -1.0]);
        let mask = t(&[1.0, 0.0, 0.0]);
        let out = ppo_loss(
            &LossInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: None,
                entropy: None,
                advantages: &adv,
                mask: &mask,
            },
            &cfg,
        );
        assert!((out.pg() - 3.0).abs() < 1e-5, "{}", out.pg());
    }

    #[test]
    fn k3_is_zero_at_equality_and_positive_otherwise() {
        let a = t(&[-1.0, -2.0]);
        let kl = k3_kl(&a, &a);
        assert_eq!(kl.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let b = t(&[-1.5, -0.5]);
        let kl = Vec::<f32>::try_from(k3_kl(&a, &b).reshape([-1])).expect("vec");
        assert!(kl.iter().all(|&k| k > 0.0));
        // d = ref − logp = −0.5: e^−0.5 + 0.5 − 1
        assert!((f64::from(kl[0]) - ((-0.5f64).exp() - 0.5)).abs() < 1e-6);
    }

    #[test]
    fn gradient_flows_only_through_unclipped_tokens() {
        let cfg = LossConfig {
            kl_coef: 0.0,
            ..Default::default()
        };
        let logp = t(&[0.5, 0.1]).set_requires_grad(true);
        let old = t(&[0.0, 0.0]);
        let adv = t(&[1.0, 1.0]);
        let mask = t(&[1.0, 1.0]);
        let out = ppo_loss(
            &LossInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: None,
                entropy: None,
                advantages: &adv,
                mask: &mask,
            },
            &cfg,
        );
        out.sum.backward();
        let g = Vec::<f32>::try_from(logp.grad().reshape([-1])).expect("grad");
        assert_eq!(g[0], 0.0, "clipped token has no gradient");
        assert!((f64::from(g[1]) + 0.1f64.exp()).abs() < 1e-5);
        assert_eq!(out.clipped_tokens(), 1.0);
    }
}
