//! End to end on the embedded default: warm start a tiny testbed policy, train a few real steps,
//! check the run directory's CSVs, and check that 2 steps + resume + 2 steps equals 4 steps
//! straight (posterior, RNG stream, parameters: bitwise on CPU).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn cures(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cures");
    if !out.status.success() {
        panic!(
            "cures {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A warm-started testbed policy shared by the tests of this file (built once).
pub(crate) fn policy_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("policy");
        let d = dir.to_str().expect("utf8 path");
        cures(&[
            "sft",
            "--config",
            "configs/demo.toml",
            "--out",
            d,
            "--quiet",
            "--set",
            "sft.steps=120",
            "--set",
            "sft.hidden=64",
            "--set",
            "sft.intermediate=128",
            "--set",
            "sft.layers=2",
        ]);
        (tmp, dir)
    })
    .1
}

pub(crate) fn small_run_args<'a>(model: &'a str, out: &'a str, steps: &'a str) -> Vec<String> {
    [
        "run",
        "--config",
        "configs/demo.toml",
        "--out",
        out,
        "--quiet",
        "--set",
        &format!("model.path={model}"),
        "--set",
        "batch.prompts=6",
        "--set",
        "batch.budget=24",
        "--set",
        "curriculum.n_max=8",
        "--set",
        "iterations.subsets=2",
        "--set",
        "iterations.steps=3",
        "--set",
        "testbed.train_per_level=20",
        "--set",
        "testbed.heldout_per_level=4",
        "--set",
        "run.eval_every=2",
        "--set",
        "run.checkpoint_every=2",
        "--set",
        "run.prompts_every=2",
        "--set",
        &format!("run.steps={steps}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_with(args: Vec<String>) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cures(&refs)
}

pub(crate) fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let head: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let rows = r
        .records()
        .map(|x| x.expect("row").iter().map(str::to_string).collect())
        .collect();
    (head, rows)
}

#[test]
fn short_run_writes_consistent_csvs() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let o = run_with(small_run_args(model, out.to_str().expect("utf8"), "4"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("4 steps, 96 completions"), "{stdout}");

    // TensorBoard scalars beside the CSVs: one event file, a record per step and evaluation.
    let tb: Vec<std::fs::DirEntry> = std::fs::read_dir(out.join("tensorboard"))
        .expect("tensorboard/")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(tb.len(), 1);
    let name = tb[0].file_name().to_string_lossy().to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let bytes = std::fs::read(tb[0].path()).expect("events");
    assert!(bytes.windows(17).any(|w| w == b"train/mean_reward"));
    assert!(bytes.windows(12).any(|w| w == b"eval/heldout"));
    assert!(stdout.contains("tensorboard/"), "{stdout}");

    let (head, rows) = read_csv(&out.join("steps.csv"));
    for col in [
        "step",
        "iteration",
        "prompts",
        "completions",
        "completion_tokens",
        "mean_reward",
        "zero_var_group_frac",
        "rho_entropy",
        "loss",
        "kl",
        "grad_norm",
        "sec_sample",
        "sec_generate",
        "sec_reward",
        "sec_train",
        "sec_sync",
        "cum_completions",
        "cum_tokens",
        "weight_version",
        "skipped_prompts",
        "sync_write_s",
        "sync_load_s",
        "sync_verify_s",
    ] {
        assert!(
            head.iter().any(|h| h == col),
            "steps.csv lacks {col}: {head:?}"
        );
    }
    let col = |name: &str| head.iter().position(|h| h == name).expect("column");
    assert_eq!(rows.len(), 4);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[col("step")], (i + 1).to_string());
        assert_eq!(
            r[col("completions")],
            "24",
            "completions per step = N exactly"
        );
        assert_eq!(r[col("cum_completions")], (24 * (i + 1)).to_string());
        let reward: f64 = r[col("mean_reward")].parse().expect("reward");
        assert!((0.0..=1.0).contains(&reward), "reward {reward}");
        for c in ["loss", "kl", "grad_norm"] {
            let v: f64 = r[col(c)].parse().expect("number");
            assert!(v.is_finite(), "{c} = {v}");
        }
        assert_eq!(r[col("weight_version")], (i + 1).to_string());
    }
    // Iteration 1 starts at step 4 (3 steps per iteration).
    assert_eq!(rows[3][col("iteration")], "1");

    let (head, rows) = read_csv(&out.join("eval.csv"));
    assert_eq!(
        head,
        [
            "step",
            "cum_completions",
            "cum_generated_completions",
            "benchmark",
            "problems",
            "accuracy",
            "answer_prob"
        ]
    );
    let steps: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), ["0", "2", "4"]);
    assert!(rows.iter().any(|r| r[3] == "heldout/L7"));
    // The cost axis counts the pre-rollouts of stage 0 (140 prompts / 2 subsets x N' = 4 each).
    for r in &rows {
        let train: u64 = r[1].parse().expect("cum_completions");
        let all: u64 = r[2].parse().expect("cum_generated_completions");
        let init = match r[0].as_str() {
            "0" => 0,
            "2" => 280,
            _ => 560,
        };
        assert_eq!(all, train + init, "{r:?}");
    }
    assert!(rows
        .iter()
        .all(|r| r[5].parse::<f64>().is_ok_and(|a| (0.0..=1.0).contains(&a))));

    let (head, rows) = read_csv(&out.join("prompts.csv"));
    assert!(head.contains(&"p_hat".to_string()) && !rows.is_empty());
    let lines = std::fs::read_to_string(out.join("rollouts.jsonl")).expect("rollouts");
    let first: serde_json::Value =
        serde_json::from_str(lines.lines().next().expect("a line")).expect("json");
    assert!(first.get("completion").is_some() && first.get("reward").is_some());
    // The last checkpoint is an HF directory the same loader reads.
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).expect("latest");
    let ck = out.join("checkpoints").join(latest.trim());
    for f in [
        "policy/config.json",
        "policy/model.safetensors",
        "policy/tokenizer.json",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(ck.join(f).exists(), "{f} missing in {}", ck.display());
    }
    // A second run into the same directory without --resume is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(small_run_args(model, out.to_str().expect("utf8"), "4"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

