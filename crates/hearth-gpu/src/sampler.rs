//! The next token chosen on the GPU (`shaders/sample.wgsl`), so a decoding step reads back 4 bytes
//! instead of the whole logits vector. It gives the token `hearth_core::sampling::choose` gives on
//! the CPU for the same logits, penalty counts, draw and token mask (up to the rounding of sums, see
//! the shader).
//!
//! Per step the caller takes the penalty counts, the mask and, when the temperature is above 0, one
//! draw from its `Sampler` (which keeps the seeded generator), then [`GpuSampler::prepare`] writes
//! them and [`GpuSampler::record`] adds the dispatch after the output head.
//!
//! The penalty counts can also stay on the GPU ([`Penalties`]): the kernel counts each chosen token
//! in (and the one leaving the penalty window out), so the engine can queue a step before it has
//! read back the token the step before it chose.
//!
//! The logit bias (`SamplingParams::logit_bias`) is uploaded when it changes, and added first. On
//! request the same dispatch computes the log-probabilities `hearth_core::logprobs` defines: the
//! chosen token's and the k most likely tokens', read back with the id ((k + 1) * 8 bytes).

use std::cell::{Cell, RefCell};

use hearth_core::logprobs::{StepLogprobs, MAX_TOP_LOGPROBS};
use hearth_core::sampling::{SamplingParams, MAX_LOGIT_BIAS};
use hearth_core::{HearthError, Result};

use crate::context::GpuContext;
use crate::kernels::{bind_group, entry, storage, uniform_of, whole};

const SHADER: &str = include_str!("../../../shaders/sample.wgsl");
/// sample.wgsl's `Params`, field for field (padded to a multiple of 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    window: u32,
    draw: f32,
    masked: u32,
    mask_words: u32,
    n_biased: u32,
    logprobs: u32,
    top_logprobs: u32,
    history_len: u32,
    blocks: u32,
    block_k: u32,
    padding: [u32; 2],
}
/// Tokens per workgroup of the shader's `top_blocks` (its `BLOCK`).
const BLOCK: u32 = 4096;
/// The largest top-k `top_blocks` serves (each block writes its best k): a list of at most 1/16 of
/// the vocabulary, 128 KiB for Gemma's 262,144 tokens.
const MAX_BLOCK_K: u32 = 256;
/// Words of the result: the token, its log-probability, (id, log-probability) per alternative.
pub const RESULT_WORDS: usize = 2 + 2 * MAX_TOP_LOGPROBS;
/// Penalty entries written per `write_buffer` call (from a stack array, not a vector).
const PENALTY_CHUNK: usize = 256;

pub struct GpuSampler {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    /// `top_blocks`, run before `sample` when the step's chain can run over its blocks' best
    /// candidates.
    blocks_pipeline: wgpu::ComputePipeline,
    blocks_group: wgpu::BindGroup,
    /// Blocks of the prepared step (0: `top_blocks` does not run).
    blocks: Cell<u32>,
    params: wgpu::Buffer,
    penalties: wgpu::Buffer,
    result: wgpu::Buffer,
    /// The allowed tokens of a masked step, a bit per token: ceil(vocab / 32) words.
    mask: wgpu::Buffer,
    /// (token, bias bits) pairs, at most `MAX_LOGIT_BIAS`.
    bias: wgpu::Buffer,
    /// The shader's `Recent`: how many entries of `penalties` are in use, then the ring of the
    /// last window of the history.
    recent: wgpu::Buffer,
    /// What `bias` holds, so an unchanged bias is not written again.
    uploaded_bias: RefCell<Vec<[u32; 2]>>,
    vocab: u32,
    max_penalized: usize,
}

