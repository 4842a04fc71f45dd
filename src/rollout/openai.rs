//! Rollouts from OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp's llama-server)
//! over `POST /v1/completions` with token-id prompts (see `docs/serving.md`).
//!
//! One HTTP request per prompt carries that prompt's own `n`; servers that return fewer choices
//! than asked are topped up with further requests (different seeds). Requests are spread over
//! the configured endpoints by outstanding work, bounded by a global concurrency limit, timed
//! out, and retried with exponential back-off and jitter on connect errors, timeouts, 5xx, 429
//! and unparsable replies. An endpoint that keeps failing is taken out and probed back in with
//! `GET /health`. Every requested completion is accounted for exactly once: a reply is either
//! accepted whole (surplus choices dropped and counted) or not at all, and only one request per
//! prompt is in flight at a time.
//!
//! The engine owns a small tokio runtime and blocks on it, so the training loop stays sync.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::stream::ReplyReader;
use super::{Completion, FinishReason, RolloutConfig, RolloutEngine, RolloutRequest, RolloutStats};
use crate::config::ConfigError;
use crate::policy::Tokenizer;

/// How long a health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a down endpoint is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Where a server reports its weight version (`weight_version`): vLLM's, then SGLang's. A
/// streamed SGLang reply carries no version of its own, so this is what tags its completions.
const VERSION_ROUTES: &[&str] = &["/weight_info", "/get_model_info"];
/// How long an endpoint stays out the first time (doubled per further outage, up to the max).
const OUTAGE_BASE: Duration = Duration::from_secs(1);
const OUTAGE_MAX: Duration = Duration::from_secs(60);
/// At most one warning per endpoint in this period (the rest are counted).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// A reply may hold this much per requested token (a verbose llama-server stream with
/// log-probs is ~300 bytes a token), plus a fixed allowance; more is an error, not an OOM.
const REPLY_BYTES_PER_TOKEN: usize = 2048;
const REPLY_BYTES_BASE: usize = 16 << 20;

/// One inference server (`[[rollout.endpoints]]`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub url: String,
    /// Model name sent with each request (vLLM: the served model name or a LoRA name; empty =
    /// the first of `GET /v1/models`).
    pub model: String,
    /// API key sent as `Authorization: Bearer` (never written back to disk or logged; prefer
    /// `api_key_env`).
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// Name of an environment variable holding the API key.
    pub api_key_env: String,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000".to_string(),
            model: String::new(),
            api_key: None,
            api_key_env: String::new(),
        }
    }
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .finish()
    }
}

impl EndpointConfig {
    /// An endpoint at `url` with no key and the server's first model.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            ..Self::default()
        }
    }

    /// The base URL without a trailing `/` or `/v1`.
    pub fn base(&self) -> String {
        let u = self.url.trim_end_matches('/');
        u.strip_suffix("/v1").unwrap_or(u).to_string()
    }

    /// The `Authorization` header value, from `api_key` or the variable `api_key_env` names.
    pub fn auth_header(&self) -> Result<Option<String>> {
        if let Some(k) = &self.api_key {
            return Ok(Some(format!("Bearer {k}")));
        }
        if self.api_key_env.is_empty() {
            return Ok(None);
        }
        match std::env::var(&self.api_key_env) {
            Ok(k) if !k.is_empty() => Ok(Some(format!("Bearer {k}"))),
            _ => bail!(
                "endpoint {}: api_key_env names {:?}, which is not set",
                self.url,
                self.api_key_env
            ),
        }
    }
}

/// How new weights reach the rollout engine (`rollout.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    /// `embedded` for the embedded engine, `none` for servers.
    Auto,
    /// Nothing is published (the server keeps its weights: off-policy after step 1).
    #[serde(rename = "none")]
    Off,
    /// In-process: the embedded engine shares the trainer's tensors.
    Embedded,
    /// vLLM runtime LoRA adapters (`/v1/load_lora_adapter`); the policy must have LoRA enabled.
    VllmLora,
    /// vLLM full weights from disk (dev mode: pause → reload_weights → resume).
    VllmFull,
    /// SGLang full weights from disk (`/update_weights_from_disk`).
    SglangFull,
}

