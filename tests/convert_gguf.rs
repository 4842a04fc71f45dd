//! `cures convert gguf` on the real SmolLM2-135M-Instruct Q4_1 GGUF, enabled by
//! CURES_SMOLLM2_GGUF (the GGUF, e.g. ~/.cache/cures/downloads/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
//! and CURES_SMOLLM2_DIR (a reference directory converted by the former Python script,
//! scripts/fetch-smollm2.sh's output). The tokenizer comes from CURES_SMOLLM2_TOKENIZER, else
//! the `tokenizer` directory next to the GGUF. Unset: prints "SKIPPED" and passes.
//!
//! Checks: same tensor names, data in layer order, same shapes and dtypes, every tensor bit for
//! bit equal; config.json and generation_config.json equal as JSON; tokenizer files copied.

use std::path::PathBuf;

use cures::policy::gguf::convert_llama_gguf;
use cures::policy::weights::{checkpoint_files, read_file};

fn inputs() -> Option<(PathBuf, PathBuf, PathBuf)> {
    match (
        std::env::var("CURES_SMOLLM2_GGUF"),
        std::env::var("CURES_SMOLLM2_DIR"),
    ) {
        (Ok(g), Ok(d)) => {
            let g = PathBuf::from(g);
            let tok = std::env::var("CURES_SMOLLM2_TOKENIZER")
                .map(PathBuf::from)
                .unwrap_or_else(|_| g.with_file_name("tokenizer"));
            Some((g, tok, PathBuf::from(d)))
        }
        _ => {
            println!("SKIPPED: set CURES_SMOLLM2_GGUF and CURES_SMOLLM2_DIR");
            None
        }
    }
}

/// Tensor names of a safetensors file in the order of their data.
fn data_order(p: &std::path::Path) -> Vec<String> {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut v: Vec<(u64, String)> = h
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, t)| (t["data_offsets"][0].as_u64().unwrap(), k.clone()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, k)| k).collect()
}

fn json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn smollm2_gguf_converts_bit_exactly_like_the_python_script() {
    let Some((gguf, tok, reference)) = inputs() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    let t0 = std::time::Instant::now();
    convert_llama_gguf(&gguf, &tok, &out).expect("converting");
    println!("converted in {:.2} s", t0.elapsed().as_secs_f64());

    let mut got = Vec::new();
    for f in checkpoint_files(&out).unwrap() {
        got.extend(read_file(&f).unwrap());
    }
    let mut want = Vec::new();
    for f in checkpoint_files(&reference).unwrap() {
        want.extend(read_file(&f).unwrap());
    }
    let names = |v: &[(String, tch::Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(names(&got), names(&want));
    // The data lies in layer order (the Python script's intended order; its safetensors
    // `save_file` re-sorted the tensors by name, so the reference file is alphabetical).
    let mut order = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..30 {
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
    assert_eq!(data_order(&out.join("model.safetensors")), order);
    assert_eq!(got.len(), 30 * 9 + 2);
    for ((n, a), (_, b)) in got.iter().zip(&want) {
        assert_eq!(a.size(), b.size(), "{n}");
        assert_eq!(a.kind(), b.kind(), "{n}");
        assert!(a.equal(b), "{n} differs");
    }
    for f in ["config.json", "generation_config.json"] {
        assert_eq!(json(&out.join(f)), json(&reference.join(f)), "{f}");
    }
    for f in cures::policy::gguf::TOKENIZER_FILES {
        if tok.join(f).exists() {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(tok.join(f)).unwrap(),
                "{f}"
            );
        }
    }
    // The directory exists now: a second conversion into it is refused.
    assert!(convert_llama_gguf(&gguf, &tok, &out).is_err());
}