/// Where a step's penalty counts come from.
#[derive(Debug, Clone, Copy)]
pub enum Penalties<'a> {
    /// `(token, occurrences)` from `Sampler::penalty_counts`, written for this step only.
    Counts(&'a [(u32, u32)]),
    /// The same counts with the `history` they were taken from (every token so far): written with
    /// the history's last window, so the kernel keeps them up to date for the steps after
    /// ([`Penalties::Carried`]).
    History { counts: &'a [(u32, u32)], history: &'a [u32] },
    /// What the previous step left on the GPU, after its choice made the history `history_len`
    /// tokens long. Nothing is written; the previous step must have been prepared with
    /// [`Penalties::History`] or [`Penalties::Carried`] and the same parameters.
    Carried { history_len: usize },
}

impl GpuSampler {
    /// `logits`: a storage buffer of `vocab` f32 the engine's output head writes; modified in place.
    /// `max_penalized`: most distinct tokens a penalty list may hold (the engine passes its context length).
    pub fn new(ctx: &GpuContext, logits: &wgpu::Buffer, vocab: u32, max_penalized: usize) -> Result<Self> {
        let device = &ctx.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("sample.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipeline_of = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pipeline = pipeline_of("sample");
        let blocks_pipeline = pipeline_of("top_blocks");
        let params = uniform_of(device, "sampling params", &Params::default());
        // Two u32 per entry, and room for one entry more than a window holds: the kernel counts
        // the chosen token in before it counts the leaving one out.
        let penalties = storage(device, "penalty counts", 2 * (max_penalized + 1))?;
        let recent = storage(device, "penalty window", 1 + max_penalized.max(1))?;
        let result = storage(device, "sampled token", RESULT_WORDS)?;
        let mask = storage(device, "token mask", mask_words(vocab))?;
        let bias = storage(device, "logit bias", 2 * MAX_LOGIT_BIAS)?;
        let unpenalized = storage(device, "logits before penalties", max_penalized + 1)?;
        let block_top = storage(device, "blocks' best tokens", 2 * (vocab.div_ceil(BLOCK) * MAX_BLOCK_K) as usize)?;
        let entries = [
            entry(0, whole(&params)),
            entry(1, whole(logits)),
            entry(2, whole(&penalties)),
            entry(3, whole(&result)),
            entry(4, whole(&mask)),
            entry(5, whole(&bias)),
            entry(6, whole(&unpenalized)),
            entry(7, whole(&recent)),
            entry(8, whole(&block_top)),
        ];
        let bind_group = bind_group(device, &pipeline, &entries);
        // Everything but the result, which only `sample` writes.
        let blocks_group =
            crate::kernels::bind_group(device, &blocks_pipeline, &[&entries[..3], &entries[4..]].concat());
        let uploaded_bias = RefCell::new(Vec::new());
        Ok(GpuSampler {
            pipeline,
            bind_group,
            blocks_pipeline,
            blocks_group,
            blocks: Cell::new(0),
            params,
            penalties,
            result,
            mask,
            bias,
            recent,
            uploaded_bias,
            vocab,
            max_penalized,
        })
    }

    /// Write this step's settings (queue writes only: no buffer or vector is created per token). `draw` is the
    /// uniform number in [0, 1) from `Sampler::draw` (unused when greedy); `penalties` the
    /// `(token, occurrences)` list from `Sampler::penalty_counts` (each token at most once) or the
    /// counts the last step left ([`Penalties`]); `mask`
    /// the allowed tokens from `Sampler::mask` (bit `t % 32` of word `t / 32`; tokens past its end
    /// are not allowed), applied as `sampling::apply_mask` applies it before the penalties. The
    /// mask costs one write of at most ceil(vocab / 32) words, and nothing when None. The logit
    /// bias comes from `params`. `logprobs`: Some(k) (k <= 20) computes the log-probabilities too
    /// ([`GpuSampler::read_result`]).
    pub fn prepare(
        &self,
        queue: &wgpu::Queue,
        params: &SamplingParams,
        draw: f32,
        penalties: Penalties<'_>,
        mask: Option<&[u32]>,
        logprobs: Option<usize>,
    ) -> Result<()> {
        params.validate()?;
        params.check_vocab(self.vocab as usize)?;
        if let Some(k) = logprobs {
            hearth_core::logprobs::check_top_logprobs(k)?;
        }
        if !draw.is_finite() || draw < 0.0 {
            return Err(HearthError::InvalidArgument(format!("the draw must be a finite number >= 0, got {draw}")));
        }
        // The window the kernel keeps (0: none). A history never outgrows the context, and
        // `max_penalized` is the engine's context length: a longer window never fills.
        let window = if params.penalizes() { params.penalty_last_n.min(self.max_penalized) } else { 0 };
        let (window, history_len) = match penalties {
            Penalties::Counts(counts) => {
                self.write_counts(queue, counts)?;
                (0, 0)
            }
            Penalties::History { counts, history } => {
                // The ring holds `window` tokens: a longer penalty window over a longer history
                // could not be carried (the engine's `max_penalized` is its context: never).
                if window < params.penalty_last_n && history.len() > window && window > 0 {
                    return Err(HearthError::InvalidArgument(format!(
                        "a penalty window of {} tokens over a {}-token history cannot be carried by a sampler \
                         built for {} tokens",
                        params.penalty_last_n,
                        history.len(),
                        self.max_penalized
                    )));
                }
                self.write_counts(queue, counts)?;
                self.write_window(queue, history, window);
                (window, history.len())
            }
            Penalties::Carried { history_len } => {
                if mask.is_some() {
                    return Err(HearthError::InvalidArgument(
                        "a step whose input the GPU chose cannot be masked (its mask depends on that token)".into(),
                    ));
                }
                (window, history_len)
            }
        };
        // Words past the vocabulary's only hold tokens that do not exist: not written.
        let written = mask.map_or(0, |m| m.len().min(mask_words(self.vocab)));
        // Each block's best candidates first (top_blocks applies the bias, the penalties and the
        // mask to its own tokens) where the chain keeps only what they hold: the best (greedy), or
        // a top-k of at most MAX_BLOCK_K. Not with log-probabilities, taken over the whole
        // vocabulary before the penalties.
        let block_k = match u32::try_from(params.top_k) {
            _ if params.temperature == 0.0 => Some(1),
            Ok(k @ 1..=MAX_BLOCK_K) => Some(k),
            _ => None,
        };
        let (blocks, block_k) = match block_k {
            Some(k) if logprobs.is_none() && self.vocab > BLOCK => (self.vocab.div_ceil(BLOCK), k),
            _ => (0, 0),
        };
        self.blocks.set(blocks);
        let words = Params {
            vocab: self.vocab,
            temperature: params.temperature,
            top_k: u32::try_from(params.top_k).unwrap_or(u32::MAX),
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            window: window as u32,
            draw,
            masked: u32::from(mask.is_some()),
            mask_words: written as u32,
            n_biased: params.logit_bias.len() as u32,
            logprobs: u32::from(logprobs.is_some()),
            top_logprobs: logprobs.unwrap_or(0) as u32,
            history_len: u32::try_from(history_len).unwrap_or(u32::MAX),
            blocks,
            block_k,
            padding: [0; 2],
        };
        queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&words));
        let bias: Vec<[u32; 2]> = params.logit_bias.iter().map(|(&t, b)| [t, b.to_bits()]).collect();
        let mut uploaded = self.uploaded_bias.borrow_mut();
        if !bias.is_empty() && *uploaded != bias {
            queue.write_buffer(&self.bias, 0, bytemuck::cast_slice(&bias));
            *uploaded = bias;
        }
        if let Some(mask) = mask.filter(|_| written > 0) {
            queue.write_buffer(&self.mask, 0, bytemuck::cast_slice(&mask[..written]));
        }
        Ok(())
    }

    /// The penalty list and its length.
    fn write_counts(&self, queue: &wgpu::Queue, counts: &[(u32, u32)]) -> Result<()> {
        if counts.len() > self.max_penalized {
            return Err(HearthError::InvalidArgument(format!(
                "{} penalized tokens, more than the {} this GPU sampler was built for",
                counts.len(),
                self.max_penalized
            )));
        }
        // The shader applies the entries in parallel: a token listed twice would race.
        if counts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(HearthError::InvalidArgument("penalty counts must be sorted by token, each token once".into()));
        }
        queue.write_buffer(&self.recent, 0, bytemuck::bytes_of(&(counts.len() as u32)));
        let mut chunk = [0u32; 2 * PENALTY_CHUNK];
        for (c, part) in counts.chunks(PENALTY_CHUNK).enumerate() {
            for (slot, &(token, n)) in chunk.chunks_exact_mut(2).zip(part) {
                slot.copy_from_slice(&[token, n]);
            }
            let offset = (c * PENALTY_CHUNK * 8) as u64;
            queue.write_buffer(&self.penalties, offset, bytemuck::cast_slice(&chunk[..2 * part.len()]));
        }
        Ok(())
    }

    /// The last `window` tokens of `history` into the ring (token i in slot i % window): at most
    /// two writes, straight from the history.
    fn write_window(&self, queue: &wgpu::Queue, history: &[u32], window: usize) {
        if window == 0 {
            return;
        }
        let first = history.len().saturating_sub(window);
        let tail = &history[first..];
        let slot = first % window;
        let (to_end, wrapped) = tail.split_at(tail.len().min(window - slot));
        let at = |slot: usize| 4 * (1 + slot) as u64;
        if !to_end.is_empty() {
            queue.write_buffer(&self.recent, at(slot), bytemuck::cast_slice(to_end));
        }
        if !wrapped.is_empty() {
            queue.write_buffer(&self.recent, at(0), bytemuck::cast_slice(wrapped));
        }
    }

    /// Record the prepared step's dispatches ([`GpuSampler::dispatches`]) into the caller's compute
    /// pass (the engine records them after the output head, in the same submit).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.record_blocks(pass);
        self.record_sample(pass);
    }

    /// `top_blocks`, where the prepared step runs it (a profiled step times it in a pass of its
    /// own).
    pub fn record_blocks(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.blocks.get() > 0 {
            pass.set_pipeline(&self.blocks_pipeline);
            pass.set_bind_group(0, &self.blocks_group, &[]);
            pass.dispatch_workgroups(self.blocks.get(), 1, 1);
        }
    }

    /// `sample`, after [`GpuSampler::record_blocks`].
    pub fn record_sample(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Dispatches [`GpuSampler::record`] records for the prepared step: `sample`, after
    /// `top_blocks` where it runs.
    pub fn dispatches(&self) -> usize {
        1 + usize::from(self.blocks.get() > 0)
    }

    /// Buffer whose first u32 is the chosen id, to be copied into a MAP_READ staging buffer: its
    /// first [`result_bytes`] bytes.
    pub fn result(&self) -> &wgpu::Buffer {
        &self.result
    }

    /// The chosen id and, when `logprobs` was Some(k) in [`prepare`](Self::prepare), its figures
    /// (k alternatives, or the whole vocabulary if smaller), from the first
    /// [`result_bytes`]`(logprobs)` bytes of [`result`](Self::result).
    pub fn read_result(&self, words: &[u32], logprobs: Option<usize>) -> Result<(u32, Option<StepLogprobs>)> {
        let need = result_bytes(logprobs) as usize / 4;
        let Some(words) = words.get(..need) else {
            return Err(HearthError::Gpu("the sampled token did not come back".into()));
        };
        let figures = logprobs.map(|k| StepLogprobs {
            logprob: f32::from_bits(words[1]),
            top: words[2..]
                .chunks_exact(2)
                .take(k.min(self.vocab as usize))
                .map(|p| (p[0], f32::from_bits(p[1])))
                .collect(),
        });
        Ok((words[0], figures))
    }
}

/// Bytes of the result a step reads back: the id (4), and with Some(k) its log-probability (4) and
/// k alternatives (8 each).
pub fn result_bytes(logprobs: Option<usize>) -> u64 {
    logprobs.map_or(4, |k| 8 * (k as u64 + 1))
}

/// Words of a mask covering `vocab` tokens.
fn mask_words(vocab: u32) -> usize {
    (vocab as usize).div_ceil(32)
}
