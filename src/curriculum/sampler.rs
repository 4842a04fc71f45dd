//! Prompt sampling distribution ρ (docs/algorithm.md §3, Eq. 11–14) and exact weighted draws.
//!
//! ρ_i ∝ exp(√(p̂_i(1−p̂_i))/τ). Only the prompts observed in a step change their weight, so
//! the weights live in a sum tree: a step costs O(m log N) to update and O(m log N) to draw,
//! instead of O(N) to recompute ρ over the pool. Every internal node is recomputed as the sum
//! of its two children (never by adding deltas), so the tree is an exact function of its leaves:
//! no drift, and a tree rebuilt from a saved posterior is bit-identical to the live one.
//!
//! Numerical safety: exponents are shifted by their largest possible value (√(p(1−p)) ≤ 1/2),
//! so every weight is ≤ 1 and, for τ ≥ 1e-3 (enforced by the config), ≥ e^-500 > 0.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::posterior::Posterior;
use crate::config::PEstimate;

/// How a prompt's unnormalised log-weight is computed from its posterior.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum WeightRule {
    /// Every prompt of the pool equally likely.
    Uniform,
    /// The paper: log w = √(p̂(1−p̂))/τ with one global τ.
    Cures {
        /// Temperature τ > 0.
        tau: f64,
        /// Which p enters √(p(1−p)).
        p: PEstimate,
    },
    /// The released code: w_i = exp(√(p̂_i(1−p̂_i))/t_i) with p̂_i = (c_i + 1)/(n_i + 2), the
    /// Beta(1, 1) mean of the observed counts, and t_i = 100·(c_i + 1) (docs/algorithm.md §8).
    ReleasedCode,
    /// Speed-RL: uniform over prompts not known to be solved always or never (observed
    /// successes strictly between 0 and the rollouts, or no observation yet); others weigh 0.
    Informative,
}

/// The released rule's largest possible log-weight, 0.5/100: subtracted from every prompt's.
pub const RELEASED_MAX_LOG_WEIGHT: f64 = 0.005;

fn p_of(posterior: &Posterior, prompt: usize, est: PEstimate) -> f64 {
    match est {
        PEstimate::PosteriorMean => posterior.mean(prompt),
        PEstimate::MaxLikelihood => posterior.ml_estimate(prompt),
    }
}

impl WeightRule {
    /// Shifted log-weight l ≤ 0 (or −∞ for weight 0) of `prompt`.
    pub fn log_weight(&self, posterior: &Posterior, prompt: usize) -> f64 {
        match *self {
            WeightRule::Uniform => 0.0,
            WeightRule::Cures { tau, p } => {
                let p = p_of(posterior, prompt, p);
                ((p * (1.0 - p)).max(0.0).sqrt() - 0.5) / tau
            }
            WeightRule::ReleasedCode => {
                let (c, n) = posterior.counts(prompt);
                let (c, n) = (f64::from(c), f64::from(n));
                let p = (c + 1.0) / (n + 2.0);
                // One shift for every prompt (σ/t ≤ 0.5/100), so the ordering is the code's.
                (p * (1.0 - p)).max(0.0).sqrt() / (100.0 * (c + 1.0)) - RELEASED_MAX_LOG_WEIGHT
            }
            WeightRule::Informative => {
                let (s, n) = posterior.counts(prompt);
                if n == 0 || (s > 0 && s < n) {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            }
        }
    }

    /// Whether weights depend on the posterior at all (uniform weights never need updates).
    pub fn is_static(&self) -> bool {
        matches!(self, WeightRule::Uniform)
    }
}

/// A binary sum tree over `n` leaves: leaf i is node `n + i`, node k has children 2k and 2k+1,
/// the root is node 1. Each node holds (Σ w, Σ w·l) of its subtree, the second sum giving the
/// entropy of the normalised distribution in O(1).
#[derive(Debug, Clone, PartialEq)]
pub struct SumTree {
    n: usize,
    nodes: Vec<[f64; 2]>,
}

impl SumTree {
    /// Build from (w, w·l) leaf pairs in O(n).
    pub fn from_leaves(leaves: impl ExactSizeIterator<Item = [f64; 2]>) -> Self {
        let n = leaves.len();
        let mut nodes = vec![[0.0, 0.0]; 2 * n.max(1)];
        for (i, leaf) in leaves.enumerate() {
            nodes[n + i] = leaf;
        }
        for k in (1..n).rev() {
            nodes[k] = add(nodes[2 * k], nodes[2 * k + 1]);
        }
        Self { n, nodes }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Σ w over all leaves.
    pub fn total(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.nodes[1][0]
        }
    }

