//! Append-only logs of the run directory (`steps.csv`, `eval.csv`, `prompts.csv`,
//! `rollouts.jsonl`): a step appends its rows with one write each, so the IO of a step does not
//! grow with the length of the run; opening a log for a resume rewrites it once, atomically,
//! without the rows after the checkpoint (and without a line a kill may have cut short).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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

/// One record of a log as found on disk: where it starts and the step it belongs to (or why
/// it could not be read).
struct Found {
    /// 1-based line of the file.
    line: u64,
    /// Byte offset of the record's start.
    byte: usize,
    step: std::result::Result<u64, String>,
}

/// How a log is cut back for a resume at step `up_to`: the records up to the step are kept
/// exactly, the rest is cut; only a last line without its newline (what a kill during an
/// append leaves) may be dropped, and is reported. A record of a step at most `up_to` that is
/// damaged, or that follows one of a later step, is an error naming the file and line: the log
/// would otherwise be thinned or mixed.
struct Cut {
    /// Bytes of the file that stay.
    keep: usize,
    /// Records that stay.
    rows: usize,
    /// What was dropped, for the user.
    note: Option<String>,
}

fn plan_cut(path: &Path, found: &[Found], tail: Option<&Found>, up_to: u64) -> Result<Cut> {
    let shown = path.display();
    let mut cut: Option<usize> = None;
    let mut last_step = 0u64;
    for (i, f) in found.iter().enumerate() {
        match (&f.step, cut) {
            (Ok(s), None) if *s <= up_to => last_step = *s,
            (Ok(_), None) => cut = Some(i),
            (Ok(s), Some(_)) if *s <= up_to => bail!(
                "{shown}:{}: a row of step {s} after the rows of later steps: the log is out of \
                 order, so it cannot be cut back to the checkpoint's step {up_to}; restore the \
                 file, or start the run again with --overwrite",
                f.line
            ),
            (Ok(_), Some(_)) | (Err(_), Some(_)) => {}
            (Err(e), None) => bail!(
                "{shown}:{}: damaged row ({e}) among the rows up to the checkpoint's step \
                 {up_to} (the last good row before it is of step {last_step}); a resume keeps \
                 every row up to the checkpoint and would lose it: repair or restore the file, \
                 or start the run again with --overwrite",
                f.line
            ),
        }
    }
    let rows = cut.unwrap_or(found.len());
    let keep = match cut {
        Some(i) => found[i].byte,
        None => tail.map_or(usize::MAX, |t| t.byte),
    };
    let past = found.len() - rows;
    let mut notes = Vec::new();
    if past > 0 {
        notes.push(format!("{past} rows past step {up_to} cut"));
    }
    if let Some(t) = tail {
        if let (Ok(s), None) = (&t.step, cut) {
            if *s <= up_to {
                bail!(
                    "{shown}:{}: the last row (step {s}) is cut short, but the checkpoint's step \
                     {up_to} says it was written whole: the file was damaged; restore it, or \
                     start the run again with --overwrite",
                    t.line
                );
            }
        }
        notes.push(format!(
            "the last line ({}), cut short by an interrupted write, dropped",
            t.line
        ));
    }
    let note = (!notes.is_empty()).then(|| format!("{shown}: {}", notes.join("; ")));
    Ok(Cut { keep, rows, note })
}

/// Split `bytes` into what ends with a newline and a last line without one.
fn split_tail(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes.split_at(end)
}

/// Apply `cut` to the file: keep its first `cut.keep` bytes (remove it when no record stays).
fn apply_cut(path: &Path, bytes: &[u8], cut: &Cut) -> Result<()> {
    if cut.rows == 0 {
        return std::fs::remove_file(path)
            .with_context(|| format!("cannot remove {}", path.display()));
    }
    if cut.keep < bytes.len() {
        crate::metrics::write_atomic(path, &bytes[..cut.keep])?;
    }
    Ok(())
}

