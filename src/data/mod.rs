//! Prompt datasets as they come: JSON Lines, JSON arrays, CSV, Parquet, and Hugging Face
//! dataset folders (shards under `data/`, e.g. `data/train-00000-of-00002.parquet`).
//!
//! Every format is read into records (field name → JSON value) and then mapped to an
//! [`Example`] by [`Fields`]: which field holds the problem, the answer, or a worked `solution`
//! whose last `\boxed{}` is the answer (MATH, NuminaMath), the id and the level (`3` or
//! `"Level 3"`). Bad rows are errors that name the file, the line (or Parquet row) and the field;
//! rows without an answer are errors; a repeated problem is dropped (the first is kept) and
//! counted, since one prompt must have one posterior; a repeated id on another problem is an error.

pub mod cli;
mod formats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Which record fields make an [`Example`] (`data.problem_key` etc.).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// The problem text.
    pub problem: String,
    /// The answer.
    pub answer: String,
    /// A worked solution whose last `\boxed{...}` is the answer, used when a row has no
    /// `answer` field (empty = none).
    pub solution: String,
    /// The id (rows without one are numbered).
    pub id: String,
    /// The level: an integer or a string ending in one (`"Level 3"`); other strings = none.
    pub level: String,
    /// For a dataset folder: the split whose shards are read (file names starting with it).
    pub split: String,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            problem: "problem".into(),
            answer: "answer".into(),
            solution: String::new(),
            id: "id".into(),
            level: "level".into(),
            split: "train".into(),
        }
    }
}

impl Fields {
    /// The mapping `[data]` names, for the given split.
    pub fn from_config(d: &crate::config::DataConfig, split: &str) -> Self {
        Self {
            problem: d.problem_key.clone(),
            answer: d.answer_key.clone(),
            solution: d.solution_key.clone(),
            id: d.id_key.clone(),
            level: d.level_key.clone(),
            split: split.to_string(),
        }
    }
}

/// A dataset as loaded, with what was dropped.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The rows kept, in file order.
    pub examples: Vec<Example>,
    /// Rows dropped as repeats of an earlier problem.
    pub duplicates: usize,
    /// The files read (one, or a folder's shards).
    pub files: Vec<PathBuf>,
}

/// Load a dataset with the default field names (see [`load_with`]).
pub fn load(path: &Path) -> Result<Vec<Example>> {
    Ok(load_with(path, &Fields::default())?.examples)
}

