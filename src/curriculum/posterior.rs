//! Beta posterior of every prompt's accuracy (docs/algorithm.md §2, Eq. 22–24).
//!
//! Struct-of-arrays so 10M prompts cost 32 bytes each and a step touches only the sampled
//! prompts' entries.

use serde::{Deserialize, Serialize};

/// Beta(α_0, β_0) prior every prompt starts from (and is reset to).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BetaPrior {
    /// α_0 (pseudo-successes).
    pub alpha: f64,
    /// β_0 (pseudo-failures).
    pub beta: f64,
}

impl Default for BetaPrior {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: 1.0,
        }
    }
}

/// Per-prompt Beta(α_i, β_i) posteriors plus bookkeeping, for up to `u32::MAX` prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Posterior {
    prior: BetaPrior,
    /// Forgetting λ ∈ (0, 1]; 1 disables it.
    lambda: f64,
    alpha: Vec<f64>,
    beta: Vec<f64>,
    /// Raw successes observed since the prompt's last reset (no forgetting applied).
    successes: Vec<u32>,
    /// Raw rollouts observed since the prompt's last reset.
    trials: Vec<u32>,
    /// How many steps drew this prompt (merged draws count once per step).
    times_sampled: Vec<u32>,
    /// Rollouts the prompt got the last time it was drawn.
    last_n: Vec<u32>,
}

impl Posterior {
    /// `len` prompts, all at the prior.
    pub fn new(len: usize, prior: BetaPrior, lambda: f64) -> Self {
        Self {
            prior,
            lambda,
            alpha: vec![prior.alpha; len],
            beta: vec![prior.beta; len],
            successes: vec![0; len],
            trials: vec![0; len],
            times_sampled: vec![0; len],
            last_n: vec![0; len],
        }
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.alpha.len()
    }

    /// True when the store holds no prompt.
    pub fn is_empty(&self) -> bool {
        self.alpha.is_empty()
    }

    /// The prior.
    pub fn prior(&self) -> BetaPrior {
        self.prior
    }

    /// Forgetting factor λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Record `s` correct out of `n` rollouts of `prompt` (Eq. 22–23). With λ < 1, the old
    /// counts first decay toward the prior: α ← λα + (1−λ)α_0, likewise β.
    pub fn observe(&mut self, prompt: usize, s: u32, n: u32) {
        debug_assert!(s <= n, "successes {s} > rollouts {n}");
        let s = s.min(n);
        let i = prompt;
        if self.lambda < 1.0 {
            let l = self.lambda;
            self.alpha[i] = l * self.alpha[i] + (1.0 - l) * self.prior.alpha;
            self.beta[i] = l * self.beta[i] + (1.0 - l) * self.prior.beta;
        }
        self.alpha[i] += f64::from(s);
        self.beta[i] += f64::from(n - s);
        self.successes[i] = self.successes[i].saturating_add(s);
        self.trials[i] = self.trials[i].saturating_add(n);
    }

    /// Record that a step drew `prompt` and gave it `n` rollouts.
    pub fn record_sample(&mut self, prompt: usize, n: u32) {
        self.times_sampled[prompt] = self.times_sampled[prompt].saturating_add(1);
        self.last_n[prompt] = n;
    }

    /// Reset one prompt to the prior (its sampling history is kept).
    pub fn reset(&mut self, prompt: usize) {
        self.alpha[prompt] = self.prior.alpha;
        self.beta[prompt] = self.prior.beta;
        self.successes[prompt] = 0;
        self.trials[prompt] = 0;
    }

    /// Reset every prompt to the prior.
    pub fn reset_all(&mut self) {
        self.alpha.fill(self.prior.alpha);
        self.beta.fill(self.prior.beta);
        self.successes.fill(0);
        self.trials.fill(0);
    }

    /// Posterior mean p̂ = α/(α+β), the point estimate used everywhere.
    #[inline]
    pub fn mean(&self, prompt: usize) -> f64 {
        let a = self.alpha[prompt];
        a / (a + self.beta[prompt])
    }

    /// Maximum-likelihood accuracy c/n from raw counts (prior mean when never observed):
    /// the released code's estimate.
    pub fn ml_estimate(&self, prompt: usize) -> f64 {
        match self.trials[prompt] {
            0 => self.prior.alpha / (self.prior.alpha + self.prior.beta),
            n => f64::from(self.successes[prompt]) / f64::from(n),
        }
    }

    /// α_i.
    pub fn alpha(&self, prompt: usize) -> f64 {
        self.alpha[prompt]
    }

    /// β_i.
    pub fn beta(&self, prompt: usize) -> f64 {
        self.beta[prompt]
    }

    /// Raw (successes, rollouts) observed since the last reset.
    pub fn counts(&self, prompt: usize) -> (u32, u32) {
        (self.successes[prompt], self.trials[prompt])
    }

    /// Steps that drew this prompt.
    pub fn times_sampled(&self, prompt: usize) -> u32 {
        self.times_sampled[prompt]
    }

    /// Rollouts at the last draw.
    pub fn last_n(&self, prompt: usize) -> u32 {
        self.last_n[prompt]
    }

    /// Sum of α and β over all prompts minus the prior mass: the number of observed rollouts
    /// when λ = 1 (conservation check).
    pub fn observed_mass(&self) -> f64 {
        let prior = self.prior.alpha + self.prior.beta;
        self.alpha
            .iter()
            .zip(&self.beta)
            .map(|(a, b)| a + b - prior)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_updates_counts_and_mean() {
        let mut p = Posterior::new(3, BetaPrior::default(), 1.0);
        assert_eq!(p.mean(0), 0.5);
        p.observe(0, 3, 4);
        assert_eq!((p.alpha(0), p.beta(0)), (4.0, 2.0));
        assert!((p.mean(0) - 4.0 / 6.0).abs() < 1e-15);
        assert_eq!(p.counts(0), (3, 4));
        assert_eq!(p.ml_estimate(0), 0.75);
        assert_eq!(p.ml_estimate(1), 0.5);
        assert_eq!(p.observed_mass(), 4.0);
        p.reset(0);
        assert_eq!(p.mean(0), 0.5);
        assert_eq!(p.counts(0), (0, 0));
    }

    #[test]
    fn forgetting_decays_toward_prior() {
        let mut p = Posterior::new(1, BetaPrior::default(), 0.5);
        p.observe(0, 8, 8); // α = 0.5*1 + 0.5*1 + 8 = 9, β = 1
        assert_eq!((p.alpha(0), p.beta(0)), (9.0, 1.0));
        p.observe(0, 0, 0); // decay only: α = 0.5*9 + 0.5 = 5
        assert_eq!((p.alpha(0), p.beta(0)), (5.0, 1.0));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut p = Posterior::new(
            4,
            BetaPrior {
                alpha: 0.5,
                beta: 2.0,
            },
            0.9,
        );
        p.observe(2, 1, 3);
        p.record_sample(2, 3);
        let json = serde_json::to_string(&p).unwrap();
        let q: Posterior = serde_json::from_str(&json).unwrap();
        assert_eq!(p, q);
    }
}
