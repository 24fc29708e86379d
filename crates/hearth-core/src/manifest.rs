//! `manifest.json`: the description of a model package (see `docs/FORMAT.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quant::{DType, PartRange};

pub const FORMAT_NAME: &str = "hearth-model";
pub const FORMAT_VERSION: u32 = 1;
/// Architectures the engines run: pre-norm decoders that differ only in what `ModelConfig` records
/// (Qwen2: biases on Q/K/V and NeoX-order RoPE; Gemma 2: post-norms, GeGLU, scaled embeddings,
/// alternating local/global layers, soft-capped scores and logits; Gemma 3: QK-norm instead of the
/// caps, and a RoPE base of its own for local layers; Qwen3: Llama with QK-norm; SmolLM3: Llama
/// with every fourth layer unrotated; BLOOM: ALiBi, LayerNorm, a norm on the embeddings, a GELU MLP
/// and biases everywhere; GPT-2: the same with learned positions; Qwen2-MoE, Qwen3-MoE, OLMoE and
/// dots.llm1: mixtures of experts, as `MoeConfig` records them; Granite: Llama with four
/// multipliers (embeddings, attention scores, each block's output, the logits' divisor), and
/// Granite-MoE: the same with a mixture in every layer, and a shared expert in Granite-MoE-Shared).
pub const ARCHITECTURES: &[&str] = &[
    "llama",
    "qwen2",
    "qwen3",
    "smollm3",
    "phi3",
    "gemma2",
    "gemma3",
    "bloom",
    "gpt2",
    "bert",
    "qwen2moe",
    "qwen3moe",
    "olmoe",
    "dots1",
    "granite",
    "granitemoe",
];
/// The encoders among them (embeddings, not text).
pub const ENCODER_ARCHITECTURES: &[&str] = &["bert"];
/// Tensors start at multiples of this within a shard (WebGPU's `minStorageBufferOffsetAlignment` is at most 256).
pub const TENSOR_ALIGN: u64 = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    pub architecture: String,
    pub config: ModelConfig,
    pub tokenizer: TokenizerInfo,
    pub source: SourceInfo,
    /// Largest shard size the writer used, in bytes.
    pub shard_size: u64,
    pub shards: Vec<FileEntry>,
    /// Other files of the package (the tokenizer), with their hashes.
    pub files: Vec<FileEntry>,
    pub tensors: Vec<TensorEntry>,
}

/// What the engines need to know about a model. `Default` is no model (zero sizes, which `validate`
/// refuses) with every optional feature off: converters fill in what a model has.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub activation: Activation,
    /// Gated (`W_down · (act(W_gate·x) * W_up·x)`) or plain (`W_down · act(W_up·x)`) feed-forward.
    #[serde(default, skip_serializing_if = "FfnKind::is_gated")]
    pub ffn: FfnKind,
    pub position: PositionKind,
    #[serde(default)]
    pub rope: Option<RopeConfig>,
    #[serde(default)]
    pub alibi: Option<AlibiConfig>,
    /// Keys a windowed layer attends to (its own position included); `None` means full attention.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// With a window: every `n`-th layer (1-based) uses full attention, the others the window
    /// (Gemma 3: 6). `None` with a window means every layer is windowed (Mistral).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    pub tied_embeddings: bool,
    /// Biases on the Q, K and V projections (Qwen2): `blk.N.attn_{q,k,v}.bias`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qkv_bias: bool,
    /// RMSNorm of each query and key head before RoPE (Gemma 3, Qwen3): `blk.N.attn_{q,k}_norm.weight`,
    /// `head_dim` values each.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// With `qk_norm`: each token's whole query and key vectors are normed, not each head (OLMoE:
    /// `attn_q_norm` of `n_heads × head_dim` values, `attn_k_norm` of `n_kv_heads × head_dim`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm_whole: bool,
    /// RMSNorm of the attention and feed-forward outputs before their residual adds (Gemma 3):
    /// `blk.N.post_attention_norm.weight`, `blk.N.post_ffw_norm.weight`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_norms: bool,
    /// Token embeddings are multiplied by this (Gemma: sqrt(hidden_size); Granite's
    /// `embedding_multiplier`). The output head of tied embeddings is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_scale: Option<f32>,
    /// What attention scores are multiplied by, when not 1/sqrt(head_dim) (Gemma 3 27B:
    /// 1/sqrt(hidden_size / n_heads); Granite's `attention_multiplier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_scale: Option<f32>,
    /// Each block's output (the attention output projection's, the feed-forward's or mixture's)
    /// is multiplied by this before its residual add (Granite's `residual_multiplier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_scale: Option<f32>,
    /// The logits are divided by this (Granite's `logits_scaling`, llama.cpp's `logit_scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_divisor: Option<f32>,
    /// Attention scores become `cap * tanh(score / cap)` before the softmax (Gemma 2: 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_softcap: Option<f32>,
    /// Logits become `cap * tanh(logit / cap)` (Gemma 2: 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_softcap: Option<f32>,
    /// A norm of the token embeddings before the first layer (BLOOM): `token_embd_norm.{weight,bias}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embedding_norm: bool,
    /// Biases on the attention output and feed-forward products (BLOOM, GPT-2):
    /// `blk.N.{attn_output,ffn_up,ffn_down}.bias`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linear_bias: bool,
    /// An encoder (BERT): attention over the whole input both ways, each block's norm after its
    /// residual add (`attn_norm` after attention, `ffn_norm` after the feed-forward), no output
    /// head; it gives embeddings, pooled as this says, not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderConfig>,
    /// A mixture of experts in place of each layer's feed-forward (Mixtral, Qwen-MoE): a router
    /// `blk.N.ffn_gate_inp.weight` chooses `used` of `experts` gated MLPs per token,
    /// `blk.N.ffn_{gate,up,down}.E.weight` for expert E.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
}

