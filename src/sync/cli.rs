//! `cures sync`: publish a checkpoint directory to a running server by hand (what the training
//! loop does after each step), timed. `scripts/sync-weights.sh` wraps it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::http::{dir_bytes, verify_probe, Admin};
use super::server::SyncOptions;
use super::sglang::SglangFullSync;
use super::vllm::{VllmFullSync, VllmLoraSync};
use crate::policy::Policy;
use crate::rollout::EndpointConfig;

/// Which route publishes the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// vLLM runtime LoRA (`/v1/load_lora_adapter`); DIR is a PEFT adapter directory.
    Lora,
    /// vLLM full weights from disk (dev mode); DIR is an HF checkpoint directory.
    Full,
    /// SGLang full weights (`/update_weights_from_disk`).
    Sglang,
}

/// Arguments of `cures sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Server base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub endpoint: String,
    /// Checkpoint directory (HF layout for full, PEFT for lora; a run checkpoint's `policy/`
    /// sub-directory is used when present).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// lora | full | sglang.
    #[arg(long, value_enum)]
    pub mode: SyncMode,
    /// Weight version to record on the server.
    #[arg(long, default_value_t = 1)]
    pub version: u64,
    /// LoRA adapter name (requests select it with "model": NAME).
    #[arg(long, default_value = "policy")]
    pub lora_name: String,
    /// Environment variable holding the server's API key.
    #[arg(long, default_value = "")]
    pub api_key_env: String,
    /// Seconds each server call may take.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// After a full / sglang publish, load DIR here and check that the server's greedy
    /// log-prob on a probe prompt is within this many nats of ours (0: skip; needs the model
    /// to fit in this machine's memory).
    #[arg(long, default_value_t = 0.0)]
    pub verify_tol: f64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `cures sync`.
pub fn run(a: &SyncArgs) -> Result<()> {
    let max = crate::config::MAX_DURATION_S;
    if !(a.timeout_s.is_finite() && a.timeout_s > 0.0 && a.timeout_s <= max) {
        bail!(
            "--timeout-s must lie in (0, {max}] seconds, got {:?}",
            a.timeout_s
        );
    }
    let mut dir = a.checkpoint.clone();
    if dir.join("policy").join("config.json").exists() {
        dir = dir.join("policy");
    }
    if !dir.is_dir() {
        bail!("--checkpoint {}: no such directory", dir.display());
    }
    let ep = EndpointConfig {
        api_key_env: a.api_key_env.clone(),
        ..EndpointConfig::new(&a.endpoint)
    };
    let opts = SyncOptions {
        dir: std::env::temp_dir().join("cures-sync-cli"),
        keep: 1,
        kind: tch::Kind::BFloat16,
        verify_tol: 0.0,
        timeout: Duration::from_secs_f64(a.timeout_s),
    };
    let call_s = match a.mode {
        SyncMode::Full => {
            VllmFullSync::new(std::slice::from_ref(&ep), opts)?.reload_dir(&dir, a.version)?
        }
        SyncMode::Lora => {
            VllmLoraSync::new(std::slice::from_ref(&ep), &a.lora_name, opts)?.load_dir(&dir)?
        }
        SyncMode::Sglang => {
            SglangFullSync::new(std::slice::from_ref(&ep), opts)?.reload_dir(&dir, a.version)?
        }
    };
    let mut probe = None;
    if a.verify_tol > 0.0 && a.mode != SyncMode::Lora {
        let t = Instant::now();
        let policy = Policy::load(&dir, tch::Device::Cpu, tch::Kind::Float)
            .with_context(|| format!("loading {} to verify the publish", dir.display()))?;
        let admin = Admin::new(
            std::slice::from_ref(&ep),
            Duration::from_secs_f64(a.timeout_s),
        )?;
        let tg = &admin.targets[0];
        let model = admin.model_of(tg)?;
        let (served, ours) = verify_probe(&admin, tg, &model, &policy, a.verify_tol)?;
        println!(
            "verified: probe log-prob {served:.4} served vs {ours:.4} here (tolerance {}) in {:.1} s",
            a.verify_tol,
            t.elapsed().as_secs_f64()
        );
        probe = Some((served, ours));
    }
    let bytes = dir_bytes(&dir);
    println!(
        "published {} ({:.1} MB) to {} as version {} ({:?}) in {:.3} s",
        dir.display(),
        bytes as f64 / 1e6,
        ep.base(),
        a.version,
        a.mode,
        call_s
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({"endpoint": ep.base(), "checkpoint": dir, "mode": format!("{:?}", a.mode).to_lowercase(),
                "version": a.version, "bytes": bytes, "call_s": call_s,
                "probe": probe.map(|(s, o)| serde_json::json!({"served": s, "ours": o}))})
        );
    }
    Ok(())
}
