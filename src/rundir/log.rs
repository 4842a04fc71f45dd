//! Append-only logs of the run directory (`steps.csv`, `eval.csv`, `prompts.csv`,
//! `rollouts.jsonl`): a step appends its rows with one write each, so the IO of a step does not
//! grow with the length of the run; opening a log for a resume rewrites it once, atomically,
//! without the rows after the checkpoint (and without a line a kill may have cut short).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Rows of a CSV file with a header, typed by `T`.
pub fn read_csv<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.deserialize()
        .enumerate()
        .map(|(i, row)| row.with_context(|| format!("{}:{}: bad row", path.display(), i + 2)))
        .collect()
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))
}

/// A CSV log with `T`'s field names as its header.
pub struct CsvLog<T> {
    path: PathBuf,
    /// Opened at the first append: a log nothing is written to is never created.
    file: Option<File>,
    header: bool,
    _row: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> CsvLog<T> {
    /// Open `path`, keeping only the existing rows `keep` accepts (all rows are dropped on a
    /// fresh run); returns the log and the rows kept.
    pub fn open(path: &Path, keep: impl Fn(&T) -> bool) -> Result<(Self, Vec<T>)> {
        let kept: Vec<T> = if path.exists() {
            read_csv::<T>(path)?
                .into_iter()
                .filter(|r| keep(r))
                .collect()
        } else {
            Vec::new()
        };
        let header = !kept.is_empty();
        if path.exists() {
            if header {
                crate::metrics::write_csv_atomic(path, &kept)?;
            } else {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        let file = None;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                header,
                _row: PhantomData,
            },
            kept,
        ))
    }

    /// Append `rows` (the header first when the file has none yet) in one write.
    pub fn append<'a>(&mut self, rows: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let mut w = csv::WriterBuilder::new()
            .has_headers(!self.header)
            .from_writer(Vec::new());
        let mut any = false;
        for r in rows {
            w.serialize(r)
                .with_context(|| format!("cannot write a row of {}", self.path.display()))?;
            any = true;
        }
        if !any {
            return Ok(());
        }
        let bytes = w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", self.path.display(), e.error()))?;
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&bytes)
                .and_then(|_| f.flush())
                .with_context(|| format!("cannot append to {}", self.path.display()))?;
        }
        self.header = true;
        Ok(())
    }
}

/// A JSON Lines log whose lines carry a `step`.
pub struct JsonlLog {
    path: PathBuf,
    file: Option<File>,
}

impl JsonlLog {
    /// Open `path`, keeping the lines whose `step` is at most `up_to`.
    pub fn open(path: &Path, up_to: u64) -> Result<Self> {
        let mut kept = Vec::new();
        let text = if path.exists() {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        } else {
            String::new()
        };
        {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // A line a kill cut short does not parse: it is dropped with the rest.
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v.get("step").and_then(|s| s.as_u64()).unwrap_or(0) <= up_to {
                    kept.push(line);
                }
            }
        }
        if path.exists() {
            let mut text = kept.join("\n");
            text.push('\n');
            if kept.is_empty() {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            } else {
                crate::metrics::write_atomic(path, text.as_bytes())?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: None,
        })
    }

    /// Append `lines` (one JSON value each) in one write.
    pub fn append(&mut self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut bytes = lines.join("\n").into_bytes();
        bytes.push(b'\n');
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        match self.file.as_mut() {
            Some(f) => f
                .write_all(&bytes)
                .and_then(|_| f.flush())
                .with_context(|| format!("cannot append to {}", self.path.display())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Row {
        step: u64,
        x: f64,
    }

    #[test]
    fn appends_and_truncates_on_reopen() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("steps.csv");
        let (mut log, kept) = CsvLog::<Row>::open(&p, |_| false).expect("open");
        assert!(kept.is_empty());
        for s in 1..=4 {
            log.append(&[Row {
                step: s,
                x: s as f64 / 2.0,
            }])
            .expect("append");
        }
        drop(log);
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text, "step,x\n1,0.5\n2,1.0\n3,1.5\n4,2.0\n");
        let (mut log, kept) = CsvLog::<Row>::open(&p, |r| r.step <= 2).expect("reopen");
        assert_eq!(kept.len(), 2);
        log.append(&[Row { step: 3, x: 9.0 }]).expect("append");
        let rows: Vec<Row> = read_csv(&p).expect("read");
        assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(rows[2].x, 9.0);
    }

    #[test]
    fn jsonl_keeps_lines_up_to_the_step_and_drops_a_torn_one() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("rollouts.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"ste").expect("write");
        let mut log = JsonlLog::open(&p, 2).expect("open");
        log.append(&["{\"step\":3,\"new\":true}".into()])
            .expect("append");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(
            text,
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3,\"new\":true}\n"
        );
    }
}
