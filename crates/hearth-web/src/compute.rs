//! The two engines a page can run a model on, behind one `sample_next`: the GPU engine (WebGPU) and
//! the fast CPU engine (wasm, SIMD128; threads in the threaded build). Which one runs is chosen in
//! JavaScript (`backend` in `Hearth.load`); everything above this file is the same for both.

use hearth_core::fast::FastEngine;
use hearth_core::generate::{Backend as _, StepInput};
use hearth_core::logprobs::StepLogprobs;
use hearth_core::Result;
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
    /// Run `input.tokens` and choose the next id (the GPU samples on the device; the CPU engine
    /// hands its logits to `hearth_core`'s sampler); with `logprobs` Some(k), also the chosen
    /// token's log-probability and the k most likely tokens' (on the GPU only those come back).
    pub async fn sample_next(
        &mut self,
        input: StepInput<'_>,
        logprobs: Option<usize>,
    ) -> Result<(u32, Option<StepLogprobs>)> {
        let StepInput { tokens, sampler, history } = input;
        match (self, logprobs) {
            (Compute::Gpu(gpu), _) => gpu.sample_next_logprobs_async(tokens, sampler, history, logprobs).await,
            (Compute::Cpu { engine, .. }, Some(k)) => {
                let (id, step) = engine.forward_sample_logprobs(tokens, sampler, history, k)?;
                Ok((id, Some(step)))
            }
            (Compute::Cpu { engine, .. }, None) => Ok((engine.forward_sample(tokens, sampler, history)?, None)),
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
