//! `cures check`: what `cures run` would refuse, found before anything heavy loads — the
//! datasets, the model directory (config, tokenizer, every weight file's header against the
//! config), stop token ids against the vocabulary, the prompts that would be dropped as too
//! long and, with `--probe`, the inference servers ([`crate::rollout::probe`]).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::setup::{fit_prompts, load_dataset, ContextLimit};
use crate::config::Config;
use crate::policy::{weights, ModelConfig, Tokenizer};
use crate::rollout::probe::Probe;
use crate::rollout::EngineKind;
use crate::train::plan::{DataShape, DeviceClass, MemoryPlan};

/// What `cures check` found in the inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct InputCheck {
    /// One line per input checked.
    pub lines: Vec<String>,
}

impl std::fmt::Display for InputCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            writeln!(f, "# {l}")?;
        }
        Ok(())
    }
}

/// The memory plan of `cfg` from its model's `config.json` and the longest training prompt
/// when known (`None`: the longest the context allows), and the bytes available on the
/// trainer's device when known (`available`, else the machine's memory for a CPU run): check it
/// with [`MemoryPlan::check_fits`].
pub fn memory_plan(
    cfg: &Config,
    available: Option<u64>,
    data: Option<DataShape>,
) -> Result<(MemoryPlan, Option<u64>)> {
    // `auto` is planned for the device it resolves to in this process (a GPU when the CUDA
    // libtorch is loaded and sees one).
    let resolved;
    let cfg = if cfg.model.device == "auto" {
        let mut c = cfg.clone();
        c.model.device = if crate::backend::cuda_devices() > 0 {
            "cuda"
        } else {
            "cpu"
        }
        .into();
        resolved = c;
        &resolved
    } else {
        cfg
    };
    let dir = Path::new(&cfg.model.path);
    let model =
        ModelConfig::load(dir).with_context(|| format!("model.path = {}", dir.display()))?;
    let plan = MemoryPlan::new(&model, cfg, data);
    let available = available.or_else(|| {
        (DeviceClass::of(&cfg.model.device) == DeviceClass::Cpu)
            .then(crate::train::plan::host_memory)
            .flatten()
    });
    Ok((plan, available))
}

/// `run.device_memory` parsed (empty: `None`).
pub fn configured_memory(cfg: &Config) -> Result<Option<u64>> {
    if cfg.run.device_memory.is_empty() {
        return Ok(None);
    }
    crate::train::plan::parse_bytes(&cfg.run.device_memory)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("run.device_memory: {e}"))
}

/// Ask the servers of an `openai` run what it needs (`None` for the embedded engine).
pub fn probe_servers(cfg: &Config) -> Result<Option<Probe>> {
    if cfg.rollout.engine != EngineKind::Openai {
        return Ok(None);
    }
    crate::rollout::probe::probe(&cfg.rollout).map(Some)
}

/// Every `rollout.stop_token_ids` must be a token of the model (a stop id from another model's
/// vocabulary would never stop a completion, or crash the server).
pub fn check_stop_ids(cfg: &Config, vocab: i64, model_dir: &Path) -> Result<()> {
    let bad: Vec<i64> = cfg
        .rollout
        .stop_token_ids
        .iter()
        .copied()
        .filter(|&id| id < 0 || id >= vocab)
        .collect();
    if !bad.is_empty() {
        bail!(
            "rollout.stop_token_ids: {bad:?} lie outside the vocabulary of {} ({vocab} tokens; \
             ids 0..{}): they belong to another model (Qwen's <|im_end|> is 151645); the \
             model's EOS ids always stop a completion, so drop them or use this model's ids",
            model_dir.display(),
            vocab - 1
        );
    }
    Ok(())
}

/// A model directory's config and tokenizer, without its weights.
pub fn model_and_tokenizer(dir: &Path) -> Result<(ModelConfig, Tokenizer)> {
    let model = ModelConfig::load(dir).with_context(|| format!("model {}", dir.display()))?;
    let pad = model
        .pad_token_id
        .as_ref()
        .and_then(|p| p.to_vec().first().copied());
    let tok = Tokenizer::load(dir, &model.eos_ids(), pad)
        .with_context(|| format!("model {}", dir.display()))?;
    Ok((model, tok))
}

