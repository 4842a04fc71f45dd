//! Per-completion advantages (docs/algorithm.md §5), broadcast over each completion's tokens by
//! the loss. Pure: no tch. Every estimator is valid for groups of unequal size.

use serde::{Deserialize, Serialize};

/// Which advantage estimator the policy update uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageKind {
    /// GRPO: (r − mean_group) / (std_group + 1e-6), unbiased std; all-equal groups get 0.
    Grpo,
    /// REINFORCE++: r whitened over all tokens of the step batch.
    Rpp,
    /// The paper: r − p̂_i, p̂ from the posterior before this step's update.
    Paper,
    /// Dr. GRPO: r − mean_group.
    DrGrpo,
}

/// One prompt's group of completions.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRewards {
    /// Rewards of the group's completions.
    pub rewards: Vec<f64>,
    /// Tokens of each completion (used by `rpp`, which whitens over tokens).
    pub tokens: Vec<usize>,
    /// Posterior mean of the prompt before this step's update (used by `paper`).
    pub p_hat: f64,
}

const STD_EPS: f64 = 1e-6;

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Advantages of every completion, group by group (same shape as the input).
pub fn advantages(kind: AdvantageKind, groups: &[GroupRewards]) -> Vec<Vec<f64>> {
    match kind {
        AdvantageKind::Grpo => groups
            .iter()
            .map(|g| {
                let m = mean(&g.rewards);
                let n = g.rewards.len();
                let all_equal = g.rewards.iter().all(|&r| r == g.rewards[0]);
                if n < 2 || all_equal {
                    return vec![0.0; n];
                }
                let var =
                    g.rewards.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / (n as f64 - 1.0);
                let sd = var.sqrt();
                g.rewards.iter().map(|r| (r - m) / (sd + STD_EPS)).collect()
            })
            .collect(),
        AdvantageKind::DrGrpo => groups
            .iter()
            .map(|g| {
                let m = mean(&g.rewards);
                g.rewards.iter().map(|r| r - m).collect()
            })
            .collect(),
        AdvantageKind::Paper => groups
            .iter()
            .map(|g| g.rewards.iter().map(|r| r - g.p_hat).collect())
            .collect(),
        AdvantageKind::Rpp => {
            // Token-weighted mean and (population) std of r over every token of the batch.
            let (mut w, mut s, mut s2) = (0.0f64, 0.0f64, 0.0f64);
            for g in groups {
                for (r, &t) in g.rewards.iter().zip(&g.tokens) {
                    let t = t as f64;
                    w += t;
                    s += t * r;
                    s2 += t * r * r;
                }
            }
            let m = if w > 0.0 { s / w } else { 0.0 };
            let var = if w > 0.0 {
                (s2 / w - m * m).max(0.0)
            } else {
                0.0
            };
            let sd = var.sqrt();
            groups
                .iter()
                .map(|g| g.rewards.iter().map(|r| (r - m) / (sd + STD_EPS)).collect())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group(rewards: &[f64], p_hat: f64) -> GroupRewards {
        GroupRewards {
            rewards: rewards.to_vec(),
            tokens: vec![3; rewards.len()],
            p_hat,
        }
    }

    #[test]
    fn grpo_hand_values() {
        let a = advantages(AdvantageKind::Grpo, &[group(&[1.0, 0.0, 0.0, 1.0], 0.5)]);
        // mean 0.5, unbiased std = sqrt(1/3) = 0.57735
        let want = 0.5 / (1.0f64 / 3.0).sqrt();
        assert!((a[0][0] - want).abs() < 1e-5, "{:?}", a);
        assert!((a[0][1] + want).abs() < 1e-5);
        let a = advantages(AdvantageKind::Grpo, &[group(&[1.0, 1.0, 1.0], 0.5)]);
        assert_eq!(a[0], vec![0.0; 3]);
        let a = advantages(AdvantageKind::Grpo, &[group(&[1.0], 0.5)]);
        assert_eq!(a[0], vec![0.0]);
    }

    #[test]
    fn paper_and_dr_grpo() {
        let g = [group(&[1.0, 0.0, 0.0], 0.25)];
        assert_eq!(
            advantages(AdvantageKind::Paper, &g)[0],
            vec![0.75, -0.25, -0.25]
        );
        let d = advantages(AdvantageKind::DrGrpo, &g)[0].clone();
        assert!((d[0] - 2.0 / 3.0).abs() < 1e-12 && (d[1] + 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn rpp_whitens_over_tokens() {
        let g = [
            GroupRewards {
                rewards: vec![1.0, 0.0],
                tokens: vec![1, 3],
                p_hat: 0.5,
            },
            GroupRewards {
                rewards: vec![0.0],
                tokens: vec![4],
                p_hat: 0.5,
            },
        ];
        let a = advantages(AdvantageKind::Rpp, &g);
        // tokens: 1 of r=1, 7 of r=0 → mean 1/8, std sqrt(7)/8
        let (m, sd) = (0.125, 7f64.sqrt() / 8.0);
        assert!((a[0][0] - (1.0 - m) / sd).abs() < 1e-4);
        assert!((a[1][0] - (0.0 - m) / sd).abs() < 1e-4);
        // token-weighted mean of the advantages is 0
        let tw = a[0][0] * 1.0 + a[0][1] * 3.0 + a[1][0] * 4.0;
        assert!(tw.abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn group_relative_advantages_are_zero_mean(
            groups in prop::collection::vec(prop::collection::vec(0u8..2, 1..12), 1..8)
        ) {
            let gs: Vec<GroupRewards> =
                groups.iter().map(|g| group(&g.iter().map(|&r| f64::from(r)).collect::<Vec<_>>(), 0.3)).collect();
            for kind in [AdvantageKind::Grpo, AdvantageKind::DrGrpo] {
                for a in advantages(kind, &gs) {
                    prop_assert!(a.iter().sum::<f64>().abs() < 1e-6);
                }
            }
        }
    }
}
