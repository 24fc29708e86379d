//! A GGUF URL loaded in the browser: [`GgufConverter`] turns the file's bytes, as JavaScript
//! streams them, into the package shards `hearth convert` would write (hearth_core's `GgufStream`),
//! each with its hash, so the page stores them and loads them as it loads any package.

use hearth_core::convert::{tensors_read_to_plan, ConvertOptions, GgufStream};
use hearth_core::gguf::GgufFile;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

use crate::{js_error, named_error};

/// The most bytes a tensor that planning reads (LongRoPE's factors: a few hundred) may claim: the
/// page fetches each apart, and a header may claim anything.
const MAX_PLAN_TENSOR_BYTES: u64 = 1 << 20;

/// A GGUF's header from its files' first bytes: not all there yet, more files of a split model
/// to read, missing tensor data that planning reads, or ready.
pub(crate) enum Header {
    /// The last file's header runs past its prefix.
    Incomplete,
    /// The first file is split 1 of `count`: read the headers of the others too, in order.
    /// `names`: all the files' names by llama.cpp's naming (None where the first is not so named).
    Splits {
        count: u64,
        names: Option<Vec<String>>,
    },
    /// `[{name, start, end}]` (end exclusive, counting in the files back to back): fetch these
    /// bytes and pass them as `extra`.
    Needs(js_sys::Array),
    Ready(GgufFile),
}

/// One file's first bytes as the page read them: `{prefix: Uint8Array, length, name}`.
fn file_prefix(part: &JsValue) -> Result<(Vec<u8>, f64, String), JsValue> {
    let get = |key: &str| js_sys::Reflect::get(part, &key.into());
    let prefix = get("prefix")?
        .dyn_into::<js_sys::Uint8Array>()
        .map_err(|_| named_error("InvalidArgumentError", "each GGUF file's `prefix` must be a Uint8Array"))?;
    let length = get("length")?.as_f64().unwrap_or(f64::NAN);
    if !(length.is_finite() && length >= 0.0) {
        return Err(named_error("InvalidArgumentError", "each GGUF file's `length` must be a number of bytes"));
    }
    let name = get("name")?.as_string().unwrap_or_default();
    Ok((prefix.to_vec(), length, name))
}

/// The header of the GGUF whose files' first bytes are `files` (`[{prefix, length, name}]`: one
/// file, or the files of a split model in order, each but the last read whole to its header's
/// end), with the tensors planning reads supplied from `extra` (`{name: Uint8Array}`, or
/// undefined).
pub(crate) fn read_header(files: &JsValue, extra: &JsValue) -> Result<Header, JsValue> {
    let files: js_sys::Array = files
        .clone()
        .dyn_into()
        .map_err(|_| named_error("InvalidArgumentError", "the GGUF's files must be an array"))?;
    let n = files.length();
    let mut headers = Vec::with_capacity(n as usize);
    for (i, file) in (0..).zip(files.iter()) {
        let (prefix, length, name) = file_prefix(&file)?;
        match GgufFile::from_prefix(&prefix, length as u64, &name).map_err(js_error)? {
            Some(header) => headers.push(header),
            None if i + 1 == n => return Ok(Header::Incomplete),
            None => {
                return Err(named_error("InvalidArgumentError", &format!("{name}: its header is not all given")));
            }
        }
    }
    let Some(first) = headers.first() else {
        return Err(named_error("InvalidArgumentError", "no GGUF file given"));
    };
    let name = first.path.display().to_string();
    match first.split().map_err(js_error)? {
        Some((0, count)) if (headers.len() as u64) < count => {
            return Ok(Header::Splits { count, names: GgufFile::split_names(&name, count) });
        }
        Some((no, count)) if no > 0 => {
            return Err(named_error(
                "BadPackageError",
                &format!(
                    "{name} is split {} of {count} of a model: load the first of its files (NAME-00001-of-{count:05}.gguf)",
                    no + 1
                ),
            ));
        }
        _ => {}
    }
    let mut gguf = GgufFile::join(headers).map_err(js_error)?;
    let needs = js_sys::Array::new();
    let wanted: Vec<_> = tensors_read_to_plan(&gguf).into_iter().cloned().collect();
    for info in wanted {
        let n = info.n_bytes.unwrap_or(u64::MAX);
        if n > MAX_PLAN_TENSOR_BYTES {
            return Err(named_error(
                "BadPackageError",
                &format!("{name}: `{}` claims {n} bytes, more than a factor tensor can have", info.name),
            ));
        }
        let given = if extra.is_object() {
            js_sys::Reflect::get(extra, &info.name.as_str().into())?
        } else {
            JsValue::UNDEFINED
        };
        match given.dyn_into::<js_sys::Uint8Array>() {
            Ok(bytes) => gguf.supply_tensor(&info.name, bytes.to_vec()).map_err(js_error)?,
            Err(_) => {
                let need = js_sys::Object::new();
                js_sys::Reflect::set(&need, &"name".into(), &info.name.as_str().into())?;
                js_sys::Reflect::set(&need, &"start".into(), &(info.offset as f64).into())?;
                js_sys::Reflect::set(&need, &"end".into(), &((info.offset + n) as f64).into())?;
                needs.push(&need);
            }
        }
    }
    Ok(if needs.length() > 0 { Header::Needs(needs) } else { Header::Ready(gguf) })
}

