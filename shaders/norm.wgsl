// Norms as passes of their own: on software adapters one invocation per token (`rms_norm`,
// `layer_norm`), on GPUs one workgroup per token (`rms_norm_wide`, `layer_norm_wide`), whose 64
// invocations take every 64th value and add up their sums in workgroup memory. A lone invocation
// walking a token's values waits out one memory latency after another: on an H200 that made
// Gemma 3's 640-wide post-norms 135 µs each, more than the products around them.
//
// - `rms_norm`: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight. As a pre-norm only software
//   adapters run it: on GPUs the norm is fused into the matrix product that follows (matvec.wgsl's
//   NORM), but there each of a row-per-invocation product's invocations would redo the token's sum
//   of squares, which costs more than this one pass. With ADD, out[t] += that instead, on every
//   adapter: Gemma's norms of the attention and feed-forward outputs, added to the residual stream
//   in the same pass (their input is a product's output, so there is nothing to fuse them into).
// - `layer_norm`: out[t] = (x[t] - mean(x[t])) / sqrt(var(x[t]) + eps) * weight + bias, on every
//   adapter, for the architectures that use it (GPT-2, BLOOM).

struct Dims {
    hidden: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;

override ADD: bool = false;

@compute @workgroup_size(64)
fn rms_norm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= step.n_tokens) {
        return;
    }
    let base = t * dims.hidden;
    var acc = 0.0;
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        acc = acc + x[base + i] * x[base + i];
    }
    // 1 / sqrt, not inverseSqrt: some drivers give inverseSqrt a fast estimate (~12 bits).
    let inv = 1.0 / sqrt(acc / f32(dims.hidden) + dims.eps);
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        var v = x[base + i] * inv * weight[i];
        if (ADD) {
            v = v + out[base + i];
        }
        out[base + i] = v;
    }
}

@compute @workgroup_size(64)
fn layer_norm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= step.n_tokens) {
        return;
    }
    let base = t * dims.hidden;
    let n = f32(dims.hidden);
    var sum = 0.0;
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        sum = sum + x[base + i];
    }
    let mean = sum / n;
    // Two passes (mean, then squared deviations): no cancellation when |mean| >> spread.
    var squares = 0.0;
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        let d = x[base + i] - mean;
        squares = squares + d * d;
    }
    let inv = 1.0 / sqrt(squares / n + dims.eps);
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        out[base + i] = (x[base + i] - mean) * inv * weight[i] + bias[i];
    }
}

// ---- One workgroup per token (GPUs).

var<workgroup> partial: array<f32, 64>;

// The sum of every invocation's v, in every invocation (uniform control flow only).
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // Every invocation has read it before a next sum overwrites it.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64)
fn rms_norm_wide(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = wg.x;
    let lid = lid3.x;
    // The same for the whole workgroup, so the barriers stay uniform.
    if (t >= step.n_tokens) {
        return;
    }
    let base = t * dims.hidden;
    var acc = 0.0;
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        acc = acc + x[base + i] * x[base + i];
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid, acc) / f32(dims.hidden) + dims.eps);
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        var v = x[base + i] * inv * weight[i];
        if (ADD) {
            v = v + out[base + i];
        }
        out[base + i] = v;
    }
}

@compute @workgroup_size(64)
fn layer_norm_wide(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = wg.x;
    let lid = lid3.x;
    if (t >= step.n_tokens) {
        return;
    }
    let base = t * dims.hidden;
    let n = f32(dims.hidden);
    var sum = 0.0;
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        sum = sum + x[base + i];
    }
    let mean = workgroup_sum(lid, sum) / n;
    var squares = 0.0;
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        let d = x[base + i] - mean;
        squares = squares + d * d;
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid, squares) / n + dims.eps);
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        out[base + i] = (x[base + i] - mean) * inv * weight[i] + bias[i];
    }
}
