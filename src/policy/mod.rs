//! The policy model in tch: HF checkpoints in and out, batched generation with a KV cache,
//! training log-probs, LoRA.
//!
//! # API (what the trainer and the embedded rollout engine code against)
//!
//! - [`Policy::load`]`(dir, device, kind)`: a Llama/Qwen2 HF directory (`config.json`,
//!   `model.safetensors` or shards + `model.safetensors.index.json`, `tokenizer.json`,
//!   `tokenizer_config.json`, `generation_config.json`). f32/bf16/f16 files; the parameters are
//!   converted to `kind`. [`default_device`] picks CUDA when available.
//! - [`Policy::from_config_random`]`(cfg, tokenizer, seed, device, kind)`: a fresh HF-initialised
//!   model (normal(0, 0.02) linears/embeddings, unit norms, zero biases).
//! - [`Policy::var_store`] (all base parameters, HF names), [`Policy::trainable_var_store`]
//!   (the LoRA adapters when LoRA is on, else the base store) — build the optimiser on the
//!   latter. [`Policy::tokenizer`], [`Policy::config`].
//! - [`Policy::generate`]`(prompts, &SamplingParams) -> Vec<Generation>`: batched sampling under
//!   `no_grad`, prompt-major order (prompt 0's n₀ samples, then prompt 1's ...). Each row has its
//!   own ChaCha RNG seeded from (seed, prompt index, sample index), so results do not depend on
//!   batching. `logprobs` are the model's raw log-probs (before temperature / top-k / top-p,
//!   like vLLM's default). Stop tokens are included in `token_ids`; stop strings are cut from
//!   `text` (not from `token_ids`).
//! - [`Policy::logprobs`]`(&[(prompt, completion)], token_budget) -> Vec<SeqLogprobs>`:
//!   per-token log π(completion | prompt) and entropy, 1-D tensors of completion length, with
//!   grad when grad mode is on. Sequences are grouped into right-padded micro-batches of at
//!   most `token_budget` padded tokens (a batch holds at least one sequence). For memory-bounded
//!   training call it per micro-batch and `backward()` each (see [`Policy::micro_batches`]).
//! - [`Policy::forward`]`(input_ids [B,T], attention_mask [B,T]) -> logits [B,T,V]` (any padding
//!   side; positions come from the mask).
//! - [`Policy::save_hf`]`(dir, kind, max_shard_bytes)`: atomic (tmp dir + rename) HF checkpoint
//!   with LoRA merged in; [`Policy::enable_lora`], [`Policy::save_lora`] (PEFT layout),
//!   [`Policy::load_lora`], [`Policy::merge_lora`].
//!
//! `Policy` is `Send` but not `Sync` (tch tensors are not): give it to one worker thread or
//! share it behind a `Mutex`. Reference fixtures and how to regenerate them:
//! `scripts/make-tiny-models.py` (tiny Qwen2/Llama vs transformers, chat templates, `verify`
//! of checkpoints written by cures in transformers + peft); `scripts/fetch-smollm2.sh` (real
//! model, then `CURES_SMOLLM2_DIR=... cargo test --release --test policy_smollm2`).
//! [`gguf::convert_llama_gguf`] (`cures convert gguf`) turns a llama.cpp GGUF into such a directory.

pub mod cli;
pub mod config;
pub mod diff;
pub mod generate;
pub mod gguf;
mod logits;
mod lora;
pub mod model;
pub mod tokenizer;
pub mod weights;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use config::{Arch, ModelConfig};
pub use generate::{FinishReason, Generation, SamplingParams};
pub use logits::{TokenChunk, TrainPass, DEFAULT_CHUNK_TOKENS};
pub use lora::{LoraConfig, ALL_TARGETS};
pub use model::{causal_mask, positions_from_mask, KvCache, Transformer, WeightInit};
pub use tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

/// The normal init's standard deviation: `initializer_range` from the config, else HF's 0.02.
fn init_std(cfg: &ModelConfig) -> f64 {
    cfg.extra
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02)
}

/// CUDA when available, else CPU.
pub fn default_device() -> Device {
    // Before libtorch is first asked about CUDA (it decides once per process).
    crate::backend::init();
    Device::cuda_if_available()
}

