// Element-wise steps between the matrix products.

struct Dims {
    n: u32,
    // kv_store: values per token; elsewhere unused.
    row: u32,
}

struct Step {
    start: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;

// a = silu(a) * b (SwiGLU: a is the gate projection, b the up projection).
@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * 4194304u + gid.x;
    if (i >= dims.n) {
        return;
    }
    let g = a[i];
    a[i] = g / (1.0 + exp(-g)) * b[i];
}

// a += b (residual connections).
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * 4194304u + gid.x;
    if (i >= dims.n) {
        return;
    }
    a[i] = a[i] + b[i];
}

// Append the step's rows of b (keys or values, `row` values per token) to the cache a at step.start.
@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * 4194304u + gid.x;
    if (i >= dims.row * step.n_tokens) {
        return;
    }
    a[step.start * dims.row + i] = b[i];
}
