//! Chat templates render byte-identically to transformers' `apply_chat_template`
//! (references in tests/fixtures/policy/chat_reference.json, made by
//! `scripts/make-tiny-models.py make` from the templates in tests/fixtures/policy/templates/).

use std::path::Path;

use cures::policy::{ChatTemplate, Policy};

fn fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/policy"
    ))
}

#[test]
fn templates_match_transformers() {
    let refs: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("chat_reference.json")).unwrap(),
    )
    .unwrap();
    assert!(refs.len() >= 15);
    for (i, r) in refs.iter().enumerate() {
        let name = r["template"].as_str().unwrap();
        let p = fixtures()
            .join("templates")
            .join(name)
            .join("tokenizer_config.json");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let t = ChatTemplate::from_tokenizer_config(&cfg, &p.display().to_string())
            .unwrap()
            .unwrap();
        let extra = r["extra"].as_object().cloned().unwrap_or_default();
        let got = t
            .render_json(
                &r["messages"],
                r["add_generation_prompt"].as_bool().unwrap(),
                &extra,
            )
            .unwrap();
        assert_eq!(got, r["expected"].as_str().unwrap(), "case {i} ({name})");
    }
}

#[test]
fn tiny_model_chat_prompt_tokenizes() {
    let p = Policy::load(
        &fixtures().join("tiny-qwen2"),
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .unwrap();
    let ids = p
        .tokenizer()
        .encode_chat(
            &[cures::policy::ChatMessage::new("user", "Compute 7 * 8.")],
            true,
        )
        .unwrap();
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-qwen2/reference.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<i64> = serde_json::from_value(r["prompts"][2].clone()).unwrap();
    assert_eq!(ids, want);
}

#[test]
fn raise_exception_is_an_error() {
    let t = ChatTemplate::new("{{ raise_exception('no system role') }}", &[]).unwrap();
    let e = t.render(&[], true).unwrap_err();
    assert!(format!("{e:#}").contains("no system role"));
}
