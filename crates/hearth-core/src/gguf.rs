//! A reader for GGUF files (versions 2 and 3), the format llama.cpp uses.
//!
//! Only the header (metadata and tensor table) is parsed eagerly; tensor bytes are read on demand with
//! [`GgufFile::read_tensor`], so converting a model never needs the whole file in memory. Every count,
//! length and offset read from the file is checked against the file's size before it is trusted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{HearthError, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Generous upper bounds; a count above these can only come from a corrupt file.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;

/// llama.cpp's keys for a model split across files (`llama-gguf-split`, gguf-py's `split_max_*`):
/// the file's place (from 0), how many files, and how many tensors all of them hold. The first
/// file holds all the metadata; each file is a whole GGUF with its own tensors and offsets.
pub const SPLIT_NO: &str = "split.no";
pub const SPLIT_COUNT: &str = "split.count";
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";
/// More files than a model is split into (a browser reads every one's header before anything else).
const MAX_SPLITS: u64 = 1024;

/// The tensor element/block types of ggml, by their on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// A type this reader knows nothing about, or knows but cannot size (i-quants, ...).
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q8_1 => "Q8_1".into(),
            Self::Q2K => "Q2_K".into(),
            Self::Q3K => "Q3_K".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q5K => "Q5_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::Q8K => "Q8_K".into(),
            Self::BF16 => "BF16".into(),
            Self::Other(id) => {
                let known = match id {
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    20 => "IQ4_NL",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => "unknown",
                };
                format!("{known} (ggml type {id})")
            }
        }
    }

    /// (elements per block, bytes per block), or None for types this reader cannot size.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Other(_) => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer value that fits in u64 (GGUF writers disagree on which integer type a key uses).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension, i.e. a matrix's row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    /// Byte length, when the type's block layout is known.
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in row-major (PyTorch) order: outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    /// Whether `path` is a file to read tensor data from (false: a header read from a prefix).
    on_disk: bool,
    /// For a header read from a prefix: tensors' bytes fetched apart ([`Self::supply_tensor`]).
    supplied: BTreeMap<String, Vec<u8>>,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// The bytes of all its files (one, unless the model is split), taken back to back: tensors'
    /// offsets count in this run.
    pub file_len: u64,
    /// Each file and its first byte in that run.
    files: Vec<(PathBuf, u64)>,
}

/// Reads primitive values while tracking the position, so every length can be checked against what is left.
struct HeaderReader<R> {
    inner: R,
    pos: u64,
    /// The file's length (for a prefix, what the server says the whole file has).
    len: u64,
    /// The bytes there are to read: `len` for a file, the prefix's length for a prefix.
    available: u64,
    /// Whether a read wanted bytes past `available` (for a prefix: ask for more).
    ran_out: bool,
    file: String,
}

