//! The fast engine's kernels on every target they run on: the SIMD kernels that `Simd::detect()`
//! picks (AVX2 natively where the CPU has it; SIMD128 in wasm built with `+simd128`) against the
//! scalar kernels on awkward sizes, and the scalar kernels against exact products and against a
//! digest of their native outputs, so a wasm build is shown to compute bit for bit what the native
//! one does. Natively: `cargo test -p hearth-core --test simd_kernels`; in wasm under Node:
//! `scripts/test-wasm-kernels.sh` (and `--bench` for the scalar / SIMD figures of
//! `kernel_throughput`, an ignored test).

use half::f16;
use hearth_core::cpu::Products;
use hearth_core::fast::acts::{Acts, Layout, BLOCK};
use hearth_core::fast::kernels::{rows_scalar, Packed, Simd};
use hearth_core::fast::Quantized;
use hearth_core::quant::{DType, Tensor, TensorData};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test;

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

/// (encoding, group, rows, cols): row counts that are no multiple of any unroll, columns that
/// are no multiple of two blocks or of 4 groups, and beyond 64 blocks (2304, 2336 columns) the
/// kernels' windows of block scales and q4 mins, the last one cut short.
fn cases() -> Vec<(DType, usize, usize, usize)> {
    let mut cases = Vec::new();
    for &(rows, cols) in &[(1, 32), (7, 96), (37, 160), (13, 384), (5, 576), (3, 2304), (2, 2336)] {
        cases.push((DType::Q8, 32, rows, cols));
        for group in [32, 64, 128] {
            if cols % group == 0 {
                cases.push((DType::Q4, group, rows, cols));
            }
        }
    }
    cases
}

/// 1-7 tokens (every tile of four and its remainders), and more than two tiles.
const TOKENS: [usize; 8] = [1, 2, 3, 4, 5, 6, 7, 9];

/// One case's matrix (as stored and as decoded) and each token count's activations.
struct Case {
    name: String,
    weights: Tensor,
    x: Vec<Vec<f32>>,
}

fn case(i: usize, (dtype, group, rows, cols): (DType, usize, usize, usize)) -> Case {
    let weights = Tensor::from_f32(vec![rows, cols], &values(rows * cols, i as u64), dtype, group)
        .expect("the cases are valid shapes");
    let x = TOKENS.iter().map(|&n| values(n * cols, 1000 + i as u64)).collect();
    Case { name: format!("{dtype:?}/{group} {rows}x{cols}"), weights, x }
}

fn packed(w: &Tensor) -> Packed<'_> {
    Packed::of(w).expect("a packed tensor")
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_build_has_simd_kernels_where_expected() {
    // The comparisons below are vacuous with the scalar kernels on both sides: a wasm build
    // without `+simd128` or a cfg that stopped matching must fail here, not pass quietly.
    #[cfg(target_arch = "wasm32")]
    assert_ne!(Simd::detect(), Simd::Scalar, "build the wasm tests with -C target-feature=+simd128");
    // And the relaxed build must run its own kernels, not quietly the plain SIMD128 ones.
    #[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
    assert_eq!(Simd::detect(), Simd::RelaxedSimd128);
    eprintln!("kernels: {:?}", Simd::detect());
}

