//! Hugging Face model directory (`config.json`, `*.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) → package.

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::hf_layout::{import, Family, Mapping};
use super::{add_tensor, encode_f32, positive_factor, ConvertOptions, QuantChoice};
use crate::error::{HearthError, Result};
use crate::manifest::{
    limits, Activation, AlibiConfig, EncoderConfig, FfnKind, Gating, Manifest, ModelConfig, MoeConfig, NormKind,
    Pooling, PositionKind, RopeConfig, RopeScaling, RopeStyle, SourceInfo, TokenizerInfo,
};
use crate::package::PackageWriter;
use crate::quant::DType;

fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).map_err(|e| HearthError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| HearthError::bad_file(path.display(), format!("not valid JSON: {e}")))
}

pub(super) fn convert(dir: &Path, out: &Path, opts: &ConvertOptions) -> Result<Manifest> {
    let config_path = dir.join("config.json");
    let hf = read_json(&config_path)?;
    let (architecture, family, config) = model_config(&hf, &config_path)?;
    let (tokenizer_json, tokenizer_info) = tokenizer(dir, config.encoder.is_some())?;

    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| HearthError::io("list", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(HearthError::bad_file(dir.display(), "no *.safetensors files in the directory"));
    }

    let mut writer = PackageWriter::new(out, opts.shard_bytes, opts.overwrite)?;
    let mut stored: Vec<(String, Vec<usize>)> = Vec::new();
    for path in &files {
        let bytes = fs::read(path).map_err(|e| HearthError::io("read", path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| HearthError::bad_file(path.display(), e.to_string()))?;
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        for hf_name in names {
            if super::hf_layout::skipped(family, &hf_name) {
                continue;
            }
            let view = st.tensor(&hf_name).map_err(|e| HearthError::bad_file(path.display(), e.to_string()))?;
            let values = to_f32(view.dtype(), view.data(), &hf_name)?;
            let imported = match import(family, &config, &hf_name, view.shape(), values) {
                Mapping::Tensor(t) => vec![t],
                Mapping::Tensors(ts) => ts,
                Mapping::Skip => continue,
                Mapping::Unknown => {
                    return Err(HearthError::bad_file(
                        path.display(),
                        format!("unexpected tensor `{hf_name}` for a {architecture} model"),
                    ))
                }
                Mapping::BadShape(what) => {
                    return Err(HearthError::bad_file(
                        path.display(),
                        format!("`{hf_name}` of shape {:?} is not {what} of config.json's sizes", view.shape()),
                    ))
                }
            };
            for t in imported {
                let dtype = match (opts.quant, view.dtype()) {
                    // A mixture's router stays f32, as from GGUF (gguf_model's `target`).
                    _ if t.name.ends_with(".ffn_gate_inp.weight") => DType::F32,
                    (QuantChoice::Keep, Dtype::F16) => DType::F16,
                    (QuantChoice::Keep, _) => DType::F32,
                    (QuantChoice::Q4, _) => DType::Q4,
                    (QuantChoice::Q8, _) => DType::Q8,
                    (QuantChoice::F16, _) => DType::F16,
                };
                let tensor = encode_f32(&hf_name, t.shape, &t.values, dtype, opts.group)?;
                stored.extend(add_tensor(&mut writer, &t.name, &tensor, &config, path)?);
            }
        }
    }
    // What the config says only through which tensors exist (BLOOM's config has no MLP size).
    let has = |name: &str| stored.iter().any(|(s, _)| s == name);
    let ffn_rows = stored.iter().find(|(s, _)| s == "blk.0.ffn_up.weight").and_then(|(_, shape)| shape.first());
    let config = ModelConfig {
        ffn_size: ffn_rows.copied().unwrap_or(config.ffn_size),
        tied_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        linear_bias: has("blk.0.attn_output.bias"),
        embedding_norm: has("token_embd_norm.weight"),
        ..config
    };
    writer.add_file("tokenizer.json", tokenizer_json.as_bytes())?;
    let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    writer.finish(Manifest {
        format: String::new(),
        format_version: 0,
        name: name.clone(),
        architecture: architecture.into(),
        config,
        tokenizer: tokenizer_info,
        source: SourceInfo { kind: "safetensors".into(), file: name },
        shard_size: 0,
        shards: vec![],
        files: vec![],
        tensors: vec![],
    })
}

fn to_f32(dtype: Dtype, data: &[u8], name: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(HearthError::UnsupportedTensorType {
                tensor: name.to_string(),
                dtype: format!("{other:?} (safetensors)"),
            })
        }
    })
}

