//! `cures check`: what `cures run` would refuse, found before anything heavy loads — the
//! datasets, the model directory (config, tokenizer, every weight file's header against the
//! config) and the prompts that would be dropped as too long.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::setup::{fit_prompts, load_dataset};
use crate::config::Config;
use crate::policy::{weights, ModelConfig, Tokenizer};

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

/// Check the inputs `cures run` reads, as it reads them.
pub fn check_inputs(cfg: &Config) -> Result<InputCheck> {
    let mut lines = Vec::new();
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
    let pad = model
        .pad_token_id
        .as_ref()
        .and_then(|p| p.to_vec().first().copied());
    let tok = Tokenizer::load(dir, &model.eos_ids(), pad)
        .with_context(|| format!("model.path = {}", dir.display()))?;
    let total = train.len();
    let fit = fit_prompts(&tok, model.max_position_embeddings, cfg, train)?;
    lines.insert(
        0,
        format!(
            "data.train {}: {total} prompts, {} over {} tokens would be dropped",
            cfg.data.train, fit.dropped, fit.limit
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
