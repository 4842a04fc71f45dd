//! `cures bench optim`: time of one optimiser step (gradient-norm clip + AdamW) of cures'
//! [`AdamW`] in each `train.precision` (`bf16_mixed`, `pure`, `fp32`) on the parameters of a
//! Qwen2/Llama-shaped model, against PyTorch's `torch.optim.AdamW` (fused and foreach, fp32
//! parameters) with `clip_grad_norm_` on the same shapes, device and thread count
//! (`scripts/bench/optim_ref.py`), in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{Device, Kind};

use super::{median, reference_json, repo_file};
use crate::policy::{Arch, ModelConfig, Transformer, WeightInit};
use crate::train::{AdamW, AdamWParams, Precision};

/// Arguments of `cures bench optim`.
#[derive(Debug, Clone, clap::Args)]
pub struct OptimBenchArgs {
    /// Parameter shapes: `bench` (the ~28 M Llama of `bench train-step`) or `qwen1.5b` (the
    /// Qwen2.5-Math-1.5B decoder, 28 layers, with a 101-token vocabulary: 1.31 B parameters).
    #[arg(long, default_value = "bench")]
    pub shape: String,
    /// `cpu` or `cuda` (`cuda:N`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed steps per variant (after 2 warm-up steps); medians are reported.
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// One variant's figure.
#[derive(Debug, Clone, Serialize)]
pub struct OptimRow {
    /// `cures bf16_mixed`, `torch fused fp32`, ...
    pub variant: String,
    /// Median milliseconds per step (clip + update).
    pub step_ms: f64,
}

/// `cures bench optim` figures (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct OptimResult {
    /// Shape name.
    pub shape: String,
    /// Parameters.
    pub params: i64,
    /// Parameter tensors.
    pub tensors: usize,
    /// Device.
    pub device: String,
    /// Intra-op threads of both sides.
    pub threads: i32,
    /// Every variant, cures first.
    pub rows: Vec<OptimRow>,
    /// cures bf16_mixed ms / torch fused ms (null without the reference).
    pub mixed_vs_torch_fused: Option<f64>,
}