    /// Σ w·l over all leaves.
    pub fn total_wl(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.nodes[1][1]
        }
    }

    /// Weight of leaf `i`.
    pub fn weight(&self, i: usize) -> f64 {
        self.nodes[self.n + i][0]
    }

    /// Leaf `i`'s (w, w·l).
    pub fn leaf(&self, i: usize) -> [f64; 2] {
        self.nodes[self.n + i]
    }

    /// Set leaf `i` and recompute its ancestors from their children.
    pub fn set(&mut self, i: usize, leaf: [f64; 2]) {
        let mut k = self.n + i;
        self.nodes[k] = leaf;
        k /= 2;
        while k >= 1 {
            self.nodes[k] = add(self.nodes[2 * k], self.nodes[2 * k + 1]);
            k /= 2;
        }
    }

    /// The leaf whose cumulative-weight interval contains `u` ∈ [0, total). Never returns a
    /// zero-weight leaf while the total is positive.
    pub fn find(&self, mut u: f64) -> usize {
        let mut k = 1;
        while k < self.n {
            let left = self.nodes[2 * k][0];
            let right = self.nodes[2 * k + 1][0];
            if (u < left && left > 0.0) || right <= 0.0 {
                k *= 2;
            } else {
                u -= left;
                k = 2 * k + 1;
            }
        }
        k - self.n
    }
}

#[inline]
fn add(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] + b[0], a[1] + b[1]]
}

#[inline]
fn leaf_of(l: f64) -> [f64; 2] {
    if l == f64::NEG_INFINITY {
        [0.0, 0.0]
    } else {
        let w = l.exp();
        [w, w * l]
    }
}

/// Why a draw could not deliver the requested prompts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The pool is empty.
    #[error("the prompt pool is empty")]
    EmptyPool,
    /// Without replacement, the pool has fewer prompts of positive weight than requested.
    #[error("only {available} of the {requested} requested prompts have positive probability")]
    Exhausted {
        /// Prompts drawn before the pool ran out.
        drawn: Vec<u32>,
        /// Prompts requested.
        requested: usize,
        /// Positive-weight prompts available.
        available: usize,
    },
}

/// ρ over one pool of prompts (an iteration's subset, or the whole dataset when streaming).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSampler {
    rule: WeightRule,
    /// Pool index → global prompt id.
    pool: Vec<u32>,
    tree: SumTree,
}

impl PromptSampler {
    /// Build ρ over `pool` (global prompt ids) from the posterior, O(|pool|).
    pub fn new(rule: WeightRule, pool: Vec<u32>, posterior: &Posterior) -> Self {
        let tree = SumTree::from_leaves(
            pool.iter()
                .map(|&g| leaf_of(rule.log_weight(posterior, g as usize))),
        );
        Self { rule, pool, tree }
    }

    /// The weight rule.
    pub fn rule(&self) -> WeightRule {
        self.rule
    }

    /// Pool size.
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    /// True when the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// Global prompt id of pool entry `local`.
    pub fn prompt(&self, local: u32) -> u32 {
        self.pool[local as usize]
    }

    /// The pool's global ids.
    pub fn pool(&self) -> &[u32] {
        &self.pool
    }

    /// Recompute the weights of the given pool entries after their posteriors changed:
    /// O(k log N).
    pub fn update(&mut self, locals: &[u32], posterior: &Posterior) {
        if self.rule.is_static() {
            return;
        }
        for &l in locals {
            let g = self.pool[l as usize] as usize;
            self.tree
                .set(l as usize, leaf_of(self.rule.log_weight(posterior, g)));
        }
    }

