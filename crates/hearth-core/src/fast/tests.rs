//! The kernels on awkward sizes: each SIMD version against the scalar one, and the scalar one
//! against exact f32 products within the bound that 8-bit activations allow.

use super::acts::{Acts, BLOCK};
use super::kernels::{rows_scalar, Matrix, Simd};
use super::Quantized;
use crate::cpu::{self, Products};
use crate::ggml_quants::{k_from_ggml, q5_from_ggml};
use crate::gguf::GgmlType;
use crate::quant::{k4_sub_block_scale_min, DType, Tensor, TensorData};

/// Deterministic values in [-1, 1), with a few large ones so block scales differ.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 37 == 5 {
                v * 6.0
            } else {
                v
            }
        })
        .collect()
}

/// (encoding, group) pairs and matrix sizes that are not multiples of 8 rows or 64 columns.
fn cases() -> Vec<(DType, usize, usize, usize)> {
    let mut cases = Vec::new();
    // Beyond 64 blocks (2304, 2336 columns) the SIMD kernels compute block scales in several windows.
    for &(rows, cols) in &[(1, 32), (7, 96), (37, 160), (13, 384), (5, 576), (3, 2304), (2, 2336)] {
        cases.push((DType::Q8, 32, rows, cols));
        for group in [32, 64, 128] {
            if cols % group == 0 {
                cases.push((DType::Q4, group, rows, cols));
            }
        }
        cases.push((DType::Q5, 32, rows, cols));
        if cols % 256 == 0 {
            cases.extend([DType::Q4k, DType::Q5k, DType::Q6k].map(|d| (d, 32, rows, cols)));
        }
    }
    cases.extend([DType::Q4k, DType::Q5k, DType::Q6k].map(|d| (d, 32, 9, 512)));
    cases
}

