// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight: one workgroup per token, of 64 invocations
// (`rms_norm`) or, on software adapters where barriers are dear, of one (`rms_norm_rows`).

struct Dims {
    hidden: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let t = wg.x;
    let lid = lid3.x;
    let base = t * dims.hidden;
    var acc = 0.0;
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        acc = acc + x[base + i] * x[base + i];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(partial[0] / f32(dims.hidden) + dims.eps);
    for (var i = lid; i < dims.hidden; i = i + 64u) {
        out[base + i] = x[base + i] * inv * weight[i];
    }
}

@compute @workgroup_size(1)
fn rms_norm_rows(@builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.x;
    let base = t * dims.hidden;
    var acc = 0.0;
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        acc = acc + x[base + i] * x[base + i];
    }
    let inv = 1.0 / sqrt(acc / f32(dims.hidden) + dims.eps);
    for (var i = 0u; i < dims.hidden; i = i + 1u) {
        out[base + i] = x[base + i] * inv * weight[i];
    }
}
