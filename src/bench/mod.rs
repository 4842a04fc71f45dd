//! `cures bench ...`: performance figures, each measured side by side with its reference in
//! the same run and reported as a ratio. A reference that cannot run is reported as `null`
//! with the reason on stderr, never skipped silently.

pub mod all;
pub mod checkpoint;
pub mod client;
pub mod curriculum;
pub mod head_memory;
pub mod optim;
pub mod publish;
pub mod reward;
pub mod train_step;

use std::path::{Path, PathBuf};
use std::process::Command;

/// `--device` of a bench: `cpu`, `cuda` or `cuda:N`, refused with the reason when this process
/// cannot use it (no CUDA libtorch, no device: `crate::backend`).
pub fn device_arg(s: &str) -> anyhow::Result<tch::Device> {
    let d = crate::train::trainer::parse_device(s, tch::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    crate::backend::check_device(d).map_err(|e| anyhow::anyhow!("--device {s}: {e}"))?;
    Ok(d)
}

/// Median of a sample (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 0.5)
}

/// Nearest-rank percentile `q` ∈ [0, 1] of a sample (NaN when empty).
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    v[k.min(v.len() - 1)]
}

/// Locate a file shipped in the repository (scripts/...): relative to the working directory
/// first, then to the source tree the binary was built from.
pub fn repo_file(rel: &str) -> Option<PathBuf> {
    let here = Path::new(rel);
    if here.exists() {
        return Some(here.to_path_buf());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    built.exists().then_some(built)
}

/// The Python interpreter for reference benchmarks: `$CURES_BENCH_PYTHON`, else the venv made
/// by `scripts/bench/setup-venv.sh`, else `python3`. The first that can import `module` wins;
/// the error lists what was tried.
pub fn reference_python(module: &str) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("CURES_BENCH_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/cures/bench-venv/bin/python"));
    }
    candidates.push(PathBuf::from("python3"));
    let mut tried = Vec::new();
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(py);
        }
        tried.push(py.display().to_string());
    }
    Err(format!(
        "no Python with `{module}` found (tried {}): run scripts/bench/setup-venv.sh",
        tried.join(", ")
    ))
}

/// The figure `key` from a reference script's run (see [`reference_json`]).
pub fn reference_figure(
    py: &Path,
    script: &Path,
    out: std::io::Result<std::process::Output>,
    key: &str,
) -> Result<f64, String> {
    let v = reference_json(py, script, out)?;
    v.get(key)
        .and_then(|x| x.as_f64())
        .ok_or_else(|| format!("reference output has no {key}"))
}

/// The last stdout line of a reference script's run, as JSON; the run must have succeeded
/// (Err carries the reason, for stderr).
pub fn reference_json(
    py: &Path,
    script: &Path,
    out: std::io::Result<std::process::Output>,
) -> Result<serde_json::Value, String> {
    let out = out.map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            py.display(),
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("reference printed {last:.200}: {e}"))
}

/// The reference for every disk-write figure: `dd if=/dev/zero of=PATH conv=fsync` of at least
/// `bytes` (whole blocks: 4 MiB, or 64 KiB below 64 MiB), then the file is removed. Returns
/// (seconds, bytes written); Err carries why dd could not run, for stderr.
pub fn dd_write(path: &Path, bytes: u64) -> Result<(f64, u64), String> {
    let bs: u64 = if bytes >= 64 << 20 { 4 << 20 } else { 64 << 10 };
    let blocks = bytes.div_ceil(bs).max(1);
    let t = std::time::Instant::now();
    let st = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args([
            &format!("bs={bs}"),
            &format!("count={blocks}"),
            "conv=fsync",
            "status=none",
        ])
        .status();
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    match st {
        Ok(s) if s.success() => Ok((secs, blocks * bs)),
        Ok(s) => Err(format!("dd exited with {s}")),
        Err(e) => Err(format!("cannot run dd ({e})")),
    }
}
