//! `cures convert gguf`: GGUF tensor names → HF names, rotary un-permutation, and the conversion
//! of a llama GGUF into an HF safetensors directory.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use super::super::weights;
use super::GgufFile;

/// GGUF tensor-name part → HF name part, for names outside the blocks.
fn top_level_name(part: &str) -> Option<&'static str> {
    Some(match part {
        "token_embd" => "model.embed_tokens",
        "output_norm" => "model.norm",
        "output" => "lm_head",
        _ => return None,
    })
}

/// GGUF per-layer tensor-name part → HF module under `model.layers.N`.
fn layer_name(part: &str) -> Option<&'static str> {
    Some(match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    })
}

/// The HF name of a llama GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_tensor_name(gguf_name: &str) -> Result<String> {
    let parts: Vec<&str> = gguf_name.split('.').collect();
    let unknown = || anyhow::anyhow!("unknown llama GGUF tensor `{gguf_name}`");
    match parts.as_slice() {
        ["blk", layer, module, suffix] if layer.parse::<u64>().is_ok() => Ok(format!(
            "model.layers.{layer}.{}.{suffix}",
            layer_name(module).ok_or_else(unknown)?
        )),
        [top, suffix] => Ok(format!(
            "{}.{suffix}",
            top_level_name(top).ok_or_else(unknown)?
        )),
        _ => Err(unknown()),
    }
}

