//! `cures bench train-step` and `cures bench generate`: throughput of the tch policy on a
//! device, at a preset's shapes with random weights.
//!
//! train-step: tokens/s of forward + backward (mean next-token log-likelihood) against the same
//! config, batch, dtype, device and thread count in PyTorch eager
//! (`scripts/bench/train_step_ref.py`, transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM`),
//! with the model FLOPs utilisation of both on CUDA.
//!
//! generate: greedy decoding with the batched KV cache vs recomputing the whole prefix at every
//! step (no cache), same model and prompts, in f32 and in bf16.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{median, reference_python, repo_file};
use crate::policy::{Arch, ModelConfig, Policy, SamplingParams, Tokenizer};

/// Shapes and sizes of one bench preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name on the command line.
    pub name: &'static str,
    /// The model.
    pub config: fn() -> ModelConfig,
    /// Train step: sequences, tokens per sequence, timed steps.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed steps.
    pub steps: usize,
    /// Generation: rows, prompt tokens, new tokens.
    pub gen: (usize, usize, usize),
}

/// The presets: `tiny` (CI, seconds on a CPU), `bench` (the ~28 M Llama of the CPU figures),
/// `qwen2.5-math-1.5b` (the real model's shapes, 152 k vocabulary, for a GPU).
pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "tiny",
        config: tiny_config,
        batch: 2,
        seq: 32,
        steps: 3,
        gen: (2, 8, 16),
    },
    Preset {
        name: "bench",
        config: bench_config,
        batch: 4,
        seq: 256,
        steps: 5,
        gen: (1, 32, 256),
    },
    Preset {
        name: "qwen2.5-math-1.5b",
        config: qwen_math_1_5b_config,
        batch: 8,
        seq: 1024,
        steps: 5,
        gen: (32, 64, 128),
    },
];

impl Preset {
    /// By name.
    pub fn named(name: &str) -> Result<Preset> {
        PRESETS
            .into_iter()
            .find(|p| p.name == name)
            .with_context(|| {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                format!("--preset {name:?}: expected one of {}", names.join(", "))
            })
    }
}

/// `tiny`: Llama, hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 176, vocabulary 256.
fn tiny_config() -> ModelConfig {
    ModelConfig::new(Arch::Llama, 256, 64, 176, 2, 4, 2, false)
}

/// The bench model: Llama, hidden 512, 8 layers, 8 heads / 4 KV heads, FFN 1408, vocab 8192,
/// untied (~28 M parameters).
pub fn bench_config() -> ModelConfig {
    ModelConfig::new(Arch::Llama, 8192, 512, 1408, 8, 8, 4, false)
}

/// Qwen2.5-Math-1.5B: hidden 1536, FFN 8960, 28 layers, 12 heads / 2 KV heads, vocabulary
/// 151 936, tied embeddings, context 4096 (1.54 B parameters).
fn qwen_math_1_5b_config() -> ModelConfig {
    let mut c = ModelConfig::new(Arch::Qwen2, 151_936, 1536, 8960, 28, 12, 2, true);
    c.max_position_embeddings = 4096;
    c
}

/// A byte-level tokenizer stub for benches (never used to encode: benches feed ids).
pub(crate) fn bench_tokenizer() -> Result<Tokenizer> {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
      "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
      "model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;
    let inner: tokenizers::Tokenizer = json
        .parse()
        .map_err(|e| anyhow::anyhow!("bench tokenizer: {e}"))?;
    Ok(Tokenizer::from_parts(inner, vec![], Some(0), None, vec![]))
}

/// The bench model (random init, CPU, f32).
pub fn bench_policy() -> Result<Policy> {
    Policy::from_config_random(
        bench_config(),
        bench_tokenizer()?,
        0,
        Device::Cpu,
        Kind::Float,
    )
}

/// A preset's model on `device` in `kind` (drawn on the device: no host copy).
fn preset_policy(p: &Preset, device: Device, kind: Kind) -> Result<Policy> {
    Policy::from_config_random_on_device((p.config)(), bench_tokenizer()?, 0, device, kind)
        .with_context(|| format!("the {} model on {device:?}", p.name))
}

