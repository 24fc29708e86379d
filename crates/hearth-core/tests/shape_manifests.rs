//! The committed shape-only manifests (`tests/fixtures/shapes/`, written by
//! `tests/fixtures/make_shape_manifest.py`) that `hearth bench --synthetic` and `scripts/bench-gpu.sh`
//! run: each is what the generator writes today, passes Hearth's own manifest validation, describes
//! the real model's shapes and encodings, places its tensors exactly as `PackageWriter` would, and
//! lays out every tensor as `Tensor::to_bytes` does.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hearth_core::manifest::{Manifest, PositionKind, RopeScaling, RopeStyle, TensorEntry};
use hearth_core::package::{PackageWriter, TensorSource};
use hearth_core::quant::{DType, Tensor};
use hearth_core::synthetic::SyntheticWeights;

fn generator() -> PathBuf {
    common::repo_root().join("tests/fixtures/make_shape_manifest.py")
}

fn llama_1b_dir() -> PathBuf {
    common::repo_root().join("tests/fixtures/shapes/llama-3.2-1b-instruct")
}

#[test]
fn committed_manifests_are_what_the_generator_writes() {
    let out = Command::new("python3").arg(generator()).arg("--check").output().expect("run python3");
    assert!(
        out.status.success(),
        "tests/fixtures/shapes/ differs from what make_shape_manifest.py writes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn llama_3_2_1b_has_the_real_shapes_and_encodings() {
    // `SyntheticWeights::open` is what `hearth bench --synthetic` calls: parse_manifest's checks.
    let source = SyntheticWeights::open(llama_1b_dir()).unwrap();
    let m: &Manifest = source.manifest();
    let c = &m.config;
    assert_eq!(m.architecture, "llama");
    assert_eq!(
        (c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_size, c.vocab_size),
        (16, 2048, 32, 8, 64, 8192, 128256)
    );
    assert_eq!(c.context_length, 131072);
    assert!(c.tied_embeddings);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.position, PositionKind::Rope);
    let rope = c.rope.as_ref().unwrap();
    assert_eq!((rope.base, rope.dim, rope.style), (500000.0, 64, RopeStyle::Neox));
    assert_eq!(
        rope.scaling,
        Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context_length: 8192
        })
    );
    assert!(c.sliding_window.is_none() && !c.qkv_bias && !c.qk_norm && !c.post_norms);

    // Exactly the tensors a tied Llama has, each with its shape and encoding.
    let (h, q, kv, f) = (2048, 2048, 512, 8192);
    let mut want: BTreeMap<String, (DType, Vec<usize>, Option<usize>)> = BTreeMap::new();
    want.insert("token_embd.weight".into(), (DType::Q8, vec![128256, h], Some(32)));
    want.insert("output_norm.weight".into(), (DType::F32, vec![h], None));
    for i in 0..16 {
        for norm in ["attn_norm", "ffn_norm"] {
            want.insert(format!("blk.{i}.{norm}.weight"), (DType::F32, vec![h], None));
        }
        for (name, shape) in [
            ("attn_q", [q, h]),
            ("attn_k", [kv, h]),
            ("attn_v", [kv, h]),
            ("attn_output", [h, q]),
            ("ffn_gate", [f, h]),
            ("ffn_up", [f, h]),
            ("ffn_down", [h, f]),
        ] {
            want.insert(format!("blk.{i}.{name}.weight"), (DType::Q4, shape.to_vec(), Some(32)));
        }
    }
    let got: BTreeMap<String, (DType, Vec<usize>, Option<usize>)> =
        m.tensors.iter().map(|t| (t.name.clone(), (t.dtype, t.shape.clone(), t.group_size))).collect();
    assert_eq!(got.len(), m.tensors.len(), "a tensor name appears twice");
    assert_eq!(got, want);

    // The weights' bytes: q4 at 4 bits plus an f16 scale and min per 32 values, q8 at 8 bits plus an
    // f16 scale per 32, f32 norms; every part a multiple of 256 bytes here, so no padding.
    let total: u64 = m.tensors.iter().map(|t| t.length).sum();
    let per_layer = (q * h + 2 * kv * h + h * q + 3 * f * h) as u64;
    let q4 = 16 * per_layer * 5 / 8;
    let q8 = 128256 * h as u64 * (32 + 2) / 32;
    let norms = (2 * 16 + 1) * 4 * h as u64;
    assert_eq!(total, q4 + q8 + norms);
    assert_eq!(total, 887_529_472);
}

