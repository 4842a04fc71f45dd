//! Datasets as they come, through the library and the `cures data` commands: the same
//! MATH-style rows (a `solution` with the answer boxed, `"Level 3"` levels, one repeated
//! problem) as JSON Lines, as Parquet written by pyarrow (Snappy and Zstandard), and as a
//! Hugging Face dataset folder (Parquet shards under `data/`), all load to the same rows.

use std::path::{Path, PathBuf};
use std::process::Command;

use cures::data::{load, load_with, Fields};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(p)
}

fn math() -> Fields {
    Fields {
        solution: "solution".into(),
        ..Fields::default()
    }
}

#[test]
fn jsonl_parquet_and_a_dataset_folder_load_the_same_rows() {
    let jsonl = load_with(&fixture("math.jsonl"), &math()).expect("jsonl");
    assert_eq!(jsonl.examples.len(), 3);
    assert_eq!(jsonl.duplicates, 1);
    assert_eq!(jsonl.examples[1].answer, "\\frac{1}{2}");
    assert_eq!(jsonl.examples[1].level, Some(3));
    for p in ["math.parquet", "math-zstd.parquet", "hf_math"] {
        let l = load_with(&fixture(p), &math()).unwrap_or_else(|e| panic!("{p}: {e:#}"));
        assert_eq!(l.examples, jsonl.examples, "{p}");
        assert_eq!(l.duplicates, 1, "{p}");
    }
    // The folder's test split: integer answers and levels come through as such.
    let test = load_with(
        &fixture("hf_math"),
        &Fields {
            split: "test".into(),
            ..Fields::default()
        },
    )
    .expect("test split");
    assert_eq!(test.examples[0].answer, "7");
    assert_eq!(test.examples[0].level, Some(2));
    // Without the solution mapping, a Parquet row without an answer is named by row.
    let e = format!("{:#}", load(&fixture("math.parquet")).unwrap_err());
    assert!(
        e.contains("math.parquet: row 1") && e.contains("`answer` is missing"),
        "{e}"
    );
}

fn cures(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cures"))
        .args(args)
        .output()
        .expect("run cures")
}

#[test]
fn data_inspect_and_prepare() {
    let p = fixture("hf_math");
    let o = cures(&[
        "data",
        "inspect",
        p.to_str().expect("utf8"),
        "--solution-key",
        "solution",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("4 rows in 2 files"), "{out}");
    assert!(out.contains("usable rows: 3"), "{out}");
    assert!(
        out.contains("repeated problems (dropped at load): 1"),
        "{out}"
    );
    assert!(out.contains("solution → answer"), "{out}");
    // Without the mapping: every row lacks an answer, named by file and row.
    let o = cures(&["data", "inspect", p.to_str().expect("utf8")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("rows without an answer (an error at load): 4"),
        "{out}"
    );
    assert!(out.contains("train-00001-of-00002.parquet: row 2"), "{out}");

    let tmp = tempfile::tempdir().expect("tmp");
    let dst = tmp.path().join("math_train.jsonl");
    let prepare = |out: &std::path::Path| {
        cures(&[
            "data",
            "prepare",
            p.to_str().expect("utf8"),
            "--solution-key",
            "solution",
            "--out",
            out.to_str().expect("utf8"),
        ])
    };
    let o = prepare(&dst);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prepared = load(&dst).expect("prepared loads with the defaults");
    assert_eq!(prepared, load_with(&p, &math()).expect("folder").examples);
    // An output named for another format is refused, and nothing is written.
    let pq = tmp.path().join("x.parquet");
    let o = prepare(&pq);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("writes JSON Lines; name the file .jsonl"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!pq.exists());
    // A missing file names itself.
    let o = cures(&["data", "inspect", "/nonexistent/x.parquet"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/x.parquet"));
}

/// A 50 MB problem under a 4 GB address-space limit: `data inspect --model` counts it without
/// tokenising it, and `cures run` drops it from a held-out set, counts it, and evaluates the rest.
#[test]
fn a_50_mb_problem_is_dropped_and_counted_under_a_memory_limit() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tmp");
    let big = tmp.path().join("big.jsonl");
    let huge = "1+".repeat(25_000_000) + "1";
    std::fs::write(
        &big,
        format!("{{\"problem\": \"{huge}\", \"answer\": \"x\"}}\n{{\"problem\": \"2+2\", \"answer\": \"4\"}}\n"),
    )
    .expect("write");
    let model = crate::run_e2e::policy_dir();
    let limited = |args: &[String]| {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -v 4000000; exec '{}' {}",
                env!("CARGO_BIN_EXE_cures"),
                quoted.join(" ")
            ))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (ok, text) = limited(&[
        "data".into(),
        "inspect".into(),
        big.display().to_string(),
        "--model".into(),
        model.display().to_string(),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("1 problem is far longer than the context"),
        "{text}"
    );
    let out = tmp.path().join("run");
    let mut args = crate::run_e2e::small_run_args(
        model.to_str().expect("utf8"),
        out.to_str().expect("utf8"),
        "1",
    );
    args.retain(|a| a != "--quiet");
    args.extend(["--set".into(), format!("data.eval=[\"{}\"]", big.display())]);
    let (ok, text) = limited(&args);
    assert!(ok, "{text}");
    assert!(
        text.contains("data.eval big: dropped 1 of 2 problems longer than"),
        "{text}"
    );
    let (head, rows) = crate::run_e2e::read_csv(&out.join("eval.csv"));
    let problems = head.iter().position(|h| h == "problems").expect("problems");
    assert!(rows.iter().all(|r| r[problems] == "1"), "{rows:?}");
}
