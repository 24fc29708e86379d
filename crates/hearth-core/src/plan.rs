//! What a model will take in memory, computed from its manifest before anything is allocated or
//! downloaded, in checked `u64` arithmetic (never `usize`, which is 32 bits in wasm). The browser's
//! loader refuses a model past the page's limit with these numbers; the GPU engine sizes its KV
//! cache from `GpuPlan`; the fuzz targets and the property tests (`tests/size_arithmetic.rs`) hold
//! the allocators to them.

use crate::cpu::CpuEngine;
use crate::error::{HearthError, Result};
use crate::fast::FastEngine;
use crate::manifest::{Manifest, ARCHITECTURES};

/// The manifest checked for planning, the KV cache positions at `max_context` (within 1 and the
/// model's own) and the bytes of every tensor part.
fn positions_and_weights(manifest: &Manifest, max_context: Option<usize>) -> Result<(usize, u64)> {
    let c = &manifest.config;
    let bad = |detail: String| HearthError::bad_package("manifest.json", detail);
    c.validate().map_err(bad)?;
    // Every layer has tensors, so more layers than tensors is a broken (or hostile) manifest.
    if c.n_layers > manifest.tensors.len() {
        return Err(bad(format!("config.n_layers is {}, but it lists {} tensors", c.n_layers, manifest.tensors.len())));
    }
    let positions = max_context.unwrap_or(c.context_length).clamp(1, c.context_length);
    let weights = manifest
        .tensors
        .iter()
        .flat_map(|t| t.parts.values())
        .try_fold(0u64, |n, part| n.checked_add(part.length))
        .ok_or_else(|| bad("the tensors' sizes add up past 2^64 bytes".into()))?;
    Ok((positions, weights))
}

/// Room for what is not weights or cache: activations, logits, the tokenizer, the wasm module's own.
pub const CPU_WORKING_BYTES: u64 = 64 << 20;

/// The memory of a model on a CPU engine at a given context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPlan {
    /// KV cache positions: the context asked for, within 1 and the model's own.
    pub positions: usize,
    /// The tensors' arrays: every part of every tensor, as `ShardAssembler` allocates them.
    pub weights: u64,
    /// The KV cache at `positions` (f16 on the fast engine, f32 on the reference).
    pub cache: u64,
}

impl CpuPlan {
    /// The plan for the fast engine (what users run); `max_context` caps the cache.
    pub fn fast(manifest: &Manifest, max_context: Option<usize>) -> Result<Self> {
        Self::with_cache(manifest, max_context, FastEngine::kv_cache_bytes_at)
    }

    /// The plan for the exact reference engine.
    pub fn reference(manifest: &Manifest, max_context: Option<usize>) -> Result<Self> {
        Self::with_cache(manifest, max_context, CpuEngine::kv_cache_bytes_at)
    }

    fn with_cache(
        manifest: &Manifest,
        max_context: Option<usize>,
        cache_at: fn(&crate::manifest::ModelConfig, usize) -> u64,
    ) -> Result<Self> {
        let (positions, weights) = positions_and_weights(manifest, max_context)?;
        // An encoder keeps nothing between texts (`Engine::embed` stores no keys).
        let cache = if manifest.config.encoder.is_some() { 0 } else { cache_at(&manifest.config, positions) };
        Ok(CpuPlan { positions, weights, cache })
    }

    /// Weights, cache and working memory together (saturating: a sum past 2^64 is past any limit).
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.cache).saturating_add(CPU_WORKING_BYTES)
    }

    /// Refuse the model when it needs more than `limit` bytes, naming every part of the sum and
    /// why the limit is what it is.
    pub fn check(&self, model: &str, limit: u64, why: &str) -> Result<()> {
        if self.total() <= limit {
            return Ok(());
        }
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / f64::from(1 << 20));
        Err(HearthError::OutOfMemory {
            what: format!(
                "`{model}` on the CPU engine (weights {}, KV cache {} at {} positions, {} working memory; \
                 a smaller maxContext shrinks the cache)",
                mib(self.weights),
                mib(self.cache),
                self.positions,
                mib(CPU_WORKING_BYTES)
            ),
            bytes: self.total(),
            limit: format!("this page may use {} ({why})", mib(limit)),
        })
    }
}

/// The KV cache of a model on the GPU engine, as `GpuEngine::prepare` allocates it: per layer a K
/// and a V buffer of `cache_rows[l]` rows. A windowed layer keeps a ring of its window plus room for
/// one prefill chunk's own keys (all stored before any of its queries reads: attention.wgsl).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuPlan {
    /// KV cache positions: the context asked for, within 1 and the model's own.
    pub positions: usize,
    /// Tokens per prefill chunk the rings are sized for.
    pub chunk: usize,
    /// The package's tensor bytes (what is uploaded; the GPU's buffers add alignment and f32 norms).
    pub weights: u64,
    /// Rows of each layer's K (and V) buffer.
    pub cache_rows: Vec<usize>,
    /// Bytes of one row of K (or V): f16 pairs in one word each, or f32.
    pub cache_row_bytes: u64,
    /// Bytes of every K and V buffer together.
    pub cache: u64,
}