/// Checks of the `openai` engine's keys; errors name the key.
pub fn validate(cfg: &RolloutConfig) -> Result<(), ConfigError> {
    let bad = |k: &str, r: String| ConfigError::Invalid {
        key: format!("rollout.{k}"),
        reason: r,
    };
    let openai = cfg.engine == super::EngineKind::Openai;
    if openai && cfg.endpoints.is_empty() {
        return Err(bad(
            "endpoints",
            "the openai engine needs at least one server: [[rollout.endpoints]] url = \"http://127.0.0.1:8000\"".into(),
        ));
    }
    for (i, e) in cfg.endpoints.iter().enumerate() {
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
            return Err(bad(
                &format!("endpoints[{i}].url"),
                format!("must start with http:// or https://, got {:?}", e.url),
            ));
        }
    }
    if cfg.max_concurrency == 0 {
        return Err(bad("max_concurrency", "must be at least 1".into()));
    }
    let max = crate::config::MAX_DURATION_S;
    for (k, v, zero) in [
        ("request_timeout_s", cfg.request_timeout_s, false),
        ("progress_timeout_s", cfg.progress_timeout_s, true),
        ("endpoint_down_timeout_s", cfg.endpoint_down_timeout_s, true),
    ] {
        let low = if zero { v >= 0.0 } else { v > 0.0 };
        if !(v.is_finite() && low && v <= max) {
            return Err(bad(
                k,
                format!(
                    "must lie in {}0, {max}] seconds{}, got {v:?}",
                    if zero { "[" } else { "(" },
                    if k == "progress_timeout_s" {
                        " (0 = off)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    if cfg.endpoint_failures == 0 {
        return Err(bad("endpoint_failures", "must be at least 1".into()));
    }
    if cfg.sync_keep == 0 {
        return Err(bad("sync_keep", "must be at least 1".into()));
    }
    if crate::policy::parse_kind(&cfg.sync_dtype).is_err() {
        return Err(bad(
            "sync_dtype",
            format!("use bf16, f16 or f32, got {:?}", cfg.sync_dtype),
        ));
    }
    match (cfg.engine, cfg.sync) {
        (super::EngineKind::Embedded, SyncKind::VllmLora | SyncKind::VllmFull | SyncKind::SglangFull) => {
            return Err(bad(
                "sync",
                format!("{:?} publishes to servers; it needs rollout.engine = \"openai\"", cfg.sync),
            ))
        }
        (super::EngineKind::Openai, SyncKind::Embedded) => {
            return Err(bad(
                "sync",
                "embedded sync only works with the embedded engine (use vllm_full, vllm_lora, sglang_full or none)".into(),
            ))
        }
        _ => {}
    }
    Ok(())
}

/// One choice of a `/v1/completions` reply, as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedChoice {
    /// `index` (prompt-major).
    pub index: usize,
    /// Text.
    pub text: String,
    /// Token ids (`token_ids`, or the ids of llama-server's logprob entries).
    pub token_ids: Option<Vec<i64>>,
    /// The sampled tokens' log-probs (vLLM's `token_logprobs` or llama-server's `content[].logprob`).
    pub logprobs: Option<Vec<f32>>,
    /// Stop or length.
    pub finish_reason: FinishReason,
    /// Weight version the server reports for this choice (the oldest span's).
    pub weight_version: Option<u64>,
}

fn parse_version(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Array(a) => a.iter().filter_map(parse_version).min(),
        _ => None,
    }
}

fn parse_ids(v: &Value, what: &str) -> Result<Vec<i64>> {
    let arr = v
        .as_array()
        .with_context(|| format!("`{what}` is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(k, t)| {
            t.as_i64()
                .with_context(|| format!("`{what}[{k}]` is not an integer: {t}"))
        })
        .collect()
}

/// Parse a `/v1/completions` reply: its choices and the server's weight version (if it reports
/// one). Accepts vLLM's and SGLang's logprob shape (`logprobs.token_logprobs`) and
/// llama-server's chat-style shape (`logprobs.content[].logprob`, ids from `content[].id`).
pub fn parse_completion_response(v: &Value) -> Result<(Vec<ParsedChoice>, Option<u64>)> {
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .with_context(|| {
            let err = v
                .get("error")
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default();
            format!("reply has no `choices` array{err}")
        })?;
    // vLLM / llama-server: top-level fields; SGLang: `metadata.weight_version` (a label such
    // as "default" until the first update, which parses to none).
    let meta = v.get("metadata");
    let top_version = v
        .get("weight_version")
        .or_else(|| v.get("weight_versions"))
        .or_else(|| meta.and_then(|m| m.get("weight_version")))
        .and_then(parse_version);
    let mut out = Vec::with_capacity(choices.len());
    for (k, c) in choices.iter().enumerate() {
        let ctx = || format!("choices[{k}]");
        let index = c
            .get("index")
            .and_then(Value::as_u64)
            .map_or(k, |i| i as usize);
        let text = match c.get("text") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            Some(other) => bail!("{}: `text` is not a string: {other}", ctx()),
        };
        let finish_reason = match c.get("finish_reason").and_then(Value::as_str) {
            Some("length") | Some("max_tokens") => FinishReason::Length,
            Some("stop") | Some("eos") | Some("stop_sequence") | Some("end_turn") | None => {
                FinishReason::Stop
            }
            Some(other) => bail!("{}: finish_reason {other:?} (request not completed)", ctx()),
        };
        let mut token_ids = match c.get("token_ids") {
            None | Some(Value::Null) => None,
            Some(t) => Some(parse_ids(t, "token_ids").with_context(ctx)?),
        };
        let mut logprobs = None;
        if let Some(lp) = c.get("logprobs").filter(|l| !l.is_null()) {
            if let Some(tl) = lp.get("token_logprobs").and_then(Value::as_array) {
                let vals: Option<Vec<f32>> =
                    tl.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
                logprobs = vals;
            } else if let Some(content) = lp.get("content").and_then(Value::as_array) {
                let mut vals = Vec::with_capacity(content.len());
                let mut ids = Vec::with_capacity(content.len());
                for e in content {
                    vals.push(e.get("logprob").and_then(Value::as_f64).map(|f| f as f32));
                    ids.push(e.get("id").and_then(Value::as_i64));
                }
                logprobs = vals.into_iter().collect();
                if token_ids.is_none() {
                    token_ids = ids.into_iter().collect();
                }
            }
        }
        if token_ids.is_none() {
            // llama-server's native field.
            if let Some(t) = c.get("tokens").filter(|t| t.is_array()) {
                token_ids = parse_ids(t, "tokens").ok();
            }
        }
        let weight_version = c
            .get("weight_version")
            .or_else(|| c.get("weight_versions"))
            .and_then(parse_version)
            .or(top_version);
        out.push(ParsedChoice {
            index,
            text,
            token_ids,
            logprobs,
            finish_reason,
            weight_version,
        });
    }
    Ok((out, top_version))
}

/// A failed request: whether retrying may help, and what happened (names the URL).
#[derive(Debug)]
struct ReqError {
    retryable: bool,
    /// The server refused this request as such (HTTP 4xx other than 408/429, or a reply
    /// over the size bound): the prompt is skipped for the step instead of ending it.
    rejected: bool,
    msg: String,
}

/// Why one prompt's request failed for good.
struct Failure {
    msg: String,
    /// Refused by the server as such (see [`ReqError::rejected`]): skip the prompt.
    rejected: bool,
}

impl Failure {
    fn fatal(msg: String) -> Self {
        Self {
            msg,
            rejected: false,
        }
    }
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: usize,
    down: bool,
    probing: bool,
    last_probe: Option<Instant>,
    last_error: String,
    /// Index into [`VERSION_ROUTES`] of the route to ask for the served weight version (the
    /// earlier ones answered 404); past the end: the server reports none.
    version_route: usize,
    server_version: Option<u64>,
    /// Times taken out since its last successful completion: each doubles how long it stays
    /// out, whatever `/health` says meanwhile.
    outages: u32,
    /// Not probed before this.
    down_until: Option<Instant>,
    /// Rate limit of this endpoint's warnings.
    last_warn: Option<Instant>,
    suppressed: usize,
}

/// Warn at most once per [`WARN_EVERY`] per endpoint; the next warning says how many were held back.
fn warn_limited(h: &mut Health, line: &str) {
    if h.last_warn.is_some_and(|t| t.elapsed() < WARN_EVERY) {
        h.suppressed += 1;
        return;
    }
    match std::mem::take(&mut h.suppressed) {
        0 => tracing::warn!("{line}"),
        n => tracing::warn!(
            "{line} ({n} similar warning{} held back)",
            if n == 1 { "" } else { "s" }
        ),
    }
    h.last_warn = Some(Instant::now());
}

/// How long an endpoint taken out for the `k`-th time (k ≥ 1) stays out before its first probe.
fn outage_period(k: u32) -> Duration {
    OUTAGE_BASE
        .saturating_mul(1u32 << k.saturating_sub(1).min(16))
        .min(OUTAGE_MAX)
}

struct Endpoint {
    base: String,
    model: String,
    auth: Option<String>,
    outstanding: AtomicUsize,
    /// `logprobs` sent: 0 (only the sampled token's); raised to 1 for servers that return
    /// nothing for 0 (llama-server), whose chat-style entries then also carry the token ids.
    logprobs_k: AtomicUsize,
    health: Mutex<Health>,
}

impl Endpoint {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A poisoned lock only means another task panicked mid-update; the counters stay usable.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Opts {
    max_retries: usize,
    backoff_ms: u64,
    backoff_max_ms: u64,
    endpoint_failures: usize,
    down_timeout: Duration,
    /// No byte for this long fails the request (None = off).
    progress: Option<Duration>,
    /// Failed requests in a row over all endpoints that end the step (0 = off).
    max_consecutive: usize,
}

struct Shared {
    client: reqwest::Client,
    probe_client: reqwest::Client,
    endpoints: Vec<Endpoint>,
    sem: tokio::sync::Semaphore,
    opts: Opts,
    /// Generation requests on the wire now, and the most since the last `generate` began.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Failed requests since the last success, over all endpoints.
    consecutive_failures: AtomicUsize,
    /// Set once `max_consecutive` is reached: every request of this `generate` ends with it.
    abort: Mutex<Option<String>>,
}

/// Counts one request as on the wire while alive.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(sh: &'a Shared) -> Self {
        let now = sh.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        sh.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(sh)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements an endpoint's outstanding count when the request ends (or is cancelled).
struct Outstanding<'a> {
    ep: &'a Endpoint,
    n: usize,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.ep.outstanding.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// Why a health probe failed.
#[derive(Debug)]
enum ProbeError {
    /// Nothing answered (refused, unreachable, timed out).
    Unreachable(String),
    /// A server answered with an error status.
    Unhealthy(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Unreachable(m) | ProbeError::Unhealthy(m) => f.write_str(m),
        }
    }
}

/// `f`, or `Err(())` when it takes longer than `limit` (None: no limit).
async fn with_progress<F: std::future::Future>(
    limit: Option<Duration>,
    f: F,
) -> Result<F::Output, ()> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| ()),
        None => Ok(f.await),
    }
}

