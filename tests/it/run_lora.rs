//! LoRA runs: `--set model.lora.r=N` trains fp32 adapters on the frozen base in `cures run`;
//! checkpoints hold the adapters in PEFT layout (policy/, reference/), a resume is bit-exact,
//! and `cures merge-lora` writes the merged model, whose logits are the adapted model's.

use std::path::Path;

use cures::policy::Policy;
use tch::{Device, Kind, Tensor};

use crate::run_e2e::{policy_dir, small_run_args};

fn cures(args: &[String]) -> (bool, String) {
    let (ok, text) = crate::run_faults::cures_env(args, None);
    assert!(!text.contains("panicked"), "{text}");
    (ok, text)
}

fn lora_args(out: &Path, steps: &str) -> Vec<String> {
    let model = policy_dir().to_str().expect("utf8");
    let mut a = small_run_args(model, out.to_str().expect("utf8"), steps);
    for s in ["model.lora.r=4", "model.lora.alpha=8", "train.lr=1e-3"] {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a
}

#[test]
fn a_lora_run_checkpoints_adapters_resumes_bitwise_and_merges() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (straight, split) = (tmp.path().join("straight"), tmp.path().join("split"));
    let (ok, text) = cures(&lora_args(&straight, "4"));
    assert!(ok, "{text}");
    let (ok, text) = cures(&lora_args(&split, "2"));
    assert!(ok, "{text}");
    let mut resume = lora_args(&split, "4");
    resume.push("--resume".into());
    let (ok, text) = cures(&resume);
    assert!(ok, "{text}");

    let ck = |d: &Path| d.join("checkpoints/step_0000004");
    // Adapters only, in PEFT layout: no base weights in the checkpoint.
    for f in [
        "policy/adapter_config.json",
        "policy/adapter_model.safetensors",
        "reference/adapter_model.safetensors",
    ] {
        assert!(ck(&straight).join(f).exists(), "{f}");
    }
    assert!(!ck(&straight).join("policy/model.safetensors").exists());
    let acfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ck(&straight).join("policy/adapter_config.json")).expect("cfg"),
    )
    .expect("json");
    assert_eq!(acfg["peft_type"], "LORA");
    assert_eq!(acfg["r"], 4);
    // Bit-exact resume: adapter, reference adapter and optimiser state.
    for f in [
        "policy/adapter_model.safetensors",
        "reference/adapter_model.safetensors",
        "optimizer.safetensors",
    ] {
        let a = std::fs::read(ck(&straight).join(f)).expect("read");
        let b = std::fs::read(ck(&split).join(f)).expect("read");
        assert!(
            a == b,
            "{f} differs between the straight and the resumed run"
        );
    }
    // The adapters moved (B starts at zero), in fp32; the optimiser holds only them.
    let adapter = Tensor::read_safetensors(ck(&straight).join("policy/adapter_model.safetensors"))
        .expect("adapter");
    let b_mass: f64 = adapter
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .map(|(_, t)| t.abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(b_mass > 0.0, "no adapter moved");
    assert!(adapter.iter().all(|(_, t)| t.kind() == Kind::Float));
    let opt =
        Tensor::read_safetensors(ck(&straight).join("optimizer.safetensors")).expect("optimizer");
    assert!(
        opt.iter()
            .all(|(k, _)| k.contains("lora_") || !k.contains("weight")),
        "optimiser state of base weights: {:?}",
        opt.iter().map(|(k, _)| k).take(5).collect::<Vec<_>>()
    );

    // merge-lora: the merged model's logits are the adapted model's.
    let merged = tmp.path().join("merged");
    let adapter_dir = ck(&straight).join("policy");
    let merge: Vec<String> = [
        "merge-lora".into(),
        "--base".into(),
        policy_dir().display().to_string(),
        "--adapter".into(),
        adapter_dir.display().to_string(),
        "--out".into(),
        merged.display().to_string(),
    ]
    .to_vec();
    let (ok, text) = cures(&merge);
    assert!(ok, "{text}");
    let mut adapted = Policy::load(policy_dir(), Device::Cpu, Kind::Float).expect("base");
    adapted.load_lora(&adapter_dir).expect("adapter");
    let full = Policy::load(&merged, Device::Cpu, Kind::Float).expect("merged");
    let base = Policy::load(policy_dir(), Device::Cpu, Kind::Float).expect("base");
    let ids = Tensor::from_slice(&[3i64, 9, 4, 12, 7, 5, 8, 11]).view([2, 4]);
    let mask = Tensor::ones([2, 4], (Kind::Int64, Device::Cpu));
    let logits = |p: &Policy| tch::no_grad(|| p.forward(&ids, &mask));
    let (a, m, b) = (logits(&adapted), logits(&full), logits(&base));
    let diff = (&a - &m).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged vs adapted logits differ by {diff}");
    let moved = (&a - &b).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the adapter changes nothing: {moved}");
    // An existing --out is refused.
    let (ok, text) = cures(&merge);
    assert!(!ok && text.contains("exists"), "{text}");
}

#[test]
fn vllm_lora_without_model_lora_is_refused_naming_both_keys() {
    let (ok, text) = cures(
        &[
            "check",
            "--config",
            "configs/demo.toml",
            "--config-only",
            "--set",
            "rollout.sync=vllm_lora",
        ]
        .map(str::to_string),
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("rollout.sync") && text.contains("model.lora"),
        "{text}"
    );
    for (set, key) in [
        ("model.lora.dropout=0.1", "model.lora.dropout"),
        ("model.lora.r=0", "model.lora.r"),
        (
            "model.lora.target_modules=[\"qkv\"]",
            "model.lora.target_modules",
        ),
    ] {
        let (ok, text) = cures(
            &[
                "check",
                "--config",
                "configs/demo.toml",
                "--config-only",
                "--set",
                "model.lora.r=8",
                "--set",
                set,
            ]
            .map(str::to_string),
        );
        assert!(!ok && text.contains(key), "{set}: {text}");
    }
    let (ok, text) = cures(
        &[
            "check",
            "--config",
            "configs/demo.toml",
            "--config-only",
            "--set",
            "model.lora.r=8",
        ]
        .map(str::to_string),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("[model.lora]") && text.contains("r = 8"),
        "{text}"
    );
}

/// The memory plan counts what a LoRA policy trains: the adapters' parameters (as many as the
/// policy has), their gradients and fp32 moments, no base gradients or optimiser state.
#[test]
fn the_plan_counts_adapter_only_training_state() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy/tiny-qwen2");
    let m = cures::policy::ModelConfig::load(&dir).expect("config");
    let mut cfg = cures::config::Config::default();
    cfg.model.lora = Some(cures::config::LoraSection {
        r: 4,
        alpha: None,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        dropout: 0.0,
    });
    let mut p = Policy::load(&dir, Device::Cpu, Kind::Float).expect("policy");
    let lora = cfg.model.lora.as_ref().expect("lora");
    p.enable_lora(lora.policy_config(), 0).expect("lora");
    let counted: u64 = p
        .trainable_var_store()
        .variables()
        .values()
        .map(|t| t.numel() as u64)
        .sum();
    assert_eq!(cures::train::plan::lora_params(&m, lora), counted);
    let plan = cures::train::plan::MemoryPlan::new(&m, &cfg, None);
    assert_eq!(plan.part("optimiser state"), counted * 8);
    assert_eq!(plan.part("gradients"), counted * 4);
    cfg.model.lora = None;
    let full = cures::train::plan::MemoryPlan::new(&m, &cfg, None);
    assert!(full.part("optimiser state") > 10 * counted * 8);
}
