//! `summary.csv` and `curves.csv` of a study directory, recomputed from whatever finished runs it
//! holds (`cures study summarize DIR`; `cures study` ends with the same call).
//!
//! A finished run is a directory with `DONE` (its wall seconds), `steps.csv` and `eval.csv`,
//! either `runs/<family>/<arm>-s<seed>` (with `study.json`) or, from the first study,
//! `runs/<arm>-s<seed>` (family `testbed`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::stats::{self, Crossing, Curve};
use crate::run::{EvalRow, StepRow};

/// The family of runs from before families existed (`runs/<arm>-s<seed>`).
pub const LEGACY_FAMILY: &str = "testbed";

/// Where a run sits in the study (`study.json` of its directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunId {
    /// Task family.
    pub family: String,
    /// Arm (method or ablation).
    pub arm: String,
    /// Seed.
    pub seed: u64,
}

/// What the summary needs from one finished run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Which run.
    pub id: RunId,
    /// Held-out accuracy (avg@k) against every completion generated.
    pub curve: Curve,
    /// The teacher-forced probability of the correct answer at the same evaluations (empty when
    /// the run's eval.csv predates it).
    pub answer_prob: Vec<f64>,
    /// Mean over steps of the share of groups with reward variance > 0.
    pub informative_frac: f64,
    /// Completions generated in all (training and pre-rollouts).
    pub completions_total: f64,
    /// Wall seconds (from `DONE`).
    pub wall_s: f64,
}

/// The rows of a run's CSV log, which must exist (`rundir::read_csv` reads a missing one as
/// empty).
fn read_rows<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    anyhow::ensure!(path.exists(), "cannot read {}: not there", path.display());
    crate::rundir::read_csv(path)
}

/// Read one finished run directory.
pub fn read_run(dir: &Path, id: RunId) -> Result<RunRecord> {
    let steps: Vec<StepRow> = read_rows(&dir.join("steps.csv"))?;
    let init: BTreeMap<u64, u64> = steps
        .iter()
        .map(|r| (r.step, r.cum_init_completions))
        .collect();
    let eval_path = dir.join("eval.csv");
    let rows: Vec<EvalRow> = read_rows(&eval_path)?;
    // The first held-out benchmark (per-level rows carry a `/`).
    let first = rows
        .iter()
        .find(|r| !r.benchmark.contains('/'))
        .map(|r| r.benchmark.clone())
        .with_context(|| format!("{}: no held-out rows", eval_path.display()))?;
    let held: Vec<&EvalRow> = rows.iter().filter(|r| r.benchmark == first).collect();
    // The evaluation before training sits after the first iteration's pre-rollouts (the model is
    // still at its start while stage 0 is paid for), so an arm that pre-rolls is not credited
    // with learning across them.
    let stage0 = steps.first().map_or(0, |r| r.cum_init_completions);
    let curve: Curve = held
        .iter()
        .map(|r| {
            let init = if r.step == 0 {
                stage0
            } else {
                init.get(&r.step).copied().unwrap_or(0)
            };
            ((r.cum_completions + init) as f64, r.accuracy)
        })
        .collect();
    let answer_prob: Vec<f64> = held.iter().filter_map(|r| r.answer_prob).collect();
    let answer_prob = if answer_prob.len() == held.len() {
        answer_prob
    } else {
        Vec::new()
    };
    let informative_frac = if steps.is_empty() {
        f64::NAN
    } else {
        steps
            .iter()
            .map(|r| 1.0 - r.zero_var_group_frac)
            .sum::<f64>()
            / steps.len() as f64
    };
    let completions_total = steps
        .last()
        .map_or(0.0, |r| (r.cum_completions + r.cum_init_completions) as f64);
    let done = dir.join("DONE");
    let wall_s = std::fs::read_to_string(&done)
        .with_context(|| format!("cannot read {}", done.display()))?
        .trim()
        .parse::<f64>()
        .unwrap_or(f64::NAN);
    Ok(RunRecord {
        id,
        curve,
        answer_prob,
        informative_frac,
        completions_total,
        wall_s,
    })
}

/// `<arm>-s<seed>` → (arm, seed).
pub fn parse_run_name(name: &str) -> Option<(String, u64)> {
    let (arm, seed) = name.rsplit_once("-s")?;
    let seed = seed.parse().ok()?;
    (!arm.is_empty()).then(|| (arm.to_string(), seed))
}

