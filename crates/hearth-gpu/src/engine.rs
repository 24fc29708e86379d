//! The forward pass on the GPU (`builder.rs` has the pieces it is assembled from). Everything is
//! prepared at load: weights uploaded once (Q/K/V and gate/up stacked into one matrix each, large
//! tables split to fit the adapter's bindings), every activation and KV-cache buffer allocated
//! once, every pipeline and bind group built once. A step writes two small buffers (its position and its tokens), records the
//! prepared dispatches into one command encoder, and submits once.
//!
//! Per layer of a GPU's decode step: [norm + QKV + RoPE + KV store] → [attention split] →
//! ([attention combine] past 4 tiles of positions) → [output proj + residual] → [norm + gate/up +
//! SwiGLU] → [down proj + residual]: five dispatches, six at longer contexts (brackets are one
//! kernel). Prompt chunks and software adapters run RoPE + KV store as a pass after the QKV
//! product; software adapters run attention as one dispatch while they can (`attention.rs`).
//! Gemma 3 keeps that pass for its QK-norm, GeGLU for SwiGLU, and adds two dispatches: the norms
//! of the attention and feed-forward outputs, each added to the residual in the same pass.
//! LayerNorm models (BLOOM, GPT-2) run each norm as a pass of its own, put their biases into the
//! products, use a plain GELU MLP, and either add ALiBi biases to the attention scores (the RoPE
//! kernel then only stores keys and values) or add a learned position row to each embedding.

use std::collections::{HashMap, VecDeque};

#[cfg(not(target_arch = "wasm32"))]
use hearth_core::generate::Backend;
use hearth_core::generate::{ring_keeps, QueuedStep};
use hearth_core::logprobs::StepLogprobs;
use hearth_core::manifest::{
    Activation as ModelActivation, FfnKind, Manifest, ModelConfig, PositionKind, RopeStyle, ARCHITECTURES,
};
use hearth_core::package::TensorSource;
use hearth_core::plan::GpuPlan;
use hearth_core::sampling::{Sampler, SamplingParams};
use hearth_core::{HearthError, Result};

use crate::attention::{self, AttentionBuffers, AttentionDims};
use crate::builder::{Builder, Dispatch, Fuse, GatedWeights, Product, RopeDims, RopeStore, Step};
use crate::context::GpuContext;
use crate::kernels::{
    bind_group, entry, read_back_async, storage, storage_limit, uniform_of, whole, Activation, EmbedRows, Kernels,
    QkNormDims, DECODE_ROWS_MAX, WORKGROUP,
};
use crate::mixture::{self, MixtureScratch};
use crate::profile::{KernelTime, Profiler};
use crate::sampler::{result_bytes, GpuSampler, Penalties, RESULT_WORDS};
use crate::weights::{Pending, WeightBuffer};

/// Most tokens one forward pass takes; longer prompts are run in chunks of this many.
pub const MAX_CHUNK: usize = 64;

/// Decode steps submitted at most before the first one's token is read back
/// ([`GpuEngine::queue_step`]): while the host reads one token, the GPU runs the next two
/// steps, so it never waits for the host's round trip (a map of the result, the text, the next
/// submission). Steps found unneeded at a stop cost the GPU that many tokens' work at most.
pub const QUEUE_DEPTH: usize = 3;

/// The engine's buffers that a step writes or reads back.
struct Buffers {
    step: wgpu::Buffer,
    tokens: wgpu::Buffer,
    x: wgpu::Buffer,
    last: wgpu::Buffer,
    logits: wgpu::Buffer,
    logits_all: wgpu::Buffer,
    /// Where each queued step's result (its id, and its log-probabilities when asked for) is
    /// copied for reading back: one per step that can be queued, used in turn.
    staging: Vec<wgpu::Buffer>,
}

/// A step submitted whose token has not been read back.
struct Queued {
    /// Its buffer in `Buffers::staging`, mapped once the step has run.
    slot: usize,
    /// Positions it took.
    tokens: usize,
    logprobs: Option<usize>,
    mapped: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    /// Natively, what the host waits for (in a browser the map resolves by itself).
    submission: wgpu::SubmissionIndex,
}

/// A step's input tokens.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// Written from the host.
    Tokens(&'a [u32]),
    /// The token the last step chose, copied on the GPU from the sampler's result.
    Chosen,
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::Tokens(tokens) => tokens.len(),
            Input::Chosen => 1,
        }
    }
}

/// Figures of one step, for benchmarks: how many dispatches it recorded and how many bytes of
/// weights and of the KV cache its kernels read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounts {
    pub dispatches: usize,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
}

/// How much of its cache one layer's attention reads.
struct AttentionReads {
    /// Positions a query sees at most (the window's, or the cache's).
    visible: usize,
    bytes_per_position: u64,
}

/// What runs after the layers in a chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Nothing (a prompt chunk before the last).
    None,
    /// Output head for the last token: logits.
    Last,
    /// Output head for the last token, then the sampler: one token id, and with Some(k) its
    /// log-probability and k alternatives, copied into staging buffer `slot`.
    Sample { logprobs: Option<usize>, slot: usize },
    /// Output head for every token.
    All,
}

pub struct GpuEngine {
    ctx: GpuContext,
    config: ModelConfig,
    /// Positions the KV cache holds.
    capacity: usize,
    position: usize,
    /// One past the last position written since the last reset (queued steps that were dropped
    /// wrote past `position`): what a windowed layer's ring may hold, for `truncate`.
    written_end: usize,
    /// Steps submitted and not read back, oldest first.
    queue: VecDeque<Queued>,
    /// The staging buffer the next queued step takes.
    next_slot: usize,
    /// Tokens per forward pass (`MAX_CHUNK`, or fewer when attention's scratch would not fit a binding).
    chunk: usize,
    kv_f16: bool,
    /// Bytes of every layer's K and V cache (windowed layers keep rings).
    kv_cache_bytes: u64,
    /// Bytes of weights a decode step reads: every matrix once, one row of the embedding tables.
    weight_bytes: u64,
    /// What each layer's attention reads of its cache.
    attention_reads: Vec<AttentionReads>,
    /// Each windowed layer's window and ring rows (None: a row per position), for `truncate`.
    rings: Vec<Option<(usize, usize)>>,
    last_step: StepCounts,
    /// What each pipeline is called in profiles.
    labels: HashMap<wgpu::ComputePipeline, String>,
    buffers: Buffers,
    /// The layers, in order, for any number of tokens.
    layers: Vec<Dispatch>,
    /// Final norm + output head for the last token only, of a longer step (its row copied to
    /// `last`) and of a step of one token (reading x: no copy).
    head_last: Vec<Dispatch>,
    head_one: Vec<Dispatch>,
    sampler: GpuSampler,
    /// Final norm + output head for every token (logits of every position, for tests).
    head_all: Vec<Dispatch>,
    /// A mixture's per-layer expert step uniforms (each expert's token count of the last step; none
    /// for its dense layers).
    expert_steps: Vec<Option<wgpu::Buffer>>,
    // Kept alive for the bind groups.
    _weights: Vec<WeightBuffer>,
    _scratch: Vec<wgpu::Buffer>,
}

