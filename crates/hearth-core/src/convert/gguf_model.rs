//! GGUF → package.

use std::path::Path;

use std::collections::HashSet;

use super::{
    add_tensor, encode_f32, f32_encoding, package_pieces, positive_factor, tokenizer_from_gguf, ConvertOptions,
    QuantChoice,
};
use crate::error::{HearthError, Result};
use crate::ggml_quants::{dequantize, k_from_ggml, q4_from_ggml, q5_from_ggml, q8_from_ggml, q8_from_q5_0};
use crate::gguf::{GgmlType, GgufFile, GgufTensorInfo};
use crate::manifest::{
    limits, Activation, AlibiConfig, EncoderConfig, FfnKind, Gating, Manifest, ModelConfig, MoeConfig, NormKind,
    Pooling, PositionKind, RopeConfig, RopeScaling, RopeStyle, SourceInfo, TokenizerInfo,
};
use crate::manifest::{FileEntry, TensorEntry, FORMAT_NAME, FORMAT_VERSION};
use crate::package::{sha256_hex, shard_file_name, PackageWriter, ShardLayout};
use crate::quant::{lay_out_parts, DType, Tensor, Q5_GROUP, Q8_GROUP};

pub(super) fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<Manifest> {
    let gguf = GgufFile::open(input)?;
    let (manifest, tokenizer_json) = header(&gguf)?;
    let mut writer = PackageWriter::new(out, opts.shard_bytes, opts.overwrite)?;
    for info in gguf.tensors.iter().filter(|t| in_package(t)) {
        let tensor = convert_tensor(&gguf, info, opts)?;
        add_tensor(&mut writer, &info.name, &tensor, &manifest.config, input)?;
    }
    writer.add_file("tokenizer.json", tokenizer_json.as_bytes())?;
    writer.finish(manifest)
}

/// The manifest [`convert`] writes for `gguf` and `opts`, from its header alone (no tensor data is
/// read): every tensor's encoding, shape, group, shard, offset and parts, the shards' sizes and the
/// tokenizer file, as the converter will lay them out; the shards' hashes are empty, their bytes
/// not yet made.
pub(super) fn plan(gguf: &GgufFile, opts: &ConvertOptions) -> Result<Manifest> {
    Ok(plan_with_tokenizer(gguf, opts)?.0)
}

/// [`plan`], and the tokenizer.json the package holds (its hash is in the manifest).
pub(super) fn plan_with_tokenizer(gguf: &GgufFile, opts: &ConvertOptions) -> Result<(Manifest, String)> {
    let input = &gguf.path;
    let (mut manifest, tokenizer_json) = header(gguf)?;
    let mut layout = ShardLayout::new(opts.shard_bytes);
    let mut names = HashSet::new();
    for info in gguf.tensors.iter().filter(|t| in_package(t)) {
        let Target { dtype, group, .. } = target(info, opts)?;
        let shape = info.shape();
        let pieces = package_pieces(&info.name, &shape, &manifest.config, input)?;
        let whole = pieces.len() == 1;
        for (name, _, rows) in pieces {
            let piece_shape = match shape.len() {
                _ if whole => shape.clone(),
                1 => vec![rows],
                // Pieces are rows of the tensor seen as a matrix (package_pieces).
                _ => vec![rows, shape.last().copied().unwrap_or(1)],
            };
            let cols = piece_shape.last().copied().unwrap_or(1);
            let n = piece_shape.iter().product();
            let lengths = dtype.part_lengths(n, cols, group).ok_or_else(|| {
                HearthError::bad_file(
                    input.display(),
                    format!("`{name}` of shape {piece_shape:?} does not fit {dtype:?}"),
                )
            })?;
            let (ranges, length) = lay_out_parts(lengths);
            if !names.insert(name.clone()) {
                return Err(HearthError::InvalidArgument(format!("the model has tensor `{name}` twice")));
            }
            let (shard, offset) = layout.place(length);
            let parts = dtype.part_names().iter().map(|p| p.to_string()).zip(ranges).collect();
            manifest.tensors.push(TensorEntry {
                name,
                dtype,
                shape: piece_shape,
                shard,
                offset,
                length,
                group_size: group,
                parts,
            });
        }
    }
    manifest.format = FORMAT_NAME.to_string();
    manifest.format_version = FORMAT_VERSION;
    manifest.shard_size = opts.shard_bytes;
    manifest.shards = layout
        .shard_sizes()
        .iter()
        .enumerate()
        .map(|(i, &size)| FileEntry { file: shard_file_name(i), size, sha256: String::new() })
        .collect();
    manifest.files = vec![FileEntry {
        file: "tokenizer.json".into(),
        size: tokenizer_json.len() as u64,
        sha256: sha256_hex(tokenizer_json.as_bytes()),
    }];
    Ok((manifest, tokenizer_json))
}