/// Every finished run under `<study>/runs`, in (family, arm, seed) order. Unfinished runs
/// (no `DONE`) are left out and listed in the second value.
pub fn collect(study: &Path) -> Result<(Vec<RunRecord>, Vec<PathBuf>)> {
    let runs = study.join("runs");
    let mut found = Vec::new();
    let mut unfinished = Vec::new();
    let entries = std::fs::read_dir(&runs)
        .with_context(|| format!("cannot read {} (no study there?)", runs.display()))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("reading {}", runs.display()))?
            .path();
        if !p.is_dir() {
            continue;
        }
        if p.join("steps.csv").exists() || p.join("DONE").exists() || p.join("study.json").exists()
        {
            dirs.push(p);
        } else {
            // A family directory.
            for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
                let q = e
                    .with_context(|| format!("reading {}", p.display()))?
                    .path();
                if q.is_dir() {
                    dirs.push(q);
                }
            }
        }
    }
    for dir in dirs {
        let meta = dir.join("study.json");
        let id = if meta.exists() {
            let text = std::fs::read_to_string(&meta)
                .with_context(|| format!("cannot read {}", meta.display()))?;
            serde_json::from_str::<RunId>(&text)
                .with_context(|| format!("{}: not a study run record", meta.display()))?
        } else {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match parse_run_name(&name) {
                Some((arm, seed)) => RunId {
                    family: LEGACY_FAMILY.to_string(),
                    arm,
                    seed,
                },
                None => continue,
            }
        };
        if !dir.join("DONE").exists() {
            unfinished.push(dir);
            continue;
        }
        found.push(read_run(&dir, id)?);
    }
    found.sort_by(|a, b| {
        (&a.id.family, &a.id.arm, a.id.seed).cmp(&(&b.id.family, &b.id.arm, b.id.seed))
    });
    Ok((found, unfinished))
}

/// One row of `summary.csv`: an arm of a family against that family's GRPO. Accuracies and
/// their differences are fractions (0.01 = one point); empty cells are figures that cannot be
/// computed (no GRPO runs, fewer than 2 seeds on a side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Task family.
    pub family: String,
    /// Arm.
    pub method: String,
    /// Finished seeds.
    pub seeds: usize,
    /// Mean held-out accuracy before training, over every run of the family.
    pub start_acc: f64,
    /// GRPO's mean gain (final − start; final = mean of the last 3 evaluations).
    pub grpo_gain: Option<f64>,
    /// A50 = start + 0.5 × GRPO's mean gain.
    pub target_a50: Option<f64>,
    /// A75 = start + 0.75 × GRPO's mean gain.
    pub target_a75: Option<f64>,
    /// Geometric mean over seeds of C(A50), completions to the first crossing (censored seeds at
    /// their last count).
    pub c_a50: Option<f64>,
    /// R(A50) = exp(mean log C_grpo − mean log C_method): > 1 = fewer completions than GRPO.
    pub ratio_a50: Option<f64>,
    /// Its 95% interval (Welch on log C).
    pub ratio_a50_lo: Option<f64>,
    /// Upper end.
    pub ratio_a50_hi: Option<f64>,
    /// Seeds of this arm that never reach A50 (its R is then an upper bound, without interval).
    pub censored_a50: usize,
    /// C(A75), as `c_a50`.
    pub c_a75: Option<f64>,
    /// R(A75).
    pub ratio_a75: Option<f64>,
    /// Lower end.
    pub ratio_a75_lo: Option<f64>,
    /// Upper end.
    pub ratio_a75_hi: Option<f64>,
    /// Seeds that never reach A75.
    pub censored_a75: usize,
    /// The completions range of the area under the curve: [0, the shortest run of the family].
    pub auc_upto: f64,
    /// Mean accuracy over that range (area under the curve / range), this arm.
    pub auc: f64,
    /// Its difference to GRPO's, with the 95% Welch interval.
    pub auc_diff: Option<f64>,
    /// Lower end.
    pub auc_diff_lo: Option<f64>,
    /// Upper end.
    pub auc_diff_hi: Option<f64>,
    /// Mean final accuracy (mean of each seed's last 3 evaluations).
    pub final_acc_mean: f64,
    /// Final accuracy minus GRPO's, with the 95% Welch interval.
    pub final_gap: Option<f64>,
    /// Lower end.
    pub final_gap_lo: Option<f64>,
    /// Upper end.
    pub final_gap_hi: Option<f64>,
    /// Mean share of groups with reward variance > 0 (steps.csv `zero_var_group_frac`).
    pub informative_frac: f64,
    /// Mean completions generated per seed (training and pre-rollouts).
    pub completions_total: f64,
    /// Seeds censored at A50 or A75 (censored_a50 + censored_a75).
    pub censored: usize,
    /// GRPO's seeds that never reach A50 or A75 (every arm's R is then a lower bound, without
    /// interval).
    pub grpo_censored: usize,
    /// Mean over seeds of the Pearson correlation, across a run's evaluations, between the
    /// teacher-forced answer probability and avg@k (empty for runs without it).
    pub answer_prob_corr: Option<f64>,
    /// Wall seconds of the arm's runs, summed.
    pub wall_s: f64,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn geo_mean(xs: &[f64]) -> f64 {
    (xs.iter().map(|x| x.max(1.0).ln()).sum::<f64>() / xs.len() as f64).exp()
}