/// A fresh start into a directory that holds a run is refused (also after a crash before the
/// first checkpoint), `--overwrite` starts clean, a resume says where it continues and the
/// summary keeps this process's figures apart from the run's.
#[test]
fn a_used_run_directory_is_refused_overwritten_or_resumed() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let o = out.to_str().expect("utf8");
    let first = run_with(small_run_args(model, o, "2"));
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("this process: 2 steps"), "{text}");
    // Same command again: refused, nothing touched.
    let before = std::fs::read(out.join("steps.csv")).expect("steps.csv");
    let e = cures_fails(&small_run_args(model, o, "2"));
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("steps.csv")).expect("steps.csv"),
        before
    );
    // A resume to step 4 says where it continues; the summary splits process and run.
    let mut args = small_run_args(model, o, "4");
    args.retain(|a| a != "--quiet");
    args.push("--resume".into());
    let resumed = run_with(args);
    let (so, se) = (
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr),
    );
    assert!(se.contains("resumed from step 2 of 4"), "{se}");
    assert!(
        se.contains("checkpoints:") && se.contains("GB each"),
        "{se}"
    );
    assert!(
        so.contains("this process (resumed at step 2): 2 steps") && so.contains("the run: 4 steps"),
        "{so}"
    );
    // A crash before the first checkpoint: rows, an eval.csv, no checkpoint.
    std::fs::remove_dir_all(out.join("checkpoints")).expect("rm checkpoints");
    let e = cures_fails(&small_run_args(model, o, "2"));
    assert!(
        e.contains("no checkpoint to resume from") && e.contains("--overwrite"),
        "{e}"
    );
    let mut args = small_run_args(model, o, "2");
    args.push("--resume".into());
    let e = cures_fails(&args);
    assert!(e.contains("before its first checkpoint"), "{e}");
    // --overwrite starts clean: 2 rows, the baseline evaluation again.
    let mut args = small_run_args(model, o, "2");
    args.push("--overwrite".into());
    run_with(args);
    let (_, rows) = read_csv(&out.join("steps.csv"));
    assert_eq!(rows.len(), 2);
    let (head, evals) = read_csv(&out.join("eval.csv"));
    let step = head.iter().position(|h| h == "step").expect("step column");
    assert_eq!(evals[0][step], "0", "the baseline evaluation ran again");
}

#[test]
fn resume_is_exact() {
    let _serial = crate::support::serial();
    check_resume_is_exact(&[]);
}

