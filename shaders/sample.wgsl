// Chooses the next token from the logits exactly as hearth-core's `Sampler::sample` does on the
// CPU, so that decoding reads back one u32 per token instead of the whole logits vector: the
// logit bias, the token mask, penalties, then argmax (temperature 0), else top-k -> softmax at the
// temperature -> top-p -> min-p -> one uniform draw walked through the kept candidates.
//
// Logit bias. (token, bias) pairs, each token once, added to the logits in place before anything
// else, as the CPU adds them (the same f32 add, so the same bits).
//
// Log-probabilities (when `params.logprobs` is set). The log-softmax of the biased logits, before
// the penalties, the mask and the rest of the chain (hearth_core::logprobs): the chosen token's
// value and the `top_logprobs` most likely tokens, so that the read-back grows by 8 bytes per
// alternative instead of becoming the whole vocabulary. See `logprob_stats`.
//
// Mask. A constraint's allowed tokens, a bit per token (`mask`), apply when `params.masked` is set.
// The CPU sets a masked token's logit to minus infinity and never takes a minus-infinity logit as a
// candidate; WGSL has no infinity to write (and may assume none occurs), so here a token is simply
// not a candidate when its bit is clear or its (penalized) logit's bits are minus infinity's: it
// takes no part in the argmax, counts for no top-k, adds no probability mass and is never compacted.
// Penalties need not skip masked tokens: they only change logits that are not candidates anyway.
// When no token is a candidate at all, the result is what the CPU's chain gives on a vocabulary of
// minus infinities (see `sample`).
//
// Penalty state carried on the GPU. The (token, occurrences) list over the last `window` tokens
// lives in `penalties`, its length in `recent.n_penalized`, the window itself in `recent.ring`.
// After choosing, the kernel counts the chosen token in and the token leaving the window out, so
// a step the host queued before it knew this step's token (hearth_core::generate's steps ahead)
// finds the counts it would have computed from the history. The list stays one entry per token
// (its order is free: entries are found by a parallel search, not by bisection).
//
// One workgroup of 256 invocations; no sorting, any vocabulary size. Where the step is greedy or
// keeps at most MAX_BLOCK_K candidates by top-k, and takes no log-probabilities (`params.blocks` >
// 0), `top_blocks` runs first, one workgroup per BLOCK tokens, each applying the bias and the
// penalties to its block's tokens and writing its best `block_k` candidates (k = 1 greedy, else the
// top-k) into a list: every candidate the chain can keep is among its block's best k, so
// `sample` runs the whole chain over that list (blocks * k entries) instead of the vocabulary. The
// vocabulary's passes (one greedy, a few until the block's search compacts otherwise) are then
// shared out among many workgroups instead of all made by one (on an H200 the one workgroup's pass
// over 128,256 logits took 127 µs; Gemma's vocabulary is 262,144).
//
// Order. Candidates are ordered as on the CPU: by logit descending, the lower index first on equal
// logits. Each candidate has a unique position (key, rank), compared lexicographically, larger
// first:
//   key  = the logit's bits mapped to a u32 whose unsigned order is f32::total_cmp's;
//   rank = index_mask - index, so the lower index has the larger rank.
// Every cut of the chain keeps a prefix of that order, and a prefix is named by its last position.
//
// Search. `search` finds the last position at which a running total over the prefix (a count, or
// a probability mass) reaches a goal: the candidate where the CPU's walk down its sorted list
// stops. It fixes the key two bits at a time (16 passes, each testing four thresholds at once and
// ending in one workgroup reduction), then the rank the same way, only when several candidates
// share the key found (equal logits).
//
// Compaction. Once the candidates still in play fit in workgroup memory (1024), they are copied
// there and later passes visit only them instead of the whole vocabulary. The top-k search
// compacts as soon as the candidates at or above its running position fit (a few passes in, for a
// top-k of 40); otherwise the set left by top-p and min-p is compacted before the draw's search.
// Passes over the whole vocabulary per step, besides penalties (no pass) and argmax (1):
//   greedy: none more;
//   temperature alone: 19 (softmax sum, total, draw search 17);
//   top-k <= 1024, with or without top-p / min-p: about 6 (search until compaction, compaction);
//   top-p: 20 (softmax sum, top-p search 17, total, then usually compaction); min-p: 3;
//   top-k > 1024 over a large set: up to 36;
//   after `top_blocks`: none (its workgroups share out the vocabulary's passes, each over its own
//   4,096 tokens; the passes above run over the list of blocks * k entries).
// Each pass ends in a reduction of 2 barriers; passes over the compacted list cost little else.
//
// Rounding. Sums run in a different order than on the CPU, so masses differ from the CPU's in the
// last bits: a top-p or min-p cut, or a draw, that lands within ~1e-6 (relative) of the boundary
// between two candidates may go the other way. Counts (top-k) and the order itself are exact.
//
// f32 only (no shader-f16) and no subgroups, so it runs on every WebGPU adapter.

