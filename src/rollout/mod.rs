//! Where rollouts come from: the [`RolloutEngine`] trait and its implementations — the embedded
//! in-process engine ([`embedded`], tch) and, later, OpenAI-compatible inference servers.
//!
//! Every engine returns, for each request, exactly `n` completions in request-major order, each
//! tagged with the weight version that produced it.

pub mod embedded;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use crate::policy::FinishReason;
pub use embedded::EmbeddedEngine;

/// `[rollout]`: which engine, how to sample, how a problem becomes a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// `embedded` (in-process tch engine sharing the trainer's weights).
    pub engine: EngineKind,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus mass (1 = off).
    pub top_p: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Maximum completion tokens.
    pub max_tokens: usize,
    /// Extra stop strings.
    pub stop: Vec<String>,
    /// Prompt template; `{problem}` is replaced by the problem text.
    pub prompt_template: String,
    /// Render the templated prompt as a user message with the tokenizer's chat template.
    pub chat: bool,
    /// Most sequences decoded together by the embedded engine (0 = all).
    pub max_batch: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            engine: EngineKind::Embedded,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 1024,
            stop: Vec::new(),
            prompt_template: "{problem}".to_string(),
            chat: false,
            max_batch: 0,
        }
    }
}

impl RolloutConfig {
    /// Range checks; errors name the key.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let bad = |k: &str, r: String| crate::config::ConfigError::Invalid {
            key: format!("rollout.{k}"),
            reason: r,
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad(
                "temperature",
                format!("must be ≥ 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad(
                "top_p",
                format!("must lie in (0, 1], got {}", self.top_p),
            ));
        }
        if self.max_tokens == 0 {
            return Err(bad("max_tokens", "must be at least 1".into()));
        }
        if !self.prompt_template.contains("{problem}") {
            return Err(bad(
                "prompt_template",
                format!("must contain {{problem}}, got {:?}", self.prompt_template),
            ));
        }
        Ok(())
    }

    /// The prompt text for a problem (before the chat template).
    pub fn render(&self, problem: &str) -> String {
        self.prompt_template.replace("{problem}", problem)
    }
}

/// Which engine produces rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// In-process tch engine.
    Embedded,
}

/// One prompt to roll out `n` times.
#[derive(Debug, Clone)]
pub struct RolloutRequest {
    /// Prompt token ids (chat template and BOS applied).
    pub prompt_ids: Vec<i64>,
    /// Completions wanted.
    pub n: usize,
    /// Seed of this request's sampling streams.
    pub seed: u64,
}

/// One completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Index of its request.
    pub request: usize,
    /// Generated token ids (stop token included).
    pub token_ids: Vec<i64>,
    /// Decoded text.
    pub text: String,
    /// Sampled tokens' log-probs, when the engine returns them.
    pub logprobs: Option<Vec<f32>>,
    /// Stop or length.
    pub finish_reason: FinishReason,
    /// Weight version of the policy that generated it.
    pub weight_version: u64,
}

/// A source of rollouts.
pub trait RolloutEngine {
    /// Exactly `requests[i].n` completions of every request, request-major.
    fn generate(
        &mut self,
        requests: &[RolloutRequest],
        sampling: &RolloutConfig,
    ) -> Result<Vec<Completion>>;
    /// The weight version completions are currently generated with.
    fn weight_version(&self) -> u64;
    /// Record that the weights of version `v` are now live (after a sync).
    fn set_weight_version(&mut self, v: u64);
}
