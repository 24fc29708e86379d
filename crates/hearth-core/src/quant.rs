//! Hearth's tensor encodings, designed so a WGSL shader can decode them without `shader-f16`:
//!
//! - `q4`: 4-bit unsigned codes `q`, value `q * scale + min`, one f16 (scale, min) pair per group of `G`
//!   consecutive weights along a row (G = 32, 64 or 128). Codes are packed two per byte, low nibble first,
//!   in row-major order; scales and mins are separate row-major arrays.
//! - `q8`: signed 8-bit codes, value `q * scale`, one f16 scale per group of 32 along a row.
//! - `q5`: GGUF's Q5_0 and Q5_1 kept losslessly: `q4`'s value `q * scale + min` (group 32) with
//!   five-bit codes, each group's 16 bytes of low bits followed by a word of fifth bits.
//! - `q4k`, `q5k`, `q6k`: GGUF's Q4_K, Q5_K and Q6_K kept losslessly (`ggml_quants::k_from_ggml`):
//!   super-blocks of 256 values whose low four bits are codes as in `q4`, whose fifth (Q5_K) or
//!   fifth and sixth (Q6_K) bits are a separate array, and whose scales are each super-block's own
//!   header. Decoded exactly as llama.cpp decodes them; never produced by quantizing.
//! - `f16`, `f32`: plain little-endian arrays.
//!
//! See `docs/FORMAT.md` for the byte layout inside a package.

use half::f16;
use serde::{Deserialize, Serialize};

use crate::error::{HearthError, Result};

/// Group size of `q8` (fixed: it is GGUF Q8_0's block).
pub const Q8_GROUP: usize = 32;
/// Group size of `q5` (GGUF Q5_0 / Q5_1's block), and the code bytes of one group: 16 of low
/// bits, then a little-endian word whose bit k is value k's fifth bit.
pub const Q5_GROUP: usize = 32;
const Q5_GROUP_BYTES: usize = 20;

/// Values per super-block of the K-quant encodings (GGUF's `QK_K`).
pub const K_BLOCK: usize = 256;
/// Header bytes per super-block: `q4k` and `q5k` keep GGUF's d, dmin and 12 bytes of packed 6-bit
/// scales and mins; `q6k` its 16 signed scales and d, then two zero bytes (so a header is whole words).
const K4_HEADER: usize = 16;
const K6_HEADER: usize = 20;

/// Sub-arrays of a quantized tensor start at multiples of this, so each can be bound as a GPU buffer range.
pub const PART_ALIGN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Q8,
    Q4,
    Q5,
    Q4k,
    Q5k,
    Q6k,
}

