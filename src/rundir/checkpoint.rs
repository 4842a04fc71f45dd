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
        .and_then(|_| write_checksums(&tmp))
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

/// The checksums of a checkpoint's files, in `sha256sum -c` form (`<hex>  <path>` per line,
/// paths relative to the checkpoint).
pub const CHECKSUMS: &str = "SHA256SUMS";

/// Every file under `dir` (relative paths, sorted), but the checksum file itself.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for e in
            std::fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?
        {
            let e = e.with_context(|| format!("cannot list {}", here.display()))?;
            let r = rel.join(e.file_name());
            if e.file_type()
                .with_context(|| format!("cannot stat {}", e.path().display()))?
                .is_dir()
            {
                stack.push(r);
            } else if r != Path::new(CHECKSUMS) {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of a file, in lower-case hex, read in 1 MiB pieces.
fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Write [`CHECKSUMS`] for every file of the checkpoint being written in `dir`.
fn write_checksums(dir: &Path) -> Result<()> {
    let mut text = String::new();
    for rel in files_under(dir)? {
        let sum = sha256_file(&dir.join(&rel))?;
        text.push_str(&format!("{sum}  {}\n", rel.display()));
    }
    let p = dir.join(CHECKSUMS);
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
}

/// Check a checkpoint against its [`CHECKSUMS`]: `Ok(true)` when every file matches,
/// `Ok(false)` when the checkpoint has no checksums (written before they existed), and an
/// error naming the first file that is missing, changed or not listed.
pub fn verify_checksums(dir: &Path) -> Result<bool> {
    let p = dir.join(CHECKSUMS);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((sum, rel)) = line.split_once("  ") else {
            bail!("{}:{}: not a `<sha256>  <file>` line", p.display(), i + 1);
        };
        let f = dir.join(rel);
        if !f.is_file() {
            bail!("{} is missing (listed in {})", f.display(), p.display());
        }
        let now = sha256_file(&f)?;
        if now != sum {
            bail!(
                "{} does not match its checksum (written {}…, now {}…): the file was changed or \
                 damaged after the checkpoint was written",
                f.display(),
                &sum[..12.min(sum.len())],
                &now[..12]
            );
        }
        listed.push(PathBuf::from(rel));
    }
    listed.sort();
    if let Some(extra) = files_under(dir)?
        .into_iter()
        .find(|f| listed.binary_search(f).is_err())
    {
        bail!(
            "{} is not listed in {}",
            dir.join(extra).display(),
            p.display()
        );
    }
    Ok(true)
}

/// The newest checkpoint under `root` older than `name` (`step_…` names sort by step).
pub fn previous_checkpoint(root: &Path, name: &str) -> Option<String> {
    let mut all: Vec<String> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step_") && n.as_str() < name)
        .collect();
    all.sort();
    all.pop()
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
        // `{}` and its checksum line: 64 hex digits, two spaces, `state.json`, a newline.
        assert_eq!(
            need,
            CheckpointSpace {
                bytes: 2 + 64 + 2 + 10 + 1,
                measured: true
            }
        );
    }

    #[test]
    fn checksums_are_written_and_a_changed_byte_is_named() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("checkpoints");
        let dir = write_checkpoint(&root, "step_0000002", 3, est(1), |d| {
            std::fs::create_dir_all(d.join("policy"))?;
            std::fs::write(d.join("policy/model.safetensors"), vec![7u8; 3 << 20])?;
            std::fs::write(d.join("state.json"), b"{}")?;
            Ok(())
        })
        .expect("write");
        let sums = std::fs::read_to_string(dir.join(CHECKSUMS)).expect("sums");
        assert_eq!(sums.lines().count(), 2, "{sums}");
        assert!(sums.contains("  policy/model.safetensors\n"), "{sums}");
        assert!(verify_checksums(&dir).expect("verify"));
        // One byte in the middle of a 3 MiB file.
        let w = dir.join("policy/model.safetensors");
        let mut b = std::fs::read(&w).expect("read");
        b[3 << 19] ^= 1;
        std::fs::write(&w, &b).expect("write");
        let e = format!("{:#}", verify_checksums(&dir).unwrap_err());
        assert!(
            e.contains("policy/model.safetensors does not match its checksum"),
            "{e}"
        );
        // A file the checkpoint did not have, and one that went missing.
        b[3 << 19] ^= 1;
        std::fs::write(&w, &b).expect("write");
        std::fs::write(dir.join("extra.bin"), b"x").expect("write");
        let e = format!("{:#}", verify_checksums(&dir).unwrap_err());
        assert!(e.contains("extra.bin is not listed"), "{e}");
        std::fs::remove_file(dir.join("extra.bin")).expect("rm");
        std::fs::remove_file(dir.join("state.json")).expect("rm");
        let e = format!("{:#}", verify_checksums(&dir).unwrap_err());
        assert!(e.contains("state.json is missing"), "{e}");
        // A checkpoint from before checksums: no verdict.
        std::fs::remove_file(dir.join(CHECKSUMS)).expect("rm");
        assert!(!verify_checksums(&dir).expect("old"));
        assert_eq!(previous_checkpoint(&root, "step_0000002"), None);
        std::fs::create_dir_all(root.join("step_0000001")).expect("mkdir");
        assert_eq!(
            previous_checkpoint(&root, "step_0000002").as_deref(),
            Some("step_0000001")
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
