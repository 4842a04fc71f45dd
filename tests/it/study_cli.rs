//! `cures study`: every arm runs (2-step smoke runs), a study in pieces keeps its finished runs
//! and resumes an interrupted one, and `study summarize` reproduces `summary.csv`.

use std::path::Path;
use std::process::{Command, Output};

/// Two tiny steps per run: 16 prompts, 64 completions, an evaluation after each step.
const SMOKE: [&str; 18] = [
    "--set",
    "iterations.subsets=1",
    "--set",
    "iterations.steps=2",
    "--set",
    "batch.prompts=16",
    "--set",
    "batch.budget=64",
    "--set",
    "iterations.init_rollouts=1",
    "--set",
    "run.eval_every=1",
    "--set",
    "run.eval_samples=1",
    "--set",
    "run.checkpoint_every=1",
    "--set",
    "testbed.heldout_per_level=10",
];

fn study(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cures"));
    c.args([
        "study",
        "--config",
        "configs/study.toml",
        "--quiet",
        "--out",
    ])
    .arg(out)
    .args(SMOKE)
    .args(extra)
    .env_remove("CURES_FAIL_PHASE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run cures study")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn summarize(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(["study", "summarize"])
        .arg(dir)
        .output()
        .expect("cures study summarize")
}

fn summary(out: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut r = csv::Reader::from_path(out.join("summary.csv")).expect("summary.csv");
    let headers = r.headers().expect("header").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("row");
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), serde_json::Value::String(v.to_string())))
                .collect()
        })
        .collect()
}

const COLUMNS: [&str; 19] = [
    "family",
    "method",
    "seeds",
    "ratio_a50",
    "ratio_a50_lo",
    "ratio_a50_hi",
    "ratio_a75",
    "ratio_a75_lo",
    "ratio_a75_hi",
    "auc_diff",
    "auc_diff_lo",
    "auc_diff_hi",
    "final_acc_mean",
    "final_gap",
    "final_gap_lo",
    "final_gap_hi",
    "informative_frac",
    "completions_total",
    "censored",
];