impl DType {
    /// The parts of a tensor of this encoding, in storage order.
    pub fn part_names(self) -> &'static [&'static str] {
        match self {
            DType::F32 | DType::F16 => &["data"],
            DType::Q8 => &["codes", "scales"],
            DType::Q4 | DType::Q5 => &["codes", "scales", "mins"],
            DType::Q4k => &["codes", "scales"],
            DType::Q5k | DType::Q6k => &["codes", "scales", "high"],
        }
    }

    /// Whether this is one of the K-quant encodings (kept from GGUF, never quantized to).
    pub fn is_k_quant(self) -> bool {
        matches!(self, DType::Q4k | DType::Q5k | DType::Q6k)
    }

    /// Byte length of each part (in `part_names` order) for `n` values, or None if `group` does not
    /// suit the encoding or the row length `cols`, or a length does not fit a u64.
    pub fn part_lengths(self, n: usize, cols: usize, group: Option<usize>) -> Option<Vec<u64>> {
        let n64 = n as u64;
        let groups = |g: usize| (cols > 0 && cols % g == 0).then_some(n64 / g as u64 * 2);
        Some(match self {
            DType::F32 => vec![n64.checked_mul(4)?],
            DType::F16 => vec![n64.checked_mul(2)?],
            DType::Q8 => vec![n64, groups(Q8_GROUP)?],
            DType::Q4 => {
                let g = group.filter(|g| [32, 64, 128].contains(g))?;
                vec![n64 / 2, groups(g)?, groups(g)?]
            }
            DType::Q5 => vec![groups(Q5_GROUP)? / 2 * Q5_GROUP_BYTES as u64, groups(Q5_GROUP)?, groups(Q5_GROUP)?],
            DType::Q4k | DType::Q5k | DType::Q6k => {
                let blocks = (cols > 0 && cols % K_BLOCK == 0).then_some(n64 / K_BLOCK as u64)?;
                match self {
                    DType::Q4k => vec![n64 / 2, blocks * K4_HEADER as u64],
                    DType::Q5k => vec![n64 / 2, blocks * K4_HEADER as u64, n64 / 8],
                    _ => vec![n64 / 2, blocks * K6_HEADER as u64, n64 / 4],
                }
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::Q5 => "q5",
            DType::Q4k => "q4k",
            DType::Q5k => "q5k",
            DType::Q6k => "q6k",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Q4Data {
    pub group: usize,
    /// `rows * cols / 2` bytes: code `2k` in the low nibble of byte `k`, code `2k + 1` in the high nibble.
    pub codes: Vec<u8>,
    pub scales: Vec<f16>,
    pub mins: Vec<f16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Q8Data {
    pub codes: Vec<i8>,
    pub scales: Vec<f16>,
}

/// A K-quant tensor (`q4k`, `q5k`, `q6k`; see `docs/FORMAT.md`): the arrays as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct KData {
    /// `n / 2` bytes of each value's low four bits, as `q4`'s codes.
    pub codes: Vec<u8>,
    /// One header per super-block of 256 values (16 bytes; 20 for `q6k`).
    pub scales: Vec<u8>,
    /// Each value's fifth bit (`q5k`: bit `i % 8` of byte `i / 8`) or fifth and sixth bits (`q6k`:
    /// bits `2 (i % 4)`.. of byte `i / 4`); empty for `q4k`.
    pub high: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8(Q8Data),
    Q4(Q4Data),
    /// `q5`: `Q4Data` of group 32 whose codes hold 20 bytes per group (see [`Q5_GROUP`]).
    Q5(Q4Data),
    Q4k(KData),
    Q5k(KData),
    Q6k(KData),
}

/// A tensor in row-major order; matrices are `[rows (outputs), cols (inputs)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Byte ranges of a tensor's parts, relative to the tensor's start in its package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRange {
    pub offset: u64,
    pub length: u64,
}

/// Where parts of these lengths lie in a tensor's bytes (each at a multiple of [`PART_ALIGN`]), and
/// the tensor's length: zero padding to a whole u32 after the last, so a shader can read every part
/// as an array of words.
pub fn lay_out_parts(lengths: impl IntoIterator<Item = u64>) -> (Vec<PartRange>, u64) {
    let mut end = 0u64;
    let ranges = lengths
        .into_iter()
        .map(|length| {
            let offset = end.next_multiple_of(PART_ALIGN as u64);
            end = offset + length;
            PartRange { offset, length }
        })
        .collect();
    (ranges, end.next_multiple_of(4))
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::Q8(_) => DType::Q8,
            TensorData::Q4(_) => DType::Q4,
            TensorData::Q5(_) => DType::Q5,
            TensorData::Q4k(_) => DType::Q4k,
            TensorData::Q5k(_) => DType::Q5k,
            TensorData::Q6k(_) => DType::Q6k,
        }
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row length (the innermost dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn rows(&self) -> usize {
        self.n_elements() / self.cols().max(1)
    }

    pub fn group_size(&self) -> Option<usize> {
        match &self.data {
            TensorData::Q4(q) | TensorData::Q5(q) => Some(q.group),
            TensorData::Q8(_) => Some(Q8_GROUP),
            _ => None,
        }
    }

    /// Rows `start..start + count` of a matrix, in the same encoding (rows are independent in every
    /// encoding: groups never cross a row). `None` when the range is outside the matrix.
    pub fn row_slice(&self, start: usize, count: usize) -> Option<Tensor> {
        let cols = self.cols();
        if self.shape.len() != 2 || start + count > self.rows() {
            return None;
        }
        let (a, b) = (start * cols, (start + count) * cols);
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[a..b].to_vec()),
            TensorData::F16(v) => TensorData::F16(v[a..b].to_vec()),
            TensorData::Q8(q) => TensorData::Q8(Q8Data {
                codes: q.codes[a..b].to_vec(),
                scales: q.scales[a / Q8_GROUP..b / Q8_GROUP].to_vec(),
            }),
            TensorData::Q4(q) => TensorData::Q4(Q4Data {
                group: q.group,
                codes: q.codes[a / 2..b / 2].to_vec(),
                scales: q.scales[a / q.group..b / q.group].to_vec(),
                mins: q.mins[a / q.group..b / q.group].to_vec(),
            }),
            TensorData::Q5(q) => TensorData::Q5(Q4Data {
                group: Q5_GROUP,
                codes: q.codes[a / Q5_GROUP * Q5_GROUP_BYTES..b / Q5_GROUP * Q5_GROUP_BYTES].to_vec(),
                scales: q.scales[a / Q5_GROUP..b / Q5_GROUP].to_vec(),
                mins: q.mins[a / Q5_GROUP..b / Q5_GROUP].to_vec(),
            }),
            TensorData::Q4k(k) => TensorData::Q4k(k.values(a..b, K4_HEADER, 1)),
            TensorData::Q5k(k) => TensorData::Q5k(k.values(a..b, K4_HEADER, 8)),
            TensorData::Q6k(k) => TensorData::Q6k(k.values(a..b, K6_HEADER, 4)),
        };
        Some(Tensor { shape: vec![count, cols], data })
    }

    /// Quantize (or convert) f32 values into `dtype`. `group` applies to q4 only.
    pub fn from_f32(shape: Vec<usize>, values: &[f32], dtype: DType, group: usize) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(HearthError::InvalidArgument(format!(
                "shape {shape:?} holds {n} values but {} were given",
                values.len()
            )));
        }
        let cols = shape.last().copied().unwrap_or(1);
        let data = match dtype {
            DType::F32 => TensorData::F32(values.to_vec()),
            DType::F16 => TensorData::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::Q8 => {
                check_groups(cols, Q8_GROUP, "q8")?;
                TensorData::Q8(quantize_q8(values))
            }
            DType::Q4 => {
                if ![32, 64, 128].contains(&group) {
                    return Err(HearthError::InvalidArgument(format!(
                        "q4 group size must be 32, 64 or 128, not {group}"
                    )));
                }
                check_groups(cols, group, "q4")?;
                TensorData::Q4(quantize_q4(values, group))
            }
            DType::Q5 | DType::Q4k | DType::Q5k | DType::Q6k => {
                return Err(HearthError::InvalidArgument(format!(
                    "{} is kept from GGUF files as it is, not made by quantizing (choose q4 or q8)",
                    dtype.name()
                )))
            }
        };
        Ok(Tensor { shape, data })
    }

    /// Decode row `row` (of `cols` values) into `out`.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let cols = self.cols();
        let start = row * cols;
        match &self.data {
            TensorData::F32(v) => out.copy_from_slice(&v[start..start + cols]),
            TensorData::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[start..start + cols]) {
                    *o = x.to_f32();
                }
            }
            TensorData::Q8(q) => {
                let codes = &q.codes[start..start + cols];
                let scales = &q.scales[start / Q8_GROUP..(start + cols) / Q8_GROUP];
                for ((o, c), s) in out.chunks_mut(Q8_GROUP).zip(codes.chunks(Q8_GROUP)).zip(scales) {
                    let s = s.to_f32();
                    for (o, &c) in o.iter_mut().zip(c) {
                        *o = f32::from(c) * s;
                    }
                }
            }
            TensorData::Q4(q) => {
                let g = q.group;
                let codes = &q.codes[start / 2..(start + cols) / 2];
                let first_group = start / g;
                for (gi, o) in out.chunks_mut(g).enumerate() {
                    let s = q.scales[first_group + gi].to_f32();
                    let m = q.mins[first_group + gi].to_f32();
                    let bytes = &codes[gi * g / 2..(gi + 1) * g / 2];
                    for (pair, &b) in o.chunks_mut(2).zip(bytes) {
                        pair[0] = f32::from(b & 0x0f) * s + m;
                        pair[1] = f32::from(b >> 4) * s + m;
                    }
                }
            }
            TensorData::Q5(q) => {
                for (gi, o) in out.chunks_mut(Q5_GROUP).enumerate() {
                    let g = start / Q5_GROUP + gi;
                    let (s, m) = (q.scales[g].to_f32(), q.mins[g].to_f32());
                    let codes = &q.codes[g * Q5_GROUP_BYTES..][..Q5_GROUP_BYTES];
                    let high = u32::from_le_bytes([codes[16], codes[17], codes[18], codes[19]]);
                    for (k, o) in o.iter_mut().enumerate() {
                        let q = ((codes[k / 2] >> (4 * (k % 2))) & 0x0f) as u32 | (((high >> k) & 1) << 4);
                        *o = q as f32 * s + m;
                    }
                }
            }
            TensorData::Q4k(k) | TensorData::Q5k(k) => {
                let five = matches!(self.data, TensorData::Q5k(_));
                for (b, o) in out.chunks_mut(K_BLOCK).enumerate() {
                    let block = start / K_BLOCK + b;
                    let header = &k.scales[block * K4_HEADER..][..K4_HEADER];
                    for (j, o) in o.chunks_mut(32).enumerate() {
                        // As ggml: d·sc and dmin·m are exact in f32, and so is d1·q; one rounding.
                        let (d1, m1) = k4_sub_block_scale_min(header, j);
                        for (l, o) in o.iter_mut().enumerate() {
                            let i = block * K_BLOCK + 32 * j + l;
                            let mut q = (k.codes[i / 2] >> (4 * (i % 2))) & 0x0f;
                            if five {
                                q |= ((k.high[i / 8] >> (i % 8)) & 1) << 4;
                            }
                            *o = d1 * f32::from(q) - m1;
                        }
                    }
                }
            }
            TensorData::Q6k(k) => {
                for (b, o) in out.chunks_mut(K_BLOCK).enumerate() {
                    let block = start / K_BLOCK + b;
                    let header = &k.scales[block * K6_HEADER..][..K6_HEADER];
                    let d = f16_le(header, 16);
                    for (l, o) in o.iter_mut().enumerate() {
                        let i = block * K_BLOCK + l;
                        let low = (k.codes[i / 2] >> (4 * (i % 2))) & 0x0f;
                        let high = (k.high[i / 4] >> (2 * (i % 4))) & 3;
                        let q = i32::from(low | (high << 4)) - 32;
                        // d · sc · q is exact in f32 (at most 11 + 7 + 5 significant bits).
                        *o = d * f32::from(header[l / 16] as i8) * q as f32;
                    }
                }
            }
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0f32; self.n_elements()];
        for (r, chunk) in out.chunks_mut(cols).enumerate() {
            self.dequantize_row(r, chunk);
        }
        out
    }

    /// The parts of the tensor's serialized form: (name, bytes) in storage order.
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        let bytes: Vec<&[u8]> = match &self.data {
            TensorData::F32(v) => vec![bytemuck::cast_slice(v)],
            TensorData::F16(v) => vec![bytemuck::cast_slice(v)],
            TensorData::Q8(q) => vec![bytemuck::cast_slice(&q.codes), bytemuck::cast_slice(&q.scales)],
            TensorData::Q4(q) | TensorData::Q5(q) => {
                vec![&q.codes, bytemuck::cast_slice(&q.scales), bytemuck::cast_slice(&q.mins)]
            }
            TensorData::Q4k(k) => vec![&k.codes, &k.scales],
            TensorData::Q5k(k) | TensorData::Q6k(k) => vec![&k.codes, &k.scales, &k.high],
        };
        self.dtype().part_names().iter().copied().zip(bytes).collect()
    }

    /// Serialize into the package layout: each part starts at a multiple of [`PART_ALIGN`] from the
    /// tensor's start. Returns the bytes and each part's range.
    pub fn to_bytes(&self) -> (Vec<u8>, Vec<(&'static str, PartRange)>) {
        // Package files are little-endian; so is every target Hearth builds for (x86-64, aarch64, wasm32).
        let parts = self.parts();
        let (ranges, total) = lay_out_parts(parts.iter().map(|(_, bytes)| bytes.len() as u64));
        let mut out = vec![0u8; total as usize];
        for ((_, bytes), range) in parts.iter().zip(&ranges) {
            out[range.offset as usize..][..bytes.len()].copy_from_slice(bytes);
        }
        (out, parts.iter().map(|(name, _)| *name).zip(ranges).collect())
    }

    /// Inverse of [`Tensor::to_bytes`], validating every length against the shape.
    pub fn from_bytes(name: &str, shape: Vec<usize>, dtype: DType, group: Option<usize>, bytes: &[u8]) -> Result<Self> {
        let mut fill = TensorFill::new(name, shape, dtype, group)?;
        fill.write(0, bytes.len() as u64, &mut |at, dst| dst.copy_from_slice(&bytes[at as usize..][..dst.len()]));
        if !fill.is_complete() {
            return Err(HearthError::bad_package(
                format!("tensor `{name}`"),
                format!("{} bytes of data, too few for {dtype:?} of shape {:?}", bytes.len(), fill.tensor.shape),
            ));
        }
        Ok(fill.tensor)
    }
}

