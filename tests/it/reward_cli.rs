//! `cures reward score` / `cures reward check` end to end.

use std::process::Command;

fn cures() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cures"))
}

#[test]
fn score_jsonl_keeps_fields_and_order_and_adds_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id": 7, "prediction": "so \\boxed{\\frac{1}{2}}", "gold": "0.5", "z": [1]}"#,
            "\n\n",
            r#"{"gold": "3", "prediction": "\\boxed{4}", "equivalent": true}"#,
            "\n",
            r#"{"prediction": "no box here, sorry", "gold": "3"}"#,
            "\n"
        ),
    )
    .expect("write");
    let out = cures()
        .args(["reward", "score", "--quiet", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].starts_with(r#"{"id":7,"prediction":"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(r#""z":[1],"equivalent":true,"extracted":"\\frac{1}{2}","reward":1.0"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(r#""equivalent":false"#) && !lines[1].contains("true"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains(r#""extracted":null"#), "{}", lines[2]);
}

#[test]
fn bad_line_names_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"prediction\": \"1\", \"gold\": \"1\"}\n{\"prediction\": 5, \"gold\": \"1\"}\n",
    )
    .expect("write");
    let out = cures()
        .args(["reward", "score", "--input"])
        .arg(&input)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("`prediction`"),
        "{err}"
    );
    std::fs::write(&input, "not json\n").expect("write");
    let out = cures()
        .args(["reward", "score", "--input"])
        .arg(&input)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:1"));
    std::fs::write(&input, "{\"prediction\": \"1\"}\n").expect("write");
    let out = cures()
        .args(["reward", "score", "--input"])
        .arg(&input)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field `gold`"));
}

#[test]
fn check_prints_verdict_and_forms() {
    let out = cures()
        .args(["reward", "check", "--pred", "\\boxed{x = 5}", "--gold", "5"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("equivalent: true") && s.contains("parsed"),
        "{s}"
    );
    let out = cures()
        .args([
            "reward",
            "check",
            "--json",
            "--legacy-rewards",
            "--pred",
            "I do not know the answer",
            "--gold",
            "5",
        ])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["verdict"]["reward"], -1.0);
    assert_eq!(v["verdict"]["equivalent"], false);
    // A completion cut off inside its box: malformed, with the reason, in both forms.
    let out = cures()
        .args([
            "reward",
            "check",
            "--pred",
            "so it is \\boxed{\\frac{1}{2}",
            "--gold",
            "1/2",
        ])
        .output()
        .expect("run");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("prediction: malformed: the last \\boxed at byte 9 is never closed")
            && s.contains("equivalent: false"),
        "{s}"
    );
    let out = cures()
        .args([
            "reward",
            "check",
            "--json",
            "--pred",
            "\\boxed{1",
            "--gold",
            "1",
        ])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["verdict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("never closed")),
        "{v}"
    );
}

#[test]
fn negative_values_are_accepted_as_they_are_written() {
    let out = cures()
        .args(["reward", "check", "--json", "--pred", "-5", "--gold", "-5"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["verdict"]["equivalent"], true);
    let out = cures()
        .args([
            "reward",
            "check",
            "--json",
            "--pred",
            "\\boxed{5}",
            "--gold",
            "-5",
        ])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["verdict"]["equivalent"], false, "5 is not -5");
}

#[test]
fn sync_weights_script_help_exits_zero() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sync-weights.sh");
    for flag in ["--help", "-h"] {
        let out = Command::new("bash")
            .args([script, flag])
            .output()
            .expect("bash");
        assert!(out.status.success(), "{flag}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("usage:"));
    }
    let out = Command::new("bash").arg(script).output().expect("bash");
    assert_eq!(out.status.code(), Some(2), "no arguments is a usage error");
}