/// A `rows` × `cols` matrix in `dtype`: quantized from `values` for q4 and q8; for the encodings
/// kept from GGUF files, random GGUF blocks (every code and packed scale bit random, the f16
/// scales between 2^-10 and 2^-6, either sign) re-laid as the converter does.
fn weights(dtype: DType, group: usize, rows: usize, cols: usize, seed: u64) -> Tensor {
    let ty = match dtype {
        DType::Q5 => GgmlType::Q5_1,
        DType::Q4k => GgmlType::Q4K,
        DType::Q5k => GgmlType::Q5K,
        DType::Q6k => GgmlType::Q6K,
        _ => return Tensor::from_f32(vec![rows, cols], &values(rows * cols, seed), dtype, group).unwrap(),
    };
    let (block_values, block_bytes) = ty.block_layout().unwrap();
    let blocks = rows * cols / block_values as usize;
    let mut raw: Vec<u8> =
        values(blocks * block_bytes as usize, seed).iter().map(|v| ((v + 1.0) * 127.0) as u8).collect();
    let scales: &[usize] = if ty == GgmlType::Q6K { &[208] } else { &[0, 2] };
    for (b, block) in raw.chunks_mut(block_bytes as usize).enumerate() {
        for (k, &at) in scales.iter().enumerate() {
            let v = half::f16::from_f32(if (b + k) % 3 == 0 { -1.0 } else { 1.0 } / (64 << (b % 5)) as f32);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    match dtype {
        DType::Q5 => q5_from_ggml(ty, &raw, vec![rows, cols], "w").unwrap(),
        _ => k_from_ggml(ty, &raw, vec![rows, cols], "w").unwrap(),
    }
}

/// Each activation block's weight minimum (the value of code 0 where the encoding has one; q6k's
/// codes are signed, so 0), per 32 values of a q4 group or of a kept encoding.
fn block_mins(w: &Tensor) -> Vec<f32> {
    let blocks = w.n_elements() / BLOCK;
    match &w.data {
        TensorData::Q4(q) => (0..blocks).map(|b| q.mins[b * BLOCK / q.group].to_f32()).collect(),
        TensorData::Q5(q) => q.mins.iter().map(|m| m.to_f32()).collect(),
        TensorData::Q4k(k) | TensorData::Q5k(k) => {
            (0..blocks).map(|b| -k4_sub_block_scale_min(&k.scales[16 * (b / 8)..16 * (b / 8) + 16], b % 8).1).collect()
        }
        _ => vec![0.0; blocks],
    }
}

const TOKENS: [usize; 5] = [1, 2, 3, 8, 11];

/// Relative rounding of an f16 (2^-11), doubled for the sums of rounded values.
const F16_STEP: f32 = 1.0 / 1024.0;

/// How far `q · d` can be from the `x` it stands for, `d` being the block's (f16) step: half a
/// step, plus 127 times the f16 rounding of the step.
fn off_by(d: f32) -> f32 {
    d * (0.5 + 127.0 / 2048.0) * 1.0001
}

fn layout_of(w: &Tensor) -> Matrix<'_> {
    Matrix::of(w).expect("an integer matrix")
}

#[test]
fn simd_kernels_match_the_scalar_kernels() {
    let simd = Simd::detect();
    if simd == Simd::Scalar {
        eprintln!("no SIMD kernels on this CPU: nothing to compare");
        return;
    }
    for (i, (dtype, group, rows, cols)) in cases().into_iter().enumerate() {
        let w = weights(dtype, group, rows, cols, i as u64);
        let wv = w.to_f32();
        let p = layout_of(&w);
        for n in TOKENS {
            let x = values(n * cols, 1000 + i as u64);
            let a = Acts::quantize(&x, n, cols, p.layout());
            let mut fast = vec![0f32; rows * n];
            let mut slow = vec![0f32; rows * n];
            simd.rows(p, 0, &a, &mut fast);
            rows_scalar(p, 0, &a, &mut slow);
            // A row range that starts inside the matrix, as the threads split it.
            let mut tail = vec![0f32; (rows - rows / 2) * n];
            simd.rows(p, rows / 2, &a, &mut tail);
            for r in 0..rows {
                let scale: f32 = (0..n)
                    .map(|t| (0..cols).map(|k| (wv[r * cols + k] * x[t * cols + k]).abs()).sum::<f32>())
                    .fold(0.0, f32::max);
                for t in 0..n {
                    // Integer block sums are exact in both; the f32 sums of at most cols / 32
                    // scaled blocks are reassociated: a few ulps of the sum of magnitudes.
                    let tol = 1e-6 * scale + 1e-30;
                    let (f, s) = (fast[r * n + t], slow[r * n + t]);
                    assert!(
                        (f - s).abs() <= tol,
                        "{dtype:?}/{group} {rows}x{cols} n={n} row {r} token {t}: {f} vs {s}"
                    );
                    if r >= rows / 2 {
                        assert_eq!(tail[(r - rows / 2) * n + t].to_bits(), f.to_bits(), "row range start");
                    }
                }
            }
        }
    }
}

#[test]
fn scalar_kernels_stay_within_the_activation_rounding_bound() {
    for (i, (dtype, group, rows, cols)) in cases().into_iter().enumerate() {
        let w = weights(dtype, group, rows, cols, 7 + i as u64);
        let wv = w.to_f32();
        let mins = block_mins(&w);
        let p = layout_of(&w);
        for n in TOKENS {
            let x = values(n * cols, 500 + i as u64);
            let a = Acts::quantize(&x, n, cols, p.layout());
            let mut got = vec![0f32; rows * n];
            rows_scalar(p, 0, &a, &mut got);
            for r in 0..rows {
                for t in 0..n {
                    let (mut exact, mut bound, mut magnitude) = (0f64, 0f64, 0f64);
                    for k in 0..cols {
                        let (wk, xk) = (wv[r * cols + k] as f64, x[t * cols + k] as f64);
                        exact += wk * xk;
                        magnitude += (wk * xk).abs();
                        // q·d is off x by at most half a step plus |q| ≤ 127 times d's f16 rounding;
                        // the q4 min term meets Σ q·d (through s), rounded once more to f16.
                        let err = off_by(a.scales(t)[k / BLOCK]) as f64;
                        let m = mins[(r * cols + k) / BLOCK] as f64;
                        bound += err * ((wk - m).abs() + m.abs()) + m.abs() * xk.abs() * F16_STEP as f64;
                    }
                    let tol = bound * (1.0 + 1e-4) + 1e-5 * magnitude;
                    let diff = (got[r * n + t] as f64 - exact).abs();
                    assert!(
                        diff <= tol,
                        "{dtype:?}/{group} {rows}x{cols} n={n} row {r} token {t}: off by {diff} > {tol}"
                    );
                }
            }
        }
    }
}

#[test]
fn fused_products_equal_single_products_and_the_reference_for_float_weights() {
    let cols = 192;
    let q4 = Tensor::from_f32(vec![37, cols], &values(37 * cols, 1), DType::Q4, 64).unwrap();
    let q8 = Tensor::from_f32(vec![9, cols], &values(9 * cols, 2), DType::Q8, 32).unwrap();
    let f16 = Tensor::from_f32(vec![5, cols], &values(5 * cols, 3), DType::F16, 32).unwrap();
    for simd in [Simd::Scalar, Simd::detect()] {
        let products = Quantized::with(simd);
        for n in [1, 3, 9, 40] {
            let x = values(n * cols, 4);
            let mut fused = [vec![0f32; n * 37], vec![0f32; n * 9], vec![0f32; n * 5]];
            let [a, b, c] = &mut fused;
            products.matmuls(&x, n, &mut [(&q4, a), (&q8, b), (&f16, c)]);
            for (w, got) in [&q4, &q8, &f16].into_iter().zip(&fused) {
                let mut single = vec![0f32; n * w.rows()];
                products.matmul(w, &x, n, &mut single);
                assert_eq!(got, &single, "{simd:?} n={n}");
                // Against the kernel on the whole matrix (or the reference for float weights),
                // transposed to the products' [token][row] layout.
                let rows = w.rows();
                let mut expected = vec![0f32; n * rows];
                match Matrix::of(w) {
                    Some(p) => {
                        let a = Acts::quantize(&x, n, cols, p.layout());
                        let mut by_row = vec![0f32; rows * n];
                        simd.rows(p, 0, &a, &mut by_row);
                        for r in 0..rows {
                            for t in 0..n {
                                expected[t * rows + r] = by_row[r * n + t];
                            }
                        }
                    }
                    None => {
                        // Float weights: the f32 kernels (float.rs) sum in another order than the
                        // reference; float_kernels_stay_within_f32_rounding_of_the_reference.
                        assert_within_f32_rounding(w, &x, n, got, &format!("{simd:?} n={n}"));
                        continue;
                    }
                }
                assert_eq!(got, &expected, "{simd:?} {:?} n={n}", w.dtype());
            }
        }
    }
}

#[test]
fn quantized_activations_round_to_the_nearest_step() {
    let x = values(3 * 64, 9);
    for layout in [super::acts::Layout::Q8, super::acts::Layout::Q4 { group: 64 }] {
        let a = Acts::quantize(&x, 3, 64, layout);
        for t in 0..3 {
            for k in 0..64 {
                let (b, j) = (k / BLOCK, k % BLOCK);
                let at = match layout {
                    super::acts::Layout::Q8 => j,
                    super::acts::Layout::Q4 { .. } => (j % 2) * 16 + j / 2,
                };
                let d = a.scales(t)[b];
                let q = a.codes(t)[b * BLOCK + at] as f32;
                assert!((q * d - x[t * 64 + k]).abs() <= off_by(d), "t {t} k {k}");
                assert!(d == half::f16::from_f32(d).to_f32(), "steps are f16 values");
            }
            if let super::acts::Layout::Q4 { .. } = layout {
                let xs = &x[t * 64..(t + 1) * 64];
                let sum: f32 = xs.iter().sum();
                let magnitude: f32 = xs.iter().map(|v| v.abs()).sum();
                let tol = (0..2).map(|b| 32.0 * off_by(a.scales(t)[b])).sum::<f32>() + magnitude * F16_STEP;
                assert!((a.group_sums(t)[0] - sum).abs() <= tol, "group sum");
            }
        }
    }
}

#[test]
fn rounding_is_to_the_nearest_even_integer() {
    for y in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.49, 3.7, -3.7, 0.0, -0.0, 1e-8] {
        assert_eq!(super::acts::round_ties_even(y), y.round_ties_even(), "{y}");
    }
    let values = values(10_000, 11);
    for v in values {
        let y = v * 21.0;
        assert_eq!(super::acts::round_ties_even(y), y.round_ties_even(), "{y}");
    }
}

