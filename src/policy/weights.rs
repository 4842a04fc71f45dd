//! HF safetensors checkpoints: read single-file and sharded (`model.safetensors.index.json`)
//! checkpoints, write sharded ones (HF tensor names, layer order, `{"format": "pt"}` metadata).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

/// The safetensors files of a checkpoint directory: the shards named by
/// `model.safetensors.index.json` when present, else `model.safetensors`, else every
/// `*.safetensors` file in the directory (sorted).
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .map(|f| {
                f.as_str().map(str::to_string).with_context(|| {
                    format!(
                        "{}: `weight_map` value {f} is not a string",
                        index.display()
                    )
                })
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no model.safetensors, model.safetensors.index.json or *.safetensors",
            dir.display()
        );
    }
    Ok(files)
}

/// Read every tensor of one safetensors file (on CPU, in the file's dtype).
pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))
}

/// Check that `path` is a whole safetensors file without loading it: an 8-byte header length,
/// a JSON header whose tensors have dtypes, shapes and data offsets that fit in the file. Errors
/// name the file and what is wrong (servers can crash on a corrupt file, so syncs check first).
pub fn check_safetensors(path: &Path) -> Result<()> {
    safetensors_shapes(path).map(|_| ())
}

/// [`check_safetensors`], returning each tensor's name and shape (header only, no data read).
pub fn safetensors_shapes(path: &Path) -> Result<Vec<(String, Vec<i64>)>> {
    use std::io::Read;
    let bad =
        |why: String| anyhow::anyhow!("{} is not a valid safetensors file: {why}", path.display());
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        bad(format!(
            "{size} bytes, shorter than the 8-byte header length"
        ))
    })?;
    let hlen = u64::from_le_bytes(len);
    if hlen > 100 << 20 || 8 + hlen > size {
        return Err(bad(format!(
            "header length {hlen} does not fit in {size} bytes"
        )));
    }
    let mut h = vec![0u8; hlen as usize];
    f.read_exact(&mut h)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&h).map_err(|e| bad(format!("the header is not JSON: {e}")))?;
    let map = v
        .as_object()
        .ok_or_else(|| bad("the header is not a JSON object".into()))?;
    let data = size - 8 - hlen;
    let mut shapes = Vec::with_capacity(map.len());
    for (name, t) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        let offs = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad(format!("tensor {name} has no [begin, end] data_offsets")))?;
        let shape: Option<Vec<i64>> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_i64()).collect());
        let Some(shape) = shape.filter(|_| t.get("dtype").and_then(|d| d.as_str()).is_some())
        else {
            return Err(bad(format!("tensor {name} has no dtype or shape")));
        };
        if offs.0 > offs.1 || offs.1 > data {
            return Err(bad(format!(
                "tensor {name} spans bytes {}..{} of a {data}-byte data section (truncated?)",
                offs.0, offs.1
            )));
        }
        shapes.push((name.clone(), shape));
    }
    Ok(shapes)
}

/// The safetensors dtype string of a kind.
pub fn dtype_str(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        k => bail!("cannot save tensors of kind {k:?}"),
    })
}

/// The HF `torch_dtype` name of a kind.
pub fn torch_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// The kind `t` is written as: `kind` for floating tensors when given, else its own.
fn target_kind(t: &Tensor, kind: Option<Kind>) -> Kind {
    match kind {
        Some(k) if t.is_floating_point() => k,
        _ => t.kind(),
    }
}

/// Write a small file (configs) and start its writeback without waiting: a later fsync of a
/// big file in the same directory then usually commits it too ([`commit_dir`] fsyncs it anyway).
pub fn write_small(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    start_writeback(&f, 0, bytes.len());
    Ok(())
}

/// Write tensors (already in their final kind, any device) to one safetensors file with
/// `{"format": "pt"}` metadata, in the order given.
pub fn write_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_file_as(path, tensors, None)
}

/// The raw bytes of a contiguous CPU tensor.
fn tensor_bytes(t: &Tensor) -> Result<&[u8]> {
    if t.device() != tch::Device::Cpu || !t.is_contiguous() {
        bail!("internal: expected a contiguous CPU tensor");
    }
    let n = t.numel() * t.kind().elt_size_in_bytes();
    if n == 0 {
        return Ok(&[]);
    }
    let ptr = t.data_ptr() as *const u8;
    if ptr.is_null() {
        bail!("the tensor has no data");
    }
    // SAFETY: a contiguous CPU tensor owns `n` initialised bytes at `ptr` (numel × element
    // size of its kind), alive for as long as `t` is borrowed; nothing writes them meanwhile.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// bfloat16 bits of `x`, rounded to nearest even as libtorch does (NaN → 0x7FC0).
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return 0x7FC0;
    }
    let bias = 0x7FFF + ((u >> 16) & 1);
    (u.wrapping_add(bias) >> 16) as u16
}