impl GpuPlan {
    pub fn new(manifest: &Manifest, max_context: Option<usize>, kv_f16: bool, chunk: usize) -> Result<Self> {
        let (positions, weights) = positions_and_weights(manifest, max_context)?;
        let c = &manifest.config;
        let chunk = chunk.max(1);
        // An encoder keeps nothing between texts: its one step's keys are working memory
        // (hearth-gpu's GpuEncoder).
        let layers = if c.encoder.is_some() { 0 } else { c.n_layers };
        let cache_rows: Vec<usize> = (0..layers).map(|l| Self::rows(c, l, positions, chunk)).collect();
        // Bounded by the config's limits (kv_dim ≤ 2^21, rows ≤ 2^24, layers ≤ 2^10): no product
        // here comes near 2^64, and u64 keeps it whole on wasm32 too.
        let words = (c.kv_dim() / if kv_f16 { 2 } else { 1 }) as u64;
        let cache_row_bytes = words * 4;
        let cache = cache_rows.iter().map(|&rows| 2 * rows as u64 * cache_row_bytes).sum();
        Ok(GpuPlan { positions, chunk, weights, cache_rows, cache_row_bytes, cache })
    }

    /// Rows of layer `l`'s cache at `positions` for prefill chunks of `chunk` tokens.
    pub fn rows(c: &crate::manifest::ModelConfig, l: usize, positions: usize, chunk: usize) -> usize {
        c.layer_window(l).map_or(positions, |w| w.saturating_add(chunk.max(1) - 1).min(positions))
    }

    /// Bytes of layer `l`'s K buffer (and of its V buffer).
    pub fn layer_bytes(&self, l: usize) -> u64 {
        self.cache_rows.get(l).map_or(0, |&rows| rows as u64 * self.cache_row_bytes)
    }

    /// Refuse a layer's K or V buffer past what the adapter binds at once (`binding` bytes), naming
    /// the `maxContext` that would fit.
    pub fn check_binding(&self, binding: u64) -> Result<()> {
        for l in 0..self.cache_rows.len() {
            let bytes = self.layer_bytes(l);
            if bytes > binding {
                return Err(HearthError::AdapterLimit(format!(
                    "layer {l}'s KV cache for {} positions needs {bytes} bytes; this adapter binds at most \
                     {binding} bytes at once: load with maxContext at most {}",
                    self.cache_rows[l],
                    binding / self.cache_row_bytes.max(1)
                )));
            }
        }
        Ok(())
    }
}

/// A model's memory on one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub weights: u64,
    pub kv_cache: u64,
    /// Activations and the module's own (CPU only; not counted yet on the GPU: a few MB for a dense
    /// model in 64-token chunks, tens of MB in a hardware GPU's 512-token chunks, more for a
    /// mixture's packed expert buffers).
    pub working: u64,
    pub total: u64,
}

/// What a model needs, from its manifest alone: the figures `Hearth.inspect()` reports (through the
/// wasm module's `planModel`) and `hearth inspect` prints, from the plans the loaders then check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSizes {
    pub name: String,
    pub architecture: String,
    /// Weights of every tensor, counted as values (not bytes).
    pub parameters: u64,
    /// Every shard and file of the package.
    pub download_bytes: u64,
    /// KV cache positions the figures are for.
    pub context: usize,
    pub cpu: Memory,
    pub gpu: Memory,
}

impl ModelSizes {
    /// Both engines' plans for `manifest` at `max_context` (the GPU's cache f16 when `kv_f16`, its
    /// windowed layers' rings sized for prefill chunks of `chunk`) and the figures from them. An
    /// architecture no engine runs is refused first: a manifest may name any.
    pub fn plan(
        manifest: &Manifest,
        max_context: Option<usize>,
        kv_f16: bool,
        chunk: usize,
    ) -> Result<(Self, CpuPlan, GpuPlan)> {
        if !ARCHITECTURES.contains(&manifest.architecture.as_str()) {
            return Err(HearthError::UnsupportedArchitecture(manifest.architecture.clone()));
        }
        let cpu = CpuPlan::fast(manifest, max_context)?;
        let gpu = GpuPlan::new(manifest, max_context, kv_f16, chunk)?;
        Ok((Self::of(manifest, &cpu, &gpu), cpu, gpu))
    }

    /// The figures of `manifest` under the fast CPU engine's plan `cpu` and the GPU engine's `gpu`.
    /// Saturating: a hostile manifest's sizes may add up past 2^64.
    pub fn of(manifest: &Manifest, cpu: &CpuPlan, gpu: &GpuPlan) -> Self {
        let sum = |sizes: &mut dyn Iterator<Item = u64>| sizes.fold(0u64, u64::saturating_add);
        // What the GPU engine reports as its bytes (engine.info.gpuBytes): the shards and the cache.
        let shard_bytes = sum(&mut manifest.shards.iter().map(|s| s.size));
        let parameters =
            sum(&mut manifest.tensors.iter().map(|t| t.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))));
        ModelSizes {
            name: manifest.name.clone(),
            architecture: manifest.architecture.clone(),
            parameters,
            download_bytes: shard_bytes.saturating_add(sum(&mut manifest.files.iter().map(|f| f.size))),
            context: cpu.positions,
            cpu: Memory { weights: cpu.weights, kv_cache: cpu.cache, working: CPU_WORKING_BYTES, total: cpu.total() },
            gpu: Memory {
                weights: shard_bytes,
                kv_cache: gpu.cache,
                working: 0,
                total: shard_bytes.saturating_add(gpu.cache),
            },
        }
    }
}