// sampler.rs's `Params` mirrors it field for field.
struct Params {
    vocab: u32,
    // 0: greedy.
    temperature: f32,
    // 0 or >= vocab: off.
    top_k: u32,
    // >= 1: off.
    top_p: f32,
    // 0: off.
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    // Tokens the penalties look back over (`recent.ring`'s length); 0: penalties off, nothing kept.
    window: u32,
    // Uniform in [0, 1); 1 or more takes the last kept candidate, as on the CPU.
    draw: f32,
    // 1: only the tokens whose bits are set in `mask` are candidates; 0: every token is.
    masked: u32,
    // Words of `mask` written this step; tokens from 32 * mask_words on are not allowed.
    mask_words: u32,
    // Entries of `bias` to add.
    n_biased: u32,
    // 1: compute the log-probabilities into result[1..]; 0: only the token.
    logprobs: u32,
    // How many alternatives (0 to MAX_TOP) when `logprobs` is set.
    top_logprobs: u32,
    // Tokens of the history when this step chooses (prompt and generated): the chosen token's
    // index in it.
    history_len: u32,
    // Blocks `top_blocks` reduced before this dispatch (0: none ran; the chain reads the
    // vocabulary).
    blocks: u32,
    // Candidates each block wrote (1 to MAX_BLOCK_K) when `blocks` > 0.
    block_k: u32,
}

struct Recent {
    // Entries of `penalties` in use.
    n_penalized: u32,
    // The last `params.window` tokens of the history: token i in ring[i % window].
    ring: array<u32>,
}

@group(0) @binding(0) var<uniform> params: Params;
// The step's logits; the penalties are applied in place (the engine recomputes them every step).
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
// (token, occurrences), each token at most once: invocations apply them in parallel.
@group(0) @binding(2) var<storage, read_write> penalties: array<vec2<u32>>;
// result[0]: the chosen token. With `params.logprobs`: result[1], its log-probability's bits; then
// for each alternative j, most likely first, result[2 + 2j] its token and result[3 + 2j] its
// log-probability's bits.
@group(0) @binding(3) var<storage, read_write> result: array<u32>;
// The allowed tokens when `params.masked`: bit t % 32 of word t / 32 for token t; ceil(vocab / 32)
// words, of which the first `params.mask_words` are this step's.
@group(0) @binding(4) var<storage, read> mask: array<u32>;
// (token, the bias's bits), each token at most once: invocations add them in parallel.
@group(0) @binding(5) var<storage, read> bias: array<vec2<u32>>;
// With `params.logprobs`: the logit of the token of `penalties[j]` before its penalty, so the
// chosen token's log-probability is taken before the penalties.
@group(0) @binding(6) var<storage, read_write> unpenalized_logits: array<f32>;
@group(0) @binding(7) var<storage, read_write> recent: Recent;
// Per block of BLOCK tokens, its best `params.block_k` candidates in any order: (logit bits, index),
// then (0, NONE) in the slots left when the block has fewer.
@group(0) @binding(8) var<storage, read_write> block_top: array<vec2<u32>>;

const WORKGROUP: u32 = 256u;
// Reductions and scans run in two levels of 16 (16 * 16 = WORKGROUP).
const FAN: u32 = 16u;
// Candidates compaction can hold (8 KiB of the 16 KiB of workgroup memory WebGPU guarantees).
const CAPACITY: u32 = 1024u;
const NONE: u32 = 0xffffffffu;
// Most alternatives the log-probabilities report (hearth_core::logprobs::MAX_TOP_LOGPROBS).
const MAX_TOP: u32 = 20u;
// Tokens per workgroup of `top_blocks` (sampler.rs's BLOCK): 16 per invocation. sampler.rs's
// MAX_BLOCK_K (256) bounds `params.block_k`, so the list is at most 1/16 of the vocabulary.
const BLOCK: u32 = 4096u;

var<workgroup> partial_sums: array<vec4<f32>, WORKGROUP>;
var<workgroup> group_sums: array<vec4<f32>, FAN>;
var<workgroup> partial_best_value: array<f32, WORKGROUP>;
var<workgroup> partial_best_index: array<u32, WORKGROUP>;
var<workgroup> group_best_value: array<f32, FAN>;
var<workgroup> group_best_index: array<u32, FAN>;
var<workgroup> partial_counts: array<u32, WORKGROUP>;
var<workgroup> group_counts: array<u32, FAN>;
var<workgroup> compact_logit: array<f32, CAPACITY>;
var<workgroup> compact_index: array<u32, CAPACITY>;
// A value invocation 0 hands to all of them for a branch around barriers.
var<workgroup> broadcast: u32;
// The entries of `penalties` holding two tokens (NONE: not listed), found by `find_entries`.
var<workgroup> found: array<u32, 2>;

