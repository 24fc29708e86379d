//! Synthetic weights: random tensors of exactly the shapes, encodings and byte layout a manifest
//! describes, so an engine can be loaded and timed where only `manifest.json` is at hand
//! (`hearth bench --synthetic` on a machine the real shards cannot reach).
//!
//! Each tensor's bytes are `entry.length` long, with every part at the offset the manifest gives and
//! zeros elsewhere, as `docs/FORMAT.md` lays them out; [`crate::quant::Tensor::from_bytes`] reads them
//! back. Values are tame so a forward pass stays finite: matrix weights spread like N(0, 0.02²),
//! one-dimensional tensors (norm weights, `rope_freqs`) near 1, quantization scales small with either
//! sign. They are deterministic: a tensor's bytes depend only on the seed and the tensor's name,
//! shape and encoding, whatever order tensors are read in.

use std::fs;
use std::path::{Path, PathBuf};

use half::f16;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::error::{HearthError, Result};
use crate::manifest::{Manifest, TensorEntry};
use crate::package::{parse_manifest, TensorSource, MANIFEST_FILE};
use crate::quant::{DType, PartRange};

/// The seed `hearth bench --synthetic` uses.
pub const DEFAULT_SEED: u64 = 0x4845_4152_5448; // "HEARTH"

/// Spread of the values of a synthetic matrix.
const WEIGHT_STD: f32 = 0.02;

/// Random weights for the tensors of a manifest; no shard is read (or needs to exist).
#[derive(Debug, Clone)]
pub struct SyntheticWeights {
    origin: String,
    manifest: Manifest,
    seed: u64,
}

impl SyntheticWeights {
    /// Read and validate `DIR/manifest.json` (as [`crate::package::Package::open`] does, against the
    /// sizes the manifest itself gives); shards and tokenizer files are neither needed nor opened.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let path: PathBuf = dir.as_ref().join(MANIFEST_FILE);
        let json = fs::read(&path).map_err(|e| HearthError::io("read", &path, e))?;
        let origin = path.display().to_string();
        let manifest = parse_manifest(&json, &origin)?;
        Ok(Self::new(manifest, origin))
    }

    /// Synthetic weights for an already parsed manifest; `origin` names it in error messages.
    pub fn new(manifest: Manifest, origin: impl Into<String>) -> Self {
        SyntheticWeights { origin: origin.into(), manifest, seed: DEFAULT_SEED }
    }

    /// The same shapes with other random values.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A generator of its own per tensor, so a tensor's values do not depend on the reading order.
    fn rng_for(&self, entry: &TensorEntry) -> ChaCha8Rng {
        let mut h = Sha256::new();
        h.update(b"hearth synthetic weights v1\0");
        h.update(self.seed.to_le_bytes());
        h.update(entry.name.as_bytes());
        h.update([0]);
        h.update(entry.dtype.name().as_bytes());
        for d in &entry.shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((entry.group_size.unwrap_or(0) as u64).to_le_bytes());
        ChaCha8Rng::from_seed(h.finalize().into())
    }

    /// The byte range of part `name` of `entry`, checked to have `length` bytes inside the tensor.
    fn part(&self, entry: &TensorEntry, name: &str, length: u64) -> Result<std::ops::Range<usize>> {
        let bad = |detail: String| HearthError::bad_package(&self.origin, format!("tensor `{}`: {detail}", entry.name));
        let PartRange { offset, length: len } =
            *entry.parts.get(name).ok_or_else(|| bad(format!("no part `{name}`")))?;
        if len != length || offset.checked_add(len).is_none_or(|end| end > entry.length) {
            return Err(bad(format!(
                "part `{name}` at {offset}+{len} does not hold {length} bytes inside a tensor of {} bytes",
                entry.length
            )));
        }
        Ok(offset as usize..(offset + len) as usize)
    }
}

