// After the QKV product: rotate queries and keys (RoPE), keep the rotated queries for attention,
// and store keys and values into the layer's KV cache. Prompts and software adapters run this
// pass; a GPU's decode step has its QKV product do the same in its epilogue (matvec.wgsl's
// `decode rope`) unless the model normalizes its query and key heads (QK_NORM), which needs a
// whole head per value. rotary.wgsl (put in front of this file) rotates. One invocation per pair of
// adjacent values (one cache word when the cache is f16) of one token; the token at row t sits at
// position step.start + t.
//
// qkv holds per token [q: n_heads * head_dim | k: n_kv_heads * head_dim | v: n_kv_heads * head_dim].
// With QKV_BIAS (Qwen2) the projections' biases, in the same layout, are added here as the values
// are read, rather than in a pass of their own. With QK_NORM (Gemma 3) each query and key head is
// RMS-normalized (weights: qk_norm = [query head weights | key head weights]) before it is rotated.
// The workgroup first sums the squares of every head its 128 values touch, all 64 invocations
// sharing out each head's values (`norm_heads`), rather than a pass of its own or each invocation
// walking its whole head: that serial walk (head_dim dependent reads per invocation) cost Gemma 3
// 23 µs a layer on an H200. Heads under NORM_SHARED_MIN_DIM values keep the walk (tiny models).
// Each output value reads its rotation partner from qkv (never from the output), so two invocations
// never touch the same word, in either pairing.
//
// The cache has `cache_rows` rows of n_kv_heads * head_dim values; position p lives in row
// p % cache_rows, so a sliding-window layer can keep a ring of `window` rows. Values are f32, or f16
// packed in pairs when KV_F16 (half the memory and half the bandwidth of attention).