var<private> lid: u32;
// The candidates' source: tokens source_first .. source_end - 1 of the vocabulary, or with
// from_list, entries source_first .. source_end - 1 of `block_top`.
var<private> source_first: u32;
var<private> source_end: u32;
var<private> from_list: bool;
// From here to my_totals, every invocation holds the same values (they come from reductions each
// invocation computes in full, in the same order), set once per phase. WGSL's uniformity analysis
// cannot see that (it takes module-scope variables as non-uniform), so every branch around
// barriers goes through workgroupUniformLoad or the uniform parameters.
// rank = index_mask - index: 2^bits - 1 for an even number of bits covering every index.
var<private> index_mask: u32;
var<private> max_logit: f32;
// The softmax denominator over the top-k set; 1 until it is known (its own pass sums plain exps).
var<private> sum_exp: f32 = 1.0;
// The last position kept by top-k and by top-p; (0, 0) keeps everything.
var<private> top_k_cut: vec2<u32>;
var<private> top_p_cut: vec2<u32>;
// The log-sum-exp of the biased logits (when `params.logprobs`).
var<private> log_sum_exp: f32;
// Min-p: candidates less likely than this are dropped (when min_p_on).
var<private> min_prob: f32;
var<private> min_p_on: bool;
// Whether the candidates in play are the first n_compact of compact_*, rather than the vocabulary.
var<private> compacted: bool;
var<private> n_compact: u32;
// Per invocation: its own share of the last totals_at() or set_totals(), before the reduction (how
// many members of a set it is about to compact it visits).
var<private> my_totals: vec4<f32>;

// ---- Candidates ----

struct Candidate {
    logit: f32,
    index: u32,
    // Whether the mask allows it and its logit is not minus infinity: only such tokens are in any
    // set (the CPU drops minus-infinity candidates, and a masked logit is minus infinity there).
    allowed: bool,
}

// The minus-infinity bit pattern (the logits' bits are compared, never an infinite value).
const NEG_INF_BITS: u32 = 0xff800000u;

// Whether token i with logit l is a candidate: the mask allows it (when one applies) and l is not
// minus infinity. The branch is on a uniform value: no divergence, no mask read when unmasked.
fn is_candidate(i: u32, l: f32) -> bool {
    let not_minus_inf = bitcast<u32>(l) != NEG_INF_BITS;
    if (params.masked == 0u) {
        return not_minus_inf;
    }
    // i < vocab, so i / 32 is within the buffer's ceil(vocab / 32) words.
    let w = i / 32u;
    let word = select(0u, mask[w], w < params.mask_words);
    return not_minus_inf & (((word >> (i % 32u)) & 1u) == 1u);
}

// Entry i of the source as a candidate: token i, or the i-th of the blocks' list (which holds
// only candidates: `top_blocks` applied the mask).
fn at(i: u32) -> Candidate {
    if (from_list) {
        let entry = block_top[i];
        return Candidate(bitcast<f32>(entry.x), entry.y, entry.y != NONE);
    }
    let l = logits[i];
    return Candidate(l, i, is_candidate(i, l));
}

// The j-th candidate of the compacted list (only allowed ones are compacted).
fn listed(j: u32) -> Candidate {
    return Candidate(compact_logit[j], compact_index[j], true);
}

