//! What the server-side syncs share: a small blocking admin client over the endpoints'
//! routes, fresh per-version checkpoint directories with pruning, a probe that compares the
//! served log-prob of a greedy token with the trainer's, and publish timings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::policy::{ChatMessage, Policy};
use crate::rollout::EndpointConfig;

/// One server the weights go to.
pub struct Target {
    /// Base URL.
    pub base: String,
    /// `Authorization` header value (never printed).
    auth: Option<String>,
    /// Model name for probe requests (empty = resolve with `/v1/models`).
    pub model: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// A blocking JSON client over admin routes (own current-thread tokio runtime).
pub struct Admin {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// The servers.
    pub targets: Vec<Target>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("targets", &self.targets)
            .finish()
    }
}

fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.trim().chars().take(300).collect()
}

impl Admin {
    /// A client for `endpoints` (requests time out after `timeout`).
    pub fn new(endpoints: &[EndpointConfig], timeout: Duration) -> Result<Self> {
        if endpoints.is_empty() {
            bail!("weight sync needs at least one server in rollout.endpoints");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            // Admin calls are rare: a pooled connection the server has since closed (uvicorn's
            // keep-alive is 5 s) would fail a non-retryable /pause or reload.
            .pool_max_idle_per_host(0)
            .build()
            .context("cannot build the HTTP client")?;
        let targets = endpoints
            .iter()
            .enumerate()
            .map(|(k, e)| {
                Ok(Target {
                    base: e.base(),
                    auth: e
                        .auth_header()
                        .with_context(|| format!("rollout.endpoints[{k}]"))?,
                    model: e.model.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            rt,
            client,
            targets,
        })
    }

    /// `METHOD base+route` with an optional JSON body → (status, JSON or `null`). Transport
    /// errors are errors; HTTP errors are returned for the caller to judge.
    pub fn call(
        &self,
        t: &Target,
        method: reqwest::Method,
        route: &str,
        body: Option<&Value>,
    ) -> Result<(reqwest::StatusCode, Value, String)> {
        let url = format!("{}{route}", t.base);
        self.rt.block_on(async {
            let mut rb = self.client.request(method.clone(), &url);
            if let Some(a) = &t.auth {
                rb = rb.header(reqwest::header::AUTHORIZATION, a);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let r = rb
                .send()
                .await
                .with_context(|| format!("{method} {url}: no answer"))?;
            let status = r.status();
            let bytes = r
                .bytes()
                .await
                .with_context(|| format!("{method} {url}: reading the reply"))?;
            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok((status, v, snippet(&bytes)))
        })
    }

    /// POST that must succeed (2xx); returns the JSON reply.
    pub fn post_ok(&self, t: &Target, route: &str, body: Option<&Value>) -> Result<Value> {
        let (s, v, text) = self.call(t, reqwest::Method::POST, route, body)?;
        if !s.is_success() {
            bail!("POST {}{route}: HTTP {s}: {text}", t.base);
        }
        Ok(v)
    }

    /// GET that must succeed (2xx).
    pub fn get_ok(&self, t: &Target, route: &str) -> Result<Value> {
        let (s, v, text) = self.call(t, reqwest::Method::GET, route, None)?;
        if !s.is_success() {
            bail!("GET {}{route}: HTTP {s}: {text}", t.base);
        }
        Ok(v)
    }

    /// The model name probes use on `t` (its configured one, else the first served model).
    pub fn model_of(&self, t: &Target) -> Result<String> {
        if !t.model.is_empty() {
            return Ok(t.model.clone());
        }
        let v = self.get_ok(t, "/v1/models")?;
        v.get("data")
            .and_then(|d| d.get(0))
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("GET {}/v1/models: no data[0].id in {v}", t.base))
    }

    /// Greedy one-token probe: (token id, served log-prob) for `prompt` on `model`.
    pub fn probe_logprob(&self, t: &Target, model: &str, prompt: &[i64]) -> Result<(i64, f64)> {
        let body = json!({
            "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
            "logprobs": 0, "return_token_ids": true, "n": 1, "seed": 0,
        });
        let v = self.post_ok(t, "/v1/completions", Some(&body))?;
        let (choices, _) = crate::rollout::openai::parse_completion_response(&v)
            .with_context(|| format!("POST {}/v1/completions (probe)", t.base))?;
        let c = choices
            .first()
            .with_context(|| format!("POST {}/v1/completions (probe): no choice", t.base))?;
        let id = c.token_ids.as_ref().and_then(|t| t.first().copied());
        let lp = c.logprobs.as_ref().and_then(|l| l.first().copied());
        match (id, lp) {
            (Some(id), Some(lp)) => Ok((id, f64::from(lp))),
            _ => bail!(
                "POST {}/v1/completions (probe): the reply carries no token id / log-prob: {v}",
                t.base
            ),
        }
    }
}

/// The probe prompt: a chat-templated question when the tokenizer has a template (SmolLM2
/// emits EOS at once on raw text), else plain text.
pub fn probe_prompt(policy: &Policy) -> Result<Vec<i64>> {
    let tok = policy.tokenizer();
    let q = "What is 12 plus 30? Answer briefly.";
    if tok.chat_template().is_some() {
        tok.encode_chat(&[ChatMessage::new("user", q)], true)
    } else {
        tok.encode(q, true)
    }
}

/// The trainer's log-prob of `token` after `prompt`.
pub fn trainer_logprob(policy: &Policy, prompt: &[i64], token: i64) -> Result<f64> {
    let r = policy.logprobs(&[(prompt.to_vec(), vec![token])], 1 << 16)?;
    let t = r
        .first()
        .context("trainer log-prob: no result")?
        .logprobs
        .to_kind(tch::Kind::Double);
    Ok(t.double_value(&[0]))
}

/// Check that `t` serves what the trainer computes (greedy probe within `tol` nats).
pub fn verify_probe(
    admin: &Admin,
    t: &Target,
    model: &str,
    policy: &Policy,
    tol: f64,
) -> Result<(f64, f64)> {
    let prompt = probe_prompt(policy)?;
    let (tok, served) = admin.probe_logprob(t, model, &prompt)?;
    let ours = trainer_logprob(policy, &prompt, tok)?;
    let diff = (served - ours).abs();
    if diff.is_nan() || diff > tol {
        bail!(
            "{} ({model}) does not serve the published weights: probe token {tok} has log-prob {served:.4} there, {ours:.4} in the trainer (tolerance {tol}); the reload did not take effect",
            t.base
        );
    }
    Ok((served, ours))
}

/// Fresh per-version checkpoint directories under one root, older ones pruned.
#[derive(Debug, Clone)]
pub struct SyncDirs {
    root: PathBuf,
    keep: usize,
}

impl SyncDirs {
    /// Directories under `root` (made absolute: servers read the path), keeping the last `keep`.
    pub fn new(root: &Path, keep: usize) -> Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create sync directory {}", root.display()))?;
        let root = std::fs::canonicalize(root)
            .with_context(|| format!("cannot resolve {}", root.display()))?;
        Ok(Self {
            root,
            keep: keep.max(1),
        })
    }

    /// The (absolute) directory of `version`; removed first if a failed attempt left it.
    pub fn fresh(&self, version: u64) -> Result<PathBuf> {
        let d = self.root.join(format!("v{version:09}"));
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .with_context(|| format!("cannot remove stale {}", d.display()))?;
        }
        Ok(d)
    }

    /// Delete all but the newest `keep` version directories (and leftovers of failed writes).
    pub fn prune(&self) -> Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('v') && n[1..].chars().all(|c| c.is_ascii_digit()))
            .collect();
        names.sort();
        let drop = names.len().saturating_sub(self.keep);
        for n in &names[..drop] {
            let p = self.root.join(n);
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot prune {}", p.display()))?;
        }
        Ok(())
    }
}

/// Check that `tg` reports `weight_version` = `version` at `route` (`/weight_info` on vLLM,
/// `/get_model_info` on SGLang; a string or a number).
pub fn check_version(admin: &Admin, tg: &Target, route: &str, version: u64) -> Result<()> {
    let info = admin.get_ok(tg, route)?;
    let served = info.get("weight_version").cloned().unwrap_or(Value::Null);
    let matches = match &served {
        Value::String(s) => s == &version.to_string(),
        Value::Number(n) => n.as_u64() == Some(version),
        _ => false,
    };
    if !matches {
        bail!(
            "{}: GET {route} reports weight_version {served} after publishing {version}",
            tg.base
        );
    }
    Ok(())
}

/// Check a checkpoint directory before a server is told to load it: it must hold at least one
/// `.safetensors` file and every one must be whole (a corrupt file can take the server down:
/// SGLang 0.5.23 exits, vLLM's worker breaks). Errors name the directory or file.
pub fn check_checkpoint_dir(dir: &Path) -> Result<()> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?
    {
        let p = e
            .with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?
            .path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            crate::policy::weights::check_safetensors(&p)?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("{} holds no safetensors checkpoint", dir.display());
    }
    Ok(())
}

/// Bytes under a directory (for publish-rate figures).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
