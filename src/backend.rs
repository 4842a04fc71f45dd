//! The libtorch backend this process runs on: one binary for CPU and GPU machines.
//!
//! cures links the CPU half of libtorch only (`libtorch_cpu.so`, `libc10.so`): a normal tch
//! build drops `libtorch_cuda.so` from the link even against a CUDA libtorch (`--as-needed`,
//! tch-rs issues #907 and #980), so CUDA would never register. [`init`], called first thing by
//! the binary, loads the CUDA half itself when it lies beside the CPU half that was loaded (the
//! directory of `libtorch_cpu.so`, e.g. the cut of `scripts/fetch-libtorch.sh --cuda`, or an
//! installed PyTorch's `torch/lib` given in `LD_LIBRARY_PATH`) — what `LD_PRELOAD` of it used to
//! do by hand. Without it everything runs on the CPU as before, and [`Backend`] says why.
//!
//! `CURES_CUDA=0` skips the load (CPU only, even on a GPU machine).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The libtorch version the binary was built against (its headers).
pub const BUILT_AGAINST: &str = env!("CURES_LIBTORCH_VERSION");

/// What [`init`] found.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The `libtorch_cpu.so` this process loaded (None when it cannot be told).
    pub libtorch_cpu: Option<PathBuf>,
    /// The version of that libtorch (its `build-version` or `version.py`), else [`BUILT_AGAINST`].
    pub version: String,
    /// The CUDA half: the path loaded, or why not.
    pub cuda: Result<PathBuf, String>,
}

static BACKEND: OnceLock<Backend> = OnceLock::new();

/// Load the CUDA half of libtorch if it is there (once; later calls return the first result).
/// Must run before anything asks libtorch about CUDA: libtorch decides once per process.
pub fn init() -> &'static Backend {
    BACKEND.get_or_init(|| {
        let libtorch_cpu = loaded_library("libtorch_cpu.so");
        let version = libtorch_cpu
            .as_deref()
            .and_then(|p| p.parent())
            .and_then(installed_version)
            .unwrap_or_else(|| BUILT_AGAINST.to_string());
        let cuda = load_cuda(libtorch_cpu.as_deref());
        Backend {
            libtorch_cpu,
            version,
            cuda,
        }
    })
}

/// The backend of this process ([`init`] if nothing called it yet).
pub fn get() -> &'static Backend {
    init()
}