/// The package's architecture name, the family of its tensor layout, and the model's config
/// (what only the tensors tell — biases, tied embeddings — is filled in after reading them).
fn model_config(hf: &Value, path: &Path) -> Result<(&'static str, Family, ModelConfig)> {
    let file = path.display().to_string();
    let arch = hf
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| hf.get("model_type").and_then(Value::as_str))
        .unwrap_or("unknown");
    let (architecture, family) = match arch {
        // Mistral is Llama with a sliding window (config.json's `sliding_window`, null for none).
        "LlamaForCausalLM" | "llama" | "MistralForCausalLM" | "mistral" => ("llama", Family::Llama),
        "Qwen2ForCausalLM" | "qwen2" => ("qwen2", Family::Llama),
        "Qwen3ForCausalLM" | "qwen3" => ("qwen3", Family::Llama),
        // Mixtures of experts: Mixtral is Llama's block with one.
        "MixtralForCausalLM" | "mixtral" => ("llama", Family::Llama),
        "Qwen2MoeForCausalLM" | "qwen2_moe" => ("qwen2moe", Family::Llama),
        "Qwen3MoeForCausalLM" | "qwen3_moe" => ("qwen3moe", Family::Llama),
        "OlmoeForCausalLM" | "olmoe" => ("olmoe", Family::Llama),
        "Dots1ForCausalLM" | "dots1" => ("dots1", Family::Llama),
        // Granite: Llama's block with four multipliers; Granite-MoE (and -Shared): a mixture in
        // every layer, its experts stacked in 3-D tensors.
        "GraniteForCausalLM" | "granite" => ("granite", Family::Llama),
        "GraniteMoeForCausalLM" | "granitemoe" | "GraniteMoeSharedForCausalLM" | "granitemoeshared" => {
            ("granitemoe", Family::Llama)
        }
        "SmolLM3ForCausalLM" | "smollm3" => ("smollm3", Family::Llama),
        "Phi3ForCausalLM" | "phi3" => ("phi3", Family::Llama),
        "Gemma2ForCausalLM" | "gemma2" => ("gemma2", Family::Gemma),
        "Gemma3ForCausalLM" | "gemma3_text" => ("gemma3", Family::Gemma),
        "GPT2LMHeadModel" | "gpt2" => ("gpt2", Family::Gpt2),
        "BloomForCausalLM" | "bloom" => ("bloom", Family::Bloom),
        "BertModel" | "bert" => ("bert", Family::Bert),
        _ => return Err(HearthError::UnsupportedArchitecture(arch.to_string())),
    };
    let int = |k: &str| -> Result<usize> {
        hf.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| HearthError::bad_file(&file, format!("missing or non-integer `{k}`")))
    };
    // The first of several names a config may use.
    let int_of = |keys: &[&str]| -> Result<usize> {
        keys.iter()
            .find_map(|k| int(k).ok())
            .ok_or_else(|| HearthError::bad_file(&file, format!("missing or non-integer `{}`", keys.join("` / `"))))
    };
    let float = |k: &str, default: f64| hf.get(k).and_then(Value::as_f64).unwrap_or(default) as f32;
    let hidden = int_of(&["hidden_size", "n_embd", "n_embed"])?;
    let n_heads = int_of(&["num_attention_heads", "n_head"])?;
    let n_kv_heads = int("num_key_value_heads").unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(HearthError::bad_file(&file, format!("{n_heads} heads cannot share {n_kv_heads} key/value heads")));
    }
    let head_dim = int("head_dim").unwrap_or(hidden / n_heads);
    let granite = granite_scales(hf, architecture, head_dim, hidden / n_heads, &file)?;
    let base = ModelConfig {
        n_layers: int_of(&["num_hidden_layers", "n_layer"])?,
        hidden_size: hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size: int("intermediate_size").or_else(|_| int("n_inner")).unwrap_or(4 * hidden),
        vocab_size: int("vocab_size")?,
        context_length: int_of(&["max_position_embeddings", "n_positions", "seq_length"]).unwrap_or(2048),
        norm_eps: float("rms_norm_eps", 1e-5),
        // Tied embeddings, biases and the embedding norm come from the tensors present.
        ..Default::default()
    };
    let config = match family {
        Family::Llama | Family::Gemma => {
            let gemma = family == Family::Gemma;
            let gemma3 = architecture == "gemma3";
            // Transformers 5 keeps the RoPE keys in `rope_parameters` (per attention type for Gemma 3).
            let params = |kind: &str, k: &str| {
                hf.get(k).or_else(|| {
                    let p = hf.get("rope_parameters")?;
                    p.get(kind).unwrap_or(p).get(k)
                })
            };
            let theta = |kind: &str, k: &str| params(kind, k).and_then(Value::as_f64).unwrap_or(10_000.0) as f32;
            // Phi-4-mini rotates the first 3/4 of each head.
            let rotated = params("full_attention", "partial_rotary_factor").and_then(Value::as_f64).unwrap_or(1.0);
            let rope = RopeConfig {
                base: theta("full_attention", "rope_theta"),
                dim: (head_dim as f64 * rotated).round() as usize,
                style: RopeStyle::Neox,
                scaling: rope_scaling(hf, &file)?,
                local_base: gemma3.then(|| {
                    hf.get("rope_local_base_freq")
                        .and_then(Value::as_f64)
                        .map_or_else(|| theta("sliding_attention", "rope_theta"), |b| b as f32)
                }),
                unrotated_layers: if architecture == "smollm3" {
                    smollm3_unrotated(hf, base.n_layers)
                } else {
                    Vec::new()
                },
            };
            // OLMo's clamp of Q, K and V (none in the released OLMoE) is not implemented.
            if hf.get("clip_qkv").is_some_and(|v| !v.is_null()) {
                return Err(HearthError::UnsupportedSource(format!("{file}: `clip_qkv` is not supported")));
            }
            // Qwen's configs name a window they do not use (`use_sliding_window: false`). With it
            // on, Transformers windows only the layers from `max_window_layers` on; no released
            // Qwen turns it on, and here it would window every layer.
            // Phi-3's window is ignored, as llama.cpp ignores it.
            let window = hf
                .get("sliding_window")
                .and_then(Value::as_u64)
                .filter(|&w| w > 0 && hf.get("use_sliding_window").and_then(Value::as_bool) != Some(false))
                .filter(|_| architecture != "phi3")
                .map(|w| w as usize);
            ModelConfig {
                rope: Some(rope),
                sliding_window: window,
                sliding_window_pattern: if gemma && window.is_some() { Some(gemma_pattern(hf, gemma3)) } else { None },
                activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
                qk_norm: gemma3 || matches!(architecture, "qwen3" | "qwen3moe" | "olmoe" | "dots1"),
                qk_norm_whole: architecture == "olmoe",
                moe: mixture(hf, architecture, base.ffn_size, &file)?,
                post_norms: gemma,
                embedding_scale: if gemma { Some((hidden as f32).sqrt()) } else { granite.embedding_scale },
                // Gemma scales queries by query_pre_attn_scalar^-1/2, the head size but for 27B.
                attention_scale: int("query_pre_attn_scalar")
                    .ok()
                    .filter(|&s| gemma && s != head_dim)
                    .map(|s| 1.0 / (s as f32).sqrt())
                    .or(granite.attention_scale),
                residual_scale: granite.residual_scale,
                logit_divisor: granite.logit_divisor,
                attn_softcap: hf.get("attn_logit_softcapping").and_then(Value::as_f64).map(|c| c as f32),
                final_softcap: hf.get("final_logit_softcapping").and_then(Value::as_f64).map(|c| c as f32),
                ..base
            }
        }
        Family::Bert => {
            let act = hf.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
            let position = hf.get("position_embedding_type").and_then(Value::as_str).unwrap_or("absolute");
            if act != "gelu" || position != "absolute" {
                return Err(HearthError::bad_file(
                    &file,
                    format!("a BERT with `{act}` activations and `{position}` positions is not supported (`gelu` and `absolute` are)"),
                ));
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            ModelConfig {
                norm: NormKind::Layer,
                norm_eps: float("layer_norm_eps", 1e-12),
                activation: Activation::Gelu,
                ffn: FfnKind::Plain,
                position: PositionKind::Learned,
                encoder: Some(sentence_transformers(dir, base.context_length, int("type_vocab_size").unwrap_or(2))?),
                ..base
            }
        }
        Family::Gpt2 | Family::Bloom => {
            // GPT-2's "gelu_new" and BLOOM's GELU are the tanh approximation the engines compute.
            let act = hf.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
                return Err(HearthError::bad_file(
                    &file,
                    format!("activation `{act}` is not supported (the tanh GELU, `gelu_new`, is)"),
                ));
            }
            ModelConfig {
                norm: NormKind::Layer,
                norm_eps: float("layer_norm_epsilon", 1e-5),
                activation: Activation::GeluTanh,
                ffn: FfnKind::Plain,
                position: if family == Family::Bloom { PositionKind::Alibi } else { PositionKind::Learned },
                alibi: (family == Family::Bloom).then_some(AlibiConfig { max_bias: 8.0 }),
                ..base
            }
        }
    };
    Ok((architecture, family, config))
}