async fn probe(client: &reqwest::Client, ep: &Endpoint) -> Result<(), ProbeError> {
    let url = format!("{}/health", ep.base);
    let mut rb = client.get(&url);
    if let Some(a) = &ep.auth {
        rb = rb.header(reqwest::header::AUTHORIZATION, a);
    }
    match rb.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let body = r.bytes().await.unwrap_or_default();
            Err(ProbeError::Unhealthy(format!(
                "GET {url}: HTTP {status}: {}",
                snippet(&body)
            )))
        }
        Err(e) => Err(ProbeError::Unreachable(format!(
            "GET {url}: {}{}",
            if e.is_timeout() { "timed out: " } else { "" },
            err_chain(&e)
        ))),
    }
}

impl Shared {
    fn backoff(&self, attempt: usize) -> Duration {
        let base =
            self.opts.backoff_ms as f64 * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.opts.backoff_max_ms as f64);
        let jitter = 0.5 + rand::random::<f64>();
        Duration::from_micros((capped * jitter * 1000.0) as u64)
    }

    fn mark_ok(&self, i: usize) {
        self.consecutive_failures.store(0, Ordering::SeqCst);
        let mut h = self.endpoints[i].health();
        h.failures = 0;
        h.down = false;
        h.outages = 0;
    }

    /// The error every request of this `generate` ends with, once the run-level failure budget
    /// is spent.
    fn aborted(&self) -> Option<String> {
        self.abort.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn mark_fail(&self, i: usize, msg: &str) {
        let k = self.consecutive_failures.fetch_add(1, Ordering::SeqCst) + 1;
        if self.opts.max_consecutive > 0 && k >= self.opts.max_consecutive {
            let mut a = self.abort.lock().unwrap_or_else(|p| p.into_inner());
            if a.is_none() {
                *a = Some(format!(
                    "{k} requests in a row failed over all endpoints (rollout.max_consecutive_failures = {}); the last: {msg}",
                    self.opts.max_consecutive
                ));
            }
        }
        let ep = &self.endpoints[i];
        let mut h = ep.health();
        h.failures += 1;
        h.last_error = msg.to_string();
        if h.failures >= self.opts.endpoint_failures && !h.down {
            h.down = true;
            h.outages += 1;
            let period = outage_period(h.outages);
            h.down_until = Some(Instant::now() + period);
            let n = h.failures;
            let line = format!(
                "endpoint {} taken out for {:.0} s after {n} failures in a row: {msg}",
                ep.base,
                period.as_secs_f64()
            );
            warn_limited(&mut h, &line);
        }
    }

    /// Probe down endpoints whose last probe is old enough, in the background.
    fn probe_down(self: &Arc<Self>) {
        for i in 0..self.endpoints.len() {
            let due = {
                let mut h = self.endpoints[i].health();
                let now = Instant::now();
                let due = h.down
                    && !h.probing
                    && h.down_until.is_none_or(|t| now >= t)
                    && h.last_probe.is_none_or(|t| t.elapsed() >= PROBE_INTERVAL);
                if due {
                    h.probing = true;
                }
                due
            };
            if due {
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    let ep = &me.endpoints[i];
                    let r = probe(&me.probe_client, ep).await;
                    let mut h = ep.health();
                    h.probing = false;
                    h.last_probe = Some(Instant::now());
                    match r {
                        Ok(()) => {
                            // On probation: /health says nothing about completions, so one
                            // more failure takes it out again (for twice as long).
                            tracing::info!("endpoint {} answers /health again; trying it", ep.base);
                            h.down = false;
                            h.failures = me.opts.endpoint_failures.saturating_sub(1);
                        }
                        Err(e) => h.last_error = e.to_string(),
                    }
                });
            }
        }
    }

    /// The healthy endpoint with the least outstanding work (waits for one to come back,
    /// bounded by `endpoint_down_timeout_s`); reserves `n` completions on it.
    async fn pick(self: &Arc<Self>, n: usize) -> Result<(usize, Outstanding<'_>), ReqError> {
        let start = Instant::now();
        loop {
            if let Some(msg) = self.aborted() {
                return Err(ReqError {
                    rejected: false,
                    retryable: false,
                    msg,
                });
            }
            self.probe_down();
            let best = (0..self.endpoints.len())
                .filter(|&i| !self.endpoints[i].health().down)
                .min_by_key(|&i| self.endpoints[i].outstanding.load(Ordering::SeqCst));
            if let Some(i) = best {
                let ep = &self.endpoints[i];
                ep.outstanding.fetch_add(n, Ordering::SeqCst);
                return Ok((i, Outstanding { ep, n }));
            }
            if start.elapsed() >= self.opts.down_timeout {
                let why: Vec<String> = self
                    .endpoints
                    .iter()
                    .map(|e| format!("{} ({})", e.base, e.health().last_error))
                    .collect();
                return Err(ReqError {
                    rejected: false,
                    retryable: false,
                    msg: format!(
                            "every endpoint has been out for {:.0} s (rollout.endpoint_down_timeout_s): {}",
                        self.opts.down_timeout.as_secs_f64(),
                        why.join("; ")
                    ),
                });
            }
            tokio::time::sleep(PROBE_INTERVAL / 2).await;
        }
    }

    async fn post(&self, i: usize, body: &Value) -> Result<Value, ReqError> {
        let ep = &self.endpoints[i];
        let url = format!("{}/v1/completions", ep.base);
        let mut rb = self.client.post(&url).json(body);
        if let Some(a) = &ep.auth {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        let stalled = |when: &str| {
            ReqError {
            rejected: false,
            retryable: true,
            msg: format!(
                "POST {url}: no bytes for {:.0} s {when} (rollout.progress_timeout_s): the server accepted the request but does not answer",
                self.opts.progress.map_or(0.0, |d| d.as_secs_f64())
            ),
        }
        };
        let transport = |e: reqwest::Error, when: &str| ReqError {
            rejected: false,
            retryable: true,
            msg: format!(
                "POST {url}: {when}{}{}",
                if e.is_timeout() {
                    "timed out (rollout.request_timeout_s): "
                } else {
                    ""
                },
                err_chain(&e)
            ),
        };
        let mut resp = with_progress(self.opts.progress, rb.send())
            .await
            .map_err(|()| stalled("waiting for the reply"))?
            .map_err(|e| transport(e, ""))?;
        let status = resp.status();
        let want = body["n"].as_u64().unwrap_or(1) as usize
            * body["max_tokens"].as_u64().unwrap_or(0) as usize;
        let limit = REPLY_BYTES_BASE.saturating_add(want.saturating_mul(REPLY_BYTES_PER_TOKEN));
        let mut reply = ReplyReader::default();
        loop {
            let chunk = with_progress(self.opts.progress, resp.chunk())
                .await
                .map_err(|()| stalled("in the middle of the reply"))?
                .map_err(|e| transport(e, "reading the reply: "))?;
            let Some(chunk) = chunk else { break };
            reply.bytes += chunk.len();
            if reply.bytes > limit {
                return Err(ReqError {
                    rejected: true,
                    retryable: false,
                    msg: format!(
                        "POST {url}: the reply is over {} MiB for {want} tokens; refusing to buffer more",
                        limit >> 20
                    ),
                });
            }
            if status.is_success() {
                reply.feed(&chunk).map_err(|e| ReqError {
                    rejected: false,
                    retryable: true,
                    msg: format!("POST {url}: {e}"),
                })?;
            } else if reply.raw.len() < 4096 {
                reply.raw.extend_from_slice(&chunk);
            }
        }
        if !status.is_success() {
            let retryable = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            return Err(ReqError {
                rejected: status.is_client_error() && !retryable,
                retryable,
                msg: format!("POST {url}: HTTP {status}: {}", snippet(&reply.raw)),
            });
        }
        reply.finish().map_err(|e| ReqError {
            rejected: false,
            retryable: true,
            msg: format!("POST {url}: {e}"),
        })
    }

    /// One prompt's request, retried (possibly on other endpoints) until it succeeds or the
    /// retries are spent.
    async fn request(self: Arc<Self>, body: Value, n: usize) -> Result<Reply, Failure> {
        let mut attempt = 0usize;
        loop {
            if let Some(msg) = self.aborted() {
                return Err(Failure::fatal(msg));
            }
            let res = {
                let _permit =
                    self.sem.acquire().await.map_err(|_| {
                        Failure::fatal("the request limiter was closed".to_string())
                    })?;
                let (i, _out) = self.pick(n).await.map_err(|e| Failure::fatal(e.msg))?;
                let _wire = InFlight::enter(&self);
                let mut b = body.clone();
                b["model"] = Value::String(self.endpoints[i].model.clone());
                let k = self.endpoints[i].logprobs_k.load(Ordering::SeqCst);
                b["logprobs"] = json!(k);
                let r = self.post(i, &b).await.and_then(|v| {
                    parse_completion_response(&v).map_err(|e| ReqError {
                        rejected: false,
                        retryable: true,
                        msg: format!(
                            "POST {}/v1/completions: bad reply: {e:#}",
                            self.endpoints[i].base
                        ),
                    })
                });
                (i, k, r)
            };
            match res {
                (i, 0, Ok((choices, _)))
                    if !choices.is_empty()
                        && choices
                            .iter()
                            .all(|c| c.token_ids.is_none() && c.logprobs.is_none()) =>
                {
                    // No ids and no log-probs for `logprobs: 0`: ask this endpoint for 1 from
                    // now on and resend (the reply is discarded whole, so nothing is counted).
                    self.endpoints[i].logprobs_k.store(1, Ordering::SeqCst);
                    tracing::info!(
                        "{}: no token ids or log-probs for logprobs = 0; using logprobs = 1",
                        self.endpoints[i].base
                    );
                }
                (i, _, Ok((choices, version))) => {
                    self.mark_ok(i);
                    let version = version.or_else(|| self.endpoints[i].health().server_version);
                    return Ok(Reply {
                        choices,
                        version,
                        retries: attempt as u64,
                    });
                }
                (i, _, Err(e)) => {
                    if e.retryable {
                        self.mark_fail(i, &e.msg);
                        if let Some(msg) = self.aborted() {
                            return Err(Failure::fatal(msg));
                        }
                    }
                    if !e.retryable || attempt >= self.opts.max_retries {
                        return Err(Failure {
                            msg: format!(
                                "{} (gave up after {} attempt{})",
                                e.msg,
                                attempt + 1,
                                if attempt == 0 { "" } else { "s" }
                            ),
                            rejected: e.rejected,
                        });
                    }
                    attempt += 1;
                    tracing::info!("retry {attempt}: {}", e.msg);
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
    }

    /// Refresh each endpoint's reported weight version ([`VERSION_ROUTES`]), where supported.
    async fn refresh_versions(&self) {
        let futs = self.endpoints.iter().map(|ep| async move {
            loop {
                let route = {
                    let h = ep.health();
                    match VERSION_ROUTES.get(h.version_route) {
                        Some(r) if !h.down => *r,
                        _ => return,
                    }
                };
                let url = format!("{}{route}", ep.base);
                let mut rb = self.probe_client.get(&url);
                if let Some(a) = &ep.auth {
                    rb = rb.header(reqwest::header::AUTHORIZATION, a);
                }
                match rb.send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: Option<Value> = r.json().await.ok();
                        ep.health().server_version = v
                            .as_ref()
                            .and_then(|v| v.get("weight_version"))
                            .and_then(parse_version);
                        return;
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                        ep.health().version_route += 1;
                    }
                    // Unknown now: tag with the version the orchestrator published.
                    _ => {
                        ep.health().server_version = None;
                        return;
                    }
                }
            }
        });
        futures_join_all(futs).await;
    }
}

async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    for f in futs.collect::<Vec<_>>() {
        f.await;
    }
}

