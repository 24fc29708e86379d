//! The CPU reference engine: a plain f32 forward pass of every supported decoder (Llama, Qwen2,
//! Mistral, Gemma 3, BLOOM, GPT-2), written to be read top to bottom. It is the oracle every GPU
//! kernel is tested against. Weights stay in their package encoding and are decoded one row at a
//! time.
//!
//! The forward pass is written once, as `Engine<P>`: `P` is how matrix products and attention are
//! computed, and what the KV cache stores. `CpuEngine` (`Exact`: f32 arithmetic on the decoded
//! weights, an f32 cache) is the reference; `crate::fast::FastEngine` runs the same pass with 8-bit
//! activations, integer SIMD kernels and an f16 cache.

use std::collections::HashMap;

use crate::error::{HearthError, Result};
use crate::generate::{ring_keeps, ring_rows};
use crate::manifest::{
    Activation, FfnKind, Gating, ModelConfig, NormKind, Pooling, PositionKind, RopeScaling, RopeStyle, ARCHITECTURES,
};
use crate::package::{Package, TensorSource};
use crate::quant::{DType, Tensor, TensorData};

/// A norm's weight, and its bias for LayerNorm.
struct Norm {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

struct Layer {
    attn_norm: Norm,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    /// Biases of Q, K and V (Qwen2, BLOOM, GPT-2), or `None`.
    qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of queries and keys (Gemma 3), or `None`.
    qk_norm: Option<[Vec<f32>; 2]>,
    wo: Tensor,
    /// RMSNorm weights applied to the attention and feed-forward outputs before their residual
    /// adds (Gemma 3), or `None`.
    post_norms: Option<[Vec<f32>; 2]>,
    ffn_norm: Norm,
    ffn: FeedForward,
    /// Biases of the output projection, up and down products (BLOOM, GPT-2), or `None`.
    linear_bias: Option<[Vec<f32>; 3]>,
}

enum FeedForward {
    Dense {
        /// `None` for a plain (ungated) feed-forward.
        w_gate: Option<Tensor>,
        w_up: Tensor,
        w_down: Tensor,
    },
    Experts(Experts),
}

/// One gated MLP of a mixture.
struct Expert {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// A layer's mixture of experts (`ModelConfig::moe`).
struct Experts {
    /// `[experts][hidden]`: each expert's logit for a token.
    router: Tensor,
    experts: Vec<Expert>,
    /// Added to the probabilities to choose experts, not to weigh them (`MoeConfig::selection_bias`).
    selection_bias: Option<Vec<f32>>,
    /// The expert every token runs (Qwen2-MoE, dots.llm1), and the weights of its sigmoid gate
    /// (Qwen2-MoE's; none where its output is added unscaled).
    shared: Option<(Expert, Option<Vec<f32>>)>,
}

/// One layer's keys and values, `[row][kv_dim]` flattened, position p in row `p % rows`. A
/// full-attention layer has a row per position so far; a sliding-window layer (Mistral, Gemma's
/// local layers) a ring of `generate::ring_rows(window)` rows, so its memory stays bounded however
/// long generation runs.
/// `T` is what a value is stored as: f32 for the reference, f16 for the fast engine (`Products::Cache`).
pub struct LayerCache<T> {
    pub k: Vec<T>,
    pub v: Vec<T>,
    /// `usize::MAX` for full attention (no ring).
    pub rows: usize,
}

impl<T: CacheElement> LayerCache<T> {
    fn new(window: Option<usize>) -> Self {
        LayerCache { k: Vec::new(), v: Vec::new(), rows: window.map_or(usize::MAX, ring_rows) }
    }

    /// Store the key and value of position `pos` (rounded to `T`).
    pub fn store(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        let at = (pos % self.rows) * k.len();
        if self.k.len() < at + k.len() {
            self.k.resize(at + k.len(), T::default());
            self.v.resize(at + v.len(), T::default());
        }
        T::store(&mut self.k[at..at + k.len()], k);
        T::store(&mut self.v[at..at + v.len()], v);
    }
}

/// What a KV cache stores a value as.
pub trait CacheElement: Copy + Default + Send + Sync + 'static {
    /// `dst[i] = src[i]`, rounded to nearest (even) where `Self` is narrower than f32.
    fn store(dst: &mut [Self], src: &[f32]);
}

impl CacheElement for f32 {
    fn store(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}

/// As llama.cpp's default cache (`type_k = type_v = f16`): half the memory of f32, a relative
/// rounding error of at most 2^-11 per value.
impl CacheElement for half::f16 {
    fn store(dst: &mut [half::f16], src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

/// The KV cache of every layer and how many positions it holds.
struct KvCache<T> {
    layers: Vec<LayerCache<T>>,
    len: usize,
}

/// How an engine computes `out[t][r] = W[r] · x[t]` and attention, and what its KV cache stores;
/// everything else in the forward pass is shared.
pub trait Products: Default + Send + Sync {
    /// What the KV cache stores keys and values as.
    type Cache: CacheElement;

    /// `out` is `[n][w.rows()]`, `x` is `[n][w.cols()]`.
    fn matmul(&self, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]);

    /// Several products of the same input (Q/K/V, gate/up), which an implementation may run as one
    /// parallel pass.
    fn matmuls(&self, x: &[f32], n: usize, products: &mut [(&Tensor, &mut [f32])]) {
        for (w, out) in products.iter_mut() {
            self.matmul(w, x, n, out);
        }
    }

    /// Attention of `n` tokens at positions `start..start + n` of one layer: stores each token's
    /// key and value (`k`, `v`: `[n][kv_dim]`, rotated) in `cache`, and writes the attention of its
    /// queries (`q`: `[n][q_dim]`) over the keys it sees (`window`, as `attention_at`) to `out`
    /// (`[n][q_dim]`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        c: &ModelConfig,
        cache: &mut LayerCache<Self::Cache>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        start: usize,
        window: Option<usize>,
        out: &mut [f32],
    );

