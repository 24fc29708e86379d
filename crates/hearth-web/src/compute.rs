//! The two engines a page can run a model on, behind one `sample_next`: the GPU engine (WebGPU) and
//! the fast CPU engine (wasm, SIMD128; threads in the threaded build). Which one runs is chosen in
//! JavaScript (`backend` in `Hearth.load`); everything above this file is the same for both.

use hearth_core::fast::FastEngine;
use hearth_core::generate::{Backend as _, Generation};
use hearth_core::logprobs::StepLogprobs;
use hearth_core::{HearthError, Result};
use hearth_gpu::GpuEngine;

/// Both engines are large; boxed, the enum is a pointer and a tag.
pub(crate) enum Compute {
    Gpu(Box<GpuEngine>),
    Cpu {
        engine: Box<FastEngine>,
        /// Positions allowed: the model's context length, or less where the page asked (`maxContext`).
        context_length: usize,
    },
}

impl Compute {
    /// The next id `generation` takes (None: it is done), with its log-probability and the k most
    /// likely tokens' when the request asks for logprobs. The GPU samples on the device and keeps
    /// up to `hearth_gpu::QUEUE_DEPTH` steps queued, so it runs the next steps while the page
    /// turns this token into text (hearth_core::generate's queued loop); the CPU engine runs one
    /// step and hands its logits to `hearth_core`'s sampler.
    pub async fn next_token(&mut self, generation: &mut Generation) -> Result<Option<(u32, Option<StepLogprobs>)>> {
        let logprobs = generation.logprobs_requested();
        match self {
            Compute::Gpu(gpu) => {
                let queued = gpu.queued();
                if generation.fill_queue(queued, hearth_gpu::QUEUE_DEPTH, |step| gpu.queue_step(step, logprobs))? == 0 {
                    return Ok(None);
                }
                Ok(Some(gpu.next_queued_async().await?))
            }
            Compute::Cpu { engine, .. } => {
                let Some(input) = generation.input() else { return Ok(None) };
                Ok(Some(match logprobs {
                    Some(k) => {
                        let (id, step) =
                            engine.forward_sample_logprobs(input.tokens, input.sampler, input.history, k)?;
                        (id, Some(step))
                    }
                    None => (engine.forward_sample(input.tokens, input.sampler, input.history)?, None),
                }))
            }
        }
    }

    /// An encoder's embedding of `ids` (one text), normalized as `normalize` says (None: as the
    /// model's config says). Only the CPU engine runs encoders yet; the loader keeps them off the GPU.
    pub fn embed(&mut self, ids: &[u32], normalize: Option<bool>) -> Result<Vec<f32>> {
        match self {
            Compute::Gpu(_) => Err(HearthError::UnsupportedSource(
                "the WebGPU engine does not run encoders yet: load the model with backend \"cpu\"".into(),
            )),
            Compute::Cpu { engine, .. } => engine.embed_with(ids, normalize),
        }
    }

    /// Forget the queued steps not read yet (at the end of a generation, or when it is dropped):
    /// the cache goes back to the positions the generation's accepted tokens ran.
    pub fn drop_queued(&mut self) {
        if let Compute::Gpu(gpu) = self {
            gpu.drop_queued();
        }
    }

    pub fn reset(&mut self) {
        match self {
            Compute::Gpu(gpu) => gpu.reset(),
            Compute::Cpu { engine, .. } => engine.reset(),
        }
    }

    /// Keep the first `keep` positions of the cache if it can continue from there, else reset;
    /// returns how many were kept (`hearth_core::generate::PromptCache::prepare_with`).
    pub fn cut(&mut self, keep: usize) -> usize {
        let kept = keep > 0
            && match self {
                Compute::Gpu(gpu) => gpu.truncate(keep),
                Compute::Cpu { engine, .. } => engine.truncate(keep),
            };
        if kept {
            keep
        } else {
            self.reset();
            0
        }
    }

    pub fn context_length(&self) -> usize {
        match self {
            Compute::Gpu(gpu) => gpu.context_length(),
            Compute::Cpu { context_length, .. } => *context_length,
        }
    }
}
