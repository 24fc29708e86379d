//! The decoder's forward pass assembled like a model, in the order `CpuEngine::forward` runs it:
//! [`Forward::embed`], then per layer [`Forward::attention`] and [`Forward::feed_forward`] (or a
//! mixture's), then [`Forward::heads`]. Each returns its prepared dispatches in order; the buffers
//! they share are the [`Activations`]. `engine.rs` checks the model, sizes the chunk and runs what
//! this assembles.

use std::collections::HashMap;

use hearth_core::manifest::{Activation as ModelActivation, FfnKind, ModelConfig, PositionKind, RopeConfig, RopeStyle};
use hearth_core::plan::GpuPlan;
use hearth_core::{HearthError, Result};

use crate::attention::{self, AttentionBuffers, AttentionDims};
use crate::builder::{Builder, Dispatch, Fuse, GatedWeights, Product, RopeDims, RopeStore, Step};
use crate::engine::MAX_CHUNK;
use crate::kernels::{bind_group, entry, storage, uniform_of, whole, Activation, EmbedRows, QkNormDims, WORKGROUP};
use crate::mixture::{self, MixtureScratch};
use crate::weights::{WeightBuffer, WeightUploads};

/// The buffers the blocks share, each sized for a chunk of tokens.
pub struct Activations {
    /// The step uniform every dispatch reads (its first position and token count), and a
    /// one-token step for the heads that read one row.
    pub step: wgpu::Buffer,
    pub one_token: wgpu::Buffer,
    pub tokens: wgpu::Buffer,
    /// The residual stream.
    pub x: wgpu::Buffer,
    /// An output projection before its norm (post-norm models only; one row otherwise).
    proj: wgpu::Buffer,
    qkv: wgpu::Buffer,
    /// Queries, as RoPE leaves them for attention.
    q: wgpu::Buffer,
    /// Attention's output, the output projection's input.
    attn: wgpu::Buffer,
    /// The feed-forward's hidden activations.
    ffn: wgpu::Buffer,
    /// [gate | up] of the layers whose gate and up differ in encoding (`GatedWeights::Separate`),
    /// made for the first such layer.
    gate_up: Option<wgpu::Buffer>,
    /// Attention's scratch (the row split's scores, the split kernel's records), shared by the
    /// layers.
    attention_scratch: wgpu::Buffer,
    /// A longer step's last row, which its head reads.
    pub last: wgpu::Buffer,
    /// The logits of the last token, and of every token of a step of at most MAX_CHUNK.
    pub logits: wgpu::Buffer,
    pub logits_all: wgpu::Buffer,
}

impl Activations {
    /// `scratch_len`: the words attention's scratch needs for `chunk` tokens.
    pub fn new(device: &wgpu::Device, c: &ModelConfig, chunk: usize, scratch_len: usize) -> Result<Self> {
        let act = |label: &str, per_token: usize| storage(device, label, chunk * per_token);
        Ok(Activations {
            step: uniform_of(device, "step", &Step { start: 0, n_tokens: 0 }),
            one_token: uniform_of(device, "one token", &Step { start: 0, n_tokens: 1 }),
            tokens: storage(device, "tokens", chunk)?,
            x: act("x", c.hidden_size)?,
            proj: act("projection", if c.post_norms { c.hidden_size } else { 1 })?,
            qkv: act("qkv", c.q_dim() + 2 * c.kv_dim())?,
            q: act("q", c.q_dim())?,
            attn: act("attention out", c.q_dim())?,
            ffn: act("ffn hidden", c.ffn_size)?,
            gate_up: None,
            attention_scratch: storage(device, "attention scratch", scratch_len)?,
            last: storage(device, "last hidden", c.hidden_size)?,
            logits: storage(device, "logits", c.vocab_size)?,
            logits_all: storage(device, "logits, every token", chunk.min(MAX_CHUNK) * c.vocab_size)?,
        })
    }
}