/// Parse `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_kind(s: &str) -> Result<Kind> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" | "half" => Kind::Half,
        other => bail!("unknown dtype {other:?} (use f32, bf16 or f16)"),
    })
}

/// The decoder layer of an HF tensor name (`model.layers.7.mlp...` → 7).
fn layer_index(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}

struct LoraState {
    vs: VarStore,
    cfg: LoraConfig,
    targets: Vec<String>,
}

/// Log-probs of one completion.
#[derive(Debug)]
pub struct SeqLogprobs {
    /// log π(token_t | prefix), `[completion_len]`, f32.
    pub logprobs: Tensor,
    /// Entropy of the predictive distribution at each completion position, `[completion_len]`.
    pub entropy: Tensor,
}

/// A policy: config, tokenizer, parameters (VarStore with HF names), optional LoRA adapters.
pub struct Policy {
    cfg: ModelConfig,
    tok: Tokenizer,
    vs: VarStore,
    model: Transformer,
    lora: Option<LoraState>,
    device: Device,
    kind: Kind,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("arch", &self.cfg.arch)
            .field("params", &self.cfg.num_params())
            .field("device", &self.device)
            .field("kind", &self.kind)
            .field("lora", &self.lora.as_ref().map(|l| &l.cfg))
            .finish()
    }
}

