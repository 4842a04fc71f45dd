//! `cures run`: the paper's Algorithm 1 (cures-algorithm.md §5–§6, §9).
//!
//! ```text
//! for each step:
//!     if an iteration starts: N' pre-rollouts of its subset → posterior (+ σ statistics);
//!                             the reference policy becomes the current weights
//!     sample m prompts from ρ, allocate n_i (Σ = N)        curriculum
//!     generate n_i completions of each                    rollout engine
//!     score them                                          reward
//!     observe (s_i, n_i)                                  curriculum
//!     advantages → PPO + KL → AdamW                        train
//!     publish the new weights                             sync
//!     log the step; every k steps: eval, posterior trace, checkpoint
//! ```
//!
//! Everything the loop needs to continue lives in the checkpoint (policy, reference, optimiser,
//! curriculum state with its RNG, counters), so `--resume` continues exactly. Every file of the
//! run directory is replaced atomically: killing the process never leaves a half-written file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::config::Config;
use crate::curriculum::{Curriculum, CurriculumState, StepPlan};
use crate::data::Example;
use crate::metrics::{write_atomic, write_csv_atomic as write_csv};
use crate::policy::{parse_kind, ChatMessage, Policy};
use crate::reward;
use crate::rollout::{Completion, EmbeddedEngine, EngineKind, RolloutEngine, RolloutRequest};
use crate::sync::WeightSync;
use crate::train::{advantages, GradRollout, GroupRewards, Sample, Trainer};

/// One row of `steps.csv` (cures-algorithm.md §9).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRow {
    /// Step (1-based: the number of updates applied after it).
    pub step: u64,
    /// Iteration (0-based).
    pub iteration: u64,
    /// Prompts drawn (m, before merging duplicates).
    pub prompts: usize,
    /// Distinct prompts.
    pub distinct_prompts: usize,
    /// Completions generated (= N).
    pub completions: u64,
    /// Prompt tokens over all completions.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Mean reward.
    pub mean_reward: f64,
    /// Fraction of completions judged correct.
    pub accuracy: f64,
    /// Fraction of groups whose rewards were all equal (no gradient).
    pub zero_var_group_frac: f64,
    /// Smallest n_i.
    pub n_min: u32,
    /// Mean n_i.
    pub n_mean: f64,
    /// Largest n_i.
    pub n_max: u32,
    /// H(ρ), nats.
    pub rho_entropy: f64,
    /// Mean p̂ of the batch (before this step's update).
    pub mean_p_hat: f64,
    /// Token-mean PPO loss.
    pub loss: f64,
    /// Token-mean k3 KL to the reference.
    pub kl: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Fraction of clipped tokens.
    pub clip_frac: f64,
    /// Mean policy entropy over trained tokens.
    pub entropy: f64,
    /// Learning rate.
    pub lr: f64,
    /// Seconds: iteration start (pre-rollouts), when this step began one.
    pub sec_init: f64,
    /// Seconds: sampling + allocation.
    pub sec_sample: f64,
    /// Seconds: generation.
    pub sec_generate: f64,
    /// Seconds: scoring.
    pub sec_reward: f64,
    /// Seconds: policy update.
    pub sec_train: f64,
    /// Seconds: weight sync.
    pub sec_sync: f64,
    /// Weight version after the sync.
    pub weight_version: u64,
    /// Cumulative training completions.
    pub cum_completions: u64,
    /// Cumulative completion tokens.
    pub cum_tokens: u64,
    /// Cumulative pre-rollouts (init stage).
    pub cum_init_completions: u64,
    /// Completions discarded as staler than `rollout.max_staleness` (and regenerated).
    #[serde(default)]
    pub stale_completions: u64,
}

/// One row of `eval.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    /// Steps done when evaluated.
    pub step: u64,
    /// Training completions spent so far.
    pub cum_completions: u64,
    /// Benchmark name (`heldout`, `heldout/L3`, or the file stem).
    pub benchmark: String,
    /// Problems evaluated.
    pub problems: usize,
    /// Greedy pass@1.
    pub accuracy: f64,
}

