//! A model's tensors assembled from its shards as they arrive, in any order (the browser's CPU
//! engine loads this way): every tensor's arrays are allocated at their final size before the first
//! shard, so a model that does not fit fails before anything is downloaded, and each shard's pieces
//! are copied straight into place (`TensorFill`): the model is never held twice.

use std::collections::HashMap;

use crate::error::{HearthError, Result};
use crate::manifest::{Manifest, ARCHITECTURES};
use crate::quant::{Tensor, TensorFill};

pub struct ShardAssembler {
    manifest: Manifest,
    fills: Vec<TensorFill>,
    shards_fed: Vec<bool>,
}

impl ShardAssembler {
    /// Check every tensor entry against its encoding and allocate its arrays.
    pub fn new(manifest: Manifest) -> Result<Self> {
        if !ARCHITECTURES.contains(&manifest.architecture.as_str()) {
            return Err(HearthError::UnsupportedArchitecture(manifest.architecture.clone()));
        }
        manifest.config.validate().map_err(|e| HearthError::bad_package("manifest.json", e))?;
        let mut fills = Vec::with_capacity(manifest.tensors.len());
        for t in &manifest.tensors {
            let bad =
                |detail: String| HearthError::bad_package("manifest.json", format!("tensor `{}`: {detail}", t.name));
            let fill = TensorFill::new(&t.name, t.shape.clone(), t.dtype, t.group_size)?;
            if t.length < fill.data_len() {
                return Err(bad(format!("{} bytes, but its shape needs {}", t.length, fill.data_len())));
            }
            // The manifest's part table must say what the encoding says, or a reader that trusts it
            // (the GPU engine) would read other bytes than this one.
            for (name, range) in t.dtype.part_names().iter().zip(fill.ranges()) {
                if t.parts.get(*name) != Some(range) {
                    return Err(bad(format!("part `{name}` at {:?}, expected {range:?}", t.parts.get(*name))));
                }
            }
            fills.push(fill);
        }
        let shards_fed = vec![false; manifest.shards.len()];
        Ok(ShardAssembler { manifest, fills, shards_fed })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes the tensors occupy in memory: their parts, without the package's alignment padding
    /// (what [`crate::plan::CpuPlan`] plans as weights).
    pub fn bytes(&self) -> u64 {
        self.fills.iter().flat_map(TensorFill::ranges).map(|r| r.length).sum()
    }

    /// Take shard `index` (`len` bytes, already verified): `copy(offset_in_shard, dst)` fills `dst`
    /// with the shard's bytes from that offset.
    pub fn feed_shard(&mut self, index: usize, len: u64, copy: &mut dyn FnMut(u64, &mut [u8])) -> Result<()> {
        self.manifest.check_shard(index, len)?;
        if std::mem::replace(&mut self.shards_fed[index], true) {
            return Err(HearthError::InvalidArgument(format!("shard {index} was already loaded")));
        }
        for piece in self.manifest.pieces_in_shard(index) {
            if let Some(fill) = self.fills.get_mut(piece.tensor) {
                let base = piece.offset_in_shard;
                fill.write(piece.offset_in_tensor, piece.len, &mut |at, dst| copy(base + at, dst));
            }
        }
        Ok(())
    }

    /// Every tensor by name, once all their bytes have arrived.
    pub fn finish(self) -> Result<(Manifest, HashMap<String, Tensor>)> {
        let mut tensors = HashMap::with_capacity(self.fills.len());
        for (entry, fill) in self.manifest.tensors.iter().zip(self.fills) {
            tensors.insert(entry.name.clone(), fill.finish()?);
        }
        Ok((self.manifest, tensors))
    }
}
