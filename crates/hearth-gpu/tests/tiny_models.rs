//! The GPU engine on the tiny random models of `tests/fixtures/tiny/` (of the architectures the
//! engines run; written by `tests/fixtures/make_tiny.py`) against llama.cpp's logits at every
//! position, with the f32 and the f16 KV cache. The hearth-core test of the same fixtures checks the
//! CPU engine and the converter; here every kernel variant those architectures need (Q/K/V biases,
//! NeoX and interleaved RoPE, frequency factors, GQA, windows, Gemma 3's QK-norm, post-norms, GeGLU,
//! embedding scale and local RoPE base) runs on whatever adapter wgpu finds (lavapipe without a GPU).
//! GELU models are compared with the fixture's float64 pass with the exact tanh-GELU, as the engines
//! compute it (llama.cpp's is an f16 table; see the hearth-core test), within the same tolerances.
//!
//! Tolerances, on logits of standard deviation 1.5-3 (largest ~10): with the f32 cache 2e-3
//! (measured 1.6e-5 on lavapipe; WGSL promises sin and cos only to 2^-11 absolute on the reduced
//! angle, which lets a conforming GPU move rotated keys and queries by ~1e-3 relative). With the f16
//! cache keys and values are also rounded to 11 significant bits: 5e-2 (measured 1.2e-2). A missing
//! bias, window or a wrong pairing moves logits by 0.1 or more (the Q/K/V bias checked by disabling
//! it).

use std::path::{Path, PathBuf};

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
use hearth_core::manifest::ARCHITECTURES;
use hearth_core::package::Package;
use hearth_gpu::{GpuContext, GpuEngine};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fixture sequence's token ids.
fn tokens(seq: &serde_json::Value) -> Vec<u32> {
    seq["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// Logits `[position][vocab]` of a fixture, flattened.
fn logits(rows: &serde_json::Value) -> Vec<f32> {
    rows.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect()
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
        if !ARCHITECTURES.contains(&fx["arch"].as_str().unwrap()) {
            eprintln!("{name}: architecture {} not supported yet, skipped", fx["arch"]);
            continue;
        }
        let out = tmp.path().join(&name);
        convert(&dir.join(fx["gguf"].as_str().unwrap()), &out, &ConvertOptions::default()).unwrap();
        let package = Package::open(&out).unwrap();
        for (kv_f16, tolerance) in [(false, 2e-3f32), (true, 5e-2)] {
            let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
                eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
                return;
            };
            ctx.kv_f16 = kv_f16;
            let mut engine = GpuEngine::new(ctx, &package, None).unwrap();
            for seq in fx["sequences"].as_array().unwrap() {
                let tokens = tokens(seq);
                // GELU models: the exact-GELU float64 pass; the others: llama.cpp.
                let want = logits(seq.get("logits_f64_exact_gelu").unwrap_or(&seq["logits"]));
                engine.reset();
                let diff = max_diff(&engine.forward(&tokens, true).unwrap(), &want);
                eprintln!("{name}: {} tokens, f16 cache {kv_f16}: max |GPU - oracle| = {diff:.2e}", tokens.len());
                assert!(diff <= tolerance, "{name} (f16 cache {kv_f16}): logits differ from the oracle by {diff}");
            }
        }
    }
}

/// Phi-3's LongRoPE on the GPU: an engine created for at most the original context (256 positions)
/// takes the short factors, one created for more the long ones, as llama.cpp does (the fixture's
/// `logits_short_factors` at n_ctx 256 and `logits` at 1,024 differ by whole units). f32 cache, the
/// tolerance of the first test.
#[test]
fn longrope_takes_its_factors_by_the_context_the_engine_holds() {
    let dir = repo_root().join("tests/fixtures/tiny");
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("phi3.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("phi3");
    convert(&dir.join("phi3.gguf"), &out, &ConvertOptions::default()).unwrap();
    let package = Package::open(&out).unwrap();
    let seq = &fx["sequences"][1];
    let tokens = tokens(seq);
    for (context, oracle) in [(256, "logits_short_factors"), (257, "logits")] {
        let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
            eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
            return;
        };
        ctx.kv_f16 = false;
        let mut engine = GpuEngine::new(ctx, &package, Some(context)).unwrap();
        let diff = max_diff(&engine.forward(&tokens, true).unwrap(), &logits(&seq[oracle]));
        eprintln!("phi3, context {context}: max |GPU - llama.cpp| = {diff:.2e}");
        assert!(diff <= 2e-3, "phi3 at context {context}: logits differ from llama.cpp by {diff}");
    }
}

