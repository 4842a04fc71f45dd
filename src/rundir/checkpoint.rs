//! Writing a checkpoint: enough space first, a temporary directory, one rename, then pruning.
//! A failure (the disk filling up included) removes the temporary directory and says how much
//! space the checkpoint needs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// How much space a checkpoint needs, and where that figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSpace {
    /// Bytes the next checkpoint is expected to take.
    pub bytes: u64,
    /// `true` when measured on the previous checkpoint, `false` when estimated.
    pub measured: bool,
}

/// The space of the next checkpoint: the size of the previous one when there is one, else
/// `estimate` (parameters, reference and optimiser state at their saved widths).
pub fn checkpoint_space(previous: Option<&Path>, estimate: u64) -> CheckpointSpace {
    match previous.and_then(|p| dir_bytes(p).ok()).filter(|&b| b > 0) {
        Some(bytes) => CheckpointSpace {
            bytes,
            measured: true,
        },
        None => CheckpointSpace {
            bytes: estimate,
            measured: false,
        },
    }
}

fn dir_bytes(p: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let md = e.metadata()?;
        total += if md.is_dir() {
            dir_bytes(&e.path())?
        } else {
            md.len()
        };
    }
    Ok(total)
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own; `c` is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (r == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn space_message(root: &Path, name: &str, need: CheckpointSpace, free: Option<u64>) -> String {
    let how = if need.measured {
        "the size of the previous one"
    } else {
        "estimated"
    };
    let free = free.map_or("unknown".to_string(), gib);
    format!(
        "not enough disk space for checkpoint {name} in {}: it needs about {} ({how}), {free} free; \
         free some space (or lower run.keep_checkpoints) and continue with --resume",
        root.display(),
        gib(need.bytes)
    )
}

fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull
                || io.raw_os_error() == Some(libc::ENOSPC)
                || io.raw_os_error() == Some(libc::EDQUOT)
        })
    }) || format!("{e:#}").contains("No space left on device")
}

/// Write checkpoint `name` under `root`: `write` fills a temporary directory, which is renamed
/// onto `root/name` only when complete; `root/latest` then names it, and all but the newest
/// `keep` checkpoints are removed. Returns the checkpoint's directory.
pub fn write_checkpoint(
    root: &Path,
    name: &str,
    keep: usize,
    need: CheckpointSpace,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let free = free_bytes(root);
    if free.is_some_and(|f| f < need.bytes) {
        bail!("{}", space_message(root, name, need, free));
    }
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the stale {}", tmp.display()))?;
    }
    let written = std::fs::create_dir_all(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))
        .and_then(|_| write(&tmp))
        .and_then(|_| sync_tree(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        if is_disk_full(&e) {
            return Err(e.context(space_message(root, name, need, free_bytes(root))));
        }
        return Err(e.context(format!("checkpoint {name} was not written")));
    }
    let dst = root.join(name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .with_context(|| format!("cannot replace {}", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    crate::metrics::write_atomic(&root.join("latest"), format!("{name}\n").as_bytes())?;
    let mut all: Vec<String> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step_") && n.as_str() != name)
        .collect();
    all.sort();
    while all.len() + 1 > keep.max(1) {
        let old = all.remove(0);
        std::fs::remove_dir_all(root.join(&old))
            .with_context(|| format!("cannot prune {}", root.join(&old).display()))?;
    }
    Ok(dst)
}

/// fsync every file under `dir`, so the rename publishes only durable content.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(bytes: u64) -> CheckpointSpace {
        CheckpointSpace {
            bytes,
            measured: false,
        }
    }

    #[test]
    fn writes_names_latest_and_prunes() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("checkpoints");
        for s in 1..=3 {
            let name = format!("step_{s:07}");
            write_checkpoint(&root, &name, 2, est(1), |d| {
                std::fs::write(d.join("state.json"), b"{}")?;
                Ok(())
            })
            .expect("write");
        }
        let latest = std::fs::read_to_string(root.join("latest")).expect("latest");
        assert_eq!(latest.trim(), "step_0000003");
        assert!(!root.join("step_0000001").exists() && root.join("step_0000002").exists());
        let need = checkpoint_space(Some(&root.join("step_0000003")), 999);
        assert_eq!(
            need,
            CheckpointSpace {
                bytes: 2,
                measured: true
            }
        );
    }

    #[test]
    fn a_failed_write_leaves_no_temp_and_names_the_space() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("checkpoints");
        let e = write_checkpoint(&root, "step_0000001", 1, est(3 << 30), |d| {
            std::fs::write(d.join("part"), b"x")?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into())
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("not enough disk space") && msg.contains("3.00 GiB"),
            "{msg}"
        );
        let left: Vec<_> = std::fs::read_dir(&root).expect("ls").collect();
        assert!(left.is_empty(), "temp dir left behind: {left:?}");
        assert!(!root.join("latest").exists());
    }

    #[test]
    fn too_little_space_is_refused_before_writing() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("checkpoints");
        let mut called = false;
        let e = write_checkpoint(&root, "step_0000001", 1, est(u64::MAX / 2), |_| {
            called = true;
            Ok(())
        })
        .unwrap_err();
        assert!(!called);
        assert!(format!("{e}").contains("needs about"), "{e}");
    }
}