    /// The feed-forward activation (the reference's exact function unless an implementation
    /// rounds as its peer does).
    fn activation(&self, kind: Activation) -> fn(f32) -> f32 {
        match kind {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
            Activation::Gelu => gelu,
        }
    }
}

/// The reference products: f32 arithmetic on the weights as decoded (`matmul`).
#[derive(Default)]
pub struct Exact;

impl Products for Exact {
    type Cache = f32;

    fn matmul(&self, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
        matmul(w, x, n, out)
    }

    /// Token by token: each stores its key and value, then attends (`attention_at`). (A ring
    /// shorter than the batch would otherwise lose keys the batch's first queries still need.)
    fn attention(
        &self,
        c: &ModelConfig,
        cache: &mut LayerCache<f32>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        start: usize,
        window: Option<usize>,
        out: &mut [f32],
    ) {
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        for t in 0..q.len() / qd {
            let pos = start + t;
            cache.store(pos, &k[t * kvd..(t + 1) * kvd], &v[t * kvd..(t + 1) * kvd]);
            let out = &mut out[t * qd..(t + 1) * qd];
            attention_at(c, &q[t * qd..(t + 1) * qd], &cache.k, &cache.v, pos, window, cache.rows, out);
        }
    }
}

/// The exact f32 reference engine.
pub type CpuEngine = Engine<Exact>;

pub struct Engine<P: Products> {
    products: P,
    config: ModelConfig,
    embed: Tensor,
    /// Learned absolute positions (GPT-2): row p is added to the embedding at position p.
    positions: Option<Tensor>,
    /// The norm of the embeddings (BLOOM, BERT).
    embed_norm: Option<Norm>,
    /// An encoder's token-type-0 row, added to every embedding (BERT).
    token_type: Option<Vec<f32>>,
    layers: Vec<Layer>,
    /// `None` for an encoder (it has no output head).
    output_norm: Option<Norm>,
    /// `None` when the output head shares the embedding matrix.
    output: Option<Tensor>,
    /// Rotation frequency of each rotated pair, scaling applied (empty without RoPE).
    inv_freq: Vec<f32>,
    /// The sliding-window layers' frequencies when their base differs (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
    cache: KvCache<P::Cache>,
    /// Positions the cache holds at most (the model's context length unless the engine was made
    /// with less: [`Engine::with_context`]).
    context: usize,
    /// The experts the last forward pass chose, `[layer][token]` (empty for a dense model).
    routes: Vec<Vec<Route>>,
}

/// The experts a mixture chose for one token in one layer, and how near a tie the choice was.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The chosen experts, most probable first.
    pub experts: Vec<usize>,
    /// The probability of the last chosen expert minus that of the first left out (1 when every
    /// expert is chosen): router logits that differ by much less cannot change the choice.
    pub margin: f32,
}

impl<P: Products> Engine<P> {
    pub fn from_package(package: &Package) -> Result<Self> {
        Self::from_source(package)
    }

    /// Load every tensor of `source` (a package, or synthetic weights), decoded into its in-memory form.
    pub fn from_source(source: &dyn TensorSource) -> Result<Self> {
        Self::from_source_with_context(source, source.manifest().config.context_length)
    }

    /// [`Engine::from_source`] holding at most `context` positions ([`Engine::with_context`]).
    pub fn from_source_with_context(source: &dyn TensorSource, context: usize) -> Result<Self> {
        let manifest = source.manifest();
        if !ARCHITECTURES.contains(&manifest.architecture.as_str()) {
            return Err(HearthError::UnsupportedArchitecture(manifest.architecture.clone()));
        }
        let mut tensors = HashMap::with_capacity(manifest.tensors.len());
        for entry in &manifest.tensors {
            let bytes = source.read_tensor_bytes(entry)?;
            let tensor = Tensor::from_bytes(&entry.name, entry.shape.clone(), entry.dtype, entry.group_size, &bytes)?;
            tensors.insert(entry.name.clone(), tensor);
        }
        Self::with_context(manifest.config.clone(), tensors, context)
    }

    pub fn new(config: ModelConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let context = config.context_length;
        Self::with_context(config, tensors, context)
    }

