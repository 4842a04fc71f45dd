//! Prompt datasets: JSONL or CSV files with `problem`, `answer` and an optional `id`.
//!
//! Bad rows are errors that name the file, the line and the field; duplicate ids and duplicate
//! problems are rejected (a duplicated prompt would get two posteriors), and so are empty
//! answers (a prompt without a gold answer can never be rewarded).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One prompt with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Stable identifier (the row number when the file has none).
    pub id: String,
    /// The problem text (before any prompt template).
    pub problem: String,
    /// The reference answer.
    pub answer: String,
    /// Difficulty level, when the source knows it (the testbed does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
}

/// Load a dataset: `.jsonl`/`.json` (one object per line) or `.csv` (header row).
pub fn load(path: &Path) -> Result<Vec<Example>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read dataset {}", path.display()))?;
    let origin = path.display().to_string();
    let text = decode_text(&bytes, &origin)?;
    let rows = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => parse_csv(text, &origin)?,
        Some("jsonl") | Some("json") => parse_jsonl(text, &origin)?,
        other => bail!(
            "{origin}: unknown dataset format {:?} (expected .jsonl or .csv)",
            other.unwrap_or("")
        ),
    };
    check(rows, &origin)
}

/// The file as UTF-8 text: a leading byte-order mark is dropped, and bytes that are not UTF-8 are
/// an error naming the line and column where they start.
pub fn decode_text<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        anyhow::anyhow!(
            "{origin}:{line}:{col}: invalid UTF-8 (byte 0x{:02X}); save the file as UTF-8",
            bytes[e.valid_up_to()]
        )
    })
}

/// A row as read, with the 1-based line it came from.
struct Row {
    line: usize,
    id: Option<String>,
    problem: Option<String>,
    answer: Option<String>,
    level: Option<u32>,
}

fn json_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    at: &str,
) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        // Integer answers and ids are common (AIME, GSM8K exports): accept them as text.
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => bail!("{at}: field `{key}` must be a string, got {other}"),
    }
}

fn parse_jsonl(text: &str, origin: &str) -> Result<Vec<Row>> {
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
        let level = match obj.get("level") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|l| u32::try_from(l).ok())
                    .with_context(|| format!("{at}: field `level` must be a small integer"))?,
            ),
        };
        rows.push(Row {
            line: i + 1,
            id: json_field(obj, "id", &at)?,
            problem: json_field(obj, "problem", &at)?,
            answer: json_field(obj, "answer", &at)?,
            level,
        });
    }
    Ok(rows)
}

fn parse_csv(text: &str, origin: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .with_context(|| format!("{origin}:1: cannot read the CSV header"))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (problem, answer) = match (col("problem"), col("answer")) {
        (Some(p), Some(a)) => (p, a),
        _ => bail!("{origin}:1: the CSV header must have `problem` and `answer` columns"),
    };
    let (id, level) = (col("id"), col("level"));
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{origin}: malformed CSV"))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).map(str::to_string);
        let level = match get(level).filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => Some(s.trim().parse::<u32>().with_context(|| {
                format!("{origin}:{line}: field `level` must be a small integer, got {s:?}")
            })?),
        };
        rows.push(Row {
            line,
            id: get(id).filter(|s| !s.is_empty()),
            problem: get(Some(problem)),
            answer: get(Some(answer)),
            level,
        });
    }
    Ok(rows)
}

fn check(rows: Vec<Row>, origin: &str) -> Result<Vec<Example>> {
    if rows.is_empty() {
        bail!("{origin}: the dataset is empty");
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut problems: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (k, row) in rows.into_iter().enumerate() {
        let at = format!("{origin}:{}", row.line);
        let problem = row
            .problem
            .filter(|p| !p.trim().is_empty())
            .with_context(|| format!("{at}: field `problem` is missing or empty"))?;
        let answer = row
            .answer
            .filter(|a| !a.trim().is_empty())
            .with_context(|| format!("{at}: field `answer` is missing or empty"))?;
        let id = row.id.unwrap_or_else(|| k.to_string());
        if let Some(first) = ids.insert(id.clone(), row.line) {
            bail!("{at}: field `id`: duplicate id {id:?} (first on line {first})");
        }
        if let Some(first) = problems.insert(problem.clone(), row.line) {
            bail!("{at}: field `problem`: duplicate problem (first on line {first})");
        }
        out.push(Example {
            id,
            problem,
            answer,
            level: row.level,
        });
    }
    Ok(out)
}

/// Write examples as JSONL, atomically.
pub fn write_jsonl(path: &Path, examples: &[Example]) -> Result<()> {
    use std::io::Write;
    let mut f = crate::metrics::AtomicFile::create(path)?;
    for e in examples {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        (dir, p)
    }

    #[test]
    fn loads_jsonl_and_csv() {
        let (_d, p) = write(
            "a.jsonl",
            "{\"problem\": \"1+1\", \"answer\": \"2\"}\n\n{\"id\": \"x\", \"problem\": \"2+2\", \"answer\": 4, \"level\": 2}\n",
        );
        let e = load(&p).expect("load");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].id, "0");
        assert_eq!(e[1].id, "x");
        assert_eq!(e[1].answer, "4");
        assert_eq!(e[1].level, Some(2));
        let (_d, p) = write("a.csv", "id,problem,answer\na,\"1+1, twice\",2\nb,3+3,6\n");
        let e = load(&p).expect("load");
        assert_eq!(e[0].problem, "1+1, twice");
        assert_eq!(e[1].id, "b");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let (_d, p) = write(
            "bom.jsonl",
            "\u{feff}{\"problem\": \"1+1\", \"answer\": \"2\"}\n",
        );
        assert_eq!(load(&p).expect("BOM").len(), 1);
        let (_d, p) = write("bom.csv", "\u{feff}problem,answer\n1+1,2\n");
        assert_eq!(load(&p).expect("BOM").len(), 1);
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let (_d, p) = write(
            "bad.jsonl",
            "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"2+2\", \"answer\": \"  \"}\n",
        );
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("bad.jsonl:2") && e.contains("`answer`"), "{e}");
        let (_d, p) = write(
            "bad.jsonl",
            "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{oops\n",
        );
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("bad.jsonl:2") && e.contains("invalid JSON"),
            "{e}"
        );
        let (_d, p) = write(
            "dup.jsonl",
            "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"1+1\", \"answer\": \"2\"}\n",
        );
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("dup.jsonl:2") && e.contains("duplicate problem"),
            "{e}"
        );
        let (_d, p) = write(
            "bytes.jsonl",
            "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"caf\u{e9}\", \"answer\": \"2\"}\n",
        );
        let mut raw = std::fs::read(&p).expect("read");
        let at = raw.iter().rposition(|&b| b == 0xC3).expect("é");
        raw[at] = 0xE9; // Latin-1 é
        std::fs::write(&p, &raw).expect("write");
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(
            e.contains("bytes.jsonl:2:17") && e.contains("invalid UTF-8"),
            "{e}"
        );
        let (_d, p) = write("e.jsonl", "\n");
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("empty"));
        let (_d, p) = write("x.csv", "question,answer\n1,2\n");
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("`problem`"));
    }
}
