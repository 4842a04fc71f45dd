//! `cures bench publish`: the time to publish new weights to a server, for the full model and
//! for a LoRA adapter, side by side with a raw sequential write of the same bytes (`dd
//! conv=fsync`) on the same disk.
//!
//! The write part is exactly what every server-side sync runs ([`crate::sync::write_version`]:
//! a fresh version directory, safetensors written, fsync'd, renamed). With `--endpoint` (a vLLM
//! started by `scripts/serve-vllm.sh MODEL PORT --lora`) each repetition is a whole publish
//! through [`VllmFullSync`] / [`VllmLoraSync`]: write, the server calls, and the log-prob probe
//! that proves the server took the weights; the split comes from [`WeightSync::last_timing`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::{Device, Kind};

use super::median;
use crate::policy::{parse_kind, LoraConfig, Policy};
use crate::rollout::EndpointConfig;
use crate::sync::http::{dir_bytes, SyncDirs};
use crate::sync::{write_version, Payload, SyncOptions, VllmFullSync, VllmLoraSync, WeightSync};

/// Arguments of `cures bench publish`.
#[derive(Debug, clap::Args)]
pub struct PublishBenchArgs {
    /// HF checkpoint directory of the policy (e.g. the SmolLM2 directory from
    /// scripts/fetch-smollm2.sh).
    #[arg(long)]
    pub model: PathBuf,
    /// vLLM server serving that model with dev mode and LoRA on (scripts/serve-vllm.sh MODEL
    /// PORT --lora); without it only the write part is measured.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Served model name (empty: ask the server).
    #[arg(long, default_value = "")]
    pub served_model: String,
    /// dtype written (the server's): bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// LoRA rank (≤ the server's --max-lora-rank).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: i64,
    /// LoRA target modules.
    #[arg(long, value_delimiter = ',', default_values_t = ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from))]
    pub lora_targets: Vec<String>,
    /// Publishes (and dd runs) of the full weights; the LoRA adapter gets 5× as many. Medians
    /// are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Directory to write in (default: a temporary directory under the current one, so the
    /// disk measured is the one a run's `sync/` directory would use).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Probe tolerance in nats after each publish to a server (≤ 0: no probe). vLLM-CPU's LoRA
    /// path in bf16 is itself off by up to ~0.15 nats on SmolLM2 (a zero adapter already moves
    /// the probe by 0.05, where peft and cures agree to 1e-6), hence the margin.
    #[arg(long, default_value_t = 0.25)]
    pub verify_tol: f64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// One payload's figures (medians over the repetitions).
#[derive(Debug, Clone, Serialize)]
pub struct PublishRow {
    /// `full` or `lora`.
    pub payload: String,
    /// Bytes of one published version directory.
    pub bytes: u64,
    /// Writing the version directory (fsync'd, renamed).
    pub write_s: f64,
    /// Server calls (null: no server).
    pub call_s: Option<f64>,
    /// Verification probe (null: no server or no probe).
    pub verify_s: Option<f64>,
    /// The whole publish (write + calls + verify; the write alone without a server).
    pub publish_s: f64,
    /// `dd conv=fsync` of the same bytes (null: dd failed).
    pub dd_s: Option<f64>,
    /// Write throughput / dd throughput (target ≥ 0.7).
    pub write_vs_dd: Option<f64>,
    /// Whole-publish throughput / dd throughput.
    pub publish_vs_dd: Option<f64>,
}

/// What `cures bench publish` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PublishBench {
    /// The server, when one was used.
    pub endpoint: Option<String>,
    /// dtype written.
    pub dtype: String,
    /// Full weights, then the LoRA adapter.
    pub rows: Vec<PublishRow>,
}

fn server_sync(
    a: &PublishBenchArgs,
    url: &str,
    payload: Payload,
    dir: PathBuf,
) -> Result<Box<dyn WeightSync>> {
    let ep = EndpointConfig {
        model: a.served_model.clone(),
        ..EndpointConfig::new(url)
    };
    let opts = SyncOptions {
        dir,
        keep: 1,
        kind: parse_kind(&a.dtype)?,
        verify_tol: a.verify_tol,
        timeout: Duration::from_secs(300),
    };
    Ok(match payload {
        Payload::Full => Box::new(VllmFullSync::new(std::slice::from_ref(&ep), opts)?),
        Payload::Lora => Box::new(VllmLoraSync::new(std::slice::from_ref(&ep), "cures", opts)?),
    })
}

