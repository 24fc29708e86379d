//! A GGUF converted into package shards as its bytes arrive, for loading a GGUF URL where there is
//! no file to seek in (the browser): the header plans the package ([`plan_gguf_header`]: the
//! layout `hearth convert` writes), then the tensor data is fed in file order and each shard comes
//! out, hashed, as soon as its last tensor is in. Only one source tensor and one shard are held at
//! a time. A download cut off resumes at a shard: [`GgufStream::resume_at`] says from which byte of
//! the file to fetch again.
//!
//! [`plan_gguf_header`]: super::plan_gguf_header

use std::ops::Range;

use super::gguf_model::{convert_tensor_bytes, in_package, plan_with_tokenizer};
use super::{check_group, cut_pieces, ConvertOptions};
use crate::error::{HearthError, Result};
use crate::gguf::GgufFile;
use crate::manifest::Manifest;
use crate::package::sha256_hex;

/// The largest source tensor the stream holds: 512 MiB, above a browser-sized model's largest
/// (Llama 3 8B Q4_K_M's Q6_K head: 431 MB). Converting one takes up to about five times its size at
/// once (its bytes, f32 values for an f16 source, a fused tensor's pieces, their bytes), which
/// must stay well inside wasm32's 4 GiB.
pub const MAX_TENSOR_BYTES: u64 = 512 << 20;

/// One finished shard of the package: its index in the manifest, bytes and lowercase hex SHA-256.
#[derive(Debug)]
pub struct FinishedShard {
    pub index: usize,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// A source tensor whose bytes become package tensors: where its data lies in the file, and which
/// of the manifest's tensors (in order) it makes.
struct Source {
    info: usize,
    data: Range<u64>,
    entries: Range<usize>,
}

pub struct GgufStream {
    gguf: GgufFile,
    opts: ConvertOptions,
    /// The planned package; the shards' hashes are the caller's to fill in as they come out.
    manifest: Manifest,
    tokenizer_json: String,
    sources: Vec<Source>,
    /// Each shard's first byte in the package's bytes taken as one run (shards back to back).
    shard_starts: Vec<u64>,
    /// The file's byte the next fed byte is.
    at: u64,
    /// The source tensor being received, and its bytes so far.
    next_source: usize,
    pending: Vec<u8>,
    /// The shard being filled and its bytes so far; bytes of the package before `skip_before`
    /// (shards already stored before a resume) are dropped.
    shard: usize,
    buffer: Vec<u8>,
    skip_before: u64,
}

impl GgufStream {
    /// The stream of `gguf` (a header, as `GgufFile::from_prefix` reads one) converted with `opts`,
    /// expecting the file's bytes from its first tensor's data on. Refused: a GGUF whose tensor
    /// data is not in the order of its tensor table (the package is laid out in table order, so
    /// such a file would need every shard held at once: `hearth convert` it instead).
    pub fn new(gguf: GgufFile, opts: ConvertOptions) -> Result<Self> {
        check_group(&opts)?;
        let (manifest, tokenizer_json) = plan_with_tokenizer(&gguf, &opts)?;
        let file = gguf.path.display().to_string();
        let mut sources = Vec::new();
        let mut entry = 0;
        let mut end = 0;
        for (i, info) in gguf.tensors.iter().enumerate().filter(|(_, t)| in_package(t)) {
            let n = info.n_bytes.unwrap_or(0); // planning refused a type of unknown size
            if n > MAX_TENSOR_BYTES {
                return Err(HearthError::bad_file(
                    &file,
                    format!(
                        "`{}` is {n} bytes; a GGUF is converted from a URL one tensor at a time in memory, at most {} MiB \
                         (convert it with `hearth convert` instead)",
                        info.name,
                        MAX_TENSOR_BYTES >> 20
                    ),
                ));
            }
            if info.offset < end {
                return Err(HearthError::bad_file(
                    &file,
                    format!(
                        "`{}`'s data comes before the tensor listed ahead of it; a GGUF is loaded from a URL only with its \
                         tensor data in table order (convert it with `hearth convert` instead)",
                        info.name
                    ),
                ));
            }
            end = info.offset + n;
            let pieces = super::package_pieces(&info.name, &info.shape(), &manifest.config, &gguf.path)?.len();
            sources.push(Source { info: i, data: info.offset..end, entries: entry..entry + pieces });
            entry += pieces;
        }
        if entry != manifest.tensors.len() {
            return Err(HearthError::InvalidArgument(format!(
                "{file}: the plan has {} tensors, the stream would make {entry}",
                manifest.tensors.len()
            )));
        }
        let shard_starts = manifest.shard_starts();
        let at = sources.first().map_or(0, |s| s.data.start);
        Ok(GgufStream {
            gguf,
            opts,
            manifest,
            tokenizer_json,
            sources,
            shard_starts,
            at,
            next_source: 0,
            pending: Vec::new(),
            shard: 0,
            buffer: Vec::new(),
            skip_before: 0,
        })
    }

