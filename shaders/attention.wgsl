// Causal grouped-query attention of the step's tokens over the KV cache. One workgroup per
// (query head, token) (`attention`), or one invocation per (query head, token) on software adapters,
// where barriers are dear (`attention_rows`). Scores go to a scratch buffer (one row of `context`
// per head and token), so any context length fits; three passes: scores and their max,
// exponentials and their sum, then the weighted sum of values.
//
// Mesa's lavapipe stops any shader invocation after 65,535 loop iterations in all (llvmpipe's loop
// limiter) and carries on with wrong values, silently. `attention_rows` runs about
// (head_dim / 2 + 2) iterations per visible position (head_dim / 4 for the scores, as many for the
// values, two more), so the engine uses it only while that stays under 55,000 (kernels.rs:
// ROWS_ATTENTION_MAX_ITERATIONS: 1,617 positions of head_dim 64, 423 of 256) and the cooperative
// kernel, 64 times fewer iterations per invocation, beyond.
//
// The cache holds rows of n_kv_heads * head_dim values per layer, position p in row p % cache_rows
// (see rope.wgsl, which stored the step's own keys and values before this runs), as f32 or, when
// KV_F16, as f16 pairs packed in u32. With a sliding window of W keys a query at position p sees
// positions p - W + 1 ..= p, and the layer's cache is a ring of W + (tokens per step) - 1 rows: the
// step's own keys, all stored before any query reads, never overwrite a key one of its queries sees.

struct Dims {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // Scores per (head, token) row of the scratch buffer.
    context: u32,
    scale: f32,
    cache_rows: u32,
    // Keys a query sees, its own included; 0: all earlier positions.
    window: u32,
    // ALiBi's maximum bias (BLOOM: 8); 0: no ALiBi.
    alibi_max_bias: f32,
    // Scores become softcap * tanh(score / softcap) (Gemma 2); 0: no cap.
    softcap: f32,
}

struct Step {
    start: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;

var<workgroup> partial: array<f32, 64>;

override KV_F16: bool = false;

// Four values of a cache from i (a multiple of 4: head_dim is), whichever way it is stored. Four
// at a time keeps loads wide and loop counts low (see the top of this file).
fn cached4(i: u32, is_key: bool) -> vec4<f32> {
    if (KV_F16) {
        let w = i / 2u;
        var lo: u32;
        var hi: u32;
        if (is_key) {
            lo = k_cache[w];
            hi = k_cache[w + 1u];
        } else {
            lo = v_cache[w];
            hi = v_cache[w + 1u];
        }
        return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
    }
    var words: vec4<u32>;
    if (is_key) {
        words = vec4<u32>(k_cache[i], k_cache[i + 1u], k_cache[i + 2u], k_cache[i + 3u]);
    } else {
        words = vec4<u32>(v_cache[i], v_cache[i + 1u], v_cache[i + 2u], v_cache[i + 3u]);
    }
    return bitcast<vec4<f32>>(words);
}

// Where position p's row starts in the cache.
fn cache_row(a_kv_dim: u32, p: u32) -> u32 {
    return (p % dims.cache_rows) * a_kv_dim;
}

// Scaled dot product of the query at q_base with the key at k_base.
fn score(q_base: u32, k_base: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < dims.head_dim; d = d + 4u) {
        s = s + dot(q[(q_base + d) / 4u], cached4(k_base + d, true));
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

// Where one (query head, token) pair reads and writes.
struct Query {
    q_base: u32,
    s_base: u32,
    // Offset of its kv head within a cache row, and the row length.
    kv_offset: u32,
    kv_dim: u32,
    // Its position: it sees keys first..=pos.
    pos: u32,
    first: u32,
    // ALiBi: what each position of distance costs this head's scores (0 without ALiBi).
    slope: f32,
}

// ALiBi's slope of `head`, as llama.cpp computes it: for n the largest power of two not above the
// head count, heads below n get 2^(-max_bias (h + 1) / n), the others the odd steps between them,
// 2^(-max_bias (2 (h - n) + 1) / (2 n)). Exponents of exact binary fractions, so exp2 is exact
// where the result is.
fn alibi_slope(head: u32) -> f32 {
    if (dims.alibi_max_bias == 0.0) {
        return 0.0;
    }
    let n = 1u << firstLeadingBit(dims.n_heads);
    if (head < n) {
        return exp2(-dims.alibi_max_bias * f32(head + 1u) / f32(n));
    }
    return exp2(-dims.alibi_max_bias * f32(2u * (head - n) + 1u) / f32(2u * n));
}

fn query_of(head: u32, t: u32) -> Query {
    let hd = dims.head_dim;
    let kvh = head / (dims.n_heads / dims.n_kv_heads);
    let row = t * dims.n_heads + head;
    let pos = step.start + t;
    var first = 0u;
    if (dims.window > 0u && pos + 1u > dims.window) {
        first = pos + 1u - dims.window;
    }
    return Query(row * hd, row * dims.context, kvh * hd, dims.n_kv_heads * hd, pos, first, alibi_slope(head));
}

// The three passes over positions a.first + lane, a.first + lane + stride, ... (or dimensions, for
// the last one):
// both variants below call them, the cooperative one with its invocation index and 64.

fn write_scores(a: Query, lane: u32, stride: u32) -> f32 {
    var local_max = -3.4e38;
    for (var p = a.first + lane; p <= a.pos; p = p + stride) {
        var s = score(a.q_base, cache_row(a.kv_dim, p) + a.kv_offset);
        if (dims.softcap > 0.0) {
            s = dims.softcap * tanh(s / dims.softcap);
        }
        s = s - a.slope * f32(a.pos - p);
        scores[a.s_base + p] = s;
        local_max = max(local_max, s);
    }
    return local_max;
}

fn exponentiate(a: Query, m: f32, lane: u32, stride: u32) -> f32 {
    var local_sum = 0.0;
    for (var p = a.first + lane; p <= a.pos; p = p + stride) {
        let e = exp(scores[a.s_base + p] - m);
        scores[a.s_base + p] = e;
        local_sum = local_sum + e;
    }
    return local_sum;
}

// Over groups of four dimensions lane, lane + stride, ...
fn weigh_values(a: Query, sum: f32, lane: u32, stride: u32) {
    for (var d = 4u * lane; d < dims.head_dim; d = d + 4u * stride) {
        var acc = vec4<f32>(0.0);
        for (var p = a.first; p <= a.pos; p = p + 1u) {
            acc = acc + scores[a.s_base + p] * cached4(cache_row(a.kv_dim, p) + a.kv_offset + d, false);
        }
        out[(a.q_base + d) / 4u] = acc / sum;
    }
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let a = query_of(wg.x, wg.y);
    let m = reduce(lid, write_scores(a, lid, 64u), true);
    let sum = reduce(lid, exponentiate(a, m, lid, 64u), false);
    storageBarrier();
    weigh_values(a, sum, lid, 64u);
}

@compute @workgroup_size(64)
fn attention_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x / dims.n_heads;
    if (t >= step.n_tokens) {
        return;
    }
    let a = query_of(gid.x % dims.n_heads, t);
    let m = write_scores(a, 0u, 1u);
    let sum = exponentiate(a, m, 0u, 1u);
    weigh_values(a, sum, 0u, 1u);
}
