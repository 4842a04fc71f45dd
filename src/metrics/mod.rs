//! Everything users analyse: CSV files written atomically, and progress bars.
//!
//! A file is first written to a temporary sibling, flushed and fsynced, then renamed over the
//! target, so a crash or Ctrl-C never leaves a half-written CSV behind.

pub mod tensorboard;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// A file written to `<name>.tmp` and renamed onto `<name>` by [`AtomicFile::commit`].
/// Dropped without commit, the temporary file is removed and the target is untouched.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Start writing `target` (its directory must exist).
    pub fn create(target: &Path) -> Result<Self> {
        let name = target
            .file_name()
            .with_context(|| format!("{} is not a file path", target.display()))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            tmp,
            writer: Some(BufWriter::new(file)),
        })
    }

    /// Flush, fsync and rename onto the target.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().context("file already committed")?;
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        if let Some(dir) = self.target.parent() {
            // Persist the rename itself; harmless where directories cannot be opened.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.writer.as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("file already committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `rows` as a CSV with a header taken from the row type's field names, atomically.
pub fn write_csv_atomic<T: Serialize>(
    path: &Path,
    rows: impl IntoIterator<Item = T>,
) -> Result<()> {
    let file = AtomicFile::create(path)?;
    let mut w = csv::Writer::from_writer(file);
    for row in rows {
        w.serialize(row)
            .with_context(|| format!("cannot write a row of {}", path.display()))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?;
    file.commit()
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.commit()
}

/// A progress bar on stderr, hidden when `enabled` is false or stderr is not a terminal.
pub fn progress_bar(len: u64, what: &str, enabled: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if !enabled {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        a: u32,
        b: f64,
    }

    #[test]
    fn csv_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        write_csv_atomic(&path, [Row { a: 1, b: 0.5 }, Row { a: 2, b: 1.5 }]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a,b\n1,0.5\n2,1.5\n"
        );
        // An abandoned write leaves the old file and no temporary behind.
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"garbage").unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a,b\n1,0.5\n2,1.5\n"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
