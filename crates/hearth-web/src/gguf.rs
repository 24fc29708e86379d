//! A GGUF URL loaded in the browser: [`GgufConverter`] turns the file's bytes, as JavaScript
//! streams them, into the package shards `hearth convert` would write (hearth_core's `GgufStream`),
//! each with its hash, so the page stores them and loads them as it loads any package.

use hearth_core::convert::{ConvertOptions, GgufStream};
use hearth_core::gguf::GgufFile;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

use crate::{js_error, named_error};

#[wasm_bindgen]
pub struct GgufConverter {
    stream: GgufStream,
}

#[wasm_bindgen]
impl GgufConverter {
    /// The converter of the GGUF whose first bytes are `prefix` (a file of `length` bytes named
    /// `name`); the prefix must hold the whole header (`planGguf` said so).
    #[wasm_bindgen(constructor)]
    pub fn new(prefix: &[u8], length: f64, name: &str) -> Result<GgufConverter, JsValue> {
        if !(length.is_finite() && length >= 0.0) {
            return Err(named_error("InvalidArgumentError", "the GGUF's length must be a number of bytes"));
        }
        let gguf = GgufFile::from_prefix(prefix, length as u64, name).map_err(js_error)?.ok_or_else(|| {
            named_error("InvalidArgumentError", &format!("{name}: the header runs past the bytes given"))
        })?;
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

    /// The file's byte that [`feed`](Self::feed) expects next.
    pub fn position(&self) -> f64 {
        self.stream.position() as f64
    }

    /// Starts over at shard `shard` (those before it are stored); returns the byte to fetch from.
    #[wasm_bindgen(js_name = resumeAt)]
    pub fn resume_at(&mut self, shard: usize) -> Result<f64, JsValue> {
        self.stream.resume_at(shard).map(|at| at as f64).map_err(js_error)
    }

    /// The file's next bytes; returns the shards they finished: `[{index, sha256, bytes}]`.
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
