//! Benchmark files: every common layout of math evaluation sets, read into [`Example`]s.
//!
//! One loader for JSONL (`.jsonl`, `.json` with one object per line) and CSV files. Each row
//! needs a problem and a gold answer, found under these keys (case-insensitive):
//!
//! | what | keys, first present wins |
//! |---|---|
//! | problem | `problem`, `question`, `prompt`, `input` |
//! | answer | `answer`, `final_answer`, `gt`, `ground_truth`, `target` |
//! | solution | `solution` (used when no answer key is present) |
//! | id | `id`, `unique_id`, `idx`, `problem_id`, `index` (else the row number) |
//!
//! - Plain `problem`/`answer` files (cures' own layout, CHAMP, AIME/AMC exports with integer
//!   answers: numbers are taken as text).
//! - GSM8K: `question`/`answer` where the answer is a worked solution ending `#### N`: the
//!   gold is N (thousands separators removed).
//! - MATH / MATH-500: `problem`, `solution` and usually `answer`; without `answer`, the gold is
//!   the last `\boxed{..}` of the solution (the reward's own extraction).
//! - OlympiadBench: `final_answer` as a list of strings: joined with `, `.
//!
//! Bad rows are errors naming file:line and the field. The name `testbed` loads the generated
//! testbed's held-out split (see [`crate::run::load_dataset`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::data::Example;
use crate::reward::extract::{extract, Options, Source};

/// One benchmark: its name (file stem), where it came from, its problems.
#[derive(Debug, Clone)]
pub struct Bench {
    /// Short name (the file stem, `heldout` for the testbed).
    pub name: String,
    /// The file (or `testbed`).
    pub path: PathBuf,
    /// The problems with their gold answers.
    pub examples: Vec<Example>,
}

const PROBLEM_KEYS: [&str; 4] = ["problem", "question", "prompt", "input"];
const ANSWER_KEYS: [&str; 5] = ["answer", "final_answer", "gt", "ground_truth", "target"];
const SOLUTION_KEYS: [&str; 1] = ["solution"];
const ID_KEYS: [&str; 5] = ["id", "unique_id", "idx", "problem_id", "index"];

/// A row as read: the 1-based line and its fields by lower-cased key.
struct Row {
    line: usize,
    fields: HashMap<String, String>,
}

impl Row {
    fn first<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &str)> {
        keys.iter().find_map(|k| {
            self.fields
                .get(*k)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (*k, v.as_str()))
        })
    }
}

/// Load a benchmark file (or `testbed` with `cfg`'s testbed settings).
pub fn load_bench(spec: &str, cfg: &crate::config::Config) -> Result<Bench> {
    if spec == "testbed" {
        return Ok(Bench {
            name: "heldout".to_string(),
            path: PathBuf::from("testbed"),
            examples: crate::run::load_dataset("testbed", cfg, true)?,
        });
    }
    let path = Path::new(spec);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .map(|s| {
            s.trim_end_matches(".jsonl")
                .trim_end_matches(".json")
                .trim_end_matches(".csv")
                .to_string()
        })
        .unwrap_or_else(|| spec.to_string());
    Ok(Bench {
        name,
        path: path.to_path_buf(),
        examples: load_file(path)?,
    })
}

/// Read a benchmark file into examples (see the module docs for the layouts).
pub fn load_file(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read benchmark {}", path.display()))?;
    let origin = path.display().to_string();
    let rows = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => csv_rows(&text, &origin)?,
        Some("jsonl") | Some("json") => jsonl_rows(&text, &origin)?,
        other => bail!(
            "{origin}: unknown benchmark format {:?} (expected .jsonl, .json or .csv)",
            other.unwrap_or("")
        ),
    };
    examples(rows, &origin)
}

/// Parse JSONL text (`origin` names it in errors).
pub fn parse_jsonl(text: &str, origin: &str) -> Result<Vec<Example>> {
    examples(jsonl_rows(text, origin)?, origin)
}

