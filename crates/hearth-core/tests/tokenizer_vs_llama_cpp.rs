//! Tokenization of the converted SmolLM2 tokenizer against llama.cpp, string by string.

mod common;

use hearth_core::convert::tokenizer_from_gguf;
use hearth_core::gguf::GgufFile;
use hearth_core::manifest::TokenizerInfo;
use hearth_core::model::Model;
use hearth_core::tokenizer::{IncrementalDecoder, Tokenizer};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The tokenizer the converter builds from `gguf`'s vocabulary, loaded as a package's is.
fn gguf_tokenizer(gguf: &GgufFile) -> Tokenizer {
    let tok = tokenizer_from_gguf(gguf).expect("build tokenizer");
    let info = TokenizerInfo {
        file: "tokenizer.json".into(),
        bos_id: tok.bos_id,
        eos_id: tok.eos_id,
        stop_ids: tok.stop_ids.clone(),
        pad_id: tok.pad_id,
        add_bos: tok.add_bos,
        chat_template: tok.chat_template.clone(),
    };
    Tokenizer::from_json(tok.json.as_bytes(), info).expect("load tokenizer")
}

/// Every corpus string, with and without special-token parsing, must give llama.cpp's ids.
fn assert_corpus_matches(tokenizer: &mut Tokenizer, fixture: &str) {
    let fx = common::fixture(fixture);
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "the corpus must hold at least 200 strings");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let plain = tokenizer.encode(text, false, false).expect("encode");
        let special = tokenizer.encode(text, true, false).expect("encode");
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
fn byte_level_bpe_corpus_tokenizes_exactly_like_llama_cpp() {
    let mut model = Model::open(common::smollm2_package()).expect("open package");
    assert_corpus_matches(&mut model.prompter.tokenizer, "smollm2/tokenizer_corpus.json");
}

#[test]
fn sentencepiece_corpus_tokenizes_exactly_like_llama_cpp() {
    // Gemma 3: `tokenizer.ggml.model = llama`, 262k pieces with scores, byte fallback.
    let gguf = GgufFile::open(common::gemma3_gguf()).expect("open Gemma 3");
    let mut tokenizer = gguf_tokenizer(&gguf);
    let info = tokenizer.info();
    assert_eq!((info.bos_id, info.eos_id, info.add_bos), (Some(2), Some(1), true));
    assert_corpus_matches(&mut tokenizer, "gemma3/tokenizer_corpus.json");
}

#[test]
fn special_token_text_is_one_token_only_when_asked() {
    let mut model = Model::open(common::smollm2_package()).expect("open package");
    let special = model.prompter.tokenizer.encode("<|im_start|>", true, false).unwrap();
    assert_eq!(special.len(), 1);
    assert!(model.prompter.tokenizer.encode("<|im_start|>", false, false).unwrap().len() > 1);
}

#[test]
fn incremental_decoding_never_splits_a_character() {
    let mut model = Model::open(common::smollm2_package()).expect("open package");
    let fx = common::fixture("smollm2/tokenizer_corpus.json");
    let mut multi_token_chars = 0;
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = model.prompter.tokenizer.encode(text, false, false).unwrap();
        let mut dec = IncrementalDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = dec.push(model.tokenizer(), id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: piece {piece:?} holds a broken character");
            if piece.is_empty() {
                multi_token_chars += 1;
            }
            out.push_str(&piece);
        }
        out.push_str(&dec.finish(model.tokenizer()).unwrap());
        assert_eq!(out, model.tokenizer().decode(&ids, true).unwrap(), "{text:?}");
        // Byte-level BPE round-trips plain text exactly.
        assert_eq!(out, text);
    }
    // The corpus has emoji and CJK that span tokens, so some steps must have held text back.
    assert!(multi_token_chars > 0);
}

/// Each GGUF pre-tokenizer Hearth converts (`tokenizer.ggml.pre`: GPT-2's, Llama 3's `llama-bpe`,
/// Qwen2's, SmolLM's, llama.cpp's `default`), on one vocabulary whose merges cross the boundaries
/// those expressions draw (`tests/fixtures/make_pretokenizers.py`), against llama.cpp's ids for 262
/// strings. The fixture records how many strings each name cuts differently from GPT-2's: a name
/// mapped to the wrong expression fails on those.
/// A vocabulary named like Phi-3 (`phi3-specials.gguf`): whitespace after its special tokens is
/// dropped (but after `<unk>`, `<s>`, `<|endoftext|>`), as llama.cpp does for a model so named,
/// following Phi-3's tokenizer.json; chat-shaped strings with special-token parsing on against
/// llama.cpp's ids. Without the rule, `<|user|>\n` keeps its newline and every case but the last
/// differs.
#[test]
fn phi3_special_tokens_drop_the_whitespace_after_them_as_llama_cpp_does() {
    let fx = common::fixture("pretokenizers/ids.json");
    let strip = &fx["special_strip"];
    let path = common::repo_root().join("tests/fixtures/pretokenizers").join(strip["gguf"].as_str().unwrap());
    let mut tokenizer = gguf_tokenizer(&GgufFile::open(&path).expect("open the vocabulary"));
    for case in strip["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text, true, false).expect("encode"), ids(&case["ids"]), "{text:?}");
    }
}

#[test]
fn every_gguf_pre_tokenizer_cuts_text_as_llama_cpp_does() {
    let fx = common::fixture("pretokenizers/ids.json");
    let names: Vec<&str> = fx["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    for name in &names {
        let differing = fx["cases_differing_from_gpt2"][name].as_u64().unwrap();
        assert!(*name == "gpt-2" || differing >= 10, "{name}: only {differing} strings tell it from GPT-2's");
        let path = common::repo_root().join(format!("tests/fixtures/pretokenizers/{name}.gguf"));
        let mut tokenizer = gguf_tokenizer(&GgufFile::open(&path).expect("open the vocabulary"));
        let mut failures = Vec::new();
        let cases = fx["cases"].as_array().unwrap();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let got = tokenizer.encode(text, false, false).expect("encode");
            let want = ids(&case["ids"][name]);
            if got != want {
                failures.push(format!("{text:?}: hearth {got:?} llama.cpp {want:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{name}: {} of {} strings differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}
