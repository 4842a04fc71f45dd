//! The run directory `cures run` writes: its files, its checkpoints and what a resume may change.
//!
//! ```text
//! <run>/config.toml              the config the run started with (written with its first
//!                                checkpoint; a resume never overwrites it)
//! <run>/config.resume-step<N>.toml  the config of a resume at step N that changed a safe key
//! <run>/resumes.jsonl            one line per resume: the step and every key that changed
//!                                (both written once the resume has made a step)
//! <run>/steps.csv eval.csv prompts.csv rollouts.jsonl   logs (appended; cut back to the
//!                                checkpoint's step on resume, never thinned)
//! <run>/tensorboard/             event files (cut back the same way)
//! <run>/checkpoints/step_<N>/    policy/, reference/, optimizer.safetensors, state.json
//! <run>/checkpoints/latest       the name of the newest complete checkpoint
//! ```
//!
//! A directory this process created is removed again when the start fails before the first
//! step ([`RunDir::keep`] marks the start as done), and temporary files or directories a killed
//! process left behind (`.step_N.tmpPID`, `steps.csv.PID.tmp`, ...) are removed at every start.

mod checkpoint;
mod log;
mod resume;
pub mod schema;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use checkpoint::{
    checkpoint_space, free_bytes, previous_checkpoint, verify_checksums, write_checkpoint,
    CheckpointSpace, CHECKSUMS,
};
pub use log::{read_csv, CsvLog, JsonlLog};
pub use resume::{
    check_changes, config_changes, dataset_fingerprint, safe_to_change, ConfigChange,
    DatasetFingerprint, ResumeRecord,
};

/// The run directory.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    /// This process created `dir` and the start has not finished: remove it on drop.
    remove_on_drop: bool,
}

/// How `cures run` starts in its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: refused when the directory already holds one (rows, a config, a checkpoint).
    Fresh,
    /// Continue from the latest checkpoint (`--resume`).
    Resume,
    /// A new run in place of whatever run the directory holds (`--overwrite`: its files are
    /// removed first).
    Overwrite,
}

/// What a run writes into its directory (files and folders), and so what `--overwrite` removes.
const RUN_ENTRIES: &[&str] = &[
    "config.toml",
    "steps.csv",
    "eval.csv",
    "prompts.csv",
    "rollouts.jsonl",
    "resumes.jsonl",
    "checkpoints",
    "tensorboard",
    "sync",
];

