//! `cures eval`: benchmark accuracy of a checkpoint (embedded engine) or a server.
//!
//! For each benchmark file, every problem is rendered with a prompt template, rolled out k
//! times (once, greedily, at temperature 0), scored with the reward verifier, and summarised:
//!
//! - **pass@1**: greedy accuracy at temperature 0, else the mean per-sample accuracy;
//! - **avg@k**: mean over problems of (correct samples / k);
//! - **pass@k**: the unbiased estimator 1 − C(n−c, k)/C(n, k) ([`metrics::pass_at_k`]);
//! - **maj@k**: accuracy of the majority answer, equivalent answers voting together
//!   ([`metrics::majority_vote`]).
//!
//! Outputs (atomic): `eval.csv` (one row per benchmark) and `eval_samples.jsonl` (one object
//! per problem: completions, extracted answers, verdicts). The generation side is any
//! [`RolloutEngine`], so an inference server plugs in like the embedded engine.

pub mod bench;
pub mod metrics;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::policy::{parse_kind, ChatMessage, ModelConfig, Policy, Tokenizer};
use crate::reward::{self, extract, normalize, RewardConfig};
use crate::rollout::{EmbeddedEngine, RolloutConfig, RolloutEngine, RolloutRequest};

pub use bench::{load_bench, Bench};
pub use metrics::{majority_vote, pass_at_k};

/// The CurES paper's training prompt: the problem, then "Let's think step by step and output
/// the final answer within \boxed{}.", as the user turn of Qwen's chat format (the shipped
/// Qwen configs train and evaluate with it).
pub const CURES_PAPER: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{problem} Let's think step by step and output the final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n";

/// Qwen2.5-Math's own chain-of-thought prompt (its model card's system prompt).
pub const QWEN25_MATH_COT: &str = "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n";

/// How a problem becomes prompt text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    /// Built-in name, or the template string itself when custom (recorded in eval.csv).
    pub name: String,
    /// Template text; `{problem}` is replaced by the problem.
    pub text: String,
    /// Render the templated text as a user message with the tokenizer's chat template.
    pub chat: bool,
}

impl PromptTemplate {
    /// Built-in templates: `cures-paper`, `qwen25-math-cot`, `raw`, `testbed`, `chat` (the tokenizer's own
    /// chat template around the bare problem).
    pub fn builtin(name: &str) -> Option<Self> {
        let (text, chat) = match name {
            "qwen25-math-cot" => (QWEN25_MATH_COT, false),
            "cures-paper" => (CURES_PAPER, false),
            "raw" => ("{problem}", false),
            "testbed" => ("{problem}=", false),
            "chat" => ("{problem}", true),
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            text: text.to_string(),
            chat,
        })
    }

    /// A built-in name or a custom template string containing `{problem}`.
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some(t) = Self::builtin(spec) {
            return Ok(t);
        }
        if !spec.contains("{problem}") {
            bail!(
                "--template {spec:?}: not a built-in template (cures-paper, qwen25-math-cot, raw, testbed, chat) \
                 and no {{problem}} placeholder in it"
            );
        }
        Ok(Self {
            name: spec.to_string(),
            text: spec.to_string(),
            chat: false,
        })
    }

    /// The template of a config's `[rollout]` section.
    pub fn from_rollout(r: &RolloutConfig) -> Self {
        let builtin = ["cures-paper", "qwen25-math-cot", "raw", "testbed"]
            .into_iter()
            .filter_map(Self::builtin)
            .find(|t| t.text == r.prompt_template && !r.chat);
        builtin.unwrap_or_else(|| Self {
            name: if r.chat {
                format!("chat:{}", r.prompt_template)
            } else {
                r.prompt_template.clone()
            },
            text: r.prompt_template.clone(),
            chat: r.chat,
        })
    }

    /// The default for a model directory: `qwen25-math-cot` for Qwen2 models (config.json
    /// `model_type` = `qwen2`), else `raw`.
    pub fn default_for_model(dir: &Path) -> Result<Self> {
        let p = dir.join("config.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", p.display()))?;
        let qwen = v.get("model_type").and_then(|m| m.as_str()) == Some("qwen2");
        Self::builtin(if qwen { "qwen25-math-cot" } else { "raw" })
            .context("built-in template missing")
    }

    /// The prompt text of a problem (before the chat template, when `chat`).
    pub fn render(&self, problem: &str) -> String {
        self.text.replace("{problem}", problem)
    }

    /// Token ids of a problem's prompt.
    pub fn encode(&self, tok: &Tokenizer, problem: &str) -> Result<Vec<i64>> {
        let text = self.render(problem);
        if self.chat {
            tok.encode_chat(&[ChatMessage::new("user", &text)], true)
        } else {
            tok.encode(&text, true)
        }
    }
}

