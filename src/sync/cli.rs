//! `cures sync`: publish a checkpoint directory to a running server by hand (what the training
//! loop does after each step), timed. `scripts/sync-weights.sh` wraps it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::http::{dir_bytes, Admin};
use super::vllm::{SyncOptions, VllmFullSync, VllmLoraSync};
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
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `cures sync`.
pub fn run(a: &SyncArgs) -> Result<()> {
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
    let t = Instant::now();
    let call_s = match a.mode {
        SyncMode::Full => {
            VllmFullSync::new(std::slice::from_ref(&ep), opts)?.reload_dir(&dir, a.version)?
        }
        SyncMode::Lora => {
            VllmLoraSync::new(std::slice::from_ref(&ep), &a.lora_name, opts)?.load_dir(&dir)?
        }
        SyncMode::Sglang => {
            let admin = Admin::new(
                std::slice::from_ref(&ep),
                Duration::from_secs_f64(a.timeout_s),
            )?;
            let dir = std::fs::canonicalize(&dir)?;
            let tg = &admin.targets[0];
            let v = admin.post_ok(
                tg,
                "/update_weights_from_disk",
                Some(&serde_json::json!({"model_path": dir.to_string_lossy(),
                    "weight_version": a.version.to_string(), "flush_cache": true})),
            )?;
            if v.get("success").and_then(serde_json::Value::as_bool) != Some(true) {
                bail!("POST {}/update_weights_from_disk: {v}", tg.base);
            }
            t.elapsed().as_secs_f64()
        }
    };
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
                "version": a.version, "bytes": bytes, "call_s": call_s})
        );
    }
    Ok(())
}
