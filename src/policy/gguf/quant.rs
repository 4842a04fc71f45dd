//! ggml tensor types: names, block layouts, and dequantisation of F32, F16, BF16, Q4_0, Q4_1, Q8_0.

use anyhow::{bail, Context, Result};

/// Elements per block of the 32-element quantisation types (Q4_0, Q4_1, Q8_0).
pub const QK: usize = 32;

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
pub(super) fn type_label(t: u32) -> String {
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
