//! Every WGSL kernel of the forward pass against the CPU reference engine (which the hearth-core
//! tests check against llama.cpp), on random inputs of awkward sizes: rows and head sizes that are
//! not multiples of the workgroup, token counts that are not multiples of the prefill block, a
//! vocabulary that is not a power of two. Both work splits run wherever the tests run: the
//! barrier-free ones (software adapters) and the ones hardware GPUs get, by overriding the
//! adapter's `software` flag. With no adapter at all, each test says so loudly and returns.

use hearth_core::cpu::{apply_rope, attention_at, gelu, matmul, rms_norm, silu};
use hearth_core::ggml_quants::{k_from_ggml, q5_from_ggml};
use hearth_core::gguf::GgmlType;
use hearth_core::manifest::{AlibiConfig, ModelConfig, PositionKind, RopeConfig, RopeStyle, TensorEntry};
use hearth_core::quant::{DType, Tensor};
use hearth_gpu::attention::{self, AttentionBuffers, AttentionDims};
use hearth_gpu::kernels::{
    dispatch_once, norm_grid, read_back, storage, storage_init, uniform, uniform_of, whole, Activation, EmbedDims,
    EmbedRows, Kernels, MatvecKey, NormDims, ProductDims, PREFILL_BLOCK, WORKGROUP,
};
use hearth_gpu::{run_dispatches, GpuContext, RopeDims, Step, StoredMatrix, WeightBuffer, WeightUploads};

use wgpu::BindGroupEntry;

fn context() -> Option<GpuContext> {
    let ctx = GpuContext::new().expect("opening the GPU device");
    if ctx.is_none() {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU kernel test (install mesa-vulkan-drivers for lavapipe) !!!\n");
    }
    ctx
}

/// Uniform values in [-1, 1) from a fixed generator (the same inputs every run).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> BindGroupEntry<'_> {
    BindGroupEntry { binding, resource }
}

/// A tensor as a package stores it: its values, its serialized bytes, and its plan as manifest
/// tensor `index`.
struct Packed {
    tensor: Tensor,
    bytes: Vec<u8>,
    matrix: StoredMatrix,
}

fn packed(index: usize, shape: Vec<usize>, values: &[f32], dtype: DType, group: usize) -> Packed {
    packed_tensor(index, Tensor::from_f32(shape, values, dtype, group).unwrap())
}

fn packed_tensor(index: usize, tensor: Tensor) -> Packed {
    let (bytes, parts) = tensor.to_bytes();
    let entry = TensorEntry {
        name: format!("t{index}"),
        dtype: tensor.dtype(),
        shape: tensor.shape.clone(),
        shard: 0,
        offset: 0,
        length: bytes.len() as u64,
        group_size: tensor.group_size(),
        parts: parts.into_iter().map(|(k, r)| (k.to_string(), r)).collect(),
    };
    let matrix = StoredMatrix::from_entry(index, &entry).unwrap();
    Packed { tensor, bytes, matrix }
}

/// `matrix` (planned over the tensors of `sources`, by index) in pieces that fit the binding limit,
/// filled with those tensors' bytes.
fn upload(ctx: &GpuContext, matrix: &StoredMatrix, sources: &[&Packed]) -> Vec<WeightBuffer> {
    let mut uploads = WeightUploads::default();
    let pieces = WeightBuffer::create_split(ctx, &mut uploads, matrix).unwrap();
    for (i, p) in sources.iter().enumerate() {
        uploads.feed(&ctx.queue, i, 0, &p.bytes).unwrap();
    }
    uploads.finish().unwrap();
    pieces
}

const ENCODINGS: [(DType, usize); 5] =
    [(DType::Q4, 32), (DType::Q4, 128), (DType::Q8, 32), (DType::F16, 32), (DType::F32, 32)];

/// The encodings made only from GGUF blocks (never by quantizing), each with a GGUF type it keeps.
const KEPT: [(DType, GgmlType); 4] = [
    (DType::Q5, GgmlType::Q5_1),
    (DType::Q4k, GgmlType::Q4K),
    (DType::Q5k, GgmlType::Q5K),
    (DType::Q6k, GgmlType::Q6K),
];

/// A `rows` × `cols` matrix of random GGUF blocks re-laid as `hearth convert` keeps them: every
/// code and packed scale bit random, the f16 scales (d, dmin or m) of every kind a real file
/// holds — normal and subnormal (Q6_K's d often is), positive and negative, and zero now and then.
fn kept(dtype: DType, rows: usize, cols: usize, seed: u64) -> Tensor {
    let ty = KEPT.iter().find(|(d, _)| *d == dtype).map(|&(_, t)| t).unwrap();
    let (_, block_bytes) = ty.block_layout().unwrap();
    let block_bytes = block_bytes as usize;
    let (block_values, _) = ty.block_layout().unwrap();
    let blocks = rows * cols / block_values as usize;
    let mut raw: Vec<u8> = random(blocks * block_bytes, seed).iter().map(|v| ((v + 1.0) * 128.0) as u8).collect();
    let scale_at: &[usize] = if ty == GgmlType::Q6K { &[208] } else { &[0, 2] };
    let kinds = random(2 * blocks, seed + 1);
    for (b, block) in raw.chunks_mut(block_bytes).enumerate() {
        for (k, &at) in scale_at.iter().enumerate() {
            let r = kinds[2 * b + k];
            let magnitude = (r.abs() * 4096.0) as u16;
            // Normal values from 2^-14 to about 0.06, or subnormal ones, or (rarely) zero.
            let bits = match b % 7 {
                0 | 3 => 0x0400 + magnitude % 0x2800,
                1 | 5 => 1 + magnitude % 0x3ff,
                2 | 4 => 0x2000 + magnitude % 0x0c00,
                _ => 0,
            } | if r < 0.0 { 0x8000 } else { 0 };
            block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    if dtype == DType::Q5 {
        q5_from_ggml(ty, &raw, vec![rows, cols], "random").unwrap()
    } else {
        k_from_ggml(ty, &raw, vec![rows, cols], "random").unwrap()
    }
}

fn gelu_tanh(v: f32) -> f32 {
    0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044_715 * v * v * v)).tanh())
}

/// Tolerance for a dot product of `cols` terms summed in two different orders: each order is off
/// by at most (cols - 1)·ε·Σ|terms| (the classical bound for recursive summation), so the two
/// differ by at most twice that.
fn dot_tolerance(cols: usize, abs_sum: f32) -> f32 {
    2.0 * cols as f32 * f32::EPSILON * abs_sum + 1e-6
}

#[derive(Clone, Copy, Debug)]
enum Fusion {
    Plain,
    Norm,
    SwiGlu,
    GeGlu,
    Accumulate,
    /// Granite's residual multiplier: y += SCALE · W·x.
    ScaledAccumulate,
    /// GPT-2's up product: gelu(W·x + b).
    BiasGelu,
    /// BERT's up product: the exact (erf) GELU of W·x + b.
    BiasGeluErf,
    /// Gemma 2's output head: cap * tanh(W·x / cap).
    Softcap,
}

/// The cap of `Fusion::Softcap`: small enough that products of a few units bend.
const CAP: f32 = 2.5;
/// The factor of `Fusion::ScaledAccumulate` (the tiny Granite fixture's residual multiplier).
const SCALE: f32 = 0.22;

