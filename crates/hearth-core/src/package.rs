//! Writing and reading model packages: `manifest.json`, `tokenizer.json` and `shard-NNNNN.bin` files.
//!
//! The writer builds the package in a temporary sibling directory and renames it into place only when
//! everything is written, so a failed conversion never leaves a half-written package behind and never
//! destroys the one that was there.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{HearthError, Result};
use crate::manifest::{FileEntry, Manifest, TensorEntry, FORMAT_NAME, FORMAT_VERSION, TENSOR_ALIGN};
use crate::quant::Tensor;

pub const MANIFEST_FILE: &str = "manifest.json";

pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.bin")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct OpenShard {
    file: File,
    hasher: Sha256,
    written: u64,
}

/// Removes what killed conversions left: `.{base}.partial-PID` directories whose process is gone
/// (where `/proc` can tell), or older than a day (where it cannot). Best effort: a directory that
/// cannot be removed is left for the next run.
fn remove_stale_partials(parent: &Path, base: &str) {
    let prefix = format!(".{base}.partial-");
    let Ok(entries) = fs::read_dir(parent) else { return };
    let can_see_processes = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let stale = if can_see_processes {
            !Path::new("/proc").join(pid.to_string()).exists()
        } else {
            let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            age.is_some_and(|a| a.as_secs() > 24 * 3600)
        };
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Where tensors go in a package's shards, by their lengths alone (so a package can be planned
/// before its bytes exist): each at the next [`TENSOR_ALIGN`] offset of the last shard if it fits
/// there whole, else at byte 0 of a new shard (unless the last is still empty), continuing into
/// further shards when it is longer than a shard.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    shard_size: u64,
    /// Bytes in each shard so far (zero padding included).
    sizes: Vec<u64>,
}

impl ShardLayout {
    pub fn new(shard_size: u64) -> Self {
        ShardLayout { shard_size, sizes: Vec::new() }
    }

    /// Place a tensor of `len` bytes: the shard it starts in and its offset there.
    pub fn place(&mut self, len: u64) -> (usize, u64) {
        match self.sizes.last().map(|&written| written.next_multiple_of(TENSOR_ALIGN)) {
            Some(a) if a + len <= self.shard_size => {}
            Some(0) => {}
            _ => self.sizes.push(0),
        }
        let shard = self.sizes.len() - 1;
        let start = self.sizes[shard].next_multiple_of(TENSOR_ALIGN);
        self.sizes[shard] = start;
        let mut rest = len;
        loop {
            let last = self.sizes.len() - 1;
            let n = rest.min(self.shard_size - self.sizes[last]);
            self.sizes[last] += n;
            rest -= n;
            if rest == 0 {
                break;
            }
            self.sizes.push(0);
        }
        (shard, start)
    }

    /// Each shard's size.
    pub fn shard_sizes(&self) -> &[u64] {
        &self.sizes
    }
}

/// Streams tensors into shards of at most `shard_size` bytes.
pub struct PackageWriter {
    tmp_dir: PathBuf,
    out_dir: PathBuf,
    shard_size: u64,
    /// Where each tensor goes; the shard files follow it.
    layout: ShardLayout,
    current: Option<OpenShard>,
    shards: Vec<FileEntry>,
    files: Vec<FileEntry>,
    tensors: Vec<TensorEntry>,
    /// The names in `tensors`, to refuse one written twice.
    names: HashSet<String>,
    committed: bool,
}