impl RunDir {
    /// Open `dir` for `start`, creating it when missing, and remove what killed processes left
    /// behind. A fresh start into a directory that holds a run is refused, also one that crashed
    /// before its first checkpoint (its rows and `eval.csv` would be silently mixed into the new
    /// run's).
    pub fn open(dir: &Path, start: Start) -> Result<RunDir> {
        let latest = dir.join("checkpoints").join("latest");
        let existed = dir.exists();
        let mut rd = RunDir {
            dir: dir.to_path_buf(),
            remove_on_drop: false,
        };
        // First, so that a killed writer's temporary files do not count as a run.
        for p in rd.clean_orphans()? {
            tracing::info!("removed {} (left by an interrupted process)", p.display());
        }
        match start {
            Start::Fresh => {
                let held = run_files(dir);
                if !held.is_empty() {
                    let how = if latest.exists() {
                        "continue it with --resume, start it again with --overwrite (which \
                         deletes them)"
                    } else {
                        "it has no checkpoint to resume from (it stopped before the first): \
                         start again with --overwrite (which deletes them)"
                    };
                    bail!(
                        "{} already holds a run ({}): {how}, or choose another --out",
                        dir.display(),
                        held.join(", ")
                    );
                }
            }
            Start::Resume if !latest.exists() => bail!(
                "--resume: {} has no checkpoint (no {}){}",
                dir.display(),
                latest.display(),
                if run_files(dir).is_empty() {
                    String::new()
                } else {
                    ": the run stopped before its first checkpoint; start it again with \
                     --overwrite"
                        .to_string()
                }
            ),
            Start::Resume => {}
            Start::Overwrite => {
                for name in RUN_ENTRIES
                    .iter()
                    .copied()
                    .chain(config_copies(dir).iter().map(String::as_str))
                {
                    let p = dir.join(name);
                    let r = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else if p.exists() {
                        std::fs::remove_file(&p)
                    } else {
                        continue;
                    };
                    r.with_context(|| format!("--overwrite: cannot remove {}", p.display()))?;
                    tracing::info!("--overwrite: removed {}", p.display());
                }
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        rd.remove_on_drop = !existed;
        Ok(rd)
    }

    /// The start succeeded: the directory stays whatever happens next.
    pub fn keep(&mut self) {
        self.remove_on_drop = false;
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `checkpoints/`.
    pub fn ckpt_root(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// The latest complete checkpoint (named in `checkpoints/latest`).
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let p = self.ckpt_root().join("latest");
        if !p.exists() {
            return Ok(None);
        }
        let name =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let dir = self.ckpt_root().join(name.trim());
        if !dir.join("state.json").exists() {
            bail!(
                "{} names {}, which is not a complete checkpoint",
                p.display(),
                dir.display()
            );
        }
        Ok(Some(dir))
    }

    /// Remove temporary files and directories whose writer process is gone, in the run
    /// directory, `checkpoints/` and `sync/`. Returns what was removed.
    pub fn clean_orphans(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for d in [self.dir.clone(), self.ckpt_root(), self.dir.join("sync")] {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = temp_owner(&name) else {
                    continue;
                };
                if pid != std::process::id() && process_alive(pid) {
                    continue;
                }
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.with_context(|| format!("cannot remove the stale {}", p.display()))?;
                removed.push(p);
            }
        }
        Ok(removed)
    }

    /// The files and folders of the run directory a user looks at, as they exist now.
    pub fn written(&self) -> Vec<String> {
        [
            "steps.csv",
            "eval.csv",
            "prompts.csv",
            "rollouts.jsonl",
            "resumes.jsonl",
            "checkpoints",
            "tensorboard",
        ]
        .into_iter()
        .filter(|n| self.dir.join(n).exists())
        .map(|n| {
            if self.dir.join(n).is_dir() {
                format!("{n}/")
            } else {
                n.to_string()
            }
        })
        .collect()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The run files `dir` holds (empty files and folders do not count).
fn run_files(dir: &Path) -> Vec<String> {
    RUN_ENTRIES
        .iter()
        .map(|n| n.to_string())
        .chain(config_copies(dir))
        .filter(|n| {
            let p = dir.join(n);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_some()),
                Ok(m) => m.len() > 0,
                Err(_) => false,
            }
        })
        .collect()
}

/// `config.resume-step<N>.toml` files in `dir`.
fn config_copies(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("config.resume-step") && n.ends_with(".toml"))
        .collect();
    v.sort();
    v
}

/// The process id in the name of a temporary file or directory this crate writes:
/// `.step_0000005.tmp1234` (checkpoints), `steps.csv.1234.tmp` (atomic files),
/// `.v3.tmp-1234` (sync and HF writers).
pub(crate) fn temp_owner(name: &str) -> Option<u32> {
    fn digits(s: &str) -> Option<&str> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
    }
    if let Some(stem) = name.strip_suffix(".tmp") {
        let (_, pid) = stem.rsplit_once('.')?;
        return digits(pid)?.parse().ok();
    }
    let (_, pid) = name.rsplit_once(".tmp")?;
    let pid = pid.strip_prefix('-').unwrap_or(pid);
    if !name.starts_with('.') {
        return None;
    }
    digits(pid)?.parse().ok()
}

