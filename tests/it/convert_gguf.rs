//! `cures convert gguf` on the real SmolLM2-135M-Instruct Q4_1 GGUF, enabled by
//! CURES_SMOLLM2_GGUF (e.g. ~/.cache/cures/downloads/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf;
//! scripts/test.sh sets it). The tokenizer comes from CURES_SMOLLM2_TOKENIZER, else the
//! `tokenizer` directory next to the GGUF. Unset: prints "SKIPPED" and passes.
//!
//! The reference is `tests/fixtures/policy/smollm2_q4_1_reference.json`: the SHA-256 of every
//! tensor (f32 bytes), its shape, config.json and generation_config.json as the former Python
//! converter (the `gguf` package's dequantiser) produced them. Checks: same tensor names and
//! shapes, data in layer order, every tensor bit for bit; configs equal; tokenizer files copied.

use std::path::PathBuf;

use cures::policy::gguf::convert_llama_gguf;
use cures::policy::weights::{checkpoint_files, read_file};
use sha2::{Digest, Sha256};

fn inputs() -> Option<(PathBuf, PathBuf)> {
    let Ok(g) = std::env::var("CURES_SMOLLM2_GGUF") else {
        println!("SKIPPED: set CURES_SMOLLM2_GGUF");
        return None;
    };
    let g = PathBuf::from(g);
    let tok = std::env::var("CURES_SMOLLM2_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| g.with_file_name("tokenizer"));
    Some((g, tok))
}

fn sha256_f32(t: &tch::Tensor) -> String {
    let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
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
    let _serial = crate::support::serial();
    let Some((gguf, tok)) = inputs() else {
        return;
    };
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy/smollm2_q4_1_reference.json");
    let reference = json(&fixture);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    let t0 = std::time::Instant::now();
    convert_llama_gguf(&gguf, &tok, &out).expect("converting");
    println!("converted in {:.2} s", t0.elapsed().as_secs_f64());

    let mut got = Vec::new();
    for f in checkpoint_files(&out).unwrap() {
        got.extend(read_file(&f).unwrap());
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want = reference["tensors"].as_object().unwrap();
    let names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
    assert_eq!(names, want.keys().collect::<Vec<_>>());
    for (n, t) in &got {
        assert_eq!(t.kind(), tch::Kind::Float, "{n}");
        let shape: Vec<i64> = want[n]["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(t.size(), shape, "{n}");
        assert_eq!(
            sha256_f32(t),
            want[n]["sha256"].as_str().unwrap(),
            "{n} differs"
        );
    }
    // The data lies in layer order (the Python script's safetensors `save_file` re-sorted the
    // tensors by name; cures writes them as the model uses them).
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
    assert_eq!(json(&out.join("config.json")), reference["config"]);
    assert_eq!(
        json(&out.join("generation_config.json")),
        reference["generation_config"]
    );
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