/// The records of a CSV file (header first), each with the step `step_of` reads.
fn csv_found<T: DeserializeOwned>(
    body: &[u8],
    tail: &[u8],
    step_of: &impl Fn(&T) -> u64,
) -> Result<(Vec<Found>, Option<Found>)> {
    let mut r = csv::ReaderBuilder::new().from_reader(body);
    let headers = match r.headers() {
        Ok(h) => h.clone(),
        Err(e) => bail!("unreadable header ({e})"),
    };
    let read =
        |rec: std::result::Result<csv::StringRecord, csv::Error>, fallback: (u64, usize)| match rec
        {
            Ok(rec) => {
                let (line, byte) = rec
                    .position()
                    .map_or(fallback, |p| (p.line(), p.byte() as usize));
                let step = rec
                    .deserialize::<T>(Some(&headers))
                    .map(|t| step_of(&t))
                    .map_err(|e| e.to_string());
                Found { line, byte, step }
            }
            Err(e) => {
                let (line, byte) = e
                    .position()
                    .map_or(fallback, |p| (p.line(), p.byte() as usize));
                Found {
                    line,
                    byte,
                    step: Err(e.to_string()),
                }
            }
        };
    let mut found = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        let at = r.position().clone();
        let fallback = (at.line(), at.byte() as usize);
        match r.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => found.push(read(Ok(rec.clone()), fallback)),
            Err(e) => found.push(read(Err(e), fallback)),
        }
    }
    let tail = if tail.is_empty() {
        None
    } else {
        let line = 1 + body.iter().filter(|b| **b == b'\n').count() as u64;
        let mut t = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(tail);
        let step = match t.records().next() {
            Some(Ok(rec)) => rec
                .deserialize::<T>(Some(&headers))
                .map(|x| step_of(&x))
                .map_err(|e| e.to_string()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("empty".into()),
        };
        Some(Found {
            line,
            byte: body.len(),
            step,
        })
    };
    Ok((found, tail))
}

