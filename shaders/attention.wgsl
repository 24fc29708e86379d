// Causal grouped-query attention of the step's tokens over the KV cache. One workgroup per
// (query head, token) (`attention`), or one invocation per (query head, token) on software adapters,
// where barriers are dear (`attention_rows`). Scores go to a scratch buffer (one row of `context` per head and token), so
// any context length fits; three passes: scores and their max, exponentials and their sum, then
// the weighted sum of values.
//
// The cache holds `[position][n_kv_heads * head_dim]` f32 per layer; the step's own keys and values
// are in it already (the kv_store step of elementwise.wgsl runs first).

struct Dims {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    context: u32,
    scale: f32,
}

struct Step {
    start: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 64>;

// Scaled dot product of the query at q_base with the key at k_base.
fn score(q_base: u32, k_base: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < dims.head_dim; d = d + 1u) {
        s = s + q[q_base + d] * k_cache[k_base + d];
    }
    return s * dims.scale;
}

fn reduce(lid: u32, value: f32, is_max: bool) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let other = partial[lid + stride];
            partial[lid] = select(partial[lid] + other, max(partial[lid], other), is_max);
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let head = wg.x;
    let t = wg.y;
    let lid = lid3.x;
    let hd = dims.head_dim;
    let kv_dim = dims.n_kv_heads * hd;
    let kvh = head / (dims.n_heads / dims.n_kv_heads);
    let pos = step.start + t;
    let q_base = (t * dims.n_heads + head) * hd;
    let s_base = (t * dims.n_heads + head) * dims.context;

    var local_max = -3.4e38;
    for (var p = lid; p <= pos; p = p + 64u) {
        let s = score(q_base, p * kv_dim + kvh * hd);
        scores[s_base + p] = s;
        local_max = max(local_max, s);
    }
    let m = reduce(lid, local_max, true);

    var local_sum = 0.0;
    for (var p = lid; p <= pos; p = p + 64u) {
        let e = exp(scores[s_base + p] - m);
        scores[s_base + p] = e;
        local_sum = local_sum + e;
    }
    let sum = reduce(lid, local_sum, false);
    storageBarrier();

    for (var d = lid; d < hd; d = d + 64u) {
        var acc = 0.0;
        for (var p = 0u; p <= pos; p = p + 1u) {
            acc = acc + scores[s_base + p] * v_cache[p * kv_dim + kvh * hd + d];
        }
        out[q_base + d] = acc / sum;
    }
}

@compute @workgroup_size(64)
fn attention_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let head = gid.x % dims.n_heads;
    let t = gid.x / dims.n_heads;
    if (t >= step.n_tokens) {
        return;
    }
    let hd = dims.head_dim;
    let kv_dim = dims.n_kv_heads * hd;
    let kvh = head / (dims.n_heads / dims.n_kv_heads);
    let pos = step.start + t;
    let q_base = (t * dims.n_heads + head) * hd;
    let s_base = (t * dims.n_heads + head) * dims.context;
    var m = -3.4e38;
    for (var p = 0u; p <= pos; p = p + 1u) {
        let s = score(q_base, p * kv_dim + kvh * hd);
        scores[s_base + p] = s;
        m = max(m, s);
    }
    var sum = 0.0;
    for (var p = 0u; p <= pos; p = p + 1u) {
        let e = exp(scores[s_base + p] - m);
        scores[s_base + p] = e;
        sum = sum + e;
    }
    for (var d = 0u; d < hd; d = d + 1u) {
        out[q_base + d] = 0.0;
    }
    for (var p = 0u; p <= pos; p = p + 1u) {
        let w = scores[s_base + p] / sum;
        let v_base = p * kv_dim + kvh * hd;
        for (var d = 0u; d < hd; d = d + 1u) {
            out[q_base + d] = out[q_base + d] + w * v_cache[v_base + d];
        }
    }
}
