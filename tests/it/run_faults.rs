//! libtorch failures end a command with one error, not a panic: the phase named, libtorch's
//! first line, the setting to change; the run directory stays resumable, and a resume after the
//! failure ends where an uninterrupted run does (bitwise on CPU). The failures are injected with
//! `CURES_FAIL_PHASE` (a real libtorch allocation failure, src/fault.rs), in the child process
//! only.

use std::path::Path;
use std::process::Command;

use crate::run_e2e::{policy_dir, read_csv, small_run_args};

/// `cures` with `args` and, when given, `CURES_FAIL_PHASE`: (success, stdout + stderr).
pub(crate) fn cures_env(args: &[String], fail: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cures"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_BACKTRACE")
        .env_remove("CURES_FAIL_PHASE");
    if let Some(f) = fail {
        cmd.env("CURES_FAIL_PHASE", f);
    }
    let out = cmd.output().expect("run cures");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn checkpoint_files(run: &Path) -> Vec<(String, Vec<u8>)> {
    let ck = run.join("checkpoints/step_0000004");
    [
        "policy/model.safetensors",
        "optimizer.safetensors",
        "reference/model.safetensors",
    ]
    .iter()
    .map(|f| {
        let b =
            std::fs::read(ck.join(f)).unwrap_or_else(|e| panic!("{}: {e}", ck.join(f).display()));
        (f.to_string(), b)
    })
    .collect()
}

#[test]
fn an_injected_libtorch_failure_in_each_phase_is_one_error_and_the_run_resumes_exactly() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = |out: &Path| small_run_args(model, out.to_str().expect("utf8"), "4");
    let straight = tmp.path().join("straight");
    let (ok, text) = cures_env(&args(&straight), None);
    assert!(ok, "{text}");
    let want = checkpoint_files(&straight);

    // Checkpoints every 2 steps: a failure in step 3 (or in step 4's checkpoint) resumes at 2.
    for (phase, at, fix) in [
        ("generate", 3, "rollout.max_batch"),
        ("logprobs", 3, "train.micro_batch_tokens"),
        ("update", 3, "train.activation_checkpointing"),
        ("publish", 3, "rollout.sync_dtype"),
        ("checkpoint", 4, "model.save_dtype"),
    ] {
        let out = tmp.path().join(phase);
        let (ok, text) = cures_env(&args(&out), Some(&format!("{phase}@{at}")));
        assert!(!ok, "{phase}: the run went on:\n{text}");
        assert!(
            text.contains(&format!("out of memory in phase `{phase}` at step {at}")),
            "{phase}: {text}"
        );
        assert!(
            text.contains("can't allocate memory") && text.contains(fix),
            "{phase}: {text}"
        );
        assert!(text.contains("cures run --resume"), "{phase}: {text}");
        for bad in [
            "panicked",
            "Exception raised from",
            "stack backtrace",
            "frame #",
        ] {
            assert!(
                !text.contains(bad),
                "{phase}: {bad:?} in the output:\n{text}"
            );
        }
        assert_eq!(text.matches("error:").count(), 1, "one error: {text}");
        // No partial checkpoint: the latest is step 2's, no temporary directory is left.
        let latest = std::fs::read_to_string(out.join("checkpoints/latest")).expect("latest");
        assert_eq!(latest.trim(), "step_0000002", "{phase}");
        let entries: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .expect("checkpoints")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            entries
                .iter()
                .all(|n| n == "latest" || n.starts_with("step_0000002")),
            "{phase}: {entries:?}"
        );
        // Complete rows only: those of the steps that finished.
        let (_, rows) = read_csv(&out.join("steps.csv"));
        assert_eq!(
            rows.len(),
            at - 1 + usize::from(phase == "checkpoint"),
            "{phase}"
        );
        // Resume without the failure: the same final state as the uninterrupted run.
        let mut resume = args(&out);
        resume.push("--resume".into());
        let (ok, text) = cures_env(&resume, None);
        assert!(ok, "{phase}: resume failed:\n{text}");
        let got = checkpoint_files(&out);
        for ((f, a), (_, b)) in want.iter().zip(&got) {
            assert!(a == b, "{phase}: {f} differs from the uninterrupted run's");
        }
        let (_, rows) = read_csv(&out.join("steps.csv"));
        assert_eq!(rows.len(), 4, "{phase}");
    }
    // A bad injection spec is refused with what is expected.
    let (ok, text) = cures_env(&args(&tmp.path().join("bad")), Some("backward@2"));
    assert!(
        !ok && text.contains("CURES_FAIL_PHASE=backward@2: unknown phase"),
        "{text}"
    );
}

