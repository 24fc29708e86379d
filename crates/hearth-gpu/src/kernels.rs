//! The compute pipelines, built at load (never per token), and small helpers to bind and read back.
//!
//! Variants come from one source each: `matvec.wgsl`'s modules are assembled from its sections
//! (per token-block size, per weight encoding of the decode kernel, per way of adding up sums, per
//! epilogue of the decode kernel: plain or the QKV product's RoPE and KV store), and
//! its fusions, like the f16 KV cache of `rope.wgsl` / `attention.wgsl`, are WGSL override
//! constants. A pipeline is identified by a [`MatvecKey`] and built once.

use std::cell::RefCell;
use std::collections::HashMap;

use hearth_core::quant::DType;
use hearth_core::{HearthError, Result};
use wgpu::util::DeviceExt;

use crate::context::GpuContext;

const MATVEC: &str = include_str!("../../../shaders/matvec.wgsl");
/// How a line opening a section of `matvec.wgsl` begins (the section's name follows).
const SECTION_MARK: &str = "// ==== ";
const EMBED: &str = include_str!("../../../shaders/embed.wgsl");
/// K-quant header and high-bit decoding, put in front of the modules that read weights.
const KQUANTS: &str = include_str!("../../../shaders/kquants.wgsl");
const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
/// RoPE's rotation, put in front of `rope.wgsl` and of `matvec.wgsl`'s decode kernel with the
/// `decode rope` epilogue, so both rotate alike.
const ROTARY: &str = include_str!("../../../shaders/rotary.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const NORM: &str = include_str!("../../../shaders/norm.wgsl");
const GLU: &str = include_str!("../../../shaders/glu.wgsl");
const MOE: &str = include_str!("../../../shaders/moe.wgsl");
const QK_NORM: &str = include_str!("../../../shaders/qk_norm.wgsl");
/// What every module shares (the `Step` uniform, `pick`), put in front of each.
const PRELUDE: &str = include_str!("../../../shaders/prelude.wgsl");

/// A shader module of `parts` (in order) after the prelude.
fn with_prelude(device: &wgpu::Device, label: &str, parts: &[&str]) -> wgpu::ShaderModule {
    let source = [&[PRELUDE], parts].concat().concat();
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    })
}

/// Invocations per workgroup of the element-wise kernels.
pub const WORKGROUP: u32 = 64;
/// Largest dispatch size along one grid dimension (WebGPU's guaranteed minimum).
pub const MAX_GRID: u32 = 65535;
/// Most loop iterations one invocation of the row-per-invocation attention may run on software
/// adapters (about `head_dim / 2 + 2` per visible position); longer attention gets the split
/// kernel. attention.wgsl explains: lavapipe's loop limiter stops an invocation at 65,535. This
/// keeps SmolLM2 (head_dim 64) on the row split up to 1,617 positions, Gemma 3 (256) up to 423.
pub const ROWS_ATTENTION_MAX_ITERATIONS: usize = 55_000;
/// Tokens one prefill matvec workgroup takes (decode takes 1): the blocked kernels' `TB`.
pub const PREFILL_BLOCK: u32 = 8;
/// Most output rows one workgroup of matvec.wgsl's decode kernel computes (its `ROWS_MAX`).
pub const DECODE_ROWS_MAX: u32 = 8;
/// Rows per workgroup of the decode kernel on hardware adapters, chosen on the one GPU measured:
/// each lane's input chunk then serves 4 rows. On an NVIDIA H200 (Vulkan, 2026-12-04, `hearth
/// bench --decode-rows`) 4 rows decoded SmolLM2-135M at 492 tok/s and the Llama-3.2-1B shape at
/// 489, 8 rows at 379 and 428 (an earlier version of the kernel ran 1 and 2 rows slower than
/// both). 4 keeps the QKV product's RoPE epilogue ([`Kernels::fuses_rope`] needs a multiple of 4).
/// [`Kernels::with_decode_rows`] sets another count.
pub const DECODE_ROWS: u32 = 4;
/// Storage buffers the decode kernel with the `decode rope` epilogue binds at most (q4 weights: the
/// input, q, codes, scales, mins, norm weight, bias, frequencies, K and V caches): more than
/// WebGPU's guaranteed 8, so it runs only where the adapter allows this many.
pub const ROPE_EPILOGUE_STORAGE_BUFFERS: u32 = 10;
/// Output rows per workgroup of matvec.wgsl's tiled kernel (its `TILE_ROWS`).
pub const TILED_ROWS: u32 = 32;
/// Tokens per workgroup of matvec.wgsl's tiled kernel (its `TILE_TOKENS`).
pub const TILED_TOKENS: u32 = 16;
/// Output rows per workgroup of matvec.wgsl's register-blocked kernel (its `GEMM_ROWS`).
pub const GEMM_ROWS: u32 = 64;
/// Tokens per workgroup of matvec.wgsl's register-blocked kernel (its `GEMM_TOKENS`).
pub const GEMM_TOKENS: u32 = 64;

