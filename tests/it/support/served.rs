//! The parts of the real-server contract tests that vLLM and SGLang share: the generation
//! check and a short `cures run` with the server as the engine.

use std::path::Path;
use std::time::Instant;

use cures::policy::Policy;
use cures::rollout::{OpenAiEngine, RolloutConfig, RolloutEngine, RolloutRequest};
use tch::Kind;

/// Per-prompt n (1, 3, 2) on `prompt`: every completion has token ids straight from the server
/// and one finite log-prob per token, and the first one's log-probs are within 0.5 nats of the
/// tch policy's (bf16 server vs f32 trainer). Returns the requests.
pub fn check_generation(
    engine: &mut OpenAiEngine,
    cfg: &RolloutConfig,
    policy: &Policy,
    prompt: &[i64],
) -> Vec<RolloutRequest> {
    let ns = [1usize, 3, 2];
    let reqs: Vec<RolloutRequest> = ns
        .iter()
        .enumerate()
        .map(|(i, &n)| RolloutRequest {
            prompt_ids: prompt.to_vec(),
            n,
            seed: 10 + i as u64,
        })
        .collect();
    let comps = engine.generate(&reqs, cfg).expect("generate");
    let mut per = [0usize; 3];
    for c in &comps {
        per[c.request] += 1;
        assert!(!c.token_ids.is_empty());
        let lp = c.logprobs.as_ref().expect("the server returns log-probs");
        assert_eq!(lp.len(), c.token_ids.len());
        assert!(lp.iter().all(|x| x.is_finite() && *x <= 0.0));
    }
    assert_eq!(per, ns);
    assert_eq!(
        engine.last_stats().retokenized,
        0,
        "token ids come from the server"
    );
    let c = &comps[0];
    let ours = policy
        .logprobs(&[(prompt.to_vec(), c.token_ids.clone())], 1 << 16)
        .expect("logprobs");
    let ours: Vec<f64> = Vec::<f64>::try_from(ours[0].logprobs.to_kind(Kind::Double)).expect("vec");
    let served = c.logprobs.as_ref().expect("lp");
    let max_diff = ours
        .iter()
        .zip(served)
        .map(|(a, b)| (a - f64::from(*b)).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "served vs tch log-probs over {} tokens: max |diff| {max_diff:.4}",
        ours.len()
    );
    assert!(
        max_diff < 0.5,
        "served log-probs differ from the tch policy by {max_diff}"
    );
    // Streamed (the default) and unstreamed replies carry the same completion: greedy, so
    // the two must agree token for token.
    assert!(cfg.stream, "the shipped default streams");
    let greedy = |engine: &mut OpenAiEngine, stream: bool| {
        let c = RolloutConfig {
            temperature: 0.0,
            stream,
            ..cfg.clone()
        };
        let out = engine.generate(&reqs[..1], &c).expect("greedy generate");
        (out[0].token_ids.clone(), out[0].finish_reason)
    };
    let streamed = greedy(engine, true);
    assert_eq!(streamed, greedy(engine, false), "streamed vs unstreamed");
    reqs
}

/// A 2-step `cures run` (GRPO, 2 prompts × 2 completions, last-number reward, chat prompts)
/// with the server at `url` as the engine and `sync` publishing every step, in-process (the
/// shared target directory's binary may be rebuilt by others meanwhile). Returns steps.csv.
pub fn short_run(model: &Path, url: &str, sync: &str, out: &Path) -> String {
    short_run_with(model, url, sync, out, &[])
}

/// [`short_run`] with more `--set`s (applied last).
pub fn short_run_with(model: &Path, url: &str, sync: &str, out: &Path, extra: &[&str]) -> String {
    let t = Instant::now();
    let mut sets: Vec<String> = vec![
        format!("model.path={}", model.display()),
        "model.device=cpu".into(),
        "data.eval=[]".into(),
        "batch.prompts=2".into(),
        "batch.budget=4".into(),
        "curriculum.strategy=grpo".into(),
        "iterations.subsets=1".into(),
        "iterations.steps=2".into(),
        "iterations.init_rollouts=0".into(),
        "run.steps=2".into(),
        "train.kl_coef=0".into(),
        "reward.fallback_last_number=true".into(),
        "rollout.engine=openai".into(),
        "rollout.chat=true".into(),
        "rollout.max_tokens=24".into(),
        format!("rollout.sync={sync}"),
        format!("rollout.endpoints=[{{url = \"{url}\", model = \"smol\"}}]"),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let config = cures::config::Config::from_toml_str("", "<short_run>", &sets).expect("config");
    let summary = cures::run::run(cures::run::RunOptions {
        config,
        out: Some(out.to_path_buf()),
        resume: false,
        overwrite: false,
        quiet: true,
    })
    .unwrap_or_else(|e| panic!("cures run with {sync}: {e:#}"));
    eprintln!(
        "cures run (2 steps, {sync} each step) in {:.1} s; mean s/step: generate {:.2}, train {:.2}, sync {:.2}",
        t.elapsed().as_secs_f64(),
        summary.phase_s[2],
        summary.phase_s[4],
        summary.phase_s[5]
    );
    let steps = std::fs::read_to_string(out.join("steps.csv")).expect("steps.csv");
    assert_eq!(steps.lines().count(), 3, "header + 2 steps:\n{steps}");
    // Every step published: its write and reload times are in its row.
    let rows =
        cures::rundir::read_csv::<cures::run::StepRow>(&out.join("steps.csv")).expect("rows");
    for r in &rows {
        assert!(
            r.sync_write_s > 0.0 && r.sync_load_s > 0.0,
            "sync timings of step {}: {r:?}",
            r.step
        );
    }
    steps
}
