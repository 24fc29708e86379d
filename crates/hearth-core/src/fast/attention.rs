//! The fast engine's attention over its f16 KV cache (llama.cpp's default cache type): each key and
//! value row is widened to f32 as it is read (exactly: every f16 is an f32), the dot products over
//! the head run in eight independent lanes (`cpu::dot`) and the weighted sum of values as a plain
//! `o += w * v` loop. With AVX2 (`Simd::Avx2`, which implies F16C) both read the f16 rows directly,
//! eight values per `vcvtph2ps`; elsewhere a row is widened into a buffer first and the loops are
//! left to the compiler to vectorize (SSE2 natively, SIMD128 in wasm). Every version multiplies and
//! adds separately (no FMA) in the same lanes and order, so every target, and any number of
//! threads, computes the same bits. Query heads (and, in a prompt, tokens) are independent, so they
//! are spread over threads when there is enough work to pay for it.

use half::f16;

use super::kernels::Simd;
use super::softmax::softmax;
use crate::cpu::{alibi_slope, dot, LayerCache};
use crate::manifest::{ModelConfig, PositionKind};

/// Below this many cached values read (keys and values of every head and token), one thread. In
/// wasm far more: a pool worker takes tens to hundreds of microseconds to wake (`Atomics.wait`), and
/// with a parallel attention in each of SmolLM2's 30 layers the 2-thread browser engine decoded
/// slower than the 1-thread one (see `fast::PARALLEL_MIN_MACS`).
#[cfg(feature = "parallel")]
const PARALLEL_MIN_VALUES: usize = if cfg!(target_arch = "wasm32") { 1 << 21 } else { 1 << 15 };

/// `Products::attention` for an f16 cache. When the batch cannot overwrite a row any of its own
/// queries reads (one token, or a cache whose ring does not wrap within the batch) every key and
/// value is stored first and all (token, head) pairs run at once; otherwise token by token.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    simd: Simd,
    c: &ModelConfig,
    cache: &mut LayerCache<f16>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    window: Option<usize>,
    out: &mut [f32],
) {
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let n = q.len() / qd;
    if n == 1 || start + n <= cache.rows {
        for t in 0..n {
            cache.store(start + t, &k[t * kvd..(t + 1) * kvd], &v[t * kvd..(t + 1) * kvd]);
        }
        heads(simd, c, q, cache, start, window, out);
    } else {
        for t in 0..n {
            cache.store(start + t, &k[t * kvd..(t + 1) * kvd], &v[t * kvd..(t + 1) * kvd]);
            heads(simd, c, &q[t * qd..(t + 1) * qd], cache, start + t, window, &mut out[t * qd..(t + 1) * qd]);
        }
    }
}

/// Attention of the queries `q` (`[n][q_dim]`, tokens at positions `start..start + n`, all of
/// whose keys are in `cache`) into `out`, one job per (token, head).
fn heads(
    simd: Simd,
    c: &ModelConfig,
    q: &[f32],
    cache: &LayerCache<f16>,
    start: usize,
    window: Option<usize>,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let n = q.len() / c.q_dim();
    let span = |pos: usize| pos + 1 - window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let longest = span(start + n - 1);
    let job = |scratch: &mut Scratch, (i, o): (usize, &mut [f32])| {
        let (t, head) = (i / c.n_heads, i % c.n_heads);
        head_attention(simd, c, &q[i * hd..(i + 1) * hd], cache, start + t, head, window, o, scratch);
    };
    #[cfg(feature = "parallel")]
    {
        let values: usize = (0..n).map(|t| span(start + t)).sum::<usize>() * 2 * c.n_heads * hd;
        if values >= PARALLEL_MIN_VALUES && n * c.n_heads > 1 {
            use rayon::prelude::*;
            return out.par_chunks_mut(hd).enumerate().for_each_init(|| Scratch::new(longest, hd), job);
        }
    }
    let mut scratch = Scratch::new(longest, hd);
    out.chunks_mut(hd).enumerate().for_each(|pair| job(&mut scratch, pair));
}

