//! `hearth convert` on any small GGUF: it fails with an error, or writes a package that the
//! package reader accepts whole (every shard's size and hash, the tokenizer),
//! and that the fast CPU engine then runs for one token.
#![no_main]

use hearth_core::convert::{convert, ConvertOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = hearth_fuzz::scratch("gguf_convert");
    let input = dir.join("model.gguf");
    std::fs::write(&input, data).expect("scratch file");
    let out = dir.join("package");
    // Small shards, so that tensors cross shard ends.
    let opts = ConvertOptions { shard_bytes: 1024, ..ConvertOptions::default() };
    if convert(&input, &out, &opts).is_err() {
        return;
    }
    hearth_fuzz::check_converted(&out);
});