// A u32 whose unsigned order is the float's total order (as Rust's f32::total_cmp): negative
// floats have every bit flipped, positive ones the sign bit set.
fn order_key(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

// An even number of bits (the rank search takes two per pass) covering every index. From the
// uniform parameters, so loops bounded by it may hold barriers.
fn index_bits() -> u32 {
    return (firstLeadingBit(max(params.vocab, 2u) - 1u) + 2u) & ~1u;
}

fn position(c: Candidate) -> vec2<u32> {
    return vec2<u32>(order_key(c.logit), index_mask - c.index);
}

// Whether position `p` comes at or before position `last` in sampling order.
fn at_or_above(p: vec2<u32>, last: vec2<u32>) -> bool {
    return (p.x > last.x) | ((p.x == last.x) & (p.y >= last.y));
}

// The CPU's formula: exp((l - max) / T) / sum, with sum over the top-k set.
fn probability(l: f32) -> f32 {
    return exp((l - max_logit) / params.temperature) / sum_exp;
}

// Whether position `p` survives the top-k and top-p cuts made so far.
fn within_cuts(p: vec2<u32>) -> bool {
    return at_or_above(p, top_k_cut) & at_or_above(p, top_p_cut);
}

// Whether a candidate of probability q survives min-p. The probability falls along the order, so
// the candidates that pass are a prefix, as the CPU's take_while keeps.
fn above_min_p(q: f32) -> bool {
    return !min_p_on | (q >= min_prob);
}

// What a candidate adds to a running total over the current set: its probability (`mass`) or 1 (a
// count); 0 outside the set. Like the other per-candidate functions it selects rather than
// branches (and takes the exp even for a count): software adapters run invocations as SIMD lanes
// and pay for a divergent branch on every candidate of every pass.
fn weight(c: Candidate, p: vec2<u32>, mass: bool) -> f32 {
    let q = probability(c.logit);
    return select(0.0, select(1.0, q, mass), c.allowed & within_cuts(p) & above_min_p(q));
}

// ---- Reductions ----
// Two levels of 16 rather than a tree of 8 halvings: 2 barriers instead of 9 (barriers are what
// costs on software adapters; 16 serial adds cost little anywhere). The order of the adds is fixed,
// so every invocation gets the same bits and can act on the result without a broadcast. Reuse is
// safe: an invocation writes `partial_*` again only after the second barrier (all level-1 reads
// done) and `group_*` only after the next first barrier (all level-2 reads done).

fn reduce_sum(v: vec4<f32>) -> vec4<f32> {
    partial_sums[lid] = v;
    workgroupBarrier();
    if (lid < FAN) {
        var s = vec4<f32>(0.0);
        for (var j = 0u; j < FAN; j++) {
            s += partial_sums[lid * FAN + j];
        }
        group_sums[lid] = s;
    }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    for (var j = 0u; j < FAN; j++) {
        total += group_sums[j];
    }
    return total;
}

// Whether (v, i) beats (best_v, best_i) for argmax: larger, or equal with a lower index; NONE marks
// an invocation that saw no candidate.
fn beats(v: f32, i: u32, best_v: f32, best_i: u32) -> bool {
    return i != NONE && (best_i == NONE || v > best_v || (v == best_v && i < best_i));
}

struct Best {
    value: f32,
    index: u32,
}

// The best of every invocation's (v, idx) by `beats`: the same in every invocation.
fn reduce_best(v: f32, idx: u32) -> Best {
    partial_best_value[lid] = v;
    partial_best_index[lid] = idx;
    workgroupBarrier();
    if (lid < FAN) {
        var g = Best(0.0, NONE);
        for (var j = 0u; j < FAN; j++) {
            let k = lid * FAN + j;
            if (beats(partial_best_value[k], partial_best_index[k], g.value, g.index)) {
                g = Best(partial_best_value[k], partial_best_index[k]);
            }
        }
        group_best_value[lid] = g.value;
        group_best_index[lid] = g.index;
    }
    workgroupBarrier();
    var best = Best(0.0, NONE);
    for (var j = 0u; j < FAN; j++) {
        if (beats(group_best_value[j], group_best_index[j], best.value, best.index)) {
            best = Best(group_best_value[j], group_best_index[j]);
        }
    }
    return best;
}

// The index of the largest candidate logit, the first one on ties, compared with `>` like the
// CPU's argmax (so -0 equals +0); NONE when no token is a candidate. Over the source (the blocks'
// bests where they ran): `beats` orders every candidate but a NaN logit, so the order of the
// comparisons (and their grouping in blocks) does not change the result; a NaN logit (no model
// gives one) may be taken or not, depending on where it falls.
fn argmax_pass() -> u32 {
    return best_over(source_first, source_end).index;
}

// The best candidate among entries first .. end - 1 of the source (end > first), the same in every
// invocation.
// Four tokens' loads are issued before any is compared: an invocation that loads one, compares,
// then loads the next waits out a load's latency per token (on an H200 that made a greedy step
// over a 128,256-token vocabulary take 215 µs). Straight-line code, not a loop over an array: a
// function-scope array indexed in a loop may live in memory rather than registers (an array of 8
// made it slower still).
fn best_over(first: u32, end: u32) -> Best {
    var best = Best(0.0, NONE);
    let last = end - 1u;
    for (var i0 = first + lid; i0 < end; i0 += 4u * WORKGROUP) {
        let i1 = i0 + WORKGROUP;
        let i2 = i1 + WORKGROUP;
        let i3 = i2 + WORKGROUP;
        // Past the vocabulary, the last token is loaded again and not compared.
        let c0 = at(i0);
        let c1 = at(min(i1, last));
        let c2 = at(min(i2, last));
        let c3 = at(min(i3, last));
        consider(&best, c0, true);
        consider(&best, c1, i1 <= last);
        consider(&best, c2, i2 <= last);
        consider(&best, c3, i3 <= last);
    }
    return reduce_best(best.value, best.index);
}

// Workgroup b: the best `params.block_k` candidates of tokens b * BLOCK .. (b + 1) * BLOCK - 1
// into block_top[b * block_k ..]: the best alone (greedy: one pass), or the block's top-k by the
// same search `sample` runs (on 16 tokens per invocation, compacted a few passes in). Branches
// around barriers are on uniform parameters.
@compute @workgroup_size(256)
fn top_blocks(@builtin(local_invocation_index) local_index: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    lid = local_index;
    source_first = wg.x * BLOCK;
    source_end = min(source_first + BLOCK, params.vocab);
    // The block's tokens' bias and penalties, in place, as `sample` applies them to the vocabulary
    // when no blocks run (each entry's token lies in one block: no two workgroups write a logit).
    if (params.n_biased > 0u) {
        apply_bias();
        storageBarrier();
    }
    apply_penalties();
    storageBarrier();
    let out = wg.x * params.block_k;
    let best = best_over(source_first, source_end);
    // Greedy: the argmax's best (`beats`: -0 equals +0, the lower index first, as the CPU's
    // argmax). A top-k of 1 at a temperature ranks by the total order (+0 above -0) and searches.
    if (params.temperature == 0.0) {
        if (lid == 0u) {
            block_top[out] = vec2<u32>(bitcast<u32>(best.value), best.index);
        }
        return;
    }
    // Counts only: the probabilities `weight` takes (then drops) stay at most 1.
    max_logit = best.value;
    let bits = index_bits();
    index_mask = select(0xffffffffu, (1u << bits) - 1u, bits < 32u);
    top_k_cut = search(false, f32(params.block_k), false);
    write_members(out);
}

// The set's members (its candidates within the cuts) into block_top[out ..], in scan order, then
// (0, NONE) up to `params.block_k` entries. Every invocation calls it.
fn write_members(out: u32) {
    set_totals();
    let at_scan = exclusive_scan(u32(my_totals.y));
    var slot = at_scan.x;
    if (compacted) {
        for (var j = lid; j < n_compact; j += WORKGROUP) {
            write_member(listed(j), out, &slot);
        }
    } else {
        for (var i = source_first + lid; i < source_end; i += WORKGROUP) {
            write_member(at(i), out, &slot);
        }
    }
    for (var s = at_scan.y + lid; s < params.block_k; s += WORKGROUP) {
        block_top[out + s] = vec2<u32>(0u, NONE);
    }
}

fn write_member(c: Candidate, out: u32, slot: ptr<function, u32>) {
    if (weight(c, position(c), false) != 0.0 && *slot < params.block_k) {
        block_top[out + *slot] = vec2<u32>(bitcast<u32>(c.logit), c.index);
        *slot += 1u;
    }
}

// Keep candidate c in `best` if it is real and beats it.
fn consider(best: ptr<function, Best>, c: Candidate, real: bool) {
    if (real && c.allowed && beats(c.logit, c.index, (*best).value, (*best).index)) {
        *best = Best(c.logit, c.index);
    }
}

// ---- Log-probabilities ----
// Over the whole vocabulary (every token, whatever the mask), on the biased logits before the
// penalties. Top-k: each invocation keeps its own best k (sorted, in `own_*`) of its strided
// slice in one pass; then each of k rounds takes the best of the invocations' heads with
// `reduce_best` (the CPU's order: logit descending, the lower index first) and the invocation it
// came from moves on to its next: k rounds of 2 barriers, no k * 256 list to merge in workgroup
// memory (which the sampler's own arrays fill). The first round's is the maximum. The log-sum-exp
// is a second pass, max + log(sum of exp(l - max)), summed like the sampler's masses in f32 (the
// CPU accumulates in f64: see the tests' tolerance).

var<private> own_value: array<f32, MAX_TOP>;
var<private> own_index: array<u32, MAX_TOP>;
var<private> own_len: u32;

// Keep (v, i) among this invocation's best k (1 <= k <= MAX_TOP), sorted best first.
fn keep_best(v: f32, i: u32, k: u32) {
    if (own_len == k && !beats(v, i, own_value[k - 1u], own_index[k - 1u])) {
        return;
    }
    // The slot it takes, after moving down those it beats (the last drops off a full list).
    var j = min(own_len, k - 1u);
    own_len = min(own_len + 1u, k);
    while (j > 0u && beats(v, i, own_value[j - 1u], own_index[j - 1u])) {
        own_value[j] = own_value[j - 1u];
        own_index[j] = own_index[j - 1u];
        j -= 1u;
    }
    own_value[j] = v;
    own_index[j] = i;
}

// Sets log_sum_exp, and writes the alternatives into result[2..] (invocation 0).
fn logprob_stats() {
    let k = clamp(params.top_logprobs, 1u, MAX_TOP);
    for (var i = lid; i < params.vocab; i += WORKGROUP) {
        keep_best(logits[i], i, k);
    }
    var top_value: array<f32, MAX_TOP>;
    var top_index: array<u32, MAX_TOP>;
    var head = 0u;
    for (var r = 0u; r < k; r++) {
        let offered = head < own_len;
        let at_head = min(head, MAX_TOP - 1u);
        let best = reduce_best(own_value[at_head], select(NONE, own_index[at_head], offered));
        if (offered && best.index == own_index[at_head]) {
            head += 1u;
        }
        top_value[r] = best.value;
        top_index[r] = best.index;
    }
    var sum = 0.0;
    for (var i = lid; i < params.vocab; i += WORKGROUP) {
        sum += exp(logits[i] - top_value[0]);
    }
    log_sum_exp = top_value[0] + log(reduce_sum(vec4<f32>(sum, 0.0, 0.0, 0.0)).x);
    if (lid == 0u) {
        for (var r = 0u; r < min(params.top_logprobs, k); r++) {
            result[2u + 2u * r] = top_index[r];
            result[3u + 2u * r] = bitcast<u32>(top_value[r] - log_sum_exp);
        }
    }
}

// The entries of `penalties` that hold tokens a and b (NONE where not listed), in every
// invocation: each token is listed at most once, so at most one invocation writes each half.
fn find_entries(a: u32, b: u32) -> vec2<u32> {
    if (lid == 0u) {
        found = array<u32, 2>(NONE, NONE);
    }
    workgroupBarrier();
    let n = recent.n_penalized;
    for (var j = lid; j < n; j += WORKGROUP) {
        let token = penalties[j].x;
        if (token == a) {
            found[0] = j;
        }
        if (token == b) {
            found[1] = j;
        }
    }
    let both = workgroupUniformLoad(&found);
    return vec2<u32>(both[0], both[1]);
}

// The logit of token t before the penalties (bias included): kept by `apply_penalties` when t was
// penalized. Every invocation calls it.
fn unpenalized(t: u32) -> f32 {
    let entry = find_entries(t, NONE).x;
    return select(logits[t], unpenalized_logits[min(entry, arrayLength(&unpenalized_logits) - 1u)], entry != NONE);
}

// The penalty state after `chosen` joins the history (see the header): its count up, the count of
// the token leaving the window down, an entry removed when its count reaches 0 (the last entry
// takes its place). Every invocation calls it; invocation 0 writes.
fn remember(chosen: u32) {
    let window = params.window;
    let slot = params.history_len % window;
    let leaving = select(NONE, recent.ring[slot], params.history_len >= window);
    let entries = find_entries(chosen, leaving);
    if (lid == 0u) {
        var n = recent.n_penalized;
        var chosen_at = entries.x;
        if (chosen_at != NONE) {
            penalties[chosen_at].y += 1u;
        } else {
            // The buffer has room for one entry more than a window holds, for this moment.
            chosen_at = n;
            penalties[chosen_at] = vec2<u32>(chosen, 1u);
            n += 1u;
        }
        // A token leaving the window is listed (found above, or just added if it is `chosen`).
        let j = select(entries.y, chosen_at, leaving == chosen);
        if (leaving != NONE && j != NONE) {
            let left = penalties[j].y - 1u;
            if (left == 0u) {
                penalties[j] = penalties[n - 1u];
                n -= 1u;
            } else {
                penalties[j].y = left;
            }
        }
        recent.ring[slot] = chosen;
        recent.n_penalized = n;
    }
}

// ---- Passes over the candidates ----
// Each pass adds up a value per candidate, over the vocabulary or, once compacted, over the list:
// two loops rather than a branch per candidate, which software adapters pay for on every element.

// What a candidate adds at the four positions last_*[j]: its weight where it is at or above.
fn weights_above(c: Candidate, last_key: vec4<u32>, last_rank: vec4<u32>, mass: bool) -> vec4<f32> {
    let p = position(c);
    let w = weight(c, p, mass);
    let key = vec4<u32>(p.x);
    let above = (key > last_key) | ((key == last_key) & (vec4<u32>(p.y) >= last_rank));
    return select(vec4<f32>(0.0), vec4<f32>(w), above);
}

// For the four positions first + j * step (j = 0..3): the running total of the set's candidates at
// or above each.
fn totals_at(first: vec2<u32>, step: vec2<u32>, mass: bool) -> vec4<f32> {
    let j = vec4<u32>(0u, 1u, 2u, 3u);
    let last_key = vec4<u32>(first.x) + j * step.x;
    let last_rank = vec4<u32>(first.y) + j * step.y;
    var acc = vec4<f32>(0.0);
    if (compacted) {
        for (var i = lid; i < n_compact; i += WORKGROUP) {
            acc += weights_above(listed(i), last_key, last_rank, mass);
        }
    } else {
        for (var i = source_first + lid; i < source_end; i += WORKGROUP) {
            acc += weights_above(at(i), last_key, last_rank, mass);
        }
    }
    my_totals = acc;
    return reduce_sum(acc);
}

// (probability, 1) for a member of the set, 0 otherwise.
fn membership(c: Candidate) -> vec2<f32> {
    let q = probability(c.logit);
    return select(vec2<f32>(0.0), vec2<f32>(q, 1.0), c.allowed & within_cuts(position(c)) & above_min_p(q));
}

// Over the set: x = the sum of probabilities, y = how many candidates.
fn set_totals() -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    if (compacted) {
        for (var i = lid; i < n_compact; i += WORKGROUP) {
            acc += membership(listed(i));
        }
    } else {
        for (var i = source_first + lid; i < source_end; i += WORKGROUP) {
            acc += membership(at(i));
        }
    }
    my_totals = vec4<f32>(acc, 0.0, 0.0);
    return reduce_sum(vec4<f32>(acc, 0.0, 0.0)).xy;
}

