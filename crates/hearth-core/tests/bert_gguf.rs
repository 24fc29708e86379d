//! BERT encoders from GGUF (llama.cpp's `bert` architecture): a tiny random BERT with
//! all-MiniLM-L6-v2's real vocabulary, converted by llama.cpp's own `convert_hf_to_gguf.py`
//! (tests/fixtures/make_tiny_bert.py writes it and its oracles to tests/fixtures/tiny_bert/).
//!
//! - Its package embeds as llama.cpp and as sentence-transformers do, on both CPU engines, with
//!   each of llama.cpp's poolings (mean, CLS, last).
//! - Its tokenizer gives the model's own tokenizer.json's ids on every text, and llama.cpp's but where
//!   llama.cpp's WordPiece departs from BERT's (named below).
//! - The package from the GGUF is the package from the model's Transformers directory (config,
//!   tokenizer, tensors, embeddings), but for the one thing the GGUF does not keep (sentence-
//!   transformers' `max_seq_length`).
//! - What Hearth does not run is refused by name: pooling none or rank, a causal `bert`, no
//!   token-type table or count, a vocabulary other than WordPiece.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hearth_core::convert::{convert, plan_gguf, ConvertOptions, GgufStream};
use hearth_core::cpu::CpuEngine;
use hearth_core::fast::FastEngine;
use hearth_core::gguf::GgufFile;
use hearth_core::manifest::{EncoderConfig, Pooling};
use hearth_core::model::Model;
use serde_json::Value;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| common::fixture("tiny_bert/bert.json"))
}

fn gguf_path() -> PathBuf {
    common::repo_root().join("tests/fixtures/tiny_bert/bert.gguf")
}

/// The tiny BERT's GGUF converted with default options (`keep`: Q8_0 matrices as q8, the position
/// and token-type tables and every vector f32), once per test process.
fn package() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = common::scratch_dir().join("bert");
        convert(&gguf_path(), &out, &ConvertOptions::default()).unwrap();
        out
    })
    .clone()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Against sentence-transformers (exact GELU, f32 torch): the same function of the same numbers, so
/// only summation order separates the two. Components are O(1) (LayerNorm outputs, mean-pooled);
/// f32 rounding through two layers moves them by ~1e-6. The tanh GELU in place of the exact one
/// moves them by ~5e-4 (as llama.cpp's do), fifty times this bound.
const EXACT_MAX_ABS: f32 = 1e-5;

/// Against llama.cpp (on its F32 copy of the GGUF: f32 products): ggml's GELU is the tanh
/// approximation read from an f16 table (its input rounded to 11 bits), where BERT's is exact. That
/// alone puts sentence-transformers 6.1e-4 from llama.cpp (the fixture's
/// `checks.max_abs_llama_cpp_vs_sentence_transformers_unnormalized_mean`); Hearth, computing BERT's
/// exact GELU, must be no farther from llama.cpp than the exact reference is, to within f32
/// rounding (`EXACT_MAX_ABS`), and within 2e-3 of it for every pooling (CLS and last-token
/// vectors are single rows, not means, so their GELU error averages out less).
const LLAMA_CPP_MAX_ABS: f32 = 2e-3;
/// Cosine to llama.cpp's vector: the GELU difference turns the vectors by ~1e-7 (1 - cosine).
const LLAMA_CPP_COSINE: f64 = 0.99999;

/// The fast engine on q8 weights quantizes each token's activations to 8 bits before its integer
/// products (as llama.cpp's CPU products do for Q8_0 weights: llama.cpp on the stored Q8_0 file is
/// 0.02-0.04 from itself on the F32 copy, `checks.max_abs_llama_cpp_q8_file_vs_f32`). Hidden 32 is the
/// worst case for that rounding (each product sums 32 terms; errors do not average out); its
/// vectors must still point where the exact ones do.
const FAST_Q8_MAX_ABS: f32 = 0.05;
const FAST_Q8_COSINE: f64 = 0.9995;

/// The texts whose llama.cpp token ids are not the model's tokenizer's: llama.cpp strips every
/// combining mark (\p{M}) where BERT strips nonspacing ones (Mn) only, so Hangul's vowel and final
/// jamo after decomposition (36 Korean, 60 mixed CJK with Korean) and Devanagari's vowel signs (38
/// Hindi) vanish; and it splits a word of over 100 characters (54) where BERT gives [UNK]. Hearth
/// follows the model's tokenizer, which the model was trained with.
const LLAMA_CPP_DIFFERS: [u64; 4] = [36, 38, 54, 60];

