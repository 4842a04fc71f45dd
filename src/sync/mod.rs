//! Weight sync: after each update, make the rollout engine sample from the new policy.
//!
//! [`WeightSync::publish`] hands version `v` of the weights over; the embedded engine shares the
//! trainer's tensors in-process, so its sync only records the version.

pub mod cli;
pub mod http;
pub mod server;
pub mod sglang;
pub mod vllm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::policy::Policy;
use crate::rollout::{EngineKind, RolloutConfig, SyncKind};

pub use server::{ServerBackend, ServerSync, SyncOptions};
pub use sglang::SglangFullSync;
pub use vllm::{VllmFullSync, VllmLoraSync};

/// Where the seconds of the last publish went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncTiming {
    /// Writing the checkpoint / adapter.
    pub write_s: f64,
    /// The server calls (reload + version bookkeeping).
    pub call_s: f64,
    /// Verification (probe).
    pub verify_s: f64,
    /// Bytes written.
    pub bytes: u64,
}

/// The sync `cfg.sync` names (`auto`: embedded for the embedded engine, none for servers);
/// server-side checkpoints go under `cfg.sync_dir` or `<run_dir>/sync`.
pub fn from_config(cfg: &RolloutConfig, run_dir: &Path) -> Result<Box<dyn WeightSync>> {
    let kind = match (cfg.sync, cfg.engine) {
        (SyncKind::Auto, EngineKind::Embedded) => SyncKind::Embedded,
        (SyncKind::Auto, _) => SyncKind::Off,
        (k, _) => k,
    };
    let opts = || -> Result<SyncOptions> {
        Ok(SyncOptions {
            dir: if cfg.sync_dir.is_empty() {
                run_dir.join("sync")
            } else {
                Path::new(&cfg.sync_dir).to_path_buf()
            },
            keep: cfg.sync_keep,
            kind: crate::policy::parse_kind(&cfg.sync_dtype)?,
            verify_tol: cfg.sync_verify_tol,
            timeout: Duration::from_secs_f64(cfg.request_timeout_s),
        })
    };
    Ok(match kind {
        SyncKind::Auto | SyncKind::Embedded => Box::new(EmbeddedSync),
        SyncKind::Off => Box::new(NoSync),
        SyncKind::VllmFull => Box::new(VllmFullSync::new(&cfg.endpoints, opts()?)?),
        SyncKind::VllmLora => Box::new(VllmLoraSync::new(&cfg.endpoints, &cfg.lora_name, opts()?)?),
        SyncKind::SglangFull => Box::new(SglangFullSync::new(&cfg.endpoints, opts()?)?),
    })
}

/// What a server-side sync writes for each version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The whole model as an HF checkpoint (LoRA merged in).
    Full,
    /// The LoRA adapter in PEFT layout.
    Lora,
}

/// What a publish writes: the policy's tensors, with the optimiser's fp32 master weights in
/// place of the compute weights when it keeps them (`train.precision = "bf16_mixed"`), so a
/// server gets `rollout.sync_dtype` cast from the masters, not a bf16 copy cast up.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    /// The policy (architecture, tokenizer, frozen tensors, LoRA adapters).
    pub policy: &'a Policy,
    /// Tensors by name that replace the policy's in a full export.
    pub masters: Option<&'a BTreeMap<String, Tensor>>,
}

impl<'a> Weights<'a> {
    /// The policy's own tensors.
    pub fn of(policy: &'a Policy) -> Self {
        Self {
            policy,
            masters: None,
        }
    }
}

/// Write `w`'s `payload` as `kind` into the fresh directory of `version` under `dirs`
/// (atomic: written beside it, fsync'd, renamed). The write part of every server-side publish.
pub fn write_version(
    dirs: &http::SyncDirs,
    w: Weights<'_>,
    payload: Payload,
    kind: Kind,
    version: u64,
) -> Result<PathBuf> {
    let dir = dirs.fresh(version)?;
    match payload {
        Payload::Full => match w.masters {
            Some(m) => w.policy.save_hf_with(&dir, kind, 5 << 30, m)?,
            None => w.policy.save_hf(&dir, kind, 5 << 30)?,
        },
        Payload::Lora => w.policy.save_lora(&dir, kind)?,
    }
    Ok(dir)
}

/// One server-side publish: write `policy`'s `payload` for `version`, hand the directory to the
/// servers with `call` (returns its seconds), probe every target against the trainer (on the
/// served model, or on `adapter` when given), prune old versions. Returns where the time went.
#[allow(clippy::too_many_arguments)]
fn publish_version(
    admin: &http::Admin,
    dirs: &http::SyncDirs,
    opts: &SyncOptions,
    w: Weights<'_>,
    payload: Payload,
    version: u64,
    adapter: Option<&str>,
    call: impl FnOnce(&Path) -> Result<f64>,
) -> Result<SyncTiming> {
    let t = std::time::Instant::now();
    let policy = w.policy;
    let dir = write_version(dirs, w, payload, opts.kind, version)?;
    let write_s = t.elapsed().as_secs_f64();
    let call_s = call(&dir)?;
    let t = std::time::Instant::now();
    if opts.verify_tol > 0.0 {
        for tg in &admin.targets {
            let model = match adapter {
                Some(a) => a.to_string(),
                None => admin.model_of(tg)?,
            };
            http::verify_probe(admin, tg, &model, policy, opts.verify_tol)?;
        }
    }
    let verify_s = t.elapsed().as_secs_f64();
    let bytes = http::dir_bytes(&dir);
    dirs.prune()?;
    Ok(SyncTiming {
        write_s,
        call_s,
        verify_s,
        bytes,
    })
}

/// Publishes nothing: the server keeps the weights it started with.
#[derive(Debug, Default)]
pub struct NoSync;

impl WeightSync for NoSync {
    fn publish_weights(&mut self, _w: Weights<'_>, _version: u64) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "none"
    }

    fn transfers(&self) -> bool {
        false
    }
}

/// Hands new weights to whatever generates rollouts.
pub trait WeightSync {
    /// Make the weights `w` live as version `version`, and verify they are.
    fn publish_weights(&mut self, w: Weights<'_>, version: u64) -> Result<()>;
    /// Make `policy`'s current weights live as version `version`, and verify they are.
    fn publish(&mut self, policy: &Policy, version: u64) -> Result<()> {
        self.publish_weights(Weights::of(policy), version)
    }
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Where the last publish's seconds went (server-side syncs).
    fn last_timing(&self) -> Option<SyncTiming> {
        None
    }
    /// Whether publishing moves weights to another process (so the run publishes its starting
    /// weights before the first step, and again on resume).
    fn transfers(&self) -> bool {
        true
    }
}

/// The embedded engine: the weights are shared in-process; nothing to transfer.
#[derive(Debug, Default)]
pub struct EmbeddedSync;

impl WeightSync for EmbeddedSync {
    fn publish_weights(&mut self, _w: Weights<'_>, _version: u64) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }

    fn transfers(&self) -> bool {
        false
    }
}
