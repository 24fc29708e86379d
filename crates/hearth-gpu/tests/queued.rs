//! Queued decode steps (issue 13, item 6): the GPU engine submits up to `QUEUE_DEPTH` steps before
//! it reads the first one's token back, each later step taking its input token and its penalty
//! counts from the step before it on the GPU. The oracle is the same engine run one step at a time
//! (a wrapper that hides the queue from `generate`, so every step uploads its token and the counts
//! the CPU computes from the history): same kernels, same inputs, so the ids, the text and the
//! log-probabilities must be equal bit for bit, under greedy decoding and under seeded top-p
//! sampling with every penalty on and a window short enough that tokens leave it.
//!
//! The many combinations run on two tiny models of `tests/fixtures/tiny/` (a plain Llama and
//! Mistral's 8-key sliding window, whose ring the dropped steps write into); a stop met mid-flight
//! also runs on the real SmolLM2 (on lavapipe a SmolLM2 token costs most of a second, a tiny
//! model's a few milliseconds). Runs on whatever adapter wgpu finds; with none, each test says so
//! and returns. (`logprobs.rs` and `agents.rs` run SmolLM2 through the queued loop too.)

mod common;

use std::path::Path;

use common::{repo_root, smollm2};
use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::generate::{generate_cached, Backend, FinishReason, GenerateOutput, GenerateRequest, PromptCache};
use hearth_core::logprobs::{StepLogprobs, TokenLogprob};
use hearth_core::model::Model;
use hearth_core::sampling::{Sampler, SamplingParams};
use hearth_core::{HearthError, Result};
use hearth_gpu::{GpuContext, GpuEngine, QUEUE_DEPTH};

/// The engine with its queue hidden: `generate` then waits for every token (the loop before
/// queued steps existed).
struct OneAtATime<'a>(&'a mut GpuEngine);

impl Backend for OneAtATime<'_> {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.0.forward(tokens, all_logits)
    }
    fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        Backend::forward_sample(self.0, tokens, sampler, history)
    }
    fn forward_sample_logprobs(
        &mut self,
        tokens: &[u32],
        sampler: &mut Sampler,
        history: &[u32],
        k: usize,
    ) -> Result<(u32, StepLogprobs)> {
        Backend::forward_sample_logprobs(self.0, tokens, sampler, history, k)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn truncate(&mut self, len: usize) -> bool {
        self.0.truncate(len)
    }
    fn context_length(&self) -> usize {
        self.0.context_length()
    }
}

fn no_adapter() {
    eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
}

/// The tiny model `name` converted into `dir` and a GPU engine for it (None without an adapter).
fn tiny(name: &str, dir: &Path) -> Option<(Model, GpuEngine)> {
    let ctx = GpuContext::new().expect("opening the GPU device")?;
    let out = dir.join(name);
    let gguf = repo_root().join(format!("tests/fixtures/tiny/{name}.gguf"));
    convert(&gguf, &out, &ConvertOptions::default()).unwrap();
    let model = Model::open(&out).unwrap();
    let engine = GpuEngine::new(ctx, &model.package, None).unwrap();
    Some((model, engine))
}

/// A second engine for the same model (on the same adapter).
fn engine_like(model: &Model, context: usize) -> GpuEngine {
    let ctx = GpuContext::new().unwrap().unwrap();
    GpuEngine::new(ctx, &model.package, Some(context)).unwrap()
}

fn run(model: &Model, backend: &mut dyn Backend, cache: &mut PromptCache, req: &GenerateRequest) -> GenerateOutput {
    generate_cached(backend, model.tokenizer(), req, cache, &|| 0.0, &mut |_| Ok(())).unwrap()
}

/// Greedy; seeded top-p with repetition, presence and frequency penalties over the last 6 tokens
/// (so the kernel counts tokens out of the window as well as in); the same with log-probabilities.
fn samplings() -> Vec<(&'static str, SamplingParams, Option<usize>)> {
    let penalized = SamplingParams {
        temperature: 0.9,
        top_p: 0.9,
        seed: 11,
        repetition_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: 0.3,
        penalty_last_n: 6,
        ..Default::default()
    };
    vec![
        ("greedy", SamplingParams::default(), None),
        ("greedy, penalties", SamplingParams { temperature: 0.0, ..penalized.clone() }, None),
        ("top-p, penalties", penalized.clone(), None),
        ("top-p, penalties, logprobs", SamplingParams { seed: 12, ..penalized }, Some(3)),
    ]
}

