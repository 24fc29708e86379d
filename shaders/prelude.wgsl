// Declarations every module shares, put in front of each (kernels.rs: `with_prelude`), so each is
// written once.

// The step uniform (builder.rs's `Step`, mirrored): the first token's position and how many tokens
// the step runs.
struct Step {
    start: u32,
    n_tokens: u32,
}

// Component i (0..7) of the pair (lo, hi): eight values kept in two vectors (registers), since a
// function-scope array indexed in a loop may live in memory.
fn pick(lo: vec4<f32>, hi: vec4<f32>, i: u32) -> f32 {
    return select(lo, hi, i >= 4u)[i % 4u];
}

// An activation: 0 none, 1 SiLU, 2 GELU (tanh approximation), 3 a soft cap `cap · tanh(v / cap)`,
// 4 the exact GELU `v · Φ(v)` of BERT (erf from `erf_approx`).
// `act` is an override constant at every call, so the branches are settled when the pipeline is
// built.
fn activate(v: f32, act: u32, cap: f32) -> f32 {
    if (act == 1u) {
        return v / (1.0 + exp(-v));
    } else if (act == 2u) {
        // tanh saturates long before 10; clamping keeps every implementation away from exp overflow.
        return 0.5 * v * (1.0 + tanh(clamp(0.7978845608 * (v + 0.044715 * v * v * v), -10.0, 10.0)));
    } else if (act == 3u) {
        return cap * tanh(v / cap);
    } else if (act == 4u) {
        return 0.5 * v * (1.0 + erf_approx(v * 0.70710678));
    }
    return v;
}

// erf(x), which WGSL lacks, within 1.5e-7 of the true value (Abramowitz & Stegun 7.1.26): below
// f32's rounding of the GELU it feeds for |v| >~ 1, and 1e-7 absolute near 0, where the GELU is
// v / 2 times a factor near 1. exp(-x²) underflows cleanly to 0 far out.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-a * a));
}

