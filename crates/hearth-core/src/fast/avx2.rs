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
use super::WINDOW;

/// Tokens sharing one pass over a row.
const TILE: usize = 4;

/// `kernels::Simd::rows` on AVX2.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and the lengths must be those `Simd::rows` checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows(w: Packed, first: usize, a: &Acts, out: &mut [f32]) {
    // The tiles' block scales (reused, not cleared: each tile writes what it reads).
    let mut sd = [[0f32; WINDOW]; TILE];
    if a.n == 1 {
        return rows_of_one_token(w, first, a, out, &mut sd);
    }
    // Tokens in groups whose codes fit in L1 together, each group past every row: a row is
    // then read once per group from L2, and each token's codes come from L1, not the whole
    // prompt's codes from L2 for every row (most of a prefill's stalls were those loads).
    let group = (L1_TOKEN_BYTES / a.cols.max(1) / TILE * TILE).max(TILE);
    for g0 in (0..a.n).step_by(group) {
        let g1 = (g0 + group).min(a.n);
        for (j, dst) in out.chunks_exact_mut(a.n).enumerate() {
            let r = first + j;
            let mut t = g0;
            while t < g1 {
                let tile = (g1 - t).min(TILE);
                let dst = &mut dst[t..t + tile];
                match tile {
                    4 => row_tile::<4>(w, r, a, t, dst, &mut sd),
                    3 => row_tile::<3>(w, r, a, t, dst, &mut sd),
                    2 => row_tile::<2>(w, r, a, t, dst, &mut sd),
                    _ => row_tile::<1>(w, r, a, t, dst, &mut sd),
                }
                t += tile;
            }
        }
    }
}

/// The bytes of token codes a prefill keeps in L1 at once (of a 32-48 KiB L1 data cache, leaving
/// room for the weight row, the scales and the stack).
const L1_TOKEN_BYTES: usize = 16 * 1024;

/// How far ahead of the weight codes being read a decode step asks for the next ones.
const PREFETCH: usize = 4096;

/// Row `r` times tokens `t0..t0 + T`. The blocks' combined scales are computed eight at a time
/// into a small buffer first (one broadcast per block and token then), and even and odd blocks
/// accumulate separately, so consecutive FMAs do not wait on each other.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_tile<const T: usize>(
    w: Packed,
    r: usize,
    a: &Acts,
    t0: usize,
    out: &mut [f32],
    sd: &mut [[f32; WINDOW]; TILE],
) {
    let x: [*const i8; T] = std::array::from_fn(|i| a.codes(t0 + i).as_ptr());
    let d: [&[f32]; T] = std::array::from_fn(|i| a.scales(t0 + i));
    let blocks = w.cols() / BLOCK;
    // The row's weight scales, and log2 of the blocks per scale.
    let (scales, shift) = match w {
        Packed::Q4 { scales, group, cols, .. } => {
            let gpr = cols / group;
            (&scales[r * gpr..(r + 1) * gpr], (group / BLOCK).trailing_zeros())
        }
        Packed::Q8 { scales, .. } => (&scales[r * blocks..(r + 1) * blocks], 0),
    };
    let ones = _mm256_set1_epi16(1);
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); T]; 2];
    // One block: its weights unpacked once, then each token's integer dot product, scaled.
    macro_rules! block {
        ($b:expr, $k:expr, $half:expr) => {{
            let (b, k) = ($b, $k);
            match w {
                Packed::Q4 { codes, cols, .. } => {
                    let c = _mm_loadu_si128(codes.as_ptr().add(r * cols / 2 + b * BLOCK / 2) as *const __m128i);
                    let wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(c), c), mask);
                    for i in 0..T {
                        let xv = _mm256_loadu_si256(x[i].add(b * BLOCK) as *const __m256i);
                        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                        let scale = _mm256_broadcast_ss(&sd[i][k]);
                        acc[$half][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[$half][i]);
                    }
                }
                Packed::Q8 { codes, cols, .. } => {
                    let wv = _mm256_loadu_si256(codes.as_ptr().add(r * cols + b * BLOCK) as *const __m256i);
                    let magnitude = _mm256_sign_epi8(wv, wv);
                    for i in 0..T {
                        let xv = _mm256_loadu_si256(x[i].add(b * BLOCK) as *const __m256i);
                        let signed = _mm256_sign_epi8(xv, wv);
                        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones);
                        let scale = _mm256_broadcast_ss(&sd[i][k]);
                        acc[$half][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[$half][i]);
                    }
                }
            }
        }};
    }
    walk_blocks!(
        blocks,
        WINDOW,
        |b0, len| {
            for i in 0..T {
                combined_scales(scales, shift, &d[i][b0..b0 + len], b0, &mut sd[i][..len]);
            }
        },
        block
    );
    for i in 0..T {
        out[i] = hsum(_mm256_add_ps(acc[0][i], acc[1][i]));
        if let Packed::Q4 { mins, group, cols, .. } = w {
            let gpr = cols / group;
            out[i] += min_term(&mins[r * gpr..(r + 1) * gpr], a.group_sums(t0 + i));
        }
    }
}

