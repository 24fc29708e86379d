//! `hearth convert` on a Transformers directory made of the input: `config.json` before the cut,
//! `model.safetensors` after it, and a fixed small tokenizer. It fails with an error, or writes a
//! package that the reader accepts whole and the fast CPU engine runs.
#![no_main]

use hearth_core::convert::{convert, ConvertOptions};
use libfuzzer_sys::fuzz_target;

/// A word-level tokenizer of 16 tokens (the fuzzed parts are the config and the tensors).
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","unk_token":"w0","vocab":{"w0":0,"w1":1,"w2":2,"w3":3,"w4":4,"w5":5,
"w6":6,"w7":7,"w8":8,"w9":9,"w10":10,"w11":11,"w12":12,"w13":13,"w14":14,"w15":15}}}"#;

fuzz_target!(|data: &[u8]| {
    let (config, weights) = hearth_fuzz::split(data);
    let dir = hearth_fuzz::scratch("safetensors_convert");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).expect("scratch directory");
    std::fs::write(model.join("config.json"), config).expect("scratch file");
    std::fs::write(model.join("model.safetensors"), weights).expect("scratch file");
    std::fs::write(model.join("tokenizer.json"), TOKENIZER).expect("scratch file");
    std::fs::write(model.join("tokenizer_config.json"), r#"{"eos_token": "w1", "bos_token": "w2"}"#)
        .expect("scratch file");
    let out = dir.join("package");
    let opts = ConvertOptions { shard_bytes: 1024, ..ConvertOptions::default() };
    if convert(&model, &out, &opts).is_err() {
        return;
    }
    hearth_fuzz::check_converted(&out);
});
