//! `cures data inspect` (what a dataset holds, before a run) and `cures data prepare` (a
//! dataset as it comes → cures's JSONL).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{inspect, load_with, write_jsonl, Fields};

/// `cures data ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Rows, fields, repeats, rows without an answer, and prompt lengths in a model's tokens.
    Inspect(InspectArgs),
    /// Write a dataset (any supported format or folder, with the field mapping) as cures JSONL
    /// (`id`, `problem`, `answer`, `level`), repeats dropped.
    Prepare(PrepareArgs),
}

/// Where the fields are (the `data.*_key` settings).
#[derive(Debug, Clone, clap::Args)]
pub struct FieldArgs {
    /// The field holding the problem.
    #[arg(long, default_value = "problem")]
    pub problem_key: String,
    /// The field holding the answer.
    #[arg(long, default_value = "answer")]
    pub answer_key: String,
    /// A worked-solution field whose last \boxed{} is the answer (for rows without one).
    #[arg(long, default_value = "")]
    pub solution_key: String,
    /// The id field.
    #[arg(long, default_value = "id")]
    pub id_key: String,
    /// The level field.
    #[arg(long, default_value = "level")]
    pub level_key: String,
    /// For a dataset folder: the split to read.
    #[arg(long, default_value = "train")]
    pub split: String,
}

impl FieldArgs {
    fn fields(&self) -> Fields {
        Fields {
            problem: self.problem_key.clone(),
            answer: self.answer_key.clone(),
            solution: self.solution_key.clone(),
            id: self.id_key.clone(),
            level: self.level_key.clone(),
            split: self.split.clone(),
        }
    }
}

/// `cures data inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A dataset file or folder.
    pub path: PathBuf,
    /// An HF model directory: prompt lengths in its tokens (the problem text alone).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub fields: FieldArgs,
}

/// `cures data prepare`.
#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// A dataset file or folder.
    pub input: PathBuf,
    /// The JSON Lines file to write (`.jsonl`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub fields: FieldArgs,
}

/// Run a `cures data` command.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Inspect(a) => print!(
            "{}",
            inspect_report(&a.path, &a.fields.fields(), a.model.as_deref())?
        ),
        DataCommand::Prepare(a) => {
            let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "jsonl" {
                anyhow::bail!(
                    "--out {}: cures data prepare writes JSON Lines; name the file .jsonl \
                     (it would be {} in name only)",
                    a.out.display(),
                    if ext.is_empty() {
                        "extension-less"
                    } else {
                        ext
                    }
                );
            }
            let l = load_with(&a.input, &a.fields.fields())?;
            write_jsonl(&a.out, &l.examples)?;
            println!(
                "wrote {} rows to {} ({} repeated problem{} dropped; from {} file{})",
                l.examples.len(),
                a.out.display(),
                l.duplicates,
                if l.duplicates == 1 { "" } else { "s" },
                l.files.len(),
                if l.files.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

/// The text `cures data inspect` prints.
pub fn inspect_report(path: &Path, fields: &Fields, model: Option<&Path>) -> Result<String> {
    use std::fmt::Write;
    let i = inspect(path, fields)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} rows in {} file{}",
        path.display(),
        i.rows,
        i.files.len(),
        if i.files.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(s, "fields (rows that have them):");
    for (k, n) in &i.fields {
        let role = [
            (&fields.problem, "problem"),
            (&fields.answer, "answer"),
            (&fields.solution, "solution → answer"),
            (&fields.id, "id"),
            (&fields.level, "level"),
        ]
        .iter()
        .find(|(f, _)| *f == k)
        .map_or(String::new(), |(_, r)| format!("  <- {r}"));
        let _ = writeln!(s, "  {k:<24} {n:>8}{role}");
    }
    let _ = writeln!(s, "usable rows: {}", i.examples.len());
    let _ = writeln!(s, "repeated problems (dropped at load): {}", i.duplicates);
    let _ = writeln!(
        s,
        "rows without an answer (an error at load): {}",
        i.missing_answer.len()
    );
    for at in i.missing_answer.iter().take(5) {
        let _ = writeln!(s, "  {at}");
    }
    if i.missing_answer.len() > 5 {
        let _ = writeln!(s, "  ... and {} more", i.missing_answer.len() - 5);
    }
    let mut levels: std::collections::BTreeMap<Option<u32>, usize> = Default::default();
    for e in &i.examples {
        *levels.entry(e.level).or_default() += 1;
    }
    let lv: Vec<String> = levels
        .iter()
        .map(|(l, n)| format!("{}: {n}", l.map_or("none".to_string(), |l| l.to_string())))
        .collect();
    let _ = writeln!(
        s,
        "levels: {}",
        if lv.is_empty() {
            "-".to_string()
        } else {
            lv.join(", ")
        }
    );
    if let Some(dir) = model {
        let cfg = crate::policy::ModelConfig::load(dir)?;
        let pad = cfg
            .pad_token_id
            .as_ref()
            .and_then(|p| p.to_vec().first().copied());
        let tok = crate::policy::Tokenizer::load(dir, &cfg.eos_ids(), pad)
            .with_context(|| format!("the tokenizer of {}", dir.display()))?;
        // No tokenizer spends more than 64 bytes of text on one token: a problem longer than
        // that many context's worth is over the context, and is not tokenised (a 50 MB row
        // would take gigabytes).
        let ctx = usize::try_from(cfg.max_position_embeddings).unwrap_or(0);
        let mut lens = Vec::with_capacity(i.examples.len());
        let mut huge = 0usize;
        for e in &i.examples {
            if e.problem.len() > ctx.saturating_mul(64) {
                huge += 1;
                continue;
            }
            lens.push(tok.encode(&e.problem, false)?.len());
        }
        if huge > 0 {
            let _ = writeln!(
                s,
                "{huge} problem{} far longer than the context ({ctx} tokens; over {} bytes): not tokenised, and dropped by cures run",
                if huge == 1 { " is" } else { "s are" },
                ctx.saturating_mul(64)
            );
        }
        lens.sort_unstable();
        let q = |p: f64| {
            lens.get(((lens.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let _ = writeln!(
            s,
            "problem length in {} tokens: min {} median {} p90 {} p99 {} max {} (context {})",
            dir.display(),
            q(0.0),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            cfg.max_position_embeddings
        );
    }
    Ok(s)
}
