//! One binary for CPU and GPU machines (src/backend.rs, scripts/fetch-libtorch.sh --cuda) and
//! the GPU check script that must not rot (scripts/gpu-check.sh --cpu-smoke).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cures(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cures"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run cures")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The directory of the libtorch_cpu.so `cures --version` says it loaded.
fn loaded_dir(version: &str) -> PathBuf {
    let path = version
        .split("loaded from ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .expect("--version names the libtorch_cpu.so loaded");
    assert!(path.ends_with("/libtorch_cpu.so"), "{version}");
    Path::new(path)
        .parent()
        .expect("its directory")
        .to_path_buf()
}

fn cache() -> PathBuf {
    std::env::var_os("CURES_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cures"),
        PathBuf::from,
    )
}

/// Asserts what `--version` says about the backend, given the libtorch directory it loaded.
fn assert_backend(v: &str) {
    assert!(v.starts_with("cures "), "{v}");
    assert!(v.contains("libtorch 2.11.0"), "{v}");
    let dir = loaded_dir(v);
    let backend = v
        .lines()
        .find(|l| l.starts_with("backend: "))
        .unwrap_or_else(|| panic!("no backend line: {v}"));
    if dir.join("libtorch_cuda.so").exists() {
        // The CUDA half was loaded from beside the CPU half: either devices are seen, or
        // libtorch's own CUDA hooks (registered only by loading it) say why none is.
        assert!(
            backend.starts_with("backend: cuda, ")
                || (backend.contains("CUDA libtorch loaded from")
                    && backend.contains(&dir.join("libtorch_cuda.so").display().to_string())
                    && backend.contains("no CUDA device is visible")),
            "{v}"
        );
        if !backend.starts_with("backend: cuda, ") {
            // Only libtorch's CUDA hooks (registered by loading the library) name the missing
            // driver or the hidden devices; without them it would not know CUDA at all.
            assert!(
                backend.contains("NVIDIA driver") || backend.contains("no CUDA GPUs are available"),
                "{v}"
            );
        }
    } else {
        assert!(
            backend.starts_with(
                "backend: cpu only (no CUDA libtorch found: no libtorch_cuda.so beside "
            ),
            "{v}"
        );
        assert!(
            backend.contains(&dir.join("libtorch_cpu.so").display().to_string()),
            "{v}"
        );
        assert!(backend.contains("scripts/fetch-libtorch.sh --cuda"), "{v}");
    }
}

