//! The fast CPU engine: the reference forward pass (`cpu::Engine`) with `Quantized` products.
//! Weights stay packed as stored (q4, q8); each product quantizes its input to 8 bits per block
//! of 32 (llama.cpp's Q8 activation scheme, `acts`), multiplies in integers (`kernels`: AVX2 with
//! runtime detection, `avx2`; SIMD128 in a wasm module built with it, `simd128`; or the scalar
//! fallback) and spreads the output rows over threads.
//! Float weights (f16, f32) are multiplied in f32 (`float`: AVX2 with FMA, SIMD128, or the
//! reference's loop), their input not rounded, so only the order of the sums differs.
//! GELU is read from a table over f16 inputs, as llama.cpp's CPU run computes it (`gelu`).
//! Keys and values are cached as f16, as llama.cpp's default cache stores them; attention reads
//! them widening as it goes, its heads spread over threads (`attention`), the scores' softmax with
//! an `exp` of plain f32 operations (`softmax`).

/// Blocks whose combined scales (weight scale times activation step) are computed together.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
const WINDOW: usize = 64;

/// A row's blocks as every kernel walks them (`avx2`, `simd128`), written once because the
/// kernels' bit-for-bit agreement (a decode step's product equals that token's in a prompt's, and
/// the browser's engine is compared with the native one) rests on this order: windows of
/// `$window` blocks, `$scales` run first for each (with `$b0`, `$len` bound to the window's first
/// block and length: it fills the window's combined scales), then `$block!(b, k, half)` for each
/// block `b` (`k` its index in the window), even blocks of the window into sum 0 and odd ones into
/// sum 1, so consecutive additions do not wait on each other.
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
macro_rules! walk_blocks {
    ($blocks:expr, $window:expr, |$b0:ident, $len:ident| $scales:block, $block:ident) => {{
        let blocks = $blocks;
        let mut $b0 = 0;
        while $b0 < blocks {
            let $len = (blocks - $b0).min($window);
            $scales
            let mut k = 0;
            while k + 2 <= $len {
                $block!($b0 + k, k, 0);
                $block!($b0 + k + 1, k + 1, 1);
                k += 2;
            }
            if k < $len {
                $block!($b0 + k, k, 0);
            }
            $b0 += $len;
        }
    }};
}

pub mod acts;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod float;
pub mod gelu;
mod kept;
pub mod kernels;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;
pub mod softmax;
#[cfg(test)]
mod tests;

use acts::{Acts, Layout};
use kernels::{Matrix, Simd};

use half::f16;

use crate::cpu::{self, Engine, LayerCache, Products};
use crate::manifest::{Activation, ModelConfig};
use crate::quant::Tensor;

/// The fast engine.
pub type FastEngine = Engine<Quantized>;

/// Products with 8-bit activations and integer kernels.
pub struct Quantized {
    simd: Simd,
}

impl Default for Quantized {
    fn default() -> Self {
        Quantized { simd: Simd::detect() }
    }
}

impl Quantized {
    /// Products with the given kernels (`Simd::Scalar` everywhere; the others where detected).
    pub fn with(simd: Simd) -> Self {
        Quantized { simd }
    }

    pub fn simd(&self) -> Simd {
        self.simd
    }
}

impl Products for Quantized {
    type Cache = f16;

    fn attention(
        &self,
        c: &ModelConfig,
        cache: &mut LayerCache<f16>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        start: usize,
        window: Option<usize>,
        out: &mut [f32],
    ) {
        attention::attention(self.simd, c, cache, q, k, v, start, window, out)
    }

    fn matmul(&self, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmuls(x, n, &mut [(w, out)]);
    }

    /// GELU through llama.cpp's f16 table (`gelu`); SiLU exact.
    fn activation(&self, kind: Activation) -> fn(f32) -> f32 {
        match kind {
            Activation::Silu => cpu::silu,
            Activation::GeluTanh => gelu::gelu_f16,
            Activation::Gelu => cpu::gelu,
        }
    }