/// Attention's shape for layer `l` in steps of up to `chunk` tokens over `capacity` positions.
pub fn attention_dims(c: &ModelConfig, l: usize, capacity: usize, chunk: usize) -> AttentionDims {
    let alibi_max_bias = match (&c.alibi, c.position) {
        (Some(alibi), PositionKind::Alibi) => alibi.max_bias,
        _ => 0.0,
    };
    // A windowed layer keeps a ring: its window plus room for one chunk's own keys, which are
    // all stored before any of its queries reads (attention.wgsl). Memory stays bounded however
    // long generation runs.
    AttentionDims::new(
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        capacity,
        c.attention_scale(),
        GpuPlan::rows(c, l, capacity, chunk),
        c.layer_window(l),
        alibi_max_bias,
        c.attn_softcap,
    )
}

/// How much of its cache one layer's attention reads.
pub struct AttentionReads {
    /// Positions a query sees at most (the window's, or the cache's).
    pub visible: usize,
    pub bytes_per_position: u64,
}

/// The output heads: final norm + head for the last token of a longer step (its row copied to
/// `last`), of a step of one token (reading x: no copy), and for every token (tests).
pub struct Heads {
    pub last: Vec<Dispatch>,
    pub one: Vec<Dispatch>,
    pub all: Vec<Dispatch>,
}

/// The forward pass while it is assembled.
pub struct Forward<'a> {
    b: Builder<'a>,
    c: &'a ModelConfig,
    plan: &'a GpuPlan,
    a: Activations,
    /// RoPE's settings (None for ALiBi and learned positions) and frequencies: every layer's, and
    /// Gemma 3's local layers' own.
    rope: Option<RopeConfig>,
    inv_freq: wgpu::Buffer,
    local_inv_freq: Option<wgpu::Buffer>,
    /// The RoPE + KV-store pipeline (per-head QK-norms in it; whole ones in a pass of their own).
    rope_store: wgpu::ComputePipeline,
    ffn_activation: Activation,
    /// A mixture's buffers every layer shares.
    moe_scratch: Option<MixtureScratch>,
    kv_f16: bool,
    capacity: usize,
    chunk: usize,
    /// The token embedding's pieces (the head's too, when tied).
    embd: Vec<WeightBuffer>,
    weights: Vec<WeightBuffer>,
    kv_cache_bytes: u64,
    attention_reads: Vec<AttentionReads>,
    rings: Vec<Option<(usize, usize)>>,
    expert_steps: Vec<Option<wgpu::Buffer>>,
}

impl<'a> Forward<'a> {
    pub fn new(
        mut b: Builder<'a>,
        c: &'a ModelConfig,
        plan: &'a GpuPlan,
        a: Activations,
        capacity: usize,
        chunk: usize,
    ) -> Result<Self> {
        let rope = c.rope.clone().filter(|_| c.position == PositionKind::Rope);
        let inv_freq = b.rope_frequencies(rope.as_ref(), capacity)?;
        let local_inv_freq = b.local_rope_frequencies(rope.as_ref());
        let kv_f16 = b.ctx.kv_f16;
        let rope_store = b.kernels.rope_store(kv_f16, c.qkv_bias, c.qk_norm && !c.qk_norm_whole);
        let ffn_activation = match c.activation {
            ModelActivation::Silu => Activation::Silu,
            ModelActivation::GeluTanh => Activation::GeluTanh,
            ModelActivation::Gelu => Activation::GeluErf,
        };
        let moe_scratch =
            c.moe.as_ref().map(|moe| MixtureScratch::new(b.device(), moe, c.hidden_size, chunk)).transpose()?;
        Ok(Forward {
            b,
            c,
            plan,
            a,
            rope,
            inv_freq,
            local_inv_freq,
            rope_store,
            ffn_activation,
            moe_scratch,
            kv_f16,
            capacity,
            chunk,
            embd: Vec::new(),
            weights: Vec::new(),
            kv_cache_bytes: 0,
            attention_reads: Vec::new(),
            rings: Vec::new(),
            expert_steps: Vec::new(),
        })
    }