struct Dims {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // Rotated pairs per head (the rope dim / 2); dimensions past 2 * n_pairs pass through.
    n_pairs: u32,
    // 0: pairs (2i, 2i+1) ("interleaved"); 1: pairs (i, i + n_pairs) ("neox").
    neox: u32,
    cache_rows: u32,
    // RMSNorm epsilon of QK_NORM.
    eps: f32,
    // What rotated values are multiplied by: YaRN's magnitude correction, 1 otherwise.
    magnitude: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(7) var<storage, read> qkv_bias: array<f32>;
@group(0) @binding(8) var<storage, read> qk_norm: array<f32>;

override KV_F16: bool = false;
override QKV_BIAS: bool = false;
override QK_NORM: bool = false;

// Value i of token t's qkv row (of `row` values), bias included.
fn qkv_value(t: u32, row: u32, i: u32) -> f32 {
    var v = qkv[t * row + i];
    if (QKV_BIAS) {
        v += qkv_bias[i];
    }
    return v;
}

// 1 / RMS of a head of token t's qkv row whose squares sum to `squares`.
fn inv_rms(squares: f32) -> f32 {
    // 1 / sqrt, not inverseSqrt: some drivers give inverseSqrt a fast estimate (~12 bits).
    return 1.0 / sqrt(squares / f32(dims.head_dim) + dims.eps);
}

// 1 / RMS of the head starting at value `base` of token t's qkv row, walked by one invocation.
fn head_inv_rms(t: u32, row: u32, base: u32) -> f32 {
    var acc = 0.0;
    for (var d = 0u; d < dims.head_dim; d = d + 1u) {
        let v = qkv_value(t, row, base + d);
        acc = acc + v * v;
    }
    return inv_rms(acc);
}

const WORKGROUP: u32 = 64u;
// Values (two per invocation) a workgroup rotates.
const WORKGROUP_VALUES: u32 = 2u * WORKGROUP;
// Heads of at least this many values are summed by the whole workgroup; a workgroup's 128 values
// then touch at most 128 / 32 + 1 heads.
const NORM_SHARED_MIN_DIM: u32 = 32u;
const NORM_HEADS_MAX: u32 = 5u;
// Each touched head's partial sums of squares, one per invocation, summed in place by a tree.
var<workgroup> norm_squares: array<array<f32, WORKGROUP>, NORM_HEADS_MAX>;

// Whether this workgroup sums its heads' squares together (`norm_heads`).
fn norm_shared() -> bool {
    return QK_NORM && dims.head_dim >= NORM_SHARED_MIN_DIM;
}

// The first query or key head that a workgroup starting at value `first` touches, and the sums of
// squares of it and the heads after it (up to NORM_HEADS_MAX) in norm_squares[j][0]. Every
// invocation of the workgroup calls this (it has barriers): invocation `lane` adds values lane,
// lane + 64, ... of each head.
fn norm_heads(t: u32, row: u32, first: u32, lane: u32) -> u32 {
    let hd = dims.head_dim;
    let normed = (dims.n_heads + dims.n_kv_heads) * hd;
    let head0 = first / hd;
    let heads = select(0u, (min(first + WORKGROUP_VALUES, normed) - 1u) / hd + 1u - head0, first < normed);
    for (var j = 0u; j < heads; j = j + 1u) {
        let base = (head0 + j) * hd;
        var acc = 0.0;
        for (var d = lane; d < hd; d = d + WORKGROUP) {
            let v = qkv_value(t, row, base + d);
            acc = acc + v * v;
        }
        norm_squares[j][lane] = acc;
    }
    for (var half = WORKGROUP / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (lane < half) {
            for (var j = 0u; j < heads; j = j + 1u) {
                norm_squares[j][lane] += norm_squares[j][lane + half];
            }
        }
    }
    workgroupBarrier();
    return head0;
}

// Where a head's norm weights start in qk_norm: query heads, then key heads.
struct Head {
    base: u32,
    inv_rms: f32,
    weights: u32,
}

// Head `base / head_dim` of token t; `head0` is the first head norm_heads summed.
fn head_at(t: u32, row: u32, base: u32, weights: u32, head0: u32) -> Head {
    var inv = 1.0;
    if (norm_shared()) {
        inv = inv_rms(norm_squares[base / dims.head_dim - head0][0]);
    } else if (QK_NORM) {
        inv = head_inv_rms(t, row, base);
    }
    return Head(base, inv, weights);
}

// Value d of head h, normalized with QK_NORM.
fn head_value(t: u32, row: u32, h: Head, d: u32) -> f32 {
    let v = qkv_value(t, row, h.base + d);
    if (QK_NORM) {
        return v * h.inv_rms * qk_norm[h.weights + d];
    }
    return v;
}

// Value d of head h of token t's qkv row, rotated for position `pos`.
fn rotated(t: u32, row: u32, h: Head, d: u32, pos: f32) -> f32 {
    var first: u32;
    var second: u32;
    var pair: u32;
    if (dims.neox == 1u) {
        pair = select(d - dims.n_pairs, d, d < dims.n_pairs);
        first = pair;
        second = pair + dims.n_pairs;
    } else {
        pair = d / 2u;
        first = d & ~1u;
        second = first + 1u;
    }
    if (pair >= dims.n_pairs || d >= 2u * dims.n_pairs) {
        return head_value(t, row, h, d);
    }
    let x0 = head_value(t, row, h, first);
    let x1 = head_value(t, row, h, second);
    return rotate_pair(x0, x1, pos * inv_freq[pair], d == first) * dims.magnitude;
}

fn store(cache_word: u32, a: f32, b: f32, is_key: bool) {
    if (KV_F16) {
        let word = pack2x16float(vec2<f32>(a, b));
        if (is_key) {
            k_cache[cache_word] = word;
        } else {
            v_cache[cache_word] = word;
        }
    } else {
        if (is_key) {
            k_cache[2u * cache_word] = bitcast<u32>(a);
            k_cache[2u * cache_word + 1u] = bitcast<u32>(b);
        } else {
            v_cache[2u * cache_word] = bitcast<u32>(a);
            v_cache[2u * cache_word + 1u] = bitcast<u32>(b);
        }
    }
}

@compute @workgroup_size(WORKGROUP)
fn rope_store(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let hd = dims.head_dim;
    let q_dim = dims.n_heads * hd;
    let kv_dim = dims.n_kv_heads * hd;
    let row = q_dim + 2u * kv_dim;
    let first = wid.x * WORKGROUP_VALUES;
    let e = first + 2u * lane;
    let t = wid.y;
    if (t >= step.n_tokens) {
        return;
    }
    var head0 = 0u;
    if (norm_shared()) {
        head0 = norm_heads(t, row, first, lane);
    }
    if (e >= row) {
        return;
    }
    let position = step.start + t;
    let pos = f32(position);
    let cache_row = (position % dims.cache_rows) * kv_dim;
    if (e < q_dim) {
        let h = head_at(t, row, (e / hd) * hd, 0u, head0);
        let d = e % hd;
        q[t * q_dim + e] = rotated(t, row, h, d, pos);
        q[t * q_dim + e + 1u] = rotated(t, row, h, d + 1u, pos);
    } else if (e < q_dim + kv_dim) {
        let i = e - q_dim;
        let h = head_at(t, row, q_dim + (i / hd) * hd, hd, head0);
        let d = i % hd;
        store((cache_row + i) / 2u, rotated(t, row, h, d, pos), rotated(t, row, h, d + 1u, pos), true);
    } else {
        let i = e - q_dim - kv_dim;
        store((cache_row + i) / 2u, qkv_value(t, row, e), qkv_value(t, row, e + 1u), false);
    }
}
