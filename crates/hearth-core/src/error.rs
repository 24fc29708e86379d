//! One error type for the whole core crate. Every variant carries what a person needs to act on it:
//! the file, the tensor or field, and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HearthError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model file (GGUF, safetensors, config.json) is malformed.
    #[error("invalid model file {file}: {detail}")]
    BadModelFile { file: String, detail: String },
    #[error("tensor `{tensor}` has type {dtype}, which Hearth cannot convert (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)")]
    UnsupportedTensorType { tensor: String, dtype: String },
    #[error("unsupported architecture `{0}` (supported: {supported}; Mistral converts as llama)", supported = crate::manifest::ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    /// A model Hearth runs, given a way it cannot take it yet (the message says which, and what to do).
    #[error("{0}")]
    UnsupportedSource(String),
    /// A model package (manifest + shards) is malformed or does not match this build.
    #[error("invalid model package {path}: {detail}")]
    BadPackage { path: String, detail: String },
    #[error("integrity check failed for {file}: expected sha256 {expected}, got {actual}")]
    Integrity { file: String, expected: String, actual: String },
    /// A package file whose size is not the manifest's (checked before its hash).
    #[error("integrity check failed for {file}: the manifest says {expected} bytes, found {actual} {what}")]
    WrongSize { file: String, expected: u64, actual: u64, what: &'static str },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("prompt of {prompt_tokens} tokens plus {max_new_tokens} new tokens exceeds the context length of {context_length}")]
    ContextLengthExceeded { prompt_tokens: usize, max_new_tokens: usize, context_length: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No usable GPU adapter, a device limit too small for the model, or a GPU operation that failed.
    #[error("GPU: {0}")]
    Gpu(String),
    /// The adapter's limits are too small for this model (a tensor row wider than a binding, ...).
    #[error("GPU adapter limit: {0}")]
    AdapterLimit(String),
    /// The model does not fit this machine's (or this wasm module's) memory: `bytes` needed by
    /// `what`, and `limit` says what stood in the way.
    #[error("not enough memory for {what}: {bytes} bytes needed; {limit}")]
    OutOfMemory { what: String, bytes: u64, limit: String },
}

pub type Result<T, E = HearthError> = std::result::Result<T, E>;

impl HearthError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HearthError::Io { action, path: path.into(), source }
    }

    pub fn bad_file(file: impl std::fmt::Display, detail: impl Into<String>) -> Self {
        HearthError::BadModelFile { file: file.to_string(), detail: detail.into() }
    }

    pub fn bad_package(path: impl std::fmt::Display, detail: impl Into<String>) -> Self {
        HearthError::BadPackage { path: path.to_string(), detail: detail.into() }
    }
}