fn prompts(model: &mut Model) -> Vec<Vec<u32>> {
    ["Once upon a time", "The rain in Spain", "1, 2, 3,"].iter().map(|q| model.encode_text(q).unwrap()).collect()
}

fn assert_same(what: &str, queued: &GenerateOutput, one: &GenerateOutput) {
    assert_eq!(queued.ids, one.ids, "{what}: queued {:?} vs one at a time {:?}", queued.text, one.text);
    assert_eq!(queued.text, one.text, "{what}");
    assert_eq!(queued.finish_reason, one.finish_reason, "{what}");
    assert_eq!(queued.logprobs.len(), one.logprobs.len(), "{what}");
    for (a, b) in queued.logprobs.iter().zip(&one.logprobs) {
        // Bit for bit: the same dispatches on the same logits and the same penalty list.
        assert_eq!(a.logprob.to_bits(), b.logprob.to_bits(), "{what}: token {}", a.id);
        let top = |e: &TokenLogprob| e.top_logprobs.iter().map(|t| (t.id, t.logprob.to_bits())).collect::<Vec<_>>();
        assert_eq!(top(a), top(b), "{what}: token {}", a.id);
    }
}

#[test]
fn queued_steps_choose_what_one_at_a_time_steps_choose() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama_linear", "mistral_swa"] {
        let Some((mut model, mut engine)) = tiny(name, tmp.path()) else { return no_adapter() };
        assert_eq!(Backend::queue_depth(&engine), QUEUE_DEPTH);
        const { assert!(QUEUE_DEPTH >= 2, "the GPU engine queues steps") };
        let mut differed = 0;
        for (p, prompt_ids) in prompts(&mut model).into_iter().enumerate() {
            let mut greedy = Vec::new();
            for (how, sampling, logprobs) in samplings() {
                let what = format!("{name}, prompt {p}, {how}");
                let req = GenerateRequest {
                    prompt_ids: prompt_ids.clone(),
                    max_tokens: 48,
                    sampling,
                    logprobs,
                    cache_prompt: false,
                    ..Default::default()
                };
                let queued = run(&model, &mut engine, &mut PromptCache::default(), &req);
                let queued_end = engine.position();
                let one = run(&model, &mut OneAtATime(&mut engine), &mut PromptCache::default(), &req);
                assert_same(&what, &queued, &one);
                // Steps queued past the last token were dropped: the cache ends where it ends when
                // every step waits (the prompt and every generated token but the last).
                assert_eq!(queued_end, engine.position(), "{what}");
                assert_eq!(engine.queued(), 0, "{what}");
                match how {
                    "greedy" => greedy = queued.ids,
                    _ => differed += usize::from(queued.ids != greedy),
                }
            }
        }
        // The penalized runs must not collapse to the greedy ids (or the test would not exercise
        // the draws and the carried counts).
        assert_eq!(differed, 9, "{name}: only {differed} of 9 penalized runs differed from greedy decoding");
    }
}