/// Everything of a GGUF's package manifest but its shard, file and tensor tables, and the
/// tokenizer's JSON.
fn header(gguf: &GgufFile) -> Result<(Manifest, String)> {
    let input = &gguf.path;
    // One file of a split model holds only some of its tensors (the rest would be "missing").
    if let Some((no, count)) = gguf.split()? {
        if gguf.file_count() as u64 != count {
            return Err(HearthError::bad_file(
                input.display(),
                format!("is split {} of {count} of a model, and all {count} files are needed to convert it", no + 1),
            ));
        }
    }
    let arch = gguf.require_str("general.architecture")?.to_string();
    let config = model_config(gguf, &arch)?;
    let tok = tokenizer_from_gguf(gguf)?;
    let name = gguf
        .get_str("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let manifest = Manifest {
        format: String::new(),
        format_version: 0,
        name,
        architecture: arch,
        config,
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".into(),
            bos_id: tok.bos_id,
            eos_id: tok.eos_id,
            stop_ids: tok.stop_ids,
            pad_id: tok.pad_id,
            add_bos: tok.add_bos,
            chat_template: tok.chat_template,
        },
        source: SourceInfo {
            kind: "gguf".into(),
            file: input.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        },
        shard_size: 0,
        shards: vec![],
        files: vec![],
        tensors: vec![],
    };
    Ok((manifest, tok.json))
}

fn model_config(gguf: &GgufFile, arch: &str) -> Result<ModelConfig> {
    match arch {
        "llama" | "qwen2" | "qwen3" | "smollm3" | "phi3" | "gemma2" | "gemma3" | "qwen2moe" | "qwen3moe" | "olmoe"
        | "dots1" | "granite" | "granitemoe" => rope_model_config(gguf, arch),
        "bloom" | "gpt2" => layer_norm_model_config(gguf, arch),
        "bert" => bert_model_config(gguf),
        _ => Err(HearthError::UnsupportedArchitecture(arch.to_string())),
    }
}

/// BLOOM and GPT-2: LayerNorm, a plain GELU MLP, biases on every product, fused Q/K/V (split on
/// conversion), no RoPE: ALiBi (BLOOM, which also norms its embeddings) or learned positions.
fn layer_norm_model_config(gguf: &GgufFile, arch: &str) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let file = gguf.path.display().to_string();
    let hidden = gguf.require_u64(&key("embedding_length"))? as usize;
    let n_heads = gguf.require_u64(&key("attention.head_count"))? as usize;
    let n_kv_heads = gguf.get_u64(&key("attention.head_count_kv")).map_or(n_heads, |v| v as usize);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || hidden % n_heads != 0 {
        return Err(HearthError::bad_file(
            &file,
            format!("{n_heads} heads cannot share {n_kv_heads} key/value heads of {hidden} values"),
        ));
    }
    let embd =
        gguf.tensor("token_embd.weight").ok_or_else(|| HearthError::bad_file(&file, "no token_embd.weight tensor"))?;
    let bloom = arch == "bloom";
    let context_length = match gguf.tensor("position_embd.weight") {
        // Learned positions: the table's rows are the context.
        Some(t) if !bloom => t.shape()[0],
        _ => gguf.get_u64(&key("context_length")).map_or(2048, |v| v as usize),
    };
    let has = |name: &str| gguf.tensor(name).is_some();
    Ok(ModelConfig {
        n_layers: gguf.require_u64(&key("block_count"))? as usize,
        hidden_size: hidden,
        n_heads,
        n_kv_heads,
        head_dim: hidden / n_heads,
        ffn_size: gguf.require_u64(&key("feed_forward_length"))? as usize,
        vocab_size: embd.shape()[0],
        context_length,
        norm: NormKind::Layer,
        norm_eps: gguf.get_f64(&key("attention.layer_norm_epsilon")).unwrap_or(1e-5) as f32,
        activation: Activation::GeluTanh,
        ffn: FfnKind::Plain,
        position: if bloom { PositionKind::Alibi } else { PositionKind::Learned },
        rope: None,
        // BLOOM's slopes are the standard ones (a maximum bias of 8): llama.cpp uses 8 for BLOOM
        // whatever the file says, and so does this.
        alibi: bloom.then_some(AlibiConfig { max_bias: 8.0 }),
        tied_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_qkv.bias") || has("blk.0.attn_q.bias"),
        embedding_norm: has("token_embd_norm.weight"),
        linear_bias: has("blk.0.attn_output.bias"),
        ..Default::default()
    })
}

