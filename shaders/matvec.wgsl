// y[t][row] = W[row] · x[t]: every matrix product of the model, for one token (decode) or many
// (prefill), with the steps around it fused in where that saves a pass over memory.
//
// Kernels, each from the same fusions (`finish`):
// - `matvec_decode_*` (GPUs, one token): ROWS output rows per workgroup, each lane loading a whole
//   16- or 32-byte chunk of weights at once and its input chunk once for all ROWS rows, the lanes'
//   partial sums added up once at the end (the `decode` section).
// - `matvec_gemm` (GPUs, prompts): an output tile of 64 rows × 64 tokens per workgroup of 256
//   lanes, each 16-column step of its weights dequantized once into workgroup memory and used for
//   all 64 tokens, each lane summing 4 rows × 4 tokens in registers (`gemm`).
// - `matvec_tiled` (GPUs, prompts, `hearth bench --no-gemm`): the same with 32 rows × 16 tokens per
//   workgroup of 64 lanes, 2 rows × 4 tokens per lane; kept to compare the two on a GPU.
// - `matvec_rows` (software adapters such as lavapipe and SwiftShader, where a workgroup barrier
//   costs far more than a memory load): one invocation per (output row, block of TB tokens); each
//   weight word is decoded once per block and used for all its tokens: TB = 1 (decode) reads the
//   weights once per token, TB = 8 (prefill) once per 8 tokens.
//
// kernels.rs assembles each shader module from this file's sections (each opens with a line
// `// ==== name`): what comes before the first section, which every module shares, then either
// `blocked` + one encoding's `blocked q4` / `q5` / `q8` / `f16` / `f32` / `q4k` / `q5k` / `q6k` (the
// K-quants with `blocked k`) after a generated line `const TB: u32 = ...;`, or `decode` + one
// encoding's `decode q4` / ... (how its weights are
// loaded: the binding's element type differs) + one of the two ways of adding up the lanes' sums
// (`sums in workgroup memory`, `sums with subgroups`) + what is done with the totals (`decode
// store`: the fusions above; `decode rope`: the QKV product's RoPE and KV-cache store, with
// rotary.wgsl in front). So each entry point's module holds its own
// encoding's code only, and each uses only the weight bindings it needs: the pipelines' automatic
// layouts differ only there.
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
// W·x (+ b) is multiplied by `dims.scale` before the activation (1 but for Granite's residual
// multiplier on the products added to the residual, and the reciprocal of its logits' divisor on
// the head, before any soft cap, as the CPU engines order them).
//
// Weight encodings: see docs/FORMAT.md; the K-quants' headers are read by kquants.wgsl, which
// kernels.rs puts in front of every module. Workgroups are numbered along x, then y (a grid row holds
// at most 65,535).