#[test]
fn tiny_bert_from_gguf_embeds_as_llama_cpp_and_sentence_transformers() {
    let fx = fixture();
    let dir = package();
    let mut model = Model::open(&dir).unwrap();
    let manifest = model.package.manifest.clone();
    assert_eq!(manifest.architecture, "bert");
    let c = &manifest.config;
    let hf = &fx["hf_config"];
    assert_eq!(
        (c.n_layers, c.hidden_size, c.n_heads, c.ffn_size, c.vocab_size, c.context_length),
        (2, 32, 4, 128, 30522, 512)
    );
    assert_eq!(c.hidden_size as u64, hf["hidden_size"].as_u64().unwrap());
    assert_eq!(c.norm_eps, hf["layer_norm_eps"].as_f64().unwrap() as f32);
    let encoder = c.encoder.clone().expect("an encoder");
    assert_eq!(encoder, EncoderConfig { pooling: Pooling::Mean, normalize: true, max_tokens: 512, token_types: 2 });
    // llama.cpp's names became the package's.
    let names: Vec<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
    for name in ["blk.1.attn_norm.weight", "blk.1.attn_norm.bias", "blk.1.ffn_norm.weight", "token_types.weight"] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("output_norm")), "{names:?}");

    let mut exact = CpuEngine::from_package(&model.package).unwrap();
    let mut fast = FastEngine::from_package(&model.package).unwrap();
    let texts = fx["texts"].as_array().unwrap();
    let gap = fx["checks"]["max_abs_llama_cpp_vs_sentence_transformers_unnormalized_mean"].as_f64().unwrap() as f32;
    let (mut worst_st, mut worst_llama, mut least_cos, mut worst_fast, mut least_fast_cos) =
        (0f32, 0f32, 1f64, 0f32, 1f64);
    for (k, i) in fx["embed_texts"].as_array().unwrap().iter().enumerate() {
        let i = i.as_u64().unwrap() as usize;
        let text = texts[i].as_str().unwrap();
        let tokens = model.prompter.tokenizer.encode_for_embedding(text, encoder.max_tokens).unwrap();
        assert_eq!(tokens, ids(&fx["token_ids_llama_cpp"][i]), "text {i} {text:?}: llama.cpp's ids");
        let label = format!("text {i} {text:?}");

        // sentence-transformers: normalized (the model's Normalize) and not.
        let ours = exact.embed(&tokens).unwrap();
        let raw = exact.embed_with(&tokens, Some(false)).unwrap();
        let st = floats(&fx["embeddings_sentence_transformers"][k]);
        let st_raw = floats(&fx["embeddings_sentence_transformers_unnormalized"][k]);
        let d = max_abs(&ours, &st).max(max_abs(&raw, &st_raw));
        assert!(d <= EXACT_MAX_ABS, "{label}: {d} from sentence-transformers");
        worst_st = worst_st.max(d);

        // llama.cpp, mean pooled (the file's pooling), not normalized.
        let llama = floats(&fx["embeddings_llama_cpp"]["mean"][k]);
        let d = max_abs(&raw, &llama);
        let cos = cosine(&raw, &llama);
        assert!(d <= LLAMA_CPP_MAX_ABS && d <= gap + EXACT_MAX_ABS, "{label}: {d} from llama.cpp");
        assert!(cos >= LLAMA_CPP_COSINE, "{label}: cosine {cos} to llama.cpp");
        worst_llama = worst_llama.max(d);
        least_cos = least_cos.min(cos);

        let fast_raw = fast.embed_with(&tokens, Some(false)).unwrap();
        let d = max_abs(&fast_raw, &raw);
        let cos = cosine(&fast_raw, &raw);
        assert!(d <= FAST_Q8_MAX_ABS && cos >= FAST_Q8_COSINE, "{label}: the fast engine is {d} (cosine {cos}) off");
        worst_fast = worst_fast.max(d);
        least_fast_cos = least_fast_cos.min(cos);
    }
    eprintln!(
        "mean pooling: max |exact - sentence-transformers| {worst_st:.2e}; max |exact - llama.cpp| {worst_llama:.2e} \
         (sentence-transformers - llama.cpp: {gap:.2e}), 1 - least cosine {:.2e}; fast (q8) vs exact: max {worst_fast:.2e}, \
         1 - least cosine {:.2e}",
        1.0 - least_cos,
        1.0 - least_fast_cos
    );
}

