//! ggml's block formats, as llama.cpp stores them in GGUF files: decoding to f32, and the lossless
//! re-packing of Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 into Hearth's `q4` / `q5` / `q8` and of Q4_K /
//! Q5_K / Q6_K into `q4k` / `q5k` / `q6k`.
//!
//! The formulas follow ggml's reference `dequantize_row_*` functions; the test suite checks them
//! value for value against llama.cpp's own Python port (`gguf.quants`) on random blocks.

use half::f16;

use crate::error::{HearthError, Result};
use crate::gguf::GgmlType;
use crate::quant::{k4_scale_min, KData, Q4Data, Q8Data, Tensor, TensorData, K_BLOCK, Q8_GROUP};

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

// Q4_K: 256 weights: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles.
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0).to_f32();
    let dmin = f16_at(b, 2).to_f32();
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, out)) in qs.chunks(32).zip(y.chunks_mut(64)).enumerate() {
        let (sc1, m1) = k4_scale_min(2 * chunk, scales);
        let (sc2, m2) = k4_scale_min(2 * chunk + 1, scales);
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
        let (sc1, m1) = k4_scale_min(2 * chunk, scales);
        let (sc2, m2) = k4_scale_min(2 * chunk + 1, scales);
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

/// Re-lay GGUF Q4_K, Q5_K or Q6_K blocks into `q4k` / `q5k` / `q6k` (docs/FORMAT.md), moving bits
/// and copying scales without computing anything, so every value decodes exactly as llama.cpp's.
/// The codes leave ggml's interleaved order for plain value order (value `i`'s low four bits in byte
/// `i / 2`, as `q4`), so a kernel reads the 32 values of a sub-block as 16 consecutive bytes.
pub fn k_from_ggml(ty: GgmlType, bytes: &[u8], shape: Vec<usize>, tensor: &str) -> Result<Tensor> {
    let block_bytes = match ty {
        GgmlType::Q4K => 144,
        GgmlType::Q5K => 176,
        GgmlType::Q6K => 210,
        _ => return Err(unsupported(tensor, ty)),
    };
    let cols = shape.last().copied().unwrap_or(0);
    let n: usize = shape.iter().product();
    if cols == 0 || cols % K_BLOCK != 0 || bytes.len() != n / K_BLOCK * block_bytes {
        return Err(HearthError::bad_file(
            format!("tensor `{tensor}`"),
            format!("{} bytes of {} do not hold shape {shape:?} in whole rows of blocks", bytes.len(), ty.name()),
        ));
    }
    let mut codes = vec![0u8; n / 2];
    // Value i (of the tensor) gets low nibble `low`.
    let mut put = |i: usize, low: u8| codes[i / 2] |= (low & 0x0f) << (4 * (i % 2));
    let mut k = KData { codes: Vec::new(), scales: Vec::new(), high: Vec::new() };
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let five = ty == GgmlType::Q5K;
            k.scales.reserve(n / K_BLOCK * 16);
            if five {
                k.high = vec![0u8; n / 8];
            }
            for (bi, b) in bytes.chunks_exact(block_bytes).enumerate() {
                k.scales.extend_from_slice(&b[..16]);
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[..0], &b[16..144]) };
                // ggml: byte l of 32-byte chunk c holds value 64c + l (low nibble) and 64c + 32 + l
                // (high nibble); Q5_K's fifth bit of value 32j + l is bit j of qh[l].
                for (c, q) in qs.chunks_exact(32).enumerate() {
                    for (l, &byte) in q.iter().enumerate() {
                        for (half, low) in [(0, byte & 0x0f), (1, byte >> 4)] {
                            let j = 2 * c + half;
                            let i = bi * K_BLOCK + 32 * j + l;
                            put(i, low);
                            if five {
                                k.high[i / 8] |= ((qh[l] >> j) & 1) << (i % 8);
                            }
                        }
                    }
                }
            }
        }
        _ => {
            k.scales.reserve(n / K_BLOCK * 20);
            k.high = vec![0u8; n / 4];
            for (bi, b) in bytes.chunks_exact(block_bytes).enumerate() {
                let (ql, qh) = (&b[..128], &b[128..192]);
                k.scales.extend_from_slice(&b[192..210]);
                k.scales.extend_from_slice(&[0, 0]);
                // ggml: in half h, byte l of qh holds the top two bits of values 128h + 32s + l for
                // s = 0..4 (bits 2s, 2s + 1); their low nibbles are ql[64h + l] (s = 0, 2: low,
                // high nibble) and ql[64h + 32 + l] (s = 1, 3).
                for h in 0..2 {
                    for l in 0..32 {
                        for s in 0..4 {
                            let byte = ql[64 * h + 32 * (s % 2) + l];
                            let low = if s < 2 { byte & 0x0f } else { byte >> 4 };
                            let i = bi * K_BLOCK + 128 * h + 32 * s + l;
                            put(i, low);
                            k.high[i / 4] |= ((qh[32 * h + l] >> (2 * s)) & 3) << (2 * (i % 4));
                        }
                    }
                }
            }
        }
    }
    k.codes = codes;
    let data = match ty {
        GgmlType::Q4K => TensorData::Q4k(k),
        GgmlType::Q5K => TensorData::Q5k(k),
        _ => TensorData::Q6k(k),
    };
    Ok(Tensor { shape, data })
}

