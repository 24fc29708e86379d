//! The real Gemma 3 270M (Q4_K_M GGUF: Q5_0, Q8_0, Q4_K and Q6_K tensors; window 512 on five layers
//! of six, local RoPE base 10 000, QK-norm, post-norms, GeGLU, 262k vocabulary) through the
//! converter and the CPU reference engine, against llama.cpp (`tests/fixtures/gemma3/generation.json`,
//! written by `tests/fixtures/make_gemma3_reference.py`).
//!
//! What differs from the oracle, and so what the tolerances allow: llama.cpp evaluated the file's
//! weights decoded to F32 with an F32 KV cache, but computes GELU through an f16 table; the package
//! keeps every tensor exactly as the file holds it (Q8_0 as q8, Q5_0 as q5, Q4_K as q4k, Q6_K as
//! q6k), so the same weights go into both: logits (values 5-30) differ by up to `LOGIT_TOLERANCE`.
//! What remains is not all the GELU table: the same engine with llama.cpp's table was still 6.0e-3
//! off (2026-12-04; the tiny models' engines match llama.cpp to 3e-5, so it is something the real
//! model's 18 layers and 262k-row head amplify, not found yet). A near-tie could still flip a greedy
//! continuation; measured, all 9 agree for all 16 tokens (until K-quants were kept, 7 of 9 and
//! logits 0.24 apart).

mod common;

use std::collections::HashMap;

use hearth_core::cpu::CpuEngine;
use hearth_core::package::{Package, TensorSource};
use hearth_core::quant::Tensor;
use hearth_core::sampling::argmax;

/// Largest difference allowed on llama.cpp's top-20 logits. Measured 2026-12-04: 7.2e-3 on the short
/// prompts, 1.0e-2 past the window; switching the window off moves them by 13.
const LOGIT_TOLERANCE: f32 = 0.03;
const MATCH_PREFIX: usize = 16;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn pairs(v: &serde_json::Value) -> Vec<(u32, f32)> {
    v.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32)).collect()
}

fn worst(logits: &[f32], top: &[(u32, f32)]) -> f32 {
    top.iter().map(|&(id, l)| (logits[id as usize] - l).abs()).fold(0f32, f32::max)
}

fn prompts() -> Vec<serde_json::Value> {
    let fx = common::fixture("gemma3/generation.json");
    fx["prompts"].as_array().unwrap().clone()
}

#[test]
fn greedy_continuations_agree_with_llama_cpp_on_most_prompts() {
    let package = Package::open(common::gemma3_package()).unwrap();
    let c = &package.manifest().config;
    assert_eq!((c.sliding_window, c.sliding_window_pattern), (Some(512), Some(6)));
    let mut engine = CpuEngine::from_package(&package).unwrap();
    let short: Vec<_> = prompts().into_iter().filter(|p| p["prompt_ids"].as_array().unwrap().len() < 512).collect();
    let (mut matching, mut worst_diff, mut report) = (0, 0f32, Vec::new());
    for p in &short {
        engine.reset();
        let expected = ids(&p["greedy_ids"]);
        let mut logits = engine.forward(&ids(&p["prompt_ids"]), false).unwrap();
        let diff = worst(&logits, &pairs(&p["top_logits"]));
        worst_diff = worst_diff.max(diff);
        let mut got = Vec::new();
        for _ in 0..MATCH_PREFIX {
            let t = argmax(&logits);
            got.push(t);
            logits = engine.forward(&[t], false).unwrap();
        }
        let agree = got.iter().zip(&expected).take_while(|(a, b)| a == b).count();
        matching += usize::from(agree >= MATCH_PREFIX);
        report.push(format!(
            "{:<45} greedy agree {agree:>2}/{MATCH_PREFIX}, logit diff {diff:.2e}",
            format!("{:?}", p["prompt"].as_str().unwrap())
        ));
    }
    eprintln!("Gemma 3 270M vs llama.cpp:\n{}\nlargest logit difference {worst_diff:.2e}; {matching}/{} prompts agree on {MATCH_PREFIX} tokens", report.join("\n"), short.len());
    assert!(worst_diff <= LOGIT_TOLERANCE, "prompt logits differ from llama.cpp by {worst_diff}");
    assert!(matching + 1 >= short.len(), "only {matching} of {} prompts agree with llama.cpp", short.len());
}