/// llama.cpp's CLS (2) and last-token (3) poolings: the GGUF with `bert.pooling_type` changed gives
/// a package that pools so, as llama.cpp does with that pooling.
#[test]
fn each_llama_cpp_pooling_gives_llama_cpps_vectors() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for (value, pooling, name) in [(1u32, Pooling::Mean, "mean"), (2, Pooling::Cls, "cls"), (3, Pooling::Last, "last")]
    {
        let gguf = patched(tmp.path(), name, |bytes| *u32_value(bytes, "bert.pooling_type") = value.to_le_bytes());
        let dir = tmp.path().join(format!("{name}-package"));
        let manifest = convert(&gguf, &dir, &ConvertOptions::default()).unwrap();
        assert_eq!(manifest.config.encoder.as_ref().unwrap().pooling, pooling);
        let mut model = Model::open(&dir).unwrap();
        let mut exact = CpuEngine::from_package(&model.package).unwrap();
        let mut fast = FastEngine::from_package(&model.package).unwrap();
        let (mut worst, mut least, mut fast_least) = (0f32, 1f64, 1f64);
        for (k, i) in fx["embed_texts"].as_array().unwrap().iter().enumerate() {
            let text = fx["texts"][i.as_u64().unwrap() as usize].as_str().unwrap();
            let tokens = model.prompter.tokenizer.encode_for_embedding(text, 512).unwrap();
            let ours = exact.embed_with(&tokens, Some(false)).unwrap();
            let llama = floats(&fx["embeddings_llama_cpp"][name][k]);
            let (d, cos) = (max_abs(&ours, &llama), cosine(&ours, &llama));
            assert!(d <= LLAMA_CPP_MAX_ABS && cos >= LLAMA_CPP_COSINE, "{name} {text:?}: {d}, cosine {cos}");
            worst = worst.max(d);
            least = least.min(cos);
            let fast_cos = cosine(&fast.embed_with(&tokens, Some(false)).unwrap(), &ours);
            assert!(fast_cos >= FAST_Q8_COSINE, "{name} {text:?}: the fast engine's cosine {fast_cos}");
            fast_least = fast_least.min(fast_cos);
        }
        eprintln!(
            "{name} pooling: max |exact - llama.cpp| {worst:.2e}, 1 - least cosine {:.2e}; fast: 1 - least cosine {:.2e}",
            1.0 - least,
            1.0 - fast_least
        );
    }
}

#[test]
fn tiny_bert_tokenizer_gives_the_models_ids_and_llama_cpps_but_where_llama_cpp_departs_from_bert() {
    let fx = fixture();
    let mut model = Model::open(package()).unwrap();
    let texts = fx["texts"].as_array().unwrap();
    assert!(texts.len() >= 60, "the 53 MiniLM texts and the edge cases");
    let differs: Vec<u64> =
        fx["texts_where_llama_cpp_differs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(differs, LLAMA_CPP_DIFFERS, "llama.cpp's tokenizer departs from BERT's on other texts now");
    let minilm = common::fixture("minilm/embeddings.json");
    let max_seq = fx["max_seq_length"].as_u64().unwrap() as usize;
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let ours = model.prompter.tokenizer.encode_for_embedding(text, 100_000).unwrap();
        assert_eq!(ours, ids(&fx["token_ids_tokenizer_json"][i]), "text {i} {text:?}: tokenizer.json's ids");
        let llama = ids(&fx["token_ids_llama_cpp"][i]);
        assert_eq!(ours == llama, !differs.contains(&(i as u64)), "text {i} {text:?}: llama.cpp's ids {llama:?}");
        // The MiniLM fixture's ids (sentence-transformers', cut at max_seq_length).
        if let Some(expected) = minilm["token_ids"].get(i) {
            let cut = model.prompter.tokenizer.encode_for_embedding(text, max_seq).unwrap();
            assert_eq!(cut, ids(expected), "text {i} {text:?}: sentence-transformers' ids");
        }
    }
}

