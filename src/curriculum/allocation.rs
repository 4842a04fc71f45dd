//! Rollout allocation (docs/algorithm.md §4, Eq. 15–21): n_i ∝ σ_i under Σ n_i = N exactly,
//! with bounds n_min ≤ n_i ≤ n_max.
//!
//! The continuous solution is the water level λ with Σ clamp(λ·w_i, lo_i, hi_i) = N (found
//! exactly by sweeping the sorted breakpoints); it is then integerised by largest remainder,
//! never leaving the bounds, so the sum is exact every time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Why no allocation exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// Σ lo > N: the lower bounds alone exceed the budget.
    #[error("lower bounds need {needed} completions but the budget is {total}")]
    BudgetTooSmall {
        /// Σ lo.
        needed: u64,
        /// N.
        total: u64,
    },
    /// Σ hi < N: the upper bounds cannot absorb the budget.
    #[error("upper bounds allow only {allowed} completions but the budget is {total}")]
    BudgetTooLarge {
        /// Σ hi.
        allowed: u64,
        /// N.
        total: u64,
    },
    /// Inputs of different lengths or a NaN/negative weight.
    #[error("invalid allocation input: {0}")]
    Invalid(String),
}

/// Neyman allocation: integers n_i with Σ n_i = `total`, lo_i ≤ n_i ≤ hi_i, and n_i as close as
/// possible to the continuous water-filling solution x_i = clamp(λ w_i, lo_i, hi_i).
///
/// Items of weight 0 get their lower bound, unless the positive-weight items cannot absorb the
/// budget, in which case the zero-weight items share the rest equally. All weights 0 means an
/// equal split.
pub fn neyman_allocate(
    weights: &[f64],
    lo: &[u32],
    hi: &[u32],
    total: u64,
) -> Result<Vec<u32>, AllocationError> {
    let m = weights.len();
    if lo.len() != m || hi.len() != m {
        return Err(AllocationError::Invalid(format!(
            "{m} weights, {} lower and {} upper bounds",
            lo.len(),
            hi.len()
        )));
    }
    if let Some(i) = (0..m).find(|&i| !(weights[i] >= 0.0 && weights[i].is_finite())) {
        return Err(AllocationError::Invalid(format!(
            "weight {i} is {}",
            weights[i]
        )));
    }
    if let Some(i) = (0..m).find(|&i| lo[i] > hi[i]) {
        return Err(AllocationError::Invalid(format!(
            "item {i}: lower bound {} above upper bound {}",
            lo[i], hi[i]
        )));
    }
    let sum_lo: u64 = lo.iter().map(|&x| u64::from(x)).sum();
    let sum_hi: u64 = hi.iter().map(|&x| u64::from(x)).sum();
    if sum_lo > total {
        return Err(AllocationError::BudgetTooSmall {
            needed: sum_lo,
            total,
        });
    }
    if sum_hi < total {
        return Err(AllocationError::BudgetTooLarge {
            allowed: sum_hi,
            total,
        });
    }
    let x = water_fill(weights, lo, hi, total as f64);
    Ok(integerise(&x, weights, lo, hi, total))
}

