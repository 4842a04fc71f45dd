//! Evaluation estimators: unbiased pass@k (Chen et al. 2021) and majority voting.

use std::collections::HashMap;

use crate::reward::equiv::strings_equivalent;

/// Unbiased pass@k from `n` samples of which `c` are correct: 1 − C(n−c, k)/C(n, k),
/// computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i) (no factorials, no overflow).
/// `k` is clamped to `n` (with fewer samples than k, pass@n is the best estimate).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    let c = c.min(n);
    let k = k.min(n);
    if n == 0 || k == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    let mut prod = 1.0f64;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// Majority vote over normalised answers (`None` = no answer extracted, which never votes).
/// Answers that are equivalent under the reward's comparison count as one; exact string
/// matches are merged first, so only distinct strings are compared. Returns the index of the
/// first sample of the winning answer (ties: the answer seen first) and its vote count.
pub fn majority_vote(normalised: &[Option<String>], rel_tol: f64) -> Option<(usize, usize)> {
    // Distinct strings with (first index, count), in order of first appearance.
    let mut distinct: Vec<(String, usize, usize)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, a) in normalised.iter().enumerate() {
        let Some(a) = a else { continue };
        match index.get(a.as_str()) {
            Some(&d) => distinct[d].2 += 1,
            None => {
                index.insert(a.as_str(), distinct.len());
                distinct.push((a.clone(), i, 1));
            }
        }
    }
    // Merge equivalent distinct strings into clusters (a cluster is represented by its first).
    let mut clusters: Vec<(usize, usize, usize)> = Vec::new(); // (distinct rep, first idx, votes)
    for (d, (s, first, count)) in distinct.iter().enumerate() {
        match clusters
            .iter_mut()
            .find(|(rep, _, _)| strings_equivalent(&distinct[*rep].0, s, rel_tol))
        {
            Some(cl) => cl.2 += count,
            None => clusters.push((d, *first, *count)),
        }
    }
    let mut best: Option<(usize, usize)> = None;
    for &(_, first, votes) in &clusters {
        if best.is_none_or(|(_, v)| votes > v) {
            best = Some((first, votes));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn pass_at_k_hand_values() {
        // n = 4, c = 1, k = 2: 1 − C(3,2)/C(4,2) = 1 − 3/6 = 0.5.
        assert!(close(pass_at_k(4, 1, 2), 0.5));
        // n = 5, c = 2, k = 2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!(close(pass_at_k(5, 2, 2), 0.7));
        // n = 10, c = 3, k = 1 is c/n.
        assert!(close(pass_at_k(10, 3, 1), 0.3));
        // n = 16, c = 1, k = 16: any correct sample → 1.
        assert!(close(pass_at_k(16, 1, 16), 1.0));
        assert!(close(pass_at_k(16, 0, 16), 0.0));
        assert!(close(pass_at_k(8, 8, 4), 1.0));
        // n = 100, c = 10, k = 10: 1 − C(90,10)/C(100,10) = 0.66967... (exact ratio below).
        let ratio: f64 = (0..10)
            .map(|i| (90 - i) as f64 / (100 - i) as f64)
            .product();
        assert!(close(pass_at_k(100, 10, 10), 1.0 - ratio));
        // Large n stays finite and in [0, 1].
        let v = pass_at_k(100_000, 3, 1000);
        assert!(v > 0.0 && v < 1.0, "{v}");
        // Monotone in k.
        for k in 1..16 {
            assert!(pass_at_k(16, 3, k) <= pass_at_k(16, 3, k + 1) + 1e-15);
        }
        assert_eq!(pass_at_k(0, 0, 1), 0.0);
    }

    #[test]
    fn majority_is_equivalence_aware() {
        let s = |v: &[Option<&str>]| -> Vec<Option<String>> {
            v.iter().map(|a| a.map(str::to_string)).collect()
        };
        // "1/2" and "0.5" are one answer with 2 votes; "3" has 2 votes but comes later.
        let v = s(&[
            Some("\\frac{1}{2}"),
            Some("3"),
            Some("0.5"),
            Some("3"),
            None,
        ]);
        assert_eq!(majority_vote(&v, 1e-9), Some((0, 2)));
        let v = s(&[Some("3"), Some("\\frac{1}{2}"), Some("0.5"), Some("0.5")]);
        assert_eq!(majority_vote(&v, 1e-9), Some((1, 3)));
        assert_eq!(majority_vote(&s(&[None, None]), 1e-9), None);
        assert_eq!(majority_vote(&[], 1e-9), None);
    }
}
