//! `hearth`: convert models into packages, tokenize, and generate text from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hearth_core::chat::ChatMessage;
use hearth_core::constrain::{JsonSchemaFormat, ResponseFormat};
use hearth_core::convert::{convert, plan_gguf_header, ConvertOptions, QuantChoice};
use hearth_core::cpu::CpuEngine;
use hearth_core::error::HearthError;
use hearth_core::fast::FastEngine;
use hearth_core::generate::{generate, GenerateRequest};
use hearth_core::gguf::GgufFile;
use hearth_core::model::Model;
use hearth_core::package::{parse_manifest, TensorSource, MANIFEST_FILE};
use hearth_core::plan::ModelSizes;
use hearth_core::sampling::SamplingParams;
use hearth_core::synthetic::SyntheticWeights;
use hearth_gpu::{GpuContext, GpuEncoder, GpuEngine};
use serde_json::json;

/// Chat templates render on a memory budget (`hearth_core::budget`), enforced by this allocator.
#[global_allocator]
static ALLOCATOR: hearth_core::budget::BudgetedAlloc<std::alloc::System> =
    hearth_core::budget::BudgetedAlloc(std::alloc::System);

#[derive(Parser)]
#[command(name = "hearth", version, about = "Run language models on your own machine; build packages for the browser")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The fast CPU engine (8-bit activations, integer SIMD kernels, threads).
    Cpu,
    /// The exact f32 CPU reference engine.
    CpuRef,
    Gpu,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF file or a Hugging Face model directory into a Hearth model package.
    Convert {
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// keep (every GGUF type losslessly, Q4_K / Q5_K / Q6_K / Q5_x included; a safetensors
        /// model's f16 / f32) | q4 | q8 | f16. On a CPU of few cores q8 runs faster than the
        /// kept K-quant and 5-bit types (larger, and requantized from the K-quants)
        #[arg(long, default_value = "keep")]
        quant: String,
        /// Weights per q4 scale/min group: 32, 64 or 128.
        #[arg(long, default_value_t = 32)]
        group: usize,
        /// Largest shard size in MiB.
        #[arg(long, default_value_t = 32)]
        shard_mb: u64,
        /// Replace an existing package at --out.
        #[arg(long)]
        force: bool,
    },
    /// What a model needs, before it is converted or loaded: its parameters, the package's bytes
    /// and the memory on each engine at a context, as one JSON line (the figures of
    /// `Hearth.inspect()`). PATH: a package directory, or a GGUF file (sized as `hearth convert`
    /// would convert it, from its header: no tensor data is read).
    Inspect {
        path: PathBuf,
        /// KV cache positions to size for (default: the model's context length).
        #[arg(long)]
        max_context: Option<usize>,
        /// The GPU's KV cache to size: f16 (adapters with shader-f16, the default) or f32.
        #[arg(long, value_enum, default_value = "f16")]
        kv_cache: KvCache,
        /// For a GGUF: the conversion's --quant.
        #[arg(long, default_value = "keep")]
        quant: String,
        /// For a GGUF: the conversion's --group.
        #[arg(long, default_value_t = 32)]
        group: usize,
    },
    /// Print the token ids of TEXT as a JSON array.
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        /// Parse special-token texts (such as <|im_start|>) as special tokens.
        #[arg(long)]
        special: bool,
        text: String,
    },
    /// Print the embeddings of TEXTs (an encoder package: BERT) as one JSON line:
    /// {"embeddings": [[...], ...], "tokens": [...], "dims": N, "backend": "gpu" | "cpu" | "cpu-ref"}.
    Embed {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Generate text from a prompt.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Send the prompt as one user message through the model's chat template.
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the user's.
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Stop before this string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        #[command(flatten)]
        engine: EngineArgs,
        /// Report the K largest logits at the last prompt position.
        #[arg(long, default_value_t = 0)]
        top_logits: usize,
        /// With --json: each step's largest logit minus the second largest (`margins`), to tell a
        /// near-tie from a real difference when comparing engines.
        #[arg(long)]
        margins: bool,
        /// With --json: each generated token's log-probability and the K (0 to 20) most likely
        /// tokens at its step (`logprobs`: the log-softmax of the logits with --logit-bias added,
        /// before penalties, temperature, top-k/p and a grammar's mask; forced tokens get 0).
        #[arg(long, value_name = "K", requires = "json")]
        logprobs: Option<usize>,
        /// Print one JSON object instead of streaming text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Measure load, prefill and decode speed; prints one JSON line. For an encoder: embeddings per
    /// second for batches of 1, 16 and 64 texts of --prompt-tokens tokens (CPU engines).
    Bench {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Fill the manifest's tensors with random weights of the same shapes and encodings: only
        /// DIR/manifest.json is read (no shards, no tokenizer).
        #[arg(long)]
        synthetic: bool,
        /// Start N positions in, as if N tokens came before the prompt (GPU: the positions are
        /// skipped, not computed, so decode at a long context is measured cheaply).
        #[arg(long, default_value_t = 0)]
        context: usize,
        /// Time every kernel of one decode step with GPU timestamp queries ("profile" in the JSON,
        /// and a table on stderr).
        #[arg(long)]
        profile: bool,
        /// GPU: wait for each decode step's token before submitting the next (by default up to
        /// QUEUE_DEPTH steps are queued, as `generate` runs them).
        #[arg(long)]
        one_at_a_time: bool,
        /// GPU: output rows per workgroup of the decode products (1 to 8; default 4), to measure
        /// the alternatives on a GPU.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
        decode_rows: Option<u32>,
        /// GPU: add up the decode products' sums in workgroup memory even where the adapter
        /// offers subgroup operations.
        #[arg(long)]
        no_subgroups: bool,
        /// GPU: prompts' products in the tiled kernel instead of the register-blocked one, to
        /// compare them on a GPU.
        #[arg(long)]
        no_gemm: bool,
        /// Decode with the demo's sampling settings (temperature 0.7, top-k 40, top-p 0.9, seed 1)
        /// instead of greedily.
        #[arg(long)]
        sampled: bool,
    },
}

