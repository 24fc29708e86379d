//! Generation, one token per `step()`: JavaScript streams each step's text, checks its AbortSignal
//! between steps and queues calls, while the decode loop itself is `hearth_core`'s `Generation`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hearth_core::chat::ChatMessage;
use hearth_core::constrain::ResponseFormat;
use hearth_core::generate::{FinishReason, GenerateRequest, Generation, Usage};
use hearth_core::manifest::Manifest;
use hearth_core::model::Prompter;
use hearth_core::sampling::SamplingParams;
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
    #[serde(flatten)]
    sampling: SamplingParams,
}

fn default_max_tokens() -> usize {
    256
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    text: String,
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
    /// Weights plus KV cache, in bytes.
    gpu_bytes: u64,
}

struct State {
    compute: Compute,
    prompter: Prompter,
    generation: Option<Generation>,
}

/// A loaded model, on the GPU or the CPU.
#[wasm_bindgen]
pub struct Engine {
    /// Empty while a step is running (the GPU engine is borrowed across an await).
    state: Rc<RefCell<Option<State>>>,
    /// `cancel()` arrived during a step: drop the generation when it ends.
    cancelled: Rc<Cell<bool>>,
    info: Info,
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
            gpu_bytes: 0,
        };
        let info = match &compute {
            Compute::Gpu(gpu) => Info {
                kv_f16: gpu.kv_f16(),
                software: gpu.software(),
                gpu_bytes: weight_bytes + gpu.kv_cache_bytes(),
                ..common("webgpu", gpu.adapter_name().to_string(), 1)
            },
            Compute::Cpu { .. } => {
                let simd = format!("{:?}", hearth_core::fast::kernels::Simd::detect()).to_lowercase();
                common("cpu", format!("CPU (wasm {simd})"), crate::threads())
            }
        };
        let state = State { compute, prompter, generation: None };
        Engine { state: Rc::new(RefCell::new(Some(state))), cancelled: Rc::new(Cell::new(false)), info }
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
        let json = js_sys::JSON::stringify(&request).map(String::from).unwrap_or_default();
        let req: Request = serde_json::from_str(&json)
            .map_err(|e| js_error(HearthError::InvalidArgument(format!("generation options: {e}"))))?;
        let mut slot = self.state.try_borrow_mut().map_err(|_| busy())?;
        let state = slot.as_mut().ok_or_else(busy)?;
        let prompt_ids = match (&req.prompt, &req.messages) {
            (Some(text), None) => state.prompter.encode_text(text),
            (None, Some(messages)) => state.prompter.encode_chat(messages),
            _ => Err(HearthError::InvalidArgument("give either `prompt` (a string) or `messages` (chat)".into())),
        }
        .map_err(js_error)?;
        let request = GenerateRequest {
            prompt_ids,
            max_tokens: req.max_tokens,
            sampling: req.sampling,
            stop_strings: req.stop,
            top_logits: 0,
            margins: false,
            response_format: req.response_format,
        };
        let generation = Generation::new(request, &state.prompter.tokenizer, state.compute.context_length(), now())
            .map_err(js_error)?;
        state.compute.reset();
        let prompt_tokens = generation.prompt_tokens();
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
            if cancelled.replace(false) || result.is_err() {
                state.generation = None;
            }
            *slot.borrow_mut() = Some(state);
            result
        })
    }

    /// Drop the generation in progress (after an abort); the engine stays ready for the next one.
    pub fn cancel(&self) {
        match self.state.try_borrow_mut() {
            Ok(mut slot) if slot.is_some() => {
                if let Some(s) = slot.as_mut() {
                    s.generation = None;
                }
            }
            _ => self.cancelled.set(true),
        }
    }
}

async fn run_step(state: &mut State) -> Result<JsValue, JsValue> {
    let State { compute, prompter, generation } = state;
    let generation = generation.as_mut().ok_or_else(|| {
        js_error(HearthError::InvalidArgument("no generation in progress: call begin() first".into()))
    })?;
    // A constraint's forced opening comes with the first step; a constant output is all of it.
    let mut text = generation.opening_text();
    if !generation.is_done() {
        let input = generation
            .input()
            .ok_or_else(|| js_error(HearthError::InvalidArgument("this generation has finished".into())))?;
        let id = compute.sample_next(input).await.map_err(js_error)?;
        text.push_str(&generation.accept(id, &prompter.tokenizer, now()).map_err(js_error)?);
    }
    let step = if generation.is_done() {
        let out = generation.output(now());
        Step {
            text,
            done: true,
            finish_reason: Some(out.finish_reason),
            usage: Some(out.usage),
            ids: Some(out.ids),
            prompt_ids: Some(out.prompt_ids),
        }
    } else {
        Step { text, done: false, finish_reason: None, usage: None, ids: None, prompt_ids: None }
    };
    to_js(&step)
}
