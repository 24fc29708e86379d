// out[t] = row tokens[t] of the embedding table, decoded to f32, times `scale` (1, or Gemma's
// sqrt(hidden)). One invocation per value. Other tables add a row to what that wrote: learned
// position tables (GPT-2, BERT) and BERT's token types (`ROWS` says which row).
// A table too large for one storage binding is split into row ranges, one dispatch each: each
// writes the tokens that fall in its rows.

struct Dims {
    hidden: u32,
    // The rows of the table this dispatch's buffer holds.
    first_row: u32,
    rows: u32,
    group: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> codes: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
// q4's mins; the K-quants' `high` bits (kquants.wgsl, which kernels.rs puts in front).
@group(0) @binding(5) var<storage, read> mins: array<u32>;
@group(0) @binding(6) var<uniform> step: Step;

// The row token t reads: 0 its token id; 1 its position, step.start + t (GPT-2); 2 its position
// within its own text, for an encoder's texts packed into one step (tokens[n + t] is the position
// its text starts at: see encoder.rs); 3 row 0 (BERT's token type of every token).
override ROWS: u32 = 0u;

fn row_of(t: u32) -> u32 {
    switch ROWS {
        case 1u: {
            return step.start + t;
        }
        case 2u: {
            return step.start + t - tokens[step.n_tokens + t];
        }
        case 3u: {
            return 0u;
        }
        default: {
            return tokens[t];
        }
    }
}

// Write value i of token t: the token table's, scaled; another table's, added.
fn emit(t: u32, i: u32, v: f32) {
    let at = t * dims.hidden + i;
    if (ROWS == 0u) {
        out[at] = v * dims.scale;
    } else {
        out[at] = out[at] + v;
    }
}

// Index of value i of token t's row within this piece of the table; 0xffffffff when the token is
// not in this piece.
fn value_index(t: u32, i: u32) -> u32 {
    let token = row_of(t);
    if (i >= dims.hidden || token < dims.first_row || token >= dims.first_row + dims.rows) {
        return 0xffffffffu;
    }
    return (token - dims.first_row) * dims.hidden + i;
}

// f16 number `i % 2` of a packed pair, decoded exactly (kquants.wgsl's f16_exact).
fn half_of(word: u32, i: u32) -> f32 {
    return f16_exact(word >> (16u * (i & 1u)));
}

@compute @workgroup_size(64)
fn embed_q8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let k = value_index(t, i);
    if (k == 0xffffffffu) {
        return;
    }
    let q = bitcast<i32>(codes[k / 4u] << (24u - 8u * (k % 4u))) >> 24u;
    emit(t, i, f32(q) * half_of(scales[k / 64u], k / 32u));
}

@compute @workgroup_size(64)
fn embed_q4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let k = value_index(t, i);
    if (k == 0xffffffffu) {
        return;
    }
    let q = f32((codes[k / 8u] >> (4u * (k % 8u))) & 15u);
    let g = k / dims.group;
    emit(t, i, q * half_of(scales[g / 2u], g) + half_of(mins[g / 2u], g));
}

@compute @workgroup_size(64)
fn embed_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let k = value_index(t, i);
    if (k == 0xffffffffu) {
        return;
    }
    emit(t, i, half_of(codes[k / 2u], k));
}

@compute @workgroup_size(64)
fn embed_f32(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let k = value_index(t, i);
    if (k == 0xffffffffu) {
        return;
    }
    emit(t, i, bitcast<f32>(codes[k]));
}

@compute @workgroup_size(64)
fn embed_q5(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = value_index(gid.y, gid.x);
    if (k == 0xffffffffu) {
        return;
    }
    // Group g: words 5g .. 5g + 3 of low bits, word 5g + 4 of fifth bits.
    let g = k / 32u;
    let j = k % 32u;
    let q = ((codes[5u * g + j / 8u] >> (4u * (j % 8u))) & 15u) | (((codes[5u * g + 4u] >> j) & 1u) << 4u);
    emit(gid.y, gid.x, f32(q) * half_of(scales[g / 2u], g) + half_of(mins[g / 2u], g));
}

// The low four bits of value k (q4, q4k, q5k, q6k).
fn low_bits(k: u32) -> u32 {
    return (codes[k / 8u] >> (4u * (k % 8u))) & 15u;
}

@compute @workgroup_size(64)
fn embed_q4k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = value_index(gid.y, gid.x);
    if (k == 0xffffffffu) {
        return;
    }
    let sm = k4_sub_scale(k / 32u);
    emit(gid.y, gid.x, f32(low_bits(k)) * sm.x - sm.y);
}

@compute @workgroup_size(64)
fn embed_q5k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = value_index(gid.y, gid.x);
    if (k == 0xffffffffu) {
        return;
    }
    let q = low_bits(k) | (((k5_high(k / 32u) >> (k % 32u)) & 1u) << 4u);
    let sm = k4_sub_scale(k / 32u);
    emit(gid.y, gid.x, f32(q) * sm.x - sm.y);
}

@compute @workgroup_size(64)
fn embed_q6k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = value_index(gid.y, gid.x);
    if (k == 0xffffffffu) {
        return;
    }
    let q = low_bits(k) | (((k6_high(k / 16u) >> (2u * (k % 16u))) & 3u) << 4u);
    emit(gid.y, gid.x, k6_scale(k / 16u) * (f32(q) - 32.0));
}
