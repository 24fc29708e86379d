//! What a package needs before anything of it is downloaded: `Hearth.inspect()` asks [`plan_model`]
//! for the sizes the loader will then really use (`hearth_core::plan`, as `Loader::create` checks
//! them) and for the reasons, if any, that this page cannot run it.

use hearth_core::manifest::{Manifest, ARCHITECTURES};
use hearth_core::package::parse_manifest;
use hearth_core::plan::{CpuPlan, GpuPlan, CPU_WORKING_BYTES};
use hearth_core::HearthError;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::{js_error, named_error, to_js};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PlanOptions {
    /// Cap on the KV cache's positions, as `load()` takes it.
    #[serde(default)]
    max_context: Option<usize>,
    /// Whether the GPU engine's KV cache would be f16 (the adapter offers `shader-f16`).
    #[serde(default)]
    kv_f16: bool,
    /// Bytes the adapter binds at once (`maxStorageBufferBindingSize`, within `maxBufferSize`);
    /// absent: no GPU check.
    #[serde(default)]
    binding: Option<f64>,
    /// Bytes the CPU engine may take in wasm memory, and why; absent: no CPU check.
    #[serde(default)]
    memory_limit: Option<f64>,
    #[serde(default)]
    memory_limit_reason: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Memory {
    weights: u64,
    kv_cache: u64,
    /// Activations and the module's own (CPU only; on the GPU they are a few MB).
    working: u64,
    total: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plan {
    name: String,
    architecture: String,
    /// Weights of every tensor, counted as values (not bytes).
    parameters: u64,
    /// Every shard and file of the package.
    download_bytes: u64,
    /// KV cache positions the figures are for.
    context: usize,
    cpu: Memory,
    gpu: Memory,
    /// Why the CPU engine cannot run it here (empty: it can).
    cpu_refusals: Vec<String>,
    /// Why the GPU engine cannot run it on this adapter (empty: it can, as far as limits tell).
    gpu_refusals: Vec<String>,
}

fn parameters(manifest: &Manifest) -> u64 {
    manifest
        .tensors
        .iter()
        .map(|t| t.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64)))
        .fold(0, u64::saturating_add)
}

/// The sizes of `manifest_text`'s model on both engines at `options.maxContext`, and the reasons
/// each would refuse it under the limits given (the same checks and messages as `Loader.create`).
#[wasm_bindgen(js_name = planModel)]
pub fn plan_model(manifest_text: &str, options: JsValue) -> Result<JsValue, JsValue> {
    let options: PlanOptions = if options.is_undefined() || options.is_null() {
        PlanOptions::default()
    } else {
        serde_wasm_bindgen::from_value(options).map_err(|e| named_error("InvalidArgumentError", &e.to_string()))?
    };
    let manifest = parse_manifest(manifest_text.as_bytes(), "manifest.json").map_err(js_error)?;
    // What both engines refuse first (a manifest may name any architecture).
    if !ARCHITECTURES.contains(&manifest.architecture.as_str()) {
        return Err(js_error(HearthError::UnsupportedArchitecture(manifest.architecture.clone())));
    }
    let cpu = CpuPlan::fast(&manifest, options.max_context).map_err(js_error)?;
    // Rings of windowed layers sized for full prefill chunks: the engine's own, unless attention's
    // scratch for a chunk that long exceeds the adapter's binding, when it takes shorter chunks
    // and smaller rings (the figure is then an upper bound).
    let gpu = GpuPlan::new(&manifest, options.max_context, options.kv_f16, hearth_gpu::MAX_CHUNK).map_err(js_error)?;
    // What the GPU engine reports as its bytes (engine.info.gpuBytes): the shards and the cache.
    // Saturating: a hostile manifest's sizes may add up past 2^64.
    let sum = |sizes: &mut dyn Iterator<Item = u64>| sizes.fold(0u64, u64::saturating_add);
    let shard_bytes = sum(&mut manifest.shards.iter().map(|s| s.size));
    let mut cpu_refusals = Vec::new();
    if let Some(limit) = options.memory_limit.filter(|l| l.is_finite() && *l > 0.0) {
        let why = options.memory_limit_reason.as_deref().unwrap_or("the limit the page gave");
        if let Err(e) = cpu.check(&manifest.name, limit as u64, why) {
            cpu_refusals.push(e.to_string());
        }
    }
    let mut gpu_refusals = Vec::new();
    if let Some(binding) = options.binding.filter(|b| b.is_finite() && *b > 0.0) {
        if let Err(e) = gpu.check_binding(binding as u64) {
            gpu_refusals.push(e.to_string());
        }
    }
    to_js(&Plan {
        name: manifest.name.clone(),
        architecture: manifest.architecture.clone(),
        parameters: parameters(&manifest),
        download_bytes: shard_bytes.saturating_add(sum(&mut manifest.files.iter().map(|f| f.size))),
        context: cpu.positions,
        cpu: Memory { weights: cpu.weights, kv_cache: cpu.cache, working: CPU_WORKING_BYTES, total: cpu.total() },
        gpu: Memory {
            weights: shard_bytes,
            kv_cache: gpu.cache,
            working: 0,
            total: shard_bytes.saturating_add(gpu.cache),
        },
        cpu_refusals,
        gpu_refusals,
    })
}
