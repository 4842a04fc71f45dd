//! The rollout client against real llama.cpp `llama-server`s serving SmolLM2-135M-Instruct
//! (scripts/build-llama-server.sh, scripts/fetch-smollm2.sh): per-prompt n, token ids and
//! log-probs from llama-server's chat-style logprob shape, a server killed mid-step and
//! restarted, and a second endpoint taking over from a dead one. Every requested completion
//! must come back exactly once. Skipped unless CURES_LLAMA_SERVER, CURES_SMOLLM2_GGUF and
//! CURES_SMOLLM2_DIR are set (scripts/test.sh sets them).

use std::thread;
use std::time::{Duration, Instant};

use crate::support::{free_port, llama_env, start_llama};
use cures::policy::{ChatMessage, Tokenizer};
use cures::rollout::{
    Completion, EndpointConfig, EngineKind, OpenAiEngine, RolloutConfig, RolloutEngine,
    RolloutRequest,
};

fn tokenizer(env: &crate::support::LlamaEnv) -> Tokenizer {
    Tokenizer::load(&env.hf_dir, &[2], Some(2)).expect("SmolLM2 tokenizer")
}

fn prompts(tok: &Tokenizer, ns: &[usize]) -> Vec<RolloutRequest> {
    ns.iter()
        .enumerate()
        .map(|(i, &n)| RolloutRequest {
            prompt_ids: tok
                .encode_chat(
                    &[ChatMessage::new(
                        "user",
                        &format!(
                            "What is {} plus {}? Explain step by step.",
                            12 + i,
                            30 + 7 * i
                        ),
                    )],
                    true,
                )
                .expect("encode"),
            n,
            seed: 100 + i as u64,
        })
        .collect()
}

fn cfg(urls: &[String], max_tokens: usize) -> RolloutConfig {
    RolloutConfig {
        engine: EngineKind::Openai,
        endpoints: urls.iter().map(|u| EndpointConfig::new(u)).collect(),
        max_tokens,
        temperature: 1.0,
        max_retries: 8,
        backoff_ms: 100,
        backoff_max_ms: 1000,
        endpoint_failures: 2,
        endpoint_down_timeout_s: 60.0,
        request_timeout_s: 120.0,
        ..RolloutConfig::default()
    }
}

fn assert_exact(comps: &[Completion], ns: &[usize]) {
    let mut got = vec![0usize; ns.len()];
    for c in comps {
        got[c.request] += 1;
        assert!(!c.token_ids.is_empty(), "empty completion");
    }
    assert_eq!(got, ns, "every requested completion exactly once");
}

#[test]
fn per_prompt_n_with_token_ids_and_logprobs() {
    let _serial = crate::support::serial();
    let Some(env) = llama_env() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let srv = start_llama(&env, port, 4, &tmp.path().join("llama.log"));
    let tok = tokenizer(&env);
    let c = cfg(&[srv.url("")], 16);
    let mut e = OpenAiEngine::new(&c, Some(tok.clone())).expect("engine");
    let ns = [1, 4, 0, 2, 3];
    let comps = e.generate(&prompts(&tok, &ns), &c).expect("generate");
    assert_exact(&comps, &ns);
    let st = e.last_stats();
    assert_eq!(st.retokenized, 0, "ids come from the server");
    for c in &comps {
        let lp = c
            .logprobs
            .as_ref()
            .expect("log-probs parsed from content[]");
        assert_eq!(lp.len(), c.token_ids.len());
        assert!(lp.iter().all(|x| x.is_finite() && *x <= 1e-6));
        // The ids are the server's tokens of the text.
        let text = tok.decode(&c.token_ids, true).expect("decode");
        assert_eq!(text.trim(), c.text.trim(), "ids {:?}", c.token_ids);
    }
    // Different seeds give different samples within a prompt.
    let g: Vec<&Completion> = comps.iter().filter(|c| c.request == 1).collect();
    assert!(g.windows(2).any(|w| w[0].token_ids != w[1].token_ids));
}

#[test]
fn server_killed_mid_step_and_restarted() {
    let _serial = crate::support::serial();
    let Some(env) = llama_env() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut srv = start_llama(&env, port, 4, &tmp.path().join("llama.log"));
    let tok = tokenizer(&env);
    let c = cfg(&[srv.url("")], 48);
    let mut e = OpenAiEngine::new(&c, Some(tok.clone())).expect("engine");
    let ns = [2, 2, 3, 1, 2, 2];
    let reqs = prompts(&tok, &ns);
    let env2 = crate::support::LlamaEnv {
        bin: env.bin.clone(),
        gguf: env.gguf.clone(),
        hf_dir: env.hf_dir.clone(),
    };
    let log2 = tmp.path().join("llama2.log");
    let restarter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        srv.kill();
        thread::sleep(Duration::from_millis(1500));
        start_llama(&env2, port, 4, &log2)
    });
    let t = Instant::now();
    let comps = e
        .generate(&reqs, &c)
        .expect("the step completes across the restart");
    let _srv2 = restarter.join().expect("restart");
    assert_exact(&comps, &ns);
    let st = e.last_stats();
    eprintln!(
        "killed + restarted: {} completions in {:.1} s, {} retries, {} requests",
        comps.len(),
        t.elapsed().as_secs_f64(),
        st.retries,
        st.requests
    );
    assert!(st.retries >= 1, "the kill hit in-flight requests");
}

