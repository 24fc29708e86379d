//! Hostile input (docs/SECURITY.md), each case built here from a reproducer: a SentencePiece
//! vocabulary with a 400 KB piece, manifests whose sizes are absurd, shards replaced by a device
//! file or cut short, chat templates that loop or do not parse, and directories that killed
//! conversions left behind. Each must end in a typed error (or, for the vocabulary, a result) in
//! bounded time, and never in a panic, an abort or a lost package.

mod common;

use std::path::Path;

use hearth_core::chat::ChatMessage;
use hearth_core::convert::{convert, tokenizer_from_gguf, ConvertOptions};
use hearth_core::gguf::GgufFile;
use hearth_core::manifest::TokenizerInfo;
use hearth_core::model::Prompter;
use hearth_core::package::{parse_manifest, Package};
use hearth_core::tools::Tools;
use hearth_core::HearthError;

/// As in the CLI and the wasm module: chat templates render on a memory budget.
#[global_allocator]
static ALLOCATOR: hearth_core::budget::BudgetedAlloc<std::alloc::System> =
    hearth_core::budget::BudgetedAlloc(std::alloc::System);

/// A GGUF (version 3) with metadata only: `(key, value)` where a value is a string, a u32, or an
/// array of strings, f32s or i32s.
enum Meta {
    Str(String),
    U32(u32),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn gguf_bytes(meta: &[(&str, Meta)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // tensors
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| string(&mut out, s));
            }
            Meta::F32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
    out
}

/// A SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the pieces `a` … `a`×16 and `b`, and one
/// piece of `long` bytes. Looking every split of every piece up by its text was quadratic in the
/// piece's length: this 400 KB piece took minutes.
#[test]
fn a_sentencepiece_vocabulary_with_a_400_kb_piece_converts() {
    let long = 400_000;
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend((1..=16).map(|n| "a".repeat(n)));
    tokens.push("b".into());
    tokens.push(format!("{}b", "a".repeat(long - 1)));
    let n = tokens.len();
    let mut types = vec![1i32; n];
    types[0] = 2;
    types[1] = 3;
    types[2] = 3;
    let scores: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vocab.gguf");
    std::fs::write(
        &path,
        gguf_bytes(&[
            ("general.architecture", Meta::Str("llama".into())),
            ("tokenizer.ggml.model", Meta::Str("llama".into())),
            ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
            ("tokenizer.ggml.scores", Meta::F32s(scores)),
            ("tokenizer.ggml.token_type", Meta::I32s(types)),
            ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
            ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        ]),
    )
    .unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let json: serde_json::Value = serde_json::from_str(&tokenizer.json).unwrap();
    let merges = json["model"]["merges"].as_array().unwrap();
    // "a"+"a" … "a"×8+"a"×8 make the 15 runs of a's; the long piece splits into a vocabulary prefix
    // and suffix nowhere ("a"×k + "a…ab" needs a suffix that is a piece, and only "b" is).
    assert!(merges.iter().any(|m| m == &serde_json::json!(["a", "a"])), "{merges:?}");
    assert!(
        merges.iter().all(|m| m[0].as_str().map_or(0, str::len) + m[1].as_str().map_or(0, str::len) <= 16),
        "no merge forms the long piece"
    );
}

/// The tiny Qwen2 model's tokenizer with `template` as its chat template.
fn prompter_with_template(template: &str) -> Prompter {
    let (tokenizer, info) = tiny_tokenizer(template);
    Prompter::new("hostile", &tokenizer, info).unwrap()
}

/// The tiny Qwen2 package's `tokenizer.json`, and its tokenizer settings with `template` as its
/// chat template (one conversion for both).
fn tiny_tokenizer(template: &str) -> (Vec<u8>, TokenizerInfo) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    tiny_package(&dir);
    let package = Package::open(&dir).unwrap();
    let json = package.read_file(&package.manifest.tokenizer.file).unwrap();
    let info = TokenizerInfo { chat_template: Some(template.to_string()), ..package.manifest.tokenizer };
    (json, info)
}

#[test]
fn a_template_that_does_not_parse_only_breaks_chat() {
    let mut p = prompter_with_template("{% for m in messages %}{{ m.content ");
    assert!(!p.encode_text("plain text still works").unwrap().is_empty());
    let err = p.encode_chat(&[ChatMessage::new("user", "hi")]).unwrap_err();
    assert!(matches!(&err, HearthError::ChatTemplate(m) if m.contains("cannot parse")), "{err}");
}