/// Continuous water-filling: x_i = clamp(λ w_i, lo_i, hi_i) with Σ x_i = total.
fn water_fill(weights: &[f64], lo: &[u32], hi: &[u32], total: f64) -> Vec<f64> {
    let m = weights.len();
    let positive: Vec<usize> = (0..m).filter(|&i| weights[i] > 0.0).collect();
    let zero_lo: f64 = (0..m)
        .filter(|&i| weights[i] <= 0.0)
        .map(|i| f64::from(lo[i]))
        .sum();
    let pos_hi: f64 = positive.iter().map(|&i| f64::from(hi[i])).sum();
    let mut x: Vec<f64> = lo.iter().map(|&l| f64::from(l)).collect();
    if positive.is_empty() || zero_lo + pos_hi < total {
        // The positive items saturate (or there are none): give them hi and share the rest
        // equally among the zero-weight items.
        for &i in &positive {
            x[i] = f64::from(hi[i]);
        }
        let zeros: Vec<usize> = (0..m).filter(|&i| weights[i] <= 0.0).collect();
        if zeros.is_empty() {
            return x;
        }
        let rest = total - pos_hi;
        let zw = vec![1.0; zeros.len()];
        let zlo: Vec<u32> = zeros.iter().map(|&i| lo[i]).collect();
        let zhi: Vec<u32> = zeros.iter().map(|&i| hi[i]).collect();
        let zx = water_fill(&zw, &zlo, &zhi, rest);
        for (k, &i) in zeros.iter().enumerate() {
            x[i] = zx[k];
        }
        return x;
    }
    // g(λ) = C + λ S, piecewise linear and non-decreasing; sweep breakpoints in order.
    // Event (λ, item, entering): at lo/w the item starts to follow λw, at hi/w it saturates.
    let mut events: Vec<(f64, usize, bool)> = Vec::with_capacity(2 * positive.len());
    for &i in &positive {
        events.push((f64::from(lo[i]) / weights[i], i, true));
        events.push((f64::from(hi[i]) / weights[i], i, false));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.2.cmp(&a.2)));
    let mut c = zero_lo + positive.iter().map(|&i| f64::from(lo[i])).sum::<f64>();
    let mut s = 0.0;
    let mut active = 0usize; // items following λw; s is reset to exactly 0 when none is
    let mut lambda = 0.0;
    let mut found = false;
    for &(at, i, entering) in &events {
        let g_at = c + at * s;
        if g_at >= total && s > 0.0 {
            lambda = (total - c) / s;
            found = true;
            break;
        }
        if entering {
            c -= f64::from(lo[i]);
            s += weights[i];
            active += 1;
        } else {
            c += f64::from(hi[i]);
            s -= weights[i];
            active -= 1;
            if active == 0 {
                s = 0.0;
            }
        }
        lambda = at;
        if c + at * s >= total && s <= 0.0 {
            found = true;
            break;
        }
    }
    if !found && s > 0.0 {
        lambda = (total - c) / s;
    }
    for &i in &positive {
        x[i] = (lambda * weights[i]).clamp(f64::from(lo[i]), f64::from(hi[i]));
    }
    x
}

/// Largest-remainder rounding of `x` (Σ x ≈ total) to integers within bounds, Σ = total exactly.
fn integerise(x: &[f64], weights: &[f64], lo: &[u32], hi: &[u32], total: u64) -> Vec<u32> {
    let m = x.len();
    let mut n: Vec<u32> = (0..m)
        .map(|i| (x[i].floor().max(0.0) as u64).clamp(u64::from(lo[i]), u64::from(hi[i])) as u32)
        .collect();
    let frac = |i: usize, n: &[u32]| x[i] - f64::from(n[i]);
    loop {
        let sum: u64 = n.iter().map(|&v| u64::from(v)).sum();
        if sum == total {
            return n;
        }
        if sum < total {
            let need = (total - sum) as usize;
            let mut cand: Vec<usize> = (0..m).filter(|&i| n[i] < hi[i]).collect();
            // Largest remainder first; ties → larger weight, then lower index (deterministic).
            cand.sort_by(|&a, &b| {
                frac(b, &n)
                    .total_cmp(&frac(a, &n))
                    .then(weights[b].total_cmp(&weights[a]))
                    .then(a.cmp(&b))
            });
            for &i in cand.iter().take(need) {
                n[i] += 1;
            }
        } else {
            let excess = (sum - total) as usize;
            let mut cand: Vec<usize> = (0..m).filter(|&i| n[i] > lo[i]).collect();
            cand.sort_by(|&a, &b| {
                frac(a, &n)
                    .total_cmp(&frac(b, &n))
                    .then(weights[a].total_cmp(&weights[b]))
                    .then(b.cmp(&a))
            });
            for &i in cand.iter().take(excess) {
                n[i] -= 1;
            }
        }
    }
}

/// σ of the Bernoulli estimator: √(p(1−p)) (equal gradient norms, last term of Eq. 21 dropped).
#[inline]
pub fn sigma_bernoulli(p: f64) -> f64 {
    (p * (1.0 - p)).max(0.0).sqrt()
}

/// Per-prompt statistics of per-rollout gradients G = ∇_θ log π(y|x), split by reward class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    /// E_{r=1} ‖G‖² (None: no correct rollout seen).
    pub sq_norm_correct: Option<f64>,
    /// E_{r=0} ‖G‖² (None: no wrong rollout seen).
    pub sq_norm_wrong: Option<f64>,
    /// ‖E_{r=1}[G] − E_{r=0}[G]‖² (0 when a class is empty).
    pub mean_diff_sq: f64,
}