/// What a matrix product fuses in (see matvec.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    #[default]
    None,
    Silu,
    GeluTanh,
    /// The exact GELU, `y · Φ(y)` (BERT), its erf approximated in prelude.wgsl within 1.5e-7.
    GeluErf,
    /// `cap * tanh(y / cap)`, the cap in the product's dims (Gemma 2's logits).
    Softcap,
}

impl Activation {
    /// Its code in the shaders' `ACT` constants (prelude.wgsl's `activate`).
    fn code(self) -> f64 {
        match self {
            Activation::None => 0.0,
            Activation::Silu => 1.0,
            Activation::GeluTanh => 2.0,
            Activation::Softcap => 3.0,
            Activation::GeluErf => 4.0,
        }
    }
}

/// A boolean override constant's value.
fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// Which row of its table an embedding gather reads for each token (embed.wgsl's `ROWS`); every
/// table but the token table adds its row to what the token table wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedRows {
    /// The token's id.
    Tokens = 0,
    /// The token's position (GPT-2's learned positions).
    Positions = 1,
    /// The token's position within its own text (an encoder's texts packed into one step).
    TextPositions = 2,
    /// Row 0 (BERT's token type, the same for every token).
    First = 3,
}

/// matvec.wgsl's `Dims`, field for field: one product's (or one piece's) shape and fused constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ProductDims {
    /// Output rows this dispatch computes (a split matrix's piece: its own rows).
    pub rows: u32,
    pub cols: u32,
    /// Values per quantization group (0 for the K-quants and floats).
    pub group: u32,
    /// Values per token in the output, and where this piece's rows start among them.
    pub out_stride: u32,
    pub row_offset: u32,
    /// RMSNorm epsilon of a fused norm.
    pub eps: f32,
    /// Rows from a gate row to its up row (GATED).
    pub up_offset: u32,
    /// `Activation::Softcap`'s cap.
    pub cap: f32,
    /// W·x (+ b) times this before the activation.
    pub scale: f32,
}

/// embed.wgsl's `Dims`, field for field: one piece of a table.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmbedDims {
    pub hidden: u32,
    /// The rows of the table this piece holds.
    pub first_row: u32,
    pub rows: u32,
    pub group: u32,
    /// The token table's factor (Gemma's, Granite's embedding scale).
    pub scale: f32,
}

/// glu.wgsl's `Dims`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GluDims {
    pub ffn: u32,
    pub cap: f32,
}

/// norm.wgsl's `Dims`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormDims {
    pub hidden: u32,
    pub eps: f32,
}

/// qk_norm.wgsl's `Dims`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct QkNormDims {
    pub q_dim: u32,
    pub kv_dim: u32,
    /// Values per token in the QKV product's output: q_dim + 2 kv_dim.
    pub row: u32,
    pub eps: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatvecKey {
    pub dtype: DType,
    /// Token-block size: 1 (decode) or `PREFILL_BLOCK`.
    pub block: u32,
    /// RMS-normalize the input on the fly.
    pub norm: bool,
    pub activation: Activation,
    /// Multiply by the product with the rows `up_offset` further (SwiGLU / GeGLU).
    pub gated: bool,
    /// Add into the output (residual connections).
    pub accumulate: bool,
    /// Add a bias per output row before the activation.
    pub bias: bool,
    /// The decode kernel's QKV epilogue: RoPE, queries to the output, keys and values to the
    /// cache (matvec.wgsl's `decode rope`; see [`Kernels::fuses_rope`]).
    pub rope: bool,
    /// With `rope`: the cache holds f16 pairs.
    pub kv_f16: bool,
}

