//! A GGUF URL's conversion on any small GGUF: its header read from the bytes as a prefix (as the
//! browser reads it), then the bytes fed in pieces. It fails with an error, or makes every shard;
//! and where `hearth convert` converts the same bytes from a file, the stream's shards and
//! tokenizer are that package's, byte for byte (a differential check of the two paths).
#![no_main]

use hearth_core::convert::{convert, ConvertOptions, GgufStream};
use hearth_core::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small shards, so that tensors cross shard ends.
    let opts = ConvertOptions { shard_bytes: 1024, ..ConvertOptions::default() };
    let streamed = stream(data, &opts);
    let dir = hearth_fuzz::scratch("gguf_stream");
    let input = dir.join("model.gguf");
    std::fs::write(&input, data).expect("scratch file");
    let out = dir.join("package");
    let Ok(written) = convert(&input, &out, &opts) else { return };
    // The stream refuses more than convert (LongRoPE factors it was not given, tensor data out of
    // table order); what it accepts it makes whole, and what both make is the same.
    let Some(made) = streamed else { return };
    let (shards, tokenizer) = made.expect("a stream fed every byte of a file convert converts makes every shard");
    assert_eq!(shards.len(), written.shards.len(), "as many shards as convert wrote");
    for (shard, entry) in shards.iter().zip(&written.shards) {
        assert_eq!(shard, &std::fs::read(out.join(&entry.file)).expect("a written shard"), "{}", entry.file);
    }
    assert_eq!(tokenizer.as_bytes(), std::fs::read(out.join("tokenizer.json")).expect("the tokenizer"));
});

/// The stream's shards and tokenizer.json; None where it refuses the bytes, Some(Err) where it
/// took them all and still lacks a shard.
fn stream(data: &[u8], opts: &ConvertOptions) -> Option<Result<(Vec<Vec<u8>>, String), ()>> {
    let header = GgufFile::from_prefix(data, data.len() as u64, "model.gguf").ok()??;
    let mut stream = GgufStream::new(header, opts.clone()).ok()?;
    let start = usize::try_from(stream.position()).ok()?.min(data.len());
    let mut shards = Vec::new();
    // Pieces of 7 bytes and more, so that tensors arrive split.
    for piece in data[start..].chunks(7 + data.len() % 61) {
        for shard in stream.feed(piece).ok()? {
            shards.push(shard.bytes);
        }
    }
    Some(if stream.is_done() { Ok((shards, stream.tokenizer_json().to_string())) } else { Err(()) })
}
