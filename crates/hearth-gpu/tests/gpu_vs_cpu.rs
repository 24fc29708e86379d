//! The whole GPU forward pass against the CPU reference engine (which the hearth-core tests check
//! against llama.cpp) and against llama.cpp's own greedy continuations, on SmolLM2-135M-Instruct.
//! Runs on whatever adapter wgpu finds: Mesa's lavapipe on machines without a GPU. With no adapter
//! at all, each test says so loudly and returns. Kernel-by-kernel checks are in `kernels.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "../../hearth-core/tests/common/scratch.rs"]
mod scratch;

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
use hearth_core::manifest::{Manifest, TensorEntry};
use hearth_core::package::{Package, TensorSource};
use hearth_core::sampling::argmax;
use hearth_gpu::{GpuContext, GpuEngine};

/// The adapter, with an f32 KV cache unless a test asks for f16 (which adapters with `shader-f16`,
/// lavapipe among them, get by default).
fn context() -> Option<GpuContext> {
    let mut ctx = GpuContext::new().expect("opening the GPU device");
    match &mut ctx {
        Some(ctx) => ctx.kv_f16 = false,
        None => eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n"),
    }
    ctx
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn smollm2_package() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        assert!(Command::new("bash").arg(root.join("scripts/fetch-smollm2.sh")).status().unwrap().success());
        let out = scratch::scratch_dir().join("smollm2");
        convert(&root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"), &out, &ConvertOptions::default()).unwrap();
        out
    })
    .clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// (prompt ids, llama.cpp's greedy continuation) of the 15 fixture prompts: llama.cpp evaluating