/// BERT as llama.cpp's converter writes it (`convert_hf_to_gguf.py`, BertModel, arch `bert`): the
/// config the Transformers path gives the same model (`safetensors_model`), so that the two packages
/// are one. LayerNorm after each residual add, learned positions (the table's rows are the
/// context), the type-0 row of `token_types.weight` added to every token, exact GELU (llama.cpp
/// computes BERT's with ggml's tanh approximation; the model was trained with the exact one, which
/// the Transformers path and sentence-transformers use). What llama.cpp's GGUF says of pooling
/// (`bert.pooling_type`, from the model's sentence-transformers Pooling module): 1 mean, 2 CLS, 3
/// last token; 0 (none: an embedding per token) and 4 (rank: a reranker's score) are refused, and
/// without the key the mean is pooled, as the Transformers path does without sentence-transformers
/// files (llama.cpp would give one embedding per token). The GGUF does not say whether
/// sentence-transformers normalizes: embeddings are scaled to unit length, as llama.cpp's
/// embedding tool and server do by default (`embd_normalize = 2`) and as the sentence encoders
/// published as BERT GGUFs (MiniLM, BGE, E5, GTE) are used; the browser API's `normalize: false`
/// gives the raw pooled vector. Texts are cut at the whole context: the GGUF does not keep
/// sentence-transformers' `max_seq_length`, and llama.cpp embeds up to its context too.
fn bert_model_config(gguf: &GgufFile) -> Result<ModelConfig> {
    let key = |k: &str| format!("bert.{k}");
    let file = gguf.path.display().to_string();
    let unsupported = |what: String| Err(HearthError::UnsupportedSource(format!("{file}: {what}")));
    if gguf.get_bool(&key("attention.causal")) == Some(true) {
        return unsupported(
            "a causal `bert` (`bert.attention.causal` = true) is not an encoder: BERT attends both ways".into(),
        );
    }
    // RoBERTa and XLM-RoBERTa convert as `bert` with BPE or SentencePiece vocabularies and positions
    // offset past the padding id: another model.
    match gguf.require_str("tokenizer.ggml.model")? {
        "bert" => {}
        other => {
            return unsupported(format!(
                "a `bert` with a `{other}` vocabulary (RoBERTa, XLM-RoBERTa) is not supported (WordPiece, `bert`, is)"
            ))
        }
    }
    let pooling = match gguf.get_u64(&key("pooling_type")) {
        None | Some(1) => Pooling::Mean,
        Some(2) => Pooling::Cls,
        Some(3) => Pooling::Last,
        Some(0) => {
            return unsupported(
                "`bert.pooling_type` 0 (none: an embedding per token) is not supported (mean 1, CLS 2 and last 3 are)"
                    .into(),
            )
        }
        Some(4) => {
            return unsupported(
                "`bert.pooling_type` 4 (rank: a reranker's relevance score) is not supported (mean 1, CLS 2 and \
                 last 3 are)"
                    .into(),
            )
        }
        Some(other) => {
            return Err(HearthError::bad_file(&file, format!("`bert.pooling_type` {other} is not a llama.cpp pooling")))
        }
    };
    let hidden = gguf.require_u64(&key("embedding_length"))? as usize;
    let n_heads = gguf.require_u64(&key("attention.head_count"))? as usize;
    let n_kv_heads = gguf.get_u64(&key("attention.head_count_kv")).map_or(n_heads, |v| v as usize);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || hidden % n_heads != 0 {
        return Err(HearthError::bad_file(
            &file,
            format!("{n_heads} heads cannot share {n_kv_heads} key/value heads of {hidden} values"),
        ));
    }
    let tensor = |name: &str| {
        gguf.tensor(name).ok_or_else(|| HearthError::bad_file(&file, format!("a `bert` without `{name}`")))
    };
    let vocab_size = match tensor("token_embd.weight")?.shape()[..] {
        [rows, cols] if cols == hidden => rows,
        ref shape => {
            return Err(HearthError::bad_file(
                &file,
                format!("`token_embd.weight` of shape {shape:?} is not rows of {hidden} values"),
            ))
        }
    };
    tensor("token_embd_norm.weight")?;
    // llama.cpp needs the count (it refuses a `bert` without it) and adds the table's type-0 row
    // where the table is there; Hearth's encoders always add it.
    let types_key = "tokenizer.ggml.token_type_count";
    let token_types = gguf.get_u64(types_key).ok_or_else(|| {
        HearthError::bad_file(&file, format!("a `bert` without `{types_key}` (llama.cpp refuses it too)"))
    })? as usize;
    let Some(types) = gguf.tensor("token_types.weight") else {
        return unsupported(
            "a `bert` without `token_types.weight` is not supported (its type-0 row is added to every token)".into(),
        );
    };
    if types.shape() != [token_types, hidden] {
        return Err(HearthError::bad_file(
            &file,
            format!("`token_types.weight` of shape {:?} is not {token_types} types of {hidden} values", types.shape()),
        ));
    }
    // Learned positions: the table's rows are the context (llama.cpp requires them to be its
    // training context).
    let positions = tensor("position_embd.weight")?.shape();
    let context_length = positions.first().copied().unwrap_or(0);
    if let Some(n) = gguf.get_u64(&key("context_length")).filter(|&n| n != context_length as u64) {
        return Err(HearthError::bad_file(
            &file,
            format!("`position_embd.weight` has {context_length} rows for a `bert.context_length` of {n}"),
        ));
    }
    let has = |name: &str| gguf.tensor(name).is_some();
    Ok(ModelConfig {
        n_layers: gguf.require_u64(&key("block_count"))? as usize,
        hidden_size: hidden,
        n_heads,
        n_kv_heads,
        head_dim: hidden / n_heads,
        ffn_size: gguf.require_u64(&key("feed_forward_length"))? as usize,
        vocab_size,
        context_length,
        norm: NormKind::Layer,
        norm_eps: gguf.require_f64(&key("attention.layer_norm_epsilon"))? as f32,
        activation: Activation::Gelu,
        ffn: FfnKind::Plain,
        position: PositionKind::Learned,
        tied_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
        embedding_norm: true,
        linear_bias: has("blk.0.attn_output.bias"),
        encoder: Some(EncoderConfig { pooling, normalize: true, max_tokens: context_length, token_types }),
        ..Default::default()
    })
}

