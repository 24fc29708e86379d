//! The converter and the package format: bad input gets an error that names the problem and leaves
//! nothing behind; packages round-trip; corruption is detected.

mod common;

use std::fs;
use std::path::Path;

use hearth_core::convert::{convert, ConvertOptions, QuantChoice};
use hearth_core::error::HearthError;
use hearth_core::model::Model;
use hearth_core::package::Package;
use hearth_core::quant::DType;

/// A copy of the real GGUF with `patch` applied to its bytes.
fn patched_gguf(dir: &Path, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> std::path::PathBuf {
    let mut bytes = fs::read(common::smollm2_gguf()).unwrap();
    patch(&mut bytes);
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// Byte offset of the ggml type field of tensor `name` in the GGUF header.
fn tensor_type_offset(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("tensor name in header");
    let dims_at = at + needle.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    dims_at + 4 + 8 * n_dims
}

fn assert_nothing_left(dir: &Path, out: &Path) {
    assert!(!out.exists(), "a failed conversion left {}", out.display());
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

fn convert_err(input: &Path, dir: &Path) -> HearthError {
    let out = dir.join("out");
    let err = convert(input, &out, &ConvertOptions::default()).expect_err("conversion must fail");
    assert_nothing_left(dir, &out);
    err
}

#[test]
fn bad_magic_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let input = patched_gguf(tmp.path(), "bad.gguf", |b| b[0..4].copy_from_slice(b"GGML"));
    let err = convert_err(&input, tmp.path());
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

#[test]
fn truncated_file_names_the_first_tensor_past_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let input = patched_gguf(tmp.path(), "short.gguf", |b| b.truncate(b.len() / 2));
    let err = convert_err(&input, tmp.path());
    let msg = err.to_string();
    assert!(msg.contains("ends past the end of the file") && msg.contains("tensor `"), "{msg}");
}

#[test]
fn header_cut_short_is_reported_as_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let input = patched_gguf(tmp.path(), "header.gguf", |b| b.truncate(5000));
    let err = convert_err(&input, tmp.path());
    assert!(err.to_string().contains("truncated") || err.to_string().contains("impossible"), "{err}");
}

#[test]
fn absurd_tensor_count_is_rejected_without_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let input = patched_gguf(tmp.path(), "count.gguf", |b| b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes()));
    let err = convert_err(&input, tmp.path());
    assert!(err.to_string().contains("tensor count"), "{err}");
}

#[test]
fn unsupported_tensor_types_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for (id, type_name) in [(10u32, "Q2_K"), (16, "IQ2_XXS"), (99, "unknown")] {
        let input = patched_gguf(tmp.path(), "type.gguf", |b| {
            let at = tensor_type_offset(b, "blk.3.ffn_down.weight");
            b[at..at + 4].copy_from_slice(&id.to_le_bytes());
        });
        match convert_err(&input, tmp.path()) {
            HearthError::UnsupportedTensorType { tensor, dtype } => {
                assert_eq!(tensor, "blk.3.ffn_down.weight");
                assert!(dtype.contains(type_name), "{dtype}");
            }
            other => panic!("expected an unsupported-type error, got {other}"),
        }
    }
}

#[test]
fn failed_conversion_keeps_the_existing_package() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg");
    convert(&common::smollm2_gguf(), &out, &ConvertOptions::default()).unwrap();
    let before = fs::read(out.join("manifest.json")).unwrap();
    let bad = patched_gguf(tmp.path(), "bad.gguf", |b| b.truncate(b.len() - 1000));
    let opts = ConvertOptions { overwrite: true, ..Default::default() };
    assert!(convert(&bad, &out, &opts).is_err());
    assert_eq!(fs::read(out.join("manifest.json")).unwrap(), before);
    Package::open(&out).unwrap().verify().unwrap();
    // Without --force an existing package is never replaced.
    let err = convert(&common::smollm2_gguf(), &out, &ConvertOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn package_layout_follows_the_format() {
    let pkg = Package::open(common::smollm2_package()).unwrap();
    let m = &pkg.manifest;
    assert_eq!(m.config.n_layers, 30);
    assert_eq!((m.config.n_heads, m.config.n_kv_heads, m.config.head_dim), (9, 3, 64));
    assert!(m.config.tied_embeddings);
    for s in &m.shards {
        assert!(s.size <= 32 << 20, "{} is {} bytes", s.file, s.size);
    }
    for t in &m.tensors {
        assert_eq!(t.offset % 256, 0, "{}", t.name);
        for (part, r) in &t.parts {
            assert_eq!(r.offset % 256, 0, "{}.{part}", t.name);
        }
    }
    // Lossless mapping of the GGUF's types: Q8_0 embeddings, Q4_1 layers, f32 norms.
    let dtype = |n: &str| m.tensors.iter().find(|t| t.name == n).unwrap().dtype;
    assert_eq!(dtype("token_embd.weight"), DType::Q8);
    assert_eq!(dtype("blk.0.attn_q.weight"), DType::Q4);
    assert_eq!(dtype("blk.0.attn_norm.weight"), DType::F32);
}

#[test]
fn small_shards_split_large_tensors_and_load_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("small-shards");
    let opts = ConvertOptions { shard_bytes: 4 << 20, ..Default::default() };
    let m = convert(&common::smollm2_gguf(), &out, &opts).unwrap();
    assert!(m.shards.len() > 20);
    assert!(m.shards.iter().all(|s| s.size <= 4 << 20));
    let embd = m.tensors.iter().find(|t| t.name == "token_embd.weight").unwrap();
    assert!(embd.length > 4 << 20, "the embedding spans several shards");
    let small = Package::open(&out).unwrap();
    small.verify().unwrap();
    let a = small.load_tensors().unwrap();
    let b = Package::open(common::smollm2_package()).unwrap().load_tensors().unwrap();
    assert_eq!(a.len(), b.len());
    for (name, t) in &b {
        assert!(a[name] == *t, "{name} differs after sharding");
    }
}

