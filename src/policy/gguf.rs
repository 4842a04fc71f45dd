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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::Tensor;

use super::weights;

/// The GGUF magic, the first four bytes of every file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Elements per block of the 32-element quantisation types (Q4_0, Q4_1, Q8_0).
pub const QK: usize = 32;
/// Deepest nesting of metadata arrays accepted (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions of a ggml tensor.
const MAX_DIMS: u32 = 4;

/// ggml tensor type numbers of the types this module dequantises.
pub mod ggml_type {
    /// 32-bit float.
    pub const F32: u32 = 0;
    /// IEEE half.
    pub const F16: u32 = 1;
    /// Blocks of 32: f16 scale + 16 bytes of 4-bit values, x = (q − 8)·d.
    pub const Q4_0: u32 = 2;
    /// Blocks of 32: f16 scale, f16 minimum + 16 bytes of 4-bit values, x = q·d + m.
    pub const Q4_1: u32 = 3;
    /// Blocks of 32: f16 scale + 32 signed bytes, x = q·d.
    pub const Q8_0: u32 = 8;
    /// bfloat16.
    pub const BF16: u32 = 30;
}

/// The ggml name of a tensor type number, when known.
pub fn ggml_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// `(elements per block, bytes per block)` of a type this module can dequantise, else `None`.
pub fn block_layout(t: u32) -> Option<(usize, usize)> {
    Some(match t {
        ggml_type::F32 => (1, 4),
        ggml_type::F16 | ggml_type::BF16 => (1, 2),
        ggml_type::Q4_0 => (QK, 2 + QK / 2),
        ggml_type::Q4_1 => (QK, 4 + QK / 2),
        ggml_type::Q8_0 => (QK, 2 + QK),
        _ => return None,
    })
}

/// "Q4_K (type 12)" / "type 99" for error messages.
fn type_label(t: u32) -> String {
    match ggml_type_name(t) {
        Some(n) => format!("{n} (type {t})"),
        None => format!("type {t}"),
    }
}

/// IEEE half → f32, exact (subnormals, ±inf and NaN payloads included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the mantissa.
            let shift = man.leading_zeros() - 21; // bring the top set bit to bit 10
            let man = (man << shift) & 0x3FF;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1F, _) => sign | 0x7F80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 → f32 (the upper half of the f32 bits).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