fn rope_model_config(gguf: &GgufFile, arch: &str) -> Result<ModelConfig> {
    // Pre-norm RoPE decoders that differ only in what the config below records. llama.cpp's
    // converter permutes Llama's (and SmolLM3's and Granite's) Q/K rows so rotated pairs are
    // adjacent; Qwen's and Gemma's it leaves in NeoX order.
    let style = match arch {
        "llama" | "smollm3" | "granite" | "granitemoe" => RopeStyle::Interleaved,
        _ => RopeStyle::Neox,
    };
    let gemma = arch.starts_with("gemma");
    let key = |k: &str| format!("{arch}.{k}");
    let granite = granite_scales(gguf, arch)?;
    let hidden = gguf.require_u64(&key("embedding_length"))? as usize;
    let n_heads = gguf.require_u64(&key("attention.head_count"))? as usize;
    let n_kv_heads = gguf.get_u64(&key("attention.head_count_kv")).map_or(n_heads, |v| v as usize);
    let file = gguf.path.display().to_string();
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(HearthError::bad_file(&file, format!("{n_heads} heads cannot share {n_kv_heads} key/value heads")));
    }
    let head_dim = gguf.get_u64(&key("attention.key_length")).map_or(hidden / n_heads, |v| v as usize);
    let embd =
        gguf.tensor("token_embd.weight").ok_or_else(|| HearthError::bad_file(&file, "no token_embd.weight tensor"))?;
    let vocab_size = embd.shape()[0];
    let has_long_rope_factors = LONG_ROPE_FACTORS.iter().any(|name| gguf.tensor(name).is_some());
    let scaling = match gguf.get_str(&key("rope.scaling.type")) {
        None | Some("none") => long_rope(gguf, arch)?,
        // The factor tensors go into LongRoPE's config only: with another scaling they would be lost.
        Some(other) if has_long_rope_factors => {
            return Err(HearthError::bad_file(
                &file,
                format!("LongRoPE factor tensors with rope scaling `{other}`: not a combination llama.cpp runs"),
            ));
        }
        Some("linear") => Some(RopeScaling::Linear { factor: gguf.require_f64(&key("rope.scaling.factor"))? as f32 }),
        // llama.cpp's defaults where the file says nothing.
        Some("yarn") => Some(RopeScaling::Yarn {
            factor: gguf.require_f64(&key("rope.scaling.factor"))? as f32,
            original_context_length: gguf.require_u64(&key("rope.scaling.original_context_length"))? as usize,
            beta_fast: gguf.get_f64(&key("rope.scaling.yarn_beta_fast")).unwrap_or(32.0) as f32,
            beta_slow: gguf.get_f64(&key("rope.scaling.yarn_beta_slow")).unwrap_or(1.0) as f32,
            attn_factor: gguf.get_f64(&key("rope.scaling.attn_factor")).unwrap_or(1.0) as f32,
        }),
        Some(other) => {
            return Err(HearthError::bad_file(
                &file,
                format!("rope scaling `{other}` is not supported yet (none, linear and yarn are)"),
            ));
        }
    };
    // llama.cpp ignores Phi-3's window (its converter writes one that the model's other settings
    // contradict), and so does this.
    let window =
        gguf.get_u64(&key("attention.sliding_window")).filter(|&w| w > 0 && arch != "phi3").map(|w| w as usize);
    let n_layers = gguf.require_u64(&key("block_count"))? as usize;
    let ffn_size = gguf.require_u64(&key("feed_forward_length"))? as usize;
    Ok(ModelConfig {
        n_layers,
        hidden_size: hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size,
        vocab_size,
        context_length: gguf.get_u64(&key("context_length")).map_or(2048, |v| v as usize),
        norm: NormKind::Rms,
        norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
        // Gemma's GeGLU; llama.cpp's ggml_gelu is the tanh approximation.
        activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
        ffn: FfnKind::Gated,
        position: PositionKind::Rope,
        rope: Some(RopeConfig {
            base: gguf.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            dim: gguf.get_u64(&key("rope.dimension_count")).map_or(head_dim, |v| v as usize),
            style,
            scaling,
            // Gemma 3's local layers: llama.cpp uses 10 000 unless the file says otherwise (Gemma 2's
            // use the one base).
            local_base: (arch == "gemma3").then(|| gguf.get_f64(&key("rope.freq_base_swa")).unwrap_or(10_000.0) as f32),
            // SmolLM3: every fourth layer attends without positions (llama.cpp fixes the interval at
            // 4; the file says nothing). Bounded by the layer limit before `validate` refuses a
            // hostile count, so the list never grows with it.
            unrotated_layers: if arch == "smollm3" {
                (3..n_layers.min(limits::LAYERS + 1)).step_by(4).collect()
            } else {
                Vec::new()
            },
        }),
        alibi: None,
        // Llama/Qwen2/Mistral: every layer windowed (llama.cpp itself reads no window for these
        // architectures; Hearth honours one when the file has it). Gemma 3: five local layers to
        // one global unless the file gives another pattern (llama.cpp's default); Gemma 2: local
        // and global alternate (llama.cpp fixes that).
        sliding_window: window,
        sliding_window_pattern: match (arch, window) {
            (_, None) => None,
            ("gemma2", _) => Some(2),
            ("gemma3", _) => Some(gguf.get_u64(&key("attention.sliding_window_pattern")).map_or(6, |v| v as usize)),
            _ => None,
        },
        tied_embeddings: gguf.tensor("output.weight").is_none(),
        qkv_bias: gguf.tensor("blk.0.attn_q.bias").is_some(),
        qk_norm: gguf.tensor("blk.0.attn_q_norm.weight").is_some(),
        // OLMoE's norms are over whole queries and keys (llama.cpp: weights of n_embd values).
        qk_norm_whole: arch == "olmoe",
        post_norms: gguf.tensor("blk.0.post_attention_norm.weight").is_some(),
        // llama.cpp scales by sqrtf(n_embd) in f32.
        embedding_scale: if gemma { Some((hidden as f32).sqrt()) } else { granite.embedding },
        // The 27B Gemmas (Gemma 2: 46 layers, Gemma 3: 62) scale queries by their
        // query_pre_attn_scalar, hidden / heads, not by the head size; llama.cpp recognises them by
        // their layer count, and so does this.
        attention_scale: ((arch == "gemma2" && n_layers == 46) || (arch == "gemma3" && n_layers == 62))
            .then(|| 1.0 / ((hidden / n_heads) as f32).sqrt())
            .or(granite.attention),
        residual_scale: granite.residual,
        logit_divisor: granite.logit_divisor,
        attn_softcap: gguf.get_f64(&key("attn_logit_softcapping")).filter(|&c| c > 0.0).map(|c| c as f32),
        final_softcap: gguf.get_f64(&key("final_logit_softcapping")).filter(|&c| c > 0.0).map(|c| c as f32),
        moe: moe_config(gguf, arch, ffn_size)?,
        ..Default::default()
    })
}

