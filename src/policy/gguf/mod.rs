//! GGUF (llama.cpp's model format, versions 2 and 3) reader and the `cures convert gguf`
//! conversion of a llama GGUF into an HF safetensors directory.
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata KV count u64;
//! the KVs (key string, value type u32, value); the tensor infos (name string, n_dims u32,
//! n_dims × u64 dims in ggml order — `dims[0]` is the innermost, so the HF shape is the
//! reverse — ggml type u32, offset u64). Strings are a u64 length plus UTF-8 bytes. The data
//! section starts at the next multiple of `general.alignment` (default 32) after the header and
//! each tensor lies at data start + its offset.
//!
//! Every length read from the file is checked against the file size before anything is
//! allocated or read, so a corrupt or truncated file gives an error naming the file and the
//! problem, never a panic or a huge allocation.
//!
//! Dequantised types: F32, F16, BF16, Q4_0, Q4_1, Q8_0 (bit-exact with the `gguf` Python
//! package's `gguf.quants.dequantize`).

mod convert;
mod quant;
#[cfg(test)]
mod tests;

pub use convert::{convert_llama_gguf, hf_tensor_name, unpermute_rotary, TOKENIZER_FILES};
use quant::type_label;
pub use quant::{bf16_to_f32, block_layout, dequantize, f16_to_f32, ggml_type, ggml_type_name, QK};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The GGUF magic, the first four bytes of every file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of metadata arrays accepted (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions of a ggml tensor.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// uint8 (type 0).
    U8(u8),
    /// int8 (type 1).
    I8(i8),
    /// uint16 (type 2).
    U16(u16),
    /// int16 (type 3).
    I16(i16),
    /// uint32 (type 4).
    U32(u32),
    /// int32 (type 5).
    I32(i32),
    /// float32 (type 6).
    F32(f32),
    /// bool (type 7).
    Bool(bool),
    /// string (type 8).
    Str(String),
    /// array (type 9).
    Array(Vec<Value>),
    /// uint64 (type 10).
    U64(u64),
    /// int64 (type 11).
    I64(i64),
    /// float64 (type 12).
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer (any non-negative integer type).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float (float32 exactly widened, float64, or an integer).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v as f64),
            Value::I16(v) => Some(v as f64),
            Value::I32(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order (`dims[0]` innermost).
    pub dims: Vec<u64>,
    /// ggml type number (see [`ggml_type`], [`ggml_type_name`]).
    pub ggml_type: u32,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }

    /// The row-major (HF / PyTorch) shape: the ggml dims reversed.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    /// Bytes of data, for a type this module dequantises (`None` otherwise or on overflow).
    pub fn n_bytes(&self) -> Option<u64> {
        let (be, bb) = block_layout(self.ggml_type)?;
        let n = self.numel()?;
        if n % be as u64 != 0 {
            return None;
        }
        (n / be as u64).checked_mul(bb as u64)
    }
}

/// A parsed GGUF header: metadata and tensor infos; tensor data is read on demand.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key → value.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section.
    pub data_start: u64,
    /// File size in bytes.
    pub file_len: u64,
}

/// A reader that tracks its position and refuses lengths beyond the end of the file.
struct Bounded<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Bounded<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.remaining() {
            bail!(
                "{what}: {n} bytes at offset {} run past the end of the {}-byte file (truncated or corrupt)",
                self.pos,
                self.len
            );
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .with_context(|| format!("{what}: reading {n} bytes at offset {}", self.pos))?;
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            bail!(
                "{what}: string length {n} at offset {} is beyond the end of the {}-byte file",
                self.pos - 8,
                self.len
            );
        }
        let b = self.bytes(n, what)?;
        Ok(String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("{what}: bool byte {b} is neither 0 nor 1"),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    bail!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}");
                }
                let et = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the rest of the file
                // is corrupt (and must not size an allocation).
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => bail!("{what}: unknown array element type {t}"),
                };
                if count.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    bail!(
                        "{what}: array of {count} elements of type {et} does not fit in the {} bytes left of the file",
                        self.remaining()
                    );
                }
                let mut v = Vec::with_capacity(count.min(1 << 16) as usize);
                for _ in 0..count {
                    v.push(self.value(et, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => bail!("{what}: unknown metadata value type {t}"),
        })
    }
}