/// A Q4_0 / Q5_0 block's `(q - offset) * d` as `q * d + min` (offset 8 or 16: `min = -offset * d`,
/// exact in f16 unless it overflows, which is refused); a Q4_1 / Q5_1 block's own `m`.
fn block_min(ty: GgmlType, b: &[u8], tensor: &str) -> Result<f16> {
    let offset = match ty {
        GgmlType::Q4_0 => 8.0,
        GgmlType::Q5_0 => 16.0,
        _ => return Ok(f16_at(b, 2)),
    };
    let d = f16_at(b, 0);
    let m = f16::from_f32(-offset * d.to_f32());
    if m.is_infinite() && d.is_finite() {
        return Err(HearthError::bad_file(
            format!("tensor `{tensor}`"),
            format!("{} scale {d} is too large to re-pack losslessly (|{offset} * d| exceeds f16)", ty.name()),
        ));
    }
    Ok(m)
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
        let min = block_min(ty, b, tensor)?;
        scales.push(d);
        mins.push(min);
        // ggml: byte j = weight j (low nibble) | weight j+16 (high nibble). Hearth: sequential nibbles.
        let q = &b[header..header + 16];
        let nib = |k: usize| if k < 16 { q[k] & 0x0f } else { q[k - 16] >> 4 };
        codes.extend((0..16).map(|k| nib(2 * k) | (nib(2 * k + 1) << 4)));
    }
    Ok(Tensor { shape, data: TensorData::Q4(Q4Data { group: 32, codes, scales, mins }) })
}