/// Which engine runs the model.
#[derive(Args, Clone, Copy)]
struct EngineArgs {
    /// gpu (the default when a hardware adapter exists), cpu (the fast CPU engine, the default
    /// otherwise) or cpu-ref (the exact f32 reference).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Precision of the GPU's KV cache: f16 by default where the adapter offers `shader-f16`,
    /// f32 elsewhere.
    #[arg(long, value_enum)]
    kv_cache: Option<KvCache>,
    /// Positions the engine holds at most (default: the model's context length): the size of the
    /// GPU's KV cache, as `maxContext` in the browser. LongRoPE models (Phi-3) choose their RoPE
    /// factors by it, as llama.cpp does by its context size.
    #[arg(long, value_name = "N")]
    max_context: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KvCache {
    F16,
    F32,
}

/// Sampling options of `generate`, named as in `SamplingParams`.
#[derive(Args)]
struct SamplingArgs {
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Add BIAS (-100 to 100) to token ID's logit before anything else (repeatable; a later one
    /// for the same ID replaces an earlier).
    #[arg(long, value_name = "ID=BIAS", value_parser = token_bias)]
    logit_bias: Vec<(u32, f32)>,
}

/// `ID=BIAS` of `--logit-bias` (the range is checked with the other sampling settings).
fn token_bias(arg: &str) -> std::result::Result<(u32, f32), String> {
    let (id, bias) = arg.split_once('=').ok_or("expected ID=BIAS, such as 123=-100")?;
    let id = id.trim().parse().map_err(|_| format!("{id:?} is not a token id"))?;
    let bias = bias.trim().parse().map_err(|_| format!("{bias:?} is not a number"))?;
    Ok((id, bias))
}

impl From<SamplingArgs> for SamplingParams {
    fn from(a: SamplingArgs) -> Self {
        SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: a.seed,
            logit_bias: a.logit_bias.into_iter().collect(),
            ..SamplingParams::default()
        }
    }
}

/// The engine asked for, or the GPU when an adapter exists and the CPU otherwise.
fn open_backend(choice: EngineArgs, model: &Model) -> Result<Box<dyn hearth_core::generate::Backend>> {
    Ok(match open_gpu(choice)? {
        Some(ctx) => Box::new(GpuEngine::new(ctx, &model.package, choice.max_context)?),
        None => open_cpu(choice, &model.package)?.1,
    })
}