/// How sentence-transformers turns the encoder's outputs into one embedding (`modules.json`: the
/// Pooling module's `config.json`, a `Normalize` module; `sentence_bert_config.json`'s
/// `max_seq_length`); without those files, the mean of the outputs, not normalized, at the model's
/// full context. A module Hearth does not run (a `Dense` projection, max pooling) is refused.
fn sentence_transformers(dir: &Path, context: usize, token_types: usize) -> Result<EncoderConfig> {
    let mut config = EncoderConfig { pooling: Pooling::Mean, normalize: false, max_tokens: context, token_types };
    let modules_path = dir.join("modules.json");
    if !modules_path.exists() {
        return Ok(config);
    }
    let modules = read_json(&modules_path)?;
    for module in modules.as_array().into_iter().flatten() {
        let kind = module.get("type").and_then(Value::as_str).unwrap_or("");
        match kind.rsplit('.').next().unwrap_or("") {
            "Transformer" => {}
            "Normalize" => config.normalize = true,
            "Pooling" => {
                let sub = module.get("path").and_then(Value::as_str).unwrap_or("");
                // A path inside the model's directory only.
                if sub.contains("..") || sub.starts_with('/') {
                    return Err(HearthError::bad_file(modules_path.display(), format!("module path `{sub}`")));
                }
                let pooling_path = dir.join(sub).join("config.json");
                let p = read_json(&pooling_path)?;
                let on = |k: &str| p.get(k).and_then(Value::as_bool) == Some(true);
                let chosen: Vec<_> = [
                    ("pooling_mode_mean_tokens", Some(Pooling::Mean)),
                    ("pooling_mode_cls_token", Some(Pooling::Cls)),
                    ("pooling_mode_lasttoken", Some(Pooling::Last)),
                    ("pooling_mode_max_tokens", None),
                    ("pooling_mode_mean_sqrt_len_tokens", None),
                    ("pooling_mode_weightedmean_tokens", None),
                ]
                .into_iter()
                .filter(|(k, _)| on(k))
                .collect();
                match chosen[..] {
                    [(_, Some(pooling))] => config.pooling = pooling,
                    _ => {
                        let modes: Vec<_> = chosen.iter().map(|(k, _)| *k).collect();
                        return Err(HearthError::bad_file(
                            pooling_path.display(),
                            format!("pooling {modes:?} is not supported (one of mean, CLS or last token is)"),
                        ));
                    }
                }
            }
            _ => {
                return Err(HearthError::bad_file(
                    modules_path.display(),
                    format!("the sentence-transformers module `{kind}` is not supported"),
                ))
            }
        }
    }
    let st_path = dir.join("sentence_bert_config.json");
    if st_path.exists() {
        if let Some(n) = read_json(&st_path)?.get("max_seq_length").and_then(Value::as_u64) {
            config.max_tokens = (n as usize).clamp(1, context);
        }
    }
    Ok(config)
}

