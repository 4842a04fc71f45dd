//! The study's statistics (docs/study.md), pure: held-out curves in, efficiency ratios,
//! area-under-curve and final-accuracy differences with 95% confidence intervals out.
//!
//! A curve is a run's held-out accuracy at each evaluation against every completion generated up
//! to it (training and pre-rollouts). It is smoothed by a 3-evaluation running mean (each mean
//! placed at the mean x of its window, so a straight line stays on itself) before crossings and
//! final accuracies are read off it.

/// (completions generated, accuracy) per evaluation, in order.
pub type Curve = Vec<(f64, f64)>;

/// Evaluations in the trailing running mean.
pub const WINDOW: usize = 3;

/// The running mean over up to [`WINDOW`] consecutive evaluations ending at each one (the first
/// points average what exists), placed at the mean x of the same window: a trailing mean placed
/// at its window's last x would lag a rising curve by about one evaluation and pull every
/// ratio of crossings toward 1.
pub fn smooth(curve: &[(f64, f64)]) -> Curve {
    (0..curve.len())
        .map(|k| {
            let lo = (k + 1).saturating_sub(WINDOW);
            let w = &curve[lo..=k];
            let n = w.len() as f64;
            (
                w.iter().map(|p| p.0).sum::<f64>() / n,
                w.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

/// When a curve first reaches a level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossing {
    /// At this many completions (linear interpolation between the two evaluations around it).
    At(f64),
    /// Never within the run: censored at its last completion count (the true value is larger).
    Censored(f64),
}

impl Crossing {
    /// The value (the crossing, or the censoring bound).
    pub fn value(self) -> f64 {
        match self {
            Crossing::At(x) | Crossing::Censored(x) => x,
        }
    }
    /// Whether the run never reached the level.
    pub fn censored(self) -> bool {
        matches!(self, Crossing::Censored(_))
    }
}

/// The first completions count at which the smoothed curve reaches `level` (≥), interpolating
/// linearly between the smoothed point below and the one at or above it. A curve already at the
/// level at its first point crosses there. A curve that never reaches it is censored at the
/// run's last completion count (empty curves at 0).
pub fn crossing(curve: &[(f64, f64)], level: f64) -> Crossing {
    let s = smooth(curve);
    for k in 0..s.len() {
        let (x, y) = s[k];
        if y >= level {
            if k == 0 {
                return Crossing::At(x);
            }
            let (x0, y0) = s[k - 1];
            let f = if y > y0 { (level - y0) / (y - y0) } else { 1.0 };
            return Crossing::At(x0 + f.clamp(0.0, 1.0) * (x - x0));
        }
    }
    Crossing::Censored(curve.last().map_or(0.0, |p| p.0))
}

/// The smoothed curve's last value (the mean of the last [`WINDOW`] evaluations).
pub fn final_accuracy(curve: &[(f64, f64)]) -> f64 {
    smooth(curve).last().map_or(f64::NAN, |p| p.1)
}

/// The mean accuracy of the raw curve over completions [0, `upto`] (trapezoids, the curve held
/// flat before its first point, linearly interpolated at `upto`): the area under the curve
/// divided by `upto`. NaN for an empty curve or `upto` ≤ 0.
pub fn mean_accuracy_upto(curve: &[(f64, f64)], upto: f64) -> f64 {
    if curve.is_empty() || upto.is_nan() || upto <= 0.0 {
        return f64::NAN;
    }
    let mut area = 0.0;
    let (mut px, mut py) = (0.0, curve[0].1);
    for &(x, y) in curve {
        if x <= px {
            py = y;
            continue;
        }
        if x >= upto {
            let yu = py + (y - py) * (upto - px) / (x - px);
            area += 0.5 * (py + yu) * (upto - px);
            return area / upto;
        }
        area += 0.5 * (py + y) * (x - px);
        (px, py) = (x, y);
    }
    // The curve ends before `upto`: held flat at its last value.
    area += py * (upto - px);
    area / upto
}

/// Mean and sample variance (n − 1); variance NaN below 2 values.
pub fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, f64::NAN);
    }
    (
        m,
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

/// A difference of means with its 95% Welch interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Point estimate.
    pub mean: f64,
    /// Lower end (NaN when it cannot be computed: fewer than 2 values on a side).
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

/// mean(a) − mean(b) with the 95% Welch t interval (Welch–Satterthwaite degrees of freedom).
/// With zero variance on both sides the interval is the point.
pub fn welch_diff(a: &[f64], b: &[f64]) -> Interval {
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let d = ma - mb;
    let (na, nb) = (a.len() as f64, b.len() as f64);
    if !(va.is_finite() && vb.is_finite()) {
        return Interval {
            mean: d,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    if se2 == 0.0 {
        return Interval {
            mean: d,
            lo: d,
            hi: d,
        };
    }
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let h = t_quantile(0.975, df) * se2.sqrt();
    Interval {
        mean: d,
        lo: d - h,
        hi: d + h,
    }
}

/// The efficiency ratio R = exp(mean log C_grpo − mean log C_method) with its 95% interval
/// (Welch on log C): R > 1 means the method needs fewer completions than GRPO.
pub fn efficiency_ratio(grpo: &[f64], method: &[f64]) -> Interval {
    let lg: Vec<f64> = grpo.iter().map(|x| x.max(1.0).ln()).collect();
    let lm: Vec<f64> = method.iter().map(|x| x.max(1.0).ln()).collect();
    let d = welch_diff(&lg, &lm);
    Interval {
        mean: d.mean.exp(),
        lo: d.lo.exp(),
        hi: d.hi.exp(),
    }
}

/// Pearson correlation of two equally long samples (NaN when undefined).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 2 {
        return f64::NAN;
    }
    let (ma, _) = mean_var(a);
    let (mb, _) = mean_var(b);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

/// The `p` quantile of Student's t with `df` (> 0, not necessarily whole) degrees of freedom, by
/// bisection on the CDF (regularised incomplete beta); within 1e-10.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if !(0.0 < p && p < 1.0 && df > 0.0) {
        return f64::NAN;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p {
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Student's t CDF.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * inc_beta(0.5 * df, 0.5, x);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta I_x(a, b) (continued fraction, Lentz).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        let num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        // The even and the odd term of the fraction.
        for num in [
            num,
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    (ln_front.exp() / a) * f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Two-sided 95% critical values.
        for (df, t) in [
            (1.0, 12.706_204_736),
            (2.0, 4.302_652_730),
            (4.0, 2.776_445_105),
            (10.0, 2.228_138_852),
            (30.0, 2.042_272_456),
            (1e6, 1.959_966_4),
        ] {
            let q = t_quantile(0.975, df);
            assert!(close(q, t, 1e-6), "df {df}: {q} vs {t}");
        }
        assert!(close(t_quantile(0.5, 3.0), 0.0, 1e-9));
        assert!(close(t_quantile(0.025, 4.0), -2.776_445_105, 1e-6));
        assert!(close(t_cdf(0.0, 7.0), 0.5, 1e-12));
    }

    #[test]
    fn smoothing_and_crossings_interpolate() {
        let c = vec![(0.0, 0.3), (100.0, 0.6), (200.0, 0.9), (300.0, 0.9)];
        let s = smooth(&c);
        assert_eq!(s[0], (0.0, 0.3));
        assert!(close(s[1].0, 50.0, 1e-12) && close(s[1].1, 0.45, 1e-12));
        assert!(close(s[2].0, 100.0, 1e-12) && close(s[2].1, 0.6, 1e-12));
        assert!(close(s[3].0, 200.0, 1e-12) && close(s[3].1, 0.8, 1e-12));
        // 0.5 lies between s1 = 0.45 (x 50) and s2 = 0.6 (x 100): 50 + 50 · 0.05/0.15.
        match crossing(&c, 0.5) {
            Crossing::At(x) => assert!(close(x, 50.0 + 50.0 / 3.0, 1e-9), "{x}"),
            other => panic!("{other:?}"),
        }
        // A straight line stays on itself: a level is crossed where the line reaches it.
        let line: Vec<(f64, f64)> = (0..10)
            .map(|k| (10.0 * k as f64, 0.01 * k as f64))
            .collect();
        match crossing(&line, 0.045) {
            Crossing::At(x) => assert!(close(x, 45.0, 1e-9), "{x}"),
            other => panic!("{other:?}"),
        }
        // Already there at the first evaluation.
        assert_eq!(crossing(&c, 0.2), Crossing::At(0.0));
        // Never: censored at the last completion count.
        let cr = crossing(&c, 0.85);
        assert_eq!(cr, Crossing::Censored(300.0));
        assert!(cr.censored() && cr.value() == 300.0);
        // A single noisy spike does not cross a level its running mean never reaches.
        let spike = vec![
            (0.0, 0.3),
            (10.0, 0.3),
            (20.0, 0.9),
            (30.0, 0.3),
            (40.0, 0.3),
        ];
        assert!(crossing(&spike, 0.6).censored());
        assert!(close(final_accuracy(&c), 0.8, 1e-12));
    }

    #[test]
    fn area_under_the_curve_is_a_mean_accuracy() {
        let c = vec![(0.0, 0.0), (100.0, 1.0)];
        assert!(close(mean_accuracy_upto(&c, 100.0), 0.5, 1e-12));
        // Interpolated at 50: area 0.125 over 50.
        assert!(close(mean_accuracy_upto(&c, 50.0), 0.25, 1e-12));
        // Past the end: held at 1 → (50 + 100) / 200.
        assert!(close(mean_accuracy_upto(&c, 200.0), 0.75, 1e-12));
        // A curve whose first point is past 0 is held flat before it.
        let late = vec![(50.0, 0.4), (100.0, 0.4)];
        assert!(close(mean_accuracy_upto(&late, 100.0), 0.4, 1e-12));
    }

    #[test]
    fn welch_and_the_efficiency_ratio() {
        // Known: a = [1,2,3] (mean 2, var 1), b = [2,4,6] (mean 4, var 4): se² = 1/3 + 4/3 = 5/3,
        // df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = 2.9412.
        let d = welch_diff(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]);
        assert!(close(d.mean, -2.0, 1e-12));
        let df: f64 = (25.0 / 9.0) / ((1.0 / 9.0) / 2.0 + (16.0 / 9.0) / 2.0);
        let h = t_quantile(0.975, df) * (5.0f64 / 3.0).sqrt();
        assert!(
            close(d.lo, -2.0 - h, 1e-9) && close(d.hi, -2.0 + h, 1e-9),
            "{d:?}"
        );
        // Independent check (Simpson integration of the t density): 3.2187586145.
        assert!(
            close(t_quantile(0.975, df), 3.218_758_614_5, 1e-8),
            "{}",
            t_quantile(0.975, df)
        );
        // One value on a side: no interval.
        assert!(welch_diff(&[1.0], &[2.0, 3.0]).lo.is_nan());
        // R: GRPO needs 2x the completions of the method, with no spread → R = 2 exactly.
        let r = efficiency_ratio(&[200.0, 400.0, 800.0], &[100.0, 200.0, 400.0]);
        assert!(close(r.mean, 2.0, 1e-12));
        assert!(r.lo < 2.0 && r.hi > 2.0, "{r:?}");
        let exact = efficiency_ratio(&[200.0, 200.0], &[100.0, 100.0]);
        assert_eq!((exact.lo, exact.hi), (exact.mean, exact.mean));
        assert!(close(exact.mean, 2.0, 1e-12));
        assert!(close(
            pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]),
            0.9986,
            1e-3
        ));
    }
}
