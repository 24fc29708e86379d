// Rotary position embedding, in place, for `n_heads` heads of `head_dim` values per token. One
// invocation per (pair, head, token). The token at row t sits at position step.start + t.

struct Dims {
    n_heads: u32,
    head_dim: u32,
    // Rotated pairs per head (rope dim / 2).
    n_pairs: u32,
    // 0: pairs (2i, 2i+1) ("interleaved"); 1: pairs (i, i + n_pairs) ("neox").
    neox: u32,
}

struct Step {
    start: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let head = gid.y;
    let t = gid.z;
    if (i >= dims.n_pairs || head >= dims.n_heads || t >= step.n_tokens) {
        return;
    }
    let angle = f32(step.start + t) * inv_freq[i];
    let c = cos(angle);
    let s = sin(angle);
    let base = (t * dims.n_heads + head) * dims.head_dim;
    var a = base + 2u * i;
    var b = a + 1u;
    if (dims.neox == 1u) {
        a = base + i;
        b = base + i + dims.n_pairs;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
