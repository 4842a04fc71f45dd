//! `cures run`: the paper's Algorithm 1 (docs/algorithm.md §5–§6, §9).
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
//! curriculum state with its RNG, counters, the dataset's fingerprint and the config), so
//! `--resume` continues exactly, and refuses a different dataset or a change of any key that
//! alters the run ([`crate::rundir`]). Logs are appended a step at a time; checkpoints appear
//! whole or not at all.

mod check;
mod init;
mod setup;
mod step;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::config::Config;
use crate::curriculum::{Curriculum, CurriculumState};
use crate::fault::{self, Phase};
use crate::metrics::tensorboard::{numeric_fields, EventWriter};
use crate::policy::{parse_kind, Policy};
use crate::rollout::RolloutEngine;
use crate::rundir::{
    CheckpointSpace, ConfigChange, CsvLog, DatasetFingerprint, JsonlLog, ResumeRecord, RunDir,
};
use crate::sync::WeightSync;
use crate::train::{advantages, Reference, Trainer};

pub use crate::rundir::schema::{EvalRow, PromptTraceRow, StepRow};
pub use check::{check_inputs, configured_memory, data_shape, memory_plan, InputCheck};
pub use init::{init, InitRow, InitSummary};
pub use setup::{
    answer_probs, device_of, encode_prompt, encode_with, eval_sets, evaluate, fit_prompts,
    load_dataset, make_engine, make_sync, prompt_limit, ContextLimit, EvalScore, TrainSet,
};
use step::{seed_for, Prompts};

/// Counters carried across a resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counters {
    step: u64,
    weight_version: u64,
    cum_completions: u64,
    cum_tokens: u64,
    cum_init_completions: u64,
    #[serde(default)]
    cum_init_tokens: u64,
    /// Wall seconds of the steps of every process up to this checkpoint.
    #[serde(default)]
    wall_s: f64,
}

/// `state.json` of a checkpoint.
#[derive(Serialize, Deserialize)]
struct CheckpointState {
    counters: Counters,
    curriculum: CurriculumState,
    config: Config,
    /// The training set the run was started on (absent in checkpoints before it was recorded).
    #[serde(default)]
    dataset: Option<DatasetFingerprint>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run directory.
    pub out: PathBuf,
    /// The run's steps (all processes).
    pub steps: u64,
    /// The run's training completions (all processes).
    pub completions: u64,
    /// The step this process started from (0, or the checkpoint a resume continued).
    pub resumed_from: u64,
    /// Steps this process did.
    pub steps_here: u64,
    /// Training completions this process generated.
    pub completions_here: u64,
    /// Wall seconds of the run's steps, all processes (up to the last checkpoint of earlier
    /// ones, plus this process's).
    pub run_wall_s: f64,
    /// Pre-rollouts (stage-0 completions, not trained on).
    pub init_completions: u64,
    /// Training prompts dropped at load as longer than the context allows.
    pub dropped_prompts: usize,
    /// Held-out accuracy (first held-out set) before the first step, when evaluated.
    pub heldout_before: Option<f64>,
    /// Held-out accuracy after the last step.
    pub heldout_after: Option<f64>,
    /// Wall seconds of this process.
    pub wall_s: f64,
    /// Mean seconds per phase over this process's steps: init, sample, generate, reward, train,
    /// sync.
    pub phase_s: [f64; 6],
    /// What the run directory holds now (`steps.csv`, `checkpoints/`, ...).
    pub files: Vec<String>,
}

/// Options of `cures run`.
pub struct RunOptions {
    /// The resolved config.
    pub config: Config,
    /// Run directory override.
    pub out: Option<PathBuf>,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// Start afresh in `out` even when it holds a run (whose files are removed first).
    pub overwrite: bool,
    /// No progress bars.
    pub quiet: bool,
}

/// A line for the user: above the progress bar when it is drawn, else on stderr (unless quiet).
fn say(bar: &indicatif::ProgressBar, quiet: bool, line: String) {
    if !bar.is_hidden() {
        bar.println(line);
    } else if !quiet {
        eprintln!("{line}");
    }
}

/// Steps the run goes to: `run.steps`, or every step of every subset.
fn total_steps(cfg: &Config) -> u64 {
    cfg.run
        .steps
        .unwrap_or(cfg.iterations.subsets * cfg.iterations.steps) as u64
}

/// The checkpoint a resume continues from, checked against the config before anything loads.
struct Saved {
    dir: PathBuf,
    state: CheckpointState,
    changes: Vec<ConfigChange>,
}