struct Reply {
    choices: Vec<ParsedChoice>,
    version: Option<u64>,
    retries: u64,
}

/// Rollouts from OpenAI-compatible servers. See the module docs.
pub struct OpenAiEngine {
    /// Taken out while `generate` blocks on it (the async part borrows `self`).
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    tokenizer: Option<Tokenizer>,
    version: u64,
    max_staleness: u64,
    stats: RolloutStats,
    /// Requests of the last `generate` that the servers refused (no completions returned).
    skipped: Vec<usize>,
}

impl std::fmt::Debug for OpenAiEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEngine")
            .field(
                "endpoints",
                &self
                    .shared
                    .endpoints
                    .iter()
                    .map(|e| &e.base)
                    .collect::<Vec<_>>(),
            )
            .field("version", &self.version)
            .finish()
    }
}

impl OpenAiEngine {
    /// Connect to `cfg.endpoints`: every one must answer `GET /health` (fails fast otherwise);
    /// empty model names are resolved with `GET /v1/models`. `tokenizer` is the last resort
    /// for servers that return no token ids.
    pub fn new(cfg: &RolloutConfig, tokenizer: Option<Tokenizer>) -> Result<Self> {
        validate(&RolloutConfig {
            engine: super::EngineKind::Openai,
            sync: SyncKind::Auto,
            ..cfg.clone()
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP client runtime")?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.request_timeout_s))
            .connect_timeout(Duration::from_secs(5))
            // A streamed reply's connection is not reused: llama-server closes it after the
            // stream (the next request on it fails with "connection closed before message
            // completed"), and a new local connection costs nothing beside a generation.
            .pool_max_idle_per_host(if cfg.stream { 0 } else { cfg.max_concurrency })
            // Below uvicorn's 5 s keep-alive, so a training step's pause doesn't leave pooled
            // connections the server has already closed.
            .pool_idle_timeout(Duration::from_secs(3))
            .build()
            .context("cannot build the HTTP client")?;
        let probe_client = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            // Rare calls: never reuse a connection the server may have closed meanwhile.
            .pool_max_idle_per_host(0)
            .build()
            .context("cannot build the HTTP client")?;
        let mut endpoints = Vec::new();
        for (k, e) in cfg.endpoints.iter().enumerate() {
            let auth = e
                .auth_header()
                .with_context(|| format!("rollout.endpoints[{k}]"))?;
            endpoints.push(Endpoint {
                base: e.base(),
                model: e.model.clone(),
                auth,
                outstanding: AtomicUsize::new(0),
                logprobs_k: AtomicUsize::new(0),
                health: Mutex::new(Health::default()),
            });
        }
        // Fail fast: every endpoint must be up; resolve model names.
        rt.block_on(async {
            for ep in &mut endpoints {
                match probe(&probe_client, ep).await {
                    Ok(()) => {}
                    Err(ProbeError::Unreachable(e)) => bail!(
                        "no server at {} ({e}): start one with scripts/serve-vllm.sh MODEL PORT, or fix rollout.endpoints",
                        ep.base
                    ),
                    Err(ProbeError::Unhealthy(e)) => bail!(
                        "the server at {} is up but not healthy ({e}): see its log (it may still be loading the model)",
                        ep.base
                    ),
                }
                if ep.model.is_empty() {
                    ep.model = first_model(&probe_client, ep).await?;
                }
            }
            Ok(())
        })?;
        let shared = Arc::new(Shared {
            client,
            probe_client,
            endpoints,
            sem: tokio::sync::Semaphore::new(cfg.max_concurrency),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            opts: Opts {
                max_retries: cfg.max_retries,
                backoff_ms: cfg.backoff_ms,
                backoff_max_ms: cfg.backoff_max_ms.max(cfg.backoff_ms),
                endpoint_failures: cfg.endpoint_failures,
                down_timeout: Duration::from_secs_f64(cfg.endpoint_down_timeout_s),
                progress: (cfg.progress_timeout_s > 0.0)
                    .then(|| Duration::from_secs_f64(cfg.progress_timeout_s)),
                max_consecutive: cfg.max_consecutive_failures,
            },
            consecutive_failures: AtomicUsize::new(0),
            abort: Mutex::new(None),
        });
        Ok(Self {
            rt: Some(rt),
            shared,
            tokenizer,
            version: 0,
            max_staleness: cfg.max_staleness,
            stats: RolloutStats::default(),
            skipped: Vec::new(),
        })
    }

    /// The endpoints' base URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.shared
            .endpoints
            .iter()
            .map(|e| e.base.clone())
            .collect()
    }

    /// The model name sent to endpoint `i`.
    pub fn model(&self, i: usize) -> Option<&str> {
        self.shared.endpoints.get(i).map(|e| e.model.as_str())
    }

    fn body(req: &RolloutRequest, n: usize, seed: u64, s: &RolloutConfig) -> Value {
        let mut b = json!({
            "model": "",
            "prompt": req.prompt_ids,
            "n": n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "logprobs": 0,
            "return_token_ids": true,
            "stream": s.stream,
        });
        if s.seed_requests {
            b["seed"] = json!(seed & 0x7fff_ffff);
        }
        if s.top_k > 0 {
            b["top_k"] = json!(s.top_k);
        }
        if !s.stop.is_empty() {
            b["stop"] = json!(s.stop);
        }
        if !s.stop_token_ids.is_empty() {
            b["stop_token_ids"] = json!(s.stop_token_ids);
        }
        b
    }

    fn make_completion(
        &mut self,
        request: usize,
        c: ParsedChoice,
        version: u64,
    ) -> Result<Completion> {
        let token_ids = match c.token_ids {
            Some(t) => t,
            None => {
                let tok = self.tokenizer.as_ref().with_context(|| {
                    format!("the server returned no token ids for request {request} and no tokenizer is loaded to fall back on")
                })?;
                self.stats.retokenized += 1;
                tok.encode(&c.text, false)?
            }
        };
        let logprobs = c.logprobs.filter(|l| l.len() == token_ids.len());
        Ok(Completion {
            request,
            token_ids,
            text: c.text,
            logprobs,
            finish_reason: c.finish_reason,
            weight_version: version,
        })
    }

    async fn run(
        shared: Arc<Shared>,
        jobs: Vec<(usize, Value, usize)>,
    ) -> tokio::task::JoinSet<(usize, usize, Result<Reply, Failure>)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, body, n) in jobs {
            let sh = Arc::clone(&shared);
            set.spawn(async move { (i, n, sh.request(body, n).await) });
        }
        set
    }
}

