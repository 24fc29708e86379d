//! The forward pass on the GPU (`forward.rs` assembles it, block by block, from the pieces in
//! `builder.rs`; this file checks the model and runs it). Everything is prepared at load: weights uploaded once (Q/K/V and gate/up stacked into one matrix each, large
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
use hearth_core::manifest::{Manifest, ModelConfig, ARCHITECTURES};
use hearth_core::package::TensorSource;
use hearth_core::plan::GpuPlan;
use hearth_core::sampling::{Sampler, SamplingParams};
use hearth_core::{HearthError, Result};

use crate::attention;
use crate::builder::{Builder, Dispatch, Step};
use crate::context::GpuContext;
use crate::forward::{attention_dims, Activations, AttentionReads, Forward};
use crate::kernels::{read_back_async, storage_limit, Kernels, DECODE_ROWS_MAX};
use crate::profile::{KernelTime, Profiler};
use crate::sampler::{result_bytes, GpuSampler, Penalties, RESULT_WORDS};
use crate::weights::{Pending, WeightBuffer};

/// Most tokens one forward pass takes on software adapters, in models with windowed layers (whose
/// rings hold a window plus one chunk: `GpuPlan`, and `inspect`'s figures, size them for this)
/// and in mixtures of experts (whose scratch holds a chunk per expert); longer prompts run in
/// chunks of this many. Also the most rows of logits one step returns.
pub const MAX_CHUNK: usize = 64;

/// Most tokens one forward pass takes on a GPU otherwise: a prompt product's 64 × 64 tiles then
/// number 8 per 64 rows (a 2,048-row product fills 256 workgroups, where a 64-token chunk filled
/// 32 of an H100's 132 compute units), and a 512-token prompt is one submission.
pub const GPU_CHUNK: usize = 512;

/// Decode steps submitted at most before the first one's token is read back
/// ([`GpuEngine::queue_step`]): while the host reads one token, the GPU runs the next two
/// steps, so it never waits for the host's round trip (a map of the result, the text, the next
/// submission). Steps found unneeded at a stop cost the GPU that many tokens' work at most.
pub const QUEUE_DEPTH: usize = 3;

/// A step submitted whose token has not been read back.
struct Queued {
    /// Its buffer in `GpuEngine::staging`, mapped once the step has run.
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
    /// Tokens per forward pass (`MAX_CHUNK` or `GPU_CHUNK`, or fewer when attention's scratch would
    /// not fit a binding).
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
    /// The buffers the layers share; a step writes its tokens and step uniform there and reads
    /// back the logits.
    activations: Activations,
    /// Where each queued step's result (its id, and its log-probabilities when asked for) is
    /// copied for reading back: one per step that can be queued, used in turn.
    staging: Vec<wgpu::Buffer>,
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
        let windowed = (0..c.n_layers).any(|l| c.layer_window(l).is_some());
        let max_chunk = if ctx.software || windowed || c.moe.is_some() { MAX_CHUNK } else { GPU_CHUNK };
        // Attention's scratch (scores of the row split, records of the split kernel) and the
        // activations grow with the chunk: fewer tokens per chunk when a full chunk's would not fit
        // one binding.
        let scratch_len = |chunk| {
            (0..c.n_layers)
                .map(|l| attention::scratch_len(&kernels, &attention_dims(&c, l, capacity, chunk), chunk))
                .max()
        };
        // The widest activation ([gate | up] of separately encoded layers) must fit one binding too.
        let widest = (2 * c.ffn_size).max(c.q_dim() + 2 * c.kv_dim()).max(c.hidden_size) as u64;
        let fits = |n: usize| scratch_len(n).unwrap_or(0) as u64 * 4 <= limit && n as u64 * widest * 4 <= limit;
        let chunk = (1..=max_chunk).rev().find(|&n| fits(n)).unwrap_or(1);
        // The KV cache, planned in u64 (hearth_core::plan) and checked against one binding before
        // any buffer is created.
        let plan = GpuPlan::new(m, max_context, kv_f16, chunk)?;
        plan.check_binding(storage_limit(&device))?;
        let activations = Activations::new(&device, &c, chunk, scratch_len(chunk).unwrap_or(1))?;
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

        let builder = Builder::new(&ctx, kernels, m, origin, chunk)?;
        let mut forward = Forward::new(builder, &c, &plan, activations, capacity, chunk)?;
        let layers = forward.layers()?;
        let heads = forward.heads()?;
        let sampler = GpuSampler::new(&ctx, forward.logits(), c.vocab_size as u32, capacity)?;
        let kept = forward.finish();
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
            kv_cache_bytes: kept.kv_cache_bytes,
            weight_bytes: decode_weight_bytes(m),
            attention_reads: kept.attention_reads,
            rings: kept.rings,
            last_step: StepCounts::default(),
            labels: kept.labels,
            activations: kept.activations,
            staging,
            layers,
            head_last: heads.last,
            head_one: heads.one,
            sampler,
            head_all: heads.all,
            expert_steps: kept.expert_steps,
            _weights: kept.weights,
            _scratch: kept.scratch,
        };
        // Anything the device refused while the buffers and pipelines were made.
        engine.ctx.errors.check()?;
        let queue = engine.ctx.queue.clone();
        Ok(Pending::new(engine, queue, m, kept.uploads))
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

    /// Most tokens one forward pass takes (longer prompts run in chunks of this many).
    pub fn prompt_chunk(&self) -> usize {
        self.chunk
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
            self.staging[q.slot].unmap();
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
        let b = &self.activations;
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
                    let staging = &self.staging[slot];
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
        self.staging[slot].slice(..).map_async(wgpu::MapMode::Read, move |r| {
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
        let staging = &self.staging[q.slot];
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
            return read_back_async::<f32>(&self.ctx, &self.activations.logits, 0, self.config.vocab_size).await;
        }
        self.check_room(tokens.len())?;
        let vocab = self.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        // `logits_all` holds MAX_CHUNK rows.
        for chunk in tokens.chunks(self.chunk.min(MAX_CHUNK)) {
            self.run_chunk(Input::Tokens(chunk), Head::All, None)?;
            out.extend(read_back_async::<f32>(&self.ctx, &self.activations.logits_all, 0, chunk.len() * vocab).await?);
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
