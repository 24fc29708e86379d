//! The two engines a page can run a model on, behind one `sample_next`: the GPU engine (WebGPU) and
//! the fast CPU engine (wasm, SIMD128; threads in the threaded build), and an encoder's on WebGPU.
//! Which one runs is chosen in JavaScript (`backend` in `Hearth.load`); everything above this file
//! is the same for all.

use hearth_core::fast::FastEngine;
use hearth_core::generate::{Backend as _, Generation};
use hearth_core::logprobs::StepLogprobs;
use hearth_core::{HearthError, Result};
use hearth_gpu::{GpuEncoder, GpuEngine};

/// Both engines are large; boxed, the enum is a pointer and a tag.
pub(crate) enum Compute {
    Gpu(Box<GpuEngine>),
    /// An encoder on WebGPU (a decoder's steps never reach it: `Engine::begin` refuses encoders).
    GpuEncoder(Box<GpuEncoder>),
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
            Compute::GpuEncoder(_) => Err(encoder_steps()),
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

    /// An encoder's embeddings of `texts` (each its ids), normalized as `normalize` says (None: as
    /// the model's config says): on WebGPU packed into steps, on the CPU one text at a time.
    pub async fn embed(&mut self, texts: &[Vec<u32>], normalize: Option<bool>) -> Result<Vec<Vec<f32>>> {
        match self {
            Compute::GpuEncoder(gpu) => gpu.embed_async(texts, normalize).await,
            Compute::Cpu { engine, .. } => texts.iter().map(|ids| engine.embed_with(ids, normalize)).collect(),
            // Engine::embed refuses a decoder first.
            Compute::Gpu(_) => {
                Err(HearthError::InvalidArgument("this model is a decoder: it gives no embeddings".into()))
            }
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
            Compute::GpuEncoder(_) => {}
        }
    }

    /// Keep the first `keep` positions of the cache if it can continue from there, else reset;
    /// returns how many were kept (`hearth_core::generate::PromptCache::prepare_with`).
    pub fn cut(&mut self, keep: usize) -> usize {
        let kept = keep > 0
            && match self {
                Compute::Gpu(gpu) => gpu.truncate(keep),
                Compute::Cpu { engine, .. } => engine.truncate(keep),
                Compute::GpuEncoder(_) => false,
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
            Compute::GpuEncoder(gpu) => gpu.config().encoder.as_ref().map_or(0, |e| e.max_tokens),
        }
    }
}

fn encoder_steps() -> HearthError {
    HearthError::UnsupportedSource("this model is an encoder: it gives embeddings, not generated text".into())
}