/// The CPU engine asked for (the fast one unless `cpu-ref`), and its name.
fn open_cpu(
    choice: EngineArgs,
    source: &dyn TensorSource,
) -> Result<(&'static str, Box<dyn hearth_core::generate::Backend>)> {
    let context = choice.max_context.unwrap_or(source.manifest().config.context_length);
    Ok(match choice.backend {
        Some(Backend::CpuRef) => ("cpu-ref", Box::new(CpuEngine::from_source_with_context(source, context)?)),
        _ => ("cpu", Box::new(FastEngine::from_source_with_context(source, context)?)),
    })
}

/// What the generated text must be; at most one of these.
#[derive(Args)]
#[group(multiple = false)]
struct FormatArgs {
    /// The output is JSON valid against the JSON Schema in FILE.
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// The output matches PATTERN (the whole output).
    #[arg(long, value_name = "PATTERN")]
    regex: Option<String>,
    /// The output follows the Lark-style grammar in FILE (llguidance's syntax).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

impl FormatArgs {
    fn response_format(&self) -> Result<ResponseFormat> {
        let read =
            |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
        Ok(if let Some(path) = &self.json_schema {
            let schema = serde_json::from_str(&read(path)?)
                .map_err(|e| HearthError::InvalidArgument(format!("{} is not JSON: {e}", path.display())))?;
            ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat { name: None, description: None, schema, strict: None },
            }
        } else if let Some(pattern) = &self.regex {
            ResponseFormat::Regex { pattern: pattern.clone() }
        } else if let Some(path) = &self.grammar {
            ResponseFormat::Grammar { grammar: read(path)? }
        } else {
            ResponseFormat::Text
        })
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        // A bad request (an invalid schema, grammar or option value) is a usage error, as clap's are.
        let usage = matches!(e.downcast_ref::<HearthError>(), Some(HearthError::InvalidArgument(_)));
        std::process::exit(if usage { 2 } else { 1 });
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert { input, out, quant, group, shard_mb, force } => {
            if !(1..=1024).contains(&shard_mb) {
                bail!("--shard-mb must be between 1 and 1024");
            }
            let opts = ConvertOptions {
                quant: quant.parse::<QuantChoice>()?,
                group,
                shard_bytes: shard_mb << 20,
                overwrite: force,
            };
            let started = Instant::now();
            let m = convert(&input, &out, &opts).with_context(|| format!("converting {}", input.display()))?;
            let bytes: u64 = m.shards.iter().map(|s| s.size).sum();
            eprintln!(
                "wrote {} ({} tensors, {} shards, {:.1} MB) in {:.1}s",
                out.display(),
                m.tensors.len(),
                m.shards.len(),
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Inspect { path, max_context, kv_cache, quant, group } => {
            let (manifest, source) = if path.is_file() {
                let opts = ConvertOptions { quant: quant.parse::<QuantChoice>()?, group, ..Default::default() };
                // A split model's first file reads them all: `bytes` counts every file.
                let gguf = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
                let manifest = plan_gguf_header(&gguf, &opts).with_context(|| format!("reading {}", path.display()))?;
                (manifest, json!({ "kind": "gguf", "bytes": gguf.file_len }))
            } else {
                let file = path.join(MANIFEST_FILE);
                let text = std::fs::read(&file)
                    .with_context(|| format!("{} is neither a GGUF file nor a package directory", path.display()))?;
                (parse_manifest(&text, &file.display().to_string())?, json!({ "kind": "package" }))
            };
            let kv_f16 = matches!(kv_cache, KvCache::F16);
            let (sizes, ..) = ModelSizes::plan(&manifest, max_context, kv_f16, hearth_gpu::MAX_CHUNK)?;
            let mut out = serde_json::to_value(sizes)?;
            out["kvF16"] = json!(kv_f16);
            // A package's bytes are its download, as `Hearth.inspect()` says.
            let mut source = source;
            if source["kind"] == "package" {
                source["bytes"] = out["downloadBytes"].clone();
            }
            out["source"] = source;
            println!("{out}");
        }
        Command::Tokenize { model, special, text } => {
            let mut model = Model::open(&model)?;
            let ids = model.prompter.tokenizer.encode(&text, special, true)?;
            println!("{}", serde_json::to_string(&ids)?);
        }
        Command::Embed { model, engine, texts } => {
            let mut model = Model::open(&model)?;
            let Some(encoder) = model.package.manifest.config.encoder.clone() else {
                bail!("{} is a decoder: it generates text, and gives no embeddings", model.package.manifest.name);
            };
            let ids = texts
                .iter()
                .map(|text| model.prompter.tokenizer.encode_for_embedding(text, encoder.max_tokens))
                .collect::<hearth_core::Result<Vec<_>>>()?;
            let (backend, embeddings) = match open_gpu(engine)? {
                Some(ctx) => ("gpu", GpuEncoder::new(ctx, &model.package)?.embed(&ids, None)?),
                None if engine.backend == Some(Backend::CpuRef) => {
                    let mut cpu = CpuEngine::from_package(&model.package)?;
                    ("cpu-ref", ids.iter().map(|t| cpu.embed(t)).collect::<hearth_core::Result<_>>()?)
                }
                None => {
                    let mut cpu = FastEngine::from_package(&model.package)?;
                    ("cpu", ids.iter().map(|t| cpu.embed(t)).collect::<hearth_core::Result<_>>()?)
                }
            };
            let tokens: Vec<usize> = ids.iter().map(Vec::len).collect();
            let dims = model.package.manifest.config.hidden_size;
            println!("{}", json!({ "embeddings": embeddings, "tokens": tokens, "dims": dims, "backend": backend }));
        }
        Command::Generate {
            model,
            prompt,
            chat,
            system,
            max_tokens,
            sampling,
            stop,
            engine,
            top_logits,
            margins,
            logprobs,
            json,
            format,
        } => {
            let response_format = format.response_format()?;
            let mut model = Model::open(&model)?;
            let prompt_ids = if chat {
                let mut messages = Vec::new();
                if let Some(s) = &system {
                    messages.push(ChatMessage::new("system", s));
                }
                messages.push(ChatMessage::new("user", &prompt));
                model.encode_chat(&messages)?
            } else {
                model.encode_text(&prompt)?
            };
            let mut engine = open_backend(engine, &model)?;
            let req = GenerateRequest {
                prompt_ids,
                max_tokens,
                sampling: sampling.into(),
                stop_strings: stop,
                top_logits,
                margins,
                logprobs,
                response_format,
                cache_prompt: true,
                ..Default::default()
            };
            let clock = Instant::now();
            let now = || clock.elapsed().as_secs_f64();
            let mut stdout = std::io::stdout();
            let out = generate(engine.as_mut(), model.tokenizer(), &req, &now, &mut |piece| {
                if !json {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }
                Ok(())
            })?;
            if json {
                let mut obj = json!({
                    "prompt_ids": out.prompt_ids,
                    "ids": out.ids,
                    "text": out.text,
                    "finish_reason": out.finish_reason,
                    "top_logits": out.top_logits.iter().map(|(id, l)| json!([id, l])).collect::<Vec<_>>(),
                    "usage": out.usage,
                });
                if margins {
                    obj["margins"] = json!(out.margins);
                }
                if logprobs.is_some() {
                    obj["logprobs"] = json!(out.logprobs);
                }
                println!("{obj}");
            } else {
                println!();
                eprintln!(
                    "[{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s, first token after {:.2}s]",
                    out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.prefill_tok_s, out.usage.decode_tok_s, out.usage.ttft_s
                );
            }
        }
        Command::Bench {
            model,
            engine,
            prompt_tokens,
            gen_tokens,
            synthetic,
            context,
            profile,
            one_at_a_time,
            decode_rows,
            no_subgroups,
            no_gemm,
            sampled,
        } => {
            let plan = BenchPlan {
                prompt_tokens,
                gen_tokens,
                synthetic,
                context,
                profile,
                queued: !one_at_a_time,
                decode_rows,
                subgroups: !no_subgroups,
                gemm: !no_gemm,
                sampling: if sampled { demo_sampling() } else { SamplingParams::default() },
            };
            bench(&model, engine, plan)?
        }
    }
    Ok(())
}

/// What `hearth bench` measures.
struct BenchPlan {
    prompt_tokens: usize,
    gen_tokens: usize,
    synthetic: bool,
    /// Positions before the prompt.
    context: usize,
    profile: bool,
    /// GPU: decode steps queued ahead of the tokens read back.
    queued: bool,
    /// GPU: output rows per decode workgroup, if not the default.
    decode_rows: Option<u32>,
    /// GPU: subgroup sums where the adapter offers them.
    subgroups: bool,
    /// GPU: prompts' products in the register-blocked kernel (else the tiled one).
    gemm: bool,
    /// How decode steps choose their tokens (the prompt's step is greedy).
    sampling: SamplingParams,
}

/// The demo page's default settings (www/index.html).
fn demo_sampling() -> SamplingParams {
    SamplingParams { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 1, ..SamplingParams::default() }
}

/// The engine a benchmark runs: the GPU's, with its counters, or a CPU engine.
enum BenchEngine {
    Gpu(Box<GpuEngine>),
    Cpu(&'static str, Box<dyn hearth_core::generate::Backend>),
}

impl BenchEngine {
    /// Run `tokens`; the greedy next token.
    fn step(&mut self, tokens: &[u32]) -> hearth_core::Result<u32> {
        match self {
            BenchEngine::Gpu(engine) => engine.forward_argmax(tokens),
            BenchEngine::Cpu(_, engine) => Ok(hearth_core::sampling::argmax(&engine.forward(tokens, false)?)),
        }
    }

