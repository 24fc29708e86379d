//! The fast CPU engine: the reference forward pass (`cpu::Engine`) with `Quantized` products.
//! Weights stay packed as stored (q4, q8); each product quantizes its input to 8 bits per block
//! of 32 (llama.cpp's Q8 activation scheme, `acts`), multiplies in integers (`kernels`: AVX2 with
//! runtime detection, `avx2`, or the scalar fallback) and spreads the output rows over threads.
//! Float weights (f16, f32) take the reference's product.

pub mod acts;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod kernels;
#[cfg(test)]
mod tests;

use acts::{Acts, Layout};
use kernels::{Packed, Simd};

use crate::cpu::{self, Engine, Products};
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
    fn matmul(&self, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmuls(x, n, &mut [(w, out)]);
    }

    /// Every packed matrix's rows in one parallel pass, each input quantized once per layout.
    fn matmuls(&self, x: &[f32], n: usize, products: &mut [(&Tensor, &mut [f32])]) {
        let mut packed = Vec::with_capacity(products.len());
        for (w, out) in products.iter_mut() {
            match Packed::of(w) {
                Some(p) => packed.push((p, &mut **out)),
                None => cpu::matmul(w, x, n, out),
            }
        }
        let mut inputs: Vec<(Layout, Acts)> = Vec::new();
        for (p, _) in &packed {
            if !inputs.iter().any(|(l, _)| *l == p.layout()) {
                inputs.push((p.layout(), Acts::quantize(x, n, p.cols(), p.layout())));
            }
        }
        // Rows are computed as [row][token]; one token needs no transpose.
        let mut by_row: Vec<Vec<f32>> =
            packed.iter().map(|(p, _)| if n > 1 { vec![0f32; p.rows() * n] } else { Vec::new() }).collect();
        let total: usize = packed.iter().map(|(p, _)| p.rows()).sum();
        let chunk = total.div_ceil(8 * threads()).max(4);
        let mut jobs = Vec::new();
        for ((p, out), buf) in packed.iter_mut().zip(&mut by_row) {
            let dst: &mut [f32] = if n > 1 { buf } else { out };
            let a = &inputs.iter().find(|(l, _)| *l == p.layout()).expect("quantized above").1;
            for (i, rows) in dst.chunks_mut(chunk * n).enumerate() {
                jobs.push((*p, i * chunk, a, rows));
            }
        }
        let simd = self.simd;
        let run = |(p, first, a, rows): (Packed, usize, &Acts, &mut [f32])| simd.rows(p, first, a, rows);
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            jobs.into_par_iter().for_each(run);
        }
        #[cfg(not(feature = "parallel"))]
        jobs.into_iter().for_each(run);
        if n > 1 {
            for ((p, out), buf) in packed.iter_mut().zip(&by_row) {
                transpose(buf, p.rows(), n, out);
            }
        }
    }
}

/// `out[t][r] = by_row[r][t]`, in tiles that stay in cache.
fn transpose(by_row: &[f32], rows: usize, n: usize, out: &mut [f32]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for t0 in (0..n).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for t in t0..(t0 + TILE).min(n) {
                    out[t * rows + r] = by_row[r * n + t];
                }
            }
        }
    }
}

fn threads() -> usize {
    #[cfg(feature = "parallel")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "parallel"))]
    1
}