#[test]
fn requantizing_to_q8_and_q4_with_larger_groups_works() {
    let tmp = tempfile::tempdir().unwrap();
    for (quant, group, dtype) in
        [(QuantChoice::Q8, 32, DType::Q8), (QuantChoice::Q4, 128, DType::Q4), (QuantChoice::F16, 32, DType::F16)]
    {
        let out = tmp.path().join(format!("{quant:?}"));
        let opts = ConvertOptions { quant, group, ..Default::default() };
        let m = convert(&common::smollm2_gguf(), &out, &opts).unwrap();
        let t = m.tensors.iter().find(|t| t.name == "blk.0.ffn_down.weight").unwrap();
        assert_eq!(t.dtype, dtype);
        if dtype == DType::Q4 {
            assert_eq!(t.group_size, Some(group));
        }
    }
}

#[test]
fn corrupted_shard_fails_the_integrity_check() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg");
    convert(&common::smollm2_gguf(), &out, &ConvertOptions::default()).unwrap();
    let shard = out.join("shard-00001.bin");
    let mut bytes = fs::read(&shard).unwrap();
    bytes[12345] ^= 0x40;
    fs::write(&shard, bytes).unwrap();
    match Model::open(&out) {
        Err(HearthError::Integrity { file, .. }) => assert!(file.ends_with("shard-00001.bin")),
        Err(other) => panic!("expected an integrity error, got {other}"),
        Ok(_) => panic!("a corrupted shard was accepted"),
    }
}

#[test]
fn manifest_of_another_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg");
    convert(&common::smollm2_gguf(), &out, &ConvertOptions::default()).unwrap();
    let path = out.join("manifest.json");
    let text = fs::read_to_string(&path).unwrap().replace("\"format_version\": 1", "\"format_version\": 2");
    fs::write(&path, text).unwrap();
    let err = Package::open(&out).unwrap_err();
    assert!(err.to_string().contains("format version 2"), "{err}");
}

#[test]
fn gguf_version_2_is_read_and_version_1_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Versions 2 and 3 share the header layout (64-bit counts); version 1 used 32-bit counts.
    let v2 = patched_gguf(tmp.path(), "v2.gguf", |b| b[4..8].copy_from_slice(&2u32.to_le_bytes()));
    let m = convert(&v2, &tmp.path().join("v2"), &ConvertOptions::default()).unwrap();
    assert_eq!(m.tensors.len(), 272);
    let v1 = patched_gguf(tmp.path(), "v1.gguf", |b| b[4..8].copy_from_slice(&1u32.to_le_bytes()));
    let err = convert_err(&v1, tmp.path());
    assert!(err.to_string().contains("GGUF version 1 is not supported"), "{err}");
}

#[test]
fn manifest_with_a_missing_or_resized_part_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg");
    convert(&common::smollm2_gguf(), &out, &ConvertOptions::default()).unwrap();
    let path = out.join("manifest.json");
    let original: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let q4 = original["tensors"].as_array().unwrap().iter().position(|t| t["dtype"] == "q4").unwrap();
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 2] = [
        ("missing", |t| {
            t["parts"].as_object_mut().unwrap().remove("mins");
        }),
        ("resized", |t| t["parts"]["scales"]["length"] = serde_json::json!(2)),
    ];
    for (what, edit) in cases {
        let mut m = original.clone();
        edit(&mut m["tensors"][q4]);
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let err = Package::open(&out).unwrap_err();
        assert!(err.to_string().contains("parts must be"), "{what}: {err}");
    }
}
