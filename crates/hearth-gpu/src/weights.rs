//! Weights on their way to the GPU. The engine plans every weight buffer from the manifest alone:
//! which bytes of which stored tensors make each part (Q, K, V stacked into one matrix; gate and up
//! into one; tables split into row ranges that fit the adapter's largest storage binding). The
//! buffers are created empty; [`WeightUploads`] then fills each one as the bytes it needs arrive —
//! tensor by tensor from a package on disk, or shard by shard from the network in a browser —
//! writing matrix bytes to the GPU as they come. Nothing holds the whole model, or even a whole
//! tensor, in memory.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::ops::Range;

use hearth_core::manifest::{Manifest, TensorEntry};
use hearth_core::package::TensorSource;
use hearth_core::quant::{DType, PART_ALIGN};
use hearth_core::{HearthError, Result};

use crate::context::GpuContext;

/// A run of one stored tensor's serialized bytes (docs/FORMAT.md): bytes `start..start + len` of
/// tensor `tensor`, an index into the manifest's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub tensor: usize,
    pub start: u64,
    pub len: u64,
}

/// A matrix in its stored encoding, described by where its bytes are: each part (codes, scales,
/// ...) is a list of spans holding whole rows, so row ranges can be cut and matrices stacked
/// without reading or decoding anything.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMatrix {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub group: Option<usize>,
    /// Spans of each part, in `DType::part_names` order.
    pub parts: Vec<Vec<Span>>,
}

impl StoredMatrix {
    /// The matrix of manifest tensor `index`, its parts where the manifest places them.
    pub fn from_entry(index: usize, entry: &TensorEntry) -> Result<Self> {
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
            if range.offset + len > entry.length {
                return Err(bad(format!("part `{name}` lies outside the tensor's bytes")));
            }
            parts.push(vec![Span { tensor: index, start: range.offset, len }]);
        }
        Ok(StoredMatrix {
            name: entry.name.clone(),
            dtype: entry.dtype,
            rows: n / cols,
            cols,
            group: entry.group_size,
            parts,
        })
    }

    /// Bytes of one row in each part.
    fn row_bytes(&self) -> Vec<u64> {
        // `from_entry` checked that these exist.
        self.dtype.part_lengths(self.cols, self.cols, self.group).unwrap_or_default()
    }

    /// Bytes of each part.
    pub fn part_lengths(&self) -> Vec<u64> {
        self.parts.iter().map(|spans| spans.iter().map(|s| s.len).sum()).collect()
    }

    /// The matrices stacked by rows (same encoding, row length and group), or None if they differ.
    pub fn stack(name: &str, matrices: &[&StoredMatrix]) -> Option<StoredMatrix> {
        let first = matrices.first()?;
        if matrices.iter().any(|t| t.dtype != first.dtype || t.cols != first.cols || t.group != first.group) {
            return None;
        }
        let parts = (0..first.parts.len()).map(|i| matrices.iter().flat_map(|t| t.parts[i].iter().copied()).collect());
        Some(StoredMatrix {
            name: name.to_string(),
            dtype: first.dtype,
            rows: matrices.iter().map(|t| t.rows).sum(),
            cols: first.cols,
            group: first.group,
            parts: parts.collect(),
        })
    }

    /// Rows `range` (every part's spans cut to those rows).
    pub fn rows_range(&self, range: Range<usize>) -> StoredMatrix {
        if range == (0..self.rows) {
            return self.clone();
        }
        let parts = self
            .parts
            .iter()
            .zip(self.row_bytes())
            .map(|(spans, per_row)| cut_spans(spans, range.start as u64 * per_row..range.end as u64 * per_row));
        StoredMatrix {
            name: format!("{} rows {}..{}", self.name, range.start, range.end),
            dtype: self.dtype,
            rows: range.len(),
            cols: self.cols,
            group: self.group,
            parts: parts.collect(),
        }
    }

    /// Row ranges whose every part fits in `max_binding` bytes (one range when the matrix fits).
    pub fn row_ranges(&self, max_binding: u64) -> Result<Vec<Range<usize>>> {
        let widest = self.row_bytes().into_iter().max().unwrap_or(1).max(1);
        // Parts are bound in whole words: keep each piece a little under the limit.
        let rows_per_piece = ((max_binding.saturating_sub(4)) / widest) as usize;
        if rows_per_piece == 0 {
            return Err(HearthError::AdapterLimit(format!(
                "one row of tensor `{}` ({widest} bytes) exceeds this adapter's storage binding limit of {max_binding} bytes",
                self.name
            )));
        }
        Ok((0..self.rows).step_by(rows_per_piece).map(|start| start..(start + rows_per_piece).min(self.rows)).collect())
    }

    /// The bytes of each part, gathered from `tensors` (every tensor's serialized bytes, by index):
    /// for tests and tools that look at a plan's content.
    pub fn gather(&self, tensors: &[&[u8]]) -> Vec<Vec<u8>> {
        self.parts
            .iter()
            .map(|spans| {
                spans
                    .iter()
                    .flat_map(|s| &tensors[s.tensor][s.start as usize..(s.start + s.len) as usize])
                    .copied()
                    .collect()
            })
            .collect()
    }
}

