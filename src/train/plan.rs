//! The memory plan of a run: the bytes each part takes on each device, from the model's
//! `config.json` and the run's config alone (`cures check --plan`, and `cures run` before it
//! loads anything). Pure arithmetic; the activation and LM-head terms are calibrated against the
//! peak resident memory of one update on a CPU (`cures bench train-step --head-memory ...`, which
//! prints the measured peak beside this estimate).

use crate::config::Config;
use crate::policy::ModelConfig;
use crate::rollout::EngineKind;

use super::optim::Precision;

/// Where the trainer runs, as far as memory is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// A CPU: attention saves its `[T × T]` probabilities per head (the math kernel).
    Cpu,
    /// A CUDA GPU: fused attention keeps O(T) per head.
    Cuda,
}

impl DeviceClass {
    /// From `model.device` (`cpu`, `cuda`, `cuda:N`).
    pub fn of(device: &str) -> Self {
        if device.starts_with("cuda") {
            DeviceClass::Cuda
        } else {
            DeviceClass::Cpu
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanPart {
    /// What it is.
    pub name: &'static str,
    /// Bytes.
    pub bytes: u64,
    /// How it was computed, for the user.
    pub how: String,
    /// Which device holds it: `true` = the trainer's, `false` = the reference's.
    pub trainer: bool,
}

/// The plan: every part, and what to turn when it does not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Parts in the order they are listed.
    pub parts: Vec<PlanPart>,
    /// `model.device`.
    pub device: String,
    /// `train.ref_device` resolved (`None`: the trainer's device).
    pub ref_device: Option<String>,
}

/// Bytes of one element of a `model.dtype` spelling.
fn dtype_bytes(dtype: &str) -> u64 {
    match dtype.to_ascii_lowercase().as_str() {
        "bf16" | "bfloat16" | "f16" | "float16" | "half" => 2,
        _ => 4,
    }
}

/// Activation bytes per token and decoder layer, in units of the element size, saved for the
/// backward of one block without checkpointing: the two RMSNorms (input, squares, scale: 3H
/// each), RoPE's rotated q and k (2Q + 2KV), the attention output (Q), and the SwiGLU MLP (gate,
/// silu, up, product: 4I), plus the q, k, v projections (Q + 2KV).
fn per_token_layer(m: &ModelConfig) -> u64 {
    let h = m.hidden_size as u64;
    let q = (m.num_attention_heads * m.head_dim()) as u64;
    let kv = (m.kv_heads() * m.head_dim()) as u64;
    let i = m.intermediate_size as u64;
    6 * h + 4 * q + 4 * kv + 4 * i
}

/// fp32 `[chunk × vocab]` tensors alive at once in one LM-head chunk with its backward (the
/// logits in the compute dtype and in fp32, the log-sum-exp's exponentials, the gradients of
/// the gather and of the log-sum-exp): 5, as measured by `cures bench train-step --head-memory
/// big-vocab` without chunking (12.3 GB for 4096 x 151 936 x 4 B = 2.49 GB).
const HEAD_COPIES: u64 = 5;

/// Parameters of the LoRA adapters `l` puts on model `m`: r x (in + out) per adapted linear.
pub fn lora_params(m: &ModelConfig, l: &crate::config::LoraSection) -> u64 {
    let (h, i) = (
        m.hidden_size.max(0) as u64,
        m.intermediate_size.max(0) as u64,
    );
    let q = (m.num_attention_heads * m.head_dim()).max(0) as u64;
    let kv = (m.kv_heads() * m.head_dim()).max(0) as u64;
    let per_layer: u64 = l
        .policy_config()
        .targets()
        .unwrap_or_default()
        .iter()
        .map(|t| match t.as_str() {
            "q_proj" => h + q,
            "k_proj" | "v_proj" => h + kv,
            "o_proj" => q + h,
            "gate_proj" | "up_proj" => h + i,
            "down_proj" => i + h,
            _ => 0,
        })
        .sum();
    per_layer * l.r.max(0) as u64 * m.num_hidden_layers.max(0) as u64
}

/// What the plan knows of the training data once it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataShape {
    /// The longest tokenised prompt.
    pub longest_prompt: usize,
    /// Prompts.
    pub prompts: usize,
}

/// Completions stage 0 decodes at once: N' (`iterations.init_rollouts`) for every prompt of
/// the largest subset (of the whole dataset when streaming); none for GRPO.
pub fn stage0_rows(cfg: &Config, prompts: usize) -> u64 {
    let strategy = crate::curriculum::Strategy::from_config(&cfg.curriculum, &cfg.batch);
    if !strategy.uses_pre_rollouts() {
        return 0;
    }
    let pool = match cfg.iterations.mode {
        crate::config::IterationMode::Streaming => prompts,
        crate::config::IterationMode::Subsets => prompts.div_ceil(cfg.iterations.subsets.max(1)),
    };
    (pool as u64).saturating_mul(cfg.iterations.init_rollouts as u64)
}

impl MemoryPlan {
    /// The plan of `cfg` for model `m`.
    ///
    /// `data`: the training data's shape, when it was read (`None`: sequences as long as
    /// `data.max_prompt_tokens` or the context allow; stage 0 not sized).
    pub fn new(m: &ModelConfig, cfg: &Config, data: Option<DataShape>) -> Self {
        let longest_prompt = data.map(|d| d.longest_prompt);
        let p = m.num_params().max(0) as u64;
        let w = dtype_bytes(&cfg.model.dtype);
        let kind = if w == 2 {
            tch::Kind::BFloat16
        } else {
            tch::Kind::Float
        };
        let precision = cfg.train.precision.resolve(kind).unwrap_or(Precision::Fp32);
        let mut parts = Vec::new();
        let mut part = |name, bytes: u64, how: String, trainer| {
            parts.push(PlanPart {
                name,
                bytes,
                how,
                trainer,
            })
        };
        part(
            "weights",
            p * w,
            format!("{p} parameters x {w} B ({})", cfg.model.dtype),
            true,
        );
        match cfg.model.lora.as_ref() {
            Some(l) => {
                // Adapters and their moments are fp32; the base has neither gradients nor
                // optimiser state.
                let a = lora_params(m, l);
                part(
                    "LoRA adapters",
                    a * 4,
                    format!("{a} parameters x 4 B (r = {}, fp32)", l.r),
                    true,
                );
                part(
                    "gradients",
                    a * 4,
                    format!("{a} x 4 B (adapters only)"),
                    true,
                );
                part(
                    "optimiser state",
                    a * 8,
                    format!("{a} x 8 B: two fp32 moments (adapters only)"),
                    true,
                );
            }
            None => {
                part("gradients", p * w, format!("{p} x {w} B"), true);
                let (per, what) = match precision {
                    Precision::Bf16Mixed => (16, "fp32 master 4 B + moments 8 B + accumulator 4 B"),
                    Precision::Pure => (2 * w, "two moments in model.dtype"),
                    _ => (8, "two fp32 moments"),
                };
                part(
                    "optimiser state",
                    p * per,
                    format!(
                        "{p} x {per} B: {what} (train.precision = {})",
                        precision.name()
                    ),
                    true,
                );
            }
        }
        // The longest sequence a micro-batch holds, and its tokens: the longest prompt of the
        // data when it is known, else the longest the context allows; a micro-batch never holds
        // more than the step's budget of such sequences.
        let ctx = m.max_position_embeddings.max(1) as u64;
        let max_tokens = cfg.rollout.max_tokens as u64;
        let (prompt, from) = match (longest_prompt, cfg.data.max_prompt_tokens) {
            (Some(n), _) => (n as u64, "the longest prompt of data.train"),
            (None, 0) => (
                ctx.saturating_sub(max_tokens),
                "the context, as data.train was not read",
            ),
            (None, n) => (n as u64, "data.max_prompt_tokens"),
        };
        let seq = (prompt + max_tokens).min(ctx).max(1);
        // A sequence longer than train.micro_batch_tokens makes a micro-batch of its own.
        let budget = (cfg.batch.budget.max(1) as u64).saturating_mul(seq);
        let t = (cfg.train.micro_batch_tokens.max(1) as u64)
            .min(budget)
            .max(seq);
        let layers = m.num_hidden_layers.max(0) as u64;
        let cpu = DeviceClass::of(&cfg.model.device) == DeviceClass::Cpu;
        // CPU attention (libtorch's flash kernel) saves O(T) per head for the backward, but one
        // fp32 [heads x T x T] block per sequence exists at the peak: measured with
        // `cures bench train-step --head-memory long` (2 x 4096 tokens: 878 MB against 453 MB
        // without it).
        let attn = if cpu {
            t * m.num_attention_heads.max(0) as u64 * seq * 4
        } else {
            0
        };
        let block = per_token_layer(m) * w;
        let h = m.hidden_size as u64;
        let act = if cfg.train.activation_checkpointing {
            // Each block's input, and one block recomputed at a time.
            t * (layers * h * w + block)
        } else {
            t * layers * block
        } + t * 3 * h * w
            + attn;
        part(
            "activations",
            act,
            format!(
                "one micro-batch of {t} tokens (train.micro_batch_tokens = {}, at most \
                 batch.budget x the longest sequence), sequences up to {seq} tokens ({from} + \
                 rollout.max_tokens), {layers} layers{}{}",
                cfg.train.micro_batch_tokens,
                if cfg.train.activation_checkpointing {
                    ", checkpointed"
                } else {
                    ""
                },
                if cpu {
                    ", one CPU attention block [heads x T x T]"
                } else {
                    ""
                }
            ),
            true,
        );
        let chunk = match cfg.train.logits_chunk_tokens {
            0 => t,
            c => (c as u64).min(t),
        };
        let v = m.vocab_size.max(0) as u64;
        part(
            "LM-head chunk",
            chunk * v * 4 * HEAD_COPIES,
            format!(
                "{chunk} tokens x {v} vocabulary x 4 B x {HEAD_COPIES} (train.logits_chunk_tokens \
                 = {})",
                cfg.train.logits_chunk_tokens
            ),
            true,
        );
        let same = |d: &str| matches!(d, "" | "same") || d == cfg.model.device;
        let ref_elsewhere = !same(&cfg.train.ref_device);
        if cfg.train.kl_coef > 0.0 {
            match cfg.model.lora.as_ref() {
                // The reference is the base with a copy of the adapters.
                Some(l) => part(
                    "reference model",
                    lora_params(m, l) * 4,
                    "a copy of the adapters (the base is shared)".to_string(),
                    true,
                ),
                None => part(
                    "reference model",
                    p * w,
                    format!("{p} x {w} B (train.kl_coef > 0)"),
                    !ref_elsewhere,
                ),
            }
        }
        if cfg.rollout.engine == EngineKind::Embedded {
            // Without rollout.max_batch a step decodes its whole batch at once, and stage 0
            // every prompt of the subset N' times.
            let stage0 = data.map_or(0, |d| stage0_rows(cfg, d.prompts));
            let rows = match cfg.rollout.max_batch {
                0 => (cfg.batch.budget as u64).max(stage0),
                r => r as u64,
            };
            let whole = if stage0 > cfg.batch.budget as u64 {
                format!("0 = the whole batch; stage 0 decodes {stage0} at once")
            } else {
                "0 = the whole batch".to_string()
            };
            let kv = (m.kv_heads() * m.head_dim()) as u64;
            part(
                "KV cache (embedded engine)",
                rows.saturating_mul(seq * layers * 2 * kv * w),
                format!(
                    "{rows} rows (rollout.max_batch = {}, {whole}) x {seq} tokens",
                    cfg.rollout.max_batch
                ),
                true,
            );
        }
        MemoryPlan {
            parts,
            device: cfg.model.device.clone(),
            ref_device: ref_elsewhere.then(|| cfg.train.ref_device.clone()),
        }
    }