    /// `n` decode steps after the token `first`, choosing by `sampling`; the last token. With
    /// `queued`, the GPU keeps up to `QUEUE_DEPTH` steps submitted ahead of the tokens read back,
    /// as `generate` does.
    fn decode(&mut self, first: u32, n: usize, queued: bool, sampling: &SamplingParams) -> hearth_core::Result<u32> {
        use hearth_core::generate::{Backend, QueuedStep};
        let mut sampler = hearth_core::sampling::Sampler::new(sampling.clone())?;
        let history = [first];
        let engine: &mut dyn Backend = match self {
            BenchEngine::Gpu(engine) => engine.as_mut(),
            BenchEngine::Cpu(_, engine) => engine.as_mut(),
        };
        if !queued || engine.queue_depth() == 0 {
            return (0..n).try_fold(first, |id, _| engine.forward_sample(&[id], &mut sampler, &history));
        }
        let (mut submitted, mut last) = (0, first);
        for received in 0..n {
            while submitted - received < engine.queue_depth() && submitted < n {
                let ahead = submitted - received;
                let input = [last];
                let tokens = (ahead == 0).then_some(&input[..]);
                engine.queue_step(QueuedStep { tokens, sampler: &mut sampler, history: &history, ahead }, None)?;
                submitted += 1;
            }
            last = engine.next_queued()?.0;
        }
        Ok(last)
    }
}

/// Greedy decoding of a synthetic prompt; decode speed counts the tokens after the first, each timed
/// to the moment its id is back on the CPU (the GPU's work finished). With `synthetic`, the weights
/// are random ones of the manifest's shapes and encodings, and only the manifest is read. A warm-up
/// step (one token at position 0) runs before anything is timed. On the GPU the JSON adds what a
/// decode step records and reads (dispatches, weight and KV-cache bytes) and the bandwidth that
/// makes at the measured speed.
fn bench(dir: &std::path::Path, choice: EngineArgs, plan: BenchPlan) -> Result<()> {
    let BenchPlan {
        prompt_tokens,
        gen_tokens,
        synthetic,
        context,
        profile,
        queued,
        decode_rows,
        subgroups,
        gemm,
        sampling,
    } = plan;
    if prompt_tokens == 0 || gen_tokens < 2 {
        bail!("--prompt-tokens must be at least 1 and --gen-tokens at least 2");
    }
    let started = Instant::now();
    let source: Box<dyn TensorSource> =
        if synthetic { Box::new(SyntheticWeights::open(dir)?) } else { Box::new(Model::open(dir)?.package) };
    let manifest = source.manifest().clone();
    let vocab = manifest.config.vocab_size as u32;
    // A fixed pseudo-random prompt of ordinary tokens (ids away from the specials at the start).
    let (first, span) = if vocab > 300 { (100, vocab - 200) } else { (0, vocab.max(1)) };
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| first + (i * 7919) % span).collect();
    if manifest.config.encoder.is_some() {
        return bench_embeddings(source.as_ref(), choice, &prompt, started);
    }
    let positions = context + prompt_tokens + gen_tokens + usize::from(profile);
    if positions > manifest.config.context_length {
        bail!(
            "--context, --prompt-tokens and --gen-tokens add up to {positions} positions; the model has {}",
            manifest.config.context_length
        );
    }
    if choice.max_context.is_some_and(|m| m < positions) {
        bail!("--max-context is below the {positions} positions --context, --prompt-tokens and --gen-tokens need");
    }
    let gpu = open_gpu(choice)?;
    if context > 0 && gpu.is_none() {
        bail!("--context needs the GPU engine (the CPU engines compute every position)");
    }
    let mut engine = match gpu {
        Some(mut ctx) => {
            ctx.subgroups &= subgroups;
            ctx.decode_rows = decode_rows.unwrap_or(ctx.decode_rows);
            ctx.gemm = gemm;
            // Only the positions measured, unless told otherwise (LongRoPE chooses by it).
            let capacity = choice.max_context.unwrap_or(positions);
            BenchEngine::Gpu(Box::new(GpuEngine::new(ctx, source.as_ref(), Some(capacity))?))
        }
        None => {
            let (name, engine) = open_cpu(choice, source.as_ref())?;
            BenchEngine::Cpu(name, engine)
        }
    };
    let load_s = started.elapsed().as_secs_f64();
    // Warm-up: pipelines and buffers touched once before the clock runs.
    engine.step(&prompt[..1])?;
    match &mut engine {
        BenchEngine::Gpu(e) => {
            e.reset();
            e.skip_positions(context)?;
        }
        BenchEngine::Cpu(_, e) => e.reset(),
    }
    let t0 = Instant::now();
    let mut id = engine.step(&prompt)?;
    let ttft_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    id = engine.decode(id, gen_tokens - 1, queued, &sampling)?;
    let decode_s = t1.elapsed().as_secs_f64();
    let decode_tok_s = (gen_tokens - 1) as f64 / decode_s;
    let mut report = json!({
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "context": context + prompt_tokens,
        "load_s": load_s,
        "prefill_tok_s": prompt_tokens as f64 / ttft_s,
        "decode_tok_s": decode_tok_s,
        "ttft_s": ttft_s,
        "synthetic": synthetic,
        "sampling": if sampling.temperature == 0.0 {
            json!("greedy")
        } else {
            json!({"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p})
        },
    });
    match &mut engine {
        BenchEngine::Gpu(e) => {
            let counts = e.last_step();
            let bytes = counts.weight_bytes + counts.kv_bytes;
            report["backend"] = json!("gpu");
            report["adapter"] = json!(e.adapter_name());
            report["f16"] = json!(e.kv_f16());
            report["queued"] = json!(queued);
            report["decode_rows"] = json!(e.decode_rows());
            report["subgroups"] = json!(e.subgroups());
            report["gemm"] = json!(e.gemm());
            report["dispatches_per_token"] = json!(counts.dispatches);
            report["weight_bytes_per_token"] = json!(counts.weight_bytes);
            report["kv_bytes_per_token"] = json!(counts.kv_bytes);
            report["achieved_gb_s"] = json!(bytes as f64 * decode_tok_s / 1e9);
            if profile {
                report["profile"] = match e.profile_step(id) {
                    Ok(times) => {
                        print_profile(&times);
                        json!(times
                            .iter()
                            .map(|t| json!({"kernel": t.kernel, "dispatches": t.dispatches, "ms": t.ms}))
                            .collect::<Vec<_>>())
                    }
                    Err(why) => json!(why.to_string()),
                };
            }
        }
        BenchEngine::Cpu(name, _) => {
            report["backend"] = json!(name);
            report["adapter"] = json!("cpu");
            report["f16"] = json!(false);
            if profile {
                report["profile"] = json!("the CPU engines have no kernel profile");
            }
        }
    }
    println!("{report}");
    Ok(())
}

/// Texts per batch an encoder is measured at (issue 19: 1, 16 and 64 sentences).
const EMBED_BATCHES: [usize; 3] = [1, 16, 64];

/// An encoder's speed: embeddings per second for batches of 1, 16 and 64 texts of `text`'s tokens
/// each (`--prompt-tokens`; the CPU engines embed each text on its own, the GPU's packs a batch into
/// steps), after one warm-up text.
fn bench_embeddings(source: &dyn TensorSource, choice: EngineArgs, text: &[u32], started: Instant) -> Result<()> {
    let max = source.manifest().config.encoder.as_ref().map_or(0, |e| e.max_tokens);
    if text.len() > max {
        bail!("--prompt-tokens {} is more than the {max} tokens this encoder takes", text.len());
    }
    let mut adapter = None;
    let (name, (load_s, batches)) = match (open_gpu(choice)?, choice.backend) {
        (Some(ctx), _) => {
            let mut gpu = GpuEncoder::new(ctx, source)?;
            adapter = Some(gpu.adapter_name().to_string());
            ("gpu", timed_batches(started, |n| gpu.embed(&vec![text.to_vec(); n], None).map(drop))?)
        }
        (None, Some(Backend::CpuRef)) => {
            let mut cpu = CpuEngine::from_source(source)?;
            ("cpu-ref", timed_batches(started, |n| (0..n).try_for_each(|_| cpu.embed(text).map(drop)))?)
        }
        (None, _) => {
            let mut cpu = FastEngine::from_source(source)?;
            ("cpu", timed_batches(started, |n| (0..n).try_for_each(|_| cpu.embed(text).map(drop)))?)
        }
    };
    let report = json!({
        "tokens_per_text": text.len(),
        "load_s": load_s,
        "backend": name,
        "adapter": adapter,
        "threads": hearth_core::fast::threads(),
        "simd": hearth_core::fast::kernels::Simd::detect().name(),
        "batches": batches,
    });
    println!("{report}");
    Ok(())
}

/// Seconds since `started` (the engine loaded), and the JSON of each batch of `EMBED_BATCHES`:
/// `embed(n)` embeds n texts (after one warm-up text).
fn timed_batches(
    started: Instant,
    mut embed: impl FnMut(usize) -> hearth_core::Result<()>,
) -> Result<(f64, Vec<serde_json::Value>)> {
    let load_s = started.elapsed().as_secs_f64();
    embed(1)?;
    let mut batches = Vec::new();
    for n in EMBED_BATCHES {
        let t = Instant::now();
        embed(n)?;
        let seconds = t.elapsed().as_secs_f64();
        batches.push(json!({"texts": n, "seconds": seconds, "embeddings_per_s": n as f64 / seconds}));
    }
    Ok((load_s, batches))
}

/// The profile as a table on stderr, longest first.
fn print_profile(times: &[hearth_gpu::profile::KernelTime]) {
    let total: f64 = times.iter().map(|t| t.ms).sum();
    eprintln!("{:<44} {:>10} {:>10} {:>7}", "kernel", "dispatches", "ms", "share");
    for t in times {
        eprintln!("{:<44} {:>10} {:>10.4} {:>6.1}%", t.kernel, t.dispatches, t.ms, 100.0 * t.ms / total.max(1e-12));
    }
    eprintln!("{:<44} {:>10} {:>10.4}", "total", times.iter().map(|t| t.dispatches).sum::<usize>(), total);
}

/// A GPU context unless the CPU was asked for; an error if the GPU was asked for and none exists.
/// Without a choice, a software adapter (lavapipe, SwiftShader) is passed over: the CPU engine is
/// faster than a GPU emulated on the same CPU.
fn open_gpu(args: EngineArgs) -> Result<Option<GpuContext>> {
    let choice = args.backend;
    if matches!(choice, Some(Backend::Cpu | Backend::CpuRef)) {
        return Ok(None);
    }
    match GpuContext::new()? {
        Some(ctx) if ctx.software && choice.is_none() => Ok(None),
        Some(mut ctx) => {
            if let Some(kv) = args.kv_cache {
                ctx.kv_f16 = kv == KvCache::F16;
            }
            Ok(Some(ctx))
        }
        None if choice == Some(Backend::Gpu) => bail!("--backend gpu: no GPU adapter found"),
        None => Ok(None),
    }
}
