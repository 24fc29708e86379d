//! `hearth convert`: GGUF files and Hugging Face safetensors directories into model packages.
//!
//! Tensor names follow llama.cpp's GGUF naming (`token_embd.weight`, `blk.N.attn_q.weight`, ...) for
//! every source, so the engines look tensors up one way.

mod gguf_model;
mod gguf_stream;
mod gguf_tokenizer;
mod hf_layout;
mod safetensors_model;

use std::path::Path;

use crate::error::{HearthError, Result};
use crate::gguf::GgufFile;
use crate::manifest::{FfnKind, Manifest, ModelConfig};
use crate::package::PackageWriter;
use crate::quant::{DType, Tensor};

pub use gguf_stream::{FinishedShard, GgufStream};
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
    check_group(opts)?;
    if input.is_dir() {
        safetensors_model::convert(input, out, opts)
    } else if input.is_file() {
        gguf_model::convert(input, out, opts)
    } else {
        Err(HearthError::InvalidArgument(format!("{} is neither a GGUF file nor a model directory", input.display())))
    }
}

/// The package tensors that source tensor `name` of `shape` becomes, as (name, first row, rows):
/// itself whole; a fused gate|up `blk.N.ffn_up.weight` of twice the MLP's rows (Phi-3: gate rows
/// first) cut into gate and up; a fused `blk.N.attn_qkv.{weight,bias}` (BLOOM, GPT-2, Phi-3: Q, K
/// and V rows one after another) into the Q, K and V every other architecture has, so the engines
/// know one layout; a mixture's `blk.N.ffn_{gate,up,down}_exps.weight` (`[experts][rows][cols]`, as
/// llama.cpp stores them) into one matrix per expert, `blk.N.ffn_{gate,up,down}.E.weight`, so a
/// decode step reads only the experts it chose. Rows count in the tensor seen as a matrix of its
/// last dimension's columns. An error (naming `source`) when a fused Q/K/V's rows are not this
/// model's, or an expert tensor's experts are not the config's. An encoder's (BERT's) norms are
/// renamed from llama.cpp's names to the package's: `blk.N.attn_output_norm` → `blk.N.attn_norm`,
/// `blk.N.layer_output_norm` → `blk.N.ffn_norm`.
fn package_pieces(name: &str, shape: &[usize], c: &ModelConfig, source: &Path) -> Result<Vec<(String, usize, usize)>> {
    // An encoder's norms after attention and after the feed-forward: llama.cpp names them
    // `attn_output_norm` and `layer_output_norm`, the package `attn_norm` and `ffn_norm`.
    if c.encoder.is_some() {
        for (from, to) in [(".attn_output_norm.", ".attn_norm."), (".layer_output_norm.", ".ffn_norm.")] {
            if let Some((layer, kind)) = name.split_once(from) {
                let rows = shape.first().copied().unwrap_or(1);
                return Ok(vec![(format!("{layer}{to}{kind}"), 0, rows)]);
            }
        }
    }
    if let Some((layer, kind)) = ["gate", "up", "down"]
        .iter()
        .find_map(|kind| name.strip_suffix(&format!(".ffn_{kind}_exps.weight")).map(|layer| (layer, kind)))
    {
        let experts = c.moe.as_ref().map(|m| m.experts);
        let [n, rows, _] = shape else {
            return Err(HearthError::bad_file(source.display(), format!("`{name}` of shape {shape:?} is not 3-D")));
        };
        if experts != Some(*n) {
            return Err(HearthError::bad_file(
                source.display(),
                format!(
                    "`{name}` holds {n} experts; the model's config has {}",
                    experts.map_or_else(|| "none".to_string(), |e| e.to_string())
                ),
            ));
        }
        return Ok((0..*n).map(|e| (format!("{layer}.ffn_{kind}.{e}.weight"), e * rows, *rows)).collect());
    }
    let rows = shape.first().copied().unwrap_or(1);
    if let Some(layer) = name.strip_suffix(".ffn_up.weight") {
        let f = c.ffn_size;
        if c.ffn == FfnKind::Gated && shape.len() == 2 && f.checked_mul(2) == Some(rows) {
            return Ok(vec![(format!("{layer}.ffn_gate.weight"), 0, f), (format!("{layer}.ffn_up.weight"), f, f)]);
        }
    }
    let Some(layer) = name.strip_suffix(".attn_qkv.weight").or_else(|| name.strip_suffix(".attn_qkv.bias")) else {
        return Ok(vec![(name.to_string(), 0, rows)]);
    };
    let kind = if name.ends_with(".weight") { "weight" } else { "bias" };
    let (q, kv) = (c.q_dim(), c.kv_dim());
    if shape.len() > 2 || rows != q + 2 * kv {
        return Err(HearthError::bad_file(
            source.display(),
            format!("`{name}` of shape {shape:?} is not Q, K and V of this model's sizes"),
        ));
    }
    Ok([("attn_q", 0, q), ("attn_k", q, kv), ("attn_v", q + kv, kv)]
        .into_iter()
        .map(|(part, start, n)| (format!("{layer}.{part}.{kind}"), start, n))
        .collect())
}

