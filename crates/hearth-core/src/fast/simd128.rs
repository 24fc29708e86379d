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
    // Widened once here rather than per block and weight row: the activations are a few KiB,
    // the rows many times that.
    let x16: Vec<i16> = a.codes.iter().map(|&c| i16::from(c)).collect();
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
            let r = r0 + j;
            let row = Row {
                scales: &ws[j * per_row..(j + 1) * per_row],
                shift,
                mins: if mins.is_empty() { &[] } else { &ms[j * per_row..(j + 1) * per_row] },
                blocks,
            };
            match w {
                Packed::Q4 { codes, cols, .. } => {
                    tiles(&row, &Q4Codes(codes.as_ptr().add(r * cols / 2)), a, &x16, dst, &mut sd)
                }
                Packed::Q8 { codes, cols, .. } => {
                    tiles(&row, &Q8Codes(codes.as_ptr().add(r * cols)), a, &x16, dst, &mut sd)
                }
            }
        }
    }
}

/// One weight row's scales (and q4 mins; empty for q8), as f32.
struct Row<'a> {
    scales: &'a [f32],
    /// log2 of the blocks per scale.
    shift: u32,
    mins: &'a [f32],
    blocks: usize,
}

/// A weight row's codes, one block at a time as four i16x8 vectors in the activations' order.
trait Unpack {
    /// # Safety
    /// `b` must be a block of the row.
    unsafe fn block(&self, b: usize) -> [v128; 4];
}

/// A q4 row: 16 bytes per block, even positions in the low nibbles.
struct Q4Codes(*const u8);

impl Unpack for Q4Codes {
    #[inline(always)]
    unsafe fn block(&self, b: usize) -> [v128; 4] {
        let c = v128_load(self.0.add(b * BLOCK / 2) as *const v128);
        // Widened to u16 first: then the high nibble is a plain 16-bit shift and the low one a
        // mask, with no 8-bit shift (which x86 lacks and emulates).
        let (lo, hi) = (u16x8_extend_low_u8x16(c), u16x8_extend_high_u8x16(c));
        let mask = u16x8_splat(0x0f);
        [v128_and(lo, mask), v128_and(hi, mask), u16x8_shr(lo, 4), u16x8_shr(hi, 4)]
    }
}

/// A q8 row: 32 signed bytes per block.
struct Q8Codes(*const i8);

impl Unpack for Q8Codes {
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
}

/// One row times every token, `TILE` tokens per pass.
#[inline(always)]
unsafe fn tiles<U: Unpack>(
    row: &Row,
    unpack: &U,
    a: &Acts,
    x16: &[i16],
    dst: &mut [f32],
    sd: &mut [[f32; WINDOW]; TILE],
) {
    let mut t = 0;
    while t < a.n {
        let tile = (a.n - t).min(TILE);
        let out = &mut dst[t..t + tile];
        match tile {
            4 => row_tile::<4, U>(row, unpack, a, x16, t, out, sd),
            3 => row_tile::<3, U>(row, unpack, a, x16, t, out, sd),
            2 => row_tile::<2, U>(row, unpack, a, x16, t, out, sd),
            _ => row_tile::<1, U>(row, unpack, a, x16, t, out, sd),
        }
        t += tile;
    }
}

/// The row times tokens `t0..t0 + T`. Even and odd blocks accumulate separately, so consecutive
/// additions do not wait on each other.
#[inline(always)]
unsafe fn row_tile<const T: usize, U: Unpack>(
    row: &Row,
    unpack: &U,
    a: &Acts,
    x16: &[i16],
    t0: usize,
    out: &mut [f32],
    sd: &mut [[f32; WINDOW]; TILE],
) {
    // Token i's block b is the four vectors at x[i] + 4b.
    let x: [*const v128; T] = std::array::from_fn(|i| x16.as_ptr().add((t0 + i) * a.cols) as *const v128);
    let d: [&[f32]; T] = std::array::from_fn(|i| a.scales(t0 + i));
    let mut acc = [[f32x4_splat(0.0); T]; 2];
    macro_rules! block {
        ($b:expr, $k:expr, $half:expr) => {{
            let (b, k) = ($b, $k);
            let [w0, w1, w2, w3] = unpack.block(b);
            for i in 0..T {
                let xp = x[i].add(4 * b);
                let s01 = i32x4_add(i32x4_dot_i16x8(w0, v128_load(xp)), i32x4_dot_i16x8(w1, v128_load(xp.add(1))));
                let s23 =
                    i32x4_add(i32x4_dot_i16x8(w2, v128_load(xp.add(2))), i32x4_dot_i16x8(w3, v128_load(xp.add(3))));
                let scaled = f32x4_mul(f32x4_convert_i32x4(i32x4_add(s01, s23)), f32x4_splat(sd[i][k]));
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
