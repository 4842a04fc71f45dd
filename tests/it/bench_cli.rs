//! `cures bench publish` end to end on the tiny fixture model (disk only, no server): the rows
//! it prints are whole, and the directory it wrote in is left clean.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn bench_publish_reports_full_and_lora_rows_and_cleans_up() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy/tiny-llama");
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args([
            "bench",
            "publish",
            "--reps",
            "1",
            "--lora-rank",
            "4",
            "--json",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run cures");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("json line")).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["payload"], "full");
    assert_eq!(rows[1]["payload"], "lora");
    for r in rows {
        assert!(r["bytes"].as_u64().expect("bytes") > 0, "{r}");
        assert!(r["write_s"].as_f64().expect("write_s") > 0.0, "{r}");
        assert!(r["call_s"].is_null(), "no server, no call: {r}");
        assert!(r["write_vs_dd"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    }
    // The full checkpoint (bf16) is bigger than the rank-4 adapter.
    assert!(rows[0]["bytes"].as_u64() > rows[1]["bytes"].as_u64());
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "bench publish left {left:?}");
}

#[test]
fn bench_inflight_without_a_server_is_a_clear_error() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy/tiny-llama");
    let out = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args([
            "bench",
            "inflight",
            "--endpoint",
            "http://127.0.0.1:9",
            "--levels",
            "1,2",
        ])
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run cures");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no server at http://127.0.0.1:9"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bench_optim_times_every_precision() {
    let out = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(["bench", "optim", "--reps", "1", "--no-reference", "--json"])
        .output()
        .expect("run cures");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("json line")).expect("json");
    let params = v["params"].as_i64().expect("params");
    assert!((25_000_000..40_000_000).contains(&params), "{params}");
    let rows = v["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["variant"].as_str()).collect();
    assert_eq!(
        names,
        ["cures bf16_mixed", "cures pure bf16", "cures fp32"],
        "{v}"
    );
    for r in rows {
        assert!(r["step_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    }
    assert!(v["mixed_vs_torch_fused"].is_null());
}

#[test]
fn diff_counts_moved_weights_and_names_a_mismatch() {
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy");
    let diff = |a: &str, b: &str| {
        Command::new(env!("CARGO_BIN_EXE_cures"))
            .args(["diff", "--json"])
            .arg(fx.join(a))
            .arg(fx.join(b))
            .output()
            .expect("run cures")
    };
    let same = diff("tiny-llama", "tiny-llama");
    let stdout = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("json line")).expect("json");
    assert_eq!(v["total"]["differ"], 0, "{v}");
    assert!(v["total"]["elements"].as_u64().is_some_and(|n| n > 1000));
    let other = diff("tiny-llama", "tiny-qwen2");
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("tensor "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The memory plan's activations + LM-head chunk against the measured peak of the same update
/// (`cures bench train-step --head-memory small`: the peak RSS one update adds, in a child process per
/// chunk size, see src/bench/head_memory.rs): within ±30%, chunked and not.
#[test]
fn the_memory_plan_matches_the_measured_peak_of_an_update() {
    let _serial = crate::support::serial();
    let o = Command::new(env!("CARGO_BIN_EXE_cures"))
        .args([
            "bench",
            "train-step",
            "--head-memory",
            "small",
            "--steps",
            "1",
            "--json",
        ])
        .output()
        .expect("cures bench");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(out.lines().last().expect("json line")).expect("json");
    assert_eq!(rows.len(), 2, "chunked and unchunked: {out}");
    for r in &rows {
        let (peak, plan) = (
            r["peak_bytes"].as_f64().expect("peak"),
            r["plan_bytes"].as_f64().expect("plan"),
        );
        assert!(peak > 1e6, "a measured peak: {r}");
        let err = plan / peak - 1.0;
        assert!(err.abs() <= 0.3, "plan off by {:+.0}%: {r}", 100.0 * err);
    }
}