/// Granite's multipliers from config.json, with Transformers' defaults: `embedding_multiplier`
/// (none without it: 1), `attention_multiplier` (1.0 without it, Transformers' default, not
/// 1/sqrt(head_dim)), `residual_multiplier` (none: 1) and `logits_scaling` (the logits' divisor, 1
/// without it); an empty config for other architectures. Granite's attention has heads of
/// hidden / heads (llama.cpp's converter drops `head_dim`): another `head_dim` is refused, and so
/// are biases (`attention_bias`, `mlp_bias`), which IBM's models do not have.
fn granite_scales(
    hf: &Value,
    architecture: &str,
    head_dim: usize,
    heads_of_hidden: usize,
    file: &str,
) -> Result<ModelConfig> {
    if !matches!(architecture, "granite" | "granitemoe") {
        return Ok(ModelConfig::default());
    }
    if head_dim != heads_of_hidden {
        return Err(HearthError::UnsupportedSource(format!(
            "{file}: a Granite with `head_dim` {head_dim}, not hidden_size / num_attention_heads \
             ({heads_of_hidden}), is not supported"
        )));
    }
    if let Some(bias) = ["attention_bias", "mlp_bias"].into_iter().find(|k| hf.get(*k) == Some(&Value::Bool(true))) {
        return Err(HearthError::UnsupportedSource(format!("{file}: a Granite with `{bias}` is not supported")));
    }
    let float = |k: &str| hf.get(k).and_then(Value::as_f64).map(|v| positive_factor(file, k, v)).transpose();
    Ok(ModelConfig {
        embedding_scale: float("embedding_multiplier")?,
        attention_scale: Some(float("attention_multiplier")?.unwrap_or(1.0)),
        residual_scale: float("residual_multiplier")?,
        logit_divisor: Some(float("logits_scaling")?.unwrap_or(1.0)),
        ..ModelConfig::default()
    })
}