    /// Bytes on the trainer's device.
    pub fn trainer_bytes(&self) -> u64 {
        self.parts
            .iter()
            .filter(|p| p.trainer)
            .map(|p| p.bytes)
            .sum()
    }

    /// Bytes of one part by name (0 when absent).
    pub fn part(&self, name: &str) -> u64 {
        self.parts
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.bytes)
            .sum()
    }

    /// `Err` with the knobs to turn when the trainer's device cannot hold the plan.
    pub fn check_fits(&self, available: u64) -> Result<(), String> {
        let need = self.trainer_bytes();
        if need <= available {
            return Ok(());
        }
        let mut big: Vec<&PlanPart> = self.parts.iter().filter(|p| p.trainer).collect();
        big.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        let knobs: Vec<&str> = big
            .iter()
            .take(2)
            .map(|p| match p.name {
                "activations" => {
                    "lower train.micro_batch_tokens (or set train.activation_checkpointing = true)"
                }
                "LM-head chunk" => "lower train.logits_chunk_tokens",
                "KV cache (embedded engine)" => "set rollout.max_batch",
                "reference model" => "set train.ref_device = \"cpu\"",
                _ => {
                    "use a smaller model, LoRA or more GPUs (weights, gradients and optimiser \
                     state do not shrink with the batch)"
                }
            })
            .collect();
        Err(format!(
            "the plan needs {:.2} GB on {} but {:.2} GB are available; the largest parts are {}: \
             {}",
            need as f64 / 1e9,
            self.device,
            available as f64 / 1e9,
            big.iter()
                .take(2)
                .map(|p| format!("{} ({:.2} GB)", p.name, p.bytes as f64 / 1e9))
                .collect::<Vec<_>>()
                .join(" and "),
            knobs.join("; or ")
        ))
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            let dev = if p.trainer {
                self.device.as_str()
            } else {
                self.ref_device.as_deref().unwrap_or("")
            };
            writeln!(
                f,
                "# plan  {:<28} {:>10.3} GB  on {dev:<6}  {}",
                p.name,
                p.bytes as f64 / 1e9,
                p.how
            )?;
        }
        writeln!(
            f,
            "# plan  {:<28} {:>10.3} GB  on {}",
            "total",
            self.trainer_bytes() as f64 / 1e9,
            self.device
        )
    }
}