/// Granite's multipliers, as llama.cpp reads them (`None` for other architectures).
#[derive(Default)]
struct GraniteScales {
    embedding: Option<f32>,
    attention: Option<f32>,
    residual: Option<f32>,
    logit_divisor: Option<f32>,
}

/// Granite (`granite`, `granitemoe`): `{arch}.embedding_scale` (token embeddings times it),
/// `{arch}.attention.scale` (attention scores times it, instead of 1/sqrt(head_dim)),
/// `{arch}.residual_scale` (each block's output times it before its residual add) — each optional,
/// and 0 meaning none, as llama.cpp reads them — and `{arch}.logit_scale` (the logits divided by
/// it; required, as llama.cpp requires it). A negative or non-finite value (or a logit scale of 0)
/// is refused by name. A `granite` whose `rope.scaling.finetuned` is false has no RoPE in
/// llama.cpp: refused (llama.cpp's `granitemoe` does not read the key and always rotates). Biases
/// on the attention output or the MLP (optional in llama.cpp's loader, absent from IBM's models)
/// are refused too.
fn granite_scales(gguf: &GgufFile, arch: &str) -> Result<GraniteScales> {
    if !matches!(arch, "granite" | "granitemoe") {
        return Ok(GraniteScales::default());
    }
    let key = |k: &str| format!("{arch}.{k}");
    let file = gguf.path.display().to_string();
    if arch == "granite" && gguf.get_bool(&key("rope.scaling.finetuned")) == Some(false) {
        return Err(HearthError::UnsupportedSource(format!(
            "{file}: a `granite` without RoPE (`granite.rope.scaling.finetuned` false) is not supported"
        )));
    }
    let biases = ["attn_output", "ffn_gate", "ffn_up", "ffn_down"].map(|t| format!("blk.0.{t}.bias"));
    if let Some(bias) = biases.iter().find(|name| gguf.tensor(name).is_some()) {
        return Err(HearthError::UnsupportedSource(format!("{file}: a `{arch}` with `{bias}` is not supported")));
    }
    let positive = |k: &str, v: f64| positive_factor(&file, &key(k), v);
    let optional = |k: &str| gguf.get_f64(&key(k)).filter(|&v| v != 0.0).map(|v| positive(k, v)).transpose();
    Ok(GraniteScales {
        embedding: optional("embedding_scale")?,
        attention: optional("attention.scale")?,
        residual: optional("residual_scale")?,
        logit_divisor: Some(positive("logit_scale", gguf.require_f64(&key("logit_scale"))?)?),
    })
}

