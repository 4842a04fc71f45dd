//! The run directory's logs on resume are cut back to the checkpoint's step, never thinned: a
//! line a kill cut short is dropped and reported, a damaged or missing row before the step is
//! an error naming the file and line, and TensorBoard holds each step once. The record of a
//! run is the run: `config.toml` is written with the first checkpoint, and a resume is
//! recorded once it has stepped.

use std::path::{Path, PathBuf};

use crate::run_e2e::{policy_dir, read_csv, small_run_args};

/// `cures` with `args` (and `CURES_FAIL_PHASE` when given): (success, stdout + stderr); never
/// a panic.
fn cures(args: &[String], fail: Option<&str>) -> (bool, String) {
    let (ok, text) = crate::run_faults::cures_env(args, fail);
    assert!(!text.contains("panicked"), "{text}");
    (ok, text)
}

fn args(out: &Path, steps: &str, extra: &[&str]) -> Vec<String> {
    let model = policy_dir().to_str().expect("utf8");
    let mut a = small_run_args(model, out.to_str().expect("utf8"), steps);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn resume(out: &Path, steps: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args(out, steps, extra);
    a.push("--resume".into());
    a
}

/// The steps of every TensorBoard event of the run, over all its event files.
fn tb_steps(out: &Path) -> Vec<u64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("tensorboard"))
        .expect("tensorboard/")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut steps: Vec<u64> = files
        .iter()
        .flat_map(|f| cures::metrics::tensorboard::event_steps(f).expect("event file"))
        .collect();
    steps.sort();
    steps
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    f.write_all(bytes).expect("append");
}

/// The rows of a CSV without the timing columns.
fn rows_but_timings(path: &Path) -> Vec<Vec<String>> {
    let (head, rows) = read_csv(path);
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .zip(&head)
                .filter(|(_, h)| !h.starts_with("sec_") && !h.contains("wall"))
                .map(|(v, _)| v)
                .collect()
        })
        .collect()
}

/// A run killed while checkpointing step 4 (rows and events of steps 3-4 written, a row, a
/// rollout line and an event record cut short, the latest checkpoint step 2's): the resume cuts
/// every log back to step 2, reports what it dropped, and ends with each step once, the rows
/// those of the uninterrupted run.
#[test]
fn a_killed_run_resumes_with_each_row_and_event_once() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let (ok, text) = cures(&args(&out, "4", &[]), None);
    assert!(ok, "{text}");
    let straight = rows_but_timings(&out.join("steps.csv"));
    let straight_tb = tb_steps(&out);
    // Steps 0 (held-out) to 4: step 2 and 4 carry a held-out event beside the train one.
    assert_eq!(straight_tb, [0, 1, 2, 2, 3, 4, 4]);
    let rollouts = std::fs::read_to_string(out.join("rollouts.jsonl")).expect("rollouts");
    assert!(rollouts.lines().count() >= 4, "{rollouts}");

    // What a kill -9 during step 4's checkpoint leaves.
    std::fs::remove_dir_all(out.join("checkpoints/step_0000004")).expect("rm");
    std::fs::write(out.join("checkpoints/latest"), "step_0000002\n").expect("latest");
    append(&out.join("steps.csv"), b"5,96,0.5");
    append(&out.join("rollouts.jsonl"), b"{\"step\":5,\"prom");
    let tb = std::fs::read_dir(out.join("tensorboard"))
        .expect("tb")
        .map(|e| e.expect("entry").path())
        .next()
        .expect("an event file");
    append(&tb, &[40, 0, 0, 0, 0, 0, 0, 0, 9, 9]);

    let (ok, text) = cures(&resume(&out, "4", &[]), None);
    assert!(ok, "{text}");
    for want in [
        "steps.csv: 2 rows past step 2 cut; the last line (6), cut short by an interrupted \
         write, dropped",
        "rollouts.jsonl: ",
        "events past step 2 cut; a record cut short",
    ] {
        assert!(text.contains(want), "no {want:?} in {text}");
    }
    assert_eq!(rows_but_timings(&out.join("steps.csv")), straight);
    assert_eq!(tb_steps(&out), straight_tb, "each step once in TensorBoard");
    let again = std::fs::read_to_string(out.join("rollouts.jsonl")).expect("rollouts");
    assert_eq!(again.lines().count(), rollouts.lines().count());
    assert!(again.ends_with('\n') && !again.contains("prom\n"));
}