fn json_text(v: &serde_json::Value, key: &str, at: &str) -> Result<Option<String>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        // OlympiadBench: `final_answer: ["$x=1$"]`; several answers become a list.
        Value::Array(items) => {
            let mut parts = Vec::new();
            for it in items {
                match json_text(it, key, at)? {
                    Some(s) => parts.push(s),
                    None => continue,
                }
            }
            (!parts.is_empty()).then(|| parts.join(", "))
        }
        Value::Object(_) => {
            bail!("{at}: field `{key}` must be a string or a number, got an object")
        }
    })
}

fn jsonl_rows(text: &str, origin: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{origin}:{}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{at}: invalid JSON"))?;
        let obj = value
            .as_object()
            .with_context(|| format!("{at}: expected a JSON object"))?;
        let mut fields = HashMap::new();
        for (k, v) in obj {
            let key = k.to_ascii_lowercase();
            let wanted = PROBLEM_KEYS
                .iter()
                .chain(&ANSWER_KEYS)
                .chain(&SOLUTION_KEYS)
                .chain(&ID_KEYS)
                .any(|w| *w == key);
            if !wanted {
                continue;
            }
            if let Some(s) = json_text(v, k, &at)? {
                fields.entry(key).or_insert(s);
            }
        }
        rows.push(Row {
            line: i + 1,
            fields,
        });
    }
    Ok(rows)
}

fn csv_rows(text: &str, origin: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("{origin}:1: cannot read the CSV header"))?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{origin}: malformed CSV"))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let mut fields = HashMap::new();
        for (h, v) in headers.iter().zip(record.iter()) {
            fields.entry(h.clone()).or_insert_with(|| v.to_string());
        }
        rows.push(Row { line, fields });
    }
    Ok(rows)
}

/// The gold of a GSM8K worked answer (`... #### 1,234` → `1234`), when it has the marker.
pub fn gsm8k_gold(answer: &str) -> Option<String> {
    let (_, tail) = answer.rsplit_once("####")?;
    let gold: String = tail.trim().chars().filter(|&c| c != ',').collect();
    (!gold.is_empty()).then_some(gold)
}

/// The last `\boxed{..}` of a MATH solution.
pub fn boxed_of_solution(solution: &str) -> Option<String> {
    let opt = Options {
        bare: false,
        final_answer: false,
        last_latex: false,
        last_number: false,
        whole: false,
    };
    extract(solution, &opt)
        .filter(|a| a.source == Source::Boxed)
        .map(|a| a.text)
}

