// RoPE's rotation of one pair, shared by rope.wgsl (the pass after a QKV product) and matvec.wgsl's
// `decode rope` epilogue (the QKV product that rotates and stores itself): kernels.rs puts this
// file in front of both modules, so the two rotate alike.

// The angle reduced to [-pi, pi], where WGSL promises sin and cos are accurate (2^-11 at worst;
// outside that range it promises nothing, and positions times low-index frequencies reach
// thousands of radians). 2*pi is split Cody-Waite style: 6.28125 has 8 significant bits, so
// k * 6.28125 is exact for |k| < 2^16 (positions below ~400k) and only the small second product
// rounds.
fn reduced(angle: f32) -> f32 {
    let k = round(angle * 0.15915494);
    return (angle - k * 6.28125) - k * 0.0019353072;
}

// The pair (x0, x1) rotated by `angle`: its first value, or its second.
fn rotate_pair(x0: f32, x1: f32, angle: f32, first: bool) -> f32 {
    let a = reduced(angle);
    let c = cos(a);
    let s = sin(a);
    return select(x0 * s + x1 * c, x0 * c - x1 * s, first);
}