/// A tensor filled from pieces of its serialized form (`Tensor::to_bytes`) as they arrive, in any
/// order: its arrays are allocated once at their final size and every piece is copied straight into
/// place, so assembling a model never holds its bytes twice (the browser's CPU engine loads this way).
pub struct TensorFill {
    name: String,
    tensor: Tensor,
    /// Each part's range in the serialized form, in storage order.
    ranges: Vec<PartRange>,
    /// Part bytes written so far. Pieces never overlap (callers feed each byte range once), so the
    /// tensor is complete when this reaches the parts' total.
    filled: u64,
}

impl TensorFill {
    /// Validate the encoding against the shape and allocate the arrays (zeroed). A failed
    /// allocation is an error, not an abort: wasm32 has 4 GiB at most and a browser may give less.
    pub fn new(name: &str, shape: Vec<usize>, dtype: DType, group: Option<usize>) -> Result<Self> {
        let bad = |detail: String| HearthError::bad_package(format!("tensor `{name}`"), detail);
        let n = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} has more values than this machine can count")))?;
        let cols = shape.last().copied().unwrap_or(1);
        let data = match dtype {
            DType::F32 => TensorData::F32(alloc_zeroed(name, n)?),
            DType::F16 => TensorData::F16(alloc_zeroed(name, n)?),
            DType::Q8 => {
                check_groups(cols, Q8_GROUP, "q8").map_err(|e| bad(e.to_string()))?;
                TensorData::Q8(Q8Data { codes: alloc_zeroed(name, n)?, scales: alloc_zeroed(name, n / Q8_GROUP)? })
            }
            DType::Q4 => {
                let group = group.ok_or_else(|| bad("q4 tensor without a group size".into()))?;
                if ![32, 64, 128].contains(&group) {
                    return Err(bad(format!("q4 group size {group} (32, 64 or 128 allowed)")));
                }
                check_groups(cols, group, "q4").map_err(|e| bad(e.to_string()))?;
                TensorData::Q4(Q4Data {
                    group,
                    codes: alloc_zeroed(name, n / 2)?,
                    scales: alloc_zeroed(name, n / group)?,
                    mins: alloc_zeroed(name, n / group)?,
                })
            }
            DType::Q5 => {
                check_groups(cols, Q5_GROUP, "q5").map_err(|e| bad(e.to_string()))?;
                TensorData::Q5(Q4Data {
                    group: Q5_GROUP,
                    codes: alloc_zeroed(name, n / Q5_GROUP * Q5_GROUP_BYTES)?,
                    scales: alloc_zeroed(name, n / Q5_GROUP)?,
                    mins: alloc_zeroed(name, n / Q5_GROUP)?,
                })
            }
            DType::Q4k | DType::Q5k | DType::Q6k => {
                check_groups(cols, K_BLOCK, dtype.name()).map_err(|e| bad(e.to_string()))?;
                let lengths = dtype.part_lengths(n, cols, None).ok_or_else(|| bad(format!("rows of {cols}")))?;
                let part = |i: usize| alloc_zeroed::<u8>(name, lengths.get(i).map_or(0, |&l| l as usize));
                let k = KData { codes: part(0)?, scales: part(1)?, high: part(2)? };
                match dtype {
                    DType::Q4k => TensorData::Q4k(k),
                    DType::Q5k => TensorData::Q5k(k),
                    _ => TensorData::Q6k(k),
                }
            }
        };
        let mut tensor = Tensor { shape, data };
        let mut at = 0u64;
        let ranges = parts_mut(&mut tensor.data)
            .iter()
            .map(|part| {
                let offset = at.next_multiple_of(PART_ALIGN as u64);
                at = offset + part.len() as u64;
                PartRange { offset, length: part.len() as u64 }
            })
            .collect();
        Ok(TensorFill { name: name.to_string(), tensor, ranges, filled: 0 })
    }

    /// Each part's range in the serialized form, in storage order (`DType::part_names`).
    pub fn ranges(&self) -> &[PartRange] {
        &self.ranges
    }

    /// Bytes of the serialized form that carry data (the end of the last part).
    pub fn data_len(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.offset + r.length)
    }

    /// Take the piece of the serialized form at `at..at + len`: `copy(offset_in_piece, dst)` must
    /// fill `dst` with the piece's bytes from that offset. Bytes outside every part (alignment
    /// padding, trailing words) are skipped.
    pub fn write(&mut self, at: u64, len: u64, copy: &mut dyn FnMut(u64, &mut [u8])) {
        for (range, part) in self.ranges.iter().zip(parts_mut(&mut self.tensor.data)) {
            let (lo, hi) = (at.max(range.offset), (at + len).min(range.offset + range.length));
            if lo < hi {
                copy(lo - at, &mut part[(lo - range.offset) as usize..(hi - range.offset) as usize]);
                self.filled += hi - lo;
            }
        }
    }

    pub fn is_complete(&self) -> bool {
        self.filled == self.ranges.iter().map(|r| r.length).sum::<u64>()
    }

    /// The tensor, once every byte of its parts has been written.
    pub fn finish(self) -> Result<Tensor> {
        if !self.is_complete() {
            return Err(HearthError::bad_package(
                format!("tensor `{}`", self.name),
                format!("{} of its {} bytes arrived", self.filled, self.data_len()),
            ));
        }
        Ok(self.tensor)
    }
}