// (1, the rank's halves) for a member of the set with the given key, 0 otherwise.
fn group_member(c: Candidate, key: u32) -> vec4<f32> {
    let p = position(c);
    let member = vec4<f32>(1.0, f32(p.y & 0xffffu), f32(p.y >> 16u), 0.0);
    return select(vec4<f32>(0.0), member, (p.x == key) & (weight(c, p, false) != 0.0));
}

// Over the set's members with the given key: x = how many, and when there is one, y and z = the
// halves of its rank (each < 2^16, exact in f32).
fn group_totals(key: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    if (compacted) {
        for (var i = lid; i < n_compact; i += WORKGROUP) {
            acc += group_member(listed(i), key);
        }
    } else {
        for (var i = source_first + lid; i < source_end; i += WORKGROUP) {
            acc += group_member(at(i), key);
        }
    }
    return reduce_sum(acc);
}

// This invocation's offset among all invocations' `mine` (an exclusive scan, in invocation order),
// and their total. Every invocation calls it.
fn exclusive_scan(mine: u32) -> vec2<u32> {
    partial_counts[lid] = mine;
    workgroupBarrier();
    if (lid < FAN) {
        var s = 0u;
        for (var j = 0u; j < FAN; j++) {
            s += partial_counts[lid * FAN + j];
        }
        group_counts[lid] = s;
    }
    workgroupBarrier();
    var offset = 0u;
    var total = 0u;
    for (var g = 0u; g < FAN; g++) {
        offset += select(0u, group_counts[g], g < lid / FAN);
        total += group_counts[g];
    }
    for (var t = lid - lid % FAN; t < lid; t++) {
        offset += partial_counts[t];
    }
    return vec2<u32>(offset, total);
}

