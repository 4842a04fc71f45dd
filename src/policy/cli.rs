//! `cures generate`: sample completions from an HF model directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::{default_device, parse_kind, Policy, SamplingParams};

/// Arguments of `cures generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HF model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Completions to sample.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Wrap the prompt as one user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Parameter dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonCompletion<'a> {
    text: &'a str,
    token_ids: &'a [i64],
    logprobs: &'a [f32],
    finish_reason: super::FinishReason,
}

/// Run `cures generate`.
pub fn generate(a: &GenerateArgs) -> Result<()> {
    let kind = parse_kind(&a.dtype)?;
    let t0 = std::time::Instant::now();
    let policy = Policy::load(&a.model, default_device(), kind)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let params = SamplingParams {
        n: a.n,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        max_tokens: a.max_tokens,
        seed: a.seed,
        stop_strings: a.stop.clone(),
        ..Default::default()
    };
    let t1 = std::time::Instant::now();
    let gens = policy.generate_text(&a.prompt, a.chat, &params)?;
    let gen_s = t1.elapsed().as_secs_f64();
    let tokens: usize = gens.iter().map(|g| g.token_ids.len()).sum();
    eprintln!(
        "loaded {} in {load_s:.2}s; generated {tokens} tokens in {gen_s:.2}s ({:.1} tok/s)",
        a.model.display(),
        tokens as f64 / gen_s.max(1e-9)
    );
    for (i, g) in gens.iter().enumerate() {
        if !a.json || gens.len() > 1 {
            println!(
                "--- completion {i} ({:?}, {} tokens)",
                g.finish_reason,
                g.token_ids.len()
            );
        }
        if !a.json {
            println!("{}", g.text);
        }
    }
    if a.json {
        let completions: Vec<JsonCompletion> = gens
            .iter()
            .map(|g| JsonCompletion {
                text: &g.text,
                token_ids: &g.token_ids,
                logprobs: &g.logprobs,
                finish_reason: g.finish_reason,
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "completions": completions }))?
        );
    }
    Ok(())
}

/// Arguments of `cures merge-lora`.
#[derive(Debug, Args)]
pub struct MergeLoraArgs {
    /// The base HF model directory the adapter was trained on (a LoRA run's model.path).
    #[arg(long)]
    pub base: PathBuf,
    /// The PEFT adapter directory (adapter_config.json, adapter_model.safetensors), e.g. a
    /// LoRA run's checkpoints/step_N/policy.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged HF checkpoint (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// dtype of the written weights: f32, bf16, f16, or `auto` (the base's torch_dtype).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// Run `cures merge-lora`: `W + alpha/r · B A` for every adapted linear, computed in fp32 and
/// written in the base's dtype as a full HF checkpoint (tokenizer and configs copied), ready
/// for `cures eval` or `vllm serve`.
pub fn merge_lora(a: &MergeLoraArgs) -> Result<()> {
    if a.out.exists() {
        anyhow::bail!(
            "--out {} exists: merge-lora writes a fresh directory",
            a.out.display()
        );
    }
    let kind = match a.dtype.as_str() {
        "auto" => {
            let cfg = super::ModelConfig::load(&a.base)
                .with_context(|| format!("--base {}", a.base.display()))?;
            match cfg.torch_dtype.as_deref() {
                Some(t) => parse_kind(t).with_context(|| {
                    format!(
                        "--base {}: torch_dtype {t:?} (set --dtype)",
                        a.base.display()
                    )
                })?,
                None => tch::Kind::Float,
            }
        }
        d => parse_kind(d).context("--dtype")?,
    };
    let mut policy = Policy::load(&a.base, tch::Device::Cpu, tch::Kind::Float)
        .with_context(|| format!("--base {}", a.base.display()))?;
    policy
        .load_lora(&a.adapter)
        .with_context(|| format!("--adapter {}", a.adapter.display()))?;
    let l = policy
        .lora_config()
        .cloned()
        .context("the adapter enabled no LoRA")?;
    policy.merge_lora()?;
    policy
        .save_hf(&a.out, kind, 2 << 30)
        .with_context(|| format!("--out {}", a.out.display()))?;
    println!(
        "merged {} (r = {}, alpha = {}) into {} -> {} ({kind:?})",
        a.adapter.display(),
        l.r,
        l.alpha,
        a.base.display(),
        a.out.display()
    );
    Ok(())
}
