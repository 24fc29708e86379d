//! The next token chosen on the GPU (`shaders/sample.wgsl`), so a decoding step reads back 4 bytes
//! instead of the whole logits vector. It gives the token `hearth_core::sampling::choose` gives on
//! the CPU for the same logits, penalty counts, draw and token mask (up to the rounding of sums, see
//! the shader).
//!
//! Per step the caller takes the penalty counts, the mask and, when the temperature is above 0, one
//! draw from its `Sampler` (which keeps the seeded generator), then [`GpuSampler::prepare`] writes
//! them and [`GpuSampler::record`] adds the dispatch after the output head.

use hearth_core::sampling::SamplingParams;
use hearth_core::{HearthError, Result};

use crate::context::GpuContext;
use crate::kernels::{bind_group, entry, storage, uniform, whole};

const SHADER: &str = include_str!("../../../shaders/sample.wgsl");
/// The shader's `Params`: 12 scalars (a multiple of 16 bytes).
const PARAM_WORDS: usize = 12;
/// Penalty entries written per `write_buffer` call (from a stack array, not a vector).
const PENALTY_CHUNK: usize = 256;

pub struct GpuSampler {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    penalties: wgpu::Buffer,
    result: wgpu::Buffer,
    /// The allowed tokens of a masked step, a bit per token: ceil(vocab / 32) words.
    mask: wgpu::Buffer,
    vocab: u32,
    max_penalized: usize,
}

impl GpuSampler {
    /// `logits`: a storage buffer of `vocab` f32 the engine's output head writes; modified in place.
    /// `max_penalized`: most distinct tokens a penalty list may hold (the engine passes its context length).
    pub fn new(ctx: &GpuContext, logits: &wgpu::Buffer, vocab: u32, max_penalized: usize) -> Self {
        let device = &ctx.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("sample.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("sample"),
            layout: None,
            module: &module,
            entry_point: Some("sample"),
            compilation_options: Default::default(),
            cache: None,
        });
        let params = uniform(device, "sampling params", &[0; PARAM_WORDS]);
        // Two u32 per entry.
        let penalties = storage(device, "penalty counts", 2 * max_penalized.max(1));
        let result = storage(device, "sampled token", 1);
        let mask = storage(device, "token mask", mask_words(vocab));
        let bind_group = bind_group(
            device,
            &pipeline,
            &[
                entry(0, whole(&params)),
                entry(1, whole(logits)),
                entry(2, whole(&penalties)),
                entry(3, whole(&result)),
                entry(4, whole(&mask)),
            ],
        );
        GpuSampler { pipeline, bind_group, params, penalties, result, mask, vocab, max_penalized }
    }

    /// Write this step's settings (queue writes only: no buffer or vector is created per token). `draw` is the
    /// uniform number in [0, 1) from `Sampler::draw` (unused when greedy); `counts` the
    /// `(token, occurrences)` list from `Sampler::penalty_counts`, each token at most once; `mask`
    /// the allowed tokens from `Sampler::mask` (bit `t % 32` of word `t / 32`; tokens past its end
    /// are not allowed), applied as `sampling::apply_mask` applies it before the penalties. The
    /// mask costs one write of at most ceil(vocab / 32) words, and nothing when None.
    pub fn prepare(
        &self,
        queue: &wgpu::Queue,
        params: &SamplingParams,
        draw: f32,
        counts: &[(u32, u32)],
        mask: Option<&[u32]>,
    ) -> Result<()> {
        params.validate()?;
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
        if !draw.is_finite() || draw < 0.0 {
            return Err(HearthError::InvalidArgument(format!("the draw must be a finite number >= 0, got {draw}")));
        }
        // Words past the vocabulary's only hold tokens that do not exist: not written.
        let written = mask.map_or(0, |m| m.len().min(mask_words(self.vocab)));
        let words: [u32; PARAM_WORDS] = [
            self.vocab,
            params.temperature.to_bits(),
            u32::try_from(params.top_k).unwrap_or(u32::MAX),
            params.top_p.to_bits(),
            params.min_p.to_bits(),
            params.repetition_penalty.to_bits(),
            params.presence_penalty.to_bits(),
            params.frequency_penalty.to_bits(),
            counts.len() as u32,
            draw.to_bits(),
            mask.is_some() as u32,
            written as u32,
        ];
        queue.write_buffer(&self.params, 0, bytemuck::cast_slice(&words));
        if let Some(mask) = mask.filter(|_| written > 0) {
            queue.write_buffer(&self.mask, 0, bytemuck::cast_slice(&mask[..written]));
        }
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

    /// Record the dispatch into the caller's compute pass (the engine records it after the output
    /// head, in the same submit).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Buffer whose first u32 is the chosen id, to be copied into a MAP_READ staging buffer.
    pub fn result(&self) -> &wgpu::Buffer {
        &self.result
    }
}

/// Words of a mask covering `vocab` tokens.
fn mask_words(vocab: u32) -> usize {
    (vocab as usize).div_ceil(32)
}