    /// An engine that holds at most `context` positions (within 1 and the model's context length).
    /// Where the model's RoPE depends on it (LongRoPE's factors), a smaller context gives other
    /// logits, as in llama.cpp.
    pub fn with_context(config: ModelConfig, mut tensors: HashMap<String, Tensor>, context: usize) -> Result<Self> {
        let c = &config;
        c.validate().map_err(|e| HearthError::bad_package("model", e))?;
        let context = context.clamp(1, c.context_length);
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| HearthError::bad_package("model", format!("missing tensor `{name}`")))?;
            if t.shape != shape {
                return Err(HearthError::bad_package(
                    "model",
                    format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape),
                ));
            }
            Ok(t)
        };
        let (h, q, kv, f, hd) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.ffn_size, c.head_dim);
        // `{prefix}.weight`, and `{prefix}.bias` for LayerNorm.
        let norm = |take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, prefix: &str| -> Result<Norm> {
            let weight = take(&format!("{prefix}.weight"), &[h])?.to_f32();
            let bias = match c.norm {
                NormKind::Rms => None,
                NormKind::Layer => Some(take(&format!("{prefix}.bias"), &[h])?.to_f32()),
            };
            Ok(Norm { weight, bias })
        };
        let embed = take("token_embd.weight", &[c.vocab_size, h])?;
        let positions = match c.position {
            PositionKind::Learned => Some(take("position_embd.weight", &[c.context_length, h])?),
            _ => None,
        };
        let embed_norm = if c.embedding_norm { Some(norm(&mut take, "token_embd_norm")?) } else { None };
        let token_type = match &c.encoder {
            Some(e) => {
                let mut row = vec![0f32; h];
                take("token_types.weight", &[e.token_types, h])?.dequantize_row(0, &mut row);
                Some(row)
            }
            None => None,
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = |s: &str| format!("blk.{i}.{s}.bias");
            let qkv_bias = if c.qkv_bias {
                Some([
                    take(&bias("attn_q"), &[q])?.to_f32(),
                    take(&bias("attn_k"), &[kv])?.to_f32(),
                    take(&bias("attn_v"), &[kv])?.to_f32(),
                ])
            } else {
                None
            };
            // Over each head, or each token's whole query and key (OLMoE): rms_norm_in_place norms
            // every run of the weights' length.
            let (q_norm, k_norm) = if c.qk_norm_whole { (q, kv) } else { (hd, hd) };
            let qk_norm = if c.qk_norm {
                Some([take(&p("attn_q_norm"), &[q_norm])?.to_f32(), take(&p("attn_k_norm"), &[k_norm])?.to_f32()])
            } else {
                None
            };
            let post_norms = if c.post_norms {
                Some([take(&p("post_attention_norm"), &[h])?.to_f32(), take(&p("post_ffw_norm"), &[h])?.to_f32()])
            } else {
                None
            };
            let linear_bias = if c.linear_bias {
                Some([
                    take(&bias("attn_output"), &[h])?.to_f32(),
                    take(&bias("ffn_up"), &[f])?.to_f32(),
                    take(&bias("ffn_down"), &[h])?.to_f32(),
                ])
            } else {
                None
            };
            let ffn = match c.moe_at(i) {
                None => FeedForward::Dense {
                    w_gate: match c.ffn {
                        FfnKind::Gated => Some(take(&p("ffn_gate"), &[f, h])?),
                        FfnKind::Plain => None,
                    },
                    w_up: take(&p("ffn_up"), &[f, h])?,
                    w_down: take(&p("ffn_down"), &[h, f])?,
                },
                Some(m) => {
                    let shared_gate = match (m.shared_ffn_size, m.shared_unscaled) {
                        (Some(_), false) => Some(take(&p("ffn_gate_inp_shexp"), &[h])?.to_f32()),
                        _ => None,
                    };
                    let selection_bias = match m.selection_bias {
                        true => Some(take(&format!("blk.{i}.exp_probs_b.bias"), &[m.experts])?.to_f32()),
                        false => None,
                    };
                    let router = take(&p("ffn_gate_inp"), &[m.experts, h])?;
                    // `blk.N.ffn_{gate,up,down}{suffix}.weight` of `rows` rows.
                    let mut expert = |suffix: &str, rows: usize| -> Result<Expert> {
                        Ok(Expert {
                            gate: take(&p(&format!("ffn_gate{suffix}")), &[rows, h])?,
                            up: take(&p(&format!("ffn_up{suffix}")), &[rows, h])?,
                            down: take(&p(&format!("ffn_down{suffix}")), &[h, rows])?,
                        })
                    };
                    let experts =
                        (0..m.experts).map(|e| expert(&format!(".{e}"), m.expert_ffn_size)).collect::<Result<_>>()?;
                    let shared = match m.shared_ffn_size {
                        Some(rows) => Some((expert("_shexp", rows)?, shared_gate)),
                        None => None,
                    };
                    FeedForward::Experts(Experts { router, experts, selection_bias, shared })
                }
            };
            layers.push(Layer {
                attn_norm: norm(&mut take, &format!("blk.{i}.attn_norm"))?,
                wq: take(&p("attn_q"), &[q, h])?,
                wk: take(&p("attn_k"), &[kv, h])?,
                wv: take(&p("attn_v"), &[kv, h])?,
                qkv_bias,
                qk_norm,
                wo: take(&p("attn_output"), &[h, q])?,
                post_norms,
                ffn_norm: norm(&mut take, &format!("blk.{i}.ffn_norm"))?,
                ffn,
                linear_bias,
            });
        }
        let decoder = c.encoder.is_none();
        let output_norm = if decoder { Some(norm(&mut take, "output_norm")?) } else { None };
        let output =
            if c.tied_embeddings || !decoder { None } else { Some(take("output.weight", &[c.vocab_size, h])?) };
        let (inv_freq, inv_freq_local) = match (&c.rope, c.position) {
            (Some(rope), PositionKind::Rope) => {
                let factors = tensors.remove("rope_freqs.weight").map(|t| t.to_f32());
                (
                    rope_inv_freq(rope.base, rope.dim, rope.scaling.as_ref(), factors.as_deref(), context),
                    rope.local_base.map(|base| rope_inv_freq(base, rope.dim, None, None, context)),
                )
            }
            _ => (Vec::new(), None),
        };
        let cache = KvCache { layers: (0..c.n_layers).map(|l| LayerCache::new(c.layer_window(l))).collect(), len: 0 };
        Ok(Engine {
            products: P::default(),
            config,
            embed,
            positions,
            embed_norm,
            token_type,
            layers,
            output_norm,
            output,
            inv_freq,
            inv_freq_local,
            cache,
            context,
            routes: Vec::new(),
        })
    }

    /// Experts the last forward pass ran, summed over its layers: at most `used` per layer for one
    /// token (the others' weights are not read), at most every expert for a prompt.
    pub fn experts_run(&self) -> usize {
        let distinct = |layer: &Vec<Route>| {
            let mut run: Vec<usize> = layer.iter().flat_map(|r| r.experts.iter().copied()).collect();
            run.sort_unstable();
            run.dedup();
            run.len()
        };
        self.routes.iter().map(distinct).sum()
    }

    /// The experts the last forward pass chose for each of its tokens, `[layer][token]` (empty for
    /// a dense model, and for a mixture's dense layers).
    pub fn routes(&self) -> &[Vec<Route>] {
        &self.routes
    }

    /// Positions this engine holds at most.
    pub fn context_length(&self) -> usize {
        self.context
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes the KV cache holds now (windowed layers hold at most their window).
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.layers.iter().map(|l| (l.k.len() + l.v.len()) * std::mem::size_of::<P::Cache>()).sum()
    }

    /// Bytes the KV cache will hold at `positions` positions (keys and values as `P::Cache`: f32
    /// for the reference, f16 for the fast engine; windowed layers hold at most their window).
    pub fn kv_cache_bytes_at(config: &ModelConfig, positions: usize) -> u64 {
        // Saturating: a page asks this of a manifest before any engine checked its tensors.
        let heads = (config.n_kv_heads as u64).saturating_mul(config.head_dim as u64);
        let row = heads.saturating_mul(2 * std::mem::size_of::<P::Cache>() as u64);
        (0..config.n_layers)
            .map(|l| {
                (config.layer_window(l).map_or(positions, |w| ring_rows(w).min(positions)) as u64).saturating_mul(row)
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Positions already in the KV cache.
    pub fn position(&self) -> usize {
        self.cache.len
    }

    pub fn reset(&mut self) {
        for layer in &mut self.cache.layers {
            layer.k.clear();
            layer.v.clear();
        }
        self.cache.len = 0;
    }

    /// Keep the first `len` positions and forget the rest, so a generation can go on from a prefix
    /// it shares with the last one; false (nothing changed) when `len` is past the end or a ring
    /// layer no longer holds the keys a query at `len` sees (see `generate::ring_keeps`).
    pub fn truncate(&mut self, len: usize) -> bool {
        let end = self.cache.len;
        let windows = (0..self.config.n_layers).map(|l| self.config.layer_window(l));
        if len > end || !windows.zip(&self.cache.layers).all(|(w, l)| w.is_none_or(|w| ring_keeps(w, l.rows, len, end)))
        {
            return false;
        }
        let row = self.config.kv_dim();
        for layer in self.cache.layers.iter_mut().filter(|l| l.rows == usize::MAX) {
            layer.k.truncate(len * row);
            layer.v.truncate(len * row);
        }
        self.cache.len = len;
        true
    }

    /// The model's norm (RMSNorm, or LayerNorm with its bias) of each row of `x` into `out`.
    fn norm(&self, x: &[f32], n: &Norm, out: &mut [f32]) {
        let (h, eps) = (self.config.hidden_size, self.config.norm_eps);
        match &n.bias {
            None => rms_norm(x, &n.weight, eps, h, out),
            Some(bias) => layer_norm(x, &n.weight, bias, eps, h, out),
        }
    }

    /// Run `tokens` at the next positions. Returns the logits of the last token, or of every token
    /// (`[tokens.len() * vocab]`) with `all_logits`.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.in_pool(|engine| engine.forward_here(tokens, all_logits))
    }

    /// `pass` of this engine: natively on a worker of the thread pool, where each parallel product
    /// is then shared from inside the pool with workers that are spinning between products (from
    /// outside it every product would wake a worker and put this thread to sleep and wake it again,
    /// ~150 times a SmolLM2 step). One thread never leaves the caller.
    fn in_pool<R: Send>(&mut self, pass: impl FnOnce(&mut Self) -> R + Send) -> R {
        #[cfg(all(feature = "parallel", not(target_arch = "wasm32")))]
        if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            return rayon::scope(|_| pass(self));
        }
        pass(self)
    }

    /// `forward` on the calling thread.
    fn forward_here(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let Some(output_norm) = self.output_norm.take() else {
            return Err(HearthError::InvalidArgument(
                "this model is an encoder: it gives embeddings (embed), not next-token logits".into(),
            ));
        };
        let result = self.logits(tokens, all_logits, &output_norm);
        self.output_norm = Some(output_norm);
        result
    }

    /// The logits of `tokens` at the next positions, for the rows asked for.
    fn logits(&mut self, tokens: &[u32], all_logits: bool, output_norm: &Norm) -> Result<Vec<f32>> {
        let c = self.config.clone();
        let (n, h) = (tokens.len(), c.hidden_size);
        let x = self.hidden_states(tokens)?;
        // Final norm and output head, for the rows asked for.
        let rows = if all_logits { 0..n } else { n - 1..n };
        let m = rows.len();
        let mut last = vec![0f32; m * h];
        self.norm(&x[rows.start * h..rows.end * h], output_norm, &mut last);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; m * c.vocab_size];
        self.products.matmul(head, &last, m, &mut logits);
        if let Some(divisor) = c.logit_divisor {
            // As llama.cpp: times the reciprocal.
            let scale = 1.0 / divisor;
            logits.iter_mut().for_each(|l| *l *= scale);
        }
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        Ok(logits)
    }

    /// An encoder's embedding of `tokens` (one text, its special tokens included), pooled and
    /// normalized as its config says. Each call stands alone: nothing is cached.
    pub fn embed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.embed_with(tokens, None)
    }

    /// `embed`, scaled to unit length or not as `normalize` says (None: as the model's config says;
    /// the browser API's `{normalize}`).
    pub fn embed_with(&mut self, tokens: &[u32], normalize: Option<bool>) -> Result<Vec<f32>> {
        let Some(e) = self.config.encoder.clone() else {
            return Err(HearthError::InvalidArgument(
                "this model is a decoder: it generates text, and gives no embeddings".into(),
            ));
        };
        if tokens.len() > e.max_tokens {
            return Err(HearthError::InvalidArgument(format!(
                "{} tokens are more than the {} this encoder takes",
                tokens.len(),
                e.max_tokens
            )));
        }
        let x = self.in_pool(|engine| engine.hidden_states(tokens))?;
        Ok(pool(&x, self.config.hidden_size, e.pooling, normalize.unwrap_or(e.normalize)))
    }

    /// Every token's output of the last layer (`[n][hidden]`): a decoder's at the next positions
    /// (stored in the KV cache), an encoder's over `tokens` alone, attending both ways.
    fn hidden_states(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = self.config.clone();
        let n = tokens.len();
        if n == 0 {
            return Err(HearthError::InvalidArgument("forward needs at least one token".into()));
        }
        let encoder = c.encoder.is_some();
        let start = if encoder { 0 } else { self.cache.len };
        if start + n > self.context {
            return Err(HearthError::ContextLengthExceeded {
                prompt_tokens: start + n,
                max_new_tokens: 0,
                context_length: self.context,
            });
        }
        let (h, hd) = (c.hidden_size, c.head_dim);

        // Token embeddings (scaled for Gemma), plus learned positions (GPT-2), normed (BLOOM).
        let mut x = vec![0f32; n * h];
        let mut position_row = vec![0f32; h];
        for (t, (row, &token)) in x.chunks_mut(h).zip(tokens).enumerate() {
            if token as usize >= c.vocab_size {
                return Err(HearthError::InvalidArgument(format!(
                    "token id {token} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            self.embed.dequantize_row(token as usize, row);
            if let Some(scale) = c.embedding_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
            // BERT: (token + type) + position, in Transformers' order.
            if let Some(token_type) = &self.token_type {
                add_in_place(row, token_type);
            }
            if let Some(positions) = &self.positions {
                positions.dequantize_row(start + t, &mut position_row);
                add_in_place(row, &position_row);
            }
        }
        if let Some(embed_norm) = &self.embed_norm {
            let embedded = x.clone();
            self.norm(&embedded, embed_norm, &mut x);
        }

        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * c.q_dim()];
        let mut k = vec![0f32; n * c.kv_dim()];
        let mut v = vec![0f32; n * c.kv_dim()];
        let mut attn = vec![0f32; n * c.q_dim()];
        // A mixture's experts make their own (of their own sizes); its leading dense layers use these.
        let dense_rows = if c.moe.as_ref().is_none_or(|m| m.dense_layers > 0) { c.ffn_size } else { 0 };
        let mut gate = vec![0f32; n * dense_rows];
        let mut up = vec![0f32; n * dense_rows];
        let mut routes = Vec::new();
        let mut proj = vec![0f32; n * h];
        let act = self.products.activation(c.activation);

        for li in 0..self.layers.len() {
            let layer = &self.layers[li];
            // Attention block: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x)),
            // with Gemma's per-head norms before RoPE and its norm of the output before the add,
            // Granite's residual scale on the output before the add (both blocks);
            // ALiBi models add their biases to the scores instead of rotating.
            // An encoder's norms come after the residual adds (below).
            if encoder {
                xn.copy_from_slice(&x);
            } else {
                self.norm(&x, &layer.attn_norm, &mut xn);
            }
            self.products.matmuls(&xn, n, &mut [(&layer.wq, &mut q), (&layer.wk, &mut k), (&layer.wv, &mut v)]);
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            if let Some([wq, wk]) = &layer.qk_norm {
                rms_norm_in_place(&mut q, wq, c.norm_eps);
                rms_norm_in_place(&mut k, wk, c.norm_eps);
            }
            let window = c.layer_window(li);
            if c.layer_rotates(li) {
                let style = c.rope.as_ref().map_or(RopeStyle::Neox, |r| r.style);
                // Gemma 3's local layers have their own base (and no scaling: see rope_magnitude).
                let inv_freq = self.inv_freq_local.as_ref().filter(|_| window.is_some()).unwrap_or(&self.inv_freq);
                let magnitude = c.rope_magnitude(li);
                for t in 0..n {
                    let pos = start + t;
                    for head in q[t * c.q_dim()..(t + 1) * c.q_dim()].chunks_mut(hd) {
                        apply_rope(head, pos, inv_freq, style, magnitude);
                    }
                    for head in k[t * c.kv_dim()..(t + 1) * c.kv_dim()].chunks_mut(hd) {
                        apply_rope(head, pos, inv_freq, style, magnitude);
                    }
                }
            }
            if encoder {
                // Every query over every key of the text: position n - 1 sees them all.
                let qd = c.q_dim();
                for (qt, out) in q.chunks(qd).zip(attn.chunks_mut(qd)) {
                    attention_at(&c, qt, &k, &v, n - 1, None, n, out);
                }
            } else {
                self.products.attention(&c, &mut self.cache.layers[li], &q, &k, &v, start, window, &mut attn);
            }
            let layer = &self.layers[li];
            self.products.matmul(&layer.wo, &attn, n, &mut proj);
            if let Some([bo, _, _]) = &layer.linear_bias {
                add_bias(&mut proj, bo);
            }
            if let Some([post_attn, _]) = &layer.post_norms {
                rms_norm_in_place(&mut proj, post_attn, c.norm_eps);
            }
            scale_in_place(&mut proj, c.residual_scale);
            add_in_place(&mut x, &proj);
            if encoder {
                xn.copy_from_slice(&x);
                self.norm(&xn, &layer.attn_norm, &mut x);
            }

            // Feed-forward block: x += W_down · (act(W_gate·norm(x)) * W_up·norm(x)) when gated
            // (SwiGLU, GeGLU), x += W_down · act(W_up·norm(x) + b_up) + b_down when plain (GPT-2).
            if encoder {
                xn.copy_from_slice(&x);
            } else {
                self.norm(&x, &layer.ffn_norm, &mut xn);
            }
            match &layer.ffn {
                FeedForward::Dense { w_gate, w_up, w_down } => {
                    match w_gate {
                        Some(w_gate) => self.products.matmuls(&xn, n, &mut [(w_up, &mut up), (w_gate, &mut gate)]),
                        None => self.products.matmul(w_up, &xn, n, &mut up),
                    }
                    if let Some([_, b_up, _]) = &layer.linear_bias {
                        add_bias(&mut up, b_up);
                    }
                    let gated = w_gate.is_some();
                    for (g, u) in gate.iter_mut().zip(&up) {
                        *g = if gated { act(*g) * u } else { act(*u) };
                    }
                    self.products.matmul(w_down, &gate, n, &mut proj);
                    if c.moe.is_some() {
                        routes.push(Vec::new()); // a mixture's dense layer chooses nothing
                    }
                }
                FeedForward::Experts(experts) => {
                    routes.push(mixture(&self.products, &c, experts, &xn, n, act, &mut proj));
                }
            }
            if let Some([_, _, b_down]) = &layer.linear_bias {
                add_bias(&mut proj, b_down);
            }
            if let Some([_, post_ffw]) = &layer.post_norms {
                rms_norm_in_place(&mut proj, post_ffw, c.norm_eps);
            }
            scale_in_place(&mut proj, c.residual_scale);
            add_in_place(&mut x, &proj);
            if encoder {
                xn.copy_from_slice(&x);
                self.norm(&xn, &layer.ffn_norm, &mut x);
            }
        }
        if !encoder {
            self.cache.len += n;
        }
        self.routes = routes;
        Ok(x)
    }
}

/// A mixture of experts on each of the `n` rows of `x` (normed; `[n][hidden]`), into `out`
/// (`[n][hidden]`), as llama.cpp computes it: the router's logits → probabilities (a softmax, or
/// each one's sigmoid), the `used` most probable experts (probabilities plus the selection bias;
/// ties to the lower index), each run on the rows that chose it (one batch per expert) and added
/// weighted by its probability (over the chosen ones' sum with `normalize`, times `weights_scale`);
/// a shared expert runs on every row, scaled by the sigmoid of its gate where it has one. Returns
/// each row's route.
fn mixture<P: Products>(
    products: &P,
    c: &ModelConfig,
    layer: &Experts,
    x: &[f32],
    n: usize,
    act: fn(f32) -> f32,
    out: &mut [f32],
) -> Vec<Route> {
    let (h, count) = (c.hidden_size, layer.experts.len());
    let Some(moe) = c.moe.as_ref() else { return Vec::new() };
    let used = moe.used.min(count);
    let mut logits = vec![0f32; n * count];
    products.matmul(&layer.router, x, n, &mut logits);
    // Each expert's rows and their weights.
    let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); count];
    let mut routes = Vec::with_capacity(n);
    let mut scores = vec![0f32; count];
    for (t, row) in logits.chunks_mut(count).enumerate() {
        match moe.gating {
            Gating::Softmax => softmax(row),
            Gating::Sigmoid => row.iter_mut().for_each(|v| *v = sigmoid(*v)),
        }
        scores.copy_from_slice(row);
        if let Some(bias) = &layer.selection_bias {
            add_in_place(&mut scores, bias);
        }
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        // llama.cpp's floor under the sum (2^-14), which only a sigmoid router can come near.
        let sum = order[..used].iter().map(|&e| row[e]).sum::<f32>().max(NORMALIZE_SUM_MIN);
        for &e in &order[..used] {
            let weight = if moe.normalize { row[e] / sum } else { row[e] };
            chosen[e].push((t, weight * moe.weights_scale));
        }
        let margin = order.get(used).map_or(1.0, |&left| scores[order[used - 1]] - scores[left]);
        order.truncate(used);
        routes.push(Route { experts: order, margin });
    }
    out.fill(0.0);
    for (expert, rows) in layer.experts.iter().zip(&chosen).filter(|(_, rows)| !rows.is_empty()) {
        let xs: Vec<f32> = rows.iter().flat_map(|&(t, _)| &x[t * h..(t + 1) * h]).copied().collect();
        let ys = gated_mlp(products, expert, &xs, rows.len(), act);
        for (&(t, weight), y) in rows.iter().zip(ys.chunks(h)) {
            out[t * h..(t + 1) * h].iter_mut().zip(y).for_each(|(o, y)| *o += weight * y);
        }
    }
    if let Some((expert, gate)) = &layer.shared {
        let ys = gated_mlp(products, expert, x, n, act);
        for ((o, y), xt) in out.chunks_mut(h).zip(ys.chunks(h)).zip(x.chunks(h)) {
            let scale = gate.as_ref().map_or(1.0, |gate| sigmoid(dot(gate, xt)));
            o.iter_mut().zip(y).for_each(|(o, y)| *o += scale * y);
        }
    }
    routes
}

