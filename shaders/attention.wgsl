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
//   sum) per head; `attention_combine` merges a head's splits, one workgroup per (token, head)
//   sharing them out. A decode step takes a split per tile, up to `splits_decode`; over
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
// With SPANS, the step's token buffer: ids, then per token the first and the last position it
// sees (an encoder's texts packed into one step, each attending over itself both ways).
@group(0) @binding(8) var<storage, read> spans: array<u32>;

override KV_F16: bool = false;
// Each query sees the span `spans` gives it (encoders), not the positions up to its own.
override SPANS: bool = false;
// The split kernel's head dimension, set per pipeline (kernels.rs `attention_split`): its loops
// over dimensions and over a tile's positions then have counts the compiler knows, and take four
// loads at a time (see the split kernel).
override HEAD_DIM: u32 = 0u;

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
    var pos = step.start + t;
    var first = 0u;
    if (dims.window > 0u && pos + 1u > dims.window) {
        first = pos + 1u - dims.window;
    }
    if (SPANS) {
        // `pos` is the last position it sees (no encoder has ALiBi, which measures from it).
        first = spans[step.n_tokens + t];
        pos = spans[2u * step.n_tokens + t];
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

// The workgroup's queries, [head][head_dim / 4] (zeros for heads past its own); after the last
// tile, the value sums of its position groups.
var<workgroup> shared_vectors: array<vec4<f32>, 512>;
// A tile's scores, then its softmax weights, of heads 0..3 at [position] and 4..7 at
// [TILE + position].
var<workgroup> tile_weights: array<vec4<f32>, 128>;
// Per-invocation values being reduced, laid out as tile_weights.
var<workgroup> reduction: array<vec4<f32>, 128>;

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

// The split kernel keeps its per-head values in pairs of vec4s (heads 0..3, 4..7) and its
// per-head value sums in eight named vectors, with the code over heads written out: a
// function-scope array indexed in a loop may live in memory rather than registers, which on an
// H200 made one 64-position tile cost some 70 µs.

// Reduce (lo, hi) over the 64 invocations (max or sum), in every invocation: the split kernel's
// per-head values, and the combine pass's one value (in every component).
fn reduce_heads(lid: u32, lo: vec4<f32>, hi: vec4<f32>, is_max: bool) -> array<vec4<f32>, 2> {
    reduction[lid] = lo;
    reduction[TILE + lid] = hi;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let a = reduction[lid];
            let b = reduction[lid + stride];
            let c = reduction[TILE + lid];
            let d = reduction[TILE + lid + stride];
            reduction[lid] = select(a + b, max(a, b), is_max);
            reduction[TILE + lid] = select(c + d, max(c, d), is_max);
        }
        workgroupBarrier();
    }
    let result = array<vec4<f32>, 2>(reduction[0], reduction[TILE]);
    // Every invocation has read the result before the next reduction overwrites it.
    workgroupBarrier();
    return result;
}

// Scores of heads 0..3 (or 4..7) turned into finished ones, as finish_score does for one.
fn finish_scores(s: vec4<f32>, slope: vec4<f32>, distance: u32) -> vec4<f32> {
    var v = s * dims.scale;
    if (dims.softcap > 0.0) {
        v = dims.softcap * tanh(v / dims.softcap);
    }
    return v - slope * f32(distance);
}

// The query vectors at dimension group d of heads h0 .. h0 + 3, dotted with k.
fn head_dots(h0: u32, hd4: u32, d: u32, k: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(
        dot(shared_vectors[h0 * hd4 + d], k),
        dot(shared_vectors[(h0 + 1u) * hd4 + d], k),
        dot(shared_vectors[(h0 + 2u) * hd4 + d], k),
        dot(shared_vectors[(h0 + 3u) * hd4 + d], k)
    );
}

// s plus the dots of heads h0 .. h0 + 3 with the keys' dimension groups d0 .. d0 + 3 (k0 .. k3; those
// below hd4), added in that order: the same order of additions as one vec4 at a time.
fn add_dots(s: vec4<f32>, h0: u32, hd4: u32, d0: u32, k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>,
            k3: vec4<f32>) -> vec4<f32> {
    var acc = s + head_dots(h0, hd4, d0, k0);
    if (d0 + 1u < hd4) {
        acc = acc + head_dots(h0, hd4, d0 + 1u, k1);
    }
    if (d0 + 2u < hd4) {
        acc = acc + head_dots(h0, hd4, d0 + 2u, k2);
    }
    if (d0 + 3u < hd4) {
        acc = acc + head_dots(h0, hd4, d0 + 3u, k3);
    }
    return acc;
}

