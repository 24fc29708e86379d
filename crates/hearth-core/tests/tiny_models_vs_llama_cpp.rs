//! Tiny random models of each supported architecture (`tests/fixtures/tiny/`, written by
//! `tests/fixtures/make_tiny.py`) through the converter and the CPU reference engine, against
//! llama.cpp's logits at every position of two token sequences.
//!
//! Fixtures of architectures the engines do not run (none at present) are skipped here, by name.
//!
//! Tolerance: 2e-4 absolute on logits of standard deviation 1.5-3. llama.cpp evaluated the stored
//! weights decoded to F32 (exactly their F16/Q8_0 values) with an F32 KV cache, so both sides compute
//! the same function in f32 and differ only in summation order: llama.cpp's own batch vs
//! token-by-token evaluations differ by ~1e-5 (`checks_max_abs` in each fixture). Dropping the K
//! bias or the RoPE frequency factors moves logits by 0.1 or more (checked by breaking the engine on
//! purpose). The Mistral-style fixture's window is applied by llama.cpp itself, one token at a time
//! with the cache cells before the window removed (see make_tiny.py).
//!
//! GELU models (Gemma's GeGLU, BLOOM's and GPT-2's MLPs) are the exception: llama.cpp's CPU GELU
//! is an f16 lookup table (its input and output rounded to f16), which moves its logits by a few
//! 1e-3 from an f32 engine computing the exact tanh-GELU (`numpy_f64_vs_oracle` in the fixture). Those fixtures also hold
//! `logits_f64_exact_gelu`, an independent float64 numpy forward pass with the exact tanh-GELU
//! written by make_tiny.py: the engine must match it within the same 2e-4, and llama.cpp within
//! `GELU_TABLE_TOLERANCE`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::repo_root;
use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
use hearth_core::manifest::{RopeScaling, RopeStyle, ARCHITECTURES, ENCODER_ARCHITECTURES};
use hearth_core::package::{Package, TensorSource};

const TOLERANCE: f32 = 2e-4;
/// Against llama.cpp's f16 GELU table: over twice the largest measured difference of the float64
/// pass (`numpy_f64_vs_oracle`: 2.1e-3 to 4.4e-3).
const GELU_TABLE_TOLERANCE: f32 = 1e-2;

struct Sequence {
    tokens: Vec<u32>,
    /// llama.cpp's logits at every position, `[position][vocab]` flattened.
    llama_cpp: Vec<f32>,
    /// For GELU models: the float64 pass with the exact GELU (see the module comment).
    exact_gelu: Option<Vec<f32>>,
    /// For LongRoPE models: llama.cpp's logits at the original context (the short factors).
    short_factors: Option<Vec<f32>>,
}

impl Sequence {
    /// The logits this engine must match within `TOLERANCE`.
    fn tight(&self) -> &[f32] {
        self.exact_gelu.as_deref().unwrap_or(&self.llama_cpp)
    }
}

struct Fixture {
    name: String,
    gguf: PathBuf,
    architecture: String,
    sequences: Vec<Sequence>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = repo_root().join("tests/fixtures/tiny");
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let architecture = fx["arch"].as_str().unwrap().to_string();
        if !ARCHITECTURES.contains(&architecture.as_str()) {
            eprintln!("{}: architecture `{architecture}` not supported yet, skipped", path.display());
            continue;
        }
        let sequences = fx["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let tokens = s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
                let rows = |v: &serde_json::Value| -> Vec<f32> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
                        .collect()
                };
                let exact_gelu = s.get("logits_f64_exact_gelu").map(rows);
                let short_factors = s.get("logits_short_factors").map(rows);
                Sequence { tokens, llama_cpp: rows(&s["logits"]), exact_gelu, short_factors }
            })
            .collect();
        out.push(Fixture {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            gguf: dir.join(fx["gguf"].as_str().unwrap()),
            architecture,
            sequences,
        });
    }
    out
}

