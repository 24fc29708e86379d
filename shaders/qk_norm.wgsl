// OLMoE's QK-norm: each token's whole query (all heads together) and whole key RMS-normalized, in
// place in the QKV product's output, before rope.wgsl rotates and stores them (the per-head norm of
// Qwen3 and Gemma 3 is rope.wgsl's QK_NORM). One workgroup per (part, token), part 0 the query and
// 1 the key: its 64 invocations share out the part's values, add up their squares in workgroup
// memory, then scale them. The weights are [query's q_dim | key's kv_dim].

struct Dims {
    q_dim: u32,
    kv_dim: u32,
    // Values per token in qkv: q_dim + 2 kv_dim.
    row: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;

var<workgroup> squares: array<f32, 64>;

@compute @workgroup_size(64)
fn qk_norm_whole(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let t = wg.y;
    // The same for the whole workgroup, so the barriers stay uniform.
    if (t >= step.n_tokens) {
        return;
    }
    let first = select(0u, dims.q_dim, wg.x == 1u);
    let len = select(dims.q_dim, dims.kv_dim, wg.x == 1u);
    let base = t * dims.row + first;
    var acc = 0.0;
    for (var i = lid; i < len; i = i + 64u) {
        acc = acc + qkv[base + i] * qkv[base + i];
    }
    squares[lid] = acc;
    for (var half = 32u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lid < half) {
            squares[lid] = squares[lid] + squares[lid + half];
        }
    }
    workgroupBarrier();
    // 1 / sqrt, not inverseSqrt: some drivers give inverseSqrt a fast estimate (~12 bits).
    let inv = 1.0 / sqrt(squares[0] / f32(len) + dims.eps);
    for (var i = lid; i < len; i = i + 64u) {
        qkv[base + i] = qkv[base + i] * inv * weight[first + i];
    }
}