/// One row of `prompts.csv` (posterior trace).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptTraceRow {
    /// Steps done when traced.
    pub step: u64,
    /// Prompt id.
    pub id: String,
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// Posterior mean.
    pub p_hat: f64,
    /// Sampling probability.
    pub rho: f64,
    /// Times sampled.
    pub times_sampled: u32,
    /// Last n_i.
    pub last_n: u32,
}

/// Counters carried across a resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counters {
    step: u64,
    weight_version: u64,
    cum_completions: u64,
    cum_tokens: u64,
    cum_init_completions: u64,
}

/// `state.json` of a checkpoint.
#[derive(Serialize, Deserialize)]
struct CheckpointState {
    counters: Counters,
    curriculum: CurriculumState,
    config: Config,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run directory.
    pub out: PathBuf,
    /// Steps done.
    pub steps: u64,
    /// Training completions.
    pub completions: u64,
    /// Held-out accuracy (first held-out set) before the first step, when evaluated.
    pub heldout_before: Option<f64>,
    /// Held-out accuracy after the last step.
    pub heldout_after: Option<f64>,
    /// Wall seconds.
    pub wall_s: f64,
    /// Mean seconds per phase over the steps: init, sample, generate, reward, train, sync.
    pub phase_s: [f64; 6],
}

/// Options of `cures run`.
pub struct RunOptions {
    /// The resolved config.
    pub config: Config,
    /// Run directory override.
    pub out: Option<PathBuf>,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// No progress bars.
    pub quiet: bool,
}

/// Resolve `model.device`.
pub fn device_of(cfg: &Config) -> Device {
    match cfg.model.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => Device::cuda_if_available(),
    }
}

/// Load one named dataset (`testbed` = the generated testbed's train or held-out split).
pub fn load_dataset(spec: &str, cfg: &Config, heldout: bool) -> Result<Vec<Example>> {
    if spec == "testbed" {
        let tb = crate::testbed::generate(&cfg.testbed);
        return Ok(if heldout { tb.heldout } else { tb.train });
    }
    crate::data::load(Path::new(spec))
}

/// The evaluation sets: (name, examples). The testbed adds one set per level.
pub fn eval_sets(cfg: &Config) -> Result<Vec<(String, Vec<Example>)>> {
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

/// Tokenise a problem into its prompt ids (template, then chat template when configured).
pub fn encode_prompt(policy: &Policy, cfg: &Config, problem: &str) -> Result<Vec<i64>> {
    let text = cfg.rollout.render(problem);
    let tok = policy.tokenizer();
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
) -> Result<Vec<(String, usize, f64)>> {
    let prompts: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| encode_prompt(policy, cfg, &e.problem))
        .collect::<Result<_>>()?;
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
    let acc = |idx: &[usize]| {
        idx.iter().map(|&i| correct[i]).sum::<usize>() as f64 / (idx.len() * k).max(1) as f64
    };
    let all: Vec<usize> = (0..examples.len()).collect();
    let mut out = vec![(name.to_string(), all.len(), acc(&all))];
    let mut levels: Vec<u32> = examples.iter().filter_map(|e| e.level).collect();
    levels.sort_unstable();
    levels.dedup();
    for l in levels {
        let idx: Vec<usize> = (0..examples.len())
            .filter(|&i| examples[i].level == Some(l))
            .collect();
        out.push((format!("{name}/L{l}"), idx.len(), acc(&idx)));
    }
    Ok(out)
}

/// The run directory's files.
struct RunFiles {
    dir: PathBuf,
}

impl RunFiles {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn ckpt_root(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    /// The latest complete checkpoint (named in `checkpoints/latest`).
    fn latest(&self) -> Result<Option<PathBuf>> {
        let p = self.ckpt_root().join("latest");
        if !p.exists() {
            return Ok(None);
        }
        let name =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let dir = self.ckpt_root().join(name.trim());
        if !dir.join("state.json").exists() {
            bail!(
                "{} names {}, which is not a complete checkpoint",
                p.display(),
                dir.display()
            );
        }
        Ok(Some(dir))
    }
}

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// A line for the user: above the progress bar when it is drawn, else on stderr (unless quiet).
fn say(bar: &indicatif::ProgressBar, quiet: bool, line: String) {
    if !bar.is_hidden() {
        bar.println(line);
    } else if !quiet {
        eprintln!("{line}");
    }
}

fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.deserialize()
        .enumerate()
        .map(|(i, row)| row.with_context(|| format!("{}:{}: bad row", path.display(), i + 2)))
        .collect()
}

