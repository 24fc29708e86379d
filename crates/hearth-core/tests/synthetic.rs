//! Synthetic weights (`hearth bench --synthetic`): from a directory holding only `manifest.json`, every
//! tensor comes out with the manifest's exact length and part layout, parses back, is the same for the
//! same seed, and a forward pass on the result stays finite.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use hearth_core::cpu::CpuEngine;
use hearth_core::error::HearthError;
use hearth_core::manifest::{Manifest, TensorEntry};
use hearth_core::package::{Package, PackageWriter, TensorSource};
use hearth_core::quant::{DType, Tensor};
use hearth_core::synthetic::SyntheticWeights;

/// A directory in `tmp` holding a copy of `package`'s manifest.json and nothing else.
fn manifest_only(package: &Path, tmp: &Path) -> PathBuf {
    let dir = tmp.join("manifest-only");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(package.join("manifest.json"), dir.join("manifest.json")).unwrap();
    dir
}

/// Every tensor: exactly `entry.length` bytes, parsed by `Tensor::from_bytes`, and laid out at the
/// manifest's part offsets (serializing the parsed tensor gives the same bytes and part ranges).
fn check_layout(source: &SyntheticWeights, entry: &TensorEntry) -> Tensor {
    let bytes = source.read_tensor_bytes(entry).unwrap();
    assert_eq!(bytes.len() as u64, entry.length, "{}", entry.name);
    let tensor = Tensor::from_bytes(&entry.name, entry.shape.clone(), entry.dtype, entry.group_size, &bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", entry.name));
    assert_eq!(tensor.dtype(), entry.dtype);
    assert_eq!(tensor.group_size(), entry.group_size, "{}", entry.name);
    let (again, parts) = tensor.to_bytes();
    assert_eq!(again, bytes, "{}: bytes outside the parts or parts misplaced", entry.name);
    let parts: BTreeMap<String, _> = parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(parts, entry.parts, "{}", entry.name);
    tensor
}

/// Mean and standard deviation.
fn spread(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn check_tame(name: &str, values: &[f32], one_dimensional: bool) {
    assert!(values.iter().all(|v| v.is_finite()), "{name}: non-finite value");
    let (mean, std) = spread(values);
    if one_dimensional {
        assert!((mean - 1.0).abs() < 0.05 && std < 0.2, "{name}: mean {mean}, std {std}");
        assert!(values.iter().all(|&v| v > 0.0), "{name}: a multiplier at or below 0");
    } else {
        assert!(mean.abs() < 0.01 && (0.005..0.05).contains(&std), "{name}: mean {mean}, std {std}");
    }
}

#[test]
fn smollm2_manifest_alone_gives_every_tensor_at_its_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_only(&common::smollm2_package(), tmp.path());
    let source = SyntheticWeights::open(&dir).unwrap();
    let manifest = source.manifest().clone();
    assert_eq!(manifest, Package::open(common::smollm2_package()).unwrap().manifest);
    assert!(source.origin().contains("manifest.json"), "{}", source.origin());
    let mut dtypes = BTreeSet::new();
    for entry in &manifest.tensors {
        let tensor = check_layout(&source, entry);
        check_tame(&entry.name, &tensor.to_f32(), entry.shape.len() == 1);
        dtypes.insert(entry.dtype.name());
    }
    // The SmolLM2 package as converted: q4 matrices, a q8 embedding, f32 norms.
    assert_eq!(dtypes.into_iter().collect::<Vec<_>>(), ["f32", "q4", "q8"]);
}

#[test]
fn the_same_seed_gives_the_same_weights_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_only(&common::smollm2_package(), tmp.path());
    let a = SyntheticWeights::open(&dir).unwrap();
    let b = SyntheticWeights::open(&dir).unwrap();
    let tensors = &a.manifest().tensors;
    let forward: Vec<_> = tensors.iter().map(|e| a.read_tensor_bytes(e).unwrap()).collect();
    let backward: Vec<_> = tensors.iter().rev().map(|e| b.read_tensor_bytes(e).unwrap()).collect();
    assert!(forward.iter().eq(backward.iter().rev()), "weights depend on the reading order or differ between opens");

    let other = SyntheticWeights::open(&dir).unwrap().with_seed(a.seed() + 1);
    for (entry, bytes) in tensors.iter().zip(&forward) {
        assert_ne!(&other.read_tensor_bytes(entry).unwrap(), bytes, "{}: the seed changes nothing", entry.name);
    }
    // Same shapes, different tensors: no two tensors share their bytes.
    let q = tensors.iter().position(|e| e.name == "blk.0.attn_q.weight").unwrap();
    let o = tensors.iter().position(|e| e.name == "blk.0.attn_output.weight").unwrap();
    assert_eq!(tensors[q].shape, tensors[o].shape);
    assert_ne!(forward[q], forward[o]);
}

#[test]
fn cpu_forward_on_synthetic_smollm2_is_finite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_only(&common::smollm2_package(), tmp.path());
    let source = SyntheticWeights::open(&dir).unwrap();
    let mut engine = CpuEngine::from_source(&source).unwrap();
    let vocab = source.manifest().config.vocab_size;
    let prompt: Vec<u32> = (0..12).map(|i| 100 + i * 4001 % 40000).collect();
    let logits = engine.forward(&prompt, true).unwrap();
    assert_eq!(logits.len(), prompt.len() * vocab);
    assert!(logits.iter().all(|l| l.is_finite()), "non-finite prefill logits");
    for _ in 0..4 {
        let next = hearth_core::sampling::argmax(&logits[logits.len() - vocab..]);
        let logits = engine.forward(&[next], false).unwrap();
        assert!(logits.iter().all(|l| l.is_finite()), "non-finite decode logits");
        let (_, std) = spread(&logits);
        assert!(std > 1e-3, "logits all alike (std {std}): the weights do nothing");
    }
    // The same weights give the same logits.
    let mut again = CpuEngine::from_source(&SyntheticWeights::open(&dir).unwrap()).unwrap();
    assert_eq!(again.forward(&prompt, true).unwrap(), logits);
}

