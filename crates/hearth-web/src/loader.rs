//! Model loading: the manifest and tokenizer first (every GPU buffer created empty, every pipeline
//! built), then the shards in any order as JavaScript fetches them, each copied into the buffers
//! that need its bytes without ever holding the whole shard in wasm memory.

use hearth_core::model::Prompter;
use hearth_core::package::parse_manifest;
use hearth_gpu::{GpuContext, GpuEngine, PendingEngine};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::engine::Engine;
use crate::{js_error, named_error};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LoadOptions {
    /// Cap on the KV cache's positions (the model's context length by default).
    #[serde(default)]
    max_context: Option<usize>,
    /// The adapter's name as the page sees it (`GPUAdapterInfo`): wgpu has none to give in a browser.
    #[serde(default)]
    adapter_label: Option<String>,
}

#[wasm_bindgen]
pub struct Loader {
    pending: PendingEngine,
    prompter: Prompter,
    manifest: hearth_core::manifest::Manifest,
}

#[wasm_bindgen]
impl Loader {
    /// Open the WebGPU device and prepare the engine for `manifest_text` (the package's
    /// `manifest.json`) and `tokenizer_text` (its `tokenizer.json`, already verified).
    pub async fn create(manifest_text: String, tokenizer_text: String, options: JsValue) -> Result<Loader, JsValue> {
        let options: LoadOptions = if options.is_undefined() || options.is_null() {
            LoadOptions::default()
        } else {
            serde_wasm_bindgen::from_value(options).map_err(|e| named_error("InvalidArgumentError", &e.to_string()))?
        };
        let manifest = parse_manifest(manifest_text.as_bytes(), "manifest.json").map_err(js_error)?;
        let info = manifest.tokenizer.clone();
        let prompter = Prompter::new(&manifest.name, tokenizer_text.as_bytes(), info).map_err(js_error)?;
        let ctx = GpuContext::new_async()
            .await
            .map_err(js_error)?
            .ok_or_else(|| named_error("WebGPUUnavailableError", "this browser offers no WebGPU adapter"))?;
        let ctx = match options.adapter_label.filter(|l| !l.is_empty()) {
            Some(label) => GpuContext { adapter_name: label, ..ctx },
            None => ctx,
        };
        let pending = GpuEngine::prepare(ctx, &manifest, "manifest.json", options.max_context).map_err(js_error)?;
        Ok(Loader { pending, prompter, manifest })
    }

    /// Bytes in all shards together.
    #[wasm_bindgen(getter, js_name = totalBytes)]
    pub fn total_bytes(&self) -> f64 {
        self.manifest.shards.iter().map(|s| s.size).sum::<u64>() as f64
    }

    /// Shard `index`'s bytes (verified against the manifest's sha256 by the caller): its tensors go
    /// to the GPU buffers that need them.
    #[wasm_bindgen(js_name = feedShard)]
    pub fn feed_shard(&mut self, index: usize, bytes: &js_sys::Uint8Array) -> Result<(), JsValue> {
        let len = bytes.length();
        self.pending
            .feed_shard(index, u64::from(len), &mut |at, dst| {
                // Only the pieces being assembled are copied into wasm memory.
                let start = at as u32;
                bytes.subarray(start, start + dst.len() as u32).copy_to(dst);
            })
            .map_err(js_error)
    }

    /// The engine, once every shard has been fed.
    pub fn finish(self) -> Result<Engine, JsValue> {
        let gpu = self.pending.finish().map_err(js_error)?;
        Ok(Engine::new(gpu, self.prompter, self.manifest))
    }
}