fn random_ids(b: usize, t: usize, vocab: i64, device: Device) -> Result<Tensor> {
    tch::manual_seed(0);
    Tensor::f_randint(vocab, [b as i64, t as i64], (Kind::Int64, Device::Cpu))
        .and_then(|t| t.f_to_device(device))
        .context("random token ids")
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The name the user gives a kind (`f32`, `bf16`, `f16`).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "f32",
    }
}

/// Arguments of `cures bench train-step`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainStepArgs {
    /// Shapes: `tiny` (CI), `bench` (~28 M Llama) or `qwen2.5-math-1.5b` (its real shapes with
    /// random weights, for a GPU).
    #[arg(long, default_value = "bench")]
    pub preset: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32` or `bf16` (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Sequences per step (default: the preset's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence (default: the preset's).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Timed steps, after 2 warm-up steps (default: the preset's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The device's peak dense TFLOP/s in this dtype for MFU (default: from the GPU's name, for
    /// bf16 on the GPUs cures knows).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Instead: peak memory and tokens/s of the update with the LM head chunked (512, the
    /// default) and not (0), each in its own child process, beside the memory plan
    /// (`big-vocab`: 2 layers, hidden 256, vocabulary 151 936, 4 x 1024 tokens; `small`; `long`).
    #[arg(long, value_name = "PRESET", conflicts_with_all = ["preset", "device", "dtype"])]
    pub head_memory: Option<String>,
    /// (internal) measure one chunk size in this process and print it as JSON.
    #[arg(long, hide = true, requires = "head_memory")]
    pub child_chunk: Option<usize>,
}

/// Train-step bench parameters.
#[derive(Debug, Clone)]
pub struct TrainStepBench {
    /// The preset (shapes).
    pub preset: Preset,
    /// Device.
    pub device: Device,
    /// Parameter dtype.
    pub kind: Kind,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed steps (after 2 warm-up steps).
    pub steps: usize,
    /// Run the PyTorch reference.
    pub reference: bool,
    /// Peak TFLOP/s for MFU (None: from the GPU's name where known).
    pub peak_tflops: Option<f64>,
}

impl TrainStepBench {
    /// The bench of `cures bench all`: the `bench` preset on the CPU in f32.
    pub fn cpu(batch: usize, seq: usize, steps: usize) -> Result<TrainStepBench> {
        Ok(TrainStepBench {
            preset: Preset::named("bench")?,
            device: Device::Cpu,
            kind: Kind::Float,
            batch,
            seq,
            steps,
            reference: true,
            peak_tflops: None,
        })
    }

    /// From the command line.
    pub fn from_args(a: &TrainStepArgs) -> Result<TrainStepBench> {
        let preset = Preset::named(&a.preset)?;
        let device = super::device_arg(&a.device)?;
        Ok(TrainStepBench {
            preset,
            device,
            kind: dtype_arg(a.dtype.as_deref(), device)?,
            batch: a.batch.unwrap_or(preset.batch),
            seq: a.seq.unwrap_or(preset.seq),
            steps: a.steps.unwrap_or(preset.steps),
            reference: !a.no_reference,
            peak_tflops: a.peak_tflops,
        })
    }
}

/// `--dtype`: f32 or bf16; by default bf16 on CUDA, f32 on the CPU.
fn dtype_arg(s: Option<&str>, device: Device) -> Result<Kind> {
    match s {
        None if device.is_cuda() => Ok(Kind::BFloat16),
        None => Ok(Kind::Float),
        Some(s) => match crate::policy::parse_kind(s)? {
            k @ (Kind::Float | Kind::BFloat16) => Ok(k),
            _ => anyhow::bail!("--dtype {s:?}: use f32 or bf16"),
        },
    }
}

/// Train-step figures (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainStepResult {
    /// Preset name.
    pub preset: String,
    /// Device (`cpu`, `cuda:0`).
    pub device: String,
    /// The GPU's name (CUDA only, from nvidia-smi).
    pub gpu: Option<String>,
    /// Parameter dtype.
    pub dtype: String,
    /// Model parameters.
    pub params: i64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Intra-op threads used by both sides.
    pub threads: i32,
    /// Model FLOPs of one token's forward + backward (matmuls and causal attention).
    pub flops_per_token: f64,
    /// Median ms per cures step.
    pub cures_step_ms: f64,
    /// cures tokens/s.
    pub cures_tokens_per_s: f64,
    /// PyTorch eager tokens/s (null when the reference could not run).
    pub pytorch_tokens_per_s: Option<f64>,
    /// cures / PyTorch.
    pub ratio: Option<f64>,
    /// The peak dense TFLOP/s MFU is taken against (null: unknown, no MFU).
    pub peak_tflops: Option<f64>,
    /// cures model FLOPs utilisation (0..1).
    pub cures_mfu: Option<f64>,
    /// PyTorch's.
    pub pytorch_mfu: Option<f64>,
}

/// Forward + backward FLOPs per token: 6 per matmul parameter (the LM head counted once, the
/// input embedding not) plus causal attention's 6 · layers · seq · (heads · head_dim).
pub fn flops_per_token(cfg: &ModelConfig, seq: usize) -> f64 {
    let embed = cfg.vocab_size * cfg.hidden_size;
    let matmul = cfg.num_params() - if cfg.tie_word_embeddings { 0 } else { embed };
    let q = cfg.num_attention_heads * cfg.head_dim();
    6.0 * matmul as f64 + 6.0 * (cfg.num_hidden_layers * q) as f64 * seq as f64
}

/// The GPU's name for `device` (nvidia-smi; None on the CPU or without it).
pub fn gpu_name(device: Device) -> Option<String> {
    let Device::Cuda(i) = device else {
        return None;
    };
    let o = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    names.get(i).or(names.first()).map(|s| s.to_string())
}

/// Peak dense bf16 TFLOP/s of the GPUs cures knows by name (vendor data sheets, no sparsity).
pub fn peak_bf16_tflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let table: [(&str, f64); 7] = [
        ("H100 PCIE", 756.0),
        ("H100 NVL", 835.0),
        ("H200", 989.0),
        ("H100", 989.0),
        ("A100", 312.0),
        ("L40S", 362.0),
        ("B200", 2250.0),
    ];
    table.iter().find(|(k, _)| n.contains(k)).map(|&(_, v)| v)
}

/// One cures training step: logits → log_softmax → gather → mean → backward; then
/// `Optimizer::zero_grad` (libtorch sets the grads to none, like PyTorch's default).
fn cures_step(p: &Policy, opt: &mut tch::nn::Optimizer, ids: &Tensor, mask: &Tensor) -> Result<()> {
    let t = ids.size()[1];
    let logits = p.forward(ids, mask);
    let lp = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let tg = ids.narrow(1, 1, t - 1).unsqueeze(-1);
    let loss = -lp.gather(-1, &tg, false).mean(Kind::Float);
    loss.f_backward().context("backward")?;
    opt.zero_grad();
    Ok(())
}

fn run_reference(b: &TrainStepBench, threads: i32) -> Result<f64, String> {
    let script = repo_file("scripts/bench/train_step_ref.py")
        .ok_or("scripts/bench/train_step_ref.py not found (run from the repository root)")?;
    let py = reference_python("transformers")?;
    let dir = tempfile_dir().map_err(|e| e.to_string())?;
    let cfg_path = dir.join("config.json");
    let cfg = (b.preset.config)()
        .to_json("float32")
        .map_err(|e| e.to_string())?;
    std::fs::write(&cfg_path, cfg).map_err(|e| format!("writing {}: {e}", cfg_path.display()))?;
    let device = match b.device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    };
    let out = Command::new(&py)
        .arg(&script)
        .arg("--config")
        .arg(&cfg_path)
        .args(["--batch", &b.batch.to_string()])
        .args(["--seq", &b.seq.to_string()])
        .args(["--steps", &b.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--device", &device])
        .args(["--dtype", kind_name(b.kind)])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    super::reference_figure(&py, &script, out, "tokens_per_s")
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("cures-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn device_label(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// Run the train-step bench.
pub fn run_train_step(b: &TrainStepBench) -> Result<TrainStepResult> {
    let threads = tch::get_num_threads();
    let cfg = (b.preset.config)();
    let (tps, step) = crate::fault::catch(|| {
        let p = preset_policy(&b.preset, b.device, b.kind)?;
        let ids = random_ids(b.batch, b.seq, cfg.vocab_size, b.device)?;
        let mask = ids.ones_like();
        let mut opt =
            tch::nn::OptimizerConfig::build(tch::nn::Sgd::default(), p.trainable_var_store(), 0.0)
                .context("building the optimiser")?;
        let mut times = Vec::new();
        for i in 0..b.steps + 2 {
            sync(b.device);
            let t0 = Instant::now();
            cures_step(&p, &mut opt, &ids, &mask)?;
            sync(b.device);
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let step = median(&times);
        Ok(((b.batch * b.seq) as f64 / step, step))
    })
    .with_context(|| {
        format!(
            "{} x {} tokens of {} in {} on {}",
            b.batch,
            b.seq,
            b.preset.name,
            kind_name(b.kind),
            device_label(b.device)
        )
    })?;
    let mut pytorch = None;
    if b.reference {
        match run_reference(b, threads) {
            Ok(v) => pytorch = Some(v),
            Err(e) => eprintln!("bench train-step: PyTorch reference not run: {e}"),
        }
    } else {
        eprintln!("bench train-step: reference not run (--no-reference)");
    }
    let gpu = gpu_name(b.device);
    let peak = b.peak_tflops.or_else(|| {
        if !b.device.is_cuda() || b.kind != Kind::BFloat16 {
            return None;
        }
        let p = gpu.as_deref().and_then(peak_bf16_tflops);
        if p.is_none() {
            eprintln!(
                "bench train-step: no MFU: peak TFLOP/s of {:?} unknown (give --peak-tflops)",
                gpu.as_deref().unwrap_or("this GPU")
            );
        }
        p
    });
    let fpt = flops_per_token(&cfg, b.seq);
    let mfu = |tps: f64| peak.map(|pk| tps * fpt / (pk * 1e12));
    Ok(TrainStepResult {
        preset: b.preset.name.to_string(),
        device: device_label(b.device),
        gpu,
        dtype: kind_name(b.kind).to_string(),
        params: cfg.num_params(),
        batch: b.batch,
        seq: b.seq,
        threads,
        flops_per_token: fpt,
        cures_step_ms: step * 1e3,
        cures_tokens_per_s: tps,
        pytorch_tokens_per_s: pytorch,
        ratio: pytorch.map(|r| tps / r),
        peak_tflops: peak,
        cures_mfu: mfu(tps),
        pytorch_mfu: pytorch.and_then(mfu),
    })
}

/// The human-readable rows of a train-step result.
pub fn print_train_step(r: &TrainStepResult) {
    let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!(
        "train step, {} preset ({} params, {}, {}{}, batch {} x {} tokens, {} threads):",
        r.preset,
        r.params,
        r.dtype,
        r.device,
        r.gpu.as_deref().map_or(String::new(), |g| format!(" {g}")),
        r.batch,
        r.seq,
        r.threads
    );
    println!(
        "  cures    {:>10.1} tokens/s ({:.1} ms/step)   MFU {}",
        r.cures_tokens_per_s,
        r.cures_step_ms,
        pct(r.cures_mfu)
    );
    println!(
        "  pytorch  {:>10} tokens/s   MFU {}   ratio {}",
        fmt(r.pytorch_tokens_per_s),
        pct(r.pytorch_mfu),
        r.ratio.map_or("n/a".into(), |v| format!("{v:.3}"))
    );
}

/// Arguments of `cures bench generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Shapes: `tiny`, `bench` or `qwen2.5-math-1.5b` (see `bench train-step`).
    #[arg(long, default_value = "bench")]
    pub preset: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtypes, each measured (default: f32 and bf16).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub dtypes: Vec<String>,
    /// Rows decoded together (default: the preset's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Prompt tokens (default: the preset's).
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// New tokens (default: the preset's).
    #[arg(long)]
    pub new_tokens: Option<usize>,
    /// Skip the reference (recomputing the prefix at every token).
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Generation bench parameters.
#[derive(Debug, Clone)]
pub struct GenerateBench {
    /// The preset (shapes).
    pub preset: Preset,
    /// Device.
    pub device: Device,
    /// Each dtype measured, in this order.
    pub kinds: Vec<Kind>,
    /// Rows decoded together.
    pub batch: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens per row.
    pub new_tokens: usize,
    /// Run the recompute reference.
    pub reference: bool,
}

