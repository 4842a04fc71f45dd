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

/// Write tensors (already in their final kind, any device) to one safetensors file with
/// `{"format": "pt"}` metadata, in the order given.
pub fn write_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype_str(t.kind()).with_context(|| format!("tensor {name}"))?,
                "shape": t.size(),
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
        cpu.push(t);
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
    let io = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    let mut buf = Vec::new();
    for ((name, _), t) in tensors.iter().zip(&cpu) {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        buf.resize(n, 0);
        t.f_copy_data_u8(&mut buf, t.numel())
            .with_context(|| format!("copying tensor {name} for {}", path.display()))?;
        w.write_all(&buf).map_err(io)?;
    }
    let f = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    f.sync_all().map_err(io)?;
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
        let t = if t.is_floating_point() {
            t.to_kind(kind)
        } else {
            t
        };
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
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
        write_file(&p, shard)?;
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

/// Rename the finished temporary directory onto `dest` (atomic on one filesystem).
pub fn commit_dir(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::rename(tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}