pub struct Kernels {
    device: wgpu::Device,
    /// The barrier-free work splits (software adapters).
    pub software: bool,
    /// The decode kernel adds up its sums with subgroup operations (else in workgroup memory).
    subgroups: bool,
    /// Output rows per workgroup of the decode kernel.
    decode_rows: u32,
    /// Prompts' products on GPUs with the register-blocked kernel (else the tiled one).
    gemm: bool,
    /// `matvec.wgsl`'s modules per kernel and weight encoding (built on first use).
    matvec_modules: RefCell<HashMap<(MatvecModule, DType), wgpu::ShaderModule>>,
    embed_module: wgpu::ShaderModule,
    rope_module: wgpu::ShaderModule,
    attention_module: wgpu::ShaderModule,
    norm_module: wgpu::ShaderModule,
    glu_module: wgpu::ShaderModule,
    moe_module: wgpu::ShaderModule,
    qk_norm_module: wgpu::ShaderModule,
    matvec: RefCell<HashMap<MatvecKey, wgpu::ComputePipeline>>,
    /// Every other pipeline, by its module and label: entry point and the constants set.
    built: RefCell<HashMap<(wgpu::ShaderModule, String), wgpu::ComputePipeline>>,
    labels: RefCell<HashMap<wgpu::ComputePipeline, String>>,
}

impl Kernels {
    pub fn new(device: &wgpu::Device, software: bool) -> Self {
        Kernels {
            device: device.clone(),
            software,
            subgroups: device.features().contains(wgpu::Features::SUBGROUP),
            decode_rows: DECODE_ROWS,
            gemm: true,
            matvec_modules: RefCell::new(HashMap::new()),
            embed_module: with_prelude(device, "embed.wgsl", &[KQUANTS, EMBED]),
            rope_module: with_prelude(device, "rope.wgsl", &[ROTARY, ROPE]),
            attention_module: with_prelude(device, "attention.wgsl", &[ATTENTION]),
            norm_module: with_prelude(device, "norm.wgsl", &[NORM]),
            glu_module: with_prelude(device, "glu.wgsl", &[GLU]),
            moe_module: with_prelude(device, "moe.wgsl", &[MOE]),
            qk_norm_module: with_prelude(device, "qk_norm.wgsl", &[QK_NORM]),
            matvec: RefCell::new(HashMap::new()),
            built: RefCell::new(HashMap::new()),
            labels: RefCell::new(HashMap::new()),
        }
    }

    /// The pipeline of `entry` with `constants`, built once (every layer shares it).
    fn pipeline(&self, module: &wgpu::ShaderModule, entry: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        self.named_pipeline(module, entry, entry, constants)
    }

    /// [`Kernels::pipeline`] called `name` in profiles (matvec.wgsl's blocked modules, one per
    /// encoding, share entry point names).
    fn named_pipeline(
        &self,
        module: &wgpu::ShaderModule,
        entry: &str,
        name: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        // The module, the entry point and the constants identify it (matvec.wgsl's token-block
        // modules share entry point names); the name and the constants set name it in profiles
        // (`hearth bench --profile`).
        let set: Vec<String> = constants.iter().filter(|(_, v)| *v != 0.0).map(|(k, v)| format!("{k}={v}")).collect();
        let label = if set.is_empty() { name.to_string() } else { format!("{name} {}", set.join(" ")) };
        let mut built = self.built.borrow_mut();
        // Every constant in the key: one left at a non-zero default and one set to 0 share a label.
        let key = (module.clone(), format!("{entry} {constants:?}"));
        if let Some(pipeline) = built.get(&key) {
            return pipeline.clone();
        }
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        self.labels.borrow_mut().insert(pipeline.clone(), label);
        built.insert(key, pipeline.clone());
        pipeline
    }

    /// What each pipeline built here is called in profiles.
    pub fn labels(&self) -> HashMap<wgpu::ComputePipeline, String> {
        self.labels.borrow().clone()
    }

    /// These kernels with the decode products' sums added up with subgroup operations (`true`: the
    /// device must have been opened with `wgpu::Features::SUBGROUP`) or in workgroup memory
    /// (`false`, which tests use to check the fallback on adapters that offer subgroups). `new`
    /// takes subgroups wherever the device has them.
    pub fn with_subgroups(mut self, on: bool) -> Self {
        assert!(
            !on || self.device.features().contains(wgpu::Features::SUBGROUP),
            "subgroup operations asked of a device opened without them"
        );
        assert!(self.matvec_modules.borrow().is_empty(), "the reduction is chosen before any product pipeline exists");
        self.subgroups = on;
        self
    }