impl GenerateBench {
    /// From the command line.
    pub fn from_args(a: &GenerateArgs) -> Result<GenerateBench> {
        let preset = Preset::named(&a.preset)?;
        let device = super::device_arg(&a.device)?;
        let kinds = a
            .dtypes
            .iter()
            .map(|s| dtype_arg(Some(s), device))
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(
            !kinds.is_empty(),
            "--dtypes: give at least one of f32, bf16"
        );
        Ok(GenerateBench {
            preset,
            device,
            kinds,
            batch: a.batch.unwrap_or(preset.gen.0),
            prompt_tokens: a.prompt_tokens.unwrap_or(preset.gen.1),
            new_tokens: a.new_tokens.unwrap_or(preset.gen.2),
            reference: !a.no_reference,
        })
    }
}

/// One dtype's generation figures.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRow {
    /// Parameter dtype.
    pub dtype: String,
    /// Tokens/s with the KV cache (all rows).
    pub kv_cache_tokens_per_s: f64,
    /// Tokens/s recomputing the prefix each step (null without the reference).
    pub recompute_tokens_per_s: Option<f64>,
    /// kv / recompute.
    pub speedup: Option<f64>,
    /// Both produced the same greedy tokens.
    pub same_tokens: Option<bool>,
}

/// Generation bench figures (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct GenerateResult {
    /// Preset name.
    pub preset: String,
    /// Device.
    pub device: String,
    /// The GPU's name (CUDA only).
    pub gpu: Option<String>,
    /// Model parameters.
    pub params: i64,
    /// Rows decoded together.
    pub batch: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens per row.
    pub new_tokens: usize,
    /// One row per dtype.
    pub rows: Vec<GenerateRow>,
    /// KV-cache tokens/s in bf16 / in f32 (when both ran; goal ≥ 1).
    pub bf16_over_f32: Option<f64>,
}

