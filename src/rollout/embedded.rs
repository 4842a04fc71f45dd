//! The embedded engine: batched sampling with the trainer's own policy in-process (tch, KV
//! cache). It shares the trainer's weight tensors, so a weight "sync" costs nothing.

use anyhow::{bail, Result};

use super::{Completion, RolloutConfig, RolloutEngine, RolloutRequest};
use crate::policy::{Policy, SamplingParams};

/// Rollouts from an in-process [`Policy`].
pub struct EmbeddedEngine<'a> {
    policy: &'a Policy,
    version: u64,
}

impl<'a> EmbeddedEngine<'a> {
    /// An engine over `policy` (whose weights the trainer updates in place).
    pub fn new(policy: &'a Policy) -> Self {
        Self { policy, version: 0 }
    }
}

impl RolloutEngine for EmbeddedEngine<'_> {
    fn generate(
        &mut self,
        requests: &[RolloutRequest],
        sampling: &RolloutConfig,
    ) -> Result<Vec<Completion>> {
        let wanted: Vec<&RolloutRequest> = requests.iter().filter(|r| r.n > 0).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // One batched call; per-row RNG streams come from (seed, prompt index, sample index),
        // so the first request's seed fixes the whole call deterministically.
        let params = SamplingParams {
            n: 1,
            n_per_prompt: wanted.iter().map(|r| r.n).collect(),
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            max_tokens: sampling.max_tokens,
            seed: wanted[0].seed,
            stop_strings: sampling.stop.clone(),
            max_batch: sampling.max_batch,
            ..Default::default()
        };
        let prompts: Vec<Vec<i64>> = wanted.iter().map(|r| r.prompt_ids.clone()).collect();
        let gens = self.policy.generate(&prompts, &params)?;
        let index: Vec<usize> = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.n > 0)
            .map(|(i, _)| i)
            .collect();
        let out: Vec<Completion> = gens
            .into_iter()
            .map(|g| Completion {
                request: index[g.prompt_index],
                token_ids: g.token_ids,
                text: g.text,
                logprobs: Some(g.logprobs),
                finish_reason: g.finish_reason,
                weight_version: self.version,
            })
            .collect();
        let expected: usize = wanted.iter().map(|r| r.n).sum();
        if out.len() != expected {
            bail!(
                "embedded engine returned {} completions, {} requested",
                out.len(),
                expected
            );
        }
        Ok(out)
    }

    fn weight_version(&self) -> u64 {
        self.version
    }

    fn set_weight_version(&mut self, v: u64) {
        self.version = v;
    }
}