/// The least sum llama.cpp divides a token's chosen weights by when it rescales them.
const NORMALIZE_SUM_MIN: f32 = 6.103_515_6e-5;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `down · (act(gate · x) * up · x)` of each of the `n` rows of `x`.
fn gated_mlp<P: Products>(products: &P, w: &Expert, x: &[f32], n: usize, act: fn(f32) -> f32) -> Vec<f32> {
    let (rows, h) = (w.up.shape[0], w.down.shape[0]);
    let (mut gate, mut up) = (vec![0f32; n * rows], vec![0f32; n * rows]);
    products.matmuls(x, n, &mut [(&w.up, &mut up), (&w.gate, &mut gate)]);
    for (g, u) in gate.iter_mut().zip(&up) {
        *g = act(*g) * u;
    }
    let mut out = vec![0f32; n * h];
    products.matmul(&w.down, &gate, n, &mut out);
    out
}

/// One embedding of `x` (`[n][h]`, a text's outputs) pooled as `pooling` says, scaled to unit
/// length with `normalize` (as sentence-transformers' `Normalize`: divided by max(norm, 1e-12)).
pub fn pool(x: &[f32], h: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let n = x.len() / h;
    let mut out = match pooling {
        Pooling::Cls => x[..h].to_vec(),
        Pooling::Last => x[(n - 1) * h..].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f32; h];
            for row in x.chunks(h) {
                add_in_place(&mut sum, row);
            }
            sum.iter().map(|s| s / n as f32).collect()
        }
    };
    if normalize {
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        out.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

/// Rotation frequency per pair: base^(-2i/dim), with the model's scaling (Llama 3.1's per-band
/// scaling, or per-pair factors stored by llama.cpp as `rope_freqs.weight`). `context`: the
/// positions the engine holds, which choose LongRoPE's factors.
pub fn rope_inv_freq(
    base: f32,
    dim: usize,
    scaling: Option<&RopeScaling>,
    factors: Option<&[f32]>,
    context: usize,
) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let mut f = 1.0 / (base as f64).powf(2.0 * i as f64 / dim as f64);
            match scaling {
                Some(RopeScaling::Linear { factor }) => f /= *factor as f64,
                Some(RopeScaling::Yarn { factor, original_context_length, beta_fast, beta_slow, .. }) => {
                    // Pair i turns pos * f / 2π times: the number of turns over the original
                    // context decides, through the pair index where it crosses beta_fast / beta_slow.
                    let dims = dim as f64;
                    let pair_at = |turns: f64| {
                        dims * (*original_context_length as f64 / (turns * 2.0 * std::f64::consts::PI)).ln()
                            / (2.0 * (base as f64).ln())
                    };
                    let low = pair_at(*beta_fast as f64).floor().max(0.0);
                    let high = pair_at(*beta_slow as f64).ceil().min(dims - 1.0);
                    let ramp = ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                    // ramp 0: kept (extrapolated); ramp 1: interpolated.
                    f = f / *factor as f64 * ramp + f * (1.0 - ramp);
                }
                Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context_length }) => {
                    let (factor, lo, hi) = (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let old = *original_context_length as f64;
                    if wavelen > old / lo {
                        f /= factor;
                    } else if wavelen >= old / hi {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        f = (1.0 - smooth) * f / factor + smooth * f;
                    }
                }
                Some(RopeScaling::LongRope { original_context_length, short_factors, long_factors, .. }) => {
                    let chosen = if context > *original_context_length { long_factors } else { short_factors };
                    f /= chosen.get(i).copied().unwrap_or(1.0) as f64;
                }
                None => {}
            }
            if let Some(factors) = factors {
                f /= factors.get(i).copied().unwrap_or(1.0) as f64;
            }
            f as f32
        })
        .collect()
}

