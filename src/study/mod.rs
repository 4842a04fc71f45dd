//! `cures study`: the learning-efficiency study (docs/study.md).
//!
//! Runs arms (CurES, uniform GRPO, CurES's sampling alone, Speed-RL, GVM and CurES ablations) at
//! the same per-step completion budget and the same number of steps, over seeds, on a task
//! family. Every run is an ordinary `cures run` into `<out>/runs/<family>/<arm>-s<seed>`
//! (`study.json` says which); a finished run leaves `DONE` (its wall seconds) and is kept, an
//! interrupted one resumes from its last checkpoint, so a study runs in pieces: other seeds
//! (`--seeds K --seed-offset S`), other arms (`--arms`), other families (`--family`), in any
//! order, into one directory. `summary.csv` (`summary`) is recomputed from whatever finished
//! runs the directory holds; the statistics are in `stats`.

pub mod noise;
pub mod stats;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::run::{run, RunOptions};
pub use summary::SummaryRow;

/// One arm of the study: a name and the config overrides that make it.
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

/// The arms the design runs by default (docs/study.md): GRPO, CurES, and CurES's prompt
/// sampling with equal n per prompt, which tells sampling from allocation.
pub const DESIGN_ARMS: [&str; 3] = ["grpo", "cures", "cures_sampling_only"];

/// The task families `--family` knows, with the overrides that make each (the study config's
/// own task is `testbed`).
pub fn families() -> Vec<(&'static str, Vec<String>)> {
    vec![("testbed", Vec::new())]
}

/// Every arm: the methods, then the CurES ablations.
pub fn variants() -> Vec<Variant> {
    vec![
        v("grpo", &["curriculum.strategy=grpo"]),
        v("cures", &["curriculum.strategy=cures"]),
        v(
            "cures_sampling_only",
            &["curriculum.strategy=cures", "curriculum.allocation=equal"],
        ),
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
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Study config path (the base of every run).
    pub config: PathBuf,
    /// `--set` overrides applied to every run.
    pub set: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Seeds per arm.
    pub seeds: usize,
    /// The first seed (seeds `seed_offset..seed_offset + seeds`).
    pub seed_offset: u64,
    /// These arms ([`DESIGN_ARMS`] when empty).
    pub arms: Vec<String>,
    /// Task family.
    pub family: String,
    /// No per-step output.
    pub quiet: bool,
}

/// The directory of one run.
pub fn run_dir(out: &Path, family: &str, arm: &str, seed: u64) -> PathBuf {
    out.join("runs").join(family).join(format!("{arm}-s{seed}"))
}

/// The arms `names` asks for, in the order given (refused, listing every arm, when one is
/// unknown).
pub fn select_arms(names: &[String]) -> Result<Vec<Variant>> {
    let all = variants();
    let want: Vec<String> = if names.is_empty() {
        DESIGN_ARMS.iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    };
    want.iter()
        .map(|n| {
            all.iter().find(|v| &v.name == n).cloned().with_context(|| {
                format!(
                    "--arms: no arm {n:?} (arms: {})",
                    all.iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// Run (or resume) every arm × seed of one family, then rewrite `summary.csv` and `curves.csv`
/// from every finished run in `out` (other pieces included).
pub fn study(opts: &StudyOptions) -> Result<Vec<SummaryRow>> {
    let arms = select_arms(&opts.arms)?;
    let fams = families();
    let family = fams
        .iter()
        .find(|(n, _)| *n == opts.family)
        .with_context(|| {
            format!(
                "--family {:?}: unknown (families: {})",
                opts.family,
                fams.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
            )
        })?;
    anyhow::ensure!(opts.seeds > 0, "--seeds must be at least 1");
    for var in &arms {
        for seed in opts.seed_offset..opts.seed_offset + opts.seeds as u64 {
            let dir = run_dir(&opts.out, family.0, &var.name, seed);
            let done = dir.join("DONE");
            if done.exists() {
                eprintln!(
                    "study: {} {} seed {seed}: finished, kept",
                    family.0, var.name
                );
                continue;
            }
            let mut set = opts.set.clone();
            set.extend(family.1.iter().cloned());
            set.extend(var.overrides.iter().cloned());
            set.push(format!("seed={seed}"));
            set.push(format!("name={}-{}-s{seed}", family.0, var.name));
            let cfg = Config::load(&opts.config, &set)?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let id = summary::RunId {
                family: family.0.to_string(),
                arm: var.name.clone(),
                seed,
            };
            crate::metrics::write_atomic(
                &dir.join("study.json"),
                serde_json::to_string(&id)?.as_bytes(),
            )?;
            let resume = dir.join("checkpoints/latest").exists();
            eprintln!(
                "study: {} {} seed {seed}{}",
                family.0,
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
            // The whole run's wall time, earlier (interrupted) processes included.
            let wall = s.run_wall_s.max(t.elapsed().as_secs_f64());
            eprintln!(
                "study: {} {} seed {seed}: held-out {:.3} -> {:.3} in {wall:.0} s",
                family.0,
                var.name,
                s.heldout_before.unwrap_or(f64::NAN),
                s.heldout_after.unwrap_or(f64::NAN)
            );
            crate::metrics::write_atomic(&done, format!("{wall}\n").as_bytes())?;
        }
    }
    summarize_dir(&opts.out)
}

/// Recompute `summary.csv`, `curves.csv` and the seed-band plots of a study directory from its
/// finished runs (`cures study summarize DIR`).
pub fn summarize_dir(out: &Path) -> Result<Vec<SummaryRow>> {
    let (rows, records) = summary::write(out)?;
    let plots = out.join("plots");
    let mut families: Vec<&str> = records.iter().map(|r| r.id.family.as_str()).collect();
    families.dedup();
    for family in families {
        let mut arms: Vec<&str> = records
            .iter()
            .filter(|r| r.id.family == family)
            .map(|r| r.id.arm.as_str())
            .collect();
        arms.dedup();
        let bands: Vec<(String, crate::plot::Band)> = arms
            .iter()
            .map(|arm| {
                let curves: Vec<&stats::Curve> = records
                    .iter()
                    .filter(|r| r.id.family == family && r.id.arm == *arm)
                    .map(|r| &r.curve)
                    .collect();
                (arm.to_string(), band(&curves))
            })
            .collect();
        let seeds = records.iter().filter(|r| r.id.family == family).count();
        crate::plot::seed_bands(
            &plots,
            &format!("study_{family}"),
            &format!(
                "{family}: held-out accuracy vs completions generated ({seeds} runs; median, min–max)"
            ),
            "completions generated (training + pre-rollouts)",
            "held-out accuracy",
            &bands,
        )?;
    }
    Ok(rows)
}

/// Median and min–max over seeds at each evaluation point (seeds share their evaluation steps;
/// a point missing in some seed uses the seeds that have it).
fn band(curves: &[&stats::Curve]) -> crate::plot::Band {
    let len = curves.iter().map(|c| c.len()).max().unwrap_or(0);
    (0..len)
        .filter_map(|k| {
            let pts: Vec<(f64, f64)> = curves.iter().filter_map(|c| c.get(k).copied()).collect();
            let x = pts.iter().map(|p| p.0).sum::<f64>() / pts.len().max(1) as f64;
            let mut ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            if ys.is_empty() {
                return None;
            }
            ys.sort_by(f64::total_cmp);
            let n = ys.len();
            let med = if n % 2 == 1 {
                ys[n / 2]
            } else {
                0.5 * (ys[n / 2 - 1] + ys[n / 2])
            };
            Some((x, med, ys[0], ys[n - 1]))
        })
        .collect()
}
