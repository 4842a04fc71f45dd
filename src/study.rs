//! `cures study`: the learning-efficiency study on the CPU testbed.
//!
//! Runs CurES and the baselines (uniform GRPO, Speed-RL, GVM) at the same per-step completion
//! budget and the same number of steps, over several seeds, plus ablations of CurES (τ sweep,
//! the `gradient` σ estimator, forgetting λ = 0.9). Every run is an ordinary `cures run` into
//! `<out>/runs/<variant>-s<seed>`; a finished run leaves `DONE` and is skipped, an interrupted one
//! resumes from its last checkpoint, so the study resumes where it stopped. `summary.csv` answers:
//! how many completions does each method need to reach GRPO's final held-out accuracy? Every
//! completion generated counts: training completions and the pre-rollouts of stage 0.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::run::{run, EvalRow, RunOptions, StepRow};

/// One setting of the study: a name and the config overrides that make it.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Name (`method` column of summary.csv).
    pub name: String,
    /// `key=value` overrides on top of the study config.
    pub overrides: Vec<String>,
}

fn v(name: &str, overrides: &[&str]) -> Variant {
    Variant {
        name: name.to_string(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
    }
}

/// The study's settings: the four methods, then the CurES ablations.
pub fn variants() -> Vec<Variant> {
    vec![
        v("grpo", &["curriculum.strategy=grpo"]),
        v("cures", &["curriculum.strategy=cures"]),
        v("speed_rl", &["curriculum.strategy=speed_rl"]),
        v("gvm", &["curriculum.strategy=gvm"]),
        v(
            "cures_tau0.05",
            &["curriculum.strategy=cures", "curriculum.tau=0.05"],
        ),
        v(
            "cures_tau0.2",
            &["curriculum.strategy=cures", "curriculum.tau=0.2"],
        ),
        v(
            "cures_tau0.5",
            &["curriculum.strategy=cures", "curriculum.tau=0.5"],
        ),
        v(
            "cures_sigma_gradient",
            &["curriculum.strategy=cures", "curriculum.sigma=gradient"],
        ),
        v(
            "cures_lambda0.9",
            &["curriculum.strategy=cures", "curriculum.forgetting=0.9"],
        ),
    ]
}

/// Options of `cures study`.
pub struct StudyOptions {
    /// Study config path (the base of every run).
    pub config: PathBuf,
    /// `--set` overrides applied to every run.
    pub set: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Seeds per setting.
    pub seeds: usize,
    /// Only these variants (all when empty).
    pub only: Vec<String>,
    /// No per-step output.
    pub quiet: bool,
}

/// One row of `summary.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Setting name.
    pub method: String,
    /// Seeds finished.
    pub seeds: usize,
    /// Median over seeds of the completions generated (training and pre-rollouts) to reach
    /// GRPO's final accuracy (empty when fewer than half of the seeds reach it).
    pub completions_to_grpo_final_median: Option<f64>,
    /// Fewest completions over seeds (empty when no seed reaches it).
    pub completions_to_grpo_final_min: Option<f64>,
    /// Most completions over the seeds that reach it.
    pub completions_to_grpo_final_max: Option<f64>,
    /// Seeds that reached GRPO's final accuracy.
    pub seeds_reaching: usize,
    /// Median final held-out accuracy (equal completions for every method).
    pub final_acc_median: f64,
    /// Median held-out accuracy before training.
    pub start_acc_median: f64,
    /// GRPO's median final held-out accuracy (the target).
    pub grpo_final_acc_median: f64,
    /// Median over seeds of the final accuracy minus GRPO's, in points.
    pub delta_vs_grpo_points: f64,
    /// Median fraction of zero-variance groups per step.
    pub zero_var_group_frac_median: f64,
    /// Total wall seconds of the setting's runs.
    pub wall_s: f64,
}

/// One run's held-out curve: (completions generated, accuracy), step 0 first.
pub type Curve = Vec<(u64, f64)>;

/// Per-seed results of one setting: (curve, median zero-variance fraction, wall seconds).
pub type SeedResults = Vec<(Curve, f64, f64)>;

fn read_rows<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.deserialize()
        .enumerate()
        .map(|(i, x)| x.with_context(|| format!("{}:{}: bad row", path.display(), i + 2)))
        .collect()
}

