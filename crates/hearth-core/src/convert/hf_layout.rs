//! Hugging Face tensor layouts → the package's: GGUF tensor names, matrices as `[out, in]`, fused
//! Q/K/V as Q rows then K then V (`convert::add_tensor` cuts them apart, as for GGUF), norm weights
//! as the engines multiply by them. What each family needs:
//! - Llama, Qwen2, Qwen3, SmolLM3, Mistral, Phi-3: names only (Q/K stay in the NeoX order the
//!   engines rotate in; Phi-3's fused `qkv_proj` and `gate_up_proj` are cut as GGUF's are).
//! - Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): names (one matrix per expert, as the
//!   package stores them), and Qwen2-MoE's `[1, hidden]` shared-expert gate as a vector.
//! - Granite-MoE: experts stacked in 3-D tensors (`input_linear` `[experts, 2 × rows, hidden]`,
//!   gate rows then up rows per expert; `output_linear` `[experts, hidden, rows]`) become llama.cpp's
//!   `ffn_{gate,up,down}_exps`, which `convert::add_tensor` cuts per expert as for GGUF; the shared
//!   MLP's `input_linear` (`[2 × rows, hidden]`) is cut into gate and up.
//! - Gemma 2 and 3: names, and RMSNorm weights stored as `w` for `(1 + w)` get the 1 added.
//! - GPT-2: `Conv1D` weights stored `[in, out]` are transposed; `c_attn` holds Q|K|V side by side.
//! - BLOOM: `query_key_value` rows are per head (`[head][q, k, v][head_dim]`), regrouped as Q, K, V.
//! - BERT: names only; the norm after attention's residual add becomes `attn_norm` and the one after
//!   the feed-forward's `ffn_norm` (an encoder's config says they come after), the token-type
//!   embeddings `token_types.weight`; the pooler (a classification head) is left out.

use crate::manifest::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// Llama, Mistral, Qwen2, Qwen3, SmolLM3 and Phi-3.
    Llama,
    /// Gemma 2 and Gemma 3.
    Gemma,
    Gpt2,
    Bloom,
    Bert,
}