/// matvec.wgsl for every encoding, fusion and kernel: software adapters' row split for one token
/// (decode pipeline) and 11 (prefill: a full block of 8 and a partial one); on GPUs the decode
/// kernel, its sums added up with subgroup operations (where the adapter offers them, as lavapipe
/// does) and in workgroup memory (what browsers run), the register-blocked kernel for 11, 20 and 70
/// tokens (a partial 64-token tile, then a full one and a partial one) and the tiled kernel for 20
/// (a full 16-token tile and a partial one). Shapes: 77 rows of 384 values (77 is no multiple of
/// the decode kernel's rows per workgroup, 8, 4 or 3 here, nor of the tiled kernels' 32 or 64), 45
/// rows of 2,176 (more chunks than the decode kernel's 64 lanes: a lane takes a second one, the
/// last lanes none), and for f16 and f32 19 rows of 100 values (no multiple of the 32 or 16 columns
/// the tiled kernels stage at a time; f16 rows of 200 bytes, so a 16-byte load would straddle two).
#[test]
fn matvec_matches_the_cpu_for_every_encoding_fusion_split_and_block() {
    let Some(ctx) = context() else { return };
    let mut splits = vec![("row split", Kernels::new(&ctx.device, true), vec![1usize, 11])];
    if ctx.device.features().contains(wgpu::Features::SUBGROUP) {
        let kernels = Kernels::new(&ctx.device, false).with_subgroups(true).with_decode_rows(8);
        splits.push((
            "decode kernel with subgroup sums, 8 rows, register-blocked blocks",
            kernels,
            vec![1, 11, 20, 70],
        ));
        let four = Kernels::new(&ctx.device, false).with_subgroups(true).with_decode_rows(4);
        splits.push(("decode kernel with subgroup sums, 4 rows", four, vec![1]));
    } else {
        eprintln!("\n!!! this adapter offers no subgroups: the decode kernel's subgroup sums go untested !!!\n");
    }
    let fallback = Kernels::new(&ctx.device, false).with_subgroups(false).with_decode_rows(8).with_gemm(false);
    splits.push(("decode kernel with workgroup-memory sums, 8 rows, tiled blocks", fallback, vec![1, 20]));
    let gemm = Kernels::new(&ctx.device, false).with_subgroups(false).with_decode_rows(8);
    splits.push(("register-blocked blocks", gemm, vec![70]));
    let three_rows = Kernels::new(&ctx.device, false).with_subgroups(false).with_decode_rows(3);
    splits.push(("decode kernel with workgroup-memory sums, 3 rows per workgroup", three_rows, vec![1]));
    for (split, kernels, tokens) in &splits {
        for (rows, cols) in [(77usize, 384usize), (45, 2176), (19, 100)] {
            for (dtype, group) in ENCODINGS {
                // q4 and q8 rows are whole groups; f16 and f32 rows any multiple of 4 values.
                if matches!(dtype, DType::Q4 | DType::Q8) && cols % group != 0 {
                    continue;
                }
                for fusion in FUSIONS {
                    for &n in tokens {
                        check_matvec(&ctx, kernels, split, dtype, group, fusion, rows, cols, n);
                    }
                }
            }
        }
        // Kept GGUF types: rows of whole super-blocks, one of them past the decode kernel's input tile.
        for (rows, cols) in [(77usize, 512usize), (21, 2304)] {
            for (dtype, _) in KEPT {
                for fusion in FUSIONS {
                    for &n in tokens {
                        check_matvec(&ctx, kernels, split, dtype, 0, fusion, rows, cols, n);
                    }
                }
            }
        }
    }
}

const FUSIONS: [Fusion; 9] = [
    Fusion::Plain,
    Fusion::Norm,
    Fusion::SwiGlu,
    Fusion::GeGlu,
    Fusion::Accumulate,
    Fusion::ScaledAccumulate,
    Fusion::BiasGelu,
    Fusion::BiasGeluErf,
    Fusion::Softcap,
];

#[allow(clippy::too_many_arguments)]
fn check_matvec(
    ctx: &GpuContext,
    kernels: &Kernels,
    split: &str,
    dtype: DType,
    group: usize,
    fusion: Fusion,
    rows: usize,
    cols: usize,
    n: usize,
) {
    let gated = matches!(fusion, Fusion::SwiGlu | Fusion::GeGlu);
    let w_rows = if gated { 2 * rows } else { rows };
    let w = if KEPT.iter().any(|(d, _)| *d == dtype) {
        packed_tensor(0, kept(dtype, w_rows, cols, 1))
    } else {
        packed(0, vec![w_rows, cols], &random(w_rows * cols, 1), dtype, group)
    };
    let tensor = &w.tensor;
    // Inputs of a realistic spread (activations well above 1 before a norm).
    let x: Vec<f32> = random(n * cols, 2).iter().map(|v| v * 3.0).collect();
    let norm_weight: Vec<f32> = random(cols, 3).iter().map(|v| 1.0 + 0.5 * v).collect();
    let initial = random(n * rows, 4);
    let bias = random(rows, 5);
    let eps = 1e-5f32;

    // CPU: the steps one after the other, as the CPU engine runs them.
    let input = if matches!(fusion, Fusion::Norm) {
        let mut out = vec![0f32; n * cols];
        rms_norm(&x, &norm_weight, eps, cols, &mut out);
        out
    } else {
        x.clone()
    };
    let mut products = vec![0f32; n * w_rows];
    matmul(tensor, &input, n, &mut products);
    let dense = tensor.to_f32();
    let abs_sums: Vec<f32> = (0..n * w_rows)
        .map(|i| {
            let (t, r) = (i / w_rows, i % w_rows);
            (0..cols).map(|c| (dense[r * cols + c] * input[t * cols + c]).abs()).sum()
        })
        .collect();
    let mut expected = vec![0f32; n * rows];
    let mut tolerance = vec![0f32; n * rows];
    for t in 0..n {
        for (r, &b) in bias.iter().enumerate() {
            let (i, g) = (t * rows + r, t * w_rows + r);
            let tol_g = dot_tolerance(cols, abs_sums[g]);
            (expected[i], tolerance[i]) = match fusion {
                Fusion::Plain | Fusion::Norm => (products[g], tol_g),
                Fusion::Accumulate => (initial[i] + products[g], tol_g + f32::EPSILON * initial[i].abs()),
                Fusion::ScaledAccumulate => {
                    let v = initial[i] + SCALE * products[g];
                    (v, SCALE * tol_g + f32::EPSILON * (initial[i].abs() + v.abs()))
                }
                Fusion::BiasGelu => {
                    let v = products[g] + b;
                    (gelu_tanh(v), 1.13 * (tol_g + f32::EPSILON * v.abs()) + 1e-6 * v.abs())
                }
                // The exact GELU's slope is below 1.13 too; the shader's erf is within 1.5e-7 of
                // libm's, which moves v·Φ(v) by |v| · 0.75e-7 at most.
                Fusion::BiasGeluErf => {
                    let v = products[g] + b;
                    (gelu(v), 1.13 * (tol_g + f32::EPSILON * v.abs()) + 1e-6 * v.abs() + 1e-7)
                }
                // tanh's slope is at most 1; its own error a few ulps of the result.
                Fusion::Softcap => (CAP * (products[g] / CAP).tanh(), tol_g + 1e-6 * CAP),
                Fusion::SwiGlu | Fusion::GeGlu => {
                    let act = if matches!(fusion, Fusion::SwiGlu) { silu } else { gelu_tanh };
                    let (gate, up) = (products[g], products[g + rows]);
                    let tol_u = dot_tolerance(cols, abs_sums[g + rows]);
                    // Both activations have slope below 1.13: the product's error follows.
                    (act(gate) * up, 1.13 * tol_g * up.abs() + act(gate).abs() * tol_u + 1e-5 * (act(gate) * up).abs())
                }
            };
        }
    }

    // GPU.
    let key = MatvecKey {
        dtype,
        block: if n == 1 { 1 } else { PREFILL_BLOCK },
        norm: matches!(fusion, Fusion::Norm),
        activation: match fusion {
            Fusion::SwiGlu => Activation::Silu,
            Fusion::GeGlu | Fusion::BiasGelu => Activation::GeluTanh,
            Fusion::BiasGeluErf => Activation::GeluErf,
            Fusion::Softcap => Activation::Softcap,
            _ => Activation::None,
        },
        gated,
        accumulate: matches!(fusion, Fusion::Accumulate | Fusion::ScaledAccumulate),
        bias: matches!(fusion, Fusion::BiasGelu | Fusion::BiasGeluErf),
        rope: false,
        kv_f16: false,
    };
    let mut pieces = upload(ctx, &w.matrix, &[&w]);
    assert_eq!(pieces.len(), 1);
    let scale = if matches!(fusion, Fusion::ScaledAccumulate) { SCALE } else { 1.0 };
    let inputs = ProductInputs { x: &x, initial: &initial, norm_weight: &norm_weight, bias: &bias, eps, scale };
    let got = gpu_product(ctx, kernels, key, &pieces.remove(0), rows, n, &inputs);

    for i in 0..n * rows {
        let diff = (got[i] - expected[i]).abs();
        assert!(
            diff <= tolerance[i],
            "{dtype:?}/{group} {fusion:?}, {rows}x{cols}, {n} tokens, {split}: output {i} is {} on the GPU, {} on \
             the CPU (tolerance {})",
            got[i],
            expected[i],
            tolerance[i]
        );
    }
}