    /// These kernels with `rows` (1 to [`DECODE_ROWS_MAX`]) output rows per decode workgroup.
    pub fn with_decode_rows(mut self, rows: u32) -> Self {
        assert!((1..=DECODE_ROWS_MAX).contains(&rows), "{rows} rows per decode workgroup");
        assert!(self.matvec.borrow().is_empty(), "the rows are chosen before any product pipeline exists");
        self.decode_rows = rows;
        self
    }

    /// Whether a product of `block` tokens runs matvec.wgsl's decode kernel (GPUs, one token);
    /// else a blocked one.
    fn runs_decode_kernel(&self, block: u32) -> bool {
        !self.software && block == 1
    }

    /// Whether the product pipeline for `key` binds the step uniform (binding 1): the blocked
    /// kernels read the step's token count, the decode kernel has one token, and with its RoPE
    /// epilogue reads that token's position.
    pub fn matvec_binds_step(&self, key: &MatvecKey) -> bool {
        !self.runs_decode_kernel(key.block) || key.rope
    }

    /// Whether a decode step's QKV product can rotate and store its own queries, keys and values
    /// (matvec.wgsl's `decode rope`) for heads of `head_dim` with `n_pairs` rotated pairs: on GPUs
    /// whose decode workgroups hold whole pairs within one head (rows per workgroup a multiple of
    /// 4 dividing `head_dim` and `2 n_pairs`) where the adapter allows the bindings it takes. QK
    /// norms need a whole head per value and keep rope.wgsl's pass.
    pub fn fuses_rope(&self, head_dim: usize, n_pairs: usize, qk_norm: bool) -> bool {
        let rows = self.decode_rows as usize;
        !self.software
            && !qk_norm
            && rows % 4 == 0
            && head_dim % rows == 0
            && (2 * n_pairs) % rows == 0
            && self.device.limits().max_storage_buffers_per_shader_stage >= ROPE_EPILOGUE_STORAGE_BUFFERS
    }

    /// The matrix-product pipeline for `key` (built on first use, at load): on software adapters
    /// the row split, on GPUs the decode kernel for one token and the tiled split for token blocks.
    pub fn matvec(&self, key: MatvecKey) -> wgpu::ComputePipeline {
        if let Some(pipeline) = self.matvec.borrow().get(&key) {
            return pipeline.clone();
        }
        assert!(!key.rope || self.runs_decode_kernel(key.block), "RoPE is fused into the GPU decode kernel only");
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut constants = vec![
            ("NORM", flag(key.norm)),
            ("ACT", key.activation.code()),
            ("GATED", flag(key.gated)),
            ("ACCUMULATE", flag(key.accumulate)),
            ("BIAS", flag(key.bias)),
        ];
        let encoding = key.dtype.name();
        let (kernel, entry) = if self.runs_decode_kernel(key.block) {
            constants.push(("ROWS", f64::from(self.decode_rows)));
            if key.rope {
                constants.push(("KV_F16", flag(key.kv_f16)));
            }
            (MatvecModule::Decode { rope: key.rope }, format!("matvec_decode_{encoding}"))
        } else {
            (MatvecModule::Blocked(key.block), self.blocked_split().to_string())
        };
        let module = self
            .matvec_modules
            .borrow_mut()
            .entry((kernel, key.dtype))
            .or_insert_with(|| {
                let (label, source) = match kernel {
                    MatvecModule::Blocked(block) => {
                        (format!("matvec.wgsl ({encoding}, TB {block})"), matvec_blocked_source(block, key.dtype))
                    }
                    MatvecModule::Decode { rope } => {
                        let label = format!("matvec.wgsl (decode {encoding}{})", if rope { ", rope" } else { "" });
                        (label, matvec_decode_source(encoding, self.subgroups, rope))
                    }
                };
                with_prelude(&self.device, &label, &[&source])
            })
            .clone();
        let name = if entry.ends_with(encoding) { entry.clone() } else { format!("{entry}_{encoding}") };
        let pipeline = self.named_pipeline(&module, &entry, &name, &constants);
        self.matvec.borrow_mut().insert(key, pipeline.clone());
        pipeline
    }