    /// ρ of pool entry `local` (0 when the pool has no positive weight).
    pub fn rho(&self, local: u32) -> f64 {
        let z = self.tree.total();
        if z > 0.0 {
            self.tree.weight(local as usize) / z
        } else {
            0.0
        }
    }

    /// Sum of the unnormalised weights (positive unless every weight is 0).
    pub fn total_weight(&self) -> f64 {
        self.tree.total()
    }

    /// Shannon entropy H(ρ) in nats, O(1): H = ln Z − Σ w·l / Z.
    pub fn entropy(&self) -> f64 {
        let z = self.tree.total();
        if z > 0.0 {
            (z.ln() - self.tree.total_wl() / z).max(0.0)
        } else {
            0.0
        }
    }

    /// `m` i.i.d. draws from ρ, returned as pool indices in tree order (equal indices are
    /// adjacent). Falls back to uniform over the pool when every weight is 0; the bool says so.
    pub fn draw_with_replacement<R: Rng + ?Sized>(
        &self,
        m: usize,
        rng: &mut R,
    ) -> Result<(Vec<u32>, bool), SampleError> {
        if self.pool.is_empty() {
            return Err(SampleError::EmptyPool);
        }
        let z = self.tree.total();
        if z.is_nan() || z <= 0.0 {
            let n = self.pool.len() as u32;
            let mut out: Vec<u32> = (0..m).map(|_| rng.random_range(0..n)).collect();
            out.sort_unstable();
            return Ok((out, true));
        }
        // Sorting the uniforms makes consecutive descents share their upper path (cache
        // friendly) and puts duplicates next to each other; the multiset drawn is unchanged.
        let mut us: Vec<f64> = (0..m).map(|_| rng.random::<f64>() * z).collect();
        us.sort_unstable_by(f64::total_cmp);
        Ok((
            us.into_iter().map(|u| self.tree.find(u) as u32).collect(),
            false,
        ))
    }