struct ProductInputs<'a> {
    x: &'a [f32],
    /// What y holds before (ACCUMULATE adds to it).
    initial: &'a [f32],
    norm_weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
    /// The fused value's factor (matvec.wgsl's `dims.scale`).
    scale: f32,
}

/// y = the product of `w` (its first `rows` rows, and the up rows after them when gated) with `n`
/// tokens of input, through the pipeline of `key`.
fn gpu_product(
    ctx: &GpuContext,
    kernels: &Kernels,
    key: MatvecKey,
    w: &WeightBuffer,
    rows: usize,
    n: usize,
    inputs: &ProductInputs<'_>,
) -> Vec<f32> {
    let cols = w.cols;
    let (gx, gy) = kernels.matvec_grid(key.block, rows as u32);
    let dims = uniform_of(
        &ctx.device,
        "dims",
        &ProductDims {
            rows: rows as u32,
            cols,
            group: w.group,
            out_stride: rows as u32,
            row_offset: 0,
            eps: inputs.eps,
            up_offset: rows as u32,
            cap: CAP,
            scale: inputs.scale,
        },
    );
    let step = uniform(&ctx.device, "step", &[0, n as u32]);
    let xb = storage_init(&ctx.device, "x", inputs.x);
    let y = storage_init(&ctx.device, "y", inputs.initial);
    let nw = storage_init(&ctx.device, "norm", inputs.norm_weight);
    let bb = storage_init(&ctx.device, "bias", inputs.bias);
    let pipeline = kernels.matvec(key);
    let mut entries = vec![
        entry(0, whole(&dims)),
        entry(2, whole(&xb)),
        entry(3, whole(&y)),
        entry(7, whole(&nw)),
        entry(8, whole(&bb)),
    ];
    if kernels.matvec_binds_step(&key) {
        entries.push(entry(1, whole(&step)));
    }
    entries.extend(w.weight_entries(4));
    dispatch_once(ctx, &pipeline, &entries, (gx, gy, (n as u32).div_ceil(kernels.matvec_tokens(key.block))));
    read_back(ctx, &y, 0, n * rows).unwrap()
}

/// Every q5 and K-quant weight decoded by every kernel that reads one is bit-identical to the CPU's
/// decoding (which `dequant_vs_llama_cpp` and hearth-core's unit tests hold to llama.cpp's): a
/// product with one-hot inputs (token t = column t) gives each weight times 1 plus exact zeros, so
/// y[t][r] must be W[r][t] to the bit, in the row split, both tiled kernels (512 tokens: every
/// column) and the decode kernel (one token per column, a sample of columns across sub-blocks and
/// super-blocks), with both ways of adding up its sums; and the embedding gather (scale 1), where
/// even the sign of a zero must match.
#[test]
fn kept_gguf_weights_decode_bit_exactly_in_every_kernel() {
    let Some(ctx) = context() else { return };
    let (rows, cols) = (37usize, 512usize);
    let mut kernels = vec![("row split", Kernels::new(&ctx.device, true))];
    if ctx.device.features().contains(wgpu::Features::SUBGROUP) {
        kernels.push(("subgroup sums", Kernels::new(&ctx.device, false).with_subgroups(true)));
    }
    kernels.push(("workgroup sums", Kernels::new(&ctx.device, false).with_subgroups(false)));
    kernels.push(("tiled", Kernels::new(&ctx.device, false).with_subgroups(false).with_gemm(false)));
    for (dtype, _) in KEPT {
        let w = packed_tensor(0, kept(dtype, rows, cols, 7));
        let dense = w.tensor.to_f32();
        let piece = upload(&ctx, &w.matrix, &[&w]).remove(0);
        let key = |block| MatvecKey {
            dtype,
            block,
            norm: false,
            activation: Activation::None,
            gated: false,
            accumulate: false,
            bias: false,
            rope: false,
            kv_f16: false,
        };
        let one_hot = |columns: &[usize]| {
            let mut x = vec![0f32; columns.len() * cols];
            for (t, &c) in columns.iter().enumerate() {
                x[t * cols + c] = 1.0;
            }
            x
        };
        let same = |got: &[f32], columns: &[usize], what: &str| {
            for (t, &c) in columns.iter().enumerate() {
                for r in 0..rows {
                    let (g, e) = (got[t * rows + r], dense[r * cols + c]);
                    // A sum that starts at +0 cannot give -0: the sign of a zero weight is the one
                    // bit a product cannot show (and the one no product depends on).
                    let exact = g.to_bits() == e.to_bits() || (g == 0.0 && e == 0.0);
                    assert!(exact, "{dtype:?} {what}: weight ({r}, {c}) is {g:e}, not {e:e}");
                }
            }
        };
        let (no_norm, no_bias) = (vec![1f32; cols], vec![0f32; rows]);
        for (name, k) in &kernels {
            let all: Vec<usize> = (0..cols).collect();
            let x = one_hot(&all);
            let initial = vec![0f32; cols * rows];
            let inputs =
                ProductInputs { x: &x, initial: &initial, norm_weight: &no_norm, bias: &no_bias, eps: 0.0, scale: 1.0 };
            same(
                &gpu_product(&ctx, k, key(PREFILL_BLOCK), &piece, rows, cols, &inputs),
                &all,
                &format!("{name}, prefill"),
            );
            for c in [0usize, 1, 31, 32, 47, 255, 256, 300, 511] {
                let x = one_hot(&[c]);
                let initial = vec![0f32; rows];
                let inputs = ProductInputs {
                    x: &x,
                    initial: &initial,
                    norm_weight: &no_norm,
                    bias: &no_bias,
                    eps: 0.0,
                    scale: 1.0,
                };
                same(&gpu_product(&ctx, k, key(1), &piece, rows, 1, &inputs), &[c], &format!("{name}, decode"));
            }
        }
        // The gather: every row once, scale 1.
        let tokens: Vec<u32> = (0..rows as u32).collect();
        let tb = storage_init(&ctx.device, "tokens", &tokens);
        let step = uniform(&ctx.device, "step", &[0, rows as u32]);
        let out = storage(&ctx.device, "out", rows * cols).unwrap();
        let dims = uniform_of(
            &ctx.device,
            "dims",
            &EmbedDims { hidden: cols as u32, first_row: 0, rows: rows as u32, group: 0, scale: 1.0 },
        );
        let mut entries =
            vec![entry(0, whole(&dims)), entry(1, whole(&tb)), entry(2, whole(&out)), entry(6, whole(&step))];
        entries.extend(piece.weight_entries(3));
        let grid = ((cols as u32).div_ceil(WORKGROUP), rows as u32, 1);
        dispatch_once(&ctx, &kernels[0].1.embed(dtype, EmbedRows::Tokens), &entries, grid);
        let got: Vec<u32> = read_back::<f32>(&ctx, &out, 0, rows * cols).unwrap().iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = dense.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{dtype:?}: the embedding gather");
    }
}