/// σ of the gradient estimator (Eq. 21) at accuracy `p`:
/// σ² = p(1−p)²·E₁‖G‖² + p²(1−p)·E₀‖G‖² − p²(1−p)²·‖E₁G − E₀G‖².
/// When a class is empty, the Bernoulli form scaled by the other class's mean norm; when both
/// are, scaled by `fallback_norm`.
pub fn sigma_gradient(p: f64, stats: &ClassStats, fallback_norm: f64) -> f64 {
    let q = 1.0 - p;
    match (stats.sq_norm_correct, stats.sq_norm_wrong) {
        (Some(c), Some(w)) => {
            let var = p * q * q * c + p * p * q * w - p * p * q * q * stats.mean_diff_sq;
            var.max(0.0).sqrt()
        }
        (Some(norm_sq), None) | (None, Some(norm_sq)) => sigma_bernoulli(p) * norm_sq.sqrt(),
        (None, None) => sigma_bernoulli(p) * fallback_norm,
    }
}

/// GVM's allocation weight G / √(p + a/p^(b−1)); 0 when p = 0.
pub fn gvm_weight(p: f64, g: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    let w = g / (p + a / p.powf(b - 1.0)).sqrt();
    if w.is_finite() {
        w.max(0.0)
    } else {
        0.0
    }
}

/// Per-prompt gradient class statistics, measured by the trainer (pre-rollouts of `cures init`,
/// refreshed from training rollouts) and read by the `gradient` σ estimator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GradientStats {
    per_prompt: HashMap<u32, ClassStats>,
    /// Running mean of ‖G‖ over every rollout seen: the scale for prompts without statistics.
    mean_norm: Option<f64>,
    rollouts: u64,
}

impl GradientStats {
    /// Store a prompt's class statistics and fold its norms into the global mean norm.
    pub fn insert(&mut self, prompt: u32, stats: ClassStats, rollouts: u64) {
        let norm_sq = match (stats.sq_norm_correct, stats.sq_norm_wrong) {
            (Some(c), Some(w)) => 0.5 * (c + w),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => return,
        };
        let total = self.rollouts + rollouts;
        if total > 0 {
            let prev = self.mean_norm.unwrap_or(0.0) * self.rollouts as f64;
            self.mean_norm = Some((prev + norm_sq.sqrt() * rollouts as f64) / total as f64);
            self.rollouts = total;
        }
        self.per_prompt.insert(prompt, stats);
    }

    /// Statistics of `prompt`, if measured.
    pub fn get(&self, prompt: u32) -> Option<&ClassStats> {
        self.per_prompt.get(&prompt)
    }

    /// Mean ‖G‖ over all measured rollouts (1 when nothing was measured).
    pub fn mean_norm(&self) -> f64 {
        self.mean_norm.unwrap_or(1.0)
    }

    /// Number of prompts with statistics.
    pub fn len(&self) -> usize {
        self.per_prompt.len()
    }

    /// True when no statistics were measured.
    pub fn is_empty(&self) -> bool {
        self.per_prompt.is_empty()
    }