#[wasm_bindgen]
pub struct GgufConverter {
    stream: GgufStream,
}

#[wasm_bindgen]
impl GgufConverter {
    /// The converter of the GGUF whose files' first bytes are `files` (`[{prefix, length, name}]`),
    /// with `extra` the tensors planning reads, as `planGguf` took them: what it planned. Its
    /// positions count in the files taken back to back.
    #[wasm_bindgen(constructor)]
    pub fn new(files: JsValue, extra: JsValue) -> Result<GgufConverter, JsValue> {
        let Header::Ready(gguf) = read_header(&files, &extra)? else {
            return Err(named_error(
                "InvalidArgumentError",
                "the GGUF's headers or its factor tensors are not all given",
            ));
        };
        let stream = GgufStream::new(gguf, ConvertOptions::default()).map_err(js_error)?;
        Ok(GgufConverter { stream })
    }

    /// The planned manifest (compact JSON; the shards' sha256 empty until they come out).
    #[wasm_bindgen(js_name = manifestText)]
    pub fn manifest_text(&self) -> Result<String, JsValue> {
        serde_json::to_string(self.stream.manifest())
            .map_err(|e| named_error("BadPackageError", &format!("cannot write the planned manifest: {e}")))
    }

    /// The package's tokenizer.json, made from the GGUF's metadata.
    #[wasm_bindgen(js_name = tokenizerJson)]
    pub fn tokenizer_json(&self) -> String {
        self.stream.tokenizer_json().to_string()
    }

    /// The byte that [`feed`](Self::feed) expects next (of the files taken back to back).
    pub fn position(&self) -> f64 {
        self.stream.position() as f64
    }

    /// Starts over at shard `shard` (those before it are stored); returns the byte to fetch from.
    #[wasm_bindgen(js_name = resumeAt)]
    pub fn resume_at(&mut self, shard: usize) -> Result<f64, JsValue> {
        self.stream.resume_at(shard).map(|at| at as f64).map_err(js_error)
    }

    /// The next bytes (a split model's files one after another, each whole from its first byte
    /// unless the stream's position is inside it); returns the shards they finished: `[{index, sha256, bytes}]`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<js_sys::Array, JsValue> {
        let finished = self.stream.feed(bytes).map_err(js_error)?;
        let out = js_sys::Array::new();
        for shard in finished {
            let item = js_sys::Object::new();
            js_sys::Reflect::set(&item, &"index".into(), &(shard.index as f64).into())?;
            js_sys::Reflect::set(&item, &"sha256".into(), &shard.sha256.into())?;
            js_sys::Reflect::set(&item, &"bytes".into(), &js_sys::Uint8Array::from(&shard.bytes[..]).into())?;
            out.push(&item);
        }
        Ok(out)
    }

    /// Whether every shard has come out.
    #[wasm_bindgen(js_name = isDone)]
    pub fn is_done(&self) -> bool {
        self.stream.is_done()
    }
}

/// SHA-256 over bytes given in pieces (crypto.subtle hashes only whole buffers): the `sha256`
/// option of `load()` checks a whole GGUF as it streams.
#[wasm_bindgen(js_name = Sha256Stream)]
#[derive(Default)]
pub struct Sha256Stream {
    hasher: Sha256,
}

#[wasm_bindgen(js_class = Sha256Stream)]
impl Sha256Stream {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Sha256Stream {
        Sha256Stream::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The lowercase hex digest of everything given so far.
    pub fn hex(&self) -> String {
        self.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
