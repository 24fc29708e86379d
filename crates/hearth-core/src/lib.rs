//! Hearth core: the model package format, converters from GGUF and safetensors, tokenization and chat
//! templates, sampling, the decode loop, the CPU reference engine and the fast CPU engine. No GPU and
//! no browser code lives here, so it builds for native targets and for wasm32 alike.

pub mod assemble;
pub mod budget;
pub mod chat;
pub mod constrain;
pub mod convert;
pub mod cpu;
pub mod error;
pub mod fast;
pub mod generate;
pub mod ggml_quants;
pub mod gguf;
pub mod logprobs;
pub mod manifest;
pub mod model;
pub mod package;
pub mod plan;
pub mod quant;
pub mod sampling;
pub mod synthetic;
pub mod tokenizer;
pub mod tools;

pub use error::{HearthError, Result};
