//! The integer dot products of packed weight rows with quantized activations: the scalar versions
//! (every target, and the definition the SIMD versions are tested against) and the dispatch to the
//! fastest version the CPU has. Both compute each 32-value block's integer dot product exactly;
//! only the order of the f32 sums of the scaled blocks differs.

use half::f16;

use super::acts::{Acts, Layout, BLOCK};
use super::kept::{self, Kept};
use crate::quant::{DType, Tensor, TensorData};

/// A quantized matrix as the kernels read it (the package's arrays, unchanged).
#[derive(Clone, Copy)]
pub enum Packed<'a> {
    Q4 { codes: &'a [u8], scales: &'a [f16], mins: &'a [f16], group: usize, cols: usize },
    Q8 { codes: &'a [i8], scales: &'a [f16], cols: usize },
}

/// A matrix the fast engine multiplies with integer kernels: Hearth's own q4 and q8 (`Packed`,
/// with kernels written for each SIMD instruction set) or an encoding kept from a GGUF file
/// (`kept.rs`: one generic body the compiler vectorizes).
#[derive(Clone, Copy)]
pub enum Matrix<'a> {
    Packed(Packed<'a>),
    Kept { kept: Kept<'a>, rows: usize, cols: usize },
}

impl<'a> From<Packed<'a>> for Matrix<'a> {
    fn from(p: Packed<'a>) -> Self {
        Matrix::Packed(p)
    }
}

impl<'a> Matrix<'a> {
    /// The integer view of `w`, or `None` for float weights or arrays whose lengths do not match
    /// the shape.
    pub fn of(w: &'a Tensor) -> Option<Matrix<'a>> {
        let (rows, cols) = (w.rows(), w.cols());
        if cols == 0 {
            return None;
        }
        match &w.data {
            TensorData::Q4(_) | TensorData::Q8(_) => Packed::of(w).map(Matrix::Packed),
            TensorData::F32(_) | TensorData::F16(_) => None,
            TensorData::Q5(q) => {
                let blocks = rows * cols / BLOCK;
                let ok = cols % BLOCK == 0
                    && q.codes.len() == blocks * 20
                    && q.scales.len() == blocks
                    && q.mins.len() == blocks;
                let kept = Kept::Q5 { codes: &q.codes, scales: &q.scales, mins: &q.mins };
                ok.then_some(Matrix::Kept { kept, rows, cols })
            }
            TensorData::Q4k(k) | TensorData::Q5k(k) | TensorData::Q6k(k) => {
                let dtype = w.dtype();
                let lengths = dtype.part_lengths(rows * cols, cols, None)?;
                let actual = [k.codes.len(), k.scales.len(), k.high.len()];
                if lengths.iter().zip(&actual).any(|(&l, &a)| l != a as u64) {
                    return None;
                }
                let (codes, headers, high) = (&k.codes[..], &k.scales[..], &k.high[..]);
                let kept = match dtype {
                    DType::Q4k => Kept::Q4k { codes, headers },
                    DType::Q5k => Kept::Q5k { codes, headers, high },
                    _ => Kept::Q6k { codes, headers, high },
                };
                Some(Matrix::Kept { kept, rows, cols })
            }
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::Packed(p) => p.cols(),
            Matrix::Kept { cols, .. } => *cols,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Matrix::Packed(p) => p.rows(),
            Matrix::Kept { rows, .. } => *rows,
        }
    }

    /// How the activations must be quantized for this matrix.
    pub fn layout(&self) -> Layout {
        match self {
            Matrix::Packed(p) => p.layout(),
            Matrix::Kept { .. } => Layout::Q4 { group: BLOCK },
        }
    }
}

impl<'a> Packed<'a> {
    /// The packed view of `w`, or `None` for float weights or arrays whose lengths do not match
    /// the shape (the SIMD kernels rely on them).
    pub fn of(w: &'a Tensor) -> Option<Packed<'a>> {
        let (rows, cols) = (w.rows(), w.cols());
        if cols == 0 {
            return None;
        }
        match &w.data {
            TensorData::Q4(q) => {
                let g = q.group;
                let ok = g % BLOCK == 0
                    && cols % g == 0
                    && q.codes.len() == rows * cols / 2
                    && q.scales.len() == rows * cols / g
                    && q.mins.len() == q.scales.len();
                ok.then_some(Packed::Q4 { codes: &q.codes, scales: &q.scales, mins: &q.mins, group: g, cols })
            }
            TensorData::Q8(q) => {
                let ok = cols % BLOCK == 0 && q.codes.len() == rows * cols && q.scales.len() == rows * cols / BLOCK;
                ok.then_some(Packed::Q8 { codes: &q.codes, scales: &q.scales, cols })
            }
            _ => None,
        }
    }

    pub fn cols(&self) -> usize {
        match *self {
            Packed::Q4 { cols, .. } | Packed::Q8 { cols, .. } => cols,
        }
    }

    pub fn rows(&self) -> usize {
        match *self {
            Packed::Q4 { codes, cols, .. } => codes.len() * 2 / cols,
            Packed::Q8 { codes, cols, .. } => codes.len() / cols,
        }
    }

    /// How the activations must be quantized for this matrix.
    pub fn layout(&self) -> Layout {
        match *self {
            Packed::Q4 { group, .. } => Layout::Q4 { group },
            Packed::Q8 { .. } => Layout::Q8,
        }
    }
}

/// The kernels a CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Simd {
    Scalar,
    /// AVX2 with FMA and F16C (x86-64 from Haswell on).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// wasm SIMD128, when the module is built with it (`-C target-feature=+simd128`): wasm has
    /// no run-time detection, and a module using it does not load where it is missing.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    /// SIMD128 with relaxed SIMD's 8-bit dot products for q4 weights, in a module built with the
    /// `relaxed-simd` feature (which then loads only where the browser has relaxed SIMD; the
    /// package's loader probes for it). Its outputs equal `Simd128`'s bit for bit.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
    RelaxedSimd128,
}

impl Simd {
    /// The best this CPU offers.
    pub fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return Simd::Avx2;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
        return Simd::RelaxedSimd128;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128", not(feature = "relaxed-simd")))]
        return Simd::Simd128;
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        Simd::Scalar
    }