/// A mixture-of-experts feed-forward: each token's router logits → probabilities (a softmax over
/// every expert, or each expert's sigmoid) → the `used` most probable experts (probabilities plus
/// the selection bias, where there is one), whose outputs are summed weighted by their
/// probabilities (rescaled to sum to 1 when `normalize`, then multiplied by `weights_scale`), plus
/// a shared expert where there is one. The first `dense_layers` layers have a dense feed-forward of
/// `ffn_size` rows instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub experts: usize,
    /// Experts each token runs (top-k).
    pub used: usize,
    /// Rows of each expert's gate and up.
    pub expert_ffn_size: usize,
    /// The chosen experts' weights rescaled to sum to 1 (Mixtral, Qwen3-MoE; not Qwen2-MoE).
    pub normalize: bool,
    /// Rows of the shared expert every token also runs (Qwen2-MoE): `blk.N.ffn_{gate,up,down}_shexp`,
    /// its output scaled by `sigmoid(blk.N.ffn_gate_inp_shexp · x)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_ffn_size: Option<usize>,
    /// The shared expert's output added as it is, with no sigmoid gate (dots.llm1, DeepSeek-V3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_unscaled: bool,
    /// How router logits become probabilities.
    #[serde(default, skip_serializing_if = "Gating::is_softmax")]
    pub gating: Gating,
    /// A per-expert bias `blk.N.exp_probs_b.bias` added to the probabilities to choose the experts,
    /// not to weigh them (DeepSeek-V3's `e_score_correction_bias`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub selection_bias: bool,
    /// The chosen weights' factor, after any rescaling (`routed_scaling_factor`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weights_scale: f32,
    /// Leading layers whose feed-forward is dense (`first_k_dense_replace`, llama.cpp's
    /// `leading_dense_block_count`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dense_layers: usize,
}

impl MoeConfig {
    /// Granite-MoE's mixture, whatever the source: `used` of `experts` experts of `ffn` rows, a
    /// softmax rescaled over the chosen ones, and Granite-MoE-Shared's unscaled shared expert.
    pub fn granite(experts: usize, used: usize, ffn: usize, shared: Option<usize>) -> Self {
        MoeConfig {
            experts,
            used,
            expert_ffn_size: ffn,
            normalize: true,
            shared_ffn_size: shared,
            shared_unscaled: shared.is_some(),
            gating: Gating::Softmax,
            selection_bias: false,
            weights_scale: 1.0,
            dense_layers: 0,
        }
    }
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// A router's probabilities from its logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gating {
    /// A softmax over every expert (Mixtral, Qwen-MoE, OLMoE).
    #[default]
    Softmax,
    /// Each expert's own sigmoid (dots.llm1, DeepSeek-V3, GLM-4.5).
    Sigmoid,
}

impl Gating {
    pub fn is_softmax(&self) -> bool {
        *self == Gating::Softmax
    }
}