/// The sub-spans covering bytes `range` of the concatenation of `spans`.
fn cut_spans(spans: &[Span], range: Range<u64>) -> Vec<Span> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for s in spans {
        let (lo, hi) = (range.start.max(at), range.end.min(at + s.len));
        if lo < hi {
            out.push(Span { tensor: s.tensor, start: s.start + (lo - at), len: hi - lo });
        }
        at += s.len;
    }
    out
}

/// A matrix (or a row range of one) in one GPU buffer, as stored: each part at a 256-byte aligned
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
    /// Create the (empty) buffer of `matrix` and plan its filling with `uploads`.
    pub fn create(
        ctx: &GpuContext,
        uploads: &mut WeightUploads,
        matrix: &StoredMatrix,
        first_row: usize,
    ) -> Result<Self> {
        let max = ctx.limits.max_storage_buffer_binding_size;
        let mut size = 0u64;
        let mut parts = Vec::new();
        let mut fills = Vec::new();
        for ((name, spans), part_len) in matrix.dtype.part_names().iter().zip(&matrix.parts).zip(matrix.part_lengths())
        {
            // Bind whole words; an empty part still gets one word so that it can be bound.
            let len = part_len.next_multiple_of(4).max(4);
            if len > max {
                return Err(HearthError::AdapterLimit(format!(
                    "tensor `{}` part `{name}` is {len} bytes, over this adapter's storage binding limit of {max}",
                    matrix.name
                )));
            }
            let offset = size.next_multiple_of(PART_ALIGN as u64);
            parts.push((*name, offset, len));
            let mut at = offset;
            for s in spans {
                fills.push((at, *s));
                at += s.len;
            }
            size = offset + len;
        }
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&matrix.name),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        uploads.plan(&matrix.name, buffer.clone(), size, fills, None);
        Ok(WeightBuffer {
            buffer,
            dtype: matrix.dtype,
            rows: matrix.rows as u32,
            cols: matrix.cols as u32,
            group: matrix.group.unwrap_or(1) as u32,
            first_row: first_row as u32,
            parts,
        })
    }

    /// A matrix in as many row pieces as the adapter's binding limit requires.
    pub fn create_split(ctx: &GpuContext, uploads: &mut WeightUploads, matrix: &StoredMatrix) -> Result<Vec<Self>> {
        matrix
            .row_ranges(ctx.limits.max_storage_buffer_binding_size)?
            .into_iter()
            .map(|range| Self::create(ctx, uploads, &matrix.rows_range(range.clone()), range.start))
            .collect()
    }

    /// The byte range of a part (`create` placed every part of the encoding).
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

/// Turns a planned buffer's gathered bytes into what the GPU buffer holds.
pub type Transform = Box<dyn FnOnce(Vec<u8>) -> Result<Vec<u8>>>;