impl PackageWriter {
    /// Start a package that will appear at `out_dir` when [`PackageWriter::finish`] succeeds.
    /// An existing `out_dir` is replaced only if `overwrite` is set.
    pub fn new(out_dir: &Path, shard_size: u64, overwrite: bool) -> Result<Self> {
        if shard_size < TENSOR_ALIGN {
            return Err(HearthError::InvalidArgument(format!("shard size {shard_size} is too small")));
        }
        if out_dir.exists() && !overwrite {
            return Err(HearthError::InvalidArgument(format!(
                "{} already exists; pass --force to replace it",
                out_dir.display()
            )));
        }
        let parent = match out_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| HearthError::io("create directory", &parent, e))?;
        let base = out_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "package".into());
        remove_stale_partials(&parent, &base);
        let tmp_dir = parent.join(format!(".{base}.partial-{}", std::process::id()));
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(|e| HearthError::io("remove stale", &tmp_dir, e))?;
        }
        fs::create_dir(&tmp_dir).map_err(|e| HearthError::io("create directory", &tmp_dir, e))?;
        Ok(PackageWriter {
            tmp_dir,
            out_dir: out_dir.to_path_buf(),
            shard_size,
            layout: ShardLayout::new(shard_size),
            current: None,
            shards: Vec::new(),
            files: Vec::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            committed: false,
        })
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(shard) = self.current.take() {
            let name = shard_file_name(self.shards.len());
            shard.file.sync_all().map_err(|e| HearthError::io("sync", self.tmp_dir.join(&name), e))?;
            self.shards.push(FileEntry { file: name, size: shard.written, sha256: hex(&shard.hasher.finalize()) });
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        self.close_shard()?;
        let path = self.tmp_dir.join(shard_file_name(self.shards.len()));
        let file = File::create(&path).map_err(|e| HearthError::io("create", &path, e))?;
        self.current = Some(OpenShard { file, hasher: Sha256::new(), written: 0 });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let index = self.shards.len();
        let shard = self.current.as_mut().ok_or_else(|| HearthError::InvalidArgument("no open shard".into()))?;
        shard.file.write_all(bytes).map_err(|e| HearthError::io("write", shard_file_name(index), e))?;
        shard.hasher.update(bytes);
        shard.written += bytes.len() as u64;
        Ok(())
    }

    pub fn add_tensor(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        // A source with a tensor twice (or a fused one beside its parts) would otherwise have the
        // later one silently win.
        if !self.names.insert(name.to_string()) {
            return Err(HearthError::InvalidArgument(format!("the model has tensor `{name}` twice")));
        }
        let (bytes, parts) = tensor.to_bytes();
        let len = bytes.len() as u64;
        let (shard, start) = self.layout.place(len);
        // The files follow the layout: a new shard where it starts one, zeros up to the offset,
        // then the bytes, into as many shards as the layout filled.
        while self.current.is_none() || self.shards.len() < shard {
            self.open_shard()?;
        }
        let pad = start - self.current.as_ref().map_or(0, |s| s.written);
        self.write(&vec![0u8; pad as usize])?;
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            dtype: tensor.dtype(),
            shape: tensor.shape.clone(),
            shard,
            offset: start,
            length: len,
            group_size: tensor.group_size(),
            parts: parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        let mut rest = &bytes[..];
        loop {
            let room = self.layout.shard_sizes()[self.shards.len()] - self.current.as_ref().map_or(0, |s| s.written);
            let n = rest.len().min(room as usize);
            self.write(&rest[..n])?;
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            self.open_shard()?;
        }
        Ok(())
    }

    /// Add a named file (such as `tokenizer.json`) to the package.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.tmp_dir.join(name);
        fs::write(&path, bytes).map_err(|e| HearthError::io("write", &path, e))?;
        self.files.push(FileEntry { file: name.to_string(), size: bytes.len() as u64, sha256: sha256_hex(bytes) });
        Ok(())
    }

    /// Fill in the shard, file and tensor tables of `manifest`, write it, and move the package into place.
    pub fn finish(mut self, mut manifest: Manifest) -> Result<Manifest> {
        self.close_shard()?;
        manifest.format = FORMAT_NAME.to_string();
        manifest.format_version = FORMAT_VERSION;
        manifest.shard_size = self.shard_size;
        manifest.shards = std::mem::take(&mut self.shards);
        manifest.files = std::mem::take(&mut self.files);
        manifest.tensors = std::mem::take(&mut self.tensors);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| HearthError::InvalidArgument(format!("cannot serialize manifest: {e}")))?;
        let path = self.tmp_dir.join(MANIFEST_FILE);
        // The round trip: only a manifest that the reader accepts (every bound and layout check,
        // on the very bytes written) may replace anything. The files' sizes and hashes in it were
        // taken from the bytes as they were written, so reading them back would only repeat that.
        parse_manifest(&json, &path.display().to_string())?;
        fs::write(&path, json).map_err(|e| HearthError::io("write", &path, e))?;

        // Swap the old package (if any) aside, move the new one in, then delete the old one.
        let old = self.tmp_dir.with_extension("old");
        let had_old = self.out_dir.exists();
        if had_old {
            fs::rename(&self.out_dir, &old).map_err(|e| HearthError::io("move aside", &self.out_dir, e))?;
        }
        if let Err(e) = fs::rename(&self.tmp_dir, &self.out_dir) {
            if had_old {
                let _ = fs::rename(&old, &self.out_dir);
            }
            return Err(HearthError::io("move into place", &self.out_dir, e));
        }
        self.committed = true;
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(manifest)
    }
}

