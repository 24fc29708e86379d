//! What a package needs before anything of it is downloaded: `Hearth.inspect()` asks [`plan_model`]
//! for the sizes the loader will then really use (`hearth_core::plan`, as `Loader::create` checks
//! them) and for the reasons, if any, that this page cannot run it; for a GGUF URL, from the package
//! its header plans ([`plan_gguf`]).

use hearth_core::convert::{ConvertOptions, GgufStream};
use hearth_core::manifest::Manifest;
use hearth_core::package::parse_manifest;
use hearth_core::plan::{Memory, ModelSizes};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::gguf::{read_header, Header};
use crate::{js_error, named_error, to_js};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PlanOptions {
    /// Cap on the KV cache's positions, as `load()` takes it.
    #[serde(default)]
    max_context: Option<usize>,
    /// Whether the GPU engine's KV cache would be f16 (the adapter offers `shader-f16`).
    #[serde(default)]
    kv_f16: bool,
    /// Bytes the adapter binds at once (`maxStorageBufferBindingSize`, within `maxBufferSize`);
    /// absent: no GPU check.
    #[serde(default)]
    binding: Option<f64>,
    /// Bytes the CPU engine may take in wasm memory, and why; absent: no CPU check.
    #[serde(default)]
    memory_limit: Option<f64>,
    #[serde(default)]
    memory_limit_reason: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plan {
    name: String,
    architecture: String,
    parameters: u64,
    download_bytes: u64,
    context: usize,
    cpu: Memory,
    gpu: Memory,
    /// Why the CPU engine cannot run it here (empty: it can).
    cpu_refusals: Vec<String>,
    /// Why the GPU engine cannot run it on this adapter (empty: it can, as far as limits tell).
    gpu_refusals: Vec<String>,
}

/// The sizes of `manifest_text`'s model on both engines at `options.maxContext`, and the reasons
/// each would refuse it under the limits given (the same checks and messages as `Loader.create`).
#[wasm_bindgen(js_name = planModel)]
pub fn plan_model(manifest_text: &str, options: JsValue) -> Result<JsValue, JsValue> {
    let options = plan_options(options)?;
    let manifest = parse_manifest(manifest_text.as_bytes(), "manifest.json").map_err(js_error)?;
    to_js(&plan(&manifest, &options)?)
}

/// A GGUF's package planned from its files' first bytes (`files`: `[{prefix, length, name}]`, one
/// file or the files of a split model in order; `extra`: the bytes of tensors planning reads,
/// `{name: Uint8Array}`), as `hearth convert` would lay it out and [`plan_model`] sizes it:
/// `{manifestText, plan}` (the manifest's shards not hashed yet: their bytes are not made);
/// `undefined` when the last file's header runs past its prefix (ask for more bytes);
/// `{splits, names}` when the first file is split 1 of `splits` (read the others' headers too;
/// `names`: all the files' names, by llama.cpp's naming, or null); `{needs: [{name, start, end}]}`
/// when planning reads tensor data not in `extra` (LongRoPE's factors: fetch those bytes, counting
/// in the files back to back, and ask again). An architecture no engine runs is refused here,
/// before any tensor data is downloaded.
#[wasm_bindgen(js_name = planGguf)]
pub fn plan_gguf(files: JsValue, options: JsValue, extra: JsValue) -> Result<JsValue, JsValue> {
    let options = plan_options(options)?;
    let gguf = match read_header(&files, &extra)? {
        Header::Incomplete => return Ok(JsValue::UNDEFINED),
        Header::Splits { count, names } => {
            #[derive(Serialize)]
            struct Splits {
                splits: u64,
                names: Option<Vec<String>>,
            }
            return to_js(&Splits { splits: count, names });
        }
        Header::Needs(needs) => {
            let out = js_sys::Object::new();
            js_sys::Reflect::set(&out, &"needs".into(), &needs)?;
            return Ok(out.into());
        }
        Header::Ready(gguf) => gguf,
    };
    // The stream load() converts with: its checks (tensor order, tensor sizes) refuse here too.
    let stream = GgufStream::new(gguf, ConvertOptions::default()).map_err(js_error)?;
    let manifest = stream.manifest();
    let manifest_text = serde_json::to_string(manifest)
        .map_err(|e| named_error("BadPackageError", &format!("cannot write the planned manifest: {e}")))?;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Planned {
        manifest_text: String,
        plan: Plan,
    }
    to_js(&Planned { manifest_text, plan: plan(manifest, &options)? })
}

fn plan_options(options: JsValue) -> Result<PlanOptions, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(PlanOptions::default());
    }
    serde_wasm_bindgen::from_value(options).map_err(|e| named_error("InvalidArgumentError", &e.to_string()))
}

fn plan(manifest: &Manifest, options: &PlanOptions) -> Result<Plan, JsValue> {
    // Rings of windowed layers sized for full prefill chunks: the engine's own, unless attention's
    // scratch for a chunk that long exceeds the adapter's binding, when it takes shorter chunks
    // and smaller rings (the figure is then an upper bound).
    let (sizes, cpu, gpu) =
        ModelSizes::plan(manifest, options.max_context, options.kv_f16, hearth_gpu::MAX_CHUNK).map_err(js_error)?;
    let mut cpu_refusals = Vec::new();
    if let Some(limit) = options.memory_limit.filter(|l| l.is_finite() && *l > 0.0) {
        let why = options.memory_limit_reason.as_deref().unwrap_or("the limit the page gave");
        if let Err(e) = cpu.check(&manifest.name, limit as u64, why) {
            cpu_refusals.push(e.to_string());
        }
    }
    let mut gpu_refusals = Vec::new();
    if let Some(binding) = options.binding.filter(|b| b.is_finite() && *b > 0.0) {
        if let Err(e) = gpu.check_binding(binding as u64) {
            gpu_refusals.push(e.to_string());
        }
    }
    // ModelSizes's fields, with the refusals (serde's flatten would make a JS Map of it).
    let ModelSizes { name, architecture, parameters, download_bytes, context, cpu, gpu } = sizes;
    Ok(Plan { name, architecture, parameters, download_bytes, context, cpu, gpu, cpu_refusals, gpu_refusals })
}
