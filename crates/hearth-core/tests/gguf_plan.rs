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
    let ggufs = common::tiny_ggufs();
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

/// The tiny BERT that llama.cpp's own converter wrote (tests/fixtures/tiny_bert/: its norms renamed,
/// its Q8_0 matrices, its F32 position and token-type tables).
#[test]
fn the_plan_of_the_tiny_bert_is_what_convert_writes() {
    let gguf = common::repo_root().join("tests/fixtures/tiny_bert/bert.gguf");
    for opts in [
        ConvertOptions::default(),
        ConvertOptions { shard_bytes: 64 << 10, ..Default::default() },
        ConvertOptions { quant: QuantChoice::Q4, group: 32, ..Default::default() },
        ConvertOptions { quant: QuantChoice::F16, shard_bytes: 100 << 10, ..Default::default() },
    ] {
        check(&gguf, &opts);
    }
}

#[test]
fn the_plan_of_the_real_models_is_what_convert_writes() {
    check(&common::smollm2_gguf(), &ConvertOptions { shard_bytes: 8 << 20, ..Default::default() });
    check(&common::gemma3_gguf(), &ConvertOptions::default());
}

/// A GGUF's header from its first bytes, as a range request returns them (how the browser will
/// read a GGUF URL's header): a prefix too short asks for more, one long enough gives the file's
/// own header and the same plan; bytes that are not a GGUF are refused at once, and a length the
/// prefix does not hold is never allocated (a server may claim any file size).
#[test]
fn a_header_read_from_a_prefix_is_the_files_and_plans_the_same() {
    use std::io::Read;

    use hearth_core::convert::plan_gguf_header;
    use hearth_core::gguf::GgufFile;

    let url = "https://example.test/models/model.gguf";
    for path in [common::smollm2_gguf(), common::gemma3_gguf()] {
        let len = std::fs::metadata(&path).unwrap().len();
        let mut head = Vec::new();
        std::fs::File::open(&path).unwrap().take(64 << 20).read_to_end(&mut head).unwrap();
        let whole = GgufFile::open(&path).unwrap();
        // Doubling from 64 KiB, as a loader would ask.
        let mut n = 64 << 10;
        let header = loop {
            match GgufFile::from_prefix(&head[..n], len, url).unwrap() {
                Some(header) => break header,
                None => {
                    assert!(n < head.len(), "{}: no header within 64 MiB", path.display());
                    n = (2 * n).min(head.len());
                }
            }
        };
        eprintln!("{}: the header fits the first {n} bytes", path.display());
        assert!(GgufFile::from_prefix(&head[..n / 2], len, url).unwrap().is_none());
        assert_eq!(header.metadata, whole.metadata);
        let table = |g: &GgufFile| -> Vec<_> {
            g.tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type, t.offset, t.n_bytes)).collect()
        };
        assert_eq!(table(&header), table(&whole));
        let opts = ConvertOptions::default();
        let (mut from_url, from_file) = (plan_gguf_header(&header, &opts).unwrap(), plan_gguf(&path, &opts).unwrap());
        assert_eq!(from_url.source.file, "model.gguf");
        from_url.source.file = from_file.source.file.clone();
        assert_eq!(serde_json::to_value(&from_url).unwrap(), serde_json::to_value(&from_file).unwrap());
    }

    let not_gguf = GgufFile::from_prefix(b"PK\x03\x04 a zip archive", 1 << 30, url).unwrap_err();
    assert!(not_gguf.to_string().contains("not a GGUF file"), "{not_gguf}");
    // GGUF v3, no tensors, one metadata entry whose key claims 2^40 bytes.
    let mut claim = b"GGUF".to_vec();
    for word in [3u64.to_le_bytes()[..4].to_vec(), 0u64.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec()] {
        claim.extend(word);
    }
    claim.extend((1u64 << 40).to_le_bytes());
    assert!(GgufFile::from_prefix(&claim, 1 << 50, url).unwrap().is_none(), "more bytes, not 1 TiB");
    let whole_file = GgufFile::from_prefix(&claim, claim.len() as u64, url).unwrap_err();
    assert!(whole_file.to_string().contains("impossible for a file"), "{whole_file}");
}

/// A GGUF whose plan needs tensor data (Phi-3.5's LongRoPE factors go into the config) cannot be
/// planned from its header alone: refused by name, with what to do, rather than by a failed file
/// open (the browser has no file).
#[test]
fn a_header_that_needs_tensor_data_to_plan_is_refused_by_name() {
    use hearth_core::convert::plan_gguf_header;
    use hearth_core::gguf::GgufFile;
    use hearth_core::HearthError;

    let path = common::repo_root().join("tests/fixtures/tiny/phi3.gguf");
    let bytes = std::fs::read(&path).unwrap();
    // Even with every byte at hand: a header is what a URL's first bytes give.
    let header = GgufFile::from_prefix(&bytes, bytes.len() as u64, "phi3.gguf").unwrap().unwrap();
    match plan_gguf_header(&header, &ConvertOptions::default()) {
        Err(HearthError::UnsupportedSource(message)) => {
            assert!(message.contains("rope_factors_") && message.contains("hearth convert"), "{message}");
        }
        other => panic!("phi3's header planned without its LongRoPE factors: {other:?}"),
    }
    // With the factor tensors' bytes supplied (a range request each, in the browser), the header
    // plans what the file plans.
    let mut header = header;
    let needed: Vec<_> = hearth_core::convert::tensors_read_to_plan(&header).into_iter().cloned().collect();
    assert_eq!(needed.len(), 2);
    for info in &needed {
        let range = info.offset as usize..(info.offset + info.n_bytes.unwrap()) as usize;
        header.supply_tensor(&info.name, bytes[range].to_vec()).unwrap();
    }
    let planned = serde_json::to_value(plan_gguf_header(&header, &ConvertOptions::default()).unwrap()).unwrap();
    let mut from_file = serde_json::to_value(plan_gguf(&path, &ConvertOptions::default()).unwrap()).unwrap();
    from_file["source"]["file"] = "phi3.gguf".into();
    assert_eq!(planned, from_file);
    // Bytes of the wrong length are refused.
    assert!(header.supply_tensor(&needed[0].name, vec![0; 3]).is_err());
}
