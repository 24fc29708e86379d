//! SIMD128 versions of the kernels in `kernels.rs`, for wasm32 built with `+simd128` (every
//! browser with WebGPU has it; wasm cannot detect features at run time, so this is chosen when
//! the module is compiled). SIMD128 has no 8-bit multiply, so products are taken in 16 bits:
//! the activations are widened to i16 once per call, each weight block is unpacked once per
//! pass into four i16x8 vectors (q4: the low nibbles are the even positions and the high nibbles
//! the odd ones, the order the activations were quantized in; q8: sign-extended), and
//! `i32x4.dot_i16x8_s` (one `pmaddwd` on x86) multiplies and adds pairs into i32 lanes, which
//! cannot overflow (2 · 128 · 127 at most). A block's four i32 lanes are converted to f32 and
//! scaled (weight scale times activation step, computed for a window of blocks first). Tokens
//! are taken four at a time so each weight block is loaded and unpacked once for four tokens.
//! The f16 weight scales and mins are converted to f32 for 16 rows at a time (contiguous in the
//! package's arrays, so short rows cost no per-row remainders), four at a time with integer
//! operations (exact for every f16; there is no F16C here).
//!
//! With the `relaxed-simd` feature the module also has `rows_relaxed`, for browsers with relaxed
//! SIMD: q4 blocks are multiplied in 8 bits by `i16x8.relaxed_dot_i8x16_i7x16_s` (one `pmaddubsw`
//! on x86), which is exact here because its second operand, the 4-bit codes, is below 128, where the
//! instruction's result is defined, and its pairs of products cannot reach the i16 limits. The low
//! and high nibbles' pairs are added in i16 and widened once (`pmaddwd` by ones): four instructions
//! per block and token where the 16-bit kernel takes seven (the `i32x4..._add_s` form, twice, took
//! as many as the 16-bit kernel and was slower). Bytes are reordered (weights once per block,
//! activations once per call) so that each i32 lane sums the very products it sums in the 16-bit
//! kernel: the lanes' integers are equal, and so is every bit of the output. q8 weights span all 8
//! bits, which the instruction does not define, and keep the 16-bit kernel.

use core::arch::wasm32::*;

use half::f16;

use super::acts::{Acts, BLOCK};
use super::kernels::Packed;
use super::WINDOW;

/// Tokens sharing one pass over a row.
const TILE: usize = 4;

/// Rows whose scales and mins are converted together.
const ROWS: usize = 16;

/// `kernels::Simd::rows` with SIMD128.
///
/// # Safety
/// The lengths must be those `Simd::rows` checks (the weight codes and the activations are read
/// through raw pointers).
pub unsafe fn rows(w: Packed, first: usize, a: &Acts, out: &mut [f32]) {
    let x = widened(a);
    match w {
        Packed::Q4 { codes, cols, .. } => {
            rows_with(w, first, a, &x, out, |r| Q4Codes(codes.as_ptr().add(r * cols / 2)))
        }
        Packed::Q8 { codes, cols, .. } => rows_with(w, first, a, &x, out, |r| Q8Codes(codes.as_ptr().add(r * cols))),
    }
}

/// `kernels::Simd::rows` with relaxed SIMD's 8-bit dot products for q4 weights (q8 weights take
/// the SIMD128 kernel).
///
/// # Safety
/// As `rows`; and the module runs only where relaxed SIMD exists (a module using it does not
/// validate elsewhere, so this holds wherever it can be called).
#[cfg(feature = "relaxed-simd")]
#[target_feature(enable = "relaxed-simd")]
pub unsafe fn rows_relaxed(w: Packed, first: usize, a: &Acts, out: &mut [f32]) {
    match w {
        Packed::Q4 { codes, cols, .. } => {
            let x = reordered(a);
            rows_with(w, first, a, &x, out, |r| Q4Relaxed(codes.as_ptr().add(r * cols / 2)))
        }
        Packed::Q8 { .. } => rows(w, first, a, out),
    }
}

