//! `cures sft`: supervised warm start of the tiny testbed policy.
//!
//! A fresh Llama-architecture model with the testbed tokenizer is trained with next-token
//! cross-entropy on `problem=` → `\boxed{answer}</s>` for a share of each level's training
//! problems (more of the easy levels than of the hard ones), so that before RL the easy levels
//! are mostly solved, the middle ones sometimes and the hard ones rarely. The result is an HF
//! checkpoint loaded by the same code as real models.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::config::Config;
use crate::policy::config::TokenIds;
use crate::policy::{Arch, ModelConfig, Policy, Tokenizer};
use crate::testbed;
use crate::train::{AdamW, TrainConfig};

/// What `cures sft` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SftReport {
    /// Checkpoint directory.
    pub out: PathBuf,
    /// Parameters.
    pub params: i64,
    /// Training sequences seen (fresh problems, with repeats).
    pub examples: usize,
    /// Final mean token loss.
    pub final_loss: f64,
    /// Greedy held-out accuracy per level (1-based levels in order).
    pub heldout_by_level: Vec<(String, f64)>,
    /// Wall seconds.
    pub wall_s: f64,
}

/// The testbed tokenizer, loaded through the same code as real tokenizers.
pub fn testbed_tokenizer() -> Result<Tokenizer> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    write_tokenizer_files(dir.path())?;
    Tokenizer::load(dir.path(), &[2], Some(0))
}

/// Write `tokenizer.json` and `tokenizer_config.json` of the testbed into `dir`.
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&testbed::tokenizer_json())?,
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&testbed::tokenizer_config_json())?,
    )?;
    Ok(())
}

/// Supervised warm start; writes the checkpoint to `cfg.sft.out` (or `out`).
pub fn sft(cfg: &Config, out: Option<&Path>, quiet: bool) -> Result<SftReport> {
    let t0 = Instant::now();
    let s = &cfg.sft;
    let out = out.map_or_else(|| PathBuf::from(&s.out), Path::to_path_buf);
    let tb = testbed::generate(&cfg.testbed);
    let tok = testbed_tokenizer()?;
    let mut mcfg = ModelConfig::new(
        Arch::Llama,
        tok.vocab_size() as i64,
        s.hidden,
        s.intermediate,
        s.layers,
        s.heads,
        s.kv_heads,
        true,
    );
    mcfg.bos_token_id = Some(TokenIds::One(1));
    mcfg.eos_token_id = Some(TokenIds::One(2));
    mcfg.pad_token_id = Some(TokenIds::One(0));
    mcfg.max_position_embeddings = 64;
    let params = mcfg.num_params();
    tch::set_num_threads(tch::get_num_threads().max(1));
    let policy = Policy::from_config_random(mcfg, tok, s.seed, Device::Cpu, Kind::Float)?;

    // Training pairs are drawn fresh every step (so the policy learns the operations, not a
    // list of answers): a level by `level_share` weight, then a random problem of that level
    // that is not in the held-out set.
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let weights: Vec<f64> = (0..cfg.testbed.levels.len())
        .map(|li| {
            s.level_share
                .get(li)
                .or(s.level_share.last())
                .copied()
                .unwrap_or(1.0)
                .max(0.0)
        })
        .collect();
    let pick = rand_distr::weighted::WeightedIndex::new(&weights)
        .map_err(|e| anyhow::anyhow!("sft.level_share: {e}"))?;
    let heldout: std::collections::HashSet<&str> =
        tb.heldout.iter().map(|e| e.problem.as_str()).collect();
    let draw = |rng: &mut ChaCha8Rng| -> Result<(Vec<i64>, Vec<i64>)> {
        loop {
            let level = cfg.testbed.levels[pick.sample(rng)];
            let (problem, answer) = level.draw(rng);
            if heldout.contains(problem.as_str()) {
                continue;
            }
            let p = policy
                .tokenizer()
                .encode(&testbed::prompt(&problem), true)?;
            let mut c = policy
                .tokenizer()
                .encode(&testbed::target(&answer.to_string()), false)?;
            c.push(2);
            return Ok((p, c));
        }
    };
    let mut examples = 0usize;

    let tcfg = TrainConfig {
        lr: s.lr,
        weight_decay: 0.01,
        ..Default::default()
    };
    let precision = crate::train::Precision::Auto
        .resolve(policy.kind())
        .map_err(|e| anyhow::anyhow!("sft: {e}"))?;
    let mut opt = AdamW::new(policy.trainable_var_store(), precision)?;
    let bar = crate::metrics::progress_bar(s.steps as u64, "sft", !quiet);
    let mut ema = f64::NAN;
    for step in 0..s.steps {
        // Cosine decay from lr to lr/10.
        let frac = step as f64 / s.steps.max(1) as f64;
        let lr = s.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()));
        let seqs: Vec<(Vec<i64>, Vec<i64>)> = (0..s.batch)
            .map(|_| draw(&mut rng))
            .collect::<Result<_>>()?;
        examples += seqs.len();
        let batch: Vec<&(Vec<i64>, Vec<i64>)> = seqs.iter().collect();
        opt.zero_grad()?;
        let lps = policy.logprobs_batch(&batch)?;
        let logp = Tensor::cat(&lps.iter().map(|l| &l.logprobs).collect::<Vec<_>>(), 0);
        let loss = -logp.mean(Kind::Float);
        loss.f_backward().context("sft backward")?;
        opt.accumulate()?;
        opt.clip_grad_norm(1.0)?;
        opt.step(&TrainConfig { lr, ..tcfg.clone() }.adamw())?;
        let l = loss.double_value(&[]);
        ema = if ema.is_nan() {
            l
        } else {
            0.98 * ema + 0.02 * l
        };
        bar.inc(1);
        bar.set_message(format!("loss {ema:.4}"));
    }
    bar.finish_and_clear();
    // From the fp32 masters when it trained in bf16_mixed.
    policy.save_hf_with(&out, Kind::Float, 1 << 30, &opt.masters())?;

    // Greedy held-out accuracy per level.
    let mut eval_cfg = cfg.clone();
    eval_cfg.rollout.max_tokens = 16;
    eval_cfg.rollout.prompt_template = "{problem}=".to_string();
    eval_cfg.rollout.chat = false;
    eval_cfg.run.eval_temperature = 0.0;
    let by_level = crate::run::evaluate(&policy, &eval_cfg, "heldout", &tb.heldout)?;
    Ok(SftReport {
        out,
        params,
        examples,
        final_loss: ema,
        heldout_by_level: by_level
            .into_iter()
            .map(|s| (s.benchmark, s.accuracy))
            .collect(),
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