/// The held-out curve of a run directory (first benchmark of eval.csv without a `/` level),
/// against every completion generated: training and the pre-rollouts up to that step
/// (`steps.csv` `cum_init_completions`, so run directories from before `eval.csv` recorded
/// them count the same way).
pub fn heldout_curve(dir: &Path) -> Result<Curve> {
    let steps: Vec<StepRow> = read_rows(&dir.join("steps.csv"))?;
    let init: std::collections::HashMap<u64, u64> = steps
        .iter()
        .map(|r| (r.step, r.cum_init_completions))
        .collect();
    let rows: Vec<EvalRow> = read_rows(&dir.join("eval.csv"))?;
    let first = rows
        .iter()
        .find(|r| !r.benchmark.contains('/'))
        .map(|r| r.benchmark.clone())
        .with_context(|| format!("{}: no held-out rows", dir.join("eval.csv").display()))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.benchmark == first)
        .map(|r| {
            let init = init.get(&r.step).copied().unwrap_or(0);
            (r.cum_completions + init, r.accuracy)
        })
        .collect())
}

fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// First completions count at which the curve reaches `target` (None if never).
pub fn completions_to_reach(curve: &Curve, target: f64) -> Option<u64> {
    curve
        .iter()
        .find(|&&(_, a)| a >= target - 1e-12)
        .map(|&(c, _)| c)
}

/// Summarise finished runs: `runs[method]` = per-seed (curve, mean zero-var fraction, wall).
pub fn summarise(runs: &[(String, SeedResults)]) -> Vec<SummaryRow> {
    let grpo_final = runs
        .iter()
        .find(|(m, _)| m == "grpo")
        .map(|(_, r)| {
            let mut f: Vec<f64> = r
                .iter()
                .filter_map(|(c, _, _)| c.last().map(|x| x.1))
                .collect();
            median(&mut f)
        })
        .unwrap_or(f64::NAN);
    runs.iter()
        .map(|(method, seeds)| {
            let mut reach: Vec<f64> = seeds
                .iter()
                .filter_map(|(c, _, _)| completions_to_reach(c, grpo_final).map(|x| x as f64))
                .collect();
            reach.sort_by(f64::total_cmp);
            let n = seeds.len();
            let mut finals: Vec<f64> = seeds
                .iter()
                .filter_map(|(c, _, _)| c.last().map(|x| x.1))
                .collect();
            let mut starts: Vec<f64> = seeds
                .iter()
                .filter_map(|(c, _, _)| c.first().map(|x| x.1))
                .collect();
            let mut zv: Vec<f64> = seeds.iter().map(|s| s.1).collect();
            // The median over all seeds, counting seeds that never reach as +∞.
            let med = if reach.len() * 2 > n {
                let mut all: Vec<f64> = reach.clone();
                all.resize(n, f64::INFINITY);
                Some(median(&mut all)).filter(|m| m.is_finite())
            } else {
                None
            };
            let final_med = median(&mut finals);
            SummaryRow {
                method: method.clone(),
                seeds: n,
                completions_to_grpo_final_median: med,
                completions_to_grpo_final_min: reach.first().copied(),
                completions_to_grpo_final_max: reach.last().copied(),
                seeds_reaching: reach.len(),
                final_acc_median: final_med,
                start_acc_median: median(&mut starts),
                grpo_final_acc_median: grpo_final,
                delta_vs_grpo_points: 100.0 * (final_med - grpo_final),
                zero_var_group_frac_median: median(&mut zv),
                wall_s: seeds.iter().map(|s| s.2).sum(),
            }
        })
        .collect()
}