fn examples(rows: Vec<Row>, origin: &str) -> Result<Vec<Example>> {
    if rows.is_empty() {
        bail!("{origin}: the benchmark is empty");
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (k, row) in rows.into_iter().enumerate() {
        let at = format!("{origin}:{}", row.line);
        let (_, problem) = row.first(&PROBLEM_KEYS).with_context(|| {
            format!(
                "{at}: no problem text (expected a non-empty field named one of {})",
                PROBLEM_KEYS.join(", ")
            )
        })?;
        let answer = match row.first(&ANSWER_KEYS) {
            Some((key, a)) => match gsm8k_gold(a) {
                Some(g) => g,
                None if a.contains("####") => {
                    bail!("{at}: field `{key}`: nothing after the GSM8K `####` marker")
                }
                None => a.trim().to_string(),
            },
            None => match row.first(&SOLUTION_KEYS) {
                Some((_, sol)) => boxed_of_solution(sol).with_context(|| {
                    format!("{at}: no `answer` field, and field `solution` has no \\boxed{{}} answer")
                })?,
                None => bail!(
                    "{at}: no gold answer (expected a non-empty field named one of {}, or a `solution` with a \\boxed{{}} answer)",
                    ANSWER_KEYS.join(", ")
                ),
            },
        };
        let id = row
            .first(&ID_KEYS)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| k.to_string());
        if let Some(first) = ids.insert(id.clone(), row.line) {
            bail!("{at}: field `id`: duplicate id {id:?} (first on line {first})");
        }
        out.push(Example {
            id,
            problem: problem.to_string(),
            answer,
            level: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        (dir, p)
    }

    #[test]
    fn gsm8k_layout() {
        let (_d, p) = write(
            "gsm.jsonl",
            "{\"question\": \"Tom has 3 apples...\", \"answer\": \"He has 3+4=<<3+4=7>>7.\\n#### 1,007\"}\n\
             {\"question\": \"Q2\", \"answer\": \"#### -4\"}\n",
        );
        let e = load_file(&p).expect("load");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].problem, "Tom has 3 apples...");
        assert_eq!(e[0].answer, "1007");
        assert_eq!(e[1].answer, "-4");
        assert_eq!(e[1].id, "1");
    }

    #[test]
    fn math_layout_with_and_without_answer() {
        let (_d, p) = write(
            "math500.jsonl",
            concat!(
                r#"{"problem": "Find x.", "solution": "So $x = \\boxed{\\frac{1}{2}}$.", "answer": "\\frac12", "unique_id": "test/algebra/1.json"}"#,
                "\n",
                r#"{"problem": "Find y.", "solution": "First \\boxed{3}, then $y=\\boxed{\\{1,2\\}}$."}"#,
                "\n"
            ),
        );
        let e = load_file(&p).expect("load");
        assert_eq!(e[0].answer, "\\frac12");
        assert_eq!(e[0].id, "test/algebra/1.json");
        assert_eq!(e[1].answer, "\\{1,2\\}");
    }

    #[test]
    fn aime_amc_olympiad_and_csv() {
        let (_d, p) = write(
            "aime24.jsonl",
            "{\"ID\": \"2024-I-1\", \"Problem\": \"Every morning...\", \"Answer\": 204}\n\
             {\"id\": 7, \"question\": \"AMC\", \"answer\": 3.5}\n\
             {\"question\": \"Olympiad\", \"final_answer\": [\"$x=1$\", \"$x=2$\"]}\n",
        );
        let e = load_file(&p).expect("load");
        assert_eq!(
            (e[0].id.as_str(), e[0].answer.as_str()),
            ("2024-I-1", "204")
        );
        assert_eq!((e[1].id.as_str(), e[1].answer.as_str()), ("7", "3.5"));
        assert_eq!(e[2].answer, "$x=1$, $x=2$");
        let (_d, p) = write("b.csv", "Question,Answer\n\"1+1, twice\",4\n");
        let e = load_file(&p).expect("load");
        assert_eq!(
            (e[0].problem.as_str(), e[0].answer.as_str()),
            ("1+1, twice", "4")
        );
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let cases = [
            ("{\"problem\": \"a\", \"answer\": \"1\"}\n{\"problem\": \"b\"}\n", ":2", "gold answer"),
            ("{\"problem\": \"a\", \"answer\": \"1\"}\n{oops\n", ":2", "invalid JSON"),
            ("{\"answer\": \"1\"}\n", ":1", "problem"),
            ("{\"question\": \"a\", \"answer\": \"work #### \"}\n", ":1", "####"),
            ("{\"problem\": \"a\", \"solution\": \"no box here\"}\n", ":1", "\\boxed{}"),
            ("{\"problem\": \"a\", \"answer\": {\"x\": 1}}\n", ":1", "`answer`"),
            (
                "{\"id\": 1, \"problem\": \"a\", \"answer\": 1}\n{\"id\": 1, \"problem\": \"b\", \"answer\": 2}\n",
                ":2",
                "duplicate id",
            ),
            ("\n", "", "empty"),
        ];
        for (text, line, want) in cases {
            let (_d, p) = write("bad.jsonl", text);
            let e = format!("{:#}", load_file(&p).unwrap_err());
            assert!(
                e.contains(&format!("bad.jsonl{line}")) && e.contains(want),
                "{text:?}: {e}"
            );
        }
        let (_d, p) = write("bad.txt", "x");
        assert!(format!("{:#}", load_file(&p).unwrap_err()).contains("unknown benchmark format"));
    }
}