/// The arrays of `data` as bytes, in storage order (`DType::part_names`).
fn parts_mut(data: &mut TensorData) -> Vec<&mut [u8]> {
    match data {
        TensorData::F32(v) => vec![bytemuck::cast_slice_mut(v)],
        TensorData::F16(v) => vec![bytemuck::cast_slice_mut(v)],
        TensorData::Q8(Q8Data { codes, scales }) => {
            vec![bytemuck::cast_slice_mut(codes), bytemuck::cast_slice_mut(scales)]
        }
        TensorData::Q4(Q4Data { codes, scales, mins, .. }) | TensorData::Q5(Q4Data { codes, scales, mins, .. }) => {
            vec![codes, bytemuck::cast_slice_mut(scales), bytemuck::cast_slice_mut(mins)]
        }
        TensorData::Q4k(KData { codes, scales, .. }) => vec![codes, scales],
        TensorData::Q5k(KData { codes, scales, high }) | TensorData::Q6k(KData { codes, scales, high }) => {
            vec![codes, scales, high]
        }
    }
}

impl KData {
    /// Values `range` (whole super-blocks) in the same encoding, whose headers take `header` bytes
    /// and whose `high` part (if any) `values_per_high_byte` values per byte (8 for q5k, 4 for q6k).
    fn values(&self, range: std::ops::Range<usize>, header: usize, values_per_high_byte: usize) -> KData {
        let high = if self.high.is_empty() {
            Vec::new()
        } else {
            self.high[range.start / values_per_high_byte..range.end / values_per_high_byte].to_vec()
        };
        KData {
            codes: self.codes[range.start / 2..range.end / 2].to_vec(),
            scales: self.scales[range.start / K_BLOCK * header..range.end / K_BLOCK * header].to_vec(),
            high,
        }
    }
}

