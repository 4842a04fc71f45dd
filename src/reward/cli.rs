//! `cures reward score`: verify a JSONL file of (prediction, gold) pairs in parallel.
//!
//! Each input line is a JSON object with string fields `prediction` and `gold` (other fields
//! are passed through in their order); each output line adds `equivalent`, `extracted` and
//! `reward` (replacing fields of those names). The output is written atomically.

use std::fmt;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{score, RewardConfig};

/// A JSON object with its key order kept.
#[derive(Debug, Clone, Default)]
pub struct OrderedObject(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = m.next_entry::<String, Value>()? {
                    v.push((k, x));
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for OrderedObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl OrderedObject {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    fn set(&mut self, k: &str, v: Value) {
        self.0.retain(|(n, _)| n != k);
        self.0.push((k.to_string(), v));
    }
}

/// Totals of a scored file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScoreSummary {
    /// Scored lines.
    pub lines: usize,
    /// Lines judged equivalent.
    pub equivalent: usize,
    /// Lines where an answer was extracted from the prediction.
    pub extracted: usize,
    /// Mean reward.
    pub mean_reward: f64,
    /// Wall seconds.
    pub seconds: f64,
}

/// Score one line; the error names the field.
pub fn score_line(line: &str, cfg: &RewardConfig) -> Result<(String, bool, bool, f64), String> {
    let mut obj: OrderedObject =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let field = |k: &str| -> Result<String, String> {
        match obj.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "field `{k}` must be a string, got {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a bool",
                    Value::Number(_) => "a number",
                    Value::Array(_) => "an array",
                    Value::Object(_) => "an object",
                    Value::String(_) => "a string",
                }
            )),
            None => Err(format!("missing field `{k}`")),
        }
    };
    let pred = field("prediction")?;
    let gold = field("gold")?;
    let v = score(&pred, &gold, cfg);
    obj.set("equivalent", Value::Bool(v.equivalent));
    obj.set(
        "extracted",
        v.extracted.clone().map_or(Value::Null, Value::String),
    );
    obj.set(
        "reward",
        serde_json::Number::from_f64(v.reward).map_or(Value::Null, Value::Number),
    );
    if let Some(why) = &v.reason {
        obj.set("reason", Value::String(why.clone()));
    }
    let out = serde_json::to_string(&obj).map_err(|e| e.to_string())?;
    Ok((out, v.equivalent, v.extracted.is_some(), v.reward))
}

/// Score `input` into `output` (stdout when None). Parallel over the available cores.
pub fn score_file(
    input: &Path,
    output: Option<&Path>,
    cfg: &RewardConfig,
    progress: bool,
) -> Result<ScoreSummary> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let t0 = std::time::Instant::now();
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    let bar = crate::metrics::progress_bar(lines.len() as u64, "reward", progress);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 64);
    let chunk = lines.len().div_ceil(threads).max(1);
    type Scored = Vec<(String, bool, bool, f64)>;
    let results: Vec<Result<Scored, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                s.spawn(move || -> Result<Scored, String> {
                    let mut out = Vec::with_capacity(part.len());
                    for (k, (no, l)) in part.iter().enumerate() {
                        let r = score_line(l, cfg)
                            .map_err(|e| format!("{}:{no}: {e}", input.display()))?;
                        out.push(r);
                        if k % 64 == 63 {
                            bar.inc(64);
                        }
                    }
                    bar.inc((part.len() % 64) as u64);
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    bar.finish_and_clear();
    let mut body = String::with_capacity(text.len() + lines.len() * 64);
    let mut sum = ScoreSummary::default();
    let mut reward = 0.0;
    for r in results {
        for (line, eq, ex, rw) in r.map_err(anyhow::Error::msg)? {
            body.push_str(&line);
            body.push('\n');
            sum.lines += 1;
            sum.equivalent += usize::from(eq);
            sum.extracted += usize::from(ex);
            reward += rw;
        }
    }
    sum.mean_reward = if sum.lines > 0 {
        reward / sum.lines as f64
    } else {
        0.0
    };
    match output {
        Some(p) => crate::metrics::write_atomic(p, body.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?,
        None => std::io::stdout()
            .lock()
            .write_all(body.as_bytes())
            .context("cannot write to stdout")?,
    }
    sum.seconds = t0.elapsed().as_secs_f64();
    Ok(sum)
}

/// `cures reward ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RewardCommand {
    /// Verify a JSONL file of {"prediction", "gold", ...} lines (in parallel).
    Score(ScoreArgs),
    /// Verify one pair and print the verdict with the extracted and parsed forms.
    Check(CheckArgs),
}

/// Reward values and fallbacks on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RewardFlags {
    /// Every extraction fallback on ("final answer is", last math span, last number).
    #[arg(long)]
    pub lenient: bool,
    /// The authors' older reward values: correct 1, wrong -0.5, unboxed -1.
    #[arg(long)]
    pub legacy_rewards: bool,
    /// Relative tolerance of numeric comparisons.
    #[arg(long)]
    pub rel_tol: Option<f64>,
}