/// How to sample and score one evaluation.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Samples per problem (1 when the temperature is 0).
    pub k: usize,
    /// Sampling (temperature, max_tokens, top_p, stop, ...).
    pub sampling: RolloutConfig,
    /// The verifier's settings.
    pub reward: RewardConfig,
    /// Seed of the sampling streams.
    pub seed: u64,
    /// Problems per engine call.
    pub chunk: usize,
}

impl EvalSettings {
    /// Samples actually drawn per problem: k, or 1 for greedy decoding.
    pub fn samples(&self) -> usize {
        if self.sampling.temperature == 0.0 {
            1
        } else {
            self.k.max(1)
        }
    }
}

/// One row of `eval.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchRow {
    /// Benchmark name.
    pub benchmark: String,
    /// Problems evaluated.
    pub problems: usize,
    /// Samples per problem.
    pub k: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Prompt template (built-in name or the template string).
    pub template: String,
    /// Greedy (T = 0) or mean sampled accuracy.
    #[serde(rename = "pass@1")]
    pub pass_at_1: f64,
    /// Mean fraction of correct samples.
    #[serde(rename = "avg@k")]
    pub avg_at_k: f64,
    /// Unbiased pass@k.
    #[serde(rename = "pass@k")]
    pub pass_at_k: f64,
    /// Majority-vote accuracy.
    #[serde(rename = "maj@k")]
    pub maj_at_k: f64,
}

/// One line of `eval_samples.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProblemRecord {
    /// Benchmark name.
    pub benchmark: String,
    /// Problem id.
    pub id: String,
    /// Problem text.
    pub problem: String,
    /// Gold answer.
    pub answer: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// The completions.
    pub completions: Vec<String>,
    /// Completion tokens of each.
    pub completion_tokens: Vec<usize>,
    /// `stop` or `length` for each.
    pub finish_reasons: Vec<String>,
    /// Extracted answers (null: none).
    pub extracted: Vec<Option<String>>,
    /// Verdicts.
    pub correct: Vec<bool>,
    /// Correct samples.
    pub n_correct: usize,
    /// The majority answer (null: no sample had an answer).
    pub majority: Option<String>,
    /// Votes for it.
    pub majority_votes: usize,
    /// Whether it is correct.
    pub majority_correct: bool,
}

/// Score one problem's completions: the record (without the problem's fields filled by the
/// caller) from texts, token counts and finish reasons.
fn score_problem(
    ex: &crate::data::Example,
    benchmark: &str,
    prompt_tokens: usize,
    comps: Vec<(String, usize, String)>,
    cfg: &RewardConfig,
) -> ProblemRecord {
    let opts = extract::Options::from_config(cfg);
    let mut extracted = Vec::with_capacity(comps.len());
    let mut normalised = Vec::with_capacity(comps.len());
    let mut correct = Vec::with_capacity(comps.len());
    for (text, _, _) in &comps {
        let v = reward::score(text, &ex.answer, cfg);
        correct.push(v.equivalent);
        extracted.push(v.extracted);
        normalised
            .push(extract::extract(text, &opts).map(|a| normalize::normalize(&a.text, a.plain)));
    }
    let maj = majority_vote(&normalised, cfg.rel_tol);
    let n_correct = correct.iter().filter(|&&c| c).count();
    let (completions, completion_tokens, finish_reasons) = comps.into_iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut a, mut b, mut c), (t, n, f)| {
            a.push(t);
            b.push(n);
            c.push(f);
            (a, b, c)
        },
    );
    ProblemRecord {
        benchmark: benchmark.to_string(),
        id: ex.id.clone(),
        problem: ex.problem.clone(),
        answer: ex.answer.clone(),
        prompt_tokens,
        completions,
        completion_tokens,
        finish_reasons,
        majority: maj.and_then(|(i, _)| extracted[i].clone()),
        majority_votes: maj.map_or(0, |(_, v)| v),
        majority_correct: maj.is_some_and(|(i, _)| correct[i]),
        extracted,
        correct,
        n_correct,
    }
}