/// Each row (`row(r)` reads row `r`'s codes) times every token of `x`, the activations prepared
/// for that reader.
#[inline(always)]
unsafe fn rows_with<K: Kernel>(
    w: Packed,
    first: usize,
    a: &Acts,
    x: &[v128],
    out: &mut [f32],
    row: impl Fn(usize) -> K,
) {
    // Each tile token's combined scales for a window (reused, not cleared: each window writes
    // what it reads).
    let mut sd = [[0f32; WINDOW]; TILE];
    let blocks = w.cols() / BLOCK;
    let (scales, mins, per_row, shift) = match w {
        Packed::Q4 { scales, mins, group, cols, .. } => (scales, mins, cols / group, (group / BLOCK).trailing_zeros()),
        Packed::Q8 { scales, .. } => (scales, &[][..], blocks, 0),
    };
    let mut ws = vec![0f32; ROWS * per_row];
    let mut ms = vec![0f32; if mins.is_empty() { 0 } else { ROWS * per_row }];
    for (c, dst) in out.chunks_mut(ROWS * a.n).enumerate() {
        let (r0, count) = (first + c * ROWS, dst.len() / a.n);
        let span = r0 * per_row..(r0 + count) * per_row;
        to_f32s(&scales[span.clone()], &mut ws[..count * per_row]);
        if !mins.is_empty() {
            to_f32s(&mins[span], &mut ms[..count * per_row]);
        }
        for (j, dst) in dst.chunks_exact_mut(a.n).enumerate() {
            let scales = Row {
                scales: &ws[j * per_row..(j + 1) * per_row],
                shift,
                mins: if mins.is_empty() { &[] } else { &ms[j * per_row..(j + 1) * per_row] },
                blocks,
            };
            tiles(&scales, &row(r0 + j), a, x, dst, &mut sd);
        }
    }
}

/// The activations widened to i16 once per call rather than per block and weight row (they are
/// a few KiB, the rows many times that): four vectors per block.
fn widened(a: &Acts) -> Vec<v128> {
    let mut x = Vec::with_capacity(a.codes.len() / 8);
    for c in a.codes.chunks_exact(16) {
        // SAFETY: 16 bytes.
        let c = unsafe { v128_load(c.as_ptr() as *const v128) };
        x.extend([i16x8_extend_low_i8x16(c), i16x8_extend_high_i8x16(c)]);
    }
    x
}

/// Lane `j` of the 16-bit q4 kernel sums the products of a block's bytes 2j, 2j + 1, 8 + 2j and
/// 9 + 2j (low and high nibbles); relaxed SIMD's dot product sums bytes 4j..4j + 4 into lane `j`,
/// so both operands are put in this order first.
#[cfg(feature = "relaxed-simd")]
#[inline(always)]
fn lane_order(v: v128) -> v128 {
    i8x16_shuffle::<0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15>(v, v)
}

/// The activations in `lane_order`: per block, the even positions' codes then the odd ones', two
/// vectors.
#[cfg(feature = "relaxed-simd")]
fn reordered(a: &Acts) -> Vec<v128> {
    // SAFETY: 16 bytes each.
    a.codes.chunks_exact(16).map(|c| lane_order(unsafe { v128_load(c.as_ptr() as *const v128) })).collect()
}

/// One weight row's scales (and q4 mins; empty for q8), as f32.
struct Row<'a> {
    scales: &'a [f32],
    /// log2 of the blocks per scale.
    shift: u32,
    mins: &'a [f32],
    blocks: usize,
}

/// A weight row's codes, one block at a time, and the block's integer dot product with one
/// token's prepared activations.
trait Kernel {
    /// Vectors of prepared activations per block.
    const VECS: usize;
    /// A block as the kernel holds it for the tile's tokens.
    type Block: Copy;
    /// # Safety
    /// `b` must be a block of the row.
    unsafe fn block(&self, b: usize) -> Self::Block;
    /// The block's products with `x` (its `VECS` vectors), summed into four i32 lanes: lane `j`
    /// holds the products of the block's bytes 2j, 2j + 1, 8 + 2j and 9 + 2j in every kernel.
    /// # Safety
    /// `x` must point at `VECS` vectors.
    unsafe fn dot(w: Self::Block, x: *const v128) -> v128;
}

/// `i32x4.dot_i16x8_s` of four vectors each.
#[inline(always)]
unsafe fn dot16(w: [v128; 4], x: *const v128) -> v128 {
    let s01 = i32x4_add(i32x4_dot_i16x8(w[0], *x), i32x4_dot_i16x8(w[1], *x.add(1)));
    let s23 = i32x4_add(i32x4_dot_i16x8(w[2], *x.add(2)), i32x4_dot_i16x8(w[3], *x.add(3)));
    i32x4_add(s01, s23)
}

