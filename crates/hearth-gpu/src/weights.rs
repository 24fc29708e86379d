//! Weights on their way to the GPU: a tensor's parts as stored (never expanded), fused with its
//! neighbours (Q, K, V into one matrix; gate and up into one) and split into row ranges that fit
//! the adapter's largest storage binding.

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::ops::Range;

use hearth_core::manifest::TensorEntry;
use hearth_core::quant::{DType, PART_ALIGN};
use hearth_core::{HearthError, Result};
use wgpu::util::DeviceExt;

use crate::context::GpuContext;

/// A matrix in its stored encoding, on the CPU: each part (codes, scales, ...) holds whole rows, so
/// row ranges can be cut and matrices stacked without decoding anything.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub group: Option<usize>,
    /// Exact bytes of each part, in `DType::part_names` order.
    pub parts: Vec<Vec<u8>>,
}

impl HostTensor {
    /// Cut the manifest's parts out of the tensor's serialized bytes.
    pub fn from_entry(entry: &TensorEntry, bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| HearthError::bad_package(format!("tensor `{}`", entry.name), why);
        let cols = entry.shape.last().copied().unwrap_or(1).max(1);
        let n: usize = entry.shape.iter().product();
        let lengths = entry
            .dtype
            .part_lengths(n, cols, entry.group_size)
            .ok_or_else(|| bad(format!("rows of {cols} do not suit {}", entry.dtype.name())))?;
        let mut parts = Vec::new();
        for (name, len) in entry.dtype.part_names().iter().zip(lengths) {
            let range = entry.parts.get(*name).ok_or_else(|| bad(format!("no `{name}` part")))?;
            let start = range.offset as usize;
            let part = bytes
                .get(start..start + len as usize)
                .ok_or_else(|| bad(format!("part `{name}` lies outside the tensor's bytes")))?;
            parts.push(part.to_vec());
        }
        Ok(HostTensor {
            name: entry.name.clone(),
            dtype: entry.dtype,
            rows: n / cols,
            cols,
            group: entry.group_size,
            parts,
        })
    }

    /// Bytes of one row in each part.
    fn row_bytes(&self) -> Vec<usize> {
        // `from_entry` checked that these exist.
        let lengths = self.dtype.part_lengths(self.cols, self.cols, self.group).unwrap_or_default();
        lengths.into_iter().map(|l| l as usize).collect()
    }

    /// The matrices stacked by rows (same encoding, row length and group), or None if they differ.
    pub fn stack(name: &str, tensors: &[&HostTensor]) -> Option<HostTensor> {
        let first = tensors.first()?;
        if tensors.iter().any(|t| t.dtype != first.dtype || t.cols != first.cols || t.group != first.group) {
            return None;
        }
        let parts = (0..first.parts.len()).map(|i| tensors.iter().flat_map(|t| t.parts[i].iter().copied()).collect());
        Some(HostTensor {
            name: name.to_string(),
            dtype: first.dtype,
            rows: tensors.iter().map(|t| t.rows).sum(),
            cols: first.cols,
            group: first.group,
            parts: parts.collect(),
        })
    }

    /// Rows `range`, borrowed when that is every row.
    pub fn rows_range(&self, range: Range<usize>) -> Cow<'_, HostTensor> {
        if range == (0..self.rows) {
            return Cow::Borrowed(self);
        }
        let parts = self
            .parts
            .iter()
            .zip(self.row_bytes())
            .map(|(p, per_row)| p[range.start * per_row..range.end * per_row].to_vec());
        Cow::Owned(HostTensor {
            name: format!("{} rows {}..{}", self.name, range.start, range.end),
            dtype: self.dtype,
            rows: range.len(),
            cols: self.cols,
            group: self.group,
            parts: parts.collect(),
        })
    }

    /// Row ranges whose every part fits in `max_binding` bytes (one range when the tensor fits).
    pub fn row_ranges(&self, max_binding: u64) -> Result<Vec<Range<usize>>> {
        let widest = self.row_bytes().into_iter().max().unwrap_or(1).max(1) as u64;
        // Parts are bound in whole words: keep each piece a little under the limit.
        let rows_per_piece = ((max_binding.saturating_sub(4)) / widest) as usize;
        if rows_per_piece == 0 {
            return Err(HearthError::Gpu(format!(
                "one row of tensor `{}` ({widest} bytes) exceeds this adapter's storage binding limit of {max_binding} bytes",
                self.name
            )));
        }
        Ok((0..self.rows).step_by(rows_per_piece).map(|start| start..(start + rows_per_piece).min(self.rows)).collect())
    }
}

