//! Model loading: the manifest and tokenizer first (for the GPU every buffer created empty and
//! every pipeline built; for the CPU every tensor's arrays allocated), then the shards in any order
//! as JavaScript fetches them, each copied into the buffers or arrays that need its bytes without
//! ever holding the whole shard in wasm memory.

use hearth_core::assemble::ShardAssembler;
use hearth_core::fast::FastEngine;
use hearth_core::manifest::Manifest;
use hearth_core::model::Prompter;
use hearth_core::package::parse_manifest;
use hearth_core::plan::CpuPlan;
use hearth_core::HearthError;
use hearth_gpu::{GpuContext, GpuEncoder, GpuEngine, PendingEncoder, PendingEngine};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::compute::Compute;
use crate::engine::Engine;
use crate::{js_error, named_error};

/// Where the model will run (JavaScript resolves `"auto"` before it gets here).
#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum BackendChoice {
    #[default]
    Webgpu,
    Cpu,
}

enum Pending {
    Gpu(Box<PendingEngine>),
    GpuEncoder(Box<PendingEncoder>),
    Cpu(Box<ShardAssembler>),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LoadOptions {
    /// Cap on the KV cache's positions (the model's context length by default).
    #[serde(default)]
    max_context: Option<usize>,
    /// The adapter's name as the page sees it (`GPUAdapterInfo`): wgpu has none to give in a browser.
    #[serde(default)]
    adapter_label: Option<String>,
    #[serde(default)]
    backend: BackendChoice,
    /// Bytes the CPU engine may take in wasm memory, and why that much (wasm32's 4 GiB, or a share
    /// of `navigator.deviceMemory`): a model that needs more is refused before any download.
    #[serde(default)]
    memory_limit: Option<f64>,
    #[serde(default)]
    memory_limit_reason: Option<String>,
}

/// Refuse a model that the CPU engine cannot hold within the page's limit, naming both sizes.
fn check_cpu_memory(manifest: &Manifest, options: &LoadOptions) -> Result<(), HearthError> {
    let Some(limit) = options.memory_limit.filter(|l| l.is_finite() && *l > 0.0) else { return Ok(()) };
    let why = options.memory_limit_reason.as_deref().unwrap_or("the limit the page gave");
    CpuPlan::fast(manifest, options.max_context)?.check(&manifest.name, limit as u64, why)
}

#[wasm_bindgen]
pub struct Loader {
    pending: Pending,
    max_context: Option<usize>,
    prompter: Prompter,
    manifest: Manifest,
}

#[wasm_bindgen]
impl Loader {
    /// Prepare the engine for `manifest_text` (the package's `manifest.json`) and `tokenizer_text`
    /// (its `tokenizer.json`, already verified): with `backend: "webgpu"` (the default) open the
    /// WebGPU device and create every buffer; with `"cpu"` allocate every tensor in wasm memory.
    pub async fn create(manifest_text: String, tokenizer_text: String, options: JsValue) -> Result<Loader, JsValue> {
        let options: LoadOptions = if options.is_undefined() || options.is_null() {
            LoadOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| named_error("InvalidArgumentError", &e.to_string()))?
        };
        let manifest = parse_manifest(manifest_text.as_bytes(), "manifest.json").map_err(js_error)?;
        let info = manifest.tokenizer.clone();
        let prompter = Prompter::new(&manifest.name, tokenizer_text.as_bytes(), info).map_err(js_error)?;
        let pending = match options.backend {
            BackendChoice::Cpu => {
                check_cpu_memory(&manifest, &options).map_err(js_error)?;
                Pending::Cpu(Box::new(ShardAssembler::new(manifest.clone()).map_err(js_error)?))
            }
            BackendChoice::Webgpu => {
                let ctx = GpuContext::new_async()
                    .await
                    .map_err(js_error)?
                    .ok_or_else(|| named_error("WebGPUUnavailableError", "this browser offers no WebGPU adapter"))?;
                let ctx = match options.adapter_label.filter(|l| !l.is_empty()) {
                    Some(label) => GpuContext { adapter_name: label, ..ctx },
                    None => ctx,
                };
                if manifest.config.encoder.is_some() {
                    Pending::GpuEncoder(Box::new(
                        GpuEncoder::prepare(ctx, &manifest, "manifest.json").map_err(js_error)?,
                    ))
                } else {
                    let pending =
                        GpuEngine::prepare(ctx, &manifest, "manifest.json", options.max_context).map_err(js_error)?;
                    Pending::Gpu(Box::new(pending))
                }
            }
        };
        Ok(Loader { pending, max_context: options.max_context, prompter, manifest })
    }

    /// Bytes in all shards together.
    #[wasm_bindgen(getter, js_name = totalBytes)]
    pub fn total_bytes(&self) -> f64 {
        self.manifest.shards.iter().map(|s| s.size).sum::<u64>() as f64
    }

    /// Shard `index`'s bytes (verified against the manifest's sha256 by the caller): its tensors go
    /// to the GPU buffers, or the CPU engine's arrays, that need them.
    #[wasm_bindgen(js_name = feedShard)]
    pub fn feed_shard(&mut self, index: usize, bytes: &js_sys::Uint8Array) -> Result<(), JsValue> {
        let len = u64::from(bytes.length());
        // Only the pieces being assembled are copied into wasm memory: for the GPU through a small
        // window, for the CPU straight into their final place.
        let mut copy = |at: u64, dst: &mut [u8]| {
            let start = at as u32;
            bytes.subarray(start, start + dst.len() as u32).copy_to(dst);
        };
        match &mut self.pending {
            Pending::Gpu(pending) => pending.feed_shard(index, len, &mut copy),
            Pending::GpuEncoder(pending) => pending.feed_shard(index, len, &mut copy),
            Pending::Cpu(assembler) => assembler.feed_shard(index, len, &mut copy),
        }
        .map_err(js_error)
    }

    /// The engine, once every shard has been fed.
    pub fn finish(self) -> Result<Engine, JsValue> {
        let compute = match self.pending {
            Pending::Gpu(pending) => Compute::Gpu(Box::new(pending.finish().map_err(js_error)?)),
            Pending::GpuEncoder(pending) => Compute::GpuEncoder(Box::new(pending.finish().map_err(js_error)?)),
            Pending::Cpu(assembler) => {
                let (manifest, tensors) = assembler.finish().map_err(js_error)?;
                let max = manifest.config.context_length;
                let context_length = self.max_context.unwrap_or(max).clamp(1, max);
                let engine = FastEngine::with_context(manifest.config, tensors, context_length).map_err(js_error)?;
                Compute::Cpu { engine: Box::new(engine), context_length }
            }
        };
        Ok(Engine::new(compute, self.prompter, self.manifest))
    }
}
