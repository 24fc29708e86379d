//! Encoders (BERT) on the GPU: embeddings of texts, several packed into one step. Each step's
//! tokens are the texts one after another; each token's attention sees its own text whole, both
//! ways, and nothing else (attention.wgsl's `SPANS`), and its learned position counts from its
//! text's start (embed.wgsl's `ROWS`), so packing changes no text's outputs. The token buffer
//! holds the ids, then each token's first and last positions in the step: the spans.
//!
//! Per step: the embedding gathers (token, position, token type) and their LayerNorm, then per
//! layer: [QKV product] → [biases + K/V store] → [attention] → [output product + residual] →
//! [LayerNorm] → [up product + bias + GELU] → [down product + residual] → [LayerNorm]. The norms
//! come after the residual adds (post-norm), so the stream ping-pongs between `x` and `y`: a pass
//! cannot read and write one buffer. The outputs are read back and pooled on the host
//! (`hearth_core::cpu::pool`), as the CPU engines pool.

use hearth_core::cpu::pool;
use hearth_core::manifest::{Activation as ModelActivation, EncoderConfig, Manifest, ModelConfig, ARCHITECTURES};
use hearth_core::package::TensorSource;
use hearth_core::{HearthError, Result};

use crate::attention::{self, AttentionBuffers, AttentionDims};
use crate::builder::{run_dispatches, Builder, Dispatch, Fuse, Product, RopeDims, Step};
use crate::context::GpuContext;
use crate::kernels::{
    bind_group, entry, read_back_async, storage, uniform_of, whole, Activation, EmbedRows, Kernels, WORKGROUP,
};
use crate::weights::{Pending, WeightBuffer};

/// Tokens one step takes at least (more where a text may be longer): texts are packed into steps
/// of this many. 512 holds 17 texts of 30 tokens, and the largest activation (the feed-forward's,
/// 512 × 1,536 values for MiniLM) stays a few MB.
pub const PACKED_TOKENS: usize = 512;

/// The encoder engine, waiting for its weights (see [`Pending`]).
pub type PendingEncoder = Pending<GpuEncoder>;

pub struct GpuEncoder {
    ctx: GpuContext,
    config: ModelConfig,
    encoder: EncoderConfig,
    /// Tokens one step takes.
    chunk: usize,
    step: wgpu::Buffer,
    /// Ids, then each token's first and last visible positions (`3 × chunk` words).
    tokens: wgpu::Buffer,
    /// The last layer's outputs, `[token][hidden]`.
    x: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    // Kept alive for the bind groups.
    _weights: Vec<WeightBuffer>,
    _scratch: Vec<wgpu::Buffer>,
}

impl GpuEncoder {
    /// Upload the weights of `source` and prepare every dispatch.
    pub fn new(ctx: GpuContext, source: &dyn TensorSource) -> Result<Self> {
        Self::prepare(ctx, source.manifest(), &source.origin())?.load(source)?.finish()
    }