/// The decoder engine, waiting for its weights (see [`Pending`]).
pub type PendingEngine = Pending<GpuEngine>;

impl GpuEngine {
    /// Upload the weights of `source` and prepare every dispatch. `max_context` caps the KV cache
    /// (it defaults to the model's context length). The KV cache is f16 when `ctx.kv_f16` says so.
    pub fn new(ctx: GpuContext, source: &dyn TensorSource, max_context: Option<usize>) -> Result<Self> {
        Self::prepare(ctx, source.manifest(), &source.origin(), max_context)?.load(source)?.finish()
    }

    /// Create every buffer (the weights' empty), pipeline and bind group from the manifest alone.
    pub fn prepare(
        ctx: GpuContext,
        manifest: &Manifest,
        origin: &str,
        max_context: Option<usize>,
    ) -> Result<PendingEngine> {
        let m = manifest;
        let c = m.config.clone();
        if !ARCHITECTURES.contains(&m.architecture.as_str()) {
            return Err(HearthError::UnsupportedArchitecture(m.architecture.clone()));
        }
        c.validate().map_err(|e| HearthError::bad_package(origin, e))?;
        if c.encoder.is_some() {
            return Err(HearthError::UnsupportedSource(format!(
                "{origin}: `{}` is an encoder: it gives embeddings (GpuEncoder), not generated text",
                m.architecture
            )));
        }
        if c.moe.is_some() && (c.post_norms || c.linear_bias) {
            return Err(HearthError::UnsupportedSource(format!(
                "{origin}: `{}` is a mixture of experts with post-norms or MLP biases, which the GPU engine does not run",
                m.architecture
            )));
        }
        // A post-norm's product is normed before its add (norm_add_pass): a residual multiplier
        // there has no kernel.
        if c.residual_scale.is_some() && c.post_norms {
            return Err(HearthError::UnsupportedSource(format!(
                "{origin}: `{}` scales post-normed block outputs, which the GPU engine does not run",
                m.architecture
            )));
        }
        // qk_norm.wgsl norms the product's output before rope.wgsl adds any biases.
        if c.qk_norm_whole && c.qkv_bias {
            return Err(HearthError::UnsupportedSource(format!(
                "{origin}: `{}` norms whole queries and keys after Q/K/V biases, which the GPU engine does not run",
                m.architecture
            )));
        }
        let rope = c.rope.clone().filter(|_| c.position == PositionKind::Rope);
        let capacity = max_context.unwrap_or(c.context_length).clamp(1, c.context_length);
        let kv_f16 = ctx.kv_f16;
        let device = ctx.device.clone();
        let limit = ctx.limits.max_storage_buffer_binding_size;
        // Subgroup sums only where the device has them and the caller left them on.
        let subgroups = ctx.subgroups && device.features().contains(wgpu::Features::SUBGROUP);
        if !(1..=DECODE_ROWS_MAX).contains(&ctx.decode_rows) {
            return Err(HearthError::Gpu(format!(
                "{} decode rows per workgroup: 1 to {DECODE_ROWS_MAX} are possible",
                ctx.decode_rows
            )));
        }
        let kernels = Kernels::new(&device, ctx.software)
            .with_subgroups(subgroups)
            .with_decode_rows(ctx.decode_rows)
            .with_gemm(ctx.gemm);
        let alibi_max_bias = match (&c.alibi, c.position) {
            (Some(alibi), PositionKind::Alibi) => alibi.max_bias,
            _ => 0.0,
        };
        // A windowed layer keeps a ring: its window plus room for one chunk's own keys, which are
        // all stored before any of its queries reads (attention.wgsl). Memory stays bounded however
        // long generation runs.
        let attention_dims = |l: usize, chunk: usize| {
            let window = c.layer_window(l);
            let cache_rows = GpuPlan::rows(&c, l, capacity, chunk);
            let (scale, softcap) = (c.attention_scale(), c.attn_softcap);
            AttentionDims::new(
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                capacity,
                scale,
                cache_rows,
                window,
                alibi_max_bias,
                softcap,
            )
        };
        // Attention's scratch (scores of the row split, records of the split kernel) grows with
        // the chunk: fewer tokens per chunk when a full chunk's would not fit one binding.
        let scratch_len =
            |chunk| (0..c.n_layers).map(|l| attention::scratch_len(&kernels, &attention_dims(l, chunk), chunk)).max();
        let chunk = (1..=MAX_CHUNK).rev().find(|&n| scratch_len(n).unwrap_or(0) as u64 * 4 <= limit).unwrap_or(1);
        // The KV cache, planned in u64 (hearth_core::plan) and checked against one binding before
        // any buffer is created.
        let plan = GpuPlan::new(m, max_context, kv_f16, chunk)?;
        plan.check_binding(storage_limit(&device))?;
        let attention_scratch = storage(&device, "attention scratch", scratch_len(chunk).unwrap_or(1))?;

        let mut b = Builder::new(&ctx, kernels, m, origin, chunk)?;
        let (h, qd, kvd, f, v) =
            (c.hidden_size as u32, c.q_dim() as u32, c.kv_dim() as u32, c.ffn_size as u32, c.vocab_size as u32);
        let qkv_dim = qd + 2 * kvd;
        let act = |label: &str, per_token: u32| storage(&device, label, chunk * per_token as usize);
        let step = uniform_of(&device, "step", &Step { start: 0, n_tokens: 0 });
        let one_token = uniform_of(&device, "one token", &Step { start: 0, n_tokens: 1 });
        let tokens = storage(&device, "tokens", chunk)?;
        let x = act("x", h)?;
        // An output projection before its norm (post-norm models only).
        let proj = act("projection", if c.post_norms { h } else { 1 })?;
        let qkv = act("qkv", qkv_dim)?;
        let q = act("q", qd)?;
        let attn = act("attention out", qd)?;
        let ffn = act("ffn hidden", f)?;
        // [gate | up] of the layers whose gate and up differ in encoding (GatedWeights::Separate),
        // made for the first such layer.
        let mut gate_up = None;
        // A mixture's buffers every layer shares, and each layer's expert step uniforms.
        let moe_scratch =
            c.moe.as_ref().map(|moe| MixtureScratch::new(&device, moe, c.hidden_size, chunk)).transpose()?;
        let mut expert_steps = Vec::new();
        let last = storage(&device, "last hidden", c.hidden_size)?;
        let logits = storage(&device, "logits", c.vocab_size)?;
        let logits_all = storage(&device, "logits, every token", chunk * c.vocab_size)?;
        let staging = (0..QUEUE_DEPTH)
            .map(|_| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("sampled token read back"),
                    size: (RESULT_WORDS * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let inv_freq = b.rope_frequencies(rope.as_ref(), capacity)?;
        let local_inv_freq = b.local_rope_frequencies(rope.as_ref());
        let mut weights: Vec<WeightBuffer> = Vec::new();

        // Embedding lookup: one dispatch per piece of the table, then per piece of the learned
        // position table (GPT-2). With an embedding norm (BLOOM) the lookup writes `normed` and
        // the norm writes x.
        let embd = b.split("token_embd.weight")?;
        let positions = if c.position == PositionKind::Learned { b.split("position_embd.weight")? } else { Vec::new() };
        let embed_norm = if c.embedding_norm { Some(b.norm("token_embd_norm")?) } else { None };
        let embedded = if embed_norm.is_some() { b.normed.clone() } else { x.clone() };
        let mut layers = Vec::new();
        let tables = embd.iter().map(|piece| (piece, false)).chain(positions.iter().map(|piece| (piece, true)));
        for (piece, is_position) in tables {
            let rows = if is_position { EmbedRows::Positions } else { EmbedRows::Tokens };
            layers.push(b.gather(piece, rows, &tokens, &embedded, &step));
        }
        if let Some(norm) = &embed_norm {
            layers.push(b.norm_pass(&embedded, norm, &step, &x));
        }

        // Per-head QK-norms in rope.wgsl; whole ones (OLMoE) in a pass of their own before it.
        let rope_store = b.kernels.rope_store(kv_f16, c.qkv_bias, c.qk_norm && !c.qk_norm_whole);
        // What the K and V buffers hold as allocated (tests compare it with the plan's definition).
        let mut kv_cache_bytes = 0u64;
        let mut attention_reads = Vec::new();
        let mut rings = Vec::new();
        let ffn_activation = match c.activation {
            ModelActivation::Silu => Activation::Silu,
            ModelActivation::GeluTanh => Activation::GeluTanh,
            ModelActivation::Gelu => Activation::GeluErf,
        };
        for l in 0..c.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let window = c.layer_window(l);
            let attention_dims = attention_dims(l, chunk);
            let readers = attention::reads_per_row(&b.kernels, &attention_dims);
            attention_reads.push(AttentionReads {
                visible: attention_dims.visible(),
                bytes_per_position: 2 * plan.cache_row_bytes * readers as u64,
            });
            let cache_rows = plan.cache_rows[l];
            rings.push(window.map(|w| (w, cache_rows)));
            // Bounded by check_binding above (at most one binding's bytes, so it fits a usize).
            let cache_words = (plan.layer_bytes(l) / 4) as usize;
            let k_cache = storage(&device, "k cache", cache_words)?;
            let v_cache = storage(&device, "v cache", cache_words)?;
            kv_cache_bytes += k_cache.size() + v_cache.size();
            let attn_norm = b.norm(&format!("blk.{l}.attn_norm"))?;
            let ffn_norm = b.norm(&format!("blk.{l}.ffn_norm"))?;
            let linear_bias = if c.linear_bias {
                let bias = |s: &str| format!("blk.{l}.{s}.bias");
                Some([b.vector(&bias("attn_output"))?, b.vector(&bias("ffn_up"))?, b.vector(&bias("ffn_down"))?])
            } else {
                None
            };
            let wqkv = b.stacked(&format!("blk.{l}.qkv"), &[p("attn_q"), p("attn_k"), p("attn_v")])?;
            let bias_names = ["attn_q", "attn_k", "attn_v"].map(|s| format!("blk.{l}.{s}.bias"));
            let qkv_bias = if c.qkv_bias {
                Some(b.vectors(&format!("blk.{l}.qkv bias"), &bias_names, qkv_dim as usize)?)
            } else {
                None
            };
            let qk_norm = if c.qk_norm {
                let names = [p("attn_q_norm"), p("attn_k_norm")];
                let len = if c.qk_norm_whole { c.q_dim() + c.kv_dim() } else { 2 * c.head_dim };
                Some(b.vectors(&format!("blk.{l}.qk norm"), &names, len)?)
            } else {
                None
            };
            let post_norms = if c.post_norms {
                Some([b.vector(&p("post_attention_norm"))?, b.vector(&p("post_ffw_norm"))?])
            } else {
                None
            };
            // Gemma 3's local layers have their own base (and no scaling: see rope_magnitude).
            let layer_inv_freq = local_inv_freq.as_ref().filter(|_| window.is_some()).unwrap_or(&inv_freq);
            let magnitude = c.rope_magnitude(l);
            let wo = b.split(&p("attn_output"))?;

            // Without RoPE (or in a layer that does not rotate) no pair rotates: the kernels only
            // add biases and store K and V.
            let n_pairs = rope.as_ref().filter(|_| c.layer_rotates(l)).map_or(0, |r| r.dim / 2);
            let rope_dims = uniform_of(
                &device,
                "rope dims",
                &RopeDims {
                    n_heads: c.n_heads as u32,
                    n_kv_heads: c.n_kv_heads as u32,
                    head_dim: c.head_dim as u32,
                    n_pairs: n_pairs as u32,
                    neox: u32::from(rope.as_ref().is_some_and(|r| r.style == RopeStyle::Neox)),
                    cache_rows: cache_rows as u32,
                    eps: c.norm_eps,
                    magnitude,
                },
            );
            // On GPUs a decode step's QKV product rotates and stores its own queries, keys and
            // values (one dispatch fewer per layer); prompts write the product and run the pass.
            let fused_rope =
                (b.kernels.fuses_rope(c.head_dim, n_pairs, c.qk_norm) && wqkv.len() == 1).then_some(RopeStore {
                    dims: &rope_dims,
                    inv_freq: layer_inv_freq,
                    q: &q,
                    k_cache: &k_cache,
                    v_cache: &v_cache,
                    kv_f16,
                    bias: qkv_bias.as_ref(),
                });
            layers.extend(b.product(Product {
                pieces: &wqkv,
                input: &x,
                output: &qkv,
                out_stride: qkv_dim,
                step: &step,
                fuse: Fuse { norm: Some(&attn_norm), rope: fused_rope.as_ref(), ..Default::default() },
            })?);
            if let Some(weights) = qk_norm.as_ref().filter(|_| c.qk_norm_whole) {
                let pipeline = b.kernels.qk_norm_whole();
                let dims = uniform_of(
                    &device,
                    "qk norm dims",
                    &QkNormDims { q_dim: qd, kv_dim: kvd, row: qkv_dim, eps: c.norm_eps },
                );
                let entries =
                    [entry(0, whole(&dims)), entry(1, whole(&step)), entry(2, whole(&qkv)), entry(3, whole(weights))];
                let group = bind_group(&device, &pipeline, &entries);
                b.scratch.push(dims);
                layers.push(Dispatch::single(pipeline, group, Box::new(|s: Step| Some((2, s.n_tokens, 1)))));
            }
            {
                let group = bind_group(
                    &device,
                    &rope_store,
                    &[
                        entry(0, whole(&rope_dims)),
                        entry(1, whole(&step)),
                        entry(2, whole(layer_inv_freq)),
                        entry(3, whole(&qkv)),
                        entry(4, whole(&q)),
                        entry(5, whole(&k_cache)),
                        entry(6, whole(&v_cache)),
                        // Without biases or norms the shader never reads them; any buffer fills
                        // the slot.
                        entry(7, whole(qkv_bias.as_ref().unwrap_or(&b.no_norm))),
                        entry(8, whole(qk_norm.as_ref().filter(|_| !c.qk_norm_whole).unwrap_or(&b.no_norm))),
                    ],
                );
                let words = (qkv_dim / 2).div_ceil(WORKGROUP);
                let fused = fused_rope.is_some();
                let grid = move |s: Step| (!(fused && s.n_tokens == 1)).then_some((words, s.n_tokens, 1));
                layers.push(Dispatch::single(rope_store.clone(), group, Box::new(grid)));
            }
            b.scratch.push(rope_dims);
            layers.extend(attention::prepare(
                &b.kernels,
                &device,
                attention_dims,
                kv_f16,
                &AttentionBuffers {
                    step: &step,
                    q: &q,
                    k_cache: &k_cache,
                    v_cache: &v_cache,
                    out: &attn,
                    scratch: &attention_scratch,
                    tokens: &tokens,
                    spans: false,
                },
            )?);
            // The output products add into the residual stream, or (with post-norms) write `proj`,
            // whose norm a pass of its own adds.
            let residual = Fuse { accumulate: post_norms.is_none(), scale: c.residual_scale, ..Default::default() };
            let proj_out = if post_norms.is_some() { &proj } else { &x };
            let [bias_o, bias_up, bias_down] = match &linear_bias {
                Some([o, up, down]) => [Some(o), Some(up), Some(down)],
                None => [None; 3],
            };
            layers.extend(b.product(Product {
                pieces: &wo,
                input: &attn,
                output: proj_out,
                out_stride: h,
                step: &step,
                fuse: Fuse { bias: bias_o, ..residual },
            })?);
            if let Some([post_attn, _]) = &post_norms {
                layers.push(b.norm_add_pass(&proj, post_attn, &x, &step));
            }
            if let (Some(moe), Some(scratch)) = (c.moe_at(l), &moe_scratch) {
                let m = mixture::prepare(&mut b, l, moe, ffn_activation, &ffn_norm, scratch, &x, &step)?;
                layers.extend(m.dispatches);
                expert_steps.push(Some(m.steps));
                weights.extend(m.weights);
                b.scratch.extend(m.buffers);
            } else {
                if c.moe.is_some() {
                    expert_steps.push(None); // a mixture's dense layer
                }
                let (wgu, separate) = match c.ffn {
                    FfnKind::Gated => match b.gated(&p("ffn_gate"), &p("ffn_up"))? {
                        GatedWeights::Fused(w) => (w, false),
                        GatedWeights::Separate(w) => (w, true),
                    },
                    FfnKind::Plain => (b.split(&p("ffn_up"))?, false),
                };
                let wdown = b.split(&p("ffn_down"))?;
                if separate {
                    // Gate and up of different encodings: [gate | up] normed, then activated (no
                    // gated architecture has biases on its MLP).
                    if bias_up.is_some() {
                        return Err(HearthError::bad_package(
                            b.origin,
                            "an MLP bias with gate and up of different encodings",
                        ));
                    }
                    let gate_up: &wgpu::Buffer = match &mut gate_up {
                        Some(buffer) => buffer,
                        none => none.insert(act("ffn gate | up", 2 * f)?),
                    };
                    layers.extend(b.product(Product {
                        pieces: &wgu,
                        input: &x,
                        output: gate_up,
                        out_stride: 2 * f,
                        step: &step,
                        fuse: Fuse { norm: Some(&ffn_norm), ..Default::default() },
                    })?);
                    layers.push(b.glu_pass(gate_up, &ffn, ffn_activation, &step));
                } else {
                    layers.extend(b.product(Product {
                        pieces: &wgu,
                        input: &x,
                        output: &ffn,
                        out_stride: f,
                        step: &step,
                        fuse: Fuse {
                            norm: Some(&ffn_norm),
                            bias: bias_up,
                            activation: ffn_activation,
                            gated: c.ffn == FfnKind::Gated,
                            ..Default::default()
                        },
                    })?);
                }
                layers.extend(b.product(Product {
                    pieces: &wdown,
                    input: &ffn,
                    output: proj_out,
                    out_stride: h,
                    step: &step,
                    fuse: Fuse { bias: bias_down, ..residual },
                })?);
                if let Some([_, post_ffw]) = &post_norms {
                    layers.push(b.norm_add_pass(&proj, post_ffw, &x, &step));
                }
                weights.extend(wgu.into_iter().chain(wdown));
            }
            b.scratch.extend([k_cache, v_cache]);
            for norm in [attn_norm, ffn_norm] {
                b.scratch.extend([norm.weight].into_iter().chain(norm.bias));
            }
            b.scratch.extend(linear_bias.into_iter().flatten());
            b.scratch.extend(qkv_bias.into_iter().chain(qk_norm).chain(post_norms.into_iter().flatten()));
            weights.extend(wqkv.into_iter().chain(wo));
        }

        let out_norm = b.norm("output_norm")?;
        let head = if c.tied_embeddings { None } else { Some(b.split("output.weight")?) };
        let head_pieces = head.as_deref().unwrap_or(&embd);
        // Gemma 2 caps its logits as the head writes them.
        // Granite divides its logits.
        let scale = c.logit_divisor.map(|d| 1.0 / d);
        let fuse = match c.final_softcap {
            Some(cap) => {
                Fuse { norm: Some(&out_norm), activation: Activation::Softcap, cap, scale, ..Default::default() }
            }
            None => Fuse { norm: Some(&out_norm), scale, ..Default::default() },
        };
        let head_last = b.product(Product {
            pieces: head_pieces,
            input: &last,
            output: &logits,
            out_stride: v,
            step: &one_token,
            fuse,
        })?;
        // A step of one token (every decode step) has its only row where the head reads it.
        let head_one = b.product(Product {
            pieces: head_pieces,
            input: &x,
            output: &logits,
            out_stride: v,
            step: &one_token,
            fuse,
        })?;
        let sampler = GpuSampler::new(&ctx, &logits, v, capacity)?;
        let head_all = b.product(Product {
            pieces: head_pieces,
            input: &x,
            output: &logits_all,
            out_stride: v,
            step: &step,
            fuse,
        })?;

        let mut scratch = b.scratch;
        scratch.extend(moe_scratch.into_iter().flat_map(MixtureScratch::buffers));
        scratch.extend([b.normed, b.no_norm]);
        scratch.extend([one_token, qkv, q, attn, ffn, proj, attention_scratch, inv_freq]);
        scratch.extend([out_norm.weight].into_iter().chain(out_norm.bias));
        scratch.extend(embed_norm.into_iter().flat_map(|n| [n.weight].into_iter().chain(n.bias)));
        scratch.extend(local_inv_freq);
        weights.extend(embd);
        weights.extend(positions);
        weights.extend(head.into_iter().flatten());
        let uploads = b.uploads;
        let labels = b.kernels.labels();
        let engine = GpuEngine {
            ctx,
            config: c,
            capacity,
            position: 0,
            written_end: 0,
            queue: VecDeque::new(),
            next_slot: 0,
            chunk,
            kv_f16,
            kv_cache_bytes,
            weight_bytes: decode_weight_bytes(m),
            attention_reads,
            rings,
            last_step: StepCounts::default(),
            labels,
            buffers: Buffers { step, tokens, x, last, logits, logits_all, staging },
            layers,
            head_last,
            head_one,
            sampler,
            head_all,
            expert_steps,
            _weights: weights,
            _scratch: scratch,
        };
        // Anything the device refused while the buffers and pipelines were made.
        engine.ctx.errors.check()?;
        let queue = engine.ctx.queue.clone();
        Ok(Pending::new(engine, queue, m, uploads))
    }

    pub fn adapter_name(&self) -> &str {
        &self.ctx.adapter_name
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Whether the adapter is a CPU implementation (kernels avoid workgroup barriers there).
    pub fn software(&self) -> bool {
        self.ctx.software
    }

    /// Output rows per workgroup of the decode products.
    pub fn decode_rows(&self) -> u32 {
        self.ctx.decode_rows
    }

    /// Whether prompts' products take the register-blocked kernel (`GpuContext::gemm`).
    pub fn gemm(&self) -> bool {
        self.ctx.gemm && !self.ctx.software
    }

    /// Whether the decode products add up their sums with subgroup operations.
    pub fn subgroups(&self) -> bool {
        self.ctx.subgroups && self.ctx.device.features().contains(wgpu::Features::SUBGROUP)
    }

    /// Whether the KV cache is f16.
    pub fn kv_f16(&self) -> bool {
        self.kv_f16
    }

    /// Bytes of GPU memory the KV cache takes (windowed layers hold rings of their window).
    pub fn kv_cache_bytes(&self) -> u64 {
        self.kv_cache_bytes
    }

    /// Positions the KV cache holds: the most tokens one generation can use.
    pub fn context_length(&self) -> usize {
        self.capacity
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn reset(&mut self) {
        self.drop_queued();
        self.position = 0;
        self.written_end = 0;
    }

    /// Keep the first `len` positions and forget the rest (the next step writes from `len` on);
    /// false, nothing changed, when `len` is past the end or a windowed layer's ring has moved
    /// past keys a query at `len` sees (`hearth_core::generate::ring_keeps`). Queued steps not
    /// read yet are dropped first.
    pub fn truncate(&mut self, len: usize) -> bool {
        self.drop_queued();
        let end = self.written_end.max(self.position);
        if len > self.position || !self.rings.iter().flatten().all(|&(w, rows)| ring_keeps(w, rows, len, end)) {
            return false;
        }
        self.position = len;
        true
    }

    /// Steps queued and not read back yet.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Forget the queued steps not read back: the next step writes where the first of them did.
    /// Their keys and values stay in the cache's rows until overwritten (`written_end`).
    pub fn drop_queued(&mut self) {
        for q in self.queue.drain(..) {
            // Cancels the map if it is still pending.
            self.buffers.staging[q.slot].unmap();
            self.position -= q.tokens;
        }
    }

    /// Record and submit one chunk of at most `self.chunk` tokens, the layers and then `head`; with
    /// a profiler, each dispatch in a timed pass of its own.
    fn run_chunk(
        &mut self,
        input: Input<'_>,
        head: Head,
        mut profiler: Option<&mut Profiler>,
    ) -> Result<wgpu::SubmissionIndex> {
        let n = input.len() as u32;
        let c = &self.config;
        let b = &self.buffers;
        let step = Step { start: self.position as u32, n_tokens: n };
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        match input {
            Input::Tokens(tokens) => {
                if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return Err(HearthError::InvalidArgument(format!(
                        "token id {t} is outside the vocabulary of {}",
                        c.vocab_size
                    )));
                }
                self.ctx.queue.write_buffer(&b.tokens, 0, bytemuck::cast_slice(tokens));
            }
            // The sampler's result is always an id of the vocabulary.
            Input::Chosen => encoder.copy_buffer_to_buffer(self.sampler.result(), 0, &b.tokens, 0, 4),
        }
        // Queue writes land before the next submission, after every earlier one: a step queued
        // behind others finds its own position.
        self.ctx.queue.write_buffer(&b.step, 0, bytemuck::bytes_of(&step));
        let mut dispatched = 0;
        let labels = &self.labels;
        // Only the launches this step runs: the counts and profiles show what the GPU does.
        let mut record = |encoder: &mut wgpu::CommandEncoder,
                          dispatches: &[Dispatch],
                          step: Step,
                          profiler: &mut Option<&mut Profiler>| {
            let running = || dispatches.iter().filter(|d| d.runs(step));
            dispatched += running().count();
            match profiler {
                Some(p) => {
                    for d in running() {
                        let label = labels.get(d.pipeline(step.n_tokens)).map_or("unlabelled", String::as_str);
                        d.record(&mut p.pass(encoder, label), step);
                    }
                }
                None => {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    for d in running() {
                        d.record(&mut pass, step);
                    }
                }
            }
        };
        record(&mut encoder, &self.layers, step, &mut profiler);
        match head {
            Head::None => {}
            Head::All => record(&mut encoder, &self.head_all, step, &mut profiler),
            Head::Last | Head::Sample { .. } => {
                let last = Step { start: step.start + n - 1, n_tokens: 1 };
                if n == 1 {
                    record(&mut encoder, &self.head_one, last, &mut profiler);
                } else {
                    let row = (c.hidden_size * 4) as u64;
                    encoder.copy_buffer_to_buffer(&b.x, (n as u64 - 1) * row, &b.last, 0, row);
                    record(&mut encoder, &self.head_last, last, &mut profiler);
                }
                if let Head::Sample { logprobs, slot } = head {
                    dispatched += self.sampler.dispatches();
                    match profiler.as_deref_mut() {
                        Some(p) => {
                            if self.sampler.dispatches() > 1 {
                                self.sampler.record_blocks(&mut p.pass(&mut encoder, "top_blocks"));
                            }
                            self.sampler.record_sample(&mut p.pass(&mut encoder, "sample"));
                        }
                        None => self.sampler.record(&mut encoder.begin_compute_pass(&Default::default())),
                    }
                    let staging = &b.staging[slot];
                    encoder.copy_buffer_to_buffer(self.sampler.result(), 0, staging, 0, result_bytes(logprobs));
                }
            }
        }
        if let Some(p) = profiler {
            p.resolve(&mut encoder);
        }
        let submission = self.ctx.queue.submit([encoder.finish()]);
        let end = self.position + n as usize;
        self.last_step = StepCounts {
            dispatches: dispatched,
            weight_bytes: self.weight_bytes,
            kv_bytes: self.kv_bytes_read(end - 1),
        };
        self.position = end;
        self.written_end = self.written_end.max(end);
        Ok(submission)
    }

    /// Bytes of the KV cache that attention reads for a query at `position`: every layer's visible
    /// keys and values, once per query head (the row split) or per KV head and group of 8 of its
    /// query heads (the split kernel).
    pub fn kv_bytes_read(&self, position: usize) -> u64 {
        self.attention_reads.iter().map(|r| (position + 1).min(r.visible) as u64 * r.bytes_per_position).sum()
    }

    /// A mixture of experts' experts the last step ran, per layer (those its tokens chose: the others
    /// got no workgroups), read back from the device; empty for a dense model or layer.
    pub async fn experts_run_async(&self) -> Result<Vec<Vec<usize>>> {
        let mut out = Vec::with_capacity(self.expert_steps.len());
        for steps in &self.expert_steps {
            let Some(steps) = steps else {
                out.push(Vec::new());
                continue;
            };
            let words: Vec<u32> = read_back_async(&self.ctx, steps, 0, steps.size() as usize / 4).await?;
            out.push(words.chunks(64).enumerate().filter(|(_, s)| s[1] > 0).map(|(e, _)| e).collect());
        }
        Ok(out)
    }

    /// What the last step recorded and read: for a decode step, the figures per token.
    pub fn last_step(&self) -> StepCounts {
        self.last_step
    }

    /// Move `n` positions ahead without computing them, their cache rows left as they are: decode
    /// at a long context measured cheaply (`hearth bench --context`), since attention's work does
    /// not depend on the values it reads. Not for generating text.
    pub fn skip_positions(&mut self, n: usize) -> Result<()> {
        self.drop_queued();
        if n > 0 {
            self.check_room(n)?;
            self.position += n;
        }
        Ok(())
    }

    /// Run one decode step of `token` (greedy) with every dispatch timed: GPU time per kernel.
    pub async fn profile_step_async(&mut self, token: u32) -> Result<Vec<KernelTime>> {
        self.drop_queued();
        let mut profiler = Profiler::new(&self.ctx)?;
        self.check_room(1)?;
        self.sampler.prepare(&self.ctx.queue, &SamplingParams::default(), 0.0, Penalties::Counts(&[]), None, None)?;
        self.run_chunk(Input::Tokens(&[token]), Head::Sample { logprobs: None, slot: 0 }, Some(&mut profiler))?;
        profiler.read(&self.ctx).await
    }

    /// Run `input` chunk by chunk, the last chunk followed by `head`; the last submission.
    fn run(&mut self, input: Input<'_>, head: Head) -> Result<wgpu::SubmissionIndex> {
        self.check_room(input.len())?;
        let Input::Tokens(tokens) = input else { return self.run_chunk(input, head, None) };
        let chunks = tokens.len().div_ceil(self.chunk);
        for (i, chunk) in tokens.chunks(self.chunk).enumerate() {
            let submission =
                self.run_chunk(Input::Tokens(chunk), if i + 1 == chunks { head } else { Head::None }, None)?;
            if i + 1 == chunks {
                return Ok(submission);
            }
        }
        Err(HearthError::InvalidArgument("forward needs at least one token".into()))
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(HearthError::InvalidArgument("forward needs at least one token".into()));
        }
        if self.position + n > self.capacity {
            return Err(HearthError::ContextLengthExceeded {
                prompt_tokens: self.position + n,
                max_new_tokens: 0,
                context_length: self.capacity,
            });
        }
        Ok(())
    }

    /// Run `tokens` and choose the next token on the GPU, reading back only its id (4 bytes).
    /// `draw`, `counts` and `mask` come from the caller's `Sampler` (`draw`, `penalty_counts`,
    /// `mask`: the tokens a constraint allows, None for all), so the GPU picks what
    /// `hearth_core::sampling::apply_mask` then `choose` would (up to the rounding of sums).
    pub async fn forward_sample_async(
        &mut self,
        tokens: &[u32],
        params: &SamplingParams,
        draw: f32,
        counts: &[(u32, u32)],
        mask: Option<&[u32]>,
    ) -> Result<u32> {
        Ok(self.forward_sample_logprobs_async(tokens, params, draw, counts, mask, None).await?.0)
    }

    /// [`GpuEngine::forward_sample_async`], and with `logprobs` = Some(k) (k <= 20) the chosen
    /// token's log-probability and the k most likely tokens' (`hearth_core::logprobs` defines
    /// them: the biased logits before penalties, temperature, cuts and mask), computed on the GPU
    /// in the sampler's dispatch: the read-back grows from 4 to (k + 1) * 8 bytes.
    pub async fn forward_sample_logprobs_async(
        &mut self,
        tokens: &[u32],
        params: &SamplingParams,
        draw: f32,
        counts: &[(u32, u32)],
        mask: Option<&[u32]>,
        logprobs: Option<usize>,
    ) -> Result<(u32, Option<StepLogprobs>)> {
        self.drop_queued();
        self.sampler.prepare(&self.ctx.queue, params, draw, Penalties::Counts(counts), mask, logprobs)?;
        self.submit_sample(Input::Tokens(tokens), logprobs)?;
        self.next_queued_async().await
    }

    /// Submit `step` (its tokens, or the token the step queued before it chooses) and the choice
    /// after it, without waiting: [`GpuEngine::next_queued_async`] reads the oldest step's token.
    /// At most [`QUEUE_DEPTH`] steps wait at once. The draw (when sampling) and the penalty counts
    /// come from `step.sampler` and its history; after a queued step they stay on the GPU, counted
    /// as the kernel chooses, so the steps choose what one-at-a-time steps would.
    pub fn queue_step(&mut self, step: QueuedStep<'_>, logprobs: Option<usize>) -> Result<()> {
        if self.queue.len() >= QUEUE_DEPTH {
            return Err(HearthError::InvalidArgument(format!(
                "{QUEUE_DEPTH} steps are queued already: read one back first"
            )));
        }
        // The kernel's history length and carried counts hold only for a step queued behind every
        // unread one, with tokens exactly when nothing is queued.
        if step.ahead != self.queue.len() || step.tokens.is_some() != self.queue.is_empty() {
            return Err(HearthError::InvalidArgument(format!(
                "a queued step follows every unread one ({} queued, the step says {} ahead) and has tokens only when \
                 none is queued",
                self.queue.len(),
                step.ahead
            )));
        }
        let history_len = step.history_len();
        let QueuedStep { tokens, sampler, history, .. } = step;
        let draw = if sampler.params().temperature > 0.0 { sampler.draw() } else { 0.0 };
        let (input, counts) = match tokens {
            Some(tokens) => (Input::Tokens(tokens), Some(sampler.penalty_counts(history))),
            None => (Input::Chosen, None),
        };
        let penalties = match &counts {
            Some(counts) => Penalties::History { counts, history },
            None => Penalties::Carried { history_len },
        };
        self.sampler.prepare(&self.ctx.queue, sampler.params(), draw, penalties, sampler.mask(), logprobs)?;
        self.submit_sample(input, logprobs)
    }

    /// Run `input` and the sampler, and start mapping the step's result (mapping right after the
    /// submission waits for this step only, not for those queued after it).
    fn submit_sample(&mut self, input: Input<'_>, logprobs: Option<usize>) -> Result<()> {
        let slot = self.next_slot;
        let start = self.position;
        let submission = self.run(input, Head::Sample { logprobs, slot })?;
        self.next_slot = (slot + 1) % QUEUE_DEPTH;
        let (tx, mapped) = futures_channel::oneshot::channel();
        self.buffers.staging[slot].slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.queue.push_back(Queued { slot, tokens: self.position - start, logprobs, mapped, submission });
        Ok(())
    }

    /// The token (and figures, when asked) of the oldest queued step, once the GPU has run it.
    pub async fn next_queued_async(&mut self) -> Result<(u32, Option<StepLogprobs>)> {
        let Some(q) = self.queue.pop_front() else {
            return Err(HearthError::InvalidArgument("no step is queued".into()));
        };
        let staging = &self.buffers.staging[q.slot];
        // Natively the map completes inside `poll`; in a browser the poll returns at once and the
        // map resolves when WebGPU calls back.
        let waited = self
            .ctx
            .device
            .poll(wgpu::PollType::Wait { submission_index: Some(q.submission), timeout: None })
            .map_err(|e| HearthError::Gpu(format!("waiting for the GPU failed: {e}")));
        let mapped = async {
            waited?;
            q.mapped
                .await
                .map_err(|_| HearthError::Gpu("the GPU never answered a read".into()))?
                .map_err(|e| HearthError::Gpu(format!("cannot read a GPU buffer: {e}")))
        };
        let words = match mapped.await {
            Ok(()) => {
                let words = staging
                    .slice(..)
                    .get_mapped_range()
                    .map(|view| bytemuck::pod_collect_to_vec(&view))
                    .map_err(|e| HearthError::Gpu(format!("cannot map a GPU buffer: {e}")));
                // Only a mapped buffer is unmapped (unmapping another is a device error).
                staging.unmap();
                words
            }
            Err(e) => Err(e),
        };
        let words = match words {
            Ok(words) => words,
            Err(e) => {
                // This step's positions and the steps behind it: their state is unknown.
                self.position -= q.tokens;
                self.drop_queued();
                return Err(e);
            }
        };
        // Whatever the device reported while this work ran (a validation or out-of-memory error).
        self.ctx.errors.check()?;
        self.sampler.read_result(&words, q.logprobs)
    }

    /// [`GpuEngine::forward_sample_async`] with the draw, penalty counts and mask taken from
    /// `sampler` (`history`: every token so far), as `hearth_core::generate::Generation` hands
    /// them out: the token `Sampler::sample` would pick from this step's logits.
    pub async fn sample_next_async(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        Ok(self.sample_next_logprobs_async(tokens, sampler, history, None).await?.0)
    }

    /// [`GpuEngine::sample_next_async`] with the log-probabilities of
    /// [`GpuEngine::forward_sample_logprobs_async`] (None: as `sample_next_async`). For the
    /// browser's driver: `Generation::logprobs_requested` says what to pass, and the figures go to
    /// `Generation::set_step_logprobs` before `accept`.
    pub async fn sample_next_logprobs_async(
        &mut self,
        tokens: &[u32],
        sampler: &mut Sampler,
        history: &[u32],
        logprobs: Option<usize>,
    ) -> Result<(u32, Option<StepLogprobs>)> {
        self.drop_queued();
        self.queue_step(QueuedStep { tokens: Some(tokens), sampler, history, ahead: 0 }, logprobs)?;
        self.next_queued_async().await
    }

    /// Run `tokens`; return the last token's logits, or every token's with `all_logits`.
    pub async fn forward_async(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.drop_queued();
        if !all_logits {
            self.run(Input::Tokens(tokens), Head::Last)?;
            return read_back_async::<f32>(&self.ctx, &self.buffers.logits, 0, self.config.vocab_size).await;
        }
        self.check_room(tokens.len())?;
        let vocab = self.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        for chunk in tokens.chunks(self.chunk) {
            self.run_chunk(Input::Tokens(chunk), Head::All, None)?;
            out.extend(read_back_async::<f32>(&self.ctx, &self.buffers.logits_all, 0, chunk.len() * vocab).await?);
        }
        Ok(out)
    }
}

/// Blocking forms of the above, for native callers (a browser cannot block).
#[cfg(not(target_arch = "wasm32"))]
impl GpuEngine {
    pub fn forward_sample(
        &mut self,
        tokens: &[u32],
        params: &SamplingParams,
        draw: f32,
        counts: &[(u32, u32)],
        mask: Option<&[u32]>,
    ) -> Result<u32> {
        pollster::block_on(self.forward_sample_async(tokens, params, draw, counts, mask))
    }