/// The tiny model's Transformers directory, rebuilt: config.json as the generator saved it, the real
/// MiniLM's tokenizer and sentence-transformers files (which the generator copied), and the
/// weights read from the GGUF under Transformers' names (exactly the saved model's: the generator
/// checked that llama.cpp's converter changed no weight, `checks.max_abs_hf_vs_gguf_weights` = 0).
fn transformers_directory(at: &Path) -> PathBuf {
    let hf = at.join("tiny-bert");
    std::fs::create_dir_all(hf.join("1_Pooling")).unwrap();
    std::fs::write(hf.join("config.json"), fixture()["hf_config"].to_string()).unwrap();
    let minilm = common::minilm_dir();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(minilm.join(f), hf.join(f)).unwrap();
    }
    let gguf = GgufFile::open(gguf_path()).unwrap();
    let mut tensors = Vec::new();
    for info in &gguf.tensors {
        let hf_name = match info.name.as_str() {
            "token_embd.weight" => "embeddings.word_embeddings.weight".to_string(),
            "position_embd.weight" => "embeddings.position_embeddings.weight".to_string(),
            "token_types.weight" => "embeddings.token_type_embeddings.weight".to_string(),
            "token_embd_norm.weight" => "embeddings.LayerNorm.weight".to_string(),
            "token_embd_norm.bias" => "embeddings.LayerNorm.bias".to_string(),
            name => {
                let mut parts = name.split('.');
                let (Some("blk"), Some(layer), Some(part), Some(kind)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    panic!("unexpected tensor {name}")
                };
                let module = match part {
                    "attn_q" => "attention.self.query",
                    "attn_k" => "attention.self.key",
                    "attn_v" => "attention.self.value",
                    "attn_output" => "attention.output.dense",
                    "attn_output_norm" => "attention.output.LayerNorm",
                    "ffn_up" => "intermediate.dense",
                    "ffn_down" => "output.dense",
                    "layer_output_norm" => "output.LayerNorm",
                    other => panic!("unexpected tensor part {other}"),
                };
                format!("encoder.layer.{layer}.{module}.{kind}")
            }
        };
        let values =
            hearth_core::ggml_quants::dequantize(info.ggml_type, &gguf.read_tensor(info).unwrap(), &info.name).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((hf_name, info.shape(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &hf.join("model.safetensors")).unwrap();
    hf
}

#[test]
fn the_package_from_the_gguf_is_the_package_from_the_transformers_directory() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let hf = transformers_directory(tmp.path());
    let from_hf = tmp.path().join("from-hf");
    let hf_manifest = convert(&hf, &from_hf, &ConvertOptions::default()).unwrap();
    let gguf_manifest = Model::open(package()).unwrap().package.manifest.clone();
    assert_eq!(hf_manifest.architecture, gguf_manifest.architecture);

    // The one difference: the GGUF does not keep sentence-transformers' max_seq_length (256 here), so
    // its package cuts texts at the whole context, as llama.cpp does.
    let (mut hf_config, gguf_config) = (hf_manifest.config.clone(), gguf_manifest.config.clone());
    let max_seq = fx["max_seq_length"].as_u64().unwrap() as usize;
    assert_eq!(hf_config.encoder.as_ref().unwrap().max_tokens, max_seq);
    assert_eq!(gguf_config.encoder.as_ref().unwrap().max_tokens, gguf_config.context_length);
    hf_config.encoder.as_mut().unwrap().max_tokens = gguf_config.context_length;
    assert_eq!(hf_config, gguf_config, "config");
    assert_eq!(hf_manifest.tokenizer, gguf_manifest.tokenizer, "tokenizer info");
    let shapes = |m: &hearth_core::manifest::Manifest| {
        let mut v: Vec<(String, Vec<usize>)> = m.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&hf_manifest), shapes(&gguf_manifest), "tensors");

    let mut a = Model::open(&from_hf).unwrap();
    let mut b = Model::open(package()).unwrap();
    let mut engine_a = CpuEngine::from_package(&a.package).unwrap();
    let mut engine_b = CpuEngine::from_package(&b.package).unwrap();
    let mut worst = 0f32;
    for (i, text) in fx["texts"].as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        let ids_a = a.prompter.tokenizer.encode_for_embedding(text, 100_000).unwrap();
        let ids_b = b.prompter.tokenizer.encode_for_embedding(text, 100_000).unwrap();
        assert_eq!(ids_a, ids_b, "text {i} {text:?}");
        if ids_a.len() > max_seq {
            continue;
        }
        // The same numbers (f32 in one package, q8 blocks in the other), the same function.
        let (ea, eb) = (engine_a.embed(&ids_a).unwrap(), engine_b.embed(&ids_b).unwrap());
        let d = max_abs(&ea, &eb);
        assert!(d <= EXACT_MAX_ABS, "text {i} {text:?}: {d}");
        worst = worst.max(d);
    }
    // And the Transformers package is sentence-transformers' model (the rebuilt directory is right).
    for (k, i) in fx["embed_texts"].as_array().unwrap().iter().enumerate() {
        let text = fx["texts"][i.as_u64().unwrap() as usize].as_str().unwrap();
        let tokens = a.prompter.tokenizer.encode_for_embedding(text, max_seq).unwrap();
        let d = max_abs(&engine_a.embed(&tokens).unwrap(), &floats(&fx["embeddings_sentence_transformers"][k]));
        assert!(d <= EXACT_MAX_ABS, "{text:?}: the Transformers package is {d} from sentence-transformers");
    }
    eprintln!("GGUF package vs Transformers package: max |difference| {worst:.2e}");
}