/// Train. See the module docs.
pub fn run(opts: RunOptions) -> Result<RunSummary> {
    let t_start = Instant::now();
    let cfg = opts.config;
    let dir = opts
        .out
        .clone()
        .or_else(|| cfg.run.out.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("results/runs").join(&cfg.name));
    let files = RunFiles { dir: dir.clone() };
    if !opts.resume && files.ckpt_root().join("latest").exists() {
        bail!(
            "{} already holds a run: continue it with --resume, or choose another --out",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // Data, model, engine, curriculum, trainer.
    let train = load_dataset(&cfg.data.train, &cfg, false)
        .with_context(|| format!("data.train = {:?}", cfg.data.train))?;
    let evals = eval_sets(&cfg)?;
    let device = device_of(&cfg);
    let kind = parse_kind(&cfg.model.dtype)?;
    let save_kind = parse_kind(&cfg.model.save_dtype)?;
    let resume_from = if opts.resume {
        Some(
            files
                .latest()?
                .with_context(|| format!("--resume: {} has no checkpoint", dir.display()))?,
        )
    } else {
        None
    };
    let model_dir = match &resume_from {
        Some(c) => c.join("policy"),
        None => PathBuf::from(&cfg.model.path),
    };
    let policy = Policy::load(&model_dir, device, kind)
        .with_context(|| format!("model.path = {}", model_dir.display()))?;
    let use_ref = cfg.train.kl_coef > 0.0;
    let mut reference = if use_ref {
        let ref_dir = match &resume_from {
            Some(c) => c.join("reference"),
            None => model_dir.clone(),
        };
        Some(Policy::load(&ref_dir, device, kind)?)
    } else {
        None
    };
    let mut trainer = Trainer::new(cfg.train.clone(), &policy);
    let (mut cur, mut counters) = match &resume_from {
        Some(c) => {
            let text = std::fs::read_to_string(c.join("state.json"))?;
            let st: CheckpointState = serde_json::from_str(&text).with_context(|| {
                format!("{}: bad checkpoint state", c.join("state.json").display())
            })?;
            trainer
                .optimizer_mut()
                .load(&c.join("optimizer.safetensors"))?;
            (Curriculum::from_state(&cfg, st.curriculum)?, st.counters)
        }
        None => (Curriculum::new(&cfg, train.len())?, Counters::default()),
    };
    let prompt_ids: Vec<Vec<i64>> = train
        .iter()
        .map(|e| encode_prompt(&policy, &cfg, &e.problem))
        .collect::<Result<_>>()?;
    let mut engine = make_engine(&cfg, &policy)?;
    engine.set_weight_version(counters.weight_version);
    let mut sync = make_sync(&cfg, &dir)?;
    if sync.transfers() {
        // The server must sample from exactly the trainer's weights (fresh start or resume).
        sync.publish(&policy, counters.weight_version)
            .with_context(|| format!("initial weight sync ({})", sync.name()))?;
    }
    std::fs::write(files.path("config.toml"), cfg.to_toml())
        .with_context(|| format!("cannot write {}", files.path("config.toml").display()))?;

    // Logs (rows after the checkpoint are dropped on resume).
    let keep = |s: u64| s <= counters.step;
    let mut steps: Vec<StepRow> = read_csv::<StepRow>(&files.path("steps.csv"))?
        .into_iter()
        .filter(|r| keep(r.step))
        .collect();
    let mut eval_rows: Vec<EvalRow> = read_csv::<EvalRow>(&files.path("eval.csv"))?
        .into_iter()
        .filter(|r| keep(r.step))
        .collect();
    let mut trace: Vec<PromptTraceRow> = read_csv::<PromptTraceRow>(&files.path("prompts.csv"))?
        .into_iter()
        .filter(|r| keep(r.step))
        .collect();
    let mut rollout_log: Vec<String> =
        read_rollout_log(&files.path("rollouts.jsonl"), counters.step)?;

    let total_steps = cfg
        .run
        .steps
        .unwrap_or(cfg.iterations.subsets * cfg.iterations.steps) as u64;
    let bar = crate::metrics::progress_bar(total_steps, "run", !opts.quiet);
    bar.set_position(counters.step);

    let do_eval = |step: u64, cum: u64, eval_rows: &mut Vec<EvalRow>| -> Result<Option<f64>> {
        let mut first = None;
        for (name, ex) in &evals {
            for (bench, n, acc) in evaluate(&policy, &cfg, name, ex)? {
                first.get_or_insert(acc);
                eval_rows.push(EvalRow {
                    step,
                    cum_completions: cum,
                    benchmark: bench,
                    problems: n,
                    accuracy: acc,
                });
            }
        }
        write_csv(&files.path("eval.csv"), eval_rows)?;
        Ok(first)
    };
    let eval_on = cfg.run.eval_every > 0 && !evals.is_empty();
    let mut heldout_before = None;
    if eval_on && counters.step == 0 && eval_rows.is_empty() {
        heldout_before = do_eval(0, 0, &mut eval_rows)?;
        if let Some(a) = heldout_before {
            say(
                &bar,
                opts.quiet,
                format!("held-out accuracy before training: {a:.3}"),
            );
        }
    }

    let mut phase_sum = [0.0f64; 6];
    let steps_at_start = counters.step;
    while counters.step < total_steps {
        let mut row = StepRow::default();
        // Iteration start: pre-rollouts (not trained on), reference = current weights.
        if cur.iteration_due() {
            let t = Instant::now();
            let it = cur.begin_iteration();
            if !it.init_prompts.is_empty() {
                let requests: Vec<RolloutRequest> = it
                    .init_prompts
                    .iter()
                    .enumerate()
                    .map(|(k, &p)| RolloutRequest {
                        prompt_ids: prompt_ids[p as usize].clone(),
                        n: it.init_rollouts as usize,
                        seed: seed_for(cfg.seed, counters.step, 1 << 40 | k as u64),
                    })
                    .collect();
                let comps = engine.generate(&requests, &cfg.rollout)?;
                row.stale_completions += engine.last_stats().stale_completions;
                let mut succ = vec![0u32; requests.len()];
                let mut correct = vec![false; comps.len()];
                for (j, c) in comps.iter().enumerate() {
                    let p = it.init_prompts[c.request] as usize;
                    correct[j] = reward::score(&c.text, &train[p].answer, &cfg.reward).equivalent;
                    succ[c.request] += u32::from(correct[j]);
                }
                let outcomes: Vec<(u32, u32, u32)> = it
                    .init_prompts
                    .iter()
                    .zip(&succ)
                    .map(|(&p, &s)| (p, s, it.init_rollouts))
                    .collect();
                cur.observe_init(&outcomes)?;
                counters.cum_init_completions += comps.len() as u64;
                if cfg.curriculum.sigma == crate::config::SigmaKind::Gradient {
                    update_gradient_stats(
                        &policy,
                        &cfg,
                        &mut cur,
                        &it.init_prompts,
                        &requests,
                        &comps,
                        &correct,
                    )?;
                }
            }
            if let Some(r) = reference.as_mut() {
                r.var_store_mut()
                    .copy(policy.var_store())
                    .context("cannot copy the policy into the reference")?;
            }
            row.sec_init = t.elapsed().as_secs_f64();
        }

        // Sample and allocate.
        let t = Instant::now();
        let plan = cur.plan_step()?;
        row.sec_sample = t.elapsed().as_secs_f64();

        // Generate.
        let t = Instant::now();
        let requests: Vec<RolloutRequest> = plan
            .groups
            .iter()
            .enumerate()
            .map(|(k, g)| RolloutRequest {
                prompt_ids: prompt_ids[g.prompt as usize].clone(),
                n: g.n as usize,
                seed: seed_for(cfg.seed, counters.step, k as u64),
            })
            .collect();
        bar.set_message(format!(
            "step {}: generating {} completions",
            counters.step + 1,
            plan.completions()
        ));
        let comps = engine.generate(&requests, &cfg.rollout)?;
        row.stale_completions += engine.last_stats().stale_completions;
        row.sec_generate = t.elapsed().as_secs_f64();

        // Score.
        let t = Instant::now();
        let verdicts: Vec<reward::Verdict> = comps
            .iter()
            .map(|c| {
                let g = &plan.groups[c.request];
                reward::score(&c.text, &train[g.prompt as usize].answer, &cfg.reward)
            })
            .collect();
        let mut successes = vec![0u32; plan.groups.len()];
        let mut group_rewards: Vec<GroupRewards> = plan
            .groups
            .iter()
            .map(|g| GroupRewards {
                rewards: Vec::new(),
                tokens: Vec::new(),
                p_hat: g.p_hat,
            })
            .collect();
        for (c, v) in comps.iter().zip(&verdicts) {
            successes[c.request] += u32::from(v.equivalent);
            let gr = &mut group_rewards[c.request];
            gr.rewards.push(v.reward);
            gr.tokens.push(c.token_ids.len());
        }
        row.sec_reward = t.elapsed().as_secs_f64();

        // Observe, then the update.
        let t = Instant::now();
        cur.observe_step(&plan, &successes)?;
        let adv = advantages(cfg.train.advantage, &group_rewards);
        let mut next = vec![0usize; plan.groups.len()];
        let samples: Vec<Sample> = comps
            .iter()
            .map(|c| {
                let k = next[c.request];
                next[c.request] += 1;
                Sample {
                    prompt: requests[c.request].prompt_ids.clone(),
                    completion: c.token_ids.clone(),
                    advantage: adv[c.request][k],
                }
            })
            .collect();
        let stats = trainer.update(&policy, reference.as_ref(), &samples)?;
        row.sec_train = t.elapsed().as_secs_f64();

        // Sync.
        let t = Instant::now();
        counters.weight_version += 1;
        sync.publish(&policy, counters.weight_version)
            .with_context(|| format!("weight sync ({})", sync.name()))?;
        engine.set_weight_version(counters.weight_version);
        row.sec_sync = t.elapsed().as_secs_f64();

        // Log.
        counters.step += 1;
        fill_row(
            &mut row,
            &plan,
            &comps,
            &requests,
            &group_rewards,
            &successes,
        );
        row.step = counters.step;
        row.iteration = plan.iteration;
        row.loss = stats.loss;
        row.kl = stats.kl;
        row.grad_norm = stats.grad_norm;
        row.clip_frac = stats.clip_frac;
        row.entropy = stats.entropy;
        row.lr = cfg.train.lr;
        row.weight_version = counters.weight_version;
        counters.cum_completions += row.completions;
        counters.cum_tokens += row.completion_tokens;
        row.cum_completions = counters.cum_completions;
        row.cum_tokens = counters.cum_tokens;
        row.cum_init_completions = counters.cum_init_completions;
        for (k, acc) in [
            row.sec_init,
            row.sec_sample,
            row.sec_generate,
            row.sec_reward,
            row.sec_train,
            row.sec_sync,
        ]
        .into_iter()
        .enumerate()
        {
            phase_sum[k] += acc;
        }
        for (c, v) in comps.iter().zip(&verdicts).take(cfg.run.log_rollouts) {
            let g = &plan.groups[c.request];
            rollout_log.push(serde_json::to_string(&serde_json::json!({
                "step": counters.step,
                "prompt_id": train[g.prompt as usize].id,
                "problem": train[g.prompt as usize].problem,
                "answer": train[g.prompt as usize].answer,
                "completion": c.text,
                "extracted": v.extracted,
                "reward": v.reward,
                "equivalent": v.equivalent,
                "finish_reason": c.finish_reason,
                "weight_version": c.weight_version,
            }))?);
        }
        let summary_line = format!(
            "step {:>4} it {} | reward {:.3} | zero-var {:.2} | n {}..{} | loss {:+.4} kl {:.4} | gen {:.1}s train {:.1}s",
            row.step, row.iteration, row.mean_reward, row.zero_var_group_frac, row.n_min, row.n_max,
            row.loss, row.kl, row.sec_generate, row.sec_train
        );
        steps.push(row);
        write_csv(&files.path("steps.csv"), &steps)?;
        write_lines(&files.path("rollouts.jsonl"), &rollout_log)?;
        bar.inc(1);
        say(&bar, opts.quiet, summary_line);

        let last = counters.step == total_steps;
        let every = |k: usize| k > 0 && counters.step % k as u64 == 0;
        if eval_on && (every(cfg.run.eval_every) || last) {
            do_eval(counters.step, counters.cum_completions, &mut eval_rows)?;
        }
        if every(cfg.run.prompts_every) || last {
            push_trace(&mut trace, &cur, &train, counters.step);
            write_csv(&files.path("prompts.csv"), &trace)?;
        }
        if every(cfg.run.checkpoint_every) || last {
            save_checkpoint(
                &files,
                &cfg,
                &policy,
                reference.as_ref(),
                &trainer,
                &cur,
                &counters,
                save_kind,
            )?;
        }
    }
    bar.finish_and_clear();
    let heldout_after = eval_rows
        .iter()
        .rev()
        .find(|r| evals.first().is_some_and(|(n, _)| &r.benchmark == n))
        .map(|r| r.accuracy);
    let heldout_before = heldout_before.or_else(|| {
        eval_rows
            .iter()
            .find(|r| r.step == 0 && evals.first().is_some_and(|(n, _)| &r.benchmark == n))
            .map(|r| r.accuracy)
    });
    let done = (counters.step - steps_at_start).max(1) as f64;
    Ok(RunSummary {
        out: dir,
        steps: counters.step,
        completions: counters.cum_completions,
        heldout_before,
        heldout_after,
        wall_s: t_start.elapsed().as_secs_f64(),
        phase_s: phase_sum.map(|s| s / done),
    })
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

/// A per-request sampling seed from (run seed, step, request).
fn seed_for(seed: u64, step: u64, k: u64) -> u64 {
    let mut x =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

fn fill_row(
    row: &mut StepRow,
    plan: &StepPlan,
    comps: &[Completion],
    requests: &[RolloutRequest],
    groups: &[GroupRewards],
    successes: &[u32],
) {
    row.prompts = plan.draws;
    let live: Vec<usize> = (0..plan.groups.len())
        .filter(|&i| plan.groups[i].n > 0)
        .collect();
    row.distinct_prompts = live.len();
    row.completions = comps.len() as u64;
    row.prompt_tokens = comps
        .iter()
        .map(|c| requests[c.request].prompt_ids.len() as u64)
        .sum();
    row.completion_tokens = comps.iter().map(|c| c.token_ids.len() as u64).sum();
    let rewards: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.rewards.iter().copied())
        .collect();
    row.mean_reward = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    row.accuracy = successes.iter().map(|&s| f64::from(s)).sum::<f64>() / comps.len().max(1) as f64;
    let zero_var = live
        .iter()
        .filter(|&&i| groups[i].rewards.iter().all(|&r| r == groups[i].rewards[0]))
        .count();
    row.zero_var_group_frac = zero_var as f64 / live.len().max(1) as f64;
    let ns: Vec<u32> = live.iter().map(|&i| plan.groups[i].n).collect();
    row.n_min = ns.iter().copied().min().unwrap_or(0);
    row.n_max = ns.iter().copied().max().unwrap_or(0);
    row.n_mean = ns.iter().map(|&n| f64::from(n)).sum::<f64>() / ns.len().max(1) as f64;
    row.rho_entropy = plan.rho_entropy;
    row.mean_p_hat =
        live.iter().map(|&i| plan.groups[i].p_hat).sum::<f64>() / live.len().max(1) as f64;
}

fn push_trace(trace: &mut Vec<PromptTraceRow>, cur: &Curriculum, train: &[Example], step: u64) {
    for r in cur.prompt_rows() {
        if r.rho <= 0.0 && r.times_sampled == 0 {
            continue;
        }
        trace.push(PromptTraceRow {
            step,
            id: train[r.id as usize].id.clone(),
            alpha: r.alpha,
            beta: r.beta,
            p_hat: r.p_hat,
            rho: r.rho,
            times_sampled: r.times_sampled,
            last_n: r.last_n,
        });
    }
}

fn read_rollout_log(path: &Path, up_to: u64) -> Result<Vec<String>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
        if v.get("step")
            .and_then(|s| s.as_u64())
            .is_some_and(|s| s <= up_to)
        {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// Pre-rollouts → per-prompt gradient class statistics for the `gradient` σ estimator.
fn update_gradient_stats(
    policy: &Policy,
    cfg: &Config,
    cur: &mut Curriculum,
    prompts: &[u32],
    requests: &[RolloutRequest],
    comps: &[Completion],
    correct: &[bool],
) -> Result<()> {
    for (k, &p) in prompts.iter().enumerate() {
        let rollouts: Vec<GradRollout<'_>> = comps
            .iter()
            .zip(correct)
            .filter(|(c, _)| c.request == k)
            .map(|(c, &ok)| GradRollout {
                prompt: &requests[k].prompt_ids,
                completion: &c.token_ids,
                correct: ok,
            })
            .collect();
        let stats =
            crate::train::gradient_class_stats(policy, &cfg.train.grad_stat_params, &rollouts)?;
        cur.gradient_stats_mut()
            .insert(p, stats, rollouts.len() as u64);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    files: &RunFiles,
    cfg: &Config,
    policy: &Policy,
    reference: Option<&Policy>,
    trainer: &Trainer,
    cur: &Curriculum,
    counters: &Counters,
    kind: Kind,
) -> Result<()> {
    let root = files.ckpt_root();
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = format!("step_{:07}", counters.step);
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    // The policy is saved in full precision unless asked otherwise; exact resume needs the
    // trainer's dtype.
    policy.save_hf(&tmp.join("policy"), kind, 2 << 30)?;
    if let Some(r) = reference {
        r.save_hf(&tmp.join("reference"), kind, 2 << 30)?;
    }
    trainer
        .optimizer()
        .save(&tmp.join("optimizer.safetensors"))?;
    let state = CheckpointState {
        counters: counters.clone(),
        curriculum: cur.state().clone(),
        config: cfg.clone(),
    };
    std::fs::write(tmp.join("state.json"), serde_json::to_vec(&state)?)?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    write_lines(&root.join("latest"), std::slice::from_ref(&name))?;
    // Prune old checkpoints.
    let mut all: Vec<String> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step_"))
        .collect();
    all.sort();
    while all.len() > cfg.run.keep_checkpoints {
        let old = all.remove(0);
        std::fs::remove_dir_all(root.join(&old))?;
    }
    Ok(())
}

/// One row of `init.csv`: a prompt's stage-0 outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRow {
    /// Prompt id.
    pub id: String,
    /// Level, when the dataset has levels.
    pub level: Option<u32>,
    /// Correct pre-rollouts.
    pub successes: u32,
    /// Pre-rollouts (N').
    pub rollouts: u32,
    /// Posterior mean after the pre-rollouts.
    pub p_hat: f64,
    /// Bernoulli σ = √(p̂(1−p̂)).
    pub sigma_bernoulli: f64,
    /// Gradient σ (Eq. 21) when `curriculum.sigma = "gradient"`, else empty.
    pub sigma_gradient: Option<f64>,
    /// E‖G‖² over correct rollouts (gradient estimator only).
    pub sq_norm_correct: Option<f64>,
    /// E‖G‖² over wrong rollouts (gradient estimator only).
    pub sq_norm_wrong: Option<f64>,
}

/// What `cures init` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InitSummary {
    /// Prompts rolled out.
    pub prompts: usize,
    /// Completions generated.
    pub completions: usize,
    /// Mean accuracy over all pre-rollouts.
    pub accuracy: f64,
    /// Prompts never solved.
    pub never_solved: usize,
    /// Prompts always solved.
    pub always_solved: usize,
    /// Wall seconds.
    pub wall_s: f64,
}

/// `cures init`: stage 0 of Algorithm 1 on its own — N' rollouts of every prompt of the dataset
/// (`iterations.init_rollouts`), the posterior after them and, with `curriculum.sigma =
/// "gradient"`, the per-prompt gradient class statistics. Writes `init.csv` and the posterior
/// (`init_posterior.json`) to `out`: a map of the dataset's difficulty for this model.
pub fn init(cfg: &Config, out: &Path, quiet: bool) -> Result<InitSummary> {
    let t0 = Instant::now();
    let n = cfg.iterations.init_rollouts;
    if n == 0 {
        bail!("iterations.init_rollouts is 0: nothing to roll out (set it, e.g. --set iterations.init_rollouts=4)");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let train = load_dataset(&cfg.data.train, cfg, false)
        .with_context(|| format!("data.train = {:?}", cfg.data.train))?;
    let policy = Policy::load(
        Path::new(&cfg.model.path),
        device_of(cfg),
        parse_kind(&cfg.model.dtype)?,
    )
    .with_context(|| format!("model.path = {}", cfg.model.path))?;
    let mut engine = make_engine(cfg, &policy)?;
    let prior = crate::curriculum::BetaPrior {
        alpha: cfg.curriculum.prior_alpha,
        beta: cfg.curriculum.prior_beta,
    };
    let mut posterior = crate::curriculum::Posterior::new(train.len(), prior, 1.0);
    let mut rows = Vec::with_capacity(train.len());
    let bar = crate::metrics::progress_bar(train.len() as u64, "init", !quiet);
    let (mut completions, mut correct_total) = (0usize, 0usize);
    // Chunks keep memory bounded and the progress bar moving.
    for (chunk_no, chunk) in (0..train.len()).collect::<Vec<_>>().chunks(256).enumerate() {
        let requests: Vec<RolloutRequest> = chunk
            .iter()
            .map(|&i| {
                Ok(RolloutRequest {
                    prompt_ids: encode_prompt(&policy, cfg, &train[i].problem)?,
                    n,
                    seed: seed_for(cfg.seed, u64::MAX, (chunk_no as u64) << 32 | i as u64),
                })
            })
            .collect::<Result<_>>()?;
        let comps = engine.generate(&requests, &cfg.rollout)?;
        let correct: Vec<bool> = comps
            .iter()
            .map(|c| {
                reward::score(&c.text, &train[chunk[c.request]].answer, &cfg.reward).equivalent
            })
            .collect();
        completions += comps.len();
        correct_total += correct.iter().filter(|&&c| c).count();
        for (k, &i) in chunk.iter().enumerate() {
            let s = comps
                .iter()
                .zip(&correct)
                .filter(|(c, &ok)| c.request == k && ok)
                .count() as u32;
            posterior.observe(i, s, n as u32);
            let p = posterior.mean(i);
            let mut row = InitRow {
                id: train[i].id.clone(),
                level: train[i].level,
                successes: s,
                rollouts: n as u32,
                p_hat: p,
                sigma_bernoulli: crate::curriculum::allocation::sigma_bernoulli(p),
                sigma_gradient: None,
                sq_norm_correct: None,
                sq_norm_wrong: None,
            };
            if cfg.curriculum.sigma == crate::config::SigmaKind::Gradient {
                let rollouts: Vec<GradRollout<'_>> = comps
                    .iter()
                    .zip(&correct)
                    .filter(|(c, _)| c.request == k)
                    .map(|(c, &ok)| GradRollout {
                        prompt: &requests[k].prompt_ids,
                        completion: &c.token_ids,
                        correct: ok,
                    })
                    .collect();
                let st = crate::train::gradient_class_stats(
                    &policy,
                    &cfg.train.grad_stat_params,
                    &rollouts,
                )?;
                let fallback = st
                    .sq_norm_correct
                    .or(st.sq_norm_wrong)
                    .unwrap_or(0.0)
                    .sqrt();
                row.sigma_gradient = Some(crate::curriculum::allocation::sigma_gradient(
                    p, &st, fallback,
                ));
                row.sq_norm_correct = st.sq_norm_correct;
                row.sq_norm_wrong = st.sq_norm_wrong;
            }
            rows.push(row);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_csv(&out.join("init.csv"), &rows)?;
    write_atomic(
        &out.join("init_posterior.json"),
        &serde_json::to_vec(&posterior)?,
    )?;
    Ok(InitSummary {
        prompts: train.len(),
        completions,
        accuracy: correct_total as f64 / completions.max(1) as f64,
        never_solved: rows.iter().filter(|r| r.successes == 0).count(),
        always_solved: rows.iter().filter(|r| r.successes == r.rollouts).count(),
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
