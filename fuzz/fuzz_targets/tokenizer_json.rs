//! A `tokenizer.json` on any bytes (the package's tokenizer file, which the `tokenizers` library
//! reads): refused with an error, or a tokenizer that encodes and decodes text.
#![no_main]

use hearth_core::manifest::TokenizerInfo;
use hearth_core::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let info = TokenizerInfo {
        file: "tokenizer.json".into(),
        bos_id: Some(1),
        eos_id: Some(2),
        stop_ids: vec![2],
        pad_id: None,
        add_bos: true,
        chat_template: None,
    };
    let Ok(mut tokenizer) = Tokenizer::from_json(data, info) else { return };
    for text in ["Hello, world!", "  naïve café 日本語 🙂\n\tend", "<|im_start|>user\nhi<|im_end|>"] {
        for parse_special in [false, true] {
            if let Ok(ids) = tokenizer.encode(text, parse_special, true) {
                let _ = tokenizer.decode(&ids, false);
            }
        }
    }
});