/// Load a dataset file or folder; repeated problems are dropped (and warned about).
pub fn load_with(path: &Path, fields: &Fields) -> Result<Loaded> {
    let (files, records) = read_records(path, fields)?;
    let origin = path.display().to_string();
    let report = check(records, fields, &origin)?;
    if let Some(at) = report.missing_answer.first() {
        let what = if fields.solution.is_empty() {
            format!("field `{}` is missing or empty", fields.answer)
        } else {
            format!(
                "field `{}` is missing or empty and field `{}` has no \\boxed{{}} answer",
                fields.answer, fields.solution
            )
        };
        bail!(
            "{at}: {what} ({} such row{}; `cures data inspect {origin}` lists them)",
            report.missing_answer.len(),
            if report.missing_answer.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    if report.examples.is_empty() {
        bail!("{origin}: the dataset is empty");
    }
    if report.duplicates > 0 {
        tracing::warn!(
            "{origin}: dropped {} repeated problem{} (the first of each is kept)",
            report.duplicates,
            if report.duplicates == 1 { "" } else { "s" }
        );
    }
    Ok(Loaded {
        examples: report.examples,
        duplicates: report.duplicates,
        files,
    })
}

/// What `cures data inspect` reports about a dataset (nothing is fatal but unreadable files
/// and malformed rows).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Records read.
    pub rows: usize,
    /// Each field name with the number of records that have it, most common first.
    pub fields: Vec<(String, usize)>,
    /// Usable rows (answer present, not a repeat).
    pub examples: Vec<Example>,
    /// Repeats of an earlier problem.
    pub duplicates: usize,
    /// Where the rows without an answer are.
    pub missing_answer: Vec<String>,
}

/// Read a dataset and report on it without failing on rows that lack an answer.
pub fn inspect(path: &Path, fields: &Fields) -> Result<Inspection> {
    let (files, records) = read_records(path, fields)?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &records {
        for k in r.obj.keys() {
            *counts.entry(k.clone()).or_default() += 1;
        }
    }
    let mut field_counts: Vec<(String, usize)> = counts.into_iter().collect();
    field_counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rows = records.len();
    let report = check(records, fields, &path.display().to_string())?;
    Ok(Inspection {
        files,
        rows,
        fields: field_counts,
        examples: report.examples,
        duplicates: report.duplicates,
        missing_answer: report.missing_answer,
    })
}

/// One record as read: where it is (`file:line` or `file: row N`) and its fields.
pub(crate) struct Record {
    pub at: String,
    pub obj: Map<String, Value>,
}

/// The files of `path` (itself, or a folder's shards of `fields.split`) and their records.
fn read_records(path: &Path, fields: &Fields) -> Result<(Vec<PathBuf>, Vec<Record>)> {
    let files = if path.is_dir() {
        shards(path, &fields.split)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut records = Vec::new();
    for f in &files {
        records.extend(formats::read_file(f)?);
    }
    Ok((files, records))
}

const EXTENSIONS: &[&str] = &["parquet", "jsonl", "json", "csv"];

/// The split a data file's name belongs to: its stem (`test.jsonl` → `test`), or what precedes
/// a shard number (`train-00000-of-00003.parquet`, `train-00001-of-00002-5f3a.parquet` →
/// `train`). `train_sft-00000-of-00001` is the split `train_sft`, never `train`'s.
pub fn split_of(file_name: &str) -> &str {
    let stem = file_name.split_once('.').map_or(file_name, |(s, _)| s);
    let mut at = 0;
    while let Some(k) = stem[at..].find('-') {
        let i = at + k;
        if stem[i + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            return &stem[..i];
        }
        at = i + 1;
    }
    stem
}

/// A Hugging Face dataset folder's shards of `split`: the data files under `dir/data/` (or
/// `dir/` itself) whose split (see [`split_of`]) is exactly `split`, in name order. An empty
/// or unknown split is an error listing the splits there.
fn shards(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let sub = dir.join("data");
    let base = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let mut all: Vec<PathBuf> = std::fs::read_dir(&base)
        .with_context(|| format!("cannot read dataset folder {}", base.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
        })
        .collect();
    all.sort();
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let mine: Vec<PathBuf> = all
        .iter()
        .filter(|p| !split.is_empty() && split_of(&name(p)) == split)
        .cloned()
        .collect();
    if mine.is_empty() {
        let mut splits: Vec<String> = all.iter().map(|p| split_of(&name(p)).to_string()).collect();
        splits.dedup();
        let what = if split.is_empty() {
            "no split named (the split is empty)".to_string()
        } else {
            format!("no {split:?} split (files named {split}.EXT or {split}-NNNNN-of-NNNNN.EXT)")
        };
        bail!(
            "{}: {what}; the splits here: {}",
            base.display(),
            if splits.is_empty() {
                "none (no .parquet/.jsonl/.json/.csv files)".to_string()
            } else {
                splits.join(", ")
            }
        );
    }
    Ok(mine)
}

/// The last `\boxed{...}` (or `\fbox{...}`) of a worked solution, exactly as the reward
/// reads boxes: the command matched whole (`\fbox`, not `\fboxsep`), a mention without an
/// argument passed over; `None` when there is none, an error (the reason) for a last box that
/// is starred or never closed.
pub fn last_boxed(solution: &str) -> std::result::Result<Option<String>, String> {
    crate::reward::extract::solution_box(solution)
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

/// A field as text: strings as they are, numbers (integer answers, ids) written out.
fn text_field(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => bail!("{at}: field `{key}` must be a string, got {}", short(other)),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// A level: a small integer, or a string ending in one (`"Level 3"`); `"Level ?"` = none.
fn level_field(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u32>> {
    let bad = |got: &str| {
        anyhow::anyhow!(
            "{at}: field `{key}` must be a whole number >= 0 (or \"Level N\", \"Level ?\" for \
             none), got {got} (data.level_key = \"\" reads no levels)"
        )
    };
    let whole = |t: &str| -> Option<u32> {
        // 3, or 3.0 as a float column writes it; never -3 or 3.5.
        let x: f64 = t.parse().ok()?;
        (x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX))
            .then_some(x as u32)
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => whole(&n.to_string())
            .map(Some)
            .ok_or_else(|| bad(&n.to_string())),
        Some(Value::String(s)) => {
            let t = s.trim();
            let t = t
                .strip_prefix("Level")
                .or_else(|| t.strip_prefix("level"))
                .map_or(t, str::trim);
            if t.is_empty() || t == "?" {
                return Ok(None);
            }
            whole(t).map(Some).ok_or_else(|| bad(&format!("{s:?}")))
        }
        Some(other) => Err(bad(&short(other))),
    }
}

/// The rows kept, the repeats dropped, and where rows lack an answer.
struct Report {
    examples: Vec<Example>,
    duplicates: usize,
    missing_answer: Vec<String>,
}

fn check(records: Vec<Record>, fields: &Fields, origin: &str) -> Result<Report> {
    if records.is_empty() {
        bail!("{origin}: the dataset is empty");
    }
    let mut ids: HashMap<String, (String, usize)> = HashMap::new();
    let mut problems: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(records.len());
    let (mut duplicates, mut missing_answer) = (0usize, Vec::new());
    for (k, r) in records.into_iter().enumerate() {
        let at = r.at;
        let problem = text_field(&r.obj, &fields.problem, &at)?
            .filter(|p| !p.trim().is_empty())
            .with_context(|| {
                let have: Vec<&String> = r.obj.keys().collect();
                format!(
                    "{at}: field `{}` is missing or empty (the row has {have:?}; set data.problem_key, or --problem-key for cures data)",
                    fields.problem
                )
            })?;
        let mut answer = text_field(&r.obj, &fields.answer, &at)?.filter(|a| !a.trim().is_empty());
        let mut at = at;
        if answer.is_none() && !fields.solution.is_empty() {
            if let Some(sol) = text_field(&r.obj, &fields.solution, &at)? {
                match last_boxed(&sol) {
                    Ok(a) => answer = a,
                    Err(why) => at = format!("{at} (field `{}`: {why})", fields.solution),
                }
            }
        }
        let level = level_field(&r.obj, &fields.level, &at)?;
        let id = text_field(&r.obj, &fields.id, &at)?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| k.to_string());
        if problems.contains_key(&problem) {
            duplicates += 1;
            continue;
        }
        let Some(answer) = answer else {
            missing_answer.push(at);
            continue;
        };
        if let Some((first, _)) = ids.get(&id) {
            bail!(
                "{at}: field `{}`: id {id:?} is already used by another problem ({first})",
                fields.id
            );
        }
        ids.insert(id.clone(), (at.clone(), k));
        problems.insert(problem.clone(), at);
        out.push(Example {
            id,
            problem,
            answer,
            level,
        });
    }
    Ok(Report {
        examples: out,
        duplicates,
        missing_answer,
    })
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
mod tests;