/// The summary of a set of finished runs (pure): one row per (family, arm), GRPO first.
pub fn summarize(records: &[RunRecord]) -> Vec<SummaryRow> {
    let mut families: BTreeMap<&str, BTreeMap<&str, Vec<&RunRecord>>> = BTreeMap::new();
    for r in records {
        families
            .entry(&r.id.family)
            .or_default()
            .entry(&r.id.arm)
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for (family, arms) in families {
        let all: Vec<&RunRecord> = arms.values().flatten().copied().collect();
        let starts: Vec<f64> = all
            .iter()
            .filter_map(|r| r.curve.first().map(|p| p.1))
            .collect();
        let start = stats::mean_var(&starts).0;
        let grpo = arms.get("grpo");
        let gain = grpo.map(|g| {
            let finals: Vec<f64> = g.iter().map(|r| stats::final_accuracy(&r.curve)).collect();
            stats::mean_var(&finals).0 - start
        });
        // No targets without a gain to take fractions of (GRPO not run, or not improving).
        let climbing = gain.filter(|g| *g > 0.0);
        let a50 = climbing.map(|g| start + 0.5 * g);
        let a75 = climbing.map(|g| start + 0.75 * g);
        let upto = all
            .iter()
            .filter_map(|r| r.curve.last().map(|p| p.0))
            .fold(f64::INFINITY, f64::min);
        let crossings = |runs: &[&RunRecord], level: Option<f64>| -> Vec<Crossing> {
            match level {
                Some(l) => runs.iter().map(|r| stats::crossing(&r.curve, l)).collect(),
                None => Vec::new(),
            }
        };
        let values = |c: &[Crossing]| c.iter().map(|x| x.value()).collect::<Vec<f64>>();
        let aucs = |runs: &[&RunRecord]| -> Vec<f64> {
            runs.iter()
                .map(|r| stats::mean_accuracy_upto(&r.curve, upto))
                .collect()
        };
        let finals = |runs: &[&RunRecord]| -> Vec<f64> {
            runs.iter()
                .map(|r| stats::final_accuracy(&r.curve))
                .collect()
        };
        let grpo_runs: Vec<&RunRecord> = grpo.cloned().unwrap_or_default();
        let g50 = crossings(&grpo_runs, a50);
        let g75 = crossings(&grpo_runs, a75);
        let grpo_censored = |c: &[Crossing]| c.iter().filter(|x| x.censored()).count();
        let mut order: Vec<&str> = arms.keys().copied().collect();
        order.sort_by_key(|a| (*a != "grpo", *a));
        for arm in order {
            let runs = &arms[arm];
            let is_grpo = arm == "grpo";
            let c50 = crossings(runs, a50);
            let c75 = crossings(runs, a75);
            // A censored seed (on either side) makes the point a bound and leaves no valid
            // interval: the cells stay empty and `censored` says why.
            let ratio =
                |g: &[Crossing], c: &[Crossing]| -> (Option<f64>, Option<f64>, Option<f64>) {
                    if c.is_empty() || g.is_empty() {
                        return (None, None, None);
                    }
                    if is_grpo {
                        return (Some(1.0), None, None);
                    }
                    let r = stats::efficiency_ratio(&values(g), &values(c));
                    if g.iter().chain(c).any(|x| x.censored()) {
                        return (finite(r.mean), None, None);
                    }
                    (finite(r.mean), finite(r.lo), finite(r.hi))
                };
            let (r50, r50lo, r50hi) = ratio(&g50, &c50);
            let (r75, r75lo, r75hi) = ratio(&g75, &c75);
            let diff = |a: Vec<f64>, b: Vec<f64>| -> (Option<f64>, Option<f64>, Option<f64>) {
                if grpo_runs.is_empty() {
                    return (None, None, None);
                }
                if is_grpo {
                    return (Some(0.0), None, None);
                }
                let d = stats::welch_diff(&a, &b);
                (finite(d.mean), finite(d.lo), finite(d.hi))
            };
            let my_auc = aucs(runs);
            let (ad, adlo, adhi) = diff(my_auc.clone(), aucs(&grpo_runs));
            let my_final = finals(runs);
            let (fg, fglo, fghi) = diff(my_final.clone(), finals(&grpo_runs));
            let cens50 = c50.iter().filter(|c| c.censored()).count();
            let cens75 = c75.iter().filter(|c| c.censored()).count();
            let corrs: Vec<f64> = runs
                .iter()
                .filter(|r| !r.answer_prob.is_empty())
                .map(|r| {
                    let acc: Vec<f64> = r.curve.iter().map(|p| p.1).collect();
                    stats::pearson(&r.answer_prob, &acc)
                })
                .filter(|c| c.is_finite())
                .collect();
            let n = runs.len() as f64;
            out.push(SummaryRow {
                family: family.to_string(),
                method: arm.to_string(),
                seeds: runs.len(),
                start_acc: start,
                grpo_gain: gain.and_then(finite),
                target_a50: a50.and_then(finite),
                target_a75: a75.and_then(finite),
                c_a50: (!c50.is_empty()).then(|| geo_mean(&values(&c50))),
                ratio_a50: r50,
                ratio_a50_lo: r50lo,
                ratio_a50_hi: r50hi,
                censored_a50: cens50,
                c_a75: (!c75.is_empty()).then(|| geo_mean(&values(&c75))),
                ratio_a75: r75,
                ratio_a75_lo: r75lo,
                ratio_a75_hi: r75hi,
                censored_a75: cens75,
                auc_upto: upto,
                auc: stats::mean_var(&my_auc).0,
                auc_diff: ad,
                auc_diff_lo: adlo,
                auc_diff_hi: adhi,
                final_acc_mean: stats::mean_var(&my_final).0,
                final_gap: fg,
                final_gap_lo: fglo,
                final_gap_hi: fghi,
                informative_frac: runs.iter().map(|r| r.informative_frac).sum::<f64>() / n,
                completions_total: runs.iter().map(|r| r.completions_total).sum::<f64>() / n,
                censored: cens50 + cens75,
                grpo_censored: grpo_censored(&g50) + grpo_censored(&g75),
                answer_prob_corr: (!corrs.is_empty())
                    .then(|| corrs.iter().sum::<f64>() / corrs.len() as f64),
                wall_s: runs.iter().map(|r| r.wall_s).sum(),
            });
        }
    }
    out
}

/// One point of `curves.csv`.
#[derive(Debug, Serialize)]
struct CurveRow<'a> {
    family: &'a str,
    method: &'a str,
    seed: u64,
    cum_generated_completions: f64,
    accuracy: f64,
    answer_prob: Option<f64>,
}