/// Rotate the pairs of `head` for position `pos`, scaling the rotated values by `magnitude`
/// (YaRN's; 1 otherwise).
pub fn apply_rope(head: &mut [f32], pos: usize, inv_freq: &[f32], style: RopeStyle, magnitude: f32) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = (x0 * cos - x1 * sin) * magnitude;
        head[b] = (x0 * sin + x1 * cos) * magnitude;
    }
}

/// Grouped-query attention of the query `q` (all heads) at position `pos` over the keys at
/// positions `pos + 1 - window ..= pos` (all of `0..=pos` without a window); position p's key and
/// value are in row `p % rows` of the caches.
#[allow(clippy::too_many_arguments)]
pub fn attention_at(
    c: &ModelConfig,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos: usize,
    window: Option<usize>,
    rows: usize,
    out: &mut [f32],
) {
    let (hd, kvd) = (c.head_dim, c.kv_dim());
    let group = c.n_heads / c.n_kv_heads;
    let scale = c.attention_scale();
    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let mut scores = vec![0f32; pos + 1 - first];
    let max_bias = match (&c.alibi, c.position) {
        (Some(alibi), PositionKind::Alibi) => Some(alibi.max_bias),
        _ => None,
    };
    for head in 0..c.n_heads {
        let kvh = head / group;
        let qh = &q[head * hd..][..hd];
        let slope = max_bias.map_or(0.0, |m| alibi_slope(head, c.n_heads, m));
        for (s, p) in scores.iter_mut().zip(first..=pos) {
            let kh = &k_cache[(p % rows) * kvd + kvh * hd..][..hd];
            *s = dot(qh, kh) * scale;
            if let Some(cap) = c.attn_softcap {
                *s = cap * (*s / cap).tanh();
            }
            // ALiBi: a key d positions back costs slope * d.
            *s -= slope * (pos - p) as f32;
        }
        softmax(&mut scores);
        let o = &mut out[head * hd..][..hd];
        o.fill(0.0);
        for (&w, p) in scores.iter().zip(first..=pos) {
            let vh = &v_cache[(p % rows) * kvd + kvh * hd..][..hd];
            for (o, &v) in o.iter_mut().zip(vh) {
                *o += w * v;
            }
        }
    }
}

