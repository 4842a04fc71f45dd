//! SGLang full weights from disk: `POST /update_weights_from_disk {model_path, weight_version,
//! flush_cache}` (it pauses and flushes by itself), verified with `GET /get_model_info`'s
//! `weight_version` where reported and the greedy log-prob probe.

use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::http::{dir_bytes, verify_probe, Admin, SyncDirs};
use super::vllm::SyncOptions;
use super::{write_version, Payload, SyncTiming, WeightSync};
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

impl WeightSync for SglangFullSync {
    fn publish(&mut self, policy: &Policy, version: u64) -> Result<()> {
        let t = Instant::now();
        let dir = write_version(&self.dirs, policy, Payload::Full, self.opts.kind, version)?;
        let write_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for tg in &self.admin.targets {
            let v = self.admin.post_ok(
                tg,
                "/update_weights_from_disk",
                Some(&json!({"model_path": dir.to_string_lossy(),
                    "weight_version": version.to_string(), "flush_cache": true})),
            )?;
            if v.get("success").and_then(Value::as_bool) != Some(true) {
                bail!(
                    "POST {}/update_weights_from_disk: {}",
                    tg.base,
                    v.get("message").cloned().unwrap_or(v.clone())
                );
            }
            if let Ok(info) = self.admin.get_ok(tg, "/get_model_info") {
                if let Some(w) = info.get("weight_version").filter(|w| !w.is_null()) {
                    if w.as_str() != Some(version.to_string().as_str())
                        && w.as_u64() != Some(version)
                    {
                        bail!("{}: /get_model_info reports weight_version {w} after publishing {version}", tg.base);
                    }
                }
            }
        }
        let call_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        if self.opts.verify_tol > 0.0 {
            for tg in &self.admin.targets {
                let model = self.admin.model_of(tg)?;
                verify_probe(&self.admin, tg, &model, policy, self.opts.verify_tol)?;
            }
        }
        let verify_s = t.elapsed().as_secs_f64();
        let bytes = dir_bytes(&dir);
        self.dirs.prune()?;
        self.timing = Some(SyncTiming {
            write_s,
            call_s,
            verify_s,
            bytes,
        });
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sglang_full"
    }

    fn last_timing(&self) -> Option<SyncTiming> {
        self.timing
    }
}