impl Policy {
    /// Load an HF checkpoint directory onto `device` in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Policy> {
        let cfg = ModelConfig::load(dir)?;
        let pad = cfg
            .pad_token_id
            .as_ref()
            .and_then(|p| p.to_vec().first().copied());
        let tok = Tokenizer::load(dir, &cfg.eos_ids(), pad)?;
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let model = Transformer::new(&vs.root(), &cfg, WeightInit::ForLoad);
        let vars = vs.variables();
        let mut filled: HashMap<String, bool> = vars.keys().map(|k| (k.clone(), false)).collect();
        let files = weights::checkpoint_files(dir)?;
        tch::no_grad(|| -> Result<()> {
            for f in &files {
                for (name, t) in weights::read_file(f)? {
                    let Some(var) = vars.get(&name) else {
                        if let Some(layer) = layer_index(&name) {
                            if layer >= cfg.num_hidden_layers {
                                bail!(
                                    "{}: tensor {name} belongs to layer {layer}, but config.json \
                                     declares num_hidden_layers = {}: the config does not \
                                     describe this checkpoint",
                                    f.display(),
                                    cfg.num_hidden_layers
                                );
                            }
                        }
                        let expected_extra = name.contains("rotary_emb")
                            || (name == "lm_head.weight" && cfg.tie_word_embeddings);
                        if !expected_extra {
                            tracing::warn!(
                                "{}: ignoring tensor {name} (not part of the model)",
                                f.display()
                            );
                        }
                        continue;
                    };
                    if var.size() != t.size() {
                        bail!(
                            "{}: tensor {name} has shape {:?}, config.json implies {:?}",
                            f.display(),
                            t.size(),
                            var.size()
                        );
                    }
                    if t.is_floating_point() {
                        let finite = t
                            .f_isfinite()
                            .and_then(|m| m.f_all())
                            .map(|a| a.int64_value(&[]) != 0)
                            .with_context(|| format!("{}: checking tensor {name}", f.display()))?;
                        if !finite {
                            bail!(
                                "{}: tensor {name} holds NaN or infinite values: the checkpoint \
                                 is damaged (or was saved from a diverged run)",
                                f.display()
                            );
                        }
                    }
                    let mut var = var.shallow_clone();
                    var.f_copy_(&t)
                        .with_context(|| format!("{}: copying tensor {name}", f.display()))?;
                    filled.insert(name, true);
                }
            }
            Ok(())
        })?;
        let mut missing: Vec<&String> = filled
            .iter()
            .filter(|(_, v)| !**v)
            .map(|(k, _)| k)
            .collect();
        missing.sort();
        if !missing.is_empty() {
            bail!("{}: checkpoint lacks tensors {:?}", dir.display(), missing);
        }
        Ok(Policy {
            cfg,
            tok,
            vs,
            model,
            lora: None,
            device,
            kind,
        })
    }

    /// A fresh randomly initialised model (HF init, `initializer_range` from the config or 0.02).
    pub fn from_config_random(
        cfg: ModelConfig,
        tokenizer: Tokenizer,
        seed: u64,
        device: Device,
        kind: Kind,
    ) -> Result<Policy> {
        let std = init_std(&cfg);
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        // Zeros/ones first, then fill from a seeded host RNG (deterministic, and independent
        // of libtorch's global generator that other threads may use).
        let model = Transformer::new(&vs.root(), &cfg, WeightInit::ForLoad);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std as f32).context("initializer_range")?;
        tch::no_grad(|| -> Result<()> {
            for (name, t) in model.named_tensors(false) {
                if name.ends_with("norm.weight") || name.ends_with(".bias") {
                    continue;
                }
                let vals: Vec<f32> = (0..t.numel()).map(|_| normal.sample(&mut rng)).collect();
                let src = Tensor::from_slice(&vals).view(t.size().as_slice());
                t.shallow_clone()
                    .f_copy_(&src)
                    .with_context(|| format!("initialising {name}"))?;
            }
            Ok(())
        })?;
        Ok(Policy {
            cfg,
            tok: tokenizer,
            vs,
            model,
            lora: None,
            device,
            kind,
        })
    }

    /// A randomly initialised model drawn by libtorch's generator directly on `device` (HF init
    /// as [`Policy::from_config_random`], but no host copy: for benches at billion-parameter
    /// shapes; the values differ between devices).
    pub fn from_config_random_on_device(
        cfg: ModelConfig,
        tokenizer: Tokenizer,
        seed: u64,
        device: Device,
        kind: Kind,
    ) -> Result<Policy> {
        let std = init_std(&cfg);
        tch::manual_seed(seed as i64);
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let model = crate::fault::catch(|| {
            Ok(Transformer::new(
                &vs.root(),
                &cfg,
                WeightInit::Random { std },
            ))
        })
        .context("initialising the model")?;
        Ok(Policy {
            cfg,
            tok: tokenizer,
            vs,
            model,
            lora: None,
            device,
            kind,
        })
    }

    /// The model config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }
    /// The base parameters (HF names).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }
    /// The base parameters, mutable (e.g. `set_kind`, `freeze`).
    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
    /// What the optimiser should update: the LoRA adapters when enabled, else the base store.
    pub fn trainable_var_store(&self) -> &VarStore {
        self.lora.as_ref().map_or(&self.vs, |l| &l.vs)
    }
    /// The model (blocks, linears) for inspection.
    pub fn model(&self) -> &Transformer {
        &self.model
    }
    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.device
    }
    /// Kind of the parameters.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The dtype of the trainable parameters: fp32 for LoRA adapters, else the model's.
    pub fn trainable_kind(&self) -> Kind {
        if self.lora.is_some() {
            Kind::Float
        } else {
            self.kind
        }
    }

    /// Cast every base parameter to `kind` (LoRA adapters stay fp32).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
        self.model.set_kind(kind);
        self.kind = kind;
    }

    /// Logits `[B, T, V]` for `input_ids` `[B, T]` with a 0/1 `attention_mask` `[B, T]` (any
    /// padding side; positions are `cumsum(mask) - 1`). Tracks gradients when grad mode is on.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let h = self.forward_hidden(input_ids, attention_mask);
        self.model.logits(&h)
    }

    /// Final hidden states `[B, T, H]` (see [`Policy::forward`]).
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let ids = input_ids.to_device(self.device);
        let m = attention_mask.to_device(self.device);
        if m.all().int64_value(&[]) != 0 {
            // No padding: plain causal attention (faster kernels, no mask tensor).
            // Positions [1, T] broadcast over the batch (RoPE tables computed once).
            let t = ids.size()[1];
            let pos = Tensor::arange(t, (Kind::Int64, self.device)).unsqueeze(0);
            return self.model.forward_hidden(&ids, &pos, None, None);
        }
        let pos = positions_from_mask(&m);
        let mask = causal_mask(&m);
        self.model.forward_hidden(&ids, &pos, Some(&mask), None)
    }

    /// Indices of `seqs` grouped into micro-batches of at most `token_budget` padded tokens
    /// (sorted by length so padding is small; every group has at least one sequence).
    pub fn micro_batches(seqs: &[(Vec<i64>, Vec<i64>)], token_budget: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].0.len() + seqs[i].1.len()));
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut cur_max = 0usize;
        for i in order {
            let len = seqs[i].0.len() + seqs[i].1.len();
            let new_max = cur_max.max(len);
            if !cur.is_empty() && new_max * (cur.len() + 1) > token_budget {
                groups.push(std::mem::take(&mut cur));
                cur_max = len;
            } else {
                cur_max = new_max;
            }
            cur.push(i);
        }
        if !cur.is_empty() {
            groups.push(cur);
        }
        groups
    }

    /// Per-token log-probs and entropies of each completion given its prompt (see the module
    /// docs). Results are in input order.
    pub fn logprobs(
        &self,
        seqs: &[(Vec<i64>, Vec<i64>)],
        token_budget: usize,
    ) -> Result<Vec<SeqLogprobs>> {
        for (i, (p, _)) in seqs.iter().enumerate() {
            if p.is_empty() {
                bail!("logprobs: sequence {i} has an empty prompt (the first completion token needs context)");
            }
        }
        let mut out: Vec<Option<SeqLogprobs>> = (0..seqs.len()).map(|_| None).collect();
        for group in Self::micro_batches(seqs, token_budget) {
            let batch: Vec<&(Vec<i64>, Vec<i64>)> = group.iter().map(|&i| &seqs[i]).collect();
            let res = self.logprobs_batch(&batch)?;
            for (i, r) in group.into_iter().zip(res) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, r)| r.with_context(|| format!("logprobs: sequence {i} was not computed")))
            .collect()
    }

    /// Generate completions (see [`generate`]).
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        params: &SamplingParams,
    ) -> Result<Vec<Generation>> {
        generate::generate(self, prompts, params)
    }

    /// Generate `n` completions of one text prompt (chat-templated when `chat`).
    pub fn generate_text(
        &self,
        prompt: &str,
        chat: bool,
        params: &SamplingParams,
    ) -> Result<Vec<Generation>> {
        let ids = if chat {
            self.tok
                .encode_chat(&[ChatMessage::new("user", prompt)], true)?
        } else {
            self.tok.encode(prompt, true)?
        };
        self.generate(&[ids], params)
    }

    /// Write an HF checkpoint (LoRA merged in) into the fresh directory `dir`: tensors in layer
    /// order as `kind`, shards of at most `max_shard_bytes` (+ index when several),
    /// `config.json`, tokenizer and generation files. Written to a temporary sibling directory
    /// and renamed, so readers never see a partial checkpoint.
    pub fn save_hf(&self, dir: &Path, kind: Kind, max_shard_bytes: usize) -> Result<()> {
        self.save_hf_with(
            dir,
            kind,
            max_shard_bytes,
            &std::collections::BTreeMap::new(),
        )
    }

    /// [`Policy::save_hf`], taking the tensors named in `overrides` from there instead of the
    /// model (the optimiser's fp32 master weights, so an f32 export holds them rather than
    /// the bf16 compute weights).
    pub fn save_hf_with(
        &self,
        dir: &Path,
        kind: Kind,
        max_shard_bytes: usize,
        overrides: &std::collections::BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let tmp = weights::tmp_dir_for(dir)?;
        let res = (|| -> Result<()> {
            let mut tensors = tch::no_grad(|| self.model.named_tensors(true));
            for (name, t) in &mut tensors {
                if let Some(m) = overrides.get(name.as_str()) {
                    *t = m.detach();
                }
            }
            weights::write_sharded(&tmp, tensors, kind, max_shard_bytes)?;
            let cfg = tmp.join("config.json");
            std::fs::write(&cfg, self.cfg.to_json(weights::torch_dtype_name(kind))?)
                .with_context(|| format!("writing {}", cfg.display()))?;
            self.tok.save(&tmp)?;
            Ok(())
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("saving checkpoint to {}", dir.display())));
        }
        weights::commit_dir(&tmp, dir)
    }
}