impl Saved {
    fn read(rd: &RunDir, cfg: &Config) -> Result<Saved> {
        let dir = rd
            .latest()?
            .with_context(|| format!("--resume: {} has no checkpoint", rd.dir().display()))?;
        use crate::rundir::{previous_checkpoint, verify_checksums, CHECKSUMS};
        match verify_checksums(&dir) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "--resume: {} has no {CHECKSUMS} (written before checkpoints carried checksums): \
                 its files cannot be verified",
                dir.display()
            ),
            Err(e) => {
                let name = dir
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into());
                let root = dir.parent().unwrap_or(rd.dir());
                let previous = match previous_checkpoint(root, &name) {
                    Some(p) => format!(
                        "the previous checkpoint is {}: to resume from it, write `{p}` into {}",
                        root.join(&p).display(),
                        root.join("latest").display()
                    ),
                    None => "there is no earlier checkpoint in this run".into(),
                };
                anyhow::bail!("--resume: checkpoint {name} is damaged: {e:#}; {previous}");
            }
        }
        let p = dir.join("state.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .with_context(|| format!("{}: bad checkpoint state", p.display()))?;
        let changes = crate::rundir::config_changes(&state.config, cfg)?;
        crate::rundir::check_changes(&changes, state.counters.step, total_steps(cfg))?;
        Ok(Saved {
            dir,
            state,
            changes,
        })
    }

    /// The curriculum and counters of the checkpoint, once the dataset is known to be its own.
    fn restore(
        self,
        cfg: &Config,
        data: &DatasetFingerprint,
        origin: &str,
    ) -> Result<(Curriculum, Counters)> {
        match &self.state.dataset {
            Some(saved) => saved.check(data, origin)?,
            None if self.state.curriculum.dataset_len != data.rows => anyhow::bail!(
                "--resume: {origin} has {} prompts, but the run was trained on {}",
                data.rows,
                self.state.curriculum.dataset_len
            ),
            None => tracing::warn!(
                "--resume: this checkpoint predates dataset fingerprints: the row order of \
                 {origin} cannot be checked"
            ),
        }
        Ok((
            Curriculum::from_state(cfg, self.state.curriculum)?,
            self.state.counters,
        ))
    }
}

/// Record the config a fresh run trains with as `config.toml`, when its first checkpoint is
/// committed: a start that fails before leaves no config that no checkpoint was made with (and
/// a corrected rerun writes its own).
fn record_config(rd: &RunDir, cfg: &Config) -> Result<()> {
    crate::metrics::write_atomic(&rd.path("config.toml"), cfg.to_toml().as_bytes())
}