/// SmolLM3's layers without RoPE: where `no_rope_layers` (one flag per layer, 1 = rotate) holds
/// 0, else every `no_rope_layer_interval`-th layer (default 4, as Transformers and llama.cpp). Never
/// past the layer limit, which `validate` then enforces: a hostile count does not size the list.
/// A mixture of experts where config.json has one: Mixtral's `num_local_experts` (its experts of
/// `intermediate_size` rows, their weights rescaled), Qwen-MoE's and OLMoE's `num_experts` of
/// `moe_intermediate_size` rows (OLMoE: `intermediate_size`), rescaled as `norm_topk_prob` says;
/// Qwen2-MoE's shared expert of `shared_expert_intermediate_size`. Qwen-MoE's dense layers among the sparse ones
/// (`decoder_sparse_step` > 1, `mlp_only_layers`) are refused by name. dots.llm1: `n_routed_experts`
/// chosen by sigmoid plus `e_score_correction_bias`, weighted by `routed_scaling_factor`,
/// `n_shared_experts` unscaled shared experts (one MLP), `first_k_dense_replace` dense layers.
/// Granite-MoE: `num_local_experts` of `intermediate_size` rows, top `num_experts_per_tok` of the
/// router's logits softmaxed (the same weights as a softmax over all, rescaled), and
/// Granite-MoE-Shared's unscaled shared expert of `shared_intermediate_size` (0: none).
fn mixture(hf: &Value, architecture: &str, ffn_size: usize, file: &str) -> Result<Option<MoeConfig>> {
    let int = |k: &str| hf.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let dots = architecture == "dots1";
    let count = if dots { int("n_routed_experts") } else { int("num_local_experts").or_else(|| int("num_experts")) };
    let Some(experts) = count.filter(|&e| e > 0) else {
        return match architecture {
            "qwen2moe" | "qwen3moe" | "olmoe" | "dots1" | "granitemoe" => {
                Err(HearthError::bad_file(file, "a mixture of experts without its count of experts"))
            }
            _ => Ok(None),
        };
    };
    let dense_layers = hf.get("mlp_only_layers").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    if int("decoder_sparse_step").is_some_and(|s| s != 1) || dense_layers {
        return Err(HearthError::UnsupportedSource(format!(
            "{file}: dense layers among the mixture's (`decoder_sparse_step`, `mlp_only_layers`) are not supported"
        )));
    }
    if int("n_group").is_some_and(|g| g > 1) {
        return Err(HearthError::UnsupportedSource(format!(
            "{file}: experts chosen within groups (`n_group` > 1) are not supported"
        )));
    }
    if let Some(scoring) = hf.get("scoring_func").and_then(Value::as_str).filter(|s| *s != "sigmoid" && dots) {
        return Err(HearthError::UnsupportedSource(format!("{file}: dots1 with `scoring_func` {scoring}")));
    }
    let used =
        int("num_experts_per_tok").ok_or_else(|| HearthError::bad_file(file, "missing `num_experts_per_tok`"))?;
    if matches!(architecture, "granite" | "granitemoe") {
        let shared = int("shared_intermediate_size").filter(|&f| f > 0);
        return Ok(Some(MoeConfig::granite(experts, used, ffn_size, shared)));
    }
    let qwen = architecture != "llama";
    let expert_ffn_size = if qwen { int("moe_intermediate_size").unwrap_or(ffn_size) } else { ffn_size };
    let shared_ffn_size = match dots {
        true => int("n_shared_experts").filter(|&n| n > 0).map(|n| n.saturating_mul(expert_ffn_size)),
        false => int("shared_expert_intermediate_size").filter(|&f| f > 0),
    };
    // dots.llm1's only: Transformers reads no such factor for the other mixtures.
    let weights_scale = match hf.get("routed_scaling_factor").and_then(Value::as_f64).filter(|_| dots) {
        None => 1.0,
        Some(s) => positive_factor(file, "routed_scaling_factor", s)?,
    };
    Ok(Some(MoeConfig {
        experts,
        used,
        expert_ffn_size,
        normalize: hf.get("norm_topk_prob").and_then(Value::as_bool).unwrap_or(!qwen),
        shared_ffn_size,
        shared_unscaled: dots && shared_ffn_size.is_some(),
        gating: if dots { Gating::Sigmoid } else { Gating::Softmax },
        selection_bias: dots,
        weights_scale,
        dense_layers: if dots { int("first_k_dense_replace").unwrap_or(0) } else { 0 },
    }))
}