/// Run (or resume) every setting × seed, then write `summary.csv` and `curves.csv`.
pub fn study(opts: &StudyOptions) -> Result<Vec<SummaryRow>> {
    let runs_dir = opts.out.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("cannot create {}", runs_dir.display()))?;
    let variants: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| opts.only.is_empty() || opts.only.contains(&v.name))
        .collect();
    if variants.is_empty() {
        anyhow::bail!(
            "--only {:?} matches no setting (have: {})",
            opts.only,
            variants_names().join(", ")
        );
    }
    let mut results: Vec<(String, SeedResults)> = Vec::new();
    for var in &variants {
        let mut per_seed = Vec::new();
        for seed in 0..opts.seeds {
            let dir = runs_dir.join(format!("{}-s{seed}", var.name));
            let done = dir.join("DONE");
            let mut set = opts.set.clone();
            set.extend(var.overrides.iter().cloned());
            set.push(format!("seed={seed}"));
            set.push(format!("name={}-s{seed}", var.name));
            let cfg = Config::load(&opts.config, &set)?;
            let wall = if done.exists() {
                std::fs::read_to_string(&done)?
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(f64::NAN)
            } else {
                let resume = dir.join("checkpoints/latest").exists();
                eprintln!(
                    "study: {} seed {seed}{}",
                    var.name,
                    if resume { " (resuming)" } else { "" }
                );
                let t = Instant::now();
                let s = run(RunOptions {
                    config: cfg,
                    out: Some(dir.clone()),
                    resume,
                    // A seed that stopped before its first checkpoint starts again.
                    overwrite: !resume,
                    quiet: opts.quiet,
                })?;
                let wall = t.elapsed().as_secs_f64();
                eprintln!(
                    "study: {} seed {seed}: held-out {:.3} -> {:.3} in {wall:.0} s",
                    var.name,
                    s.heldout_before.unwrap_or(f64::NAN),
                    s.heldout_after.unwrap_or(f64::NAN)
                );
                crate::metrics::write_atomic(&done, format!("{wall}\n").as_bytes())?;
                wall
            };
            let curve = heldout_curve(&dir)?;
            let steps: Vec<StepRow> = read_rows(&dir.join("steps.csv"))?;
            let mut zv: Vec<f64> = steps.iter().map(|r| r.zero_var_group_frac).collect();
            per_seed.push((curve, median(&mut zv), wall));
        }
        results.push((var.name.clone(), per_seed));
    }
    let summary = summarise(&results);
    crate::metrics::write_csv_atomic(&opts.out.join("summary.csv"), &summary)?;
    #[derive(Serialize)]
    struct CurveRow<'a> {
        method: &'a str,
        seed: usize,
        cum_generated_completions: u64,
        accuracy: f64,
    }
    let mut rows = Vec::new();
    for (m, seeds) in &results {
        for (s, (curve, _, _)) in seeds.iter().enumerate() {
            for &(c, a) in curve {
                rows.push(CurveRow {
                    method: m,
                    seed: s,
                    cum_generated_completions: c,
                    accuracy: a,
                });
            }
        }
    }
    crate::metrics::write_csv_atomic(&opts.out.join("curves.csv"), &rows)?;
    let plots = opts.out.join("plots");
    for (name, keep) in [
        ("study_methods", &["grpo", "cures", "speed_rl", "gvm"][..]),
        (
            "study_cures_ablations",
            &[
                "grpo",
                "cures",
                "cures_tau0.05",
                "cures_tau0.2",
                "cures_tau0.5",
                "cures_sigma_gradient",
                "cures_lambda0.9",
            ][..],
        ),
    ] {
        let bands: Vec<(String, crate::plot::Band)> = results
            .iter()
            .filter(|(m, _)| keep.contains(&m.as_str()))
            .map(|(m, seeds)| (m.clone(), band(seeds)))
            .collect();
        if !bands.is_empty() {
            crate::plot::seed_bands(
                &plots,
                name,
                &format!(
                    "Held-out accuracy vs training completions ({} seeds: median, min–max)",
                    opts.seeds
                ),
                "training completions",
                "held-out accuracy",
                &bands,
            )?;
        }
    }
    Ok(summary)
}

/// Median and min–max over seeds at each evaluation point (seeds share their x values; a point
/// missing in some seed uses the seeds that have it).
fn band(seeds: &SeedResults) -> crate::plot::Band {
    let len = seeds.iter().map(|s| s.0.len()).max().unwrap_or(0);
    (0..len)
        .filter_map(|k| {
            let pts: Vec<(u64, f64)> = seeds.iter().filter_map(|s| s.0.get(k).copied()).collect();
            let x = pts.first()?.0 as f64;
            let mut ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((x, median(&mut ys), lo, hi))
        })
        .collect()
}

fn variants_names() -> Vec<String> {
    variants().into_iter().map(|v| v.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_completions_to_grpo_final() {
        let grpo = vec![
            (vec![(0, 0.2), (100, 0.3), (200, 0.4)], 0.5, 1.0),
            (vec![(0, 0.2), (100, 0.35), (200, 0.5)], 0.5, 1.0),
            (vec![(0, 0.2), (100, 0.3), (200, 0.45)], 0.5, 1.0),
        ];
        let cures = vec![
            (vec![(0, 0.2), (100, 0.46), (200, 0.6)], 0.3, 2.0),
            (vec![(0, 0.2), (100, 0.40), (200, 0.5)], 0.3, 2.0),
            (vec![(0, 0.2), (100, 0.30), (200, 0.4)], 0.3, 2.0),
        ];
        let s = summarise(&[("grpo".into(), grpo), ("cures".into(), cures)]);
        assert_eq!(s[0].grpo_final_acc_median, 0.45);
        // grpo seeds reach 0.45 at 200, 200, 200
        assert_eq!(s[0].completions_to_grpo_final_median, Some(200.0));
        // cures: 100, 200, never → median 200 (never counts as +inf), min 100, max 200
        assert_eq!(s[1].completions_to_grpo_final_median, Some(200.0));
        assert_eq!(s[1].completions_to_grpo_final_min, Some(100.0));
        assert_eq!(s[1].seeds_reaching, 2);
        assert!((s[1].delta_vs_grpo_points - 5.0).abs() < 1e-9);
        assert_eq!(s[1].wall_s, 6.0);
    }
}
