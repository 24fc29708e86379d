//! Integer dot products for the encodings kept from GGUF files (`q5`, `q4k`, `q5k`, `q6k`; see
//! docs/FORMAT.md) with activations quantized in `Layout::Q4 { group: 32 }`: per 32-value block,
//! the codes of the even positions then the odd ones, which is the order of a block's 16 code
//! bytes (low nibbles even, high nibbles odd), plus each block's step `d` and stand-in `s` for Σx.
//! A block's integer sum Σ q·x is exact; it is scaled in f32 by the block's weight scale times `d`,
//! and weights with a minimum add `min · s`, as the q4 kernels do.
//!
//! One generic body, compiled twice on x86-64 (plainly, and with AVX2 enabled so the compiler
//! vectorizes the byte loops) and once in wasm (with SIMD128 where the module is built with it).
//! The f32 arithmetic is the same sequence in every build, so every build gives the same bits.

use half::f16;

use super::acts::{Acts, BLOCK};
use crate::quant::k4_sub_block_scale_min;

/// A kept matrix's arrays as stored.
#[derive(Clone, Copy)]
pub enum Kept<'a> {
    /// 20 code bytes per block (16 of low nibbles, a little-endian word of fifth bits), an f16
    /// scale and min per block: value `q · s + m`.
    Q5 { codes: &'a [u8], scales: &'a [f16], mins: &'a [f16] },
    /// 16 code bytes per block; a 16-byte header per 8 blocks: value `q · d·sc - dmin·m`.
    Q4k { codes: &'a [u8], headers: &'a [u8] },
    /// As q4k, plus a word of fifth bits per block.
    Q5k { codes: &'a [u8], headers: &'a [u8], high: &'a [u8] },
    /// 16 code bytes and two words of top bit pairs per block; a 20-byte header (16 signed
    /// scales, f16 d) per 8 blocks: value `d · sc · (q - 32)`, a scale per 16 values.
    Q6k { codes: &'a [u8], headers: &'a [u8], high: &'a [u8] },
}

/// Rows `first..` of `w` (`cols` values each) times every token of `a`, into `out` as
/// `[row][token]`; the caller has checked every length (`Simd::rows`). Each row is unpacked once
/// into signed bytes (in the activations' order) and f32 block scales, then met by every token.
pub fn rows(w: Kept, cols: usize, first: usize, a: &Acts, out: &mut [f32]) {
    let mut row = Row::new(cols);
    for (j, dst) in out.chunks_exact_mut(a.n).enumerate() {
        row.unpack(w, (first + j) * (cols / BLOCK));
        for (t, d) in dst.iter_mut().enumerate() {
            *d = row.dot(w, a, t);
        }
    }
}

/// The same with AVX2 byte dot products (`Row::dot_avx2`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_avx2(w: Kept, cols: usize, first: usize, a: &Acts, out: &mut [f32]) {
    if a.n == 1 {
        // One token (decode): each block unpacked in registers and used at once.
        return rows_one_token_avx2(w, cols / BLOCK, first, a, out);
    }
    let mut row = Row::new(cols);
    let six = matches!(w, Kept::Q6k { .. });
    for (j, dst) in out.chunks_exact_mut(a.n).enumerate() {
        row.unpack(w, (first + j) * (cols / BLOCK));
        for (i, d) in dst.chunks_mut(TOKENS).enumerate() {
            row.dot_avx2(six, a, TOKENS * i, d);
        }
    }
}

/// Tokens that share one pass over an unpacked row.
#[cfg(target_arch = "x86_64")]
const TOKENS: usize = 4;

/// One row, unpacked: per 32-value block, its codes as signed bytes in the activations' order
/// (the even values, then the odd ones), its scale (q6k: one per half, `scales[2b + h]`; else
/// `scales[2b]`) and its minimum.
struct Row {
    codes: Vec<i8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

impl Row {
    fn new(cols: usize) -> Row {
        let blocks = cols / BLOCK;
        Row { codes: vec![0i8; cols], scales: vec![0f32; 2 * blocks], mins: vec![0f32; blocks] }
    }

    /// Unpack the row whose first block is `first_block`.
    #[inline(always)]
    fn unpack(&mut self, w: Kept, first_block: usize) {
        for (j, out) in self.codes.chunks_exact_mut(BLOCK).enumerate() {
            let b = first_block + j;
            let (even, odd) = out.split_at_mut(BLOCK / 2);
            match w {
                Kept::Q5 { codes, scales, mins } => {
                    let c = &codes[20 * b..20 * b + 20];
                    let fifth = u32::from_le_bytes([c[16], c[17], c[18], c[19]]);
                    unpack_nibbles(&c[..16], fifth, even, odd);
                    (self.scales[2 * j], self.mins[j]) = (scales[b].to_f32(), mins[b].to_f32());
                }
                Kept::Q4k { codes, headers } => {
                    unpack_nibbles(&codes[16 * b..16 * b + 16], 0, even, odd);
                    (self.scales[2 * j], self.mins[j]) = k4_block(headers, b);
                }
                Kept::Q5k { codes, headers, high } => {
                    let fifth = u32::from_le_bytes([high[4 * b], high[4 * b + 1], high[4 * b + 2], high[4 * b + 3]]);
                    unpack_nibbles(&codes[16 * b..16 * b + 16], fifth, even, odd);
                    (self.scales[2 * j], self.mins[j]) = k4_block(headers, b);
                }
                Kept::Q6k { codes, headers, high } => {
                    let top = |w: usize| u32::from_le_bytes([high[w], high[w + 1], high[w + 2], high[w + 3]]);
                    let (h0, h1) = (top(8 * b), top(8 * b + 4));
                    let c = &codes[16 * b..16 * b + 16];
                    for k in 0..16 {
                        // Values 2k and 2k + 1: top bits in h0 for the first 16 values, h1 after.
                        let h = if k < 8 { h0 } else { h1 } >> (4 * (k % 8));
                        even[k] = ((c[k] & 0x0f) | (((h & 3) as u8) << 4)) as i8 - 32;
                        odd[k] = ((c[k] >> 4) | ((((h >> 2) & 3) as u8) << 4)) as i8 - 32;
                    }
                    let header = &headers[20 * (b / 8)..20 * (b / 8) + 20];
                    let d = f16::from_le_bytes([header[16], header[17]]).to_f32();
                    for h in 0..2 {
                        self.scales[2 * j + h] = d * f32::from(header[2 * (b % 8) + h] as i8);
                    }
                    self.mins[j] = 0.0;
                }
            }
        }
    }

    /// This row times token `t`: per block Σ q·x (exact), times the weights' and the activations'
    /// scales, plus the minimum times the activations' Σx stand-in.
    #[inline(always)]
    fn dot(&self, w: Kept, a: &Acts, t: usize) -> f32 {
        let (x, steps, sums) = (a.codes(t), a.scales(t), a.group_sums(t));
        let mut total = 0f32;
        let blocks = self.codes.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK));
        for (j, (q, x)) in blocks.enumerate() {
            total += if let Kept::Q6k { .. } = w {
                // Positions 0..8 and 16..24 hold values 0..16 (the first scale), the rest the second.
                let quarter = |i: usize| dot8(&q[8 * i..8 * i + 8], &x[8 * i..8 * i + 8]);
                let (first, second) = (quarter(0) + quarter(2), quarter(1) + quarter(3));
                (first as f32 * self.scales[2 * j] + second as f32 * self.scales[2 * j + 1]) * steps[j]
            } else {
                let sum = (0..4).map(|i| dot8(&q[8 * i..8 * i + 8], &x[8 * i..8 * i + 8])).sum::<i32>();
                sum as f32 * (self.scales[2 * j] * steps[j]) + self.mins[j] * sums[j]
            };
        }
        total
    }

    /// `dot` with AVX2 for tokens `t0..t0 + out.len()` (at most `TOKENS`), each block's codes
    /// loaded once for all of them: per block and token, the 32 byte products summed into eight
    /// i32 lanes (each of four consecutive positions: lanes 0, 1, 4 and 5 hold q6k's first half),
    /// scaled into f32 lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(&self, six: bool, a: &Acts, t0: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); TOKENS];
        // Past the last token, the last is computed again (not stored): a constant count keeps
        // the sums in registers.
        let token = |k: usize| t0 + k.min(out.len() - 1);
        let xs: [&[i8]; TOKENS] = std::array::from_fn(|k| a.codes(token(k)));
        let steps: [&[f32]; TOKENS] = std::array::from_fn(|k| a.scales(token(k)));
        // Block j indexes the row's codes and scales and every token's codes and steps alike.
        #[allow(clippy::needless_range_loop)]
        for j in 0..self.mins.len() {
            // SAFETY: `codes` and every token's codes hold 32 bytes per block (`Row::new`, `Simd::rows`).
            let q = _mm256_loadu_si256(self.codes.as_ptr().add(BLOCK * j) as *const __m256i);
            let magnitude = _mm256_sign_epi8(q, q);
            let scale = if six {
                let (s0, s1) = (self.scales[2 * j], self.scales[2 * j + 1]);
                _mm256_setr_ps(s0, s0, s1, s1, s0, s0, s1, s1)
            } else {
                _mm256_set1_ps(self.scales[2 * j])
            };
            for k in 0..TOKENS {
                let xv = _mm256_loadu_si256(xs[k].as_ptr().add(BLOCK * j) as *const __m256i);
                // |q| ≤ 32 times |x| ≤ 127, in pairs: no i16 saturation.
                let products = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xv, q));
                let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
                acc[k] = _mm256_fmadd_ps(lanes, _mm256_mul_ps(scale, _mm256_set1_ps(steps[k][j])), acc[k]);
            }
        }
        // The minimum terms apart, as one dot product per token (none for q6k).
        for (k, o) in out.iter_mut().enumerate() {
            let sums = a.group_sums(t0 + k);
            let mins: f32 = if six { 0.0 } else { self.mins.iter().zip(sums).map(|(m, s)| m * s).sum() };
            *o = super::avx2::hsum(acc[k]) + mins;
        }
    }
}