#[test]
fn version_names_the_libtorch_and_the_backend() {
    let o = cures(&["--version"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_backend(&text(&o));
    // -V says the same.
    let short = cures(&["-V"], &[]);
    assert_eq!(text(&short), text(&o));

    // The CPU-only cut, named explicitly: CPU only, and why.
    let cpu = cache().join("libtorch-2.11.0/lib");
    if cpu.join("libtorch_cpu.so").exists() && !cpu.join("libtorch_cuda.so").exists() {
        let o = cures(
            &["--version"],
            &[("LD_LIBRARY_PATH", &cpu.display().to_string())],
        );
        let v = text(&o);
        assert!(o.status.success(), "{v}");
        assert_eq!(loaded_dir(&v), cpu, "{v}");
        assert!(
            v.contains("backend: cpu only (no CUDA libtorch found"),
            "{v}"
        );
    }
    // The CUDA cut of scripts/fetch-libtorch.sh --cuda, when this machine has one: loaded.
    let cuda = cache().join("libtorch-2.11.0-cuda/lib");
    if cuda.join("libtorch_cuda.so").exists() {
        let ld = cuda.display().to_string();
        let o = cures(&["--version"], &[("LD_LIBRARY_PATH", &ld)]);
        let v = text(&o);
        assert!(o.status.success(), "{v}");
        assert_eq!(loaded_dir(&v), cuda, "{v}");
        assert_backend(&v);
        let off = cures(
            &["--version"],
            &[("LD_LIBRARY_PATH", &ld), ("CURES_CUDA", "0")],
        );
        assert!(
            text(&off).contains("backend: cpu only (CURES_CUDA=0"),
            "{}",
            text(&off)
        );
    } else {
        eprintln!(
            "gpu_build: no {} (scripts/fetch-libtorch.sh --cuda): the CUDA cut is not loaded here",
            cuda.display()
        );
    }
}

#[test]
fn a_cuda_device_without_cuda_is_refused_with_the_reason() {
    let v = text(&cures(&["--version"], &[]));
    if v.contains("backend: cuda, ") {
        eprintln!("gpu_build: this machine has a CUDA device; nothing to refuse");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let o = cures(
        &[
            "run",
            "--config",
            "configs/demo.toml",
            "--set",
            "model.device=cuda",
            "--out",
            &out.display().to_string(),
            "--quiet",
        ],
        &[],
    );
    let e = text(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("model.device = \"cuda\": cuda:0 asked for, but"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    let b = cures(
        &[
            "bench", "generate", "--device", "cuda:1", "--preset", "tiny",
        ],
        &[],
    );
    let e = text(&b);
    assert!(!b.status.success(), "{e}");
    assert!(e.contains("--device cuda:1: cuda:1 asked for, but"), "{e}");
    let bad = cures(&["bench", "train-step", "--device", "gpu"], &[]);
    assert!(
        text(&bad).contains("\"gpu\" is not one of same, cpu, cuda, cuda:N"),
        "{}",
        text(&bad)
    );
    let bad = cures(&["bench", "train-step", "--preset", "huge"], &[]);
    assert!(
        text(&bad).contains("--preset \"huge\": expected one of tiny, bench, qwen2.5-math-1.5b"),
        "{}",
        text(&bad)
    );
}

fn last_json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON")
}

#[test]
fn the_benches_take_a_device_and_a_preset() {
    let o = cures(
        &[
            "bench",
            "train-step",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--json",
        ],
        &[],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("train step, tiny preset ("), "{t}");
    assert!(t.contains("  cures "), "{t}");
    assert!(t.contains("  pytorch "), "{t}");
    let v = last_json(&o);
    assert_eq!(v["preset"], "tiny", "{v}");
    assert_eq!(v["device"], "cpu", "{v}");
    assert_eq!(v["dtype"], "f32", "{v}");
    assert!(
        v["cures_tokens_per_s"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(
        v["flops_per_token"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
    // No MFU on a CPU (no peak known); the reference is a figure or n/a with its reason.
    assert!(v["cures_mfu"].is_null(), "{v}");
    match v["pytorch_tokens_per_s"].as_f64() {
        Some(x) => {
            assert!(x > 0.0, "{v}");
            assert!(v["ratio"].as_f64().is_some(), "{v}");
        }
        None => assert!(t.contains("PyTorch reference not run: "), "{t}"),
    }
    // Given a peak, MFU is tokens/s x FLOPs per token / peak.
    let o = cures(
        &[
            "bench",
            "train-step",
            "--preset",
            "tiny",
            "--peak-tflops",
            "1",
            "--no-reference",
            "--json",
        ],
        &[],
    );
    let v = last_json(&o);
    let mfu = v["cures_mfu"].as_f64().expect("mfu");
    let want = v["cures_tokens_per_s"].as_f64().expect("tps")
        * v["flops_per_token"].as_f64().expect("flops")
        / 1e12;
    assert!((mfu - want).abs() <= 1e-12 * want.max(1.0), "{v}");

    let o = cures(
        &[
            "bench", "generate", "--device", "cpu", "--preset", "tiny", "--json",
        ],
        &[],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("greedy generation, tiny preset ("), "{t}");
    assert!(t.contains("  f32   kv cache "), "{t}");
    assert!(t.contains("  bf16  kv cache "), "{t}");
    let v = last_json(&o);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{v}");
    for (r, dt) in rows.iter().zip(["f32", "bf16"]) {
        assert_eq!(r["dtype"], dt, "{v}");
        assert!(
            r["kv_cache_tokens_per_s"].as_f64().is_some_and(|x| x > 0.0),
            "{v}"
        );
        assert!(
            r["recompute_tokens_per_s"]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "{v}"
        );
    }
    // The KV cache and recomputing the prefix decode the same greedy tokens in f32.
    assert_eq!(rows[0]["same_tokens"], true, "{v}");
    let ratio = v["bf16_over_f32"].as_f64().expect("bf16/f32");
    let want = rows[1]["kv_cache_tokens_per_s"].as_f64().expect("bf16")
        / rows[0]["kv_cache_tokens_per_s"].as_f64().expect("f32");
    assert!((ratio - want).abs() < 1e-9, "{v}");
}

/// Every key scripts/gpu-check.sh promises, written by its CPU smoke run of the same script.
const GPU_CHECK_KEYS: [&str; 27] = [
    "mode",
    "device",
    "preset",
    "version",
    "libtorch",
    "backend",
    "cuda",
    "train_step",
    "train_step_cures_tokens_per_s",
    "train_step_pytorch_tokens_per_s",
    "train_step_ratio",
    "train_step_cures_mfu",
    "train_step_pytorch_mfu",
    "generate",
    "generate_f32_tokens_per_s",
    "generate_bf16_tokens_per_s",
    "generate_f32_recompute_tokens_per_s",
    "generate_bf16_recompute_tokens_per_s",
    "generate_bf16_over_f32",
    "run",
    "run_steps",
    "run_wall_s",
    "run_s_per_step",
    "run_heldout_before",
    "run_heldout_after",
    "seconds",
    "errors",
];

#[test]
fn the_gpu_check_script_runs_end_to_end_on_a_cpu() {
    let _serial = crate::support::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("gpu-check.json");
    let o = Command::new("bash")
        .args([
            "scripts/gpu-check.sh",
            "--cpu-smoke",
            "--bin",
            env!("CARGO_BIN_EXE_cures"),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run gpu-check.sh");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the JSON file")).expect("JSON");
    for k in GPU_CHECK_KEYS {
        assert!(v.get(k).is_some(), "no key {k}: {v}");
    }
    assert_eq!(v["mode"], "cpu-smoke");
    // The smoke run takes the CPU path even where a CUDA libtorch is linked.
    assert_eq!(v["cuda"], false, "{v}");
    assert!(
        v["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("cpu only (CURES_CUDA=0")),
        "{v}"
    );
    for k in [
        "train_step_cures_tokens_per_s",
        "generate_f32_tokens_per_s",
        "generate_bf16_tokens_per_s",
        "generate_bf16_over_f32",
        "run_wall_s",
        "run_s_per_step",
        "run_heldout_before",
        "run_heldout_after",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    assert_eq!(v["run_steps"], 3, "{v}");
    // The only error a CPU smoke may report is a reference that cannot run here.
    let errors = v["errors"].as_object().expect("errors");
    assert!(errors.keys().all(|k| k == "train_step_reference"), "{v}");
    // A binary that is not there: a clear refusal, no JSON.
    let o = Command::new("bash")
        .args([
            "scripts/gpu-check.sh",
            "--cpu-smoke",
            "--bin",
            "/nonexistent/cures",
        ])
        .output()
        .expect("run gpu-check.sh");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no cures binary at /nonexistent/cures"),
        "{}",
        text(&o)
    );
}