/// What `GET /health` says now of every endpoint, for the error that ends a step: a server that
/// exited (connection refused) reads differently from one that is up but fails completions.
async fn health_now(shared: &Shared) -> String {
    let mut parts = Vec::new();
    for ep in &shared.endpoints {
        parts.push(match probe(&shared.probe_client, ep).await {
            Ok(()) => format!(
                "{} answers /health but does not complete requests: see its log",
                ep.base
            ),
            Err(ProbeError::Unreachable(e)) => format!(
                "{} no longer answers ({e}): the server exited or was stopped; see its log \
                 (on vLLM-CPU, `CPU Generator does not use offset` is the chunked-prefill crash \
                 docs/serving.md describes), restart it, then continue with `cures run --resume`",
                ep.base
            ),
            Err(ProbeError::Unhealthy(e)) => {
                format!("{} is up but unhealthy ({e}): see its log", ep.base)
            }
        });
    }
    format!("GET /health now: {}", parts.join("; "))
}

async fn first_model(client: &reqwest::Client, ep: &Endpoint) -> Result<String> {
    let url = format!("{}/v1/models", ep.base);
    let mut rb = client.get(&url);
    if let Some(a) = &ep.auth {
        rb = rb.header(reqwest::header::AUTHORIZATION, a);
    }
    let v: Value = rb
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    v.get("data")
        .and_then(|d| d.get(0))
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| {
            format!("GET {url}: no `data[0].id` in {v}; set rollout.endpoints[].model")
        })
}