// kernels.rs's `ProductDims` mirrors it field for field.
struct Dims {
    // Output rows this dispatch computes (a split tensor's part: its own rows).
    rows: u32,
    cols: u32,
    group: u32,
    // Values per token in y, and where this dispatch's rows start among them.
    out_stride: u32,
    row_offset: u32,
    eps: f32,
    up_offset: u32,
    // ACT 3's cap.
    cap: f32,
    // The fused value's factor.
    scale: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
// Binding 4, the weight codes, is declared by each section.
@group(0) @binding(5) var<storage, read> scales: array<u32>;
// q4's mins; the K-quants' `high` bits (kquants.wgsl).
@group(0) @binding(6) var<storage, read> mins: array<u32>;
@group(0) @binding(7) var<storage, read> norm_weight: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;

override NORM: bool = false;
override ACT: u32 = 0u;
override GATED: bool = false;
override ACCUMULATE: bool = false;
override BIAS: bool = false;

const WG: u32 = 64u;

// f16 number `i` of an array of packed pairs, decoded exactly (kquants.wgsl's f16_exact): a
// subnormal scale flushed to zero would zero its whole group.
fn scale_at(i: u32) -> f32 {
    return f16_exact(scales[i / 2u] >> (16u * (i & 1u)));
}

fn min_at(i: u32) -> f32 {
    return f16_exact(mins[i / 2u] >> (16u * (i & 1u)));
}

// The fused steps applied to finished sums of `row`: its value before any residual add.
fn fused(row: u32, gate: f32, up: f32, squares: f32) -> f32 {
    var r = 1.0;
    if (NORM) {
        // 1 / sqrt, not inverseSqrt: some drivers give inverseSqrt a fast estimate (~12 bits).
        r = 1.0 / sqrt(squares / f32(dims.cols) + dims.eps);
    }
    var v = gate * r;
    if (BIAS) {
        v = v + bias[dims.row_offset + row];
    }
    v = activate(v * dims.scale, ACT, dims.cap);
    if (GATED) {
        v = v * (up * r);
    }
    return v;
}

// Apply the fused steps to finished sums and store token t's value of `row`.
fn finish(row: u32, t: u32, gate: f32, up: f32, squares: f32) {
    var v = fused(row, gate, up, squares);
    let i = t * dims.out_stride + dims.row_offset + row;
    if (ACCUMULATE) {
        v = v + y[i];
    }
    y[i] = v;
}

// ==== blocked
// Token blocks, weights read in u32 words: the row split (blocks of TB, set by the line kernels.rs
// puts before the shared part) and the tiled split.

@group(0) @binding(4) var<storage, read> codes: array<u32>;

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

// Sums of squares of the block's inputs (NORM only).
fn sum_squares(t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    for (var t = 0u; t < TB; t = t + 1u) {
        if (t < nt) {
            for (var c = 0u; c < dims.cols / 4u; c = c + 1u) {
                let v = x[(t0 + t) * dims.cols / 4u + c];
                acc[t] = acc[t] + dot(v, v);
            }
        }
    }
    return acc;
}

// Row split (software adapters): workgroup (x, y, z) covers rows ((y * groups along x + x) * 64 ..)
// + 64 of token block z. `block_dots(row, t0)`, in each encoding's section, gives row `row`'s dot
// products with the tokens t0.. of the block; its loops over the block run to the constant TB
// (guarded) so the accumulators stay in registers.
fn rows(wg: vec3<u32>, groups: vec3<u32>, lid: u32) {
    let row = (wg.y * groups.x + wg.x) * WG + lid;
    let t0 = wg.z * TB;
    if (row >= dims.rows) {
        return;
    }
    let gate = block_dots(row, t0);
    var up: array<f32, TB>;
    var squares: array<f32, TB>;
    if (GATED) {
        up = block_dots(row + dims.up_offset, t0);
    }
    if (NORM) {
        squares = sum_squares(t0);
    }
    for (var t = 0u; t < block_len(t0); t = t + 1u) {
        finish(row, t0 + t, gate[t], up[t], squares[t]);
    }
}

// Tiled split (GPUs, prompts): workgroup (x, y, z) computes an output tile of TILE_ROWS rows ×
// TILE_TOKENS tokens. Per step along the row, the workgroup dequantizes a 32 × TILE_ROWS weight tile
// (and its up rows' with GATED) and stages the 32 × TILE_TOKENS inputs in workgroup memory, once;
// each lane then keeps 2 rows × 4 tokens of sums in registers and takes every weight it reads for 4
// tokens and every input for 2 rows (and their up rows). The encoding's `weights4(row, col)` gives
// four dequantized weights.
const TILE_ROWS: u32 = 32u;
const TILE_TOKENS: u32 = 16u;
const TILE_STEP: u32 = 32u;
// Weights by [column within the step][row within the tile], inputs by [column][token].
var<workgroup> gate_tile: array<f32, TILE_STEP * TILE_ROWS>;
var<workgroup> up_tile: array<f32, TILE_STEP * TILE_ROWS>;
var<workgroup> input_tile: array<f32, TILE_STEP * TILE_TOKENS>;
// Each token's sum of squares of its inputs, in quarters (four lanes stage a token).
var<workgroup> square_quarters: array<f32, 4u * TILE_TOKENS>;

// Dequantize weights col .. col + 15 of `row` into column-major `tile` at row `r` of the tile
// (zeros past the row's end: rows are a multiple of 4 values, not always of 32).
fn stage_weights(row: u32, r: u32, col: u32, first: u32, is_up: bool) {
    for (var j = 0u; j < 4u; j = j + 1u) {
        let c = col + 4u * j;
        var w = vec4<f32>(0.0);
        if (c < dims.cols) {
            w = weights4(row, c);
        }
        for (var i = 0u; i < 4u; i = i + 1u) {
            let at = (first + 4u * j + i) * TILE_ROWS + r;
            if (is_up) {
                up_tile[at] = w[i];
            } else {
                gate_tile[at] = w[i];
            }
        }
    }
}

fn tiled(wg: vec3<u32>, groups: vec3<u32>, lid: u32) {
    let first_row = (wg.y * groups.x + wg.x) * TILE_ROWS;
    let first_token = wg.z * TILE_TOKENS;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if (first_row >= dims.rows) {
        return;
    }
    // Staging: lane l dequantizes 16 weights of tile row l / 2 and stages 8 inputs of token l / 4.
    let stage_row = min(first_row + lid / 2u, dims.rows - 1u);
    let stage_token = first_token + lid / 4u;
    // Sums: lane l keeps rows 2 (l % 16) and 2 (l % 16) + 1, tokens 4 (l / 16) .. + 3.
    let r0 = 2u * (lid % 16u);
    let t0 = 4u * (lid / 16u);
    var gate: array<vec4<f32>, 2>;
    var up: array<vec4<f32>, 2>;
    var squares = 0.0;
    for (var step_col = 0u; step_col < dims.cols; step_col = step_col + TILE_STEP) {
        let half = 16u * (lid % 2u);
        stage_weights(stage_row, lid / 2u, step_col + half, half, false);
        if (GATED) {
            stage_weights(stage_row + dims.up_offset, lid / 2u, step_col + half, half, true);
        }
        for (var j = 0u; j < 2u; j = j + 1u) {
            let k = 8u * (lid % 4u) + 4u * j;
            var v = vec4<f32>(0.0);
            if (stage_token < step.n_tokens && step_col + k < dims.cols) {
                v = x[(stage_token * dims.cols + step_col + k) / 4u];
                squares = squares + dot(v, v);
                if (NORM) {
                    v = v * norm_weight[(step_col + k) / 4u];
                }
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                input_tile[(k + i) * TILE_TOKENS + lid / 4u] = v[i];
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_STEP; k = k + 1u) {
            let at = k * TILE_TOKENS + t0;
            let xv = vec4<f32>(input_tile[at], input_tile[at + 1u], input_tile[at + 2u], input_tile[at + 3u]);
            gate[0] = gate[0] + gate_tile[k * TILE_ROWS + r0] * xv;
            gate[1] = gate[1] + gate_tile[k * TILE_ROWS + r0 + 1u] * xv;
            if (GATED) {
                up[0] = up[0] + up_tile[k * TILE_ROWS + r0] * xv;
                up[1] = up[1] + up_tile[k * TILE_ROWS + r0 + 1u] * xv;
            }
        }
        // Every lane is done with the tiles before the next step overwrites them.
        workgroupBarrier();
    }
    square_quarters[lid] = squares;
    workgroupBarrier();
    for (var j = 0u; j < 4u; j = j + 1u) {
        let t = t0 + j;
        let sq = square_quarters[4u * t] + square_quarters[4u * t + 1u] + square_quarters[4u * t + 2u]
            + square_quarters[4u * t + 3u];
        for (var i = 0u; i < 2u; i = i + 1u) {
            let row = first_row + r0 + i;
            if (row < dims.rows && first_token + t < step.n_tokens) {
                finish(row, first_token + t, gate[i][j], up[i][j], sq);
            }
        }
    }
}

// Register-blocked tiled split (GPUs, prompts; `Kernels::with_gemm`): 256 lanes compute an output
// tile of GEMM_ROWS rows × GEMM_TOKENS tokens. Per step of GEMM_STEP columns the workgroup
// dequantizes the 16 × 64 weight tile (and its up rows' with GATED) and stages the 16 × 64 inputs in
// workgroup memory, once, both as vec4s of four rows or four tokens at one column; lane l keeps rows
// 4 (l % 16) .. + 3 × tokens 4 (l / 16) .. + 3 of sums in registers (16; 32 with GATED), so per
// column it loads one vec4 of weights (two with GATED) and one of inputs for 16 multiply-adds (32):
// the tiled split above does 8 (16) for 6 scalar loads. The accumulators are named vectors, not an
// array: an array indexed in a loop may live in memory.
const GEMM_ROWS: u32 = 64u;
const GEMM_TOKENS: u32 = 64u;
const GEMM_STEP: u32 = 16u;
// [column within the step][quad of rows or tokens]: 4 KB each (16 KB is WebGPU's least limit).
var<workgroup> gemm_gate: array<vec4<f32>, 256>;
var<workgroup> gemm_up: array<vec4<f32>, 256>;
var<workgroup> gemm_input: array<vec4<f32>, 256>;
// The input-staging lanes' sums of squares of their four tokens' inputs (NORM).
var<workgroup> gemm_squares: array<vec4<f32>, 64>;

// Staging is done in 4 × 4 blocks, each transposed in registers and stored as whole vec4s: lanes
// storing different components of one vec4 would race (a component store may touch the whole
// vector in WGSL, and does on some backends).

// Rows 4 quad .. + 3 of the tile (clamped to the matrix: rows past it are computed, not stored),
// weights step_col + 4 j .. + 3, into the tile's columns 4 j .. + 3 (zeros past the row's end: rows
// are a multiple of 4 values, not always of 16). `up`: the up rows, dims.up_offset further.
fn gemm_stage_weights(first_row: u32, quad: u32, step_col: u32, j: u32, up: bool) {
    let col = step_col + 4u * j;
    var w0 = vec4<f32>(0.0);
    var w1 = vec4<f32>(0.0);
    var w2 = vec4<f32>(0.0);
    var w3 = vec4<f32>(0.0);
    if (col < dims.cols) {
        let last = dims.rows - 1u;
        let row = first_row + 4u * quad;
        let offset = select(0u, dims.up_offset, up);
        w0 = weights4(min(row, last) + offset, col);
        w1 = weights4(min(row + 1u, last) + offset, col);
        w2 = weights4(min(row + 2u, last) + offset, col);
        w3 = weights4(min(row + 3u, last) + offset, col);
    }
    for (var k = 0u; k < 4u; k = k + 1u) {
        let at = (4u * j + k) * (GEMM_ROWS / 4u) + quad;
        let v = vec4<f32>(w0[k], w1[k], w2[k], w3[k]);
        if (up) {
            gemm_up[at] = v;
        } else {
            gemm_gate[at] = v;
        }
    }
}

// Tokens 4 quad .. + 3 of the tile, inputs step_col + 4 j .. + 3 (times the norm weight with NORM),
// into the tile's columns 4 j .. + 3; returns their sums of squares (before the norm weight).
fn gemm_stage_inputs(first_token: u32, quad: u32, step_col: u32, j: u32) -> vec4<f32> {
    let col = step_col + 4u * j;
    var v: array<vec4<f32>, 4>;
    var squares = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k = k + 1u) {
        let t = first_token + 4u * quad + k;
        var x4v = vec4<f32>(0.0);
        if (t < step.n_tokens && col < dims.cols) {
            x4v = x[(t * dims.cols + col) / 4u];
            squares[k] = dot(x4v, x4v);
            if (NORM) {
                x4v = x4v * norm_weight[col / 4u];
            }
        }
        v[k] = x4v;
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        gemm_input[(4u * j + c) * (GEMM_TOKENS / 4u) + quad] = vec4<f32>(v[0][c], v[1][c], v[2][c], v[3][c]);
    }
    return squares;
}

// Row `row`'s finished sums for tokens t .. t + 3 of the tile (`sq`: their sums of squares).
fn gemm_store(row: u32, t: u32, gate: vec4<f32>, up: vec4<f32>, sq: vec4<f32>) {
    if (row >= dims.rows) {
        return;
    }
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (t + j < step.n_tokens) {
            finish(row, t + j, gate[j], up[j], sq[j]);
        }
    }
}

