//! Strategies (docs/algorithm.md §7): each decides, from the posterior, how prompts are
//! weighted for sampling and how a drawn batch's completion budget is split.

use super::allocation::{
    gvm_weight, neyman_allocate, sigma_bernoulli, AllocationError, GradientStats,
};
use super::posterior::Posterior;
use super::sampler::WeightRule;
use crate::config::{
    AllocationRule, BatchConfig, CurriculumConfig, PEstimate, SigmaKind, StrategyKind,
    TemperatureRule, ZeroSigma,
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
    zero_sigma: ZeroSigma,
    allocation: AllocationRule,
    n_min: u32,
    n_max: u32,
    gvm_a: f64,
    gvm_b: f64,
}

/// A batch's rollout counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// n_i per group.
    pub n: Vec<u32>,
    /// Groups that got no completions because their σ is 0 (`zero_sigma = "skip"`).
    pub zero_sigma: u32,
}

impl Allocation {
    /// Σ n_i.
    pub fn total(&self) -> u64 {
        self.n.iter().map(|&x| u64::from(x)).sum()
    }
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
            zero_sigma: c.zero_sigma,
            allocation: c.allocation,
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

    /// Whether the strategy reads the posterior, and so needs an iteration's N' pre-rollouts:
    /// uniform GRPO weighs and allocates without it, so it generates none.
    pub fn uses_pre_rollouts(&self) -> bool {
        self.kind != StrategyKind::Grpo
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
                // The released sampler's p̂ is the Beta mean of the counts, whatever p_estimate
                // (which steers the allocation) says.
                TemperatureRule::ReleasedCode => WeightRule::ReleasedCode,
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

    /// Rollout counts for the batch's groups. A group drawn k times gets k times the weight and
    /// bounds [k·n_min, k·n_max]. GVM gives prompts with p = 0 no rollouts (lower bound 0);
    /// CurES with `zero_sigma = "skip"` gives prompts with σ = 0 none at all (bounds [0, 0]).
    /// Σ n = `budget` exactly whenever the bounds allow it; when the skipped prompts leave the
    /// others unable to absorb it within n_max, Σ n is what they can take (the shortfall is the
    /// caller's to report), never handed back to σ = 0 prompts.
    pub fn allocate(
        &self,
        draws: &[Draw],
        posterior: &Posterior,
        grads: &GradientStats,
        budget: u64,
    ) -> Result<Allocation, AllocationError> {
        let mut weights = Vec::with_capacity(draws.len());
        let mut lo = Vec::with_capacity(draws.len());
        let mut hi = Vec::with_capacity(draws.len());
        let mut skipped = 0u32;
        let equal = self.allocation == AllocationRule::Equal;
        for d in draws {
            let w = if equal {
                1.0
            } else {
                self.allocation_weight(posterior, grads, d.prompt)
            };
            let k = d.multiplicity;
            weights.push(w * f64::from(k));
            let skip =
                self.kind == StrategyKind::Cures && self.zero_sigma == ZeroSigma::Skip && w == 0.0;
            skipped += u32::from(skip);
            let zero_ok = self.kind == StrategyKind::Gvm && w == 0.0;
            lo.push(if zero_ok || skip {
                0
            } else {
                self.n_min.saturating_mul(k)
            });
            hi.push(if skip {
                0
            } else {
                self.n_max.saturating_mul(k)
            });
        }
        let total = if skipped > 0 {
            budget.min(hi.iter().map(|&x| u64::from(x)).sum())
        } else {
            budget
        };
        Ok(Allocation {
            n: neyman_allocate(&weights, &lo, &hi, total)?,
            zero_sigma: skipped,
        })
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
            .unwrap()
            .n;
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
            .unwrap()
            .n;
        assert_eq!(n.iter().sum::<u32>(), 32);
        assert!(n[0] > n[2] && n[2] > n[1], "{n:?}");
        assert!(n[0] >= 4, "merged group keeps 2·n_min");
    }

    /// `allocation = "equal"`: CurES still samples by ρ, but every drawn prompt gets N/m, a
    /// σ = 0 prompt included (nothing skipped); duplicates keep k times the share.
    #[test]
    fn equal_allocation_keeps_cures_sampling_and_splits_evenly() {
        let (mut c, b) = cfg(StrategyKind::Cures);
        c.allocation = AllocationRule::Equal;
        c.p_estimate = PEstimate::MaxLikelihood;
        let s = Strategy::from_config(&c, &b);
        let mut post = Posterior::new(4, BetaPrior::default(), 1.0);
        post.observe(1, 4, 4); // σ = 0: skipped by the strategy's own rule
        post.observe(2, 1, 8);
        let a = s
            .allocate(&draws(4), &post, &GradientStats::default(), 32)
            .unwrap();
        assert_eq!(a.n, vec![8; 4]);
        assert_eq!(a.zero_sigma, 0);
        assert!(matches!(s.weight_rule(), WeightRule::Cures { .. }));
        c.allocation = AllocationRule::Strategy;
        let a = Strategy::from_config(&c, &b)
            .allocate(&draws(4), &post, &GradientStats::default(), 32)
            .unwrap();
        assert_eq!(a.n[1], 0, "{:?}", a.n);
        assert_eq!(a.zero_sigma, 1);
        let d = vec![
            Draw {
                local: 0,
                prompt: 0,
                multiplicity: 3,
            },
            Draw {
                local: 1,
                prompt: 1,
                multiplicity: 1,
            },
        ];
        c.allocation = AllocationRule::Equal;
        let a = Strategy::from_config(&c, &b)
            .allocate(&d, &post, &GradientStats::default(), 32)
            .unwrap();
        assert_eq!(a.n, vec![24, 8]);
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
            .unwrap()
            .n;
        assert_eq!(n[0], 0);
        assert_eq!(n.iter().sum::<u32>(), 32);
        assert!(n[1] > n[2], "{n:?}");
    }

    /// Max-likelihood p̂: 0/4 and 4/4 prompts have σ = 0.
    fn ml_posterior(counts: &[(u32, u32)]) -> Posterior {
        let mut post = Posterior::new(counts.len(), BetaPrior::default(), 1.0);
        for (i, &(s, n)) in counts.iter().enumerate() {
            post.observe(i, s, n);
        }
        post
    }

    fn ml_cures(zero_sigma: ZeroSigma, n_max: usize, budget: usize) -> Strategy {
        let c = CurriculumConfig {
            strategy: StrategyKind::Cures,
            p_estimate: PEstimate::MaxLikelihood,
            zero_sigma,
            n_max: Some(n_max),
            ..Default::default()
        };
        Strategy::from_config(&c, &BatchConfig { prompts: 4, budget })
    }

    #[test]
    fn zero_sigma_prompts_get_no_completions_and_the_rest_take_the_budget() {
        let post = ml_posterior(&[(0, 4), (2, 4), (4, 4), (1, 4)]);
        let g = GradientStats::default();
        let a = ml_cures(ZeroSigma::Skip, 24, 32)
            .allocate(&draws(4), &post, &g, 32)
            .unwrap();
        assert_eq!((a.n[0], a.n[2]), (0, 0), "{a:?}");
        assert_eq!(a.zero_sigma, 2);
        assert_eq!(
            a.total(),
            32,
            "Σ n = N exact: the two σ > 0 prompts absorb it"
        );
        assert!(a.n[1] >= 2 && a.n[3] >= 2 && a.n[1] > a.n[3], "{a:?}");
        // n_max = 8 leaves room for 16 only: fewer than N, none handed to σ = 0 prompts.
        let a = ml_cures(ZeroSigma::Skip, 8, 32)
            .allocate(&draws(4), &post, &g, 32)
            .unwrap();
        assert_eq!(a.n, vec![0, 8, 0, 8]);
        assert_eq!(a.total(), 16);
        // "n_min" keeps today's behaviour: every drawn prompt gets at least n_min.
        let a = ml_cures(ZeroSigma::NMin, 16, 32)
            .allocate(&draws(4), &post, &g, 32)
            .unwrap();
        assert!(
            a.n.iter().all(|&n| n >= 2) && a.total() == 32 && a.zero_sigma == 0,
            "{a:?}"
        );
    }

    #[test]
    fn allocation_bounds_hold_on_random_batches() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..500 {
            let m = rng.random_range(1..12usize);
            let counts: Vec<(u32, u32)> = (0..m)
                .map(|_| {
                    let n = rng.random_range(0..6u32);
                    (rng.random_range(0..=n), n)
                })
                .collect();
            let post = ml_posterior(&counts);
            let n_max = rng.random_range(2..20usize);
            let budget = rng.random_range(2 * m..=(n_max * m).max(2 * m));
            let s = ml_cures(ZeroSigma::Skip, n_max, budget);
            let a = s
                .allocate(
                    &draws(m as u32),
                    &post,
                    &GradientStats::default(),
                    budget as u64,
                )
                .unwrap();
            let mut room = 0u64;
            for (i, &n) in a.n.iter().enumerate() {
                let p = post.ml_estimate(i);
                if sigma_bernoulli(p) == 0.0 {
                    assert_eq!(n, 0, "σ = 0 ⇒ n = 0: {counts:?} {a:?}");
                } else {
                    assert!(n >= 2 && n as usize <= n_max, "bounds: {counts:?} {a:?}");
                    room += n_max as u64;
                }
            }
            assert_eq!(a.total(), (budget as u64).min(room), "{counts:?} {a:?}");
        }
    }
}
