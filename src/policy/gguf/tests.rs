//! Tests of the GGUF reader, dequantisation and conversion.

use super::*;
use tch::Tensor;

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