    /// The logits the heads write (the sampler's input).
    pub fn logits(&self) -> &wgpu::Buffer {
        &self.a.logits
    }

    /// Every dispatch of the layers, in order: the embedding, then each layer's blocks.
    pub fn layers(&mut self) -> Result<Vec<Dispatch>> {
        let mut dispatches = self.embed()?;
        for l in 0..self.c.n_layers {
            dispatches.extend(self.attention(l)?);
            dispatches.extend(self.feed_forward(l)?);
        }
        Ok(dispatches)
    }

    /// Embedding lookup: one dispatch per piece of the table, then per piece of the learned
    /// position table (GPT-2). With an embedding norm (BLOOM) the lookup writes `normed` and the
    /// norm writes x.
    fn embed(&mut self) -> Result<Vec<Dispatch>> {
        let (b, c, a) = (&mut self.b, self.c, &self.a);
        let embd = b.split("token_embd.weight")?;
        let positions = if c.position == PositionKind::Learned { b.split("position_embd.weight")? } else { Vec::new() };
        let embed_norm = if c.embedding_norm { Some(b.norm("token_embd_norm")?) } else { None };
        let embedded = if embed_norm.is_some() { b.normed.clone() } else { a.x.clone() };
        let mut dispatches = Vec::new();
        let tables = embd.iter().map(|piece| (piece, false)).chain(positions.iter().map(|piece| (piece, true)));
        for (piece, is_position) in tables {
            let rows = if is_position { EmbedRows::Positions } else { EmbedRows::Tokens };
            dispatches.push(b.gather(piece, rows, &a.tokens, &embedded, &a.step));
        }
        if let Some(norm) = embed_norm {
            dispatches.push(b.norm_pass(&embedded, &norm, &a.step, &a.x));
            b.scratch.extend(norm.buffers());
        }
        self.weights.extend(positions);
        self.embd = embd;
        Ok(dispatches)
    }

