// Causal grouped-query attention of the step's tokens over the KV cache, in one of two splits:
//
// - `attention_split` + `attention_combine` (GPUs, and software adapters past their loop limit):
//   "flash-decoding". The positions a query sees are cut into tiles of 64, the tiles shared out
//   among `splits` workgroups per (KV head, token); each workgroup serves every query head of its
//   KV head (up to 8 at once), so a K or V row is read once per KV head (and group of 8 query
//   heads), not once per query head.
//   Within a workgroup, invocation i scores position i of a tile against all those heads; then the
//   invocations work across head dimensions (and across positions where a head has fewer than 64
//   dimensions / 4) to weigh the values. The softmax is online: a running maximum, sum and weighted
//   sum, rescaled as each tile raises the maximum. Each workgroup writes its (weighted sum, max,
//   sum) per head; `attention_combine` merges a head's splits, one invocation per four output
//   dimensions, with no barrier. A decode step takes a split per tile, up to `splits_decode`; over
//   a few tiles only (short context) a single split, which writes the output itself, and the
//   combine pass is not recorded. Nothing scales with the context but the loop over tiles, so no
//   scores buffer is needed and decode at long context fills the GPU with workgroups.
// - `attention_rows` (software adapters, where barriers are dear): one invocation per (query head,
//   token), scores in a scratch buffer (one row of `context` per head and token); three passes:
//   scores and their max, exponentials and their sum, then the weighted sum of values.
//
// Mesa's lavapipe stops any shader invocation after 65,535 loop iterations in all (llvmpipe's loop
// limiter) and carries on with wrong values, silently. `attention_rows` runs about
// (head_dim / 2 + 2) iterations per visible position (head_dim / 4 for the scores, as many for the
// values, two more), so the engine uses it only while that stays under 55,000 (kernels.rs:
// ROWS_ATTENTION_MAX_ITERATIONS: 1,617 positions of head_dim 64, 423 of 256) and the split kernel
// beyond, with enough splits that no invocation loops over more tiles than that budget allows
// (attention.rs chooses them).
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
    // Workgroups per (KV head group, token) of the split kernel: the most for one token (decode
    // takes one per tile up to this many), and the count for several (the dispatch grid's x;
    // attention.rs chooses them and computes `splits()` the same way).
    splits_decode: u32,
    splits_prefill: u32,
    // Decode over at most this many tiles takes a single split.
    one_split_tiles: u32,
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
// The split kernel's results: per (token, query head, split) a record of head_dim / 4 + 1 vec4s,
// the weighted sum of values then (max, sum, 0, 0).
@group(0) @binding(7) var<storage, read_write> partials: array<vec4<f32>>;

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

// Dot product of the query at q_base with the key at k_base (finish_score makes it a score).
fn query_dot_key(q_base: u32, k_base: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < dims.head_dim; d = d + 4u) {
        s = s + dot(q[(q_base + d) / 4u], cached4(k_base + d, true));
    }
    return s;
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

// The row split's three passes, over positions a.first ..= a.pos (or dimensions, for the last).

// A raw dot product of query and key turned into a score: scaled, soft-capped (Gemma 2), and less
// ALiBi's slope per position of distance.
fn finish_score(dot_product: f32, slope: f32, distance: u32) -> f32 {
    var s = dot_product * dims.scale;
    if (dims.softcap > 0.0) {
        s = dims.softcap * tanh(s / dims.softcap);
    }
    return s - slope * f32(distance);
}

fn write_scores(a: Query) -> f32 {
    var local_max = -3.4e38;
    for (var p = a.first; p <= a.pos; p = p + 1u) {
        let s = finish_score(query_dot_key(a.q_base, cache_row(a.kv_dim, p) + a.kv_offset), a.slope, a.pos - p);
        scores[a.s_base + p] = s;
        local_max = max(local_max, s);
    }
    return local_max;
}

fn exponentiate(a: Query, m: f32) -> f32 {
    var local_sum = 0.0;
    for (var p = a.first; p <= a.pos; p = p + 1u) {
        let e = exp(scores[a.s_base + p] - m);
        scores[a.s_base + p] = e;
        local_sum = local_sum + e;
    }
    return local_sum;
}

fn weigh_values(a: Query, sum: f32) {
    for (var d = 0u; d < dims.head_dim; d = d + 4u) {
        var acc = vec4<f32>(0.0);
        for (var p = a.first; p <= a.pos; p = p + 1u) {
            acc = acc + scores[a.s_base + p] * cached4(cache_row(a.kv_dim, p) + a.kv_offset + d, false);
        }
        out[(a.q_base + d) / 4u] = acc / sum;
    }
}