impl RewardFlags {
    /// The config these flags describe.
    pub fn config(&self) -> Result<RewardConfig> {
        let mut c = if self.legacy_rewards {
            RewardConfig::authors_legacy()
        } else {
            RewardConfig::default()
        };
        if self.lenient {
            c.fallback_final_answer = true;
            c.fallback_last_latex = true;
            c.fallback_last_number = true;
        }
        if let Some(t) = self.rel_tol {
            c.rel_tol = t;
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// `cures reward score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// Input JSONL: one {"prediction": str, "gold": str, ...} object per line.
    #[arg(long)]
    pub input: std::path::PathBuf,
    /// Output JSONL (written atomically); stdout when omitted.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Reward values and fallbacks.
    #[command(flatten)]
    pub flags: RewardFlags,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `cures reward check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The model output (may start with `-`: `--pred -5`).
    #[arg(long, allow_hyphen_values = true)]
    pub pred: String,
    /// The gold answer (may start with `-`: `--gold -5`).
    #[arg(long, allow_hyphen_values = true)]
    pub gold: String,
    /// Reward values and fallbacks.
    #[command(flatten)]
    pub flags: RewardFlags,
    /// Print the verdict as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Run a `cures reward` command.
pub fn run(cmd: RewardCommand) -> Result<()> {
    match cmd {
        RewardCommand::Score(a) => {
            let cfg = a.flags.config()?;
            let to_stdout = a.output.is_none();
            let s = score_file(&a.input, a.output.as_deref(), &cfg, !a.quiet && !to_stdout)?;
            eprintln!(
                "reward: {} lines, {} equivalent ({:.2}%), {} with an extracted answer, mean reward {:.4}, {:.2}s{}",
                s.lines,
                s.equivalent,
                100.0 * s.equivalent as f64 / s.lines.max(1) as f64,
                s.extracted,
                s.mean_reward,
                s.seconds,
                a.output
                    .as_ref()
                    .map(|p| format!(", wrote {}", p.display()))
                    .unwrap_or_default()
            );
        }
        RewardCommand::Check(a) => {
            let cfg = a.flags.config()?;
            let e = super::explain(&a.pred, &a.gold, &cfg);
            if a.json {
                println!("{}", serde_json::to_string(&e)?);
                return Ok(());
            }
            let show = |name: &str, x: &Option<(String, String, String)>| match x {
                Some((raw, norm, tree)) => {
                    println!("{name}:");
                    println!("  extracted  {raw}");
                    println!("  normalised {norm}");
                    println!("  parsed     {tree}");
                }
                None => println!("{name}: no answer extracted"),
            };
            show("gold", &e.gold);
            match &e.verdict.reason {
                Some(why) => println!("prediction: malformed: {why}"),
                None => show("prediction", &e.prediction),
            }
            println!(
                "equivalent: {}  reward: {}",
                e.verdict.equivalent, e.verdict.reward
            );
        }
    }
    Ok(())
}