/// How an encoder's output becomes one embedding per text (sentence-transformers' pooling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub pooling: Pooling,
    /// Scaled to unit length (sentence-transformers' `Normalize` module; from a GGUF, which does not
    /// record it, true: llama.cpp's embedding tool and server normalize by default).
    pub normalize: bool,
    /// Tokens a text is cut to, its special tokens included (`max_seq_length`).
    pub max_tokens: usize,
    /// Rows of `token_types.weight`; every token is of type 0, whose row is added to each embedding.
    pub token_types: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of every token's output.
    Mean,
    /// The first token's output (`[CLS]`).
    Cls,
    /// The last token's output.
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    #[default]
    Gated,
    Plain,
}

impl FfnKind {
    pub fn is_gated(&self) -> bool {
        *self == FfnKind::Gated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    #[default]
    Rms,
    /// LayerNorm with a weight and a bias (`*.weight`, `*.bias`).
    Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (SwiGLU when gated: silu(gate) * up).
    #[default]
    Silu,
    /// GELU, tanh approximation (GeGLU when gated).
    GeluTanh,
    /// GELU, exact: `x Φ(x)` with the error function (BERT's `gelu`).
    Gelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    #[default]
    Rope,
    Alibi,
    Learned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    pub base: f32,
    /// Rotated dimensions per head (the first `dim` of `head_dim`).
    pub dim: usize,
    pub style: RopeStyle,
    #[serde(default)]
    pub scaling: Option<RopeScaling>,
    /// Base of the sliding-window layers when it differs from `base` (Gemma 3: 10 000 locally,
    /// 1 000 000 globally); those layers use no `scaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_base: Option<f32>,
    /// Layers (0-based, ascending) whose queries and keys are not rotated: they see no positions
    /// but the causal mask (SmolLM3: every fourth layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrotated_layers: Vec<usize>,
}

/// Which elements of a head form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// (2i, 2i+1): ggml's "normal" mode; GGUF Llama checkpoints have Q/K permuted for it.
    Interleaved,
    /// (i, i + dim/2): GPT-NeoX / Hugging Face layout.
    Neox,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's per-frequency scaling.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_context_length: usize },
    /// YaRN (Peng et al. 2023; Qwen2.5's long context): pairs that turn fewer than `beta_slow` times
    /// over the original context are interpolated (frequency / `factor`), those turning more than
    /// `beta_fast` times kept, a linear ramp between; rotated values are scaled by
    /// `attn_factor * (1 + 0.1 ln factor)`.
    Yarn {
        factor: f32,
        original_context_length: usize,
        #[serde(default = "yarn_beta_fast")]
        beta_fast: f32,
        #[serde(default = "yarn_beta_slow")]
        beta_slow: f32,
        #[serde(default = "one")]
        attn_factor: f32,
    },
    /// LongRoPE (Phi-3 and 3.5's "su"/"longrope"): the frequencies divided per pair by
    /// `long_factors` when the engine holds more than `original_context_length` positions, by
    /// `short_factors` otherwise (llama.cpp's choice, made once for the context it is created
    /// with); rotated values scaled by `attn_factor`.
    LongRope { original_context_length: usize, attn_factor: f32, short_factors: Vec<f32>, long_factors: Vec<f32> },
}

fn yarn_beta_fast() -> f32 {
    32.0
}

fn yarn_beta_slow() -> f32 {
    1.0
}

fn one() -> f32 {
    1.0
}

