//! Contract test against a real SGLang server (PyPI `sglang==0.5.23` on its pure-torch CPU path,
//! scripts/install-sglang-cpu.sh) serving SmolLM2-135M-Instruct: generation with per-prompt n,
//! token ids and log-probs (and the weight version SGLang stamps on each reply), full-weight
//! publishes through `/update_weights_from_disk` verified by version and probe, a refused load
//! that leaves the server on its previous weights, `cures sync --mode sglang`, and a short
//! `cures run` with SGLang as the engine. One server for everything. Skipped unless
//! CURES_SGLANG_TESTS=1 and CURES_SMOLLM2_DIR are set (scripts/test.sh sets them).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::ServerProc;
use cures::policy::Policy;
use cures::rollout::{EndpointConfig, EngineKind, OpenAiEngine, RolloutConfig, RolloutEngine};
use cures::sync::http::{probe_prompt, trainer_logprob, Admin};
use cures::sync::{SglangFullSync, SyncOptions, WeightSync};
use tch::{Device, Kind};

fn env() -> Option<PathBuf> {
    if std::env::var("CURES_SGLANG_TESTS").ok().as_deref() != Some("1") {
        eprintln!("skipped: set CURES_SGLANG_TESTS=1 and CURES_SMOLLM2_DIR (scripts/test.sh does)");
        return None;
    }
    std::env::var_os("CURES_SMOLLM2_DIR")
        .map(PathBuf::from)
        .filter(|p| p.join("config.json").exists())
}

fn start_sglang(model: &std::path::Path, log: &std::path::Path) -> ServerProc {
    let port = crate::support::free_port();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/serve-sglang.sh"))
        .arg(model)
        .arg(port.to_string())
        .env("SERVED_NAME", "smol");
    // The script execs the launcher; its scheduler/detokenizer children die with it (SGLang
    // kills its process tree when the parent goes).
    ServerProc::start(cmd, port, log, Duration::from_secs(600))
}

fn served_lp(admin: &Admin, prompt: &[i64]) -> (i64, f64) {
    let model = admin.model_of(&admin.targets[0]).expect("model");
    admin
        .probe_logprob(&admin.targets[0], &model, prompt)
        .expect("probe")
}

fn halved_norm(model: &std::path::Path) -> Policy {
    let mut p = Policy::load(model, Device::Cpu, Kind::Float).expect("policy");
    tch::no_grad(|| {
        for (name, mut t) in p.var_store_mut().variables() {
            if name == "model.norm.weight" {
                let h = &t * 0.5;
                t.copy_(&h);
            }
        }
    });
    p
}

