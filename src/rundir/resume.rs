//! What a resume may change: the dataset must be the same rows in the same order, and the
//! config may differ only in keys that do not alter the run (more steps, logging, transport).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::data::Example;

/// The training set a run was started on: its rows and their order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetFingerprint {
    /// Rows (after load-time filtering).
    pub rows: usize,
    /// SHA-256 over every row's id, problem, answer and level, in order.
    pub sha256: String,
}

/// Fingerprint of `rows`, in their order.
pub fn dataset_fingerprint(rows: &[Example]) -> DatasetFingerprint {
    let mut h = Sha256::new();
    for e in rows {
        for field in [e.id.as_str(), e.problem.as_str(), e.answer.as_str()] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.update(e.level.map_or(u64::MAX, u64::from).to_le_bytes());
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    DatasetFingerprint {
        rows: rows.len(),
        sha256,
    }
}

impl DatasetFingerprint {
    /// An error unless `now` is the dataset this fingerprint was taken of.
    pub fn check(&self, now: &DatasetFingerprint, origin: &str) -> Result<()> {
        if self.rows != now.rows {
            bail!(
                "--resume: {origin} has {} prompts, but the run was trained on {}; \
                 resume with the same dataset, or start a new run (another --out)",
                now.rows,
                self.rows
            );
        }
        if self.sha256 != now.sha256 {
            bail!(
                "--resume: {origin} has the run's {} prompts but not the same rows in the same \
                 order (fingerprint {} now, {} in the checkpoint); the posteriors belong to the \
                 rows as they were: resume with the same file, or start a new run",
                now.rows,
                &now.sha256[..12],
                &self.sha256[..12.min(self.sha256.len())]
            );
        }
        Ok(())
    }
}

/// One config key that differs between the checkpoint and the resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// Dotted key, e.g. `run.steps`.
    pub key: String,
    /// The value the earlier steps used (TOML), `None` when unset.
    pub from: Option<String>,
    /// The value from now on.
    pub to: Option<String>,
}

/// One line of `resumes.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// Steps done when the run resumed.
    pub at_step: u64,
    /// Local time of the resume (RFC 3339).
    pub time: String,
    /// Keys whose value changed.
    pub changed: Vec<ConfigChange>,
}

/// Keys a resume may change: they decide how long the run goes on, what it logs and evaluates,
/// how it reaches its servers, or how its work is cut to fit in memory (the same maths in other
/// pieces: only floating-point rounding differs, which is what a run that ran out of memory
/// needs to change), never what an update does. Everything else is refused.
const SAFE_KEYS: &[&str] = &[
    "name",
    "model.device",
    "run.steps",
    "run.out",
    "run.eval_every",
    "run.eval_temperature",
    "run.eval_samples",
    "run.checkpoint_every",
    "run.prompts_every",
    "run.log_rollouts",
    "run.keep_checkpoints",
    "run.tensorboard",
    "run.device_memory",
    "data.eval",
    "data.eval_max",
    "rollout.endpoints",
    "rollout.max_concurrency",
    "rollout.request_timeout_s",
    "rollout.progress_timeout_s",
    "rollout.stream",
    "rollout.seed_requests",
    "rollout.max_retries",
    "rollout.backoff_ms",
    "rollout.backoff_max_ms",
    "rollout.endpoint_failures",
    "rollout.endpoint_down_timeout_s",
    "rollout.max_consecutive_failures",
    "rollout.sync_dir",
    "rollout.sync_keep",
    "rollout.max_batch",
    "rollout.max_batch_tokens",
    "train.micro_batch_tokens",
    "train.logits_chunk_tokens",
    "train.activation_checkpointing",
    "train.ref_device",
];

/// Sections `cures run` never reads.
const UNUSED_SECTIONS: &[&str] = &["sft.", "simulate."];