/// One job's buffers: the scores, and one row widened to f32.
struct Scratch {
    scores: Vec<f32>,
    row: Vec<f32>,
}

impl Scratch {
    fn new(span: usize, hd: usize) -> Self {
        Scratch { scores: vec![0f32; span], row: vec![0f32; hd] }
    }
}

/// `cpu::attention_at` for one head, reading the f16 cache: the same arithmetic on the widened
/// values, and the same order of operations. With AVX2 the whole loop is compiled for AVX and
/// F16C, so the row kernels are inlined into it.
#[allow(clippy::too_many_arguments)]
fn head_attention(
    simd: Simd,
    c: &ModelConfig,
    qh: &[f32],
    cache: &LayerCache<f16>,
    pos: usize,
    head: usize,
    window: Option<usize>,
    o: &mut [f32],
    s: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 {
        // SAFETY: `Simd::Avx2` is only detected with AVX2 (hence AVX) and F16C.
        return unsafe { head_attention_f16c(c, qh, cache, pos, head, window, o, s) };
    }
    head_body(simd, c, qh, cache, pos, head, window, o, s)
}

/// `head_attention` compiled for AVX and F16C.
///
/// # Safety
/// The CPU must have AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_attention_f16c(
    c: &ModelConfig,
    qh: &[f32],
    cache: &LayerCache<f16>,
    pos: usize,
    head: usize,
    window: Option<usize>,
    o: &mut [f32],
    s: &mut Scratch,
) {
    head_body(Simd::Avx2, c, qh, cache, pos, head, window, o, s)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn head_body(
    simd: Simd,
    c: &ModelConfig,
    qh: &[f32],
    cache: &LayerCache<f16>,
    pos: usize,
    head: usize,
    window: Option<usize>,
    o: &mut [f32],
    s: &mut Scratch,
) {
    let (hd, kvd) = (c.head_dim, c.kv_dim());
    let kvh = head / (c.n_heads / c.n_kv_heads);
    let scale = c.attention_scale();
    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let slope = match (&c.alibi, c.position) {
        (Some(alibi), PositionKind::Alibi) => alibi_slope(head, c.n_heads, alibi.max_bias),
        _ => 0.0,
    };
    let rows = cache.rows;
    // Row of `first`, then of each following position (a ring wraps to row 0).
    let first_row = first % rows;
    let next = |r: usize| if r + 1 == rows { 0 } else { r + 1 };
    let scores = &mut s.scores[..pos + 1 - first];
    // With AVX2, eight positions at a time (their dot products are independent chains); each
    // position's arithmetic is the one-row version's. `done` positions are scored, `r` is next.
    #[cfg(target_arch = "x86_64")]
    let (done, mut r) = {
        let (mut done, mut r) = (0, first_row);
        while simd == Simd::Avx2 && hd % 8 == 0 && done + 8 <= scores.len() {
            let keys: [&[f16]; 8] = std::array::from_fn(|_| {
                let at = r * kvd + kvh * hd;
                r = next(r);
                &cache.k[at..at + hd]
            });
            // SAFETY: `Simd::Avx2` is only detected with AVX2 and F16C; every key row has `hd` values.
            let dots = unsafe { x86::dot8_f16(qh, keys) };
            scores[done..done + 8].copy_from_slice(&dots);
            done += 8;
        }
        (done, r)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (done, mut r) = (0, first_row);
    for score in &mut scores[done..] {
        let at = r * kvd + kvh * hd;
        *score = dot_f16(simd, qh, &cache.k[at..at + hd], &mut s.row);
        r = next(r);
    }
    for (score, p) in scores.iter_mut().zip(first..=pos) {
        let mut x = *score * scale;
        if let Some(cap) = c.attn_softcap {
            x = cap * (x / cap).tanh();
        }
        // ALiBi: a key d positions back costs slope * d.
        *score = x - slope * (pos - p) as f32;
    }
    softmax(scores);
    o.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 && hd % 8 == 0 {
        let values = |d0: usize, width: usize| {
            let mut r = first_row;
            scores.iter().map(move |&w| {
                let at = r * kvd + kvh * hd + d0;
                r = next(r);
                (w, &cache.v[at..at + width])
            })
        };
        // SAFETY: as above; each value row slice has the width of its `o` chunk.
        return unsafe { x86::weigh_values_f16(o, values) };
    }
    let mut r = first_row;
    for &w in scores.iter() {
        let at = r * kvd + kvh * hd;
        add_scaled_f16(simd, o, w, &cache.v[at..at + hd], &mut s.row);
        r = next(r);
    }
}

/// `cpu::dot(q, k)` of the widened `k` (`row`: a buffer of `k.len()` values).
#[inline(always)]
fn dot_f16(simd: Simd, q: &[f32], k: &[f16], row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 {
        // SAFETY: `Simd::Avx2` is only detected with AVX2 and F16C.
        return unsafe { x86::dot_f16(q, k) };
    }
    let _ = simd;
    widen(k, row);
    dot(q, row)
}

/// `o[i] += w * v[i]` of the widened `v` (`row`: a buffer of `v.len()` values).
#[inline(always)]
fn add_scaled_f16(simd: Simd, o: &mut [f32], w: f32, v: &[f16], row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 {
        // SAFETY: as in `dot_f16`.
        return unsafe { x86::add_scaled_f16(o, w, v) };
    }
    let _ = simd;
    widen(v, row);
    for (o, &v) in o.iter_mut().zip(row.iter()) {
        *o += w * v;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// `cpu::dot(q, k)` with `k` widened by F16C: one 256-bit register holds its eight lanes, each
    /// a product added to the lane's sum (no FMA), and the lanes and the tail are summed as there.
    ///
    /// # Safety
    /// The CPU must have AVX and F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    pub unsafe fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let full = n / 8 * 8;
        let tail: f32 = q[full..n].iter().zip(&k[full..n]).map(|(x, y)| x * y.to_f32()).sum();
        let mut acc = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= both lengths.
            let (kv, qv) = unsafe {
                (_mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast())), _mm256_loadu_ps(q.as_ptr().add(i)))
            };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(qv, kv));
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum::<f32>() + tail
    }

    /// `dot_f16(q, k)` for eight key rows at once: eight independent chains of the same lane sums,
    /// transposed so that one vector holds lane `m` of all eight, then summed lane by lane in
    /// `dot_f16`'s order (`q.len()` a multiple of 8, so there is no tail).
    ///
    /// # Safety
    /// The CPU must have AVX and F16C; every `k` row has `q.len()` values.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn dot8_f16(q: &[f32], k: [&[f16]; 8]) -> [f32; 8] {
        debug_assert!(q.len() % 8 == 0 && k.iter().all(|k| k.len() == q.len()));
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..q.len()).step_by(8) {
            // SAFETY: i + 8 <= q.len(), the length of every row.
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                for (acc, k) in acc.iter_mut().zip(&k) {
                    let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(qv, kv));
                }
            }
        }
        let lanes = transpose8(acc);
        // `Iterator::sum` starts at -0.0, and -0.0 + x is x: the sum is ((l0 + l1) + l2) + ….
        let mut sum = lanes[0];
        for lane in &lanes[1..] {
            sum = _mm256_add_ps(sum, *lane);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds eight f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out
    }

    /// The 8 × 8 transpose: `out[m]`'s lane `j` is `rows[j]`'s lane `m`.
    #[target_feature(enable = "avx")]
    fn transpose8(rows: [__m256; 8]) -> [__m256; 8] {
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
        let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
        let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xee>(t0, t2));
        let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xee>(t1, t3));
        let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xee>(t4, t6));
        let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xee>(t5, t7));
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// `o += Σ_p w_p · v_p` over `values(d0, width)` = the (weight, value row from dimension `d0`)
    /// pairs in position order: `o` taken 64 values at a time and held in registers across all
    /// positions, each value `o[i] += w * v[i]` as `add_scaled_f16` computes it, in the same order.
    ///
    /// # Safety
    /// The CPU must have AVX and F16C; `o.len()` is a multiple of 8 and every row `width` long.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn weigh_values_f16<'a, I>(o: &mut [f32], values: impl Fn(usize, usize) -> I)
    where
        I: Iterator<Item = (f32, &'a [f16])>,
    {
        // A shorter last chunk would be read as eight values.
        assert!(o.len() % 8 == 0, "weigh_values_f16 takes whole groups of eight values");
        for d0 in (0..o.len()).step_by(64) {
            let width = (o.len() - d0).min(64);
            let chunk = &mut o[d0..d0 + width];
            // SAFETY: passed on.
            unsafe {
                match width / 8 {
                    8 => weigh::<8, I>(chunk, values(d0, width)),
                    7 => weigh::<7, I>(chunk, values(d0, width)),
                    6 => weigh::<6, I>(chunk, values(d0, width)),
                    5 => weigh::<5, I>(chunk, values(d0, width)),
                    4 => weigh::<4, I>(chunk, values(d0, width)),
                    3 => weigh::<3, I>(chunk, values(d0, width)),
                    2 => weigh::<2, I>(chunk, values(d0, width)),
                    _ => weigh::<1, I>(chunk, values(d0, width)),
                }
            }
        }
    }

    /// `weigh_values_f16` for one chunk of `8 · V` values.
    #[target_feature(enable = "avx,f16c")]
    unsafe fn weigh<'a, const V: usize, I>(o: &mut [f32], values: I)
    where
        I: Iterator<Item = (f32, &'a [f16])>,
    {
        debug_assert_eq!(o.len(), 8 * V);
        // SAFETY: `o` has 8 · V values and so has every row.
        unsafe {
            let mut acc: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(o.as_ptr().add(8 * v)));
            for (w, row) in values {
                debug_assert_eq!(row.len(), 8 * V);
                let wv = _mm256_set1_ps(w);
                for (v, acc) in acc.iter_mut().enumerate() {
                    let vv = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(8 * v).cast()));
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, vv));
                }
            }
            for (v, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), *acc);
            }
        }
    }

    /// `o[i] += w * v[i]` with `v` widened by F16C (a product, then a sum: no FMA).
    ///
    /// # Safety
    /// The CPU must have AVX and F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    pub unsafe fn add_scaled_f16(o: &mut [f32], w: f32, v: &[f16]) {
        let n = o.len().min(v.len());
        let full = n / 8 * 8;
        let wv = _mm256_set1_ps(w);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= both lengths.
            unsafe {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                let ov = _mm256_loadu_ps(o.as_ptr().add(i));
                _mm256_storeu_ps(o.as_mut_ptr().add(i), _mm256_add_ps(ov, _mm256_mul_ps(wv, vv)));
            }
        }
        for (o, v) in o[full..n].iter_mut().zip(&v[full..n]) {
            *o += w * v.to_f32();
        }
    }
}