/// Measure one payload: publishes (or writes) alternating with dd runs of the same bytes.
fn measure(
    a: &PublishBenchArgs,
    policy: &mut Policy,
    payload: Payload,
    root: &std::path::Path,
) -> Result<PublishRow> {
    let name = match payload {
        Payload::Full => "full",
        Payload::Lora => "lora",
    };
    let kind = parse_kind(&a.dtype)?;
    let dir = root.join(name);
    let mut sync = match &a.endpoint {
        Some(url) => Some(server_sync(a, url, payload, dir.clone())?),
        None => None,
    };
    let dirs = SyncDirs::new(&dir, 1)?;
    let (mut write, mut call, mut verify, mut total, mut dd) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut bytes, mut dd_bytes, mut dd_ok) = (0, 0, true);
    // Publish and dd alternate, so both see the same disk (its speed drifts a lot here).
    let reps = match payload {
        Payload::Full => a.reps.max(1),
        // Small writes are dominated by fsync latency, which jitters: more samples.
        Payload::Lora => a.reps.max(1) * 5,
    };
    for rep in 0..reps {
        if payload == Payload::Lora {
            // A different adapter each time, so every load really changes the served weights.
            nudge_lora(policy, rep);
        }
        let version = rep as u64 + 1;
        let t = Instant::now();
        match sync.as_mut() {
            Some(s) => {
                s.publish(policy, version)
                    .with_context(|| format!("publishing {name} version {version}"))?;
                let tm = s.last_timing().context("the sync reported no timing")?;
                write.push(tm.write_s);
                call.push(tm.call_s);
                verify.push(tm.verify_s);
                bytes = tm.bytes;
            }
            None => {
                let d = write_version(
                    &dirs,
                    crate::sync::Weights::of(policy),
                    payload,
                    kind,
                    version,
                )?;
                write.push(t.elapsed().as_secs_f64());
                bytes = dir_bytes(&d);
                dirs.prune()?;
            }
        }
        total.push(t.elapsed().as_secs_f64());
        if dd_ok {
            match super::dd_write(&root.join(format!("dd-{name}.bin")), bytes) {
                Ok((s, b)) => {
                    dd.push(s);
                    dd_bytes = b;
                }
                Err(e) => {
                    eprintln!("bench publish: {e}: reference not measured");
                    dd_ok = false;
                }
            }
        }
    }
    if bytes == 0 {
        bail!("the {name} publish wrote no bytes");
    }
    let dd_s = (!dd.is_empty()).then(|| median(&dd));
    let dd_rate = dd_s.map(|d| dd_bytes as f64 / d);
    let write_s = median(&write);
    let publish_s = median(&total);
    let some = |v: &Vec<f64>| (!v.is_empty()).then(|| median(v));
    Ok(PublishRow {
        payload: name.into(),
        bytes,
        write_s,
        call_s: some(&call),
        verify_s: some(&verify).filter(|_| a.verify_tol > 0.0),
        publish_s,
        dd_s,
        write_vs_dd: dd_rate.map(|r| bytes as f64 / write_s / r),
        publish_vs_dd: dd_rate.map(|r| bytes as f64 / publish_s / r),
    })
}

/// Set every LoRA B to a small value that depends on `rep` (B starts at zero, which would make
/// the adapter a no-op).
fn nudge_lora(policy: &Policy, rep: usize) {
    let vs = policy.trainable_var_store();
    tch::no_grad(|| {
        for (k, v) in vs.variables() {
            if k.contains("lora_B") {
                let _ = v.shallow_clone().fill_(1e-3 * (rep as f64 + 1.0));
            }
        }
    });
}

/// Run the bench (see the module docs).
pub fn run(a: &PublishBenchArgs) -> Result<PublishBench> {
    let mut policy = Policy::load(&a.model, Device::Cpu, Kind::Float)
        .with_context(|| format!("--model {}", a.model.display()))?;
    let tmp = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            tempfile::Builder::new()
                .prefix(".cures-bench-publish-")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new()
            .prefix(".cures-bench-publish-")
            .tempdir_in("."),
    }
    .context("cannot make the bench directory")?;
    let full = measure(a, &mut policy, Payload::Full, tmp.path())?;
    policy.enable_lora(
        LoraConfig {
            r: a.lora_rank,
            alpha: 2.0 * a.lora_rank as f64,
            target_modules: a.lora_targets.clone(),
        },
        0,
    )?;
    let lora = measure(a, &mut policy, Payload::Lora, tmp.path())?;
    Ok(PublishBench {
        endpoint: a.endpoint.clone(),
        dtype: a.dtype.clone(),
        rows: vec![full, lora],
    })
}

/// Print the table.
pub fn print(r: &PublishBench) {
    let opt = |x: Option<f64>, unit: &str| x.map_or("n/a".to_string(), |v| format!("{v:.3}{unit}"));
    println!(
        "publish to {} ({}):",
        r.endpoint.as_deref().unwrap_or("disk only (no --endpoint)"),
        r.dtype
    );
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>10} {:>11} {:>10} {:>12} {:>14}",
        "payload",
        "MB",
        "write s",
        "call s",
        "verify s",
        "publish s",
        "dd s",
        "write/dd",
        "publish/dd"
    );
    for w in &r.rows {
        println!(
            "{:<8} {:>12.2} {:>10.3} {:>10} {:>10} {:>11.3} {:>10} {:>12} {:>14}",
            w.payload,
            w.bytes as f64 / 1e6,
            w.write_s,
            opt(w.call_s, ""),
            opt(w.verify_s, ""),
            w.publish_s,
            opt(w.dd_s, ""),
            opt(w.write_vs_dd, "x"),
            opt(w.publish_vs_dd, "x"),
        );
    }
    println!("write/dd and publish/dd are throughput ratios (target ≥ 0.7 for the write part)");
}