    /// The (x, y) grid of a product of `block` tokens with `rows` output rows: a workgroup per
    /// `decode_rows` rows (decode kernel), per `GEMM_ROWS` rows (register-blocked split), per
    /// `TILED_ROWS` rows (tiled split) or per 64 rows (row split). The tokens go along z, [`Kernels::matvec_tokens`] per workgroup.
    pub fn matvec_grid(&self, block: u32, rows: u32) -> (u32, u32) {
        let per_workgroup = if self.software {
            WORKGROUP
        } else if self.runs_decode_kernel(block) {
            self.decode_rows
        } else if self.gemm {
            GEMM_ROWS
        } else {
            TILED_ROWS
        };
        grid_2d(rows.div_ceil(per_workgroup))
    }

    /// Tokens per workgroup of the product pipeline for `block` tokens.
    pub fn matvec_tokens(&self, block: u32) -> u32 {
        if self.software || block == 1 {
            block
        } else if self.gemm {
            GEMM_TOKENS
        } else {
            TILED_TOKENS
        }
    }

    /// The blocked module's entry point for token blocks: the row split on software adapters, on
    /// GPUs the register-blocked or the tiled split.
    fn blocked_split(&self) -> &'static str {
        match (self.software, self.gemm) {
            (true, _) => "matvec_rows",
            (false, true) => "matvec_gemm",
            (false, false) => "matvec_tiled",
        }
    }

    /// These kernels with prompts' products on GPUs in the register-blocked kernel (`true`, the
    /// default) or the tiled one, as `hearth bench --no-gemm` asks to compare them on a GPU.
    pub fn with_gemm(mut self, on: bool) -> Self {
        self.gemm = on;
        self
    }

    /// The embedding gather for a table in `dtype`, its rows chosen as `rows` says.
    pub fn embed(&self, dtype: DType, rows: EmbedRows) -> wgpu::ComputePipeline {
        let constants = [("ROWS", rows as u32 as f64)];
        self.pipeline(&self.embed_module, &format!("embed_{}", dtype.name()), &constants)
    }

    /// glu.wgsl: a gated MLP's `activation(gate) · up` as a pass of its own (gate and up of
    /// different encodings).
    pub fn glu(&self, activation: Activation) -> wgpu::ComputePipeline {
        self.pipeline(&self.glu_module, "glu", &[("ACT", activation.code())])
    }

    /// moe.wgsl's `entry` (`moe_route`, `moe_gather`, `moe_combine`): a mixture of experts around
    /// its experts' products.
    pub fn moe(&self, entry: &str) -> wgpu::ComputePipeline {
        self.pipeline(&self.moe_module, entry, &[])
    }

    /// qk_norm.wgsl: OLMoE's norm of each token's whole query and key, in place.
    pub fn qk_norm_whole(&self) -> wgpu::ComputePipeline {
        self.pipeline(&self.qk_norm_module, "qk_norm_whole", &[])
    }

    pub fn rope_store(&self, kv_f16: bool, qkv_bias: bool, qk_norm: bool) -> wgpu::ComputePipeline {
        let constants = [("KV_F16", flag(kv_f16)), ("QKV_BIAS", flag(qkv_bias)), ("QK_NORM", flag(qk_norm))];
        self.pipeline(&self.rope_module, "rope_store", &constants)
    }

    /// Whether attention over at most `visible` positions (the cache, or the window) with heads of
    /// `head_dim` runs one invocation per (head, token), the row split; else the split kernel.
    pub fn attention_uses_rows(&self, visible: usize, head_dim: usize) -> bool {
        self.software && visible * (head_dim / 2 + 2) <= ROWS_ATTENTION_MAX_ITERATIONS
    }

    /// attention.wgsl's row split (software adapters); with `spans`, each query over the span the
    /// step's token buffer gives it (an encoder's packed texts).
    pub fn attention_rows(&self, kv_f16: bool, spans: bool) -> wgpu::ComputePipeline {
        let constants = [("KV_F16", flag(kv_f16)), ("SPANS", flag(spans))];
        self.pipeline(&self.attention_module, "attention_rows", &constants)
    }

    /// attention.wgsl's split kernel for heads of `head_dim` dimensions: a share of the positions
    /// for every query head of a KV head (`spans` as for [`Kernels::attention_rows`]).
    pub fn attention_split(&self, kv_f16: bool, head_dim: u32, spans: bool) -> wgpu::ComputePipeline {
        let constants = [("KV_F16", flag(kv_f16)), ("HEAD_DIM", f64::from(head_dim)), ("SPANS", flag(spans))];
        self.pipeline(&self.attention_module, "attention_split", &constants)
    }

    /// attention.wgsl's combine pass: the split kernel's records merged, one workgroup per
    /// (token, query head).
    pub fn attention_combine(&self) -> wgpu::ComputePipeline {
        self.pipeline(&self.attention_module, "attention_combine", &[])
    }

    /// A norm.wgsl entry point: one invocation per token on software adapters (`name`), one
    /// workgroup per token on GPUs (`name_wide`).
    fn norm(&self, name: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        let entry = if self.software { name.to_string() } else { format!("{name}_wide") };
        self.pipeline(&self.norm_module, &entry, constants)
    }

    /// A stand-alone RMSNorm (software adapters; GPUs fuse the norm into the next product).
    pub fn rms_norm(&self) -> wgpu::ComputePipeline {
        self.norm("rms_norm", &[])
    }

    /// `out += rms_norm(x) * weight` (Gemma's post-attention and post-feed-forward norms, which
    /// fuse into no product: their input is a product's output).
    pub fn rms_norm_add(&self) -> wgpu::ComputePipeline {
        self.norm("rms_norm", &[("ADD", 1.0)])
    }

    /// LayerNorm with weight and bias (for GPT-2 / BLOOM style models).
    pub fn layer_norm(&self) -> wgpu::ComputePipeline {
        self.norm("layer_norm", &[])
    }
}