    /// The planned package: every tensor's place, the shards' sizes (their hashes empty until they
    /// come out), the tokenizer file's size and hash.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The package's tokenizer.json, made from the GGUF's metadata.
    pub fn tokenizer_json(&self) -> &str {
        &self.tokenizer_json
    }

    /// The file's byte the stream expects next.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Starts over at shard `shard` (the ones before it are stored): returns the file's byte to
    /// feed from, the first byte of the first source tensor with bytes in that shard (a tensor
    /// that began in the shard before is fed whole again and only its rest is kept).
    pub fn resume_at(&mut self, shard: usize) -> Result<u64> {
        let start = *self.shard_starts.get(shard).ok_or_else(|| {
            HearthError::InvalidArgument(format!(
                "the package has {} shards, not {}",
                self.shard_starts.len(),
                shard + 1
            ))
        })?;
        let first = self.sources.iter().position(|s| {
            let last = &self.manifest.tensors[s.entries.end - 1];
            self.shard_starts[last.shard] + last.offset + last.length > start
        });
        let Some(first) = first else {
            return Err(HearthError::InvalidArgument(format!("shard {shard} holds no tensor")));
        };
        self.next_source = first;
        self.at = self.sources[first].data.start;
        self.pending.clear();
        self.shard = shard;
        self.buffer.clear();
        self.skip_before = start;
        Ok(self.at)
    }

    /// Whether every shard has come out.
    pub fn is_done(&self) -> bool {
        self.shard >= self.manifest.shards.len()
    }

    /// The file's next bytes (from [`position`](Self::position) on); returns the shards they
    /// finished. Bytes past the last tensor's data are ignored.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<FinishedShard>> {
        let mut finished = Vec::new();
        while !bytes.is_empty() {
            let Some(source) = self.sources.get(self.next_source) else {
                self.at += bytes.len() as u64;
                break; // after the last tensor
            };
            let (start, end) = (source.data.start, source.data.end);
            // Alignment padding (or a tensor outside the package) before this tensor's data.
            if self.at < start {
                let skip = (start - self.at).min(bytes.len() as u64);
                self.at += skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            let take = (end - self.at).min(bytes.len() as u64) as usize;
            if self.pending.is_empty() {
                // Once, at its size: growing by doubling would take up to twice the tensor.
                self.pending.reserve_exact((end - start) as usize);
            }
            self.pending.extend_from_slice(&bytes[..take]);
            self.at += take as u64;
            bytes = &bytes[take..];
            if self.at == end {
                let data = std::mem::take(&mut self.pending);
                self.next_source += 1;
                self.write_source(self.next_source - 1, &data, &mut finished)?;
            }
        }
        Ok(finished)
    }

    /// Converts source tensor `index` from its bytes and writes the package tensors it makes.
    fn write_source(&mut self, index: usize, data: &[u8], finished: &mut Vec<FinishedShard>) -> Result<()> {
        let source = &self.sources[index];
        let info = &self.gguf.tensors[source.info];
        let tensor = convert_tensor_bytes(info, data, &self.opts, &self.gguf.path)?;
        let pieces = cut_pieces(&info.name, &tensor, &self.manifest.config, &self.gguf.path)?;
        for ((name, piece), e) in pieces.into_iter().zip(source.entries.clone()) {
            let (bytes, _) = piece.to_bytes();
            let entry = &self.manifest.tensors[e];
            if entry.name != name || entry.length != bytes.len() as u64 {
                return Err(HearthError::InvalidArgument(format!(
                    "`{name}` of {} bytes does not match the plan's `{}` of {}",
                    bytes.len(),
                    entry.name,
                    entry.length
                )));
            }
            let at = self.shard_starts[entry.shard] + entry.offset;
            self.write_at(at, &bytes, finished);
        }
        Ok(())
    }

    /// Writes `bytes` at byte `at` of the package (zeros before it since the last write), handing
    /// out each shard it completes.
    fn write_at(&mut self, mut at: u64, mut bytes: &[u8], finished: &mut Vec<FinishedShard>) {
        if at + (bytes.len() as u64) <= self.skip_before {
            return;
        }
        if at < self.skip_before {
            bytes = &bytes[(self.skip_before - at) as usize..];
            at = self.skip_before;
        }
        while !bytes.is_empty() && !self.is_done() {
            let shard_start = self.shard_starts[self.shard];
            let size = self.manifest.shards[self.shard].size;
            let offset = (at - shard_start) as usize;
            self.buffer.resize(self.buffer.len().max(offset), 0);
            let n = bytes.len().min(size as usize - offset);
            self.buffer.extend_from_slice(&bytes[..n]);
            (at, bytes) = (at + n as u64, &bytes[n..]);
            if self.buffer.len() as u64 == size {
                let bytes = std::mem::take(&mut self.buffer);
                finished.push(FinishedShard { index: self.shard, sha256: sha256_hex(&bytes), bytes });
                self.shard += 1;
            }
        }
    }
}