fn convert_to(input: &Path, out: &Path) -> Package {
    convert(input, out, &ConvertOptions::default()).unwrap_or_else(|e| panic!("convert {}: {e}", input.display()));
    Package::open(out).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// The fixture llama.cpp quantized itself (Q5_K_M) converts with every tensor in the encoding that
/// keeps its GGUF type, so `cpu_logits_match_llama_cpp_at_every_position` compares the very weights
/// llama.cpp ran: q5k and q6k (and its layer 1 mixes them across Q, K and V, which the GPU engine
/// then runs as separate pieces of one product).
#[test]
fn a_k_quant_model_keeps_every_tensor_as_llama_cpp_wrote_it() {
    let fx = fixtures().into_iter().find(|f| f.name == "llama_q5_k_m").expect("llama_q5_k_m fixture");
    let tmp = tempfile::tempdir().unwrap();
    let package = convert_to(&fx.gguf, &tmp.path().join("p"));
    let gguf = hearth_core::gguf::GgufFile::open(&fx.gguf).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for info in &gguf.tensors {
        let entry = package.manifest().tensors.iter().find(|t| t.name == info.name).unwrap();
        let kept = match info.ggml_type.name().as_str() {
            "Q5_K" => "q5k",
            "Q6_K" => "q6k",
            "F32" => "f32",
            other => panic!("{}: unexpected {other}", info.name),
        };
        assert_eq!(entry.dtype.name(), kept, "{}", info.name);
        kinds.insert(kept);
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["f32", "q5k", "q6k"]);
    let dtype = |name: &str| package.manifest().tensors.iter().find(|t| t.name == name).unwrap().dtype.name();
    assert_ne!(dtype("blk.1.attn_q.weight"), dtype("blk.1.attn_v.weight"), "layer 1's Q, K and V should mix encodings");
}

#[test]
fn every_supported_architecture_has_a_tiny_fixture() {
    let covered: Vec<String> = fixtures().into_iter().map(|f| f.architecture).collect();
    // Decoders: the encoders' oracle is sentence-transformers (tests/embeddings.rs).
    for arch in ARCHITECTURES.iter().filter(|a| !ENCODER_ARCHITECTURES.contains(a)) {
        assert!(covered.iter().any(|a| a == arch), "no tests/fixtures/tiny model for `{arch}`");
    }
}

/// A model of another architecture is refused by name, before anything is written.
/// What make_tiny.py says of each model (where its JSON records it: the fixtures written since) and
/// what the converter reads from the GGUF agree: the layers without RoPE and the QK-norm.
#[test]
fn the_converted_config_says_what_the_fixture_says() {
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for fx in fixtures() {
        let path = repo_root().join(format!("tests/fixtures/tiny/{}.json", fx.name));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (Some(unrotated), Some(qk_norm)) = (json["config"].get("unrotated_layers"), json["config"].get("qk_norm"))
        else {
            continue;
        };
        let c = convert_to(&fx.gguf, &tmp.path().join(&fx.name)).manifest().config.clone();
        let unrotated: Vec<usize> = serde_json::from_value(unrotated.clone()).unwrap();
        let converted: Vec<usize> = (0..c.n_layers).filter(|&l| !c.layer_rotates(l)).collect();
        assert_eq!(converted, unrotated, "{}: unrotated layers", fx.name);
        assert_eq!(c.qk_norm, qk_norm.as_bool().unwrap(), "{}: QK-norm", fx.name);
        let whole = json["config"].get("qk_norm_whole").is_some_and(|w| w.as_bool() == Some(true));
        assert_eq!(c.qk_norm_whole, whole, "{}: QK-norm over whole queries and keys", fx.name);
        // Granite's multipliers (make_tiny.py records the last two for Granite only).
        let scale = |key: &str| json["config"].get(key).and_then(serde_json::Value::as_f64).map(|v| v as f32);
        assert_eq!(c.embedding_scale, scale("embedding_scale"), "{}: embedding scale", fx.name);
        assert_eq!(c.attention_scale(), scale("attention_scale").unwrap(), "{}: attention scale", fx.name);
        assert_eq!(c.residual_scale, scale("residual_scale"), "{}: residual scale", fx.name);
        assert_eq!(c.logit_divisor, scale("logit_divisor"), "{}: logit divisor", fx.name);
        checked += 1;
    }
    assert!(checked >= 2, "the Qwen3 and SmolLM3 fixtures record both");
}

/// Granite's refusals, each by name and before anything is written: a `granite` whose
/// `rope.scaling.finetuned` is false (no RoPE in llama.cpp), and multipliers that are not positive
/// numbers (a negative residual scale, a logit scale of 0: llama.cpp would divide by it, a NaN, an
/// infinity); and a config that says so is refused by `validate`. A residual scale of 0 is
/// llama.cpp's "none", and converts as none.
#[test]
fn granite_without_rope_or_with_a_non_positive_multiplier_is_refused_by_name() {
    let fx = fixtures().into_iter().find(|f| f.name == "granite").expect("granite fixture");
    let original = std::fs::read(&fx.gguf).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let patched = |key: &str, ty: u32, value: &[u8]| {
        let path = tmp.path().join("patched.gguf");
        std::fs::write(&path, with_key(&original, key, ty, value)).unwrap();
        path
    };
    for (key, ty, value, expected) in [
        ("granite.rope.scaling.finetuned", GGUF_BOOL, vec![0u8], "a `granite` without RoPE"),
        ("granite.residual_scale", GGUF_F32, (-0.22f32).to_le_bytes().to_vec(), "`granite.residual_scale` is -0.22"),
        ("granite.logit_scale", GGUF_F32, 0f32.to_le_bytes().to_vec(), "`granite.logit_scale` is 0"),
        ("granite.embedding_scale", GGUF_F32, f32::NAN.to_le_bytes().to_vec(), "`granite.embedding_scale` is NaN"),
        ("granite.attention.scale", GGUF_F32, f32::INFINITY.to_le_bytes().to_vec(), "`granite.attention.scale` is inf"),
    ] {
        let out = tmp.path().join("out");
        let err = convert(&patched(key, ty, &value), &out, &ConvertOptions::default()).unwrap_err().to_string();
        assert!(err.contains(expected), "{key}: {err}");
        assert!(!out.exists(), "nothing is written for a refused model");
    }
    let none = patched("granite.residual_scale", GGUF_F32, &0f32.to_le_bytes());
    let package = convert_to(&none, &tmp.path().join("no-residual-scale"));
    let c = package.manifest().config.clone();
    assert_eq!(c.residual_scale, None);
    for (name, bad) in [
        ("residual_scale", hearth_core::manifest::ModelConfig { residual_scale: Some(-0.5), ..c.clone() }),
        ("residual_scale", hearth_core::manifest::ModelConfig { residual_scale: Some(f32::NAN), ..c.clone() }),
        ("logit_divisor", hearth_core::manifest::ModelConfig { logit_divisor: Some(0.0), ..c.clone() }),
        ("logit_divisor", hearth_core::manifest::ModelConfig { logit_divisor: Some(f32::INFINITY), ..c.clone() }),
    ] {
        let err = bad.validate().unwrap_err();
        assert!(err.contains(&format!("{name} ")) && err.contains("must be a positive number"), "{err}");
    }
}

#[test]
fn an_unsupported_architecture_is_named_in_the_error() {
    let fx = fixtures().into_iter().find(|f| f.name == "qwen2").expect("qwen2 fixture");
    let mut bytes = std::fs::read(&fx.gguf).unwrap();
    // general.architecture is the file's first metadata value: "qwen2" -> "mamba" (same length).
    let at = bytes.windows(5).position(|w| w == b"qwen2").unwrap();
    bytes[at..at + 5].copy_from_slice(b"mamba");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mamba.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = convert(&path, &tmp.path().join("out"), &ConvertOptions::default()).unwrap_err().to_string();
    assert!(err.contains("unsupported architecture `mamba`") && err.contains("llama, qwen2"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing is written for a refused model");
}

#[test]
fn cpu_logits_match_llama_cpp_at_every_position() {
    let tmp = tempfile::tempdir().unwrap();
    for fx in fixtures() {
        let package = convert_to(&fx.gguf, &tmp.path().join(&fx.name));
        assert_eq!(package.manifest().architecture, fx.architecture);
        let mut engine = CpuEngine::from_package(&package).unwrap();
        for seq in &fx.sequences {
            let (tokens, want) = (&seq.tokens, seq.tight());
            engine.reset();
            let batch = engine.forward(tokens, true).unwrap();
            let diff = max_diff(&batch, want);
            eprintln!("{}: {} tokens, max |CPU - oracle| = {diff:.2e}", fx.name, tokens.len());
            assert!(diff <= TOLERANCE, "{}: logits differ from the fixture's oracle by {diff}", fx.name);
            if seq.exact_gelu.is_some() {
                let diff = max_diff(&batch, &seq.llama_cpp);
                eprintln!("{}: {} tokens, max |CPU - llama.cpp (f16 GELU)| = {diff:.2e}", fx.name, tokens.len());
                assert!(diff <= GELU_TABLE_TOLERANCE, "{}: logits differ from llama.cpp by {diff}", fx.name);
            }

            // One token at a time through the KV cache gives the same logits.
            engine.reset();
            let vocab = want.len() / tokens.len();
            for (t, &token) in tokens.iter().enumerate() {
                let logits = engine.forward(&[token], false).unwrap();
                let diff = max_diff(&logits, &batch[t * vocab..(t + 1) * vocab]);
                assert!(diff <= 1e-4, "{}: token {t} alone differs from the batch by {diff}", fx.name);
            }
        }
    }
}

/// Generation far past the window: 120 positions with a window of 8 (the ring of each layer wraps
/// 15 times). With 2 layers each seeing 8 keys, the last logits depend only on the last
/// 2 * (8 - 1) + 1 = 15 tokens, and RoPE only on relative positions, so they must equal the logits
/// of those 15 tokens run from position 0 (tolerance: f32 rotations at positions ~100 against ~10,
/// measured below 1e-5). The cache holds 8 rows per layer, not 120.
#[test]
fn a_windowed_model_stays_correct_and_bounded_far_past_its_window() {
    let fx = fixtures().into_iter().find(|f| f.name == "mistral_swa").expect("mistral_swa fixture");
    let tmp = tempfile::tempdir().unwrap();
    let package = convert_to(&fx.gguf, &tmp.path().join("m"));
    let c = package.manifest().config.clone();
    assert_eq!(c.sliding_window, Some(8));
    let tokens: Vec<u32> = (0..120u32).map(|i| (i * 37 + 11) % c.vocab_size as u32).collect();
    let mut engine = CpuEngine::from_package(&package).unwrap();
    engine.forward(&tokens[..40], false).unwrap();
    let mut last = Vec::new();
    for &t in &tokens[40..] {
        last = engine.forward(&[t], false).unwrap();
    }
    let rows = hearth_core::generate::ring_rows(8);
    assert_eq!(engine.kv_cache_bytes(), c.n_layers * 2 * rows * c.kv_dim() * 4, "the cache is a ring of {rows} rows");
    let field = c.n_layers * (8 - 1) + 1;
    engine.reset();
    let fresh = engine.forward(&tokens[120 - field..], false).unwrap();
    let diff = max_diff(&last, &fresh);
    eprintln!("mistral_swa: position 119 vs the same 15 tokens from position 0: {diff:.2e}");
    assert!(diff <= 1e-4, "far past the window the logits differ by {diff}");

    // One token fewer is outside the receptive field: the check above can tell.
    engine.reset();
    let short = engine.forward(&tokens[120 - field + 1..], false).unwrap();
    assert!(max_diff(&last, &short) > 1e-2, "the receptive field is smaller than computed");
}

/// Phi-3's LongRoPE: an engine holding no more than the original context (256 positions) divides
/// its frequencies by the short factors, one holding more by the long ones, as llama.cpp does
/// (make_tiny.py: `logits_short_factors` from llama.cpp at n_ctx 256, `logits` at 1,024). The two
/// differ by whole units (`effect_of_long_vs_short_factors`: 13.8), so a wrong choice cannot pass.
#[test]
fn longrope_takes_the_short_factors_within_the_original_context_and_the_long_ones_past_it() {
    let fx = fixtures().into_iter().find(|f| f.name == "phi3").expect("phi3 fixture");
    let tmp = tempfile::tempdir().unwrap();
    let package = convert_to(&fx.gguf, &tmp.path().join("phi3"));
    for seq in &fx.sequences {
        let (tokens, short) = (&seq.tokens, seq.short_factors.as_deref().expect("logits_short_factors"));
        for (context, want) in [(256, short), (257, &seq.llama_cpp[..])] {
            let mut engine = CpuEngine::from_source_with_context(&package, context).unwrap();
            let diff = max_diff(&engine.forward(tokens, true).unwrap(), want);
            eprintln!("phi3, context {context}, {} tokens: max |CPU - llama.cpp| = {diff:.2e}", tokens.len());
            assert!(diff <= TOLERANCE, "phi3 at context {context}: logits differ from llama.cpp by {diff}");
        }
    }
}

/// The mixtures of experts (Mixtral-, Qwen2-MoE- and Qwen3-MoE-style fixtures): the converter reads
/// the config make_tiny.py wrote (experts, used, sizes, whether the chosen weights are rescaled, the
/// shared expert) and stores one matrix per expert (llama.cpp's 3-D `_exps` tensors cut), the router
/// in f32 even when q4 is asked for (llama.cpp's quantizer leaves it too). A decode step runs only
/// the experts its router chose: `used` per layer, counted by both CPU engines (the other experts'
/// weights are not read), and a prompt's tokens share each expert's batch (more than `used`, at most
/// every expert, per layer). The logits against llama.cpp are `cpu_logits_match_llama_cpp_at_every_position`'s.
#[test]
fn a_mixture_reads_only_the_experts_its_router_chose() {
    use hearth_core::convert::QuantChoice;
    use hearth_core::fast::FastEngine;
    use hearth_core::quant::DType;

    let tmp = tempfile::tempdir().unwrap();
    let mut mixtures = Vec::new();
    for fx in fixtures() {
        let path = repo_root().join(format!("tests/fixtures/tiny/{}.json", fx.name));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let Some(want) = json["config"].get("moe") else { continue };
        let options = ConvertOptions { quant: QuantChoice::Q4, ..ConvertOptions::default() };
        convert(&fx.gguf, &tmp.path().join(format!("{}-q4", fx.name)), &options).unwrap();
        let q4 = Package::open(tmp.path().join(format!("{}-q4", fx.name))).unwrap();
        let package = convert_to(&fx.gguf, &tmp.path().join(&fx.name));
        let c = package.manifest().config.clone();
        let moe = c.moe.clone().unwrap_or_else(|| panic!("{}: no mixture converted", fx.name));
        assert_eq!(moe.experts as u64, want["experts"].as_u64().unwrap(), "{}", fx.name);
        assert_eq!(moe.used as u64, want["used"].as_u64().unwrap(), "{}", fx.name);
        assert_eq!(moe.expert_ffn_size as u64, want["expert_ff"].as_u64().unwrap(), "{}", fx.name);
        assert_eq!(moe.normalize, want["normalize"].as_bool().unwrap(), "{}", fx.name);
        assert_eq!(moe.shared_ffn_size.map(|f| f as u64), want["shared_ff"].as_u64(), "{}", fx.name);
        assert_eq!(moe.shared_unscaled, want["shared_unscaled"].as_bool().unwrap(), "{}", fx.name);
        assert_eq!(serde_json::to_value(moe.gating).unwrap(), want["gating"], "{}", fx.name);
        assert_eq!(moe.selection_bias, want["selection_bias"].as_bool().unwrap(), "{}", fx.name);
        assert_eq!(moe.weights_scale as f64, want["weights_scale"].as_f64().unwrap(), "{}", fx.name);
        assert_eq!(moe.dense_layers as u64, want["dense_layers"].as_u64().unwrap(), "{}", fx.name);
        let entry = |p: &Package, name: &str| p.manifest().tensors.iter().find(|t| t.name == name).cloned();
        let sparse = moe.dense_layers; // the first layer with a mixture
        for e in 0..moe.experts {
            let down = entry(&package, &format!("blk.{sparse}.ffn_down.{e}.weight")).expect("one matrix per expert");
            assert_eq!(down.shape, [c.hidden_size, moe.expert_ffn_size], "{}", fx.name);
        }
        for dense in 0..moe.dense_layers {
            let down = entry(&package, &format!("blk.{dense}.ffn_down.weight")).expect("a dense layer's matrix");
            assert_eq!(down.shape, [c.hidden_size, c.ffn_size], "{}: dense layer {dense}", fx.name);
            assert!(entry(&package, &format!("blk.{dense}.ffn_gate_inp.weight")).is_none(), "{}", fx.name);
        }
        assert!(package.manifest().tensors.iter().all(|t| !t.name.contains("_exps")), "{}", fx.name);
        let router = format!("blk.{sparse}.ffn_gate_inp.weight");
        assert_eq!(entry(&q4, &router).unwrap().dtype, DType::F32, "{}: router", fx.name);
        assert_eq!(entry(&q4, &format!("blk.{sparse}.ffn_up.3.weight")).unwrap().dtype, DType::Q4, "{}", fx.name);
        if moe.selection_bias {
            let bias = entry(&q4, &format!("blk.{sparse}.exp_probs_b.bias")).expect("the selection bias");
            assert_eq!((bias.dtype, &bias.shape[..]), (DType::F32, &[moe.experts][..]), "{}: selection bias", fx.name);
        }

        let tokens = &fx.sequences[1].tokens;
        let (prompt, last) = tokens.split_at(tokens.len() - 1);
        let layers = c.n_layers - moe.dense_layers;
        let mut exact = CpuEngine::from_package(&package).unwrap();
        let mut fast = FastEngine::from_package(&package).unwrap();
        for (engine, (prompt_run, step_run)) in
            [("exact", experts_per_step(&mut exact, prompt, last)), ("fast", experts_per_step(&mut fast, prompt, last))]
        {
            eprintln!("{} ({engine}): {prompt_run} experts for {} tokens, {step_run} for one", fx.name, prompt.len());
            assert_eq!(step_run, layers * moe.used, "{} ({engine}): experts run for one token", fx.name);
            assert!(
                prompt_run > layers * moe.used && prompt_run <= layers * moe.experts,
                "{} ({engine}): {prompt_run} experts for a prompt",
                fx.name
            );
        }
        mixtures.push(fx.name.clone());
    }
    assert_eq!(mixtures, ["dots1", "granitemoe", "mixtral", "olmoe", "qwen2moe", "qwen3moe"]);
}

/// A mixture whose metadata contradicts its tensors or itself is refused by name, before anything
/// is written: expert tensors holding 8 experts where `llama.expert_count` says 4, 9 experts used
/// of 8, and a gating function llama.cpp does not have (3, in dots1).
#[test]
fn a_mixture_the_metadata_contradicts_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for (fixture, key, value, expected) in [
        (
            "mixtral",
            "llama.expert_count",
            4u32,
            "`blk.0.ffn_gate_exps.weight` holds 8 experts; the model's config has 4",
        ),
        ("mixtral", "llama.expert_used_count", 9, "used 1..=experts"),
        ("dots1", "dots1.expert_gating_func", 3, "expert gating function 3 in a `dots1`"),
    ] {
        let fx = fixtures().into_iter().find(|f| f.name == fixture).expect("fixture");
        let path = tmp.path().join("patched.gguf");
        std::fs::write(&path, with_key(&std::fs::read(&fx.gguf).unwrap(), key, GGUF_U32, &value.to_le_bytes()))
            .unwrap();
        let out = tmp.path().join("out");
        let err = convert(&path, &out, &ConvertOptions::default()).unwrap_err().to_string();
        assert!(err.contains(expected), "{key} = {value}: {err}");
        assert!(!out.exists(), "nothing is written for a refused model");
    }
}

/// GGUF's value types of the keys the refusal tests patch.
const GGUF_U32: u32 = 4;
const GGUF_F32: u32 = 6;
const GGUF_BOOL: u32 = 7;

/// `gguf` with the value of `key` (of GGUF type `ty`, as the file must already have it) replaced
/// by `value`'s bytes.
fn with_key(gguf: &[u8], key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut bytes = gguf.to_vec();
    let at = bytes.windows(key.len()).position(|w| w == key.as_bytes()).unwrap() + key.len();
    assert_eq!(bytes[at..at + 4], ty.to_le_bytes(), "{key} is of GGUF type {ty}");
    bytes[at + 4..at + 4 + value.len()].copy_from_slice(value);
    bytes
}

/// Experts `engine` ran for `prompt` and then for the token `last`.
fn experts_per_step<P: hearth_core::cpu::Products>(
    engine: &mut hearth_core::cpu::Engine<P>,
    prompt: &[u32],
    last: &[u32],
) -> (usize, usize) {
    engine.forward(prompt, false).unwrap();
    let prompt_run = engine.experts_run();
    engine.forward(last, false).unwrap();
    (prompt_run, engine.experts_run())
}

/// Each architecture from a Hugging Face directory (config.json, model.safetensors, tokenizer.json)
/// holding the fixture's weights in the Transformers layout, written here from the GGUF package:
/// Transformers names; Gemma's (2 and 3) norm weights stored as `w` for `(1 + w)`; GPT-2's `Conv1D` matrices
/// stored `[in, out]` with Q|K|V side by side in `c_attn`; BLOOM's `query_key_value` rows grouped per
/// head as `[head][q, k, v][head_dim]`. The safetensors converter must undo each of these, and read
/// the same config from config.json as from the GGUF metadata, so the logits equal llama.cpp's too.
/// Mistral, Llama 3 and SmolLM3: llama.cpp's converter permutes Llama's Q/K rows so that rotated
/// pairs are adjacent (interleaved RoPE); the Transformers checkpoint has them in half-split (NeoX)
/// order, which the converter keeps, so that package rotates NeoX-style: the same model, another
/// config. Llama 3's frequency scaling: config.json's `rope_scaling` (type `llama3`) where the GGUF
/// has llama.cpp's per-pair factors. Mixtures: Mixtral's `block_sparse_moe` (experts' `w1`/`w3`/`w2`)
/// and Qwen-MoE's and OLMoE's `mlp.experts` names and config keys, Qwen2-MoE's shared expert and its
/// `[1, hidden]` gate, OLMoE's norms of whole queries and keys. Granite: its four multipliers from
/// config.json (llama.cpp permutes its Q/K rows as Llama's); Granite-MoE-Shared: the experts stacked
/// in `block_sparse_moe.input_linear` (`[experts, 2 × rows, hidden]`, each expert's gate rows then
/// its up rows) and `output_linear` (`[experts, hidden, rows]`), the router
/// `block_sparse_moe.router.layer`, and the shared MLP's fused `shared_mlp.input_linear`.
#[test]
fn every_architecture_from_safetensors_gives_the_gguf_logits() {
    for fixture in [
        "mistral_swa",
        "llama_rope_freqs",
        "qwen2",
        "qwen2_yarn",
        "qwen3",
        "smollm3",
        "phi3",
        "gemma2",
        "gemma3",
        "bloom",
        "gpt2",
        "mixtral",
        "qwen2moe",
        "qwen3moe",
        "olmoe",
        "dots1",
        "granite",
        "granitemoe",
    ] {
        let fx = fixtures().into_iter().find(|f| f.name == fixture).unwrap_or_else(|| panic!("{fixture} fixture"));
        let name = fx.architecture.as_str();
        let tmp = tempfile::tempdir().unwrap();
        let from_gguf = convert_to(&fx.gguf, &tmp.path().join("gguf"));
        let m = from_gguf.manifest().clone();
        let c = &m.config;
        let mut tensors: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for entry in &m.tensors {
            let t = hearth_core::quant::Tensor::from_bytes(
                &entry.name,
                entry.shape.clone(),
                entry.dtype,
                entry.group_size,
                &from_gguf.read_tensor_bytes(entry).unwrap(),
            )
            .unwrap();
            tensors.insert(entry.name.clone(), t.to_f32());
            shapes.insert(entry.name.clone(), entry.shape.clone());
        }
        let hf_tensors = to_transformers_layout(name, c, &tensors, &shapes);

        let hf = tmp.path().join("hf");
        std::fs::create_dir(&hf).unwrap();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = hf_tensors
            .into_iter()
            .map(|(n, (shape, values))| (n, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, shape, b)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &hf.join("model.safetensors")).unwrap();
        std::fs::write(hf.join("config.json"), transformers_config(fixture, c).to_string()).unwrap();
        std::fs::copy(from_gguf.dir.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();

        let from_hf = convert_to(&hf, &tmp.path().join("from-hf"));
        assert_eq!(from_hf.manifest().architecture, name);
        let mut want = m.config.clone();
        if matches!(name, "llama" | "smollm3" | "granite" | "granitemoe") {
            want.rope.as_mut().unwrap().style = RopeStyle::Neox;
        }
        if let Some(scaling) = llama3_scaling(fixture) {
            // The GGUF holds llama.cpp's per-pair factors (rope_freqs.weight); config.json the
            // scaling they were computed from, which the engines compute the factors of themselves.
            want.rope.as_mut().unwrap().scaling = Some(scaling);
        }
        assert_eq!(from_hf.manifest().config, want, "{fixture}: config.json gives another config than GGUF");
        let mut engine = CpuEngine::from_package(&from_hf).unwrap();
        let seq = &fx.sequences[1];
        let diff = max_diff(&engine.forward(&seq.tokens, true).unwrap(), seq.tight());
        eprintln!("{fixture} from safetensors: max |CPU - oracle| = {diff:.2e}");
        assert!(diff <= TOLERANCE, "safetensors {fixture} differs from the oracle by {diff}");
    }
}

type HfTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The package's tensors as a Transformers checkpoint of architecture `arch` stores them.
fn to_transformers_layout(
    arch: &str,
    c: &hearth_core::manifest::ModelConfig,
    tensors: &BTreeMap<String, Vec<f32>>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> HfTensors {
    let mut out = HfTensors::new();
    let get = |n: &str| (shapes[n].clone(), tensors[n].clone());
    match arch {
        "phi3" => {
            // Q, K and V rows in one `qkv_proj`, gate and up rows in one `gate_up_proj`.
            let fused = |names: &[String]| {
                let parts: Vec<(Vec<usize>, Vec<f32>)> = names.iter().map(|n| get(n)).collect();
                let rows = parts.iter().map(|(s, _)| s[0]).sum();
                (vec![rows, parts[0].0[1]], parts.into_iter().flat_map(|(_, v)| v).collect::<Vec<f32>>())
            };
            for name in tensors.keys() {
                let layer = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).map(|(l, _)| l.to_string());
                let fused_name = |part: &str| format!("model.layers.{}.{part}", layer.clone().unwrap());
                if name.ends_with("attn_q.weight") {
                    let names = ["attn_q", "attn_k", "attn_v"].map(|p| name.replace("attn_q", p));
                    out.insert(fused_name("self_attn.qkv_proj.weight"), fused(&names));
                } else if name.ends_with("ffn_gate.weight") {
                    let names = [name.clone(), name.replace("ffn_gate", "ffn_up")];
                    out.insert(fused_name("mlp.gate_up_proj.weight"), fused(&names));
                } else if !["attn_k.weight", "attn_v.weight", "ffn_up.weight"].iter().any(|s| name.ends_with(s)) {
                    out.insert(llama_family_name(arch, name), get(name));
                }
            }
        }
        "llama" | "qwen2" | "qwen3" | "smollm3" | "gemma2" | "gemma3" | "qwen2moe" | "qwen3moe" | "olmoe" | "dots1"
        | "granite" | "granitemoe" => {
            // Transformers computes Llama 3's factors from config.json; llama.cpp stores them.
            for name in tensors.keys().filter(|n| *n != "rope_freqs.weight") {
                // Granite-MoE's feed-forward tensors are stacked below.
                if arch == "granitemoe" && name.contains(".ffn_") && !name.ends_with(".ffn_norm.weight") {
                    continue;
                }
                let (shape, mut values) = get(name);
                let permuted = matches!(arch, "llama" | "smollm3" | "granite" | "granitemoe");
                if permuted && (name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight")) {
                    values = unpermute_rows(&values, shape[0] / c.head_dim, c.head_dim, shape[1]);
                }
                if arch.starts_with("gemma") && name.contains("norm.weight") {
                    values.iter_mut().for_each(|w| *w -= 1.0); // stored as w for (1 + w)
                }
                // Qwen2-MoE's shared-expert gate is a linear layer of one output.
                let shape = if name.ends_with("ffn_gate_inp_shexp.weight") { vec![1, shape[0]] } else { shape };
                out.insert(llama_family_name(arch, name), (shape, values));
            }
            if arch == "granitemoe" {
                let m = c.moe.as_ref().unwrap();
                let (f, h) = (m.expert_ffn_size, c.hidden_size);
                for l in 0..c.n_layers {
                    let g = |s: &str| get(&format!("blk.{l}.{s}"));
                    let hf = |s: &str| format!("model.layers.{l}.{s}");
                    // Experts stacked: each one's gate rows then its up rows; its down matrix.
                    let (mut input, mut output) = (Vec::new(), Vec::new());
                    for e in 0..m.experts {
                        input.extend(g(&format!("ffn_gate.{e}.weight")).1);
                        input.extend(g(&format!("ffn_up.{e}.weight")).1);
                        output.extend(g(&format!("ffn_down.{e}.weight")).1);
                    }
                    out.insert(hf("block_sparse_moe.input_linear.weight"), (vec![m.experts, 2 * f, h], input));
                    out.insert(hf("block_sparse_moe.output_linear.weight"), (vec![m.experts, h, f], output));
                    out.insert(hf("block_sparse_moe.router.layer.weight"), g("ffn_gate_inp.weight"));
                    let s = m.shared_ffn_size.expect("the granitemoe fixture has a shared expert");
                    let shared = [g("ffn_gate_shexp.weight").1, g("ffn_up_shexp.weight").1].concat();
                    out.insert(hf("shared_mlp.input_linear.weight"), (vec![2 * s, h], shared));
                    out.insert(hf("shared_mlp.output_linear.weight"), g("ffn_down_shexp.weight"));
                }
            }
        }
        "gpt2" => {
            let conv1d = |(shape, values): (Vec<usize>, Vec<f32>)| {
                let (rows, cols) = (shape[0], shape[1]);
                let mut t = vec![0f32; values.len()];
                for r in 0..rows {
                    for k in 0..cols {
                        t[k * rows + r] = values[r * cols + k];
                    }
                }
                (vec![cols, rows], t)
            };
            out.insert("wte.weight".into(), get("token_embd.weight"));
            out.insert("wpe.weight".into(), get("position_embd.weight"));
            out.insert("ln_f.weight".into(), get("output_norm.weight"));
            out.insert("ln_f.bias".into(), get("output_norm.bias"));
            out.insert("lm_head.weight".into(), get("output.weight"));
            for l in 0..c.n_layers {
                let g = |s: &str| get(&format!("blk.{l}.{s}"));
                let h = |s: &str| format!("h.{l}.{s}");
                let stacked = |kind: &str| {
                    let parts = ["attn_q", "attn_k", "attn_v"].map(|p| g(&format!("{p}.{kind}")));
                    let rows: usize = parts.iter().map(|(s, _)| s[0]).sum();
                    let mut shape = parts[0].0.clone();
                    shape[0] = rows;
                    (shape, parts.into_iter().flat_map(|(_, v)| v).collect::<Vec<f32>>())
                };
                out.insert(h("ln_1.weight"), g("attn_norm.weight"));
                out.insert(h("ln_1.bias"), g("attn_norm.bias"));
                out.insert(h("attn.c_attn.weight"), conv1d(stacked("weight")));
                out.insert(h("attn.c_attn.bias"), stacked("bias"));
                out.insert(h("attn.c_proj.weight"), conv1d(g("attn_output.weight")));
                out.insert(h("attn.c_proj.bias"), g("attn_output.bias"));
                out.insert(h("ln_2.weight"), g("ffn_norm.weight"));
                out.insert(h("ln_2.bias"), g("ffn_norm.bias"));
                out.insert(h("mlp.c_fc.weight"), conv1d(g("ffn_up.weight")));
                out.insert(h("mlp.c_fc.bias"), g("ffn_up.bias"));
                out.insert(h("mlp.c_proj.weight"), conv1d(g("ffn_down.weight")));
                out.insert(h("mlp.c_proj.bias"), g("ffn_down.bias"));
            }
        }
        "bloom" => {
            out.insert("word_embeddings.weight".into(), get("token_embd.weight"));
            out.insert("word_embeddings_layernorm.weight".into(), get("token_embd_norm.weight"));
            out.insert("word_embeddings_layernorm.bias".into(), get("token_embd_norm.bias"));
            out.insert("ln_f.weight".into(), get("output_norm.weight"));
            out.insert("ln_f.bias".into(), get("output_norm.bias"));
            let hd = c.head_dim;
            for l in 0..c.n_layers {
                let g = |s: &str| get(&format!("blk.{l}.{s}"));
                let h = |s: &str| format!("h.{l}.{s}");
                // Per head: its query rows, then its key rows, then its value rows.
                let per_head = |kind: &str| {
                    let parts = ["attn_q", "attn_k", "attn_v"].map(|p| g(&format!("{p}.{kind}")));
                    let cols = parts[0].0.get(1).copied().unwrap_or(1);
                    let mut values = Vec::new();
                    for head in 0..c.n_heads {
                        for (_, v) in &parts {
                            values.extend_from_slice(&v[head * hd * cols..(head + 1) * hd * cols]);
                        }
                    }
                    let mut shape = parts[0].0.clone();
                    shape[0] *= 3;
                    (shape, values)
                };
                out.insert(h("input_layernorm.weight"), g("attn_norm.weight"));
                out.insert(h("input_layernorm.bias"), g("attn_norm.bias"));
                out.insert(h("self_attention.query_key_value.weight"), per_head("weight"));
                out.insert(h("self_attention.query_key_value.bias"), per_head("bias"));
                out.insert(h("self_attention.dense.weight"), g("attn_output.weight"));
                out.insert(h("self_attention.dense.bias"), g("attn_output.bias"));
                out.insert(h("post_attention_layernorm.weight"), g("ffn_norm.weight"));
                out.insert(h("post_attention_layernorm.bias"), g("ffn_norm.bias"));
                out.insert(h("mlp.dense_h_to_4h.weight"), g("ffn_up.weight"));
                out.insert(h("mlp.dense_h_to_4h.bias"), g("ffn_up.bias"));
                out.insert(h("mlp.dense_4h_to_h.weight"), g("ffn_down.weight"));
                out.insert(h("mlp.dense_4h_to_h.bias"), g("ffn_down.bias"));
            }
        }
        other => panic!("no Transformers layout for {other}"),
    }
    out
}

/// llama.cpp's Q/K row order (within each head, row 2i is Transformers' row i and row 2i + 1 its
/// row i + head_dim / 2) back to Transformers'.
fn unpermute_rows(values: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..head_dim / 2 {
            for (gguf_row, hf_row) in [(2 * i, i), (2 * i + 1, i + head_dim / 2)] {
                let (from, to) = ((h * head_dim + gguf_row) * cols, (h * head_dim + hf_row) * cols);
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    out
}

/// The Llama 3 scaling a fixture's `rope_freqs.weight` was computed from (make_tiny.py records it).
fn llama3_scaling(fixture: &str) -> Option<RopeScaling> {
    let path = repo_root().join(format!("tests/fixtures/tiny/{fixture}.json"));
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = fx["config"]["rope"].get("freq_factors_from_llama3_scaling")?;
    let f = |k: &str| s[k].as_f64().unwrap() as f32;
    Some(RopeScaling::Llama3 {
        factor: f("factor"),
        low_freq_factor: f("low_freq_factor"),
        high_freq_factor: f("high_freq_factor"),
        original_context_length: s["original_context_length"].as_u64().unwrap() as usize,
    })
}

/// config.json of a Transformers checkpoint of fixture `fixture` (config `c`).
fn transformers_config(fixture: &str, c: &hearth_core::manifest::ModelConfig) -> serde_json::Value {
    let arch = match fixture {
        "mistral_swa" => "mistral",
        "llama_rope_freqs" => "llama",
        "qwen2_yarn" => "qwen2",
        other => other,
    };
    // What every RoPE decoder's config.json says, and `own`, the architecture's own keys.
    let rope_decoder = |class: &str, own: serde_json::Value| {
        let mut json = serde_json::json!({
            "architectures": [class],
            "hidden_size": c.hidden_size,
            "intermediate_size": c.ffn_size,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.context_length,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope.as_ref().unwrap().base,
            "tie_word_embeddings": c.tied_embeddings,
        });
        json.as_object_mut().unwrap().extend(own.as_object().unwrap().clone());
        json
    };
    match arch {
        "mistral" => {
            rope_decoder("MistralForCausalLM", serde_json::json!({ "sliding_window": c.sliding_window.unwrap() }))
        }
        "llama" => {
            let Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context_length }) =
                llama3_scaling(fixture)
            else {
                panic!("{fixture}: no Llama 3 scaling")
            };
            rope_decoder(
                "LlamaForCausalLM",
                serde_json::json!({
                    "rope_scaling": {
                        "rope_type": "llama3",
                        "factor": factor,
                        "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor,
                        "original_max_position_embeddings": original_context_length,
                    },
                }),
            )
        }
        "qwen2" => rope_decoder(
            "Qwen2ForCausalLM",
            serde_json::json!({
                "rope_scaling": match c.rope.as_ref().unwrap().scaling {
                    Some(RopeScaling::Yarn { factor, original_context_length, .. }) => serde_json::json!({
                        "rope_type": "yarn",
                        "factor": factor,
                        "original_max_position_embeddings": original_context_length,
                    }),
                    _ => serde_json::Value::Null,
                },
            }),
        ),
        // Qwen3: QK-norm, an explicit head_dim, and a window named but unused.
        "qwen3" => rope_decoder(
            "Qwen3ForCausalLM",
            serde_json::json!({
                "head_dim": c.head_dim,
                "rope_scaling": null,
                "attention_bias": false,
                "use_sliding_window": false,
                "sliding_window": 64,
            }),
        ),
        // Phi-3.5: LongRoPE's factors, the original context at the top level (as Phi-3's config.json
        // has it), partial rotary dimensions (Phi-4-mini's key), and a window Hearth ignores as
        // llama.cpp does.
        "phi3" => {
            let rope = c.rope.as_ref().unwrap();
            let Some(RopeScaling::LongRope { original_context_length, short_factors, long_factors, .. }) =
                &rope.scaling
            else {
                panic!("phi3: no LongRoPE")
            };
            rope_decoder(
                "Phi3ForCausalLM",
                serde_json::json!({
                    "rope_scaling": { "type": "longrope", "short_factor": short_factors, "long_factor": long_factors },
                    "original_max_position_embeddings": original_context_length,
                    "partial_rotary_factor": rope.dim as f64 / c.head_dim as f64,
                    "sliding_window": 8,
                }),
            )
        }
        // SmolLM3: one flag per layer, 0 where the layer does not rotate.
        "smollm3" => rope_decoder(
            "SmolLM3ForCausalLM",
            serde_json::json!({
                "no_rope_layers": (0..c.n_layers).map(|l| u32::from(c.layer_rotates(l))).collect::<Vec<_>>(),
                "no_rope_layer_interval": 4,
                "use_sliding_window": false,
                "sliding_window": null,
            }),
        ),
        "gemma3" => {
            let pattern = c.sliding_window_pattern.unwrap();
            let layer_types: Vec<&str> = (0..c.n_layers)
                .map(|l| if (l + 1) % pattern == 0 { "full_attention" } else { "sliding_attention" })
                .collect();
            rope_decoder(
                "Gemma3ForCausalLM",
                serde_json::json!({
                    "head_dim": c.head_dim,
                    "rope_local_base_freq": c.rope.as_ref().unwrap().local_base.unwrap(),
                    "sliding_window": c.sliding_window.unwrap(),
                    "layer_types": layer_types,
                    "query_pre_attn_scalar": c.head_dim,
                    "hidden_activation": "gelu_pytorch_tanh",
                    "rope_scaling": null,
                }),
            )
        }
        "gemma2" => rope_decoder(
            "Gemma2ForCausalLM",
            serde_json::json!({
                "head_dim": c.head_dim,
                "sliding_window": c.sliding_window.unwrap(),
                "query_pre_attn_scalar": c.head_dim,
                "attn_logit_softcapping": c.attn_softcap.unwrap(),
                "final_logit_softcapping": c.final_softcap.unwrap(),
                "hidden_activation": "gelu_pytorch_tanh",
            }),
        ),
        // Mixtral: Llama's block with a mixture (its experts of `intermediate_size`, always rescaled).
        "mixtral" => {
            let m = c.moe.as_ref().unwrap();
            rope_decoder(
                "MixtralForCausalLM",
                serde_json::json!({
                    "intermediate_size": m.expert_ffn_size,
                    "num_local_experts": m.experts,
                    "num_experts_per_tok": m.used,
                    "sliding_window": null,
                }),
            )
        }
        // Qwen-MoE: experts of `moe_intermediate_size`, rescaled as `norm_topk_prob` says, every
        // layer sparse; Qwen2-MoE's shared expert; Qwen3-MoE's QK-norm and explicit head_dim.
        "qwen2moe" | "qwen3moe" => {
            let m = c.moe.as_ref().unwrap();
            let qwen3 = arch == "qwen3moe";
            rope_decoder(
                if qwen3 { "Qwen3MoeForCausalLM" } else { "Qwen2MoeForCausalLM" },
                serde_json::json!({
                    "head_dim": c.head_dim,
                    "num_experts": m.experts,
                    "num_experts_per_tok": m.used,
                    "moe_intermediate_size": m.expert_ffn_size,
                    "shared_expert_intermediate_size": m.shared_ffn_size.unwrap_or(0),
                    "norm_topk_prob": m.normalize,
                    "decoder_sparse_step": 1,
                    "mlp_only_layers": [],
                    "use_sliding_window": false,
                    "sliding_window": 64,
                }),
            )
        }
        // dots.llm1: experts of `moe_intermediate_size` chosen by sigmoid plus a correction bias,
        // `n_shared_experts` of the same size (one MLP), dense leading layers of `intermediate_size`.
        "dots1" => {
            let m = c.moe.as_ref().unwrap();
            rope_decoder(
                "Dots1ForCausalLM",
                serde_json::json!({
                    "head_dim": c.head_dim,
                    "n_routed_experts": m.experts,
                    "num_experts_per_tok": m.used,
                    "moe_intermediate_size": m.expert_ffn_size,
                    "n_shared_experts": m.shared_ffn_size.unwrap() / m.expert_ffn_size,
                    "norm_topk_prob": m.normalize,
                    "routed_scaling_factor": m.weights_scale,
                    "first_k_dense_replace": m.dense_layers,
                    "n_group": 1,
                    "topk_group": 1,
                    "sliding_window": null,
                }),
            )
        }
        // Granite: the four multipliers (Transformers' names); Granite-MoE-Shared: experts of
        // `intermediate_size`, a shared MLP of `shared_intermediate_size`.
        "granite" | "granitemoe" => {
            let mut own = serde_json::json!({
                "embedding_multiplier": c.embedding_scale.unwrap(),
                "attention_multiplier": c.attention_scale.unwrap(),
                "residual_multiplier": c.residual_scale.unwrap(),
                "logits_scaling": c.logit_divisor.unwrap(),
                "attention_bias": false,
                "mlp_bias": false,
                "rope_scaling": null,
            });
            if let Some(m) = &c.moe {
                own.as_object_mut().unwrap().extend(
                    serde_json::json!({
                        "intermediate_size": m.expert_ffn_size,
                        "num_local_experts": m.experts,
                        "num_experts_per_tok": m.used,
                        "shared_intermediate_size": m.shared_ffn_size.unwrap_or(0),
                    })
                    .as_object()
                    .unwrap()
                    .clone(),
                );
            }
            let class = if arch == "granite" { "GraniteForCausalLM" } else { "GraniteMoeSharedForCausalLM" };
            rope_decoder(class, own)
        }
        // OLMoE: experts of `intermediate_size`, not rescaled; norms of whole queries and keys.
        "olmoe" => {
            let m = c.moe.as_ref().unwrap();
            rope_decoder(
                "OlmoeForCausalLM",
                serde_json::json!({
                    "intermediate_size": m.expert_ffn_size,
                    "num_experts": m.experts,
                    "num_experts_per_tok": m.used,
                    "norm_topk_prob": false,
                    "clip_qkv": null,
                }),
            )
        }
        "gpt2" => serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "n_embd": c.hidden_size,
            "n_inner": c.ffn_size,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "n_positions": c.context_length,
            "vocab_size": c.vocab_size,
            "layer_norm_epsilon": c.norm_eps,
            "activation_function": "gelu_new",
        }),
        // BLOOM's config has no MLP size (4 x hidden in the real models; the converter reads the
        // tensors') and no context length but its training `seq_length`.
        "bloom" => serde_json::json!({
            "architectures": ["BloomForCausalLM"],
            "hidden_size": c.hidden_size,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "vocab_size": c.vocab_size,
            "seq_length": c.context_length,
            "layer_norm_epsilon": c.norm_eps,
        }),
        other => panic!("no config.json for {other}"),
    }
}

/// GGUF tensor name → Transformers name (Llama/Qwen2/Gemma layout).
fn llama_family_name(arch: &str, gguf: &str) -> String {
    let arch = if arch.starts_with("gemma") { "gemma" } else { arch };
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    // A mixture's experts: Mixtral's `block_sparse_moe.experts.E.w{1,3,2}`, Qwen-MoE's
    // `mlp.experts.E.{gate,up,down}_proj`.
    if let Some((kind, expert)) = part.strip_suffix(".weight").and_then(|p| p.split_once('.')) {
        let matrix = match (arch, kind) {
            ("llama", "ffn_gate") => "w1",
            ("llama", "ffn_up") => "w3",
            ("llama", "ffn_down") => "w2",
            (_, "ffn_gate") => "gate_proj",
            (_, "ffn_up") => "up_proj",
            (_, "ffn_down") => "down_proj",
            (_, other) => panic!("no Transformers name for expert tensor {other}"),
        };
        let block = if arch == "llama" { "block_sparse_moe" } else { "mlp" };
        return format!("model.layers.{layer}.{block}.experts.{expert}.{matrix}.weight");
    }
    let part = match (arch, part) {
        ("llama", "ffn_gate_inp.weight") => "block_sparse_moe.gate.weight",
        (_, "ffn_gate_inp.weight") => "mlp.gate.weight",
        ("dots1", "ffn_gate_shexp.weight") => "mlp.shared_experts.gate_proj.weight",
        ("dots1", "ffn_up_shexp.weight") => "mlp.shared_experts.up_proj.weight",
        ("dots1", "ffn_down_shexp.weight") => "mlp.shared_experts.down_proj.weight",
        (_, "exp_probs_b.bias") => "mlp.gate.e_score_correction_bias",
        (_, "ffn_gate_shexp.weight") => "mlp.shared_expert.gate_proj.weight",
        (_, "ffn_up_shexp.weight") => "mlp.shared_expert.up_proj.weight",
        (_, "ffn_down_shexp.weight") => "mlp.shared_expert.down_proj.weight",
        (_, "ffn_gate_inp_shexp.weight") => "mlp.shared_expert_gate.weight",
        (_, "attn_norm.weight") => "input_layernorm.weight",
        (_, "attn_q.weight") => "self_attn.q_proj.weight",
        (_, "attn_k.weight") => "self_attn.k_proj.weight",
        (_, "attn_v.weight") => "self_attn.v_proj.weight",
        (_, "attn_q.bias") => "self_attn.q_proj.bias",
        (_, "attn_k.bias") => "self_attn.k_proj.bias",
        (_, "attn_v.bias") => "self_attn.v_proj.bias",
        (_, "attn_output.weight") => "self_attn.o_proj.weight",
        ("gemma", "ffn_norm.weight") => "pre_feedforward_layernorm.weight",
        (_, "ffn_norm.weight") => "post_attention_layernorm.weight",
        ("gemma", "post_attention_norm.weight") => "post_attention_layernorm.weight",
        ("gemma", "post_ffw_norm.weight") => "post_feedforward_layernorm.weight",
        (_, "attn_q_norm.weight") => "self_attn.q_norm.weight",
        (_, "attn_k_norm.weight") => "self_attn.k_norm.weight",
        (_, "ffn_gate.weight") => "mlp.gate_proj.weight",
        (_, "ffn_up.weight") => "mlp.up_proj.weight",
        (_, "ffn_down.weight") => "mlp.down_proj.weight",
        (_, other) => panic!("no Transformers name for {other}"),
    };
    format!("model.layers.{layer}.{part}")
}