fn le_u16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Dequantise `n` elements of ggml type `t` from `data` (exactly the bytes of those elements)
/// to f32. Errors on an unsupported type, an element count that is not a whole number of
/// blocks, or a byte count that does not match.
pub fn dequantize(t: u32, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let (be, bb) = block_layout(t)
        .with_context(|| format!("unsupported ggml tensor type {}", type_label(t)))?;
    if n % be != 0 {
        bail!(
            "{n} elements of {} are not a whole number of {be}-element blocks",
            type_label(t)
        );
    }
    let want = n / be * bb;
    if data.len() != want {
        bail!(
            "{n} elements of {} take {want} bytes, got {}",
            type_label(t),
            data.len()
        );
    }
    let mut out = Vec::with_capacity(n);
    match t {
        ggml_type::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        ggml_type::F16 => out.extend(data.chunks_exact(2).map(|c| f16_to_f32(le_u16(c, 0)))),
        ggml_type::BF16 => out.extend(data.chunks_exact(2).map(|c| bf16_to_f32(le_u16(c, 0)))),
        ggml_type::Q4_0 => {
            for b in data.chunks_exact(bb) {
                let d = f16_to_f32(le_u16(b, 0));
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        ggml_type::Q4_1 => {
            for b in data.chunks_exact(bb) {
                let d = f16_to_f32(le_u16(b, 0));
                let m = f16_to_f32(le_u16(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        ggml_type::Q8_0 => {
            for b in data.chunks_exact(bb) {
                let d = f16_to_f32(le_u16(b, 0));
                out.extend(b[2..].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        _ => unreachable!("block_layout covers exactly the types above"),
    }
    Ok(out)
}

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

/// GGUF tensor-name part → HF name part, for names outside the blocks.
fn top_level_name(part: &str) -> Option<&'static str> {
    Some(match part {
        "token_embd" => "model.embed_tokens",
        "output_norm" => "model.norm",
        "output" => "lm_head",
        _ => return None,
    })
}

/// GGUF per-layer tensor-name part → HF module under `model.layers.N`.
fn layer_name(part: &str) -> Option<&'static str> {
    Some(match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    })
}

/// The HF name of a llama GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_tensor_name(gguf_name: &str) -> Result<String> {
    let parts: Vec<&str> = gguf_name.split('.').collect();
    let unknown = || anyhow::anyhow!("unknown llama GGUF tensor `{gguf_name}`");
    match parts.as_slice() {
        ["blk", layer, module, suffix] if layer.parse::<u64>().is_ok() => Ok(format!(
            "model.layers.{layer}.{}.{suffix}",
            layer_name(module).ok_or_else(unknown)?
        )),
        [top, suffix] => Ok(format!(
            "{}.{suffix}",
            top_level_name(top).ok_or_else(unknown)?
        )),
        _ => Err(unknown()),
    }
}

/// Undo llama.cpp's rotary permutation of a q/k projection `w` of shape `[d, cols]` (row-major)
/// with `heads` heads: `w.reshape(h, d/h/2, 2, cols).swapaxes(1, 2).reshape(d, cols)`.
pub fn unpermute_rotary(w: &[f32], d: usize, cols: usize, heads: usize) -> Result<Vec<f32>> {
    if heads == 0 || d % (2 * heads) != 0 || w.len() != d * cols {
        bail!(
            "cannot undo the rotary permutation of a [{d}, {cols}] weight ({} values) with {heads} heads",
            w.len()
        );
    }
    let head = d / heads;
    let half = head / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..half {
                let src = h * head + b * 2 + a;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// `config.json` of the converted checkpoint (keys in this order, as the former Python
/// converter wrote them).
#[derive(serde::Serialize)]
struct HfLlamaConfig {
    architectures: [&'static str; 1],
    model_type: &'static str,
    vocab_size: i64,
    hidden_size: u64,
    intermediate_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    num_key_value_heads: u64,
    head_dim: u64,
    hidden_act: &'static str,
    max_position_embeddings: u64,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_scaling: Option<()>,
    attention_bias: bool,
    mlp_bias: bool,
    tie_word_embeddings: bool,
    bos_token_id: u64,
    eos_token_id: u64,
    pad_token_id: u64,
    torch_dtype: &'static str,
    initializer_range: f64,
}

/// Tokenizer files copied from the tokenizer directory when present.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
];

/// Convert a llama GGUF (`general.architecture == "llama"`) into an HF safetensors directory
/// `out`: dequantise every tensor to f32, map names to HF's, reshape to the reversed ggml dims,
/// undo llama.cpp's rotary permutation of q/k, write `model.safetensors` (embeddings, then per
/// layer input_layernorm, q, k, v, o, post_attention_layernorm, gate, up, down, then the final
/// norm and `lm_head` unless tied), `config.json`, `generation_config.json` (bos 1, eos/pad 2),
/// and copy the [`TOKENIZER_FILES`] found in `tokenizer_dir` (`tokenizer.json` is required).
/// Written into a temporary sibling directory and renamed onto `out`, which must not exist.
pub fn convert_llama_gguf(gguf: &Path, tokenizer_dir: &Path, out: &Path) -> Result<()> {
    if !tokenizer_dir.join("tokenizer.json").is_file() {
        bail!("{}: no tokenizer.json", tokenizer_dir.display());
    }
    let g = GgufFile::open(gguf)?;
    let arch = g.get_str("general.architecture")?;
    if arch != "llama" {
        bail!(
            "{}: general.architecture is `{arch}`; only `llama` GGUFs can be converted",
            gguf.display()
        );
    }
    let n_layers = g.get_u64("llama.block_count")?;
    let hidden = g.get_u64("llama.embedding_length")?;
    let ffn = g.get_u64("llama.feed_forward_length")?;
    let n_heads = g.get_u64("llama.attention.head_count")?;
    let n_kv = g.get_u64("llama.attention.head_count_kv")?;
    let theta = g.get_f64("llama.rope.freq_base")?;
    let eps = g.get_f64("llama.attention.layer_norm_rms_epsilon")?;
    if n_heads == 0 || n_kv == 0 {
        bail!("{}: zero attention heads", gguf.display());
    }
    if n_layers > g.tensors.len() as u64 {
        bail!(
            "{}: llama.block_count {n_layers} exceeds the {} tensors in the file",
            gguf.display(),
            g.tensors.len()
        );
    }

    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for t in &g.tensors {
        let hf = hf_tensor_name(&t.name).with_context(|| gguf.display().to_string())?;
        let mut data = g.read_f32(t)?;
        let shape = t.shape();
        let module = t.name.split('.').nth(2);
        if t.name.starts_with("blk.") && matches!(module, Some("attn_q" | "attn_k")) {
            let h = if module == Some("attn_q") {
                n_heads
            } else {
                n_kv
            };
            if shape.len() != 2 {
                bail!(
                    "{}: tensor `{}` has shape {shape:?}, expected 2-D",
                    gguf.display(),
                    t.name
                );
            }
            data = unpermute_rotary(&data, shape[0] as usize, shape[1] as usize, h as usize)
                .with_context(|| format!("{}: tensor `{}`", gguf.display(), t.name))?;
        }
        let tensor = Tensor::from_slice(&data).view(shape.as_slice());
        if tensors.insert(hf.clone(), tensor).is_some() {
            bail!("{}: tensor {hf} appears twice", gguf.display());
        }
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .and_then(|t| t.size().first().copied())
        .with_context(|| format!("{}: no token_embd.weight", gguf.display()))?;

    let mut order = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..n_layers {
        for k in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            order.push(format!("model.layers.{l}.{k}.weight"));
        }
    }
    order.push("model.norm.weight".into());
    if !tied {
        order.push("lm_head.weight".into());
    }
    let expected: std::collections::BTreeSet<&str> = order.iter().map(String::as_str).collect();
    let mismatch: Vec<&str> = expected
        .symmetric_difference(&tensors.keys().map(String::as_str).collect())
        .copied()
        .collect();
    if !mismatch.is_empty() {
        bail!(
            "{}: tensors do not match a {n_layers}-layer llama: missing or unexpected {mismatch:?}",
            gguf.display()
        );
    }
    let ordered: Vec<(String, Tensor)> = order
        .into_iter()
        .filter_map(|k| tensors.remove(&k).map(|t| (k, t)))
        .collect();

    let cfg = HfLlamaConfig {
        architectures: ["LlamaForCausalLM"],
        model_type: "llama",
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: n_layers,
        num_attention_heads: n_heads,
        num_key_value_heads: n_kv,
        head_dim: hidden / n_heads,
        hidden_act: "silu",
        max_position_embeddings: 8192,
        rms_norm_eps: eps,
        rope_theta: theta,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
        tie_word_embeddings: tied,
        bos_token_id: 1,
        eos_token_id: 2,
        pad_token_id: 2,
        torch_dtype: "float32",
        initializer_range: 0.02,
    };
    let gen = serde_json::json!({ "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2 });

    let tmp = weights::tmp_dir_for(out)?;
    let res = (|| -> Result<()> {
        weights::write_file(&tmp.join("model.safetensors"), &ordered)?;
        for (name, text) in [
            ("config.json", serde_json::to_string_pretty(&cfg)?),
            (
                "generation_config.json",
                serde_json::to_string_pretty(&gen)?,
            ),
        ] {
            let p = tmp.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        for f in TOKENIZER_FILES {
            let src = tokenizer_dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, tmp.join(f))
                    .with_context(|| format!("copying {}", src.display()))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "converting {} to {}",
            gguf.display(),
            out.display()
        )));
    }
    weights::commit_dir(&tmp, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bits(x: f32) -> u16 {
        // Only for test values exactly representable in f16 (normal range).
        let b = x.to_bits();
        if x == 0.0 {
            return ((b >> 16) & 0x8000) as u16;
        }
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xFF) as i32 - 127 + 15;
        assert!((1..31).contains(&exp) && b & 0x1FFF == 0, "{x} not an f16");
        sign | ((exp as u16) << 10) | ((b >> 13) & 0x3FF) as u16
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24)); // smallest subnormal
        assert_eq!(f16_to_f32(0x03FF), 1023.0 * 2f32.powi(-24)); // largest subnormal
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14)); // smallest normal
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xFC00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7E00).is_nan());
        // Every f16 agrees with libtorch's conversion.
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let bytes: Vec<u8> = all.iter().flat_map(|h| h.to_le_bytes()).collect();
        let t = Tensor::from_data_size(&bytes, &[all.len() as i64], tch::Kind::Half)
            .to_kind(tch::Kind::Float);
        let torch: Vec<f32> = Vec::try_from(&t).unwrap();
        for (h, want) in all.iter().zip(torch) {
            let got = f16_to_f32(*h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn dequantize_f32_f16_bf16() {
        let xs = [1.5f32, -0.25, 0.0, 1e-3];
        let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(ggml_type::F32, &b, 4).unwrap(), xs);
        let b: Vec<u8> = [0x3C00u16, 0xC000, 0x3800]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(dequantize(ggml_type::F16, &b, 3).unwrap(), [1.0, -2.0, 0.5]);
        let b: Vec<u8> = [0x3F80u16, 0xC040, 0x3E80]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(ggml_type::BF16, &b, 3).unwrap(),
            [1.0, -3.0, 0.25]
        );
    }

    /// 16 nibble bytes: byte j = low nibble `lo[j]`, high nibble `hi[j]`.
    fn nibbles(lo: impl Fn(usize) -> u8, hi: impl Fn(usize) -> u8) -> Vec<u8> {
        (0..16).map(|j| lo(j) | (hi(j) << 4)).collect()
    }

    #[test]
    fn dequantize_q4_0_nibble_order() {
        let mut b = f16_bits(0.5).to_le_bytes().to_vec();
        b.extend(nibbles(|j| j as u8, |j| 15 - j as u8));
        let x = dequantize(ggml_type::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], (j as f32 - 8.0) * 0.5, "low nibble of byte {j}");
            assert_eq!(x[j + 16], (7.0 - j as f32) * 0.5, "high nibble of byte {j}");
        }
        // Two blocks with different scales.
        let mut b2 = b.clone();
        b2.extend(f16_bits(-2.0).to_le_bytes());
        b2.extend(nibbles(|_| 8, |_| 9));
        let x2 = dequantize(ggml_type::Q4_0, &b2, 64).unwrap();
        assert_eq!(&x2[..32], &x[..]);
        assert!(x2[32..48].iter().all(|&v| v == 0.0));
        assert!(x2[48..].iter().all(|&v| v == -2.0));
    }

    #[test]
    fn dequantize_q4_1() {
        let mut b = f16_bits(0.25).to_le_bytes().to_vec();
        b.extend(f16_bits(-1.0).to_le_bytes());
        b.extend(nibbles(|j| j as u8, |j| (j as u8 + 3) % 16));
        let x = dequantize(ggml_type::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], j as f32 * 0.25 - 1.0);
            assert_eq!(x[j + 16], ((j + 3) % 16) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn dequantize_q8_0() {
        let mut b = f16_bits(0.125).to_le_bytes().to_vec();
        let qs: Vec<i8> = (0..32).map(|j| (j as i8 - 16) * 8).collect();
        b.extend(qs.iter().map(|&q| q as u8));
        let x = dequantize(ggml_type::Q8_0, &b, 32).unwrap();
        for j in 0..32 {
            assert_eq!(x[j], qs[j] as f32 * 0.125);
        }
        assert_eq!(x[0], -16.0);
        assert_eq!(x[31], 15.0);
    }

    #[test]
    fn dequantize_rejects_bad_sizes_and_types() {
        assert!(dequantize(ggml_type::Q4_0, &[0; 18], 31).is_err());
        assert!(dequantize(ggml_type::Q4_0, &[0; 17], 32).is_err());
        assert!(dequantize(ggml_type::F32, &[0; 7], 2).is_err());
        let e = dequantize(12, &[0; 144], 256).unwrap_err().to_string();
        assert!(e.contains("Q4_K (type 12)"), "{e}");
        let e = dequantize(99, &[], 0).unwrap_err().to_string();
        assert!(e.contains("type 99"), "{e}");
    }

    #[test]
    fn rotary_unpermutation_matches_reshape_swapaxes() {
        // d = 8 rows, 2 heads, 3 columns: compare with tch's reshape/transpose.
        let (d, cols, h) = (8usize, 3usize, 2usize);
        let w: Vec<f32> = (0..d * cols).map(|v| v as f32).collect();
        let got = unpermute_rotary(&w, d, cols, h).unwrap();
        let t = Tensor::from_slice(&w)
            .view([h as i64, (d / h / 2) as i64, 2, cols as i64])
            .transpose(1, 2)
            .contiguous()
            .view([-1]);
        let want: Vec<f32> = Vec::try_from(&t).unwrap();
        assert_eq!(got, want);
        assert!(unpermute_rotary(&w, d, cols, 3).is_err());
    }

    #[test]
    fn hf_names() {
        assert_eq!(
            hf_tensor_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_tensor_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_tensor_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_tensor_name("blk.0.rope_freqs.weight").is_err());
        assert!(hf_tensor_name("rope_freqs").is_err());
    }

    /// A GGUF byte builder.
    struct Builder(Vec<u8>);
    impl Builder {
        fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
            let mut b = b"GGUF".to_vec();
            b.extend(version.to_le_bytes());
            b.extend(n_tensors.to_le_bytes());
            b.extend(n_kv.to_le_bytes());
            Self(b)
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.extend((s.len() as u64).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
    }

    /// A small valid file: metadata of several types, a Q8_0 [32, 2] tensor and an F32 [3].
    fn sample() -> Vec<u8> {
        let mut b = Builder::new(3, 2, 5);
        b.str("general.architecture").u32(8).str("llama");
        b.str("general.alignment").u32(4).u32(64);
        b.str("x.f32").u32(6).u32(1.5f32.to_bits());
        b.str("x.bool").u32(7).0.push(1);
        b.str("x.arr").u32(9).u32(8).u64(2).str("a").str("bc");
        // Tensor infos: ggml dims [32, 2] → HF shape [2, 32].
        b.str("q").u32(2).u64(32).u64(2).u32(ggml_type::Q8_0).u64(0);
        b.str("f").u32(1).u64(3).u32(ggml_type::F32).u64(2 * 34 + 4);
        let mut v = b.0;
        while v.len() % 64 != 0 {
            v.push(0);
        }
        for blk in 0..2u8 {
            v.extend(f16_bits(1.0).to_le_bytes());
            v.extend((0..32).map(|j| j + blk));
        }
        v.extend([0xAA; 4]); // padding to the next tensor's offset
        for x in [1.0f32, 2.0, 3.0] {
            v.extend(x.to_le_bytes());
        }
        v
    }

    fn write_tmp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    #[test]
    fn parses_a_small_file() {
        let (_d, p) = write_tmp(&sample());
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("general.alignment").unwrap(), 64);
        assert_eq!(g.get_f64("x.f32").unwrap(), 1.5);
        assert_eq!(g.get("x.bool"), Some(&Value::Bool(true)));
        assert_eq!(
            g.get("x.arr"),
            Some(&Value::Array(vec![
                Value::Str("a".into()),
                Value::Str("bc".into())
            ]))
        );
        assert_eq!(g.data_start % 64, 0);
        assert_eq!(g.tensors[0].shape(), vec![2, 32]);
        let q = g.read_f32(&g.tensors[0]).unwrap();
        assert_eq!(q.len(), 64);
        assert_eq!(q[0], 0.0);
        assert_eq!(q[33], 2.0);
        assert_eq!(g.read_f32(&g.tensors[1]).unwrap(), [1.0, 2.0, 3.0]);
        assert!(g.get_u64("x.f32").is_err());
        assert!(g.get_u64("missing").is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample();
        let (d, p) = write_tmp(&full);
        for n in 0..full.len() {
            std::fs::write(&p, &full[..n]).unwrap();
            let r = GgufFile::open(&p)
                .and_then(|g| g.tensors.iter().try_for_each(|t| g.read_f32(t).map(|_| ())));
            let e = format!("{:#}", r.expect_err(&format!("{n} bytes parsed")));
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
        drop(d);
    }

    #[test]
    fn corrupt_headers_give_errors() {
        let err = |bytes: &[u8]| {
            let (_d, p) = write_tmp(bytes);
            format!("{:#}", GgufFile::open(&p).unwrap_err())
        };
        let mut bad = sample();
        bad[..4].copy_from_slice(b"GGML");
        assert!(err(&bad).contains("bad magic"), "{}", err(&bad));
        let mut v1 = sample();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(err(&v1).contains("unsupported GGUF version 1"));
        let mut be = sample();
        be[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(err(&be).contains("big-endian"));
        // A huge string length (the first key's).
        let mut huge = sample();
        huge[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(err(&huge).contains("string length"), "{}", err(&huge));
        // Huge counts.
        let mut many = sample();
        many[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&many).contains("tensor infos cannot fit"));
        let mut b = Builder::new(3, 0, 1);
        b.str("a").u32(9).u32(4).u64(u64::MAX / 2);
        assert!(err(&b.0).contains("does not fit"));
        // Unknown value type.
        let mut b = Builder::new(3, 0, 1);
        b.str("a").u32(77).u32(0);
        assert!(err(&b.0).contains("unknown metadata value type 77"));
        // Tensor data beyond the end of the file.
        let mut b = Builder::new(3, 1, 0);
        b.str("t").u32(1).u64(8).u32(ggml_type::F32).u64(1 << 40);
        assert!(err(&b.0).contains("runs past the end"), "{}", err(&b.0));
        // Too many dims, overflowing element counts.
        let mut b = Builder::new(3, 1, 0);
        b.str("t").u32(9).u64(0).u64(0);
        assert!(err(&b.0).contains("9 dimensions"));
        let mut b = Builder::new(3, 1, 0);
        b.str("t")
            .u32(2)
            .u64(u64::MAX)
            .u64(4)
            .u32(ggml_type::F32)
            .u64(0);
        assert!(err(&b.0).contains("overflow"), "{}", err(&b.0));
    }

    #[test]
    fn unsupported_type_is_named_when_read() {
        let mut b = Builder::new(3, 1, 0);
        b.str("t").u32(1).u64(256).u32(12).u64(0);
        let (_d, p) = write_tmp(&b.0);
        let g = GgufFile::open(&p).unwrap();
        let e = format!("{:#}", g.read_f32(&g.tensors[0]).unwrap_err());
        assert!(e.contains("Q4_K (type 12)") && e.contains("`t`"), "{e}");
    }

    #[test]
    fn convert_refuses_other_architectures() {
        let mut b = Builder::new(3, 0, 1);
        b.str("general.architecture").u32(8).str("qwen2");
        let (d, p) = write_tmp(&b.0);
        let tok = d.path().join("tok");
        std::fs::create_dir(&tok).unwrap();
        std::fs::write(tok.join("tokenizer.json"), "{}").unwrap();
        let e = format!(
            "{:#}",
            convert_llama_gguf(&p, &tok, &d.path().join("out")).unwrap_err()
        );
        assert!(e.contains("`qwen2`"), "{e}");
        assert!(!d.path().join("out").exists());
    }
}
