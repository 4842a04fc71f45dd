//! Reading a run directory's CSVs for `cures plot`: columns by header name, so files with
//! extra columns (newer runs) or older files still plot; bad values name file:line:column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A CSV file: header → column, rows of text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    path: PathBuf,
    cols: HashMap<String, usize>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    /// Read `path` (header row required).
    pub fn read(path: &Path) -> Result<Table> {
        let mut r = csv::Reader::from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cols = r
            .headers()
            .with_context(|| format!("{}:1: cannot read the CSV header", path.display()))?
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().to_string(), i))
            .collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
            let line = rec.position().map_or(0, |p| p.line() as usize);
            rows.push((line, rec.iter().map(str::to_string).collect()));
        }
        Ok(Table {
            path: path.to_path_buf(),
            cols,
            rows,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether the column exists.
    pub fn has(&self, col: &str) -> bool {
        self.cols.contains_key(col)
    }

    /// The text of `col` in row `i`.
    pub fn text(&self, i: usize, col: &str) -> Result<&str> {
        let c = *self
            .cols
            .get(col)
            .with_context(|| format!("{}: no column `{col}`", self.path.display()))?;
        let (line, row) = &self.rows[i];
        row.get(c)
            .map(String::as_str)
            .with_context(|| format!("{}:{line}: row has no column `{col}`", self.path.display()))
    }

    /// `col` of row `i` as a number.
    pub fn num(&self, i: usize, col: &str) -> Result<f64> {
        let t = self.text(i, col)?;
        t.trim().parse::<f64>().with_context(|| {
            format!(
                "{}:{}: column `{col}`: {t:?} is not a number",
                self.path.display(),
                self.rows[i].0
            )
        })
    }

    /// `col` of every row as numbers.
    pub fn nums(&self, col: &str) -> Result<Vec<f64>> {
        (0..self.len()).map(|i| self.num(i, col)).collect()
    }
}

/// One run directory's logs.
#[derive(Debug, Clone)]
pub struct Run {
    /// Legend name (the directory name).
    pub name: String,
    /// `steps.csv` (required).
    pub steps: Table,
    /// `eval.csv`, when the run evaluated.
    pub eval: Option<Table>,
    /// `prompts.csv`, when the run traced the posterior.
    pub prompts: Option<Table>,
}

fn optional(dir: &Path, name: &str) -> Result<Option<Table>> {
    let p = dir.join(name);
    if p.exists() {
        Ok(Some(Table::read(&p)?))
    } else {
        Ok(None)
    }
}

impl Run {
    /// Load a run directory; an error when it is not one (no `steps.csv`).
    pub fn load(dir: &Path) -> Result<Run> {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let steps_path = dir.join("steps.csv");
        if !steps_path.exists() {
            bail!(
                "{} is not a run directory: it has no steps.csv (expected the output of `cures run`)",
                dir.display()
            );
        }
        let steps = Table::read(&steps_path)?;
        for col in ["step", "mean_reward", "cum_completions"] {
            if !steps.has(col) {
                bail!("{}: no column `{col}`", steps_path.display());
            }
        }
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Run {
            name,
            steps,
            eval: optional(dir, "eval.csv")?,
            prompts: optional(dir, "prompts.csv")?,
        })
    }

    /// Accuracy on `benchmark` by step: (step, completions incl. pre-rollouts, accuracy).
    pub fn accuracy(&self, benchmark: &str) -> Result<Vec<(f64, f64, f64)>> {
        let Some(ev) = &self.eval else {
            return Ok(Vec::new());
        };
        // Pre-rollouts (cum_init_completions) count as compute too.
        let mut init: HashMap<u64, f64> = HashMap::new();
        if self.steps.has("cum_init_completions") {
            for i in 0..self.steps.len() {
                init.insert(
                    self.steps.num(i, "step")? as u64,
                    self.steps.num(i, "cum_init_completions")?,
                );
            }
        }
        let mut out = Vec::new();
        for i in 0..ev.len() {
            if ev.text(i, "benchmark")? != benchmark {
                continue;
            }
            let step = ev.num(i, "step")?;
            let comp =
                ev.num(i, "cum_completions")? + init.get(&(step as u64)).copied().unwrap_or(0.0);
            out.push((step, comp, ev.num(i, "accuracy")?));
        }
        Ok(out)
    }

    /// The first benchmark of `eval.csv`.
    pub fn first_benchmark(&self) -> Result<Option<String>> {
        match &self.eval {
            Some(ev) if !ev.is_empty() => Ok(Some(ev.text(0, "benchmark")?.to_string())),
            _ => Ok(None),
        }
    }

    /// Steps traced in `prompts.csv`, ascending.
    pub fn traced_steps(&self) -> Result<Vec<u64>> {
        let Some(p) = &self.prompts else {
            return Ok(Vec::new());
        };
        let mut s: Vec<u64> = p.nums("step")?.into_iter().map(|x| x as u64).collect();
        s.sort_unstable();
        s.dedup();
        Ok(s)
    }

    /// `cols` of the prompts traced at `step`.
    pub fn trace_at(&self, step: u64, cols: &[&str]) -> Result<Vec<Vec<f64>>> {
        let Some(p) = &self.prompts else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for i in 0..p.len() {
            if p.num(i, "step")? as u64 == step {
                out.push(cols.iter().map(|c| p.num(i, c)).collect::<Result<_>>()?);
            }
        }
        Ok(out)
    }
}
