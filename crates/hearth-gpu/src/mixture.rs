//! A mixture of experts' feed-forward on the GPU (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, dots.llm1): the
//! router's product, then moe.wgsl's `moe_route` on the device (softmax or sigmoid, the selection
//! bias, top-k, the weights' rescaling and scale, each expert's token count,
//! step uniform and grids), `moe_gather`, each expert's gated product and down product launched
//! indirectly (an expert no token chose gets no workgroups, so a decode step reads only the chosen
//! experts' weights; a prompt runs each expert once over the tokens that chose it), and
//! `moe_combine` adding the weighted outputs (and the shared expert's) to the residual stream.
//! Per layer: norm, router, route, gather, 2 per expert, the shared expert's 2, combine.

use hearth_core::manifest::{Gating, MoeConfig};
use hearth_core::{HearthError, Result};

use crate::builder::{Builder, Dispatch, Fuse, GatedWeights, NormBuffers, Offsets, Product, Step};
use crate::kernels::{bind_group, entry, storage, uniform_of, whole, Activation, PREFILL_BLOCK, WORKGROUP};
use crate::weights::WeightBuffer;

/// Bytes between two experts' step uniforms (WebGPU's uniform offset alignment).
const STEP_STRIDE: u64 = 256;
/// Bytes of one expert's indirect arguments: its gated product's grid, then its down product's.
const ARGS_STRIDE: u64 = 24;
/// The most experts a token uses (moe.wgsl's `USED_MAX`).
pub const USED_MAX: usize = 16;
/// The most loop iterations moe_route's choice may take on software adapters (lavapipe's limiter
/// stops an invocation at 65,535: kernels.rs's `ROWS_ATTENTION_MAX_ITERATIONS` keeps the same margin).
const ROUTE_LOOPS_SOFTWARE_MAX: usize = 60_000;

/// moe.wgsl's `Dims`, field for field (its `vec2<u32>` grids fall on 8-byte offsets here too).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct MoeDims {
    experts: u32,
    used: u32,
    normalize: u32,
    hidden: u32,
    region: u32,
    /// 0: no shared expert; 1: scaled by the sigmoid of its gate; 2: unscaled.
    has_shared: u32,
    gate_up_decode: [u32; 2],
    gate_up_prefill: [u32; 2],
    down_decode: [u32; 2],
    down_prefill: [u32; 2],
    prefill_tokens: u32,
    /// 0: softmax; 1: sigmoid.
    gating: u32,
    has_bias: u32,
    scale: f32,
    residual_scale: f32,
}

/// The buffers every mixture layer shares (they run one after another).
pub struct MixtureScratch {
    logits: wgpu::Buffer,
    /// Each expert's inputs, then outputs, `region` values apart.
    packed: wgpu::Buffer,
    expert_out: wgpu::Buffer,
    /// Each expert's gated activations, `hidden_region` values apart.
    hidden: wgpu::Buffer,
    region: u32,
    hidden_region: u32,
    /// The shared expert's activations and output (one value when there is none).
    shared_hidden: wgpu::Buffer,
    shared_out: wgpu::Buffer,
    shared_gate: wgpu::Buffer,
}

impl MixtureScratch {
    pub fn new(device: &wgpu::Device, moe: &MoeConfig, hidden: usize, chunk: usize) -> Result<Self> {
        // Storage offsets are multiples of 256 bytes: 64 values.
        let region = (chunk * hidden).next_multiple_of(64);
        let hidden_region = (chunk * moe.expert_ffn_size).next_multiple_of(64);
        let shared = moe.shared_ffn_size.unwrap_or(0);
        let words = |what: &str, n: usize| -> Result<u32> {
            u32::try_from(n).map_err(|_| HearthError::AdapterLimit(format!("the experts' {what} pass 2^32 values")))
        };
        Ok(MixtureScratch {
            logits: storage(device, "router logits", chunk * moe.experts)?,
            packed: storage(device, "experts' inputs", moe.experts * region)?,
            expert_out: storage(device, "experts' outputs", moe.experts * region)?,
            hidden: storage(device, "experts' activations", moe.experts * hidden_region)?,
            region: words("inputs", region)?,
            hidden_region: words("activations", hidden_region)?,
            shared_hidden: storage(device, "shared expert's activations", (chunk * shared).max(1))?,
            shared_out: storage(device, "shared expert's output", if shared > 0 { chunk * hidden } else { 1 })?,
            shared_gate: storage(device, "shared expert's gate", chunk)?,
        })
    }

    pub fn buffers(self) -> [wgpu::Buffer; 7] {
        [self.logits, self.packed, self.expert_out, self.hidden, self.shared_hidden, self.shared_out, self.shared_gate]
    }
}