/// Recompute `summary.csv` and `curves.csv` of a study directory from its finished runs.
pub fn write(study: &Path) -> Result<(Vec<SummaryRow>, Vec<RunRecord>)> {
    let (records, unfinished) = collect(study)?;
    for d in &unfinished {
        eprintln!(
            "study: {} is not finished (no DONE): left out of the summary",
            d.display()
        );
    }
    anyhow::ensure!(
        !records.is_empty(),
        "{}: no finished runs under runs/ (a finished run has DONE, steps.csv and eval.csv)",
        study.display()
    );
    let rows = summarize(&records);
    crate::metrics::write_csv_atomic(&study.join("summary.csv"), &rows)?;
    let mut points = Vec::new();
    for r in &records {
        for (k, &(x, y)) in r.curve.iter().enumerate() {
            points.push(CurveRow {
                family: &r.id.family,
                method: &r.id.arm,
                seed: r.id.seed,
                cum_generated_completions: x,
                accuracy: y,
                answer_prob: r.answer_prob.get(k).copied(),
            });
        }
    }
    crate::metrics::write_csv_atomic(&study.join("curves.csv"), &points)?;
    Ok((rows, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(arm: &str, seed: u64, curve: &[(f64, f64)]) -> RunRecord {
        RunRecord {
            id: RunId {
                family: "f".into(),
                arm: arm.into(),
                seed,
            },
            curve: curve.to_vec(),
            answer_prob: Vec::new(),
            informative_frac: 0.5,
            completions_total: curve.last().map_or(0.0, |p| p.0),
            wall_s: 10.0,
        }
    }

    /// Hand-made curves with known answers: GRPO climbs 0.2 → 0.6 linearly over 400
    /// completions; the method climbs twice as fast (R = 2 at every target); a flat arm never
    /// crosses.
    #[test]
    fn known_curves_give_known_ratios_gaps_and_censoring() {
        let line = |slope: f64, end: f64| -> Vec<(f64, f64)> {
            (0..=8)
                .map(|k| {
                    let x = 50.0 * k as f64;
                    (x, (0.2 + slope * x).min(end))
                })
                .collect()
        };
        let g = line(0.001, 0.6);
        let m = line(0.002, 0.6);
        let recs = vec![
            rec("grpo", 0, &g),
            rec("grpo", 1, &g),
            rec("fast", 0, &m),
            rec("fast", 1, &m),
            // Never climbs: censored at both targets.
            rec("flat", 0, &[(0.0, 0.2), (200.0, 0.2), (400.0, 0.2)]),
            rec("flat", 1, &[(0.0, 0.2), (200.0, 0.2), (400.0, 0.2)]),
        ];
        let rows = summarize(&recs);
        assert_eq!(rows[0].method, "grpo");
        let grpo = &rows[0];
        assert!((grpo.start_acc - 0.2).abs() < 1e-12);
        // GRPO's final (last 3 evaluations: 0.5, 0.55, 0.6 → 0.55): gain 0.35.
        assert!((grpo.grpo_gain.unwrap() - 0.35).abs() < 1e-12, "{grpo:?}");
        assert!((grpo.target_a50.unwrap() - 0.375).abs() < 1e-12);
        assert_eq!(grpo.ratio_a50, Some(1.0));
        assert_eq!(grpo.final_gap, Some(0.0));
        let fast = rows.iter().find(|r| r.method == "fast").unwrap();
        // The smoothed points of a straight line stay on it: GRPO reaches A50 = 0.375 at
        // 175 completions, the method (twice the slope) at 87.5: R = 2 exactly.
        assert!((fast.c_a50.unwrap() - 87.5).abs() < 1e-9, "{fast:?}");
        assert!((fast.ratio_a50.unwrap() - 2.0).abs() < 1e-9, "{fast:?}");
        // Identical seeds: zero spread, the interval is the point.
        assert_eq!(fast.ratio_a50_lo, fast.ratio_a50);
        assert_eq!((fast.censored, fast.grpo_censored), (0, 0));
        // It plateaus at 0.6 within the run, GRPO ends at 0.55 (its last 3 evaluations).
        assert!((fast.final_gap.unwrap() - 0.05).abs() < 1e-12, "{fast:?}");
        assert!(fast.auc_diff.unwrap() > 0.0);
        let flat = rows.iter().find(|r| r.method == "flat").unwrap();
        assert_eq!(
            (flat.censored_a50, flat.censored_a75, flat.censored),
            (2, 2, 4)
        );
        // Censored at 400 (its last count): R(A50) = 175 / 400 is an upper bound, no interval.
        assert!(
            (flat.ratio_a50.unwrap() - 175.0 / 400.0).abs() < 1e-9,
            "{flat:?}"
        );
        assert_eq!((flat.ratio_a50_lo, flat.ratio_a50_hi), (None, None));
        // The AUC range is the shortest run: 400 completions for all.
        assert_eq!(flat.auc_upto, 400.0);
        assert!((flat.auc - 0.2).abs() < 1e-12);
        assert!(flat.final_gap.unwrap() < 0.0);
    }

    /// GRPO not improving: no targets, no ratios (not R = 1 from crossings at the start).
    #[test]
    fn no_gain_no_targets() {
        let c = [(0.0, 0.3), (100.0, 0.29), (200.0, 0.28)];
        let rows = summarize(&[rec("grpo", 0, &c), rec("cures", 0, &c)]);
        for r in &rows {
            assert!(r.grpo_gain.unwrap() < 0.0);
            assert_eq!(
                (r.target_a50, r.ratio_a50, r.c_a50),
                (None, None, None),
                "{r:?}"
            );
        }
        // Without a GRPO arm: no targets and no gaps either.
        let rows = summarize(&[rec("cures", 0, &c)]);
        assert_eq!((rows[0].grpo_gain, rows[0].final_gap), (None, None));
    }

    #[test]
    fn run_names_parse() {
        assert_eq!(
            parse_run_name("cures_tau0.2-s3"),
            Some(("cures_tau0.2".into(), 3))
        );
        assert_eq!(parse_run_name("a-b-s10"), Some(("a-b".into(), 10)));
        assert_eq!(parse_run_name("plots"), None);
        assert_eq!(parse_run_name("-s1"), None);
    }
}
