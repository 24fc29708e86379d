//! `ShardAssembler` (how the browser's CPU engine loads): tensors assembled from shards fed in any
//! order equal the tensors `Package` reads from disk, byte for byte, and bad input is refused with an
//! error that names what is wrong.

mod common;

use std::path::Path;

use hearth_core::assemble::ShardAssembler;
use hearth_core::fast::FastEngine;
use hearth_core::manifest::Manifest;
use hearth_core::package::{Package, PackageWriter};
use hearth_core::quant::{DType, Tensor};
use hearth_core::HearthError;

fn shard_bytes(dir: &Path, manifest: &Manifest, i: usize) -> Vec<u8> {
    std::fs::read(dir.join(&manifest.shards[i].file)).unwrap()
}

/// Feed `order`'s shards; each copy reads from the shard's bytes exactly as the browser's does.
fn assemble(dir: &Path, order: &[usize]) -> Result<ShardAssembler, HearthError> {
    let package = Package::open(dir)?;
    let mut assembler = ShardAssembler::new(package.manifest.clone())?;
    for &i in order {
        let bytes = shard_bytes(dir, &package.manifest, i);
        assembler.feed_shard(i, bytes.len() as u64, &mut |at, dst| {
            dst.copy_from_slice(&bytes[at as usize..at as usize + dst.len()])
        })?;
    }
    Ok(assembler)
}

fn assert_same_tensors(dir: &Path, order: &[usize]) {
    let package = Package::open(dir).unwrap();
    let (_, tensors) = assemble(dir, order).unwrap().finish().unwrap();
    assert_eq!(tensors.len(), package.manifest.tensors.len());
    for entry in &package.manifest.tensors {
        let bytes = package.read_tensor_bytes(entry).unwrap();
        let expected =
            Tensor::from_bytes(&entry.name, entry.shape.clone(), entry.dtype, entry.group_size, &bytes).unwrap();
        assert!(tensors[&entry.name] == expected, "tensor {} differs", entry.name);
    }
}

#[test]
fn smollm2_from_shards_in_reverse_equals_the_package_and_runs_the_same() {
    let dir = common::smollm2_package();
    let package = Package::open(&dir).unwrap();
    let n = package.manifest.shards.len();
    assert!(n >= 3, "SmolLM2's 98 MB make several 32 MiB shards, with tensors across their ends");
    let order: Vec<usize> = (0..n).rev().collect();
    assert_same_tensors(&dir, &order);

    let (manifest, tensors) = assemble(&dir, &order).unwrap().finish().unwrap();
    let mut assembled = FastEngine::new(manifest.config.clone(), tensors).unwrap();
    let mut reference = FastEngine::from_package(&package).unwrap();
    let prompt = [1, 504, 3458, 282, 4649, 314];
    assert_eq!(assembled.forward(&prompt, false).unwrap(), reference.forward(&prompt, false).unwrap());
    // What a page is told the cache will take is what it takes.
    assert_eq!(assembled.kv_cache_bytes() as u64, FastEngine::kv_cache_bytes_at(&manifest.config, prompt.len()));
}

/// Every encoding, in shards of 512 bytes: tensors span many shards and parts straddle shard ends.
/// Returns the directory and the tensors as written.
fn small_shard_package(tmp: &Path) -> (std::path::PathBuf, Vec<(String, Tensor)>) {
    let manifest = Package::open(common::smollm2_package()).unwrap().manifest;
    let out = tmp.join("small-shards");
    let mut w = PackageWriter::new(&out, 512, false).unwrap();
    let mut written = Vec::new();
    for (name, shape, dtype, group) in [
        ("a.q4g32", vec![3, 96], DType::Q4, 32),
        ("b.q4g64", vec![5, 128], DType::Q4, 64),
        ("c.q4g128", vec![2, 256], DType::Q4, 128),
        ("d.q8", vec![7, 64], DType::Q8, 32),
        ("e.f16", vec![9, 33], DType::F16, 0),
        ("f.f32", vec![300], DType::F32, 0),
    ] {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let tensor = Tensor::from_f32(shape, &values, dtype, group).unwrap();
        w.add_tensor(name, &tensor).unwrap();
        written.push((name.to_string(), tensor));
    }
    w.add_file("tokenizer.json", b"{}").unwrap();
    w.finish(manifest).unwrap();
    (out, written)
}

#[test]
fn every_encoding_across_small_shards_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, written) = small_shard_package(tmp.path());
    let n = Package::open(&dir).unwrap().manifest.shards.len();
    assert!(n >= 8, "{n} shards");
    // Odd shards first, then even ones backwards.
    let order: Vec<usize> = (0..n).filter(|i| i % 2 == 1).chain((0..n).filter(|i| i % 2 == 0).rev()).collect();
    assert_same_tensors(&dir, &order);
    // And against the tensors as they were before serialization (not through `Tensor::from_bytes`).
    let (_, tensors) = assemble(&dir, &order).unwrap().finish().unwrap();
    for (name, tensor) in &written {
        assert!(&tensors[name] == tensor, "tensor {name} differs from what was written");
    }
}

#[test]
fn bad_shards_and_manifests_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = small_shard_package(tmp.path());
    let package = Package::open(&dir).unwrap();
    let m = &package.manifest;
    let n = m.shards.len();

    // A shard never fed: finish names a tensor that lacks bytes.
    let all_but_last: Vec<usize> = (0..n - 1).collect();
    let err = assemble(&dir, &all_but_last).unwrap().finish().map(|_| ()).expect_err("incomplete");
    assert!(matches!(err, HearthError::BadPackage { .. }) && err.to_string().contains("bytes arrived"), "{err}");

    // Fed twice, a wrong length, a shard that does not exist.
    let err = assemble(&dir, &[0, 0]).map(|_| ()).expect_err("twice");
    assert!(err.to_string().contains("already loaded"), "{err}");
    let mut a = ShardAssembler::new(m.clone()).unwrap();
    let err = a.feed_shard(0, m.shards[0].size + 1, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains(&m.shards[0].file), "{err}");
    let err = a.feed_shard(n, 10, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains(&format!("no shard {n}")), "{err}");

    // A part table that disagrees with the encoding, and a tensor shorter than its shape needs.
    let mut moved = m.clone();
    moved.tensors[1].parts.get_mut("scales").unwrap().offset += 256;
    let err = ShardAssembler::new(moved).map(|_| ()).expect_err("moved part");
    assert!(err.to_string().contains("b.q4g64") && err.to_string().contains("scales"), "{err}");
    let mut short = m.clone();
    short.tensors[3].length = 64;
    let err = ShardAssembler::new(short).map(|_| ()).expect_err("short tensor");
    assert!(err.to_string().contains("d.q8"), "{err}");

    // A tensor too large to allocate fails as an error, not an abort.
    let mut huge = m.clone();
    huge.tensors[5].shape = vec![1 << 62];
    huge.tensors[5].length = u64::MAX;
    let err = ShardAssembler::new(huge).map(|_| ()).expect_err("huge");
    assert!(matches!(err, HearthError::OutOfMemory { .. }), "{err}");
}