@compute @workgroup_size(64)
fn attention_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x / dims.n_heads;
    if (t >= step.n_tokens) {
        return;
    }
    let a = query_of(gid.x % dims.n_heads, t);
    let m = write_scores(a);
    let sum = exponentiate(a, m);
    weigh_values(a, sum);
}

// ---- The split kernel ("flash-decoding") and its combine pass.

// Positions per tile: one per invocation while scoring.
const TILE: u32 = 64u;
// Query heads one workgroup serves (all of one KV head's, up to this many; more go to more
// workgroups) and the widest head: what the workgroup arrays below are sized for (12 KiB in all,
// under WebGPU's guaranteed 16 KiB).
const HEADS: u32 = 8u;
const HEAD_DIM_MAX: u32 = 256u;
// Below every real score (a finite stand-in for -infinity, so exp(NONE - m) is a clean 0).
const NONE: f32 = -3.4e38;

// The workgroup's queries, [head][head_dim / 4]; after the last tile, the value sums of its
// position groups.
var<workgroup> shared_vectors: array<vec4<f32>, 512>;
// A tile's scores, then its softmax weights: [head][TILE].
var<workgroup> tile_weights: array<f32, 512>;
// Per-invocation values being reduced: [head][64].
var<workgroup> reduction: array<f32, 512>;

// The split count of this step (attention.rs's `AttentionDims::splits` mirrors it: the host
// sizes the grid and skips the combine pass with it). A decode step takes a split per tile its
// query sees, up to splits_decode, and a single one over at most one_split_tiles tiles.
fn splits() -> u32 {
    if (step.n_tokens > 1u) {
        return dims.splits_prefill;
    }
    var seen = step.start + 1u;
    if (dims.window > 0u) {
        seen = min(seen, dims.window);
    }
    let tiles = (seen + TILE - 1u) / TILE;
    return select(min(dims.splits_decode, tiles), 1u, tiles <= dims.one_split_tiles);
}

// Where the record of (token t, query head h, split s) starts in `partials`.
fn record(t: u32, h: u32, s: u32) -> u32 {
    return ((t * dims.n_heads + h) * splits() + s) * (dims.head_dim / 4u + 1u);
}

// Reduce reduction[g * 64 + lid] over the 64 invocations, for every head g at once (max or sum);
// the results land in reduction[g * 64].
fn reduce_heads(lid: u32, is_max: bool) {
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            for (var g = 0u; g < HEADS; g = g + 1u) {
                let i = g * 64u + lid;
                let other = reduction[i + stride];
                reduction[i] = select(reduction[i] + other, max(reduction[i], other), is_max);
            }
        }
        workgroupBarrier();
    }
}

