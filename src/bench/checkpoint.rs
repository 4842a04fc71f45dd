//! `cures bench checkpoint`: writing an HF checkpoint (the sync path's disk part) vs a raw
//! sequential write of the same bytes with `dd ... conv=fsync`, as a ratio of throughputs.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::Kind;

use super::median;

/// The figures (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointBenchResult {
    /// Bytes of the safetensors shards written.
    pub bytes: u64,
    /// Median seconds of `Policy::save_hf` (f32, atomic directory, fsync).
    pub cures_s: f64,
    /// Median seconds of `dd if=/dev/zero conv=fsync` of the same bytes (null: dd failed).
    pub dd_s: Option<f64>,
    /// cures throughput / dd throughput (target ≥ 0.7).
    pub ratio: Option<f64>,
}

fn shard_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".safetensors") {
            n += e.metadata()?.len();
        }
    }
    Ok(n)
}

/// Write the bench model's checkpoint `reps` times and `dd` the same bytes `reps` times, in
/// `dir` (a temporary directory on the disk to measure).
pub fn run(dir: &Path, reps: usize) -> Result<CheckpointBenchResult> {
    let policy = super::train_step::bench_policy()?;
    let mut cures = Vec::new();
    let mut bytes = 0;
    for i in 0..reps.max(1) {
        let out = dir.join(format!("ckpt{i}"));
        let t = Instant::now();
        policy.save_hf(&out, Kind::Float, 1 << 30)?;
        cures.push(t.elapsed().as_secs_f64());
        bytes = shard_bytes(&out)?;
        std::fs::remove_dir_all(&out)?;
    }
    let mut dd = Vec::new();
    let mut dd_bytes = bytes;
    for i in 0..reps.max(1) {
        match super::dd_write(&dir.join(format!("dd{i}.bin")), bytes) {
            Ok((s, b)) => {
                dd.push(s);
                dd_bytes = b;
            }
            Err(e) => {
                eprintln!("bench checkpoint: {e}: reference not measured");
                break;
            }
        }
    }
    if bytes == 0 {
        bail!("the checkpoint has no safetensors bytes");
    }
    let cures_s = median(&cures);
    let dd_s = (!dd.is_empty()).then(|| median(&dd));
    // dd writes whole blocks: compare throughputs, not times.
    let ratio = dd_s.map(|d| (bytes as f64 / cures_s) / (dd_bytes as f64 / d));
    Ok(CheckpointBenchResult {
        bytes,
        cures_s,
        dd_s,
        ratio,
    })
}