/// The shards are one byte sequence: every tensor's bytes lie in exactly one piece per shard they
/// touch, pieces never overlap, and each shard ends where its last piece does.
#[test]
fn llama_3_2_1b_shards_hold_every_tensor_once() {
    let m = SyntheticWeights::open(llama_1b_dir()).unwrap().manifest().clone();
    assert_eq!(m.shard_size, 32 << 20);
    let mut covered = vec![0u64; m.tensors.len()];
    for (s, shard) in m.shards.iter().enumerate() {
        assert!(shard.size <= m.shard_size, "shard {s} is larger than shard_size");
        assert_eq!(shard.sha256, "0".repeat(64), "shard {s}: the shards do not exist, their hashes are zeros");
        let mut pieces = m.pieces_in_shard(s);
        pieces.sort_by_key(|p| p.offset_in_shard);
        assert!(!pieces.is_empty(), "shard {s} holds nothing");
        for pair in pieces.windows(2) {
            assert!(pair[0].offset_in_shard + pair[0].len <= pair[1].offset_in_shard, "shard {s}: pieces overlap");
        }
        let last = pieces.last().unwrap();
        assert_eq!(last.offset_in_shard + last.len, shard.size, "shard {s} does not end at its last tensor byte");
        for p in pieces {
            covered[p.tensor] += p.len;
        }
    }
    for (t, bytes) in m.tensors.iter().zip(covered) {
        assert_eq!(bytes, t.length, "{}: its bytes are not all in the shards", t.name);
    }
}

/// `SyntheticWeights` fills one tensor of each distinct shape and encoding with exactly
/// `entry.length` bytes that `Tensor::from_bytes` reads back and `Tensor::to_bytes` writes again at
/// the manifest's part offsets (the 263 MB embedding table included).
#[test]
fn llama_3_2_1b_tensors_are_laid_out_as_tensor_to_bytes_does() {
    let source = SyntheticWeights::open(llama_1b_dir()).unwrap();
    let mut seen = BTreeSet::new();
    for entry in &source.manifest().tensors {
        if !seen.insert((entry.dtype.name(), entry.shape.clone(), entry.group_size)) {
            continue;
        }
        let bytes = source.read_tensor_bytes(entry).unwrap();
        assert_eq!(bytes.len() as u64, entry.length, "{}", entry.name);
        let tensor = Tensor::from_bytes(&entry.name, entry.shape.clone(), entry.dtype, entry.group_size, &bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let (again, parts) = tensor.to_bytes();
        assert!(again == bytes, "{}: bytes outside the parts or parts misplaced", entry.name);
        let parts: BTreeMap<String, _> = parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(parts, entry.parts, "{}", entry.name);
    }
    // The embedding, q/output, k/v, gate/up, down and the norms.
    assert_eq!(seen.len(), 6, "{seen:?}");
}

/// The generator's placement against `PackageWriter` itself, on a small model with shards of 4 KiB:
/// tensors that fit, tensors that start a fresh shard, tensors spilling over several shards, and
/// parts of an odd number of groups (padded to a whole word).
#[test]
fn the_generator_places_tensors_as_package_writer_does() {
    let shard_size = 4096u64;
    let layout: Vec<(&str, DType, Vec<usize>, Option<usize>)> = vec![
        ("token_embd.weight", DType::Q8, vec![96, 64], Some(32)),
        ("blk.0.attn_norm.weight", DType::F32, vec![64], None),
        ("blk.0.attn_q.weight", DType::Q4, vec![64, 64], Some(32)),
        ("blk.0.attn_k.weight", DType::Q4, vec![32, 64], Some(64)),
        ("blk.0.attn_v.weight", DType::Q4, vec![3, 128], Some(128)),
        ("blk.0.ffn_norm.weight", DType::F32, vec![64], None),
        ("blk.0.ffn_down.weight", DType::Q4, vec![64, 96], Some(32)),
        ("odd.q8", DType::Q8, vec![5, 32], Some(32)),
        ("big.f32", DType::F32, vec![40, 64], None),
        ("output_norm.weight", DType::F32, vec![64], None),
    ];

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("small");
    let mut w = PackageWriter::new(&out, shard_size, false).unwrap();
    for (name, dtype, shape, group) in &layout {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
        w.add_tensor(name, &Tensor::from_f32(shape.clone(), &values, *dtype, group.unwrap_or(32)).unwrap()).unwrap();
    }
    w.add_file("tokenizer.json", b"{}").unwrap();
    let written = w.finish(SyntheticWeights::open(llama_1b_dir()).unwrap().manifest().clone()).unwrap();
    assert!(written.shards.len() >= 4, "the layout should spill over several shards");

    let request: Vec<serde_json::Value> = layout
        .iter()
        .map(|(name, dtype, shape, group)| serde_json::json!([name, dtype.name(), shape, group]))
        .collect();
    let mut child = Command::new("python3")
        .arg(generator())
        .args(["--layout", &shard_size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&request).unwrap().as_bytes()).unwrap();
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success());
    let placed: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let tensors: Vec<TensorEntry> = serde_json::from_value(placed["tensors"].clone()).unwrap();
    let sizes: Vec<u64> = serde_json::from_value(placed["shard_sizes"].clone()).unwrap();

    assert_eq!(tensors, written.tensors);
    assert_eq!(sizes, written.shards.iter().map(|s| s.size).collect::<Vec<_>>());
}
