//! SGLang full weights from disk: `POST /update_weights_from_disk {model_path, weight_version,
//! flush_cache}` (it pauses and flushes by itself), verified with `GET /get_model_info`'s
//! `weight_version` and the greedy log-prob probe. Verified against SGLang 0.5.23 on CPU
//! (scripts/install-sglang-cpu.sh, tests/it/server_sglang.rs): a bad path is answered with HTTP 400
//! `success: false` and the server keeps serving its previous weights; a successful update also
//! renames the served model to the directory path (requests' `model` field is not checked).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::http::{check_version, Admin};
use super::server::{ServerBackend, ServerSync, SyncOptions};
use super::Payload;
use crate::rollout::EndpointConfig;

/// SGLang full-weight reload from disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct SglangFull;

/// SGLang full-weight sync.
pub type SglangFullSync = ServerSync<SglangFull>;

impl SglangFullSync {
    /// A sync to every server in `endpoints`.
    pub fn new(endpoints: &[EndpointConfig], opts: SyncOptions) -> Result<Self> {
        Self::with_backend(endpoints, opts, SglangFull)
    }
}

impl ServerBackend for SglangFull {
    const NAME: &'static str = "sglang_full";
    const PAYLOAD: Payload = Payload::Full;

    fn reload(&self, admin: &Admin, dir: &Path, version: u64) -> Result<()> {
        for tg in &admin.targets {
            let v = admin
                .post_ok(
                    tg,
                    "/update_weights_from_disk",
                    Some(&json!({"model_path": dir.to_string_lossy(),
                        "weight_version": version.to_string(), "flush_cache": true})),
                )
                .with_context(|| {
                    format!(
                        "{}: loading {} failed; if the server stopped answering, restart it (scripts/serve-sglang.sh)",
                        tg.base,
                        dir.display()
                    )
                })?;
            if v.get("success").and_then(Value::as_bool) != Some(true) {
                bail!(
                    "POST {}/update_weights_from_disk: {}",
                    tg.base,
                    v.get("message").cloned().unwrap_or(v.clone())
                );
            }
            check_version(admin, tg, "/get_model_info", version)?;
        }
        Ok(())
    }
}