/// One layer's mixture: its dispatches, and what they keep alive.
pub struct Mixture {
    pub dispatches: Vec<Dispatch>,
    /// Each expert's step uniform: its token count in the last step at word `64 e + 1`.
    pub steps: wgpu::Buffer,
    pub weights: Vec<WeightBuffer>,
    pub buffers: Vec<wgpu::Buffer>,
}

/// Layer `l`'s mixture over `x` (the residual stream, added to), its input normed by `ffn_norm`.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    b: &mut Builder<'_>,
    l: usize,
    moe: &MoeConfig,
    activation: Activation,
    ffn_norm: &NormBuffers,
    scratch: &MixtureScratch,
    x: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Mixture> {
    if moe.used > USED_MAX {
        return Err(HearthError::UnsupportedSource(format!(
            "{} experts per token: the GPU engine takes at most {USED_MAX}",
            moe.used
        )));
    }
    // moe_route's choice of a token's experts loops about experts × used × (used + 1) times in one
    // invocation; lavapipe stops an invocation past 65,535 iterations and carries on with wrong
    // values (attention.wgsl says more). Real mixtures stay far below (512 experts, 10 used: 56k).
    let route_loops = moe.experts * moe.used * (moe.used + 1);
    if b.kernels.software && route_loops > ROUTE_LOOPS_SOFTWARE_MAX {
        return Err(HearthError::AdapterLimit(format!(
            "{} experts of which {} per token: choosing them would run past a software adapter's loop limit",
            moe.experts, moe.used
        )));
    }
    let device = b.device().clone();
    let c = &b.manifest.config;
    let (h, experts, used) = (c.hidden_size as u32, moe.experts as u32, moe.used as u32);
    let chunk = scratch.region as usize / c.hidden_size;
    let p = |s: &str| format!("blk.{l}.{s}.weight");
    let normed = b.normed.clone();
    let mut dispatches = vec![b.norm_pass(x, ffn_norm, step, &normed)];
    let router = b.split(&p("ffn_gate_inp"))?;
    dispatches.extend(b.product(Product {
        pieces: &router,
        input: &normed,
        output: &scratch.logits,
        out_stride: experts,
        step,
        fuse: Fuse::default(),
    })?);
    let mut weights = router;

    let routes = storage(&device, "routes", chunk * moe.used * 4)?;
    let steps = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("experts' steps"),
        size: moe.experts as u64 * STEP_STRIDE,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let args = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("experts' grids"),
        size: moe.experts as u64 * ARGS_STRIDE,
        usage: wgpu::BufferUsages::INDIRECT | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    // moe.wgsl's `has_shared`: none, scaled by the sigmoid of its gate, or unscaled.
    let (has_shared, shared_gate_weight) = match (moe.shared_ffn_size, moe.shared_unscaled) {
        (None, _) => (0, b.no_norm.clone()),
        (Some(_), false) => (1, b.vectors("shared expert's gate", &[p("ffn_gate_inp_shexp")], c.hidden_size)?),
        (Some(_), true) => (2, b.no_norm.clone()),
    };
    let selection_bias = match moe.selection_bias {
        true => b.vectors("selection bias", &[format!("blk.{l}.exp_probs_b.bias")], moe.experts)?,
        false => b.no_norm.clone(),
    };
    let kernels = &b.kernels;
    let grid = |block: u32, rows: usize| kernels.matvec_grid(block, rows as u32);
    let (gate_up_decode, gate_up_prefill) = (grid(1, moe.expert_ffn_size), grid(PREFILL_BLOCK, moe.expert_ffn_size));
    let (down_decode, down_prefill) = (grid(1, c.hidden_size), grid(PREFILL_BLOCK, c.hidden_size));
    let dims = uniform_of(
        &device,
        "moe dims",
        &MoeDims {
            experts,
            used,
            normalize: u32::from(moe.normalize),
            hidden: h,
            region: scratch.region,
            has_shared,
            gate_up_decode: [gate_up_decode.0, gate_up_decode.1],
            gate_up_prefill: [gate_up_prefill.0, gate_up_prefill.1],
            down_decode: [down_decode.0, down_decode.1],
            down_prefill: [down_prefill.0, down_prefill.1],
            prefill_tokens: kernels.matvec_tokens(PREFILL_BLOCK),
            gating: u32::from(moe.gating == Gating::Sigmoid),
            has_bias: u32::from(moe.selection_bias),
            scale: moe.weights_scale,
            residual_scale: c.residual_scale.unwrap_or(1.0),
        },
    );
    let route = kernels.moe("moe_route");
    let group = bind_group(
        &device,
        &route,
        &[
            entry(0, whole(&dims)),
            entry(1, whole(step)),
            entry(2, whole(&scratch.logits)),
            entry(3, whole(&routes)),
            entry(4, whole(&steps)),
            entry(5, whole(&args)),
            entry(6, whole(&normed)),
            entry(10, whole(&scratch.shared_gate)),
            entry(12, whole(&shared_gate_weight)),
            entry(13, whole(&selection_bias)),
        ],
    );
    dispatches.push(Dispatch::single(route, group, Box::new(|_| Some((1, 1, 1)))));
    let gather = kernels.moe("moe_gather");
    let group = bind_group(
        &device,
        &gather,
        &[
            entry(0, whole(&dims)),
            entry(1, whole(step)),
            entry(3, whole(&routes)),
            entry(6, whole(&normed)),
            entry(7, whole(&scratch.packed)),
        ],
    );
    dispatches.push(Dispatch::single(
        gather,
        group,
        Box::new(move |s: Step| Some((h.div_ceil(WORKGROUP), s.n_tokens * used, 1))),
    ));

    // Each expert's products, over its slices of the packed buffers, its own step uniform, and the
    // grids moe_route wrote.
    let (region_bytes, hidden_bytes) = (u64::from(scratch.region) * 4, u64::from(scratch.hidden_region) * 4);
    let one_piece = |pieces: Vec<WeightBuffer>, what: &str| -> Result<Vec<WeightBuffer>> {
        if pieces.len() != 1 {
            return Err(HearthError::AdapterLimit(format!(
                "layer {l}'s expert {what} does not fit one storage binding of this adapter"
            )));
        }
        Ok(pieces)
    };
    for e in 0..moe.experts {
        let gate_up = match b.gated(&p(&format!("ffn_gate.{e}")), &p(&format!("ffn_up.{e}")))? {
            GatedWeights::Fused(pieces) => one_piece(pieces, "gate and up")?,
            GatedWeights::Separate(_) => {
                return Err(HearthError::UnsupportedSource(format!(
                    "layer {l}'s expert {e} keeps gate and up in different encodings, which the GPU engine does not run"
                )))
            }
        };
        let down = one_piece(b.split(&p(&format!("ffn_down.{e}")))?, "down")?;
        let e = e as u64;
        let step_at = e * STEP_STRIDE;
        let mut products = b.product_at(
            Product {
                pieces: &gate_up,
                input: &scratch.packed,
                output: &scratch.hidden,
                out_stride: moe.expert_ffn_size as u32,
                step: &steps,
                fuse: Fuse { activation, gated: true, ..Default::default() },
            },
            Offsets { input: e * region_bytes, output: e * hidden_bytes, step: step_at },
        )?;
        products.extend(b.product_at(
            Product {
                pieces: &down,
                input: &scratch.hidden,
                output: &scratch.expert_out,
                out_stride: h,
                step: &steps,
                fuse: Fuse::default(),
            },
            Offsets { input: e * hidden_bytes, output: e * region_bytes, step: step_at },
        )?);
        for (k, mut d) in products.into_iter().enumerate() {
            d.indirect = Some((args.clone(), e * ARGS_STRIDE + 12 * k as u64));
            dispatches.push(d);
        }
        weights.extend(gate_up.into_iter().chain(down));
    }

    if let Some(rows) = moe.shared_ffn_size {
        let gate_up = match b.gated(&p("ffn_gate_shexp"), &p("ffn_up_shexp"))? {
            GatedWeights::Fused(pieces) => pieces,
            GatedWeights::Separate(_) => {
                return Err(HearthError::UnsupportedSource(format!(
                    "layer {l}'s shared expert keeps gate and up in different encodings, which the GPU engine does \
                     not run"
                )))
            }
        };
        let down = b.split(&p("ffn_down_shexp"))?;
        dispatches.extend(b.product(Product {
            pieces: &gate_up,
            input: &normed,
            output: &scratch.shared_hidden,
            out_stride: rows as u32,
            step,
            fuse: Fuse { activation, gated: true, ..Default::default() },
        })?);
        dispatches.extend(b.product(Product {
            pieces: &down,
            input: &scratch.shared_hidden,
            output: &scratch.shared_out,
            out_stride: h,
            step,
            fuse: Fuse::default(),
        })?);
        weights.extend(gate_up.into_iter().chain(down));
    }
    let combine = b.kernels.moe("moe_combine");
    let group = bind_group(
        &device,
        &combine,
        &[
            entry(0, whole(&dims)),
            entry(1, whole(step)),
            entry(3, whole(&routes)),
            entry(8, whole(&scratch.expert_out)),
            entry(9, whole(&scratch.shared_out)),
            entry(10, whole(&scratch.shared_gate)),
            entry(11, whole(x)),
        ],
    );
    dispatches.push(Dispatch::single(
        combine,
        group,
        Box::new(move |s: Step| Some((h.div_ceil(WORKGROUP), s.n_tokens, 1))),
    ));
    Ok(Mixture { dispatches, steps, weights, buffers: vec![dims, routes, args, shared_gate_weight, selection_bias] })
}