    /// σ_i at accuracy p for `prompt` (Eq. 21, falling back to the scaled Bernoulli form).
    pub fn sigma(&self, prompt: u32, p: f64) -> f64 {
        match self.per_prompt.get(&prompt) {
            Some(s) => sigma_gradient(p, s, self.mean_norm()),
            None => sigma_bernoulli(p) * self.mean_norm(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sigma_vector() {
        // σ = [1, 2, 3, 4], N = 20, bounds [1, 10]: exact proportional split 2, 4, 6, 8.
        let n = neyman_allocate(&[1.0, 2.0, 3.0, 4.0], &[1; 4], &[10; 4], 20).unwrap();
        assert_eq!(n, vec![2, 4, 6, 8]);
        // N = 21: x = 2.1, 4.2, 6.3, 8.4 → floors 2, 4, 6, 8, one left → largest remainder (8.4).
        let n = neyman_allocate(&[1.0, 2.0, 3.0, 4.0], &[1; 4], &[10; 4], 21).unwrap();
        assert_eq!(n, vec![2, 4, 6, 9]);
        // Upper bound binds: σ = [1, 1, 10], N = 24, hi = 8 → third saturates at 8, rest 8 + 8.
        let n = neyman_allocate(&[1.0, 1.0, 10.0], &[2; 3], &[8; 3], 24).unwrap();
        assert_eq!(n, vec![8, 8, 8]);
        // σ = [1, 1, 10], N = 20, hi = 12: λ·10 capped at 12 → 4, 4, 12.
        let n = neyman_allocate(&[1.0, 1.0, 10.0], &[2; 3], &[12; 3], 20).unwrap();
        assert_eq!(n, vec![4, 4, 12]);
        // Lower bound binds: σ = [0.01, 1, 1], N = 12, lo = 2 → 2, 5, 5.
        let n = neyman_allocate(&[0.01, 1.0, 1.0], &[2; 3], &[12; 3], 12).unwrap();
        assert_eq!(n, vec![2, 5, 5]);
    }

    #[test]
    fn paper_bell_shape() {
        // Bernoulli σ for p = 0.5, 1/6, 0.9 (and its mirror): more rollouts where p(1−p) is large.
        let ps = [0.5, 1.0 / 6.0, 0.9, 0.1];
        let w: Vec<f64> = ps.iter().map(|&p| sigma_bernoulli(p)).collect();
        let n = neyman_allocate(&w, &[2; 4], &[64; 4], 64).unwrap();
        assert_eq!(n.iter().sum::<u32>(), 64);
        assert!(n[0] > n[1] && n[1] > n[2] && n[2] == n[3], "{n:?}");
    }

    #[test]
    fn zero_weights() {
        assert_eq!(
            neyman_allocate(&[0.0; 3], &[1; 3], &[9; 3], 10).unwrap(),
            vec![4, 3, 3]
        );
        // Zero-weight items keep lo while the others can absorb the budget.
        assert_eq!(
            neyman_allocate(&[0.0, 1.0, 1.0], &[0, 2, 2], &[8; 3], 10).unwrap(),
            vec![0, 5, 5]
        );
        // ... and take the overflow when they cannot.
        assert_eq!(
            neyman_allocate(&[0.0, 1.0, 1.0], &[0, 2, 2], &[8, 3, 3], 10).unwrap(),
            vec![4, 3, 3]
        );
    }

    #[test]
    fn infeasible_budgets_are_errors() {
        assert!(matches!(
            neyman_allocate(&[1.0; 4], &[2; 4], &[4; 4], 7),
            Err(AllocationError::BudgetTooSmall {
                needed: 8,
                total: 7
            })
        ));
        assert!(matches!(
            neyman_allocate(&[1.0; 4], &[2; 4], &[4; 4], 17),
            Err(AllocationError::BudgetTooLarge {
                allowed: 16,
                total: 17
            })
        ));
        assert!(neyman_allocate(&[f64::NAN], &[1], &[2], 1).is_err());
    }

    #[test]
    fn gradient_sigma_reduces_to_bernoulli_for_equal_norms() {
        let s = ClassStats {
            sq_norm_correct: Some(4.0),
            sq_norm_wrong: Some(4.0),
            mean_diff_sq: 0.0,
        };
        for p in [0.1, 0.3, 0.5, 0.8] {
            let g = sigma_gradient(p, &s, 1.0);
            assert!((g - 2.0 * sigma_bernoulli(p)).abs() < 1e-12);
        }
        // Eq. 21 by hand: p = 0.25, E1 = 9, E0 = 1, diff = 4:
        // 0.25·0.5625·9 + 0.0625·0.75·1 − 0.0625·0.5625·4 = 1.265625 + 0.046875 − 0.140625.
        let s = ClassStats {
            sq_norm_correct: Some(9.0),
            sq_norm_wrong: Some(1.0),
            mean_diff_sq: 4.0,
        };
        assert!((sigma_gradient(0.25, &s, 1.0) - 1.171875f64.sqrt()).abs() < 1e-12);
        // Empty class: Bernoulli form scaled by the other class's norm.
        let s = ClassStats {
            sq_norm_correct: None,
            sq_norm_wrong: Some(9.0),
            mean_diff_sq: 0.0,
        };
        assert!((sigma_gradient(0.5, &s, 1.0) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn gvm_weight_shape() {
        assert_eq!(gvm_weight(0.0, 1.0, 1e-3, 2.0), 0.0);
        let w = |p| gvm_weight(p, 1.0, 1e-3, 2.0);
        assert!((w(0.5) - 1.0 / (0.5f64 + 0.002).sqrt()).abs() < 1e-12);
        assert!(w(0.001) < w(0.1), "tiny p is penalised by a/p");
        assert!(w(0.9) < w(0.1), "large p gets fewer rollouts");
    }
}
