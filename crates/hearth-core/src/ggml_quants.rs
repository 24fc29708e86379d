//! ggml's block formats, as llama.cpp stores them in GGUF files: decoding to f32, and the lossless
//! re-packing of Q4_0 / Q4_1 / Q8_0 into Hearth's `q4` / `q8`.
//!
//! The formulas follow ggml's reference `dequantize_row_*` functions; the test suite checks them
//! value for value against llama.cpp's own Python port (`gguf.quants`) on random blocks.

use half::f16;

use crate::error::{HearthError, Result};
use crate::gguf::GgmlType;
use crate::quant::{Q4Data, Q8Data, Tensor, TensorData, Q8_GROUP};

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

/// Decode `bytes` (whole blocks of `ty`) to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], tensor: &str) -> Result<Vec<f32>> {
    let (block, block_bytes) = ty.block_layout().ok_or_else(|| unsupported(tensor, ty))?;
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    if bytes.len() % block_bytes != 0 {
        return Err(HearthError::bad_file(
            format!("tensor `{tensor}`"),
            format!("{} bytes is not a whole number of {} blocks", bytes.len(), ty.name()),
        ));
    }
    let mut out = vec![0f32; bytes.len() / block_bytes * block];
    let blocks = bytes.chunks_exact(block_bytes).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0).to_f32()),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| dequant_q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| dequant_q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| dequant_q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| dequant_q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| dequant_q8_0(b, y)),
        GgmlType::Q4K => blocks.for_each(|(b, y)| dequant_q4_k(b, y)),
        GgmlType::Q5K => blocks.for_each(|(b, y)| dequant_q5_k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| dequant_q6_k(b, y)),
        _ => return Err(unsupported(tensor, ty)),
    }
    Ok(out)
}

fn unsupported(tensor: &str, ty: GgmlType) -> HearthError {
    HearthError::UnsupportedTensorType { tensor: tensor.to_string(), dtype: ty.name() }
}

// Q4_0: f16 d, 16 bytes of nibbles; byte j holds weight j (low) and j + 16 (high); w = (q - 8) * d.
fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    for j in 0..16 {
        y[j] = (f32::from(b[2 + j] & 0x0f) - 8.0) * d;
        y[j + 16] = (f32::from(b[2 + j] >> 4) - 8.0) * d;
    }
}

// Q4_1: f16 d, f16 m, 16 bytes of nibbles (as Q4_0); w = q * d + m.
fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    let m = f16_at(b, 2).to_f32();
    for j in 0..16 {
        y[j] = f32::from(b[4 + j] & 0x0f) * d + m;
        y[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
    }
}

// Q5_0: f16 d, u32 of fifth bits, 16 bytes of nibbles; w = (q - 16) * d.
fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let hi0 = ((qh >> j) << 4) & 0x10;
        let hi1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((u32::from(b[6 + j] & 0x0f) | hi0) as f32 - 16.0) * d;
        y[j + 16] = ((u32::from(b[6 + j] >> 4) | hi1) as f32 - 16.0) * d;
    }
}

// Q5_1: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; w = q * d + m.
fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    let m = f16_at(b, 2).to_f32();
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let hi0 = ((qh >> j) << 4) & 0x10;
        let hi1 = (qh >> (j + 12)) & 0x10;
        y[j] = (u32::from(b[8 + j] & 0x0f) | hi0) as f32 * d + m;
        y[j + 16] = (u32::from(b[8 + j] >> 4) | hi1) as f32 * d + m;
    }
}

// Q8_0: f16 d, 32 signed bytes; w = q * d.
fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    for j in 0..32 {
        y[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K super-block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

// Q4_K: 256 weights: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles.
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    let dmin = f16_at(b, 2).to_f32();
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, out)) in qs.chunks(32).zip(y.chunks_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        for l in 0..32 {
            out[l] = d1 * f32::from(q[l] & 0x0f) - m1;
            out[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

// Q5_K: as Q4_K plus 32 bytes holding each weight's fifth bit.
fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    let dmin = f16_at(b, 2).to_f32();
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, (q, out)) in qs.chunks(32).zip(y.chunks_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
            let h2 = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
            out[l] = d1 * (f32::from(q[l] & 0x0f) + h1) - m1;
            out[l + 32] = d2 * (f32::from(q[l] >> 4) + h2) - m2;
        }
    }
}

