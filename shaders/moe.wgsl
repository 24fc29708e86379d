// A mixture of experts' feed-forward around the experts' own products (engine.rs, `mixture`):
//
// - `moe_route` (one workgroup): each token's router logits → probabilities (a softmax, or each
//   logit's sigmoid) → its `used` most probable experts (probability plus the selection bias where
//   there is one; ties to the lower index), their weights (the probabilities, rescaled to sum to 1
//   with `normalize`, times `scale`), as hearth_core's `mixture` computes them, and the shared
//   expert's gate · x where it has a gate. Then, per expert, the tokens that chose it in token
//   order: each (token, choice) gets its row in that expert's slice of the packed input, the
//   expert's step uniform gets its token count, and its products' indirect dispatch arguments get
//   their grids: zero workgroups for an expert no token chose, so its weights are never read.
// - `moe_gather`: each token's normed input copied to its row of each expert it chose.
// - `moe_combine`: each token's chosen experts' outputs, weighted, summed in expert order (as the
//   CPU engines sum them), plus the shared expert's output (Qwen2-MoE's scaled by sigmoid(gate · x),
//   dots.llm1's as it is), added to the residual stream.
//
// Expert e's rows of the packed buffers start at value e * region (room for a step's tokens: no
// expert can get more); its step uniform is the 64 words at `steps[64 e]` (WebGPU's uniform
// offset alignment is 256 bytes); its products' arguments are the 6 words at `args[6 e]`.

// mixture.rs's `MoeDims` mirrors it field for field.
struct Dims {
    experts: u32,
    used: u32,
    normalize: u32,
    hidden: u32,
    // Values per expert in the packed buffers: room for the engine's tokens per step, rounded up
    // to WebGPU's 256-byte storage offset alignment (the experts' products bind their slices).
    region: u32,
    // 1: add the shared expert's output, scaled by the sigmoid of its gate; 2: add it unscaled.
    has_shared: u32,
    // The grids of an expert's gate/up and down products: decode (one token) and prefill (tokens
    // in groups of `prefill_tokens` along z).
    gate_up_decode: vec2<u32>,
    gate_up_prefill: vec2<u32>,
    down_decode: vec2<u32>,
    down_prefill: vec2<u32>,
    prefill_tokens: u32,
    // 0: a softmax over the router's logits; 1: each logit's sigmoid.
    gating: u32,
    // 1: `selection_bias` is added to the probabilities to choose (not to weigh) the experts.
    has_bias: u32,
    // The chosen weights' factor, after any rescaling.
    scale: f32,
    // The mixture's output (shared expert included) is added to the residual times this
    // (Granite's residual multiplier; 1 otherwise).
    residual_scale: f32,
}

// llama.cpp's floor under the sum a token's chosen weights are rescaled by (2^-14).
const NORMALIZE_SUM_MIN: f32 = 6.1035156e-5;

// The most experts a token uses (mixture.rs's `prepare` holds `used` to it).
const USED_MAX: u32 = 16u;

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
// moe_route: [token][expert] router logits.
@group(0) @binding(2) var<storage, read> logits: array<f32>;
// Per (token, choice): (expert, weight bits, row within the expert's slice, 0).
@group(0) @binding(3) var<storage, read_write> routes: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> steps: array<u32>;
@group(0) @binding(5) var<storage, read_write> args: array<u32>;
// moe_gather: the normed input, and the experts' packed inputs.
@group(0) @binding(6) var<storage, read> normed: array<f32>;
@group(0) @binding(7) var<storage, read_write> packed: array<f32>;
// moe_combine: the experts' packed outputs, the shared expert's output and gate, the residual.
@group(0) @binding(8) var<storage, read> expert_out: array<f32>;
@group(0) @binding(9) var<storage, read> shared_out: array<f32>;
// Per token, the shared expert's gate · x (written by moe_route from the gate's weights).
@group(0) @binding(10) var<storage, read_write> shared_gate: array<f32>;
@group(0) @binding(11) var<storage, read_write> x: array<f32>;
@group(0) @binding(12) var<storage, read> shared_gate_weight: array<f32>;
// Per expert, added to its probability to choose it (when `has_bias`).
@group(0) @binding(13) var<storage, read> selection_bias: array<f32>;

// Expert e's probability for the token whose logits start at `row` (`m`, `sum`: the softmax's
// maximum and sum of exponentials).
fn probability(row: u32, e: u32, m: f32, sum: f32) -> f32 {
    if (dims.gating == 1u) {
        return 1.0 / (1.0 + exp(-logits[row + e]));
    }
    return exp(logits[row + e] - m) / sum;
}