/// Whether changing `key` on a resume keeps the run the same run.
pub fn safe_to_change(key: &str) -> bool {
    UNUSED_SECTIONS.iter().any(|s| key.starts_with(s))
        || SAFE_KEYS
            .iter()
            .any(|k| key == *k || key.starts_with(&format!("{k}.")))
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn flat(cfg: &Config) -> Result<BTreeMap<String, String>> {
    let v = toml::Value::try_from(cfg).context("cannot serialise the config")?;
    let mut out = BTreeMap::new();
    flatten("", &v, &mut out);
    Ok(out)
}

/// Every key whose value differs between `old` (the checkpoint's) and `new`.
pub fn config_changes(old: &Config, new: &Config) -> Result<Vec<ConfigChange>> {
    let (a, b) = (flat(old)?, flat(new)?);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| ConfigChange {
            key: k.clone(),
            from: a.get(k).cloned(),
            to: b.get(k).cloned(),
        })
        .collect())
}

/// Refuse a resume whose changes alter the run, naming every such key; `steps_done` and
/// `total_steps` check that a changed `run.steps` still lies ahead.
pub fn check_changes(changes: &[ConfigChange], steps_done: u64, total_steps: u64) -> Result<()> {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
    let bad: Vec<String> = changes
        .iter()
        .filter(|c| !safe_to_change(&c.key))
        .map(|c| format!("  {}: {} -> {}", c.key, show(&c.from), show(&c.to)))
        .collect();
    if !bad.is_empty() {
        bail!(
            "--resume would change how the run trains; the checkpoint was made with other values \
             for:\n{}\nresume with the run's own config (its config.toml), or start a new run \
             with another --out",
            bad.join("\n")
        );
    }
    if total_steps < steps_done {
        bail!(
            "--resume: the run already did {steps_done} steps, more than the {total_steps} \
             it is now asked for (run.steps)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &str, p: &str) -> Example {
        Example {
            id: id.into(),
            problem: p.into(),
            answer: "1".into(),
            level: None,
        }
    }

    #[test]
    fn fingerprint_sees_size_order_and_content() {
        let a = vec![ex("0", "x"), ex("1", "y")];
        let fa = dataset_fingerprint(&a);
        assert!(fa.check(&dataset_fingerprint(&a), "d").is_ok());
        let e = fa
            .check(&dataset_fingerprint(&a[..1]), "d.jsonl")
            .unwrap_err();
        assert!(
            format!("{e}").contains("has 1 prompts, but the run was trained on 2"),
            "{e}"
        );
        let rev = vec![a[1].clone(), a[0].clone()];
        let e = fa.check(&dataset_fingerprint(&rev), "d.jsonl").unwrap_err();
        assert!(format!("{e}").contains("same order"), "{e}");
        // Field boundaries count: ("ab","c") is not ("a","bc").
        let f1 = dataset_fingerprint(&[ex("ab", "c")]);
        let f2 = dataset_fingerprint(&[ex("a", "bc")]);
        assert_ne!(f1.sha256, f2.sha256);
    }

    #[test]
    fn changed_keys_are_named_and_only_safe_ones_pass() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(config_changes(&old, &new).expect("diff").is_empty());
        new.run.steps = Some(50);
        new.run.eval_every = 7;
        let ch = config_changes(&old, &new).expect("diff");
        let keys: Vec<&str> = ch.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["run.eval_every", "run.steps"]);
        assert!(check_changes(&ch, 10, 50).is_ok());
        let e = check_changes(&ch, 60, 50).unwrap_err();
        assert!(format!("{e}").contains("already did 60 steps"), "{e}");
        new.curriculum.tau = 0.3;
        new.seed = 99;
        let ch = config_changes(&old, &new).expect("diff");
        let e = format!("{}", check_changes(&ch, 10, 50).unwrap_err());
        assert!(e.contains("curriculum.tau: 0.1 -> 0.3"), "{e}");
        assert!(e.contains("seed:") && !e.contains("run.steps"), "{e}");
    }

    #[test]
    fn safe_keys_are_exact() {
        assert!(safe_to_change("run.steps") && safe_to_change("sft.lr"));
        assert!(safe_to_change("rollout.endpoints"));
        assert!(!safe_to_change("run.stepsize") && !safe_to_change("rollout.temperature"));
        assert!(!safe_to_change("train.lr") && !safe_to_change("data.train"));
    }
}
