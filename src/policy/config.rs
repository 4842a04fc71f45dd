//! `config.json` of an HF causal-LM checkpoint (Llama and Qwen2 families).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The model families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// `LlamaForCausalLM` (no attention biases), also SmolLM2 / Mistral-style configs.
    Llama,
    /// `Qwen2ForCausalLM` (biases on q/k/v).
    Qwen2,
}

impl Arch {
    /// The `architectures[0]` string written to `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    /// The `model_type` string written to `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Token id(s) in config files: a single integer or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// As a vector.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of `config.json` the model needs. Unknown fields are kept in `extra` and written
/// back by [`ModelConfig::to_json`], so a saved checkpoint keeps what it was loaded with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `architectures` as written in the file.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Parsed from `architectures` (not serialised).
    #[serde(skip, default = "default_arch")]
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (GQA); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Per-head size; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling (only `null` is supported).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Maximum positions (informational).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    /// lm_head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2: always true; Llama: `attention_bias`).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Activation (only `silu` is supported).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// BOS id(s).
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    /// EOS id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Pad id.
    #[serde(default)]
    pub pad_token_id: Option<TokenIds>,
    /// `torch_dtype` as written (transformers ≥ 5 writes `dtype`, kept in `extra`).
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Every other field, round-tripped on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_arch() -> Arch {
    Arch::Llama
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> i64 {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl ModelConfig {
    /// Parse `config.json` text; `origin` names the file in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let mut c: ModelConfig =
            serde_json::from_str(text).with_context(|| format!("{origin}: invalid config"))?;
        c.arch = match c.architectures.first().map(String::as_str) {
            Some("LlamaForCausalLM") | Some("MistralForCausalLM") => Arch::Llama,
            Some("Qwen2ForCausalLM") => Arch::Qwen2,
            None => match c.extra.get("model_type").and_then(|v| v.as_str()) {
                Some("llama") => Arch::Llama,
                Some("qwen2") => Arch::Qwen2,
                other => bail!(
                    "{origin}: `architectures` is missing and model_type {other:?} is not supported \
                     (supported: LlamaForCausalLM, Qwen2ForCausalLM)"
                ),
            },
            Some(_) => bail!(
                "{origin}: unsupported `architectures` {:?} (supported: LlamaForCausalLM, \
                 MistralForCausalLM, Qwen2ForCausalLM)",
                c.architectures
            ),
        };
        // transformers ≥ 5 writes `rope_parameters {rope_type, rope_theta}` (and may omit
        // `rope_theta`).
        if let Some(rp) = c.extra.get("rope_parameters").and_then(|v| v.as_object()) {
            match rp.get("rope_type").and_then(|t| t.as_str()) {
                None | Some("default") => {}
                Some(t) => bail!(
                    "{origin}: rope_parameters.rope_type {t:?} is not supported (only default)"
                ),
            }
            if let Some(th) = rp.get("rope_theta").and_then(|t| t.as_f64()) {
                c.rope_theta = th;
            }
        }
        c.validate(origin)?;
        Ok(c)
    }

    /// Read `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join("config.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Self::from_json_str(&text, &p.display().to_string())
    }

    /// A config built in code (tiny testbed models, benches).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arch: Arch,
        vocab_size: i64,
        hidden_size: i64,
        intermediate_size: i64,
        num_hidden_layers: i64,
        num_attention_heads: i64,
        num_key_value_heads: i64,
        tie_word_embeddings: bool,
    ) -> Self {
        ModelConfig {
            architectures: vec![arch.hf_name().to_string()],
            arch,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings,
            attention_bias: None,
            hidden_act: "silu".into(),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            torch_dtype: Some("float32".into()),
            extra: serde_json::Map::new(),
        }
    }

    fn validate(&self, origin: &str) -> Result<()> {
        if self.hidden_act != "silu" {
            bail!(
                "{origin}: hidden_act {:?} is not supported (only silu)",
                self.hidden_act
            );
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                bail!("{origin}: rope_scaling {s} is not supported (only null)");
            }
        }
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h <= 0 || kv <= 0 || h % kv != 0 {
            bail!("{origin}: num_attention_heads {h} must be a positive multiple of num_key_value_heads {kv}");
        }
        if self.head_dim.is_none() && self.hidden_size % h != 0 {
            bail!(
                "{origin}: hidden_size {} is not divisible by num_attention_heads {h}",
                self.hidden_size
            );
        }
        if self.head_dim() % 2 != 0 {
            bail!(
                "{origin}: head_dim {} must be even for RoPE",
                self.head_dim()
            );
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ] {
            if v <= 0 {
                bail!("{origin}: {name} must be positive, got {v}");
            }
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Per-head size.
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// Whether q/k/v carry biases.
    pub fn qkv_bias(&self) -> bool {
        match self.arch {
            Arch::Qwen2 => true,
            Arch::Llama => self.attention_bias.unwrap_or(false),
        }
    }
    /// EOS ids from the config (may be empty).
    pub fn eos_ids(&self) -> Vec<i64> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
    /// Parameter count.
    pub fn num_params(&self) -> i64 {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (
            self.num_attention_heads * self.head_dim(),
            self.kv_heads() * self.head_dim(),
        );
        let bias = if self.qkv_bias() { q + 2 * kv } else { 0 };
        let layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + 2 * h;
        let emb = if self.tie_word_embeddings {
            v * h
        } else {
            2 * v * h
        };
        emb + h + self.num_hidden_layers * layer
    }

    /// `config.json` text for a saved checkpoint, with `torch_dtype` set to `dtype`.
    pub fn to_json(&self, dtype: &str) -> Result<String> {
        let mut c = self.clone();
        c.architectures = vec![self.arch.hf_name().to_string()];
        c.torch_dtype = Some(dtype.to_string());
        c.extra
            .insert("model_type".into(), self.arch.model_type().into());
        let mut v = serde_json::to_value(&c)?;
        if let Some(m) = v.as_object_mut() {
            // Write the resolved values so every loader agrees.
            m.insert("num_key_value_heads".into(), self.kv_heads().into());
            m.insert("head_dim".into(), self.head_dim().into());
            m.retain(|_, v| !v.is_null());
            m.insert("rope_scaling".into(), serde_json::Value::Null);
            m.insert("dtype".into(), dtype.into());
        }
        Ok(serde_json::to_string_pretty(&v)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_is_named() {
        let e = ModelConfig::from_json_str(
            r#"{"architectures":["GPT2LMHeadModel"],"vocab_size":10,"hidden_size":8,
               "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#,
            "x/config.json",
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("architectures") && msg.contains("GPT2LMHeadModel"),
            "{msg}"
        );
    }

    #[test]
    fn qwen2_has_bias_and_roundtrips() {
        let c = ModelConfig::from_json_str(
            r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,
               "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
               "num_key_value_heads":1,"eos_token_id":[3,4],"sliding_window":null,"foo":7}"#,
            "c",
        )
        .unwrap();
        assert!(c.qkv_bias());
        assert_eq!(c.eos_ids(), vec![3, 4]);
        assert_eq!(c.head_dim(), 4);
        let back = ModelConfig::from_json_str(&c.to_json("float32").unwrap(), "back").unwrap();
        assert_eq!(back.arch, Arch::Qwen2);
        assert_eq!(back.extra.get("foo"), Some(&serde_json::json!(7)));
    }
}