// Each head's running weighted sum of values (four dimensions of one position group).
struct ValueSums {
    h0: vec4<f32>,
    h1: vec4<f32>,
    h2: vec4<f32>,
    h3: vec4<f32>,
    h4: vec4<f32>,
    h5: vec4<f32>,
    h6: vec4<f32>,
    h7: vec4<f32>,
}

// Add position j's values v, weighted per head; heads 4..7 only where the workgroup has them.
fn weigh(acc: ptr<function, ValueSums>, j: u32, v: vec4<f32>, upper: bool) {
    let lo = tile_weights[j];
    (*acc).h0 = (*acc).h0 + lo.x * v;
    (*acc).h1 = (*acc).h1 + lo.y * v;
    (*acc).h2 = (*acc).h2 + lo.z * v;
    (*acc).h3 = (*acc).h3 + lo.w * v;
    if (upper) {
        let hi = tile_weights[TILE + j];
        (*acc).h4 = (*acc).h4 + hi.x * v;
        (*acc).h5 = (*acc).h5 + hi.y * v;
        (*acc).h6 = (*acc).h6 + hi.z * v;
        (*acc).h7 = (*acc).h7 + hi.w * v;
    }
}

fn rescale_sums(acc: ptr<function, ValueSums>, lo: vec4<f32>, hi: vec4<f32>) {
    (*acc).h0 = (*acc).h0 * lo.x;
    (*acc).h1 = (*acc).h1 * lo.y;
    (*acc).h2 = (*acc).h2 * lo.z;
    (*acc).h3 = (*acc).h3 * lo.w;
    (*acc).h4 = (*acc).h4 * hi.x;
    (*acc).h5 = (*acc).h5 * hi.y;
    (*acc).h6 = (*acc).h6 * hi.z;
    (*acc).h7 = (*acc).h7 * hi.w;
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
    // Whether the workgroup has heads 4..7 (the same in every invocation).
    let upper = n_h > 4u;
    let t = wg.z;
    let a = query_of(head0, t);
    let hd4 = HEAD_DIM / 4u;
    // The visible positions a.first ..= a.pos in tiles, shared out evenly among the splits (they
    // differ by one tile at most).
    let tiles = (a.pos - a.first + TILE) / TILE;
    let tile_begin = wg.x * tiles / splits();
    let tile_end = (wg.x + 1u) * tiles / splits();

    // The queries (heads are consecutive in q), staged once for every position; zeros for the
    // heads this workgroup does not have, whose scores are then never used.
    for (var i = lid; i < HEADS * hd4; i = i + 64u) {
        shared_vectors[i] = select(vec4<f32>(0.0), q[a.q_base / 4u + min(i, n_h * hd4 - 1u)], i < n_h * hd4);
    }
    let slope_lo = vec4<f32>(alibi_slope(head0), alibi_slope(head0 + 1u), alibi_slope(head0 + 2u), alibi_slope(head0 + 3u));
    let slope_hi = vec4<f32>(alibi_slope(head0 + 4u), alibi_slope(head0 + 5u), alibi_slope(head0 + 6u), alibi_slope(head0 + 7u));
    // Which of heads 0..3 and 4..7 exist.
    let has_lo = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n_h);
    let has_hi = vec4<u32>(4u, 5u, 6u, 7u) < vec4<u32>(n_h);
    workgroupBarrier();

    // Weighing the values, invocation lid takes dimensions 4 * lane .. + 4 of every position
    // group-th position; with heads of 64 dimensions, 16 lanes and 4 position groups.
    let groups = 64u / hd4;
    let lane = lid % hd4;
    let position_group = lid / hd4;
    var m_lo = vec4<f32>(NONE);
    var m_hi = vec4<f32>(NONE);
    var l_lo = vec4<f32>(0.0);
    var l_hi = vec4<f32>(0.0);
    var acc: ValueSums;
    let none = vec4<f32>(NONE);
    for (var tile = tile_begin; tile < tile_end; tile = tile + 1u) {
        let tile_first = a.first + tile * TILE;
        // Scores of position tile_first + lid against every head.
        let p = tile_first + lid;
        var s_lo = vec4<f32>(0.0);
        var s_hi = vec4<f32>(0.0);
        if (p <= a.pos) {
            let k_base = cache_row(a.kv_dim, p) + a.kv_offset;
            // Four loads issued before any is used: a GPU waits out a load's latency once per four
            // rather than once per vec4. Past the head's end the last vec4 is loaded again and
            // not used.
            for (var d0 = 0u; d0 < hd4; d0 = d0 + 4u) {
                let d1 = min(d0 + 1u, hd4 - 1u);
                let d2 = min(d0 + 2u, hd4 - 1u);
                let d3 = min(d0 + 3u, hd4 - 1u);
                let k0 = cached4(k_base + 4u * d0, true);
                let k1 = cached4(k_base + 4u * d1, true);
                let k2 = cached4(k_base + 4u * d2, true);
                let k3 = cached4(k_base + 4u * d3, true);
                s_lo = add_dots(s_lo, 0u, hd4, d0, k0, k1, k2, k3);
                if (upper) {
                    s_hi = add_dots(s_hi, 4u, hd4, d0, k0, k1, k2, k3);
                }
            }
        }
        let seen = p <= a.pos;
        let score_lo = select(none, finish_scores(s_lo, slope_lo, a.pos - p), has_lo & vec4<bool>(seen));
        let score_hi = select(none, finish_scores(s_hi, slope_hi, a.pos - p), has_hi & vec4<bool>(seen));
        // The new maximum of each head, and what that makes of everything summed so far.
        let tile_max = reduce_heads(lid, score_lo, score_hi, true);
        let new_lo = max(m_lo, tile_max[0]);
        let new_hi = max(m_hi, tile_max[1]);
        let rescale_lo = exp(m_lo - new_lo);
        let rescale_hi = exp(m_hi - new_hi);
        m_lo = new_lo;
        m_hi = new_hi;
        let e_lo = select(vec4<f32>(0.0), exp(score_lo - m_lo), vec4<bool>(seen));
        let e_hi = select(vec4<f32>(0.0), exp(score_hi - m_hi), vec4<bool>(seen));
        tile_weights[lid] = e_lo;
        tile_weights[TILE + lid] = e_hi;
        // (The reduction's barriers also make the weights visible to every invocation.)
        let tile_sum = reduce_heads(lid, e_lo, e_hi, false);
        l_lo = l_lo * rescale_lo + tile_sum[0];
        l_hi = l_hi * rescale_hi + tile_sum[1];
        rescale_sums(&acc, rescale_lo, rescale_hi);
        if (position_group < groups) {
            // The tile's last position this query sees (tile_first <= a.pos), and four value
            // loads at a time, as for the keys: a load past it reads that last row again and is
            // not used. Each head's sum takes the positions in the same order either way.
            let last = min(TILE - 1u, a.pos - tile_first);
            for (var j0 = position_group; j0 <= last; j0 = j0 + 4u * groups) {
                let j1 = j0 + groups;
                let j2 = j1 + groups;
                let j3 = j2 + groups;
                let row = a.kv_offset + 4u * lane;
                let v0 = cached4(cache_row(a.kv_dim, tile_first + j0) + row, false);
                let v1 = cached4(cache_row(a.kv_dim, tile_first + min(j1, last)) + row, false);
                let v2 = cached4(cache_row(a.kv_dim, tile_first + min(j2, last)) + row, false);
                let v3 = cached4(cache_row(a.kv_dim, tile_first + min(j3, last)) + row, false);
                weigh(&acc, j0, v0, upper);
                if (j1 <= last) {
                    weigh(&acc, j1, v1, upper);
                }
                if (j2 <= last) {
                    weigh(&acc, j2, v2, upper);
                }
                if (j3 <= last) {
                    weigh(&acc, j3, v3, upper);
                }
            }
        }
        // The next tile overwrites the weights.
        workgroupBarrier();
    }

    // Sum the position groups' value sums and write each head's record (an empty split writes
    // max NONE and sum 0, which the combine pass weighs as nothing); a lone split has every
    // position, so it writes the output itself and no combine pass runs.
    if (position_group < groups) {
        let at = position_group * HEADS * hd4 + lane;
        shared_vectors[at] = acc.h0;
        shared_vectors[at + hd4] = acc.h1;
        shared_vectors[at + 2u * hd4] = acc.h2;
        shared_vectors[at + 3u * hd4] = acc.h3;
        shared_vectors[at + 4u * hd4] = acc.h4;
        shared_vectors[at + 5u * hd4] = acc.h5;
        shared_vectors[at + 6u * hd4] = acc.h6;
        shared_vectors[at + 7u * hd4] = acc.h7;
    }
    workgroupBarrier();
    if (lid < hd4) {
        for (var g = 0u; g < n_h; g = g + 1u) {
            var total = vec4<f32>(0.0);
            for (var pg = 0u; pg < groups; pg = pg + 1u) {
                total = total + shared_vectors[(pg * HEADS + g) * hd4 + lid];
            }
            if (splits() == 1u) {
                out[(t * dims.n_heads + head0 + g) * hd4 + lid] = total / pick(l_lo, l_hi, g);
            } else {
                let r = record(t, head0 + g, wg.x);
                partials[r + lid] = total;
                if (lid == 0u) {
                    partials[r + hd4] = vec4<f32>(pick(m_lo, m_hi, g), pick(l_lo, l_hi, g), 0.0, 0.0);
                }
            }
        }
    }
}

