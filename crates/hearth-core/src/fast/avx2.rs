//! AVX2 versions of the kernels in `kernels.rs`. A 32-value block is one 256-bit vector: q4 codes
//! are unpacked with a shift and a mask (low nibbles = even positions, high = odd, the order the
//! activations were quantized in), `maddubs` multiplies unsigned weights by signed activations
//! into pairs of i16 (at most 2 · 15 · 127, or 2 · 128 · 127 for q8 after moving the weight's
//! sign onto the activation: no saturation), `madd` with ones widens to eight i32 partial sums,
//! and one FMA scales them into f32 lanes. Tokens are taken four at a time so each weight block
//! is loaded and unpacked once for four tokens (prefill).

use std::arch::x86_64::*;

use half::f16;

use super::acts::{Acts, BLOCK};
use super::kernels::Packed;

/// Tokens sharing one pass over a row.
const TILE: usize = 4;

/// `kernels::Simd::rows` on AVX2.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and the lengths must be those `Simd::rows` checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows(w: Packed, first: usize, a: &Acts, out: &mut [f32]) {
    for (j, dst) in out.chunks_exact_mut(a.n).enumerate() {
        let r = first + j;
        let mut t = 0;
        while t < a.n {
            let tile = (a.n - t).min(TILE);
            let dst = &mut dst[t..t + tile];
            match tile {
                4 => row_tile::<4>(w, r, a, t, dst),
                3 => row_tile::<3>(w, r, a, t, dst),
                2 => row_tile::<2>(w, r, a, t, dst),
                _ => row_tile::<1>(w, r, a, t, dst),
            }
            t += tile;
        }
    }
}

/// Row `r` times tokens `t0..t0 + T`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_tile<const T: usize>(w: Packed, r: usize, a: &Acts, t0: usize, out: &mut [f32]) {
    let x: [&[i8]; T] = std::array::from_fn(|i| a.codes(t0 + i));
    let d: [&[f32]; T] = std::array::from_fn(|i| a.scales(t0 + i));
    let mut acc = [_mm256_setzero_ps(); T];
    let ones = _mm256_set1_epi16(1);
    match w {
        Packed::Q4 { codes, scales, mins, group, cols } => {
            let gpr = cols / group;
            let per_group = group / BLOCK;
            let codes = codes.as_ptr().add(r * cols / 2);
            let (scales, mins) = (&scales[r * gpr..(r + 1) * gpr], &mins[r * gpr..(r + 1) * gpr]);
            let mask = _mm256_set1_epi8(0x0f);
            for (g, s) in scales.iter().enumerate() {
                let s = to_f32(*s);
                for b in g * per_group..(g + 1) * per_group {
                    let c = _mm_loadu_si128(codes.add(b * BLOCK / 2) as *const __m128i);
                    let wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(c), c), mask);
                    for i in 0..T {
                        let xv = _mm256_loadu_si256(x[i].as_ptr().add(b * BLOCK) as *const __m256i);
                        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(s * d[i][b]), acc[i]);
                    }
                }
            }
            for i in 0..T {
                out[i] = hsum(acc[i]) + min_term(mins, a.group_sums(t0 + i));
            }
        }
        Packed::Q8 { codes, scales, cols } => {
            let codes = codes.as_ptr().add(r * cols);
            let scales = &scales[r * cols / BLOCK..(r + 1) * cols / BLOCK];
            for (b, s) in scales.iter().enumerate() {
                let s = to_f32(*s);
                let wv = _mm256_loadu_si256(codes.add(b * BLOCK) as *const __m256i);
                let magnitude = _mm256_sign_epi8(wv, wv);
                for i in 0..T {
                    let xv = _mm256_loadu_si256(x[i].as_ptr().add(b * BLOCK) as *const __m256i);
                    let signed = _mm256_sign_epi8(xv, wv);
                    let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(s * d[i][b]), acc[i]);
                }
            }
            for i in 0..T {
                out[i] = hsum(acc[i]);
            }
        }
    }
}

/// Σ_g m_g · Σx_g, eight groups per step.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn min_term(mins: &[f16], sums: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let whole = mins.len() / 8 * 8;
    for g in (0..whole).step_by(8) {
        let m = _mm256_cvtph_ps(_mm_loadu_si128(mins.as_ptr().add(g) as *const __m128i));
        acc = _mm256_fmadd_ps(m, _mm256_loadu_ps(sums.as_ptr().add(g)), acc);
    }
    let tail: f32 = mins[whole..].iter().zip(&sums[whole..]).map(|(m, s)| to_f32(*m) * s).sum();
    hsum(acc) + tail
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}