    /// Layer `l`'s attention block: norm + QKV (+ RoPE and the KV store, fused on a GPU's decode
    /// step), RoPE + KV store as a pass otherwise, attention over the cache, the output projection
    /// added into the residual (or normed and added, with post-norms).
    fn attention(&mut self, l: usize) -> Result<Vec<Dispatch>> {
        let (b, c, a) = (&mut self.b, self.c, &self.a);
        let device = b.device().clone();
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        let (qd, kvd) = (c.q_dim() as u32, c.kv_dim() as u32);
        let qkv_dim = qd + 2 * kvd;
        let window = c.layer_window(l);
        let dims = attention_dims(c, l, self.capacity, self.chunk);
        let readers = attention::reads_per_row(&b.kernels, &dims);
        self.attention_reads.push(AttentionReads {
            visible: dims.visible(),
            bytes_per_position: 2 * self.plan.cache_row_bytes * readers as u64,
        });
        let cache_rows = self.plan.cache_rows[l];
        self.rings.push(window.map(|w| (w, cache_rows)));
        // Bounded by check_binding (at most one binding's bytes, so it fits a usize).
        let cache_words = (self.plan.layer_bytes(l) / 4) as usize;
        let k_cache = storage(&device, "k cache", cache_words)?;
        let v_cache = storage(&device, "v cache", cache_words)?;
        self.kv_cache_bytes += k_cache.size() + v_cache.size();
        let attn_norm = b.norm(&format!("blk.{l}.attn_norm"))?;
        let bias_o = if c.linear_bias { Some(b.vector(&format!("blk.{l}.attn_output.bias"))?) } else { None };
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
        let post_norm = if c.post_norms { Some(b.vector(&p("post_attention_norm"))?) } else { None };
        // Gemma 3's local layers have their own base (and no scaling: see rope_magnitude).
        let inv_freq = self.local_inv_freq.as_ref().filter(|_| window.is_some()).unwrap_or(&self.inv_freq);
        let wo = b.split(&p("attn_output"))?;

        // Without RoPE (or in a layer that does not rotate) no pair rotates: the kernels only add
        // biases and store K and V.
        let n_pairs = self.rope.as_ref().filter(|_| c.layer_rotates(l)).map_or(0, |r| r.dim / 2);
        let neox = self.rope.as_ref().is_some_and(|r| r.style == RopeStyle::Neox);
        let rope_dims =
            uniform_of(&device, "rope dims", &RopeDims::new(c, n_pairs, neox, cache_rows, c.rope_magnitude(l)));
        // On GPUs a decode step's QKV product rotates and stores its own queries, keys and values
        // (one dispatch fewer per layer); prompts write the product and run the pass.
        let fused_rope =
            (b.kernels.fuses_rope(c.head_dim, n_pairs, c.qk_norm) && wqkv.len() == 1).then_some(RopeStore {
                dims: &rope_dims,
                inv_freq,
                q: &a.q,
                k_cache: &k_cache,
                v_cache: &v_cache,
                kv_f16: self.kv_f16,
                bias: qkv_bias.as_ref(),
            });
        let mut dispatches = b.product(Product {
            pieces: &wqkv,
            input: &a.x,
            output: &a.qkv,
            out_stride: qkv_dim,
            step: &a.step,
            fuse: Fuse { norm: Some(&attn_norm), rope: fused_rope.as_ref(), ..Default::default() },
        })?;
        if let Some(weights) = qk_norm.as_ref().filter(|_| c.qk_norm_whole) {
            let pipeline = b.kernels.qk_norm_whole();
            let dims = uniform_of(
                &device,
                "qk norm dims",
                &QkNormDims { q_dim: qd, kv_dim: kvd, row: qkv_dim, eps: c.norm_eps },
            );
            let entries =
                [entry(0, whole(&dims)), entry(1, whole(&a.step)), entry(2, whole(&a.qkv)), entry(3, whole(weights))];
            let group = bind_group(&device, &pipeline, &entries);
            b.scratch.push(dims);
            dispatches.push(Dispatch::single(pipeline, group, Box::new(|s: Step| Some((2, s.n_tokens, 1)))));
        }
        let group = bind_group(
            &device,
            &self.rope_store,
            &[
                entry(0, whole(&rope_dims)),
                entry(1, whole(&a.step)),
                entry(2, whole(inv_freq)),
                entry(3, whole(&a.qkv)),
                entry(4, whole(&a.q)),
                entry(5, whole(&k_cache)),
                entry(6, whole(&v_cache)),
                // Without biases or norms the shader never reads them; any buffer fills the slot.
                entry(7, whole(qkv_bias.as_ref().unwrap_or(&b.no_norm))),
                entry(8, whole(qk_norm.as_ref().filter(|_| !c.qk_norm_whole).unwrap_or(&b.no_norm))),
            ],
        );
        let words = (qkv_dim / 2).div_ceil(WORKGROUP);
        let fused = fused_rope.is_some();
        let grid = move |s: Step| (!(fused && s.n_tokens == 1)).then_some((words, s.n_tokens, 1));
        dispatches.push(Dispatch::single(self.rope_store.clone(), group, Box::new(grid)));
        dispatches.extend(attention::prepare(
            &b.kernels,
            &device,
            dims,
            self.kv_f16,
            &AttentionBuffers {
                step: &a.step,
                q: &a.q,
                k_cache: &k_cache,
                v_cache: &v_cache,
                out: &a.attn,
                scratch: &a.attention_scratch,
                tokens: &a.tokens,
                spans: false,
            },
        )?);
        let attn = a.attn.clone();
        dispatches.extend(self.residual_product(&wo, &attn, bias_o.as_ref(), post_norm.as_ref())?);
        let b = &mut self.b;
        b.scratch.extend([rope_dims, k_cache, v_cache]);
        b.scratch.extend(attn_norm.buffers());
        b.scratch.extend(bias_o.into_iter().chain(qkv_bias).chain(qk_norm).chain(post_norm));
        self.weights.extend(wqkv.into_iter().chain(wo));
        Ok(dispatches)
    }