/// A small model written by `PackageWriter` with every encoding: f32 and f16 matrices and norms, q8,
/// q4 with groups of 32, 64 and 128, parts of an odd number of groups (padded to a whole word), and
/// `rope_freqs`. Returns the package directory.
fn every_encoding_package(tmp: &Path) -> PathBuf {
    let mut manifest: Manifest = Package::open(common::smollm2_package()).unwrap().manifest;
    let c = &mut manifest.config;
    (c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim) = (2, 128, 4, 2, 32);
    (c.ffn_size, c.vocab_size, c.context_length, c.tied_embeddings) = (256, 512, 256, false);
    c.rope.as_mut().unwrap().dim = 32;
    let (h, q, kv, f, v) = (128, 128, 64, 256, 512);
    let out = tmp.join("tiny");
    let mut w = PackageWriter::new(&out, 1 << 20, false).unwrap();
    let mut add = |name: &str, shape: Vec<usize>, dtype: DType, group: usize| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 2500.0 + 1.0).collect();
        w.add_tensor(name, &Tensor::from_f32(shape, &values, dtype, group).unwrap()).unwrap();
    };
    add("token_embd.weight", vec![v, h], DType::F16, 0);
    add("rope_freqs.weight", vec![16], DType::F32, 0);
    let matrices = [
        ("attn_q", [q, h]),
        ("attn_k", [kv, h]),
        ("attn_v", [kv, h]),
        ("attn_output", [h, q]),
        ("ffn_gate", [f, h]),
        ("ffn_up", [f, h]),
        ("ffn_down", [h, f]),
    ];
    let encodings =
        [(DType::Q4, 32), (DType::Q4, 64), (DType::Q4, 128), (DType::Q8, 32), (DType::F16, 0), (DType::F32, 0)];
    for layer in 0..2 {
        let norm = if layer == 0 { DType::F32 } else { DType::F16 };
        add(&format!("blk.{layer}.attn_norm.weight"), vec![h], norm, 0);
        add(&format!("blk.{layer}.ffn_norm.weight"), vec![h], norm, 0);
        for (i, (name, shape)) in matrices.iter().enumerate() {
            let (dtype, group) = encodings[(i + layer * 3) % encodings.len()];
            add(&format!("blk.{layer}.{name}.weight"), shape.to_vec(), dtype, group);
        }
    }
    add("output_norm.weight", vec![h], DType::F32, 0);
    add("output.weight", vec![v, h], DType::Q8, 32);
    // Not used by the engine: parts of 3 and 5 groups.
    add("extra.q4_odd_groups", vec![3, 32], DType::Q4, 32);
    add("extra.q8_odd_groups", vec![5, 32], DType::Q8, 32);
    w.add_file("tokenizer.json", b"{}").unwrap();
    w.finish(manifest).unwrap();
    out
}

#[test]
fn every_encoding_and_group_size_is_laid_out_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_only(&every_encoding_package(tmp.path()), tmp.path());
    let source = SyntheticWeights::open(&dir).unwrap().with_seed(7);
    let mut seen = HashSet::new();
    for entry in &source.manifest().tensors {
        let tensor = check_layout(&source, entry);
        check_tame(&entry.name, &tensor.to_f32(), entry.shape.len() == 1);
        seen.insert((entry.dtype.name(), entry.group_size, entry.shape.len()));
    }
    for key in [
        ("q4", Some(32), 2),
        ("q4", Some(64), 2),
        ("q4", Some(128), 2),
        ("q8", Some(32), 2),
        ("f16", None, 2),
        ("f32", None, 2),
        ("f16", None, 1),
        ("f32", None, 1),
    ] {
        assert!(seen.contains(&key), "no tensor of {key:?}");
    }
    let mut engine = CpuEngine::from_source(&source).unwrap();
    let logits = engine.forward(&[5, 300, 17, 511], false).unwrap();
    assert_eq!(logits.len(), 512);
    assert!(logits.iter().all(|l| l.is_finite()));
}

#[test]
fn a_missing_or_broken_manifest_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    match SyntheticWeights::open(&missing) {
        Err(HearthError::Io { path, .. }) => assert_eq!(path, missing.join("manifest.json")),
        other => panic!("expected an I/O error, got {other:?}"),
    }

    let broken = tmp.path().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::write(broken.join("manifest.json"), b"{\"format\": \"hearth-model\"").unwrap();
    let err = SyntheticWeights::open(&broken).unwrap_err();
    assert!(matches!(&err, HearthError::BadPackage { path, .. } if path.contains("broken/manifest.json")), "{err}");

    // A manifest whose tensor runs past the shards it declares is refused, shards present or not.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(common::smollm2_package().join("manifest.json")).unwrap()).unwrap();
    manifest["tensors"][0]["length"] = serde_json::json!(u64::MAX / 2);
    fs::write(broken.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SyntheticWeights::open(&broken).unwrap_err();
    assert!(err.to_string().contains("runs past the end of the shards"), "{err}");
    assert!(err.to_string().contains("broken/manifest.json"), "{err}");
}
