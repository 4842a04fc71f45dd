//! `cures bench client` and `cures bench inflight`: the rollout client against a running
//! OpenAI-compatible server (llama-server, vLLM, SGLang).
//!
//! - `client`: orchestrator CPU time per completion vs the wall time the server spends
//!   generating (the client's overhead).
//! - `inflight`: the most requests the client keeps on the wire at once without a single error
//!   or retry, over a sweep of concurrency limits. Each level sends `rounds × level` one-choice
//!   requests with `rollout.max_concurrency = level`, so the client holds `level` requests in
//!   flight for most of the level (the peak is measured, not assumed).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::policy::{ChatMessage, Tokenizer};
use crate::rollout::openai::{process_cpu_seconds, EndpointConfig, OpenAiEngine};
use crate::rollout::{EngineKind, RolloutConfig, RolloutEngine, RolloutRequest};

/// `count` chat-templated arithmetic prompts (seeded by their index).
fn prompts(tok: &Tokenizer, count: usize, n: usize) -> Result<Vec<RolloutRequest>> {
    (0..count)
        .map(|i| {
            let q = format!(
                "What is {} plus {}? Think step by step.",
                17 + i,
                25 + 3 * i
            );
            let ids = if tok.chat_template().is_some() {
                tok.encode_chat(&[ChatMessage::new("user", &q)], true)
            } else {
                tok.encode(&q, true)
            }?;
            Ok(RolloutRequest {
                prompt_ids: ids,
                n,
                seed: i as u64,
            })
        })
        .collect()
}

fn load_tokenizer(model: &std::path::Path) -> Result<Tokenizer> {
    Tokenizer::load(model, &[], None).with_context(|| format!("--model {}", model.display()))
}

/// Arguments of `cures bench client`.
#[derive(Debug, clap::Args)]
pub struct ClientBenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub endpoint: String,
    /// Model directory whose tokenizer (and chat template) encodes the prompts.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompts per call.
    #[arg(long, default_value_t = 16)]
    pub prompts: usize,
    /// Completions per prompt.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Completion tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Timed calls.
    #[arg(long, default_value_t = 3)]
    pub calls: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `cures bench client` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClientBench {
    /// Completions over all timed calls.
    pub completions: usize,
    /// Completion tokens.
    pub tokens: usize,
    /// Wall seconds of the timed `generate` calls (≈ server generation time).
    pub wall_s: f64,
    /// CPU seconds this (orchestrator) process used during them.
    pub client_cpu_s: f64,
    /// Client CPU per completion, ms.
    pub client_cpu_ms_per_completion: f64,
    /// Client CPU / wall (target ≤ 3%).
    pub overhead_frac: f64,
    /// Completion tokens per wall second.
    pub tokens_per_s: f64,
}

/// Client overhead: orchestrator CPU time vs the wall time the server spends generating.
pub fn bench_client(a: &ClientBenchArgs) -> Result<ClientBench> {
    let tok = load_tokenizer(&a.model)?;
    let cfg = RolloutConfig {
        engine: EngineKind::Openai,
        endpoints: vec![EndpointConfig::new(&a.endpoint)],
        max_tokens: a.max_tokens,
        temperature: 1.0,
        ..RolloutConfig::default()
    };
    let mut engine = OpenAiEngine::new(&cfg, Some(tok.clone()))?;
    let requests = prompts(&tok, a.prompts, a.n)?;
    engine.generate(&requests[..1.min(requests.len())], &cfg)?; // warm-up
    let (mut wall, mut cpu, mut comps, mut tokens) = (0.0, 0.0, 0, 0);
    for call in 0..a.calls {
        let reqs: Vec<RolloutRequest> = requests
            .iter()
            .map(|r| RolloutRequest {
                seed: r.seed + 1000 * (call as u64 + 1),
                ..r.clone()
            })
            .collect();
        let c0 = process_cpu_seconds();
        let t = Instant::now();
        let out = engine.generate(&reqs, &cfg)?;
        wall += t.elapsed().as_secs_f64();
        cpu += process_cpu_seconds() - c0;
        comps += out.len();
        tokens += out.iter().map(|c| c.token_ids.len()).sum::<usize>();
    }
    Ok(ClientBench {
        completions: comps,
        tokens,
        wall_s: wall,
        client_cpu_s: cpu,
        client_cpu_ms_per_completion: 1e3 * cpu / comps.max(1) as f64,
        overhead_frac: cpu / wall.max(1e-9),
        tokens_per_s: tokens as f64 / wall.max(1e-9),
    })
}