/// embed.wgsl for every encoding, from a table split into row pieces (a small binding limit forced)
/// as the engine splits vocabularies too large for one binding, times an embedding scale (Gemma's
/// sqrt(640)); then the same table as learned positions, its rows added by position. Tolerance: a decoded value is `q·scale + min` in f32 on both sides, then one product;
/// a fused multiply-add may round once instead of twice, so they differ by a few ulps of the
/// larger term.
#[test]
fn embedding_gather_matches_the_cpu_for_every_encoding_and_split_tables() {
    let Some(mut ctx) = context() else { return };
    let (vocab, hidden) = (1003usize, 384usize);
    let tokens: Vec<u32> = vec![0, 1002, 500, 3, 1002, 250, 251, 749, 750, 999, 17];
    let values = random(vocab * hidden, 5);
    let kernels = Kernels::new(&ctx.device, true);
    for (dtype, group) in ENCODINGS {
        let table = packed(0, vec![vocab, hidden], &values, dtype, group);
        let tensor = &table.tensor;
        let dense = tensor.to_f32();
        for limit in [u64::from(u32::MAX), 32 * 1024] {
            ctx.limits.max_storage_buffer_binding_size = limit;
            let pieces = upload(&ctx, &table.matrix, &[&table]);
            if limit < u64::from(u32::MAX) {
                assert!(pieces.len() > 2, "{dtype:?}: a 32 KiB limit should split the table");
            }
            let tb = storage_init(&ctx.device, "tokens", &tokens);
            let step = uniform(&ctx.device, "step", &[0, tokens.len() as u32]);
            let out = storage(&ctx.device, "out", tokens.len() * hidden).unwrap();
            // A piece's uniform; the position table is added as it is (the scale is the token table's).
            let dims_of = |piece: &WeightBuffer, scale: f32| {
                let (first_row, rows, group) = (piece.first_row, piece.rows, piece.group);
                uniform_of(&ctx.device, "dims", &EmbedDims { hidden: hidden as u32, first_row, rows, group, scale })
            };
            for piece in &pieces {
                let dims = dims_of(piece, EMBED_SCALE);
                let mut entries =
                    vec![entry(0, whole(&dims)), entry(1, whole(&tb)), entry(2, whole(&out)), entry(6, whole(&step))];
                entries.extend(piece.weight_entries(3));
                let grid = ((hidden as u32).div_ceil(WORKGROUP), tokens.len() as u32, 1);
                dispatch_once(&ctx, &kernels.embed(dtype, EmbedRows::Tokens), &entries, grid);
            }
            let got: Vec<f32> = read_back(&ctx, &out, 0, tokens.len() * hidden).unwrap();
            for (t, &id) in tokens.iter().enumerate() {
                for i in 0..hidden {
                    let want = dense[id as usize * hidden + i] * EMBED_SCALE;
                    let have = got[t * hidden + i];
                    assert!(
                        (have - want).abs() <= 3.0 * f32::EPSILON * want.abs().max(EMBED_SCALE),
                        "{dtype:?}/{group}, limit {limit}: token {id} value {i}: GPU {have}, CPU {want}"
                    );
                }
            }

            // The same table as learned positions (GPT-2): rows start.. added to what is there.
            let start = 990u32; // the rows run to the table's last piece
            let step = uniform(&ctx.device, "step", &[start, tokens.len() as u32]);
            for piece in &pieces {
                let dims = dims_of(piece, 1.0);
                let mut entries =
                    vec![entry(0, whole(&dims)), entry(1, whole(&tb)), entry(2, whole(&out)), entry(6, whole(&step))];
                entries.extend(piece.weight_entries(3));
                let grid = ((hidden as u32).div_ceil(WORKGROUP), tokens.len() as u32, 1);
                dispatch_once(&ctx, &kernels.embed(dtype, EmbedRows::Positions), &entries, grid);
            }
            let with_positions: Vec<f32> = read_back(&ctx, &out, 0, tokens.len() * hidden).unwrap();
            for t in 0..tokens.len() {
                for i in 0..hidden {
                    let want = got[t * hidden + i] + dense[(start as usize + t) * hidden + i];
                    let have = with_positions[t * hidden + i];
                    assert!(
                        (have - want).abs() <= 2.0 * f32::EPSILON * want.abs().max(1.0),
                        "{dtype:?}/{group}, limit {limit}: position {} value {i}: GPU {have}, CPU {want}",
                        start as usize + t
                    );
                }
            }
        }
    }
}

const EMBED_SCALE: f32 = 25.298_221;

fn config(n_heads: usize, n_kv_heads: usize, head_dim: usize, rope_dim: usize, style: RopeStyle) -> ModelConfig {
    ModelConfig {
        n_layers: 1,
        hidden_size: n_heads * head_dim,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size: 64,
        vocab_size: 100,
        context_length: 64,
        norm_eps: 1e-5,
        rope: Some(RopeConfig {
            base: 10000.0,
            dim: rope_dim,
            style,
            scaling: None,
            local_base: None,
            unrotated_layers: vec![],
        }),
        tied_embeddings: true,
        ..Default::default()
    }
}

fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Cache contents as the GPU stores them: f32 words, or f16 pairs packed in a word.
fn cache_words(values: &[f32], f16: bool) -> Vec<u32> {
    if f16 {
        values
            .chunks(2)
            .map(|p| {
                let lo = half::f16::from_f32(p[0]).to_bits() as u32;
                let hi = half::f16::from_f32(p.get(1).copied().unwrap_or(0.0)).to_bits() as u32;
                lo | (hi << 16)
            })
            .collect()
    } else {
        values.iter().map(|v| v.to_bits()).collect()
    }
}

fn cache_values(words: &[u32], f16: bool) -> Vec<f32> {
    if f16 {
        words
            .iter()
            .flat_map(|w| [half::f16::from_bits(*w as u16).to_f32(), half::f16::from_bits((w >> 16) as u16).to_f32()])
            .collect()
    } else {
        words.iter().map(|w| f32::from_bits(*w)).collect()
    }
}

