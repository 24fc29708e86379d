//! Mixtures of experts on the GPU engine: the tiny Mixtral, Qwen2-MoE (a shared expert), Qwen3-MoE,
//! OLMoE (whole-query norms), dots.llm1 (a sigmoid router with a selection bias, scaled weights,
//! an unscaled shared expert, a dense first layer) and Granite-MoE (multipliers, an unscaled shared
//! expert) fixtures of `tests/fixtures/tiny/` (8 experts, 2 per token; written by
//! `tests/fixtures/make_tiny.py` with llama.cpp's logits as the oracle) run with GPUs' kernels
//! (tiled prompt products, the decode kernel; lavapipe runs them too), and the experts each step
//! ran, read back from the device: a decode step runs exactly the experts the exact CPU engine's
//! router chose for that token in every layer (the others get no workgroups, so their weights
//! are not read), a prompt step the experts any of its tokens chose.
//!
//! Tolerance against llama.cpp: tiny_models.rs's 2e-3 for the f32 cache (measured ~2e-5). The
//! routes must be the CPU engine's exactly: the fixtures' least router margin (a probability gap
//! of 8.4e-5 at least, Qwen2-MoE's) is far above what f32 rounding moves a router probability
//! (~1e-6).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
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
fn a_mixture_runs_on_the_gpu_reading_only_the_experts_its_router_chose() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = repo_root().join("tests/fixtures/tiny");
    for name in ["mixtral", "qwen2moe", "qwen3moe", "olmoe", "dots1", "granitemoe"] {
        let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
            eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test !!!\n");
            return;
        };
        let fx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        let out = tmp.path().join(name);
        convert(&dir.join(format!("{name}.gguf")), &out, &ConvertOptions::default()).unwrap();
        let package = Package::open(&out).unwrap();
        let moe = package.manifest.config.moe.clone().expect("a mixture");
        let layers = package.manifest.config.n_layers;
        ctx.software = false;
        ctx.kv_f16 = false;
        let mut gpu = GpuEngine::new(ctx, &package, None).unwrap();
        let mut cpu = CpuEngine::from_package(&package).unwrap();

        let seq = &fx["sequences"][1];
        let tokens: Vec<u32> = seq["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let want: Vec<f32> = seq["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect();
        let (prompt, next) = tokens.split_at(tokens.len() - 1);
        let vocab = package.manifest.config.vocab_size;

        // The prompt (one chunk): every position's logits, and the experts its tokens chose.
        let got = gpu.forward(prompt, true).unwrap();
        let diff = max_diff(&got, &want[..prompt.len() * vocab]);
        eprintln!("{name}: the prompt's logits {diff:.2e} from llama.cpp's");
        assert!(diff <= 2e-3, "{name}: the prompt's logits differ from llama.cpp's by {diff}");
        cpu.forward(prompt, false).unwrap();
        let chosen = |cpu: &CpuEngine| -> Vec<BTreeSet<usize>> {
            cpu.routes().iter().map(|layer| layer.iter().flat_map(|r| r.experts.iter().copied()).collect()).collect()
        };
        let ran: Vec<BTreeSet<usize>> =
            gpu.experts_run().unwrap().into_iter().map(|l| l.into_iter().collect()).collect();
        assert_eq!(ran, chosen(&cpu), "{name}: the prompt's experts");

        // One decode step: exactly `used` experts per layer, the router's choice.
        let got = gpu.forward(next, false).unwrap();
        let diff = max_diff(&got, &want[prompt.len() * vocab..]);
        assert!(diff <= 2e-3, "{name}: the decode step's logits differ from llama.cpp's by {diff}");
        cpu.forward(next, false).unwrap();
        let ran: Vec<BTreeSet<usize>> =
            gpu.experts_run().unwrap().into_iter().map(|l| l.into_iter().collect()).collect();
        assert_eq!(ran.len(), layers);
        for (l, experts) in ran.iter().enumerate() {
            let want = if l < moe.dense_layers { 0 } else { moe.used };
            assert_eq!(experts.len(), want, "{name}: layer {l} ran {experts:?}");
        }
        assert_eq!(ran, chosen(&cpu), "{name}: the decode step's experts");
        eprintln!("{name}: a decode step ran experts {ran:?} of {} per layer", moe.experts);
    }
}