/// Generation far past the window on the GPU: 120 positions with a window of 8, one token at a
/// time after a 40-token prompt, so each layer's ring (8 + tokens per chunk - 1 rows) wraps. The
/// CPU engine, whose ring the hearth-core test checks exactly (the last logits equal those of the
/// receptive field run alone), must agree, both with f32 caches. Tolerance 2e-3, as above: WGSL's
/// sin/cos (2^-11 absolute on the reduced angle); lavapipe: 1e-5. A ring that lost or misplaced
/// keys moves logits by whole units.
#[test]
fn a_windowed_model_stays_correct_far_past_its_window() {
    let dir = repo_root().join("tests/fixtures/tiny");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    convert(&dir.join("mistral_swa.gguf"), &out, &ConvertOptions::default()).unwrap();
    let package = Package::open(&out).unwrap();
    let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
        return;
    };
    ctx.kv_f16 = false; // the f32 cache, so that only the ring and the rotations can differ
    let mut gpu = GpuEngine::new(ctx, &package, None).unwrap();
    let mut cpu = CpuEngine::from_package(&package).unwrap();
    let vocab = gpu.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..120u32).map(|i| (i * 37 + 11) % vocab).collect();
    gpu.forward(&tokens[..40], false).unwrap();
    cpu.forward(&tokens[..40], false).unwrap();
    let mut worst = 0f32;
    for (i, &t) in tokens[40..].iter().enumerate() {
        let diff = max_diff(&gpu.forward(&[t], false).unwrap(), &cpu.forward(&[t], false).unwrap());
        assert!(diff <= 2e-3, "position {}: GPU and CPU differ by {diff}", 40 + i);
        worst = worst.max(diff);
    }
    eprintln!("mistral_swa, positions 40..120 one at a time: max |GPU - CPU| = {worst:.2e}");
}

/// The kernels hardware GPUs get, forced on whatever adapter runs the tests, one token at a time:
/// a decode step's QKV product then rotates and stores its own keys (matvec.wgsl's `decode rope`,
/// unless QK-norms keep rope.wgsl's pass), which no other test of these architectures reaches on a
/// software adapter. Every position of the long sequence against the oracle, f32 cache, within the
/// tolerance of the test above. SmolLM3's unrotated layer goes through that epilogue with no pair
/// to rotate.
#[test]
fn decoding_with_the_gpu_kernels_matches_llama_cpp_at_every_position() {
    let dir = repo_root().join("tests/fixtures/tiny");
    let tmp = tempfile::tempdir().unwrap();
    let mut jsons: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    jsons.sort();
    for path in jsons {
        let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !ARCHITECTURES.contains(&fx["arch"].as_str().unwrap()) {
            continue;
        }
        let out = tmp.path().join(&name);
        convert(&dir.join(fx["gguf"].as_str().unwrap()), &out, &ConvertOptions::default()).unwrap();
        let package = Package::open(&out).unwrap();
        let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
            eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test !!!\n");
            return;
        };
        ctx.software = false;
        ctx.kv_f16 = false;
        let mut engine = GpuEngine::new(ctx, &package, None).unwrap();
        let seq = &fx["sequences"][1];
        let oracle = seq.get("logits_f64_exact_gelu").unwrap_or(&seq["logits"]);
        let mut worst = 0f32;
        for (t, row) in seq["tokens"].as_array().unwrap().iter().zip(oracle.as_array().unwrap()) {
            let want: Vec<f32> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let got = engine.forward(&[t.as_u64().unwrap() as u32], false).unwrap();
            worst = worst.max(max_diff(&got, &want));
        }
        eprintln!("{name}: one token at a time with the GPU kernels: max |GPU - oracle| = {worst:.2e}");
        assert!(worst <= 2e-3, "{name}: decoding with the GPU kernels differs from the oracle by {worst}");
    }
}