/// Workgroups of a norm pass over `n_tokens` tokens ([`Kernels::rms_norm`] and its kin): one
/// invocation per token on software adapters, one workgroup per token on GPUs.
pub fn norm_grid(software: bool, n_tokens: u32) -> (u32, u32, u32) {
    if software {
        (n_tokens.div_ceil(WORKGROUP), 1, 1)
    } else {
        (n_tokens, 1, 1)
    }
}

/// The section of `matvec.wgsl` called `name` (from the line after its mark to the next mark).
fn matvec_section(name: &str) -> &'static str {
    let mark = format!("\n{SECTION_MARK}{name}\n");
    let start = MATVEC.find(&mark).map(|i| i + mark.len()).unwrap_or_else(|| panic!("matvec.wgsl has no `{name}`"));
    let end = MATVEC[start..].find(&format!("\n{SECTION_MARK}")).map_or(MATVEC.len(), |i| start + i + 1);
    &MATVEC[start..end]
}

/// What every `matvec.wgsl` module shares: everything before the first section.
fn matvec_shared() -> &'static str {
    &MATVEC[..MATVEC.find(&format!("\n{SECTION_MARK}")).map_or(MATVEC.len(), |i| i + 1)]
}

/// A module of `matvec.wgsl`: the blocked kernels for a token-block size, or the decode kernel
/// (with the QKV product's RoPE epilogue or the plain one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MatvecModule {
    Blocked(u32),
    Decode { rope: bool },
}

/// `matvec.wgsl`'s blocked kernels for weights in `encoding` and token blocks of `block`.
fn matvec_blocked_source(block: u32, dtype: DType) -> String {
    let encoding = dtype.name();
    let k_quant = if dtype.is_k_quant() { matvec_section("blocked k") } else { "" };
    let blocked = [matvec_section("blocked"), k_quant, matvec_section(&format!("blocked {encoding}"))].concat();
    format!("const TB: u32 = {block}u;\n{KQUANTS}{}{blocked}", matvec_shared())
}

/// `matvec.wgsl`'s decode kernel for weights in `encoding`, its sums added up with subgroup
/// operations or in workgroup memory, its totals stored through the fusions or (`rope`) rotated
/// and stored as queries, keys and values.
fn matvec_decode_source(encoding: &str, subgroups: bool, rope: bool) -> String {
    let sums = if subgroups { "sums with subgroups" } else { "sums in workgroup memory" };
    let (rotary, epilogue) = if rope { (ROTARY, "decode rope") } else { ("", "decode store") };
    [
        rotary,
        KQUANTS,
        matvec_shared(),
        matvec_section("decode"),
        matvec_section(&format!("decode {encoding}")),
        matvec_section(sums),
        matvec_section(epilogue),
    ]
    .concat()
}