/// Rows `first..first + out.len()` (`blocks` blocks each) times the only token of `a`, four rows
/// per pass so that each activation block is loaded once for four rows and four independent sums
/// are in flight.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the lengths must be those `Simd::rows` checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_one_token_avx2(w: Kept, blocks: usize, first: usize, a: &Acts, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const ROWS: usize = 4;
    let (x, steps, sums) = (a.codes(0), a.scales(0), a.group_sums(0));
    let unpack = Unpack::new();
    let ones = _mm256_set1_epi16(1);
    for (i, dst) in out.chunks_mut(ROWS).enumerate() {
        let first_block = (first + ROWS * i) * blocks;
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut mins = [0f32; ROWS];
        for j in 0..blocks {
            // SAFETY: x holds 32 codes per block (`Simd::rows`).
            let xv = _mm256_loadu_si256(x.as_ptr().add(BLOCK * j) as *const __m256i);
            let d = _mm256_set1_ps(steps[j]);
            // A constant count keeps the sums in registers; past the last row, the last row is
            // computed again (and not stored).
            for k in 0..ROWS {
                let (q, scale, min) = unpack.block(w, first_block + k.min(dst.len() - 1) * blocks + j);
                // |q| ≤ 32 (q6k) or q ≤ 31 times |x| ≤ 127, in pairs: no i16 saturation.
                let products = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q));
                let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
                acc[k] = _mm256_fmadd_ps(lanes, _mm256_mul_ps(scale, d), acc[k]);
                mins[k] += min * sums[j];
            }
        }
        for (k, o) in dst.iter_mut().enumerate() {
            *o = super::avx2::hsum(acc[k]) + mins[k];
        }
    }
}