/// Undo llama.cpp's rotary permutation of a q/k projection `w` of shape `[d, cols]` (row-major)
/// with `heads` heads: `w.reshape(h, d/h/2, 2, cols).swapaxes(1, 2).reshape(d, cols)`.
pub fn unpermute_rotary(w: &[f32], d: usize, cols: usize, heads: usize) -> Result<Vec<f32>> {
    if heads == 0 || d % (2 * heads) != 0 || w.len() != d * cols {
        bail!(
            "cannot undo the rotary permutation of a [{d}, {cols}] weight ({} values) with {heads} heads",
            w.len()
        );
    }
    let head = d / heads;
    let half = head / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..half {
                let src = h * head + b * 2 + a;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// `config.json` of the converted checkpoint (keys in this order, as the former Python
/// converter wrote them).
#[derive(serde::Serialize)]
struct HfLlamaConfig {
    architectures: [&'static str; 1],
    model_type: &'static str,
    vocab_size: i64,
    hidden_size: u64,
    intermediate_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    num_key_value_heads: u64,
    head_dim: u64,
    hidden_act: &'static str,
    max_position_embeddings: u64,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_scaling: Option<()>,
    attention_bias: bool,
    mlp_bias: bool,
    tie_word_embeddings: bool,
    bos_token_id: u64,
    eos_token_id: u64,
    pad_token_id: u64,
    torch_dtype: &'static str,
    initializer_range: f64,
}

/// Tokenizer files copied from the tokenizer directory when present.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
];

/// Convert a llama GGUF (`general.architecture == "llama"`) into an HF safetensors directory
/// `out`: dequantise every tensor to f32, map names to HF's, reshape to the reversed ggml dims,
/// undo llama.cpp's rotary permutation of q/k, write `model.safetensors` (embeddings, then per
/// layer input_layernorm, q, k, v, o, post_attention_layernorm, gate, up, down, then the final
/// norm and `lm_head` unless tied), `config.json`, `generation_config.json` (bos 1, eos/pad 2),
/// and copy the [`TOKENIZER_FILES`] found in `tokenizer_dir` (`tokenizer.json` is required).
/// Written into a temporary sibling directory and renamed onto `out`, which must not exist.
pub fn convert_llama_gguf(gguf: &Path, tokenizer_dir: &Path, out: &Path) -> Result<()> {
    if !tokenizer_dir.join("tokenizer.json").is_file() {
        bail!("{}: no tokenizer.json", tokenizer_dir.display());
    }
    let g = GgufFile::open(gguf)?;
    let arch = g.get_str("general.architecture")?;
    if arch != "llama" {
        bail!(
            "{}: general.architecture is `{arch}`; only `llama` GGUFs can be converted",
            gguf.display()
        );
    }
    let n_layers = g.get_u64("llama.block_count")?;
    let hidden = g.get_u64("llama.embedding_length")?;
    let ffn = g.get_u64("llama.feed_forward_length")?;
    let n_heads = g.get_u64("llama.attention.head_count")?;
    let n_kv = g.get_u64("llama.attention.head_count_kv")?;
    let theta = g.get_f64("llama.rope.freq_base")?;
    let eps = g.get_f64("llama.attention.layer_norm_rms_epsilon")?;
    if n_heads == 0 || n_kv == 0 {
        bail!("{}: zero attention heads", gguf.display());
    }
    if n_layers > g.tensors.len() as u64 {
        bail!(
            "{}: llama.block_count {n_layers} exceeds the {} tensors in the file",
            gguf.display(),
            g.tensors.len()
        );
    }

    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for t in &g.tensors {
        let hf = hf_tensor_name(&t.name).with_context(|| gguf.display().to_string())?;
        let mut data = g.read_f32(t)?;
        let shape = t.shape();
        let module = t.name.split('.').nth(2);
        if t.name.starts_with("blk.") && matches!(module, Some("attn_q" | "attn_k")) {
            let h = if module == Some("attn_q") {
                n_heads
            } else {
                n_kv
            };
            if shape.len() != 2 {
                bail!(
                    "{}: tensor `{}` has shape {shape:?}, expected 2-D",
                    gguf.display(),
                    t.name
                );
            }
            data = unpermute_rotary(&data, shape[0] as usize, shape[1] as usize, h as usize)
                .with_context(|| format!("{}: tensor `{}`", gguf.display(), t.name))?;
        }
        let tensor = Tensor::from_slice(&data).view(shape.as_slice());
        if tensors.insert(hf.clone(), tensor).is_some() {
            bail!("{}: tensor {hf} appears twice", gguf.display());
        }
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .and_then(|t| t.size().first().copied())
        .with_context(|| format!("{}: no token_embd.weight", gguf.display()))?;

    let mut order = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..n_layers {
        for k in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            order.push(format!("model.layers.{l}.{k}.weight"));
        }
    }
    order.push("model.norm.weight".into());
    if !tied {
        order.push("lm_head.weight".into());
    }
    let expected: std::collections::BTreeSet<&str> = order.iter().map(String::as_str).collect();
    let mismatch: Vec<&str> = expected
        .symmetric_difference(&tensors.keys().map(String::as_str).collect())
        .copied()
        .collect();
    if !mismatch.is_empty() {
        bail!(
            "{}: tensors do not match a {n_layers}-layer llama: missing or unexpected {mismatch:?}",
            gguf.display()
        );
    }
    let ordered: Vec<(String, Tensor)> = order
        .into_iter()
        .filter_map(|k| tensors.remove(&k).map(|t| (k, t)))
        .collect();

    let cfg = HfLlamaConfig {
        architectures: ["LlamaForCausalLM"],
        model_type: "llama",
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: n_layers,
        num_attention_heads: n_heads,
        num_key_value_heads: n_kv,
        head_dim: hidden / n_heads,
        hidden_act: "silu",
        max_position_embeddings: 8192,
        rms_norm_eps: eps,
        rope_theta: theta,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
        tie_word_embeddings: tied,
        bos_token_id: 1,
        eos_token_id: 2,
        pad_token_id: 2,
        torch_dtype: "float32",
        initializer_range: 0.02,
    };
    let gen = serde_json::json!({ "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2 });

    let tmp = weights::tmp_dir_for(out)?;
    let res = (|| -> Result<()> {
        weights::write_file(&tmp.join("model.safetensors"), &ordered)?;
        for (name, text) in [
            ("config.json", serde_json::to_string_pretty(&cfg)?),
            (
                "generation_config.json",
                serde_json::to_string_pretty(&gen)?,
            ),
        ] {
            let p = tmp.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        for f in TOKENIZER_FILES {
            let src = tokenizer_dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, tmp.join(f))
                    .with_context(|| format!("copying {}", src.display()))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "converting {} to {}",
            gguf.display(),
            out.display()
        )));
    }
    weights::commit_dir(&tmp, out)
}
