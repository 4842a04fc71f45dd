//! Setup shared by the commands that train or evaluate a policy: device, datasets, prompts,
//! held-out evaluation, the rollout engine and the weight sync.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Device;

use crate::config::Config;
use crate::data::Example;
use crate::policy::{ChatMessage, Policy, Tokenizer};
use crate::reward;
use crate::rollout::{EmbeddedEngine, EngineKind, RolloutEngine, RolloutRequest};
use crate::sync::WeightSync;

/// Resolve `model.device`; `cuda` on a process without CUDA is refused with the reason
/// (`crate::backend`).
pub fn device_of(cfg: &Config) -> Result<Device> {
    // Before libtorch is first asked about CUDA (it decides once per process).
    crate::backend::init();
    let d = match cfg.model.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => Device::cuda_if_available(),
    };
    crate::backend::check_device(d)
        .map_err(|e| anyhow::anyhow!("model.device = \"{}\": {e}", cfg.model.device))?;
    Ok(d)
}

/// Load one named dataset (`testbed` = the generated testbed's train or held-out split).
pub fn load_dataset(spec: &str, cfg: &Config, heldout: bool) -> Result<Vec<Example>> {
    if spec == "testbed" {
        let tb = crate::testbed::generate(&cfg.testbed);
        return Ok(if heldout { tb.heldout } else { tb.train });
    }
    let split = if heldout {
        &cfg.data.eval_split
    } else {
        &cfg.data.train_split
    };
    let fields = crate::data::Fields::from_config(&cfg.data, split);
    Ok(crate::data::load_with(Path::new(spec), &fields)?.examples)
}

/// The evaluation sets: (name, examples). The testbed adds one set per level.
pub fn eval_sets(cfg: &Config) -> Result<EvalSets> {
    let mut out = Vec::new();
    for spec in &cfg.data.eval {
        let mut ex = load_dataset(spec, cfg, true)?;
        if cfg.data.eval_max > 0 {
            ex.truncate(cfg.data.eval_max);
        }
        let name = if spec == "testbed" {
            "heldout".to_string()
        } else {
            Path::new(spec)
                .file_stem()
                .map_or_else(|| spec.clone(), |s| s.to_string_lossy().into_owned())
        };
        out.push((name, ex));
    }
    Ok(out)
}

/// Held-out sets: (name, problems).
pub type EvalSets = Vec<(String, Vec<Example>)>;

/// Drop (and count) the held-out problems whose prompts do not fit the context with
/// `rollout.max_tokens`, as [`fit_prompts`] does for training (a huge one is dropped before it
/// is tokenised). Returns the sets kept and one line per set that lost problems.
pub fn fit_eval_sets(
    tok: &Tokenizer,
    context: &ContextLimit,
    cfg: &Config,
    evals: EvalSets,
) -> Result<(EvalSets, Vec<String>)> {
    let limit = prompt_limit(cfg, context)?;
    let mut lines = Vec::new();
    let mut out = Vec::with_capacity(evals.len());
    for (name, ex) in evals {
        let total = ex.len();
        let mut kept = Vec::with_capacity(total);
        for e in ex {
            if e.problem.len() > limit.saturating_mul(64) {
                continue;
            }
            let p = encode_with(tok, cfg, &e.problem)
                .with_context(|| format!("data.eval {name}: encoding problem {:?}", e.id))?;
            if p.len() <= limit {
                kept.push(e);
            }
        }
        if kept.len() < total {
            lines.push(format!(
                "data.eval {name}: dropped {} of {total} problems longer than {limit} tokens \
                 (they would not fit the context with rollout.max_tokens = {}); the accuracy is \
                 over the {} kept",
                total - kept.len(),
                cfg.rollout.max_tokens,
                kept.len()
            ));
        }
        if kept.is_empty() && total > 0 {
            bail!(
                "data.eval {name}: all {total} problems are longer than {limit} tokens (the \
                 model's context minus rollout.max_tokens)"
            );
        }
        out.push((name, kept));
    }
    Ok((out, lines))
}

/// Tokenise a problem into its prompt ids (template, then chat template when configured).
pub fn encode_prompt(policy: &Policy, cfg: &Config, problem: &str) -> Result<Vec<i64>> {
    encode_with(policy.tokenizer(), cfg, problem)
}

/// [`encode_prompt`] with a tokenizer alone (no weights loaded).
pub fn encode_with(tok: &Tokenizer, cfg: &Config, problem: &str) -> Result<Vec<i64>> {
    let text = cfg.rollout.render(problem);
    if cfg.rollout.chat {
        tok.encode_chat(&[ChatMessage::new("user", &text)], true)
    } else {
        tok.encode(&text, true)
    }
}