fn gemm(wg: vec3<u32>, groups: vec3<u32>, lid: u32) {
    let first_row = (wg.y * groups.x + wg.x) * GEMM_ROWS;
    let first_token = wg.z * GEMM_TOKENS;
    // Uniform per workgroup: the barriers below stay in uniform control flow.
    if (first_row >= dims.rows) {
        return;
    }
    // Staging, by lane: 0 .. 63 the weights' 4 × 4 block (row quad l / 4, column quad l % 4),
    // 64 .. 127 the up rows' (GATED), 128 .. 191 the inputs' (token quad, column quad alike).
    let stage_quad = (lid % 64u) / 4u;
    let stage_j = lid % 4u;
    // Sums: rows 4 (l % 16) + i (gi, ui: gate and up) for tokens 4 (l / 16) .. + 3 (the vectors'
    // components).
    let rq = lid % 16u;
    let tq = lid / 16u;
    var g0 = vec4<f32>(0.0);
    var g1 = vec4<f32>(0.0);
    var g2 = vec4<f32>(0.0);
    var g3 = vec4<f32>(0.0);
    var u0 = vec4<f32>(0.0);
    var u1 = vec4<f32>(0.0);
    var u2 = vec4<f32>(0.0);
    var u3 = vec4<f32>(0.0);
    var squares = vec4<f32>(0.0);
    for (var step_col = 0u; step_col < dims.cols; step_col = step_col + GEMM_STEP) {
        if (lid < 64u) {
            gemm_stage_weights(first_row, stage_quad, step_col, stage_j, false);
        } else if (lid < 128u) {
            if (GATED) {
                gemm_stage_weights(first_row, stage_quad, step_col, stage_j, true);
            }
        } else if (lid < 192u) {
            squares = squares + gemm_stage_inputs(first_token, stage_quad, step_col, stage_j);
        }
        workgroupBarrier();
        for (var k = 0u; k < GEMM_STEP; k = k + 1u) {
            let xv = gemm_input[k * (GEMM_TOKENS / 4u) + tq];
            let w = gemm_gate[k * (GEMM_ROWS / 4u) + rq];
            g0 = g0 + w.x * xv;
            g1 = g1 + w.y * xv;
            g2 = g2 + w.z * xv;
            g3 = g3 + w.w * xv;
            if (GATED) {
                let wu = gemm_up[k * (GEMM_ROWS / 4u) + rq];
                u0 = u0 + wu.x * xv;
                u1 = u1 + wu.y * xv;
                u2 = u2 + wu.z * xv;
                u3 = u3 + wu.w * xv;
            }
        }
        // Every lane is done with the tiles before the next step overwrites them.
        workgroupBarrier();
    }
    if (lid >= 128u && lid < 192u) {
        gemm_squares[lid - 128u] = squares;
    }
    workgroupBarrier();
    // Token quad tq was staged by input lanes 4 tq .. 4 tq + 3 (one column quad each).
    let sq = gemm_squares[4u * tq] + gemm_squares[4u * tq + 1u] + gemm_squares[4u * tq + 2u]
        + gemm_squares[4u * tq + 3u];
    let row = first_row + 4u * rq;
    let t = first_token + 4u * tq;
    gemm_store(row, t, g0, u0, sq);
    gemm_store(row + 1u, t, g1, u1, sq);
    gemm_store(row + 2u, t, g2, u2, sq);
    gemm_store(row + 3u, t, g3, u3, sq);
}

