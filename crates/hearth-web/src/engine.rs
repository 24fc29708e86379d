//! Generation, one token per `step()`: JavaScript streams each step's text, checks its AbortSignal
//! between steps and queues calls, while the decode loop itself is `hearth_core`'s `Generation`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hearth_core::chat::ChatMessage;
use hearth_core::constrain::ResponseFormat;
use hearth_core::generate::{FinishReason, GenerateRequest, Generation, PromptCache, Usage};
use hearth_core::logprobs::TokenLogprob;
use hearth_core::manifest::{EncoderConfig, Manifest, Pooling};
use hearth_core::model::Prompter;
use hearth_core::sampling::SamplingParams;
use hearth_core::tools::{ToolCallParser, ToolDelta, Tools};
use hearth_core::HearthError;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::compute::Compute;
use crate::{js_error, named_error, now, to_js};

/// What `begin()` takes: a prompt or chat messages, the sampling settings (flattened, with
/// `SamplingParams`' defaults: greedy), a token budget and stop strings.
#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default)]
    stop: Vec<String>,
    /// What the output must be (`{type: "json_schema", ...}` and the other OpenAI/Hearth shapes).
    #[serde(default)]
    response_format: ResponseFormat,
    /// Reuse the prefix this prompt shares with what the cache holds (default true).
    #[serde(default = "yes")]
    cache_prompt: bool,
    /// Each generated token's log-probability and this many alternatives (0 to 20); absent: none.
    #[serde(default)]
    logprobs: Option<usize>,
    #[serde(flatten)]
    sampling: SamplingParams,
    /// `tools`, `tool_choice` and `parallel_tool_calls`, as OpenAI takes them.
    #[serde(flatten)]
    tools: Tools,
}

fn yes() -> bool {
    true
}