/// The model shape of `name`.
fn shape_config(name: &str) -> Result<ModelConfig> {
    match name {
        "bench" => Ok(super::train_step::bench_config()),
        // Qwen2.5-Math-1.5B: hidden 1536, FFN 8960, 28 layers, 12 heads / 2 KV heads, tied.
        "qwen1.5b" => Ok(ModelConfig::new(
            Arch::Qwen2,
            101,
            1536,
            8960,
            28,
            12,
            2,
            true,
        )),
        other => anyhow::bail!("--shape {other:?}: use bench or qwen1.5b"),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The model's own parameters (`Transformer::new`, HF init) on `device` in `kind`.
fn model_params(cfg: &ModelConfig, device: Device, kind: Kind) -> tch::nn::VarStore {
    tch::manual_seed(0);
    let mut vs = tch::nn::VarStore::new(device);
    let _model = Transformer::new(&vs.root(), cfg, WeightInit::Random { std: 0.02 });
    vs.set_kind(kind);
    vs
}

/// Median ms of clip + step for cures' AdamW in `precision` over weights of `kind`, and the
/// parameters' shapes (name order).
fn time_cures(
    cfg: &ModelConfig,
    device: Device,
    kind: Kind,
    precision: Precision,
    reps: usize,
) -> Result<(f64, Vec<Vec<i64>>)> {
    let vs = model_params(cfg, device, kind);
    let shapes: Vec<Vec<i64>> = vs
        .variables()
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .values()
        .map(|t| t.size())
        .collect();
    let mut opt = AdamW::new(&vs, precision)?;
    // Random gradients, once: every step then sees defined gradients of the right dtype.
    for p in vs.trainable_variables() {
        let r = p.randn_like();
        (&p * r)
            .sum(Kind::Float)
            .f_backward()
            .context("bench gradients")?;
    }
    let h = AdamWParams {
        lr: 1e-6,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps + 2 {
        sync(device);
        let t = Instant::now();
        opt.clip_grad_norm(1.0)?;
        opt.step(&h)?;
        sync(device);
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((median(&times), shapes))
}

/// The PyTorch rows (fused and foreach AdamW on fp32 parameters).
fn run_reference(
    shapes: &[Vec<i64>],
    device: &str,
    threads: i32,
    reps: usize,
) -> Result<Vec<OptimRow>, String> {
    let script = repo_file("scripts/bench/optim_ref.py")
        .ok_or("scripts/bench/optim_ref.py not found (run from the repository root)")?;
    let py = super::reference_python("torch")?;
    let dir = std::env::temp_dir().join(format!("cures-bench-optim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("shapes.json");
    let json = serde_json::to_string(shapes).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let out = Command::new(&py)
        .arg(&script)
        .arg("--shapes")
        .arg(&path)
        .args(["--device", device])
        .args(["--threads", &threads.to_string()])
        .args(["--reps", &reps.to_string()])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let v = reference_json(&py, &script, out)?;
    let mut rows = Vec::new();
    for (key, name) in [
        ("fused_ms", "torch AdamW(fused=True) fp32"),
        ("foreach_ms", "torch AdamW(foreach=True) fp32"),
    ] {
        if let Some(ms) = v.get(key).and_then(|x| x.as_f64()) {
            rows.push(OptimRow {
                variant: name.to_string(),
                step_ms: ms,
            });
        }
    }
    if rows.is_empty() {
        return Err("the reference printed no timings".into());
    }
    Ok(rows)
}

/// Run the optimiser bench.
pub fn run(a: &OptimBenchArgs) -> Result<OptimResult> {
    let device = super::device_arg(&a.device)?;
    let cfg = shape_config(&a.shape)?;
    let threads = tch::get_num_threads();
    let mut rows = Vec::new();
    let mut shapes = Vec::new();
    for (name, kind, precision) in [
        ("cures bf16_mixed", Kind::BFloat16, Precision::Bf16Mixed),
        ("cures pure bf16", Kind::BFloat16, Precision::Pure),
        ("cures fp32", Kind::Float, Precision::Fp32),
    ] {
        let (ms, s) = time_cures(&cfg, device, kind, precision, a.reps)
            .with_context(|| format!("{name} step"))?;
        shapes = s;
        rows.push(OptimRow {
            variant: name.to_string(),
            step_ms: ms,
        });
    }
    let params: i64 = shapes.iter().map(|s| s.iter().product::<i64>()).sum();
    let mut ratio = None;
    if !a.no_reference {
        match run_reference(&shapes, &a.device, threads, a.reps) {
            Ok(r) => {
                ratio = r
                    .iter()
                    .find(|x| x.variant.contains("fused"))
                    .map(|f| rows[0].step_ms / f.step_ms);
                rows.extend(r);
            }
            Err(e) => eprintln!("bench optim: PyTorch reference skipped: {e}"),
        }
    }
    Ok(OptimResult {
        shape: a.shape.clone(),
        params,
        tensors: shapes.len(),
        device: a.device.clone(),
        threads,
        rows,
        mixed_vs_torch_fused: ratio,
    })
}

/// The human-readable table.
pub fn print(r: &OptimResult) {
    println!(
        "optimiser step (clip + AdamW), {} shape: {} parameters in {} tensors, {}, {} threads:",
        r.shape, r.params, r.tensors, r.device, r.threads
    );
    for row in &r.rows {
        println!("  {:<34} {:>10.2} ms", row.variant, row.step_ms);
    }
    match r.mixed_vs_torch_fused {
        Some(x) => println!("  cures bf16_mixed / torch fused: {x:.3}"),
        None => println!("  cures bf16_mixed / torch fused: n/a"),
    }
}