// The blocked module's entry points (each encoding's section supplies `block_dots` and `weights4`;
// kernels.rs names the pipelines after the encoding).
@compute @workgroup_size(64)
fn matvec_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    rows(wg, groups, lid.x);
}

@compute @workgroup_size(64)
fn matvec_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    tiled(wg, groups, lid.x);
}

@compute @workgroup_size(256)
fn matvec_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    gemm(wg, groups, lid.x);
}

// ==== blocked q4
// One u32 word = eight four-bit codes (value k in bits 4k..4k+3), each value q·scale + min.
fn block_dots(row: u32, t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let words = dims.cols / 8u;
    for (var w = 0u; w < words; w = w + 1u) {
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

// Weights col .. col + 3 of `row` (col a multiple of 4): half a word.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let i = row * dims.cols + col;
    let word = codes[i / 8u] >> (4u * (i % 8u));
    let q = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
    let g = i / dims.group;
    return q * scale_at(g) + min_at(g);
}



// ==== blocked q5
// Five u32 words = one group of 32: four of low bits as q4's, then the fifth bits (bit k = value k);
// each value q·scale + min.
fn block_dots(row: u32, t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let groups = dims.cols / 32u;
    for (var gi = 0u; gi < groups; gi = gi + 1u) {
        let g = row * groups + gi;
        let scale = scale_at(g);
        let offset = min_at(g);
        for (var w = 0u; w < 4u; w = w + 1u) {
            let q = q5_codes8(g, w);
            let col = 32u * gi + 8u * w;
            for (var t = 0u; t < TB; t = t + 1u) {
                if (t < nt) {
                    let xa = x4(t0 + t, col);
                    let xb = x4(t0 + t, col + 4u);
                    let sx = dot(xa + xb, vec4<f32>(1.0));
                    acc[t] = acc[t] + scale * (dot(q[0], xa) + dot(q[1], xb)) + offset * sx;
                }
            }
        }
    }
    return acc;
}

// The eight codes 8w .. 8w + 7 of group g, as two vec4s.
fn q5_codes8(g: u32, w: u32) -> array<vec4<f32>, 2> {
    let word = codes[5u * g + w];
    let high = codes[5u * g + 4u] >> (8u * w);
    let lo = (vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u))
        | ((vec4<u32>(high, high >> 1u, high >> 2u, high >> 3u) & vec4<u32>(1u)) << vec4<u32>(4u));
    let hi = (vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u))
        | ((vec4<u32>(high >> 4u, high >> 5u, high >> 6u, high >> 7u) & vec4<u32>(1u)) << vec4<u32>(4u));
    return array<vec4<f32>, 2>(vec4<f32>(lo), vec4<f32>(hi));
}

// Weights col .. col + 3 of `row` (col a multiple of 4).
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let i = row * dims.cols + col;
    let g = i / 32u;
    let k = i % 32u;
    let word = codes[5u * g + k / 8u] >> (4u * (k % 8u));
    let high = codes[5u * g + 4u] >> k;
    let q = (vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u))
        | ((vec4<u32>(high, high >> 1u, high >> 2u, high >> 3u) & vec4<u32>(1u)) << vec4<u32>(4u));
    return vec4<f32>(q) * scale_at(g) + min_at(g);
}



// ==== blocked q8
// One u32 word = four signed 8-bit codes, each value q·scale (a scale per 32).
fn block_dots(row: u32, t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let words = dims.cols / 4u;
    for (var w = 0u; w < words; w = w + 1u) {
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

// Weights col .. col + 3 of `row` (col a multiple of 4): one word.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let i = row * dims.cols + col;
    let word = codes[i / 4u];
    let shifted = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word));
    return vec4<f32>(shifted >> vec4<u32>(24u)) * scale_at(i / 32u);
}



// ==== blocked f16
// Two u32 words = four f16 values.
fn block_dots(row: u32, t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let quads = dims.cols / 4u;
    for (var w = 0u; w < quads; w = w + 1u) {
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

// Weights col .. col + 3 of `row` (col a multiple of 4): two words.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let w = (row * dims.cols + col) / 2u;
    return vec4<f32>(unpack2x16float(codes[w]), unpack2x16float(codes[w + 1u]));
}



// ==== blocked f32
// Four u32 words = four f32 values.
fn block_dots(row: u32, t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    let quads = dims.cols / 4u;
    for (var w = 0u; w < quads; w = w + 1u) {
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

// Weights col .. col + 3 of `row` (col a multiple of 4): four words.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let w = row * dims.cols + col;
    return bitcast<vec4<f32>>(vec4<u32>(codes[w], codes[w + 1u], codes[w + 2u], codes[w + 3u]));
}



// ==== blocked k
// The K-quants' block_dots: four weights at a time from the encoding's weights4 (each sub-block's
// scale is decoded again per four weights: cheap beside the loads on the adapters this split is for).
fn block_dots(row: u32, t0: u32) -> array<f32, TB> {
    var acc: array<f32, TB>;
    let nt = block_len(t0);
    for (var col = 0u; col < dims.cols; col = col + 4u) {
        let w = weights4(row, col);
        for (var t = 0u; t < TB; t = t + 1u) {
            if (t < nt) {
                acc[t] = acc[t] + dot(w, x4(t0 + t, col));
            }
        }
    }
    return acc;
}

// ==== blocked q4k
// Weights col .. col + 3 of `row` (col a multiple of 4): half a word of low bits, as q4.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let i = row * dims.cols + col;
    let word = codes[i / 8u] >> (4u * (i % 8u));
    let q = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
    let sm = k4_sub_scale(i / 32u);
    return q * sm.x - sm.y;
}



// ==== blocked q5k
// Weights col .. col + 3 of `row`: the low bits as q4k, the fifth bits from the sub-block's word.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let i = row * dims.cols + col;
    let word = codes[i / 8u] >> (4u * (i % 8u));
    let h = k5_high(i / 32u) >> (i % 32u);
    let q = (vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u))
        | ((vec4<u32>(h, h >> 1u, h >> 2u, h >> 3u) & vec4<u32>(1u)) << vec4<u32>(4u));
    let sm = k4_sub_scale(i / 32u);
    return vec4<f32>(q) * sm.x - sm.y;
}