/// rope.wgsl: both pairings, full and partial rotary dimensions, f32 and f16 caches, with and
/// without a Q/K/V bias (added before the rotation, as Qwen2 does) and with and without per-head
/// RMSNorm of queries and keys (after the bias, before the rotation, as Gemma 3), five tokens
/// at positions 637..642 (angles of hundreds of radians) of a cache of 650 rows (written at their
/// rows, nothing else touched).
/// Tolerance: WGSL promises sin/cos to 2^-11 absolute on [-π, π] (the kernel reduces angles there),
/// so a rotated value may be off by 2^-10·(|x0| + |x1|) against the CPU's libm; an f16 cache adds
/// f16 rounding, 2^-11 relative.
#[test]
fn rope_and_kv_store_match_the_cpu_for_both_pairings_and_caches() {
    let Some(ctx) = context() else { return };
    let (n_heads, n_kv, capacity, start, n) = (6usize, 2usize, 650usize, 637usize, 5usize);
    let kernels = Kernels::new(&ctx.device, true);
    // (f16 cache, Q/K/V bias, QK-norm, magnitude: YaRN's for a factor of 4, or 1)
    let cases = [
        (false, false, false, 1.0f32),
        (true, false, false, 1.0),
        (false, true, false, 1.0),
        (true, true, false, 1.0),
        (false, true, true, 1.0),
        (true, false, true, 1.0),
        (false, false, false, 1.138_629_4),
    ];
    // Head dims for QK-norm's two ways of summing a head: 40, several heads to a workgroup's 128
    // values and heads across its edges; 256, a head over two workgroups (Gemma 3); 16, under
    // NORM_SHARED_MIN_DIM, one invocation walking its head. 40 runs every case, the others the
    // normalized ones.
    for hd in [40usize, 256, 16] {
        let (qd, kvd) = (n_heads * hd, n_kv * hd);
        let row = qd + 2 * kvd;
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            for rope_dim in [hd, if hd > 24 { 24 } else { hd / 2 }] {
                for (f16, with_bias, with_norm, magnitude) in cases.into_iter().filter(|c| hd == 40 || c.2) {
                    let qkv = random(n * row, 7);
                    let bias = random(row, 9);
                    let norm_weights: Vec<f32> = random(2 * hd, 10).iter().map(|v| 1.0 + 0.5 * v).collect();
                    let eps = 1e-6f32;
                    // What the kernel must rotate and store: the product plus its bias, each query and
                    // key head normalized.
                    let mut biased: Vec<f32> =
                        qkv.iter().enumerate().map(|(i, x)| if with_bias { x + bias[i % row] } else { *x }).collect();
                    if with_norm {
                        for token in biased.chunks_mut(row) {
                            for (j, head) in token[..qd + kvd].chunks_mut(hd).enumerate() {
                                let w = &norm_weights[if j < n_heads { 0 } else { hd }..][..hd];
                                let mut normed = vec![0f32; hd];
                                rms_norm(head, w, eps, hd, &mut normed);
                                head.copy_from_slice(&normed);
                            }
                        }
                    }
                    let inv_freq = hearth_core::cpu::rope_inv_freq(10000.0, rope_dim, None, None, 0);
                    let sentinel = random(capacity * kvd, 8);
                    let k_init = cache_words(&sentinel, f16);
                    let dims = uniform_of(
                        &ctx.device,
                        "dims",
                        &RopeDims {
                            n_heads: n_heads as u32,
                            n_kv_heads: n_kv as u32,
                            head_dim: hd as u32,
                            n_pairs: (rope_dim / 2) as u32,
                            neox: u32::from(style == RopeStyle::Neox),
                            cache_rows: capacity as u32,
                            eps,
                            magnitude,
                        },
                    );
                    let step = uniform(&ctx.device, "step", &[start as u32, n as u32]);
                    let freq = storage_init(&ctx.device, "inv freq", &inv_freq);
                    let qkv_b = storage_init(&ctx.device, "qkv", &qkv);
                    let q_b = storage(&ctx.device, "q", n * qd).unwrap();
                    let k_b = storage_init(&ctx.device, "k cache", &k_init);
                    let v_b = storage_init(&ctx.device, "v cache", &k_init);
                    let bias_b = storage_init(&ctx.device, "qkv bias", &bias);
                    let norm_b = storage_init(&ctx.device, "qk norm", &norm_weights);
                    let entries = [
                        entry(0, whole(&dims)),
                        entry(1, whole(&step)),
                        entry(2, whole(&freq)),
                        entry(3, whole(&qkv_b)),
                        entry(4, whole(&q_b)),
                        entry(5, whole(&k_b)),
                        entry(6, whole(&v_b)),
                        entry(7, whole(&bias_b)),
                        entry(8, whole(&norm_b)),
                    ];
                    dispatch_once(
                        &ctx,
                        &kernels.rope_store(f16, with_bias, with_norm),
                        &entries,
                        ((row as u32 / 2).div_ceil(WORKGROUP), n as u32, 1),
                    );
                    let q: Vec<f32> = read_back(&ctx, &q_b, 0, n * qd).unwrap();
                    let k = cache_values(&read_back::<u32>(&ctx, &k_b, 0, k_init.len()).unwrap(), f16);
                    let v = cache_values(&read_back::<u32>(&ctx, &v_b, 0, k_init.len()).unwrap(), f16);
                    let untouched = cache_values(&k_init, f16);

                    let label = format!(
                    "head dim {hd}, {style:?}, rope dim {rope_dim}, f16 cache {f16}, bias {with_bias}, norm {with_norm}, magnitude \
                     {magnitude}"
                );
                    for t in 0..n {
                        let pos = start + t;
                        let mut want = biased[t * row..(t + 1) * row].to_vec();
                        for head in want[..qd + kvd].chunks_mut(hd) {
                            apply_rope(head, pos, &inv_freq, style, magnitude);
                        }
                        let src = &biased[t * row..(t + 1) * row];
                        let check = |have: f32, want: f32, partner_scale: f32, cached: bool, what: &str| {
                            let mut tol = (2f32).powi(-10) * partner_scale + 1e-6;
                            if cached && f16 {
                                tol += want.abs() * (2f32).powi(-11);
                            }
                            assert!((have - want).abs() <= tol, "{label}: {what}: GPU {have}, CPU {want}");
                        };
                        for i in 0..qd {
                            let scale =
                                src[i - i % hd..i - i % hd + hd].iter().map(|v| v.abs()).fold(0.0, f32::max) * 2.0;
                            check(q[t * qd + i], want[i], scale, false, &format!("token {t} q[{i}]"));
                        }
                        for i in 0..kvd {
                            let scale =
                                src[qd + i - i % hd..qd + i - i % hd + hd].iter().map(|v| v.abs()).fold(0.0, f32::max)
                                    * 2.0;
                            check(k[pos * kvd + i], want[qd + i], scale, true, &format!("token {t} k[{i}]"));
                            check(v[pos * kvd + i], want[qd + kvd + i], 0.0, true, &format!("token {t} v[{i}]"));
                        }
                    }
                    // Rows outside the step's positions are left as they were.
                    for p in (0..capacity).filter(|p| !(start..start + n).contains(p)) {
                        assert_eq!(
                            &k[p * kvd..(p + 1) * kvd],
                            &untouched[p * kvd..(p + 1) * kvd],
                            "{label}: k row {p}"
                        );
                        assert_eq!(
                            &v[p * kvd..(p + 1) * kvd],
                            &untouched[p * kvd..(p + 1) * kvd],
                            "{label}: v row {p}"
                        );
                    }
                }
            }
        }
    }
}