/// `hearth convert` with the default `keep` stores every tensor in the encoding that keeps its GGUF
/// type (Q4_K as q4k, Q6_K as q6k, Q5_0 as q5, Q8_0 as q8, F32 as f32), and the package's tensors
/// take at most 3% more bytes than the file's (q5 stores a min beside each Q5_0 scale; q6k two bytes
/// more per block; alignment): measured 2026-12-04, 250.6 MB against 245.0 MB of tensor data (until
/// K-quants and Q5_0 were kept, 286 MB).
#[test]
fn every_tensor_keeps_its_gguf_type_and_the_package_its_size() {
    let gguf = hearth_core::gguf::GgufFile::open(common::gemma3_gguf()).unwrap();
    let package = Package::open(common::gemma3_package()).unwrap();
    let stored: HashMap<&str, &hearth_core::manifest::TensorEntry> =
        package.manifest().tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let (mut gguf_bytes, mut package_bytes) = (0u64, 0u64);
    for info in &gguf.tensors {
        let entry = stored.get(info.name.as_str()).unwrap_or_else(|| panic!("{} not in the package", info.name));
        let kept = match info.ggml_type.name().as_str() {
            "Q4_K" => "q4k",
            "Q6_K" => "q6k",
            "Q5_0" => "q5",
            "Q8_0" => "q8",
            "F32" => "f32",
            other => panic!("{}: the file has a {other} tensor this test does not expect", info.name),
        };
        assert_eq!(entry.dtype.name(), kept, "{}", info.name);
        gguf_bytes += info.n_bytes.unwrap();
        package_bytes += entry.length;
    }
    eprintln!("tensor bytes: package {package_bytes}, GGUF {gguf_bytes}");
    assert!(package_bytes * 100 <= gguf_bytes * 103, "package {package_bytes} bytes against the file's {gguf_bytes}");
}

/// A 621-token prompt and 40 tokens after it: every position from 512 on needs the window on five
/// layers in six (a query sees its own key and the 511 before it) and full attention on the rest.
/// The engine is fed llama.cpp's own greedy tokens, so one near-tie cannot derail the rest, and its
/// logits for llama.cpp's top 5 at each of the 40 steps are compared. The same engine with the window
/// switched off must be off by far more, or this test could not tell.
#[test]
fn a_prompt_past_the_window_matches_llama_cpp_at_every_step() {
    let package = Package::open(common::gemma3_package()).unwrap();
    let long = prompts().into_iter().find(|p| p["prompt_ids"].as_array().unwrap().len() > 512).expect("long prompt");
    let (prompt, greedy) = (ids(&long["prompt_ids"]), ids(&long["greedy_ids"]));
    let steps: Vec<Vec<(u32, f32)>> = long["step_top_logits"].as_array().unwrap().iter().map(pairs).collect();

    let run = |engine: &mut CpuEngine| -> (f32, usize) {
        let mut logits = engine.forward(&prompt, false).unwrap();
        let (mut diff, mut top1_agree) = (0f32, 0);
        for (step, top) in steps.iter().enumerate() {
            diff = diff.max(worst(&logits, top));
            top1_agree += usize::from(argmax(&logits) == top[0].0);
            if step + 1 < steps.len() {
                logits = engine.forward(&[greedy[step]], false).unwrap();
            }
        }
        (diff, top1_agree)
    };
    let mut engine = CpuEngine::from_package(&package).unwrap();
    let (diff, agree) = run(&mut engine);
    eprintln!("621-token prompt + {} steps: largest logit difference {diff:.2e}, top-1 agrees at {agree}", steps.len());
    assert!(diff <= LOGIT_TOLERANCE, "logits past the window differ from llama.cpp by {diff}");
    assert!(
        agree + 2 >= steps.len(),
        "top-1 differs from llama.cpp at {} of {} steps",
        steps.len() - agree,
        steps.len()
    );
    // Windowed layers hold their rings (more rows than the 661 positions: `ring_rows`), the 3
    // global ones every position.
    let c = package.manifest().config.clone();
    let positions = prompt.len() + steps.len() - 1;
    let ring = hearth_core::generate::ring_rows(512).min(positions);
    assert_eq!(engine.kv_cache_bytes(), (15 * ring + 3 * positions) * 2 * c.kv_dim() * 4);

    // With a window too wide to bite (local layers keep their RoPE base, but see every key) the
    // same check fails.
    let mut tensors = HashMap::new();
    for entry in &package.manifest().tensors {
        let bytes = package.read_tensor_bytes(entry).unwrap();
        let t = Tensor::from_bytes(&entry.name, entry.shape.clone(), entry.dtype, entry.group_size, &bytes).unwrap();
        tensors.insert(entry.name.clone(), t);
    }
    let mut unwindowed =
        CpuEngine::new(hearth_core::manifest::ModelConfig { sliding_window: Some(1 << 20), ..c }, tensors).unwrap();
    let (diff_without, _) = run(&mut unwindowed);
    eprintln!("the same without the window: largest logit difference {diff_without:.2e}");
    assert!(diff_without > 4.0 * LOGIT_TOLERANCE, "the window makes no visible difference ({diff_without})");
}