/// ALiBi's slope of head `h` of `n_heads` (Press et al.; as llama.cpp computes them): for n the
/// largest power of two not above the head count, heads h < n get 2^(-max_bias (h + 1) / n) and the
/// rest interleave between them: 2^(-max_bias (2 (h - n) + 1) / (2 n)).
/// (As powers of two with the exponent computed first, so the slopes are exact wherever they are
/// representable; llama.cpp's powers of rounded bases agree with them to the last bit or two.)
pub fn alibi_slope(h: usize, n_heads: usize, max_bias: f32) -> f32 {
    let n = 1usize << n_heads.max(1).ilog2();
    let exponent = if h < n { (h + 1) as f32 / n as f32 } else { (2 * (h - n) + 1) as f32 / (2 * n) as f32 };
    (-max_bias * exponent).exp2()
}

pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// RMSNorm of each `h`-value row of `x` (`w` has `h` values) into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, h: usize, out: &mut [f32]) {
    debug_assert_eq!(w.len(), h);
    out.copy_from_slice(x);
    rms_norm_in_place(out, w, eps);
}

/// LayerNorm: (x - mean) / sqrt(variance + eps) * w + b, row by row (mean first, then the squared
/// deviations: no cancellation when |mean| is large against the spread).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, h: usize, out: &mut [f32]) {
    for (row, o) in x.chunks(h).zip(out.chunks_mut(h)) {
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

/// RMSNorm of each `w.len()`-value row of `x` (a head, or a token's hidden state) in place.
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_mut(w.len()) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(w) {
            *v = *v * inv * w;
        }
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, exact: 0.5 x (1 + erf(x / sqrt(2))).
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

/// Adds `bias` to every row of `x` (rows of `bias.len()` values).
fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// `x` times `scale`, where there is one (a block's output before its residual add: Granite).
fn scale_in_place(x: &mut [f32], scale: Option<f32>) {
    if let Some(scale) = scale {
        x.iter_mut().for_each(|v| *v *= scale);
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Dot product with eight independent partial sums, so the compiler can vectorize it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[t][r] = W[r] · x[t]` for `n` input rows, parallel over blocks of weight rows.
///
/// Quantized rows are multiplied in their encoding (`q4`: `s·Σq·x + m·Σx` per group, with the group
/// sums of `x` computed once), so a weight is read once per token and never expanded in memory.
pub fn matmul(w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    debug_assert_eq!(x.len(), n * cols);
    debug_assert_eq!(out.len(), n * rows);
    // Per-group sums of x, for the single-token q4 path (several tokens decode rows instead).
    let group_sums: Vec<f32> = match &w.data {
        TensorData::Q4(q) if n == 1 => x.chunks(q.group).map(|g| g.iter().sum()).collect(),
        _ => Vec::new(),
    };
    // Rows are computed in blocks into a row-major [rows][n] buffer, then transposed.
    const BLOCK: usize = 16;
    let mut by_row = vec![0f32; rows * n];
    let work = |(bi, chunk): (usize, &mut [f32])| {
        // q5 and K-quant rows are decoded even for one token (no product of their own here).
        let decodes = matches!(w.dtype(), DType::Q5) || w.dtype().is_k_quant();
        let mut row = vec![0f32; if n > 1 || decodes { cols } else { 0 }];
        for (j, dst) in chunk.chunks_mut(n).enumerate() {
            let r = bi * BLOCK + j;
            // Several tokens (prefill): decode the row once and reuse it for each of them.
            if n > 1 {
                w.dequantize_row(r, &mut row);
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = dot(&row, &x[t * cols..(t + 1) * cols]);
                }
                continue;
            }
            for (t, d) in dst.iter_mut().enumerate() {
                let xt = &x[t * cols..(t + 1) * cols];
                *d = match &w.data {
                    TensorData::F32(v) => dot(&v[r * cols..(r + 1) * cols], xt),
                    TensorData::Q8(q) => {
                        dot_q8(&q.codes[r * cols..(r + 1) * cols], &q.scales[r * cols / 32..(r + 1) * cols / 32], xt)
                    }
                    TensorData::Q4(q) => {
                        let gpr = cols / q.group;
                        dot_q4(
                            &q.codes[r * cols / 2..(r + 1) * cols / 2],
                            &q.scales[r * gpr..(r + 1) * gpr],
                            &q.mins[r * gpr..(r + 1) * gpr],
                            xt,
                            &group_sums[t * gpr..(t + 1) * gpr],
                            q.group,
                        )
                    }
                    TensorData::F16(v) => v[r * cols..(r + 1) * cols].iter().zip(xt).map(|(w, x)| w.to_f32() * x).sum(),
                    TensorData::Q5(_) | TensorData::Q4k(_) | TensorData::Q5k(_) | TensorData::Q6k(_) => {
                        w.dequantize_row(r, &mut row);
                        dot(&row, xt)
                    }
                };
            }
        }
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        by_row.par_chunks_mut(BLOCK * n).enumerate().for_each(work);
    }
    #[cfg(not(feature = "parallel"))]
    by_row.chunks_mut(BLOCK * n).enumerate().for_each(work);
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = by_row[r * n + t];
        }
    }
}

/// One `q8` row times `x`: Σ_g d_g · Σ_k q_k x_k, kept in eight lanes until the end so the loop vectorizes.
fn dot_q8(codes: &[i8], scales: &[half::f16], x: &[f32]) -> f32 {
    let mut total = [0f32; 8];
    for ((c, s), xg) in codes.chunks_exact(32).zip(scales).zip(x.chunks_exact(32)) {
        let mut acc = [0f32; 8];
        for (c8, x8) in c.chunks_exact(8).zip(xg.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += f32::from(c8[i]) * x8[i];
            }
        }
        let s = s.to_f32();
        for i in 0..8 {
            total[i] += s * acc[i];
        }
    }
    total.iter().sum()
}

/// One `q4` row times `x`: Σ_g (s_g · Σ_k q_k x_k + m_g · Σ_k x_k), in eight lanes as `dot_q8`.
fn dot_q4(
    codes: &[u8],
    scales: &[half::f16],
    mins: &[half::f16],
    x: &[f32],
    x_group_sums: &[f32],
    group: usize,
) -> f32 {
    let mut total = [0f32; 8];
    let mut with_mins = 0f32;
    for (g, (c, xg)) in codes.chunks_exact(group / 2).zip(x.chunks_exact(group)).enumerate() {
        let mut acc = [0f32; 8];
        for (c4, x8) in c.chunks_exact(4).zip(xg.chunks_exact(8)) {
            for i in 0..4 {
                acc[2 * i] += f32::from(c4[i] & 0x0f) * x8[2 * i];
                acc[2 * i + 1] += f32::from(c4[i] >> 4) * x8[2 * i + 1];
            }
        }
        let s = scales[g].to_f32();
        for i in 0..8 {
            total[i] += s * acc[i];
        }
        with_mins += mins[g].to_f32() * x_group_sums[g];
    }
    total.iter().sum::<f32>() + with_mins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_and_neox_rope_agree_after_permutation() {
        let inv = rope_inv_freq(10_000.0, 8, None, None, 8);
        let head: Vec<f32> = (0..8).map(|i| i as f32 * 0.37 - 1.0).collect();
        let mut neox = head.clone();
        apply_rope(&mut neox, 5, &inv, RopeStyle::Neox, 1.0);
        // Interleaved pair (2i, 2i+1) holds neox pair (i, i+4).
        let perm = |v: &[f32]| (0..8).map(|j| v[(j % 2) * 4 + j / 2]).collect::<Vec<f32>>();
        let mut inter = perm(&head);
        apply_rope(&mut inter, 5, &inv, RopeStyle::Interleaved, 1.0);
        for (a, b) in inter.iter().zip(perm(&neox)) {
            assert!((a - b).abs() < 1e-6);
        }
        // Position 0 is the identity.
        let mut same = head.clone();
        apply_rope(&mut same, 0, &inv, RopeStyle::Neox, 1.0);
        assert_eq!(same, head);
    }

    #[test]
    fn matmul_matches_naive_products_for_awkward_sizes() {
        let (rows, cols, n) = (37, 64, 3);
        let wv: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5).collect();
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 104_729) % 89) as f32 / 89.0 - 0.5).collect();
        let w = Tensor::from_f32(vec![rows, cols], &wv, crate::quant::DType::F32, 32).unwrap();
        let mut out = vec![0f32; n * rows];
        matmul(&w, &x, n, &mut out);
        for t in 0..n {
            for r in 0..rows {
                let expect: f32 = (0..cols).map(|c| wv[r * cols + c] * x[t * cols + c]).sum();
                assert!((out[t * rows + r] - expect).abs() < 1e-4);
            }
        }
    }
}