/// `got` (`[n][rows]`) against the reference's f32 products of `w` and `x`: two sums of the same
/// `cols` products in different orders (and FMA or not) each lie within γ_cols · Σ|w_i x_i| of the
/// exact value (γ_k = k·2^-24 / (1 - k·2^-24), Higham's bound), so they differ by at most twice
/// that. A wrong row, token or tail moves a sum by whole products.
fn assert_within_f32_rounding(w: &Tensor, x: &[f32], n: usize, got: &[f32], what: &str) {
    let (rows, cols) = (w.rows(), w.cols());
    let mut expected = vec![0f32; n * rows];
    cpu::matmul(w, x, n, &mut expected);
    let u = f32::EPSILON as f64 / 2.0;
    let gamma = cols as f64 * u / (1.0 - cols as f64 * u);
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        w.dequantize_row(r, &mut row);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let magnitude: f64 = row.iter().zip(xt).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let (g, e) = (got[t * rows + r] as f64, expected[t * rows + r] as f64);
            assert!((g - e).abs() <= 2.0 * gamma * magnitude, "{what}: row {r} token {t}: {g} vs {e}");
        }
    }
}

/// The fast engine's float products (float.rs: rows four at a time, tokens three at a time, AVX2
/// with FMA or the plain loop) on sizes that are not multiples of any of those nor of 8 columns,
/// f32 and f16 weights, against the reference within f32 rounding; the SIMD and plain versions
/// both.
#[test]
fn float_kernels_stay_within_f32_rounding_of_the_reference() {
    for &(rows, cols) in &[(1, 1), (3, 7), (5, 13), (17, 96), (37, 385), (64, 1536)] {
        for dtype in [DType::F32, DType::F16] {
            let w = Tensor::from_f32(vec![rows, cols], &values(rows * cols, 5), dtype, 32).unwrap();
            for n in [1, 2, 3, 4, 7, 30] {
                let x = values(n * cols, 6);
                for simd in [Simd::Scalar, Simd::detect()] {
                    let mut got = vec![0f32; n * rows];
                    super::float::matmul(simd, &w, &x, n, &mut got);
                    assert_within_f32_rounding(&w, &x, n, &got, &format!("{simd:?} {dtype:?} {rows}x{cols} n={n}"));
                }
            }
        }
    }
}
