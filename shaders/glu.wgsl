// A gated MLP's activation as a pass of its own, for gate and up matrices of different encodings
// (a GGUF may keep them as different block types), which cannot share matvec.wgsl's fused GATED
// product: their product writes per token [gate · x | up · x] (2 · ffn values, the input's norm
// applied), and this pass y = act(gate) · up, in the fused epilogue's own order of operations.

struct Dims {
    ffn: u32,
    // ACT 3's cap.
    cap: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> gate_up: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// prelude.wgsl's `activate`: 1 SiLU, 2 GELU (tanh), 3 soft cap.
override ACT: u32 = 0u;

// Invocation (i, t): value i of token t.
@compute @workgroup_size(64)
fn glu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= dims.ffn || t >= step.n_tokens) {
        return;
    }
    let row = t * 2u * dims.ffn;
    y[t * dims.ffn + i] = activate(gate_up[row + i], ACT, dims.cap) * gate_up[row + dims.ffn + i];
}