/// matvec.wgsl's decode kernel with the `decode rope` epilogue (a GPU decode step's QKV product,
/// which rotates and stores what rope.wgsl would) against the CPU: the normed product, with and
/// without a Q/K/V bias (added before the rotation), both pairings over full and partial rotary
/// dimensions and none at all (ALiBi models only store), YaRN's magnitude, queries into q and keys
/// and values into an f32 or f16 cache at row position % rows (637 of 650 rows, and 1,000, which
/// wraps the ring to row 350), nothing else written; subgroup and workgroup-memory sums, each with
/// 8 and 4 rows per workgroup; q4 (groups of 32 and 128), q8 and f16 weights. Shape: 6 query heads
/// over 2 KV heads of 40 dimensions (5 workgroups of 8 rows per head), rows of 384 values.
/// Tolerance: each rotated value mixes two sums with sin and cos weights, so it carries both sums'
/// `dot_tolerance`, plus rope.wgsl's 2^-10·(|x0| + |x1|) for WGSL's sin and cos, plus f16 rounding
/// for a cached value.
#[test]
fn qkv_product_with_rope_epilogue_matches_the_cpu() {
    let Some(ctx) = context() else { return };
    let (n_heads, n_kv, hd, cols, cache_rows) = (6usize, 2usize, 40usize, 384usize, 650usize);
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    let rows = qd + 2 * kvd;
    let mut variants = Vec::new();
    if ctx.device.features().contains(wgpu::Features::SUBGROUP) {
        let eight = Kernels::new(&ctx.device, false).with_subgroups(true).with_decode_rows(8);
        variants.push(("subgroup sums, 8 rows", eight));
        let four = Kernels::new(&ctx.device, false).with_subgroups(true).with_decode_rows(4);
        variants.push(("subgroup sums, 4 rows", four));
    } else {
        eprintln!("\n!!! this adapter offers no subgroups: the RoPE epilogue's subgroup variant goes untested !!!\n");
    }
    let eight = Kernels::new(&ctx.device, false).with_subgroups(false).with_decode_rows(8);
    variants.push(("workgroup-memory sums, 8 rows", eight));
    let four = Kernels::new(&ctx.device, false).with_subgroups(false).with_decode_rows(4);
    variants.push(("workgroup-memory sums, 4 rows", four));
    let x: Vec<f32> = random(cols, 41).iter().map(|v| v * 3.0).collect();
    let norm_weight: Vec<f32> = random(cols, 42).iter().map(|v| 1.0 + 0.5 * v).collect();
    let bias = random(rows, 43);
    let eps = 1e-5f32;
    let mut normed = vec![0f32; cols];
    rms_norm(&x, &norm_weight, eps, cols, &mut normed);
    for (label, kernels) in &variants {
        for (style, rope_dim) in [
            (RopeStyle::Interleaved, hd),
            (RopeStyle::Neox, hd),
            (RopeStyle::Neox, 24),
            (RopeStyle::Interleaved, 24),
            (RopeStyle::Neox, 0),
        ] {
            if !kernels.fuses_rope(hd, rope_dim / 2, false) {
                eprintln!(
                    "\n!!! {label}: this adapter allows {} storage buffers per stage: the RoPE epilogue goes untested !!!\n",
                    ctx.device.limits().max_storage_buffers_per_shader_stage
                );
                return;
            }
            for (dtype, group, f16, with_bias, start, magnitude) in [
                (DType::Q4, 32usize, false, false, 637usize, 1.0f32),
                (DType::Q4, 128, true, true, 1000, 1.0),
                (DType::Q8, 32, true, false, 637, 1.138_629_4),
                (DType::F16, 32, false, true, 1000, 1.0),
            ] {
                let w = packed(0, vec![rows, cols], &random(rows * cols, 44), dtype, group);
                let mut products = vec![0f32; rows];
                matmul(&w.tensor, &normed, 1, &mut products);
                let dense = w.tensor.to_f32();
                let tol_dot: Vec<f32> = (0..rows)
                    .map(|r| dot_tolerance(cols, (0..cols).map(|c| (dense[r * cols + c] * normed[c]).abs()).sum()))
                    .collect();
                let biased: Vec<f32> =
                    products.iter().zip(&bias).map(|(p, b)| if with_bias { p + b } else { *p }).collect();
                let inv_freq = if rope_dim == 0 {
                    vec![0.0]
                } else {
                    hearth_core::cpu::rope_inv_freq(10000.0, rope_dim, None, None, 0)
                };
                let mut want = biased.clone();
                if rope_dim > 0 {
                    for head in want[..qd + kvd].chunks_mut(hd) {
                        apply_rope(head, start, &inv_freq, style, magnitude);
                    }
                }
                // Per head: the largest sum's tolerance twice over, and the sin/cos allowance.
                let head_tol = |i: usize| {
                    let h = i - i % hd;
                    let dot = tol_dot[h..h + hd].iter().fold(0f32, |a, &b| a.max(b));
                    let scale = biased[h..h + hd].iter().fold(0f32, |a, &b| a.max(b.abs()));
                    2.0 * dot * magnitude + (2f32).powi(-10) * 2.0 * scale * magnitude + 1e-6
                };

                let mut pieces = upload(&ctx, &w.matrix, &[&w]);
                let wp = pieces.remove(0);
                let key = MatvecKey {
                    dtype,
                    block: 1,
                    norm: true,
                    activation: Activation::None,
                    gated: false,
                    accumulate: false,
                    bias: with_bias,
                    rope: true,
                    kv_f16: f16,
                };
                let dims = uniform_of(
                    &ctx.device,
                    "dims",
                    &ProductDims {
                        rows: rows as u32,
                        cols: cols as u32,
                        group: wp.group,
                        out_stride: qd as u32,
                        row_offset: 0,
                        eps,
                        up_offset: rows as u32,
                        cap: 0.0,
                        scale: 1.0,
                    },
                );
                let step = uniform_of(&ctx.device, "step", &Step { start: start as u32, n_tokens: 1 });
                let rope = uniform_of(
                    &ctx.device,
                    "rope dims",
                    &RopeDims {
                        n_heads: n_heads as u32,
                        n_kv_heads: n_kv as u32,
                        head_dim: hd as u32,
                        n_pairs: (rope_dim / 2) as u32,
                        neox: u32::from(style == RopeStyle::Neox),
                        cache_rows: cache_rows as u32,
                        eps,
                        magnitude,
                    },
                );
                let sentinel = cache_words(&random(cache_rows * kvd, 45), f16);
                let q_init = random(qd, 46);
                let xb = storage_init(&ctx.device, "x", &x);
                let q_b = storage_init(&ctx.device, "q", &q_init);
                let nw = storage_init(&ctx.device, "norm", &norm_weight);
                let bb = storage_init(&ctx.device, "bias", &bias);
                let freq = storage_init(&ctx.device, "inv freq", &inv_freq);
                let k_b = storage_init(&ctx.device, "k cache", &sentinel);
                let v_b = storage_init(&ctx.device, "v cache", &sentinel);
                let mut entries = vec![
                    entry(0, whole(&dims)),
                    entry(1, whole(&step)),
                    entry(2, whole(&xb)),
                    entry(3, whole(&q_b)),
                    entry(7, whole(&nw)),
                    entry(8, whole(&bb)),
                    entry(9, whole(&rope)),
                    entry(10, whole(&freq)),
                    entry(11, whole(&k_b)),
                    entry(12, whole(&v_b)),
                ];
                assert!(kernels.matvec_binds_step(&key));
                entries.extend(wp.weight_entries(4));
                let (gx, gy) = kernels.matvec_grid(1, rows as u32);
                dispatch_once(&ctx, &kernels.matvec(key), &entries, (gx, gy, 1));
                let q: Vec<f32> = read_back(&ctx, &q_b, 0, qd).unwrap();
                let k = cache_values(&read_back::<u32>(&ctx, &k_b, 0, sentinel.len()).unwrap(), f16);
                let v = cache_values(&read_back::<u32>(&ctx, &v_b, 0, sentinel.len()).unwrap(), f16);
                let untouched = cache_values(&sentinel, f16);

                let case = format!(
                    "{label}, {style:?} rope dim {rope_dim}, {dtype:?}/{group}, f16 cache {f16}, bias {with_bias}, \
                     position {start}, magnitude {magnitude}"
                );
                let check = |have: f32, i: usize, cached: bool, what: &str| {
                    let mut tol = head_tol(i);
                    if cached && f16 {
                        tol += want[i].abs() * (2f32).powi(-11);
                    }
                    assert!(
                        (have - want[i]).abs() <= tol,
                        "{case}: {what}: GPU {have}, CPU {} (tolerance {tol})",
                        want[i]
                    );
                };
                for (i, &have) in q.iter().enumerate() {
                    check(have, i, false, &format!("q[{i}]"));
                }
                let row = start % cache_rows;
                for i in 0..kvd {
                    check(k[row * kvd + i], qd + i, true, &format!("k[{i}]"));
                    check(v[row * kvd + i], qd + kvd + i, true, &format!("v[{i}]"));
                }
                for p in (0..cache_rows).filter(|&p| p != row) {
                    assert_eq!(&k[p * kvd..(p + 1) * kvd], &untouched[p * kvd..(p + 1) * kvd], "{case}: k row {p}");
                    assert_eq!(&v[p * kvd..(p + 1) * kvd], &untouched[p * kvd..(p + 1) * kvd], "{case}: v row {p}");
                }
            }
        }
    }
}

