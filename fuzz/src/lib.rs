//! What the fuzz targets share: cutting one input into the several files a target reads, and a
//! scratch directory for the files the readers want on disk.

use std::path::{Path, PathBuf};

use hearth_core::fast::FastEngine;
use hearth_core::model::Model;
use hearth_core::package::Package;

/// Where one input's parts are cut: the seeds use it, and libFuzzer's dictionary-free mutations
/// keep it often enough for both parts to evolve.
pub const CUT: &[u8] = b"\n--8<--\n";

/// The input before the first [`CUT`] and after it (empty when there is none).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(CUT.len()).position(|w| w == CUT) {
        Some(at) => (&data[..at], &data[at + CUT.len()..]),
        None => (data, &[]),
    }
}

/// A directory of this process's own (in memory where the machine has /dev/shm), emptied.
pub fn scratch(name: &str) -> PathBuf {
    let base = match std::path::Path::new("/dev/shm").is_dir() {
        true => PathBuf::from("/dev/shm"),
        false => std::env::temp_dir(),
    };
    let dir = base.join(format!("hearth-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch directory can be created");
    dir
}

/// Cap on what a target lets a model cost before it builds an engine from it: the readers accept
/// a model of any size that the file really holds, and a fuzz input is a few KB, so a model past
/// this is made of broadcasts of nothing (and the engine's time would be the fuzzer's timeout).
pub const ENGINE_BYTES: u64 = 64 << 20;

/// What a converter target asserts of a conversion that succeeded: the package reader accepts it
/// whole (every shard's size and hash, the tokenizer), and the fast CPU engine, given a model of
/// at most [`ENGINE_BYTES`], builds from it or refuses it with an error, and runs one token.
pub fn check_converted(out: &Path) {
    let package = Package::open(out).expect("convert writes only packages the reader accepts");
    package.verify().expect("every shard convert wrote matches its manifest");
    Model::open(out).expect("the tokenizer convert wrote loads");
    let bytes: u64 = package.manifest.tensors.iter().map(|t| t.length).sum();
    if bytes <= ENGINE_BYTES {
        if let Ok(mut engine) = FastEngine::from_package(&package) {
            let _ = engine.forward(&[0], false);
        }
    }
}