/// The mixture of experts of a file that has one (`{arch}.expert_count` > 0), as llama.cpp runs it:
/// a softmax over every expert, the top `expert_used_count`, their weights rescaled to sum to 1 for
/// Mixtral (`llama`) and Qwen3-MoE but not Qwen2-MoE (whose shared expert every token also runs) or
/// OLMoE. dots.llm1 (`dots1`): a sigmoid per expert (`expert_gating_func` 2), the experts chosen by
/// it plus `exp_probs_b`, weights rescaled as `expert_weights_norm` says and multiplied by
/// `expert_weights_scale`, an unscaled shared expert, and `leading_dense_block_count` dense layers.
/// Granite-MoE (`granitemoe`, and a `granite` with experts, which llama.cpp runs alike): the
/// softmax and rescaling whatever the file says (llama.cpp's graph fixes both), experts of
/// `feed_forward_length` rows, and Granite-MoE-Shared's shared expert added unscaled.
fn moe_config(gguf: &GgufFile, arch: &str, ffn_size: usize) -> Result<Option<MoeConfig>> {
    let key = |k: &str| format!("{arch}.{k}");
    let file = gguf.path.display().to_string();
    let experts = gguf.get_u64(&key("expert_count")).unwrap_or(0) as usize;
    let moe_arch = matches!(arch, "qwen2moe" | "qwen3moe" | "olmoe" | "dots1" | "granitemoe");
    if experts == 0 {
        return match moe_arch {
            true => Err(HearthError::bad_file(&file, format!("`{arch}` without `{arch}.expert_count`"))),
            false => Ok(None),
        };
    }
    if !moe_arch && !matches!(arch, "llama" | "granite") {
        return Err(HearthError::UnsupportedSource(format!("{file}: experts in a `{arch}` model are not supported")));
    }
    let granite = matches!(arch, "granite" | "granitemoe");
    if granite {
        let shared = gguf.tensor("blk.0.ffn_up_shexp.weight").and_then(|t| t.shape().first().copied());
        let used = gguf.require_u64(&key("expert_used_count"))? as usize;
        return Ok(Some(MoeConfig::granite(experts, used, ffn_size, shared)));
    }
    let dots = arch == "dots1";
    // llama.cpp's codes: 1 the softmax, 2 the sigmoid. It runs Mixtral, Qwen-MoE and OLMoE with the
    // softmax whatever the file says (another code is refused here rather than ignored), and dots1
    // as the file says (it cannot run dots1 without the key).
    let gating = match (dots, gguf.get_u64(&key("expert_gating_func"))) {
        (false, None | Some(1)) | (true, Some(1)) => Gating::Softmax,
        (true, Some(2)) => Gating::Sigmoid,
        (_, other) => {
            return Err(HearthError::UnsupportedSource(format!(
                "{file}: expert gating function {} in a `{arch}` (the softmax, 1{}, is supported)",
                other.map_or_else(|| "missing".to_string(), |g| g.to_string()),
                if dots { ", and the sigmoid, 2" } else { "" }
            )))
        }
    };
    let groups = gguf.get_u64(&key("expert_group_count")).unwrap_or(1);
    if groups > 1 {
        return Err(HearthError::UnsupportedSource(format!(
            "{file}: experts chosen within {groups} groups (`expert_group_count`) are not supported"
        )));
    }
    // dots1's leading dense layers (llama.cpp: none without the key).
    let dense_layers = match dots {
        true => gguf.get_u64(&key("leading_dense_block_count")).unwrap_or(0) as usize,
        false => 0,
    };
    // The first mixture layer's shared expert and selection bias.
    let shared = gguf.tensor(&format!("blk.{dense_layers}.ffn_up_shexp.weight"));
    let selection_bias = gguf.tensor(&format!("blk.{dense_layers}.exp_probs_b.bias")).is_some();
    if selection_bias && !dots {
        return Err(HearthError::bad_file(&file, format!("a selection bias (`exp_probs_b`) in a `{arch}`")));
    }
    // llama.cpp scales by a factor other than 0 and 1 only: 0 (or none) is no scale.
    let weights_scale = match gguf.get_f64(&key("expert_weights_scale")).filter(|&s| dots && s != 0.0) {
        None => 1.0,
        Some(s) => positive_factor(&file, &key("expert_weights_scale"), s)?,
    };
    Ok(Some(MoeConfig {
        experts,
        used: gguf.require_u64(&key("expert_used_count"))? as usize,
        expert_ffn_size: gguf.get_u64(&key("expert_feed_forward_length")).map_or(ffn_size, |v| v as usize),
        normalize: gguf
            .get_bool(&key("expert_weights_norm"))
            .unwrap_or(!matches!(arch, "qwen2moe" | "olmoe" | "dots1")),
        shared_ffn_size: shared.and_then(|t| t.shape().first().copied()),
        shared_unscaled: dots,
        gating,
        selection_bias,
        weights_scale,
        dense_layers,
    }))
}

