//! Tokenization of the converted SmolLM2 tokenizer against llama.cpp, string by string.

mod common;

use hearth_core::model::Model;
use hearth_core::tokenizer::IncrementalDecoder;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn corpus_tokenizes_exactly_like_llama_cpp_with_and_without_specials() {
    let fx = common::fixture("smollm2/tokenizer_corpus.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "the corpus must hold at least 200 strings");
    let mut model = Model::open(common::smollm2_package()).expect("open package");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let plain = model.tokenizer.encode(text, false, false).expect("encode");
        let special = model.tokenizer.encode(text, true, false).expect("encode");
        if plain != ids(&case["ids"]) {
            failures.push(format!("{text:?} (plain): hearth {plain:?} llama.cpp {:?}", ids(&case["ids"])));
        }
        if special != ids(&case["ids_special"]) {
            failures.push(format!("{text:?} (special): hearth {special:?} llama.cpp {:?}", ids(&case["ids_special"])));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), 2 * cases.len(), failures.join("\n"));
}

#[test]
fn special_token_text_is_one_token_only_when_asked() {
    let mut model = Model::open(common::smollm2_package()).expect("open package");
    let special = model.tokenizer.encode("<|im_start|>", true, false).unwrap();
    assert_eq!(special.len(), 1);
    assert!(model.tokenizer.encode("<|im_start|>", false, false).unwrap().len() > 1);
}

#[test]
fn incremental_decoding_never_splits_a_character() {
    let mut model = Model::open(common::smollm2_package()).expect("open package");
    let fx = common::fixture("smollm2/tokenizer_corpus.json");
    let mut multi_token_chars = 0;
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = model.tokenizer.encode(text, false, false).unwrap();
        let mut dec = IncrementalDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = dec.push(&model.tokenizer, id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: piece {piece:?} holds a broken character");
            if piece.is_empty() {
                multi_token_chars += 1;
            }
            out.push_str(&piece);
        }
        out.push_str(&dec.finish(&model.tokenizer).unwrap());
        assert_eq!(out, model.tokenizer.decode(&ids, true).unwrap(), "{text:?}");
        // Byte-level BPE round-trips plain text exactly.
        assert_eq!(out, text);
    }
    // The corpus has emoji and CJK that span tokens, so some steps must have held text back.
    assert!(multi_token_chars > 0);
}