    /// Run `tokens` and return the greedy next token (4 bytes read back).
    pub fn forward_argmax(&mut self, tokens: &[u32]) -> Result<u32> {
        self.forward_sample(tokens, &SamplingParams::default(), 0.0, &[], None)
    }

    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(tokens, all_logits))
    }

    pub fn profile_step(&mut self, token: u32) -> Result<Vec<KernelTime>> {
        pollster::block_on(self.profile_step_async(token))
    }

    pub fn experts_run(&self) -> Result<Vec<Vec<usize>>> {
        pollster::block_on(self.experts_run_async())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Backend for GpuEngine {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        GpuEngine::forward(self, tokens, all_logits)
    }
    fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        pollster::block_on(self.sample_next_async(tokens, sampler, history))
    }
    fn forward_sample_logprobs(
        &mut self,
        tokens: &[u32],
        sampler: &mut Sampler,
        history: &[u32],
        k: usize,
    ) -> Result<(u32, StepLogprobs)> {
        let (id, figures) = pollster::block_on(self.sample_next_logprobs_async(tokens, sampler, history, Some(k)))?;
        Ok((id, figures.unwrap_or_default()))
    }
    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }
    fn queue_step(&mut self, step: QueuedStep<'_>, logprobs: Option<usize>) -> Result<()> {
        GpuEngine::queue_step(self, step, logprobs)
    }
    fn next_queued(&mut self) -> Result<(u32, Option<StepLogprobs>)> {
        pollster::block_on(self.next_queued_async())
    }
    fn drop_queued(&mut self) {
        GpuEngine::drop_queued(self)
    }
    fn reset(&mut self) {
        GpuEngine::reset(self)
    }
    fn truncate(&mut self, len: usize) -> bool {
        GpuEngine::truncate(self, len)
    }
    fn context_length(&self) -> usize {
        GpuEngine::context_length(self)
    }
}

/// Bytes of weights one decode step reads: every tensor once, except that the embedding tables
/// give one row each (a tied embedding is read whole as the output head) and a mixture's token
/// reads `used` of its `experts` experts (their average size).
fn decode_weight_bytes(m: &Manifest) -> u64 {
    // `blk.N.ffn_{gate,up,down}.E.weight`: an expert's (the shared expert's are `_shexp`).
    let expert = |name: &str| {
        let parts: Vec<&str> = name.split('.').collect();
        parts.len() == 5 && parts[2].starts_with("ffn_") && parts[3].parse::<usize>().is_ok()
    };
    m.tensors
        .iter()
        .map(|e| {
            let rows = e.shape.first().copied().unwrap_or(1).max(1) as u64;
            let table = e.name == "token_embd.weight" || e.name == "position_embd.weight";
            match (table, &m.config.moe) {
                (true, _) if e.name == "token_embd.weight" && m.config.tied_embeddings => e.length + e.length / rows,
                (true, _) => e.length / rows,
                (false, Some(moe)) if expert(&e.name) => e.length * moe.used as u64 / moe.experts.max(1) as u64,
                (false, _) => e.length,
            }
        })
        .sum()
}
