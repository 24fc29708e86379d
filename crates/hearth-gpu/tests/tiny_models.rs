//! The GPU engine on the tiny random models of `tests/fixtures/tiny/` (one per supported
//! architecture, written by `tests/fixtures/make_tiny.py`) against llama.cpp's logits at every
//! position, with the f32 and the f16 KV cache. The hearth-core test of the same fixtures checks the
//! CPU engine and the converter; here every kernel variant those architectures need (Q/K/V biases,
//! NeoX and interleaved RoPE, frequency factors, GQA) runs on whatever adapter wgpu finds
//! (lavapipe without a GPU).
//!
//! Tolerances, on logits of standard deviation ~1: with the f32 cache 1e-4 (measured 6e-6 on
//! lavapipe, the fixture's rounding to 6 significant digits; the margin is for GPUs whose sin/cos,
//! promised to 2^-11 on the reduced angle, are less exact than lavapipe's at these positions). With
//! the f16 cache keys and values are rounded to 11 significant bits: 4e-3 (measured 8e-4). A missing
//! bias or a wrong pairing moves logits by 0.1 or more (the Q/K/V bias checked by disabling it).

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
        for (kv_f16, tolerance) in [(false, 1e-4f32), (true, 4e-3)] {
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