    /// Every packed matrix's rows in one parallel pass, each input quantized once per layout.
    fn matmuls(&self, x: &[f32], n: usize, products: &mut [(&Tensor, &mut [f32])]) {
        let mut packed = Vec::with_capacity(products.len());
        for (w, out) in products.iter_mut() {
            match Matrix::of(w) {
                Some(p) => packed.push((p, &mut **out)),
                None => float::matmul(self.simd, w, x, n, out),
            }
        }
        let mut inputs: Vec<(Layout, Acts)> = Vec::new();
        for (p, _) in &packed {
            if !inputs.iter().any(|(l, _)| *l == p.layout()) {
                inputs.push((p.layout(), Acts::quantize(x, n, p.cols(), p.layout())));
            }
        }
        // Each job takes a range of one matrix's rows: in `out` ([token][row]) that is one piece of
        // every token's row, so the pieces are handed out as disjoint slices.
        let total: usize = packed.iter().map(|(p, _)| p.rows()).sum();
        #[cfg(feature = "parallel")]
        let macs: usize = packed.iter().map(|(p, _)| p.rows() * p.cols() * n).sum();
        let chunk = total.div_ceil(8 * threads()).max(4);
        let mut jobs = Vec::new();
        for (p, out) in packed.iter_mut() {
            let a = &inputs.iter().find(|(l, _)| *l == p.layout()).expect("quantized above").1;
            let mut pieces: Vec<Vec<&mut [f32]>> =
                (0..p.rows().div_ceil(chunk)).map(|_| Vec::with_capacity(n)).collect();
            for token in out.chunks_mut(p.rows()) {
                for (piece, rows) in pieces.iter_mut().zip(token.chunks_mut(chunk)) {
                    piece.push(rows);
                }
            }
            for (i, piece) in pieces.into_iter().enumerate() {
                jobs.push((*p, i * chunk, a, piece));
            }
        }
        let simd = self.simd;
        let run = |(p, first, a, mut piece): (Matrix, usize, &Acts, Vec<&mut [f32]>)| {
            if let [only] = piece.as_mut_slice() {
                return simd.rows(p, first, a, only);
            }
            // Several tokens: the kernels write [row][token]; transposed while in cache.
            let count = piece.first().map_or(0, |t| t.len());
            let mut by_row = vec![0f32; count * n];
            simd.rows(p, first, a, &mut by_row);
            for (t, dst) in piece.iter_mut().enumerate() {
                for (j, v) in dst.iter_mut().enumerate() {
                    *v = by_row[j * n + t];
                }
            }
        };
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            // One thread: the pool's only worker would run the jobs while this thread waits.
            if macs >= PARALLEL_MIN_MACS && threads() > 1 {
                return jobs.into_par_iter().for_each(run);
            }
        }
        jobs.into_iter().for_each(run);
    }
}

/// Below this many multiply-adds a product runs on the calling thread, because waking the pool
/// costs more than sharing the work saves. Natively rayon's idle threads spin a little before they
/// sleep, so a wake costs microseconds; a browser's pool workers sleep in `Atomics.wait` and take
/// tens to hundreds of microseconds to wake. With every product of a decode step parallel, the
/// 2-thread wasm engine decoded SmolLM2 slower than the 1-thread one (18.8 vs 27.7 tok/s, README);
/// in wasm only products of a few million multiply-adds (SmolLM2's head, every product of a
/// 1B-parameter model, any prompt) are shared.
#[cfg(feature = "parallel")]
const PARALLEL_MIN_MACS: usize = if cfg!(target_arch = "wasm32") { 1 << 21 } else { 1 << 16 };

/// Threads the products are shared among (rayon's pool; 1 without the `parallel` feature).
pub fn threads() -> usize {
    #[cfg(feature = "parallel")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "parallel"))]
    1
}