/// Decode a stored vector (norm weights, biases) to the f32 values the element-wise kernels read.
pub fn decode_vector(name: &str, dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    match dtype {
        DType::F32 => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        DType::F16 => Ok(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        other => Err(HearthError::UnsupportedTensorType {
            tensor: name.to_string(),
            dtype: format!("{} (vectors must be f32 or f16)", other.name()),
        }),
    }
}

/// A vector of manifest tensor `index`, as f32 values: the (empty) buffer, filled by `uploads`.
pub fn create_vector(
    ctx: &GpuContext,
    uploads: &mut WeightUploads,
    index: usize,
    entry: &TensorEntry,
) -> Result<wgpu::Buffer> {
    let n: usize = entry.shape.iter().product();
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&entry.name),
        size: (n * 4).max(4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    uploads.plan_vector(buffer.clone(), index, entry, |values| values)?;
    Ok(buffer)
}

/// Most bytes copied out of a shard at once on their way to the GPU.
const DIRECT_WINDOW: u64 = 4 << 20;

/// A planned buffer waiting for its bytes.
struct PendingBuffer {
    label: String,
    buffer: wgpu::Buffer,
    /// With a transform: the gathered bytes (allocated when the first piece arrives, dropped once
    /// written). Without one, pieces go straight to the GPU and nothing is gathered.
    staging: Vec<u8>,
    staging_len: u64,
    /// Where each span goes (in `staging`, or in the buffer when there is no transform).
    fills: Vec<(u64, Span)>,
    missing: u64,
    transform: Option<Transform>,
    /// Direct writes go in whole 4-byte words: a word shared by two pieces (or a piece and
    /// padding) waits here, by offset, with a mask of its known bytes, until all four are known.
    edges: HashMap<u64, ([u8; 4], u8)>,
}

impl PendingBuffer {
    /// Bytes `at..at + bytes.len()` of the buffer's content: the whole words go to the GPU now,
    /// the bytes of words that are not yet complete wait in `edges`.
    fn write_direct(&mut self, queue: &wgpu::Queue, at: u64, bytes: &[u8]) {
        let end = at + bytes.len() as u64;
        let (a0, a1) = (at.next_multiple_of(4), end / 4 * 4);
        if a0 < a1 {
            queue.write_buffer(&self.buffer, a0, &bytes[(a0 - at) as usize..(a1 - at) as usize]);
        }
        let edge_bytes = (at..end).filter(|&b| a0 >= a1 || b < a0 || b >= a1);
        for b in edge_bytes {
            let word = b / 4 * 4;
            let fills = &self.fills;
            let entry = self.edges.entry(word).or_insert_with(|| {
                // Bytes no span covers (padding) are known: zero, as the buffer was created.
                let covered = |x: u64| fills.iter().any(|(d, s)| (*d..*d + s.len).contains(&x));
                ([0; 4], (0..4).filter(|i| !covered(word + i)).fold(0, |m, i| m | 1 << i))
            });
            entry.0[(b - word) as usize] = bytes[(b - at) as usize];
            entry.1 |= 1 << (b - word);
            if entry.1 == 0b1111 {
                queue.write_buffer(&self.buffer, word, &entry.0);
                self.edges.remove(&word);
            }
        }
    }
}

/// Fills the planned weight buffers from tensor bytes as they arrive, in any order: matrix bytes go
/// to the GPU as they come (in whole words), vectors that need decoding once all of theirs are there.
#[derive(Default)]
pub struct WeightUploads {
    pending: Vec<Option<PendingBuffer>>,
    /// For each tensor: (pending buffer, fill) pairs that read from it.
    readers: HashMap<usize, Vec<(usize, usize)>>,
    /// Shards fed so far (feeding one twice would count its bytes twice).
    shards_fed: Vec<usize>,
    bytes_fed: u64,
}

impl WeightUploads {
    /// Plan a buffer: `fills` place tensor spans at offsets of a `staging_len`-byte image which,
    /// passed through `transform` (if any), is the buffer's content.
    pub fn plan(
        &mut self,
        label: &str,
        buffer: wgpu::Buffer,
        staging_len: u64,
        fills: Vec<(u64, Span)>,
        transform: Option<Transform>,
    ) {
        let index = self.pending.len();
        for (f, (_, span)) in fills.iter().enumerate() {
            self.readers.entry(span.tensor).or_default().push((index, f));
        }
        let missing = fills.iter().map(|(_, s)| s.len).sum();
        self.pending.push(Some(PendingBuffer {
            label: label.to_string(),
            buffer,
            staging: Vec::new(),
            staging_len,
            fills,
            missing,
            transform,
            edges: HashMap::new(),
        }));
    }

    /// Fill `buffer` with `map` of the f32 values of vector tensor `index` (f32 or f16), once all
    /// of its bytes are there.
    pub fn plan_vector(
        &mut self,
        buffer: wgpu::Buffer,
        index: usize,
        entry: &TensorEntry,
        map: impl FnOnce(Vec<f32>) -> Vec<f32> + 'static,
    ) -> Result<()> {
        self.plan_vectors(&entry.name, buffer, &[(index, entry)], map)
    }

    /// Fill `buffer` with `map` of the f32 values of several vector tensors one after the other
    /// (Q, K and V biases in one binding), once all of their bytes are there.
    pub fn plan_vectors(
        &mut self,
        label: &str,
        buffer: wgpu::Buffer,
        parts: &[(usize, &TensorEntry)],
        map: impl FnOnce(Vec<f32>) -> Vec<f32> + 'static,
    ) -> Result<()> {
        let mut fills = Vec::with_capacity(parts.len());
        let mut decoders = Vec::with_capacity(parts.len());
        let mut at = 0;
        for &(index, entry) in parts {
            // Fail at planning time, not when the bytes arrive.
            decode_vector(&entry.name, entry.dtype, &[])?;
            fills.push((at, Span { tensor: index, start: 0, len: entry.length }));
            decoders.push((entry.name.clone(), entry.dtype, at as usize, entry.length as usize));
            at += entry.length;
        }
        let transform: Transform = Box::new(move |bytes| {
            let mut values = Vec::new();
            for (name, dtype, start, len) in decoders {
                values.extend(decode_vector(&name, dtype, &bytes[start..start + len])?);
            }
            Ok(bytemuck::cast_slice(&map(values)).to_vec())
        });
        self.plan(label, buffer, at, fills, Some(transform));
        Ok(())
    }

    /// Bytes `offset..offset + len` of tensor `tensor` are available: `copy(at, dst)` fills `dst`
    /// with the `dst.len()` bytes starting `at` bytes into that range.
    pub fn feed_with(
        &mut self,
        queue: &wgpu::Queue,
        tensor: usize,
        offset: u64,
        len: u64,
        copy: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Result<()> {
        let Some(readers) = self.readers.get(&tensor).cloned() else { return Ok(()) };
        for (index, f) in readers {
            let Some(p) = self.pending[index].as_mut() else { continue };
            let (dest, span) = p.fills[f];
            let (lo, hi) = (offset.max(span.start), (offset + len).min(span.start + span.len));
            if lo >= hi {
                continue;
            }
            let at = dest + lo - span.start;
            if p.transform.is_some() {
                if p.staging.is_empty() {
                    p.staging = vec![0; p.staging_len as usize];
                }
                copy(lo - offset, &mut p.staging[at as usize..(at + hi - lo) as usize]);
            } else {
                // Through a bounded window, whatever the tensor's or the model's size.
                let mut window = vec![0; (hi - lo).min(DIRECT_WINDOW) as usize];
                for start in (lo..hi).step_by(DIRECT_WINDOW as usize) {
                    let piece = &mut window[..(hi - start).min(DIRECT_WINDOW) as usize];
                    copy(start - offset, piece);
                    p.write_direct(queue, at + (start - lo), piece);
                }
            }
            p.missing -= hi - lo;
            self.bytes_fed += hi - lo;
            if p.missing == 0 {
                if let Some(PendingBuffer { transform: Some(t), staging, buffer, .. }) = self.pending[index].take() {
                    queue.write_buffer(&buffer, 0, &t(staging)?);
                }
            }
        }
        Ok(())
    }

    /// The bytes of tensor `tensor` from `offset` on.
    pub fn feed(&mut self, queue: &wgpu::Queue, tensor: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        self.feed_with(queue, tensor, offset, bytes.len() as u64, &mut |at, dst| {
            dst.copy_from_slice(&bytes[at as usize..at as usize + dst.len()])
        })
    }

    /// Shard `shard` of `manifest`, already verified against its sha256. `copy(at, dst)` copies the
    /// shard's bytes from `at` into `dst` (so a caller can keep the shard outside this memory).
    pub fn feed_shard(
        &mut self,
        queue: &wgpu::Queue,
        manifest: &Manifest,
        shard: usize,
        shard_len: u64,
        copy: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Result<()> {
        manifest.check_shard(shard, shard_len)?;
        if self.shards_fed.contains(&shard) {
            return Err(HearthError::InvalidArgument(format!("shard {shard} was already loaded")));
        }
        self.shards_fed.push(shard);
        for piece in manifest.pieces_in_shard(shard) {
            let base = piece.offset_in_shard;
            self.feed_with(queue, piece.tensor, piece.offset_in_tensor, piece.len, &mut |at, dst| {
                copy(base + at, dst)
            })?;
        }
        Ok(())
    }

    /// Every tensor that some buffer reads, one at a time from `source`.
    pub fn feed_source(&mut self, queue: &wgpu::Queue, source: &dyn TensorSource) -> Result<()> {
        let mut tensors: Vec<usize> = self.readers.keys().copied().collect();
        tensors.sort_unstable();
        for t in tensors {
            let entry =
                source.manifest().tensors.get(t).ok_or_else(|| {
                    HearthError::bad_package(source.origin(), format!("no tensor {t} in the manifest"))
                })?;
            self.feed(queue, t, 0, &source.read_tensor_bytes(entry)?)?;
        }
        Ok(())
    }

    /// Tensor bytes taken so far.
    pub fn bytes_fed(&self) -> u64 {
        self.bytes_fed
    }

    /// Succeeds when every planned buffer has been written.
    pub fn finish(self) -> Result<()> {
        let missing: Vec<&str> = self.pending.iter().flatten().map(|p| p.label.as_str()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(HearthError::InvalidArgument(format!(
            "the weights are incomplete: {} buffer(s) never received all their bytes (first: {}); feed every shard",
            missing.len(),
            missing.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// An engine (the decoder's or the encoder's) whose every buffer, pipeline and bind group exists,
/// waiting for its weights: feed it tensors ([`Pending::load`]) or shards ([`Pending::feed_shard`],
/// as they arrive over the network), then [`Pending::finish`].
pub struct Pending<E> {
    engine: E,
    queue: wgpu::Queue,
    manifest: Manifest,
    uploads: WeightUploads,
}

impl<E> Pending<E> {
    pub(crate) fn new(engine: E, queue: wgpu::Queue, manifest: &Manifest, uploads: WeightUploads) -> Self {
        Pending { engine, queue, manifest: manifest.clone(), uploads }
    }

    /// Every tensor the engine reads, one at a time from `source`.
    pub fn load(mut self, source: &dyn TensorSource) -> Result<Self> {
        self.uploads.feed_source(&self.queue, source)?;
        Ok(self)
    }

    /// Shard `index` (already checked against its sha256): `copy(at, dst)` copies its bytes from
    /// offset `at` into `dst`, so the caller may keep the shard outside this memory.
    pub fn feed_shard(&mut self, index: usize, len: u64, copy: &mut dyn FnMut(u64, &mut [u8])) -> Result<()> {
        self.uploads.feed_shard(&self.queue, &self.manifest, index, len, copy)
    }

    /// Tensor bytes taken so far.
    pub fn bytes_fed(&self) -> u64 {
        self.uploads.bytes_fed()
    }

    /// The engine, once every weight buffer has all its bytes.
    pub fn finish(self) -> Result<E> {
        self.uploads.finish()?;
        Ok(self.engine)
    }
}