// Copy the set's candidates at or above `floor` into workgroup memory; `mine` is how many of them
// this invocation visits. Each invocation writes its own from its offset in an exclusive scan of
// those counts, so the order (and any sum over it) is the same from run to run. Only from the
// source: a set only shrinks, so once compacted it stays small enough.
fn compact(floor: vec2<u32>, mine: u32) {
    let at_scan = exclusive_scan(mine);
    var offset = at_scan.x;
    for (var i = source_first + lid; i < source_end; i += WORKGROUP) {
        let c = at(i);
        let p = position(c);
        if (at_or_above(p, floor) && weight(c, p, false) != 0.0 && offset < CAPACITY) {
            compact_logit[offset] = c.logit;
            compact_index[offset] = c.index;
            offset += 1u;
        }
    }
    workgroupBarrier();
    n_compact = min(at_scan.y, CAPACITY);
    compacted = true;
}

// Compact when `count` candidates (at or above `floor`) fit and nothing is compacted yet; whether
// it did, as a value every invocation can branch on around barriers.
fn compact_if_few(floor: vec2<u32>, count: f32, mine: u32) -> bool {
    if (lid == 0u) {
        broadcast = u32(!compacted && count <= f32(CAPACITY));
    }
    if (workgroupUniformLoad(&broadcast) == 0u) {
        return false;
    }
    compact(floor, mine);
    return true;
}