impl<T: Serialize + DeserializeOwned> CsvLog<T> {
    /// Open `path` for a run at step `up_to`: the rows of steps up to it stay (exactly, see
    /// [`Cut`]); returns the log, the rows kept and what was dropped, if anything.
    pub fn open(
        path: &Path,
        up_to: u64,
        step_of: impl Fn(&T) -> u64,
    ) -> Result<(Self, Vec<T>, Option<String>)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let (body, tail) = split_tail(&bytes);
        let (kept, note) = if body.is_empty() {
            // No complete header: nothing was ever logged whole.
            if path.exists() {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
            (Vec::new(), None)
        } else {
            let (found, tail) = csv_found(body, tail, &step_of)
                .with_context(|| format!("{}: cannot be read", path.display()))?;
            let cut = plan_cut(path, &found, tail.as_ref(), up_to)?;
            apply_cut(path, &bytes, &cut)?;
            let kept = if cut.rows == 0 {
                Vec::new()
            } else {
                read_csv::<T>(path)?
            };
            (kept, cut.note)
        };
        let header = !kept.is_empty();
        // A log written before a column was added: its rows are rewritten under today's header
        // (the new column empty), so the rows appended next line up with it.
        let mut note = note;
        if let Some(first) = kept.first() {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.serialize(first)
                .with_context(|| format!("cannot write a row of {}", path.display()))?;
            let now = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.error()))?;
            let now_header = now.split(|&b| b == b'\n').next().unwrap_or_default();
            let on_disk =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let disk_header = on_disk.split(|&b| b == b'\n').next().unwrap_or_default();
            if now_header != disk_header {
                crate::metrics::write_csv_atomic(path, &kept)?;
                let msg = format!(
                    "{}: rewritten with today's columns ({})",
                    path.display(),
                    String::from_utf8_lossy(now_header)
                );
                note = Some(match note {
                    Some(n) => format!("{n}; {msg}"),
                    None => msg,
                });
            }
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file: None,
                header,
                _row: PhantomData,
            },
            kept,
            note,
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
    /// Open `path` for a run at step `up_to`: the lines whose `step` is at most `up_to` stay
    /// (exactly, see [`Cut`]; a line without a `step` counts as step 0); returns the log and
    /// what was dropped, if anything.
    pub fn open(path: &Path, up_to: u64) -> Result<(Self, Option<String>)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let step = |line: &[u8]| -> std::result::Result<u64, String> {
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
            Ok(v.get("step").and_then(|s| s.as_u64()).unwrap_or(0))
        };
        let (body, tail) = split_tail(&bytes);
        let mut found = Vec::new();
        let mut byte = 0;
        for (i, line) in body.split_inclusive(|b| *b == b'\n').enumerate() {
            if !line.trim_ascii().is_empty() {
                found.push(Found {
                    line: i as u64 + 1,
                    byte,
                    step: step(line),
                });
            }
            byte += line.len();
        }
        let tail = (!tail.is_empty()).then(|| Found {
            line: 1 + body.iter().filter(|b| **b == b'\n').count() as u64,
            byte: body.len(),
            step: step(tail),
        });
        let mut note = None;
        if !bytes.is_empty() {
            let cut = plan_cut(path, &found, tail.as_ref(), up_to)?;
            apply_cut(path, &bytes, &cut)?;
            note = cut.note;
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                file: None,
            },
            note,
        ))
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

    fn step(r: &Row) -> u64 {
        r.step
    }

    /// A log from before a column existed: reopened, its rows are rewritten under today's
    /// header (the new column empty), so appended rows line up; an up-to-date one is untouched.
    #[test]
    fn a_log_without_a_new_column_is_rewritten_with_it() {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct Wider {
            step: u64,
            x: f64,
            #[serde(default)]
            y: Option<f64>,
        }
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("eval.csv");
        std::fs::write(&p, "step,x\n0,0.5\n1,0.25\n").expect("write");
        let (mut log, kept, note) = CsvLog::<Wider>::open(&p, 1, |r| r.step).expect("open");
        assert_eq!(kept.len(), 2);
        assert!(note.is_some_and(|n| n.contains("rewritten with today's columns (step,x,y)")));
        log.append(&[Wider {
            step: 2,
            x: 0.125,
            y: Some(0.9),
        }])
        .expect("append");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text, "step,x,y\n0,0.5,\n1,0.25,\n2,0.125,0.9\n");
        let before = std::fs::read(&p).expect("read");
        let (_, kept, note) = CsvLog::<Wider>::open(&p, 2, |r| r.step).expect("reopen");
        assert_eq!((kept.len(), note), (3, None));
        assert_eq!(std::fs::read(&p).expect("read"), before);
    }

    #[test]
    fn appends_and_truncates_on_reopen() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("steps.csv");
        let (mut log, kept, note) = CsvLog::<Row>::open(&p, 0, step).expect("open");
        assert!(kept.is_empty() && note.is_none());
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
        let (mut log, kept, note) = CsvLog::<Row>::open(&p, 2, step).expect("reopen");
        assert_eq!(kept.len(), 2);
        assert!(note
            .expect("cut reported")
            .contains("2 rows past step 2 cut"));
        log.append(&[Row { step: 3, x: 9.0 }]).expect("append");
        let rows: Vec<Row> = read_csv(&p).expect("read");
        assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(rows[2].x, 9.0);
    }

    fn csv_after(text: &str, up_to: u64) -> Result<(String, Option<String>)> {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("steps.csv");
        std::fs::write(&p, text).expect("write");
        let (_, _, note) = CsvLog::<Row>::open(&p, up_to, step)?;
        Ok((std::fs::read_to_string(&p).unwrap_or_default(), note))
    }

    #[test]
    fn csv_is_cut_back_exactly_and_never_thinned() {
        let whole = "step,x\n1,0.5\n2,1.0\n3,1.5\n";
        // Nothing to cut: the bytes stay as they are.
        assert_eq!(csv_after(whole, 3).expect("open"), (whole.into(), None));
        // A row a kill cut short past the checkpoint: dropped and reported.
        let (text, note) = csv_after("step,x\n1,0.5\n2,1.0\n3,1.", 2).expect("open");
        assert_eq!(text, "step,x\n1,0.5\n2,1.0\n");
        let note = note.expect("reported");
        assert!(note.contains("last line (4), cut short"), "{note}");
        // Cut short in the middle of a field that still parses: dropped all the same.
        let (text, _) = csv_after("step,x\n1,0.5\n2,1.0\n3", 2).expect("open");
        assert_eq!(text, "step,x\n1,0.5\n2,1.0\n");
        // A damaged row before the checkpoint's step: an error naming file and line; the file
        // stays as it was.
        let e = csv_after("step,x\n1,0.5\n2,oops\n3,1.5\n", 3).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("steps.csv:3: damaged row"), "{e}");
        let e = format!(
            "{:#}",
            csv_after("step,x\n1,0.5\n2\n3,1.5\n", 3).unwrap_err()
        );
        assert!(e.contains("steps.csv:3: damaged row"), "{e}");
        // A damaged row after a row past the checkpoint goes with the rest past it; one
        // between the checkpoint's step and later ones may be either: refused.
        let (text, _) = csv_after("step,x\n1,0.5\n2,1.0\n3,2\n3,??\n4,2\n", 2).expect("open");
        assert_eq!(text, "step,x\n1,0.5\n2,1.0\n");
        let e = format!(
            "{:#}",
            csv_after("step,x\n1,0.5\n2,1.0\n3,??\n4,2\n", 2).unwrap_err()
        );
        assert!(e.contains("steps.csv:4: damaged row"), "{e}");
        // A checkpointed row cut short: damage, not a crash.
        let e = format!("{:#}", csv_after("step,x\n1,0.5\n2,1.", 2).unwrap_err());
        assert!(
            e.contains("steps.csv:3: the last row (step 2) is cut short"),
            "{e}"
        );
        // Out of order: refused rather than mixed.
        let e = format!(
            "{:#}",
            csv_after("step,x\n1,0.5\n3,1\n2,1\n", 2).unwrap_err()
        );
        assert!(e.contains("steps.csv:4: a row of step 2 after"), "{e}");
        // Only a header (or part of one): no rows, no file.
        assert_eq!(
            csv_after("step,x\n", 2).expect("open"),
            (String::new(), None)
        );
        assert_eq!(csv_after("ste", 2).expect("open"), (String::new(), None));
    }

    fn jsonl_after(text: &str, up_to: u64) -> Result<(String, Option<String>)> {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("rollouts.jsonl");
        std::fs::write(&p, text).expect("write");
        let (_, note) = JsonlLog::open(&p, up_to)?;
        Ok((std::fs::read_to_string(&p).unwrap_or_default(), note))
    }

    #[test]
    fn jsonl_keeps_lines_up_to_the_step_and_drops_a_torn_one() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("rollouts.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"ste").expect("write");
        let (mut log, note) = JsonlLog::open(&p, 2).expect("open");
        let note = note.expect("reported");
        assert!(note.contains("1 rows past step 2 cut") && note.contains("last line (4)"));
        log.append(&["{\"step\":3,\"new\":true}".into()])
            .expect("append");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(
            text,
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3,\"new\":true}\n"
        );
    }

    #[test]
    fn a_damaged_jsonl_line_before_the_step_is_an_error_not_a_loss() {
        let lines = "{\"step\":1}\n{\"step\":1}\n{\"step\":2]\n{\"step\":2}\n{\"step\":3}\n";
        let e = format!("{:#}", jsonl_after(lines, 2).unwrap_err());
        assert!(e.contains("rollouts.jsonl:3: damaged row"), "{e}");
        assert!(e.contains("step 1"), "{e}");
        // Past the step it is cut with the rest; a blank line is no row.
        let (text, _) =
            jsonl_after("{\"step\":1}\n\n{\"step\":2}\n{\"x\n{\"step\":3}\n", 1).expect("open");
        assert_eq!(text, "{\"step\":1}\n\n");
        // A torn line whose step can still be read is damage when that step is checkpointed.
        let e = format!(
            "{:#}",
            jsonl_after("{\"step\":1}\n{\"step\":2}", 2).unwrap_err()
        );
        assert!(
            e.contains("rollouts.jsonl:2: the last row (step 2) is cut short"),
            "{e}"
        );
    }
}