/// A damaged line in the middle of a log, or rows missing from `steps.csv`, stop the resume
/// with the file and line named, and the file as it was.
#[test]
fn a_damaged_or_emptied_log_stops_the_resume_and_loses_nothing() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let (ok, text) = cures(&args(&out, "2", &[]), None);
    assert!(ok, "{text}");

    let path = out.join("rollouts.jsonl");
    let good = std::fs::read_to_string(&path).expect("rollouts");
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let n = lines.len();
    assert!(n >= 4, "{good}");
    lines[2] = lines[2].replacen('{', "[", 1);
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&path, &damaged).expect("damage");
    let (ok, text) = cures(&resume(&out, "3", &[]), None);
    assert!(!ok, "a damaged line was resumed past: {text}");
    assert!(text.contains("rollouts.jsonl:3: damaged row"), "{text}");
    assert!(text.contains("--overwrite"), "{text}");
    assert_eq!(std::fs::read_to_string(&path).expect("rollouts"), damaged);
    std::fs::write(&path, &good).expect("repair");

    // steps.csv emptied (as an editor or a full disk leaves it): refused, both steps named.
    let steps = out.join("steps.csv");
    let rows = std::fs::read_to_string(&steps).expect("steps");
    std::fs::write(&steps, "").expect("empty");
    let (ok, text) = cures(&resume(&out, "3", &[]), None);
    assert!(!ok, "an emptied steps.csv was resumed: {text}");
    assert!(
        text.contains(
            "steps.csv: the checkpoint is at step 2, but 2 rows of steps 1..=2 are \
                       missing"
        ),
        "{text}"
    );
    // One row gone from the middle: named too.
    let mut kept: Vec<&str> = rows.lines().collect();
    kept.remove(1);
    std::fs::write(&steps, kept.join("\n") + "\n").expect("thin");
    let (ok, text) = cures(&resume(&out, "3", &[]), None);
    assert!(!ok, "{text}");
    assert!(text.contains("the row of step 1 is missing"), "{text}");
    // Restored, the resume goes on.
    std::fs::write(&steps, &rows).expect("restore");
    let (ok, text) = cures(&resume(&out, "3", &[]), None);
    assert!(ok, "{text}");
    assert_eq!(read_csv(&steps).1.len(), 3);
}

/// A fresh start that fails leaves no `config.toml`; the corrected rerun records its own. A
/// resume that fails before its first step records nothing; the one that steps is recorded
/// once.
#[test]
fn the_record_holds_only_what_ran() {
    let _serial = crate::support::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let (ok, text) = cures(&args(&out, "2", &["--set", "train.lr=1e308"]), None);
    assert!(!ok, "lr = 1e308 trained: {text}");
    assert!(
        !out.join("config.toml").exists(),
        "a config no checkpoint was made with"
    );
    let (ok, text) = cures(&args(&out, "2", &["--overwrite"]), None);
    assert!(ok, "{text}");
    let config = std::fs::read_to_string(out.join("config.toml")).expect("config.toml");
    assert!(
        config.contains("lr = 0.00003") && !config.contains("e308"),
        "{config}"
    );

    // A resume with a safe change that fails in its first step: no record.
    let change = ["--set", "run.eval_every=3"];
    let (ok, text) = cures(&resume(&out, "4", &change), Some("generate@3"));
    assert!(!ok, "{text}");
    assert!(!out.join("resumes.jsonl").exists(), "{text}");
    assert!(!out.join("config.resume-step2.toml").exists());
    let (ok, text) = cures(&resume(&out, "4", &change), None);
    assert!(ok, "{text}");
    let recs = std::fs::read_to_string(out.join("resumes.jsonl")).expect("resumes.jsonl");
    assert_eq!(recs.lines().count(), 1, "{recs}");
    assert!(recs.contains("\"at_step\":2"), "{recs}");
    assert!(out.join("config.resume-step2.toml").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("config.toml")).expect("config.toml"),
        config,
        "the original config stays"
    );
}
