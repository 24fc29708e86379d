//! `plan_gguf`: the manifest a GGUF's conversion will write, from the GGUF's header alone, against
//! the manifest `convert` then really writes, field for field (the shards' hashes aside, which need
//! the bytes): every tiny fixture (each architecture and block type the converter reads, fused
//! Q/K/V and gate|up), each `--quant` choice and a q4 group of 64, shards small enough that
//! tensors spill across them, and the real SmolLM2 and Gemma 3 GGUFs. The converter's output is
//! checked against llama.cpp by the other tests; this one holds the plan to it.

mod common;

use std::path::Path;

use hearth_core::convert::{convert, plan_gguf, ConvertOptions, QuantChoice};

fn check(gguf: &Path, opts: &ConvertOptions) {
    let label = format!("{} ({:?}, group {}, shards of {})", gguf.display(), opts.quant, opts.group, opts.shard_bytes);
    let tmp = tempfile::tempdir().unwrap();
    let written = convert(gguf, &tmp.path().join("package"), opts).unwrap();
    let planned = plan_gguf(gguf, opts).unwrap();
    assert!(planned.shards.iter().all(|s| s.sha256.is_empty()), "{label}: a planned shard has a hash");
    assert_eq!(planned.tensors.len(), written.tensors.len(), "{label}: tensors");
    for (p, w) in planned.tensors.iter().zip(&written.tensors) {
        let (p, w) = (serde_json::to_value(p).unwrap(), serde_json::to_value(w).unwrap());
        assert_eq!(p, w, "{label}: tensor entry");
    }
    let sizes =
        |m: &hearth_core::manifest::Manifest| m.shards.iter().map(|s| (s.file.clone(), s.size)).collect::<Vec<_>>();
    assert_eq!(sizes(&planned), sizes(&written), "{label}: shards");
    assert_eq!(serde_json::to_value(&planned.files).unwrap(), serde_json::to_value(&written.files).unwrap(), "{label}");
    // Everything else: name, architecture, config, tokenizer, source, format, shard size.
    let rest = |m: &hearth_core::manifest::Manifest| {
        let mut v = serde_json::to_value(m).unwrap();
        for table in ["tensors", "shards", "files"] {
            v.as_object_mut().unwrap().remove(table);
        }
        v
    };
    assert_eq!(rest(&planned), rest(&written), "{label}: the manifest's other fields");
}

#[test]
fn the_plan_of_every_tiny_fixture_is_what_convert_writes_for_every_choice() {
    let dir = common::repo_root().join("tests/fixtures/tiny");
    let mut ggufs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    ggufs.sort();
    assert!(ggufs.len() >= 10, "the tiny fixtures in {}", dir.display());
    for gguf in &ggufs {
        for opts in [
            ConvertOptions::default(),
            // Tensors across shards: the fixtures' largest are ~300 KB.
            ConvertOptions { shard_bytes: 64 << 10, ..Default::default() },
            ConvertOptions { quant: QuantChoice::Q4, group: 64, ..Default::default() },
            ConvertOptions { quant: QuantChoice::Q8, ..Default::default() },
            ConvertOptions { quant: QuantChoice::F16, shard_bytes: 100 << 10, ..Default::default() },
        ] {
            check(gguf, &opts);
        }
    }
}

#[test]
fn the_plan_of_the_real_models_is_what_convert_writes() {
    check(&common::smollm2_gguf(), &ConvertOptions { shard_bytes: 8 << 20, ..Default::default() });
    check(&common::gemma3_gguf(), &ConvertOptions::default());
}
