//! The GPU engine on the tiny random models of `tests/fixtures/tiny/` (one per supported
//! architecture, written by `tests/fixtures/make_tiny.py`) against llama.cpp's logits at every
//! position, with the f32 and the f16 KV cache. The hearth-core test of the same fixtures checks the
//! CPU engine and the converter; here every kernel variant those architectures need (Q/K/V biases,
//! NeoX and interleaved RoPE, frequency factors, GQA) runs on whatever adapter wgpu finds
//! (lavapipe without a GPU).
//!
//! Tolerances, on logits of standard deviation ~1: with the f32 cache 2e-3 (measured 6e-6 on
//! lavapipe, the fixture's rounding to 6 significant digits; WGSL promises sin and cos only to
//! 2^-11 absolute on the reduced angle, which lets a conforming GPU move rotated keys and queries by
//! ~1e-3 relative). With the f16 cache keys and values are also rounded to 11 significant bits:
//! 5e-3 (measured 9e-4). A missing bias, window or a wrong pairing moves logits by 0.1 or more (the
//! Q/K/V bias checked by disabling it).

use std::path::{Path, PathBuf};

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::package::Package;
use hearth_gpu::{GpuContext, GpuEngine};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn gpu_logits_match_llama_cpp_at_every_position() {
    let dir = repo_root().join("tests/fixtures/tiny");
    let mut jsons: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    jsons.sort();
    assert!(!jsons.is_empty(), "no fixtures in {}", dir.display());
    let tmp = tempfile::tempdir().unwrap();
    for path in jsons {
        let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let out = tmp.path().join(&name);
        convert(&dir.join(fx["model"].as_str().unwrap()), &out, &ConvertOptions::default()).unwrap();
        let package = Package::open(&out).unwrap();
        for (kv_f16, tolerance) in [(false, 2e-3f32), (true, 5e-3)] {
            let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
                eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
                return;
            };
            ctx.kv_f16 = kv_f16;
            let mut engine = GpuEngine::new(ctx, &package, None).unwrap();
            for seq in fx["sequences"].as_array().unwrap() {
                let tokens: Vec<u32> =
                    seq["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
                let want: Vec<f32> = seq["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
                    .collect();
                engine.reset();
                let diff = max_diff(&engine.forward(&tokens, true).unwrap(), &want);
                eprintln!("{name}: {} tokens, f16 cache {kv_f16}: max |GPU - llama.cpp| = {diff:.2e}", tokens.len());
                assert!(diff <= tolerance, "{name} (f16 cache {kv_f16}): logits differ from llama.cpp by {diff}");
            }
        }
    }
}

/// Generation far past the window on the GPU: 120 positions with a window of 8, one token at a
/// time after a 40-token prompt, so each layer's ring (8 + tokens per chunk - 1 rows) wraps. The
/// last logits depend only on the last 2 * (8 - 1) + 1 = 15 tokens (2 layers, RoPE relative), so
/// they must equal those of the 15 tokens run from position 0; the CPU engine checks the same. The
/// tolerance, 5e-3, covers WGSL's sin/cos (2^-11 absolute on the reduced angle) at positions ~100
/// against ~10 (measured 4.5e-4 on lavapipe); cutting the window short moves logits by more than 0.1.
#[test]
fn a_windowed_model_stays_correct_far_past_its_window() {
    let dir = repo_root().join("tests/fixtures/tiny");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    convert(&dir.join("mistral-window.gguf"), &out, &ConvertOptions::default()).unwrap();
    let package = Package::open(&out).unwrap();
    let Some(ctx) = GpuContext::new().expect("opening the GPU device") else {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
        return;
    };
    let mut engine = GpuEngine::new(ctx, &package, None).unwrap();
    let vocab = engine.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..120u32).map(|i| (i * 37 + 11) % vocab).collect();
    engine.forward(&tokens[..40], false).unwrap();
    let mut last = Vec::new();
    for &t in &tokens[40..] {
        last = engine.forward(&[t], false).unwrap();
    }
    engine.reset();
    let fresh = engine.forward(&tokens[105..], false).unwrap();
    let diff = max_diff(&last, &fresh);
    eprintln!("mistral-window on the GPU: position 119 vs the same 15 tokens from position 0: {diff:.2e}");
    assert!(diff <= 5e-3, "far past the window the GPU's logits differ by {diff}");
}