/// Accuracy of `policy` on `examples` (greedy pass@1 when `run.eval_temperature` is 0, else the
/// mean over `run.eval_samples` samples per problem, with fixed seeds so successive evaluations
/// share their sampling noise); also per level when the examples carry levels.
pub fn evaluate(
    policy: &Policy,
    cfg: &Config,
    name: &str,
    examples: &[Example],
) -> Result<Vec<EvalScore>> {
    let prompts: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| encode_prompt(policy, cfg, &e.problem))
        .collect::<Result<_>>()?;
    let probs = answer_probs(policy, cfg, &prompts, examples)?;
    let mut sampling = cfg.rollout.clone();
    sampling.temperature = cfg.run.eval_temperature;
    let k = if cfg.run.eval_temperature == 0.0 {
        1
    } else {
        cfg.run.eval_samples.max(1)
    };
    let requests: Vec<RolloutRequest> = prompts
        .into_iter()
        .map(|p| RolloutRequest {
            prompt_ids: p,
            n: k,
            seed: 0,
        })
        .collect();
    let mut engine = EmbeddedEngine::new(policy);
    let completions = engine.generate(&requests, &sampling)?;
    let mut correct = vec![0usize; examples.len()];
    for c in &completions {
        let ok = reward::score(&c.text, &examples[c.request].answer, &cfg.reward).equivalent;
        correct[c.request] += usize::from(ok);
    }
    let score = |benchmark: String, idx: &[usize]| EvalScore {
        benchmark,
        problems: idx.len(),
        accuracy: idx.iter().map(|&i| correct[i]).sum::<usize>() as f64
            / (idx.len() * k).max(1) as f64,
        answer_prob: probs
            .as_ref()
            .map(|p| idx.iter().map(|&i| p[i]).sum::<f64>() / idx.len().max(1) as f64),
    };
    let all: Vec<usize> = (0..examples.len()).collect();
    let mut out = vec![score(name.to_string(), &all)];
    let mut levels: Vec<u32> = examples.iter().filter_map(|e| e.level).collect();
    levels.sort_unstable();
    levels.dedup();
    for l in levels {
        let idx: Vec<usize> = (0..examples.len())
            .filter(|&i| examples[i].level == Some(l))
            .collect();
        out.push(score(format!("{name}/L{l}"), &idx));
    }
    Ok(out)
}

/// One held-out score (a row of `eval.csv` without its step columns).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalScore {
    /// `heldout`, `heldout/L3`, or the set's name.
    pub benchmark: String,
    /// Problems scored.
    pub problems: usize,
    /// Accuracy (pass@1 or avg@k).
    pub accuracy: f64,
    /// Mean teacher-forced probability of the correct answer (None when off).
    pub answer_prob: Option<f64>,
}

/// The teacher-forced probability of each problem's correct answer given its prompt:
/// exp(Σ log p) over the tokens of `run.eval_answer_template` with `{answer}` filled in, one
/// forward pass per problem (micro-batched as the update is). None when the template is empty.
pub fn answer_probs(
    policy: &Policy,
    cfg: &Config,
    prompts: &[Vec<i64>],
    examples: &[Example],
) -> Result<Option<Vec<f64>>> {
    let template = &cfg.run.eval_answer_template;
    if template.is_empty() {
        return Ok(None);
    }
    let seqs: Vec<(Vec<i64>, Vec<i64>)> = prompts
        .iter()
        .zip(examples)
        .enumerate()
        .map(|(i, (p, e))| {
            let text = template.replace("{answer}", &e.answer);
            let ids = policy.tokenizer().encode(&text, false)?;
            anyhow::ensure!(
                !ids.is_empty(),
                "held-out problem {}: run.eval_answer_template with its answer {:?} is no tokens",
                i + 1,
                e.answer
            );
            Ok((p.clone(), ids))
        })
        .collect::<Result<_>>()?;
    let lps = tch::no_grad(|| {
        policy.token_logprobs(
            &seqs,
            cfg.train.micro_batch_tokens,
            cfg.train.logits_chunk_tokens,
        )
    })
    .context("the answer probabilities of the held-out problems")?;
    lps.iter()
        .map(|t| {
            let s = t
                .f_sum(tch::Kind::Double)
                .and_then(|s| s.f_double_value(&[]))
                .context("summing answer log-probs")?;
            Ok(s.exp())
        })
        .collect::<Result<Vec<f64>>>()
        .map(Some)
}

/// The rollout engine `rollout.engine` names: the embedded engine over `policy`, or the
/// OpenAI-compatible client over `rollout.endpoints` (the policy's tokenizer is its last resort
/// for servers that return no token ids).
pub fn make_engine<'a>(cfg: &Config, policy: &'a Policy) -> Result<Box<dyn RolloutEngine + 'a>> {
    Ok(match cfg.rollout.engine {
        EngineKind::Embedded => Box::new(EmbeddedEngine::new(policy)),
        EngineKind::Openai => Box::new(
            crate::rollout::OpenAiEngine::new(&cfg.rollout, Some(policy.tokenizer().clone()))
                .context("rollout.engine = \"openai\"")?,
        ),
    })
}