/// The relaxed-SIMD kernels give the SIMD128 kernels' outputs bit for bit: each i32 lane sums the
/// same integer products (`fast/simd128.rs`), so the scaled f32 sums are the same operations on
/// the same values. Every case shape and token count (each activation block has a code of ±127),
/// and q4 codes of every byte value.
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
#[wasm_bindgen_test]
fn relaxed_simd_kernels_compute_the_simd128_kernels_bits() {
    for (i, shape) in cases().into_iter().enumerate() {
        let Case { name, weights, x } = case(i, shape);
        let p = packed(&weights);
        for (n, x) in TOKENS.into_iter().zip(&x) {
            let a = Acts::quantize(x, n, p.cols(), p.layout());
            assert!(a.codes.iter().any(|&c| c.unsigned_abs() == 127), "{name}: no extreme activation codes");
            let (mut relaxed, mut plain) = (vec![0f32; p.rows() * n], vec![0f32; p.rows() * n]);
            Simd::RelaxedSimd128.rows(p, 0, &a, &mut relaxed);
            Simd::Simd128.rows(p, 0, &a, &mut plain);
            let same = relaxed.iter().zip(&plain).all(|(r, s)| r.to_bits() == s.to_bits());
            assert!(same, "{name} n={n}: the relaxed kernel's outputs differ from SIMD128's");
        }
    }
    // Every byte value among the q4 codes.
    let (rows, cols) = (16, 2 * BLOCK);
    let codes: Vec<u8> = (0..rows * cols / 2).map(|i| (i * 7 + i / 256) as u8).collect();
    assert!((0..=255u8).all(|b| codes.contains(&b)));
    let scales: Vec<f16> = values(rows * 2, 9).iter().map(|v| f16::from_f32(v * 0.01)).collect();
    let mins: Vec<f16> = values(rows * 2, 10).iter().map(|v| f16::from_f32(v * 0.1)).collect();
    let p = Packed::Q4 { codes: &codes, scales: &scales, mins: &mins, group: 32, cols };
    for n in [1, 5] {
        let a = Acts::quantize(&values(n * cols, 11), n, cols, p.layout());
        let (mut relaxed, mut plain) = (vec![0f32; rows * n], vec![0f32; rows * n]);
        Simd::RelaxedSimd128.rows(p, 0, &a, &mut relaxed);
        Simd::Simd128.rows(p, 0, &a, &mut plain);
        assert!(relaxed.iter().zip(&plain).all(|(r, s)| r.to_bits() == s.to_bits()), "every byte value, n={n}");
    }
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn simd_kernels_match_the_scalar_kernels() {
    let simd = Simd::detect();
    for (i, shape) in cases().into_iter().enumerate() {
        let Case { name, weights, x } = case(i, shape);
        let (rows, cols) = (weights.rows(), weights.cols());
        let wv = weights.to_f32();
        let p = packed(&weights);
        for (n, x) in TOKENS.into_iter().zip(&x) {
            let a = Acts::quantize(x, n, cols, p.layout());
            let mut fast = vec![0f32; rows * n];
            let mut slow = vec![0f32; rows * n];
            simd.rows(p, 0, &a, &mut fast);
            rows_scalar(p, 0, &a, &mut slow);
            // A row range that starts inside the matrix, as the threads split it.
            let start = rows / 2;
            let mut tail = vec![0f32; (rows - start) * n];
            simd.rows(p, start, &a, &mut tail);
            for r in 0..rows {
                for t in 0..n {
                    // The integer block sums are exact in both; the f32 sums of at most cols / 32
                    // scaled blocks (and the q4 min terms) are added in another order: a few ulps
                    // of the sum of the terms' magnitudes.
                    let magnitude: f32 = (0..cols).map(|k| (wv[r * cols + k] * x[t * cols + k]).abs()).sum();
                    let tol = 1e-6 * magnitude + 1e-30;
                    let (f, s) = (fast[r * n + t], slow[r * n + t]);
                    assert!((f - s).abs() <= tol, "{simd:?} {name} n={n} row {r} token {t}: {f} vs {s}");
                    if r >= start {
                        assert_eq!(tail[(r - start) * n + t].to_bits(), f.to_bits(), "{name}: row range start");
                    }
                }
            }
        }
    }
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn simd_kernels_read_every_finite_f16_scale_and_min() {
    // One block per row, the rows' scales (and q4 mins, in another order) all the finite f16
    // values, subnormals included: the SIMD kernels convert them without F16C (SIMD128) and must
    // agree with `half` on each.
    let scales: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|h| h.is_finite()).collect();
    let mins: Vec<f16> = scales.iter().rev().copied().collect();
    let rows = scales.len();
    let codes: Vec<u8> = (0..rows * BLOCK).map(|i| (i * 37 % 251) as u8).collect();
    let signed: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
    let q4 = Packed::Q4 { codes: &codes[..rows * BLOCK / 2], scales: &scales, mins: &mins, group: 32, cols: BLOCK };
    let q8 = Packed::Q8 { codes: &signed, scales: &scales, cols: BLOCK };
    for p in [q4, q8] {
        for n in [1, 3] {
            let a = Acts::quantize(&values(n * BLOCK, 3), n, BLOCK, p.layout());
            let (mut fast, mut slow) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            Simd::detect().rows(p, 0, &a, &mut fast);
            rows_scalar(p, 0, &a, &mut slow);
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                // One block: the SIMD kernels scale partial sums before adding them, and q4 adds
                // the min term, which may cancel the block's: ulps of a bound on both terms.
                let (r, t) = (i / n, i % n);
                let largest = if p.layout() == Layout::Q8 { 128.0 } else { 15.0 };
                let xs: f32 = a.codes(t).iter().map(|&q| f32::from(q).abs()).sum();
                let min = if p.layout() == Layout::Q8 { 0.0 } else { mins[r].to_f32() * a.group_sums(t)[0] };
                let bound = scales[r].to_f32().abs() * a.scales(t)[0] * largest * xs + min.abs();
                assert!((f - s).abs() <= 1e-6 * bound, "{:?} row {r} n={n}: {f} vs {s}", p.layout());
            }
        }
    }
}

