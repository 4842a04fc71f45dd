//! `cures bench train-step` and `cures bench generate`: throughput of the tch policy.
//!
//! train-step: tokens/s of forward + backward (mean next-token log-likelihood) of a ~28 M
//! parameter Llama on CPU, against the same config, batch and thread count in PyTorch eager
//! (`scripts/bench/train_step_ref.py`, transformers' `LlamaForCausalLM`).
//!
//! generate: greedy decoding of 256 new tokens with the batched KV cache vs recomputing the
//! whole prefix at every step (no cache), same model and prompt.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{median, reference_python, repo_file};
use crate::policy::{Arch, ModelConfig, Policy, SamplingParams, Tokenizer};

/// Train-step bench parameters.
#[derive(Debug, Clone)]
pub struct TrainStepBench {
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Timed steps (after 2 warm-up steps).
    pub steps: usize,
    /// Run the PyTorch reference.
    pub reference: bool,
}

/// Train-step figures (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainStepResult {
    /// Model parameters.
    pub params: i64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Intra-op threads used by both sides.
    pub threads: i32,
    /// Median ms per cures step.
    pub cures_step_ms: f64,
    /// cures tokens/s.
    pub cures_tokens_per_s: f64,
    /// PyTorch eager tokens/s (null when the reference could not run).
    pub pytorch_tokens_per_s: Option<f64>,
    /// cures / PyTorch.
    pub ratio: Option<f64>,
}

/// The bench model: Llama, hidden 512, 8 layers, 8 heads / 4 KV heads, FFN 1408, vocab 8192,
/// untied (~28 M parameters).
pub fn bench_config() -> ModelConfig {
    ModelConfig::new(Arch::Llama, 8192, 512, 1408, 8, 8, 4, false)
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

/// The bench model (random init).
pub fn bench_policy() -> Result<Policy> {
    Policy::from_config_random(
        bench_config(),
        bench_tokenizer()?,
        0,
        Device::Cpu,
        Kind::Float,
    )
}

fn random_ids(b: usize, t: usize, vocab: i64) -> Tensor {
    tch::manual_seed(0);
    Tensor::randint(vocab, [b as i64, t as i64], (Kind::Int64, Device::Cpu))
}

/// One cures training step: logits → log_softmax → gather → mean → backward; then
/// `Optimizer::zero_grad` (libtorch sets the grads to none, like PyTorch's default).
fn cures_step(p: &Policy, opt: &mut tch::nn::Optimizer, ids: &Tensor, mask: &Tensor) {
    let t = ids.size()[1];
    let logits = p.forward(ids, mask);
    let lp = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let tg = ids.narrow(1, 1, t - 1).unsqueeze(-1);
    let loss = -lp.gather(-1, &tg, false).mean(Kind::Float);
    loss.backward();
    opt.zero_grad();
}

fn run_reference(b: &TrainStepBench, threads: i32) -> Result<f64, String> {
    let script = repo_file("scripts/bench/train_step_ref.py")
        .ok_or("scripts/bench/train_step_ref.py not found (run from the repository root)")?;
    let py = reference_python("transformers")?;
    let dir = tempfile_dir().map_err(|e| e.to_string())?;
    let cfg_path = dir.join("config.json");
    let cfg = bench_config()
        .to_json("float32")
        .map_err(|e| e.to_string())?;
    std::fs::write(&cfg_path, cfg).map_err(|e| format!("writing {}: {e}", cfg_path.display()))?;
    let out = Command::new(&py)
        .arg(&script)
        .arg("--config")
        .arg(&cfg_path)
        .args(["--batch", &b.batch.to_string()])
        .args(["--seq", &b.seq.to_string()])
        .args(["--steps", &b.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    super::reference_figure(&py, &script, out, "tokens_per_s")
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("cures-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Run the train-step bench.
pub fn run_train_step(b: &TrainStepBench) -> Result<TrainStepResult> {
    let threads = tch::get_num_threads();
    let p = bench_policy()?;
    let ids = random_ids(b.batch, b.seq, bench_config().vocab_size);
    let mask = ids.ones_like();
    let mut opt =
        tch::nn::OptimizerConfig::build(tch::nn::Sgd::default(), p.trainable_var_store(), 0.0)
            .context("building the optimiser")?;
    let mut times = Vec::new();
    for i in 0..b.steps + 2 {
        let t0 = Instant::now();
        cures_step(&p, &mut opt, &ids, &mask);
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let step = median(&times);
    let cures_tps = (b.batch * b.seq) as f64 / step;
    let mut pytorch = None;
    if b.reference {
        match run_reference(b, threads) {
            Ok(v) => pytorch = Some(v),
            Err(e) => eprintln!("bench train-step: PyTorch reference not run: {e}"),
        }
    } else {
        eprintln!("bench train-step: reference not run (--no-reference)");
    }
    Ok(TrainStepResult {
        params: bench_config().num_params(),
        batch: b.batch,
        seq: b.seq,
        threads,
        cures_step_ms: step * 1e3,
        cures_tokens_per_s: cures_tps,
        pytorch_tokens_per_s: pytorch,
        ratio: pytorch.map(|r| cures_tps / r),
    })
}

/// Generation bench figures (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct GenerateResult {
    /// Model parameters.
    pub params: i64,
    /// Rows decoded together.
    pub batch: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens per row.
    pub new_tokens: usize,
    /// Tokens/s with the KV cache (all rows).
    pub kv_cache_tokens_per_s: f64,
    /// Tokens/s recomputing the prefix each step.
    pub recompute_tokens_per_s: f64,
    /// kv / recompute.
    pub speedup: f64,
    /// Both produced the same greedy tokens.
    pub same_tokens: bool,
}

/// Run the generation bench: greedy, `new_tokens` per row, `batch` rows of one prompt length.
pub fn run_generate(
    batch: usize,
    prompt_tokens: usize,
    new_tokens: usize,
) -> Result<GenerateResult> {
    let p = bench_policy()?;
    let ids = random_ids(batch, prompt_tokens, bench_config().vocab_size);
    let prompts: Vec<Vec<i64>> = (0..batch as i64)
        .map(|r| Vec::<i64>::try_from(&ids.get(r)).context("prompt ids"))
        .collect::<Result<_>>()?;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: new_tokens,
        ignore_eos: true,
        max_batch: 0,
        ..Default::default()
    };
    // Warm-up.
    p.generate(
        &prompts,
        &SamplingParams {
            max_tokens: 4,
            ..params.clone()
        },
    )?;
    let t0 = Instant::now();
    let gens = p.generate(&prompts, &params)?;
    let kv_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let recomputed = tch::no_grad(|| {
        let mut seq = ids.shallow_clone();
        for _ in 0..new_tokens {
            let logits = p.forward(&seq, &seq.ones_like());
            let next = logits.select(1, -1).argmax(-1, true);
            seq = Tensor::cat(&[&seq, &next], 1);
        }
        seq
    });
    let re_s = t1.elapsed().as_secs_f64();
    let mut same = true;
    for (r, g) in gens.iter().enumerate() {
        let row: Vec<i64> = Vec::try_from(&recomputed.get(r as i64).narrow(
            0,
            prompt_tokens as i64,
            new_tokens as i64,
        ))
        .context("recomputed ids")?;
        same &= row == g.token_ids;
    }
    let total = (batch * new_tokens) as f64;
    Ok(GenerateResult {
        params: bench_config().num_params(),
        batch,
        prompt_tokens,
        new_tokens,
        kv_cache_tokens_per_s: total / kv_s,
        recompute_tokens_per_s: total / re_s,
        speedup: re_s / kv_s,
        same_tokens: same,
    })
}