/// Gate and up of different encodings (a GGUF may keep them as different block types): the
/// llama_q5_k_m fixture's layer-1 up projection re-encoded from Q5_K to q8, so that layer's gate
/// (q5k) and up (q8) cannot share the fused gated product and run as one product into
/// [gate | up] and glu.wgsl's pass. The exact CPU engine on the same package is the oracle (the
/// re-encoding moved the values off llama.cpp's), at every position of a prompt and of decoding
/// one token at a time, on the software adapter's kernels and on the ones GPUs get; f32 cache,
/// tolerance 2e-3 as above (lavapipe: ~1e-5). A wrong activation or a gate read as up moves logits
/// by whole units.
#[test]
fn gate_and_up_of_different_encodings_match_the_cpu_engine() {
    use hearth_core::package::PackageWriter;
    use hearth_core::quant::{DType, Tensor};

    let dir = repo_root().join("tests/fixtures/tiny");
    let tmp = tempfile::tempdir().unwrap();
    let kept = tmp.path().join("kept");
    convert(&dir.join("llama_q5_k_m.gguf"), &kept, &ConvertOptions::default()).unwrap();
    let source = Package::open(&kept).unwrap();
    let mixed = tmp.path().join("mixed");
    let mut writer = PackageWriter::new(&mixed, 32 << 20, false).unwrap();
    for t in &source.manifest.tensors {
        let bytes = source.read_tensor_bytes(t).unwrap();
        let mut tensor = Tensor::from_bytes(&t.name, t.shape.clone(), t.dtype, t.group_size, &bytes).unwrap();
        if t.name == "blk.1.ffn_up.weight" {
            assert_eq!(t.dtype, DType::Q5k, "the fixture's up projection");
            tensor = Tensor::from_f32(t.shape.clone(), &tensor.to_f32(), DType::Q8, 32).unwrap();
        }
        writer.add_tensor(&t.name, &tensor).unwrap();
    }
    let tokenizer = &source.manifest.tokenizer.file;
    writer.add_file(tokenizer, &std::fs::read(kept.join(tokenizer)).unwrap()).unwrap();
    writer.finish(source.manifest.clone()).unwrap();
    let package = Package::open(&mixed).unwrap();

    let vocab = package.manifest.config.vocab_size as u32;
    let tokens: Vec<u32> = (0..24u32).map(|i| (i * 53 + 7) % vocab).collect();
    let mut cpu = CpuEngine::from_package(&package).unwrap();
    let want_prompt = cpu.forward(&tokens[..16], true).unwrap();
    let want_steps: Vec<Vec<f32>> = tokens[16..].iter().map(|&t| cpu.forward(&[t], false).unwrap()).collect();
    for software in [true, false] {
        let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
            eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test !!!\n");
            return;
        };
        ctx.software &= software;
        ctx.kv_f16 = false;
        let mut gpu = GpuEngine::new(ctx, &package, None).unwrap();
        let mut worst = max_diff(&gpu.forward(&tokens[..16], true).unwrap(), &want_prompt);
        for (&t, want) in tokens[16..].iter().zip(&want_steps) {
            worst = worst.max(max_diff(&gpu.forward(&[t], false).unwrap(), want));
        }
        eprintln!("gate q5k, up q8 (software kernels {software}): max |GPU - CPU| = {worst:.2e}");
        assert!(worst <= 2e-3, "gate and up of different encodings (software kernels {software}): {worst}");
    }
}