/// A q4 row: 16 bytes per block, even positions in the low nibbles.
struct Q4Codes(*const u8);

impl Kernel for Q4Codes {
    const VECS: usize = 4;
    type Block = [v128; 4];

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [v128; 4] {
        let c = v128_load(self.0.add(b * BLOCK / 2) as *const v128);
        // Widened to u16 first: then the high nibble is a plain 16-bit shift and the low one a
        // mask, with no 8-bit shift (which x86 lacks and emulates).
        let (lo, hi) = (u16x8_extend_low_u8x16(c), u16x8_extend_high_u8x16(c));
        let mask = u16x8_splat(0x0f);
        [v128_and(lo, mask), v128_and(hi, mask), u16x8_shr(lo, 4), u16x8_shr(hi, 4)]
    }

    #[inline(always)]
    unsafe fn dot(w: [v128; 4], x: *const v128) -> v128 {
        dot16(w, x)
    }
}

/// A q8 row: 32 signed bytes per block.
struct Q8Codes(*const i8);

impl Kernel for Q8Codes {
    const VECS: usize = 4;
    type Block = [v128; 4];

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [v128; 4] {
        let p = self.0.add(b * BLOCK) as *const v128;
        let (c0, c1) = (v128_load(p), v128_load(p.add(1)));
        [
            i16x8_extend_low_i8x16(c0),
            i16x8_extend_high_i8x16(c0),
            i16x8_extend_low_i8x16(c1),
            i16x8_extend_high_i8x16(c1),
        ]
    }

    #[inline(always)]
    unsafe fn dot(w: [v128; 4], x: *const v128) -> v128 {
        dot16(w, x)
    }
}

/// A q4 row for relaxed SIMD: a block's bytes in `lane_order`, split into low and high nibbles.
#[cfg(feature = "relaxed-simd")]
struct Q4Relaxed(*const u8);

#[cfg(feature = "relaxed-simd")]
impl Kernel for Q4Relaxed {
    const VECS: usize = 2;
    type Block = [v128; 2];

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [v128; 2] {
        let c = v128_load(self.0.add(b * BLOCK / 2) as *const v128);
        let c = lane_order(c);
        let mask = u8x16_splat(0x0f);
        [v128_and(c, mask), v128_and(u16x8_shr(c, 4), mask)]
    }

    #[inline(always)]
    unsafe fn dot(w: [v128; 2], x: *const v128) -> v128 {
        // The codes (0..=15) are the second operand, whose top bit must be clear. Pairs of
        // products in i16 (at most 2 · 127 · 15 each, 4 · 127 · 15 after the addition), widened
        // once per block rather than once per half.
        let low = i16x8_relaxed_dot_i8x16_i7x16(*x, w[0]);
        let high = i16x8_relaxed_dot_i8x16_i7x16(*x.add(1), w[1]);
        i32x4_extadd_pairwise_i16x8(i16x8_add(low, high))
    }
}

/// One row times every token, `TILE` tokens per pass.
#[inline(always)]
unsafe fn tiles<K: Kernel>(
    row: &Row,
    kernel: &K,
    a: &Acts,
    x: &[v128],
    dst: &mut [f32],
    sd: &mut [[f32; WINDOW]; TILE],
) {
    let mut t = 0;
    while t < a.n {
        let tile = (a.n - t).min(TILE);
        let out = &mut dst[t..t + tile];
        match tile {
            4 => row_tile::<4, K>(row, kernel, a, x, t, out, sd),
            3 => row_tile::<3, K>(row, kernel, a, x, t, out, sd),
            2 => row_tile::<2, K>(row, kernel, a, x, t, out, sd),
            _ => row_tile::<1, K>(row, kernel, a, x, t, out, sd),
        }
        t += tile;
    }
}