impl TensorSource for SyntheticWeights {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn read_tensor_bytes(&self, entry: &TensorEntry) -> Result<Vec<u8>> {
        let n: usize = entry.shape.iter().product();
        let cols = entry.shape.last().copied().unwrap_or(1);
        let lengths = entry.dtype.part_lengths(n, cols, entry.group_size).ok_or_else(|| {
            HearthError::bad_package(
                &self.origin,
                format!(
                    "tensor `{}`: shape {:?} and group size {:?} do not suit {}",
                    entry.name,
                    entry.shape,
                    entry.group_size,
                    entry.dtype.name()
                ),
            )
        })?;
        let ranges = entry
            .dtype
            .part_names()
            .iter()
            .zip(&lengths)
            .map(|(name, &len)| self.part(entry, name, len))
            .collect::<Result<Vec<_>>>()?;
        let mut bytes = vec![0u8; entry.length as usize];
        let mut rng = self.rng_for(entry);
        match entry.dtype {
            DType::F32 | DType::F16 => {
                // One-dimensional tensors of a Llama-family model are norm weights and `rope_freqs`,
                // which multiply or divide: near 1. Matrices: small values around 0.
                let (mean, std) = if entry.shape.len() == 1 { (1.0, 0.05) } else { (0.0, WEIGHT_STD) };
                let values = (0..n).map(|_| mean + std * normal(&mut rng));
                let data = &mut bytes[ranges[0].clone()];
                if entry.dtype == DType::F32 {
                    for (out, v) in data.chunks_exact_mut(4).zip(values) {
                        out.copy_from_slice(&v.to_le_bytes());
                    }
                } else {
                    for (out, v) in data.chunks_exact_mut(2).zip(values) {
                        out.copy_from_slice(&f16::from_f32(v).to_le_bytes());
                    }
                }
            }
            DType::Q8 => {
                // Codes uniform over all 256 byte values: standard deviation 256 / √12 ≈ 73.9.
                rng.fill_bytes(&mut bytes[ranges[0].clone()]);
                let nominal = WEIGHT_STD / 73.9;
                for out in bytes[ranges[1].clone()].chunks_exact_mut(2) {
                    out.copy_from_slice(&f16::from_f32(signed_scale(&mut rng, nominal)).to_le_bytes());
                }
            }
            DType::Q4 | DType::Q5 => {
                // Codes uniform over 0..=15 (standard deviation √(255/12) ≈ 4.61) around 7.5 (q5:
                // 0..=31, 9.23 around 15.5), so `min = -7.5 * scale` centres each group on 0, give
                // or take a little.
                rng.fill_bytes(&mut bytes[ranges[0].clone()]);
                let (mid, spread) = if entry.dtype == DType::Q5 { (15.5, 9.23) } else { (7.5, 4.61) };
                let nominal = WEIGHT_STD / spread;
                let groups = ranges[1].len() / 2;
                for g in 0..groups {
                    let s = f16::from_f32(signed_scale(&mut rng, nominal));
                    let m = f16::from_f32(-mid * s.to_f32() + 0.1 * WEIGHT_STD * normal(&mut rng));
                    let (si, mi) = (ranges[1].start + 2 * g, ranges[2].start + 2 * g);
                    bytes[si..si + 2].copy_from_slice(&s.to_le_bytes());
                    bytes[mi..mi + 2].copy_from_slice(&m.to_le_bytes());
                }
            }
            DType::Q4k | DType::Q5k | DType::Q6k => {
                // Every code bit uniform. q4k / q5k: every sub-block's 6-bit scale and min 32
                // (packed bytes 160 160 160 160 160 160 160 160 0 0 0 0), dmin = mid-code · d so
                // the values centre on 0; q6k: every scale 16, codes -32..=31 around -0.5.
                rng.fill_bytes(&mut bytes[ranges[0].clone()]);
                if let Some(high) = ranges.get(2) {
                    rng.fill_bytes(&mut bytes[high.clone()]);
                }
                let (mid, spread, header) = match entry.dtype {
                    DType::Q4k => (7.5, 32.0 * 4.61, 16),
                    DType::Q5k => (15.5, 32.0 * 9.23, 16),
                    _ => (0.0, 16.0 * 18.5, 20),
                };
                for h in bytes[ranges[1].clone()].chunks_exact_mut(header) {
                    let d = f16::from_f32(signed_scale(&mut rng, WEIGHT_STD / spread).abs());
                    if entry.dtype == DType::Q6k {
                        h[..16].fill(16);
                        h[16..18].copy_from_slice(&d.to_le_bytes());
                    } else {
                        h[0..2].copy_from_slice(&d.to_le_bytes());
                        h[2..4].copy_from_slice(&f16::from_f32(mid * d.to_f32()).to_le_bytes());
                        h[4..12].fill(160);
                    }
                }
            }
        }
        Ok(bytes)
    }

    fn origin(&self) -> String {
        format!("synthetic weights (seed {}) for {}", self.seed, self.origin)
    }
}

/// Roughly N(0, 1) from one draw: the sum of four uniform 16-bit numbers (Irwin–Hall), centred and scaled.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let r = rng.next_u64();
    let sum: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xffff) as u32).sum();
    // Four U(0, 1) sum to mean 2, variance 1/3.
    (sum as f32 / 65535.0 - 2.0) * 3f32.sqrt()
}

/// `nominal` times a factor in [0.5, 1.5), with a random sign.
fn signed_scale(rng: &mut ChaCha8Rng, nominal: f32) -> f32 {
    let r = rng.next_u32();
    let magnitude = nominal * (0.5 + (r >> 1) as f32 / (1u64 << 31) as f32);
    if r & 1 == 0 {
        magnitude
    } else {
        -magnitude
    }
}