// ==== blocked q6k
// Weights col .. col + 3 of `row`: low bits as q4k, two more from the 16 values' high word.
fn weights4(row: u32, col: u32) -> vec4<f32> {
    let i = row * dims.cols + col;
    let word = codes[i / 8u] >> (4u * (i % 8u));
    let h = k6_high(i / 16u) >> (2u * (i % 16u));
    let q = (vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u))
        | ((vec4<u32>(h, h >> 2u, h >> 4u, h >> 6u) & vec4<u32>(3u)) << vec4<u32>(4u));
    return k6_scale(i / 16u) * (vec4<f32>(q) - 32.0);
}



// ==== decode
// One token on a GPU: workgroup w computes rows w·ROWS .. w·ROWS + ROWS - 1. Lane i takes chunks
// i, i + 64, ... of the row (CHUNK values each: 16 or 32 bytes of weights, one load per 16 bytes,
// see the encoding sections) in every one of the ROWS rows: it reads each input chunk once (times
// the norm weight when NORM, with its sum for the q4-style min terms and its squares for the
// norm) and uses it for all ROWS rows (2·ROWS with GATED), and consecutive lanes read consecutive
// chunks of a row, so the loads coalesce. Each lane's ROWS partial sums (plus the up rows' and the
// sum of squares) are added up across the workgroup once, at the end.
//
// The input is read straight from memory, not staged in workgroup memory first: no other lane
// needs a lane's input chunk, so staging only put a barrier between the loads of the input and of
// the weights (measured on an H200: the workgroup waited out one round of loads, then the other).
// Now a lane's weight and input loads are all in flight at once, and the only barrier is the
// final sum's.

// Rows per workgroup (at most ROWS_MAX), chosen per adapter in kernels.rs.
override ROWS: u32 = 8u;
const ROWS_MAX: u32 = 8u;

// A lane's running sums are vectors, not an array indexed in a loop, and the code that fills them
// is written out rather than looped: a function-scope array indexed by a loop counter may live in
// memory instead of registers (on an H200 an unrolled array version of the sampler's argmax ran
// slower than the loop it replaced).
struct LaneSums {
    // Gate rows 0..3 and 4..7 of the workgroup, the up rows likewise (GATED), and the input's sum
    // of squares (NORM).
    gate_lo: vec4<f32>,
    gate_hi: vec4<f32>,
    up_lo: vec4<f32>,
    up_hi: vec4<f32>,
    squares: f32,
}

// The input chunk c (times the norm weight when NORM; the rest of the array unused), its sum, and
// its sum of squares taken before the norm weight, as the norm needs.
struct InputChunk {
    v: array<vec4<f32>, 8>,
    sum: f32,
    squares: f32,
}

// The input's vec4 `at` (times the norm weight when NORM), its squares added to the chunk's.
fn input4(chunk: ptr<function, InputChunk>, at: u32) -> vec4<f32> {
    let v = x[at];
    (*chunk).squares = (*chunk).squares + dot(v, v);
    if (NORM) {
        return v * norm_weight[at];
    }
    return v;
}

fn input_chunk(c: u32) -> InputChunk {
    var chunk: InputChunk;
    let at = c * (CHUNK / 4u);
    // CHUNK is 4 or 32: one or eight vec4s, written out (constant indices).
    chunk.v[0] = input4(&chunk, at);
    if (CHUNK == 32u) {
        chunk.v[1] = input4(&chunk, at + 1u);
        chunk.v[2] = input4(&chunk, at + 2u);
        chunk.v[3] = input4(&chunk, at + 3u);
        chunk.v[4] = input4(&chunk, at + 4u);
        chunk.v[5] = input4(&chunk, at + 5u);
        chunk.v[6] = input4(&chunk, at + 6u);
        chunk.v[7] = input4(&chunk, at + 7u);
    }
    let sum = ((chunk.v[0] + chunk.v[1]) + (chunk.v[2] + chunk.v[3])) + ((chunk.v[4] + chunk.v[5]) + (chunk.v[6] + chunk.v[7]));
    chunk.sum = dot(sum, vec4<f32>(1.0));
    return chunk;
}

// The eight codes of a word (value k in bits 4k..4k+3) times eight inputs.
fn q4_word(word: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let lo = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
    let hi = vec4<f32>(vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u));
    return dot(lo, a) + dot(hi, b);
}

// Chunk c of slots first + r0 .. r0 + 3 (those below ROWS; 0 for the others), the rows `offset`
// further (the up rows) when asked. Past the last row, the last workgroup redoes the last row
// rather than branch around the loads (those sums are never stored).
fn four_rows(first: u32, r0: u32, offset: u32, c: u32, xc: InputChunk) -> vec4<f32> {
    let last = dims.rows - 1u;
    var d = vec4<f32>(0.0);
    d.x = chunk_dot(decode_row(min(first + r0, last)) + offset, c, xc.v, xc.sum);
    if (ROWS > r0 + 1u) {
        d.y = chunk_dot(decode_row(min(first + r0 + 1u, last)) + offset, c, xc.v, xc.sum);
    }
    if (ROWS > r0 + 2u) {
        d.z = chunk_dot(decode_row(min(first + r0 + 2u, last)) + offset, c, xc.v, xc.sum);
    }
    if (ROWS > r0 + 3u) {
        d.w = chunk_dot(decode_row(min(first + r0 + 3u, last)) + offset, c, xc.v, xc.sum);
    }
    return d;
}