/// The training data as `cures run` fits it to the model's context (servers not asked): its
/// longest prompt in tokens, what the memory plan sizes a sequence by, and its prompts.
pub fn data_shape(cfg: &Config) -> Result<DataShape> {
    let train = load_dataset(&cfg.data.train, cfg, false)
        .with_context(|| format!("data.train = {:?}", cfg.data.train))?;
    let (model, tok) = model_and_tokenizer(Path::new(&cfg.model.path))?;
    let context = ContextLimit::of_model(model.max_position_embeddings);
    let fit = fit_prompts(&tok, &context, cfg, train)?;
    Ok(DataShape {
        longest_prompt: fit.prompt_ids.iter().map(Vec::len).max().unwrap_or(0),
        prompts: fit.prompt_ids.len(),
    })
}

/// Check the inputs `cures run` reads, as it reads them; with `probe`, also ask the inference
/// servers (health, model name, context, the routes the sync needs).
pub fn check_inputs(cfg: &Config, probe: bool) -> Result<InputCheck> {
    let mut lines = cfg
        .warnings()
        .into_iter()
        .map(|w| format!("warning: {w}"))
        .collect::<Vec<_>>();
    let train = load_dataset(&cfg.data.train, cfg, false)
        .with_context(|| format!("data.train = {:?}", cfg.data.train))?;
    for spec in &cfg.data.eval {
        let n = load_dataset(spec, cfg, true)
            .with_context(|| format!("data.eval: {spec:?}"))?
            .len();
        lines.push(format!("data.eval {spec}: {n} problems"));
    }
    let dir = Path::new(&cfg.model.path);
    let model = check_model_dir(dir).with_context(|| format!("model.path = {}", dir.display()))?;
    lines.push(format!(
        "model.path {}: {} layers, hidden {}, vocabulary {}, context {}",
        dir.display(),
        model.num_hidden_layers,
        model.hidden_size,
        model.vocab_size,
        model.max_position_embeddings
    ));
    let (_, tok) = model_and_tokenizer(dir)?;
    check_stop_ids(cfg, model.vocab_size, dir)?;
    let servers = if probe { probe_servers(cfg)? } else { None };
    if let Some(p) = &servers {
        lines.extend(p.lines(cfg.rollout.sync));
    } else if probe {
        lines.push("rollout.engine = \"embedded\": no servers to probe".into());
    }
    let context =
        ContextLimit::of_model(model.max_position_embeddings).with_servers(servers.as_ref());
    let total = train.len();
    let fit = fit_prompts(&tok, &context, cfg, train)?;
    cfg.validate_pool(fit.examples.len())?;
    for w in cfg.pool_warnings(fit.examples.len()) {
        lines.push(format!("warning: {w}"));
    }
    lines.insert(
        0,
        format!(
            "data.train {}: {total} prompts, {} over {} tokens would be dropped (context {} \
             tokens: {})",
            cfg.data.train, fit.dropped, fit.limit, context.tokens, context.source
        ),
    );
    Ok(InputCheck { lines })
}

/// The model directory's config, after checking every weight file's header against it: no
/// layer beyond `num_hidden_layers`, the embedding `[vocab, hidden]`, every layer present.
pub fn check_model_dir(dir: &Path) -> Result<ModelConfig> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let cfg = ModelConfig::load(dir)?;
    let mut layers = vec![false; usize::try_from(cfg.num_hidden_layers).unwrap_or(0)];
    let mut embed = None;
    for f in weights::checkpoint_files(dir)? {
        for (name, shape) in weights::safetensors_shapes(&f)? {
            if name == "model.embed_tokens.weight" {
                embed = Some(shape.clone());
            }
            let Some(l) = name
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            match layers.get_mut(l) {
                Some(seen) => *seen = true,
                None => bail!(
                    "{}: tensor {name} belongs to layer {l}, but config.json declares \
                     num_hidden_layers = {}",
                    f.display(),
                    cfg.num_hidden_layers
                ),
            }
        }
    }
    if let Some(l) = layers.iter().position(|s| !s) {
        bail!(
            "{}: the checkpoint has no tensors of layer {l}",
            dir.display()
        );
    }
    let want = vec![cfg.vocab_size, cfg.hidden_size];
    match embed {
        Some(s) if s == want => Ok(cfg),
        Some(s) => bail!(
            "{}: model.embed_tokens.weight has shape {s:?}, config.json implies {want:?}",
            dir.display()
        ),
        None => bail!("{}: no model.embed_tokens.weight", dir.display()),
    }
}