fn smollm3_unrotated(hf: &Value, n_layers: usize) -> Vec<usize> {
    let n_layers = n_layers.min(limits::LAYERS + 1);
    if let Some(flags) = hf.get("no_rope_layers").and_then(Value::as_array) {
        return flags
            .iter()
            .take(n_layers)
            .enumerate()
            .filter(|(_, f)| f.as_u64() == Some(0))
            .map(|(l, _)| l)
            .collect();
    }
    let interval = hf.get("no_rope_layer_interval").and_then(Value::as_u64).filter(|&n| n > 0).unwrap_or(4);
    let interval = usize::try_from(interval).unwrap_or(usize::MAX);
    (interval - 1..n_layers).step_by(interval).collect()
}

/// Gemma's local/global pattern: `sliding_window_pattern`, or where `layer_types` first says
/// "full_attention" (1-based), else every sixth layer (Gemma 3) or every second (Gemma 2).
fn gemma_pattern(hf: &Value, gemma3: bool) -> usize {
    if let Some(n) = hf.get("sliding_window_pattern").and_then(Value::as_u64) {
        return n as usize;
    }
    hf.get("layer_types")
        .and_then(Value::as_array)
        .and_then(|types| types.iter().position(|t| t.as_str() == Some("full_attention")))
        .map_or(if gemma3 { 6 } else { 2 }, |i| i + 1)
}

fn rope_scaling(hf: &Value, file: &str) -> Result<Option<RopeScaling>> {
    // Transformers 5's `rope_parameters` (the full-attention layers' where it is per attention type).
    let parameters = || hf.get("rope_parameters").map(|p| p.get("full_attention").unwrap_or(p));
    let Some(s) = hf.get("rope_scaling").filter(|s| !s.is_null()).or_else(parameters).filter(|s| !s.is_null()) else {
        return Ok(None);
    };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("");
    let f = |k: &str| s.get(k).and_then(Value::as_f64).map(|v| v as f32);
    Ok(match kind {
        "linear" => Some(RopeScaling::Linear { factor: f("factor").unwrap_or(1.0) }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor").unwrap_or(1.0),
            low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
            original_context_length: s.get("original_max_position_embeddings").and_then(Value::as_u64).unwrap_or(8192)
                as usize,
        }),
        "yarn" => {
            let factor = f("factor").unwrap_or(1.0);
            // Transformers' `attention_factor` replaces the whole magnitude 1 + 0.1 ln(factor);
            // the manifest's `attn_factor` multiplies it (as llama.cpp's does).
            let default_magnitude = if factor > 1.0 { 1.0 + 0.1 * factor.ln() } else { 1.0 };
            Some(RopeScaling::Yarn {
                factor,
                original_context_length: s.get("original_max_position_embeddings").and_then(Value::as_u64).ok_or_else(
                    || HearthError::bad_file(file, "yarn rope scaling without original_max_position_embeddings"),
                )? as usize,
                beta_fast: f("beta_fast").unwrap_or(32.0),
                beta_slow: f("beta_slow").unwrap_or(1.0),
                attn_factor: f("attention_factor").map_or(1.0, |a| a / default_magnitude),
            })
        }
        // Phi-3's LongRoPE (called "su" before): factors per pair, the long ones past the original
        // context; the magnitude is Transformers' `attention_factor`, else computed from the
        // extension as Transformers and llama.cpp's converter compute it.
        "longrope" | "su" => {
            let original = s
                .get("original_max_position_embeddings")
                .or_else(|| hf.get("original_max_position_embeddings"))
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    HearthError::bad_file(file, "longrope scaling without original_max_position_embeddings")
                })?;
            let context = hf.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(original);
            let scale = context as f64 / original.max(1) as f64;
            let default_magnitude =
                if scale > 1.0 { (1.0 + scale.ln() / (original.max(2) as f64).ln()).sqrt() } else { 1.0 };
            let factors = |k: &str| -> Result<Vec<f32>> {
                s.get(k)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(|v| v.as_f64().map(|v| v as f32)).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| {
                        HearthError::bad_file(file, format!("longrope scaling without a numeric `{k}` list"))
                    })
            };
            Some(RopeScaling::LongRope {
                original_context_length: original as usize,
                attn_factor: f("attention_factor").unwrap_or(default_magnitude as f32),
                short_factors: factors("short_factor")?,
                long_factors: factors("long_factor")?,
            })
        }
        "default" | "" => None,
        other => return Err(HearthError::bad_file(file, format!("rope scaling `{other}` is not supported yet"))),
    })
}

