//! Strategies (docs/algorithm.md §7): each decides, from the posterior, how prompts are
//! weighted for sampling and how a drawn batch's completion budget is split.

use super::allocation::{
    gvm_weight, neyman_allocate, sigma_bernoulli, AllocationError, GradientStats,
};
use super::posterior::Posterior;
use super::sampler::WeightRule;
use crate::config::{
    BatchConfig, CurriculumConfig, PEstimate, SigmaKind, StrategyKind, TemperatureRule,
};

/// One distinct prompt of a step's batch, with how many of the m draws hit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Index into the current pool.
    pub local: u32,
    /// Global prompt id.
    pub prompt: u32,
    /// Number of draws merged into this group (1 without replacement).
    pub multiplicity: u32,
}

/// A strategy with its resolved parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    kind: StrategyKind,
    tau: f64,
    temperature: TemperatureRule,
    sigma: SigmaKind,
    p_estimate: PEstimate,
    n_min: u32,
    n_max: u32,
    gvm_a: f64,
    gvm_b: f64,
}

impl Strategy {
    /// Resolve from the config (n_max default N/4).
    pub fn from_config(c: &CurriculumConfig, b: &BatchConfig) -> Self {
        Self {
            kind: c.strategy,
            tau: c.tau,
            temperature: c.temperature,
            sigma: c.sigma,
            p_estimate: c.p_estimate,
            n_min: c.n_min.min(u32::MAX as usize) as u32,
            n_max: c.n_max_for(b).min(u32::MAX as usize) as u32,
            gvm_a: c.gvm_a,
            gvm_b: c.gvm_b,
        }
    }

    /// Which strategy.
    pub fn kind(&self) -> StrategyKind {
        self.kind
    }

    /// How prompts are weighted for sampling: ρ for CurES, uniform for GRPO and GVM, uniform
    /// over informative prompts for Speed-RL.
    pub fn weight_rule(&self) -> WeightRule {
        match self.kind {
            StrategyKind::Cures => match self.temperature {
                TemperatureRule::Global => WeightRule::Cures {
                    tau: self.tau,
                    p: self.p_estimate,
                },
                TemperatureRule::ReleasedCode => WeightRule::ReleasedCode { p: self.p_estimate },
            },
            StrategyKind::Grpo | StrategyKind::Gvm => WeightRule::Uniform,
            StrategyKind::SpeedRl => WeightRule::Informative,
        }
    }

    /// The accuracy estimate this strategy uses for `prompt`.
    pub fn p(&self, posterior: &Posterior, prompt: usize) -> f64 {
        match self.p_estimate {
            PEstimate::PosteriorMean => posterior.mean(prompt),
            PEstimate::MaxLikelihood => posterior.ml_estimate(prompt),
        }
    }

    /// Allocation weight of one draw of `prompt` (before multiplying by the multiplicity).
    pub fn allocation_weight(
        &self,
        posterior: &Posterior,
        grads: &GradientStats,
        prompt: u32,
    ) -> f64 {
        match self.kind {
            StrategyKind::Cures => {
                let p = self.p(posterior, prompt as usize);
                match self.sigma {
                    SigmaKind::Bernoulli => sigma_bernoulli(p),
                    SigmaKind::Gradient => grads.sigma(prompt, p),
                }
            }
            StrategyKind::Grpo | StrategyKind::SpeedRl => 1.0,
            StrategyKind::Gvm => {
                // GVM estimates p from sampled responses: c/n when observed.
                let (_, n) = posterior.counts(prompt as usize);
                let p = if n > 0 {
                    posterior.ml_estimate(prompt as usize)
                } else {
                    posterior.mean(prompt as usize)
                };
                let g = match grads.get(prompt) {
                    Some(s) => match (s.sq_norm_correct, s.sq_norm_wrong) {
                        (Some(c), Some(w)) => (p * c + (1.0 - p) * w).sqrt(),
                        (Some(x), None) | (None, Some(x)) => x.sqrt(),
                        (None, None) => grads.mean_norm(),
                    },
                    None => grads.mean_norm(),
                };
                gvm_weight(p, g, self.gvm_a, self.gvm_b)
            }
        }
    }

