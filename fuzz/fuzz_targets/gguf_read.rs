//! The GGUF reader on any bytes: a header, metadata and tensor table that is refused with an error
//! or read; every tensor it accepts can be read, and the tokenizer built from its metadata.
#![no_main]

use hearth_core::convert::tokenizer_from_gguf;
use hearth_core::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = hearth_fuzz::scratch("gguf_read");
    let path = dir.join("model.gguf");
    std::fs::write(&path, data).expect("scratch file");
    if let Ok(gguf) = GgufFile::open(&path) {
        for t in &gguf.tensors {
            if let Ok(bytes) = gguf.read_tensor(t) {
                assert_eq!(Some(bytes.len() as u64), t.n_bytes, "a tensor reads as many bytes as its table says");
            }
        }
        let _ = tokenizer_from_gguf(&gguf);
    }
});