impl Drop for PackageWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

/// Where an engine reads its weights from, one tensor at a time: a package on disk, or synthetic
/// weights of a manifest's shapes (`hearth bench --synthetic`).
pub trait TensorSource {
    fn manifest(&self) -> &Manifest;
    /// The serialized bytes of one tensor, laid out as docs/FORMAT.md says.
    fn read_tensor_bytes(&self, entry: &TensorEntry) -> Result<Vec<u8>>;
    /// Where the tensors come from, for error messages.
    fn origin(&self) -> String;
}

impl TensorSource for Package {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    fn read_tensor_bytes(&self, entry: &TensorEntry) -> Result<Vec<u8>> {
        Package::read_tensor_bytes(self, entry)
    }
    fn origin(&self) -> String {
        self.dir.display().to_string()
    }
}

/// An opened model package on disk.
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Package {
    /// Read and check the manifest. Shard contents are checked by [`Package::verify`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST_FILE);
        let json = fs::read(&path).map_err(|e| HearthError::io("read", &path, e))?;
        let manifest = parse_manifest(&json, &path.display().to_string())?;
        Ok(Package { dir, manifest })
    }

    /// Check every shard and file against the sizes and sha256 hashes in the manifest. The size
    /// comes first (from the file system, so a shard that is a link to `/dev/zero`, a FIFO or a huge
    /// file is refused without reading it) and the hash is computed as the file streams past.
    pub fn verify(&self) -> Result<()> {
        for entry in self.manifest.shards.iter().chain(&self.manifest.files) {
            let path = self.dir.join(&entry.file);
            // Not opened before it is known to be a regular file: opening a FIFO blocks.
            let meta = fs::metadata(&path).map_err(|e| HearthError::io("inspect", &path, e))?;
            let actual_size = if meta.is_file() { meta.len() } else { 0 };
            if !meta.is_file() || actual_size != entry.size {
                return Err(HearthError::WrongSize {
                    file: path.display().to_string(),
                    expected: entry.size,
                    actual: actual_size,
                    what: if meta.is_file() { "bytes" } else { "bytes (not a regular file)" },
                });
            }
            let file = File::open(&path).map_err(|e| HearthError::io("open", &path, e))?;
            let mut hasher = Sha256::new();
            // At most the stated size is read, even if the file grows meanwhile.
            let (mut reader, mut buf, mut copied) = (file.take(entry.size), vec![0u8; 1 << 20], 0u64);
            loop {
                let n = reader.read(&mut buf).map_err(|e| HearthError::io("read", &path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                copied += n as u64;
            }
            let actual = hex(&hasher.finalize());
            if copied != entry.size || actual != entry.sha256 {
                return Err(HearthError::Integrity {
                    file: path.display().to_string(),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        if !self.manifest.files.iter().any(|f| f.file == name) {
            return Err(HearthError::bad_package(self.dir.display(), format!("no file `{name}` in the manifest")));
        }
        let path = self.dir.join(name);
        fs::read(&path).map_err(|e| HearthError::io("read", &path, e))
    }

    /// The serialized bytes of one tensor (its parts at the offsets the manifest gives), read from
    /// its shard(s).
    pub fn read_tensor_bytes(&self, entry: &TensorEntry) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; entry.length as usize];
        let (mut shard, mut offset, mut filled) = (entry.shard, entry.offset, 0usize);
        while filled < bytes.len() {
            let size = self.manifest.shards[shard].size;
            let n = ((size - offset) as usize).min(bytes.len() - filled);
            let path = self.dir.join(&self.manifest.shards[shard].file);
            let mut file = File::open(&path).map_err(|e| HearthError::io("open", &path, e))?;
            file.seek(SeekFrom::Start(offset)).map_err(|e| HearthError::io("seek in", &path, e))?;
            file.read_exact(&mut bytes[filled..filled + n]).map_err(|e| HearthError::io("read", &path, e))?;
            filled += n;
            shard += 1;
            offset = 0;
        }
        Ok(bytes)
    }

    /// Load every tensor, decoded into its in-memory form.
    pub fn load_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(self.manifest.tensors.len());
        for entry in &self.manifest.tensors {
            let bytes = self.read_tensor_bytes(entry)?;
            let tensor = Tensor::from_bytes(&entry.name, entry.shape.clone(), entry.dtype, entry.group_size, &bytes)?;
            out.insert(entry.name.clone(), tensor);
        }
        Ok(out)
    }
}

/// Parse and validate a manifest: format, version, and that every tensor lies inside the shards.
pub fn parse_manifest(json: &[u8], origin: &str) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| HearthError::bad_package(origin, format!("manifest is not JSON: {e}")))?;
    let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("");
    if format != FORMAT_NAME {
        return Err(HearthError::bad_package(origin, format!("not a Hearth model package (format `{format}`)")));
    }
    let version = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(FORMAT_VERSION) {
        return Err(HearthError::bad_package(
            origin,
            format!("package format version {version}; this build of Hearth reads version {FORMAT_VERSION}"),
        ));
    }
    // The bounds before the types: a count too large for this target's usize is named, not a serde error.
    crate::manifest::limits::check(&value["config"]).map_err(|detail| HearthError::bad_package(origin, detail))?;
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| HearthError::bad_package(origin, format!("manifest: {e}")))?;
    validate_layout(&manifest).map_err(|detail| HearthError::bad_package(origin, detail))?;
    Ok(manifest)
}