impl GgufFile {
    /// Parse the header of `path` (metadata and tensor infos) and check that every tensor of a
    /// supported type lies inside the file. Errors name the file and what is wrong.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let mut r = Bounded {
            r: BufReader::with_capacity(1 << 16, f),
            pos: 0,
            len,
        };
        let magic: [u8; 4] = r.array("magic")?;
        if magic != GGUF_MAGIC {
            bail!("bad magic {magic:02x?} (expected \"GGUF\")");
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            if (2..=3).contains(&version.swap_bytes()) {
                bail!(
                    "big-endian GGUF (version {}) is not supported",
                    version.swap_bytes()
                );
            }
            bail!("unsupported GGUF version {version} (supported: 2, 3)");
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A KV takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at least
        // 8 + 4 + 4 + 8.
        if n_kv.checked_mul(13).is_none_or(|b| b > r.remaining()) {
            bail!("{n_kv} metadata entries cannot fit in a {len}-byte file");
        }
        if n_tensors.checked_mul(24).is_none_or(|b| b > r.remaining()) {
            bail!("{n_tensors} tensor infos cannot fit in a {len}-byte file");
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let what = format!("metadata `{key}`");
            let ty = r.u32(&what)?;
            let v = r.value(ty, &what, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor info {i} name"))?;
            let what = format!("tensor info `{name}`");
            let n_dims = r.u32(&what)?;
            if n_dims > MAX_DIMS {
                bail!("{what}: {n_dims} dimensions (at most {MAX_DIMS})");
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&what))
                .collect::<Result<Vec<_>>>()?;
            let ggml_type = r.u32(&what)?;
            let offset = r.u64(&what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 => a,
                _ => bail!("general.alignment {v:?} is not a positive integer"),
            },
        };
        let data_start = r
            .pos
            .checked_next_multiple_of(alignment)
            .context("data section offset overflows")?;
        let file = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            file_len: len,
        };
        for t in &file.tensors {
            if block_layout(t.ggml_type).is_some() {
                file.data_range(t)?;
            }
        }
        Ok(file)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .with_context(|| format!("{}: no metadata `{key}`", self.path.display()))?;
        v.as_u64().with_context(|| {
            format!(
                "{}: metadata `{key}` = {v:?} is not a non-negative integer",
                self.path.display()
            )
        })
    }

    /// A required numeric metadata value as f64 (float32 values widened exactly).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self
            .get(key)
            .with_context(|| format!("{}: no metadata `{key}`", self.path.display()))?;
        v.as_f64().with_context(|| {
            format!(
                "{}: metadata `{key}` = {v:?} is not a number",
                self.path.display()
            )
        })
    }

    /// A required string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self
            .get(key)
            .with_context(|| format!("{}: no metadata `{key}`", self.path.display()))?;
        v.as_str().with_context(|| {
            format!(
                "{}: metadata `{key}` = {v:?} is not a string",
                self.path.display()
            )
        })
    }

    /// Absolute `(start, bytes)` of a tensor's data, checked against the file size.
    fn data_range(&self, t: &TensorInfo) -> Result<(u64, u64)> {
        let label = type_label(t.ggml_type);
        if block_layout(t.ggml_type).is_none() {
            bail!(
                "tensor `{}` has unsupported ggml type {label} (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)",
                t.name
            );
        }
        let bytes = t.n_bytes().with_context(|| {
            format!(
                "tensor `{}`: dims {:?} of {label} are not a whole number of blocks (or overflow)",
                t.name, t.dims
            )
        })?;
        let start = self.data_start.checked_add(t.offset);
        match start.and_then(|s| s.checked_add(bytes)) {
            Some(end) if end <= self.file_len => Ok((self.data_start + t.offset, bytes)),
            _ => bail!(
                "tensor `{}` data ({bytes} bytes at data offset {}) runs past the end of the {}-byte file (truncated?)",
                t.name,
                t.offset,
                self.file_len
            ),
        }
    }

    /// Read and dequantise one tensor to f32, in ggml (= row-major of the reversed dims) order.
    pub fn read_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let ctx = || format!("{}: tensor `{}`", self.path.display(), t.name);
        let (start, bytes) = self.data_range(t).with_context(ctx)?;
        let n = t.numel().with_context(ctx)?;
        let mut f =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(start)).with_context(ctx)?;
        let mut buf = vec![0u8; bytes as usize];
        f.read_exact(&mut buf).with_context(ctx)?;
        dequantize(t.ggml_type, &buf, n as usize).with_context(ctx)
    }
}