    /// The kernels' name as `engine.info` reports it: "scalar", "avx2", "simd128", "relaxed-simd".
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => "avx2",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Simd::Simd128 => "simd128",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Simd::RelaxedSimd128 => "relaxed-simd",
        }
    }

    /// Rows `first..first + out.len() / a.n` of `w` times every token of `a` (quantized with
    /// `w.layout()`), into `out` as `[row][token]`.
    pub fn rows<'a>(self, w: impl Into<Matrix<'a>>, first: usize, a: &Acts, out: &mut [f32]) {
        let w: Matrix = w.into();
        assert!(a.cols == w.cols() && a.n > 0 && out.len() % a.n == 0, "kernel operands disagree");
        assert!(first + out.len() / a.n <= w.rows(), "rows outside the matrix");
        assert!(a.codes.len() == a.n * a.cols && a.scales.len() == a.n * a.cols / BLOCK);
        if let Layout::Q4 { group } = w.layout() {
            assert_eq!(a.group_sums.len(), a.n * a.cols / group, "activations quantized for another layout");
        }
        let w = match w {
            Matrix::Packed(p) => p,
            Matrix::Kept { kept, cols, .. } => {
                // SAFETY: the CPU has the features (`detect`).
                #[cfg(target_arch = "x86_64")]
                if self == Simd::Avx2 {
                    return unsafe { kept::rows_avx2(kept, cols, first, a, out) };
                }
                return kept::rows(kept, cols, first, a, out);
            }
        };
        match self {
            Simd::Scalar => rows_scalar(w, first, a, out),
            // SAFETY: the CPU has the features (`detect`), and every length was checked above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { super::avx2::rows(w, first, a, out) },
            // SAFETY: every length was checked above.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Simd::Simd128 => unsafe { super::simd128::rows(w, first, a, out) },
            // SAFETY: as above; the module was built with relaxed SIMD, so it runs where that exists.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            Simd::RelaxedSimd128 => unsafe { super::simd128::rows_relaxed(w, first, a, out) },
        }
    }
}

/// The scalar kernels, row by row and token by token.
pub fn rows_scalar<'a>(w: impl Into<Matrix<'a>>, first: usize, a: &Acts, out: &mut [f32]) {
    let w = match w.into() {
        Matrix::Packed(p) => p,
        Matrix::Kept { kept, cols, .. } => return kept::rows(kept, cols, first, a, out),
    };
    for (j, dst) in out.chunks_exact_mut(a.n).enumerate() {
        let r = first + j;
        for (t, d) in dst.iter_mut().enumerate() {
            *d = match w {
                Packed::Q4 { codes, scales, mins, group, cols } => {
                    let gpr = cols / group;
                    let g = r * gpr..(r + 1) * gpr;
                    q4_dot(&codes[r * cols / 2..(r + 1) * cols / 2], &scales[g.clone()], &mins[g], group, a, t)
                }
                Packed::Q8 { codes, scales, cols } => {
                    q8_dot(&codes[r * cols..(r + 1) * cols], &scales[r * cols / BLOCK..(r + 1) * cols / BLOCK], a, t)
                }
            };
        }
    }
}

/// One q4 row times token `t`: Σ_g s_g Σ_b d_b (Σ_k q_k x_k) + Σ_g m_g Σ_{k in g} x_k.
fn q4_dot(codes: &[u8], scales: &[f16], mins: &[f16], group: usize, a: &Acts, t: usize) -> f32 {
    let (x, d) = (a.codes(t), a.scales(t));
    let per_group = group / BLOCK;
    let mut total = 0f32;
    for (g, (s, m)) in scales.iter().zip(mins).enumerate() {
        let s = s.to_f32();
        for b in g * per_group..(g + 1) * per_group {
            let (c, xb) = (&codes[b * BLOCK / 2..(b + 1) * BLOCK / 2], &x[b * BLOCK..(b + 1) * BLOCK]);
            let (even, odd) = xb.split_at(BLOCK / 2);
            let sum: i32 = c
                .iter()
                .zip(even.iter().zip(odd))
                .map(|(&c, (&e, &o))| i32::from(c & 0x0f) * i32::from(e) + i32::from(c >> 4) * i32::from(o))
                .sum();
            total += sum as f32 * (s * d[b]);
        }
        total += m.to_f32() * a.group_sums(t)[g];
    }
    total
}

/// One q8 row times token `t`: Σ_b s_b d_b (Σ_k q_k x_k).
fn q8_dot(codes: &[i8], scales: &[f16], a: &Acts, t: usize) -> f32 {
    let (x, d) = (a.codes(t), a.scales(t));
    let mut total = 0f32;
    for (b, s) in scales.iter().enumerate() {
        let range = b * BLOCK..(b + 1) * BLOCK;
        let sum: i32 = codes[range.clone()].iter().zip(&x[range]).map(|(&w, &x)| i32::from(w) * i32::from(x)).sum();
        total += sum as f32 * (s.to_f32() * d[b]);
    }
    total
}