/// The constants that unpack a block's codes in AVX2 registers: the 16 code bytes' low and high
/// nibbles are the even and odd positions (the activations' order); fifth bits (bit v: value v)
/// are spread to bytes by a byte shuffle of their word and a per-lane bit test, q6k's top bit
/// pairs likewise from their 64 bits (value v's pair at bit 2v of h0 | h1 << 32).
#[cfg(target_arch = "x86_64")]
struct Unpack {
    fifth_byte: std::arch::x86_64::__m256i,
    fifth_bit: std::arch::x86_64::__m256i,
    pair_byte: std::arch::x86_64::__m256i,
    pair_lo: std::arch::x86_64::__m256i,
    pair_hi: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl Unpack {
    #[target_feature(enable = "avx2")]
    unsafe fn new() -> Unpack {
        use std::arch::x86_64::*;
        // Position p < 16 holds value 2p, p >= 16 value 2 (p - 16) + 1.
        let value = |p: usize| if p < 16 { 2 * p } else { 2 * (p - 16) + 1 };
        let bytes = |f: &dyn Fn(usize) -> u8| {
            let v: [u8; 32] = std::array::from_fn(f);
            _mm256_loadu_si256(v.as_ptr() as *const __m256i)
        };
        Unpack {
            fifth_byte: bytes(&|p| (value(p) / 8) as u8),
            fifth_bit: bytes(&|p| 1 << (value(p) % 8)),
            pair_byte: bytes(&|p| (2 * value(p) / 8) as u8),
            pair_lo: bytes(&|p| 1 << (2 * value(p) % 8)),
            pair_hi: bytes(&|p| 2 << (2 * value(p) % 8)),
        }
    }

    /// Block `b`'s codes (q6k's less 32) in the activations' order, its scale per i32 lane of a
    /// `madd` over them (lanes 0, 1, 4, 5: positions of q6k's first 16 values), and its minimum.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block(&self, w: Kept, b: usize) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256, f32) {
        use super::avx2::to_f32;
        use std::arch::x86_64::*;
        let word =
            |bytes: &[u8], at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let set = |v: __m256i, mask: __m256i, value: i8| {
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask), _mm256_set1_epi8(value))
        };
        let fifth =
            |word: u32| set(_mm256_shuffle_epi8(_mm256_set1_epi32(word as i32), self.fifth_byte), self.fifth_bit, 16);
        let codes = match w {
            Kept::Q5 { codes, .. } => &codes[20 * b..20 * b + 16],
            Kept::Q4k { codes, .. } | Kept::Q5k { codes, .. } | Kept::Q6k { codes, .. } => &codes[16 * b..16 * b + 16],
        };
        let c = _mm_loadu_si128(codes.as_ptr() as *const __m128i);
        let low4 = _mm_set1_epi8(0x0f);
        let nibbles = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(c), low4), _mm_and_si128(c, low4));
        match w {
            Kept::Q5 { codes, scales, mins } => {
                let q = _mm256_or_si256(nibbles, fifth(word(codes, 20 * b + 16)));
                (q, _mm256_set1_ps(to_f32(scales[b])), to_f32(mins[b]))
            }
            Kept::Q4k { headers, .. } => {
                let (scale, min) = k4_block(headers, b);
                (nibbles, _mm256_set1_ps(scale), min)
            }
            Kept::Q5k { headers, high, .. } => {
                let (scale, min) = k4_block(headers, b);
                (_mm256_or_si256(nibbles, fifth(word(high, 4 * b))), _mm256_set1_ps(scale), min)
            }
            Kept::Q6k { headers, high, .. } => {
                let bits = u64::from(word(high, 8 * b)) | u64::from(word(high, 8 * b + 4)) << 32;
                let spread = _mm256_shuffle_epi8(_mm256_set1_epi64x(bits as i64), self.pair_byte);
                let top = _mm256_or_si256(set(spread, self.pair_lo, 16), set(spread, self.pair_hi, 32));
                let q = _mm256_sub_epi8(_mm256_or_si256(nibbles, top), _mm256_set1_epi8(32));
                let header = &headers[20 * (b / 8)..20 * (b / 8) + 20];
                let d = to_f32(f16::from_le_bytes([header[16], header[17]]));
                let (s0, s1) = (d * f32::from(header[2 * (b % 8)] as i8), d * f32::from(header[2 * (b % 8) + 1] as i8));
                (q, _mm256_setr_ps(s0, s0, s1, s1, s0, s0, s1, s1), 0.0)
            }
        }
    }
}

#[inline(always)]
fn dot8(q: &[i8], x: &[i8]) -> i32 {
    q.iter().zip(x).map(|(&q, &x)| i32::from(q) * i32::from(x)).sum()
}

/// A block's 16 code bytes (byte k: value 2k in the low nibble, 2k + 1 in the high one) and fifth
/// bits (bit v: value v's) as the even values' and the odd values' codes.
#[inline(always)]
fn unpack_nibbles(c: &[u8], fifth: u32, even: &mut [i8], odd: &mut [i8]) {
    for k in 0..16 {
        even[k] = ((c[k] & 0x0f) | ((((fifth >> (2 * k)) & 1) as u8) << 4)) as i8;
        odd[k] = ((c[k] >> 4) | ((((fifth >> (2 * k + 1)) & 1) as u8) << 4)) as i8;
    }
}

/// Block `b`'s (d·sc, -dmin·m) from its super-block's q4k / q5k header: value = q·scale + min.
#[inline(always)]
fn k4_block(headers: &[u8], b: usize) -> (f32, f32) {
    let (scale, min) = k4_sub_block_scale_min(&headers[16 * (b / 8)..16 * (b / 8) + 16], b % 8);
    (scale, -min)
}