/// Run the generation bench: greedy, `new_tokens` per row, `batch` rows of one prompt length,
/// once per dtype.
pub fn run_generate(g: &GenerateBench) -> Result<GenerateResult> {
    let cfg = (g.preset.config)();
    let ids = random_ids(g.batch, g.prompt_tokens, cfg.vocab_size, Device::Cpu)?;
    let prompts: Vec<Vec<i64>> = (0..g.batch as i64)
        .map(|r| Vec::<i64>::try_from(&ids.get(r)).context("prompt ids"))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for &kind in &g.kinds {
        let row =
            crate::fault::catch(|| generate_row(g, kind, &prompts, &ids)).with_context(|| {
                format!(
                    "generating {} x {} tokens with {} in {} on {}",
                    g.batch,
                    g.new_tokens,
                    g.preset.name,
                    kind_name(kind),
                    device_label(g.device)
                )
            })?;
        rows.push(row);
    }
    let tps = |k: &str| {
        rows.iter()
            .find(|r| r.dtype == k)
            .map(|r| r.kv_cache_tokens_per_s)
    };
    let bf16_over_f32 = tps("bf16").zip(tps("f32")).map(|(b, f)| b / f);
    Ok(GenerateResult {
        preset: g.preset.name.to_string(),
        device: device_label(g.device),
        gpu: gpu_name(g.device),
        params: cfg.num_params(),
        batch: g.batch,
        prompt_tokens: g.prompt_tokens,
        new_tokens: g.new_tokens,
        rows,
        bf16_over_f32,
    })
}

