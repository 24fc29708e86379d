//! Hearth in the browser: the GPU engine and the fast CPU engine behind a small wasm-bindgen API that
//! the package's JavaScript (`pkg/src/*.js`) drives. Two classes: [`Loader`] fills the GPU (or wasm
//! memory) with a model's weights shard by shard as JavaScript fetches them, and [`Engine`]
//! generates one token per `step()` call, so JavaScript can stream, abort and queue between tokens.
//! The contract is in `docs/WEB.md`.

mod compute;
mod engine;
mod gguf;
mod inspect;
mod loader;
#[cfg(all(feature = "threads", target_arch = "wasm32"))]
mod threads;

use hearth_core::HearthError;
use wasm_bindgen::prelude::*;

pub use engine::Engine;
pub use gguf::GgufConverter;
pub use loader::Loader;
#[cfg(all(feature = "threads", target_arch = "wasm32"))]
pub use threads::ThreadPool;

/// Chat templates render on a memory budget (`hearth_core::budget`): past it the module traps and
/// the engine is disposed, instead of the template taking all of wasm32's 4 GiB first.
#[global_allocator]
static ALLOCATOR: hearth_core::budget::BudgetedAlloc<std::alloc::System> =
    hearth_core::budget::BudgetedAlloc(std::alloc::System);

/// Panics that slip through become readable console errors instead of "unreachable executed".
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A JavaScript `Error` whose `name` says what went wrong (the names `docs/WEB.md` lists).
pub(crate) fn js_error(e: HearthError) -> JsValue {
    let name = match &e {
        HearthError::Gpu(_) => "GpuError",
        HearthError::AdapterLimit(_) => "AdapterLimitsError",
        HearthError::OutOfMemory { .. } => "OutOfMemoryError",
        HearthError::UnsupportedArchitecture(_)
        | HearthError::UnsupportedTensorType { .. }
        | HearthError::UnsupportedSource(_) => "UnsupportedModelError",
        HearthError::BadPackage { .. } | HearthError::BadModelFile { .. } | HearthError::Io { .. } => "BadPackageError",
        HearthError::Integrity { .. } | HearthError::WrongSize { .. } => "IntegrityError",
        HearthError::ContextLengthExceeded { .. } => "ContextLengthError",
        HearthError::InvalidArgument(_) => "InvalidArgumentError",
        HearthError::Tokenizer(_) => "TokenizerError",
        HearthError::ChatTemplate(_) => "ChatTemplateError",
    };
    let error = named_error(name, &e.to_string());
    // The numbers a caller needs to shorten the request: prompt plus new tokens, and the context.
    if let HearthError::ContextLengthExceeded { prompt_tokens, max_new_tokens, context_length } = e {
        let set = |key: &str, n: usize| js_sys::Reflect::set(&error, &key.into(), &(n as f64).into());
        let _ = set("requested", prompt_tokens + max_new_tokens);
        let _ = set("available", context_length);
    }
    error
}

pub(crate) fn named_error(name: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    error.set_name(name);
    error.into()
}

/// Threads the CPU engine's products run on: rayon's pool in the threaded build, else this one.
pub(crate) fn threads() -> usize {
    #[cfg(feature = "threads")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "threads"))]
    1
}

/// Seconds on the page's (or worker's) monotonic clock.
pub(crate) fn now() -> f64 {
    let performance = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok();
    let now = performance
        .as_ref()
        .and_then(|p| js_sys::Reflect::get(p, &"now".into()).ok())
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
    match (performance, now) {
        (Some(p), Some(f)) => f.call0(&p).ok().and_then(|v| v.as_f64()).unwrap_or(0.0) / 1000.0,
        _ => js_sys::Date::now() / 1000.0,
    }
}

/// A plain JavaScript object from a serializable value (maps as objects, u64 as numbers).
pub(crate) fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| named_error("InvalidArgumentError", &e.to_string()))
}

/// Validates a package's `manifest.json` as the native reader does (format, file names, config
/// bounds, every tensor inside the shards): `load()` calls it before any other request, so a
/// hostile manifest makes no request and stores nothing.
#[wasm_bindgen(js_name = checkManifest)]
pub fn check_manifest(manifest_text: &str) -> Result<(), JsValue> {
    hearth_core::package::parse_manifest(manifest_text.as_bytes(), "manifest.json").map(drop).map_err(js_error)
}

/// Bytes of wasm linear memory: it only grows, so this is the peak so far (the browser tests check
/// that loading a model keeps it near one shard, however large the model).
#[wasm_bindgen(js_name = memoryBytes)]
pub fn memory_bytes() -> f64 {
    #[cfg(target_arch = "wasm32")]
    let pages = core::arch::wasm32::memory_size(0);
    #[cfg(not(target_arch = "wasm32"))]
    let pages = 0;
    (pages * 65536) as f64
}