    /// Create every buffer (the weights' empty), pipeline and bind group from the manifest alone.
    pub fn prepare(ctx: GpuContext, manifest: &Manifest, origin: &str) -> Result<PendingEncoder> {
        let m = manifest;
        let c = m.config.clone();
        if !ARCHITECTURES.contains(&m.architecture.as_str()) {
            return Err(HearthError::UnsupportedArchitecture(m.architecture.clone()));
        }
        c.validate().map_err(|e| HearthError::bad_package(origin, e))?;
        let Some(encoder) = c.encoder.clone() else {
            return Err(HearthError::UnsupportedSource(format!(
                "{origin}: `{}` is a decoder: it generates text, and gives no embeddings",
                m.architecture
            )));
        };
        // `validate` holds an encoder to LayerNorm, learned positions and a plain feed-forward.
        let activation = match c.activation {
            ModelActivation::Gelu => Activation::GeluErf,
            ModelActivation::GeluTanh => Activation::GeluTanh,
            ModelActivation::Silu => Activation::Silu,
        };
        let chunk = encoder.max_tokens.max(PACKED_TOKENS);
        let device = ctx.device.clone();
        let subgroups = ctx.subgroups && device.features().contains(wgpu::Features::SUBGROUP);
        let kernels = Kernels::new(&device, ctx.software)
            .with_subgroups(subgroups)
            .with_decode_rows(ctx.decode_rows)
            .with_gemm(ctx.gemm);
        let dims = AttentionDims::new(
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            chunk,
            c.attention_scale(),
            chunk,
            None,
            0.0,
            c.attn_softcap,
        );
        let scratch_len = attention::scratch_len(&kernels, &dims, chunk);
        if scratch_len as u64 * 4 > ctx.limits.max_storage_buffer_binding_size {
            return Err(HearthError::AdapterLimit(format!(
                "attention over texts of {} tokens needs {} MB of scratch, past this adapter's binding limit",
                encoder.max_tokens,
                (scratch_len * 4) >> 20
            )));
        }
        let mut b = Builder::new(&ctx, kernels, m, origin, chunk)?;
        let (h, qd, kvd, f) = (c.hidden_size as u32, c.q_dim() as u32, c.kv_dim() as u32, c.ffn_size as u32);
        let qkv_dim = qd + 2 * kvd;
        let act = |label: &str, per_token: u32| storage(&device, label, chunk * per_token as usize);
        let step = uniform_of(&device, "step", &Step { start: 0, n_tokens: 0 });
        let tokens = storage(&device, "tokens and spans", 3 * chunk)?;
        let (x, y) = (act("x", h)?, act("y", h)?);
        let qkv = act("qkv", qkv_dim)?;
        let q = act("q", qd)?;
        let attn = act("attention out", qd)?;
        let ffn = act("ffn hidden", f)?;
        // One step's keys and values: every layer stores its own, then reads them, before the next.
        let (k_cache, v_cache) = (act("k", kvd)?, act("v", kvd)?);
        let attention_scratch = storage(&device, "attention scratch", scratch_len.max(1))?;
        let no_rope = b.rope_frequencies(None, chunk)?;
        let mut dispatches = Vec::new();
        let mut weights = Vec::new();

        // Embeddings: the token's row, plus its position's and type 0's, into `normed`; their
        // LayerNorm into x.
        let tables = [
            ("token_embd.weight", EmbedRows::Tokens),
            ("position_embd.weight", EmbedRows::TextPositions),
            ("token_types.weight", EmbedRows::First),
        ];
        let normed = b.normed.clone();
        for (name, rows) in tables {
            for piece in b.split(name)? {
                dispatches.push(b.gather(&piece, rows, &tokens, &normed, &step));
                weights.push(piece);
            }
        }
        let embed_norm = b.norm("token_embd_norm")?;
        dispatches.push(b.norm_pass(&normed, &embed_norm, &step, &x));
        b.scratch.extend(embed_norm.buffers());

        let rope_store = b.kernels.rope_store(false, c.qkv_bias, false);
        let rope_dims = uniform_of(&device, "rope dims", &RopeDims::new(&c, 0, false, chunk, 1.0));
        for l in 0..c.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let bias = |s: &str| format!("blk.{l}.{s}.bias");
            // Post-norms: attn_norm after attention's residual add, ffn_norm after the MLP's.
            let attn_norm = b.norm(&format!("blk.{l}.attn_norm"))?;
            let ffn_norm = b.norm(&format!("blk.{l}.ffn_norm"))?;
            let wqkv = b.stacked(&format!("blk.{l}.qkv"), &[p("attn_q"), p("attn_k"), p("attn_v")])?;
            let qkv_bias = if c.qkv_bias {
                let names = ["attn_q", "attn_k", "attn_v"].map(bias);
                Some(b.vectors(&format!("blk.{l}.qkv bias"), &names, qkv_dim as usize)?)
            } else {
                None
            };
            let linear_bias = if c.linear_bias {
                Some([b.vector(&bias("attn_output"))?, b.vector(&bias("ffn_up"))?, b.vector(&bias("ffn_down"))?])
            } else {
                None
            };
            let [bias_o, bias_up, bias_down] = match &linear_bias {
                Some([o, up, down]) => [Some(o), Some(up), Some(down)],
                None => [None; 3],
            };
            let (wo, wup, wdown) = (b.split(&p("attn_output"))?, b.split(&p("ffn_up"))?, b.split(&p("ffn_down"))?);

            dispatches.extend(b.product(Product {
                pieces: &wqkv,
                input: &x,
                output: &qkv,
                out_stride: qkv_dim,
                step: &step,
                fuse: Fuse::default(),
            })?);
            // The Q/K/V biases added, queries to `q`, keys and values to the step's cache rows.
            let group = bind_group(
                &device,
                &rope_store,
                &[
                    entry(0, whole(&rope_dims)),
                    entry(1, whole(&step)),
                    entry(2, whole(&no_rope)),
                    entry(3, whole(&qkv)),
                    entry(4, whole(&q)),
                    entry(5, whole(&k_cache)),
                    entry(6, whole(&v_cache)),
                    entry(7, whole(qkv_bias.as_ref().unwrap_or(&b.no_norm))),
                    entry(8, whole(&b.no_norm)),
                ],
            );
            let words = (qkv_dim / 2).div_ceil(WORKGROUP);
            dispatches.push(Dispatch::single(
                rope_store.clone(),
                group,
                Box::new(move |s: Step| Some((words, s.n_tokens, 1))),
            ));
            dispatches.extend(attention::prepare(
                &b.kernels,
                &device,
                dims,
                false,
                &AttentionBuffers {
                    step: &step,
                    q: &q,
                    k_cache: &k_cache,
                    v_cache: &v_cache,
                    out: &attn,
                    scratch: &attention_scratch,
                    tokens: &tokens,
                    spans: true,
                },
            )?);
            let residual = |bias| Fuse { bias, accumulate: true, ..Default::default() };
            dispatches.extend(b.product(Product {
                pieces: &wo,
                input: &attn,
                output: &x,
                out_stride: h,
                step: &step,
                fuse: residual(bias_o),
            })?);
            dispatches.push(b.norm_pass(&x, &attn_norm, &step, &y));
            dispatches.extend(b.product(Product {
                pieces: &wup,
                input: &y,
                output: &ffn,
                out_stride: f,
                step: &step,
                fuse: Fuse { bias: bias_up, activation, ..Default::default() },
            })?);
            dispatches.extend(b.product(Product {
                pieces: &wdown,
                input: &ffn,
                output: &y,
                out_stride: h,
                step: &step,
                fuse: residual(bias_down),
            })?);
            dispatches.push(b.norm_pass(&y, &ffn_norm, &step, &x));
            for norm in [attn_norm, ffn_norm] {
                b.scratch.extend(norm.buffers());
            }
            b.scratch.extend(qkv_bias.into_iter().chain(linear_bias.into_iter().flatten()));
            weights.extend(wqkv.into_iter().chain(wo).chain(wup).chain(wdown));
        }