fn decode(wg: vec3<u32>, groups: vec3<u32>, lid: u32) {
    let first = (wg.y * groups.x + wg.x) * ROWS;
    // The same for the whole workgroup, so leaving early keeps the barriers uniform.
    if (first >= dims.rows) {
        return;
    }
    var sums: LaneSums;
    for (var c = lid; c < dims.cols / CHUNK; c = c + WG) {
        let xc = input_chunk(c);
        sums.squares = sums.squares + xc.squares;
        sums.gate_lo = sums.gate_lo + four_rows(first, 0u, 0u, c, xc);
        if (ROWS > 4u) {
            sums.gate_hi = sums.gate_hi + four_rows(first, 4u, 0u, c, xc);
        }
        if (GATED) {
            sums.up_lo = sums.up_lo + four_rows(first, 0u, dims.up_offset, c, xc);
            if (ROWS > 4u) {
                sums.up_hi = sums.up_hi + four_rows(first, 4u, dims.up_offset, c, xc);
            }
        }
    }
    epilogue(first, lid, row_totals(lid, sums));
}

// ==== decode q4
// 16 bytes = 32 four-bit codes: a group of 32, or a half or a quarter of one of 64 or 128.
@group(0) @binding(4) var<storage, read> codes: array<vec4<u32>>;
const CHUNK: u32 = 32u;

// Chunk c of `row` times the inputs xc, whose sum is x_sum: Σ (q·scale + min)·x.
fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let w = codes[row * (dims.cols / CHUNK) + c];
    let g = (row * dims.cols + c * CHUNK) / dims.group;
    let q = q4_word(w.x, xc[0], xc[1]) + q4_word(w.y, xc[2], xc[3]) + q4_word(w.z, xc[4], xc[5])
        + q4_word(w.w, xc[6], xc[7]);
    return scale_at(g) * q + min_at(g) * x_sum;
}

@compute @workgroup_size(64)
fn matvec_decode_q4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode q5
// 20 bytes = one group of 32 five-bit codes (16 of low bits, a word of fifth bits), one scale and
// min: five word loads (20-byte groups are not 16-byte aligned).
@group(0) @binding(4) var<storage, read> codes: array<u32>;
const CHUNK: u32 = 32u;

fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let g = row * (dims.cols / CHUNK) + c;
    let at = 5u * g;
    let h = codes[at + 4u];
    var fifth = 0.0;
    for (var j = 0u; j < 8u; j = j + 1u) {
        let b = h >> (4u * j);
        fifth = fifth + dot(vec4<f32>(vec4<u32>(b, b >> 1u, b >> 2u, b >> 3u) & vec4<u32>(1u)), xc[j]);
    }
    let q = q4_word(codes[at], xc[0], xc[1]) + q4_word(codes[at + 1u], xc[2], xc[3])
        + q4_word(codes[at + 2u], xc[4], xc[5]) + q4_word(codes[at + 3u], xc[6], xc[7]) + 16.0 * fifth;
    return scale_at(g) * q + min_at(g) * x_sum;
}

@compute @workgroup_size(64)
fn matvec_decode_q5(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode q8
// 32 bytes = 32 signed 8-bit codes: one group, one scale, in two 16-byte loads.
@group(0) @binding(4) var<storage, read> codes: array<vec4<u32>>;
const CHUNK: u32 = 32u;

// The four codes of a word times four inputs. Each byte is sign-extended by shifting it to the
// top, then arithmetic-shifting it back down.
fn q8_word(word: u32, v: vec4<f32>) -> f32 {
    let shifted = bitcast<vec4<i32>>(vec4<u32>(word << 24u, word << 16u, word << 8u, word));
    return dot(vec4<f32>(shifted >> vec4<u32>(24u)), v);
}

fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let at = 2u * (row * (dims.cols / CHUNK) + c);
    let a = codes[at];
    let b = codes[at + 1u];
    let q = q8_word(a.x, xc[0]) + q8_word(a.y, xc[1]) + q8_word(a.z, xc[2]) + q8_word(a.w, xc[3])
        + q8_word(b.x, xc[4]) + q8_word(b.y, xc[5]) + q8_word(b.z, xc[6]) + q8_word(b.w, xc[7]);
    return scale_at(row * (dims.cols / CHUNK) + c) * q;
}

@compute @workgroup_size(64)
fn matvec_decode_q8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode f16
// 8 bytes = four f16 values. Rows are a multiple of 4 values, so of 8 bytes only: 16-byte loads
// would straddle rows (and a binding's last 8 bytes).
@group(0) @binding(4) var<storage, read> codes: array<vec2<u32>>;
const CHUNK: u32 = 4u;

fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let w = codes[row * (dims.cols / CHUNK) + c];
    return dot(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), xc[0]);
}

@compute @workgroup_size(64)
fn matvec_decode_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode f32
// 16 bytes = four f32 values.
@group(0) @binding(4) var<storage, read> codes: array<vec4<u32>>;
const CHUNK: u32 = 4u;

fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    return dot(bitcast<vec4<f32>>(codes[row * (dims.cols / CHUNK) + c]), xc[0]);
}

@compute @workgroup_size(64)
fn matvec_decode_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode q4k
// 16 bytes = the low four bits of one sub-block's 32 values; its scale and min come from the
// super-block's header, which the eight sub-blocks read alike (cached).
@group(0) @binding(4) var<storage, read> codes: array<vec4<u32>>;
const CHUNK: u32 = 32u;

// Σ (q·d·sc - dmin·m)·x = d·sc·Σ q·x - dmin·m·Σ x.
fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let s = row * (dims.cols / CHUNK) + c;
    let w = codes[s];
    let q = q4_word(w.x, xc[0], xc[1]) + q4_word(w.y, xc[2], xc[3]) + q4_word(w.z, xc[4], xc[5])
        + q4_word(w.w, xc[6], xc[7]);
    let sm = k4_sub_scale(s);
    return sm.x * q - sm.y * x_sum;
}

@compute @workgroup_size(64)
fn matvec_decode_q4k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode q5k
// As q4k, plus one word of the sub-block's fifth bits.
@group(0) @binding(4) var<storage, read> codes: array<vec4<u32>>;
const CHUNK: u32 = 32u;

// Σ over the 32 values of (fifth bit k of `h`) · x_k.
fn fifth_bits_dot(h: u32, xc: array<vec4<f32>, 8>) -> f32 {
    var sum = 0.0;
    for (var j = 0u; j < 8u; j = j + 1u) {
        let b = h >> (4u * j);
        sum = sum + dot(vec4<f32>(vec4<u32>(b, b >> 1u, b >> 2u, b >> 3u) & vec4<u32>(1u)), xc[j]);
    }
    return sum;
}

fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let s = row * (dims.cols / CHUNK) + c;
    let w = codes[s];
    let q = q4_word(w.x, xc[0], xc[1]) + q4_word(w.y, xc[2], xc[3]) + q4_word(w.z, xc[4], xc[5])
        + q4_word(w.w, xc[6], xc[7]) + 16.0 * fifth_bits_dot(k5_high(s), xc);
    let sm = k4_sub_scale(s);
    return sm.x * q - sm.y * x_sum;
}

@compute @workgroup_size(64)
fn matvec_decode_q5k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== decode q6k
// 16 bytes of low bits and two words of high bits = one sub-block: two runs of 16 values, each
// with its own scale.
@group(0) @binding(4) var<storage, read> codes: array<vec4<u32>>;
const CHUNK: u32 = 32u;

// Eight six-bit values (low bits from `low` as q4, high pairs at bits 2k of `high`), less 32,
// times eight inputs.
fn q6_word(low: u32, high: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let lo = (vec4<u32>(low, low >> 4u, low >> 8u, low >> 12u) & vec4<u32>(15u))
        | ((vec4<u32>(high, high >> 2u, high >> 4u, high >> 6u) & vec4<u32>(3u)) << vec4<u32>(4u));
    let hi = (vec4<u32>(low >> 16u, low >> 20u, low >> 24u, low >> 28u) & vec4<u32>(15u))
        | ((vec4<u32>(high >> 8u, high >> 10u, high >> 12u, high >> 14u) & vec4<u32>(3u)) << vec4<u32>(4u));
    return dot(vec4<f32>(lo) - 32.0, a) + dot(vec4<f32>(hi) - 32.0, b);
}

fn chunk_dot(row: u32, c: u32, xc: array<vec4<f32>, 8>, x_sum: f32) -> f32 {
    let s = row * (dims.cols / CHUNK) + c;
    let w = codes[s];
    let h0 = k6_high(2u * s);
    let h1 = k6_high(2u * s + 1u);
    let first = q6_word(w.x, h0, xc[0], xc[1]) + q6_word(w.y, h0 >> 16u, xc[2], xc[3]);
    let second = q6_word(w.z, h1, xc[4], xc[5]) + q6_word(w.w, h1 >> 16u, xc[6], xc[7]);
    return k6_scale(2u * s) * first + k6_scale(2u * s + 1u) * second;
}

@compute @workgroup_size(64)
fn matvec_decode_q6k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    decode(wg, groups, lid.x);
}

// ==== sums in workgroup memory
// The decode kernel's lane sums added up without subgroup operations (browsers, and adapters
// without them): each lane's sums to workgroup memory, 64 partials → 8 → 1, two barriers. The sums
// are five vec4s: gate rows 0..3, 4..7, up rows 0..3, 4..7, and the squares (in x).
const SUM_VECTORS: u32 = 5u;
var<workgroup> partials: array<vec4<f32>, SUM_VECTORS * WG>;
var<workgroup> eighths: array<vec4<f32>, SUM_VECTORS * 8u>;

// The workgroup's totals of (gate row lid, up row lid, squares), for lanes lid < ROWS.
fn row_totals(lid: u32, v: LaneSums) -> vec3<f32> {
    partials[lid] = v.gate_lo;
    partials[WG + lid] = v.gate_hi;
    partials[2u * WG + lid] = v.up_lo;
    partials[3u * WG + lid] = v.up_hi;
    partials[4u * WG + lid] = vec4<f32>(v.squares, 0.0, 0.0, 0.0);
    workgroupBarrier();
    // Eighth i of vector k = i / 8: partials 8i .. 8i + 7 (of k * WG + 0 .. 63).
    if (lid < SUM_VECTORS * 8u) {
        let at = 8u * lid;
        eighths[lid] = ((partials[at] + partials[at + 1u]) + (partials[at + 2u] + partials[at + 3u]))
            + ((partials[at + 4u] + partials[at + 5u]) + (partials[at + 6u] + partials[at + 7u]));
    }
    workgroupBarrier();
    var total = vec3<f32>(0.0);
    if (lid < ROWS) {
        let gate_lo = sum_eighths(0u);
        let gate_hi = sum_eighths(1u);
        let up_lo = sum_eighths(2u);
        let up_hi = sum_eighths(3u);
        total = vec3<f32>(pick(gate_lo, gate_hi, lid), pick(up_lo, up_hi, lid), sum_eighths(4u).x);
    }
    return total;
}

// The eight eighths of vector k added up.
fn sum_eighths(k: u32) -> vec4<f32> {
    let at = 8u * k;
    return ((eighths[at] + eighths[at + 1u]) + (eighths[at + 2u] + eighths[at + 3u]))
        + ((eighths[at + 4u] + eighths[at + 5u]) + (eighths[at + 6u] + eighths[at + 7u]));
}

// ==== sums with subgroups
// The decode kernel's lane sums added up with subgroupAdd, where the adapter offers subgroups
// (natively only: wgpu's WebGPU backend never does, and naga wants no `enable` directive). One
// barrier; nothing assumed about the subgroup size or which lanes share a subgroup: after each
// subgroup's sums, its first lane writes them and the others zeros, so every subgroup can then add
// up all 64 slots itself. The sums are five vec4s, as in the workgroup-memory variant.
const SUM_VECTORS: u32 = 5u;
var<workgroup> slots: array<vec4<f32>, SUM_VECTORS * WG>;