#[test]
fn a_template_that_loops_stops_at_its_fuel_and_the_prompter_stays_usable() {
    let mut p = prompter_with_template(
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    );
    let err = p.encode_chat(&[ChatMessage::new("user", "hi")]).unwrap_err();
    assert!(matches!(&err, HearthError::ChatTemplate(m) if m.contains("steps")), "{err}");
    assert!(!p.encode_text("still usable").unwrap().is_empty());
}

/// Templates that fuel does not stop, each a few steps: a string doubled 40 times (a terabyte),
/// 60 MB strings built and dropped in a loop (an hour of copying), a 200 MB constant (folded when
/// the template compiles), and a 30 MB string searched end to end in a loop (no allocation; 5,000
/// searches, several seconds). Each stops at its memory or time budget with an error naming it, and plain
/// prompts still work.
#[test]
fn templates_that_fuel_does_not_stop_end_at_their_memory_or_time_budget() {
    for (template, limit) in [
        ("{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", "at once"),
        ("{% for i in range(100000) %}{% set s = 'x' * (60000000 + i) %}{% endfor %}", "in all"),
        ("{{ ('x' * 100000000) ~ ('x' * 100000000) }}", "at once"),
        ("{% set s = 'x' * 30000000 %}{% for i in range(5000) %}{% if 'y' in s %}{% endif %}{% endfor %}", "longer than"),
    ] {
        let started = std::time::Instant::now();
        let (tokenizer, info) = tiny_tokenizer(template);
        let err = match Prompter::new("hostile", &tokenizer, info) {
            Err(e) => e,
            Ok(mut p) => {
                let err = p.encode_chat(&[ChatMessage::new("user", "hi")]).unwrap_err();
                assert!(!p.encode_text("still usable").unwrap().is_empty());
                err
            }
        };
        eprintln!("{template}: {err} ({:?})", started.elapsed());
        assert!(matches!(&err, HearthError::ChatTemplate(m) if m.contains(limit)), "{template}: {err}");
    }
}

