//! What a model will take in memory, computed from its manifest before anything is allocated or
//! downloaded, in checked `u64` arithmetic (never `usize`, which is 32 bits in wasm). The browser's
//! loader refuses a model past the page's limit with these numbers; the fuzz targets and the
//! property tests (`tests/size_arithmetic.rs`) hold the allocators to them.

use crate::cpu::CpuEngine;
use crate::error::{HearthError, Result};
use crate::fast::FastEngine;
use crate::manifest::Manifest;

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
        let c = &manifest.config;
        let bad = |detail: String| HearthError::bad_package("manifest.json", detail);
        c.validate().map_err(bad)?;
        // Every layer has tensors, so more layers than tensors is a broken (or hostile) manifest.
        if c.n_layers > manifest.tensors.len() {
            return Err(bad(format!(
                "config.n_layers is {}, but it lists {} tensors",
                c.n_layers,
                manifest.tensors.len()
            )));
        }
        let positions = max_context.unwrap_or(c.context_length).clamp(1, c.context_length);
        let weights = manifest
            .tensors
            .iter()
            .flat_map(|t| t.parts.values())
            .try_fold(0u64, |n, part| n.checked_add(part.length))
            .ok_or_else(|| bad("the tensors' sizes add up past 2^64 bytes".into()))?;
        Ok(CpuPlan { positions, weights, cache: cache_at(c, positions) })
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