/// attention.wgsl in both splits (the row split, which software adapters use while lavapipe's loop
/// limiter allows, and the split kernel with its combine pass), with f32 and f16 caches (the CPU
/// sees the f16-rounded values, so both compute on the same numbers), for an awkward shape (6
/// query heads over 2 KV heads of 40 dimensions, 7 new tokens at positions 29..36 of a 50-row
/// cache); SmolLM2's (9 over 3 heads of 64) with a full chunk of 64 tokens at the end of the
/// longest cache the row split serves (positions 1536..1599); caches past that; decode from the
/// first position to the 4,100th; and windows, ALiBi, soft caps and wide query groups. Tolerance:
/// outputs are convex combinations of values in [-1, 1] with softmax weights, each output a few
/// dozen roundings deep (the split kernel's online softmax adds a rescaling per tile and per
/// split); 1e-6 still flags any misread value, position or split.
#[test]
fn attention_matches_the_cpu_in_both_splits_and_caches() {
    let Some(mut ctx) = context() else { return };
    // (shape, sliding window, ALiBi, soft cap): the windowed cases keep a ring of window + n - 1
    // rows, as the engine does, so positions wrap around it; the ALiBi cases have 6 and 9 heads (not
    // powers of two, so both of ALiBi's slope sequences appear); the capped ones Gemma 2's tanh cap
    // (small, so that it bends scores of a few units).
    for (shape, window, alibi, softcap) in [
        ((6usize, 2usize, 40usize, 50usize, 29usize, 7usize), None, false, None),
        ((9, 3, 64, 1600, 1536, 64), None, false, None),
        ((6, 2, 40, 2000, 1990, 5), None, false, None),
        ((6, 2, 40, 50, 29, 7), Some(8), false, None),
        ((9, 3, 64, 1600, 1536, 64), Some(100), false, None),
        // Gemma 3's heads of 256: past 423 visible positions the row split would hit lavapipe's
        // loop limiter, so software adapters take the split kernel here too.
        ((4, 1, 256, 600, 590, 6), None, false, None),
        ((4, 1, 256, 600, 590, 6), Some(512), false, None),
        ((6, 6, 40, 50, 29, 7), None, true, None),
        ((9, 9, 16, 2000, 1990, 5), None, true, None),
        ((6, 2, 40, 50, 29, 7), Some(8), false, Some(0.5f32)),
        ((6, 2, 40, 2000, 1990, 5), None, false, Some(0.5)),
        // Decode at positions 0, 6, 129, 1,000 and 4,099 (one to 65 tiles of the split kernel,
        // shared among its 64 splits), heads of 64, 128 and 256.
        ((6, 2, 40, 50, 0, 1), None, false, None),
        ((9, 3, 64, 50, 6, 1), None, false, None),
        ((8, 2, 128, 200, 129, 1), None, false, None),
        ((9, 3, 64, 1001, 1000, 1), None, false, None),
        ((9, 3, 64, 4100, 4099, 1), None, false, None),
        ((4, 1, 256, 4100, 4099, 1), Some(512), false, None),
        ((8, 8, 64, 4100, 4099, 1), None, true, Some(0.5)),
        // 12 query heads per KV head: two workgroups of the split kernel per KV head (8 + 4).
        ((12, 1, 32, 300, 250, 3), None, false, None),
        ((24, 2, 32, 300, 0, 7), Some(5), false, None),
        ((4, 1, 256, 1024, 576, 45), Some(512), false, None),
        ((4, 1, 256, 1024, 576, 45), None, false, None),
        ((4, 1, 256, 1024, 512, 64), Some(512), false, None),
        // Prefill 33,000 positions in with 256-wide heads: one split of 516 tiles would run past
        // lavapipe's loop limiter, so software adapters take more.
        ((4, 1, 256, 33000, 32990, 3), None, false, None),
    ] {
        for software in [true, false] {
            ctx.software = software;
            for f16 in [false, true] {
                check_attention(&ctx, shape, window, alibi, softcap, f16);
            }
        }
    }
}

fn check_attention(
    ctx: &GpuContext,
    shape: (usize, usize, usize, usize, usize, usize),
    window: Option<usize>,
    alibi: bool,
    softcap: Option<f32>,
    f16: bool,
) {
    let (n_heads, n_kv, hd, capacity, start, n) = shape;
    let rows = window.map_or(capacity, |w| w + n - 1);
    let mut c = config(n_heads, n_kv, hd, hd, RopeStyle::Neox);
    c.attn_softcap = softcap;
    let alibi_max_bias = if alibi { 8.0f32 } else { 0.0 };
    if alibi {
        (c.position, c.rope, c.alibi) = (PositionKind::Alibi, None, Some(AlibiConfig { max_bias: alibi_max_bias }));
    }
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    let q = random(n * qd, 11);
    let kernels = Kernels::new(&ctx.device, ctx.software);
    let round = |v: Vec<f32>| if f16 { v.into_iter().map(f16_round).collect() } else { v };
    let k = round(random(rows * kvd, 12));
    let v = round(random(rows * kvd, 13));
    let mut want = vec![0f32; n * qd];
    for t in 0..n {
        let out = &mut want[t * qd..(t + 1) * qd];
        attention_at(&c, &q[t * qd..(t + 1) * qd], &k, &v, start + t, window, rows, out);
    }

    let scale = 1.0 / (hd as f32).sqrt();
    let dims = AttentionDims::new(n_heads, n_kv, hd, capacity, scale, rows, window, alibi_max_bias, softcap);
    let step = uniform(&ctx.device, "step", &[start as u32, n as u32]);
    let q_b = storage_init(&ctx.device, "q", &q);
    let k_b = storage_init(&ctx.device, "k", &cache_words(&k, f16));
    let v_b = storage_init(&ctx.device, "v", &cache_words(&v, f16));
    let scratch = storage(&ctx.device, "scratch", attention::scratch_len(&kernels, &dims, n)).unwrap();
    let out = storage(&ctx.device, "out", n * qd).unwrap();
    let tokens = storage(&ctx.device, "tokens", n).unwrap();
    let buffers = AttentionBuffers {
        step: &step,
        q: &q_b,
        k_cache: &k_b,
        v_cache: &v_b,
        out: &out,
        scratch: &scratch,
        tokens: &tokens,
        spans: false,
    };
    let dispatches = attention::prepare(&kernels, &ctx.device, dims, f16, &buffers).unwrap();
    run_dispatches(ctx, &dispatches, Step { start: start as u32, n_tokens: n as u32 });
    let got: Vec<f32> = read_back(ctx, &out, 0, n * qd).unwrap();
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(
        worst <= 1e-6,
        "shape {shape:?}, window {window:?}, ALiBi {alibi}, soft cap {softcap:?}, software split {}, f16 cache {f16}: \
         GPU and CPU differ by {worst}",
        ctx.software
    );
}

/// attention.wgsl with SPANS (an encoder's texts packed into one step): each query attends both
/// ways over its own text alone, as the CPU engine's `attention_at` does over that text's keys.
/// Texts of 1, 7, 64, 65 and 200 tokens in one step (tiles split mid-text, a text of one tile and
/// one past it), heads of 32 (MiniLM), 64 and 128, grouped and not, both attention splits, f32
/// cache. Tolerance as `check_attention`'s: the same sums in another order.
#[test]
fn attention_over_spans_sees_each_text_whole_and_nothing_else() {
    let Some(mut ctx) = context() else { return };
    let lengths = [7usize, 1, 200, 64, 65];
    let n: usize = lengths.iter().sum();
    // The token buffer: ids (unused here), then each token's first and last visible positions.
    let mut spans = vec![0u32; 3 * n];
    let mut at = 0;
    for len in lengths {
        for t in at..at + len {
            spans[n + t] = at as u32;
            spans[2 * n + t] = (at + len - 1) as u32;
        }
        at += len;
    }
    for (n_heads, n_kv, hd) in [(12, 12, 32), (9, 3, 64), (8, 2, 128)] {
        let c = config(n_heads, n_kv, hd, hd, RopeStyle::Neox);
        let (qd, kvd) = (n_heads * hd, n_kv * hd);
        let q = random(n * qd, 31);
        let k = random(n * kvd, 32);
        let v = random(n * kvd, 33);
        let mut want = vec![0f32; n * qd];
        let mut first = 0;
        for len in lengths {
            let (keys, values) = (&k[first * kvd..(first + len) * kvd], &v[first * kvd..(first + len) * kvd]);
            for t in first..first + len {
                let out = &mut want[t * qd..(t + 1) * qd];
                attention_at(&c, &q[t * qd..(t + 1) * qd], keys, values, len - 1, None, len, out);
            }
            first += len;
        }
        for software in [true, false] {
            ctx.software = software;
            let kernels = Kernels::new(&ctx.device, ctx.software);
            let scale = 1.0 / (hd as f32).sqrt();
            let dims = AttentionDims::new(n_heads, n_kv, hd, n, scale, n, None, 0.0, None);
            let step = uniform(&ctx.device, "step", &[0, n as u32]);
            let tokens = storage_init(&ctx.device, "tokens", &spans);
            let (q_b, k_b, v_b) = (
                storage_init(&ctx.device, "q", &q),
                storage_init(&ctx.device, "k", &k),
                storage_init(&ctx.device, "v", &v),
            );
            let scratch = storage(&ctx.device, "scratch", attention::scratch_len(&kernels, &dims, n)).unwrap();
            let out = storage(&ctx.device, "out", n * qd).unwrap();
            let buffers = AttentionBuffers {
                step: &step,
                q: &q_b,
                k_cache: &k_b,
                v_cache: &v_b,
                out: &out,
                scratch: &scratch,
                tokens: &tokens,
                spans: true,
            };
            let dispatches = attention::prepare(&kernels, &ctx.device, dims, false, &buffers).unwrap();
            run_dispatches(&ctx, &dispatches, Step { start: 0, n_tokens: n as u32 });
            let got: Vec<f32> = read_back(&ctx, &out, 0, n * qd).unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-6, "heads {n_heads}/{n_kv} of {hd}, software split {software}: differ by {worst}");
        }
    }
}