/// Seed of the `round`-th request for one prompt (round 0 = the request's own seed).
fn round_seed(seed: u64, round: u64) -> u64 {
    if round == 0 {
        return seed;
    }
    let mut x = seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

impl RolloutEngine for OpenAiEngine {
    fn generate(
        &mut self,
        requests: &[RolloutRequest],
        sampling: &RolloutConfig,
    ) -> Result<Vec<Completion>> {
        self.stats = RolloutStats::default();
        *self.shared.abort.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.consecutive_failures.store(0, Ordering::SeqCst);
        self.shared.peak_in_flight.store(0, Ordering::SeqCst);
        self.skipped.clear();
        let mut have: Vec<Vec<Completion>> = vec![Vec::new(); requests.len()];
        let mut round = vec![0u64; requests.len()];
        let mut idle_rounds = vec![0usize; requests.len()];
        let max_idle = self.shared.opts.max_retries + 3;
        let jobs: Vec<(usize, Value, usize)> = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.n > 0)
            .map(|(i, r)| (i, Self::body(r, r.n, r.seed, sampling), r.n))
            .collect();
        let live = jobs.len();
        let shared = Arc::clone(&self.shared);
        let rt = self
            .rt
            .take()
            .context("openai engine: the HTTP runtime is gone (an earlier call panicked)")?;
        let result = rt.block_on(async {
            shared.refresh_versions().await;
            self.stats.requests += jobs.len() as u64;
            let mut set = Self::run(Arc::clone(&shared), jobs).await;
            let mut seen_versions: HashSet<u64> = HashSet::new();
            while let Some(joined) = set.join_next().await {
                let (i, asked, reply) = joined.map_err(|e| anyhow!("a rollout task failed: {e}"))?;
                let reply = match reply {
                    Ok(r) => r,
                    // Refused as such (e.g. prompt + max_tokens over the server's context):
                    // this prompt sits the step out, unless most of the step is refused.
                    Err(f) if f.rejected && 2 * (self.skipped.len() + 1) <= live => {
                        tracing::warn!("request {i} (n = {asked}) skipped for this step: {}", f.msg);
                        self.skipped.push(i);
                        have[i].clear();
                        continue;
                    }
                    Err(f) if f.rejected => bail!(
                        "request {i} (n = {asked}): {}; more than half of the step's {live} requests were refused, so this is not one bad prompt: check rollout.max_tokens against the server's context (--max-model-len) and the request fields",
                        f.msg
                    ),
                    Err(f) => bail!(
                        "request {i} (n = {asked}): {}; {}",
                        f.msg,
                        health_now(&shared).await
                    ),
                };
                self.stats.retries += reply.retries;
                self.stats.requests += reply.retries;
                let need = requests[i].n - have[i].len();
                let mut accepted = 0usize;
                let got = reply.choices.len();
                for c in reply.choices {
                    if accepted == need {
                        break;
                    }
                    let v = c.weight_version.or(reply.version).unwrap_or(self.version);
                    seen_versions.insert(v);
                    if v.saturating_add(self.max_staleness) < self.version {
                        self.stats.stale_completions += 1;
                        continue;
                    }
                    let comp = self.make_completion(i, c, v)?;
                    have[i].push(comp);
                    accepted += 1;
                }
                self.stats.surplus += got.saturating_sub(need) as u64;
                if have[i].len() < requests[i].n {
                    idle_rounds[i] = if accepted == 0 { idle_rounds[i] + 1 } else { 0 };
                    if idle_rounds[i] > max_idle {
                        bail!(
                            "request {i}: {} of {} completions after {} requests; the servers return no (fresh) choices (weight versions seen: {:?}, trainer at {})",
                            have[i].len(),
                            requests[i].n,
                            round[i] + 1,
                            seen_versions,
                            self.version
                        );
                    }
                    round[i] += 1;
                    self.stats.topups += 1;
                    self.stats.requests += 1;
                    let left = requests[i].n - have[i].len();
                    let body = Self::body(&requests[i], left, round_seed(requests[i].seed, round[i]), sampling);
                    let sh = Arc::clone(&shared);
                    set.spawn(async move { (i, left, sh.request(body, left).await) });
                }
            }
            Ok(())
        });
        self.rt = Some(rt);
        self.stats.peak_in_flight = self.shared.peak_in_flight.load(Ordering::SeqCst) as u64;
        result?;
        let out: Vec<Completion> = have.into_iter().flatten().collect();
        self.stats.skipped_requests = self.skipped.len() as u64;
        let expected: usize = requests
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.skipped.contains(i))
            .map(|(_, r)| r.n)
            .sum();
        if out.len() != expected {
            bail!(
                "openai engine: {} completions, {} requested",
                out.len(),
                expected
            );
        }
        Ok(out)
    }

    fn weight_version(&self) -> u64 {
        self.version
    }

    fn last_skipped(&self) -> &[usize] {
        &self.skipped
    }

    fn set_weight_version(&mut self, v: u64) {
        self.version = v;
    }

    fn last_stats(&self) -> RolloutStats {
        self.stats
    }
}

