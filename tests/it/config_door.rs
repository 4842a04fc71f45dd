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
        (
            &["iterations.init_rollouts=9223372036854775807"],
            &["iterations.init_rollouts", "is over 1048576"],
        ),
        (
            &["run.eval_samples=9223372036854775807"],
            &["run.eval_samples", "is over 1024"],
        ),
        (
            &["testbed.train_per_level=9223372036854775807"],
            &["testbed.train_per_level", "is over 100000"],
        ),
        (
            &["reward.wrong=-1e308"],
            &["reward.wrong", "[-1e6, 1e6], got -1e308"],
        ),
        (
            &["data.train_split=\"\""],
            &["data.train_split", "is empty"],
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

/// Every numeric key of the config: the numbers of the default config, and the optional ones
/// it leaves unset.
fn numeric_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            toml::Value::Integer(_) | toml::Value::Float(_) => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let v = toml::Value::try_from(cures::config::Config::default()).expect("default config");
    let mut keys = Vec::new();
    walk("", &v, &mut keys);
    for k in ["run.steps", "curriculum.n_max", "sft.steps"] {
        if !keys.iter().any(|x| x == k) {
            keys.push(k.to_string());
        }
    }
    keys.sort();
    keys
}

/// Numbers a user (or a typo) may write: the edges of every type, non-finite floats, and
/// random magnitudes from 1e-20 to 1e20 (fixed seed).
fn absurd_values() -> Vec<String> {
    use rand::{Rng, SeedableRng};
    let mut v: Vec<String> = [
        "0",
        "1",
        "-1",
        "2",
        "0.5",
        "-0.5",
        "1e-300",
        "1e308",
        "-1e308",
        "inf",
        "-inf",
        "nan",
        "65536",
        "86401",
        "1048577",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
    ]
    .map(str::to_string)
    .to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(36);
    for _ in 0..12 {
        let e: i32 = rng.random_range(-20..=20);
        let m: f64 = rng.random_range(-9.9..9.9);
        v.push(format!("{m:.3}e{e}"));
        v.push(format!(
            "{}",
            rng.random_range(0..=19u32).pow(rng.random_range(1..=14))
        ));
    }
    v
}

/// The property: for every numeric key and every absurd number, the config either refuses it
/// naming the key, or accepts it; and a one-step `cures run` with the accepted values of
/// largest and smallest magnitude of each key the run reads ends without a panic, an abort or
/// an internal error (an error of its own is fine).
#[test]
fn every_numeric_key_refuses_naming_itself_or_runs_a_step_without_panicking() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/demo.toml"))
        .expect("demo config");
    let keys = numeric_keys();
    assert!(keys.len() > 40, "{keys:?}");
    let values = absurd_values();
    // Per key, the accepted values of largest and of smallest non-zero magnitude.
    let mut extremes: Vec<(String, String)> = Vec::new();
    for key in &keys {
        let mut accepted: Vec<(f64, String)> = Vec::new();
        for v in &values {
            let set = vec![format!("{key}={v}")];
            let r = std::panic::catch_unwind(|| {
                cures::config::Config::from_toml_str(&text, "demo.toml", &set)
            });
            match r {
                Err(_) => panic!("--set {key}={v} panicked"),
                Ok(Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(key.as_str()), "--set {key}={v}: {e}");
                }
                Ok(Ok(_)) => {
                    accepted.push((v.parse::<f64>().map_or(f64::NAN, f64::abs), v.clone()))
                }
            }
        }
        let nonzero = accepted.iter().filter(|(x, _)| *x > 0.0);
        let big = nonzero.clone().max_by(|a, b| a.0.total_cmp(&b.0));
        let small = nonzero.min_by(|a, b| a.0.total_cmp(&b.0));
        for (_, v) in big.into_iter().chain(small) {
            if !extremes.contains(&(key.clone(), v.clone())) {
                extremes.push((key.clone(), v.clone()));
            }
        }
    }
    let _serial = crate::support::serial();
    let model = crate::run_e2e::policy_dir().to_str().expect("utf8");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut slow, mut bad) = (Vec::new(), Vec::new());
    for (i, (key, v)) in extremes.iter().enumerate() {
        // Keys `cures run` does not read, or that set how long it goes.
        if key.starts_with("sft.") || key.starts_with("simulate.") || key == "run.steps" {
            continue;
        }
        let out = tmp.path().join(format!("r{i}"));
        let mut args = crate::run_e2e::small_run_args(model, out.to_str().expect("utf8"), "1");
        args.extend(["--set".to_string(), format!("{key}={v}")]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_cures"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cures");
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let o = child.wait_with_output().expect("output");
        let e = String::from_utf8_lossy(&o.stderr);
        let Some(status) = status else {
            slow.push(format!("{key}={v}"));
            continue;
        };
        let tail: String = e.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        eprintln!("{key}={v}: {status}: {tail}");
        let crashed = [
            "panicked",
            "memory allocation",
            "internal error",
            "a bug in cures",
        ]
        .iter()
        .any(|w| e.contains(w));
        if crashed || status.code().is_none() {
            bad.push(format!("{key}={v}: {status}: {tail}"));
        } else if !status.success() && !e.contains("error:") {
            bad.push(format!("{key}={v}: failed without an error: {tail}"));
        }
    }
    eprintln!("still running after 10 s (killed): {slow:?}");
    assert!(
        bad.is_empty(),
        "{} runs ended badly:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// A misspelt key is refused with the nearest known one; a command that reads no config
/// refuses --set rather than ignoring it, naming its own flags.
#[test]
fn unknown_keys_are_refused_with_the_nearest_and_set_is_never_ignored() {
    for (set, want) in [
        ("data.prolem_key=x", "(did you mean `problem_key`?)"),
        ("trian.lr=1", "(did you mean `train`?)"),
        ("rollout.max_token=8", "(did you mean `max_tokens`?)"),
    ] {
        let o = cures(&[
            "check",
            "--config",
            "configs/demo.toml",
            "--config-only",
            "--set",
            set,
        ]);
        refused(&o, set, &["unknown field", want]);
    }
    let o = cures(&[
        "data",
        "inspect",
        "tests/fixtures/data/math.jsonl",
        "--set",
        "data.train_split=test",
    ]);
    refused(
        &o,
        "data inspect --set",
        &[
            "cures data reads no config",
            "--set data.train_split=test",
            "--split",
        ],
    );
    let o = cures(&[
        "reward",
        "check",
        "--pred",
        "1",
        "--gold",
        "1",
        "--set",
        "reward.correct=2",
    ]);
    refused(&o, "reward check --set", &["cures reward reads no config"]);
}
