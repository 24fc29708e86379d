// Decoding the K-quant encodings (docs/FORMAT.md: `q4k`, `q5k`, `q6k`) and f16 scales, shared by
// matvec.wgsl and embed.wgsl (kernels.rs puts this file in front of both). Each module binds a tensor's `scales`
// (the super-blocks' headers) and, where q4 binds its mins, the `high` bits as `mins`; these
// functions read only those two, so they compile beside either way of declaring `codes`.
// Every value comes out bit-identical to llama.cpp's: the products below are exact in f32.

// A binary16 number from its low 16 bits, subnormals included: unpack2x16float may flush them to
// zero, and a Q6_K super-block's d is often subnormal (every scale and min is read through this).
fn f16_exact(bits: u32) -> f32 {
    let magnitude = bits & 0x7fffu;
    var v: f32;
    if (magnitude < 0x0400u) {
        // Zero or subnormal: m · 2^-24, exact in f32.
        v = f32(magnitude) * 5.9604644775390625e-8;
    } else if (magnitude >= 0x7c00u) {
        v = bitcast<f32>(0x7f800000u | ((magnitude & 0x03ffu) << 13u));
    } else {
        v = bitcast<f32>((magnitude + 0x1c000u) << 13u);
    }
    return select(v, -v, (bits & 0x8000u) != 0u);
}

// q4k / q5k: (d · sc, dmin · m) of sub-block s (the tensor's values 32s .. 32s + 31); a value is
// q · d·sc - dmin·m. The header's words: d | dmin << 16, then the 12 packed bytes p[0..12].
fn k4_sub_scale(s: u32) -> vec2<f32> {
    let b = 4u * (s / 8u);
    let j = s % 8u;
    let head = scales[b];
    let p0 = scales[b + 1u];
    let p1 = scales[b + 2u];
    let p2 = scales[b + 3u];
    var sc: u32;
    var m: u32;
    if (j < 4u) {
        sc = (p0 >> (8u * j)) & 63u;
        m = (p1 >> (8u * j)) & 63u;
    } else {
        // sc = (p[j + 4] & 15) | ((p[j - 4] >> 6) << 4), m = (p[j + 4] >> 4) | ((p[j] >> 6) << 4).
        let k = 8u * (j - 4u);
        let both = (p2 >> k) & 255u;
        sc = (both & 15u) | (((p0 >> (k + 6u)) & 3u) << 4u);
        m = (both >> 4u) | (((p1 >> (k + 6u)) & 3u) << 4u);
    }
    return vec2<f32>(f16_exact(head & 0xffffu) * f32(sc), f16_exact(head >> 16u) * f32(m));
}

// q5k: the fifth bits of sub-block s, value 32s + k at bit k.
fn k5_high(s: u32) -> u32 {
    return mins[s];
}

// q6k: d · sc of the values 16t .. 16t + 15. The header's words: 16 signed scales, then d.
fn k6_scale(t: u32) -> f32 {
    let b = 5u * (t / 16u);
    let k = t % 16u;
    let byte = scales[b + k / 4u] << (24u - 8u * (k % 4u));
    return f16_exact(scales[b + 4u] & 0xffffu) * f32(bitcast<i32>(byte) >> 24u);
}

// q6k: the fifth and sixth bits of values 16t .. 16t + 15, value 16t + k at bits 2k, 2k + 1.
fn k6_high(t: u32) -> u32 {
    return mins[t];
}
