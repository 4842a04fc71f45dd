//! `cures eval` end to end: a warm-started testbed policy on a small benchmark file, with the
//! outputs checked for consistency; bad benchmarks and the server path fail clearly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cures(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cures")
}

fn ok(args: &[&str]) -> Output {
    let o = cures(args);
    assert!(
        o.status.success(),
        "cures {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn policy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("policy");
    ok(&[
        "sft",
        "--config",
        "configs/demo.toml",
        "--out",
        dir.to_str().expect("utf8"),
        "--quiet",
        "--set",
        "sft.steps=120",
        "--set",
        "sft.hidden=64",
        "--set",
        "sft.intermediate=128",
        "--set",
        "sft.layers=2",
    ]);
    dir
}

#[test]
fn eval_testbed_policy_end_to_end() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = policy(tmp.path());
    // A small real benchmark: testbed held-out problems, written as GSM8K-style rows (gold
    // after ####) to exercise that loader too.
    let tb = cures::testbed::generate(&cures::testbed::TestbedConfig {
        train_per_level: 2,
        heldout_per_level: 4,
        ..Default::default()
    });
    let mut text = String::new();
    for e in &tb.heldout {
        text.push_str(&serde_json::json!({"id": e.id, "question": e.problem, "answer": format!("worked out #### {}", e.answer)}).to_string());
        text.push('\n');
    }
    let bench = tmp.path().join("tb_small.jsonl");
    std::fs::write(&bench, text).expect("write bench");
    let out = tmp.path().join("eval");
    let o = ok(&[
        "eval",
        "--model",
        model.to_str().expect("utf8"),
        "--bench",
        bench.to_str().expect("utf8"),
        "--k",
        "4",
        "--temperature",
        "1",
        "--template",
        "testbed",
        "--max-tokens",
        "12",
        "--out",
        out.to_str().expect("utf8"),
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("stdout")).expect("json summary");
    assert_eq!(summary["rows"][0]["benchmark"], "tb_small");

    let csv_text = std::fs::read_to_string(out.join("eval.csv")).expect("eval.csv");
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let headers: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    assert_eq!(
        headers,
        [
            "benchmark",
            "problems",
            "k",
            "temperature",
            "template",
            "pass@1",
            "avg@k",
            "pass@k",
            "maj@k"
        ]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.expect("row")).collect();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let num = |i: usize| row[i].parse::<f64>().expect("number");
    assert_eq!(&row[0], "tb_small");
    assert_eq!(num(1) as usize, tb.heldout.len());
    assert_eq!(num(2), 4.0);
    assert_eq!(num(3), 1.0);
    assert_eq!(&row[4], "testbed");
    let (p1, avg, pk, maj) = (num(5), num(6), num(7), num(8));
    for v in [p1, avg, pk, maj] {
        assert!((0.0..=1.0).contains(&v), "{csv_text}");
    }
    assert!(pk >= p1 && pk >= maj - 1e-12, "{csv_text}");
    assert!(
        (p1 - avg).abs() < 1e-12,
        "sampled pass@1 is the mean accuracy"
    );

    // Samples: one line per problem, k completions each, counts consistent with eval.csv.
    let samples = std::fs::read_to_string(out.join("eval_samples.jsonl")).expect("samples");
    let recs: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(recs.len(), tb.heldout.len());
    let mut correct = 0usize;
    let mut any = 0usize;
    for (rec, ex) in recs.iter().zip(&tb.heldout) {
        assert_eq!(rec["id"], ex.id.as_str());
        assert_eq!(rec["answer"], ex.answer.as_str());
        for key in [
            "completions",
            "extracted",
            "correct",
            "finish_reasons",
            "completion_tokens",
        ] {
            assert_eq!(rec[key].as_array().expect(key).len(), 4, "{key}");
        }
        let c = rec["correct"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.as_bool() == Some(true))
            .count();
        assert_eq!(rec["n_correct"].as_u64(), Some(c as u64));
        correct += c;
        any += usize::from(c > 0);
    }
    let n = tb.heldout.len() as f64;
    assert!((avg - correct as f64 / (4.0 * n)).abs() < 1e-9);
    // k = n samples: pass@k is the share of problems with any correct sample.
    assert!((pk - any as f64 / n).abs() < 1e-9);

    // Greedy: one completion per problem, k recorded as 1.
    let out2 = tmp.path().join("greedy");
    ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
        "--temperature",
        "0",
        "--template",
        "testbed",
        "--max-tokens",
        "12",
        "--out",
        out2.to_str().unwrap(),
        "--quiet",
    ]);
    let g = std::fs::read_to_string(out2.join("eval.csv")).unwrap();
    let line = g.lines().nth(1).expect("row");
    assert!(
        line.starts_with(&format!("tb_small,{},1,0.0,testbed,", tb.heldout.len())),
        "{g}"
    );

    // Errors: a bad row names file:line; --endpoint is not available yet; not both.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"2+2\"}\n",
    )
    .unwrap();
    let o = cures(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--bench",
        bad.to_str().unwrap(),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:2"), "{err}");
    // Server path: the tokenizer is required; an unreachable server fails fast and says where.
    let b = bench.to_str().unwrap();
    let x = tmp.path().join("x");
    let x = x.to_str().unwrap();
    let o = cures(&[
        "eval",
        "--endpoint",
        "http://127.0.0.1:9",
        "--bench",
        b,
        "--quiet",
        "--out",
        x,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--tokenizer"), "{err}");
    let o = cures(&[
        "eval",
        "--endpoint",
        "http://127.0.0.1:9",
        "--tokenizer",
        model.to_str().unwrap(),
        "--bench",
        b,
        "--quiet",
        "--out",
        x,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("127.0.0.1:9"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