    /// Layer `l`'s feed-forward block: norm + gate/up (+ the activation) and the down product
    /// added into the residual, or the mixture of experts of a mixture's layer.
    fn feed_forward(&mut self, l: usize) -> Result<Vec<Dispatch>> {
        let c = self.c;
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        let ffn_norm = self.b.norm(&format!("blk.{l}.ffn_norm"))?;
        if let (Some(moe), Some(scratch)) = (c.moe_at(l), &self.moe_scratch) {
            let m = mixture::prepare(
                &mut self.b,
                l,
                moe,
                self.ffn_activation,
                &ffn_norm,
                scratch,
                &self.a.x,
                &self.a.step,
            )?;
            self.expert_steps.push(Some(m.steps));
            self.weights.extend(m.weights);
            self.b.scratch.extend(m.buffers);
            self.b.scratch.extend(ffn_norm.buffers());
            return Ok(m.dispatches);
        }
        if c.moe.is_some() {
            self.expert_steps.push(None); // a mixture's dense layer
        }
        let (b, a) = (&mut self.b, &mut self.a);
        let [bias_up, bias_down] = if c.linear_bias {
            let bias = |s: &str| format!("blk.{l}.{s}.bias");
            [Some(b.vector(&bias("ffn_up"))?), Some(b.vector(&bias("ffn_down"))?)]
        } else {
            [None, None]
        };
        let (wgu, separate) = match c.ffn {
            FfnKind::Gated => match b.gated(&p("ffn_gate"), &p("ffn_up"))? {
                GatedWeights::Fused(w) => (w, false),
                GatedWeights::Separate(w) => (w, true),
            },
            FfnKind::Plain => (b.split(&p("ffn_up"))?, false),
        };
        let wdown = b.split(&p("ffn_down"))?;
        let post_norm = if c.post_norms { Some(b.vector(&p("post_ffw_norm"))?) } else { None };
        let mut dispatches = Vec::new();
        if separate {
            // Gate and up of different encodings: [gate | up] normed, then activated (no gated
            // architecture has biases on its MLP).
            if bias_up.is_some() {
                return Err(HearthError::bad_package(b.origin, "an MLP bias with gate and up of different encodings"));
            }
            let gate_up: &wgpu::Buffer = match &mut a.gate_up {
                Some(buffer) => buffer,
                none => none.insert(storage(b.device(), "ffn gate | up", self.chunk * 2 * c.ffn_size)?),
            };
            dispatches.extend(b.product(Product {
                pieces: &wgu,
                input: &a.x,
                output: gate_up,
                out_stride: 2 * c.ffn_size as u32,
                step: &a.step,
                fuse: Fuse { norm: Some(&ffn_norm), ..Default::default() },
            })?);
            dispatches.push(b.glu_pass(gate_up, &a.ffn, self.ffn_activation, &a.step));
        } else {
            dispatches.extend(b.product(Product {
                pieces: &wgu,
                input: &a.x,
                output: &a.ffn,
                out_stride: c.ffn_size as u32,
                step: &a.step,
                fuse: Fuse {
                    norm: Some(&ffn_norm),
                    bias: bias_up.as_ref(),
                    activation: self.ffn_activation,
                    gated: c.ffn == FfnKind::Gated,
                    ..Default::default()
                },
            })?);
        }
        let ffn = self.a.ffn.clone();
        dispatches.extend(self.residual_product(&wdown, &ffn, bias_down.as_ref(), post_norm.as_ref())?);
        self.b.scratch.extend(ffn_norm.buffers());
        self.b.scratch.extend(bias_up.into_iter().chain(bias_down).chain(post_norm));
        self.weights.extend(wgu.into_iter().chain(wdown));
        Ok(dispatches)
    }

