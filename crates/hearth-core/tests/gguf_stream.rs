//! `GgufStream`: a GGUF converted shard by shard from its bytes as they arrive (how the browser will
//! load a GGUF URL), against the package `convert` writes from the file, byte for byte: every shard
//! (and its hash), the tokenizer.json, and the manifest once the hashes are filled in. Every tiny
//! fixture under several choices, fed in odd-sized pieces, with shards small enough that tensors
//! spill across them; a resume at each shard gives the same shards from there; the real SmolLM2 and
//! Gemma 3 read the way the browser reads them (the header from a prefix, then the data).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use hearth_core::convert::{convert, ConvertOptions, GgufStream, QuantChoice};
use hearth_core::gguf::GgufFile;

/// Feeds `file` from `from` in pieces of `piece` bytes; returns the shards that came out.
fn feed(stream: &mut GgufStream, file: &Path, from: u64, piece: usize) -> Vec<hearth_core::convert::FinishedShard> {
    let mut f = std::fs::File::open(file).unwrap();
    f.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = vec![0u8; piece];
    let mut out = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend(stream.feed(&buf[..n]).unwrap());
    }
}

/// The stream of `gguf` under `opts`, fed in `piece`-byte pieces, equals `convert`'s package; then
/// a resume at each shard gives the same shards. Returns the number of shards and of tensors that
/// run from one shard into the next.
fn check(gguf: &Path, opts: &ConvertOptions, piece: usize, header: GgufFile) -> (usize, usize) {
    let label = format!("{} ({:?}, shards of {}, pieces of {piece})", gguf.display(), opts.quant, opts.shard_bytes);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("package");
    let written = convert(gguf, &dir, opts).unwrap();
    let mut stream = GgufStream::new(header, opts.clone()).unwrap();
    assert_eq!(stream.tokenizer_json().as_bytes(), std::fs::read(dir.join("tokenizer.json")).unwrap(), "{label}");
    let start = stream.position();
    let shards = feed(&mut stream, gguf, start, piece);
    assert!(stream.is_done(), "{label}: not every shard came out");
    assert_eq!(shards.len(), written.shards.len(), "{label}: shards");
    let mut manifest = stream.manifest().clone();
    for (i, shard) in shards.iter().enumerate() {
        let entry = &written.shards[i];
        assert_eq!(shard.index, i, "{label}");
        assert!(shard.bytes == std::fs::read(dir.join(&entry.file)).unwrap(), "{label}: {} differs", entry.file);
        assert_eq!(shard.sha256, entry.sha256, "{label}: {}", entry.file);
        manifest.shards[i].sha256 = shard.sha256.clone();
    }
    assert_eq!(serde_json::to_value(&manifest).unwrap(), serde_json::to_value(&written).unwrap(), "{label}: manifest");
    // Cut off before shard k: a new stream resumes there and makes shards k.. again (at each shard
    // of a small package; at the second, middle and last of a large one).
    let n = shards.len();
    let points: Vec<usize> = if n <= 8 { (1..n).collect() } else { vec![1, n / 2, n - 1] };
    for k in points {
        let header = GgufFile::open(gguf).unwrap();
        let mut again = GgufStream::new(header, opts.clone()).unwrap();
        let from = again.resume_at(k).unwrap();
        // From the first tensor with bytes in shard k on (it may have begun in an earlier shard): not
        // from the start where the last shard is concerned.
        assert!(
            from >= start && (k < n - 1 || from > start),
            "{label}: resuming at shard {k} fetches from byte {from}"
        );
        let rest = feed(&mut again, gguf, from, piece);
        let indices: Vec<_> = rest.iter().map(|s| s.index).collect();
        assert_eq!(indices, (k..shards.len()).collect::<Vec<_>>(), "{label}: resumed at {k}");
        for s in &rest {
            assert_eq!(s.sha256, shards[s.index].sha256, "{label}: shard {} resumed at {k}", s.index);
        }
    }
    let spanning = written.tensors.iter().filter(|t| t.offset + t.length > written.shards[t.shard].size).count();
    (shards.len(), spanning)
}

#[test]
fn every_tiny_fixture_streamed_is_the_package_convert_writes() {
    let ggufs = common::tiny_ggufs();
    let mut spilled = 0;
    for gguf in &ggufs {
        for (opts, piece) in [
            (ConvertOptions::default(), 4099),
            // Tensors across shards: most of the fixtures' matrices are over 8 KB.
            (ConvertOptions { shard_bytes: 8 << 10, ..Default::default() }, 1000),
            (ConvertOptions { quant: QuantChoice::Q4, group: 64, shard_bytes: 20 << 10, ..Default::default() }, 65536),
            (ConvertOptions { quant: QuantChoice::Q8, ..Default::default() }, 1),
        ] {
            // One byte at a time only for the smallest fixtures: it is slow, and it is the edge.
            if piece == 1 && std::fs::metadata(gguf).unwrap().len() > 300 << 10 {
                continue;
            }
            let (_, spanning) = check(gguf, &opts, piece, GgufFile::open(gguf).unwrap());
            spilled += usize::from(spanning > 0);
        }
    }
    assert!(spilled >= 10, "only {spilled} runs had a tensor across two shards");
}

