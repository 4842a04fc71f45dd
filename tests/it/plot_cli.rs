//! `cures plot` on two small real runs (CurES and GRPO): every chart as a PNG and an SVG, and
//! a clear error for a directory that is not a run.

use std::path::Path;
use std::process::{Command, Output};

fn cures(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cures")
}

fn ok(args: &[&str]) -> Output {
    let o = cures(args);
    assert!(
        o.status.success(),
        "cures {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn small_run(model: &Path, out: &Path, strategy: &str) {
    let m = format!("model.path={}", model.display());
    let s = format!("curriculum.strategy={strategy}");
    ok(&[
        "run",
        "--config",
        "configs/demo.toml",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        &m,
        "--set",
        "run.steps=4",
        "--set",
        "batch.prompts=6",
        "--set",
        "batch.budget=24",
        "--set",
        "curriculum.n_max=8",
        "--set",
        "testbed.train_per_level=20",
        "--set",
        "testbed.heldout_per_level=4",
        "--set",
        "run.eval_every=2",
        "--set",
        "run.prompts_every=2",
        "--set",
        &s,
    ]);
}

#[test]
fn plot_two_runs_and_reject_non_runs() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("policy");
    ok(&[
        "sft",
        "--config",
        "configs/demo.toml",
        "--out",
        model.to_str().unwrap(),
        "--quiet",
        "--set",
        "sft.steps=60",
        "--set",
        "sft.hidden=64",
        "--set",
        "sft.intermediate=128",
        "--set",
        "sft.layers=2",
    ]);
    let (a, b) = (tmp.path().join("cures-run"), tmp.path().join("grpo-run"));
    small_run(&model, &a, "cures");
    small_run(&model, &b, "grpo");
    let out = tmp.path().join("plots");
    ok(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for name in [
        "accuracy_vs_step",
        "accuracy_vs_completions",
        "reward_zero_var",
        "n_vs_p_hat",
        "rho_hist",
        "p_hat_over_time",
        "phase_seconds",
    ] {
        let png = std::fs::read(out.join(format!("{name}.png"))).expect(name);
        assert!(png.len() > 1000, "{name}.png is {} bytes", png.len());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png magic");
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).expect(name);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{name}.svg: {e}"));
        assert_eq!(
            doc.root_element().tag_name().name(),
            "svg",
            "{name}.svg root"
        );
    }
    // Legends carry the run names.
    let acc = std::fs::read_to_string(out.join("accuracy_vs_step.svg")).unwrap();
    assert!(acc.contains("cures-run") && acc.contains("grpo-run"));
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Not a run directory: a clear error naming it.
    let o = cures(&[
        "plot",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "plot of a non-run succeeded");
    assert!(
        err.contains("not a run directory") && err.contains("steps.csv"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let o = cures(&["plot", "/nonexistent/run", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/run"),
        "{err}"
    );
}