/// Bytes of dirty page cache after which the writer asks the kernel to start writing back
/// (so the disk works while the next tensors are converted, as `dd` keeps it busy).
const WRITEBACK_CHUNK: usize = 32 << 20;

/// Start writing back `len` bytes at `offset` of `f` without waiting (Linux); a no-op
/// elsewhere or when the kernel refuses (the final fsync covers it).
fn start_writeback(f: &std::fs::File, offset: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

/// Write tensors (any device) to one safetensors file, converting floating ones to `kind`
/// when given, one tensor at a time: each is converted, written straight from its memory and
/// handed to the kernel's writeback before the next one, then the file is fsync'd.
pub fn write_file_as(path: &Path, tensors: &[(String, Tensor)], kind: Option<Kind>) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let k = target_kind(t, kind);
        let bytes = t.numel() * k.elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype_str(k).with_context(|| format!("tensor {name}"))?,
                "shape": t.size(),
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // Coalesces the many small tensors (LoRA factors, norms); big writes go straight through.
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
    f.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&h).map_err(io)?;
    let mut pos = 8 + h.len();
    let mut flushed = 0usize;
    let mut buf: Vec<u16> = Vec::new();
    for (name, t) in tensors {
        let k = target_kind(t, kind);
        let moved;
        let src = if t.device() == tch::Device::Cpu && t.is_contiguous() {
            t
        } else {
            moved = tch::no_grad(|| t.detach().to_device(tch::Device::Cpu).contiguous());
            &moved
        };
        let ctx = || format!("tensor {name} ({})", path.display());
        // f32 → bf16 (the usual sync dtype) streams through a small buffer on this thread: no
        // full-size copy, no thread pool; other conversions go through libtorch.
        let f32s = if src.kind() == Kind::Float && k == Kind::BFloat16 {
            // SAFETY: reinterpreting initialised bytes as f32; align_to only yields the
            // aligned middle part, and a non-empty prefix sends us to the libtorch path.
            let (pre, mid, _) = unsafe { tensor_bytes(src).with_context(ctx)?.align_to::<f32>() };
            (pre.is_empty() && mid.len() == src.numel()).then_some(mid)
        } else {
            None
        };
        let n = if let Some(xs) = f32s {
            for chunk in xs.chunks(1 << 20) {
                buf.resize(chunk.len(), 0);
                for (o, &x) in buf.iter_mut().zip(chunk) {
                    *o = bf16_bits(x).to_le();
                }
                // SAFETY: u16 → u8 view of the same initialised memory (alignment 1).
                let bytes =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, 2 * buf.len()) };
                f.write_all(bytes).map_err(io)?;
            }
            2 * xs.len()
        } else {
            let converted;
            let t = if src.kind() == k {
                src
            } else {
                converted = tch::no_grad(|| src.to_kind(k));
                &converted
            };
            let data = tensor_bytes(t).with_context(ctx)?;
            f.write_all(data).map_err(io)?;
            data.len()
        };
        pos += n;
        if pos - flushed >= WRITEBACK_CHUNK {
            f.flush().map_err(io)?;
            start_writeback(f.get_ref(), flushed, pos - flushed);
            flushed = pos;
        }
    }
    let file = f.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Write `tensors` (in order) as HF shards of at most `max_shard_bytes` each into `dir`:
/// `model.safetensors` when one shard suffices, else `model-0000i-of-0000n.safetensors` plus
/// `model.safetensors.index.json`. Tensors are converted to `kind` (floating ones only).
pub fn write_sharded(
    dir: &Path,
    tensors: Vec<(String, Tensor)>,
    kind: Kind,
    max_shard_bytes: usize,
) -> Result<Vec<PathBuf>> {
    let max = max_shard_bytes.max(1);
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0usize;
    let mut total = 0usize;
    for (name, t) in tensors {
        let bytes = t.numel() * target_kind(&t, Some(kind)).elt_size_in_bytes();
        if size > 0 && size + bytes > max {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        total += bytes;
        if let Some(last) = shards.last_mut() {
            last.push((name, t));
        }
    }
    let n = shards.len();
    let mut written = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let fname = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        };
        let p = dir.join(&fname);
        write_file_as(&p, shard, Some(kind))?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), fname.clone());
        }
        written.push(p);
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let p = dir.join("model.safetensors.index.json");
        std::fs::write(&p, serde_json::to_string_pretty(&index)?)
            .with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

