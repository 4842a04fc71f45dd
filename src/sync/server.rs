//! The one server-side sync: [`ServerSync`] writes each version to a fresh directory, hands it to
//! every server through its [`ServerBackend`] (the only part that differs between vLLM full,
//! vLLM LoRA and SGLang), probes, prunes and records the timing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::Kind;

use super::http::{check_checkpoint_dir, Admin, SyncDirs};
use super::{publish_version, Payload, SyncTiming, WeightSync, Weights};
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

/// How one kind of server loads a written version.
pub trait ServerBackend {
    /// The sync's name in logs and CSVs.
    const NAME: &'static str;
    /// What is written for each version.
    const PAYLOAD: Payload;
    /// The adapter name the probe samples from (`None`: the served model).
    fn adapter(&self) -> Option<&str> {
        None
    }
    /// Refuse a policy this backend cannot publish.
    fn check_policy(&self, _policy: &Policy) -> Result<()> {
        Ok(())
    }
    /// Refuse a directory before anything is sent (after the shared safetensors check).
    fn check_dir(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Load the checkpoint in `dir` (canonical path) on every target of `admin` as `version`.
    fn reload(&self, admin: &Admin, dir: &Path, version: u64) -> Result<()>;
}

/// A server-side weight sync over backend `B`.
#[derive(Debug)]
pub struct ServerSync<B> {
    admin: Admin,
    dirs: SyncDirs,
    opts: SyncOptions,
    backend: B,
    timing: Option<SyncTiming>,
}

impl<B: ServerBackend> ServerSync<B> {
    /// A sync to every server in `endpoints`.
    pub fn with_backend(
        endpoints: &[EndpointConfig],
        opts: SyncOptions,
        backend: B,
    ) -> Result<Self> {
        Ok(Self {
            admin: Admin::new(endpoints, opts.timeout)?,
            dirs: SyncDirs::new(&opts.dir, opts.keep)?,
            opts,
            backend,
            timing: None,
        })
    }

    /// Load the checkpoint in `dir` on every server as `version` (no probe: the caller may not
    /// hold the matching policy). The directory is checked first (whole safetensors files): a
    /// missing path or a corrupt file can leave a server's worker broken. Returns seconds spent.
    pub fn reload_dir(&self, dir: &Path, version: u64) -> Result<f64> {
        let t = Instant::now();
        self.backend.check_dir(dir)?;
        check_checkpoint_dir(dir)?;
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        self.backend.reload(&self.admin, &dir, version)?;
        Ok(t.elapsed().as_secs_f64())
    }
}

impl<B: ServerBackend> WeightSync for ServerSync<B> {
    fn publish_weights(&mut self, w: Weights<'_>, version: u64) -> Result<()> {
        self.backend.check_policy(w.policy)?;
        let timing = publish_version(
            &self.admin,
            &self.dirs,
            &self.opts,
            w,
            B::PAYLOAD,
            version,
            self.backend.adapter(),
            |dir| self.reload_dir(dir, version),
        )?;
        self.timing = Some(timing);
        Ok(())
    }

    fn name(&self) -> &'static str {
        B::NAME
    }

    fn last_timing(&self) -> Option<SyncTiming> {
        self.timing
    }
}
