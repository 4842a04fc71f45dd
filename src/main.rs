//! The `cures` command line: argument parsing only; every subcommand calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use cures::config::{Config, StrategyKind};
use cures::fault::{self, Phase};

#[derive(Parser)]
#[command(
    name = "cures",
    version,
    about = "Curriculum RL post-training for reasoning LLMs (CurES)"
)]
struct Cli {
    /// Override a config key, e.g. --set curriculum.tau=0.2 (repeatable; applies to every command).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Errors from libtorch carry its whole message (with its C++ backtrace), as with
    /// RUST_BACKTRACE=1.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config and print it resolved (defaults filled in).
    Check {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Check the config alone, not the data and model files it names.
        #[arg(long, conflicts_with = "probe")]
        config_only: bool,
        /// Also ask every inference server in [[rollout.endpoints]]: health, the served model
        /// name, its context (max_model_len) and the routes rollout.sync needs.
        #[arg(long)]
        probe: bool,
        /// Print the memory plan (bytes of each part per device) from the model's config.json
        /// alone, skipping the data and weight checks; refuse a plan that does not fit.
        #[arg(long, conflicts_with_all = ["probe", "config_only"])]
        plan: bool,
        /// The trainer device's memory for --plan (e.g. 80GiB; default run.device_memory, else
        /// the machine's memory for a CPU run).
        #[arg(long, requires = "plan")]
        gpu_mem: Option<String>,
    },
    /// Run a strategy against synthetic prompts with known accuracies.
    Simulate(SimulateArgs),
    /// Performance figures, each side by side with its reference.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// How much of a model moved between two HF checkpoints: share of weight elements that
    /// differ, overall and per tensor class.
    Diff(cures::policy::diff::DiffArgs),
    /// Sample completions from an HF model directory (tch policy).
    Generate(cures::policy::cli::GenerateArgs),
    /// Merge a LoRA adapter (PEFT layout, e.g. a LoRA run's checkpoint policy/) into its base:
    /// a full HF checkpoint for `cures eval` or `vllm serve`.
    MergeLora(cures::policy::cli::MergeLoraArgs),
    /// The reward: verify answers against golds.
    #[command(subcommand)]
    Reward(cures::reward::cli::RewardCommand),
    /// Datasets: inspect one, or convert one to cures's JSONL.
    #[command(subcommand)]
    Data(cures::data::cli::DataCommand),
    /// Supervised warm start of the tiny testbed policy (writes an HF checkpoint).
    Sft {
        /// The TOML config (its [sft] and [testbed] sections).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Checkpoint directory (overrides sft.out).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one JSON summary object as the last line of stdout.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Benchmark accuracy (pass@1, avg@k, pass@k, maj@k) of a checkpoint or a server.
    Eval(cures::eval::EvalArgs),
    /// Charts (PNG + SVG) of run directories: accuracy, reward, allocation, ρ, p̂, phase times.
    Plot(cures::plot::PlotArgs),
    /// The learning-efficiency study (docs/study.md): arms × seeds on a task family, in pieces,
    /// resumable; `summarize DIR` recomputes summary.csv from whatever finished runs exist.
    Study(StudyArgs),
    /// Convert model files from other formats into HF checkpoint directories.
    #[command(subcommand)]
    Convert(ConvertCommand),
    /// Publish a checkpoint to a running inference server (vLLM LoRA / full weights, SGLang).
    Sync(cures::sync::cli::SyncArgs),
    /// Stage 0 alone: N' rollouts of every prompt, posterior and σ statistics, as CSV — a map of
    /// a dataset's difficulty for a model.
    Init {
        /// The TOML config (model, data, rollout, iterations.init_rollouts, curriculum.sigma).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output directory (init.csv, init_posterior.json).
        #[arg(long, default_value = "results/init")]
        out: PathBuf,
        /// Print one JSON summary object as the last line of stdout.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Train: CurES (or a baseline strategy) end to end, Algorithm 1.
    Run {
        /// The TOML config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run directory (default run.out, else results/runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in the run directory from its latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Start afresh even when the run directory holds a run: its files (logs, config,
        /// checkpoints, sync versions) are deleted first.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// Print one JSON summary object as the last line of stdout.
        #[arg(long)]
        json: bool,
        /// No progress bar and no per-step lines.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Args)]
struct SimulateArgs {
    /// The TOML config (defaults when omitted).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Strategy (overrides curriculum.strategy).
    #[arg(long, value_enum)]
    strategy: Option<StrategyKind>,
    /// Steps (overrides simulate.steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Output directory (default results/sim/<name>-<strategy>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON summary object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum ConvertCommand {
    /// A llama.cpp llama GGUF (F32/F16/BF16/Q4_0/Q4_1/Q8_0 tensors) → an f32 HF safetensors
    /// directory (config.json, generation_config.json, tokenizer files).
    Gguf {
        /// The GGUF file.
        #[arg(long)]
        gguf: PathBuf,
        /// Directory with tokenizer.json (and tokenizer_config.json etc., copied when present).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Output directory (must not exist; written atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct StudyArgs {
    #[command(subcommand)]
    action: Option<StudyAction>,
    /// Study config (base of every run).
    #[arg(long, default_value = "configs/study.toml")]
    config: PathBuf,
    /// Output directory (runs go to runs/<family>/<arm>-s<seed>; results/study holds the
    /// first design's runs, N = 1024, docs/study.md).
    #[arg(long, default_value = "results/study2")]
    out: PathBuf,
    /// Seeds per arm.
    #[arg(long, default_value_t = 15)]
    seeds: usize,
    /// The first seed: runs seeds S..S+K (other pieces of the same design).
    #[arg(long, default_value_t = 0)]
    seed_offset: u64,
    /// Arms, comma-separated (default: the design's grpo,cures,cures_sampling_only; every arm:
    /// also speed_rl, gvm, cures_tau0.05, cures_tau0.2, cures_tau0.5, cures_sigma_gradient,
    /// cures_lambda0.9).
    #[arg(long, value_delimiter = ',', alias = "only")]
    arms: Vec<String>,
    /// Task family.
    #[arg(long, default_value = "testbed")]
    family: String,
    /// No per-step lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum StudyAction {
    /// Recompute DIR/summary.csv, curves.csv and plots/ from the finished runs under DIR/runs.
    Summarize {
        /// The study directory.
        dir: PathBuf,
    },
    /// GRPO's gradient noise scale at the study's start (in completions) beside its informative
    /// completions per step: the figure that chose the design's regime (docs/study.md).
    NoiseScale {
        /// Study config.
        #[arg(long, default_value = "configs/study.toml")]
        config: PathBuf,
        /// Prompts per step of the large batch.
        #[arg(long, default_value_t = 16)]
        prompts: usize,
        /// Prompts per step of the small batch.
        #[arg(long, default_value_t = 2)]
        small: usize,
        /// Completions per prompt.
        #[arg(long, default_value_t = 8)]
        per_prompt: usize,
        /// Steps (gradient samples) per batch size.
        #[arg(long, default_value_t = 256)]
        steps: usize,
        /// Where the two runs go.
        #[arg(long, default_value = "results/study2/noise-scale")]
        out: PathBuf,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

fn print_summary(rows: &[cures::study::SummaryRow], out: &std::path::Path) {
    let f = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |v| format!("{v:.d$}"));
    let ci = |m: Option<f64>, lo: Option<f64>, hi: Option<f64>, d: usize| {
        format!("{} [{}, {}]", f(m, d), f(lo, d), f(hi, d))
    };
    println!(
        "{:<9} {:<21} {:>5} {:>24} {:>24} {:>27} {:>27} {:>5} {:>8}",
        "family",
        "method",
        "seeds",
        "R(A50) [95% CI]",
        "R(A75) [95% CI]",
        "AUC - GRPO [95% CI]",
        "final - GRPO [95% CI]",
        "cens",
        "wall s"
    );
    for r in rows {
        println!(
            "{:<9} {:<21} {:>5} {:>24} {:>24} {:>27} {:>27} {:>5} {:>8.0}",
            r.family,
            r.method,
            r.seeds,
            ci(r.ratio_a50, r.ratio_a50_lo, r.ratio_a50_hi, 2),
            ci(r.ratio_a75, r.ratio_a75_lo, r.ratio_a75_hi, 2),
            ci(r.auc_diff, r.auc_diff_lo, r.auc_diff_hi, 4),
            ci(r.final_gap, r.final_gap_lo, r.final_gap_hi, 4),
            r.censored,
            r.wall_s
        );
    }
    println!("wrote {}/{{summary.csv,curves.csv,plots/}}", out.display());
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One curriculum step at scale vs the Python references.
    Curriculum {
        /// Pool size.
        #[arg(long, default_value_t = 1_000_000)]
        prompts: usize,
        /// Prompts per step (m).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Completions per step (N).
        #[arg(long, default_value_t = 8192)]
        budget: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Skip the Python references.
        #[arg(long)]
        no_reference: bool,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Rollout client overhead: orchestrator CPU per completion vs server generation time.
    Client(cures::bench::client::ClientBenchArgs),
    /// The most requests the rollout client keeps in flight against a server without an error
    /// or retry (a sweep of concurrency limits).
    Inflight(cures::bench::client::InflightBenchArgs),
    /// Every figure in one table (curriculum, reward, train step, generation, checkpoint write,
    /// client overhead), each side by side with its reference.
    All {
        /// OpenAI-compatible server for the client-overhead row.
        #[arg(long)]
        endpoint: Option<String>,
        /// Model directory (e.g. SmolLM2): its tokenizer encodes the client bench prompts, and the
        /// publish-write rows write it.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Smaller sizes, for a quick check.
        #[arg(long)]
        quick: bool,
        /// Print one JSON object (the rows) as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint write (HF safetensors, fsync) vs dd of the same bytes.
    Checkpoint {
        /// Repetitions.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Publish time of full weights and of a LoRA adapter (to a vLLM server, or the write part
    /// alone) vs dd of the same bytes.
    Publish(cures::bench::publish::PublishBenchArgs),
    /// One optimiser step (clip + AdamW) in each train.precision vs PyTorch's fused AdamW.
    Optim(cures::bench::optim::OptimBenchArgs),
    /// Answer verification throughput and agreement vs Math-Verify.
    Reward(cures::bench::reward::RewardBenchArgs),
    /// Random strings through the verifier: panics (must be 0) and the slowest case.
    RewardFuzz(cures::bench::reward::RewardFuzzArgs),
    /// Forward+backward tokens/s of a preset's model on a device: cures (tch) vs PyTorch eager
    /// (and MFU on CUDA); or, with --head-memory, the update's peak memory vs the plan.
    TrainStep(cures::bench::train_step::TrainStepArgs),
    /// Greedy generation tokens/s with the KV cache vs recomputing the prefix, in f32 and bf16.
    Generate(cures::bench::train_step::GenerateArgs),
}

/// `cures bench train-step --head-memory PRESET`: the update's peak memory, chunked and not,
/// beside the memory plan.
fn head_memory_bench(
    name: &str,
    child_chunk: Option<usize>,
    steps: usize,
    json: bool,
) -> Result<()> {
    use cures::bench::head_memory;
    let preset = head_memory::Preset::named(name)?;
    if let Some(chunk) = child_chunk {
        let r = head_memory::measure(&preset, chunk, steps)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let rs = head_memory::run(&preset, &[cures::policy::DEFAULT_CHUNK_TOKENS, 0], steps)?;
    println!(
        "update of {} x {} tokens, vocabulary {} ({} layers, hidden {}), CPU:",
        preset.batch, preset.seq, preset.vocab, preset.layers, preset.hidden
    );
    for r in &rs {
        println!(
                    "  logits_chunk_tokens {:>5}: peak {:>8.1} MB (plan {:>8.1} MB, {:+.0}%), {:>9.1} tokens/s",
                    r.chunk,
                    r.peak_bytes as f64 / 1e6,
                    r.plan_bytes as f64 / 1e6,
                    100.0 * (r.plan_bytes as f64 / r.peak_bytes.max(1) as f64 - 1.0),
                    r.tokens_per_s
                );
    }
    if let [on, off] = &rs[..] {
        println!(
            "  chunked / unchunked: peak {:.3}x, tokens/s {:.3}x",
            on.peak_bytes as f64 / off.peak_bytes.max(1) as f64,
            on.tokens_per_s / off.tokens_per_s
        );
    }
    if json {
        println!("{}", serde_json::to_string(&rs)?);
    }
    Ok(())
}
fn load_config(path: Option<&PathBuf>, set: &[String]) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p, set)?,
        None => Config::from_toml_str("", "<defaults>", set)?,
    })
}

fn simulate(args: SimulateArgs, set: &[String]) -> Result<()> {
    let mut set = set.to_vec();
    if let Some(s) = args.strategy {
        set.push(format!("curriculum.strategy={s}"));
    }
    if let Some(n) = args.steps {
        set.push(format!("simulate.steps={n}"));
    }
    let config = load_config(args.config.as_ref(), &set)?;
    let steps = config
        .simulate
        .steps
        .unwrap_or(config.iterations.subsets * config.iterations.steps) as u64;
    let bar = cures::metrics::progress_bar(steps, "simulate", !args.quiet && !args.json);
    let sim = cures::simulate::simulate(&config, |row| {
        bar.inc(1);
        bar.set_message(format!("wasted {:.3}", row.wasted_fraction));
    })?;
    bar.finish_and_clear();
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("results/sim").join(format!("{}-{}", config.name, config.curriculum.strategy))
    });
    cures::simulate::write_outputs(&sim, &config, &out)?;
    let s = &sim.summary;
    println!(
        "strategy {}: {} steps, {} completions (+{} init), wasted fraction {:.4}, posterior MAE {:.4} (batch {:.4}), mean H(rho) {:.3}, true accuracy {:.4} -> {:.4}",
        s.strategy, s.steps, s.completions, s.init_completions, s.wasted_fraction,
        s.posterior_mae, s.batch_mae, s.rho_entropy, s.true_acc_start, s.true_acc_end
    );
    println!(
        "wrote {}/{{sim_steps.csv,prompts.csv,summary.json}}",
        out.display()
    );
    if args.json {
        println!("{}", serde_json::to_string(s)?);
    }
    Ok(())
}

/// Commands that read no config, with what sets their options instead: `--set` would be
/// silently ignored there, so it is refused.
fn reads_no_config(c: &Command) -> Option<(&'static str, &'static str)> {
    Some(match c {
        Command::Data(_) => (
            "cures data",
            "its flags --problem-key, --answer-key, --solution-key, --id-key, --level-key and \
             --split set what the data.*_key and data.*_split keys set for a run",
        ),
        Command::Generate(_) => ("cures generate", "its flags (cures generate --help)"),
        Command::Diff(_) => ("cures diff", "its flags (cures diff --help)"),
        Command::MergeLora(_) => ("cures merge-lora", "its flags (cures merge-lora --help)"),
        Command::Sync(_) => ("cures sync", "its flags (cures sync --help)"),
        Command::Convert(_) => ("cures convert", "its flags (cures convert --help)"),
        Command::Reward(_) => ("cures reward", "its flags (cures reward --help)"),
        Command::Plot(_) => ("cures plot", "its flags (cures plot --help)"),
        Command::Study(StudyArgs {
            action: Some(StudyAction::Summarize { .. }),
            ..
        }) => (
            "cures study summarize",
            "nothing: it reads the finished runs as they are",
        ),
        _ => return None,
    })
}

fn run(cli: Cli) -> Result<()> {
    if let (Some(first), Some((what, instead))) = (cli.set.first(), reads_no_config(&cli.command)) {
        anyhow::bail!("{what} reads no config, so --set {first} would be ignored: {instead}");
    }
    match cli.command {
        Command::Check {
            config,
            config_only,
            probe,
            plan,
            gpu_mem,
        } => {
            let c = Config::load(&config, &cli.set)?;
            if plan {
                let given = match gpu_mem {
                    Some(g) => Some(
                        cures::train::plan::parse_bytes(&g)
                            .map_err(|e| anyhow::anyhow!("--gpu-mem: {e}"))?,
                    ),
                    None => cures::run::configured_memory(&c)?,
                };
                // Sequences are sized by the longest prompt of the data when it can be read.
                let longest = match cures::run::data_shape(&c) {
                    Ok(d) => {
                        println!(
                            "# data.train: {} prompts, the longest {} tokens",
                            d.prompts, d.longest_prompt
                        );
                        Some(d)
                    }
                    Err(e) => {
                        println!(
                            "# data.train not read ({e:#}): sequences planned at the context's \
                             length"
                        );
                        None
                    }
                };
                let (p, available) = cures::run::memory_plan(&c, given, longest)
                    .with_context(|| format!("{}: the memory plan", config.display()))?;
                print!("{p}");
                if let Some(a) = available {
                    p.check_fits(a)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
                }
                match available {
                    Some(a) => println!(
                        "# plan fits: {:.2} of {:.2} GB on {}",
                        p.trainer_bytes() as f64 / 1e9,
                        a as f64 / 1e9,
                        c.model.device
                    ),
                    None => println!(
                        "# plan: {} memory unknown (give --gpu-mem or run.device_memory)",
                        c.model.device
                    ),
                }
                return Ok(());
            }
            if config_only {
                for w in c.warnings() {
                    println!("# warning: {w}");
                }
            } else {
                let found = cures::run::check_inputs(&c, probe)
                    .with_context(|| format!("{}: the inputs it names", config.display()))?;
                print!("{found}");
            }
            println!("# {} is valid; resolved configuration:", config.display());
            print!("{}", c.to_toml());
        }
        Command::Simulate(args) => simulate(args, &cli.set)?,
        Command::Generate(args) => fault::scope(
            Phase::Generate,
            || "cures generate".into(),
            || cures::policy::cli::generate(&args),
        )?,
        Command::Diff(args) => cures::policy::diff::run(&args)?,
        Command::MergeLora(args) => fault::scope(
            Phase::Checkpoint,
            || "cures merge-lora".into(),
            || cures::policy::cli::merge_lora(&args),
        )?,
        Command::Bench(BenchCommand::TrainStep(a)) => {
            if let Some(name) = &a.head_memory {
                return head_memory_bench(name, a.child_chunk, a.steps.unwrap_or(5), a.json);
            }
            use cures::bench::train_step as ts;
            let b = ts::TrainStepBench::from_args(&a)?;
            let r = ts::run_train_step(&b).context("bench train-step")?;
            ts::print_train_step(&r);
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCommand::Generate(a)) => {
            use cures::bench::train_step as ts;
            let g = ts::GenerateBench::from_args(&a)?;
            let r = ts::run_generate(&g).context("bench generate")?;
            ts::print_generate(&r);
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Sft {
            config,
            out,
            json,
            quiet,
        } => {
            let cfg = load_config(config.as_ref(), &cli.set)?;
            let r = fault::scope(
                Phase::Update,
                || "cures sft".into(),
                || cures::sft::sft(&cfg, out.as_deref(), quiet || json),
            )?;
            println!(
                "warm-started a {}-parameter policy on {} examples in {:.0} s (final loss {:.4}); wrote {}",
                r.params, r.examples, r.wall_s, r.final_loss, r.out.display()
            );
            for (name, acc) in &r.heldout_by_level {
                println!("  {name:<14} greedy accuracy {acc:.3}");
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Init {
            config,
            out,
            json,
            quiet,
        } => {
            let cfg = load_config(config.as_ref(), &cli.set)?;
            let s = fault::scope(
                Phase::Generate,
                || "cures init".into(),
                || cures::run::init(&cfg, &out, quiet || json),
            )?;
            println!(
                "{} prompts x {} rollouts: accuracy {:.3}, never solved {}, always solved {} ({:.0} s); wrote {}/{{init.csv,init_posterior.json}}",
                s.prompts, cfg.iterations.init_rollouts, s.accuracy, s.never_solved, s.always_solved, s.wall_s, out.display()
            );
            if json {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Study(a) => {
            match a.action {
                Some(StudyAction::Summarize { dir }) => {
                    let rows = cures::study::summarize_dir(&dir)?;
                    print_summary(&rows, &dir);
                    return Ok(());
                }
                Some(StudyAction::NoiseScale {
                    config,
                    prompts,
                    small,
                    per_prompt,
                    steps,
                    out,
                    json,
                }) => {
                    let n = cures::study::noise::measure(
                        &config,
                        &cli.set,
                        &out,
                        (prompts, small, per_prompt),
                        steps,
                        true,
                    )?;
                    println!(
                        "GRPO at the study's start, {} steps per batch size ({:.0} s):",
                        n.steps, n.wall_s
                    );
                    println!(
                        "  mean |G_B|^2: {:.4e} at B = {}, {:.4e} at B = {}",
                        n.sq_norm_big, n.big, n.sq_norm_small, n.small
                    );
                    println!(
                        "  |G|^2 = {:.4e}, tr(Sigma) = {:.4e}: noise scale B_simple = {:.0} completions (95% bootstrap interval {:.0}-{:.0})",
                        n.true_sq_norm, n.trace_sigma, n.noise_scale, n.noise_scale_lo, n.noise_scale_hi
                    );
                    println!(
                        "  GRPO's informative completions per step at B = {}: {:.1} ({:.0}% of groups informative)",
                        n.big,
                        n.informative_per_step,
                        100.0 * n.informative_frac
                    );
                    if json {
                        println!("{}", serde_json::to_string(&n)?);
                    }
                    return Ok(());
                }
                None => {}
            }
            let rows = cures::study::study(&cures::study::StudyOptions {
                config: a.config,
                set: cli.set.clone(),
                out: a.out.clone(),
                seeds: a.seeds,
                seed_offset: a.seed_offset,
                arms: a.arms,
                family: a.family,
                quiet: a.quiet,
            })?;
            print_summary(&rows, &a.out);
        }
        Command::Run {
            config,
            out,
            resume,
            overwrite,
            json,
            quiet,
        } => {
            let cfg = load_config(config.as_ref(), &cli.set)?;
            let s = cures::run::run(cures::run::RunOptions {
                config: cfg,
                out,
                resume,
                overwrite,
                quiet: quiet || json,
            })?;
            let fmt = |a: Option<f64>| a.map_or("n/a".to_string(), |a| format!("{a:.3}"));
            let from = if s.resumed_from > 0 {
                format!(" (resumed at step {})", s.resumed_from)
            } else {
                String::new()
            };
            println!(
                "this process{from}: {} steps, {} completions in {:.0} s",
                s.steps_here, s.completions_here, s.wall_s
            );
            println!(
                "the run: {} steps, {} completions generated ({} trained on + {} pre-rollouts), {:.0} s of steps; held-out accuracy {} -> {}",
                s.steps,
                s.completions + s.init_completions,
                s.completions,
                s.init_completions,
                s.run_wall_s,
                fmt(s.heldout_before),
                fmt(s.heldout_after)
            );
            let p = s.phase_s;
            println!(
                "mean seconds per step of this process: init {:.2}, sample {:.3}, generate {:.2}, reward {:.3}, train {:.2}, sync {:.3}",
                p[0], p[1], p[2], p[3], p[4], p[5]
            );
            if s.dropped_prompts > 0 {
                println!(
                    "dropped {} training prompts too long for the context",
                    s.dropped_prompts
                );
            }
            println!("wrote {}/{{{}}}", s.out.display(), s.files.join(","));
            if json {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Reward(c) => cures::reward::cli::run(c)?,
        Command::Data(c) => cures::data::cli::run(c)?,
        Command::Sync(a) => cures::sync::cli::run(&a)?,
        Command::Convert(ConvertCommand::Gguf {
            gguf,
            tokenizer,
            out,
        }) => {
            let t0 = std::time::Instant::now();
            cures::policy::gguf::convert_llama_gguf(&gguf, &tokenizer, &out)?;
            println!(
                "wrote {} in {:.1} s",
                out.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        Command::Bench(BenchCommand::All {
            endpoint,
            model,
            quick,
            json,
        }) => {
            let rows = cures::bench::all::run(&cures::bench::all::AllOptions {
                endpoint,
                model,
                quick,
            })?;
            cures::bench::all::print(&rows);
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            }
        }
        Command::Bench(BenchCommand::Checkpoint { reps, json }) => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            let r = cures::bench::checkpoint::run(dir.path(), reps)?;
            println!(
                "checkpoint write: {:.1} MB in {:.3} s (cures save_hf) vs {} (dd conv=fsync): ratio {}",
                r.bytes as f64 / 1e6,
                r.cures_s,
                r.dd_s.map_or("n/a".to_string(), |d| format!("{d:.3} s")),
                r.ratio.map_or("n/a".to_string(), |x| format!("{x:.2}"))
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCommand::Client(a)) => {
            let r = cures::bench::client::bench_client(&a).context("bench client")?;
            println!(
                "client overhead ({} completions, {} tokens, {:.1} tokens/s): client CPU {:.3} s over {:.2} s of generation = {:.2}% ({:.3} ms per completion)",
                r.completions, r.tokens, r.tokens_per_s, r.client_cpu_s, r.wall_s,
                100.0 * r.overhead_frac, r.client_cpu_ms_per_completion
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCommand::Optim(a)) => {
            let r = cures::bench::optim::run(&a).context("bench optim")?;
            cures::bench::optim::print(&r);
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCommand::Publish(a)) => {
            let r = cures::bench::publish::run(&a).context("bench publish")?;
            cures::bench::publish::print(&r);
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCommand::Inflight(a)) => {
            let r = cures::bench::client::bench_inflight(&a).context("bench inflight")?;
            println!(
                "{:>7} {:>9} {:>11} {:>6} {:>8} {:>14} {:>12}  error",
                "level",
                "requests",
                "completions",
                "peak",
                "retries",
                "completions/s",
                "client ms/c"
            );
            for l in &r.levels {
                println!(
                    "{:>7} {:>9} {:>11} {:>6} {:>8} {:>14.1} {:>12.3}  {}",
                    l.level,
                    l.requests,
                    l.completions,
                    l.peak_in_flight,
                    l.retries,
                    l.completions_per_s,
                    l.client_cpu_ms_per_completion,
                    l.error.as_deref().unwrap_or("-")
                );
            }
            println!(
                "maximum sustained in-flight requests without errors against {}: {}{}",
                r.endpoint,
                r.max_sustained_in_flight,
                if r.levels.iter().all(|l| l.clean()) {
                    " (every level tried was clean: the limit is higher)"
                } else {
                    ""
                }
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Eval(a) => fault::scope(
            Phase::Generate,
            || "cures eval".into(),
            || cures::eval::cli(a, &cli.set),
        )?,
        Command::Plot(a) => cures::plot::cli(&a)?,
        Command::Bench(BenchCommand::Reward(a)) => {
            cures::bench::reward::main(a).context("bench reward")?
        }
        Command::Bench(BenchCommand::RewardFuzz(a)) => {
            cures::bench::reward::fuzz_main(a).context("bench reward-fuzz")?
        }
        Command::Bench(BenchCommand::Curriculum {
            prompts,
            batch,
            budget,
            steps,
            no_reference,
            json,
        }) => {
            let b = cures::bench::curriculum::CurriculumBench {
                prompts,
                batch,
                budget,
                steps,
                reference: !no_reference,
            };
            let r = cures::bench::curriculum::run(&b).context("bench curriculum")?;
            let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
            println!(
                "curriculum step ({} prompts, m = {}, N = {}):",
                prompts, batch, budget
            );
            println!(
                "  cures            {:>10.3} ms (p90 {:.3})",
                r.step_ms, r.step_p90_ms
            );
            println!(
                "  ref (a) loop     {:>10} ms   cures is {}x faster",
                fmt(r.ref_loop_ms),
                fmt(r.speedup_vs_loop)
            );
            println!(
                "  ref (b) numpy    {:>10} ms   cures is {}x faster",
                fmt(r.ref_numpy_ms),
                fmt(r.speedup_vs_numpy)
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Set once, here: while a libtorch failure is being turned into an error (the library's
    // `fault::scope` / `fault::catch`), the panic is not printed; the error is, once.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if fault::guarded() && !fault::verbose() {
            if let Some(l) = info.location() {
                fault::note_panic_location(format!("{}:{}", l.file(), l.line()));
            }
            return;
        }
        default_hook(info);
    }));
    // First, before anything asks libtorch about CUDA: load its CUDA half when it is there.
    cures::backend::init();
    let cli = if std::env::args_os().any(|a| a == "--version" || a == "-V") {
        // `cures --version` names the libtorch loaded and the backend found (or why CPU only).
        let backend = fault::catch(|| Ok(cures::backend::get().to_string()))
            .unwrap_or_else(|e| format!("backend: unknown (libtorch failed: {e:#})"));
        let v = format!("{}\n{backend}", env!("CARGO_PKG_VERSION"));
        let m = <Cli as clap::CommandFactory>::command()
            .version(&*Box::leak(v.into_boxed_str()))
            .get_matches();
        match <Cli as clap::FromArgMatches>::from_arg_matches(&m) {
            Ok(c) => c,
            Err(e) => e.exit(),
        }
    } else {
        Cli::parse()
    };
    fault::set_verbose(cli.verbose);
    // Whatever the command, a libtorch failure (or a bug's panic) ends it with one error.
    match fault::catch(|| run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