// ---- Search ----

// Whether a running total meets the goal: `total > goal` when strict, else `total >= goal`.
fn meets(total: f32, goal: f32, strict: bool) -> bool {
    return select(total >= goal, total > goal, strict);
}

// The largest j in 0..3 whose total meets the goal (0 if none does: the caller's position stays).
// Totals never grow with the position (with q >= 0, rounded adds are monotonic), so those that
// meet it are a prefix.
fn last_meeting(totals: vec4<f32>, goal: f32, strict: bool) -> u32 {
    var j = 0u;
    for (var k = 1u; k < 4u; k++) {
        if (meets(totals[k], goal, strict)) {
            j = k;
        }
    }
    return j;
}

// The last position (in sampling order) whose running total over the set, from the top down to it
// inclusive, meets the goal; (0, 0), which keeps everything, when no position does. `mass` must be
// the same in every invocation.
fn search(mass: bool, goal: f32, strict: bool) -> vec2<u32> {
    var found = vec2<u32>(0u, 0u);
    // A count (top-k) knows after each pass how many candidates are at or above `found`, all of
    // which the rest of the search (and of the chain) needs: once they fit, it compacts them.
    var counting = !mass;
    // The key, two bits per pass, most significant first.
    for (var shift = 30i; shift >= 0i; shift -= 2i) {
        let step = vec2<u32>(1u << u32(shift), 0u);
        let totals = totals_at(found, step, mass);
        let j = last_meeting(totals, goal, strict);
        found += step * j;
        if (counting) {
            counting = !compact_if_few(found, totals[j], u32(my_totals[j]));
        }
    }
    // The candidates in the set with that key: when there is just one, it is the answer.
    let group = group_totals(found.x);
    if (lid == 0u) {
        broadcast = u32(group.x > 1.0);
    }
    // Several candidates share the key (equal logits): find the rank, two bits per pass. Rare, so
    // skipped otherwise.
    if (workgroupUniformLoad(&broadcast) != 0u) {
        for (var shift = i32(index_bits()) - 2i; shift >= 0i; shift -= 2i) {
            let step = vec2<u32>(0u, 1u << u32(shift));
            let totals = totals_at(found, step, mass);
            let j = last_meeting(totals, goal, strict);
            found += step * j;
            if (counting) {
                counting = !compact_if_few(found, totals[j], u32(my_totals[j]));
            }
        }
    } else if (group.x == 1.0) {
        found.y = u32(group.y) | (u32(group.z) << 16u);
    }
    return found;
}

// ---- The chain ----