/// Summarise scored problems into a row of `eval.csv`.
pub fn summarise(
    benchmark: &str,
    template: &str,
    k: usize,
    temperature: f64,
    records: &[ProblemRecord],
) -> BenchRow {
    let p = records.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ProblemRecord) -> f64| records.iter().map(f).sum::<f64>() / p;
    let avg = mean(&|r| r.n_correct as f64 / r.correct.len().max(1) as f64);
    let pass1 = if temperature == 0.0 {
        mean(&|r| f64::from(u8::from(r.correct.first().copied().unwrap_or(false))))
    } else {
        mean(&|r| pass_at_k(r.correct.len(), r.n_correct, 1))
    };
    BenchRow {
        benchmark: benchmark.to_string(),
        problems: records.len(),
        k,
        temperature,
        template: template.to_string(),
        pass_at_1: pass1,
        avg_at_k: avg,
        pass_at_k: mean(&|r| pass_at_k(r.correct.len(), r.n_correct, k)),
        maj_at_k: mean(&|r| f64::from(u8::from(r.majority_correct))),
    }
}

/// A per-chunk sampling seed.
fn chunk_seed(seed: u64, bench: usize, chunk: usize) -> u64 {
    let mut x = seed
        ^ (bench as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (chunk as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// Evaluate one benchmark with `engine`; `encode` turns a problem into prompt ids; `progress`
/// is called with the number of problems finished after each engine call.
pub fn evaluate_bench(
    engine: &mut dyn RolloutEngine,
    encode: &dyn Fn(&str) -> Result<Vec<i64>>,
    bench: &Bench,
    bench_index: usize,
    template: &str,
    s: &EvalSettings,
    progress: &mut dyn FnMut(usize),
) -> Result<(BenchRow, Vec<ProblemRecord>)> {
    let n = s.samples();
    let mut records = Vec::with_capacity(bench.examples.len());
    for (ci, chunk) in bench.examples.chunks(s.chunk.max(1)).enumerate() {
        let seed = chunk_seed(s.seed, bench_index, ci);
        let requests: Vec<RolloutRequest> = chunk
            .iter()
            .map(|e| {
                Ok(RolloutRequest {
                    prompt_ids: encode(&e.problem).with_context(|| {
                        format!("{}: cannot encode problem {:?}", bench.path.display(), e.id)
                    })?,
                    n,
                    seed,
                })
            })
            .collect::<Result<_>>()?;
        let comps = engine
            .generate(&requests, &s.sampling)
            .with_context(|| format!("generating for {}", bench.path.display()))?;
        let mut per: Vec<Vec<(String, usize, String)>> = vec![Vec::new(); chunk.len()];
        for c in comps {
            let slot = per.get_mut(c.request).with_context(|| {
                format!(
                    "the engine returned a completion for unknown request {}",
                    c.request
                )
            })?;
            let finish = match c.finish_reason {
                crate::rollout::FinishReason::Stop => "stop",
                crate::rollout::FinishReason::Length => "length",
            };
            slot.push((c.text, c.token_ids.len(), finish.to_string()));
        }
        for ((e, r), comps) in chunk.iter().zip(&requests).zip(per) {
            if comps.len() != n {
                bail!(
                    "the engine returned {} completions for problem {:?} of {}, {} requested",
                    comps.len(),
                    e.id,
                    bench.path.display(),
                    n
                );
            }
            records.push(score_problem(
                e,
                &bench.name,
                r.prompt_ids.len(),
                comps,
                &s.reward,
            ));
        }
        progress(chunk.len());
    }
    let row = summarise(&bench.name, template, n, s.sampling.temperature, &records);
    Ok((row, records))
}

/// Options of `cures eval` (the CLI's arguments, resolved by the caller).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// HF checkpoint directory (embedded engine).
    pub model: Option<PathBuf>,
    /// OpenAI-compatible servers (`--endpoint`, repeatable).
    pub endpoints: Vec<String>,
    /// HF directory whose tokenizer encodes prompts for the servers (default: `model`).
    pub tokenizer: Option<PathBuf>,
    /// Benchmark files (or `testbed`).
    pub benches: Vec<String>,
    /// Samples per problem.
    pub k: usize,
    /// Temperature (default: the config's, else 1.0).
    pub temperature: Option<f64>,
    /// Maximum completion tokens (default: the config's when given, else 3000).
    pub max_tokens: Option<usize>,
    /// Template name or string (default: the config's when given, else by model type).
    pub template: Option<String>,
    /// Config (reward, rollout, model.device / dtype, testbed).
    pub config: Option<Config>,
    /// Output directory (default results/eval/<name or timestamp>).
    pub out: Option<PathBuf>,
    /// Name of the default output directory.
    pub name: Option<String>,
    /// Problems per benchmark at most (0 = all).
    pub limit: usize,
    /// Seed.
    pub seed: u64,
    /// Problems per engine call.
    pub chunk: usize,
    /// No progress bar.
    pub quiet: bool,
}

/// What `cures eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    /// Output directory.
    pub out: PathBuf,
    /// One row per benchmark.
    pub rows: Vec<BenchRow>,
    /// Wall seconds.
    pub wall_s: f64,
}

/// Write `eval.csv` and `eval_samples.jsonl` into `dir` (atomically).
pub fn write_outputs(dir: &Path, rows: &[BenchRow], records: &[ProblemRecord]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::metrics::write_csv_atomic(&dir.join("eval.csv"), rows)?;
    let path = dir.join("eval_samples.jsonl");
    let mut f = crate::metrics::AtomicFile::create(&path)?;
    for r in records {
        serde_json::to_writer(&mut f, r)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(b"\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    f.commit()
}

/// `cures eval`: load, generate, score, write. See the module docs.
pub fn run(opts: EvalOptions) -> Result<EvalSummary> {
    let t0 = std::time::Instant::now();
    if opts.benches.is_empty() {
        bail!("no benchmark: pass --bench FILE (one or more)");
    }
    if opts.k == 0 {
        bail!("--k must be at least 1");
    }
    let cfg = match &opts.config {
        Some(c) => c.clone(),
        None => Config::default(),
    };
    let mut sampling = cfg.rollout.clone();
    if let Some(t) = opts.temperature {
        sampling.temperature = t;
    } else if opts.config.is_none() {
        sampling.temperature = 1.0;
    }
    sampling.max_tokens = match (opts.max_tokens, &opts.config) {
        (Some(m), _) => m,
        (None, Some(c)) => c.rollout.max_tokens,
        (None, None) => 3000,
    };
    if !(sampling.temperature.is_finite() && sampling.temperature >= 0.0) {
        bail!("--temperature must be ≥ 0, got {}", sampling.temperature);
    }
    if sampling.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let mut benches = Vec::new();
    for spec in &opts.benches {
        let mut b = load_bench(spec, &cfg).with_context(|| format!("--bench {spec}"))?;
        if opts.limit > 0 {
            b.examples.truncate(opts.limit);
        }
        benches.push(b);
    }
    // Distinct names (two files with the same stem get a suffix).
    for i in 1..benches.len() {
        let base = benches[i].name.clone();
        let mut k = 2;
        while benches[..i].iter().any(|b| b.name == benches[i].name) {
            benches[i].name = format!("{base}-{k}");
            k += 1;
        }
    }
    let settings = EvalSettings {
        k: opts.k,
        sampling,
        reward: cfg.reward.clone(),
        seed: opts.seed,
        chunk: opts.chunk.max(1),
    };
    if settings.sampling.temperature == 0.0 && opts.k > 1 {
        tracing::warn!(
            "temperature 0: one greedy completion per problem (k = {} ignored)",
            opts.k
        );
    }
    let out = opts.out.clone().unwrap_or_else(|| {
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| chrono::Local::now().format("%Y%m%d-%H%M%S").to_string());
        PathBuf::from("results/eval").join(name)
    });

    let template_for = |dir: &Path| -> Result<PromptTemplate> {
        match (&opts.template, &opts.config) {
            (Some(t), _) => PromptTemplate::parse(t),
            (None, Some(c)) => Ok(PromptTemplate::from_rollout(&c.rollout)),
            (None, None) => PromptTemplate::default_for_model(dir),
        }
    };
    let rows_records = if !opts.endpoints.is_empty() {
        // Servers: prompts are encoded here (token-id prompts), with the served model's tokenizer.
        let dir = opts.tokenizer.as_ref().or(opts.model.as_ref()).context(
            "--endpoint needs --tokenizer DIR: the served model's HF directory (tokenizer.json, \
             config.json), to encode prompts exactly as the model expects",
        )?;
        let template = template_for(dir)?;
        let tokenizer = load_tokenizer(dir)?;
        let mut r = settings.sampling.clone();
        r.engine = crate::rollout::EngineKind::Openai;
        r.endpoints = opts
            .endpoints
            .iter()
            .map(|u| crate::rollout::EndpointConfig::new(u))
            .collect();
        let mut engine = crate::rollout::OpenAiEngine::new(&r, Some(tokenizer.clone()))
            .with_context(|| format!("--endpoint {}", opts.endpoints.join(" ")))?;
        let encode = |p: &str| template.encode(&tokenizer, p);
        let settings = EvalSettings {
            sampling: r,
            ..settings.clone()
        };
        evaluate_all(
            &mut engine,
            &encode,
            &benches,
            &template.name,
            &settings,
            opts.quiet,
        )?
    } else {
        let dir = opts
            .model
            .as_ref()
            .context("pass --model DIR (embedded engine) or --endpoint URL (server)")?;
        let template = template_for(dir)?;
        let device = crate::run::device_of(&cfg)?;
        let kind = parse_kind(&cfg.model.dtype)?;
        let policy = Policy::load(dir, device, kind)
            .with_context(|| format!("--model {}", dir.display()))?;
        let mut engine = EmbeddedEngine::new(&policy);
        let encode = |p: &str| template.encode(policy.tokenizer(), p);
        evaluate_all(
            &mut engine,
            &encode,
            &benches,
            &template.name,
            &settings,
            opts.quiet,
        )?
    };
    let (rows, records): (Vec<BenchRow>, Vec<Vec<ProblemRecord>>) =
        rows_records.into_iter().unzip();
    let records: Vec<ProblemRecord> = records.into_iter().flatten().collect();
    write_outputs(&out, &rows, &records)?;
    Ok(EvalSummary {
        out,
        rows,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// The tokenizer of an HF directory (EOS and pad ids from its config.json when present).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let (eos, pad) = if dir.join("config.json").exists() {
        let c = ModelConfig::load(dir)?;
        let pad = c
            .pad_token_id
            .as_ref()
            .and_then(|p| p.to_vec().first().copied());
        (c.eos_ids(), pad)
    } else {
        (Vec::new(), None)
    };
    Tokenizer::load(dir, &eos, pad).with_context(|| format!("tokenizer of {}", dir.display()))
}

/// Every benchmark through `engine`, with one progress bar over all problems.
pub fn evaluate_all(
    engine: &mut dyn RolloutEngine,
    encode: &dyn Fn(&str) -> Result<Vec<i64>>,
    benches: &[Bench],
    template: &str,
    s: &EvalSettings,
    quiet: bool,
) -> Result<Vec<(BenchRow, Vec<ProblemRecord>)>> {
    let total: usize = benches.iter().map(|b| b.examples.len()).sum();
    let bar = crate::metrics::progress_bar(total as u64, "eval", !quiet);
    let mut out = Vec::new();
    for (i, b) in benches.iter().enumerate() {
        bar.set_message(format!(
            "{} ({} problems x {})",
            b.name,
            b.examples.len(),
            s.samples()
        ));
        let mut progress = |k: usize| bar.inc(k as u64);
        out.push(evaluate_bench(
            engine,
            encode,
            b,
            i,
            template,
            s,
            &mut progress,
        )?);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// `cures eval` arguments.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// HF checkpoint directory, run with the embedded engine.
    #[arg(
        long,
        required_unless_present = "endpoint",
        conflicts_with = "endpoint"
    )]
    pub model: Option<PathBuf>,
    /// OpenAI-compatible server base URL, e.g. http://127.0.0.1:8000 (repeatable: requests
    /// are balanced over them).
    #[arg(long)]
    pub endpoint: Vec<String>,
    /// With --endpoint: the served model's HF directory, whose tokenizer encodes the prompts
    /// (and whose config.json picks the default template).
    #[arg(long, requires = "endpoint")]
    pub tokenizer: Option<PathBuf>,
    /// Benchmark files (JSONL/CSV; GSM8K, MATH, AIME/AMC layouts) or `testbed`.
    #[arg(long = "bench", required = true, num_args = 1..)]
    pub bench: Vec<String>,
    /// Samples per problem (pass@k, avg@k, maj@k).
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Sampling temperature (0 = one greedy completion; default: the config's, else 1.0).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Maximum completion tokens (default: the config's, else 3000).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Prompt template: cures-paper | qwen25-math-cot | raw | testbed | chat | a string with {problem}
    /// (default: the config's, else qwen25-math-cot for Qwen2 models, raw otherwise).
    #[arg(long)]
    pub template: Option<String>,
    /// TOML config: [reward], [rollout] (top_p, stop, template), [model] device/dtype, [testbed].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory (default results/eval/<name or timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the default output directory.
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many problems per benchmark (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Problems per generation call.
    #[arg(long, default_value_t = 32)]
    pub chunk: usize,
    /// Print one JSON summary object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The `cures eval` command: run, print a table, write the files.
pub fn cli(args: EvalArgs, set: &[String]) -> Result<()> {
    let config = match &args.config {
        Some(p) => Some(Config::load(p, set)?),
        None if !set.is_empty() => Some(Config::from_toml_str("", "<defaults>", set)?),
        None => None,
    };
    let s = run(EvalOptions {
        model: args.model,
        endpoints: args.endpoint,
        tokenizer: args.tokenizer,
        benches: args.bench,
        k: args.k,
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        template: args.template,
        config,
        out: args.out,
        name: args.name,
        limit: args.limit,
        seed: args.seed,
        chunk: args.chunk,
        quiet: args.quiet || args.json,
    })?;
    println!(
        "{:<20} {:>8} {:>4} {:>5} {:>8} {:>8} {:>8} {:>8}  template",
        "benchmark", "problems", "k", "temp", "pass@1", "avg@k", "pass@k", "maj@k"
    );
    for r in &s.rows {
        println!(
            "{:<20} {:>8} {:>4} {:>5} {:>8.4} {:>8.4} {:>8.4} {:>8.4}  {}",
            r.benchmark,
            r.problems,
            r.k,
            r.temperature,
            r.pass_at_1,
            r.avg_at_k,
            r.pass_at_k,
            r.maj_at_k,
            if r.template.len() > 40 {
                "custom"
            } else {
                r.template.as_str()
            }
        );
    }
    println!(
        "wrote {}/{{eval.csv,eval_samples.jsonl}} in {:.0} s",
        s.out.display(),
        s.wall_s
    );
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Example;
    use crate::rollout::{Completion, FinishReason};

    /// Answers "\boxed{<problem's answer>}" for even samples and "\boxed{0}" for odd ones.
    struct Fake {
        answers: Vec<String>,
    }

    impl RolloutEngine for Fake {
        fn generate(
            &mut self,
            reqs: &[RolloutRequest],
            _: &RolloutConfig,
        ) -> Result<Vec<Completion>> {
            let mut out = Vec::new();
            for (i, r) in reqs.iter().enumerate() {
                let gold = &self.answers[r.prompt_ids[0] as usize];
                for j in 0..r.n {
                    let text = if j % 2 == 0 {
                        format!("so \\boxed{{{gold}}}")
                    } else {
                        "\\boxed{0.50}".to_string()
                    };
                    out.push(Completion {
                        request: i,
                        token_ids: vec![1, 2],
                        text,
                        logprobs: None,
                        finish_reason: FinishReason::Stop,
                        weight_version: 0,
                    });
                }
            }
            Ok(out)
        }
        fn weight_version(&self) -> u64 {
            0
        }
        fn set_weight_version(&mut self, _: u64) {}
    }

    #[test]
    fn evaluate_bench_with_a_fake_engine() {
        let examples: Vec<Example> = (0..5)
            .map(|i| Example {
                id: format!("p{i}"),
                problem: i.to_string(),
                answer: if i == 4 {
                    "1/2".into()
                } else {
                    format!("{}", i + 10)
                },
                level: None,
            })
            .collect();
        let answers = examples.iter().map(|e| e.answer.clone()).collect();
        let bench = Bench {
            name: "fake".into(),
            path: "fake.jsonl".into(),
            examples,
        };
        let mut engine = Fake { answers };
        let encode = |p: &str| Ok(vec![p.parse::<i64>()?]);
        let sampling = RolloutConfig {
            temperature: 1.0,
            ..RolloutConfig::default()
        };
        let s = EvalSettings {
            k: 4,
            sampling,
            reward: RewardConfig::default(),
            seed: 0,
            chunk: 2,
        };
        let mut done = 0;
        let (row, recs) = evaluate_bench(&mut engine, &encode, &bench, 0, "raw", &s, &mut |k| {
            done += k
        })
        .unwrap();
        assert_eq!(done, 5);
        assert_eq!(recs.len(), 5);
        assert_eq!(row.k, 4);
        // Problems 0..3: 2 of 4 correct, the vote ties (first answer wins: the gold).
        // Problem 4 (gold 1/2): all 4 correct ("0.50" = 1/2), one cluster of 4 votes.
        assert!(
            (row.avg_at_k - (4.0 * 0.5 + 1.0) / 5.0).abs() < 1e-12,
            "{row:?}"
        );
        assert_eq!(row.pass_at_1, row.avg_at_k);
        assert_eq!(row.pass_at_k, 1.0);
        assert_eq!(row.maj_at_k, 1.0);
        assert_eq!(recs[4].majority_votes, 4);
        assert_eq!(recs[0].extracted[1].as_deref(), Some("0.50"));
        // Greedy: one sample each.
        let mut g = s.clone();
        g.sampling.temperature = 0.0;
        let (row, recs) =
            evaluate_bench(&mut engine, &encode, &bench, 0, "raw", &g, &mut |_| {}).unwrap();
        assert_eq!((row.k, recs[0].completions.len()), (1, 1));
        assert_eq!(row.pass_at_1, 1.0);
    }

    #[test]
    fn shipped_qwen_configs_use_the_papers_prompt() {
        for size in ["1.5b", "7b"] {
            for strategy in ["grpo", "cures"] {
                let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("configs/qwen2.5-math-{size}-{strategy}.toml"));
                let c = Config::load(&p, &[]).unwrap();
                assert_eq!(PromptTemplate::from_rollout(&c.rollout).name, "cures-paper");
                assert_eq!(c.batch.budget / c.batch.prompts, 8);
            }
        }
    }

    #[test]
    fn templates() {
        let t = PromptTemplate::parse("qwen25-math-cot").unwrap();
        assert_eq!(
            t.render("1+1?"),
            "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            PromptTemplate::parse("testbed").unwrap().render("2+2"),
            "2+2="
        );
        assert_eq!(
            PromptTemplate::parse("Q: {problem}\nA:")
                .unwrap()
                .render("x"),
            "Q: x\nA:"
        );
        assert!(PromptTemplate::parse("nope").is_err());
        let r = RolloutConfig {
            prompt_template: "{problem}=".into(),
            ..RolloutConfig::default()
        };
        assert_eq!(PromptTemplate::from_rollout(&r).name, "testbed");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "qwen2"}"#).unwrap();
        assert_eq!(
            PromptTemplate::default_for_model(dir.path()).unwrap().name,
            "qwen25-math-cot"
        );
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        assert_eq!(
            PromptTemplate::default_for_model(dir.path()).unwrap().name,
            "raw"
        );
    }
}