fn default_max_tokens() -> usize {
    256
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    /// New text; with tools, only the content (not the calls).
    text: String,
    /// With tools: the calls as they stream (each opened by its name, then its arguments in pieces).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolDelta>,
    /// With `logprobs`: the entries of the tokens this step generated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logprobs: Vec<TokenLogprob>,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<FinishReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_ids: Option<Vec<u32>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    name: String,
    architecture: String,
    /// `"webgpu"` or `"cpu"`.
    backend: &'static str,
    /// The GPU adapter's name, or the CPU kernels (`"CPU (wasm simd128)"`).
    adapter: String,
    /// Threads the CPU engine spreads its products over (1 on the GPU engine: the page's one).
    threads: usize,
    kv_f16: bool,
    software: bool,
    context_length: usize,
    vocab_size: usize,
    /// Whether messages can be used (the package has a chat template); otherwise plain prompts only.
    chat_template: bool,
    /// Weights plus KV cache, in bytes.
    gpu_bytes: u64,
    /// An encoder's embeddings (`embed()`); absent for a decoder, which generates text.
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<EmbeddingInfo>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbeddingInfo {
    /// Numbers in each embedding.
    dimensions: usize,
    /// How the tokens' outputs become one vector: `"mean"`, `"cls"` or `"last"`.
    pooling: Pooling,
    /// Whether embeddings are scaled to unit length unless `{normalize}` says otherwise.
    normalize: bool,
    /// Tokens of a text that count (special tokens included); the rest is cut, as sentence-transformers does.
    max_tokens: usize,
}

struct State {
    compute: Compute,
    prompter: Prompter,
    generation: Option<Generation>,
    /// Splits the generation's text into content and calls when it may call tools.
    tool_parser: Option<ToolCallParser>,
    /// How many of the generation's logprobs entries the steps have returned.
    logprobs_sent: usize,
    /// What the compute's KV cache holds, for the next `begin` to reuse.
    prompt_cache: PromptCache,
}

/// A loaded model, on the GPU or the CPU.
#[wasm_bindgen]
pub struct Engine {
    /// Empty while a step is running (the GPU engine is borrowed across an await).
    state: Rc<RefCell<Option<State>>>,
    /// `cancel()` arrived during a step: drop the generation when it ends.
    cancelled: Rc<Cell<bool>>,
    info: Info,
    /// What `embed` needs of an encoder; None for a decoder.
    encoder: Option<EncoderConfig>,
}

impl Engine {
    pub(crate) fn new(compute: Compute, prompter: Prompter, manifest: Manifest) -> Self {
        let c = &manifest.config;
        let weight_bytes = manifest.shards.iter().map(|s| s.size).sum::<u64>();
        let common = |backend, adapter, threads| Info {
            name: manifest.name.clone(),
            architecture: manifest.architecture.clone(),
            backend,
            adapter,
            threads,
            kv_f16: false,
            software: false,
            context_length: compute.context_length(),
            vocab_size: c.vocab_size,
            chat_template: prompter.has_chat_template(),
            gpu_bytes: 0,
            embedding: c.encoder.as_ref().map(|e| EmbeddingInfo {
                dimensions: c.hidden_size,
                pooling: e.pooling,
                normalize: e.normalize,
                max_tokens: e.max_tokens,
            }),
        };
        let info = match &compute {
            Compute::Gpu(gpu) => Info {
                kv_f16: gpu.kv_f16(),
                software: gpu.software(),
                gpu_bytes: weight_bytes + gpu.kv_cache_bytes(),
                ..common("webgpu", gpu.adapter_name().to_string(), 1)
            },
            Compute::GpuEncoder(gpu) => Info {
                software: gpu.software(),
                gpu_bytes: weight_bytes,
                ..common("webgpu", gpu.adapter_name().to_string(), 1)
            },
            Compute::Cpu { .. } => {
                let simd = hearth_core::fast::kernels::Simd::detect().name();
                common("cpu", format!("CPU (wasm {simd})"), crate::threads())
            }
        };
        let state = State {
            compute,
            prompter,
            generation: None,
            tool_parser: None,
            logprobs_sent: 0,
            prompt_cache: PromptCache::default(),
        };
        let encoder = manifest.config.encoder.clone();
        Engine { state: Rc::new(RefCell::new(Some(state))), cancelled: Rc::new(Cell::new(false)), info, encoder }
    }
}

fn busy() -> JsValue {
    named_error("EngineBusyError", "the engine is running a step; wait for it before the next call")
}

#[wasm_bindgen]
impl Engine {
    pub fn info(&self) -> Result<JsValue, JsValue> {
        to_js(&self.info)
    }

    /// Start a generation (replacing any unfinished one); returns `{ promptTokens }`.
    pub fn begin(&self, request: JsValue) -> Result<JsValue, JsValue> {
        if self.encoder.is_some() {
            return Err(named_error(
                "UnsupportedModelError",
                &format!(
                    "{} is an encoder: it gives embeddings (engine.embed, engine.embeddings.create), not generated text",
                    self.info.name
                ),
            ));
        }
        let req = parse_request(&request)?;
        let mut slot = self.state.try_borrow_mut().map_err(|_| busy())?;
        let state = slot.as_mut().ok_or_else(busy)?;
        let prompt_ids = encode_prompt(&mut state.prompter, &req).map_err(js_error)?;
        let request = GenerateRequest {
            prompt_ids,
            max_tokens: req.max_tokens,
            sampling: req.sampling,
            stop_strings: req.stop,
            top_logits: 0,
            margins: false,
            response_format: req.response_format,
            cache_prompt: req.cache_prompt,
            tools: req.tools,
            logprobs: req.logprobs,
        };
        // A generation still in progress leaves its steps in the cache: they count as cached.
        if let Some(unfinished) = state.generation.take() {
            state.compute.drop_queued();
            state.prompt_cache.store(&unfinished);
        }
        let compute = &mut state.compute;
        let cached =
            state.prompt_cache.prepare_with(&request.prompt_ids, request.cache_prompt, |keep| compute.cut(keep));
        let generation =
            Generation::new(request, &state.prompter.tokenizer, state.compute.context_length(), cached, now())
                .map_err(js_error)?;
        let prompt_tokens = generation.prompt_tokens();
        state.tool_parser = generation.may_call_tools().then(ToolCallParser::default);
        state.logprobs_sent = 0;
        state.generation = Some(generation);
        self.cancelled.set(false);
        to_js(&serde_json::json!({ "promptTokens": prompt_tokens }))
    }

    /// One forward pass and the token it chooses; resolves to `{ text, done, ... }`.
    pub fn step(&self) -> js_sys::Promise {
        let (slot, cancelled) = (self.state.clone(), self.cancelled.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let taken = slot.try_borrow_mut().ok().and_then(|mut s| s.take());
            let mut state = taken.ok_or_else(busy)?;
            let result = run_step(&mut state).await;
            if result.is_err() {
                // A failed step may have left the cache half-written: reuse none of it.
                state.prompt_cache.clear();
                state.generation = None;
            } else if cancelled.replace(false) || state.generation.as_ref().is_some_and(Generation::is_done) {
                if let Some(g) = state.generation.take() {
                    state.compute.drop_queued();
                    state.prompt_cache.store(&g);
                }
            }
            *slot.borrow_mut() = Some(state);
            result
        })
    }

    /// An encoder's embeddings of `texts` (an array of strings), each cut to its `maxTokens` as
    /// sentence-transformers cuts it and pooled as the model says; scaled to unit length when
    /// `normalize` says so (undefined: as the model says). Resolves to `{ embeddings:
    /// Float32Array[], tokens: number[] }` (tokens: those that counted, per text). On WebGPU the
    /// texts run packed into steps; on the CPU one after another.
    pub fn embed(&self, texts: Vec<String>, normalize: Option<bool>) -> js_sys::Promise {
        let encoder = self.encoder.clone();
        let (name, slot) = (self.info.name.clone(), self.state.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(encoder) = encoder else {
                return Err(named_error(
                    "UnsupportedModelError",
                    &format!("{name} is a decoder: it generates text, and gives no embeddings"),
                ));
            };
            let taken = slot.try_borrow_mut().ok().and_then(|mut s| s.take());
            let mut state = taken.ok_or_else(busy)?;
            let ids: std::result::Result<Vec<Vec<u32>>, _> =
                texts.iter().map(|t| state.prompter.tokenizer.encode_for_embedding(t, encoder.max_tokens)).collect();
            let result = match ids {
                Ok(ids) => state.compute.embed(&ids, normalize).await.map(|e| (ids, e)),
                Err(e) => Err(e),
            };
            *slot.borrow_mut() = Some(state);
            let (ids, embeddings) = result.map_err(js_error)?;
            let out = js_sys::Object::new();
            let set = |key: &str, value: &JsValue| js_sys::Reflect::set(&out, &key.into(), value);
            let arrays: js_sys::Array =
                embeddings.iter().map(|e| JsValue::from(js_sys::Float32Array::from(&e[..]))).collect();
            let counts: js_sys::Array = ids.iter().map(|t| JsValue::from(t.len() as f64)).collect();
            set("embeddings", &arrays.into())?;
            set("tokens", &counts.into())?;
            Ok(out.into())
        })
    }

    /// Tokens of the request's prompt, encoded exactly as `begin` encodes it (`messages` through the
    /// chat template); the generation in progress, if any, is left alone.
    #[wasm_bindgen(js_name = countTokens)]
    pub fn count_tokens(&self, request: JsValue) -> Result<usize, JsValue> {
        let req = parse_request(&request)?;
        let mut slot = self.state.try_borrow_mut().map_err(|_| busy())?;
        let state = slot.as_mut().ok_or_else(busy)?;
        Ok(encode_prompt(&mut state.prompter, &req).map_err(js_error)?.len())
    }

    /// Drop the generation in progress (after an abort); the engine stays ready for the next one.
    pub fn cancel(&self) {
        match self.state.try_borrow_mut() {
            Ok(mut slot) if slot.is_some() => {
                if let Some(s) = slot.as_mut() {
                    // Between steps the cache is whole: the steps run so far stay reusable.
                    if let Some(g) = s.generation.take() {
                        s.compute.drop_queued();
                        s.prompt_cache.store(&g);
                    }
                }
            }
            _ => self.cancelled.set(true),
        }
    }
}