@compute @workgroup_size(64)
fn moe_route(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let n = step.n_tokens;
    let e_count = dims.experts;
    for (var t = lid; t < n; t = t + 64u) {
        if (dims.has_shared == 1u) {
            var g = 0.0;
            for (var i = 0u; i < dims.hidden; i = i + 1u) {
                g = g + shared_gate_weight[i] * normed[t * dims.hidden + i];
            }
            shared_gate[t] = g;
        }
        let row = t * e_count;
        var m = -3.4e38;
        for (var e = 0u; e < e_count; e = e + 1u) {
            m = max(m, logits[row + e]);
        }
        var sum = 0.0;
        for (var e = 0u; e < e_count; e = e + 1u) {
            sum = sum + exp(logits[row + e] - m);
        }
        // The `used` largest scores, in order; a choice is the first of the largest left (lower
        // index on ties), found by scanning past those already taken. The first expert left is
        // taken whatever its score (a NaN compares false), so the choices are always distinct.
        var taken: array<u32, USED_MAX>;
        var chosen_sum = 0.0;
        for (var k = 0u; k < dims.used; k = k + 1u) {
            var best = e_count;
            var best_score = -1.0;
            var best_p = 0.0;
            for (var e = 0u; e < e_count; e = e + 1u) {
                var free = true;
                for (var j = 0u; j < k; j = j + 1u) {
                    free = free && taken[j] != e;
                }
                let p = probability(row, e, m, sum);
                var score = p;
                if (dims.has_bias == 1u) {
                    score = p + selection_bias[e];
                }
                if (free && (best == e_count || score > best_score)) {
                    best = e;
                    best_score = score;
                    best_p = p;
                }
            }
            taken[k] = best;
            chosen_sum = chosen_sum + best_p;
            routes[t * dims.used + k] = vec4<u32>(best, bitcast<u32>(best_p), 0u, 0u);
        }
        // As the CPU engines: divided by the sum, then scaled.
        for (var k = 0u; k < dims.used; k = k + 1u) {
            var w = bitcast<f32>(routes[t * dims.used + k].y);
            if (dims.normalize == 1u) {
                w = w / max(chosen_sum, NORMALIZE_SUM_MIN);
            }
            routes[t * dims.used + k].y = bitcast<u32>(w * dims.scale);
        }
    }
    storageBarrier();
    workgroupBarrier();
    // Each expert's rows, in token order, and its launches.
    for (var e = lid; e < e_count; e = e + 64u) {
        var count = 0u;
        for (var i = 0u; i < n * dims.used; i = i + 1u) {
            if (routes[i].x == e) {
                routes[i].z = count;
                count = count + 1u;
            }
        }
        steps[64u * e] = 0u;
        steps[64u * e + 1u] = count;
        var gate_up = vec3<u32>(dims.gate_up_decode, 1u);
        var down = vec3<u32>(dims.down_decode, 1u);
        if (n > 1u) {
            let groups = (count + dims.prefill_tokens - 1u) / dims.prefill_tokens;
            gate_up = vec3<u32>(dims.gate_up_prefill, groups);
            down = vec3<u32>(dims.down_prefill, groups);
        }
        if (count == 0u) {
            gate_up = vec3<u32>(0u);
            down = vec3<u32>(0u);
        }
        args[6u * e] = gate_up.x;
        args[6u * e + 1u] = gate_up.y;
        args[6u * e + 2u] = gate_up.z;
        args[6u * e + 3u] = down.x;
        args[6u * e + 4u] = down.y;
        args[6u * e + 5u] = down.z;
    }
}

// Invocation (value i, choice c of token c / used).
@compute @workgroup_size(64)
fn moe_gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let c = gid.y;
    if (i >= dims.hidden || c >= step.n_tokens * dims.used) {
        return;
    }
    let r = routes[c];
    let t = c / dims.used;
    packed[r.x * dims.region + r.z * dims.hidden + i] = normed[t * dims.hidden + i];
}

// Invocation (value i, token t).
@compute @workgroup_size(64)
fn moe_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= dims.hidden || t >= step.n_tokens) {
        return;
    }
    // The chosen experts in index order: each pass takes the lowest index above the last.
    var acc = 0.0;
    var last = -1;
    for (var k = 0u; k < dims.used; k = k + 1u) {
        var next = 0u;
        var next_e = 0xffffffffu;
        for (var j = 0u; j < dims.used; j = j + 1u) {
            let e = routes[t * dims.used + j].x;
            if (i32(e) > last && e < next_e) {
                next_e = e;
                next = j;
            }
        }
        last = i32(next_e);
        let r = routes[t * dims.used + next];
        acc = acc + bitcast<f32>(r.y) * expert_out[r.x * dims.region + r.z * dims.hidden + i];
    }
    if (dims.has_shared == 1u) {
        let scale = 1.0 / (1.0 + exp(-shared_gate[t]));
        acc = acc + scale * shared_out[t * dims.hidden + i];
    } else if (dims.has_shared == 2u) {
        acc = acc + shared_out[t * dims.hidden + i];
    }
    x[t * dims.hidden + i] = x[t * dims.hidden + i] + acc * dims.residual_scale;
}