/// Parse a memory size: `80GiB`, `80GB`, `141G`, `512MiB`, or bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 80GiB, 80GB, 141G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use GiB, GB, MiB, ...)"
            ))
        }
    };
    Ok((x * mult) as u64)
}

/// This machine's memory (`MemTotal` of /proc/meminfo), the limit of a CPU run.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen15() -> ModelConfig {
        let j = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
            "tie_word_embeddings": true
        });
        ModelConfig::from_json_str(&j.to_string(), "qwen2.5-math-1.5b").expect("config")
    }

    #[test]
    fn bf16_mixed_costs_sixteen_bytes_per_parameter_beside_the_weights() {
        let m = qwen15();
        let mut c = Config::default();
        c.model.dtype = "bf16".into();
        c.model.device = "cuda".into();
        c.rollout.engine = EngineKind::Openai;
        c.train.kl_coef = 0.001;
        let plan = MemoryPlan::new(&m, &c, None);
        let p = m.num_params() as u64;
        assert!((1_500_000_000..1_600_000_000).contains(&p), "{p}");
        assert_eq!(plan.part("weights"), 2 * p);
        assert_eq!(plan.part("optimiser state"), 16 * p);
        assert_eq!(
            plan.part("KV cache (embedded engine)"),
            0,
            "a server generates"
        );
        // Off-device reference: not on the trainer's total.
        let before = plan.trainer_bytes();
        c.train.ref_device = "cpu".into();
        let moved = MemoryPlan::new(&m, &c, None);
        assert_eq!(before - moved.trainer_bytes(), 2 * p);
        assert!(moved.check_fits(1 << 30).unwrap_err().contains("lower"));
        assert_eq!(parse_bytes("80GiB"), Ok(80 << 30));
        assert_eq!(parse_bytes("80 GB"), Ok(80_000_000_000));
        assert!(parse_bytes("eighty").is_err());
    }

    #[test]
    fn chunking_and_checkpointing_shrink_their_parts() {
        let m = qwen15();
        let mut c = Config::default();
        c.model.device = "cuda".into();
        c.train.micro_batch_tokens = 32768;
        c.train.logits_chunk_tokens = 0;
        let off = MemoryPlan::new(&m, &c, None).part("LM-head chunk");
        c.train.logits_chunk_tokens = 2048;
        let on = MemoryPlan::new(&m, &c, None).part("LM-head chunk");
        assert_eq!(off, 16 * on);
        assert_eq!(on, 2048 * 151_936 * 4 * HEAD_COPIES);
        let full = MemoryPlan::new(&m, &c, None).part("activations");
        c.train.activation_checkpointing = true;
        let ck = MemoryPlan::new(&m, &c, None).part("activations");
        assert!(ck * 5 < full, "{ck} vs {full}");
    }

    #[test]
    fn a_sequence_is_sized_by_the_longest_prompt_and_a_micro_batch_by_the_budget() {
        // The server tests' shape: a CPU run, micro_batch_tokens 16384, 24-token completions,
        // 16 completions a step. Sized by the context (4096) a micro-batch is 16384 tokens;
        // the data's longest prompt (100 tokens) and the budget bound it at 16 x 124.
        let m = qwen15();
        let mut c = Config::default();
        c.model.device = "cpu".into();
        c.train.micro_batch_tokens = 16384;
        c.rollout.max_tokens = 24;
        c.batch.budget = 16;
        let worst = MemoryPlan::new(&m, &c, None);
        let known = MemoryPlan::new(
            &m,
            &c,
            Some(DataShape {
                longest_prompt: 100,
                prompts: 10,
            }),
        );
        assert!(worst.part("activations") > 8 * known.part("activations"));
        let how = |p: &MemoryPlan| {
            p.parts
                .iter()
                .find(|x| x.name == "activations")
                .map(|x| x.how.clone())
                .unwrap_or_default()
        };
        // 16 x (100 + 24) = 1984 tokens in the largest micro-batch.
        assert!(
            how(&known).starts_with("one micro-batch of 1984 tokens"),
            "{}",
            how(&known)
        );
        assert!(
            how(&known).contains("sequences up to 124 tokens"),
            "{}",
            how(&known)
        );
        assert!(
            how(&worst).contains("sequences up to 4096 tokens"),
            "{}",
            how(&worst)
        );
        assert_eq!(known.part("LM-head chunk"), 512 * 151_936 * 4 * HEAD_COPIES);
        // Exactly the per-token terms times the tokens: the estimate is linear in them.
        let mut twice = c.clone();
        twice.batch.budget = 32;
        let t2 = MemoryPlan::new(
            &m,
            &twice,
            Some(DataShape {
                longest_prompt: 100,
                prompts: 10,
            }),
        )
        .part("activations");
        assert_eq!(t2, 2 * known.part("activations"));
        // A sequence longer than the micro-batch makes one of its own.
        let mut short = c.clone();
        short.train.micro_batch_tokens = 64;
        let one = MemoryPlan::new(
            &m,
            &short,
            Some(DataShape {
                longest_prompt: 100,
                prompts: 10,
            }),
        );
        assert!(
            how(&one).starts_with("one micro-batch of 124 tokens"),
            "{}",
            how(&one)
        );
    }

    #[test]
    fn the_embedded_kv_cache_holds_stage_0_when_it_decodes_all_at_once() {
        let m = qwen15();
        let mut c = Config::default();
        c.batch.budget = 16;
        c.iterations.subsets = 10;
        c.iterations.init_rollouts = 8;
        let data = Some(DataShape {
            longest_prompt: 100,
            prompts: 1001,
        });
        let kv = |c: &Config| MemoryPlan::new(&m, c, data).part("KV cache (embedded engine)");
        let per_row = kv(&c) / (101 * 8);
        // ceil(1001 / 10) = 101 prompts x N' = 8 rows, not the budget's 16.
        assert_eq!(stage0_rows(&c, 1001), 808);
        assert_eq!(kv(&c), per_row * 808);
        // GRPO has no stage 0; rollout.max_batch bounds both.
        let mut grpo = c.clone();
        grpo.curriculum.strategy = crate::config::StrategyKind::Grpo;
        assert_eq!(stage0_rows(&grpo, 1001), 0);
        assert_eq!(kv(&grpo), per_row * 16);
        let mut capped = c.clone();
        capped.rollout.max_batch = 32;
        assert_eq!(kv(&capped), per_row * 32);
        // The data unread: the budget.
        assert_eq!(
            MemoryPlan::new(&m, &c, None).part("KV cache (embedded engine)") % 16,
            0
        );
    }
}