/// Arguments of `cures bench inflight`.
#[derive(Debug, clap::Args)]
pub struct InflightBenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub endpoint: String,
    /// Model directory whose tokenizer (and chat template) encodes the prompts.
    #[arg(long)]
    pub model: PathBuf,
    /// Concurrency limits to try, in order (the sweep stops at the first level with an error).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4, 16, 64, 256, 1024])]
    pub levels: Vec<usize>,
    /// Requests per level, as a multiple of the level.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Completion tokens per request.
    #[arg(long, default_value_t = 8)]
    pub max_tokens: usize,
    /// Per-request timeout, seconds (a request queued behind the whole level must fit in it).
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// Retries per request (an error is a request that fails after them; any retry also marks
    /// the level as not clean).
    #[arg(long, default_value_t = 2)]
    pub max_retries: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// One level of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct InflightLevel {
    /// `rollout.max_concurrency`.
    pub level: usize,
    /// Requests sent (first attempts).
    pub requests: usize,
    /// Completions received.
    pub completions: usize,
    /// Most requests on the wire at once (measured by the client).
    pub peak_in_flight: u64,
    /// Retries (timeouts, connect errors, 5xx, 429, bad replies).
    pub retries: u64,
    /// Wall seconds of the level.
    pub wall_s: f64,
    /// Completions per wall second.
    pub completions_per_s: f64,
    /// Client CPU per completion, ms.
    pub client_cpu_ms_per_completion: f64,
    /// The error that ended the level, if any.
    pub error: Option<String>,
}

impl InflightLevel {
    /// Every completion arrived, nothing was retried, and the client really held `level`
    /// requests in flight.
    pub fn clean(&self) -> bool {
        self.error.is_none()
            && self.retries == 0
            && self.completions == self.requests
            && self.peak_in_flight == self.level as u64
    }
}

/// What `cures bench inflight` measured.
#[derive(Debug, Clone, Serialize)]
pub struct InflightBench {
    /// Server base URL.
    pub endpoint: String,
    /// The levels tried.
    pub levels: Vec<InflightLevel>,
    /// The highest level that was clean (and every level below it too); 0: none.
    pub max_sustained_in_flight: usize,
}

/// Sweep the concurrency limit against one server (see the module docs).
pub fn bench_inflight(a: &InflightBenchArgs) -> Result<InflightBench> {
    let tok = load_tokenizer(&a.model)?;
    let top = a.levels.iter().copied().max().unwrap_or(1);
    let all = prompts(&tok, a.rounds.max(1) * top, 1)?;
    let mut out = InflightBench {
        endpoint: a.endpoint.clone(),
        levels: Vec::new(),
        max_sustained_in_flight: 0,
    };
    for (li, &level) in a.levels.iter().enumerate() {
        let cfg = RolloutConfig {
            engine: EngineKind::Openai,
            endpoints: vec![EndpointConfig::new(&a.endpoint)],
            max_tokens: a.max_tokens,
            temperature: 1.0,
            max_concurrency: level.max(1),
            request_timeout_s: a.timeout_s,
            max_retries: a.max_retries,
            ..RolloutConfig::default()
        };
        let mut engine = OpenAiEngine::new(&cfg, Some(tok.clone()))?;
        engine.generate(&all[..1], &cfg)?; // warm-up: one connection, the model's caches
        let reqs: Vec<RolloutRequest> = all[..a.rounds.max(1) * level]
            .iter()
            .map(|r| RolloutRequest {
                seed: r.seed + 1_000_000 * (li as u64 + 1),
                ..r.clone()
            })
            .collect();
        let c0 = process_cpu_seconds();
        let t = Instant::now();
        let res = engine.generate(&reqs, &cfg);
        let wall_s = t.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - c0;
        let stats = engine.last_stats();
        let (completions, error) = match res {
            Ok(c) => (c.len(), None),
            Err(e) => (0, Some(format!("{e:#}"))),
        };
        let row = InflightLevel {
            level,
            requests: reqs.len(),
            completions,
            peak_in_flight: stats.peak_in_flight,
            retries: stats.retries,
            wall_s,
            completions_per_s: completions as f64 / wall_s.max(1e-9),
            client_cpu_ms_per_completion: 1e3 * cpu / completions.max(1) as f64,
            error,
        };
        eprintln!(
            "bench inflight: level {level}: {}/{} completions, peak {} in flight, {} retries, {:.1} s{}",
            row.completions,
            row.requests,
            row.peak_in_flight,
            row.retries,
            row.wall_s,
            row.error.as_deref().map_or(String::new(), |e| format!(", error: {e}"))
        );
        let clean = row.clean();
        out.levels.push(row);
        if !clean {
            break;
        }
        out.max_sustained_in_flight = level;
    }
    Ok(out)
}