    /// Rollout counts for the batch's groups, Σ = `budget` exactly. A group drawn k times gets
    /// k times the weight and bounds [k·n_min, k·n_max]. GVM gives prompts with p = 0 no
    /// rollouts (lower bound 0).
    pub fn allocate(
        &self,
        draws: &[Draw],
        posterior: &Posterior,
        grads: &GradientStats,
        budget: u64,
    ) -> Result<Vec<u32>, AllocationError> {
        let mut weights = Vec::with_capacity(draws.len());
        let mut lo = Vec::with_capacity(draws.len());
        let mut hi = Vec::with_capacity(draws.len());
        for d in draws {
            let w = self.allocation_weight(posterior, grads, d.prompt);
            let k = d.multiplicity;
            weights.push(w * f64::from(k));
            let zero_ok = self.kind == StrategyKind::Gvm && w == 0.0;
            lo.push(if zero_ok {
                0
            } else {
                self.n_min.saturating_mul(k)
            });
            hi.push(self.n_max.saturating_mul(k));
        }
        neyman_allocate(&weights, &lo, &hi, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curriculum::posterior::BetaPrior;

    fn cfg(kind: StrategyKind) -> (CurriculumConfig, BatchConfig) {
        let c = CurriculumConfig {
            strategy: kind,
            n_max: Some(16),
            ..Default::default()
        };
        let b = BatchConfig {
            prompts: 4,
            budget: 32,
        };
        (c, b)
    }

    fn draws(n: u32) -> Vec<Draw> {
        (0..n)
            .map(|i| Draw {
                local: i,
                prompt: i,
                multiplicity: 1,
            })
            .collect()
    }

    #[test]
    fn grpo_splits_equally() {
        let (c, b) = cfg(StrategyKind::Grpo);
        let s = Strategy::from_config(&c, &b);
        let mut post = Posterior::new(4, BetaPrior::default(), 1.0);
        post.observe(0, 4, 4);
        let n = s
            .allocate(&draws(4), &post, &GradientStats::default(), 32)
            .unwrap();
        assert_eq!(n, vec![8; 4]);
        assert_eq!(s.weight_rule(), WeightRule::Uniform);
    }

    #[test]
    fn cures_follows_sigma_and_merges_duplicates() {
        let (c, b) = cfg(StrategyKind::Cures);
        let s = Strategy::from_config(&c, &b);
        let mut post = Posterior::new(3, BetaPrior::default(), 1.0);
        post.observe(1, 0, 10); // p̂ = 1/12: small σ
        let d = vec![
            Draw {
                local: 0,
                prompt: 0,
                multiplicity: 2,
            },
            Draw {
                local: 1,
                prompt: 1,
                multiplicity: 1,
            },
            Draw {
                local: 2,
                prompt: 2,
                multiplicity: 1,
            },
        ];
        let n = s
            .allocate(&d, &post, &GradientStats::default(), 32)
            .unwrap();
        assert_eq!(n.iter().sum::<u32>(), 32);
        assert!(n[0] > n[2] && n[2] > n[1], "{n:?}");
        assert!(n[0] >= 4, "merged group keeps 2·n_min");
    }

    #[test]
    fn gvm_starves_unsolved_prompts() {
        let (c, b) = cfg(StrategyKind::Gvm);
        let s = Strategy::from_config(&c, &b);
        let mut post = Posterior::new(4, BetaPrior::default(), 1.0);
        post.observe(0, 0, 4);
        post.observe(1, 2, 4);
        post.observe(2, 4, 4);
        let n = s
            .allocate(&draws(4), &post, &GradientStats::default(), 32)
            .unwrap();
        assert_eq!(n[0], 0);
        assert_eq!(n.iter().sum::<u32>(), 32);
        assert!(n[1] > n[2], "{n:?}");
    }
}
