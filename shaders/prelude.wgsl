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

