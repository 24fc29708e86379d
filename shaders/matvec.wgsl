// y[t][row] = W[row] · x[t]: every matrix product of the model, for one token (decode) or many
// (prefill), with the steps around it fused in where that saves a pass over memory.
//
// Work splits, built from the same per-encoding dot products:
// - `matvec_*` (GPUs): one workgroup per (output row, block of TB tokens). The 64 invocations walk
//   the row together, invocation i reading words i, i + 64, ... so loads of the packed weights
//   coalesce; a tree reduction in workgroup memory sums their partial dot products.
// - `matvec_rows_*` (software adapters such as lavapipe and SwiftShader, where a workgroup barrier
//   costs far more than a memory load): one invocation per (output row, block of TB tokens).
// Each weight word is decoded once per block and used for all its tokens: decode (TB = 1) reads the
// weights once per token, prefill (TB = 8) once per 8 tokens. kernels.rs builds this file twice,
// once with TB = 1 and once with TB = 8 (the line `const TB` below is the one it rewrites).
//
// Fusions, chosen per pipeline with override constants:
// - NORM: x is RMS-normalized on the fly (y = r · W·(g ⊙ x), r = 1/sqrt(mean(x²) + eps), g the norm
//   weight), so no separate norm pass writes and re-reads the activations;
// - ACT: an activation on the result: 0 none, 1 SiLU, 2 GELU (tanh approximation), 3 a soft cap
//   cap * tanh(y / cap) (Gemma 2's logits);
// - GATED: W holds the gate rows, then the up rows `up_offset` further; y = act(gate·x) * (up·x)
//   (SwiGLU with SiLU, GeGLU with GELU);
// - BIAS: y = W·x + b before the activation (BLOOM and GPT-2 put biases on every product); b holds
//   a value per output row of the whole matrix (a split matrix's pieces index it at row_offset);
// - ACCUMULATE: y += W·x (the residual add).
//
// One entry point per weight encoding (see docs/FORMAT.md); each uses only the weight bindings it
// needs, so the pipelines' automatic layouts differ only there.

struct Dims {
    // Output rows this dispatch computes (a split tensor's part: its own rows).
    rows: u32,
    cols: u32,
    group: u32,
    // Workgroups along x of the dispatch grid (capped at 65535; y counts grid rows).
    grid_x: u32,
    // Values per token in y, and where this dispatch's rows start among them.
    out_stride: u32,
    row_offset: u32,
    eps: f32,
    up_offset: u32,
    // ACT 3's cap.
    cap: f32,
}

struct Step {
    start: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> codes: array<u32>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> mins: array<u32>;
@group(0) @binding(7) var<storage, read> norm_weight: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;

override NORM: bool = false;
override ACT: u32 = 0u;
override GATED: bool = false;
override ACCUMULATE: bool = false;
override BIAS: bool = false;

// Tokens per workgroup (cooperative split) or per invocation (row split).
const TB: u32 = 8u;
const WG: u32 = 64u;
// Values one invocation reduces: TB dot products, TB more for GATED's up rows, TB sums of squares.
const VALUES: u32 = 3u * TB;
var<workgroup> partial: array<f32, 64u * VALUES>;

// f16 number `i` of an array of packed pairs.
fn scale_at(i: u32) -> f32 {
    let v = unpack2x16float(scales[i / 2u]);
    return select(v.x, v.y, (i & 1u) == 1u);
}

fn min_at(i: u32) -> f32 {
    let v = unpack2x16float(mins[i / 2u]);
    return select(v.x, v.y, (i & 1u) == 1u);
}

// Four input values of token `t` from column `col` (a multiple of 4: the engine requires rows of a
// multiple of 4 values), times the norm weight when the norm is fused (the norm's other factor, r,
// is per token and applied to the finished sum). Vector loads: one load instead of four.
fn x4(t: u32, col: u32) -> vec4<f32> {
    let v = x[(t * dims.cols + col) / 4u];
    if (NORM) {
        return v * norm_weight[col / 4u];
    }
    return v;
}

// Tokens of the block starting at t0 that exist.
fn block_len(t0: u32) -> u32 {
    return min(TB, step.n_tokens - t0);
}

// Partial dot products of row `row` with tokens t0.., over words first, first + stride, ...
// Loops over the block run to the constant TB (guarded) so the accumulators stay in registers.

fn dot_q4(row: u32, t0: u32, first: u32, stride: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let words = dims.cols / 8u;
    for (var w = first; w < words; w = w + stride) {
        let word = codes[row * words + w];
        let col = w * 8u;
        let g = (row * dims.cols + col) / dims.group;
        let scale = scale_at(g);
        let offset = min_at(g);
        let lo = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
        let hi = vec4<f32>(vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u));
        for (var t = 0u; t < TB; t = t + 1u) {
            if (t < nt) {
                let xa = x4(t0 + t, col);
                let xb = x4(t0 + t, col + 4u);
                let sx = dot(xa + xb, vec4<f32>(1.0));
                acc[t] = acc[t] + scale * (dot(lo, xa) + dot(hi, xb)) + offset * sx;
            }
        }
    }
    return acc;
}

fn dot_q8(row: u32, t0: u32, first: u32, stride: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let words = dims.cols / 4u;
    for (var w = first; w < words; w = w + stride) {
        let word = codes[row * words + w];
        let col = w * 4u;
        let scale = scale_at((row * dims.cols + col) / 32u);
        // Sign-extend each byte: shift it to the top, then arithmetic-shift it back down.
        let shifted = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word));
        let q = vec4<f32>(shifted >> vec4<u32>(24u));
        for (var t = 0u; t < TB; t = t + 1u) {
            if (t < nt) {
                acc[t] = acc[t] + scale * dot(q, x4(t0 + t, col));
            }
        }
    }
    return acc;
}