/// Re-pack GGUF Q5_0 / Q5_1 blocks into `q5` without changing a decoded value, as `q4_from_ggml`
/// does for Q4_0 / Q4_1: Q5_1 is `q * d + m`; Q5_0's `(q - 16) * d` equals `q * d + (-16 * d)`
/// exactly (at most 16 significant bits each), save the sign of a zero.
pub fn q5_from_ggml(ty: GgmlType, bytes: &[u8], shape: Vec<usize>, tensor: &str) -> Result<Tensor> {
    let header = match ty {
        GgmlType::Q5_0 => 2,
        GgmlType::Q5_1 => 4,
        _ => return Err(unsupported(tensor, ty)),
    };
    let block_bytes = header + 20;
    let n_blocks = bytes.len() / block_bytes;
    let mut codes = Vec::with_capacity(n_blocks * 20);
    let mut scales = Vec::with_capacity(n_blocks);
    let mut mins = Vec::with_capacity(n_blocks);
    for b in bytes.chunks_exact(block_bytes) {
        let d = f16_at(b, 0);
        let min = block_min(ty, b, tensor)?;
        scales.push(d);
        mins.push(min);
        // ggml: the fifth bits as a word (bit j = weight j), then byte j = weight j (low nibble) |
        // weight j+16 (high nibble). Hearth: sequential nibbles, then the same word.
        let q = &b[header + 4..header + 20];
        let nib = |k: usize| if k < 16 { q[k] & 0x0f } else { q[k - 16] >> 4 };
        codes.extend((0..16).map(|k| nib(2 * k) | (nib(2 * k + 1) << 4)));
        codes.extend_from_slice(&b[header..header + 4]);
    }
    Ok(Tensor { shape, data: TensorData::Q5(Q4Data { group: 32, codes, scales, mins }) })
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

    /// K-quant blocks whose f16 scales run over every finite kind: normal and subnormal, of both
    /// signs, and zero (Q6_K's d is often subnormal; a decoder that flushes it would differ).
    fn k_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let bb = ty.block_layout().map(|(_, b)| b as usize).unwrap_or(0);
        let mut raw = blocks(n, bb, seed);
        let scales: &[usize] = if ty == GgmlType::Q6K { &[208] } else { &[0, 2] };
        for (bi, b) in raw.chunks_mut(bb).enumerate() {
            for (k, &at) in scales.iter().enumerate() {
                let bits: u16 = match (bi + k) % 5 {
                    0 => 0x2e66,          // 0.1
                    1 => 0x0123,          // subnormal
                    2 => 0x8000 | 0x0301, // negative subnormal
                    3 => 0xa0f0,          // negative normal
                    _ => {
                        if k == 0 {
                            0
                        } else {
                            0x1400
                        }
                    } // zero, or 2^-10
                };
                b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
        }
        raw
    }

    #[test]
    fn k_quant_relayout_is_bit_exact_and_cuts_by_rows() {
        for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            // 3 rows of 512: 6 super-blocks, every scale kind in several sub-block positions.
            let raw = k_blocks(ty, 6, 11);
            let expected: Vec<u32> = dequantize(ty, &raw, "t").unwrap().iter().map(|v| v.to_bits()).collect();
            let t = k_from_ggml(ty, &raw, vec![3, 512], "t").unwrap();
            let got: Vec<u32> = t.to_f32().iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, expected, "{ty:?}");
            let middle: Vec<u32> = t.row_slice(1, 2).unwrap().to_f32().iter().map(|v| v.to_bits()).collect();
            assert_eq!(middle, expected[512..], "{ty:?} rows 1..3");
            let (bytes, parts) = t.to_bytes();
            let bb = ty.block_layout().map(|(_, b)| b).unwrap_or(0);
            let stored: u64 = parts.iter().map(|(_, r)| r.length).sum();
            // As large as the GGUF's blocks; Q6_K's headers take two bytes more per block.
            assert_eq!(stored, 6 * bb + if ty == GgmlType::Q6K { 12 } else { 0 }, "{ty:?}");
            assert_eq!(Tensor::from_bytes("t", vec![3, 512], t.dtype(), None, &bytes).unwrap(), t);
        }
    }

    #[test]
    fn k_quant_relayout_refuses_rows_that_are_not_whole_blocks() {
        let raw = k_blocks(GgmlType::Q4K, 3, 1);
        assert!(k_from_ggml(GgmlType::Q4K, &raw, vec![3, 256], "t").is_ok());
        assert!(k_from_ggml(GgmlType::Q4K, &raw, vec![2, 384], "t").is_err());
        assert!(k_from_ggml(GgmlType::Q4K, &raw[..300], vec![3, 256], "t").is_err());
        assert!(k_from_ggml(GgmlType::Q4_0, &raw, vec![3, 256], "t").is_err());
    }
}