/// A stop string met while later steps are already queued: those steps are dropped and the cache
/// goes back to where the stop left it, so the next turn, reusing the cache, continues exactly as
/// on an engine that never queued. On Mistral's tiny model the dropped steps have written into the
/// ring of its 8-key window; on SmolLM2 the text is real.
#[test]
fn a_stop_met_mid_flight_drops_the_steps_behind_it_and_the_cache_stays_reusable() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((mut model, mut engine)) = tiny("mistral_swa", tmp.path()) else { return no_adapter() };
    let prompt_ids = model.encode_text("Once upon a time").unwrap();
    stop_mid_flight(&mut model, &mut engine, prompt_ids, 128, 40);
    let (mut model, mut engine) = smollm2(tmp.path(), 256).unwrap();
    let fixture = std::fs::read_to_string(repo_root().join("tests/fixtures/smollm2/generation.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    let ids = fixture["prompts"][0]["prompt_ids"].as_array().unwrap();
    let prompt_ids = ids.iter().map(|x| x.as_u64().unwrap() as u32).collect();
    stop_mid_flight(&mut model, &mut engine, prompt_ids, 256, 10);
}

fn stop_mid_flight(model: &mut Model, engine: &mut GpuEngine, prompt_ids: Vec<u32>, context: usize, max_tokens: usize) {
    let base = GenerateRequest { prompt_ids: prompt_ids.clone(), max_tokens, ..Default::default() };
    let free =
        run(model, engine, &mut PromptCache::default(), &GenerateRequest { cache_prompt: false, ..base.clone() });
    // A stop string of two characters that starts at a token boundary from the 4th token on and
    // occurs nowhere before: the generation ends there with several budgeted steps left.
    let tokenizer = model.tokenizer();
    let stop = (3..free.ids.len() - 3)
        .find_map(|k| {
            let before = tokenizer.decode(&free.ids[..k], false).ok()?;
            let rest = free.text.strip_prefix(before.as_str())?;
            let stop: String = rest.chars().take(2).collect();
            (stop.chars().count() == 2 && !before.contains(&stop) && !stop.contains('\u{fffd}')).then_some(stop)
        })
        .unwrap_or_else(|| panic!("no stop string to cut {:?} with", free.text));
    let req = GenerateRequest { stop_strings: vec![stop.clone()], ..base.clone() };

    let mut cache = PromptCache::default();
    let queued = run(model, engine, &mut cache, &req);
    assert_eq!(engine.queued(), 0);
    let mut fresh = engine_like(model, context);
    let one = run(model, &mut OneAtATime(&mut fresh), &mut PromptCache::default(), &req);
    assert_same(&format!("stop {stop:?}"), &queued, &one);
    assert_eq!(queued.finish_reason, FinishReason::Stop);
    assert!(queued.ids.len() + 3 <= max_tokens, "the stop came at token {} of {max_tokens}", queued.ids.len());
    assert_eq!(engine.position(), fresh.position(), "the dropped steps' positions were given back");

    // The next turn: the exchange so far and more text, its prefix taken from the cache.
    let mut next = prompt_ids.clone();
    next.extend(&queued.ids);
    next.extend(model.encode_text(" And then").unwrap());
    let turn = GenerateRequest { prompt_ids: next, stop_strings: Vec::new(), ..base };
    let reused = run(model, engine, &mut cache, &turn);
    assert!(reused.usage.cached_tokens > prompt_ids.len(), "cached {}", reused.usage.cached_tokens);
    let recomputed = GenerateRequest { cache_prompt: false, ..turn };
    let recomputed = run(model, &mut OneAtATime(&mut fresh), &mut PromptCache::default(), &recomputed);
    assert_same("the next turn", &reused, &recomputed);
}

/// An abort (the caller's text callback failing, as a closed stream does) stops the loop at that
/// token: the steps queued behind it are dropped, and the engine serves the next request as if
/// nothing had been queued.
#[test]
fn an_abort_drops_the_queued_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((mut model, mut engine)) = tiny("llama_linear", tmp.path()) else { return no_adapter() };
    let prompt_ids = model.encode_text("Once upon a time").unwrap();
    let req = GenerateRequest { prompt_ids, max_tokens: 16, cache_prompt: false, ..Default::default() };
    let mut pieces = 0;
    let aborted =
        generate_cached(&mut engine, model.tokenizer(), &req, &mut PromptCache::default(), &|| 0.0, &mut |_| {
            pieces += 1;
            match pieces {
                3 => Err(HearthError::InvalidArgument("aborted".into())),
                _ => Ok(()),
            }
        });
    assert!(aborted.is_err());
    assert_eq!(pieces, 3, "no text after the abort");
    assert_eq!(engine.queued(), 0, "the steps queued behind the abort were dropped");
    let after = run(&model, &mut engine, &mut PromptCache::default(), &req);
    let one = run(&model, &mut OneAtATime(&mut engine), &mut PromptCache::default(), &req);
    assert_same("after an abort", &after, &one);
}