/// Weight pieces: stacking by rows and splitting to a binding limit are exact rearrangements of
/// the stored bytes (checked by decoding), and a row wider than the limit is a clear error.
#[test]
fn stacking_and_splitting_weights_keeps_every_row() {
    for (dtype, group) in ENCODINGS {
        let a = packed(0, vec![5, 256], &random(5 * 256, 21), dtype, group);
        let b = packed(1, vec![3, 256], &random(3 * 256, 22), dtype, group);
        let stacked = StoredMatrix::stack("ab", &[&a.matrix, &b.matrix]).unwrap();
        assert_eq!(stacked.rows, 8);
        let mut expected = a.tensor.to_f32();
        expected.extend(b.tensor.to_f32());
        let widest = stacked.part_lengths().iter().map(|l| l / 8).max().unwrap();
        let ranges = stacked.row_ranges(3 * widest + 4).unwrap();
        assert_eq!(ranges, vec![0..3, 3..6, 6..8], "{dtype:?}");
        let pieces: Vec<_> = ranges.into_iter().map(|r| stacked.rows_range(r)).collect();
        let mut decoded = Vec::new();
        for piece in &pieces {
            // Parts laid out as a package stores them (docs/FORMAT.md: each at a 256-byte boundary).
            let mut bytes = Vec::new();
            for part in piece.gather(&[&a.bytes, &b.bytes]) {
                bytes.resize(bytes.len().next_multiple_of(256), 0);
                bytes.extend_from_slice(&part);
            }
            let t = Tensor::from_bytes("piece", vec![piece.rows, 256], dtype, piece.group, &bytes).unwrap();
            decoded.extend(t.to_f32());
        }
        assert_eq!(decoded, expected, "{dtype:?}");
        assert_eq!(stacked.row_ranges(u64::MAX).unwrap(), vec![0..8], "a tensor that fits is one piece");
        let err = stacked.row_ranges(widest / 2).unwrap_err().to_string();
        assert!(err.contains("exceeds this adapter's storage binding limit"), "{err}");
        let other = packed(2, vec![2, 128], &random(256, 23), dtype, group.min(128));
        assert!(
            StoredMatrix::stack("x", &[&a.matrix, &other.matrix]).is_none(),
            "rows of different lengths must not stack"
        );
    }
}

/// norm.wgsl: RMSNorm against the CPU engine's, LayerNorm against an f64 computation, for 5 tokens
/// of 300 values (not a multiple of anything) offset by 3 so that LayerNorm's mean matters.
/// Both variants: one invocation per token (software adapters) and one workgroup per token (GPUs).
/// Tolerance: the invocation per token sums the squares in the CPU's order, so only the final
/// sqrt / divide / products round differently: a few ulps (4ε relative). The workgroup sums 64
/// strided shares (4 or 5 terms each) in a tree of 6 levels: its sum of 300 positive squares is
/// within 10ε (relative) of the exact one, the CPU's sequential sum within 299ε, so the two inverse
/// roots differ by at most (299 + 10) / 2 ε, and 160ε with the final roundings. rms_norm_add, run
/// twice, is held to twice each. LayerNorm against f64: the f32 mean and variance of 300 terms carry
/// at most ~300ε relative error, which the normalized output inherits; 1e-4 absolute on outputs of
/// magnitude ~3 covers it.
#[test]
fn norms_match_their_references() {
    let Some(ctx) = context() else { return };
    for software in [true, false] {
        norms_match_their_references_with(&ctx, software);
    }
}

fn norms_match_their_references_with(ctx: &GpuContext, software: bool) {
    let kernels = Kernels::new(&ctx.device, software);
    let grid = norm_grid(software, 5);
    let (rms_tolerance, add_tolerance) = if software { (4.0, 16.0) } else { (160.0, 320.0) };
    let (n, h) = (5usize, 300usize);
    let x: Vec<f32> = random(n * h, 31).iter().map(|v| 3.0 + 2.0 * v).collect();
    let weight: Vec<f32> = random(h, 32).iter().map(|v| 1.0 + 0.5 * v).collect();
    let bias = random(h, 33);
    let eps = 1e-5f32;
    let run = |pipeline: &wgpu::ComputePipeline, with_bias: bool| -> Vec<f32> {
        let dims = uniform_of(&ctx.device, "dims", &NormDims { hidden: h as u32, eps });
        let step = uniform(&ctx.device, "step", &[0, n as u32]);
        let xb = storage_init(&ctx.device, "x", &x);
        let wb = storage_init(&ctx.device, "weight", &weight);
        let bb = storage_init(&ctx.device, "bias", &bias);
        let out = storage(&ctx.device, "out", n * h).unwrap();
        let mut entries =
            vec![entry(0, whole(&dims)), entry(1, whole(&step)), entry(2, whole(&xb)), entry(3, whole(&wb))];
        entries.push(entry(4, whole(&out)));
        if with_bias {
            entries.push(entry(5, whole(&bb)));
        }
        dispatch_once(ctx, pipeline, &entries, grid);
        read_back(ctx, &out, 0, n * h).unwrap()
    };

    let got = run(&kernels.rms_norm(), false);
    let mut want = vec![0f32; n * h];
    rms_norm(&x, &weight, eps, h, &mut want);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= rms_tolerance * f32::EPSILON * b.abs() + 1e-7,
            "rms_norm value {i} (software {software}): GPU {a}, CPU {b}"
        );
    }

    // rms_norm_add adds into what `out` holds: zero here, so it must equal rms_norm; and run twice
    // into the same buffer, twice that.
    let add_twice = {
        let dims = uniform_of(&ctx.device, "dims", &NormDims { hidden: h as u32, eps });
        let step = uniform(&ctx.device, "step", &[0, n as u32]);
        let xb = storage_init(&ctx.device, "x", &x);
        let wb = storage_init(&ctx.device, "weight", &weight);
        let residual: Vec<f32> = random(n * h, 34);
        let out = storage_init(&ctx.device, "out", &residual);
        let entries = [
            entry(0, whole(&dims)),
            entry(1, whole(&step)),
            entry(2, whole(&xb)),
            entry(3, whole(&wb)),
            entry(4, whole(&out)),
        ];
        dispatch_once(ctx, &kernels.rms_norm_add(), &entries, grid);
        dispatch_once(ctx, &kernels.rms_norm_add(), &entries, grid);
        let got: Vec<f32> = read_back(ctx, &out, 0, n * h).unwrap();
        got.iter().zip(&residual).map(|(g, r)| g - r).collect::<Vec<f32>>()
    };
    for (i, (a, b)) in add_twice.iter().zip(&want).enumerate() {
        assert!(
            (a - 2.0 * b).abs() <= add_tolerance * f32::EPSILON * b.abs() + 1e-6,
            "rms_norm_add value {i} (software {software}): GPU {a}, CPU 2 x {b}"
        );
    }

    let got = run(&kernels.layer_norm(), true);
    for t in 0..n {
        let row: Vec<f64> = x[t * h..(t + 1) * h].iter().map(|&v| v as f64).collect();
        let mean = row.iter().sum::<f64>() / h as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / h as f64;
        for i in 0..h {
            let want = (row[i] - mean) / (var + eps as f64).sqrt() * weight[i] as f64 + bias[i] as f64;
            let have = got[t * h + i] as f64;
            assert!(
                (have - want).abs() <= 1e-4,
                "layer_norm token {t} value {i} (software {software}): GPU {have}, f64 {want}"
            );
        }
    }
}