/// The weight sync `rollout.sync` names (checkpoints under `rollout.sync_dir`, else
/// `<run_dir>/sync`).
pub fn make_sync(cfg: &Config, run_dir: &Path) -> Result<Box<dyn WeightSync>> {
    crate::sync::from_config(&cfg.rollout, run_dir)
        .with_context(|| format!("rollout.sync = {:?}", cfg.rollout.sync))
}

/// The training prompts that fit the model: each encoded once, the overlong ones dropped.
#[derive(Debug)]
pub struct TrainSet {
    /// The prompts kept, in file order.
    pub examples: Vec<Example>,
    /// Their token ids (template applied).
    pub prompt_ids: Vec<Vec<i64>>,
    /// Prompts dropped as longer than `limit` tokens.
    pub dropped: usize,
    /// The longest prompt kept, in tokens.
    pub limit: usize,
}

/// The context a prompt and its completion must fit together, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextLimit {
    /// Tokens.
    pub tokens: i64,
    /// What sets it, for messages.
    pub source: String,
}

impl ContextLimit {
    /// The model's own context (`max_position_embeddings`).
    pub fn of_model(tokens: i64) -> Self {
        Self {
            tokens,
            source: "the model's max_position_embeddings".into(),
        }
    }

    /// The smaller of this and the servers' `max_model_len` (a server may run with a shorter
    /// context than the model's, e.g. `--max-model-len 2048`).
    pub fn with_servers(self, probe: Option<&crate::rollout::probe::Probe>) -> Self {
        match probe.and_then(|p| p.context()) {
            Some(c) if c < self.tokens => Self {
                tokens: c,
                source: "the servers' max_model_len (GET /v1/models)".into(),
            },
            _ => self,
        }
    }
}

/// The longest prompt a completion of `rollout.max_tokens` still fits after:
/// `data.max_prompt_tokens`, or the context minus `rollout.max_tokens`. A
/// `data.max_prompt_tokens` the context cannot hold is refused.
pub fn prompt_limit(cfg: &Config, context: &ContextLimit) -> Result<usize> {
    let tokens = usize::try_from(context.tokens).unwrap_or(0);
    let room = tokens.saturating_sub(cfg.rollout.max_tokens);
    if room == 0 {
        bail!(
            "rollout.max_tokens = {} leaves no room for a prompt in a context of {tokens} tokens \
             ({}): lower rollout.max_tokens",
            cfg.rollout.max_tokens,
            context.source
        );
    }
    match cfg.data.max_prompt_tokens {
        0 => Ok(room),
        m if m <= room => Ok(m),
        m => bail!(
            "data.max_prompt_tokens = {m} plus rollout.max_tokens = {} exceeds the context of \
             {tokens} tokens ({}): lower one of them to at most {room} prompt tokens",
            cfg.rollout.max_tokens,
            context.source
        ),
    }
}

/// Encode the training prompts and drop (and count) those over [`prompt_limit`]. A problem
/// whose text alone is far over the limit is dropped before it is tokenised, so a huge row
/// costs no memory.
pub fn fit_prompts(
    tok: &Tokenizer,
    context: &ContextLimit,
    cfg: &Config,
    examples: Vec<Example>,
) -> Result<TrainSet> {
    let limit = prompt_limit(cfg, context)?;
    let total = examples.len();
    let mut kept = Vec::with_capacity(total);
    let mut ids = Vec::with_capacity(total);
    for e in examples {
        // No tokenizer in use spends more than 64 bytes of text on one token.
        if e.problem.len() > limit.saturating_mul(64) {
            continue;
        }
        let p = encode_with(tok, cfg, &e.problem)
            .with_context(|| format!("encoding prompt {:?}", e.id))?;
        if p.len() <= limit {
            kept.push(e);
            ids.push(p);
        }
    }
    let dropped = total - kept.len();
    if kept.is_empty() {
        bail!(
            "data.train: all {total} prompts are longer than {limit} tokens (the model's context \
             minus rollout.max_tokens, or data.max_prompt_tokens)"
        );
    }
    if dropped > 0 {
        tracing::warn!(
            "data.train: dropped {dropped} of {total} prompts longer than {limit} tokens \
             (they would not fit the context with rollout.max_tokens = {})",
            cfg.rollout.max_tokens
        );
    }
    Ok(TrainSet {
        examples: kept,
        prompt_ids: ids,
        dropped,
        limit,
    })
}
