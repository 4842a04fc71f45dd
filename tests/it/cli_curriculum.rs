//! The `cures` binary: check, simulate and bench curriculum, including bad input.

use std::path::Path;
use std::process::{Command, Output};

fn cures(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cures")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().expect("some stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line {last:?} is not JSON: {e}"))
}

#[test]
fn every_shipped_config_checks() {
    let _serial = crate::support::serial();
    let mut n = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // The paper configs name models and data a checkout does not hold: config alone.
        let o = cures(&["check", "--config-only", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("[curriculum]"));
        n += 1;
    }
    assert!(n >= 2, "expected example configs in configs/");
}

#[test]
fn bad_configs_fail_with_the_key_and_reason() {
    let _serial = crate::support::serial();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[curriculum]\ntau = 0\n", "curriculum.tau"),
        ("[curriculum]\ntau = -1\n", "curriculum.tau"),
        (
            "[batch]\nprompts = 1000\nbudget = 2048\n[curriculum]\nn_min = 3\n",
            "curriculum.n_min * batch.prompts (3000) exceeds batch.budget (2048)",
        ),
        ("[simulate]\nprompts = 0\n", "simulate.prompts"),
        (
            "[curriculum]\nstrategy = \"ppo\"\n",
            "unknown variant `ppo`",
        ),
        ("[curriculum\n", "bad.toml"),
        ("[curriculum]\nforgetting = 1.5\n", "curriculum.forgetting"),
    ];
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let o = cures(&["check", "--config", path.to_str().unwrap()]);
        assert!(!o.status.success(), "{text:?} was accepted");
        assert!(stderr(&o).contains(want), "{text:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    let o = cures(&["check", "--config", "/nonexistent/x.toml"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/x.toml"), "{}", stderr(&o));
    // The inputs are checked as `cures run` reads them.
    let o = cures(&["check", "--config", "configs/demo.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("data.train testbed:") && out.contains("model.path"),
        "{out}"
    );
    for (set, want) in [
        (
            "model.path=/nonexistent/model",
            "/nonexistent/model is not a directory",
        ),
        (
            "data.train=/nonexistent/train.jsonl",
            "/nonexistent/train.jsonl",
        ),
        (
            "data.eval=[\"/nonexistent/eval.jsonl\"]",
            "/nonexistent/eval.jsonl",
        ),
    ] {
        let o = cures(&["check", "--config", "configs/demo.toml", "--set", set]);
        assert!(!o.status.success(), "{set} was accepted");
        assert!(stderr(&o).contains(want), "{set}: {}", stderr(&o));
    }
    // A config.json that declares fewer layers than the checkpoint holds.
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir("assets/testbed-policy").unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let cj = model.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cj).unwrap()).unwrap();
    let layers = c["num_hidden_layers"].as_i64().unwrap();
    c["num_hidden_layers"] = (layers - 1).into();
    std::fs::write(&cj, c.to_string()).unwrap();
    let set = format!("model.path={}", model.display());
    let o = cures(&["check", "--config", "configs/demo.toml", "--set", &set]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("declares num_hidden_layers"),
        "{}",
        stderr(&o)
    );
    // A stop id outside the model's vocabulary (Qwen's <|im_end|> on a small vocabulary).
    let o = cures(&[
        "check",
        "--config",
        "configs/demo.toml",
        "--set",
        "rollout.stop_token_ids=[151645]",
    ]);
    assert!(!o.status.success(), "a foreign stop id was accepted");
    assert!(
        stderr(&o).contains("rollout.stop_token_ids: [151645]")
            && stderr(&o).contains("assets/testbed-policy"),
        "{}",
        stderr(&o)
    );
    // n_max above the budget: valid (the cap can't bind) but said, also with --config-only.
    for extra in [&[][..], &["--config-only"][..]] {
        let mut args = vec!["check", "--config", "configs/demo.toml"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--set", "batch.budget=48", "--set", "batch.prompts=4"]);
        let o = cures(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("# warning: curriculum.n_max = 64 exceeds batch.budget = 48")
                && out.contains("more than 42 rollouts"),
            "{extra:?}: {out}"
        );
    }
    // --probe: the embedded engine has no servers; a stopped server is named with the fix.
    let o = cures(&["check", "--config", "configs/demo.toml", "--probe"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no servers to probe"));
    let port = crate::support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let o = cures(&[
        "check",
        "--config",
        "configs/demo.toml",
        "--probe",
        "--set",
        "rollout.engine=openai",
        "--set",
        &format!("rollout.endpoints=[{{url = \"{url}\", model = \"policy\"}}]"),
    ]);
    assert!(!o.status.success(), "a stopped server passed the probe");
    let e = stderr(&o);
    assert!(
        e.contains(&format!("rollout.endpoints[0] {url}: no server answers"))
            && e.contains("scripts/serve-vllm.sh"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // The memory plan: from config.json alone; a plan over the memory given is refused, naming
    // the part to shrink and its knob, by `check --plan` and by `run` before anything runs.
    let o = cures(&[
        "check",
        "--config",
        "configs/demo.toml",
        "--plan",
        "--gpu-mem",
        "8GiB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for part in [
        "weights",
        "optimiser state",
        "activations",
        "LM-head chunk",
        "KV cache",
    ] {
        assert!(out.contains(&format!("# plan  {part}")), "{part}: {out}");
    }
    assert!(out.contains("# plan fits:"), "{out}");
    // Sequences are sized by the data's longest prompt, not the context, when the data reads.
    assert!(
        out.contains("# data.train: ")
            && out.contains("(the longest prompt of data.train + rollout.max_tokens)"),
        "{out}"
    );
    let o = cures(&[
        "check",
        "--config",
        "configs/demo.toml",
        "--plan",
        "--set",
        "data.train=no/such/train.jsonl",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("# data.train not read (")
            && out.contains("no/such/train.jsonl")
            && out.contains("(the context, as data.train was not read + rollout.max_tokens)"),
        "{out}"
    );
    let o = cures(&[
        "check",
        "--config",
        "configs/demo.toml",
        "--plan",
        "--gpu-mem",
        "200MB",
    ]);
    assert!(!o.status.success(), "a plan over --gpu-mem passed");
    let e = stderr(&o);
    assert!(
        e.contains("200MB") || e.contains("0.20 GB are available"),
        "{e}"
    );
    assert!(
        e.contains("train.micro_batch_tokens"),
        "names the knob: {e}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let o = cures(&[
        "run",
        "--config",
        "configs/demo.toml",
        "--out",
        out_dir.to_str().unwrap(),
        "--set",
        "run.device_memory=200MB",
    ]);
    assert!(!o.status.success(), "run started over its memory");
    assert!(
        stderr(&o).contains("train.micro_batch_tokens") && stderr(&o).contains("--plan"),
        "{}",
        stderr(&o)
    );
    assert!(!out_dir.exists(), "a refused start leaves no run directory");
    // --set errors, on any command.
    let o = cures(&["simulate", "--set", "curriculum.tau=0", "--quiet"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("curriculum.tau"), "{}", stderr(&o));
}

#[test]
fn simulate_json_and_csv() {
    let _serial = crate::support::serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim");
    let o = cures(&[
        "simulate",
        "--config",
        "configs/simulate.toml",
        "--steps",
        "6",
        "--set",
        "simulate.prompts=2000",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    for key in ["completions", "wasted_fraction", "posterior_mae"] {
        assert!(j.get(key).is_some(), "missing {key} in {j}");
    }
    let steps = std::fs::read_to_string(out.join("sim_steps.csv")).unwrap();
    let header = steps.lines().next().unwrap();
    assert!(header.starts_with("step,iteration,distinct_prompts,completions,wasted_completions"));
    assert_eq!(steps.lines().count(), 7);
    let prompts = std::fs::read_to_string(out.join("prompts.csv")).unwrap();
    assert!(prompts.starts_with("id,p_true,alpha,beta,p_hat,rho,times_sampled,last_n"));
    assert_eq!(prompts.lines().count(), 2001);
}

#[test]
fn bench_curriculum_json_reports_references_or_nulls() {
    let _serial = crate::support::serial();
    let o = cures(&[
        "bench",
        "curriculum",
        "--prompts",
        "20000",
        "--batch",
        "64",
        "--budget",
        "512",
        "--steps",
        "20",
        "--no-reference",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert!(j["step_ms"].as_f64().unwrap() > 0.0);
    assert!(j["ref_loop_ms"].is_null() && j["ref_numpy_ms"].is_null());
    assert!(
        stderr(&o).contains("not run"),
        "a skipped reference must be stated"
    );
}