fn apply_penalties() {
    for (var j = lid; j < recent.n_penalized; j += WORKGROUP) {
        let entry = penalties[j];
        // Only the source's tokens (the vocabulary's, or in top_blocks the block's): tokens outside
        // the vocabulary are ignored, as on the CPU.
        if (entry.x >= source_first && entry.x < source_end) {
            var l = logits[entry.x];
            if (params.logprobs != 0u) {
                unpenalized_logits[j] = l;
            }
            if (params.repetition_penalty != 1.0) {
                l = select(l * params.repetition_penalty, l / params.repetition_penalty, l > 0.0);
            }
            l -= f32(entry.y) * params.frequency_penalty + params.presence_penalty;
            logits[entry.x] = l;
        }
    }
}

// Every branch around barriers below is on uniform parameters.
@compute @workgroup_size(256)
fn sample(@builtin(local_invocation_index) local_index: u32) {
    lid = local_index;
    from_list = params.blocks > 0u;
    source_end = select(params.vocab, params.blocks * params.block_k, from_list);
    // Where top_blocks ran, it applied the bias and the penalties to its block's tokens.
    if (params.blocks == 0u) {
        if (params.n_biased > 0u) {
            apply_bias();
            storageBarrier();
        }
        if (params.logprobs != 0u) {
            logprob_stats();
            // Read before the penalties change anything.
            storageBarrier();
        }
        apply_penalties();
        // The penalized logits must be visible to every invocation before anyone reads them.
        storageBarrier();
    }
    let chosen = choose();
    if (params.logprobs != 0u) {
        let logprob = unpenalized(chosen) - log_sum_exp;
        if (lid == 0u) {
            result[1] = bitcast<u32>(logprob);
        }
    }
    if (lid == 0u) {
        result[0] = chosen;
    }
    if (params.window > 0u) {
        // Every invocation has read `penalties` (apply_penalties, unpenalized) before it changes.
        storageBarrier();
        remember(chosen);
    }
}

fn apply_bias() {
    for (var j = lid; j < params.n_biased; j += WORKGROUP) {
        let entry = bias[j];
        // Only the source's tokens, as for the penalties (the engines reject tokens outside the
        // vocabulary before a step).
        if (entry.x >= source_first && entry.x < source_end) {
            logits[entry.x] += bitcast<f32>(entry.y);
        }
    }
}

// The chain after the penalties: the chosen token, the same in every invocation.
fn choose() -> u32 {
    let found = argmax_pass();
    // No candidate: the CPU's argmax over minus infinities takes token 0.
    let best = select(found, 0u, found == NONE);
    if (params.temperature == 0.0) {
        return best;
    }
    let top_k_on = params.top_k > 0u && params.top_k < params.vocab;
    if (lid == 0u) {
        broadcast = u32(found == NONE);
    }
    if (workgroupUniformLoad(&broadcast) != 0u) {
        // No candidate (a mask that allows nothing): the CPU's chain then runs over every token,
        // all tied at minus infinity, in index order, with NaN probabilities: min-p keeps the first,
        // otherwise the walk ends on the last of the top-k (or of the vocabulary).
        return select(select(params.vocab - 1u, params.top_k - 1u, top_k_on), 0u, params.min_p > 0.0);
    }
    max_logit = logits[best];
    let bits = index_bits();
    index_mask = select(0xffffffffu, (1u << bits) - 1u, bits < 32u);

    // Top-k: the k-th candidate is the last position with k candidates at or above it (none when
    // fewer candidates than k are allowed: the cut stays at (0, 0) and keeps them all).
    if (top_k_on) {
        top_k_cut = search(false, f32(params.top_k), false);
    }
    // The softmax denominator: sum_exp is still 1, so the probabilities are plain exps here.
    sum_exp = set_totals().x;
    // Top-p: the first candidate whose cumulative probability reaches top_p.
    if (params.top_p < 1.0) {
        top_p_cut = search(true, params.top_p, false);
    }
    // Min-p: a floor relative to the most likely candidate, computed as the CPU does.
    if (params.min_p > 0.0) {
        min_prob = probability(max_logit) * params.min_p;
        min_p_on = true;
    }

    var kept = set_totals();
    if (lid == 0u) {
        broadcast = u32(!compacted && kept.y <= f32(CAPACITY));
    }
    if (workgroupUniformLoad(&broadcast) != 0u) {
        compact(vec2<u32>(0u, 0u), u32(my_totals.y));
        // Summed again over the compacted list: the search's total at the top must be this sum,
        // bit for bit, for a draw below it to find a candidate.
        kept = set_totals();
    }
    // The draw: the first candidate whose cumulative probability exceeds draw * total. Past the
    // total (a draw of 1 or more) the CPU takes the last kept candidate: the last position with all
    // the set's candidates at or above it.
    let r = params.draw * kept.x;
    if (lid == 0u) {
        broadcast = u32(r < kept.x);
    }
    let within = workgroupUniformLoad(&broadcast) != 0u;
    let chosen = search(within, select(kept.y, r, within), within);
    // Key 0 (a NaN) would mean that no position met the goal, which the sums above rule out; the
    // most likely token beats a stray index if it ever happens.
    return select(index_mask - chosen.y, best, chosen.x == 0u);
}