/// A matrix (or a row range of one) uploaded as stored: one buffer, each part at a 256-byte aligned
/// offset so it can be bound on its own.
pub struct WeightBuffer {
    pub buffer: wgpu::Buffer,
    pub dtype: DType,
    pub rows: u32,
    pub cols: u32,
    pub group: u32,
    /// Where these rows start in the whole matrix (non-zero for the later pieces of a split one).
    pub first_row: u32,
    parts: Vec<(&'static str, u64, u64)>,
}

impl WeightBuffer {
    pub fn upload(ctx: &GpuContext, tensor: &HostTensor, first_row: usize) -> Result<Self> {
        let max = ctx.limits.max_storage_buffer_binding_size;
        let mut data = Vec::new();
        let mut parts = Vec::new();
        for (name, part) in tensor.dtype.part_names().iter().zip(&tensor.parts) {
            // Bind whole words; an empty part still gets one word so that it can be bound.
            let len = (part.len() as u64).next_multiple_of(4).max(4);
            if len > max {
                return Err(HearthError::Gpu(format!(
                    "tensor `{}` part `{name}` is {len} bytes, over this adapter's storage binding limit of {max}",
                    tensor.name
                )));
            }
            data.resize(data.len().next_multiple_of(PART_ALIGN), 0);
            let offset = data.len();
            parts.push((*name, offset as u64, len));
            data.extend_from_slice(part);
            data.resize(offset + len as usize, 0);
        }
        let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(&tensor.name),
            contents: &data,
            usage: wgpu::BufferUsages::STORAGE,
        });
        Ok(WeightBuffer {
            buffer,
            dtype: tensor.dtype,
            rows: tensor.rows as u32,
            cols: tensor.cols as u32,
            group: tensor.group.unwrap_or(1) as u32,
            first_row: first_row as u32,
            parts,
        })
    }

    /// Upload a matrix in as many row pieces as the adapter's binding limit requires.
    pub fn upload_split(ctx: &GpuContext, tensor: &HostTensor) -> Result<Vec<Self>> {
        tensor
            .row_ranges(ctx.limits.max_storage_buffer_binding_size)?
            .into_iter()
            .map(|range| Self::upload(ctx, &tensor.rows_range(range.clone()), range.start))
            .collect()
    }

    /// The byte range of a part (`upload` placed every part of the encoding).
    pub fn part(&self, name: &str) -> wgpu::BindingResource<'_> {
        let (offset, len) = self.parts.iter().find(|(n, _, _)| *n == name).map(|(_, o, l)| (*o, *l)).unwrap_or((0, 4));
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.buffer, offset, size: NonZeroU64::new(len) })
    }

    /// Bindings of the weight parts as the matvec and embed kernels declare them.
    pub fn weight_entries(&self, first_binding: u32) -> Vec<wgpu::BindGroupEntry<'_>> {
        self.dtype
            .part_names()
            .iter()
            .enumerate()
            .map(|(i, n)| wgpu::BindGroupEntry { binding: first_binding + i as u32, resource: self.part(n) })
            .collect()
    }
}

/// A vector (norm weights, biases) decoded to f32, as the element-wise kernels read it.
pub fn upload_vector(ctx: &GpuContext, tensor: &HostTensor) -> Result<wgpu::Buffer> {
    let values: Vec<f32> = match tensor.dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(&tensor.parts[0]),
        DType::F16 => {
            tensor.parts[0].chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        other => {
            return Err(HearthError::UnsupportedTensorType {
                tensor: tensor.name.clone(),
                dtype: format!("{} (vectors must be f32 or f16)", other.name()),
            })
        }
    };
    Ok(ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(&tensor.name),
        contents: bytemuck::cast_slice(&values),
        usage: wgpu::BufferUsages::STORAGE,
    }))
}
