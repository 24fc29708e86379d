//! Hugging Face model directory (`config.json`, `*.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) → package.

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::{encode_f32, ConvertOptions, QuantChoice};
use crate::error::{HearthError, Result};
use crate::manifest::{
    Activation, Manifest, ModelConfig, NormKind, PositionKind, RopeConfig, RopeScaling, RopeStyle, SourceInfo,
    TokenizerInfo,
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
    let (architecture, config) = model_config(&hf, &config_path)?;
    let (tokenizer_json, tokenizer_info) = tokenizer(dir)?;

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
    let mut seen_output = false;
    let mut seen_qkv_bias = false;
    for path in &files {
        let bytes = fs::read(path).map_err(|e| HearthError::io("read", path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| HearthError::bad_file(path.display(), e.to_string()))?;
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        for hf_name in names {
            let Some(name) = gguf_name(&hf_name) else {
                // Buffers such as rotary inv_freq are recomputed from the config.
                if hf_name.ends_with("rotary_emb.inv_freq") {
                    continue;
                }
                return Err(HearthError::bad_file(
                    path.display(),
                    format!("unexpected tensor `{hf_name}` for a {architecture} model"),
                ));
            };
            seen_output |= name == "output.weight";
            seen_qkv_bias |= name.ends_with(".attn_q.bias");
            let view = st.tensor(&hf_name).map_err(|e| HearthError::bad_file(path.display(), e.to_string()))?;
            let values = to_f32(view.dtype(), view.data(), &hf_name)?;
            let dtype = match (opts.quant, view.dtype()) {
                (QuantChoice::Keep, Dtype::F16) => DType::F16,
                (QuantChoice::Keep, _) => DType::F32,
                (QuantChoice::Q4, _) => DType::Q4,
                (QuantChoice::Q8, _) => DType::Q8,
                (QuantChoice::F16, _) => DType::F16,
            };
            let tensor = encode_f32(&hf_name, view.shape().to_vec(), &values, dtype, opts.group)?;
            writer.add_tensor(&name, &tensor)?;
        }
    }
    let config = ModelConfig { tied_embeddings: !seen_output, qkv_bias: seen_qkv_bias, ..config };
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

/// Hugging Face Llama / Qwen2 tensor names → GGUF names.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// The package's architecture name and the model's config.
fn model_config(hf: &Value, path: &Path) -> Result<(&'static str, ModelConfig)> {
    let file = path.display().to_string();
    let arch = hf
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| hf.get("model_type").and_then(Value::as_str))
        .unwrap_or("unknown");
    let architecture = match arch {
        // Mistral is Llama with a sliding window (config.json's `sliding_window`, null for none).
        "LlamaForCausalLM" | "llama" | "MistralForCausalLM" | "mistral" => "llama",
        "Qwen2ForCausalLM" | "qwen2" => "qwen2",
        _ => return Err(HearthError::UnsupportedArchitecture(arch.to_string())),
    };
    let int = |k: &str| -> Result<usize> {
        hf.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| HearthError::bad_file(&file, format!("missing or non-integer `{k}`")))
    };
    let hidden = int("hidden_size")?;
    let n_heads = int("num_attention_heads")?;
    let n_kv_heads = int("num_key_value_heads").unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(HearthError::bad_file(&file, format!("{n_heads} heads cannot share {n_kv_heads} key/value heads")));
    }
    let head_dim = int("head_dim").unwrap_or(hidden / n_heads);
    let scaling = match hf.get("rope_scaling") {
        None | Some(Value::Null) => None,
        Some(s) => {
            let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("");
            let f = |k: &str| s.get(k).and_then(Value::as_f64).map(|v| v as f32);
            match kind {
                "linear" => Some(RopeScaling::Linear { factor: f("factor").unwrap_or(1.0) }),
                "llama3" => Some(RopeScaling::Llama3 {
                    factor: f("factor").unwrap_or(1.0),
                    low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                    high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                    original_context_length: s
                        .get("original_max_position_embeddings")
                        .and_then(Value::as_u64)
                        .unwrap_or(8192) as usize,
                }),
                "default" | "" => None,
                other => {
                    return Err(HearthError::bad_file(&file, format!("rope scaling `{other}` is not supported yet")))
                }
            }
        }
    };
    let config = ModelConfig {
        n_layers: int("num_hidden_layers")?,
        hidden_size: hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_size: int("intermediate_size")?,
        vocab_size: int("vocab_size")?,
        context_length: int("max_position_embeddings").unwrap_or(2048),
        norm: NormKind::Rms,
        norm_eps: hf.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
        activation: Activation::Silu,
        ffn: Default::default(),
        position: PositionKind::Rope,
        rope: Some(RopeConfig {
            base: hf.get("rope_theta").and_then(Value::as_f64).unwrap_or(10_000.0) as f32,
            dim: head_dim,
            style: RopeStyle::Neox,
            scaling,
            local_base: None,
        }),
        alibi: None,
        sliding_window: hf.get("sliding_window").and_then(Value::as_u64).filter(|&w| w > 0).map(|w| w as usize),
        sliding_window_pattern: None,
        tied_embeddings: hf.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
        qkv_bias: false, // set from the tensors present
        qk_norm: false,
        post_norms: false,
        embedding_scale: None,
        embedding_norm: false,
        linear_bias: false,
    };
    Ok((architecture, config))
}

/// The directory's `tokenizer.json` without its post-processor (Hearth adds bos itself, as the
/// manifest says), and the special tokens from `tokenizer_config.json` / `generation_config.json`.
fn tokenizer(dir: &Path) -> Result<(String, TokenizerInfo)> {
    let tok_path = dir.join("tokenizer.json");
    let mut tok = read_json(&tok_path)?;
    let post = tok.get("post_processor").cloned().unwrap_or(Value::Null);
    tok["post_processor"] = Value::Null;
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
