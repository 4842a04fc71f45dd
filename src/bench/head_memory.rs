//! `cures bench train-step --head-memory big-vocab`: the update's peak memory and tokens/s with the
//! LM head in chunks (`train.logits_chunk_tokens` = 512, the default) and without (0), each measured in a
//! child process of its own (a process's peak resident memory never goes down), beside the
//! memory plan's estimate for the same shapes (`src/train/plan.rs`).
//!
//! How the peak is measured: the child builds the model, runs one small update so that every
//! gradient buffer exists, resets the kernel's peak-RSS counter (`/proc/self/clear_refs` ← 5),
//! reads `VmRSS`, runs the timed updates and reads `VmHWM`: the difference is what one update
//! adds at its peak (activations, the LM head's chunk, transients), the part the plan's
//! "activations" + "LM-head chunk" estimate.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::config::Config;
use crate::policy::{Arch, ModelConfig, Policy, TrainPass};
use crate::train::plan::MemoryPlan;

/// A model and batch shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// Name on the command line.
    pub name: &'static str,
    /// Decoder layers.
    pub layers: i64,
    /// Hidden size.
    pub hidden: i64,
    /// Vocabulary.
    pub vocab: i64,
    /// Sequences per update.
    pub batch: usize,
    /// Tokens of the longest sequence.
    pub seq: usize,
}

/// The presets: the big vocabulary (Qwen2.5's 151 936 at a toy width), a small one the
/// test suite measures, and long sequences (where attention would keep `[T x T]` per head if
/// its kernel materialised it).
pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "big-vocab",
        layers: 2,
        hidden: 256,
        vocab: 151_936,
        batch: 4,
        seq: 1024,
    },
    Preset {
        name: "small",
        layers: 2,
        hidden: 128,
        vocab: 16_384,
        batch: 4,
        seq: 512,
    },
    Preset {
        name: "long",
        layers: 2,
        hidden: 256,
        vocab: 4096,
        batch: 2,
        seq: 4096,
    },
];

/// Prompt tokens of every sequence; the rest are completion tokens.
const PROMPT: usize = 16;

impl Preset {
    /// By name.
    pub fn named(name: &str) -> Result<Preset> {
        PRESETS
            .into_iter()
            .find(|p| p.name == name)
            .with_context(|| {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                format!("unknown preset {name:?}, expected one of {names:?}")
            })
    }

    fn model(&self) -> ModelConfig {
        let mut m = ModelConfig::new(
            Arch::Qwen2,
            self.vocab,
            self.hidden,
            self.hidden * 11 / 4,
            self.layers,
            4,
            2,
            true,
        );
        m.max_position_embeddings = (2 * self.seq) as i64;
        m
    }

    /// The config the plan reads for this shape.
    pub fn config(&self, chunk: usize) -> Config {
        let mut c = Config::default();
        c.model.device = "cpu".into();
        c.model.dtype = "f32".into();
        c.train.micro_batch_tokens = self.batch * self.seq;
        c.batch.budget = self.batch;
        c.train.logits_chunk_tokens = chunk;
        c.data.max_prompt_tokens = PROMPT;
        c.rollout.max_tokens = self.seq - PROMPT;
        c
    }

    /// Sequences of slightly different lengths (a padded batch, as in a run).
    fn seqs(&self) -> Vec<(Vec<i64>, Vec<i64>)> {
        let mut x: i64 = 7;
        let mut next = || {
            x = (x * 1_103_515_245 + 12_345) % (1 << 31);
            1 + x % (self.vocab - 1)
        };
        (0..self.batch)
            .map(|b| {
                let len = self.seq - PROMPT - 8 * b;
                let prompt: Vec<i64> = (0..PROMPT).map(|_| next()).collect();
                let completion: Vec<i64> = (0..len).map(|_| next()).collect();
                (prompt, completion)
            })
            .collect()
    }
}

/// What one child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadMemory {
    /// `train.logits_chunk_tokens` (0 = off).
    pub chunk: usize,
    /// Completion tokens per second of the update (forward + backward).
    pub tokens_per_s: f64,
    /// Peak resident bytes one update adds.
    pub peak_bytes: u64,
    /// The plan's activations + LM-head chunk for the same shapes.
    pub plan_bytes: u64,
}

fn proc_status_kb(key: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/self/status"))
}

/// In this process: measure `preset`'s update with `chunk` (see the module docs).
pub fn measure(preset: &Preset, chunk: usize, steps: usize) -> Result<HeadMemory> {
    tch::manual_seed(0);
    let policy = Policy::from_config_random(
        preset.model(),
        super::train_step::bench_tokenizer()?,
        0,
        Device::Cpu,
        Kind::Float,
    )?;
    let seqs = preset.seqs();
    let batch: Vec<&(Vec<i64>, Vec<i64>)> = seqs.iter().collect();
    let pass = TrainPass {
        chunk_tokens: chunk,
        checkpoint: false,
        entropy_grad: false,
    };
    let tokens: usize = seqs.iter().map(|(_, c)| c.len()).sum();
    let update = |batch: &[&(Vec<i64>, Vec<i64>)]| -> Result<()> {
        policy.train_batch(batch, &pass, |c| {
            Ok(-c.logprobs.sum(Kind::Float) / tokens as f64)
        })
    };
    // Every gradient buffer exists before the measurement.
    let short: Vec<(Vec<i64>, Vec<i64>)> = seqs
        .iter()
        .map(|(p, c)| (p.clone(), c[..8].to_vec()))
        .collect();
    update(&short.iter().collect::<Vec<_>>())?;
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let base = proc_status_kb("VmRSS:")?;
    let t = Instant::now();
    for _ in 0..steps.max(1) {
        update(&batch)?;
        for (_, mut v) in policy.trainable_var_store().variables() {
            v.zero_grad();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let peak = proc_status_kb("VmHWM:")?.saturating_sub(base) * 1024;
    let shape = crate::train::plan::DataShape {
        longest_prompt: PROMPT,
        prompts: preset.batch,
    };
    let plan = MemoryPlan::new(&preset.model(), &preset.config(chunk), Some(shape));
    Ok(HeadMemory {
        chunk,
        tokens_per_s: (tokens * steps.max(1)) as f64 / secs,
        peak_bytes: peak,
        plan_bytes: plan.part("activations") + plan.part("LM-head chunk"),
    })
}

/// Measure each of `chunks` in a child process of this binary (`--child-chunk`).
pub fn run(preset: &Preset, chunks: &[usize], steps: usize) -> Result<Vec<HeadMemory>> {
    let exe = std::env::current_exe().context("the cures binary")?;
    let mut out = Vec::new();
    for &chunk in chunks {
        let o = std::process::Command::new(&exe)
            .args([
                "bench",
                "train-step",
                "--head-memory",
                preset.name,
                "--steps",
            ])
            .arg(steps.to_string())
            .args(["--child-chunk", &chunk.to_string()])
            .output()
            .with_context(|| format!("starting {}", exe.display()))?;
        let text = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() {
            bail!(
                "the measuring child (chunk {chunk}) failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let last = text.lines().last().unwrap_or("");
        out.push(
            serde_json::from_str(last)
                .with_context(|| format!("the measuring child printed {last:?}"))?,
        );
    }
    Ok(out)
}