/// The directory's `tokenizer.json` without its post-processor (Hearth adds bos itself, as the
/// manifest says), and the special tokens from `tokenizer_config.json` / `generation_config.json`.
/// An encoder's keeps its post-processor (BERT's `[CLS] … [SEP]`) and loses its truncation and
/// padding (the manifest's `max_tokens` cuts texts).
fn tokenizer(dir: &Path, encoder: bool) -> Result<(String, TokenizerInfo)> {
    let tok_path = dir.join("tokenizer.json");
    let mut tok = read_json(&tok_path)?;
    let post = tok.get("post_processor").cloned().unwrap_or(Value::Null);
    if encoder {
        tok["truncation"] = Value::Null;
        tok["padding"] = Value::Null;
    } else {
        tok["post_processor"] = Value::Null;
    }
    let json = tok.to_string();
    let parsed = tokenizers::Tokenizer::from_bytes(json.as_bytes())
        .map_err(|e| HearthError::Tokenizer(format!("{} does not load: {e}", tok_path.display())))?;

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.exists() { read_json(&cfg_path)? } else { Value::Null };
    // Special tokens appear either as strings or as {"content": ...} objects.
    let token_str = |k: &str| -> Option<String> {
        let v = cfg.get(k)?;
        v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string))
    };
    let id_of = |k: &str| token_str(k).and_then(|t| parsed.token_to_id(&t));
    let bos_id = id_of("bos_token");
    let eos_id = id_of("eos_token");
    // Without an explicit `add_bos_token`, the post-processor we dropped tells whether bos was added.
    let post_adds_bos = token_str("bos_token")
        .is_some_and(|bos| post.to_string().contains(&serde_json::to_string(&bos).unwrap_or_default()));
    let add_bos = cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(post_adds_bos) && bos_id.is_some();

    let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        match read_json(&gen_path)?.get("eos_token_id") {
            Some(Value::Number(n)) => stop_ids.extend(n.as_u64().map(|v| v as u32)),
            Some(Value::Array(a)) => stop_ids.extend(a.iter().filter_map(Value::as_u64).map(|v| v as u32)),
            _ => {}
        }
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();

    let chat_template = match cfg.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // A list of named templates: take the default one.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    };
    Ok((
        json,
        TokenizerInfo {
            file: "tokenizer.json".into(),
            bos_id,
            eos_id,
            stop_ids,
            pad_id: id_of("pad_token"),
            add_bos,
            chat_template,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm3_unrotated_layers_come_from_the_flags_or_the_interval() {
        let flags = serde_json::json!({ "no_rope_layers": [1, 0, 1, 1, 0, 1] });
        assert_eq!(smollm3_unrotated(&flags, 6), vec![1, 4]);
        assert_eq!(smollm3_unrotated(&serde_json::json!({ "no_rope_layer_interval": 3 }), 7), vec![2, 5]);
        assert_eq!(smollm3_unrotated(&serde_json::json!({}), 9), vec![3, 7]);
        // A hostile layer count or interval sizes nothing.
        assert_eq!(smollm3_unrotated(&serde_json::json!({}), usize::MAX).len(), (limits::LAYERS + 1) / 4);
        assert!(smollm3_unrotated(&serde_json::json!({ "no_rope_layer_interval": u64::MAX }), usize::MAX).is_empty());
    }

    /// Granite 3's config.json: the four multipliers as they are (`attention_multiplier` defaults to
    /// Transformers' 1.0, not 1/sqrt(head_dim)); Granite-MoE-Shared's experts and shared MLP
    /// (`shared_intermediate_size` 0: none); and the refusals: another `head_dim`, biases, a
    /// multiplier that is not a positive number, Granite 4's hybrid.
    #[test]
    fn granite_configs_and_refusals_from_config_json() {
        let common = serde_json::json!({
            "architectures": ["GraniteForCausalLM"], "hidden_size": 2048, "num_attention_heads": 32,
            "num_key_value_heads": 8, "num_hidden_layers": 40, "intermediate_size": 8192, "vocab_size": 49155,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000000.0,
            "embedding_multiplier": 12.0, "attention_multiplier": 0.015625, "residual_multiplier": 0.22,
            "logits_scaling": 8.0, "attention_bias": false, "mlp_bias": false,
        });
        let with = |extra: serde_json::Value| {
            let mut hf = common.clone();
            hf.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            model_config(&hf, Path::new("config.json")).map(|(arch, _, c)| (arch, c))
        };
        let (arch, c) = with(serde_json::json!({})).unwrap();
        assert_eq!(arch, "granite");
        assert_eq!((c.embedding_scale, c.attention_scale, c.residual_scale), (Some(12.0), Some(0.015625), Some(0.22)));
        assert_eq!((c.logit_divisor, c.head_dim, c.moe.is_none()), (Some(8.0), 64, true));
        let mut defaults = common.clone();
        for k in ["embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling"] {
            defaults.as_object_mut().unwrap().remove(k);
        }
        let c = model_config(&defaults, Path::new("config.json")).unwrap().2;
        assert_eq!((c.embedding_scale, c.attention_scale, c.residual_scale), (None, Some(1.0), None));
        assert_eq!(c.logit_divisor, Some(1.0));

        let moe = serde_json::json!({
            "architectures": ["GraniteMoeSharedForCausalLM"], "num_local_experts": 40, "num_experts_per_tok": 8,
            "intermediate_size": 512, "shared_intermediate_size": 1024,
        });
        let (arch, c) = with(moe.clone()).unwrap();
        let m = c.moe.unwrap();
        assert_eq!(arch, "granitemoe");
        assert_eq!((m.experts, m.used, m.expert_ffn_size, m.normalize), (40, 8, 512, true));
        assert_eq!((m.shared_ffn_size, m.shared_unscaled, m.gating), (Some(1024), true, Gating::Softmax));
        let mut no_shared = moe.clone();
        no_shared["shared_intermediate_size"] = 0.into();
        no_shared["architectures"] = serde_json::json!(["GraniteMoeForCausalLM"]);
        let m = with(no_shared).unwrap().1.moe.unwrap();
        assert_eq!((m.shared_ffn_size, m.shared_unscaled), (None, false));

        for (extra, expected) in [
            (serde_json::json!({ "head_dim": 128 }), "`head_dim` 128"),
            (serde_json::json!({ "mlp_bias": true }), "`mlp_bias`"),
            (serde_json::json!({ "attention_bias": true }), "`attention_bias`"),
            (serde_json::json!({ "residual_multiplier": -0.22 }), "`residual_multiplier` is -0.22"),
            (serde_json::json!({ "logits_scaling": 0.0 }), "`logits_scaling` is 0"),
            (serde_json::json!({ "embedding_multiplier": 1e39 }), "`embedding_multiplier` is inf"),
            (serde_json::json!({ "architectures": ["GraniteMoeHybridForCausalLM"] }), "GraniteMoeHybridForCausalLM"),
        ] {
            let err = with(extra.clone()).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    /// Phi-3.5-mini's config.json as Transformers 4 writes it (`rope_scaling`, the original context at
    /// the top level) and as Transformers 5 does (everything in `rope_parameters`) give one config:
    /// LongRoPE with the magnitude sqrt(1 + ln 32 / ln 4096) = 1.1902 (Phi-3.5's 131072 over 4096),
    /// and Phi-4-mini's partial rotary factor.
    #[test]
    fn phi3_rope_settings_come_from_either_transformers_layout() {
        let (short, long) = (vec![1.0; 48], vec![2.0; 48]);
        let common = serde_json::json!({
            "architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "num_attention_heads": 24,
            "num_key_value_heads": 8, "num_hidden_layers": 32, "intermediate_size": 8192, "vocab_size": 200064,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "sliding_window": 262144,
        });
        let with = |extra: serde_json::Value| {
            let mut hf = common.clone();
            hf.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            model_config(&hf, Path::new("config.json")).unwrap().2
        };
        let v4 = with(serde_json::json!({
            "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "original_max_position_embeddings": 4096,
            "rope_scaling": { "type": "longrope", "short_factor": short, "long_factor": long },
        }));
        let v5 = with(serde_json::json!({ "rope_parameters": {
            "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 4096, "short_factor": short, "long_factor": long,
        }}));
        assert_eq!(v4, v5);
        let rope = v4.rope.unwrap();
        assert_eq!(rope.dim, 96);
        let Some(RopeScaling::LongRope { original_context_length: 4096, attn_factor, .. }) = rope.scaling else {
            panic!("no LongRoPE: {:?}", rope.scaling)
        };
        assert!((attn_factor - 1.190_238).abs() < 1e-6, "{attn_factor}");
        assert_eq!(v4.sliding_window, None, "Phi-3's window is ignored, as llama.cpp ignores it");
    }
}