/// the same weights in F32 with an F32 KV cache (see tests/fixtures/make_reference.py).
fn fixture_prompts() -> Vec<(Vec<u32>, Vec<u32>)> {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/smollm2/generation.json")).unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    fx["prompts"].as_array().unwrap().iter().map(|p| (ids(&p["prompt_ids"]), ids(&p["greedy_ids"]))).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// `n` greedy tokens after the forward pass that gave the last-position logits `first`: the first
/// chosen from them, each next one on the GPU (4 bytes read back). The prompt runs once: on
/// lavapipe each of its tokens costs a good part of a second.
fn greedy_after(gpu: &mut GpuEngine, first: &[f32], n: usize) -> Vec<u32> {
    let mut out = vec![argmax(first)];
    while out.len() < n {
        out.push(gpu.forward_argmax(&[*out.last().unwrap()]).unwrap());
    }
    out
}

/// Same function, different f32 summation order (the GPU reduces in other orders over 30 layers):
/// logits of magnitude ~30 agreed to 7.6e-5 when this was written; 1e-3 (the CPU engine's tolerance
/// against llama.cpp) leaves room for other GPUs' arithmetic and is far below any real error (a
/// wrong kernel moves logits by whole units).
const LOGIT_TOLERANCE: f32 = 1e-3;
const GREEDY_TOKENS: usize = 16;
const MIN_PROMPTS_MATCHING: usize = 12;

/// All 15 fixture prompts: last-position logits against the CPU engine, and 16 greedy tokens
/// against llama.cpp's (which the CPU engine reproduces exactly, see hearth-core's tests).
#[test]
fn smollm2_on_the_gpu_matches_the_cpu_engine_and_llama_cpp() {
    let Some(ctx) = context() else { return };
    let package = Package::open(smollm2_package()).unwrap();
    let mut gpu = GpuEngine::new(ctx, &package, Some(256)).unwrap();
    let mut cpu = CpuEngine::from_package(&package).unwrap();
    let mut worst = 0f32;
    let mut matching = 0;
    let prompts = fixture_prompts();
    for (i, (prompt, expected)) in prompts.iter().enumerate() {
        gpu.reset();
        cpu.reset();
        let g = gpu.forward(prompt, false).unwrap();
        let c = cpu.forward(prompt, false).unwrap();
        worst = worst.max(max_diff(&g, &c));
        assert_eq!(argmax(&g), argmax(&c), "prompt {i}: top-1 differs");
        // llama.cpp's continuation ends early where it produced an end-of-generation token.
        let k = GREEDY_TOKENS.min(expected.len());
        let greedy = greedy_after(&mut gpu, &g, k);
        if greedy[..] == expected[..k] {
            matching += 1;
        } else {
            eprintln!("prompt {i}: GPU {greedy:?}\n   llama.cpp {:?}", &expected[..k]);
        }
    }
    eprintln!(
        "largest GPU-CPU logit difference: {worst:.2e}; greedy {GREEDY_TOKENS}-token matches with llama.cpp: \
         {matching}/{}",
        prompts.len()
    );
    assert!(worst < LOGIT_TOLERANCE, "logits differ by {worst}");
    assert!(matching >= MIN_PROMPTS_MATCHING, "only {matching} of {} continuations match", prompts.len());
}

/// The kernels hardware GPUs get (the multi-row decode products, the tiled prefill products, the
/// split attention, the norm fused into the products), forced on whatever adapter runs the tests,
/// with subgroup sums where the adapter has them and with the workgroup-memory fallback browsers
/// run: one prompt, last-position logits and eight greedy tokens.
#[test]
fn smollm2_with_the_gpu_kernels_matches_the_cpu_engine() {
    let package = Package::open(smollm2_package()).unwrap();
    let mut cpu = CpuEngine::from_package(&package).unwrap();
    let (prompt, expected) = &fixture_prompts()[10];
    let want = cpu.forward(prompt, false).unwrap();
    for subgroups in [true, false] {
        let Some(mut ctx) = context() else { return };
        ctx.software = false;
        ctx.subgroups &= subgroups;
        let mut gpu = GpuEngine::new(ctx, &package, Some(128)).unwrap();
        let got = gpu.forward(prompt, false).unwrap();
        let worst = max_diff(&got, &want);
        assert!(worst < LOGIT_TOLERANCE, "subgroups {subgroups}: logits differ by {worst}");
        assert_eq!(greedy_after(&mut gpu, &got, 8), expected[..8], "subgroups {subgroups}");
    }
}

/// The f16 KV cache (what adapters with `shader-f16` get by default). Keys and values rounded to f16
/// (2^-11 relative) moved the logits by 1.2e-2 when this was written; 0.1 allows for other GPUs and
/// still catches any misplaced or misread value (those move logits by whole units). Near-ties may
/// flip later in a continuation, so greedy agreement is asked of the first 8 tokens.
#[test]
fn smollm2_with_an_f16_kv_cache_stays_close_to_the_cpu_engine() {
    let Some(mut ctx) = context() else { return };
    ctx.kv_f16 = true;
    let package = Package::open(smollm2_package()).unwrap();
    let mut gpu = GpuEngine::new(ctx, &package, Some(128)).unwrap();
    assert!(gpu.kv_f16());
    let mut cpu = CpuEngine::from_package(&package).unwrap();
    let mut worst = 0f32;
    for i in [3, 12] {
        let (prompt, expected) = &fixture_prompts()[i];
        cpu.reset();
        gpu.reset();
        let got = gpu.forward(prompt, false).unwrap();
        worst = worst.max(max_diff(&got, &cpu.forward(prompt, false).unwrap()));
        assert_eq!(greedy_after(&mut gpu, &got, 8), expected[..8], "prompt {i}");
    }
    eprintln!("f16 KV cache: largest logit difference {worst:.2e}");
    assert!(worst < 0.1, "logits differ by {worst}");
}

/// Tables larger than the adapter's storage binding limit are split into row pieces, not refused:
/// with the limit forced down to 8 MiB, SmolLM2's 27 MiB embedding / output head is cut in four.
/// Each output row is computed by the same arithmetic either way, so the logits are identical.
#[test]
fn splitting_the_vocabulary_to_fit_small_bindings_changes_nothing() {
    let Some(ctx) = context() else { return };
    let package = Package::open(smollm2_package()).unwrap();
    let (prompt, _) = &fixture_prompts()[5];
    let whole = GpuEngine::new(ctx, &package, Some(64)).unwrap().forward(prompt, true).unwrap();
    let mut ctx = context().unwrap();
    ctx.limits.max_storage_buffer_binding_size = 8 << 20;
    let split = GpuEngine::new(ctx, &package, Some(64)).unwrap().forward(prompt, true).unwrap();
    assert_eq!(whole, split);
}

/// A model package seen with fewer layers: the real first layers of SmolLM2 and its real head.
struct FirstLayers {
    package: Package,
    manifest: Manifest,
}

impl TensorSource for FirstLayers {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    fn read_tensor_bytes(&self, entry: &TensorEntry) -> hearth_core::Result<Vec<u8>> {
        self.package.read_tensor_bytes(entry)
    }
    fn origin(&self) -> String {
        "first layers of SmolLM2".into()
    }
}

/// A 1,500-token prompt through prefill (positions far past the fixtures'), against the CPU engine:
/// in 24 chunks of 64 tokens on a software adapter's kernels, and in chunks of 512, 512 and 476
/// with the kernels GPUs get (their 64 × 64 prompt tiles, 8 token tiles a product, the split
/// attention kernel over up to 1,500 positions; a hardware GPU runs only these). Two of SmolLM2's
/// 30 layers keep this quick on software adapters while still running every kernel at every
/// position; f32 reordering over 1,500-term attention sums stayed at 6e-5, inside the same 1e-3.
#[test]
fn a_1500_token_prompt_matches_the_cpu_engine() {
    let Some(probe) = context() else { return };
    let kernel_sets: &[bool] = if probe.software { &[true, false] } else { &[false] };
    drop(probe);
    let package = Package::open(smollm2_package()).unwrap();
    let mut manifest = package.manifest.clone();
    manifest.config.n_layers = 2;
    let source = FirstLayers { package, manifest };
    let prompt: Vec<u32> = (0..1500u32).map(|i| 100 + (i * 7919) % 49000).collect();
    let c = CpuEngine::from_source(&source).unwrap().forward(&prompt, false).unwrap();
    for &software in kernel_sets {
        let Some(mut ctx) = context() else { return };
        ctx.software = software;
        let chunk = if ctx.software { hearth_gpu::MAX_CHUNK } else { hearth_gpu::GPU_CHUNK };
        let mut gpu = GpuEngine::new(ctx, &source, Some(1600)).unwrap();
        assert_eq!(gpu.prompt_chunk(), chunk, "software kernels {software}");
        let g = gpu.forward(&prompt, false).unwrap();
        let worst = max_diff(&g, &c);
        eprintln!("1,500-token prompt in chunks of {chunk}: largest logit difference {worst:.2e}");
        assert!(worst < LOGIT_TOLERANCE, "chunks of {chunk}: logits differ by {worst}");
        assert_eq!(argmax(&g), argmax(&c), "chunks of {chunk}");
    }
}

/// Loading as a browser does, shard by shard, must give the engine exactly the weights of loading
/// tensor by tensor. The package's bytes are re-cut into shards of an odd size (5 MiB + 13 bytes),
/// so most tensors, including Q/K/V and gate/up partners, start in one shard and end in another,
/// and pieces land at offsets that are not whole words (which the GPU writes need); the shards are
/// then fed in reverse order. The logits must be bit-identical, and an engine that
/// misses a shard must refuse to finish.
#[test]
fn loading_shard_by_shard_in_any_order_gives_identical_weights() {
    let Some(ctx) = context() else { return };
    let package = Package::open(smollm2_package()).unwrap();
    let (prompt, _) = &fixture_prompts()[2];
    let whole = GpuEngine::new(ctx, &package, Some(64)).unwrap().forward(prompt, true).unwrap();

    // Every tensor at its position in one byte sequence, then that sequence cut anew.
    let m = &package.manifest;
    let mut starts = vec![0u64];
    for s in &m.shards {
        starts.push(starts.last().unwrap() + s.size);
    }
    let mut all = Vec::new();
    for s in &m.shards {
        all.extend(std::fs::read(package.dir.join(&s.file)).unwrap());
    }
    let cut = (5 << 20) + 13;
    let mut recut = m.clone();
    recut.shards = all
        .chunks(cut)
        .enumerate()
        .map(|(i, c)| hearth_core::manifest::FileEntry {
            file: format!("piece-{i}"),
            size: c.len() as u64,
            sha256: String::new(),
        })
        .collect();
    let mut spanning = 0;
    for t in &mut recut.tensors {
        let global = starts[t.shard] + t.offset;
        (t.shard, t.offset) = ((global / cut as u64) as usize, global % cut as u64);
        spanning += usize::from((global + t.length - 1) / cut as u64 != global / cut as u64);
    }
    assert!(spanning >= 5, "only {spanning} tensors cross a shard boundary");

    let feed = |skip: Option<usize>| {
        let mut pending = GpuEngine::prepare(context().unwrap(), &recut, "recut", Some(64)).unwrap();
        for (i, bytes) in all.chunks(cut).enumerate().rev() {
            if Some(i) != skip {
                pending
                    .feed_shard(i, bytes.len() as u64, &mut |at, dst| {
                        dst.copy_from_slice(&bytes[at as usize..at as usize + dst.len()])
                    })
                    .unwrap();
            }
        }
        pending
    };
    let pending = feed(None);
    assert_eq!(pending.bytes_fed(), m.tensors.iter().map(|t| t.length).sum::<u64>() - unused_bytes(m));
    let sharded = pending.finish().unwrap().forward(prompt, true).unwrap();
    assert_eq!(whole, sharded);

    let err = feed(Some(3)).finish().err().expect("a missing shard must be an error").to_string();
    assert!(err.contains("feed every shard"), "{err}");
}

/// Bytes of tensors that no GPU buffer reads (none for SmolLM2; the padding between a tensor's
/// parts is never fed).
fn unused_bytes(m: &Manifest) -> u64 {
    m.tensors.iter().map(|t| t.length - t.parts.values().map(|p| p.length).sum::<u64>()).sum()
}

/// What a decode step reports about itself (`hearth bench`'s counters), against counts from
/// elsewhere: its dispatches against the structure below and the passes a profiled step times
/// (where the adapter has timestamp queries), at a short context (one attention split, no combine
/// pass) and past 256 positions (several splits and their combine pass); its weight bytes against the package's shards (every tensor once, the tied
/// embedding table as the output head, and one row of it as the embedding); its KV-cache bytes against the model's shape (30 layers, K and V of
/// 3 × 64 f16 values per visible position: once per KV head in the split kernel, once per query
/// head, 3 to a KV head, in the software row split).
#[test]
fn a_decode_step_counts_what_it_records_and_reads() {
    let Some(base) = context() else { return };
    let timestamps = base.timestamps;
    let package = Package::open(smollm2_package()).unwrap();
    let shard_bytes: u64 = package.manifest.shards.iter().map(|s| s.size).sum();
    let table = package.manifest.tensors.iter().find(|e| e.name == "token_embd.weight").unwrap().length;
    let padding = 256 * package.manifest.tensors.len() as u64;
    for software in [true, false] {
        let mut ctx = context().unwrap();
        (ctx.software, ctx.kv_f16) = (software, true);
        let mut gpu = GpuEngine::new(ctx, &package, Some(512)).unwrap();
        let first = gpu.forward_argmax(&fixture_prompts()[0].0[..5]).unwrap();
        let next = gpu.forward_argmax(&[first]).unwrap();
        let counts = gpu.last_step();
        // Embedding; per layer (software) norm, QKV, RoPE + KV store, attention (the row split),
        // output, norm, gate/up, down, or (GPUs) norm + QKV + RoPE + KV store, attention split,
        // output, norm + gate/up, down, plus the attention's combine pass past 4 tiles of 64
        // positions; the head (after a norm pass on software adapters); the sampler, a greedy
        // step's in two (its argmax over 12 blocks of 4,096 of the 49,152 tokens, then `sample`).
        let (per_layer, long_per_layer) = if software { (8, 8) } else { (5, 6) };
        let head = if software { 2 } else { 1 };
        let sampler = 2;
        assert_eq!(counts.dispatches, 1 + 30 * per_layer + head + sampler, "{counts:?}");
        let profiled = |gpu: &mut GpuEngine, token: u32, dispatches: usize| {
            if timestamps {
                let profile = gpu.profile_step(token).unwrap();
                assert_eq!(profile.iter().map(|k| k.dispatches).sum::<usize>(), dispatches, "{profile:?}");
            } else {
                eprintln!(
                    "\n!!! the adapter has no timestamp queries: dispatch count not checked against a profile !!!\n"
                );
            }
        };
        profiled(&mut gpu, next, counts.dispatches);
        // Shards hold every tensor once (gaps under 256 bytes between them); the tied table counts
        // once as the head, plus the one row its embedding reads.
        let most = shard_bytes + table / 49152;
        assert!(counts.weight_bytes <= most && most - counts.weight_bytes <= padding, "{counts:?}");
        let readers = if software { 3 } else { 1 };
        assert_eq!(counts.kv_bytes, 30 * 6 * 2 * 192 * 2 * readers, "decode at position 5, software {software}");
        gpu.skip_positions(300).unwrap();
        gpu.forward_argmax(&[next]).unwrap();
        let long = gpu.last_step();
        assert_eq!(long.dispatches, 1 + 30 * long_per_layer + head + sampler, "decode at position 307: {long:?}");
        profiled(&mut gpu, next, long.dispatches);
    }
}

/// A context of 2^24 positions (the manifest's bound): SmolLM2's KV cache for it (768 bytes a row)
/// cannot be bound whole on any adapter of today, so `prepare` refuses with `AdapterLimitsError`
/// naming the cache and a `maxContext` that fits, where wgpu used to panic ("Buffer binding range
/// exceeds ...") once the buffer was used.
#[test]
fn a_context_past_the_adapters_binding_limit_is_refused_naming_a_max_context_that_fits() {
    let Some(ctx) = context() else { return };
    let limit = ctx.limits.max_storage_buffer_binding_size;
    let package = Package::open(smollm2_package()).unwrap();
    let mut manifest = package.manifest.clone();
    manifest.config.context_length = 1 << 24;
    let Err(err) = GpuEngine::prepare(ctx, &manifest, "edited", None) else { panic!("prepared") };
    let message = err.to_string();
    assert!(matches!(err, hearth_core::HearthError::AdapterLimit(_)), "{message}");
    assert!(message.contains("KV cache") && message.contains("maxContext at most"), "{message}");
    let fits: u64 = message.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a number at the end");
    let row_bytes = 3 * 64 * 4; // 3 KV heads of 64 dimensions, f32
    assert!(fits * row_bytes <= limit && (fits + 1) * row_bytes > limit, "{fits} rows for a limit of {limit}");
}
