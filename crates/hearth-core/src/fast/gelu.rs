//! GELU as llama.cpp's CPU backend computes it by default (`GGML_GELU_FP16`): the input rounded to
//! f16 and looked up in a table of the tanh approximation over every f16 value, the result an f16
//! value; below -10 it is 0 and from 10 on `x` itself. Gemma's GeGLU evaluates it for every
//! feed-forward value of every token, and a `tanh` per value (the reference's exact function) was
//! about a tenth of Gemma 3's prefill; a lookup costs a conversion and a load. The rounding is
//! llama.cpp's, like the fast engine's 8-bit activations, and the table is computed in f64 and
//! rounded once, so every target (x86-64, wasm) holds the same table.

use std::sync::OnceLock;

use half::f16;

/// GELU (tanh approximation) through the f16 table.
pub fn gelu_f16(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table()[usize::from(f16::from_f32(x).to_bits())]
    }
}

/// `gelu(x)` rounded to f16 (held as f32) for each f16 bit pattern `x`.
fn table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let x = f64::from(f16::from_bits(bits).to_f32());
                let y = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x * x * x)).tanh());
                f16::from_f64(y).to_f32()
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gelu_tanh;

    /// Within f16's rounding of the input and of the output (plus the reference's own f32 error)
    /// of the exact function, over the range the table serves and its two cut-offs.
    #[test]
    fn the_table_is_the_exact_function_rounded_to_f16() {
        for i in -12_000..=12_000 {
            let x = i as f32 / 1000.0;
            let (got, exact) = (gelu_f16(x), gelu_tanh(x));
            // Rounding x to f16 moves it by up to 2^-11 |x|, which GELU's slope (at most 1.13)
            // carries over; rounding the result adds 2^-11 |y|.
            let bound = 1.13 * x.abs() / 2048.0 + exact.abs() / 2048.0 + 1e-6;
            let bound = if x.abs() >= 10.0 { 1e-6 + exact.abs() * 1e-6 } else { bound };
            assert!((got - exact).abs() <= bound, "x={x}: {got} vs {exact}");
        }
        assert_eq!(gelu_f16(-10.0), 0.0);
        assert_eq!(gelu_f16(10.0), 10.0);
        assert!(gelu_f16(f32::NAN).is_nan());
    }

    /// Two values whose table entries are known from llama.cpp's formula: gelu(1) = 0.841192 and
    /// gelu(-1) = -0.158808 (0.5 · x · (1 + tanh(√(2/π) · 1.044715))), each as the nearest f16.
    #[test]
    fn known_values() {
        assert_eq!(gelu_f16(1.0), f16::from_f64(0.841_191_990_607_5).to_f32());
        assert_eq!(gelu_f16(-1.0), f16::from_f64(-0.158_808_009_392_5).to_f32());
    }
}
