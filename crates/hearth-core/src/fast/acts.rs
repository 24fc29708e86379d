//! Activations quantized for the integer kernels exactly as llama.cpp's AVX2 code quantizes them
//! (Q8_0 blocks for q8 weights, Q8_1 for q4): per block of 32 values of a token's row, i8 codes
//! `q = round_ties_even(x · 127 / max|x|)`, the step `d = max|x| / 127` rounded to f16, and for q4
//! weights `s = d · Σq` rounded to f16, which stands for Σx in the `min · Σx` term (summed here per
//! weight group). With s, a q4 product is exactly Σ w·x̂ for the rounded x̂; an exact Σx would
//! instead weigh the rounding errors by w - min (all of one sign for q4's offset codes), which on
//! SmolLM2 moved logits four times further from the exact engine's. And the same rounding as
//! llama.cpp's default run makes the two part at the same near-ties.

use half::f16;

use crate::quant::Q8_GROUP;

/// Values per activation block (equal to the q8 weight group, and dividing every q4 group).
pub const BLOCK: usize = Q8_GROUP;

/// How a block's codes are ordered, to match the weights they meet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// Natural order, for q8 weights.
    Q8,
    /// Per block, the even positions then the odd ones: a q4 block's 16 bytes give the even codes
    /// in their low nibbles and the odd codes in their high nibbles, so the kernels unpack them
    /// without shuffles. `group` is the weights' group, for the sums of `x`.
    Q4 { group: usize },
}

/// `n` tokens of `cols` values each, quantized.
pub struct Acts {
    pub n: usize,
    pub cols: usize,
    /// `[n][cols]`, ordered by `layout`.
    pub codes: Vec<i8>,
    /// `[n][cols / BLOCK]`: each block's `d` (an f16 value).
    pub scales: Vec<f32>,
    /// `[n][cols / group]` for `Layout::Q4`: the sums of the blocks' `s`; empty for `Layout::Q8`.
    pub group_sums: Vec<f32>,
}

impl Acts {
    /// Quantizes `x` (`[n][cols]`, `cols` a multiple of `BLOCK` and of a q4 group).
    pub fn quantize(x: &[f32], n: usize, cols: usize, layout: Layout) -> Acts {
        debug_assert_eq!(x.len(), n * cols);
        debug_assert_eq!(cols % BLOCK, 0);
        let mut codes = vec![0i8; n * cols];
        let mut scales = vec![0f32; n * cols / BLOCK];
        let mut block_sums = vec![0f32; n * cols / BLOCK];
        let blocks = x.chunks_exact(BLOCK).zip(codes.chunks_exact_mut(BLOCK));
        for ((block, out), (d, s)) in blocks.zip(scales.iter_mut().zip(&mut block_sums)) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
            let mut sum = 0i32;
            for (j, &v) in block.iter().enumerate() {
                let at = match layout {
                    Layout::Q8 => j,
                    Layout::Q4 { .. } => (j % 2) * (BLOCK / 2) + j / 2,
                };
                // |v · inv| ≤ 127 up to rounding; `as` saturates (and maps NaN to 0).
                out[at] = round_ties_even(v * inv) as i8;
                sum += i32::from(out[at]);
            }
            let step = max / 127.0;
            *d = f16::from_f32(step).to_f32();
            *s = f16::from_f32(step * sum as f32).to_f32();
        }
        let group_sums = match layout {
            Layout::Q8 => Vec::new(),
            Layout::Q4 { group } => block_sums.chunks_exact(group / BLOCK).map(|g| g.iter().sum()).collect(),
        };
        Acts { n, cols, codes, scales, group_sums }
    }

    /// Token `t`'s codes.
    pub fn codes(&self, t: usize) -> &[i8] {
        &self.codes[t * self.cols..(t + 1) * self.cols]
    }

    /// Token `t`'s block scales.
    pub fn scales(&self, t: usize) -> &[f32] {
        let blocks = self.cols / BLOCK;
        &self.scales[t * blocks..(t + 1) * blocks]
    }

    /// Token `t`'s group sums (q4 layout).
    pub fn group_sums(&self, t: usize) -> &[f32] {
        let groups = self.group_sums.len() / self.n.max(1);
        &self.group_sums[t * groups..(t + 1) * groups]
    }
}

/// `y.round_ties_even()` for |y| < 2^22 (as `_mm256_round_ps` rounds in llama.cpp), without the
/// library call that x86-64 without SSE4.1 makes of it: adding 1.5 · 2^23 leaves no fraction bits,
/// so the f32 addition itself rounds to the nearest even integer.
pub(super) fn round_ties_even(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (y + MAGIC) - MAGIC
}