    /// `m` successive draws without replacement (each from ρ renormalised over the prompts not
    /// yet drawn — the distribution of `numpy.random.choice(replace=False, p=ρ)`), O(m log N).
    pub fn draw_without_replacement<R: Rng + ?Sized>(
        &mut self,
        m: usize,
        rng: &mut R,
    ) -> Result<Vec<u32>, SampleError> {
        if self.pool.is_empty() {
            return Err(SampleError::EmptyPool);
        }
        let mut drawn = Vec::with_capacity(m);
        let mut saved = Vec::with_capacity(m);
        let mut exhausted = false;
        for _ in 0..m {
            let z = self.tree.total();
            if z.is_nan() || z <= 0.0 {
                exhausted = true;
                break;
            }
            let leaf = self.tree.find(rng.random::<f64>() * z);
            saved.push((leaf, self.tree.leaf(leaf)));
            self.tree.set(leaf, [0.0, 0.0]);
            drawn.push(leaf as u32);
        }
        // Restore in reverse order: the tree is a function of its leaves, so it is bit-identical
        // to the tree before the draws.
        for &(leaf, value) in saved.iter().rev() {
            self.tree.set(leaf, value);
        }
        if exhausted {
            let available = drawn.len();
            return Err(SampleError::Exhausted {
                drawn,
                requested: m,
                available,
            });
        }
        Ok(drawn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curriculum::posterior::BetaPrior;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn posterior_with_means(means: &[(u32, u32)]) -> Posterior {
        let mut p = Posterior::new(means.len(), BetaPrior::default(), 1.0);
        for (i, &(s, n)) in means.iter().enumerate() {
            p.observe(i, s, n);
        }
        p
    }

    #[test]
    fn released_weights_are_the_papers_table_and_c_zero_weighs_most() {
        // docs/algorithm.md §8: N' = 4, c = 0..4.
        let table = [1.003734, 1.002360, 1.001668, 1.001179, 1.000746];
        let post = posterior_with_means(&[(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]);
        for (c, want) in table.iter().enumerate() {
            let l = WeightRule::ReleasedCode.log_weight(&post, c);
            let w = (l + RELEASED_MAX_LOG_WEIGHT).exp();
            assert!((w - want).abs() < 5e-7, "c = {c}: w = {w:.7}, table {want}");
            assert!(l <= 0.0);
        }
        let s = PromptSampler::new(WeightRule::ReleasedCode, (0..5).collect(), &post);
        let rho: Vec<f64> = (0..5).map(|i| s.rho(i)).collect();
        assert!(
            rho.windows(2).all(|w| w[0] > w[1]),
            "ρ falls with c: {rho:?}"
        );
        let sum: f64 = table.iter().sum();
        for (r, w) in rho.iter().zip(table) {
            assert!((r - w / sum).abs() < 1e-6, "{rho:?}");
        }
    }

    #[test]
    fn tau_point_one_ratio_is_three_point_six() {
        // p̂ = 0.5 (prior) vs p̂ = 1/6 (α=1, β=5).
        let post = posterior_with_means(&[(0, 0), (0, 4)]);
        assert!((post.mean(1) - 1.0 / 6.0).abs() < 1e-15);
        let s = PromptSampler::new(
            WeightRule::Cures {
                tau: 0.1,
                p: PEstimate::PosteriorMean,
            },
            vec![0, 1],
            &post,
        );
        let ratio = s.rho(0) / s.rho(1);
        assert!((ratio - 3.6).abs() < 0.05, "ratio {ratio}");
        // Documented ratios for other temperatures.
        for (tau, want, tol) in [(0.05, 12.8, 0.1), (0.2, 1.9, 0.02), (1.0, 1.14, 0.01)] {
            let s = PromptSampler::new(
                WeightRule::Cures {
                    tau,
                    p: PEstimate::PosteriorMean,
                },
                vec![0, 1],
                &post,
            );
            let r = s.rho(0) / s.rho(1);
            assert!((r - want).abs() < tol, "tau {tau}: {r}");
        }
    }

    #[test]
    fn entropy_matches_direct_computation() {
        let post = posterior_with_means(&[(0, 0), (1, 4), (3, 4), (8, 8), (0, 9)]);
        let s = PromptSampler::new(
            WeightRule::Cures {
                tau: 0.07,
                p: PEstimate::PosteriorMean,
            },
            (0..5).collect(),
            &post,
        );
        let direct: f64 = (0..5)
            .map(|i| s.rho(i))
            .filter(|&r| r > 0.0)
            .map(|r| -r * r.ln())
            .sum();
        assert!((s.entropy() - direct).abs() < 1e-12);
        let sum: f64 = (0..5).map(|i| s.rho(i)).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn tree_is_exact_function_of_leaves() {
        let mut post = posterior_with_means(&vec![(1, 3); 37]);
        let rule = WeightRule::Cures {
            tau: 0.1,
            p: PEstimate::PosteriorMean,
        };
        let mut s = PromptSampler::new(rule, (0..37).collect(), &post);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for round in 0..50u32 {
            let picks: Vec<u32> = (0..5).map(|_| rng.random_range(0..37)).collect();
            for &p in &picks {
                post.observe(p as usize, round % 3, 3);
            }
            s.update(&picks, &post);
            let _ = s.draw_without_replacement(10, &mut rng).unwrap();
        }
        let rebuilt = PromptSampler::new(rule, (0..37).collect(), &post);
        assert_eq!(s, rebuilt);
    }

    #[test]
    fn without_replacement_is_distinct_and_reports_exhaustion() {
        let post = posterior_with_means(&[(0, 4), (2, 4), (0, 0), (4, 4)]);
        let mut s = PromptSampler::new(WeightRule::Informative, (0..4).collect(), &post);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut d = s.draw_without_replacement(2, &mut rng).unwrap();
        d.sort();
        assert_eq!(d, vec![1, 2]);
        match s.draw_without_replacement(3, &mut rng) {
            Err(SampleError::Exhausted { available, .. }) => assert_eq!(available, 2),
            other => panic!("expected exhaustion, got {other:?}"),
        }
    }

    #[test]
    fn all_zero_weights_fall_back_to_uniform() {
        let post = posterior_with_means(&[(0, 4), (4, 4)]);
        let s = PromptSampler::new(WeightRule::Informative, vec![0, 1], &post);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (d, fallback) = s.draw_with_replacement(100, &mut rng).unwrap();
        assert!(fallback);
        assert!(d.contains(&0) && d.contains(&1));
    }
}