/// A uniform buffer holding `words` (padded to a multiple of 16 bytes, at least 32).
pub fn uniform(device: &wgpu::Device, label: &str, words: &[u32]) -> wgpu::Buffer {
    let mut data = words.to_vec();
    data.resize(data.len().max(8).next_multiple_of(4), 0);
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(&data),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    })
}

/// A uniform buffer holding `value`, a `#[repr(C)]` struct that mirrors its WGSL struct.
pub fn uniform_of<T: bytemuck::Pod>(device: &wgpu::Device, label: &str, value: &T) -> wgpu::Buffer {
    uniform(device, label, bytemuck::cast_slice(std::slice::from_ref(value)))
}

/// A zeroed f32/u32 storage buffer of `len` elements, or `AdapterLimitsError` naming it when the
/// device could not bind it whole (wgpu would report that as an error only once it is used).
pub fn storage(device: &wgpu::Device, label: &str, len: usize) -> Result<wgpu::Buffer> {
    let size = len.max(1) as u64 * 4;
    let max = storage_limit(device);
    if size > max {
        return Err(HearthError::AdapterLimit(format!(
            "the {label} buffer needs {size} bytes; this adapter binds at most {max} bytes at once"
        )));
    }
    Ok(device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    }))
}

/// The most bytes one storage buffer may hold and be bound whole on `device`.
pub fn storage_limit(device: &wgpu::Device) -> u64 {
    let limits = device.limits();
    limits.max_storage_buffer_binding_size.min(limits.max_buffer_size)
}

/// A storage buffer holding `values`.
pub fn storage_init<T: bytemuck::Pod>(device: &wgpu::Device, label: &str, values: &[T]) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(values),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

pub fn whole(buffer: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    buffer.as_entire_binding()
}

pub fn bind_group(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    entries: &[wgpu::BindGroupEntry<'_>],
) -> wgpu::BindGroup {
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries,
    })
}

pub fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// A 2-D grid of at least `groups` workgroups: (x, y) with x <= 65535 and x * y >= groups.
pub fn grid_2d(groups: u32) -> (u32, u32) {
    let x = groups.clamp(1, MAX_GRID);
    (x, groups.div_ceil(x))
}

/// Run one dispatch of `pipeline` and wait for it (tests and tools; the engine records its own).
pub fn dispatch_once(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    entries: &[wgpu::BindGroupEntry<'_>],
    grid: (u32, u32, u32),
) {
    let group = bind_group(&ctx.device, pipeline, entries);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, grid.2);
    }
    ctx.queue.submit([encoder.finish()]);
}

/// Copy `buffer` (its first `len` f32 or u32 values) back to the CPU.
pub async fn read_back_async<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<T>> {
    let size = (len * std::mem::size_of::<T>()) as u64;
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read back"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    ctx.queue.submit([encoder.finish()]);
    map_read_async(ctx, &staging).await
}

/// Map a MAP_READ buffer and copy its contents out. Natively the map completes inside
/// `device.poll`; in a browser the poll returns at once and the future resolves when WebGPU calls
/// back, so the same code serves both (the browser must not block).
pub async fn map_read_async<T: bytemuck::Pod>(ctx: &GpuContext, staging: &wgpu::Buffer) -> Result<Vec<T>> {
    let slice = staging.slice(..);
    let (tx, rx) = futures_channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| HearthError::Gpu(format!("waiting for the GPU failed: {e}")))?;
    rx.await
        .map_err(|_| HearthError::Gpu("the GPU never answered a read".into()))?
        .map_err(|e| HearthError::Gpu(format!("cannot read a GPU buffer: {e}")))?;
    let out = {
        let view = slice.get_mapped_range().map_err(|e| HearthError::Gpu(format!("cannot map a GPU buffer: {e}")))?;
        bytemuck::pod_collect_to_vec(&view)
    };
    staging.unmap();
    // Whatever the device reported while this work ran (a validation or out-of-memory error).
    ctx.errors.check()?;
    Ok(out)
}

/// [`read_back_async`], waited for (native only: a browser cannot block).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_back<T: bytemuck::Pod>(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<T>> {
    pollster::block_on(read_back_async(ctx, buffer, offset, len))
}

/// [`map_read_async`], waited for (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn map_read<T: bytemuck::Pod>(ctx: &GpuContext, staging: &wgpu::Buffer) -> Result<Vec<T>> {
    pollster::block_on(map_read_async(ctx, staging))
}
