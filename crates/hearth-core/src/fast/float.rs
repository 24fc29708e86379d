//! Products of float weights (f32 and f16: encoders such as BERT, and float checkpoints) on the fast
//! engine. Each weight row is decoded to f32 once (f32 rows are read in place) and multiplied with
//! several tokens per pass: four rows by three tokens with AVX2 and FMA where the CPU has them
//! (chosen at run time), four by two with SIMD128 in the browser's build, else the reference's dot
//! per row and token. Activations stay f32: unlike the integer kernels nothing is rounded to 8 bits,
//! so these products differ from the reference's only in the order (and fusing) of the sums.

use super::kernels::Simd;
use crate::quant::{Tensor, TensorData};

/// Rows per parallel job (a multiple of `ROWS`).
const BLOCK: usize = 16;
/// Weight rows the kernels take at once (the AVX2 kernel's loads of them are shared by `TOKENS`
/// tokens, and the tokens' loads by these rows).
const ROWS: usize = 4;
/// Tokens the AVX2 kernel takes at once: `ROWS` × `TOKENS` = 12 sums in vector registers (of
/// AVX2's 16), enough independent FMAs to cover their latency on both units.
#[cfg(target_arch = "x86_64")]
const TOKENS: usize = 3;

/// `out[t][r] = W[r] · x[t]` for the `n` rows of `x`, parallel over blocks of weight rows.
pub fn matmul(simd: Simd, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    debug_assert_eq!(x.len(), n * cols);
    debug_assert_eq!(out.len(), n * rows);
    // Each job writes its rows' sums `[row][token]`, transposed into `out` at the end.
    let mut by_row = vec![0f32; rows * n];
    let work = |(block, sums): (usize, &mut [f32])| {
        let mut decoded = vec![0f32; ROWS * cols];
        for (g, dst) in sums.chunks_mut(ROWS * n).enumerate() {
            let first = block * BLOCK + g * ROWS;
            let count = dst.len() / n;
            // f32 rows are read where they are; f16 rows decoded once for all the tokens.
            let group: [&[f32]; ROWS] = match &w.data {
                TensorData::F32(v) => std::array::from_fn(|i| {
                    let r = first + i.min(count - 1);
                    &v[r * cols..(r + 1) * cols]
                }),
                _ => {
                    for (i, d) in decoded.chunks_mut(cols).enumerate() {
                        w.dequantize_row(first + i.min(count - 1), d);
                    }
                    std::array::from_fn(|i| &decoded[i * cols..(i + 1) * cols])
                }
            };
            dots(simd, group, x, dst);
        }
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        if rows * cols * n >= super::PARALLEL_MIN_MACS {
            by_row.par_chunks_mut(BLOCK * n).enumerate().for_each(work);
        } else {
            by_row.chunks_mut(BLOCK * n).enumerate().for_each(work);
        }
    }
    #[cfg(not(feature = "parallel"))]
    by_row.chunks_mut(BLOCK * n).enumerate().for_each(work);
    for (r, sums) in by_row.chunks(n).enumerate() {
        for (t, s) in sums.iter().enumerate() {
            out[t * rows + r] = *s;
        }
    }
}

/// `dst[i][t] = rows[i] · x[t]` for the rows `dst` has room for (`[count][n]`; a group of fewer
/// than `ROWS` rows repeats its last) and every token `t` of `x` (`[n][cols]`).
fn dots(simd: Simd, rows: [&[f32]; ROWS], x: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 {
        // SAFETY: `Simd::Avx2` is only detected where the CPU has AVX2 and FMA.
        unsafe { dots_avx2(rows, x, dst) };
        return;
    }
    let _ = simd;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    dots_simd128(rows, x, dst);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let cols = rows[0].len();
        let n = x.len() / cols;
        for (row, d) in rows.iter().zip(dst.chunks_mut(n)) {
            for (t, s) in d.iter_mut().enumerate() {
                *s = crate::cpu::dot(row, &x[t * cols..(t + 1) * cols]);
            }
        }
    }
}

/// SIMD128 (the browser's build): the AVX2 kernel's loop with four-lane vectors and no FMA, two
/// tokens at a time (4 × 2 sums, of wasm's 16 vector registers as engines map them).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn dots_simd128(rows: [&[f32]; ROWS], x: &[f32], dst: &mut [f32]) {
    use std::arch::wasm32::*;
    const TOKENS: usize = 2;
    let cols = rows[0].len();
    let n = x.len() / cols;
    let count = dst.len() / n;
    let whole = cols / 4 * 4;
    // An unaligned load of four values (wasm's v128.load takes any address).
    let load = |v: &[f32], c: usize| -> v128 {
        let four: &[f32; 4] = v[c..c + 4].try_into().expect("four values");
        // SAFETY: `four` is 16 readable bytes.
        unsafe { v128_load(four.as_ptr() as *const v128) }
    };
    for t0 in (0..n).step_by(TOKENS) {
        let xs: [&[f32]; TOKENS] = std::array::from_fn(|j| {
            let t = (t0 + j).min(n - 1);
            &x[t * cols..(t + 1) * cols]
        });
        let mut sums = [[f32x4_splat(0.0); TOKENS]; ROWS];
        for c in (0..whole).step_by(4) {
            let v: [v128; TOKENS] = std::array::from_fn(|j| load(xs[j], c));
            for (i, row) in rows.iter().enumerate() {
                let r = load(row, c);
                for j in 0..TOKENS {
                    sums[i][j] = f32x4_add(sums[i][j], f32x4_mul(r, v[j]));
                }
            }
        }
        for (i, row) in rows.iter().enumerate().take(count) {
            for (j, xt) in xs.iter().enumerate().take(n - t0) {
                let s = sums[i][j];
                let lanes = f32x4_extract_lane::<0>(s)
                    + f32x4_extract_lane::<1>(s)
                    + f32x4_extract_lane::<2>(s)
                    + f32x4_extract_lane::<3>(s);
                let tail: f32 = row[whole..].iter().zip(&xt[whole..]).map(|(a, b)| a * b).sum();
                dst[i * n + t0 + j] = lanes + tail;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(rows: [&[f32]; ROWS], x: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let cols = rows[0].len();
    let n = x.len() / cols;
    let count = dst.len() / n;
    let whole = cols / 8 * 8;
    for t0 in (0..n).step_by(TOKENS) {
        // A last group of fewer than TOKENS tokens repeats its last (those sums are not stored).
        let xs: [&[f32]; TOKENS] = std::array::from_fn(|j| {
            let t = (t0 + j).min(n - 1);
            &x[t * cols..(t + 1) * cols]
        });
        let mut sums = [[_mm256_setzero_ps(); TOKENS]; ROWS];
        for c in (0..whole).step_by(8) {
            // In bounds: c + 8 <= whole <= cols, the length of every row and token.
            let v: [__m256; TOKENS] = std::array::from_fn(|j| _mm256_loadu_ps(xs[j].as_ptr().add(c)));
            for (i, row) in rows.iter().enumerate() {
                let r = _mm256_loadu_ps(row.as_ptr().add(c));
                for j in 0..TOKENS {
                    sums[i][j] = _mm256_fmadd_ps(r, v[j], sums[i][j]);
                }
            }
        }
        for (i, row) in rows.iter().enumerate().take(count) {
            for (j, xt) in xs.iter().enumerate().take(n - t0) {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), sums[i][j]);
                let tail = row[whole..].iter().zip(&xt[whole..]).fold(0f32, |s, (a, b)| a.mul_add(*b, s));
                dst[i * n + t0 + j] = lanes.iter().sum::<f32>() + tail;
            }
        }
    }
}