/// Relative rounding of an f16 (2^-11), doubled for the sums of rounded values.
const F16_STEP: f32 = 1.0 / 1024.0;

/// How far `q · d` can be from the `x` it stands for, `d` being the block's (f16) step: half a
/// step, plus 127 times the f16 rounding of the step.
fn off_by(d: f32) -> f32 {
    d * (0.5 + 127.0 / 2048.0) * 1.0001
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn scalar_kernels_stay_within_the_activation_rounding_bound() {
    for (i, shape) in cases().into_iter().enumerate() {
        let Case { name, weights, x } = case(i, shape);
        let (rows, cols, group) = (weights.rows(), weights.cols(), shape.1);
        let wv = weights.to_f32();
        let mins: Vec<f32> = match &weights.data {
            TensorData::Q4(q) => q.mins.iter().map(|m| m.to_f32()).collect(),
            _ => vec![0.0; rows * cols / group],
        };
        let p = packed(&weights);
        for (n, x) in TOKENS.into_iter().zip(&x) {
            let a = Acts::quantize(x, n, cols, p.layout());
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
                        let m = mins[r * cols / group + k / group] as f64;
                        bound += err * ((wk - m).abs() + m.abs()) + m.abs() * xk.abs() * F16_STEP as f64;
                    }
                    let tol = bound * (1.0 + 1e-4) + 1e-5 * magnitude;
                    let diff = (got[r * n + t] as f64 - exact).abs();
                    assert!(diff <= tol, "{name} n={n} row {r} token {t}: off by {diff} > {tol}");
                }
            }
        }
    }
}