/// Where `key`'s u32 value lies in a GGUF's bytes (after the key's text and its type, 4 = u32).
fn u32_value<'a>(bytes: &'a mut [u8], key: &str) -> &'a mut [u8; 4] {
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes()).expect("the key") + key.len();
    assert_eq!(bytes[at..at + 4], 4u32.to_le_bytes(), "{key} is a u32");
    (&mut bytes[at + 4..at + 8]).try_into().unwrap()
}

/// Replace the first `from` in the GGUF's bytes by `to` (of the same length).
fn rename(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("the text");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
}

/// The tiny BERT's GGUF with `edit` applied, written as `{name}.gguf` under `dir`.
fn patched(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(gguf_path()).unwrap();
    edit(&mut bytes);
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A change to a GGUF's bytes.
type Edit = dyn FnOnce(&mut Vec<u8>);

#[test]
fn a_bert_gguf_hearth_cannot_run_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Box<Edit>, &str)> = vec![
        (
            "pooling-none",
            Box::new(|b| *u32_value(b, "bert.pooling_type") = 0u32.to_le_bytes()),
            "pooling_type` 0 (none",
        ),
        (
            "pooling-rank",
            Box::new(|b| *u32_value(b, "bert.pooling_type") = 4u32.to_le_bytes()),
            "pooling_type` 4 (rank",
        ),
        ("pooling-9", Box::new(|b| *u32_value(b, "bert.pooling_type") = 9u32.to_le_bytes()), "pooling_type` 9"),
        (
            "causal",
            Box::new(|b| {
                let key = b"bert.attention.causal";
                let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
                assert_eq!(b[at..at + 4], 7u32.to_le_bytes(), "a bool");
                b[at + 4] = 1;
            }),
            "a causal `bert`",
        ),
        ("no-token-types", Box::new(|b| rename(b, "token_types.weight", "token_typez.weight")), "`token_types.weight`"),
        (
            "no-type-count",
            Box::new(|b| rename(b, "tokenizer.ggml.token_type_count", "tokenizer.ggml.token_type_kount")),
            "`tokenizer.ggml.token_type_count`",
        ),
        (
            "bpe-vocabulary",
            Box::new(|b| {
                let key = b"tokenizer.ggml.model";
                let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
                // Type 8 (string), length 4, "bert".
                assert_eq!(b[at + 12..at + 16], *b"bert");
                b[at + 12..at + 16].copy_from_slice(b"gpt2");
            }),
            "a `bert` with a `gpt2` vocabulary",
        ),
        (
            "positions",
            Box::new(|b| *u32_value(b, "bert.context_length") = 256u32.to_le_bytes()),
            "`position_embd.weight` has 512 rows for a `bert.context_length` of 256",
        ),
    ];
    for (name, edit, expected) in cases {
        let gguf = patched(tmp.path(), name, edit);
        let err = convert(&gguf, &tmp.path().join(name), &ConvertOptions::default()).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!tmp.path().join(name).exists(), "{name}: a package was left");
        // Planning from the header (what the browser does first) and the streaming converter refuse
        // it the same way.
        let err = plan_gguf(&gguf, &ConvertOptions::default()).unwrap_err().to_string();
        assert!(err.contains(expected), "{name} (plan): {err}");
        let err = GgufStream::new(GgufFile::open(&gguf).unwrap(), ConvertOptions::default()).err().unwrap().to_string();
        assert!(err.contains(expected), "{name} (stream): {err}");
    }
}
