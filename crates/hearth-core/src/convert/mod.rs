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
use crate::manifest::{FfnKind, Manifest, ModelConfig};
use crate::package::PackageWriter;
use crate::quant::{DType, Tensor};

pub use gguf_tokenizer::{tokenizer_from_gguf, GgufTokenizer};

/// What to turn 2-D weight matrices into. Vectors (norm weights, biases) always stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantChoice {
    /// Keep the source encoding: every type Hearth reads has a lossless equivalent (F32, F16, BF16
    /// as f32, Q4_0/Q4_1 as q4, Q5_0/Q5_1 as q5, Q8_0 as q8, Q4_K / Q5_K / Q6_K as q4k / q5k / q6k).
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

/// Add `tensor` to the package as `name` (and return its name and shape), or, for a fused
/// `blk.N.attn_qkv.{weight,bias}` (BLOOM, GPT-2, Phi-3: Q, K and V rows one after another), its Q, K
/// and V rows as the three tensors every other architecture has, and for a fused gate|up
/// `blk.N.ffn_up.weight` of twice the MLP's rows (Phi-3: gate rows first) its gate and up halves, so
/// the engines know one layout. Rows are independent in every encoding, so cutting the encoded
/// tensor changes no value.
fn add_tensor(
    writer: &mut PackageWriter,
    name: &str,
    tensor: &Tensor,
    c: &ModelConfig,
    source: &Path,
) -> Result<Vec<(String, Vec<usize>)>> {
    if let Some(layer) = name.strip_suffix(".ffn_up.weight") {
        let (rows, f) = (tensor.rows(), c.ffn_size);
        if c.ffn == FfnKind::Gated && tensor.shape.len() == 2 && f.checked_mul(2) == Some(rows) {
            let mut added = Vec::with_capacity(2);
            for (part, start) in [("ffn_gate", 0), ("ffn_up", f)] {
                let part_name = format!("{layer}.{part}.weight");
                let t = tensor.row_slice(start, f).ok_or_else(|| {
                    HearthError::bad_file(source.display(), format!("`{name}` cannot be cut into gate and up rows"))
                })?;
                writer.add_tensor(&part_name, &t)?;
                added.push((part_name, t.shape));
            }
            return Ok(added);
        }
    }
    let Some(layer) = name.strip_suffix(".attn_qkv.weight").or_else(|| name.strip_suffix(".attn_qkv.bias")) else {
        writer.add_tensor(name, tensor)?;
        return Ok(vec![(name.to_string(), tensor.shape.clone())]);
    };
    let kind = if name.ends_with(".weight") { "weight" } else { "bias" };
    let parts = split_qkv(tensor, c).ok_or_else(|| {
        HearthError::bad_file(
            source.display(),
            format!("`{name}` of shape {:?} is not Q, K and V of this model's sizes", tensor.shape),
        )
    })?;
    let mut added = Vec::with_capacity(3);
    for (part, t) in ["attn_q", "attn_k", "attn_v"].iter().zip(parts) {
        let part_name = format!("{layer}.{part}.{kind}");
        writer.add_tensor(&part_name, &t)?;
        added.push((part_name, t.shape));
    }
    Ok(added)
}

/// A fused Q/K/V matrix (or bias) cut into Q, K and V by rows; `None` when its rows do not fit `c`.
fn split_qkv(fused: &Tensor, c: &ModelConfig) -> Option<Vec<Tensor>> {
    let (q, kv) = (c.q_dim(), c.kv_dim());
    let vector = fused.shape.len() == 1;
    let matrix =
        if vector { Tensor { shape: vec![fused.shape[0], 1], data: fused.data.clone() } } else { fused.clone() };
    if matrix.rows() != q + 2 * kv {
        return None;
    }
    let parts = [(0, q), (q, kv), (q + kv, kv)]
        .into_iter()
        .map(|(start, n)| matrix.row_slice(start, n))
        .collect::<Option<Vec<_>>>()?;
    Some(if vector {
        parts.into_iter().map(|t| Tensor { shape: vec![t.shape[0]], data: t.data }).collect()
    } else {
        parts
    })
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