/// Whether a process with this id exists (signal 0 checks without sending anything).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for the process; it has no other effect.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_give_their_owner() {
        assert_eq!(temp_owner(".step_0000005.tmp1234"), Some(1234));
        assert_eq!(temp_owner("steps.csv.77.tmp"), Some(77));
        assert_eq!(temp_owner(".v3.tmp-42"), Some(42));
        assert_eq!(temp_owner("step_0000005"), None);
        assert_eq!(temp_owner("steps.csv"), None);
        assert_eq!(temp_owner("notes.tmp"), None);
        assert_eq!(temp_owner("x.tmp12"), None);
    }

    #[test]
    fn orphans_of_dead_processes_are_removed_and_live_ones_kept() {
        let t = tempfile::tempdir().expect("tempdir");
        let run = t.path().join("run");
        let ck = run.join("checkpoints");
        // A pid above the kernel's pid_max (4194304) is never alive.
        let dead = ck.join(".step_0000004.tmp4999999");
        std::fs::create_dir_all(dead.join("policy")).expect("mkdir");
        std::fs::write(dead.join("policy/model.safetensors"), b"partial").expect("write");
        std::fs::write(run.join("steps.csv.4999998.tmp"), b"half").expect("write");
        let mine = ck.join(format!(".step_0000003.tmp{}", std::process::id()));
        std::fs::create_dir_all(&mine).expect("mkdir");
        let live = run.join("steps.csv.1.tmp"); // pid 1 is always alive
        std::fs::write(&live, b"being written").expect("write");
        let rd = RunDir::open(&run, Start::Fresh).expect("open");
        assert!(!dead.exists() && !run.join("steps.csv.4999998.tmp").exists());
        assert!(!mine.exists(), "a temp of this very pid is stale");
        assert!(live.exists(), "a live process's temp stays");
        drop(rd);
        assert!(run.exists(), "a directory that existed is never removed");
    }

    #[test]
    fn a_failed_start_leaves_no_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let run = t.path().join("fresh");
        {
            let _rd = RunDir::open(&run, Start::Fresh).expect("open");
            assert!(run.exists());
        }
        assert!(!run.exists(), "dropped before keep(): removed");
        {
            let mut rd = RunDir::open(&run, Start::Fresh).expect("open");
            rd.keep();
        }
        assert!(run.exists(), "kept");
        let e = RunDir::open(&t.path().join("nothing"), Start::Resume).unwrap_err();
        assert!(format!("{e:#}").contains("has no checkpoint"), "{e:#}");
        assert!(!t.path().join("nothing").exists());
    }

    #[test]
    fn a_used_directory_is_refused_unless_resumed_or_overwritten() {
        let t = tempfile::tempdir().expect("tempdir");
        let run = t.path().join("run");
        // A crash before the first checkpoint: rows and an eval.csv, no checkpoint.
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::write(run.join("steps.csv"), b"step,loss\n1,0.5\n").expect("write");
        std::fs::write(run.join("eval.csv"), b"step,accuracy\n0,0.3\n").expect("write");
        std::fs::write(run.join("config.resume-step4.toml"), b"name = 'x'\n").expect("write");
        std::fs::write(run.join("notes.txt"), b"mine").expect("write");
        let e = format!("{:#}", RunDir::open(&run, Start::Fresh).unwrap_err());
        assert!(e.contains("already holds a run"), "{e}");
        assert!(e.contains("steps.csv") && e.contains("eval.csv"), "{e}");
        assert!(
            e.contains("no checkpoint") && e.contains("--overwrite"),
            "{e}"
        );
        let e = format!("{:#}", RunDir::open(&run, Start::Resume).unwrap_err());
        assert!(e.contains("before its first checkpoint"), "{e}");
        assert!(run.join("steps.csv").exists(), "a refusal deletes nothing");
        // With a checkpoint the advice is --resume.
        std::fs::create_dir_all(run.join("checkpoints")).expect("mkdir");
        std::fs::write(run.join("checkpoints/latest"), b"step_0000001").expect("write");
        let e = format!("{:#}", RunDir::open(&run, Start::Fresh).unwrap_err());
        assert!(e.contains("--resume"), "{e}");
        let mut rd = RunDir::open(&run, Start::Overwrite).expect("overwrite");
        rd.keep();
        for gone in [
            "steps.csv",
            "eval.csv",
            "checkpoints",
            "config.resume-step4.toml",
        ] {
            assert!(!run.join(gone).exists(), "{gone} removed");
        }
        assert!(
            run.join("notes.txt").exists(),
            "files that are not the run's stay"
        );
        drop(rd);
        // Empty leftovers (a header-less log, an empty folder) do not count as a run.
        std::fs::write(run.join("steps.csv"), b"").expect("write");
        std::fs::create_dir_all(run.join("tensorboard")).expect("mkdir");
        RunDir::open(&run, Start::Fresh).expect("an empty start is no run");
    }
}