/// A real model's template (SmolLM2's ChatML; the Gemma 3 270M GGUF here carries none) on a long
/// chat with tools: each limit is at least four times (fuel: ten times) what it uses, so the
/// limits never refuse a real chat.
#[test]
fn real_templates_stay_far_below_the_limits() {
    let tools: Tools = serde_json::from_value(serde_json::json!({"tools": [{"type": "function", "function": {
        "name": "search", "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]}))
    .unwrap();
    let chat: Vec<ChatMessage> =
        std::iter::once(ChatMessage::new("system", "You are helpful."))
            .chain((0..200).map(|i| {
                ChatMessage::new(["user", "assistant"][i % 2], &format!("message {i}: {}", "text ".repeat(50)))
            }))
            .collect();
    let gguf = common::smollm2_gguf();
    let file = GgufFile::open(&gguf).unwrap();
    let source = file.get_str("tokenizer.chat_template").expect("a chat template").to_string();
    let template = hearth_core::chat::ChatTemplate::new(&source, "<s>", "</s>").unwrap();
    let (text, cost) = template.render_with_cost(&chat, &tools, true).unwrap();
    eprintln!("{}: {} bytes, {cost:?}", gguf.display(), text.len());
    assert!(cost.fuel_used * 10 < cost.fuel_limit, "{cost:?}");
    assert!(cost.output_bytes * 4 < cost.output_limit, "{cost:?}");
    assert!(cost.memory_peak > 0, "the budget counts the render's allocations: {cost:?}");
    assert!(cost.memory_peak * 10 < cost.budget.live, "{cost:?}");
    assert!(cost.memory_total * 10 < cost.budget.total, "{cost:?}");
}

/// A real manifest (the Llama 3.2 1B shape fixture) with one config field made absurd: each is
/// refused by the parser, naming the field, before anything is sized from it.
#[test]
fn absurd_config_values_are_refused_naming_the_field() {
    let path = common::repo_root().join("tests/fixtures/shapes/llama-3.2-1b-instruct/manifest.json");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(parse_manifest(text.as_bytes(), "fixture").is_ok(), "the fixture itself is valid");
    for (field, value) in [
        ("n_layers", serde_json::json!(1u64 << 40)),
        // Past u64 and usize alike: named, not a serde type error.
        ("hidden_size", serde_json::json!(1e30)),
        ("context_length", serde_json::json!(1u64 << 27)),
        ("head_dim", serde_json::json!(1u64 << 30)),
        ("vocab_size", serde_json::json!(u32::MAX)),
        ("n_kv_heads", serde_json::json!(64)),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["config"][field] = value.clone();
        let err = parse_manifest(m.to_string().as_bytes(), "edited").unwrap_err().to_string();
        assert!(err.contains(field), "{field} = {value}: {err}");
    }
    // Unrotated layers are looked up by bisection and name layers: ascending and below n_layers.
    for layers in [serde_json::json!([3, 1]), serde_json::json!([2, 2]), serde_json::json!([16])] {
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["config"]["rope"]["unrotated_layers"] = layers.clone();
        let err = parse_manifest(m.to_string().as_bytes(), "edited").unwrap_err().to_string();
        assert!(err.contains("unrotated_layers"), "{layers}: {err}");
    }
    // LongRoPE's factors: one per rotated pair (dim 64: 32), finite and positive; the engines divide
    // frequencies by them and index them by pair.
    let pairs = |v: f32, n: usize| vec![v; n];
    for (short, long) in
        [(pairs(1.0, 31), pairs(2.0, 32)), (pairs(1.0, 32), pairs(0.0, 32)), (pairs(-1.0, 32), pairs(2.0, 32))]
    {
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["config"]["rope"]["scaling"] = serde_json::json!({"type": "long_rope", "original_context_length": 4096,
            "attn_factor": 1.19, "short_factors": short, "long_factors": long});
        let err = parse_manifest(m.to_string().as_bytes(), "edited").unwrap_err().to_string();
        assert!(err.contains("rope.scaling"), "{err}");
    }
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["config"]["rope"]["scaling"] = serde_json::json!({"type": "long_rope", "original_context_length": 4096,
        "attn_factor": 1.19, "short_factors": pairs(1.0, 32), "long_factors": pairs(2.0, 32)});
    assert!(parse_manifest(m.to_string().as_bytes(), "edited").is_ok(), "a well-formed LongRoPE config is accepted");
}

/// A mixture of experts is bounded before any engine allocates for it: experts (an engine sizes a
/// router's logits and a list per expert by it), experts used (at most the experts), each expert's
/// rows, a shared expert's rows; and only a gated decoder has one. OLMoE's whole-vector QK-norm
/// needs the QK-norm. Each refusal names `moe` (or the flag); a well-formed mixture is accepted.
#[test]
fn absurd_mixtures_are_refused_by_name() {
    let path = common::repo_root().join("tests/fixtures/shapes/llama-3.2-1b-instruct/manifest.json");
    let text = std::fs::read_to_string(path).unwrap();
    let with = |moe: serde_json::Value, extra: Option<(&str, serde_json::Value)>| {
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["config"]["moe"] = moe;
        if let Some((k, v)) = extra {
            m["config"][k] = v;
        }
        parse_manifest(m.to_string().as_bytes(), "edited").map(drop)
    };
    let moe = |experts: u64, used: u64, rows: u64, shared: Option<u64>| {
        serde_json::json!({"experts": experts, "used": used, "expert_ffn_size": rows, "normalize": true,
            "shared_ffn_size": shared})
    };
    assert!(with(moe(8, 2, 1024, Some(2048)), None).is_ok(), "a well-formed mixture is accepted");
    for bad in [
        moe(0, 0, 1024, None),
        moe(1 << 20, 2, 1024, None),
        moe(8, 9, 1024, None),
        moe(8, 0, 1024, None),
        moe(8, 2, 0, None),
        moe(8, 2, 1 << 30, None),
        moe(8, 2, 1024, Some(1 << 30)),
    ] {
        let err = with(bad.clone(), None).unwrap_err().to_string();
        assert!(err.contains("moe"), "{bad}: {err}");
    }
    // A sigmoid router's scale and dense leading layers: finite and positive, fewer than the
    // layers (16); an unscaled shared expert needs one; an unknown gating is not read.
    let extend = |fields: serde_json::Value| {
        let mut m = moe(8, 2, 1024, Some(2048));
        m.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        m
    };
    let sigmoid = serde_json::json!({"gating": "sigmoid", "selection_bias": true, "weights_scale": 2.5,
        "dense_layers": 15, "shared_unscaled": true});
    assert!(with(extend(sigmoid), None).is_ok(), "a well-formed sigmoid mixture is accepted");
    for bad in [
        serde_json::json!({"weights_scale": 0.0}),
        serde_json::json!({"weights_scale": -1.0}),
        serde_json::json!({"weights_scale": 1e39}),
        serde_json::json!({"dense_layers": 16}),
        serde_json::json!({"dense_layers": 1u64 << 40}),
    ] {
        let err = with(extend(bad.clone()), None).unwrap_err().to_string();
        assert!(err.contains("moe"), "{bad}: {err}");
    }
    let unscaled_alone = serde_json::json!({"experts": 8, "used": 2, "expert_ffn_size": 1024, "normalize": true,
        "shared_unscaled": true});
    assert!(with(unscaled_alone, None).unwrap_err().to_string().contains("shared_unscaled"));
    assert!(with(extend(serde_json::json!({"gating": "relu"})), None).is_err(), "an unknown gating");
    let err = with(moe(8, 2, 1024, None), Some(("ffn", serde_json::json!("plain")))).unwrap_err().to_string();
    assert!(err.contains("mixture of experts"), "{err}");
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["config"]["qk_norm_whole"] = serde_json::json!(true);
    let err = parse_manifest(m.to_string().as_bytes(), "edited").unwrap_err().to_string();
    assert!(err.contains("qk_norm_whole"), "{err}");
}

/// A SmolLM3 GGUF claiming 2^32 - 1 layers: its unrotated layers (every fourth) are listed only up
/// to the layer limit, and the count is refused by name, before a list of a billion entries is built
/// (which took 24 GB and minutes).
#[test]
fn a_smollm3_with_billions_of_layers_is_refused_at_once() {
    let path = common::repo_root().join("tests/fixtures/tiny/smollm3.gguf");
    let mut bytes = std::fs::read(path).unwrap();
    let key = b"smollm3.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("the key") + key.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4, "stored as a u32");
    bytes[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let hostile = tmp.path().join("layers.gguf");
    std::fs::write(&hostile, &bytes).unwrap();
    let err = convert(&hostile, &tmp.path().join("out"), &ConvertOptions::default()).unwrap_err().to_string();
    assert!(err.contains("n_layers"), "{err}");
}

/// A tiny fixture's GGUF with the first occurrence of `from` replaced by `to` (same length), converted.
fn convert_patched(
    fixture: &str,
    from: &str,
    to: &str,
) -> (hearth_core::Result<hearth_core::manifest::Manifest>, bool) {
    let mut bytes = std::fs::read(common::repo_root().join(format!("tests/fixtures/tiny/{fixture}.gguf"))).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("the name");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("patched.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let out = tmp.path().join("out");
    let result = convert(&path, &out, &ConvertOptions::default());
    (result, out.exists())
}

/// A GGUF holding a tensor twice (here Qwen2's K renamed to Q) is refused by name instead of the
/// later one silently replacing the first; and a Phi-3 with one of LongRoPE's two factor tensors is
/// refused rather than converted without them. Nothing is written for either.
#[test]
fn a_tensor_twice_or_half_of_longrope_is_refused() {
    let (result, written) = convert_patched("qwen2", "blk.0.attn_k.weight", "blk.0.attn_q.weight");
    let err = result.unwrap_err().to_string();
    assert!(err.contains("`blk.0.attn_q.weight` twice"), "{err}");
    assert!(!written);
    let (result, written) = convert_patched("phi3", "rope_factors_short.weight", "rope_factors_shorx.weight");
    let err = result.unwrap_err().to_string();
    assert!(err.contains("rope_factors_long and rope_factors_short"), "{err}");
    assert!(!written);
}

/// A tensor whose shape multiplies past 64 bits (2^33 × 2^33): refused with a checked product,
/// where an unchecked one wraps to 0 and matches empty parts.
#[test]
fn a_tensor_shape_past_64_bits_is_refused() {
    let path = common::repo_root().join("tests/fixtures/shapes/llama-3.2-1b-instruct/manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    m["tensors"][0]["shape"] = serde_json::json!([1u64 << 33, 1u64 << 33]);
    let err = parse_manifest(m.to_string().as_bytes(), "edited").unwrap_err().to_string();
    assert!(err.contains("more elements than can be addressed"), "{err}");
}

/// The tiny Qwen2 GGUF with one F32 tensor's length patched to 2^62 values: 2^64 bytes, which a
/// wrapping product makes 0 bytes that "fit" the file. The reader refuses it, naming the tensor.
#[test]
fn a_gguf_tensor_whose_byte_count_wraps_is_refused() {
    let mut gguf = std::fs::read(common::repo_root().join("tests/fixtures/tiny/qwen2.gguf")).unwrap();
    let name = b"output_norm.weight";
    let at = gguf.windows(name.len()).position(|w| w == name).expect("the tensor's entry") + name.len();
    assert_eq!(gguf[at..at + 4], 1u32.to_le_bytes(), "one dimension");
    gguf[at + 4..at + 12].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let hostile = tmp.path().join("hostile.gguf");
    std::fs::write(&hostile, &gguf).unwrap();
    let err = GgufFile::open(&hostile).unwrap_err().to_string();
    assert!(err.contains("output_norm.weight") && err.contains("absurd dimensions"), "{err}");
}

/// A `tokenizer.json` whose `decoder` object holds a syntax error, a byte that is not UTF-8, or an
/// escape that is no character (found by the fuzz target `tokenizer_json`: the `tokenizers` library
/// panics on each instead of returning its error). Each is refused with a tokenizer error.
#[test]
fn a_tokenizer_json_broken_inside_its_decoder_is_refused() {
    let (json, info) = tiny_tokenizer("");
    let at = json.windows(10).position(|w| w == b"\"decoder\":").expect("a decoder") + 10;
    let close = at + json[at..].iter().position(|&b| b == b'}').expect("the decoder's end");
    for insert in [&b"!"[..], b",\"x\":\"\xee\"", b",\"x\":\"\\ud800\""] {
        let broken = [&json[..close], insert, &json[close..]].concat();
        let err = Prompter::new("hostile", &broken, info.clone()).err().expect("refused");
        assert!(matches!(&err, HearthError::Tokenizer(m) if m.contains("not JSON")), "{err}");
    }
}

fn tiny_package(dir: &Path) {
    let gguf = common::repo_root().join("tests/fixtures/tiny/qwen2.gguf");
    convert(&gguf, dir, &ConvertOptions::default()).unwrap();
}

/// The tiny Qwen2 GGUF with its context length patched to 2^32 - 1 (the same bytes, so every
/// offset stays right): `convert --force` over a good package fails naming the field, and the good
/// package is still there, whole.
#[test]
fn a_conversion_the_reader_would_refuse_never_replaces_a_package() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    tiny_package(&dir);
    let mut gguf = std::fs::read(common::repo_root().join("tests/fixtures/tiny/qwen2.gguf")).unwrap();
    let key = b"qwen2.context_length";
    let at = gguf.windows(key.len()).position(|w| w == key).expect("the key") + key.len();
    assert_eq!(gguf[at..at + 4], 4u32.to_le_bytes(), "a u32 value");
    gguf[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let hostile = tmp.path().join("hostile.gguf");
    std::fs::write(&hostile, &gguf).unwrap();
    let options = ConvertOptions { overwrite: true, ..ConvertOptions::default() };
    let err = convert(&hostile, &dir, &options).unwrap_err();
    assert!(err.to_string().contains("context_length"), "{err}");
    Package::open(&dir).unwrap().verify().unwrap();
}

#[test]
fn verify_checks_sizes_before_reading_and_refuses_device_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pkg");
    tiny_package(&dir);
    let package = Package::open(&dir).unwrap();
    package.verify().unwrap();
    let shard = dir.join(&package.manifest.shards[0].file);

    // A shard that is a link to an endless device: refused at once, without reading it.
    let saved = std::fs::read(&shard).unwrap();
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    let err = package.verify().unwrap_err();
    assert!(matches!(&err, HearthError::WrongSize { what, .. } if what.contains("not a regular file")), "{err}");

    // Cut short: the sizes, not two equal-looking hashes.
    std::fs::remove_file(&shard).unwrap();
    std::fs::write(&shard, &saved[..saved.len() - 1]).unwrap();
    let err = package.verify().unwrap_err();
    assert!(matches!(&err, HearthError::WrongSize { expected, actual, .. } if *expected == *actual + 1), "{err}");
}

#[test]
fn directories_left_by_killed_conversions_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    // No process has this id (Linux caps ids at 2^22); process 1 always exists.
    let stale = tmp.path().join(".pkg.partial-999999999");
    let live = tmp.path().join(".pkg.partial-1");
    for d in [&stale, &live] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("shard-00000.bin"), b"half a shard").unwrap();
    }
    tiny_package(&tmp.path().join("pkg"));
    assert!(!stale.exists(), "the dead conversion's directory is gone");
    assert!(live.exists(), "a running conversion's directory is left alone");
}