/// A checkpoint whose tensors do not match its config.json: one error naming the tensor, for
/// `run`, `eval` and `generate`.
#[test]
fn a_checkpoint_that_does_not_match_its_config_is_named_without_a_panic() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("model");
    std::fs::create_dir_all(&bad).expect("mkdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in std::fs::read_dir(root.join("assets/testbed-policy")).expect("testbed policy") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, bad.join(f.file_name().expect("name"))).expect("copy");
    }
    let cj = bad.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cj).expect("config")).expect("json");
    let inter = c["intermediate_size"].as_i64().expect("intermediate_size");
    c["intermediate_size"] = (inter + 8).into();
    std::fs::write(&cj, c.to_string()).expect("write");
    let m = bad.to_str().expect("utf8");
    let out = tmp.path().join("run");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for args in [
        small_run_args(m, out.to_str().expect("utf8"), "1"),
        s(&["eval", "--model", m, "--bench", "testbed"]),
        s(&["generate", "--model", m, "--prompt", "1+1="]),
    ] {
        let (ok, text) = cures_env(&args, None);
        assert!(!ok, "{args:?} accepted a mismatched checkpoint");
        assert!(
            text.contains("model.layers.")
                && text.contains("mlp.")
                && text.contains(&inter.to_string())
                && text.contains(&(inter + 8).to_string())
                && text.contains("config.json implies"),
            "{args:?}: {text}"
        );
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

/// The other commands that run libtorch end the same way: one error naming the phase.
#[test]
fn eval_generate_sft_and_init_turn_a_libtorch_failure_into_one_error() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &str| tmp.path().join(p).to_str().expect("utf8").to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let m = "assets/testbed-policy";
    for (args, phase, what) in [
        (
            s(&["eval", "--model", m, "--bench", "testbed", "--k", "1"]),
            "generate",
            "cures eval",
        ),
        (
            s(&["generate", "--model", m, "--prompt", "1+1="]),
            "generate",
            "cures generate",
        ),
        (
            s(&[
                "sft",
                "--config",
                "configs/demo.toml",
                "--quiet",
                "--out",
                &t("sft"),
                "--set",
                "sft.steps=2",
            ]),
            "update",
            "cures sft",
        ),
        (
            s(&[
                "init",
                "--config",
                "configs/demo.toml",
                "--quiet",
                "--out",
                &t("init"),
            ]),
            "generate",
            "cures init",
        ),
    ] {
        let (ok, text) = cures_env(&args, Some(phase));
        assert!(!ok, "{args:?} went on");
        assert!(
            text.contains(&format!("out of memory in phase `{phase}` ({what})")),
            "{args:?}: {text}"
        );
        assert!(
            !text.contains("panicked") && !text.contains("frame #"),
            "{text}"
        );
        assert!(!text.contains("cures run --resume"), "not a run: {text}");
    }
}

#[test]
fn a_damaged_checkpoint_is_refused_on_resume_naming_the_file_and_the_previous_one() {
    let _serial = crate::support::serial();
    let model = policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let args = |steps: &str| {
        let mut a = small_run_args(model, out.to_str().expect("utf8"), steps);
        a.push("--resume".into());
        a
    };
    let (ok, text) = cures_env(
        &small_run_args(model, out.to_str().expect("utf8"), "4"),
        None,
    );
    assert!(ok, "{text}");
    let ck = out.join("checkpoints/step_0000004");
    let sums = std::fs::read_to_string(ck.join("SHA256SUMS")).expect("checksums written");
    for f in [
        "policy/model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(sums.contains(&format!("  {f}\n")), "{f} not in {sums}");
    }
    // 100 kB of the policy's weights zeroed, as a bad disk or a stray write would.
    let w = ck.join("policy/model.safetensors");
    let mut bytes = std::fs::read(&w).expect("weights");
    let mid = bytes.len() / 2;
    let end = (mid + 100_000).min(bytes.len());
    bytes[mid..end].fill(0);
    std::fs::write(&w, &bytes).expect("damage");
    let (ok, text) = cures_env(&args("6"), None);
    assert!(!ok, "a damaged checkpoint was resumed: {text}");
    for want in [
        "checkpoint step_0000004 is damaged",
        "policy/model.safetensors does not match its checksum",
        "the previous checkpoint is",
        "step_0000002",
    ] {
        assert!(text.contains(want), "no {want:?} in {text}");
    }
    assert!(!text.contains("panicked"), "{text}");
    // The hint works: naming the previous checkpoint resumes from it, and the run ends.
    std::fs::write(out.join("checkpoints/latest"), "step_0000002\n").expect("latest");
    let (ok, text) = cures_env(&args("6"), None);
    assert!(ok, "{text}");
    let rows = std::fs::read_to_string(out.join("steps.csv")).expect("steps.csv");
    assert_eq!(rows.lines().count(), 1 + 6, "{rows}");
}