fn validate_layout(m: &Manifest) -> std::result::Result<(), String> {
    m.config.validate()?;
    for (i, s) in m.shards.iter().enumerate() {
        if s.file != shard_file_name(i) {
            return Err(format!("shard {i} is named `{}`, expected `{}`", s.file, shard_file_name(i)));
        }
    }
    // The characters `hearth convert` writes names with: no separator, no "%" that a server would
    // decode into one, no leading "." (hidden files, "..").
    let plain = |name: &str| {
        !name.starts_with('.')
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    for f in &m.files {
        if !plain(&f.file) {
            return Err(format!("file name `{}` is not a plain file name", f.file));
        }
    }
    for t in &m.tensors {
        if t.offset % TENSOR_ALIGN != 0 {
            return Err(format!("tensor `{}` offset {} is not a multiple of {TENSOR_ALIGN}", t.name, t.offset));
        }
        let first = m
            .shards
            .get(t.shard)
            .ok_or_else(|| format!("tensor `{}` names shard {}, which does not exist", t.name, t.shard))?;
        // Bytes available from the tensor's start to the end of the package.
        let available = m.shards[t.shard..].iter().fold(0u64, |n, s| n.saturating_add(s.size)).saturating_sub(t.offset);
        if t.offset > first.size || t.length > available {
            return Err(format!("tensor `{}` runs past the end of the shards", t.name));
        }
        for (part, r) in &t.parts {
            if r.offset.checked_add(r.length).is_none_or(|end| end > t.length) {
                return Err(format!("tensor `{}` part `{part}` lies outside the tensor", t.name));
            }
        }
        // Readers bind parts by name (the GPU engine does), so each must be there with its exact size.
        // Checked, and in u64 first: on wasm32 a usize product wraps silently.
        let n = t
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                format!("tensor `{}`: shape {:?} has more elements than can be addressed", t.name, t.shape)
            })?;
        let cols = t.shape.last().copied().unwrap_or(1);
        let lengths = t.dtype.part_lengths(n, cols, t.group_size).ok_or_else(|| {
            format!(
                "tensor `{}`: shape {:?} and group size {:?} do not suit {}",
                t.name,
                t.shape,
                t.group_size,
                t.dtype.name()
            )
        })?;
        let names = t.dtype.part_names();
        if t.parts.len() != names.len()
            || names.iter().zip(&lengths).any(|(name, &len)| t.parts.get(*name).is_none_or(|r| r.length != len))
        {
            return Err(format!("tensor `{}`: parts must be {names:?} with lengths {lengths:?}", t.name));
        }
    }
    if !m.files.iter().any(|f| f.file == m.tokenizer.file) {
        return Err(format!("tokenizer file `{}` is not listed in `files`", m.tokenizer.file));
    }
    Ok(())
}
