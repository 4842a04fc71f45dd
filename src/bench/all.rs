//! `cures bench all`: every performance figure in one table, each measured side by side with its
//! reference in this run, as a ratio. A part that cannot run says why instead of vanishing.

use anyhow::Result;

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// What is measured.
    pub what: String,
    /// cures' figure, with its unit.
    pub cures: String,
    /// The reference's figure, with its unit.
    pub reference: String,
    /// Ratio in the direction of "bigger is better for cures" (null when not measured).
    pub ratio: Option<f64>,
    /// The target the issue set, or why the row could not be measured.
    pub note: String,
}

fn na(what: &str, why: String) -> Row {
    Row {
        what: what.to_string(),
        cures: "-".into(),
        reference: "-".into(),
        ratio: None,
        note: format!("not run: {why}"),
    }
}

/// Options: a server endpoint and model directory for the client row (skipped otherwise).
pub struct AllOptions {
    /// OpenAI-compatible server for the client-overhead row.
    pub endpoint: Option<String>,
    /// Model directory: tokenizer for the client prompts; the publish-write rows write it.
    pub model: Option<std::path::PathBuf>,
    /// Smaller sizes (for a quick check).
    pub quick: bool,
}

/// Run every part; returns the table rows.
pub fn run(o: &AllOptions) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let fmt =
        |x: Option<f64>, unit: &str| x.map_or("n/a".to_string(), |v| format!("{v:.3} {unit}"));
    // Curriculum step at 1M prompts.
    let b = super::curriculum::CurriculumBench {
        prompts: if o.quick { 100_000 } else { 1_000_000 },
        batch: 1024,
        budget: 8192,
        steps: if o.quick { 20 } else { 200 },
        reference: true,
    };
    match super::curriculum::run(&b) {
        Ok(r) => {
            rows.push(Row {
                what: format!(
                    "curriculum step, {} prompts vs Python loop (authors' style)",
                    b.prompts
                ),
                cures: format!("{:.3} ms", r.step_ms),
                reference: fmt(r.ref_loop_ms, "ms"),
                ratio: r.speedup_vs_loop,
                note: "target ≥ 100x".into(),
            });
            rows.push(Row {
                what: format!("curriculum step, {} prompts vs vectorised numpy", b.prompts),
                cures: format!("{:.3} ms", r.step_ms),
                reference: fmt(r.ref_numpy_ms, "ms"),
                ratio: r.speedup_vs_numpy,
                note: "target ≥ 15x; ≤ 2 ms per step".into(),
            });
        }
        Err(e) => rows.push(na("curriculum step", format!("{e:#}"))),
    }
    // Reward verifications per second.
    let rb = super::reward::RewardBench {
        pairs: if o.quick { 2000 } else { 10_000 },
        reference_pairs: if o.quick { 200 } else { 2000 },
        reference: true,
    };
    match super::reward::run(&rb) {
        Ok(r) => rows.push(Row {
            what: format!("reward verifications/s ({} pairs) vs Math-Verify", r.pairs),
            cures: format!("{:.0} /s", r.cures_per_s),
            reference: fmt(r.math_verify_per_s, "/s"),
            ratio: r.ratio,
            note: format!(
                "target ≥ 50x; agreement {}",
                r.agreement
                    .map_or("n/a".into(), |a| format!("{:.2}%", 100.0 * a))
            ),
        }),
        Err(e) => rows.push(na("reward verifications", format!("{e:#}"))),
    }
    // Train step vs PyTorch eager.
    match super::train_step::TrainStepBench::cpu(8, 128, if o.quick { 2 } else { 5 })
        .and_then(|tb| super::train_step::run_train_step(&tb))
    {
        Ok(r) => rows.push(Row {
            what: format!(
                "train step fwd+bwd, {}M params, {} threads, vs PyTorch eager",
                r.params / 1_000_000,
                r.threads
            ),
            cures: format!("{:.0} tok/s", r.cures_tokens_per_s),
            reference: fmt(r.pytorch_tokens_per_s, "tok/s"),
            ratio: r.ratio,
            note: "target ≥ 0.9".into(),
        }),
        Err(e) => rows.push(na("train step", format!("{e:#}"))),
    }
    // Generation with the KV cache vs recomputing the prefix.
    let gb =
        super::train_step::Preset::named("bench").map(|preset| super::train_step::GenerateBench {
            preset,
            device: tch::Device::Cpu,
            kinds: vec![tch::Kind::Float],
            batch: 4,
            prompt_tokens: 16,
            new_tokens: if o.quick { 64 } else { 256 },
            reference: true,
        });
    match gb.and_then(|g| super::train_step::run_generate(&g)) {
        Ok(r) => rows.push(Row {
            what: "generation with KV cache vs recomputing the prefix".into(),
            cures: format!("{:.0} tok/s", r.rows[0].kv_cache_tokens_per_s),
            reference: fmt(r.rows[0].recompute_tokens_per_s, "tok/s"),
            ratio: r.rows[0].speedup,
            note: "target ≥ 5x at 256 new tokens".into(),
        }),
        Err(e) => rows.push(na("generation", format!("{e:#}"))),
    }
    // Checkpoint write vs dd.
    let dir = std::env::temp_dir().join(format!("cures-bench-ckpt-{}", std::process::id()));
    let res = std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|_| super::checkpoint::run(&dir, if o.quick { 1 } else { 3 }));
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(r) => rows.push(Row {
            what: format!(
                "checkpoint write ({:.0} MB, fsync) vs dd",
                r.bytes as f64 / 1e6
            ),
            cures: format!("{:.0} MB/s", r.bytes as f64 / 1e6 / r.cures_s),
            reference: r.dd_s.map_or("n/a".into(), |d| {
                format!("{:.0} MB/s", r.bytes as f64 / 1e6 / d)
            }),
            ratio: r.ratio,
            note: "target ≥ 0.7 of the disk limit".into(),
        }),
        Err(e) => rows.push(na("checkpoint write", format!("{e:#}"))),
    }
    // Publish write part (the sync writer) for a real model: full bf16 and a LoRA adapter.
    match &o.model {
        Some(model) => {
            let args = super::publish::PublishBenchArgs {
                model: model.clone(),
                endpoint: None,
                served_model: String::new(),
                dtype: "bf16".into(),
                lora_rank: 8,
                lora_targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                    .map(String::from)
                    .to_vec(),
                reps: if o.quick { 1 } else { 3 },
                dir: Some(std::env::temp_dir()),
                verify_tol: 0.0,
                json: false,
            };
            match super::publish::run(&args) {
                Ok(r) => {
                    for w in r.rows {
                        rows.push(Row {
                            what: format!(
                                "publish write, {} ({:.1} MB bf16) vs dd",
                                w.payload,
                                w.bytes as f64 / 1e6
                            ),
                            cures: format!("{:.1} ms", 1e3 * w.write_s),
                            reference: w.dd_s.map_or("n/a".into(), |d| format!("{:.1} ms", 1e3 * d)),
                            ratio: w.write_vs_dd,
                            note: "target ≥ 0.7 of the disk limit (server call: cures bench publish --endpoint)".into(),
                        });
                    }
                }
                Err(e) => rows.push(na("publish write", format!("{e:#}"))),
            }
        }
        None => rows.push(na(
            "publish write",
            "needs a model: pass --model DIR (e.g. scripts/fetch-smollm2.sh)".into(),
        )),
    }
    // Client overhead needs a running server.
    match (&o.endpoint, &o.model) {
        (Some(ep), Some(model)) => {
            let args = super::client::ClientBenchArgs {
                endpoint: ep.clone(),
                model: model.clone(),
                prompts: 16,
                n: 4,
                max_tokens: 64,
                calls: 3,
                json: false,
            };
            match super::client::bench_client(&args) {
                Ok(r) => rows.push(Row {
                    what: "client CPU per completion vs server generation time".into(),
                    cures: format!("{:.3} ms/completion", r.client_cpu_ms_per_completion),
                    reference: format!("{:.2} s generation", r.wall_s),
                    ratio: Some(1.0 / r.overhead_frac.max(1e-9)),
                    note: format!("overhead {:.2}% (target ≤ 3%)", 100.0 * r.overhead_frac),
                }),
                Err(e) => rows.push(na("client overhead", format!("{e:#}"))),
            }
        }
        _ => rows.push(na(
            "client overhead",
            "needs a server: pass --endpoint URL --model DIR (e.g. llama-server from scripts/build-llama-server.sh)".into(),
        )),
    }
    Ok(rows)
}

/// Print the table.
pub fn print(rows: &[Row]) {
    println!(
        "{:<72} {:>18} {:>18} {:>9}  note",
        "figure", "cures", "reference", "ratio"
    );
    for r in rows {
        println!(
            "{:<72} {:>18} {:>18} {:>9}  {}",
            r.what,
            r.cures,
            r.reference,
            r.ratio.map_or("n/a".into(), |x| format!("{x:.2}x")),
            r.note
        );
    }
}