// Workgroup (split, head group, token): the query heads head0 .. head0 + n_h of one KV head, over
// the tiles of positions this split owns.
@compute @workgroup_size(64)
fn attention_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let group_size = dims.n_heads / dims.n_kv_heads;
    let groups_per_kv = (group_size + HEADS - 1u) / HEADS;
    let kv_head = wg.y / groups_per_kv;
    let head0 = kv_head * group_size + (wg.y % groups_per_kv) * HEADS;
    let n_h = min(HEADS, (kv_head + 1u) * group_size - head0);
    let t = wg.z;
    let a = query_of(head0, t);
    let hd4 = dims.head_dim / 4u;
    // The visible positions a.first ..= a.pos in tiles, shared out evenly among the splits (they
    // differ by one tile at most).
    let tiles = (a.pos - a.first + TILE) / TILE;
    let tile_begin = wg.x * tiles / splits();
    let tile_end = (wg.x + 1u) * tiles / splits();

    // The queries (heads are consecutive in q), staged once for every position.
    for (var i = lid; i < n_h * hd4; i = i + 64u) {
        shared_vectors[i] = q[a.q_base / 4u + i];
    }
    var slope: array<f32, HEADS>;
    for (var g = 0u; g < HEADS; g = g + 1u) {
        slope[g] = alibi_slope(head0 + g);
    }
    workgroupBarrier();

    // Weighing the values, invocation lid takes dimensions 4 * lane .. + 4 of every position
    // group-th position; with heads of 64 dimensions, 16 lanes and 4 position groups.
    let groups = 64u / hd4;
    let lane = lid % hd4;
    let position_group = lid / hd4;
    var m: array<f32, HEADS>;
    var l: array<f32, HEADS>;
    var acc: array<vec4<f32>, HEADS>;
    for (var g = 0u; g < HEADS; g = g + 1u) {
        m[g] = NONE;
    }
    for (var tile = tile_begin; tile < tile_end; tile = tile + 1u) {
        let tile_first = a.first + tile * TILE;
        // Scores of position tile_first + lid against every head.
        let p = tile_first + lid;
        var s: array<f32, HEADS>;
        if (p <= a.pos) {
            let k_base = cache_row(a.kv_dim, p) + a.kv_offset;
            for (var d = 0u; d < hd4; d = d + 1u) {
                let k = cached4(k_base + 4u * d, true);
                // To the constant HEADS (guarded), so the loop unrolls and s stays in registers.
                for (var g = 0u; g < HEADS; g = g + 1u) {
                    if (g < n_h) {
                        s[g] = s[g] + dot(shared_vectors[g * hd4 + d], k);
                    }
                }
            }
        }
        for (var g = 0u; g < HEADS; g = g + 1u) {
            var v = NONE;
            if (p <= a.pos && g < n_h) {
                v = finish_score(s[g], slope[g], a.pos - p);
            }
            tile_weights[g * TILE + lid] = v;
            reduction[g * 64u + lid] = v;
        }
        reduce_heads(lid, true);
        // The new maximum of each head, and what that makes of everything summed so far.
        var rescale: array<f32, HEADS>;
        for (var g = 0u; g < HEADS; g = g + 1u) {
            let m_new = max(m[g], reduction[g * 64u]);
            rescale[g] = exp(m[g] - m_new);
            m[g] = m_new;
        }
        workgroupBarrier();
        for (var g = 0u; g < HEADS; g = g + 1u) {
            var e = 0.0;
            if (p <= a.pos) {
                e = exp(tile_weights[g * TILE + lid] - m[g]);
            }
            tile_weights[g * TILE + lid] = e;
            reduction[g * 64u + lid] = e;
        }
        reduce_heads(lid, false);
        for (var g = 0u; g < HEADS; g = g + 1u) {
            l[g] = l[g] * rescale[g] + reduction[g * 64u];
            acc[g] = acc[g] * rescale[g];
        }
        if (position_group < groups) {
            for (var j = position_group; j < TILE && tile_first + j <= a.pos; j = j + groups) {
                let v = cached4(cache_row(a.kv_dim, tile_first + j) + a.kv_offset + 4u * lane, false);
                for (var g = 0u; g < HEADS; g = g + 1u) {
                    if (g < n_h) {
                        acc[g] = acc[g] + tile_weights[g * TILE + j] * v;
                    }
                }
            }
        }
        // The next tile overwrites the weights and the reduction.
        workgroupBarrier();
    }

    // Sum the position groups' value sums and write each head's record (an empty split writes
    // max NONE and sum 0, which the combine pass weighs as nothing); a lone split has every
    // position, so it writes the output itself and no combine pass runs.
    if (position_group < groups) {
        for (var g = 0u; g < HEADS; g = g + 1u) {
            if (g < n_h) {
                shared_vectors[(position_group * HEADS + g) * hd4 + lane] = acc[g];
            }
        }
    }
    workgroupBarrier();
    if (lid < hd4) {
        for (var g = 0u; g < HEADS; g = g + 1u) {
            if (g >= n_h) {
                break;
            }
            var total = vec4<f32>(0.0);
            for (var pg = 0u; pg < groups; pg = pg + 1u) {
                total = total + shared_vectors[(pg * HEADS + g) * hd4 + lid];
            }
            if (splits() == 1u) {
                out[(t * dims.n_heads + head0 + g) * hd4 + lid] = total / l[g];
            } else {
                let r = record(t, head0 + g, wg.x);
                partials[r + lid] = total;
                if (lid == 0u) {
                    partials[r + hd4] = vec4<f32>(m[g], l[g], 0.0, 0.0);
                }
            }
        }
    }
}

// One invocation per (token, query head, four dimensions): the splits' weighted sums, each
// rescaled to the largest maximum, over the rescaled sums.
@compute @workgroup_size(64)
fn attention_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) grid: vec3<u32>) {
    let hd4 = dims.head_dim / 4u;
    let i = gid.y * grid.x * 64u + gid.x;
    let per_token = dims.n_heads * hd4;
    let t = i / per_token;
    if (t >= step.n_tokens) {
        return;
    }
    let h = (i % per_token) / hd4;
    let lane = i % hd4;
    var m = NONE;
    for (var s = 0u; s < splits(); s = s + 1u) {
        m = max(m, partials[record(t, h, s) + hd4].x);
    }
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < splits(); s = s + 1u) {
        let r = record(t, h, s);
        let stats = partials[r + hd4];
        let w = exp(stats.x - m);
        sum = sum + w * stats.y;
        acc = acc + w * partials[r + lane];
    }
    out[(t * dims.n_heads + h) * hd4 + lane] = acc / sum;
}