/// Record a resume that changed safe keys, once it has made its first step: the new config as
/// `config.resume-step<N>.toml` and a line in `resumes.jsonl` (`config.toml` stays the
/// original). A resume that fails before stepping leaves no record of itself.
fn record_resume(rd: &RunDir, cfg: &Config, step: u64, changes: &[ConfigChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let now = rd.path(&format!("config.resume-step{step}.toml"));
    crate::metrics::write_atomic(&now, cfg.to_toml().as_bytes())?;
    let rec = ResumeRecord {
        at_step: step,
        time: chrono::Local::now().to_rfc3339(),
        changed: changes.to_vec(),
    };
    let (mut log, _) = JsonlLog::open(&rd.path("resumes.jsonl"), u64::MAX)?;
    log.append(&[serde_json::to_string(&rec)?])?;
    Ok(())
}

/// The run's logs, appended a step at a time.
struct Logs {
    steps: CsvLog<StepRow>,
    eval: CsvLog<EvalRow>,
    eval_rows: Vec<EvalRow>,
    prompts: CsvLog<PromptTraceRow>,
    rollouts: JsonlLog,
    /// TensorBoard scalars (`run.tensorboard`).
    tb: Option<EventWriter>,
}

impl Logs {
    /// Open the logs for a run at `step` (that of the checkpoint resumed from): each keeps
    /// exactly its rows up to the step (see [`CsvLog::open`]), and `steps.csv` must hold every
    /// step up to it. Returns the logs and what was cut, for the user.
    fn open(rd: &RunDir, step: u64, tensorboard: bool) -> Result<(Logs, Vec<String>)> {
        let mut notes = Vec::new();
        let steps_path = rd.path("steps.csv");
        let (steps, rows, n) = CsvLog::open(&steps_path, step, |r: &StepRow| r.step)?;
        notes.extend(n);
        let have: Vec<u64> = rows.iter().map(|r| r.step).collect();
        if have.iter().copied().ne(1..=step) {
            let missing: Vec<u64> = (1..=step).filter(|s| !have.contains(s)).collect();
            let what = match (missing.first(), missing.last()) {
                (Some(a), Some(b)) if a == b => format!("the row of step {a} is missing"),
                (Some(a), Some(b)) => {
                    format!("{} rows of steps {a}..={b} are missing", missing.len())
                }
                _ => "its rows are not steps 1, 2, ... in order".to_string(),
            };
            anyhow::bail!(
                "{}: the checkpoint is at step {step}, but {what} (the log was damaged or \
                 emptied); a resume would go on without them: restore the file, or start the \
                 run again with --overwrite",
                steps_path.display()
            );
        }
        let (eval, eval_rows, n) = CsvLog::open(&rd.path("eval.csv"), step, |r: &EvalRow| r.step)?;
        notes.extend(n);
        let (prompts, _, n) =
            CsvLog::open(&rd.path("prompts.csv"), step, |r: &PromptTraceRow| r.step)?;
        notes.extend(n);
        let (rollouts, n) = JsonlLog::open(&rd.path("rollouts.jsonl"), step)?;
        notes.extend(n);
        notes.extend(crate::metrics::tensorboard::cut_back(
            &rd.path("tensorboard"),
            step,
        )?);
        let tb = if tensorboard {
            Some(EventWriter::create(&rd.path("tensorboard"))?)
        } else {
            None
        };
        let logs = Logs {
            steps,
            eval,
            eval_rows,
            prompts,
            rollouts,
            tb,
        };
        Ok((logs, notes))
    }

    /// A step's row: steps.csv, and its numbers as `train/<column>` scalars.
    fn step_row(&mut self, row: &StepRow) -> Result<()> {
        self.steps.append([row])?;
        if let Some(tb) = self.tb.as_mut() {
            let mut vals = numeric_fields("train", row);
            vals.retain(|(k, _)| k != "train/step");
            tb.scalars(row.step, &vals)?;
            tb.flush()?;
        }
        Ok(())
    }

    /// Evaluate every held-out set; returns the first set's accuracy.
    fn evaluate(
        &mut self,
        policy: &Policy,
        cfg: &Config,
        evals: &[(String, Vec<crate::data::Example>)],
        step: u64,
        (cum, generated): (u64, u64),
    ) -> Result<Option<f64>> {
        let mut first = None;
        let mut rows = Vec::new();
        for (name, ex) in evals {
            for sc in evaluate(policy, cfg, name, ex)? {
                first.get_or_insert(sc.accuracy);
                rows.push(EvalRow {
                    step,
                    cum_completions: cum,
                    cum_generated_completions: generated,
                    benchmark: sc.benchmark,
                    problems: sc.problems,
                    accuracy: sc.accuracy,
                    answer_prob: sc.answer_prob,
                });
            }
        }
        self.eval.append(&rows)?;
        if let Some(tb) = self.tb.as_mut() {
            let mut vals: Vec<(String, f64)> = rows
                .iter()
                .map(|r| (format!("eval/{}", r.benchmark), r.accuracy))
                .collect();
            vals.extend(rows.iter().filter_map(|r| {
                r.answer_prob
                    .map(|p| (format!("eval_answer_prob/{}", r.benchmark), p))
            }));
            tb.scalars(step, &vals)?;
            tb.flush()?;
        }
        self.eval_rows.extend(rows);
        Ok(first)
    }

    /// The first held-out set's accuracy before training and at the end.
    fn heldout(&self, first: Option<&str>) -> (Option<f64>, Option<f64>) {
        let of_first = |r: &&EvalRow| first.is_some_and(|n| r.benchmark == n);
        let before = self
            .eval_rows
            .iter()
            .filter(of_first)
            .find(|r| r.step == 0)
            .map(|r| r.accuracy);
        let after = self
            .eval_rows
            .iter()
            .rev()
            .find(of_first)
            .map(|r| r.accuracy);
        (before, after)
    }
}

/// What the loop trains and samples from.
struct Models {
    policy: Policy,
    reference: Option<Reference>,
    trainer: Trainer,
}

impl Models {
    /// The policy (the checkpoint's on a resume), the reference when `kl_coef > 0`, and the
    /// trainer with the checkpoint's optimiser state. With `[model.lora]` the base is always
    /// `model.path` and the checkpoint holds the adapters (`policy/`, `reference/`, PEFT
    /// layout).
    fn load(cfg: &Config, saved: Option<&Saved>) -> Result<Models> {
        let device = device_of(cfg)?;
        let kind = parse_kind(&cfg.model.dtype)?;
        let lora = cfg.model.lora.as_ref();
        let model_dir = match saved {
            Some(s) if lora.is_none() => s.dir.join("policy"),
            _ => PathBuf::from(&cfg.model.path),
        };
        let mut policy = Policy::load(&model_dir, device, kind)
            .with_context(|| format!("model.path = {}", model_dir.display()))?;
        if let Some(l) = lora {
            match saved {
                Some(s) => {
                    let dir = s.dir.join("policy");
                    policy
                        .load_lora(&dir)
                        .with_context(|| format!("LoRA adapter {}", dir.display()))?;
                    let now = l.policy_config();
                    let had = policy.lora_config().cloned();
                    if had.as_ref().map(|h| (h.r, h.alpha)) != Some((now.r, now.alpha)) {
                        anyhow::bail!(
                            "--resume: the checkpoint's adapter ({}) is not [model.lora] = {now:?}",
                            dir.display()
                        );
                    }
                }
                None => policy.enable_lora(l.policy_config(), cfg.seed)?,
            }
        }
        let reference = match (cfg.train.kl_coef > 0.0, lora) {
            (false, _) => None,
            (true, Some(_)) => Some(Reference::Adapter(match saved {
                Some(s) => Policy::read_lora_snapshot(&s.dir.join("reference"))?,
                None => policy.lora_snapshot()?,
            })),
            (true, None) => {
                let dir = saved.map_or(model_dir.clone(), |s| s.dir.join("reference"));
                let ref_device = cfg.train.reference_device(device)?;
                let r = Policy::load(&dir, ref_device, kind)
                    .with_context(|| format!("reference model {}", dir.display()))?;
                Some(Reference::Model(Box::new(r)))
            }
        };
        let mut trainer = Trainer::new(cfg.train.clone(), &policy)?;
        if let Some(s) = saved {
            trainer
                .optimizer_mut()
                .load(&s.dir.join("optimizer.safetensors"))?;
        }
        Ok(Models {
            policy,
            reference,
            trainer,
        })
    }

    /// The start-up line that says how the update runs and what its optimiser state costs.
    fn precision_line(&self) -> String {
        let opt = self.trainer.optimizer();
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let params: u64 = self
            .policy
            .trainable_var_store()
            .variables()
            .values()
            .filter(|t| t.requires_grad())
            .map(|t| t.numel() as u64)
            .sum();
        let what = match opt.precision() {
            crate::train::Precision::Bf16Mixed if opt.has_masters() => format!(
                "fp32 master weights, AdamW moments and gradient accumulator ({} B of master copy; {:.3} GiB of optimiser state in all) beside the {:?} compute weights",
                params * 4,
                gib(opt.state_bytes()),
                self.policy.kind()
            ),
            crate::train::Precision::Pure => format!(
                "weights, moments and updates in {:?} (no master copy; {:.3} GiB of optimiser state)",
                self.policy.kind(),
                gib(opt.state_bytes())
            ),
            _ => format!(
                "fp32 weights and AdamW moments ({:.3} GiB of optimiser state)",
                gib(opt.state_bytes())
            ),
        };
        let what = if self.policy.lora_config().is_some() {
            format!(
                "LoRA adapters in fp32 over the frozen {:?} base: {what}",
                self.policy.kind()
            )
        } else {
            what
        };
        format!(
            "training: train.precision = {} over {params} trainable parameters: {what}",
            opt.precision().name()
        )
    }

    /// Bytes a checkpoint of these models takes at `kind` (policy, reference, two moments);
    /// with LoRA the adapters only, in fp32.
    fn checkpoint_estimate(&self, kind: Kind) -> u64 {
        let lora = self.policy.lora_config().is_some();
        let store = if lora {
            self.policy.trainable_var_store()
        } else {
            self.policy.var_store()
        };
        let params: u64 = store.variables().values().map(|t| t.numel() as u64).sum();
        let width = if lora {
            4
        } else {
            kind.elt_size_in_bytes() as u64
        };
        let copies = 1 + u64::from(self.reference.is_some());
        let opt = self.trainer.optimizer();
        // Moments are fp32 unless `pure`; masters are fp32.
        let moment_width = if opt.precision() == crate::train::Precision::Pure {
            self.policy.kind().elt_size_in_bytes() as u64
        } else {
            4
        };
        let masters = if opt.has_masters() { params * 4 } else { 0 };
        params * width * copies + params * 2 * moment_width + masters
    }

    /// The start-up line that says what one checkpoint takes and how many are kept.
    fn checkpoint_line(&self, cfg: &Config) -> Result<String> {
        let one = self.checkpoint_estimate(parse_kind(&cfg.model.save_dtype)?);
        let keep = cfg.run.keep_checkpoints;
        let gb = |b: u64| b as f64 / 1e9;
        let parts = if self.reference.is_some() {
            "policy, reference, optimiser state"
        } else {
            "policy, optimiser state"
        };
        let when = match cfg.run.checkpoint_every {
            0 => "at the end".to_string(),
            k => format!("every {k} steps and at the end"),
        };
        let kept = format!(
            "the last {keep} kept (run.keep_checkpoints): up to {:.2} GB",
            gb(one * keep as u64)
        );
        Ok(format!(
            "checkpoints: {:.2} GB each ({parts}; model.save_dtype = {}), {when}, {kept}",
            gb(one),
            cfg.model.save_dtype
        ))
    }

    /// Write checkpoint `step_<N>` (see [`crate::rundir::write_checkpoint`]).
    fn save(
        &self,
        rd: &RunDir,
        cfg: &Config,
        cur: &Curriculum,
        counters: &Counters,
        data: &DatasetFingerprint,
    ) -> Result<()> {
        let kind = parse_kind(&cfg.model.save_dtype)?;
        let need: CheckpointSpace = crate::rundir::checkpoint_space(
            rd.latest().ok().flatten().as_deref(),
            self.checkpoint_estimate(kind),
        );
        let name = format!("step_{:07}", counters.step);
        let state = CheckpointState {
            counters: counters.clone(),
            curriculum: cur.state().clone(),
            config: cfg.clone(),
            dataset: Some(data.clone()),
        };
        let keep = cfg.run.keep_checkpoints;
        let bytes = self.checkpoint_estimate(kind);
        crate::rundir::write_checkpoint(&rd.ckpt_root(), &name, keep, need, |tmp: &Path| {
            // A libtorch failure is an error here, so the half-written directory is removed.
            let what = || format!("{name}: {:.2} GB in {kind:?}", bytes as f64 / 1e9);
            fault::scope(Phase::Checkpoint, what, || {
                self.write_into(tmp, kind, &state)
            })
        })?;
        Ok(())
    }

    /// The checkpoint's files, into the temporary directory `tmp`.
    fn write_into(&self, tmp: &Path, kind: Kind, state: &CheckpointState) -> Result<()> {
        {
            // Exact resume needs the trainer's dtype: save_dtype defaults to it.
            // The fp32 masters (bf16_mixed) are the weights; the bf16 copy is derived.
            let masters = self.trainer.optimizer().masters();
            if self.policy.lora_config().is_some() {
                // The adapters in PEFT layout, fp32 (they train in fp32).
                self.policy.save_lora(&tmp.join("policy"), Kind::Float)?;
            } else {
                self.policy
                    .save_hf_with(&tmp.join("policy"), kind, 2 << 30, &masters)?;
            }
            match &self.reference {
                Some(Reference::Model(r)) => r.save_hf(&tmp.join("reference"), kind, 2 << 30)?,
                Some(Reference::Adapter(snap)) => {
                    let dir = tmp.join("reference");
                    self.policy
                        .with_lora_weights(snap, || self.policy.save_lora(&dir, Kind::Float))?;
                }
                None => {}
            }
            self.trainer
                .optimizer()
                .save(&tmp.join("optimizer.safetensors"))?;
            let p = tmp.join("state.json");
            std::fs::write(&p, serde_json::to_vec(state)?)
                .with_context(|| format!("cannot write {}", p.display()))
        }
    }
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
    let start = match (opts.resume, opts.overwrite) {
        (true, true) => anyhow::bail!("--resume and --overwrite exclude each other"),
        (true, false) => crate::rundir::Start::Resume,
        (false, true) => crate::rundir::Start::Overwrite,
        (false, false) => crate::rundir::Start::Fresh,
    };
    let mut rd = RunDir::open(&dir, start)?;
    // Everything that can refuse the run is checked before the first step: the config against
    // the checkpoint, the data, the model, the servers.
    let saved = if opts.resume {
        Some(Saved::read(&rd, &cfg)?)
    } else {
        None
    };
    let changes = saved.as_ref().map_or(Vec::new(), |s| s.changes.clone());
    let raw = load_dataset(&cfg.data.train, &cfg, false)
        .with_context(|| format!("data.train = {:?}", cfg.data.train))?;
    let evals = eval_sets(&cfg)?;
    // The cheap checks of `cures check`, its probe and its memory plan, before the model loads.
    let model_dir = Path::new(&cfg.model.path);
    let servers = check::probe_servers(&cfg)?;
    let warn = |w: String| format!("warning: {w}");
    let mut early: Vec<String> = cfg.warnings().into_iter().map(warn).collect();
    if let Some(p) = &servers {
        early.extend(p.lines(cfg.rollout.sync));
    }
    // A LoRA checkpoint holds adapters: the model is always model.path's.
    let policy_dir = match &saved {
        Some(s) if cfg.model.lora.is_none() => s.dir.join("policy"),
        _ => model_dir.to_path_buf(),
    };
    if let Some(l) = &cfg.model.lora {
        let how = match cfg.rollout.sync {
            crate::rollout::SyncKind::VllmLora => {
                "vLLM loads each new adapter (rollout.sync = \"vllm_lora\")".to_string()
            }
            crate::rollout::SyncKind::Auto | crate::rollout::SyncKind::Embedded
                if cfg.rollout.engine == crate::rollout::EngineKind::Embedded =>
            {
                "the embedded engine samples from the adapters in place".to_string()
            }
            crate::rollout::SyncKind::Off | crate::rollout::SyncKind::Auto => {
                "nothing is published (rollout.sync = \"none\"): the server keeps the base"
                    .to_string()
            }
            other => format!(
                "rollout.sync = {other:?} publishes the merged weights (the full model) every \
                 step; \"vllm_lora\" publishes only the adapters"
            ),
        };
        early.push(format!(
            "LoRA: r = {}, alpha = {}, on {}; the base is frozen; {how}",
            l.r,
            l.alpha.unwrap_or(l.r as f64),
            l.target_modules.join(", ")
        ));
    }
    let (mc, tok) = check::model_and_tokenizer(&policy_dir)
        .with_context(|| format!("model.path = {}", cfg.model.path))?;
    check::check_stop_ids(&cfg, mc.vocab_size, model_dir)?;
    let context = ContextLimit::of_model(mc.max_position_embeddings).with_servers(servers.as_ref());
    let data = fit_prompts(&tok, &context, &cfg, raw)?;
    let (evals, eval_drops) = setup::fit_eval_sets(&tok, &context, &cfg, evals)?;
    early.extend(eval_drops.into_iter().map(warn));
    let shape = crate::train::plan::DataShape {
        longest_prompt: data.prompt_ids.iter().map(Vec::len).max().unwrap_or(0),
        prompts: data.prompt_ids.len(),
    };
    let (plan, available) = check::memory_plan(&cfg, check::configured_memory(&cfg)?, Some(shape))?;
    if let Some(a) = available {
        plan.check_fits(a).map_err(|e| {
            anyhow::anyhow!("{e} (see every part with `cures check --config ... --plan`)")
        })?;
    }
    let mut m = Models::load(&cfg, saved.as_ref())?;
    early.extend(cfg.pool_warnings(data.examples.len()).into_iter().map(warn));
    let print = crate::rundir::dataset_fingerprint(&data.examples);
    let (mut cur, mut counters) = match saved {
        Some(s) => s.restore(&cfg, &print, &cfg.data.train)?,
        None => (
            Curriculum::new(&cfg, data.examples.len())?,
            Counters::default(),
        ),
    };
    let prompts = Prompts {
        train: &data.examples,
        ids: &data.prompt_ids,
    };
    let mut engine = make_engine(&cfg, &m.policy)?;
    engine.set_weight_version(counters.weight_version);
    let mut sync = make_sync(&cfg, &dir)?;
    if sync.transfers() {
        // The server must sample from exactly the trainer's weights (fresh start or resume).
        let what = || {
            format!(
                "initial publish of weights version {}",
                counters.weight_version
            )
        };
        fault::scope(Phase::Publish, what, || {
            let masters = m.trainer.optimizer().masters();
            let w = crate::sync::Weights {
                policy: &m.policy,
                masters: Some(&masters),
            };
            sync.publish_weights(w, counters.weight_version)
                .with_context(|| format!("initial weight sync ({})", sync.name()))
        })?;
    }
    let (mut logs, cut) = Logs::open(&rd, counters.step, cfg.run.tensorboard)?;
    rd.keep();

    let total = total_steps(&cfg);
    let bar = crate::metrics::progress_bar(total, "run", !opts.quiet);
    bar.set_position(counters.step);
    if let Some(ck) = rd.latest()?.filter(|_| opts.resume) {
        let line = format!(
            "resumed from step {} of {total} ({}; {} completions so far)",
            counters.step,
            ck.display(),
            counters.cum_completions
        );
        say(&bar, opts.quiet, line);
    }
    for w in early {
        say(&bar, opts.quiet, w);
    }
    for c in cut {
        // What a resume cut from the logs is said even with --quiet.
        say(&bar, false, format!("--resume: {c}"));
    }
    for c in &changes {
        tracing::info!(
            "--resume: {} changes from {} to {} at step {}",
            c.key,
            c.from.as_deref().unwrap_or("(unset)"),
            c.to.as_deref().unwrap_or("(unset)"),
            counters.step
        );
    }
    say(&bar, opts.quiet, m.precision_line());
    say(&bar, opts.quiet, m.checkpoint_line(&cfg)?);
    let eval_on = cfg.run.eval_every > 0 && !evals.is_empty();
    if eval_on && counters.step == 0 && logs.eval_rows.is_empty() {
        let what = || "held-out evaluation before training".into();
        let first = fault::scope(Phase::Generate, what, || {
            logs.evaluate(&m.policy, &cfg, &evals, 0, (0, 0))
        })?;
        if let Some(a) = first {
            let line = format!("held-out accuracy before training: {a:.3}");
            say(&bar, opts.quiet, line);
        }
    }

    let mut phase_sum = [0.0f64; 6];
    let steps_at_start = counters.step;
    let completions_at_start = counters.cum_completions;
    let wall_at_start = counters.wall_s;
    let t_loop = Instant::now();
    let mut config_recorded = false;
    while counters.step < total {
        // Errors name the step; a libtorch failure outside the named phases is an error too.
        fault::set_step(Some(counters.step + 1));
        let (row, lines) = fault::catch(|| {
            train_step(
                &cfg,
                &prompts,
                (&m.policy, &mut m.reference, &mut m.trainer),
                &mut cur,
                &mut counters,
                engine.as_mut(),
                sync.as_mut(),
                &bar,
            )
        })?;
        for (k, s) in row.phase_seconds().into_iter().enumerate() {
            phase_sum[k] += s;
        }
        say(&bar, opts.quiet, row.summary_line());
        logs.step_row(&row)?;
        logs.rollouts.append(&lines)?;
        bar.inc(1);
        if opts.resume && counters.step == steps_at_start + 1 {
            record_resume(&rd, &cfg, steps_at_start, &changes)?;
        }

        let last = counters.step == total;
        let every = |k: usize| k > 0 && counters.step % k as u64 == 0;
        if eval_on && (every(cfg.run.eval_every) || last) {
            fault::scope(
                Phase::Generate,
                || "held-out evaluation".into(),
                || {
                    logs.evaluate(
                        &m.policy,
                        &cfg,
                        &evals,
                        counters.step,
                        (
                            counters.cum_completions,
                            counters.cum_completions + counters.cum_init_completions,
                        ),
                    )
                },
            )?;
        }
        if every(cfg.run.prompts_every) || last {
            let rows = step::trace_rows(&cur, prompts.train, counters.step);
            logs.prompts.append(&rows)?;
        }
        counters.wall_s = wall_at_start + t_loop.elapsed().as_secs_f64();
        if every(cfg.run.checkpoint_every) || last {
            m.save(&rd, &cfg, &cur, &counters, &print)?;
            if !opts.resume && !config_recorded {
                record_config(&rd, &cfg)?;
                config_recorded = true;
            }
        }
    }
    fault::set_step(None);
    bar.finish_and_clear();
    let (heldout_before, heldout_after) = logs.heldout(evals.first().map(|(n, _)| n.as_str()));
    let done = (counters.step - steps_at_start).max(1) as f64;
    Ok(RunSummary {
        out: dir,
        steps: counters.step,
        completions: counters.cum_completions,
        resumed_from: steps_at_start,
        steps_here: counters.step - steps_at_start,
        completions_here: counters.cum_completions - completions_at_start,
        run_wall_s: wall_at_start + t_loop.elapsed().as_secs_f64(),
        init_completions: counters.cum_init_completions,
        dropped_prompts: data.dropped,
        heldout_before,
        heldout_after,
        wall_s: t_start.elapsed().as_secs_f64(),
        phase_s: phase_sum.map(|s| s / done),
        files: rd.written(),
    })
}

/// One step of Algorithm 1: (stage 0 when an iteration starts), sample and allocate, generate,
/// score, observe, advantages, update, publish. Returns the step's row and its rollout lines.
#[allow(clippy::too_many_arguments)]
fn train_step(
    cfg: &Config,
    prompts: &Prompts<'_>,
    (policy, reference, trainer): (&Policy, &mut Option<Reference>, &mut Trainer),
    cur: &mut Curriculum,
    counters: &mut Counters,
    engine: &mut dyn RolloutEngine,
    sync: &mut dyn WeightSync,
    bar: &indicatif::ProgressBar,
) -> Result<(StepRow, Vec<String>)> {
    let mut row = StepRow::default();
    if cur.iteration_due() {
        // Iteration start: pre-rollouts (not trained on), reference = current weights.
        let t = Instant::now();
        let (made, stale, tokens) =
            step::iteration_start(engine, cfg, policy, prompts, cur, counters)?;
        counters.cum_init_completions += made;
        counters.cum_init_tokens += tokens;
        row.stale_completions += stale;
        if let Some(r) = reference.as_mut() {
            r.refresh(policy)?;
        }
        row.sec_init = t.elapsed().as_secs_f64();
    }

    let t = Instant::now();
    let mut plan = cur.plan_step()?;
    row.sec_sample = t.elapsed().as_secs_f64();

    let t = Instant::now();
    bar.set_message(format!(
        "step {}: generating {} completions",
        counters.step + 1,
        plan.completions()
    ));
    let groups = plan.groups.iter().map(|g| (g.prompt, g.n as usize));
    let gen = step::generate(engine, cfg, prompts, groups, counters.step, 0)?;
    row.stale_completions += gen.stale;
    // A prompt the server refused sits the step out: no completions, no observation.
    for &k in &gen.skipped {
        plan.groups[k].n = 0;
    }
    row.skipped_prompts = gen.skipped.len() as u64;
    row.sec_generate = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let scored = step::score(cfg, prompts, &plan, &gen);
    row.sec_reward = t.elapsed().as_secs_f64();

    let t = Instant::now();
    cur.observe_step(&plan, &scored.successes)?;
    let adv = advantages(cfg.train.advantage, &scored.groups);
    let samples = step::samples(&gen, &adv);
    let stats = trainer.update(policy, reference.as_ref(), &samples)?;
    row.sec_train = t.elapsed().as_secs_f64();

    let t = Instant::now();
    counters.weight_version += 1;
    let what = format!(
        "weights version {} ({})",
        counters.weight_version,
        sync.name()
    );
    fault::scope(
        Phase::Publish,
        || what,
        || {
            // From the fp32 masters when the optimiser keeps them.
            let masters = trainer.optimizer().masters();
            let w = crate::sync::Weights {
                policy,
                masters: Some(&masters),
            };
            sync.publish_weights(w, counters.weight_version)
                .with_context(|| format!("weight sync ({})", sync.name()))
        },
    )?;
    engine.set_weight_version(counters.weight_version);
    row.sec_sync = t.elapsed().as_secs_f64();
    if let Some(st) = sync.last_timing() {
        (row.sync_write_s, row.sync_load_s, row.sync_verify_s) =
            (st.write_s, st.call_s, st.verify_s);
    }

    counters.step += 1;
    step::fill_row(
        &mut row,
        &plan,
        &gen.comps,
        &gen.requests,
        &scored.groups,
        &scored.successes,
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
    row.cum_init_tokens = counters.cum_init_tokens;
    row.cum_generated_completions = counters.cum_completions + counters.cum_init_completions;
    row.cum_generated_tokens = counters.cum_tokens + counters.cum_init_tokens;
    let lines = step::rollout_lines(cfg, prompts, &plan, &gen, &scored, counters.step)?;
    Ok((row, lines))
}

impl StepRow {
    /// Seconds per phase: init, sample, generate, reward, train, sync.
    fn phase_seconds(&self) -> [f64; 6] {
        [
            self.sec_init,
            self.sec_sample,
            self.sec_generate,
            self.sec_reward,
            self.sec_train,
            self.sec_sync,
        ]
    }

    /// The line printed after the step.
    fn summary_line(&self) -> String {
        let mut skipped = match self.skipped_prompts {
            0 => String::new(),
            k => format!(
                " | {k} prompt{} refused by the server",
                if k == 1 { "" } else { "s" }
            ),
        };
        if self.zero_sigma_prompts > 0 {
            skipped += &format!(
                " | {} σ = 0 prompt{} skipped, {} completions",
                self.zero_sigma_prompts,
                if self.zero_sigma_prompts == 1 {
                    ""
                } else {
                    "s"
                },
                self.completions
            );
        }
        format!(
            "step {:>4} it {} | reward {:.3} | zero-var {:.2} | n {}..{} | loss {:+.4} kl {:.4} | gen {:.1}s train {:.1}s{skipped}",
            self.step, self.iteration, self.mean_reward, self.zero_var_group_frac, self.n_min,
            self.n_max, self.loss, self.kl, self.sec_generate, self.sec_train
        )
    }
}