fn dot_f16(row: u32, t0: u32, first: u32, stride: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    // Two words (four values) at a time.
    let quads = dims.cols / 4u;
    for (var w = first; w < quads; w = w + stride) {
        let base = row * (dims.cols / 2u) + 2u * w;
        let v = vec4<f32>(unpack2x16float(codes[base]), unpack2x16float(codes[base + 1u]));
        for (var t = 0u; t < TB; t = t + 1u) {
            if (t < nt) {
                acc[t] = acc[t] + dot(v, x4(t0 + t, 4u * w));
            }
        }
    }
    return acc;
}

fn dot_f32(row: u32, t0: u32, first: u32, stride: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let quads = dims.cols / 4u;
    for (var w = first; w < quads; w = w + stride) {
        let base = row * dims.cols + 4u * w;
        let v = bitcast<vec4<f32>>(vec4<u32>(codes[base], codes[base + 1u], codes[base + 2u], codes[base + 3u]));
        for (var t = 0u; t < TB; t = t + 1u) {
            if (t < nt) {
                acc[t] = acc[t] + dot(v, x4(t0 + t, 4u * w));
            }
        }
    }
    return acc;
}

// Partial sums of squares of the block's inputs (NORM only).
fn sum_squares(t0: u32, first: u32, stride: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    for (var t = 0u; t < TB; t = t + 1u) {
        if (t < nt) {
            for (var c = first; c < dims.cols / 4u; c = c + stride) {
                let v = x[(t0 + t) * dims.cols / 4u + c];
                acc[t] = acc[t] + dot(v, v);
            }
        }
    }
    return acc;
}

// Apply the fused steps to finished sums and store token t's value of `row`.
fn finish(row: u32, t: u32, gate: f32, up: f32, squares: f32) {
    var r = 1.0;
    if (NORM) {
        // 1 / sqrt, not inverseSqrt: some drivers give inverseSqrt a fast estimate (~12 bits).
        r = 1.0 / sqrt(squares / f32(dims.cols) + dims.eps);
    }
    var v = gate * r;
    if (BIAS) {
        v = v + bias[dims.row_offset + row];
    }
    if (ACT == 1u) {
        v = v / (1.0 + exp(-v));
    } else if (ACT == 2u) {
        // tanh saturates long before 10; clamping keeps every implementation away from exp overflow.
        v = 0.5 * v * (1.0 + tanh(clamp(0.7978845608 * (v + 0.044715 * v * v * v), -10.0, 10.0)));
    } else if (ACT == 3u) {
        v = dims.cap * tanh(v / dims.cap);
    }
    if (GATED) {
        v = v * (up * r);
    }
    let i = t * dims.out_stride + dims.row_offset + row;
    if (ACCUMULATE) {
        v = v + y[i];
    }
    y[i] = v;
}

// Cooperative split: sum the workgroup's VALUES partial sums (partial[k * 64 + lid]) in one tree.
fn reduce_partials(lid: u32) {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            for (var k = 0u; k < VALUES; k = k + 1u) {
                partial[k * WG + lid] = partial[k * WG + lid] + partial[k * WG + lid + stride];
            }
        }
        workgroupBarrier();
    }
}

fn store_block(lid: u32, row: u32, t0: u32, gate: array<f32, TB>, up: array<f32, TB>, squares: array<f32, TB>) {
    for (var t = 0u; t < TB; t = t + 1u) {
        partial[t * WG + lid] = gate[t];
        partial[(TB + t) * WG + lid] = up[t];
        partial[(2u * TB + t) * WG + lid] = squares[t];
    }
    reduce_partials(lid);
    let nt = block_len(t0);
    if (lid < nt) {
        finish(row, t0 + lid, partial[lid * WG], partial[(TB + lid) * WG], partial[(2u * TB + lid) * WG]);
    }
}

// Row split: workgroup (x, y) covers rows ((y * grid_x + x) * 64 ..) + 64.
fn own_row(wg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.y * dims.grid_x + wg.x) * WG + lid.x;
}

// ---- Template: kernels.rs appends these entry points once per encoding ENC (q4, q8, f16, f32),
// ---- with ENC replaced, so each encoding gets both splits without a copy in this file.

@compute @workgroup_size(64)
fn matvec_ENC(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // The row is the whole workgroup's, so leaving early keeps the barriers uniform.
    let row = wg.y * dims.grid_x + wg.x;
    let t0 = wg.z * TB;
    if (row >= dims.rows) {
        return;
    }
    let gate = dot_ENC(row, t0, lid.x, WG);
    var up: array<f32, TB>;
    var squares: array<f32, TB>;
    if (GATED) {
        up = dot_ENC(row + dims.up_offset, t0, lid.x, WG);
    }
    if (NORM) {
        squares = sum_squares(t0, lid.x, WG);
    }
    store_block(lid.x, row, t0, gate, up, squares);
}

@compute @workgroup_size(64)
fn matvec_rows_ENC(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = own_row(wg, lid);
    let t0 = wg.z * TB;
    if (row >= dims.rows) {
        return;
    }
    let gate = dot_ENC(row, t0, 0u, 1u);
    var up: array<f32, TB>;
    var squares: array<f32, TB>;
    if (GATED) {
        up = dot_ENC(row + dims.up_offset, t0, 0u, 1u);
    }
    if (NORM) {
        squares = sum_squares(t0, 0u, 1u);
    }
    for (var t = 0u; t < block_len(t0); t = t + 1u) {
        finish(row, t0 + t, gate[t], up[t], squares[t]);
    }
}
