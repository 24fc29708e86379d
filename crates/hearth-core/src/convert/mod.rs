//! `hearth convert`: GGUF files and Hugging Face safetensors directories into model packages.
//!
//! Tensor names follow llama.cpp's GGUF naming (`token_embd.weight`, `blk.N.attn_q.weight`, ...) for
//! every source, so the engines look tensors up one way.

mod gguf_model;
mod gguf_tokenizer;
mod hf_layout;
mod safetensors_model;

use std::path::Path;

use crate::error::{HearthError, Result};
use crate::manifest::Manifest;
use crate::quant::{DType, Tensor};

pub use gguf_tokenizer::{tokenizer_from_gguf, GgufTokenizer};

/// What to turn 2-D weight matrices into. Vectors (norm weights, biases) always stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantChoice {
    /// Keep the source encoding where Hearth has a lossless equivalent (F32, F16, BF16 as f32,
    /// Q4_0/Q4_1 as q4, Q8_0 and Q5_0 as q8); requantize other GGUF block types (K-quants, Q5_1)
    /// to q8, the closer of Hearth's two.
    Keep,
    Q4,
    Q8,
    F16,
}

impl std::str::FromStr for QuantChoice {
    type Err = HearthError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "keep" => Self::Keep,
            "q4" => Self::Q4,
            "q8" => Self::Q8,
            "f16" => Self::F16,
            other => {
                return Err(HearthError::InvalidArgument(format!("--quant must be keep, q4, q8 or f16, not `{other}`")))
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub quant: QuantChoice,
    /// q4 group size: 32, 64 or 128.
    pub group: usize,
    pub shard_bytes: u64,
    /// Replace an existing package at the output path.
    pub overwrite: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { quant: QuantChoice::Keep, group: 32, shard_bytes: 32 << 20, overwrite: false }
    }
}

/// Convert `input` (a `.gguf` file or a Hugging Face model directory) into a package at `out`.
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<Manifest> {
    if ![32, 64, 128].contains(&opts.group) {
        return Err(HearthError::InvalidArgument(format!("--group must be 32, 64 or 128, not {}", opts.group)));
    }
    if input.is_dir() {
        safetensors_model::convert(input, out, opts)
    } else if input.is_file() {
        gguf_model::convert(input, out, opts)
    } else {
        Err(HearthError::InvalidArgument(format!("{} is neither a GGUF file nor a model directory", input.display())))
    }
}

/// Encode an f32 weight as chosen; matrices whose rows do not fill whole groups fall back to f16.
fn encode_f32(name: &str, shape: Vec<usize>, values: &[f32], dtype: DType, group: usize) -> Result<Tensor> {
    let vector = shape.len() < 2;
    let dtype = if vector { DType::F32 } else { dtype };
    let cols = shape.last().copied().unwrap_or(1);
    let group_needed = match dtype {
        DType::Q4 => group,
        DType::Q8 => crate::quant::Q8_GROUP,
        _ => 1,
    };
    let dtype = if cols % group_needed != 0 { DType::F16 } else { dtype };
    Tensor::from_f32(shape, values, dtype, group)
        .map_err(|e| HearthError::InvalidArgument(format!("tensor `{name}`: {e}")))
}
