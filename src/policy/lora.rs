//! LoRA adapters on a [`Policy`]: settings, enabling, PEFT-layout IO and merging.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;

use super::{model, weights, LoraState, Policy};

/// Every module LoRA can adapt, in PEFT's names and layer order.
pub const ALL_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA settings (PEFT's `LoraConfig` subset; dropout is always 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub r: i64,
    /// lora_alpha (scale = alpha / r).
    pub alpha: f64,
    /// Module names among q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
    /// (short forms q, k, v, o, gate, up, down are accepted).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// The target modules in PEFT's full names, checked.
    pub fn targets(&self) -> Result<Vec<String>> {
        self.normalised_targets()
    }

    fn normalised_targets(&self) -> Result<Vec<String>> {
        const ALL: [&str; 7] = ALL_TARGETS;
        let mut out = Vec::new();
        for t in &self.target_modules {
            let full = if t.ends_with("_proj") {
                t.clone()
            } else {
                format!("{t}_proj")
            };
            if !ALL.contains(&full.as_str()) {
                bail!("LoRA target module {t:?} is not one of {ALL:?}");
            }
            if !out.contains(&full) {
                out.push(full);
            }
        }
        if out.is_empty() {
            bail!("LoRA needs at least one target module");
        }
        if self.r <= 0 {
            bail!("LoRA rank r must be positive, got {}", self.r);
        }
        Ok(out)
    }
}

impl Policy {
    /// Add LoRA adapters (A ~ kaiming-uniform as PEFT, B = 0, so the model is unchanged) on
    /// `cfg.target_modules` of every layer and freeze the base parameters. The adapters are
    /// fp32 whatever the base's dtype (an update of lr 1e-6 is below bf16's resolution).
    pub fn enable_lora(&mut self, cfg: LoraConfig, seed: u64) -> Result<()> {
        if self.lora.is_some() {
            bail!("LoRA is already enabled (merge_lora first)");
        }
        let targets = cfg.normalised_targets()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut lvs = VarStore::new(self.device);
        lvs.set_kind(Kind::Float);
        let root = lvs.root() / "base_model" / "model" / "model" / "layers";
        let scale = cfg.alpha / cfg.r as f64;
        for i in 0..self.model.layers.len() {
            for (name, lin) in self.model.layer_linears_mut(i) {
                if !targets.iter().any(|t| t == name) {
                    continue;
                }
                let group = if matches!(name, "gate_proj" | "up_proj" | "down_proj") {
                    "mlp"
                } else {
                    "self_attn"
                };
                let p = &root / i / group / name;
                let (out_dim, in_dim) = (lin.weight.size()[0], lin.weight.size()[1]);
                // PEFT: kaiming_uniform_(a = sqrt(5)) → bound = 1 / sqrt(in).
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a = (&p / "lora_A").var("weight", &[cfg.r, in_dim], tch::nn::Init::Const(0.));
                let vals: Vec<f32> = (0..cfg.r * in_dim)
                    .map(|_| rng.random_range(-bound as f32..bound as f32))
                    .collect();
                tch::no_grad(|| {
                    a.shallow_clone()
                        .copy_(&Tensor::from_slice(&vals).view([cfg.r, in_dim]))
                });
                let b = (&p / "lora_B").var("weight", &[out_dim, cfg.r], tch::nn::Init::Const(0.));
                lin.lora = Some(model::LoraAdapter { a, b, scale });
            }
        }
        self.vs.freeze();
        self.lora = Some(LoraState {
            vs: lvs,
            cfg,
            targets,
        });
        Ok(())
    }