/// Create a fresh temporary directory next to `dest` (same filesystem, so the final rename is
/// atomic). Fails when `dest` already exists.
pub fn tmp_dir_for(dest: &Path) -> Result<PathBuf> {
    if dest.exists() {
        bail!(
            "{} already exists: checkpoints are written to a fresh directory",
            dest.display()
        );
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Make the finished temporary directory durable and rename it onto `dest` (atomic on one
/// filesystem).
pub fn commit_dir(tmp: &Path, dest: &Path) -> Result<()> {
    // Every file on disk before the rename makes the directory visible: a crash leaves either
    // no checkpoint under `dest` (the temporary one at most) or a whole one.
    for e in std::fs::read_dir(tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let p = e
            .with_context(|| format!("listing {}", tmp.display()))?
            .path();
        if p.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    std::fs::rename(tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that exercise rounding: ties, carries into the exponent, subnormals, ±0, ±inf,
    /// NaN, the largest finite f32, plus random bit patterns.
    fn tricky() -> Vec<f32> {
        let mut v: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            -3e-39,
            f32::from_bits(0x3F80_8000), // exact tie, even below
            f32::from_bits(0x3F81_8000), // exact tie, odd below
            f32::from_bits(0x3F80_7FFF),
            f32::from_bits(0x7F7F_FFFF),
            f32::from_bits(0x7F7F_8000),
        ];
        let mut x: u32 = 0x1234_5678;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(f32::from_bits(x));
        }
        v
    }

    #[test]
    fn check_safetensors_accepts_whole_files_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ok.safetensors");
        let t = Tensor::from_slice(&[1f32, 2., 3., 4.]).view([2, 2]);
        write_file(&p, &[("w".into(), t)]).unwrap();
        check_safetensors(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "text.safetensors",
                b"not a safetensors file".to_vec(),
                "does not fit",
            ),
            ("short.safetensors", vec![1, 2, 3], "shorter than"),
            (
                "cut.safetensors",
                bytes[..bytes.len() - 4].to_vec(),
                "truncated",
            ),
            (
                "json.safetensors",
                {
                    let mut b = 4u64.to_le_bytes().to_vec();
                    b.extend_from_slice(b"[1,]");
                    b
                },
                "not JSON",
            ),
        ];
        for (name, content, want) in cases {
            let q = dir.path().join(name);
            std::fs::write(&q, content).unwrap();
            let e = check_safetensors(&q).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn bf16_rounding_matches_libtorch_bit_for_bit() {
        let v = tricky();
        let t = Tensor::from_slice(&v).to_kind(Kind::BFloat16);
        let mut theirs = vec![0u8; 2 * v.len()];
        t.copy_data_u8(&mut theirs, v.len());
        for (i, &x) in v.iter().enumerate() {
            let want = u16::from_le_bytes([theirs[2 * i], theirs[2 * i + 1]]);
            let got = bf16_bits(x);
            if x.is_nan() {
                assert!(got & 0x7F80 == 0x7F80 && got & 0x7F != 0, "NaN stays NaN");
            } else {
                assert_eq!(got, want, "x = {x:e} ({:#010x})", x.to_bits());
            }
        }
    }

    #[test]
    fn streamed_bf16_file_equals_libtorch_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = tricky();
        v.retain(|x| !x.is_nan());
        v.truncate(v.len() / 8 * 8);
        let flat = Tensor::from_slice(&v);
        let big = flat.view([-1, 8]);
        let odd = flat.narrow(0, 1, 15).view([3, 5]); // a view at a storage offset
        let ints = Tensor::from_slice(&[1i64, 2, 3]);
        let tensors = vec![
            ("a".to_string(), big.shallow_clone()),
            ("b".to_string(), odd.shallow_clone()),
            ("c".to_string(), ints.shallow_clone()),
        ];
        let p = dir.path().join("x.safetensors");
        write_file_as(&p, &tensors, Some(Kind::BFloat16)).unwrap();
        let back = read_file(&p).unwrap();
        assert_eq!(back.len(), 3);
        for (name, orig) in &tensors {
            let got = &back
                .iter()
                .find(|(b, _)| b == name)
                .expect("tensor written")
                .1;
            let want = if orig.is_floating_point() {
                orig.to_kind(Kind::BFloat16)
            } else {
                orig.shallow_clone()
            };
            assert_eq!(got.kind(), want.kind(), "{name}");
            assert_eq!(got.size(), want.size(), "{name}");
            assert!(
                got.equal(&want),
                "{name} differs from libtorch's conversion"
            );
        }
    }
}
