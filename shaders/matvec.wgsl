// y[t][r] = W[r] · x[t], in two work splits built from the same per-encoding dot products:
//
// - `matvec_*` (GPUs): one workgroup per (output row, token). The 64 invocations walk the row
//   together, invocation i reading words i, i + 64, ... so loads of the packed weights coalesce; a
//   tree reduction in workgroup memory sums their partial dot products.
// - `matvec_rows_*` (software adapters such as lavapipe and SwiftShader, where a workgroup barrier
//   costs far more than a memory load): one invocation per (output row, token), no barrier.
//
// One entry point per weight encoding (see docs/FORMAT.md); each uses only the bindings it needs,
// so the pipelines' automatic layouts differ only in the weight bindings.

struct Dims {
    rows: u32,
    cols: u32,
    group: u32,
    // Workgroups along x of the dispatch grid (capped at 65535; y counts grid rows).
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> codes: array<u32>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> mins: array<u32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// f16 number `i` of an array of packed pairs.
fn scale_at(i: u32) -> f32 {
    let v = unpack2x16float(scales[i / 2u]);
    return select(v.x, v.y, (i & 1u) == 1u);
}

fn min_at(i: u32) -> f32 {
    let v = unpack2x16float(mins[i / 2u]);
    return select(v.x, v.y, (i & 1u) == 1u);
}

// Partial dot products of row `row` with token `t`, over words first, first + stride, ...

fn dot_q4(row: u32, t: u32, first: u32, stride: u32) -> f32 {
    let words = dims.cols / 8u;
    var acc = 0.0;
    for (var w = first; w < words; w = w + stride) {
        let word = codes[row * words + w];
        let col = w * 8u;
        let g = (row * dims.cols + col) / dims.group;
        let xb = t * dims.cols + col;
        var dq = 0.0;
        var sx = 0.0;
        for (var j = 0u; j < 8u; j = j + 1u) {
            let xv = x[xb + j];
            dq = dq + f32((word >> (4u * j)) & 15u) * xv;
            sx = sx + xv;
        }
        acc = acc + scale_at(g) * dq + min_at(g) * sx;
    }
    return acc;
}

fn dot_q8(row: u32, t: u32, first: u32, stride: u32) -> f32 {
    let words = dims.cols / 4u;
    var acc = 0.0;
    for (var w = first; w < words; w = w + stride) {
        let word = codes[row * words + w];
        let col = w * 4u;
        let xb = t * dims.cols + col;
        var dq = 0.0;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let q = bitcast<i32>(word << (24u - 8u * j)) >> 24u;
            dq = dq + f32(q) * x[xb + j];
        }
        acc = acc + scale_at((row * dims.cols + col) / 32u) * dq;
    }
    return acc;
}

fn dot_f16(row: u32, t: u32, first: u32, stride: u32) -> f32 {
    let words = dims.cols / 2u;
    var acc = 0.0;
    for (var w = first; w < words; w = w + stride) {
        let v = unpack2x16float(codes[row * words + w]);
        let xb = t * dims.cols + 2u * w;
        acc = acc + v.x * x[xb] + v.y * x[xb + 1u];
    }
    return acc;
}

fn dot_f32(row: u32, t: u32, first: u32, stride: u32) -> f32 {
    var acc = 0.0;
    for (var c = first; c < dims.cols; c = c + stride) {
        acc = acc + bitcast<f32>(codes[row * dims.cols + c]) * x[t * dims.cols + c];
    }
    return acc;
}

// Cooperative split: the workgroup's partial sums, reduced, stored by invocation 0.
fn reduce_and_store(lid: u32, acc: f32, row: u32, t: u32) {
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        y[t * dims.rows + row] = partial[0];
    }
}

// Row-per-invocation split: workgroup (x, y) covers rows ((y * grid_x + x) * 64 ..) + 64.
fn own_row(wg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.y * dims.grid_x + wg.x) * WG + lid.x;
}

// ---- Template: kernels.rs appends these entry points once per encoding ENC (q4, q8, f16, f32),
// ---- with ENC replaced, so each encoding gets both splits without a copy in this file.

@compute @workgroup_size(64)
fn matvec_ENC(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * dims.grid_x + wg.x;
    if (row < dims.rows) {
        reduce_and_store(lid.x, dot_ENC(row, wg.z, lid.x, WG), row, wg.z);
    }
}

@compute @workgroup_size(64)
fn matvec_rows_ENC(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = own_row(wg, lid);
    if (row < dims.rows) {
        y[wg.z * dims.rows + row] = dot_ENC(row, wg.z, 0u, 1u);
    }
}