// Q6_K: 256 weights: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed 8-bit scales, f16 d.
fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208).to_f32();
    for half in 0..2 {
        let ql = &ql_all[64 * half..];
        let qh = &qh_all[32 * half..];
        let sc = &sc_all[8 * half..];
        let out = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            out[l] = d * s(0) * q1 as f32;
            out[l + 32] = d * s(2) * q2 as f32;
            out[l + 64] = d * s(4) * q3 as f32;
            out[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

/// Re-pack GGUF Q4_0 / Q4_1 blocks into `q4` (group 32) without changing a single decoded value:
/// Q4_1 is `q * d + m` already; Q4_0's `(q - 8) * d` equals `q * d + (-8 * d)` exactly in f32, because
/// `q * d` and `8 * d` are exact (at most 15 significant bits) and so is their difference. (The one
/// bit that can differ is the sign of zero: for `d < 0`, `(8 - 8) * d` is -0.0 and `8d - 8d` is +0.0.)
pub fn q4_from_ggml(ty: GgmlType, bytes: &[u8], shape: Vec<usize>, tensor: &str) -> Result<Tensor> {
    let (block_bytes, header) = match ty {
        GgmlType::Q4_0 => (18, 2),
        GgmlType::Q4_1 => (20, 4),
        _ => return Err(unsupported(tensor, ty)),
    };
    let n_blocks = bytes.len() / block_bytes;
    let mut codes = Vec::with_capacity(n_blocks * 16);
    let mut scales = Vec::with_capacity(n_blocks);
    let mut mins = Vec::with_capacity(n_blocks);
    for b in bytes.chunks_exact(block_bytes) {
        let d = f16_at(b, 0);
        let min = if ty == GgmlType::Q4_0 {
            let m = f16::from_f32(-8.0 * d.to_f32());
            if m.is_infinite() && d.is_finite() {
                return Err(HearthError::bad_file(
                    format!("tensor `{tensor}`"),
                    format!("Q4_0 scale {d} is too large to re-pack losslessly (|8 * d| exceeds f16)"),
                ));
            }
            m
        } else {
            f16_at(b, 2)
        };
        scales.push(d);
        mins.push(min);
        // ggml: byte j = weight j (low nibble) | weight j+16 (high nibble). Hearth: sequential nibbles.
        let q = &b[header..header + 16];
        let nib = |k: usize| if k < 16 { q[k] & 0x0f } else { q[k - 16] >> 4 };
        codes.extend((0..16).map(|k| nib(2 * k) | (nib(2 * k + 1) << 4)));
    }
    Ok(Tensor { shape, data: TensorData::Q4(Q4Data { group: 32, codes, scales, mins }) })
}

/// Re-pack GGUF Q8_0 blocks into `q8`: the same codes and scales, split into two arrays.
pub fn q8_from_ggml(bytes: &[u8], shape: Vec<usize>) -> Tensor {
    let n_blocks = bytes.len() / 34;
    let mut codes = Vec::with_capacity(n_blocks * Q8_GROUP);
    let mut scales = Vec::with_capacity(n_blocks);
    for b in bytes.chunks_exact(34) {
        scales.push(f16_at(b, 0));
        codes.extend(b[2..34].iter().map(|&c| c as i8));
    }
    Tensor { shape, data: TensorData::Q8(Q8Data { codes, scales }) }
}

/// Re-pack GGUF Q5_0 blocks into `q8` without changing a decoded value: `(q - 16) * d` with
/// `q - 16` in -16..=15 is a q8 code times the same f16 scale.
pub fn q8_from_q5_0(bytes: &[u8], shape: Vec<usize>) -> Tensor {
    let n_blocks = bytes.len() / 22;
    let mut codes = Vec::with_capacity(n_blocks * Q8_GROUP);
    let mut scales = Vec::with_capacity(n_blocks);
    for b in bytes.chunks_exact(22) {
        scales.push(f16_at(b, 0));
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        // Weight j < 16: low nibble of byte j, fifth bit qh bit j; weight j + 16: high nibble, bit j + 16.
        let q = |j: usize| -> i8 {
            let (nibble, bit) = if j < 16 { (b[6 + j] & 0x0f, qh >> j) } else { (b[6 + j - 16] >> 4, qh >> j) };
            (i16::from(nibble | (((bit & 1) as u8) << 4)) - 16) as i8
        };
        codes.extend((0..32).map(q));
    }
    Tensor { shape, data: TensorData::Q8(Q8Data { codes, scales }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, block_bytes: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut out: Vec<u8> = (0..n * block_bytes)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (s >> 56) as u8
            })
            .collect();
        // Keep the f16 scales finite and modest so decoded values are comparable.
        for b in out.chunks_mut(block_bytes) {
            b[0] = 0x66;
            b[1] = 0x2e;
        }
        out
    }

    #[test]
    fn q4_repacking_is_bit_exact() {
        for (ty, bb) in [(GgmlType::Q4_0, 18), (GgmlType::Q4_1, 20)] {
            let raw = blocks(8, bb, 3);
            let expected = dequantize(ty, &raw, "t").unwrap();
            let t = q4_from_ggml(ty, &raw, vec![2, 128], "t").unwrap();
            let got = t.to_f32();
            for (a, b) in expected.iter().zip(&got) {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty:?}");
            }
        }
    }

    #[test]
    fn q5_0_to_q8_repacking_is_bit_exact() {
        let raw = blocks(6, 22, 7);
        let expected = dequantize(GgmlType::Q5_0, &raw, "t").unwrap();
        let got = q8_from_q5_0(&raw, vec![3, 64]).to_f32();
        assert_eq!(
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn q8_repacking_is_bit_exact() {
        let raw = blocks(6, 34, 5);
        let expected = dequantize(GgmlType::Q8_0, &raw, "t").unwrap();
        let got = q8_from_ggml(&raw, vec![3, 64]).to_f32();
        assert_eq!(
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
