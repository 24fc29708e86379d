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

// An activation: 0 none, 1 SiLU, 2 GELU (tanh approximation), 3 a soft cap `cap · tanh(v / cap)`.
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
    }
    return v;
}