impl<R: Read> HeaderReader<R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|_| {
            self.ran_out = true;
            HearthError::bad_file(&self.file, format!("truncated while reading {what} at byte {}", self.pos))
        })?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A count that must not exceed `max` and must leave at least `min_item_bytes` per item in the file.
    fn count(&mut self, what: &str, max: u64, min_item_bytes: u64) -> Result<u64> {
        let n = self.u64(what)?;
        let remaining = self.len.saturating_sub(self.pos);
        if n > max || n.saturating_mul(min_item_bytes) > remaining {
            return Err(HearthError::bad_file(
                &self.file,
                format!("{what} is {n}, impossible for a file with {remaining} bytes left (corrupt or truncated)"),
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, u64::MAX, 1)?;
        // Nothing allocated for bytes a prefix does not hold (a server may claim any file length).
        if n > self.available.saturating_sub(self.pos) {
            self.ran_out = true;
            return Err(HearthError::bad_file(&self.file, format!("truncated inside {what}")));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| HearthError::bad_file(&self.file, format!("truncated inside {what}")))?;
        self.pos += n;
        String::from_utf8(buf).map_err(|_| HearthError::bad_file(&self.file, format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<GgufValue> {
        Ok(match type_id {
            0 => GgufValue::U8(self.bytes::<1>(key)?[0]),
            1 => GgufValue::I8(self.bytes::<1>(key)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.bytes(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => GgufValue::Bool(self.bytes::<1>(key)?[0] != 0),
            8 => GgufValue::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(HearthError::bad_file(
                        &self.file,
                        format!("metadata `{key}`: arrays nested too deeply"),
                    ));
                }
                let item_type = self.u32(key)?;
                let n = self.count(&format!("length of array `{key}`"), u64::MAX, 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.bytes(key)?)),
            other => {
                return Err(HearthError::bad_file(
                    &self.file,
                    format!("metadata `{key}` has unknown value type {other}"),
                ))
            }
        })
    }
}

impl GgufFile {
    /// The GGUF at `path`; for the first file of a split model (`NAME-00001-of-0000N.gguf`), the
    /// model of all its files (found beside it by name: [`Self::split_names`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let first = Self::open_one(path)?;
        let Some((no, count)) = first.split()? else {
            return Ok(first);
        };
        let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let names = if no == 0 { Self::split_names(&file_name, count) } else { None };
        let Some(names) = names else {
            let why = if no == 0 {
                "its name does not say where the others are: name the files as llama.cpp does"
            } else {
                "give the first of its files, which names the others"
            };
            return Err(HearthError::bad_file(
                path.display(),
                format!(
                    "is split {} of {count} of a model; {why} (NAME-00001-of-{count:05}.gguf, NAME-00002-of-{count:05}.gguf, ...)",
                    no + 1
                ),
            ));
        };
        let mut parts = vec![first];
        for name in &names[1..] {
            parts.push(Self::open_one(path.with_file_name(name))?);
        }
        Self::join(parts)
    }

    /// One file, split or not.
    fn open_one(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| HearthError::io("open", path, e))?;
        let len = file.metadata().map_err(|e| HearthError::io("stat", path, e))?.len();
        let inner = BufReader::with_capacity(1 << 20, file);
        let file = path.display().to_string();
        let gguf = Self::parse(&mut HeaderReader { inner, pos: 0, len, available: len, ran_out: false, file }, path)?;
        Ok(GgufFile { on_disk: true, ..gguf })
    }

    /// The header of a GGUF of `len` bytes from its first bytes (`prefix`, a range request's
    /// answer): `Ok(None)` when the header runs past the prefix (ask for more), an error when the
    /// bytes are not a GGUF header that fits `len`. `name` (a URL) names it in errors; its tensors'
    /// bytes are not here, so `read_tensor` cannot read them.
    pub fn from_prefix(prefix: &[u8], len: u64, name: &str) -> Result<Option<Self>> {
        let available = (prefix.len() as u64).min(len);
        let mut r = HeaderReader { inner: prefix, pos: 0, len, available, ran_out: false, file: name.to_string() };
        match Self::parse(&mut r, Path::new(name)) {
            Ok(gguf) => Ok(Some(gguf)),
            Err(_) if r.ran_out && available < len => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn parse<R: Read>(r: &mut HeaderReader<R>, path: &Path) -> Result<Self> {
        let (len, name) = (r.len, r.file.clone());

        let magic: [u8; 4] = r.bytes("magic")?;
        if &magic != GGUF_MAGIC {
            return Err(HearthError::bad_file(
                &name,
                format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"),
            ));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(HearthError::bad_file(&name, format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        // Each tensor entry takes at least 8 (name len) + 4 + 4 + 8 bytes; each metadata entry at least 8 + 4 + 1.
        let n_tensors = r.count("tensor count", MAX_TENSORS, 24)?;
        let n_kv = r.count("metadata count", MAX_METADATA, 13)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let type_id = r.u32(&key)?;
            let value = r.value(type_id, &key, 0)?;
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let tname = r.string("tensor name")?;
            let n_dims = r.u32(&tname)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(HearthError::bad_file(
                    &name,
                    format!("tensor `{tname}` has {n_dims} dimensions (1..=4 allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&tname)?);
            }
            let ggml_type = GgmlType::from_id(r.u32(&tname)?);
            let rel_offset = r.u64(&tname)?;
            tensors.push((tname, dims, ggml_type, rel_offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => {
                    return Err(HearthError::bad_file(&name, format!("general.alignment {v:?} is not a power of two")))
                }
            },
        };
        let data_start = r.pos.div_ceil(alignment) * alignment;

        let tensors = tensors
            .into_iter()
            .map(|(tname, dims, ggml_type, rel_offset)| {
                let n_elements =
                    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n > 0).ok_or_else(|| {
                        HearthError::bad_file(&name, format!("tensor `{tname}` has absurd dimensions {dims:?}"))
                    })?;
                let n_bytes = match ggml_type.block_layout() {
                    None => None,
                    Some((block, block_bytes)) => {
                        if dims[0] % block != 0 {
                            return Err(HearthError::bad_file(
                                &name,
                                format!(
                                    "tensor `{tname}`: row length {} is not a multiple of the {} block size {block}",
                                    dims[0],
                                    ggml_type.name()
                                ),
                            ));
                        }
                        // Checked: the dimensions are the file's, and an F32 tensor of 2^62 values
                        // would wrap to a small byte count that fits the file.
                        Some((n_elements / block).checked_mul(block_bytes).ok_or_else(|| {
                            HearthError::bad_file(&name, format!("tensor `{tname}` has absurd dimensions {dims:?}"))
                        })?)
                    }
                };
                let offset = data_start.checked_add(rel_offset).ok_or_else(|| {
                    HearthError::bad_file(&name, format!("tensor `{tname}` has absurd offset {rel_offset}"))
                })?;
                if rel_offset % alignment != 0 {
                    return Err(HearthError::bad_file(
                        &name,
                        format!("tensor `{tname}` offset {rel_offset} is not aligned to {alignment}"),
                    ));
                }
                let end = offset.checked_add(n_bytes.unwrap_or(0));
                if end.is_none_or(|end| end > len) {
                    return Err(HearthError::bad_file(
                        &name,
                        format!("tensor `{tname}` ends past the end of the file ({len} bytes): truncated download?"),
                    ));
                }
                Ok(GgufTensorInfo { name: tname, dims, ggml_type, offset, n_bytes })
            })
            .collect::<Result<Vec<_>>>()?;

        let supplied = BTreeMap::new();
        let files = vec![(path.to_path_buf(), 0)];
        Ok(GgufFile {
            path: path.to_path_buf(),
            on_disk: false,
            supplied,
            version,
            metadata,
            tensors,
            file_len: len,
            files,
        })
    }

    /// Where this file is in a split model: `(place from 0, files)`, or None for a model in one
    /// file (no split keys, or a count of 1). An error for split keys no writer makes.
    pub fn split(&self) -> Result<Option<(u64, u64)>> {
        let (Some(no), Some(count)) = (self.get(SPLIT_NO), self.get(SPLIT_COUNT)) else {
            return Ok(None);
        };
        match (no.as_u64(), count.as_u64()) {
            (Some(_), Some(0 | 1)) => Ok(None),
            (Some(no), Some(count)) if no < count && count <= MAX_SPLITS => Ok(Some((no, count))),
            _ => Err(HearthError::bad_file(
                self.path.display(),
                format!("`{SPLIT_NO}` {no:?} and `{SPLIT_COUNT}` {count:?} are not a place among at most {MAX_SPLITS} files"),
            )),
        }
    }

    /// The names of all `count` files of a split model whose first file is named `first`, by
    /// llama.cpp's naming (`NAME-00001-of-00003.gguf`, `NAME-00002-of-00003.gguf`, ...); None when
    /// `first` is not named so.
    pub fn split_names(first: &str, count: u64) -> Option<Vec<String>> {
        let stem = first.strip_suffix(&format!("-00001-of-{count:05}.gguf"))?;
        Some((1..=count).map(|i| format!("{stem}-{i:05}-of-{count:05}.gguf")).collect())
    }

    /// The model of a split GGUF from its files' headers, in order (each as `open` or `from_prefix`
    /// reads one): the first file's metadata, every file's tensors, offsets counting in the files
    /// taken back to back. Refused: files that are not the splits 1..n of n, in order, or tensors
    /// fewer or more than the first file says.
    pub fn join(parts: Vec<GgufFile>) -> Result<GgufFile> {
        let n = parts.len() as u64;
        let mut parts = parts.into_iter();
        let Some(mut joined) = parts.next() else {
            return Err(HearthError::InvalidArgument("no GGUF file to join".into()));
        };
        let name = joined.path.display().to_string();
        if n == 1 && joined.split()?.is_none() {
            return Ok(joined);
        }
        let place = |file: &GgufFile, i: u64| -> Result<()> {
            match file.split()? {
                Some((no, count)) if no == i && count == n => Ok(()),
                Some((no, count)) => Err(HearthError::bad_file(
                    file.path.display(),
                    format!("is split {} of {count}, where split {} of {n} of {name} was expected", no + 1, i + 1),
                )),
                None => Err(HearthError::bad_file(
                    file.path.display(),
                    format!("is not a split model's file, where split {} of {n} of {name} was expected", i + 1),
                )),
            }
        };
        place(&joined, 0)?;
        for (i, part) in (1..).zip(parts) {
            place(&part, i)?;
            let base = joined.file_len;
            joined.file_len = base.checked_add(part.file_len).ok_or_else(|| {
                HearthError::bad_file(part.path.display(), "the split's files claim more than 2^64 bytes together")
            })?;
            joined.files.push((part.path.clone(), base));
            joined.on_disk &= part.on_disk;
            joined.supplied.extend(part.supplied);
            // Each file's offsets were checked against its own length, so these stay inside it.
            joined.tensors.extend(part.tensors.into_iter().map(|t| GgufTensorInfo { offset: t.offset + base, ..t }));
        }
        if let Some(total) = joined.get(SPLIT_TENSORS_COUNT) {
            if total.as_u64() != Some(joined.tensors.len() as u64) {
                return Err(HearthError::bad_file(
                    &name,
                    format!(
                        "`{SPLIT_TENSORS_COUNT}` says {total:?} tensors; its {n} files hold {}",
                        joined.tensors.len()
                    ),
                ));
            }
        }
        Ok(joined)
    }

    /// Supplies tensor `name`'s bytes to a header read from a prefix (fetched apart: a range
    /// request), for [`Self::read_tensor`]; they must be as many as its type and shape take.
    pub fn supply_tensor(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let info = self
            .tensor(name)
            .ok_or_else(|| HearthError::InvalidArgument(format!("{}: no tensor `{name}`", self.path.display())))?;
        if info.n_bytes != Some(bytes.len() as u64) {
            return Err(HearthError::bad_file(
                self.path.display(),
                format!("`{name}` needs {:?} bytes, {} were supplied", info.n_bytes, bytes.len()),
            ));
        }
        self.supplied.insert(name.to_string(), bytes);
        Ok(())
    }

    /// How many files it was read from (more than one: a split model joined).
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of one tensor, exactly as stored.
    pub fn read_tensor(&self, info: &GgufTensorInfo) -> Result<Vec<u8>> {
        let n = info.n_bytes.ok_or_else(|| HearthError::UnsupportedTensorType {
            tensor: info.name.clone(),
            dtype: info.ggml_type.name(),
        })?;
        if !self.on_disk {
            // A header from a prefix: only what was supplied (what planning reads:
            // `convert::tensors_read_to_plan`).
            return self.supplied.get(&info.name).cloned().ok_or_else(|| {
                HearthError::UnsupportedSource(format!(
                    "{}: `{}`'s data is needed to plan the package, and only the header of this GGUF was read \
                     (fetch its bytes and supply them, or convert the file with `hearth convert`)",
                    self.path.display(),
                    info.name
                ))
            });
        }
        // The file holding it: the last to start at or before it (offsets count in the files back to back).
        let (path, base) = self.files.iter().rev().find(|(_, base)| *base <= info.offset).unwrap_or(&self.files[0]);
        let mut f = File::open(path).map_err(|e| HearthError::io("open", path, e))?;
        f.seek(SeekFrom::Start(info.offset - base)).map_err(|e| HearthError::io("seek in", path, e))?;
        let mut buf = vec![0u8; n as usize];
        f.read_exact(&mut buf).map_err(|e| HearthError::io("read tensor data from", path, e))?;
        Ok(buf)
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(GgufValue::as_bool)
    }

    /// A metadata value that must be present, with an error naming the key otherwise.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key).ok_or_else(|| {
            HearthError::bad_file(self.path.display(), format!("missing or non-integer metadata `{key}`"))
        })
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        self.get_f64(key).ok_or_else(|| {
            HearthError::bad_file(self.path.display(), format!("missing or non-numeric metadata `{key}`"))
        })
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key).ok_or_else(|| {
            HearthError::bad_file(self.path.display(), format!("missing or non-string metadata `{key}`"))
        })
    }
}