/// FNV-1a of every scalar output's bits over all cases and token counts, as computed natively
/// (x86-64). The quantizers and the scalar kernels use only correctly rounded f32 operations in a
/// fixed order, so every target must reproduce it; a change to them changes it on all targets
/// together (print the new value with `--nocapture` and update it).
const SCALAR_DIGEST: u64 = 0x9821_f267_9595_47fd;

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn scalar_kernels_compute_the_same_bits_on_every_target() {
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    for (i, shape) in cases().into_iter().enumerate() {
        let Case { weights, x, .. } = case(i, shape);
        let p = packed(&weights);
        for (n, x) in TOKENS.into_iter().zip(&x) {
            let a = Acts::quantize(x, n, weights.cols(), p.layout());
            let mut got = vec![0f32; weights.rows() * n];
            rows_scalar(p, 0, &a, &mut got);
            for v in got {
                for byte in v.to_bits().to_le_bytes() {
                    digest = (digest ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
    eprintln!("scalar digest {digest:#018x}");
    assert_eq!(digest, SCALAR_DIGEST, "the scalar kernels' outputs differ from the native x86-64 ones");
}

/// The attention softmax's outputs on x86-64, as `SCALAR_DIGEST` is for the kernels: its `exp` and
/// its sums are plain f32 operations in a fixed order, so wasm must give the same bits (and the
/// GELU table, built in f64 and rounded to f16, the same entries).
const SOFTMAX_GELU_DIGEST: u64 = 0x5d6a_e178_5503_2de5;

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn softmax_and_gelu_compute_the_same_bits_on_every_target() {
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    let mut add = |v: f32| {
        for byte in v.to_bits().to_le_bytes() {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for (i, n) in [1, 7, 8, 33, 129, 1000].into_iter().enumerate() {
        let mut scores: Vec<f32> = values(n, 40 + i as u64).iter().map(|v| v * 30.0).collect();
        hearth_core::fast::softmax::softmax(&mut scores);
        scores.into_iter().for_each(&mut add);
    }
    for v in values(4096, 99) {
        add(hearth_core::fast::gelu::gelu_f16(v * 12.0));
    }
    eprintln!("softmax/gelu digest {digest:#018x}");
    assert_eq!(digest, SOFTMAX_GELU_DIGEST, "softmax or GELU outputs differ from the native x86-64 ones");
}

/// A decode step's product (one token, rows several at a time) gives, bit for bit, what the same
/// token gets inside a multi-token product: 8-bit activations turn a last-bit difference into
/// another code, and the browser's engine is compared with the native one's greedy tokens.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn one_token_products_equal_that_token_in_a_multi_token_product_bit_for_bit() {
    let simd = Simd::detect();
    for (i, shape) in cases().into_iter().enumerate() {
        let c = case(i, shape);
        let p = Packed::of(&c.weights).expect("packed");
        let (rows, cols) = (p.rows(), p.cols());
        let x = values(cols, 77 + i as u64);
        let one = Acts::quantize(&x, 1, cols, p.layout());
        let two = Acts::quantize(&[x.clone(), x].concat(), 2, cols, p.layout());
        let (mut alone, mut pair) = (vec![0f32; rows], vec![0f32; rows * 2]);
        simd.rows(p, 0, &one, &mut alone);
        simd.rows(p, 0, &two, &mut pair);
        for r in 0..rows {
            assert_eq!(
                alone[r].to_bits(),
                pair[r * 2].to_bits(),
                "{simd:?} {} row {r}: {} vs {}",
                c.name,
                alone[r],
                pair[r * 2]
            );
        }
    }
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn products_with_simd_kernels_match_the_scalar_products() {
    // The engine's path: inputs quantized once per layout, rows split into jobs, [token][row] out.
    let cols = 192;
    let q4 = Tensor::from_f32(vec![37, cols], &values(37 * cols, 1), DType::Q4, 64).expect("valid");
    let q8 = Tensor::from_f32(vec![9, cols], &values(9 * cols, 2), DType::Q8, 32).expect("valid");
    for n in [1, 3, 6, 40] {
        let x = values(n * cols, 4);
        let mut got = [vec![0f32; n * 37], vec![0f32; n * 9]];
        let mut want = got.clone();
        let [a, b] = &mut got;
        Quantized::default().matmuls(&x, n, &mut [(&q4, a), (&q8, b)]);
        let [a, b] = &mut want;
        Quantized::with(Simd::Scalar).matmuls(&x, n, &mut [(&q4, a), (&q8, b)]);
        for ((got, want), w) in got.iter().zip(&want).zip([&q4, &q8]) {
            let (rows, wv) = (w.rows(), w.to_f32());
            for (i, (g, s)) in got.iter().zip(want).enumerate() {
                // As above: a few ulps of the sum of the terms' magnitudes.
                let (t, r) = (i / rows, i % rows);
                let magnitude: f32 = (0..cols).map(|k| (wv[r * cols + k] * x[t * cols + k]).abs()).sum();
                assert!((g - s).abs() <= 1e-6 * magnitude, "n={n} token {t} row {r}: {g} vs {s}");
            }
        }
    }
}

/// Milliseconds from an arbitrary start (`Instant` does not exist in wasm32-unknown-unknown).
fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    return js_sys::Date::now();
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

macro_rules! report {
    ($($t:tt)*) => {{
        #[cfg(target_arch = "wasm32")]
        wasm_bindgen_test::console_log!($($t)*);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!($($t)*);
    }};
}

/// Random packed weights (the kernels' speed does not depend on the values).
fn random_packed(dtype: DType, rows: usize, cols: usize, group: usize) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
    let bytes = if dtype == DType::Q4 { rows * cols / 2 } else { rows * cols };
    let codes = values(bytes, 5).iter().map(|v| (v * 127.0) as i8 as u8).collect();
    let scales = values(rows * cols / group, 6).iter().map(|v| f16::from_f32(v * 0.01)).collect();
    let mins = values(rows * cols / group, 7).iter().map(|v| f16::from_f32(v * 0.1)).collect();
    (codes, scales, mins)
}

/// Scalar vs SIMD on SmolLM2-135M's products, one thread: the attention output / MLP shapes
/// (576 → 1536, 1536 → 576, q4 group 32) and the tied q8 head (576 → 49152), for one token
/// (decode) and eight (prefill, per token).
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
#[ignore = "a benchmark: scripts/test-wasm-kernels.sh --bench, or --ignored --nocapture natively"]
fn kernel_throughput() {
    let shapes = [(DType::Q4, 1536, 576), (DType::Q4, 576, 1536), (DType::Q8, 49152, 576)];
    for (dtype, rows, cols) in shapes {
        let (codes, scales, mins) = random_packed(dtype, rows, cols, 32);
        let signed: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
        let p = match dtype {
            DType::Q4 => Packed::Q4 { codes: &codes, scales: &scales, mins: &mins, group: 32, cols },
            _ => Packed::Q8 { codes: &signed, scales: &scales, cols },
        };
        for n in [1, 8] {
            let a = Acts::quantize(&values(n * cols, 8), n, cols, p.layout());
            let mut out = vec![0f32; rows * n];
            // The kernels alternate, in rounds of 100 ms, and each keeps its best round: other work
            // on the machine slows rounds down, never speeds them up. The relaxed build also times
            // the plain SIMD128 kernels it replaces.
            let mut kernels = vec![Simd::Scalar];
            #[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
            kernels.push(Simd::Simd128);
            kernels.push(Simd::detect());
            let mut per_token = vec![f64::INFINITY; kernels.len()];
            for &simd in &kernels {
                simd.rows(p, 0, &a, &mut out); // warm-up (and wasm's tier-up)
            }
            for _round in 0..5 {
                for (best, &simd) in per_token.iter_mut().zip(&kernels) {
                    let (start, mut calls) = (now_ms(), 0u32);
                    while calls < 2 || now_ms() - start < 100.0 {
                        simd.rows(p, 0, &a, &mut out);
                        calls += 1;
                    }
                    *best = best.min((now_ms() - start) / f64::from(calls) / n as f64);
                }
            }
            let figures: Vec<String> = kernels
                .iter()
                .zip(&per_token)
                .map(|(k, t)| format!("{k:?} {t:.3} ms/token ({:.0} tok/s, {:.2}x scalar)", 1e3 / t, per_token[0] / t))
                .collect();
            report!("{dtype:?} {cols}->{rows} n={n}: {}", figures.join(", "));
        }
    }
}

/// Float weights (f32, f16) through the fast engine's products (its f32 kernels: AVX2 with FMA
/// natively, SIMD128 in wasm) against the reference's, on sizes that are no multiple of the
/// kernels' 4 rows, 3 tokens or 8 columns: two f32 sums of the same `cols` products in different
/// orders each lie within γ_cols · Σ|w_i x_i| of the exact value (Higham), so within twice that of
/// each other. A lost tail or a wrong row moves a sum by whole products.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn float_products_stay_within_f32_rounding_of_the_reference() {
    let products = Quantized::with(Simd::detect());
    let u = f32::EPSILON as f64 / 2.0;
    for &(rows, cols) in &[(1, 1), (5, 13), (17, 96), (37, 385)] {
        for dtype in [DType::F32, DType::F16] {
            let w = Tensor::from_f32(vec![rows, cols], &values(rows * cols, 7), dtype, 32).unwrap();
            let decoded = w.to_f32();
            for n in [1, 2, 4, 7, 30] {
                let x = values(n * cols, 8);
                let (mut got, mut want) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                products.matmul(&w, &x, n, &mut got);
                hearth_core::cpu::matmul(&w, &x, n, &mut want);
                let gamma = cols as f64 * u / (1.0 - cols as f64 * u);
                for t in 0..n {
                    for r in 0..rows {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let row = &decoded[r * cols..(r + 1) * cols];
                        let magnitude: f64 = row.iter().zip(xt).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                        let (g, e) = (got[t * rows + r] as f64, want[t * rows + r] as f64);
                        assert!(
                            (g - e).abs() <= 2.0 * gamma * magnitude,
                            "{dtype:?} {rows}x{cols} n={n}: row {r} token {t}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