fn generate_row(
    g: &GenerateBench,
    kind: Kind,
    prompts: &[Vec<i64>],
    ids: &Tensor,
) -> Result<GenerateRow> {
    let p = preset_policy(&g.preset, g.device, kind)?;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: g.new_tokens,
        ignore_eos: true,
        max_batch: 0,
        ..Default::default()
    };
    // Warm-up.
    p.generate(
        prompts,
        &SamplingParams {
            max_tokens: 4,
            ..params.clone()
        },
    )?;
    sync(g.device);
    let t0 = Instant::now();
    let gens = p.generate(prompts, &params)?;
    sync(g.device);
    let kv_s = t0.elapsed().as_secs_f64();
    let total = (g.batch * g.new_tokens) as f64;
    let mut row = GenerateRow {
        dtype: kind_name(kind).to_string(),
        kv_cache_tokens_per_s: total / kv_s,
        recompute_tokens_per_s: None,
        speedup: None,
        same_tokens: None,
    };
    if !g.reference {
        return Ok(row);
    }
    let ids = ids.f_to_device(g.device).context("prompt ids")?;
    sync(g.device);
    let t1 = Instant::now();
    let recomputed = tch::no_grad(|| {
        let mut seq = ids.shallow_clone();
        for _ in 0..g.new_tokens {
            let logits = p.forward(&seq, &seq.ones_like());
            let next = logits.select(1, -1).argmax(-1, true);
            seq = Tensor::cat(&[&seq, &next], 1);
        }
        seq
    });
    sync(g.device);
    let re_s = t1.elapsed().as_secs_f64();
    let recomputed = recomputed
        .f_to_device(Device::Cpu)
        .context("recomputed ids")?;
    let mut same = true;
    for (r, gen) in gens.iter().enumerate() {
        let row_ids: Vec<i64> = Vec::try_from(&recomputed.get(r as i64).narrow(
            0,
            g.prompt_tokens as i64,
            g.new_tokens as i64,
        ))
        .context("recomputed ids")?;
        same &= row_ids == gen.token_ids;
    }
    row.recompute_tokens_per_s = Some(total / re_s);
    row.speedup = Some(re_s / kv_s);
    row.same_tokens = Some(same);
    Ok(row)
}