        let mut scratch = b.scratch;
        scratch.extend([
            b.normed,
            b.no_norm,
            y,
            qkv,
            q,
            attn,
            ffn,
            k_cache,
            v_cache,
            attention_scratch,
            no_rope,
            rope_dims,
        ]);
        let uploads = b.uploads;
        let queue = ctx.queue.clone();
        let engine = GpuEncoder {
            ctx,
            config: c,
            encoder,
            chunk,
            step,
            tokens,
            x,
            dispatches,
            _weights: weights,
            _scratch: scratch,
        };
        // Anything the device refused while the buffers and pipelines were made.
        engine.ctx.errors.check()?;
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

    /// Tokens one step takes: texts are packed into steps of at most this many.
    pub fn packed_tokens(&self) -> usize {
        self.chunk
    }

    /// Dispatches one step records.
    pub fn dispatches_per_step(&self) -> usize {
        let step = Step { start: 0, n_tokens: self.chunk as u32 };
        self.dispatches.iter().filter(|d| d.runs(step)).count()
    }

    /// One embedding per text (each its tokens, special tokens included, at most the encoder's
    /// `max_tokens`), pooled as the model says and scaled to unit length as `normalize` says (None:
    /// as the model's config says). Texts run packed, as many per step as fit.
    pub async fn embed_async(&mut self, texts: &[Vec<u32>], normalize: Option<bool>) -> Result<Vec<Vec<f32>>> {
        let (vocab, max_tokens) = (self.config.vocab_size, self.encoder.max_tokens);
        for text in texts {
            if text.is_empty() || text.len() > max_tokens {
                return Err(HearthError::InvalidArgument(format!(
                    "a text of {} tokens: this encoder takes 1 to {max_tokens}",
                    text.len()
                )));
            }
            if let Some(&t) = text.iter().find(|&&t| t as usize >= vocab) {
                return Err(HearthError::InvalidArgument(format!("token id {t} is outside the vocabulary of {vocab}")));
            }
        }
        let h = self.config.hidden_size;
        let normalize = normalize.unwrap_or(self.encoder.normalize);
        let mut out = Vec::with_capacity(texts.len());
        let mut rest = texts;
        while !rest.is_empty() {
            // As many texts as fit one step (each fits alone: max_tokens <= chunk).
            let mut n = 0;
            let fit = rest.iter().take_while(|t| {
                n += t.len();
                n <= self.chunk
            });
            let batch = &rest[..fit.count()];
            rest = &rest[batch.len()..];
            let n: usize = batch.iter().map(Vec::len).sum();
            let mut words: Vec<u32> = batch.iter().flatten().copied().collect();
            let (mut first, mut last) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let mut at = 0u32;
            for text in batch {
                let len = text.len() as u32;
                first.extend(std::iter::repeat_n(at, text.len()));
                last.extend(std::iter::repeat_n(at + len - 1, text.len()));
                at += len;
            }
            words.extend(first);
            words.extend(last);
            let step = Step { start: 0, n_tokens: n as u32 };
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(&words));
            self.ctx.queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
            run_dispatches(&self.ctx, &self.dispatches, step);
            let x = read_back_async::<f32>(&self.ctx, &self.x, 0, n * h).await?;
            // Whatever the device reported while this work ran.
            self.ctx.errors.check()?;
            let mut at = 0;
            for text in batch {
                out.push(pool(&x[at * h..(at + text.len()) * h], h, self.encoder.pooling, normalize));
                at += text.len();
            }
        }
        Ok(out)
    }
}

/// Blocking form of the above, for native callers (a browser cannot block).
#[cfg(not(target_arch = "wasm32"))]
impl GpuEncoder {
    pub fn embed(&mut self, texts: &[Vec<u32>], normalize: Option<bool>) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.embed_async(texts, normalize))
    }
}