/// One token (a decode step): rows `TILE` at a time, so each of the token's blocks is loaded once
/// for `TILE` rows and the rows' sums are independent chains. A row's own overhead (its scales,
/// the min term, the horizontal sum) was most of a short row's time one row at a time: SmolLM2's
/// rows have 18 blocks. Each row's arithmetic is `row_tile::<1>`'s, in the same order (even and
/// odd blocks in their own sums, FMA, then the same reductions), so its results are bit for bit
/// the same: 8-bit activations turn a last-bit difference into a different code now and then,
/// which over a model moves logits by tenths, and the browser's engine is tested against these.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of_one_token(w: Packed, first: usize, a: &Acts, out: &mut [f32], sd: &mut [[f32; WINDOW]; TILE]) {
    let mut j = 0;
    while j + TILE <= out.len() {
        rows_for_token::<TILE>(w, first + j, a, &mut out[j..j + TILE], sd);
        j += TILE;
    }
    for j in j..out.len() {
        rows_for_token::<1>(w, first + j, a, &mut out[j..j + 1], sd);
    }
}

/// Rows `r0..r0 + R` times the one token of `a`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_for_token<const R: usize>(
    w: Packed,
    r0: usize,
    a: &Acts,
    out: &mut [f32],
    sd: &mut [[f32; WINDOW]; TILE],
) {
    let (x, d) = (a.codes(0).as_ptr(), a.scales(0));
    let blocks = w.cols() / BLOCK;
    let ones = _mm256_set1_epi16(1);
    let mask = _mm256_set1_epi8(0x0f);
    // Even blocks (of each window) in acc[0], odd ones in acc[1], as row_tile sums them.
    let mut acc = [[_mm256_setzero_ps(); R]; 2];
    let (per_group_shift, per_row) = match w {
        Packed::Q4 { group, cols, .. } => ((group / BLOCK).trailing_zeros(), cols / group),
        Packed::Q8 { .. } => (0, blocks),
    };
    // The rows' codes are one contiguous run, consumed at `step` bytes per block; the run
    // `PREFETCH` bytes further on (the next passes' rows) is asked for at the same pace. Without
    // it most of a decode step's time went to waiting on weight loads (a model is read once per
    // token, and the hardware's streams stop at every 4 KiB page and barely train on four short
    // interleaved rows: SmolLM2's q4 rows are 288 bytes); with it SmolLM2 decoded 1.25-1.35x
    // faster on one thread (README, 2026-12-03). 1 KiB ahead gained little, 16 KiB less than 4-8.
    let (run, step) = match w {
        Packed::Q4 { codes, cols, .. } => (codes.as_ptr().wrapping_add(r0 * cols / 2) as *const i8, R * BLOCK / 2),
        Packed::Q8 { codes, cols, .. } => (codes.as_ptr().wrapping_add(r0 * cols), R * BLOCK),
    };
    let ahead = run.wrapping_add(PREFETCH);
    // One block of every row: the token's codes loaded once.
    macro_rules! block {
        ($b:expr, $k:expr, $half:expr) => {{
            let (b, k) = ($b, $k);
            let mut line = 0;
            while line < step {
                // A hint: no fault past the end of the weights.
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(b * step + line));
                line += 64;
            }
            let xv = _mm256_loadu_si256(x.add(b * BLOCK) as *const __m256i);
            for i in 0..R {
                let sums = match w {
                    Packed::Q4 { codes, cols, .. } => {
                        let c =
                            _mm_loadu_si128(codes.as_ptr().add((r0 + i) * cols / 2 + b * BLOCK / 2) as *const __m128i);
                        let wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(c), c), mask);
                        _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones)
                    }
                    Packed::Q8 { codes, cols, .. } => {
                        let wv = _mm256_loadu_si256(codes.as_ptr().add((r0 + i) * cols + b * BLOCK) as *const __m256i);
                        // maddubs takes unsigned weights: the weight's sign moves onto the activation.
                        let (magnitude, signed) = (_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                        _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones)
                    }
                };
                let scale = _mm256_broadcast_ss(&sd[i][k]);
                acc[$half][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[$half][i]);
            }
        }};
    }
    let scales = match w {
        Packed::Q4 { scales, .. } | Packed::Q8 { scales, .. } => scales,
    };
    walk_blocks!(
        blocks,
        WINDOW,
        |b0, len| {
            for (i, sd) in sd.iter_mut().enumerate().take(R) {
                let s = &scales[(r0 + i) * per_row..(r0 + i + 1) * per_row];
                combined_scales(s, per_group_shift, &d[b0..b0 + len], b0, &mut sd[..len]);
            }
        },
        block
    );
    for i in 0..R {
        out[i] = hsum(_mm256_add_ps(acc[0][i], acc[1][i]));
        if let Packed::Q4 { mins, .. } = w {
            out[i] += min_term(&mins[(r0 + i) * per_row..(r0 + i + 1) * per_row], a.group_sums(0));
        }
    }
}

/// `out[k] = s[(first + k) >> shift] · d[k]`: each block's weight scale times its activation step.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn combined_scales(s: &[f16], shift: u32, d: &[f32], first: usize, out: &mut [f32]) {
    let mut k = 0;
    if shift == 0 {
        let s = &s[first..first + out.len()];
        while k + 8 <= out.len() {
            let sv = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(k) as *const __m128i));
            _mm256_storeu_ps(out.as_mut_ptr().add(k), _mm256_mul_ps(sv, _mm256_loadu_ps(d.as_ptr().add(k))));
            k += 8;
        }
    }
    for (k, o) in out.iter_mut().enumerate().skip(k) {
        *o = to_f32(s[(first + k) >> shift]) * d[k];
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
pub(super) unsafe fn to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}