fn load_cuda(libtorch_cpu: Option<&Path>) -> Result<PathBuf, String> {
    if std::env::var("CURES_CUDA").is_ok_and(|v| v == "0") {
        return Err("CURES_CUDA=0: the CUDA libtorch is not loaded".into());
    }
    let cpu = libtorch_cpu.ok_or(
        "cannot tell which libtorch_cpu.so this process loaded (no /proc/self/maps entry), so \
         no CUDA libtorch is looked for",
    )?;
    let dir = cpu.parent().unwrap_or(Path::new("/"));
    let cuda = dir.join("libtorch_cuda.so");
    if !cuda.exists() {
        return Err(format!(
            "no CUDA libtorch found: no libtorch_cuda.so beside {} (scripts/fetch-libtorch.sh \
             --cuda fetches one; or run with LD_LIBRARY_PATH set to a CUDA PyTorch {}'s torch/lib)",
            cpu.display(),
            BUILT_AGAINST
        ));
    }
    dlopen_global(&cuda)
        .map(|()| cuda.clone())
        .map_err(|e| format!("{} did not load: {e}", cuda.display()))
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`, never closed (libtorch registers its CUDA hooks from
/// the library's static initialisers, as `LD_PRELOAD` would).
fn dlopen_global(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: `c` is a valid NUL-terminated string; dlopen/dlerror have no other preconditions.
    // The handle is deliberately leaked: the library stays loaded for the life of the process.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if h.is_null() {
            let e = libc::dlerror();
            return Err(if e.is_null() {
                "dlopen failed".into()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            });
        }
    }
    Ok(())
}

/// The path of a shared library this process has mapped whose file name is `name`.
fn loaded_library(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|f| f == name))
        .map(PathBuf::from)
}

/// The version written beside a libtorch's `lib/`: `build-version` (libtorch archives, the cut of
/// scripts/fetch-libtorch.sh) or `version.py` (a PyTorch install's `torch/`).
fn installed_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(s) = std::fs::read_to_string(root.join("build-version")) {
        let v = s.trim();
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    py.lines().find_map(|l| {
        let rest = l.strip_prefix("__version__")?.trim_start();
        let v = rest.strip_prefix('=')?.trim().trim_matches(['\'', '"']);
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// libtorch's own reason why no CUDA device can be used (its error on allocating one element on
/// `cuda:0`, first line), or None when it can.
pub fn cuda_error() -> Option<String> {
    match tch::Tensor::f_zeros([1], (tch::Kind::Float, tch::Device::Cuda(0))) {
        Ok(_) => None,
        Err(e) => Some(
            e.to_string()
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("unknown error")
                .trim()
                .trim_start_matches("Internal torch error: ")
                .to_string(),
        ),
    }
}

/// Whether a CUDA device can be used, and how many there are.
pub fn cuda_devices() -> usize {
    if init().cuda.is_err() {
        return 0;
    }
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// Why `device` cannot be used, when it cannot: a CUDA device needs the CUDA libtorch loaded
/// and that device visible.
pub fn check_device(device: tch::Device) -> Result<(), String> {
    let tch::Device::Cuda(i) = device else {
        return Ok(());
    };
    let b = init();
    if let Err(why) = &b.cuda {
        return Err(format!(
            "cuda:{i} asked for, but this cures runs on the CPU only: {why}"
        ));
    }
    let n = cuda_devices();
    if i >= n {
        return Err(format!(
            "cuda:{i} asked for, but {} (CUDA_VISIBLE_DEVICES={})",
            if n == 0 {
                format!(
                    "no CUDA device is visible: {}",
                    cuda_error().unwrap_or_else(|| "no NVIDIA driver, or no GPU".into())
                )
            } else {
                format!("only {n} CUDA device(s) are visible")
            },
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
        ));
    }
    Ok(())
}

impl fmt::Display for Backend {
    /// Two lines: the libtorch loaded, and the backend (`cpu` only and why, or `cuda` with its
    /// devices).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "libtorch {}", self.version)?;
        if self.version != BUILT_AGAINST {
            write!(f, " (built against {BUILT_AGAINST})")?;
        }
        match &self.libtorch_cpu {
            Some(p) => writeln!(f, ", loaded from {}", p.display())?,
            None => writeln!(f)?,
        }
        match &self.cuda {
            Err(why) => write!(f, "backend: cpu only ({why})"),
            Ok(path) => {
                let n = cuda_devices();
                if n == 0 {
                    write!(
                        f,
                        "backend: cpu only (CUDA libtorch loaded from {}, but no CUDA device is \
                         visible: {}; CUDA_VISIBLE_DEVICES={})",
                        path.display(),
                        cuda_error().unwrap_or_else(|| "no NVIDIA driver, or no GPU".into()),
                        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
                    )
                } else {
                    write!(
                        f,
                        "backend: cuda, {n} device{} (CUDA libtorch {}; cuDNN {})",
                        if n == 1 { "" } else { "s" },
                        path.display(),
                        if tch::Cuda::cudnn_is_available() {
                            "available"
                        } else {
                            "not available"
                        }
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_files_are_read() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("lib")).expect("mkdir");
        assert_eq!(installed_version(&d.path().join("lib")), None);
        std::fs::write(
            d.path().join("version.py"),
            "from typing import Optional\n__version__ = '2.11.0+cu130'\ngit_version = 'x'\n",
        )
        .expect("write");
        assert_eq!(
            installed_version(&d.path().join("lib")).as_deref(),
            Some("2.11.0+cu130")
        );
        std::fs::write(d.path().join("build-version"), "2.11.0\n").expect("write");
        assert_eq!(
            installed_version(&d.path().join("lib")).as_deref(),
            Some("2.11.0")
        );
    }

    #[test]
    fn the_loaded_libtorch_is_found() {
        // The test binary links libtorch_cpu.so like cures does.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let p = loaded_library("libtorch_cpu.so").expect("libtorch_cpu.so in /proc/self/maps");
        assert!(p.is_absolute() && p.exists(), "{}", p.display());
        assert_eq!(loaded_library("libsurely-not-loaded.so"), None);
    }

    #[test]
    fn a_library_that_is_not_there_names_the_reason() {
        let e = dlopen_global(Path::new("/nonexistent/libtorch_cuda.so")).expect_err("fails");
        assert!(e.contains("libtorch_cuda.so"), "{e}");
        assert!(check_device(tch::Device::Cpu).is_ok());
    }
}