/// In bf16 with fp32 master weights: the masters and moments (optimizer.safetensors) and the
/// bf16 weights resume bitwise.
#[test]
fn resume_is_exact_in_bf16_mixed() {
    let _serial = crate::support::serial();
    check_resume_is_exact(&["model.dtype=bf16", "train.precision=bf16_mixed"]);
}

fn check_resume_is_exact(sets: &[&str]) {
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let straight = tmp.path().join("straight");
    let split = tmp.path().join("split");
    let args = |out: &Path, steps: &str| {
        let mut a = small_run_args(model, out.to_str().expect("utf8"), steps);
        for s in sets {
            a.push("--set".into());
            a.push(s.to_string());
        }
        a
    };
    run_with(args(&straight, "4"));
    run_with(args(&split, "2"));
    let mut resumed = args(&split, "4");
    resumed.push("--resume".into());
    run_with(resumed);

    let ck = |d: &Path| d.join("checkpoints/step_0000004");
    // Posterior, RNG state and counters.
    let state = |d: &Path| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(ck(d).join("state.json")).expect("state"),
        )
        .expect("json");
        let mut counters = v["counters"].clone();
        // Seconds differ between runs; every other counter must not.
        if let Some(c) = counters.as_object_mut() {
            assert!(c.remove("wall_s").is_some(), "wall_s recorded");
        }
        serde_json::json!({"curriculum": v["curriculum"], "counters": counters})
    };
    assert_eq!(state(&straight), state(&split));
    // Parameters and optimiser state, bitwise.
    for f in [
        "policy/model.safetensors",
        "optimizer.safetensors",
        "reference/model.safetensors",
    ] {
        let a = std::fs::read(ck(&straight).join(f)).expect("read");
        let b = std::fs::read(ck(&split).join(f)).expect("read");
        assert!(a == b, "{f} differs between straight and resumed runs");
    }
    let opt = tch::Tensor::read_safetensors(ck(&straight).join("optimizer.safetensors"))
        .expect("optimizer state");
    let masters = opt.iter().filter(|(k, _)| k.ends_with(".master")).count();
    let mixed = sets.contains(&"train.precision=bf16_mixed");
    assert_eq!(masters > 0, mixed, "fp32 masters saved: {masters}");
    // Same steps.csv apart from timings.
    let (head, a) = read_csv(&straight.join("steps.csv"));
    let (_, b) = read_csv(&split.join("steps.csv"));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (ra, rb) in a.iter().zip(&b) {
        for (k, h) in head.iter().enumerate() {
            if !h.starts_with("sec_") {
                assert_eq!(ra[k], rb[k], "column {h}");
            }
        }
    }
}

#[test]
fn init_maps_difficulty_with_both_sigma_estimators() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("init");
    let o = cures(&[
        "init",
        "--config",
        "configs/demo.toml",
        "--out",
        out.to_str().expect("utf8"),
        "--quiet",
        "--json",
        "--set",
        &format!("model.path={model}"),
        "--set",
        "testbed.train_per_level=5",
        "--set",
        "testbed.heldout_per_level=2",
        "--set",
        "curriculum.sigma=gradient",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("json line")).expect("json");
    assert_eq!(last["prompts"], 35);
    assert_eq!(last["completions"], 35 * 4);
    let (head, rows) = read_csv(&out.join("init.csv"));
    assert_eq!(rows.len(), 35);
    let col = |n: &str| head.iter().position(|h| h == n).expect("column");
    for r in &rows {
        let s: u32 = r[col("successes")].parse().expect("s");
        let p: f64 = r[col("p_hat")].parse().expect("p");
        // Beta(1, 1) prior: p̂ = (s + 1) / (4 + 2).
        assert!((p - f64::from(s + 1) / 6.0).abs() < 1e-12, "{r:?}");
        let g: f64 = r[col("sigma_gradient")]
            .parse()
            .expect("gradient sigma present");
        assert!(g.is_finite() && g >= 0.0);
    }
    assert!(out.join("init_posterior.json").exists());
}