/// CPU seconds (user + system) this process has used so far (Linux `/proc/self/stat`; 0
/// elsewhere). Resolution: one clock tick (10 ms).
pub fn process_cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the `(comm)` part; utime and stime are fields 14 and 15 (1-based).
    let Some(rest) = s.rfind(')').map(|p| &s[p + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |k: usize| f.get(k).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_shape() {
        let v = json!({"choices": [
            {"index": 0, "text": " 4", "token_ids": [230, 2], "finish_reason": "stop",
             "logprobs": {"tokens": [" 4", "<|im_end|>"], "token_logprobs": [-0.5, -0.1]}},
            {"index": 1, "text": " 5", "token_ids": [231], "finish_reason": "length",
             "logprobs": null}
        ], "usage": {"prompt_tokens": 3}});
        let (c, ver) = parse_completion_response(&v).unwrap();
        assert_eq!(ver, None);
        assert_eq!(c[0].token_ids, Some(vec![230, 2]));
        assert_eq!(c[0].logprobs, Some(vec![-0.5, -0.1]));
        assert_eq!(c[1].finish_reason, FinishReason::Length);
        assert_eq!(c[1].logprobs, None);
    }

    #[test]
    fn parses_llama_server_shape() {
        let v = json!({"choices": [
            {"index": 0, "text": "hi", "finish_reason": "stop",
             "logprobs": {"content": [{"id": 17, "token": "h", "logprob": -1.0, "bytes": [104]},
                                      {"id": 18, "token": "i", "logprob": -2.0}]}}
        ], "weight_version": "7"});
        let (c, ver) = parse_completion_response(&v).unwrap();
        assert_eq!(ver, Some(7));
        assert_eq!(c[0].token_ids, Some(vec![17, 18]));
        assert_eq!(c[0].logprobs, Some(vec![-1.0, -2.0]));
        assert_eq!(c[0].weight_version, Some(7));
    }

    #[test]
    fn parses_sglang_shape() {
        // SGLang 0.5.23 with "return_token_ids": true, after an update to version 7.
        let v = json!({"object": "text_completion", "choices": [
            {"index": 0, "text": " a town", "token_ids": [253, 3102],
             "logprobs": {"text_offset": [-1, -1], "token_logprobs": [-0.8, -2.1],
                          "tokens": [" a", " town"], "top_logprobs": []},
             "finish_reason": "length", "matched_stop": null}],
            "usage": {"prompt_tokens": 6, "completion_tokens": 2},
            "metadata": {"weight_version": "7",
                         "weight_versions": [{"version": "7", "start": 0, "end": 2}]}});
        let (c, ver) = parse_completion_response(&v).unwrap();
        assert_eq!(ver, Some(7));
        assert_eq!(c[0].token_ids, Some(vec![253, 3102]));
        assert_eq!(c[0].logprobs, Some(vec![-0.8, -2.1]));
        assert_eq!(c[0].weight_version, Some(7));
        // Before any update SGLang labels its weights "default": no version.
        let v = json!({"choices": [{"index": 0, "text": "x", "token_ids": [5],
            "finish_reason": "stop"}], "metadata": {"weight_version": "default"}});
        assert_eq!(parse_completion_response(&v).unwrap().1, None);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for v in [
            json!(null),
            json!({"choices": 3}),
            json!({"choices": [{"text": 5}]}),
            json!({"choices": [{"token_ids": ["a"]}]}),
            json!({"choices": [{"finish_reason": "abort"}]}),
            json!({"error": {"message": "boom"}}),
        ] {
            assert!(parse_completion_response(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn debug_redacts_key() {
        let e = EndpointConfig {
            api_key: Some("sk-secret".into()),
            ..EndpointConfig::new("http://x")
        };
        assert!(!format!("{e:?}").contains("sk-secret"));
        let toml = toml::to_string(&e).unwrap();
        assert!(!toml.contains("sk-secret"));
        assert_eq!(
            e.auth_header().unwrap().as_deref(),
            Some("Bearer sk-secret")
        );
    }

    #[test]
    fn base_strips_v1() {
        assert_eq!(EndpointConfig::new("http://a:1/v1/").base(), "http://a:1");
    }
}