#[test]
fn second_endpoint_takes_over_when_one_dies() {
    let _serial = crate::support::serial();
    let Some(env) = llama_env() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let mut a = start_llama(&env, free_port(), 4, &tmp.path().join("a.log"));
    let b = start_llama(&env, free_port(), 4, &tmp.path().join("b.log"));
    let tok = tokenizer(&env);
    let c = cfg(&[a.url(""), b.url("")], 48);
    let mut e = OpenAiEngine::new(&c, Some(tok.clone())).expect("engine");
    let ns = [2, 1, 3, 2, 2, 1, 2, 3];
    let reqs = prompts(&tok, &ns);
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        a.kill();
        a
    });
    let t = Instant::now();
    let comps = e.generate(&reqs, &c).expect("B takes over");
    drop(killer.join());
    assert_exact(&comps, &ns);
    let st = e.last_stats();
    eprintln!(
        "one of two endpoints killed: {} completions in {:.1} s, {} retries",
        comps.len(),
        t.elapsed().as_secs_f64(),
        st.retries
    );
    assert!(st.retries >= 1);
    // The next step runs on B alone.
    let comps = e.generate(&prompts(&tok, &[1, 1]), &c).expect("B alone");
    assert_exact(&comps, &[1, 1]);
    drop(b);
}

#[test]
fn concurrency_limit_holds_and_is_reached() {
    let _serial = crate::support::serial();
    let Some(env) = llama_env() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    // 4 slots: the server queues whatever is beyond them, so the client alone bounds the wire.
    let srv = start_llama(&env, free_port(), 4, &tmp.path().join("llama.log"));
    let tok = tokenizer(&env);
    for limit in [1usize, 6] {
        let c = RolloutConfig {
            max_concurrency: limit,
            ..cfg(&[srv.url("")], 4)
        };
        let mut e = OpenAiEngine::new(&c, Some(tok.clone())).expect("engine");
        let ns = vec![1usize; 18];
        let comps = e.generate(&prompts(&tok, &ns), &c).expect("generate");
        assert_exact(&comps, &ns);
        let st = e.last_stats();
        assert_eq!(
            st.peak_in_flight, limit as u64,
            "max_concurrency = {limit}: never above it, and reached with 18 requests"
        );
        assert_eq!(st.retries, 0);
    }
}

#[test]
fn a_prompt_the_server_refuses_sits_the_step_out_and_the_run_goes_on() {
    let _serial = crate::support::serial();
    let Some(env) = llama_env() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    // Two slots (llama-server takes n up to its slots) and 2048 tokens of context: a
    // 3000-token prompt fits the model (8192 positions, so it is not dropped at load) but not
    // the server, which answers 400 (exceed_context_size_error).
    let srv = start_llama(&env, free_port(), 2, &tmp.path().join("llama.log"));
    let train = tmp.path().join("train.jsonl");
    // 15 short prompts and a long one; 4 drawn per step without replacement (a pool of
    // 4 x 4): the long one sits out each step that draws it, never more than half of a step.
    let mut rows: Vec<String> = (0..15)
        .map(|i| {
            serde_json::json!({"id": format!("p{i}"), "problem": format!("What is {i} plus 2?"),
                "answer": (i + 2).to_string()})
            .to_string()
        })
        .collect();
    rows.push(
        serde_json::json!({"id": "long", "problem": "one two three ".repeat(1000), "answer": "1"})
            .to_string(),
    );
    std::fs::write(&train, rows.join("\n")).expect("train");
    let sets: Vec<String> = vec![
        format!("model.path={}", env.hf_dir.display()),
        "model.device=cpu".into(),
        format!("data.train={}", train.display()),
        "data.eval=[]".into(),
        "batch.prompts=4".into(),
        "batch.budget=8".into(),
        "curriculum.strategy=grpo".into(),
        "curriculum.sampling=without_replacement".into(),
        "iterations.subsets=1".into(),
        "iterations.steps=6".into(),
        "iterations.init_rollouts=0".into(),
        "run.steps=6".into(),
        "train.kl_coef=0".into(),
        // The memory plan counts the long prompt's completions (3008 tokens) as if served: a
        // micro-batch of 16384 such padded tokens would not fit this machine's memory.
        "train.micro_batch_tokens=4096".into(),
        "reward.fallback_last_number=true".into(),
        "rollout.engine=openai".into(),
        "rollout.sync=none".into(),
        "rollout.max_tokens=8".into(),
        format!("rollout.endpoints=[{{url = \"{}\"}}]", srv.url("")),
    ];
    let config = cures::config::Config::from_toml_str("", "<refused>", &sets).expect("config");
    let out = tmp.path().join("run");
    cures::run::run(cures::run::RunOptions {
        config,
        out: Some(out.clone()),
        resume: false,
        overwrite: false,
        quiet: true,
    })
    .unwrap_or_else(|e| panic!("the run must go on past a refused prompt: {e:#}"));
    let rows =
        cures::rundir::read_csv::<cures::run::StepRow>(&out.join("steps.csv")).expect("steps.csv");
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert!(
            r.skipped_prompts <= 1,
            "only the long prompt is refused: {r:?}"
        );
        assert_eq!(
            r.completions,
            8 - 2 * r.skipped_prompts,
            "the other prompts got their n = 2: {r:?}"
        );
    }
    let hits = rows.iter().filter(|r| r.skipped_prompts == 1).count();
    assert!(
        hits > 0,
        "the seeded draws include the long prompt in some step"
    );
}