    /// The LoRA config, when enabled.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.cfg)
    }

    /// A copy of the adapter weights by name (the state of a LoRA reference policy).
    pub fn lora_snapshot(&self) -> Result<Vec<(String, Tensor)>> {
        let l = self.lora.as_ref().context("LoRA is not enabled")?;
        let mut vars: Vec<(String, Tensor)> =
            l.vs.variables()
                .into_iter()
                .map(|(k, t)| (k, t.detach().copy()))
                .collect();
        vars.sort_by_key(|(k, _)| lora_sort_key(k));
        Ok(vars)
    }

    /// Set the adapter weights to `snap` (names as [`Policy::lora_snapshot`] gives them).
    pub fn set_lora_weights(&self, snap: &[(String, Tensor)]) -> Result<()> {
        let l = self.lora.as_ref().context("LoRA is not enabled")?;
        let vars = l.vs.variables();
        if snap.len() != vars.len() {
            bail!(
                "an adapter of {} tensors for a policy with {}",
                snap.len(),
                vars.len()
            );
        }
        tch::no_grad(|| -> Result<()> {
            for (name, t) in snap {
                let var = vars
                    .get(name)
                    .with_context(|| format!("no adapter tensor {name}"))?;
                var.shallow_clone()
                    .f_copy_(t)
                    .with_context(|| format!("adapter tensor {name}"))?;
            }
            Ok(())
        })
    }

    /// Run `f` with the adapter weights set to `snap`, and put the current ones back after
    /// (also when `f` fails): the reference policy of a LoRA run is the base with an earlier
    /// adapter, without a second copy of the base.
    pub fn with_lora_weights<T>(
        &self,
        snap: &[(String, Tensor)],
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let now = self.lora_snapshot()?;
        self.set_lora_weights(snap)?;
        let out = f();
        self.set_lora_weights(&now)?;
        out
    }

    /// The adapter tensors of a PEFT directory, named as [`Policy::lora_snapshot`] names them.
    pub fn read_lora_snapshot(dir: &Path) -> Result<Vec<(String, Tensor)>> {
        let f = dir.join("adapter_model.safetensors");
        let mut vars: Vec<(String, Tensor)> = weights::read_file(&f)?
            .into_iter()
            .map(|(name, t)| {
                let key = name
                    .replace(".lora_A.default.", ".lora_A.")
                    .replace(".lora_B.default.", ".lora_B.");
                (key, t)
            })
            .collect();
        vars.sort_by_key(|(k, _)| lora_sort_key(k));
        Ok(vars)
    }

    /// Save the adapters in PEFT layout into the fresh directory `dir` (atomic):
    /// `adapter_config.json` + `adapter_model.safetensors`
    /// (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, ...).
    pub fn save_lora(&self, dir: &Path, kind: Kind) -> Result<()> {
        let l = self
            .lora
            .as_ref()
            .context("save_lora: LoRA is not enabled")?;
        let tmp = weights::tmp_dir_for(dir)?;
        let res = (|| -> Result<()> {
            let acfg = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": self.cfg.extra.get("_name_or_path").cloned().unwrap_or(serde_json::Value::Null),
                "r": l.cfg.r,
                "lora_alpha": l.cfg.alpha,
                "lora_dropout": 0.0,
                "target_modules": l.targets,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
                "init_lora_weights": true,
                "use_rslora": false,
                "use_dora": false,
                "modules_to_save": null,
                "layers_to_transform": null,
                "rank_pattern": {},
                "alpha_pattern": {},
            });
            // The small file first, its writeback started, so the adapter's fsync commits
            // both in one journal transaction (dd does one fsync; two would cost twice).
            weights::write_small(
                &tmp.join("adapter_config.json"),
                serde_json::to_string_pretty(&acfg)?.as_bytes(),
            )?;
            let mut vars: Vec<(String, Tensor)> = l.vs.variables().into_iter().collect();
            vars.sort_by_key(|(k, _)| lora_sort_key(k));
            weights::write_file_as(&tmp.join("adapter_model.safetensors"), &vars, Some(kind))?;
            Ok(())
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("saving LoRA adapter to {}", dir.display())));
        }
        weights::commit_dir(&tmp, dir)
    }

    /// Enable LoRA from a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        let p = dir.join("adapter_config.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", p.display()))?;
        let r = v
            .get("r")
            .and_then(|x| x.as_i64())
            .with_context(|| format!("{}: no integer `r`", p.display()))?;
        let alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .with_context(|| format!("{}: no number `lora_alpha`", p.display()))?;
        let target_modules: Vec<String> = v
            .get("target_modules")
            .and_then(|x| serde_json::from_value(x.clone()).ok())
            .with_context(|| {
                format!("{}: `target_modules` must be a list of names", p.display())
            })?;
        self.enable_lora(
            LoraConfig {
                r,
                alpha,
                target_modules,
            },
            0,
        )?;
        let f = dir.join("adapter_model.safetensors");
        let vars = self.trainable_var_store().variables();
        let mut seen = 0usize;
        tch::no_grad(|| -> Result<()> {
            for (name, t) in weights::read_file(&f)? {
                let key = name
                    .replace(".lora_A.default.", ".lora_A.")
                    .replace(".lora_B.default.", ".lora_B.");
                let var = vars
                    .get(&key)
                    .with_context(|| format!("{}: unexpected tensor {name}", f.display()))?;
                if var.size() != t.size() {
                    bail!(
                        "{}: tensor {name} has shape {:?}, expected {:?}",
                        f.display(),
                        t.size(),
                        var.size()
                    );
                }
                var.shallow_clone()
                    .f_copy_(&t)
                    .with_context(|| format!("{}: tensor {name}", f.display()))?;
                seen += 1;
            }
            Ok(())
        })?;
        if seen != vars.len() {
            bail!(
                "{}: has {seen} adapter tensors, adapter_config.json implies {}",
                f.display(),
                vars.len()
            );
        }
        Ok(())
    }

    /// Fold the adapters into the base weights (`W += alpha/r · B A`) and remove them. Base
    /// parameters stay frozen; call `var_store_mut().unfreeze()` for full fine-tuning.
    pub fn merge_lora(&mut self) -> Result<()> {
        if self.lora.is_none() {
            bail!("merge_lora: LoRA is not enabled");
        }
        tch::no_grad(|| {
            for i in 0..self.model.layers.len() {
                for (_, lin) in self.model.layer_linears_mut(i) {
                    if lin.lora.is_some() {
                        let merged = lin.merged_weight();
                        lin.weight.copy_(&merged);
                        lin.lora = None;
                    }
                }
            }
        });
        self.lora = None;
        Ok(())
    }
}

fn lora_sort_key(name: &str) -> (usize, usize, String) {
    // base_model.model.model.layers.N.<group>.<module>.lora_X.weight → (N, module order, name)
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts
        .get(4)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let order = ALL_TARGETS;
    let m = parts
        .get(6)
        .and_then(|m| order.iter().position(|o| o == m))
        .unwrap_or(order.len());
    (layer, m, name.to_string())
}
