// The index of the largest logit (the first one on ties), so greedy decoding reads back 4 bytes.
// One workgroup of 256.

struct Dims {
    n: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var v = -3.4e38;
    var idx = 0xffffffffu;
    for (var i = lid; i < dims.n; i = i + 256u) {
        if (logits[i] > v) {
            v = logits[i];
            idx = i;
        }
    }
    best_value[lid] = v;
    best_index[lid] = idx;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let ov = best_value[lid + stride];
            let oi = best_index[lid + stride];
            if (ov > best_value[lid] || (ov == best_value[lid] && oi < best_index[lid])) {
                best_value[lid] = ov;
                best_index[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        result[0] = best_index[0];
    }
}