// The workgroup's totals of (gate row lid, up row lid, squares), for lanes lid < ROWS.
fn row_totals(lid: u32, v: LaneSums) -> vec3<f32> {
    // This lane's place in its subgroup and the subgroup's size (every lane is active here).
    let lane = subgroupExclusiveAdd(1u);
    let size = subgroupAdd(1u);
    let first_lane = lane == 0u;
    let zero = vec4<f32>(0.0);
    slots[lid] = select(zero, subgroupAdd(v.gate_lo), first_lane);
    if (ROWS > 4u) {
        slots[WG + lid] = select(zero, subgroupAdd(v.gate_hi), first_lane);
    }
    if (GATED) {
        slots[2u * WG + lid] = select(zero, subgroupAdd(v.up_lo), first_lane);
        if (ROWS > 4u) {
            slots[3u * WG + lid] = select(zero, subgroupAdd(v.up_hi), first_lane);
        }
    }
    if (NORM) {
        slots[4u * WG + lid] = vec4<f32>(select(0.0, subgroupAdd(v.squares), first_lane), 0.0, 0.0, 0.0);
    }
    workgroupBarrier();
    var gate_lo = zero;
    var gate_hi = zero;
    var up_lo = zero;
    var up_hi = zero;
    var squares = 0.0;
    for (var j = lane; j < WG; j = j + size) {
        gate_lo = gate_lo + slots[j];
        if (ROWS > 4u) {
            gate_hi = gate_hi + slots[WG + j];
        }
        if (GATED) {
            up_lo = up_lo + slots[2u * WG + j];
            if (ROWS > 4u) {
                up_hi = up_hi + slots[3u * WG + j];
            }
        }
        if (NORM) {
            squares = squares + slots[4u * WG + j].x;
        }
    }
    gate_lo = subgroupAdd(gate_lo);
    gate_hi = subgroupAdd(gate_hi);
    up_lo = subgroupAdd(up_lo);
    up_hi = subgroupAdd(up_hi);
    squares = subgroupAdd(squares);
    return vec3<f32>(pick(gate_lo, gate_hi, lid), pick(up_lo, up_hi, lid), squares);
}

// ==== decode store
// The decode kernel's totals through the fusions into y: workgroup slot r computes row first + r.

fn decode_row(slot: u32) -> u32 {
    return slot;
}

fn epilogue(first: u32, lid: u32, total: vec3<f32>) {
    if (lid < ROWS && first + lid < dims.rows) {
        finish(first + lid, 0u, total.x, total.y, total.z);
    }
}

// ==== decode rope
// The QKV product of one token that finishes what rope.wgsl would: its rows are [q: n_heads heads |
// k: n_kv_heads heads | v: n_kv_heads heads] of head_dim values; the queries and keys are rotated
// for position step.start, the queries written to y (the attention's q buffer), keys and values
// into the layer's cache row step.start % cache_rows (f32, or f16 pairs in a word with KV_F16).
// y is never written for K and V rows, so no pass re-reads them.
//
// A rotated value needs its pair's partner, so a workgroup's ROWS slots hold whole pairs: with
// pairs (2i, 2i + 1) rows in order; with "neox" pairs (i, i + n_pairs) slot w of a workgroup's
// ROWS takes pair (ROWS / 2) * (its ROWS-block) + w % (ROWS / 2), first value for w < ROWS / 2,
// second otherwise. Partial rotary dimensions (past 2 n_pairs) and values keep their order. The
// engine fuses this only where that works out (kernels.rs `Kernels::fuses_rope`): ROWS a multiple
// of 4, head_dim and 2 n_pairs multiples of ROWS, so every workgroup lies within one head and holds
// whole pairs, and any two slots 2k, 2k + 1 hold adjacent dimensions (one f16 cache word).

// rope.wgsl's Dims (both are `RopeDims` in kernels.rs).
struct Rope {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    n_pairs: u32,
    neox: u32,
    cache_rows: u32,
    eps: f32,
    magnitude: f32,
}

@group(0) @binding(9) var<uniform> rope: Rope;
@group(0) @binding(10) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(11) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(12) var<storage, read_write> v_cache: array<u32>;

override KV_F16: bool = false;

// Each slot's value before rotation, for its partner's lane.
var<workgroup> unrotated: array<f32, ROWS_MAX>;

// The row that workgroup slot `slot` (first + r) computes.
fn decode_row(slot: u32) -> u32 {
    let hd = rope.head_dim;
    let d = slot % hd;
    let rotated_rows = (rope.n_heads + rope.n_kv_heads) * hd;
    if (rope.neox == 0u || slot >= rotated_rows || d >= 2u * rope.n_pairs) {
        return slot;
    }
    let half = ROWS / 2u;
    let w = d % ROWS;
    return slot - d + (d / ROWS) * half + w % half + (w / half) * rope.n_pairs;
}

// Slot w's value (of the workgroup starting at `first`) rotated, or as it is where it does not
// rotate.
fn rotated_slot(first: u32, w: u32) -> f32 {
    let row = decode_row(first + w);
    let d = row % rope.head_dim;
    let x = unrotated[w];
    if (row >= (rope.n_heads + rope.n_kv_heads) * rope.head_dim || d >= 2u * rope.n_pairs) {
        return x;
    }
    var pair: u32;
    var is_first: bool;
    var partner: f32;
    if (rope.neox == 1u) {
        let half = ROWS / 2u;
        is_first = d < rope.n_pairs;
        pair = select(d - rope.n_pairs, d, is_first);
        partner = unrotated[select(w - half, w + half, w < half)];
    } else {
        is_first = d % 2u == 0u;
        pair = d / 2u;
        partner = unrotated[w ^ 1u];
    }
    let x0 = select(partner, x, is_first);
    let x1 = select(x, partner, is_first);
    return rotate_pair(x0, x1, f32(step.start) * inv_freq[pair], is_first) * rope.magnitude;
}

// Lanes 2k of the first ROWS store slots 2k and 2k + 1: two queries, or one f16 cache word.
fn epilogue(first: u32, lid: u32, total: vec3<f32>) {
    if (lid < ROWS) {
        unrotated[lid] = fused(decode_row(first + lid), total.x, total.y, total.z);
    }
    workgroupBarrier();
    if (lid >= ROWS || lid % 2u == 1u) {
        return;
    }
    let a = rotated_slot(first, lid);
    let b = rotated_slot(first, lid + 1u);
    let row = decode_row(first + lid);
    let q_dim = rope.n_heads * rope.head_dim;
    let kv_dim = rope.n_kv_heads * rope.head_dim;
    if (row < q_dim) {
        y[row] = a;
        y[decode_row(first + lid + 1u)] = b;
        return;
    }
    let is_key = row < q_dim + kv_dim;
    let i = (step.start % rope.cache_rows) * kv_dim + row - select(q_dim + kv_dim, q_dim, is_key);
    if (KV_F16) {
        let word = pack2x16float(vec2<f32>(a, b));
        if (is_key) {
            k_cache[i / 2u] = word;
        } else {
            v_cache[i / 2u] = word;
        }
    } else if (is_key) {
        k_cache[i] = bitcast<u32>(a);
        k_cache[i + 1u] = bitcast<u32>(b);
    } else {
        v_cache[i] = bitcast<u32>(a);
        v_cache[i + 1u] = bitcast<u32>(b);
    }
}