/// One tensor as the package stores it.
pub(super) struct Imported {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// What a Hugging Face tensor becomes.
pub(super) enum Mapping {
    Tensor(Imported),
    /// Several tensors cut from one (Granite-MoE's fused gate and up rows).
    Tensors(Vec<Imported>),
    /// A buffer the engines recompute (rotary frequencies, GPT-2's causal mask).
    Skip,
    Unknown,
    /// A fused tensor whose size does not fit the config (BLOOM's Q/K/V, Granite-MoE's gate and
    /// up): what it should hold.
    BadShape(&'static str),
}

/// Whether `hf_name` is a buffer no engine reads, left out before its values are read (BERT's
/// integer `position_ids`).
pub(super) fn skipped(family: Family, hf_name: &str) -> bool {
    family == Family::Bert && hf_name.ends_with("embeddings.position_ids")
}

/// Map `hf_name` (shape `shape`, values in row-major order) of a `family` model with config `c`.
pub(super) fn import(family: Family, c: &ModelConfig, hf_name: &str, shape: &[usize], values: Vec<f32>) -> Mapping {
    let one = |name: String, shape: &[usize], values: Vec<f32>| {
        Mapping::Tensor(Imported { name, shape: shape.to_vec(), values })
    };
    if hf_name.ends_with("rotary_emb.inv_freq") {
        return Mapping::Skip;
    }
    match family {
        Family::Llama | Family::Gemma => {
            let Some(name) = llama_name(family, hf_name) else { return Mapping::Unknown };
            // Granite-MoE's gate and up rows in one tensor: per expert (or for the shared MLP)
            // the first half of the rows is the gate's.
            if let Some(layer) = name.strip_suffix(".ffn_gate_up_exps.weight") {
                return gate_and_up(layer, "_exps", c.moe.as_ref().map(|m| m.expert_ffn_size), shape, values);
            }
            if let Some(layer) = name.strip_suffix(".ffn_gate_up_shexp.weight") {
                return gate_and_up(layer, "_shexp", c.moe.as_ref().and_then(|m| m.shared_ffn_size), shape, values);
            }
            // Qwen2-MoE's shared-expert gate is a linear layer of one output.
            if name.ends_with("ffn_gate_inp_shexp.weight") {
                return one(name, &[values.len()], values);
            }
            // Gemma's RMSNorm multiplies by (1 + w); the engines (and llama.cpp's GGUF) by w.
            let values = if family == Family::Gemma && name.contains("norm.weight") {
                values.into_iter().map(|w| w + 1.0).collect()
            } else {
                values
            };
            one(name, shape, values)
        }
        Family::Gpt2 => {
            let name = hf_name.strip_prefix("transformer.").unwrap_or(hf_name);
            // The causal mask buffers of older checkpoints.
            if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
                return Mapping::Skip;
            }
            let Some((gguf, conv1d)) = gpt2_name(name) else { return Mapping::Unknown };
            let (shape, values) = if conv1d && shape.len() == 2 {
                (vec![shape[1], shape[0]], transpose(&values, shape[0], shape[1]))
            } else {
                (shape.to_vec(), values)
            };
            one(gguf, &shape, values)
        }
        Family::Bert => {
            let name = hf_name.strip_prefix("bert.").unwrap_or(hf_name);
            // The pooler and a masked-LM head: what a sentence encoder does not use.
            if name.starts_with("pooler.") || name.starts_with("cls.") || skipped(family, name) {
                return Mapping::Skip;
            }
            match bert_name(name) {
                Some(gguf) => one(gguf, shape, values),
                None => Mapping::Unknown,
            }
        }
        Family::Bloom => {
            let name = hf_name.strip_prefix("transformer.").unwrap_or(hf_name);
            let Some(gguf) = bloom_name(name) else { return Mapping::Unknown };
            if gguf.contains("attn_qkv") {
                let cols = shape.get(1).copied().unwrap_or(1);
                if values.len() != 3 * c.n_heads * c.head_dim * cols {
                    return Mapping::BadShape("Q, K and V");
                }
                return one(gguf, shape, bloom_regroup(&values, c.n_heads, c.head_dim, cols));
            }
            one(gguf, shape, values)
        }
    }
}

/// `values` (`shape`: `[experts, 2 × rows, cols]`, or `[2 × rows, cols]`) as `{layer}.ffn_gate{suffix}`
/// and `{layer}.ffn_up{suffix}` (each `[experts, rows, cols]` or `[rows, cols]`): of each matrix
/// the first `rows` rows are the gate's, the next `rows` the up's (Transformers' `chunk(2)`).
fn gate_and_up(layer: &str, suffix: &str, rows: Option<usize>, shape: &[usize], values: Vec<f32>) -> Mapping {
    const WHAT: &str = "gate and up rows";
    let (experts, fused, cols) = match *shape {
        [e, r, c] => (Some(e), r, c),
        [r, c] => (None, r, c),
        _ => return Mapping::BadShape(WHAT),
    };
    let Some(rows) = rows.filter(|&r| r > 0 && cols > 0 && r.checked_mul(2) == Some(fused)) else {
        return Mapping::BadShape(WHAT);
    };
    let half = rows * cols;
    let (mut gate, mut up) = (Vec::with_capacity(values.len() / 2), Vec::with_capacity(values.len() / 2));
    for matrix in values.chunks(2 * half) {
        let (g, u) = matrix.split_at(half.min(matrix.len()));
        gate.extend_from_slice(g);
        up.extend_from_slice(u);
    }
    let out_shape: Vec<usize> = experts.into_iter().chain([rows, cols]).collect();
    let part = |kind: &str, values| Imported {
        name: format!("{layer}.ffn_{kind}{suffix}.weight"),
        shape: out_shape.clone(),
        values,
    };
    Mapping::Tensors(vec![part("gate", gate), part("up", up)])
}

fn llama_name(family: Family, hf: &str) -> Option<String> {
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
    if let Some(name) = expert_name(part) {
        return Some(format!("blk.{layer}.{name}"));
    }
    let part = match (family, part) {
        (_, "input_layernorm.weight") => "attn_norm.weight",
        (_, "self_attn.q_proj.weight") => "attn_q.weight",
        (_, "self_attn.k_proj.weight") => "attn_k.weight",
        (_, "self_attn.v_proj.weight") => "attn_v.weight",
        (_, "self_attn.o_proj.weight") => "attn_output.weight",
        (_, "self_attn.q_proj.bias") => "attn_q.bias",
        (_, "self_attn.k_proj.bias") => "attn_k.bias",
        (_, "self_attn.v_proj.bias") => "attn_v.bias",
        (_, "mlp.gate_proj.weight") => "ffn_gate.weight",
        (_, "mlp.up_proj.weight") => "ffn_up.weight",
        (_, "mlp.down_proj.weight") => "ffn_down.weight",
        // Phi-3's fused products: Q, K and V rows; gate rows, then up rows.
        (_, "self_attn.qkv_proj.weight") => "attn_qkv.weight",
        (_, "mlp.gate_up_proj.weight") => "ffn_up.weight",
        // Llama's norm before the MLP is called "post attention"; Gemma's is a norm of the
        // attention output, and its MLP's comes "pre feed-forward".
        (Family::Gemma, "post_attention_layernorm.weight") => "post_attention_norm.weight",
        (_, "post_attention_layernorm.weight") => "ffn_norm.weight",
        (Family::Gemma, "pre_feedforward_layernorm.weight") => "ffn_norm.weight",
        (Family::Gemma, "post_feedforward_layernorm.weight") => "post_ffw_norm.weight",
        // Gemma 3's and Qwen3's norms of each query and key head.
        (_, "self_attn.q_norm.weight") => "attn_q_norm.weight",
        (_, "self_attn.k_norm.weight") => "attn_k_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// A mixture's tensor in one layer: Mixtral's router `block_sparse_moe.gate` and experts
/// `block_sparse_moe.experts.E.w{1,3,2}` (gate, up, down); Qwen-MoE's `mlp.gate`,
/// `mlp.experts.E.{gate,up,down}_proj`, `mlp.shared_expert.*_proj` and `mlp.shared_expert_gate`;
/// dots.llm1's `mlp.shared_experts.*_proj` (its shared experts as one) and the router's
/// `mlp.gate.e_score_correction_bias`; Granite-MoE's router `block_sparse_moe.router.layer`, its
/// stacked experts `block_sparse_moe.{input,output}_linear` and Granite-MoE-Shared's
/// `shared_mlp.{input,output}_linear` (the fused gate and up under names `import` cuts).
fn expert_name(part: &str) -> Option<String> {
    let fixed = match part {
        "block_sparse_moe.gate.weight" | "mlp.gate.weight" | "block_sparse_moe.router.layer.weight" => {
            Some("ffn_gate_inp.weight")
        }
        "block_sparse_moe.input_linear.weight" => Some("ffn_gate_up_exps.weight"),
        "block_sparse_moe.output_linear.weight" => Some("ffn_down_exps.weight"),
        "shared_mlp.input_linear.weight" => Some("ffn_gate_up_shexp.weight"),
        "shared_mlp.output_linear.weight" => Some("ffn_down_shexp.weight"),
        "mlp.shared_expert.gate_proj.weight" | "mlp.shared_experts.gate_proj.weight" => Some("ffn_gate_shexp.weight"),
        "mlp.shared_expert.up_proj.weight" | "mlp.shared_experts.up_proj.weight" => Some("ffn_up_shexp.weight"),
        "mlp.shared_expert.down_proj.weight" | "mlp.shared_experts.down_proj.weight" => Some("ffn_down_shexp.weight"),
        "mlp.shared_expert_gate.weight" => Some("ffn_gate_inp_shexp.weight"),
        "mlp.gate.e_score_correction_bias" => Some("exp_probs_b.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = part.strip_prefix("block_sparse_moe.experts.").or_else(|| part.strip_prefix("mlp.experts."))?;
    let (expert, matrix) = rest.split_once('.')?;
    let expert: usize = expert.parse().ok()?;
    let kind = match matrix {
        "w1.weight" | "gate_proj.weight" => "gate",
        "w3.weight" | "up_proj.weight" => "up",
        "w2.weight" | "down_proj.weight" => "down",
        _ => return None,
    };
    Some(format!("ffn_{kind}.{expert}.weight"))
}

/// GPT-2 name → (GGUF name, stored as a `Conv1D` `[in, out]`).
fn gpt2_name(hf: &str) -> Option<(String, bool)> {
    let fixed = match hf {
        "wte.weight" => Some("token_embd.weight"),
        "wpe.weight" => Some("position_embd.weight"),
        "ln_f.weight" => Some("output_norm.weight"),
        "ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), false));
    }
    let rest = hf.strip_prefix("h.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, conv1d) = match part {
        "ln_1.weight" => ("attn_norm.weight", false),
        "ln_1.bias" => ("attn_norm.bias", false),
        "attn.c_attn.weight" => ("attn_qkv.weight", true),
        "attn.c_attn.bias" => ("attn_qkv.bias", false),
        "attn.c_proj.weight" => ("attn_output.weight", true),
        "attn.c_proj.bias" => ("attn_output.bias", false),
        "ln_2.weight" => ("ffn_norm.weight", false),
        "ln_2.bias" => ("ffn_norm.bias", false),
        "mlp.c_fc.weight" => ("ffn_up.weight", true),
        "mlp.c_fc.bias" => ("ffn_up.bias", false),
        "mlp.c_proj.weight" => ("ffn_down.weight", true),
        "mlp.c_proj.bias" => ("ffn_down.bias", false),
        _ => return None,
    };
    Some((format!("blk.{layer}.{part}"), conv1d))
}

fn bloom_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "word_embeddings.weight" => Some("token_embd.weight"),
        "word_embeddings_layernorm.weight" => Some("token_embd_norm.weight"),
        "word_embeddings_layernorm.bias" => Some("token_embd_norm.bias"),
        "ln_f.weight" => Some("output_norm.weight"),
        "ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("h.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "input_layernorm.bias" => "attn_norm.bias",
        "self_attention.query_key_value.weight" => "attn_qkv.weight",
        "self_attention.query_key_value.bias" => "attn_qkv.bias",
        "self_attention.dense.weight" => "attn_output.weight",
        "self_attention.dense.bias" => "attn_output.bias",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "post_attention_layernorm.bias" => "ffn_norm.bias",
        "mlp.dense_h_to_4h.weight" => "ffn_up.weight",
        "mlp.dense_h_to_4h.bias" => "ffn_up.bias",
        "mlp.dense_4h_to_h.weight" => "ffn_down.weight",
        "mlp.dense_4h_to_h.bias" => "ffn_down.bias",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

fn bert_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "embeddings.word_embeddings.weight" => Some("token_embd.weight"),
        "embeddings.position_embeddings.weight" => Some("position_embd.weight"),
        "embeddings.token_type_embeddings.weight" => Some("token_types.weight"),
        "embeddings.LayerNorm.weight" => Some("token_embd_norm.weight"),
        "embeddings.LayerNorm.bias" => Some("token_embd_norm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let module = match module {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "ffn_norm",
        _ => return None,
    };
    matches!(kind, "weight" | "bias").then(|| format!("blk.{layer}.{module}.{kind}"))
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// BLOOM's fused rows `[head][q, k, v][head_dim]` (each row `cols` values; 1 for the bias) as
/// `[q, k, v][head][head_dim]`.
fn bloom_regroup(values: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len());
    for part in 0..3 {
        for head in 0..n_heads {
            let start = ((head * 3 + part) * head_dim) * cols;
            out.extend_from_slice(&values[start..start + head_dim * cols]);
        }
    }
    out
}
