//! What a run needs from its inference servers, asked before it starts (`cures check --probe`,
//! and `cures run` before anything heavy loads): every `[[rollout.endpoints]]` is up and healthy,
//! serves the model the config names, tells its context (`max_model_len`), and has the routes the
//! chosen `rollout.sync` calls. Nothing on a server changes: routes are probed with `GET`, which
//! a POST-only route that exists answers with 405 and a missing one with 404
//! (docs/serving.md, "Serving for a run").

use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{RolloutConfig, SyncKind};
use crate::sync::http::{Admin, Target};

/// How long one probe request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What one endpoint said.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    /// Base URL.
    pub url: String,
    /// The model name requests will carry (the config's, or the first served one when empty).
    pub model: String,
    /// Every model name the server lists in `GET /v1/models`.
    pub served: Vec<String>,
    /// The served model's context, when the server says (vLLM, SGLang).
    pub max_model_len: Option<i64>,
}

/// What every endpoint said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Probe {
    /// One per endpoint, in config order.
    pub servers: Vec<ServerInfo>,
}

impl Probe {
    /// The smallest context any server declares.
    pub fn context(&self) -> Option<i64> {
        self.servers.iter().filter_map(|s| s.max_model_len).min()
    }

    /// One line per endpoint, for the user.
    pub fn lines(&self, sync: SyncKind) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| {
                let ctx = s
                    .max_model_len
                    .map_or("context not reported".to_string(), |c| {
                        format!("max_model_len {c}")
                    });
                format!(
                    "endpoint {}: healthy, serves {:?}, {ctx}; routes for rollout.sync = {} present",
                    s.url,
                    s.model,
                    sync_name(sync)
                )
            })
            .collect()
    }
}

fn sync_name(s: SyncKind) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// The routes a sync calls (probed with GET: 404 = missing), and what to do when one is missing.
fn sync_routes(sync: SyncKind) -> (&'static [&'static str], &'static str) {
    match sync {
        SyncKind::VllmFull => (
            &["/collective_rpc", "/weight_info"],
            "rollout.sync = \"vllm_full\" reloads weights through vLLM's dev-mode routes: start \
             vLLM with VLLM_SERVER_DEV_MODE=1 (scripts/serve-vllm.sh sets it; trusted networks \
             only), or use rollout.sync = \"vllm_lora\"",
        ),
        SyncKind::VllmLora => (
            &["/v1/load_lora_adapter", "/v1/unload_lora_adapter"],
            "rollout.sync = \"vllm_lora\" loads adapters at runtime: start vLLM with \
             VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and --enable-lora --max-lora-rank R \
             (scripts/serve-vllm.sh MODEL PORT --lora)",
        ),
        SyncKind::SglangFull => (
            &["/update_weights_from_disk", "/get_model_info"],
            "rollout.sync = \"sglang_full\" needs SGLang's /update_weights_from_disk \
             (scripts/serve-sglang.sh): is this an SGLang server?",
        ),
        SyncKind::Auto | SyncKind::Off | SyncKind::Embedded => (&[], ""),
    }
}

/// Ask every endpoint what the run needs; one error lists every problem found, each naming its
/// endpoint's URL and the fix.
pub fn probe(cfg: &RolloutConfig) -> Result<Probe> {
    if cfg.endpoints.is_empty() {
        bail!(
            "rollout.engine = \"openai\" needs at least one [[rollout.endpoints]] (e.g. \
             url = \"http://127.0.0.1:8000\", model = \"policy\")"
        );
    }
    let admin = Admin::new(&cfg.endpoints, PROBE_TIMEOUT)?;
    let mut problems = Vec::new();
    let mut servers = Vec::new();
    for (k, t) in admin.targets.iter().enumerate() {
        match probe_one(&admin, t, cfg) {
            Ok(info) => servers.push(info),
            Err(p) => problems.push(format!("rollout.endpoints[{k}] {}: {p}", t.base)),
        }
    }
    if !problems.is_empty() {
        bail!(
            "the inference servers cannot serve this run:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(Probe { servers })
}

fn probe_one(admin: &Admin, t: &Target, cfg: &RolloutConfig) -> Result<ServerInfo, String> {
    let get = |route: &str| {
        admin
            .call(t, Method::GET, route, None)
            .map_err(|e| format!("{e:#}"))
    };
    let (status, _, body) = get("/health").map_err(|e| {
        format!(
            "no server answers ({e}): start one (scripts/serve-vllm.sh MODEL PORT, \
             scripts/serve-sglang.sh MODEL PORT) or fix the url"
        )
    })?;
    if status != StatusCode::OK {
        return Err(format!(
            "GET /health answers {status} ({body}): the server is up but not healthy (still \
             loading the model?); see its log"
        ));
    }
    let (status, models, body) = get("/v1/models")?;
    if !status.is_success() {
        return Err(format!(
            "GET /v1/models answers {status} ({body}): not an OpenAI-compatible server?"
        ));
    }
    let entries: Vec<&Value> = models
        .get("data")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let served: Vec<String> = entries
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    let Some(first) = served.first() else {
        return Err(format!(
            "GET /v1/models lists no model ({body}): is the server still loading?"
        ));
    };
    // `vllm_lora` requests name the adapter, which the first publish loads. SGLang answers any
    // model name, and lists as its name the path of the last disk reload (`sglang_full`).
    let unchecked = (cfg.sync == SyncKind::VllmLora && t.model == cfg.lora_name)
        || cfg.sync == SyncKind::SglangFull;
    let model = if t.model.is_empty() {
        first.clone()
    } else {
        t.model.clone()
    };
    if !unchecked && !served.contains(&model) {
        return Err(format!(
            "serves {served:?}, not {model:?}: set this endpoint's model = {first:?}, or start \
             the server with --served-model-name {model} (scripts/serve-vllm.sh: \
             SERVED_NAME={model})"
        ));
    }
    // The base model's context (an adapter has its base's).
    let ctx_of = |name: &str| {
        entries
            .iter()
            .find(|m| m.get("id").and_then(Value::as_str) == Some(name))
            .and_then(|m| m.get("max_model_len"))
            .and_then(Value::as_i64)
    };
    let max_model_len = ctx_of(&model).or_else(|| ctx_of(first));
    let (routes, fix) = sync_routes(cfg.sync);
    for route in routes {
        let (status, _, _) = get(route)?;
        if status == StatusCode::NOT_FOUND {
            return Err(format!("no {route} route: {fix}"));
        }
    }
    Ok(ServerInfo {
        url: t.base.clone(),
        model,
        served,
        max_model_len,
    })
}