impl RopeScaling {
    /// What rotated query and key values are multiplied by (YaRN's "mscale"; 1 otherwise).
    pub fn magnitude(&self) -> f32 {
        match self {
            RopeScaling::Yarn { factor, attn_factor, .. } if *factor > 1.0 => attn_factor * (1.0 + 0.1 * factor.ln()),
            RopeScaling::Yarn { attn_factor, .. } | RopeScaling::LongRope { attn_factor, .. } => *attn_factor,
            _ => 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlibiConfig {
    pub max_bias: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// A file of the package in the Hugging Face `tokenizers` JSON format.
    pub file: String,
    #[serde(default)]
    pub bos_id: Option<u32>,
    #[serde(default)]
    pub eos_id: Option<u32>,
    /// Every id that ends generation (the eos and end-of-turn tokens).
    pub stop_ids: Vec<u32>,
    #[serde(default)]
    pub pad_id: Option<u32>,
    /// Whether a prompt starts with the bos token.
    pub add_bos: bool,
    #[serde(default)]
    pub chat_template: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `gguf` or `safetensors`.
    pub kind: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    /// Row-major, outermost first: a matrix is `[rows (outputs), cols (inputs)]`.
    pub shape: Vec<usize>,
    /// Index into `shards` where the tensor starts.
    pub shard: usize,
    /// Byte offset in that shard (a multiple of 256). A tensor longer than the rest of its shard
    /// continues at byte 0 of the following shard(s).
    pub offset: u64,
    pub length: u64,
    /// Weights per (scale, min) group along a row, for `q4` and `q8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// Where each part (`data`, or `codes` / `scales` / `mins`) lies, relative to the tensor's start.
    pub parts: BTreeMap<String, PartRange>,
}

/// Upper bounds on a model's configuration, checked by [`ModelConfig::validate`] before any engine,
/// loader or converter sizes anything from it. The largest real models stay well inside (a 405B
/// Llama: 126 layers, width 16384, 128 heads of 128, FFN 53248; Gemma 3: a 262k vocabulary; contexts
/// of a few million), while `LAYERS · CONTEXT · WIDTH · 8` stays below 2^63.
pub mod limits {
    pub const LAYERS: usize = 1 << 10;
    /// Hidden size, and also heads × head_dim (the query width).
    pub const WIDTH: usize = 1 << 17;
    pub const HEADS: usize = 1 << 10;
    pub const HEAD_DIM: usize = 1 << 11;
    pub const FFN: usize = 1 << 19;
    /// Experts of a mixture (the largest real ones have 256).
    pub const EXPERTS: usize = 1 << 10;
    pub const VOCAB: usize = 1 << 22;
    /// Positions: context length, sliding window, a RoPE scaling's original context.
    pub const CONTEXT: usize = 1 << 24;

    /// The upper bound of each count in `config`.
    const BOUNDS: [(&str, usize); 10] = [
        ("n_layers", LAYERS),
        ("hidden_size", WIDTH),
        ("n_heads", HEADS),
        ("n_kv_heads", HEADS),
        ("head_dim", HEAD_DIM),
        ("ffn_size", FFN),
        ("vocab_size", VOCAB),
        ("context_length", CONTEXT),
        ("sliding_window", CONTEXT),
        ("sliding_window_pattern", LAYERS),
    ];

    /// Checks `config` (as JSON) against the bounds, naming the first field past its own. It reads
    /// the JSON rather than the typed config so that a value too large for a 32-bit `usize` (wasm)
    /// is named too, not reported by serde as a number of the wrong type.
    pub fn check(config: &serde_json::Value) -> Result<(), String> {
        for (name, max) in BOUNDS {
            let Some(value) = config.get(name).filter(|v| v.is_number()) else { continue };
            let over = match value.as_u64() {
                Some(n) => n > max as u64,
                None => value.as_f64().is_some_and(|f| f > max as f64),
            };
            if over {
                return Err(format!("config.{name} is {value}, above the limit of {max}"));
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Layer `layer`'s mixture of experts, if its feed-forward is one (not one of the leading dense
    /// layers).
    pub fn moe_at(&self, layer: usize) -> Option<&MoeConfig> {
        self.moe.as_ref().filter(|m| layer >= m.dense_layers)
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// What attention scores are multiplied by.
    pub fn attention_scale(&self) -> f32 {
        self.attention_scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    /// Check the numbers that the engines divide by or index with, so a bad manifest is an error and
    /// never a panic.
    pub fn validate(&self) -> Result<(), String> {
        // Upper bounds first: every product the engines form from these (q_dim, a layer's KV rows,
        // the cache's bytes) then fits a u64 with room to spare, and no count can make a loader
        // loop or allocate for ever. Each is far above any real model (docs/SECURITY.md).
        limits::check(&serde_json::to_value(self).map_err(|e| format!("config: {e}"))?)?;
        if self.q_dim() > limits::WIDTH {
            return Err(format!("config.n_heads × head_dim is {}, above the limit of {}", self.q_dim(), limits::WIDTH));
        }
        let positive = [
            ("n_layers", self.n_layers),
            ("hidden_size", self.hidden_size),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("ffn_size", self.ffn_size),
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("config.{name} must be positive"));
        }
        if let Some(e) = &self.encoder {
            if e.max_tokens == 0 || e.max_tokens > self.context_length || e.token_types == 0 || e.token_types > 1 << 16
            {
                return Err(format!(
                    "encoder.max_tokens {} must be within 1..=context_length {}, and token_types {} within 1..=65536",
                    e.max_tokens, self.context_length, e.token_types
                ));
            }
            if self.norm != NormKind::Layer || self.position != PositionKind::Learned || self.ffn != FfnKind::Plain {
                return Err("an encoder has LayerNorm, learned positions and a plain feed-forward".into());
            }
        }
        if self.qk_norm_whole && !self.qk_norm {
            return Err("qk_norm_whole without qk_norm".into());
        }
        if let Some(m) = &self.moe {
            let ffn_ok = |f: usize| (1..=limits::FFN).contains(&f);
            if !(1..=limits::EXPERTS).contains(&m.experts)
                || !(1..=m.experts).contains(&m.used)
                || !ffn_ok(m.expert_ffn_size)
                || m.shared_ffn_size.is_some_and(|f| !ffn_ok(f))
            {
                return Err(format!(
                    "moe: {} experts ({} used) of {} rows, shared {:?}: experts must be 1..={}, used 1..=experts, \
                     sizes 1..={}",
                    m.experts,
                    m.used,
                    m.expert_ffn_size,
                    m.shared_ffn_size,
                    limits::EXPERTS,
                    limits::FFN
                ));
            }
            if self.ffn != FfnKind::Gated || self.encoder.is_some() {
                return Err("a mixture of experts is of gated feed-forwards, in a decoder".into());
            }
            if !(m.weights_scale.is_finite() && m.weights_scale > 0.0) || m.dense_layers >= self.n_layers {
                return Err(format!(
                    "moe: weights_scale {} must be finite and positive, dense_layers {} fewer than the {} layers",
                    m.weights_scale, m.dense_layers, self.n_layers
                ));
            }
            if m.shared_unscaled && m.shared_ffn_size.is_none() {
                return Err("moe: shared_unscaled without a shared expert".into());
            }
        }
        if self.n_kv_heads > self.n_heads {
            return Err(format!("config.n_kv_heads {} is more than n_heads {}", self.n_kv_heads, self.n_heads));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(format!("{} heads cannot share {} key/value heads", self.n_heads, self.n_kv_heads));
        }
        if let Some(rope) = &self.rope {
            if rope.dim == 0 || rope.dim % 2 != 0 || rope.dim > self.head_dim {
                return Err(format!("rope.dim {} must be even and at most head_dim {}", rope.dim, self.head_dim));
            }
            let finite_positive = |v: f32| v.is_finite() && v > 0.0;
            if !finite_positive(rope.base) || rope.local_base.is_some_and(|b| !finite_positive(b)) {
                return Err("rope.base and rope.local_base must be positive numbers".into());
            }
            let scaling_ok = match &rope.scaling {
                None => true,
                Some(RopeScaling::Linear { factor }) => finite_positive(*factor),
                Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context_length }) => {
                    [*factor, *low_freq_factor, *high_freq_factor].into_iter().all(finite_positive)
                        && (1..=limits::CONTEXT).contains(original_context_length)
                }
                Some(RopeScaling::Yarn { factor, original_context_length, beta_fast, beta_slow, attn_factor }) => {
                    [*factor, *attn_factor].into_iter().all(finite_positive)
                        && beta_fast.is_finite()
                        && beta_slow.is_finite()
                        && (1..=limits::CONTEXT).contains(original_context_length)
                }
                Some(RopeScaling::LongRope { original_context_length, attn_factor, short_factors, long_factors }) => {
                    finite_positive(*attn_factor)
                        && (1..=limits::CONTEXT).contains(original_context_length)
                        && [short_factors, long_factors]
                            .iter()
                            .all(|f| f.len() == rope.dim / 2 && f.iter().copied().all(finite_positive))
                }
            };
            if !scaling_ok {
                return Err(format!("rope.scaling {:?} holds a value out of range", rope.scaling));
            }
            let ascending = rope.unrotated_layers.windows(2).all(|w| w[0] < w[1]);
            if !ascending || rope.unrotated_layers.last().is_some_and(|&l| l >= self.n_layers) {
                return Err(format!(
                    "rope.unrotated_layers must be ascending layer numbers below n_layers {}",
                    self.n_layers
                ));
            }
        }
        if let Some(alibi) = &self.alibi {
            if !(alibi.max_bias.is_finite() && alibi.max_bias >= 0.0) {
                return Err(format!("alibi.max_bias {} must be a finite non-negative number", alibi.max_bias));
            }
        }
        for (name, value) in [
            ("embedding_scale", self.embedding_scale),
            ("attention_scale", self.attention_scale),
            ("residual_scale", self.residual_scale),
            ("logit_divisor", self.logit_divisor),
            ("attn_softcap", self.attn_softcap),
            ("final_softcap", self.final_softcap),
        ] {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(format!("{name} {v} must be a positive number"));
            }
        }
        if self.encoder.is_some() && (self.residual_scale.is_some() || self.logit_divisor.is_some()) {
            return Err("residual_scale and logit_divisor are a decoder's (Granite's)".into());
        }
        if self.position == PositionKind::Rope && self.rope.is_none() {
            return Err("a RoPE model needs rope settings".into());
        }
        if self.position == PositionKind::Alibi && self.alibi.is_none() {
            return Err("an ALiBi model needs alibi settings".into());
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive (null means full attention)".into());
        }
        if !(self.norm_eps >= 0.0 && self.norm_eps.is_finite()) {
            return Err(format!("norm_eps {} is not a finite non-negative number", self.norm_eps));
        }
        Ok(())
    }

    /// What layer `layer`'s rotated query and key values are multiplied by: YaRN's magnitude, or 1
    /// (also for Gemma 3's sliding-window layers, which rotate with `rope.local_base`, unscaled).
    pub fn rope_magnitude(&self, layer: usize) -> f32 {
        let Some(rope) = &self.rope else { return 1.0 };
        if rope.local_base.is_some() && self.layer_window(layer).is_some() {
            return 1.0;
        }
        rope.scaling.as_ref().map_or(1.0, RopeScaling::magnitude)
    }

    /// Whether layer `layer` (0-based) rotates its queries and keys (RoPE models but SmolLM3's
    /// unrotated layers).
    pub fn layer_rotates(&self, layer: usize) -> bool {
        self.position == PositionKind::Rope
            && self.rope.as_ref().is_some_and(|r| r.unrotated_layers.binary_search(&layer).is_err())
    }

    /// The window of layer `layer` (0-based), or `None` for full attention.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let window = self.sliding_window?;
        match self.sliding_window_pattern {
            Some(n) if n > 0 && (layer + 1) % n == 0 => None,
            _ => Some(window),
        }
    }
}

/// The bytes of one tensor that lie in one shard: bytes `offset_in_tensor..+len` of tensor
/// `tensor` (an index into `Manifest::tensors`) are bytes `offset_in_shard..+len` of the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPiece {
    pub tensor: usize,
    pub offset_in_tensor: u64,
    pub offset_in_shard: u64,
    pub len: u64,
}

impl Manifest {
    /// Shard `index`'s entry, once `len` (the bytes a loader was handed for it) matches its size.
    pub fn check_shard(&self, index: usize, len: u64) -> crate::Result<&FileEntry> {
        let entry = self
            .shards
            .get(index)
            .ok_or_else(|| crate::HearthError::InvalidArgument(format!("the model has no shard {index}")))?;
        if entry.size != len {
            let detail = format!("{len} bytes, but the manifest says {}", entry.size);
            return Err(crate::HearthError::bad_package(&entry.file, detail));
        }
        Ok(entry)
    }

    /// Each shard's first byte in the one byte sequence the shards are stretches of.
    pub fn shard_starts(&self) -> Vec<u64> {
        self.shards
            .iter()
            .scan(0u64, |at, s| {
                let start = *at;
                *at += s.size;
                Some(start)
            })
            .collect()
    }

    /// Every tensor piece stored in shard `shard`. Shards are consecutive stretches of one byte
    /// sequence (a tensor that does not fit its shard continues at byte 0 of the next), so this is
    /// interval arithmetic on each tensor's position in that sequence.
    pub fn pieces_in_shard(&self, shard: usize) -> Vec<ShardPiece> {
        let starts = self.shard_starts();
        let Some((&begin, size)) = starts.get(shard).zip(self.shards.get(shard).map(|s| s.size)) else {
            return Vec::new();
        };
        let end = begin + size;
        self.tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let start = starts.get(t.shard)? + t.offset;
                let (lo, hi) = (start.max(begin), (start + t.length).min(end));
                // `then`, not `then_some`: the differences exist only where the ranges overlap.
                (lo < hi).then(|| ShardPiece {
                    tensor: i,
                    offset_in_tensor: lo - start,
                    offset_in_shard: lo - begin,
                    len: hi - lo,
                })
            })
            .collect()
    }
}