/// `dst[i] = src[i]` as f32 (exact). Natively half's slice conversion (F16C on x86-64, FP16 on
/// AArch64, where the CPU has them); in wasm, which has no such instruction, a branch-free version
/// that SIMD128 vectorizes.
#[inline]
pub fn widen(src: &[f16], dst: &mut [f32]) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[cfg(target_arch = "wasm32")]
    for (d, s) in dst.iter_mut().zip(src) {
        *d = widen_one(s.to_bits());
    }
}

/// One f16's bits as f32, without branches: exponent and mantissa moved into place and scaled by
/// 2^112 (the difference of the two formats' exponent biases; exact, and right for subnormals and
/// zero too), infinities and NaNs given f32's all-ones exponent, then the sign.
#[inline(always)]
pub fn widen_one(h: u16) -> f32 {
    let magnitude = u32::from(h & 0x7fff) << 13;
    let scaled = (f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if magnitude >= 0x0f80_0000 { magnitude | 0x7f80_0000 } else { scaled };
    f32::from_bits(bits | (u32::from(h & 0x8000) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C versions compute the portable ones' bits, on lengths with and without a tail.
    #[test]
    fn every_version_computes_the_same_bits() {
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
        };
        for n in [1, 7, 8, 16, 31, 64, 67, 128, 256] {
            let q = values(n, 7);
            let k: Vec<f16> = values(n, 99).iter().map(|&x| f16::from_f32(x * 3.0)).collect();
            let mut row = vec![0f32; n];
            let mut o = values(n, 5);
            let mut o_portable = o.clone();
            let want = dot_f16(Simd::Scalar, &q, &k, &mut row);
            add_scaled_f16(Simd::Scalar, &mut o_portable, 0.37, &k, &mut row);
            let simd = Simd::detect();
            assert_eq!(dot_f16(simd, &q, &k, &mut row).to_bits(), want.to_bits(), "{simd:?} n={n}");
            add_scaled_f16(simd, &mut o, 0.37, &k, &mut row);
            assert!(o.iter().zip(&o_portable).all(|(a, b)| a.to_bits() == b.to_bits()), "{simd:?} n={n}");
        }
    }

    /// A whole attention (eight positions at a time, values held in registers, where the CPU has
    /// AVX2) gives the portable version's bits: head dims with and without whole 64-value chunks,
    /// position counts around multiples of 8, a ring that wraps, ALiBi and a soft cap.
    #[test]
    fn attention_computes_the_same_bits_on_every_path() {
        let value = |i: usize, seed: u32| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 500.0 - 2.0;
        for (hd, window, extra) in [
            (64, None, ""),
            (128, Some(13), ""),
            (256, None, r#","attn_softcap":2.5"#),
            (72, Some(20), ""),
            (64, None, r#","alibi":{"max_bias":8.0}"#),
        ] {
            let position = if extra.contains("alibi") { "alibi" } else { "rope" };
            let config: ModelConfig = serde_json::from_str(&format!(
                r#"{{"n_layers":1,"hidden_size":{h},"n_heads":4,"n_kv_heads":2,"head_dim":{hd},"ffn_size":8,
                "vocab_size":8,"context_length":64,"norm":"rms","norm_eps":1e-5,"activation":"silu",
                "position":"{position}","tied_embeddings":true{extra}}}"#,
                h = 4 * hd,
            ))
            .expect("test config");
            let (qd, kvd) = (config.q_dim(), config.kv_dim());
            for positions in [1, 7, 8, 9, 17, 40] {
                let rows = window.map_or(usize::MAX, |w| w + 3);
                let mut cache = LayerCache::<f16> { k: Vec::new(), v: Vec::new(), rows };
                let mut outs = Vec::new();
                for simd in [Simd::Scalar, Simd::detect()] {
                    cache.k.clear();
                    cache.v.clear();
                    let (mut out, mut all) = (vec![0f32; qd], Vec::new());
                    for p in 0..positions {
                        let kv = |seed| (0..kvd).map(|i| value(i + p * kvd, seed)).collect::<Vec<_>>();
                        let q: Vec<f32> = (0..qd).map(|i| value(i + p * qd, 3)).collect();
                        attention(simd, &config, &mut cache, &q, &kv(5), &kv(9), p, window, &mut out);
                        all.extend_from_slice(&out);
                    }
                    outs.push(all);
                }
                let same = outs[0].iter().zip(&outs[1]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{:?} hd={hd} window={window:?} positions={positions} {extra}", Simd::detect());
            }
        }
    }

    #[test]
    fn widen_one_is_exact_for_every_f16() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = widen_one(bits);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got} vs {want}");
        }
    }
}
