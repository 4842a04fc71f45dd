//! SGLang full weights from disk: `POST /update_weights_from_disk {model_path, weight_version,
//! flush_cache}` (it pauses and flushes by itself), verified with `GET /get_model_info`'s
//! `weight_version` and the greedy log-prob probe. Verified against SGLang 0.5.23 on CPU
//! (scripts/install-sglang-cpu.sh, tests/server_sglang.rs): a bad path is answered with HTTP 400
//! `success: false` and the server keeps serving its previous weights; a successful update also
//! renames the served model to the directory path (requests' `model` field is not checked).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::http::{check_checkpoint_dir, check_version, Admin, SyncDirs};
use super::vllm::SyncOptions;
use super::{publish_version, Payload, SyncTiming, WeightSync};
use crate::policy::Policy;
use crate::rollout::EndpointConfig;

/// SGLang full-weight reload from disk.
#[derive(Debug)]
pub struct SglangFullSync {
    admin: Admin,
    dirs: SyncDirs,
    opts: SyncOptions,
    timing: Option<SyncTiming>,
}

impl SglangFullSync {
    /// A sync to every server in `endpoints`.
    pub fn new(endpoints: &[EndpointConfig], opts: SyncOptions) -> Result<Self> {
        Ok(Self {
            admin: Admin::new(endpoints, opts.timeout)?,
            dirs: SyncDirs::new(&opts.dir, opts.keep)?,
            opts,
            timing: None,
        })
    }
}

impl SglangFullSync {
    /// Load the HF checkpoint in `dir` on every server as `version` and check the version the
    /// server then reports (no probe: the caller may not hold the matching policy). Returns
    /// seconds spent. The directory is checked first (whole safetensors files), since SGLang
    /// exits on a corrupt one.
    pub fn reload_dir(&self, dir: &Path, version: u64) -> Result<f64> {
        let t = Instant::now();
        check_checkpoint_dir(dir)?;
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        for tg in &self.admin.targets {
            let v = self
                .admin
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
            check_version(&self.admin, tg, "/get_model_info", version)?;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

impl WeightSync for SglangFullSync {
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
        "sglang_full"
    }

    fn last_timing(&self) -> Option<SyncTiming> {
        self.timing
    }
}