/// The tensors of LongRoPE's factors (Phi-3), which the package keeps in its config.
const LONG_ROPE_FACTORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

/// The tensors whose data planning reads (not only the header): LongRoPE's factors, which go into
/// the config. A header read from a prefix needs them supplied (`GgufFile::supply_tensor`).
pub(super) fn tensors_read_to_plan(gguf: &GgufFile) -> Vec<&GgufTensorInfo> {
    LONG_ROPE_FACTORS.iter().filter_map(|name| gguf.tensor(name)).collect()
}

/// Whether the GGUF's tensor `info` becomes package tensors: all but LongRoPE's factors, which go
/// into the config (`RopeScaling::LongRope`).
pub(super) fn in_package(info: &GgufTensorInfo) -> bool {
    !LONG_ROPE_FACTORS.contains(&info.name.as_str())
}

/// Phi-3's LongRoPE, where the file has both factor tensors: llama.cpp divides the frequencies by
/// the long ones when its context exceeds the original one, by the short ones otherwise, and scales
/// rotated values by `rope.scaling.attn_factor` (1 without it).
fn long_rope(gguf: &GgufFile, arch: &str) -> Result<Option<RopeScaling>> {
    let file = gguf.path.display().to_string();
    let (long, short) = match LONG_ROPE_FACTORS.map(|name| gguf.tensor(name)) {
        [None, None] => return Ok(None),
        [Some(long), Some(short)] => (long, short),
        _ => {
            return Err(HearthError::bad_file(
                &file,
                "one of rope_factors_long and rope_factors_short without the other",
            ))
        }
    };
    if gguf.tensor("rope_freqs.weight").is_some() {
        // llama.cpp would use rope_freqs alone; the package keeps one set of factors.
        return Err(HearthError::bad_file(&file, "rope_freqs.weight beside LongRoPE's factor tensors"));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let factors = |info: &GgufTensorInfo| dequantize(info.ggml_type, &gguf.read_tensor(info)?, &info.name);
    Ok(Some(RopeScaling::LongRope {
        // llama.cpp's default: the training context.
        original_context_length: gguf
            .get_u64(&key("rope.scaling.original_context_length"))
            .or_else(|| gguf.get_u64(&key("context_length")))
            .unwrap_or(2048) as usize,
        attn_factor: gguf.get_f64(&key("rope.scaling.attn_factor")).unwrap_or(1.0) as f32,
        short_factors: factors(short)?,
        long_factors: factors(long)?,
    }))
}

/// What a GGUF tensor becomes in the package: its encoding, and whether its blocks are re-laid as
/// they are (`from_blocks`: lossless, or Q5_0 widened to q8) or its values decoded and encoded.
struct Target {
    dtype: DType,
    /// Values per (scale, min) group of q4, q5 and q8.
    group: Option<usize>,
    from_blocks: bool,
}

fn target(info: &GgufTensorInfo, opts: &ConvertOptions) -> Result<Target> {
    let ty = info.ggml_type;
    if info.n_bytes.is_none()
        || !matches!(
            ty,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q8_0
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
    {
        return Err(HearthError::UnsupportedTensorType { tensor: info.name.clone(), dtype: ty.name() });
    }
    // A mixture's router stays f32 whatever is asked (llama.cpp's quantizer leaves it too): its
    // logits choose the experts, and rounding them would change choices near a tie.
    if info.name.ends_with(".ffn_gate_inp.weight") {
        return Ok(Target { dtype: DType::F32, group: None, from_blocks: false });
    }
    let matrix = info.shape().len() >= 2;
    let group = |dtype, q4_group| match dtype {
        DType::Q4 => Some(q4_group),
        DType::Q5 => Some(Q5_GROUP),
        DType::Q8 => Some(Q8_GROUP),
        _ => None,
    };
    // GGUF's Q4_0 / Q4_1 blocks are groups of 32.
    let blocks = |dtype| Ok(Target { dtype, group: group(dtype, 32), from_blocks: true });
    // Lossless re-packing where the source block format has a Hearth twin.
    match (opts.quant, ty, matrix) {
        (QuantChoice::Keep | QuantChoice::Q4, GgmlType::Q4_0 | GgmlType::Q4_1, true)
            if opts.group == 32 || opts.quant == QuantChoice::Keep =>
        {
            return blocks(DType::Q4)
        }
        (QuantChoice::Keep | QuantChoice::Q8, GgmlType::Q8_0, true) => return blocks(DType::Q8),
        (QuantChoice::Keep, GgmlType::Q5_0 | GgmlType::Q5_1, true) => return blocks(DType::Q5),
        (QuantChoice::Q8, GgmlType::Q5_0, true) => return blocks(DType::Q8),
        (QuantChoice::Keep, GgmlType::Q4K, true) => return blocks(DType::Q4k),
        (QuantChoice::Keep, GgmlType::Q5K, true) => return blocks(DType::Q5k),
        (QuantChoice::Keep, GgmlType::Q6K, true) => return blocks(DType::Q6k),
        _ => {}
    }
    let dtype = match (opts.quant, ty) {
        (QuantChoice::Keep, GgmlType::F32 | GgmlType::BF16) => DType::F32,
        (QuantChoice::Keep, GgmlType::F16) => DType::F16,
        // Block types asked to become another encoding.
        (QuantChoice::Keep | QuantChoice::Q8, _) => DType::Q8,
        (QuantChoice::Q4, _) => DType::Q4,
        (QuantChoice::F16, _) => DType::F16,
    };
    let dtype = f32_encoding(&info.shape(), dtype, opts.group);
    Ok(Target { dtype, group: group(dtype, opts.group), from_blocks: false })
}

fn convert_tensor(gguf: &GgufFile, info: &GgufTensorInfo, opts: &ConvertOptions) -> Result<Tensor> {
    target(info, opts)?; // an unsupported type is refused before its bytes are read
    convert_tensor_bytes(info, &gguf.read_tensor(info)?, opts, &gguf.path)
}

/// Tensor `info` of the package from its bytes exactly as the GGUF stores them.
pub(super) fn convert_tensor_bytes(
    info: &GgufTensorInfo,
    bytes: &[u8],
    opts: &ConvertOptions,
    file: &Path,
) -> Result<Tensor> {
    let Target { dtype, from_blocks, .. } = target(info, opts)?;
    let (ty, shape) = (info.ggml_type, info.shape());
    if info.n_bytes != Some(bytes.len() as u64) {
        return Err(HearthError::bad_file(
            file.display(),
            format!(
                "`{}` has {} bytes of data, not the {:?} its type and shape need",
                info.name,
                bytes.len(),
                info.n_bytes
            ),
        ));
    }
    if from_blocks {
        return match (ty, dtype) {
            (GgmlType::Q4_0 | GgmlType::Q4_1, _) => q4_from_ggml(ty, bytes, shape, &info.name),
            (GgmlType::Q8_0, _) => Ok(q8_from_ggml(bytes, shape)),
            (GgmlType::Q5_0, DType::Q8) => Ok(q8_from_q5_0(bytes, shape)),
            (GgmlType::Q5_0 | GgmlType::Q5_1, _) => q5_from_ggml(ty, bytes, shape, &info.name),
            _ => k_from_ggml(ty, bytes, shape, &info.name),
        };
    }
    let values = dequantize(ty, bytes, &info.name)?;
    encode_f32(&info.name, shape, &values, dtype, opts.group)
}