fn f16_le(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// (d · sc, dmin · m) of sub-block `j` (0..8) of a Q4_K / Q5_K super-block whose 16-byte header is
/// `header`: its values are `q · d·sc - dmin·m` (both products exact in f32).
pub fn k4_sub_block_scale_min(header: &[u8], j: usize) -> (f32, f32) {
    let (sc, m) = k4_scale_min(j, &header[4..16]);
    (f16_le(header, 0) * f32::from(sc), f16_le(header, 2) * f32::from(m))
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K / Q5_K header
/// (ggml's `get_scale_min_k4`).
pub fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn alloc_zeroed<T: bytemuck::Zeroable + Clone>(name: &str, len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| HearthError::OutOfMemory {
        what: format!("tensor `{name}`"),
        bytes: (len as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        limit: "the allocation failed".into(),
    })?;
    v.resize(len, T::zeroed());
    Ok(v)
}

fn check_groups(cols: usize, group: usize, what: &str) -> Result<()> {
    if cols == 0 || cols % group != 0 {
        return Err(HearthError::InvalidArgument(format!(
            "{what} needs rows whose length is a multiple of {group}, got {cols}"
        )));
    }
    Ok(())
}

fn quantize_q8(values: &[f32]) -> Q8Data {
    let mut codes = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / Q8_GROUP);
    for group in values.chunks(Q8_GROUP) {
        let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = f16::from_f32(amax / 127.0);
        let inv = if scale.to_f32() > 0.0 { 1.0 / scale.to_f32() } else { 0.0 };
        codes.extend(group.iter().map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    Q8Data { codes, scales }
}

fn quantize_q4(values: &[f32], group: usize) -> Q4Data {
    let mut codes = vec![0u8; values.len() / 2];
    let mut scales = Vec::with_capacity(values.len() / group);
    let mut mins = Vec::with_capacity(values.len() / group);
    for (gi, g) in values.chunks(group).enumerate() {
        let lo = g.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Round the parameters to f16 first so the codes are chosen against the values the decoder will use.
        let min = f16::from_f32(lo);
        let scale = f16::from_f32((hi - min.to_f32()) / 15.0);
        let (s, m) = (scale.to_f32(), min.to_f32());
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        for (k, &v) in g.iter().enumerate() {
            let q = ((v - m) * inv).round().clamp(0.0, 15.0) as u8;
            let idx = gi * group + k;
            codes[idx / 2] |= q << (4 * (idx % 2));
        }
        scales.push(scale);
        mins.push(min);
    }
    Q4Data { group, codes, scales, mins }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn q8_round_trip_error_is_within_half_a_step() {
        let v = pseudo_random(4 * 64, 1);
        let t = Tensor::from_f32(vec![4, 64], &v, DType::Q8, 32).unwrap();
        let back = t.to_f32();
        for (g, (a, b)) in v.chunks(32).zip(back.chunks(32)).enumerate() {
            let step = a.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= step * 0.5 + 1e-3 * step, "group {g}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn q4_round_trip_error_is_within_half_a_step_for_every_group_size() {
        for group in [32, 64, 128] {
            let v = pseudo_random(3 * 256, group as u32);
            let t = Tensor::from_f32(vec![3, 256], &v, DType::Q4, group).unwrap();
            let back = t.to_f32();
            for (a, b) in v.chunks(group).zip(back.chunks(group)) {
                let lo = a.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // Half a step, plus the f16 rounding of min and scale (relative 2^-11 each, times up to 15 codes).
                let tol = (hi - lo) / 15.0 * 0.5 + (hi.abs() + lo.abs()) * 16.0 / 2048.0;
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= tol, "group {group}: {x} vs {y} (tol {tol})");
                }
            }
        }
    }

    #[test]
    fn serialized_parts_are_aligned_and_round_trip() {
        let v = pseudo_random(5 * 96, 7);
        for (dtype, group) in [(DType::Q4, 32), (DType::Q8, 32), (DType::F16, 0), (DType::F32, 0)] {
            let t = Tensor::from_f32(vec![5, 96], &v, dtype, group).unwrap();
            let (bytes, parts) = t.to_bytes();
            for (_, r) in &parts {
                assert_eq!(r.offset % PART_ALIGN as u64, 0);
            }
            let back = Tensor::from_bytes("t", vec![5, 96], dtype, t.group_size(), &bytes).unwrap();
            assert_eq!(back, t);
            // Cut inside the last part (not just its padding): the data no longer fits the shape.
            let last = parts.last().unwrap().1;
            let cut = (last.offset + last.length - 1) as usize;
            assert!(Tensor::from_bytes("t", vec![5, 96], dtype, t.group_size(), &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn rejects_rows_that_do_not_fill_whole_groups() {
        assert!(Tensor::from_f32(vec![2, 40], &[0.0; 80], DType::Q4, 32).is_err());
        assert!(Tensor::from_f32(vec![2, 40], &[0.0; 80], DType::Q8, 32).is_err());
        assert!(Tensor::from_f32(vec![2, 64], &[0.0; 128], DType::Q4, 48).is_err());
    }
}