    /// A block's output product (with its bias) added into the residual stream, times Granite's
    /// residual multiplier; with a post-norm, written to `proj` and normed and added by a pass of
    /// its own.
    fn residual_product(
        &mut self,
        pieces: &[WeightBuffer],
        input: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        post_norm: Option<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>> {
        let (b, a) = (&mut self.b, &self.a);
        let output = if post_norm.is_some() { &a.proj } else { &a.x };
        let fuse = Fuse { bias, accumulate: post_norm.is_none(), scale: self.c.residual_scale, ..Default::default() };
        let step = &a.step;
        let mut dispatches =
            b.product(Product { pieces, input, output, out_stride: self.c.hidden_size as u32, step, fuse })?;
        if let Some(norm) = post_norm {
            dispatches.push(b.norm_add_pass(&a.proj, norm, &a.x, step));
        }
        Ok(dispatches)
    }

    /// The final norm and the output head (the embedding when tied), its logits divided
    /// (Granite) and capped (Gemma 2) as it writes them.
    pub fn heads(&mut self) -> Result<Heads> {
        let (b, c, a) = (&mut self.b, self.c, &self.a);
        let out_norm = b.norm("output_norm")?;
        let head = if c.tied_embeddings { None } else { Some(b.split("output.weight")?) };
        let pieces = head.as_deref().unwrap_or(&self.embd);
        let scale = c.logit_divisor.map(|d| 1.0 / d);
        let fuse = match c.final_softcap {
            Some(cap) => {
                Fuse { norm: Some(&out_norm), activation: Activation::Softcap, cap, scale, ..Default::default() }
            }
            None => Fuse { norm: Some(&out_norm), scale, ..Default::default() },
        };
        let v = c.vocab_size as u32;
        let mut head_of = |input, output, step| b.product(Product { pieces, input, output, out_stride: v, step, fuse });
        let heads = Heads {
            last: head_of(&a.last, &a.logits, &a.one_token)?,
            // A step of one token (every decode step) has its only row where the head reads it.
            one: head_of(&a.x, &a.logits, &a.one_token)?,
            all: head_of(&a.x, &a.logits_all, &a.step)?,
        };
        self.b.scratch.extend(out_norm.buffers());
        self.weights.extend(head.into_iter().flatten());
        Ok(heads)
    }

    /// What the engine keeps of the assembly.
    pub fn finish(self) -> Assembled {
        let mut b = self.b;
        let mut scratch = std::mem::take(&mut b.scratch);
        scratch.extend(self.moe_scratch.into_iter().flat_map(MixtureScratch::buffers));
        scratch.extend([b.normed, b.no_norm, self.inv_freq]);
        scratch.extend(self.local_inv_freq);
        let mut weights = self.weights;
        weights.extend(self.embd);
        Assembled {
            activations: self.a,
            uploads: b.uploads,
            labels: b.kernels.labels(),
            weights,
            scratch,
            kv_cache_bytes: self.kv_cache_bytes,
            attention_reads: self.attention_reads,
            rings: self.rings,
            expert_steps: self.expert_steps,
        }
    }
}

/// What the engine keeps of an assembled forward pass, besides its dispatches.
pub struct Assembled {
    pub activations: Activations,
    /// The weight buffers' plan, filled as the bytes arrive.
    pub uploads: WeightUploads,
    /// What each pipeline is called in profiles.
    pub labels: HashMap<wgpu::ComputePipeline, String>,
    pub weights: Vec<WeightBuffer>,
    /// Every other buffer the bind groups hold (norms, biases, KV caches, uniforms).
    pub scratch: Vec<wgpu::Buffer>,
    /// What the K and V buffers hold as allocated (tests compare it with the plan's definition).
    pub kv_cache_bytes: u64,
    pub attention_reads: Vec<AttentionReads>,
    /// Each windowed layer's window and ring rows (None: a row per position).
    pub rings: Vec<Option<(usize, usize)>>,
    /// A mixture's per-layer expert step uniforms (none for its dense layers).
    pub expert_steps: Vec<Option<wgpu::Buffer>>,
}