/// The row times tokens `t0..t0 + T`. Even and odd blocks accumulate separately, so consecutive
/// additions do not wait on each other.
#[inline(always)]
unsafe fn row_tile<const T: usize, K: Kernel>(
    row: &Row,
    kernel: &K,
    a: &Acts,
    x: &[v128],
    t0: usize,
    out: &mut [f32],
    sd: &mut [[f32; WINDOW]; TILE],
) {
    // Token i's block b is the `K::VECS` vectors at x[i] + VECS · b.
    let per_token = a.cols / BLOCK * K::VECS;
    let x: [*const v128; T] = std::array::from_fn(|i| x.as_ptr().add((t0 + i) * per_token));
    let d: [&[f32]; T] = std::array::from_fn(|i| a.scales(t0 + i));
    let mut acc = [[f32x4_splat(0.0); T]; 2];
    macro_rules! block {
        ($b:expr, $k:expr, $half:expr) => {{
            let (b, k) = ($b, $k);
            let w = kernel.block(b);
            for i in 0..T {
                let sums = K::dot(w, x[i].add(K::VECS * b));
                let scaled = f32x4_mul(f32x4_convert_i32x4(sums), f32x4_splat(sd[i][k]));
                acc[$half][i] = f32x4_add(acc[$half][i], scaled);
            }
        }};
    }
    walk_blocks!(
        row.blocks,
        WINDOW,
        |b0, len| {
            for i in 0..T {
                combined_scales(row.scales, row.shift, &d[i][b0..b0 + len], b0, &mut sd[i][..len]);
            }
        },
        block
    );
    for i in 0..T {
        out[i] = hsum(f32x4_add(acc[0][i], acc[1][i]));
        if !row.mins.is_empty() {
            out[i] += dot(row.mins, a.group_sums(t0 + i));
        }
    }
}

/// `out[k] = s[(first + k) >> shift] · d[k]`: each block's weight scale times its activation step.
#[inline(always)]
unsafe fn combined_scales(s: &[f32], shift: u32, d: &[f32], first: usize, out: &mut [f32]) {
    let mut k = 0;
    if shift == 0 {
        let s = &s[first..first + out.len()];
        while k + 4 <= out.len() {
            let v = f32x4_mul(v128_load(s.as_ptr().add(k) as *const v128), v128_load(d.as_ptr().add(k) as *const v128));
            v128_store(out.as_mut_ptr().add(k) as *mut v128, v);
            k += 4;
        }
    }
    for (k, o) in out.iter_mut().enumerate().skip(k) {
        *o = s[(first + k) >> shift] * d[k];
    }
}

/// Σ a_k b_k (a q4 row's Σ_g m_g · Σx_g), four at a time.
#[inline(always)]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let whole = a.len() / 4 * 4;
    let mut acc = f32x4_splat(0.0);
    for k in (0..whole).step_by(4) {
        let p = f32x4_mul(v128_load(a.as_ptr().add(k) as *const v128), v128_load(b.as_ptr().add(k) as *const v128));
        acc = f32x4_add(acc, p);
    }
    hsum(acc) + a[whole..].iter().zip(&b[whole..]).map(|(a, b)| a * b).sum::<f32>()
}

/// f16 → f32, four at a time: the exponent and mantissa bits moved into place and multiplied by
/// 2^112 (re-biasing the exponent; subnormal halves become normal floats, exactly), infinities
/// and NaNs given the all-ones exponent back, then the sign.
#[inline(always)]
unsafe fn to_f32s(h: &[f16], out: &mut [f32]) {
    let whole = h.len() / 4 * 4;
    let rebias = f32x4_splat(f32::from_bits((127 + 112) << 23));
    for k in (0..whole).step_by(4) {
        let bits = u32x4_extend_low_u16x8(v128_load64_zero(h.as_ptr().add(k) as *const u64));
        let sign = i32x4_shl(v128_and(bits, u32x4_splat(0x8000)), 16);
        let magnitude = f32x4_mul(i32x4_shl(v128_and(bits, u32x4_splat(0x7fff)), 13), rebias);
        let special = i32x4_eq(v128_and(bits, u32x4_splat(0x7c00)), u32x4_splat(0x7c00));
        let v = v128_or(v128_or(magnitude, v128_and(special, u32x4_splat(0x7f80_0000))), sign);
        v128_store(out.as_mut_ptr().add(k) as *mut v128, v);
    }
    // The last 1-3 through the same conversion (one rule for every scale).
    if whole < h.len() {
        let mut rest = [f16::ZERO; 4];
        let mut wide = [0f32; 4];
        rest[..h.len() - whole].copy_from_slice(&h[whole..]);
        to_f32s(&rest, &mut wide);
        out[whole..].copy_from_slice(&wide[..h.len() - whole]);
    }
}

#[inline(always)]
fn hsum(v: v128) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
        + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}