/// `cures ...` that must fail: its stderr.
fn cures_fails(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cures");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "cures {args:?} should fail:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A testbed training set written as a JSONL file (rows in `order`).
fn write_train(
    path: &Path,
    order: impl Fn(Vec<cures::data::Example>) -> Vec<cures::data::Example>,
) {
    let mut tb = cures::config::Config::default().testbed;
    tb.train_per_level = 20;
    let rows = order(cures::testbed::generate(&tb).train);
    cures::data::write_jsonl(path, &rows).expect("write train");
}

fn file_run_args(model: &str, out: &Path, train: &Path, steps: &str) -> Vec<String> {
    let mut a = small_run_args(model, out.to_str().expect("utf8"), steps);
    a.push("--set".into());
    a.push(format!("data.train={}", train.display()));
    a
}

#[test]
fn resume_refuses_a_different_dataset_or_a_changed_key() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (train, out) = (tmp.path().join("train.jsonl"), tmp.path().join("run"));
    write_train(&train, |r| r);
    run_with(file_run_args(model, &out, &train, "2"));
    let config_before = std::fs::read_to_string(out.join("config.toml")).expect("config");
    let resume = |steps: &str, extra: &[&str]| {
        let mut a = file_run_args(model, &out, &train, steps);
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("--resume".into());
        a
    };

    // One row fewer: refused with both sizes, no panic.
    write_train(&train, |mut r| {
        r.pop();
        r
    });
    let e = cures_fails(&resume("4", &[]));
    let n = cures::data::load(&train).expect("train").len();
    let sizes = format!("has {n} prompts, but the run was trained on {}", n + 1);
    assert!(e.contains(&sizes), "{e}");
    // Same rows, another order: refused.
    write_train(&train, |mut r| {
        r.reverse();
        r
    });
    let e = cures_fails(&resume("4", &[]));
    assert!(e.contains("not the same rows in the same order"), "{e}");
    write_train(&train, |r| r);
    // A key that alters the run: refused, naming it; nothing is written.
    let e = cures_fails(&resume(
        "4",
        &["--set", "curriculum.tau=0.3", "--set", "seed=5"],
    ));
    assert!(
        e.contains("curriculum.tau: 0.1 -> 0.3") && e.contains("seed: "),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("config.toml")).expect("config"),
        config_before
    );
    assert!(!out.join("checkpoints/step_0000004").exists());
    // Asking for fewer steps than done: refused.
    let e = cures_fails(&resume("1", &[]));
    assert!(e.contains("already did 2 steps"), "{e}");

    // A safe change (more steps, another eval cadence) resumes and is recorded; an orphaned
    // checkpoint temp dir of a killed process is removed.
    let orphan = out.join("checkpoints/.step_0000003.tmp4999999");
    std::fs::create_dir_all(orphan.join("policy")).expect("orphan");
    run_with(resume("4", &["--set", "run.eval_every=4"]));
    assert!(!orphan.exists(), "orphaned temp dir left behind");
    assert!(out.join("checkpoints/step_0000004/state.json").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("config.toml")).expect("config"),
        config_before,
        "the original config is kept"
    );
    let rec: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("resumes.jsonl"))
            .expect("resumes.jsonl")
            .trim(),
    )
    .expect("json");
    assert_eq!(rec["at_step"], 2);
    let keys: Vec<&str> = rec["changed"]
        .as_array()
        .expect("changed")
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect();
    assert_eq!(keys, ["run.eval_every", "run.steps"]);
    assert!(out.join("config.resume-step2.toml").exists());
}

#[test]
fn overlong_prompts_are_dropped_and_failed_starts_leave_nothing() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (train, out) = (tmp.path().join("train.jsonl"), tmp.path().join("run"));
    write_train(&train, |mut r| {
        let mut long = r[0].clone();
        long.id = "long".into();
        long.problem = format!("{} {}", long.problem, "1+".repeat(5000));
        r.push(long);
        let mut huge = r[1].clone();
        huge.id = "huge".into();
        huge.problem = "9".repeat(1 << 20);
        r.push(huge);
        r
    });
    let mut a = file_run_args(model, &out, &train, "1");
    a.extend(["--set".into(), "run.eval_every=0".into()]);
    let o = run_with(a);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("dropped 2 training prompts"), "{stdout}");
    // The final message lists what was written: no eval.csv without evaluation.
    assert!(
        stdout.contains("steps.csv") && !stdout.contains("eval.csv"),
        "{stdout}"
    );
    assert!(!out.join("eval.csv").exists());

    // A start that fails (no such model) leaves no run directory behind.
    let gone = tmp.path().join("never");
    let a = file_run_args("/nonexistent/model", &gone, &train, "1");
    let e = cures_fails(&a);
    assert!(e.contains("/nonexistent/model"), "{e}");
    assert!(!gone.exists(), "a failed start left {}", gone.display());
}