/// The tiny BERT that llama.cpp's own converter wrote (tests/fixtures/tiny_bert/): its norms renamed
/// on the way, its header read from a prefix as the browser reads it.
#[test]
fn the_tiny_bert_streamed_is_the_package_convert_writes() {
    let gguf = common::repo_root().join("tests/fixtures/tiny_bert/bert.gguf");
    let file_len = std::fs::metadata(&gguf).unwrap().len();
    let mut prefix = vec![0u8; 1 << 20];
    std::fs::File::open(&gguf).unwrap().read_exact(&mut prefix).unwrap();
    for (opts, piece) in [
        (ConvertOptions::default(), 4099),
        (ConvertOptions { shard_bytes: 64 << 10, ..Default::default() }, 1000),
        (ConvertOptions { quant: QuantChoice::Q4, group: 32, shard_bytes: 256 << 10, ..Default::default() }, 65536),
    ] {
        let header = GgufFile::from_prefix(&prefix, file_len, "bert.gguf").unwrap().expect("the header fits 1 MiB");
        let (shards, spanning) = check(&gguf, &opts, piece, header);
        assert!(opts.shard_bytes > 1 << 20 || (shards > 2 && spanning > 0), "{shards} shards, {spanning} across two");
    }
}

#[test]
fn the_real_models_streamed_from_a_prefixed_header_are_the_packages_convert_writes() {
    for (gguf, prefix_bytes) in [(common::smollm2_gguf(), 2 << 20), (common::gemma3_gguf(), 8 << 20)] {
        let file_len = std::fs::metadata(&gguf).unwrap().len();
        let mut prefix = vec![0u8; prefix_bytes];
        std::fs::File::open(&gguf).unwrap().read_exact(&mut prefix).unwrap();
        let name = gguf.file_name().unwrap().to_string_lossy().into_owned();
        let header = GgufFile::from_prefix(&prefix, file_len, &name).unwrap().expect("the header fits the prefix");
        // Shards of 16 MiB: several per model, and tensors across them.
        let opts = ConvertOptions { shard_bytes: 16 << 20, ..Default::default() };
        let (shards, spanning) = check(&gguf, &opts, 1 << 20, header);
        assert!(shards >= 6 && spanning > 0, "{}: {shards} shards, {spanning} tensors across two", gguf.display());
    }
}

/// Tiny Qwen2's GGUF bytes with tensor `name`'s table entry changed by `edit` (its dimensions, as
/// written, and the offset that follows its type).
fn patched_entry(name: &str, edit: impl FnOnce(&mut Vec<u64>, &mut u64)) -> Vec<u8> {
    let mut gguf = std::fs::read(common::repo_root().join("tests/fixtures/tiny/qwen2.gguf")).unwrap();
    let key = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    let mut at = gguf.windows(key.len()).position(|w| w == key).expect("the tensor's entry") + key.len();
    let n_dims = u32::from_le_bytes(gguf[at..at + 4].try_into().unwrap()) as usize;
    at += 4;
    let read = |g: &[u8], i: usize| u64::from_le_bytes(g[i..i + 8].try_into().unwrap());
    let mut dims: Vec<u64> = (0..n_dims).map(|d| read(&gguf, at + 8 * d)).collect();
    let offset_at = at + 8 * n_dims + 4;
    let mut offset = read(&gguf, offset_at);
    edit(&mut dims, &mut offset);
    for (d, v) in dims.iter().enumerate() {
        gguf[at + 8 * d..at + 8 * d + 8].copy_from_slice(&v.to_le_bytes());
    }
    gguf[offset_at..offset_at + 8].copy_from_slice(&offset.to_le_bytes());
    gguf
}

/// What a stream cannot convert one tensor at a time is refused before any data, naming the tensor
/// and the way out (`hearth convert`): tensor data out of the table's order (here the last tensor's
/// data placed at the first's), and a source tensor over 512 MiB (here the output norm claiming
/// 2^28 values, in a file the server claims is 1 TiB long).
#[test]
fn a_stream_refuses_data_out_of_order_and_tensors_over_512_mib() {
    let first = {
        let gguf = std::fs::read(common::repo_root().join("tests/fixtures/tiny/qwen2.gguf")).unwrap();
        let header = GgufFile::from_prefix(&gguf, gguf.len() as u64, "qwen2.gguf").unwrap().unwrap();
        header.tensors[0].offset - header.tensors.iter().map(|t| t.offset).min().unwrap()
    };
    let moved = patched_entry("output_norm.weight", |_, offset| *offset = first);
    let header = GgufFile::from_prefix(&moved, moved.len() as u64, "moved.gguf").unwrap().unwrap();
    let err = GgufStream::new(header, ConvertOptions::default()).err().expect("refused").to_string();
    assert!(err.contains("`output_norm.weight`'s data comes before") && err.contains("hearth convert"), "{err}");

    let huge = patched_entry("output_norm.weight", |dims, _| dims[0] = 1 << 28);
    let header = GgufFile::from_prefix(&huge, 1 << 40, "huge.gguf").unwrap().unwrap();
    let err = GgufStream::new(header, ConvertOptions::default()).err().expect("refused").to_string();
    assert!(err.contains("`output_norm.weight` is 1073741824 bytes") && err.contains("at most 512 MiB"), "{err}");
}