#[test]
fn sglang_cpu_contract() {
    let _serial = crate::support::serial();
    let Some(model) = env() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let srv = start_sglang(&model, &tmp.path().join("sglang.log"));
    eprintln!("SGLang up in {:.1} s", t0.elapsed().as_secs_f64());
    let url = srv.url("");
    let ep = EndpointConfig {
        model: "smol".into(),
        ..EndpointConfig::new(&url)
    };

    // 1. Generation: per-prompt n, token ids straight from the server, log-probs.
    let policy = Policy::load(&model, Device::Cpu, Kind::Float).expect("policy");
    let tok = policy.tokenizer().clone();
    let cfg = RolloutConfig {
        engine: EngineKind::Openai,
        endpoints: vec![ep.clone()],
        max_tokens: 12,
        temperature: 1.0,
        ..RolloutConfig::default()
    };
    let mut engine = OpenAiEngine::new(&cfg, Some(tok.clone())).expect("engine");
    let prompt = probe_prompt(&policy).expect("prompt");
    let reqs = crate::support::served::check_generation(&mut engine, &cfg, &policy, &prompt);
    assert_eq!(engine.last_stats().topups, 0, "SGLang honours n");

    // 2. Full weights: the trainer's weights as v1, then changed ones as v2.
    let admin = Admin::new(std::slice::from_ref(&ep), Duration::from_secs(120)).expect("admin");
    let (tok0, base_lp) = served_lp(&admin, &prompt);
    let opts = SyncOptions {
        dir: tmp.path().join("sync"),
        keep: 2,
        kind: Kind::BFloat16,
        verify_tol: 0.25,
        timeout: Duration::from_secs(300),
    };
    let mut sync = SglangFullSync::new(std::slice::from_ref(&ep), opts).expect("sync");
    sync.publish(&policy, 1).expect("publish v1 (verified)");
    let t1 = sync.last_timing().expect("timing");
    let info = admin
        .get_ok(&admin.targets[0], "/get_model_info")
        .expect("model info");
    assert_eq!(info["weight_version"], serde_json::json!("1"));
    let changed = halved_norm(&model);
    sync.publish(&changed, 2)
        .expect("publish v2 (verified by probe)");
    let t2 = sync.last_timing().expect("timing");
    let (tok2, lp2) = served_lp(&admin, &prompt);
    let ours2 = trainer_logprob(&changed, &prompt, tok2).expect("lp");
    eprintln!(
        "full publish ({:.1} MB bf16): v1 write {:.3} s + load {:.3} s + verify {:.3} s; v2 write {:.3} s + load {:.3} s; probe token {tok0}: {base_lp:.4} -> {lp2:.4} (tch {ours2:.4})",
        t1.bytes as f64 / 1e6, t1.write_s, t1.call_s, t1.verify_s, t2.write_s, t2.call_s
    );
    assert!(
        (lp2 - base_lp).abs() > 0.05,
        "the served log-prob did not change"
    );
    assert!((lp2 - ours2).abs() < 0.25, "{lp2} vs tch {ours2}");
    let kept = std::fs::read_dir(tmp.path().join("sync"))
        .expect("dir")
        .count();
    assert!(kept <= 2, "sync dirs pruned to keep = 2");

    // Completions now carry the version SGLang stamps on them (metadata.weight_version).
    engine.set_weight_version(2);
    let comps = engine
        .generate(&reqs[..1], &cfg)
        .expect("generate after publish");
    assert!(comps.iter().all(|c| c.weight_version == 2), "tagged v2");
    assert_eq!(engine.last_stats().stale_completions, 0);
    // A trainer that is ahead of the server gets a clear error (nothing fresh is returned).
    engine.set_weight_version(5);
    let err = format!(
        "{:#}",
        engine.generate(&reqs[..1], &cfg).expect_err("stale server")
    );
    assert!(err.contains("weight versions seen"), "{err}");
    engine.set_weight_version(2);

    // 3a. A corrupt safetensors file takes SGLang 0.5.23 down (it exits mid-request), so cures
    //     checks every file first and refuses, naming it; the server keeps serving v2.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).expect("dir");
    std::fs::copy(model.join("config.json"), bad.join("config.json")).expect("config");
    std::fs::write(bad.join("model.safetensors"), b"not a safetensors file").expect("write");
    let err = format!("{:#}", sync.reload_dir(&bad, 9).expect_err("refused"));
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    let info = admin
        .get_ok(&admin.targets[0], "/get_model_info")
        .expect("model info");
    assert_eq!(info["weight_version"], serde_json::json!("2"));
    // 3b. SGLang 0.5.23 skips tensor names it does not know: a checkpoint holding none of the
    //     model's tensors "succeeds", moves the version, and changes nothing. Only the probe
    //     that every publish runs catches that.
    tch::Tensor::write_safetensors(
        &[(
            "nonsense".to_string(),
            tch::Tensor::zeros([2], tch::kind::FLOAT_CPU),
        )],
        bad.join("model.safetensors"),
    )
    .expect("safetensors");
    sync.reload_dir(&bad, 9)
        .expect("SGLang accepts unknown tensor names");
    let info = admin
        .get_ok(&admin.targets[0], "/get_model_info")
        .expect("model info");
    assert_eq!(info["weight_version"], serde_json::json!("9"));
    let (_, lp_after) = served_lp(&admin, &prompt);
    assert!((lp_after - lp2).abs() < 0.05, "unchanged weights");
    let verdict = cures::sync::http::verify_probe(
        &admin,
        &admin.targets[0],
        &admin.model_of(&admin.targets[0]).expect("model"),
        &policy,
        0.25,
    );
    assert!(
        verdict.is_err(),
        "the probe tells the trainer's v1 weights from the served v2 ones"
    );
    let err = sync
        .reload_dir(&tmp.path().join("does-not-exist"), 10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does-not-exist"), "{err}");

    // 4. `cures sync --mode sglang` (what scripts/sync-weights.sh runs), verified by probe.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_cures"));
    let out = Command::new(&bin)
        .args([
            "sync",
            "--endpoint",
            &url,
            "--mode",
            "sglang",
            "--version",
            "11",
        ])
        .arg("--checkpoint")
        .arg(&model)
        .args(["--verify-tol", "0.25", "--json"])
        .output()
        .expect("cures sync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cures sync failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    // Back on the original weights: near the trainer's log-prob, far from v2's. (Served values
    // move by a few hundredths between a fresh prompt and a prefix-cache hit in bf16, so the
    // comparison is against the f32 trainer, not an earlier served number.)
    let (tok_back, lp_back) = served_lp(&admin, &prompt);
    let ours_back = trainer_logprob(&policy, &prompt, tok_back).expect("lp");
    eprintln!("after cures sync: served {lp_back:.4} vs tch {ours_back:.4} (v2 served {lp2:.4})");
    assert!(
        (lp_back - ours_back).abs() < 0.25,
        "{lp_back} vs tch {ours_back}"
    );
    assert!((lp_back - lp2).abs() > 1.0, "{lp_back} vs v2 {lp2}");

    // 5. `cures run` with SGLang as the engine (full-weight sync every step).
    let run_out = tmp.path().join("run");
    crate::support::served::short_run(&model, &url, "sglang_full", &run_out);
    let info = admin
        .get_ok(&admin.targets[0], "/get_model_info")
        .expect("model info");
    eprintln!(
        "after the run the server reports weight_version {}",
        info["weight_version"]
    );
    assert_ne!(
        info["weight_version"],
        serde_json::json!("11"),
        "the run published"
    );
    drop(srv);
}