/// The request `begin` and `countTokens` take (docs/WEB.md), from its JavaScript object.
fn parse_request(request: &JsValue) -> Result<Request, JsValue> {
    let json = js_sys::JSON::stringify(request).map(String::from).unwrap_or_default();
    serde_json::from_str(&json).map_err(|e| js_error(HearthError::InvalidArgument(format!("generation options: {e}"))))
}

/// The prompt's token ids: `prompt` as plain text, or `messages` through the chat template.
fn encode_prompt(prompter: &mut Prompter, req: &Request) -> Result<Vec<u32>, HearthError> {
    match (&req.prompt, &req.messages) {
        (Some(_), None) if !req.tools.tools.is_empty() => Err(HearthError::InvalidArgument(
            "tools are shown to the model through its chat template: give `messages`, not `prompt`".into(),
        )),
        (Some(text), None) => prompter.encode_text(text),
        (None, Some(messages)) => prompter.encode_chat_with_tools(messages, &req.tools),
        _ => Err(HearthError::InvalidArgument("give either `prompt` (a string) or `messages` (chat)".into())),
    }
}

async fn run_step(state: &mut State) -> Result<JsValue, JsValue> {
    let State { compute, prompter, generation, tool_parser, logprobs_sent, .. } = state;
    let generation = generation.as_mut().ok_or_else(|| {
        js_error(HearthError::InvalidArgument("no generation in progress: call begin() first".into()))
    })?;
    // A constraint's forced opening comes with the first step; a constant output is all of it.
    let mut text = generation.opening_text();
    if !generation.is_done() {
        let (id, figures) = compute
            .next_token(generation)
            .await
            .map_err(js_error)?
            .ok_or_else(|| js_error(HearthError::InvalidArgument("this generation has finished".into())))?;
        if let Some(figures) = figures {
            generation.set_step_logprobs(figures);
        }
        text.push_str(&generation.accept(id, &prompter.tokenizer, now()).map_err(js_error)?);
    }
    let mut tool_calls = Vec::new();
    if let Some(parser) = tool_parser {
        let mut deltas = parser.push(&text);
        if generation.is_done() {
            deltas.extend(parser.finish());
        }
        text.clear();
        for d in deltas {
            match d {
                ToolDelta::Content { text: t } => text.push_str(&t),
                call => tool_calls.push(call),
            }
        }
    }
    // Entries not sent yet (a forced opening's come with the first step).
    let logprobs = generation.logprobs().get(*logprobs_sent..).unwrap_or_default().to_vec();
    *logprobs_sent += logprobs.len();
    let step = if generation.is_done() {
        let out = generation.output(now());
        Step {
            text,
            tool_calls,
            logprobs,
            done: true,
            finish_reason: Some(out.finish_reason),
            usage: Some(out.usage),
            ids: Some(out.ids),
            prompt_ids: Some(out.prompt_ids),
        }
    } else {
        Step { text, tool_calls, logprobs, done: false, finish_reason: None, usage: None, ids: None, prompt_ids: None }
    };
    to_js(&step)
}