/// The manifest [`convert`] would write for a GGUF `input` and `opts`, from its header alone (no
/// tensor data is read): what a loader needs to size the model before anything is converted or
/// downloaded. The shards' hashes are empty.
pub fn plan_gguf(input: &Path, opts: &ConvertOptions) -> Result<Manifest> {
    plan_gguf_header(&GgufFile::open(input)?, opts)
}

/// [`plan_gguf`] of a header already read (`GgufFile::from_prefix`: the first bytes of a GGUF URL).
pub fn plan_gguf_header(gguf: &GgufFile, opts: &ConvertOptions) -> Result<Manifest> {
    check_group(opts)?;
    gguf_model::plan(gguf, opts)
}

/// The tensors of `gguf` whose bytes [`plan_gguf_header`] reads besides the header (LongRoPE's
/// factors: Phi-3.5): a header read from a prefix needs them supplied first
/// (`GgufFile::supply_tensor`), each a small range of the file.
pub fn tensors_read_to_plan(gguf: &GgufFile) -> Vec<&crate::gguf::GgufTensorInfo> {
    gguf_model::tensors_read_to_plan(gguf)
}

/// A multiplier a source file gives (`name`, as the file calls it) as the f32 the package keeps: it
/// must be finite and positive once in f32, else an error naming it (a NaN or an infinity would not
/// survive the manifest's JSON, and `validate` would only see it after every tensor was written).
fn positive_factor(file: &str, name: &str, value: f64) -> Result<f32> {
    match value as f32 {
        f if f.is_finite() && f > 0.0 => Ok(f),
        f => Err(HearthError::bad_file(file, format!("`{name}` is {f}: it must be a positive number"))),
    }
}

fn check_group(opts: &ConvertOptions) -> Result<()> {
    if ![32, 64, 128].contains(&opts.group) {
        return Err(HearthError::InvalidArgument(format!("--group must be 32, 64 or 128, not {}", opts.group)));
    }
    Ok(())
}

/// Add `tensor` to the package as `name`, or as the pieces [`package_pieces`] cuts it into, and
/// return what was added (names and shapes).
fn add_tensor(
    writer: &mut PackageWriter,
    name: &str,
    tensor: &Tensor,
    c: &ModelConfig,
    source: &Path,
) -> Result<Vec<(String, Vec<usize>)>> {
    let pieces = cut_pieces(name, tensor, c, source)?;
    let mut added = Vec::with_capacity(pieces.len());
    for (part_name, part) in pieces {
        writer.add_tensor(&part_name, part.as_ref())?;
        added.push((part_name, part.shape.clone()));
    }
    Ok(added)
}

/// `tensor` (source tensor `name`) as the package tensors [`package_pieces`] makes of it: itself
/// whole (borrowed), or its rows cut into pieces (rows are independent in every encoding, so
/// cutting the encoded tensor changes no value).
fn cut_pieces<'t>(
    name: &str,
    tensor: &'t Tensor,
    c: &ModelConfig,
    source: &Path,
) -> Result<Vec<(String, std::borrow::Cow<'t, Tensor>)>> {
    use std::borrow::Cow;
    let pieces = package_pieces(name, &tensor.shape, c, source)?;
    if let [(whole, 0, _)] = &pieces[..] {
        return Ok(vec![(whole.clone(), Cow::Borrowed(tensor))]);
    }
    // A vector (a fused bias) is cut as a matrix of one-value rows, experts (3-D) as a matrix of
    // every expert's rows.
    let vector = tensor.shape.len() == 1;
    let cols = if vector { 1 } else { tensor.shape.last().copied().unwrap_or(1) };
    let rows = tensor.shape.iter().product::<usize>() / cols.max(1);
    let matrix = Tensor { shape: vec![rows, cols], data: tensor.data.clone() };
    let mut cut = Vec::with_capacity(pieces.len());
    for (part_name, start, rows) in pieces {
        let mut part = matrix.row_slice(start, rows).ok_or_else(|| {
            HearthError::bad_file(source.display(), format!("`{name}` cannot be cut into {part_name}'s rows"))
        })?;
        if vector {
            part.shape = vec![rows];
        }
        cut.push((part_name, Cow::Owned(part)));
    }
    Ok(cut)
}

/// The encoding an f32 weight of `shape` gets when `dtype` is chosen: vectors stay f32, and
/// matrices whose rows do not fill whole groups fall back to f16.
fn f32_encoding(shape: &[usize], dtype: DType, group: usize) -> DType {
    if shape.len() < 2 {
        return DType::F32;
    }
    let cols = shape.last().copied().unwrap_or(1);
    let group_needed = match dtype {
        DType::Q4 => group,
        DType::Q8 => crate::quant::Q8_GROUP,
        _ => 1,
    };
    if cols % group_needed != 0 {
        DType::F16
    } else {
        dtype
    }
}

/// Encode an f32 weight as chosen ([`f32_encoding`]).
fn encode_f32(name: &str, shape: Vec<usize>, values: &[f32], dtype: DType, group: usize) -> Result<Tensor> {
    let dtype = f32_encoding(&shape, dtype, group);
    Tensor::from_f32(shape, values, dtype, group)
        .map_err(|e| HearthError::InvalidArgument(format!("tensor `{name}`: {e}")))
}