/// The human-readable rows of a generation result.
pub fn print_generate(r: &GenerateResult) {
    println!(
        "greedy generation, {} preset ({} params, {}{}, {} rows, {} prompt + {} new tokens):",
        r.preset,
        r.params,
        r.device,
        r.gpu.as_deref().map_or(String::new(), |g| format!(" {g}")),
        r.batch,
        r.prompt_tokens,
        r.new_tokens
    );
    for row in &r.rows {
        println!(
            "  {:<5} kv cache {:>10.1} tokens/s   recompute {:>10} tokens/s   speedup {} (same tokens: {})",
            row.dtype,
            row.kv_cache_tokens_per_s,
            row.recompute_tokens_per_s
                .map_or("n/a".into(), |v| format!("{v:.1}")),
            row.speedup.map_or("n/a".into(), |v| format!("{v:.2}x")),
            row.same_tokens.map_or("n/a".into(), |v| v.to_string())
        );
    }
    if let Some(x) = r.bf16_over_f32 {
        println!("  bf16 / f32 (kv cache): {x:.3}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_flops() {
        assert!(Preset::named("nope").is_err());
        let q = (Preset::named("qwen2.5-math-1.5b").expect("preset").config)();
        // 1.54 B parameters with the tied 152 k embedding.
        assert!(
            (1.50e9..1.60e9).contains(&(q.num_params() as f64)),
            "{}",
            q.num_params()
        );
        // Tied: every parameter is a matmul weight (the LM head); ~6 · 1.54 B + attention.
        let f = flops_per_token(&q, 1024);
        let attn = 6.0 * 28.0 * 1536.0 * 1024.0;
        assert!((f - 6.0 * q.num_params() as f64 - attn).abs() < 1.0, "{f}");
        let b = bench_config();
        let untied = flops_per_token(&b, 0);
        assert_eq!(untied, 6.0 * (b.num_params() - 8192 * 512) as f64);
        assert_eq!(peak_bf16_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(peak_bf16_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(peak_bf16_tflops("NVIDIA H200"), Some(989.0));
        assert_eq!(peak_bf16_tflops("Tesla T4"), None);
    }
}
