//! The fast engine's softmax over attention scores. The reference's (`cpu::softmax`) calls the
//! platform's `expf` per score and adds the exponentials in one chain; at a context of a few
//! thousand positions that was a fifth of a SmolLM2 decode step's attention. Here `exp` is a
//! polynomial of plain f32 operations (no FMA, no library call) that compilers vectorize, and the
//! sum runs in eight lanes added in a fixed order, so x86-64 and wasm compute the same bits
//! (`tests/simd_kernels.rs` holds both to one digest).

/// `x[i] = exp(x[i] - max) / Σ exp(x[j] - max)`.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (v, lane) in chunk.iter_mut().zip(&mut lanes) {
            *v = exp_nonpositive(*v - max);
            *lane += *v;
        }
    }
    for (v, lane) in chunks.into_remainder().iter_mut().zip(&mut lanes) {
        *v = exp_nonpositive(*v - max);
        *lane += *v;
    }
    let sum = lanes.iter().fold(0f32, |s, l| s + l);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// e^x for x ≤ 0 (a score minus the maximum) within 2 ulp; below -87 (where e^x nears f32's
/// smallest normal value) it returns e^-87, which no softmax sum notices. x = n·ln 2 + r with
/// n = round(x / ln 2) and |r| ≤ ln 2 / 2, e^r by Cephes' `expf` polynomial, times 2^n built from
/// its bits (n ≥ -126, so a normal number).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to the nearest integer (ties to even) for |y| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64s() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) / 10_000.0;
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            let ulp = f64::from(f32::EPSILON) * want.abs();
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) > 0.0 && exp_nonpositive(-1000.0) < 2e-38);
    }

    /// Against softmax in f64: each exponential is within 2 ulp and the sum of n of them, in
    /// eight lanes of n / 8 terms, within (n / 8 + 8) ulp, so the quotient is within a few ulp
    /// more than that.
    #[test]
    fn softmax_is_within_its_rounding_of_f64s() {
        for n in [1, 5, 8, 9, 64, 1001, 4099] {
            let scores: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0).collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(f64::from(s)));
            let exps: Vec<f64> = scores.iter().map(|&s| (f64::from(s) - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut fast = scores;
            softmax(&mut fast);
            let tol = (n as f64 / 8.0 + 14.0) * f64::from(f32::EPSILON);
            for (f, e) in fast.iter().zip(&exps) {
                let want = e / total;
                assert!((f64::from(*f) - want).abs() <= tol * want, "n={n}: {f} vs {want}");
            }
        }
    }
}