#[test]
fn every_arm_runs_two_steps_and_the_summary_has_every_column() {
    let _serial = crate::support::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("study");
    let arms = "grpo,cures,cures_sampling_only,speed_rl,gvm,cures_tau0.05,cures_tau0.2,\
                cures_tau0.5,cures_sigma_gradient,cures_lambda0.9";
    let o = study(&out, &["--seeds", "1", "--arms", arms], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let rows = summary(&out);
    assert_eq!(rows.len(), 10, "{rows:?}");
    assert_eq!(rows[0]["method"], "grpo");
    for r in &rows {
        for c in COLUMNS {
            assert!(r.contains_key(c), "no column {c}: {r:?}");
        }
        assert_eq!(r["family"], "testbed");
        assert_eq!(r["seeds"], "1");
        let arm = r["method"].as_str().expect("method");
        let run = out.join("runs/testbed").join(format!("{arm}-s0"));
        assert!(run.join("DONE").exists(), "{}", run.display());
        let steps = std::fs::read_to_string(run.join("steps.csv")).expect("steps.csv");
        assert_eq!(steps.lines().count(), 3, "two steps: {steps}");
        // The answer probability is logged beside avg@k (configs/study.toml turns it on).
        let eval = std::fs::read_to_string(run.join("eval.csv")).expect("eval.csv");
        let header: Vec<&str> = eval.lines().next().expect("header").split(',').collect();
        let col = header
            .iter()
            .position(|h| *h == "answer_prob")
            .expect("answer_prob column");
        for line in eval.lines().skip(1) {
            let p: f64 = line
                .split(',')
                .nth(col)
                .expect("cell")
                .parse()
                .expect("a number");
            assert!((0.0..=1.0).contains(&p) && p > 0.0, "{line}");
        }
    }
    // The sampling-only arm samples like CurES but splits N equally: every drawn prompt gets
    // N/m = 4 completions (a prompt drawn twice, 8), so n_min = n_max = 4 on steps without
    // duplicates and the mean is exactly 4.
    let steps = std::fs::read_to_string(out.join("runs/testbed/cures_sampling_only-s0/steps.csv"))
        .expect("steps.csv");
    let header: Vec<&str> = steps.lines().next().expect("header").split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).expect(name);
    for line in steps.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let n_mean: f64 = cells[at("n_mean")].parse().expect("n_mean");
        let completions: f64 = cells[at("completions")].parse().expect("completions");
        let distinct: f64 = cells[at("distinct_prompts")].parse().expect("distinct");
        assert_eq!(completions, 64.0, "{line}");
        assert!((n_mean - completions / distinct).abs() < 1e-9, "{line}");
        assert_eq!(
            cells[at("n_min")].parse::<f64>().expect("n_min") % 4.0,
            0.0,
            "{line}"
        );
    }
    // An unknown arm or family is refused, naming the known ones.
    let o = study(&out, &["--arms", "grpo,curse"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--arms: no arm \"curse\" (arms: grpo, cures, cures_sampling_only"),
        "{}",
        text(&o)
    );
    let o = study(&out, &["--family", "gsm8k"], &[]);
    assert!(
        text(&o).contains("--family \"gsm8k\": unknown (families: testbed)"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_study_in_pieces_keeps_finished_runs_resumes_and_summarizes_the_same() {
    let _serial = crate::support::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("study");
    // Piece 1: GRPO, seed 0.
    let o = study(&out, &["--seeds", "1", "--arms", "grpo"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let grpo = out.join("runs/testbed/grpo-s0");
    let done = std::fs::read(grpo.join("DONE")).expect("DONE");
    let steps = std::fs::read(grpo.join("steps.csv")).expect("steps.csv");
    // Piece 2: both arms, interrupted in CurES's second step (after its step-1 checkpoint).
    let o = study(
        &out,
        &["--seeds", "1", "--arms", "grpo,cures"],
        &[("CURES_FAIL_PHASE", "update@2")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("study: testbed grpo seed 0: finished, kept"),
        "{}",
        text(&o)
    );
    let cures = out.join("runs/testbed/cures-s0");
    assert!(!cures.join("DONE").exists());
    assert!(cures.join("checkpoints/latest").exists());
    // Summarized now, the unfinished run is named and left out.
    let o = summarize(&out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cures-s0 is not finished (no DONE): left out of the summary"),
        "{}",
        text(&o)
    );
    assert_eq!(summary(&out).len(), 1);
    // Piece 3: resumed; the finished GRPO run is untouched, CurES resumes from step 1.
    let o = study(&out, &["--seeds", "1", "--arms", "grpo,cures"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("study: testbed cures seed 0 (resuming)"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(grpo.join("DONE")).expect("DONE"), done);
    assert_eq!(
        std::fs::read(grpo.join("steps.csv")).expect("steps.csv"),
        steps
    );
    let cures_steps = std::fs::read_to_string(cures.join("steps.csv")).expect("steps.csv");
    assert_eq!(cures_steps.lines().count(), 3, "{cures_steps}");
    // Its held-out evaluations: steps 0, 1 and 2, once each, across the interruption.
    let eval = std::fs::read_to_string(cures.join("eval.csv")).expect("eval.csv");
    let held: Vec<&str> = eval
        .lines()
        .filter(|l| l.split(',').nth(3) == Some("heldout"))
        .map(|l| l.split(',').next().unwrap_or(""))
        .collect();
    assert_eq!(held, ["0", "1", "2"], "{eval}");
    // Piece 4: another seed of GRPO (--seed-offset): seed 1 runs, seed 0 is not rerun.
    let o = study(
        &out,
        &["--seeds", "1", "--seed-offset", "1", "--arms", "grpo"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("runs/testbed/grpo-s1/DONE").exists());
    let rows = summary(&out);
    let grpo_row = rows
        .iter()
        .find(|r| r["method"] == "grpo")
        .expect("grpo row");
    assert_eq!(grpo_row["seeds"], "2");
    // summarize recomputes the same summary.csv from the runs.
    let before = std::fs::read(out.join("summary.csv")).expect("summary.csv");
    std::fs::remove_file(out.join("summary.csv")).expect("rm");
    let o = summarize(&out);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(out.join("summary.csv")).expect("summary.csv"),
        before
    );
    // An unfinished run is named and left out; a directory without runs is a clear error.
    let o = summarize(dir.path());
    assert!(!o.status.success());
    assert!(text(&o).contains("(no study there?)"), "{}", text(&o));
}

#[test]
fn noise_scale_measures_two_batch_sizes() {
    let _serial = crate::support::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args([
            "study",
            "noise-scale",
            "--prompts",
            "4",
            "--small",
            "2",
            "--per-prompt",
            "4",
            "--steps",
            "3",
            "--json",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("noise-scale");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("noise scale B_simple = "), "{t}");
    let v: serde_json::Value =
        serde_json::from_str(t.lines().rfind(|l| l.starts_with('{')).expect("json")).expect("json");
    assert_eq!(
        (v["big"].as_u64(), v["small"].as_u64()),
        (Some(16), Some(8)),
        "{v}"
    );
    for k in ["sq_norm_big", "sq_norm_small", "informative_frac"] {
        assert!(
            v[k].as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
            "{k}: {v}"
        );
    }
    // The estimate is the two-batch formula applied to the measured means.
    let (b, sb, s, ss) = (
        16.0,
        v["sq_norm_big"].as_f64().expect("big"),
        8.0,
        v["sq_norm_small"].as_f64().expect("small"),
    );
    let g2 = (b * sb - s * ss) / (b - s);
    let tr = (ss - sb) / (1.0 / s - 1.0 / b);
    assert!((v["true_sq_norm"].as_f64().expect("g2") - g2).abs() <= 1e-9 * g2.abs().max(1.0));
    assert!((v["trace_sigma"].as_f64().expect("tr") - tr).abs() <= 1e-9 * tr.abs().max(1.0));
    // Three steps at the study's start, the weights held still (lr 1e-30): the last
    // checkpoint's policy is the starting one, element for element.
    let steps = std::fs::read_to_string(dir.path().join("big/steps.csv")).expect("steps.csv");
    assert_eq!(steps.lines().count(), 4, "{steps}");
    let o = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(["diff", "--json", "assets/testbed-policy"])
        .arg(dir.path().join("big/checkpoints/step_0000003/policy"))
        .output()
        .expect("diff");
    let d: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .expect("json"),
    )
    .expect("diff json");
    assert_eq!(d["total"]["differ"], 0, "{d}");
    let o = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(["study", "noise-scale", "--prompts", "2", "--small", "2"])
        .output()
        .expect("noise-scale");
    assert!(
        text(&o).contains("need 1 ≤ --small < --prompts"),
        "{}",
        text(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(["study", "summarize", "results/study", "--set", "seed=1"])
        .output()
        .expect("summarize");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("cures study summarize reads no config"),
        "{}",
        text(&o)
    );
}