// One workgroup per (token, query head): the splits' weighted sums, each rescaled to the largest
// maximum, over the rescaled sums. The invocations share out the splits (their maxima and sums,
// then, across head dimensions, their weighted sums), so no invocation walks all of them one
// dependent load at a time: with 64 splits that made one combine pass cost as much as the split
// kernel before it (an H200: 41 µs).
var<workgroup> split_weights: array<f32, 256>;

@compute @workgroup_size(64)
fn attention_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) grid: vec3<u32>,
                     @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let row = wg.y * grid.x + wg.x;
    let t = row / dims.n_heads;
    // The same for the whole workgroup, so the barriers stay uniform.
    if (t >= step.n_tokens) {
        return;
    }
    let h = row % dims.n_heads;
    let hd4 = dims.head_dim / 4u;
    let n = splits();
    var m = NONE;
    for (var s = lid; s < n; s = s + 64u) {
        m = max(m, partials[record(t, h, s) + hd4].x);
    }
    m = reduce_heads(lid, vec4<f32>(m), vec4<f32>(m), true)[0].x;
    // Each split's weight, kept for the weighted sums (256 at a time), and their share of the sum.
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    let lane = lid % hd4;
    let groups = max(64u / hd4, 1u);
    let split_group = lid / hd4;
    for (var s0 = 0u; s0 < n; s0 = s0 + 256u) {
        for (var s = s0 + lid; s < min(n, s0 + 256u); s = s + 64u) {
            let stats = partials[record(t, h, s) + hd4];
            let w = exp(stats.x - m);
            split_weights[s - s0] = w;
            sum = sum + w * stats.y;
        }
        workgroupBarrier();
        // Invocation (split group, lane) adds up every groups-th split's dimensions 4·lane.. + 4.
        if (split_group < groups && lane < hd4) {
            for (var s = s0 + split_group; s < min(n, s0 + 256u); s = s + groups) {
                acc = acc + split_weights[s - s0] * partials[record(t, h, s) + lane];
            }
        }
        workgroupBarrier();
    }
    sum = reduce_heads(lid, vec4<f32>(sum), vec4<f32>(sum), false)[0].x;
    // The split groups' sums of each dimension, then the output.
    if (split_group < groups) {
        shared_vectors[split_group * hd4 + lane] = acc;
    }
    workgroupBarrier();
    if (lid < hd4) {
        var total = vec4<f32>(0.0);
        for (var g = 0u; g < groups; g = g + 1u) {
            total = total + shared_vectors[g * hd4 + lid];
        }
        out[(t * dims.n_heads + h) * hd4 + lid] = total / sum;
    }
}
