//! Every number is checked at the door: settings that used to panic (a timeout of 1e308 s), to
//! abort in the allocator (a budget of 5·10⁹), to wrap (subsets × steps) or to run on silently
//! (an infinite `eps`, a NaN learning rate) are refused by `cures check` and by the commands
//! that read them, naming the key and its range.

use std::process::{Command, Output};

fn cures(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run cures")
}

fn refused(o: &Output, what: &str, want: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} was accepted: {e}");
    for w in want {
        assert!(e.contains(w), "{what}: no {w:?} in {e}");
    }
    assert!(
        !e.contains("panicked") && !e.contains("memory allocation"),
        "{what}: {e}"
    );
}

#[test]
fn absurd_numbers_are_refused_naming_the_key_and_range() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["rollout.request_timeout_s=1e308"],
            &["rollout.request_timeout_s", "86400"],
        ),
        (
            &["rollout.endpoint_down_timeout_s=1e20"],
            &["rollout.endpoint_down_timeout_s", "86400"],
        ),
        (
            &["rollout.progress_timeout_s=1e20"],
            &["rollout.progress_timeout_s", "0 = off"],
        ),
        (
            &["batch.budget=5000000000", "curriculum.n_max=4000000000"],
            &["batch.budget", "5000000000 is over 1048576"],
        ),
        (
            &["curriculum.n_max=4000000000"],
            &["curriculum.n_max", "is over 1048576"],
        ),
        (
            &[
                "iterations.subsets=4",
                "iterations.steps=4611686018427387904",
            ],
            &["iterations.steps", "is over 1000000000"],
        ),
        (
            &["iterations.subsets=40000", "iterations.steps=40000"],
            &["iterations.subsets x iterations.steps = 40000 x 40000"],
        ),
        (
            &["train.eps=inf"],
            &["train.eps", "positive number, got inf"],
        ),
        (&["train.eps=0"], &["train.eps"]),
        (
            &["train.weight_decay=-1"],
            &["train.weight_decay", "got -1"],
        ),
        (&["train.kl_coef=inf"], &["train.kl_coef", "got inf"]),
        (
            &["train.entropy_coef=nan"],
            &["train.entropy_coef", "got NaN"],
        ),
        (&["sft.lr=nan"], &["sft.lr", "got NaN"]),
        (&["sft.steps=0"], &["sft.steps"]),
        (
            &["simulate.prompts=9223372036854775807"],
            &["simulate.prompts", "is over 100000000"],
        ),
        (
            &["rollout.max_tokens=100000000"],
            &["rollout.max_tokens", "is over 1048576"],
        ),
    ];
    for (sets, want) in cases {
        let mut args = vec!["check", "--config", "configs/demo.toml", "--config-only"];
        for s in *sets {
            args.extend(["--set", s]);
        }
        refused(&cures(&args), &format!("check {sets:?}"), want);
    }
    // The commands that read them refuse them the same way, before any work.
    refused(
        &cures(&[
            "simulate",
            "--quiet",
            "--set",
            "simulate.prompts=9223372036854775807",
        ]),
        "simulate with 2^63 prompts",
        &["simulate.prompts"],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("sft");
    refused(
        &cures(&[
            "sft",
            "--config",
            "configs/demo.toml",
            "--set",
            "sft.lr=nan",
            "--set",
            &format!("sft.out={}", out.display()),
        ]),
        "sft with a NaN learning rate",
        &["sft.lr"],
    );
    assert!(!out.exists(), "a refused sft wrote {}", out.display());
    refused(
        &cures(&[
            "sync",
            "--mode",
            "full",
            "--endpoint",
            "http://127.0.0.1:9",
            "--checkpoint",
            "/nonexistent",
            "--timeout-s",
            "1e308",
        ]),
        "sync with a 1e308 s timeout",
        &["--timeout-s", "86400"],
    );
    // The limits are far above real settings: the shipped configs all pass them (checked by
    // cli_curriculum::every_shipped_config_checks), and so does the paper's batch.
    let o = cures(&[
        "check",
        "--config",
        "configs/demo.toml",
        "--config-only",
        "--set",
        "batch.prompts=1024",
        "--set",
        "batch.budget=8192",
        "--set",
        "rollout.max_tokens=3072",
        "--set",
        "rollout.request_timeout_s=3600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
