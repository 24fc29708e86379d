//! What `GpuEngine::prepare` assembles a forward pass from: prepared dispatches, the fusions a
//! matrix product can take, and the `Builder` that creates a model's buffers, pipelines and bind
//! groups from its manifest (weights planned, to be filled as their bytes arrive).

use std::collections::HashMap;

use hearth_core::cpu::rope_inv_freq;
use hearth_core::manifest::{Manifest, ModelConfig, NormKind, RopeConfig};
use hearth_core::{HearthError, Result};

use crate::context::GpuContext;
use crate::kernels::{
    bind_group, entry, norm_grid, storage, storage_init, uniform_of, whole, Activation, EmbedDims, EmbedRows, GluDims,
    Kernels, MatvecKey, NormDims, ProductDims, PREFILL_BLOCK, WORKGROUP,
};
use crate::weights::{create_vector, StoredMatrix, WeightBuffer, WeightUploads};

/// The step uniform every kernel that needs it reads (the WGSL `Step`): the first token's position
/// and how many tokens the step runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    pub start: u32,
    pub n_tokens: u32,
}

/// A gated MLP's gate and up weights: stacked for the fused product (matvec.wgsl's `GATED`), or,
/// of different encodings, pieces of one plain product into [gate | up] (`Builder::glu_pass`
/// then activates).
pub enum GatedWeights {
    Fused(Vec<WeightBuffer>),
    Separate(Vec<WeightBuffer>),
}

/// A prepared dispatch's grid for a step, or `None` where the step needs no such launch (the RoPE
/// pass of a decode step whose QKV product stores the rotated keys itself; attention's combine
/// pass when one split covers every position).
pub type Grid = Box<dyn Fn(Step) -> Option<(u32, u32, u32)>>;

/// One kernel launch, prepared at load. Matrix products have a decode pipeline (one token) and a
/// prefill pipeline (token blocks); other kernels use the same pipeline for both.
pub struct Dispatch {
    pub decode: (wgpu::ComputePipeline, wgpu::BindGroup),
    pub prefill: (wgpu::ComputePipeline, wgpu::BindGroup),
    pub grid: Grid,
    /// Where the GPU wrote this launch's grid (an expert's products: moe.wgsl's `moe_route` gives
    /// an expert no token chose no workgroups); `grid` then only says whether the step records it.
    pub indirect: Option<(wgpu::Buffer, u64)>,
}

impl Dispatch {
    pub fn single(pipeline: wgpu::ComputePipeline, bind_group: wgpu::BindGroup, grid: Grid) -> Self {
        Dispatch {
            decode: (pipeline.clone(), bind_group.clone()),
            prefill: (pipeline, bind_group),
            grid,
            indirect: None,
        }
    }

    /// The pipeline a step of `n` tokens runs.
    pub fn pipeline(&self, n: u32) -> &wgpu::ComputePipeline {
        if n == 1 {
            &self.decode.0
        } else {
            &self.prefill.0
        }
    }

    /// Whether `step` runs this launch.
    pub fn runs(&self, step: Step) -> bool {
        (self.grid)(step).is_some()
    }

    /// Record this launch for `step`, where the step runs it.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, step: Step) {
        let n = step.n_tokens;
        let (pipeline, group) = if n == 1 { &self.decode } else { &self.prefill };
        if let Some((gx, gy, gz)) = (self.grid)(step) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            match &self.indirect {
                Some((buffer, offset)) => pass.dispatch_workgroups_indirect(buffer, *offset),
                None => pass.dispatch_workgroups(gx, gy, gz),
            }
        }
    }
}

/// Record `dispatches` for `step` in one pass and submit them (tests and tools; the engine records
/// whole steps).
pub fn run_dispatches(ctx: &GpuContext, dispatches: &[Dispatch], step: Step) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for d in dispatches {
            d.record(&mut pass, step);
        }
    }
    ctx.queue.submit([encoder.finish()]);
}

/// rope.wgsl's `Dims` and matvec.wgsl's `Rope`, field for field: how queries and keys rotate and
/// where keys and values go.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RopeDims {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Rotated pairs per head (the rope dim / 2; 0 without RoPE); dimensions past them pass through.
    pub n_pairs: u32,
    /// 0: pairs (2i, 2i + 1); 1: pairs (i, i + n_pairs) ("neox").
    pub neox: u32,
    pub cache_rows: u32,
    /// RMSNorm epsilon of rope.wgsl's QK_NORM.
    pub eps: f32,
    /// What rotated values are multiplied by: YaRN's magnitude correction, 1 otherwise.
    pub magnitude: f32,
}

impl RopeDims {
    /// `c`'s heads, `n_pairs` rotated pairs per head (NeoX's pairing or not), a cache of
    /// `cache_rows` rows.
    pub fn new(c: &ModelConfig, n_pairs: usize, neox: bool, cache_rows: usize, magnitude: f32) -> Self {
        RopeDims {
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            n_pairs: n_pairs as u32,
            neox: u32::from(neox),
            cache_rows: cache_rows as u32,
            eps: c.norm_eps,
            magnitude,
        }
    }
}

/// Where a decode step's QKV product puts what rope.wgsl would otherwise: its epilogue rotates
/// queries and keys, writes the queries to `q` and keys and values to the cache (matvec.wgsl's
/// `decode rope`; prompts still write the product and run the pass).
#[derive(Clone, Copy)]
pub struct RopeStore<'a> {
    /// A [`RopeDims`] uniform.
    pub dims: &'a wgpu::Buffer,
    pub inv_freq: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub kv_f16: bool,
    /// The Q/K/V biases as a row of the product (Qwen2), added before the rotation; prompts add
    /// them in rope.wgsl, so the product's own `Fuse::bias` stays unset.
    pub bias: Option<&'a wgpu::Buffer>,
}

/// A norm's weight, and its bias for LayerNorm.
pub struct NormBuffers {
    pub weight: wgpu::Buffer,
    pub bias: Option<wgpu::Buffer>,
}

impl NormBuffers {
    /// Its weight, and its bias for LayerNorm.
    pub fn buffers(self) -> impl Iterator<Item = wgpu::Buffer> {
        [self.weight].into_iter().chain(self.bias)
    }
}

/// What a matrix product fuses in.
#[derive(Clone, Copy, Default)]
pub struct Fuse<'a> {
    /// Normalize the input first: fused into the product for RMSNorm on GPUs, a pass of its own
    /// for LayerNorm and on software adapters.
    pub norm: Option<&'a NormBuffers>,
    /// Add this bias (one value per output row) before the activation.
    pub bias: Option<&'a wgpu::Buffer>,
    pub activation: Activation,
    /// The cap of `Activation::Softcap`.
    pub cap: f32,
    /// The fused value's factor (matvec.wgsl's `dims.scale`; 1 when None): Granite's residual
    /// multiplier, the reciprocal of its logits' divisor.
    pub scale: Option<f32>,
    pub gated: bool,
    pub accumulate: bool,
    /// For one token on GPUs, RoPE and the KV-cache store in the product's epilogue (the matrix
    /// must be one piece whose rows are a token's [q | k | v]: see `Kernels::fuses_rope`).
    pub rope: Option<&'a RopeStore<'a>>,
}

/// Where a product binds its input, output and step uniform, in bytes from each buffer's start (an
/// expert's slices of the packed buffers and its own step uniform); all 0 for whole buffers.
#[derive(Clone, Copy, Default)]
pub struct Offsets {
    pub input: u64,
    pub output: u64,
    pub step: u64,
}

/// The product `output[t] (+)= W · input[t]` of a matrix uploaded in row pieces.
pub struct Product<'a> {
    pub pieces: &'a [WeightBuffer],
    pub input: &'a wgpu::Buffer,
    pub output: &'a wgpu::Buffer,
    /// Values per token in `output`.
    pub out_stride: u32,
    /// Step uniform: how many tokens (the head of the last token uses a constant one).
    pub step: &'a wgpu::Buffer,
    pub fuse: Fuse<'a>,
}

/// Everything `GpuEngine::prepare` builds, in one place while it builds it.
pub struct Builder<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: Kernels,
    pub manifest: &'a Manifest,
    pub origin: &'a str,
    /// Manifest index of each tensor, by name.
    pub index: HashMap<&'a str, usize>,
    /// The weight buffers' plan: filled later, as the bytes arrive.
    pub uploads: WeightUploads,
    /// RMSNorm epsilon of the fused norms.
    pub eps: f32,
    /// Where software adapters put a normalized input (they run the norm as its own pass).
    pub normed: wgpu::Buffer,
    /// Bound as the norm weight of products that fuse no norm (every variant declares the
    /// binding); one vec4.
    pub no_norm: wgpu::Buffer,
    pub scratch: Vec<wgpu::Buffer>,
}

impl<'a> Builder<'a> {
    /// A builder for `manifest`'s model whose steps take at most `chunk` tokens.
    pub fn new(
        ctx: &'a GpuContext,
        kernels: Kernels,
        manifest: &'a Manifest,
        origin: &'a str,
        chunk: usize,
    ) -> Result<Self> {
        let c = &manifest.config;
        Ok(Builder {
            ctx,
            kernels,
            manifest,
            origin,
            index: manifest.tensors.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect(),
            uploads: WeightUploads::default(),
            eps: c.norm_eps,
            normed: storage(&ctx.device, "normed", chunk * c.hidden_size)?,
            no_norm: storage(&ctx.device, "no norm", 4)?,
            scratch: Vec::new(),
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.ctx.device
    }

    pub fn tensor_index(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| HearthError::bad_package(self.origin, format!("missing tensor `{name}`")))
    }

    pub fn matrix(&self, name: &str) -> Result<StoredMatrix> {
        let i = self.tensor_index(name)?;
        StoredMatrix::from_entry(i, &self.manifest.tensors[i])
    }

    pub fn vector(&mut self, name: &str) -> Result<wgpu::Buffer> {
        let i = self.tensor_index(name)?;
        create_vector(self.ctx, &mut self.uploads, i, &self.manifest.tensors[i])
    }

    /// The norm `{prefix}.weight` (and `{prefix}.bias` for LayerNorm).
    pub fn norm(&mut self, prefix: &str) -> Result<NormBuffers> {
        let weight = self.vector(&format!("{prefix}.weight"))?;
        let bias = match self.manifest.config.norm {
            NormKind::Rms => None,
            NormKind::Layer => Some(self.vector(&format!("{prefix}.bias"))?),
        };
        Ok(NormBuffers { weight, bias })
    }

    /// Vectors `names` one after another in one buffer of `len` values (layer `l`'s Q, K and V
    /// biases laid out as a row of the QKV product; its query and key norm weights).
    pub fn vectors(&mut self, label: &str, names: &[String], len: usize) -> Result<wgpu::Buffer> {
        let manifest = self.manifest;
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            let i = self.tensor_index(name)?;
            parts.push((i, &manifest.tensors[i]));
        }
        let n: usize = parts.iter().map(|(_, e)| e.shape.iter().product::<usize>()).sum();
        if n != len {
            return Err(HearthError::bad_package(self.origin, format!("{names:?} hold {n} values, not {len}")));
        }
        let buffer = storage(self.device(), label, n)?;
        self.uploads.plan_vectors(label, buffer.clone(), &parts, |v| v)?;
        Ok(buffer)
    }

    /// A matrix in pieces that fit a binding.
    pub fn split(&mut self, name: &str) -> Result<Vec<WeightBuffer>> {
        let m = self.matrix(name)?;
        WeightBuffer::create_split(self.ctx, &mut self.uploads, &m)
    }

    /// Matrices stacked by rows into one (Q/K/V), in pieces that fit a binding. Matrices of
    /// different encodings (a K-quant GGUF's Q4_K queries beside Q6_K values) become pieces of
    /// their own, each at its rows' place in the product's output.
    pub fn stacked(&mut self, label: &str, names: &[String]) -> Result<Vec<WeightBuffer>> {
        let parts = names.iter().map(|n| self.matrix(n)).collect::<Result<Vec<_>>>()?;
        if let Some(stacked) = StoredMatrix::stack(label, &parts.iter().collect::<Vec<_>>()) {
            return WeightBuffer::create_split(self.ctx, &mut self.uploads, &stacked);
        }
        if parts.iter().any(|m| m.cols != parts[0].cols) {
            return Err(HearthError::bad_package(self.origin, format!("{names:?} differ in row length")));
        }
        let mut pieces = Vec::new();
        let mut first_row = 0;
        for m in &parts {
            for mut piece in WeightBuffer::create_split(self.ctx, &mut self.uploads, m)? {
                piece.first_row += first_row;
                pieces.push(piece);
            }
            first_row += m.rows as u32;
        }
        Ok(pieces)
    }

    /// Gate and up stacked piece by piece: each piece holds gate rows r0..r1 then up rows r0..r1,
    /// so a gated product finds a gate row's partner `rows` further within the same binding. Gate
    /// and up of different encodings (a GGUF may keep them as different block types) cannot share
    /// a binding: they become pieces of one product into [gate | up], and `glu_pass` activates.
    pub fn gated(&mut self, gate: &str, up: &str) -> Result<GatedWeights> {
        let names = [gate.to_string(), up.to_string()];
        let (gate, up) = (self.matrix(gate)?, self.matrix(up)?);
        if gate.rows != up.rows {
            return Err(HearthError::bad_package(self.origin, format!("{names:?} differ in rows")));
        }
        if StoredMatrix::stack("gate + up", &[&gate, &up]).is_none() {
            return Ok(GatedWeights::Separate(self.stacked("gate | up", &names)?));
        }
        let half_limit = self.ctx.limits.max_storage_buffer_binding_size / 2;
        let pieces = gate
            .row_ranges(half_limit)?
            .into_iter()
            .map(|range| {
                let (g, u) = (gate.rows_range(range.clone()), up.rows_range(range.clone()));
                let pair = StoredMatrix::stack(&format!("{} + up", g.name), &[&g, &u]).ok_or_else(|| {
                    HearthError::bad_package(self.origin, "gate and up differ in encoding or row length")
                })?;
                WeightBuffer::create(self.ctx, &mut self.uploads, &pair, range.start)
            })
            .collect::<Result<_>>()?;
        Ok(GatedWeights::Fused(pieces))
    }

    /// An embedding gather (embed.wgsl) of one piece of a table into `output`, its rows chosen as
    /// `rows` says (the token table's scaled by the model's embedding scale, the others added).
    pub fn gather(
        &mut self,
        piece: &WeightBuffer,
        rows: EmbedRows,
        tokens: &wgpu::Buffer,
        output: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Dispatch {
        let h = self.manifest.config.hidden_size as u32;
        let scale = self.manifest.config.embedding_scale.unwrap_or(1.0);
        let dims = uniform_of(
            self.device(),
            "embed dims",
            &EmbedDims { hidden: h, first_row: piece.first_row, rows: piece.rows, group: piece.group, scale },
        );
        let pipeline = self.kernels.embed(piece.dtype, rows);
        let mut entries =
            vec![entry(0, whole(&dims)), entry(1, whole(tokens)), entry(2, whole(output)), entry(6, whole(step))];
        entries.extend(piece.weight_entries(3));
        let group = bind_group(self.device(), &pipeline, &entries);
        self.scratch.push(dims);
        Dispatch::single(pipeline, group, Box::new(move |s: Step| Some((h.div_ceil(WORKGROUP), s.n_tokens, 1))))
    }

    /// `output[t] = activation(gate_up[t][..ffn]) · gate_up[t][ffn..]` (glu.wgsl), for
    /// [`GatedWeights::Separate`].
    pub fn glu_pass(
        &mut self,
        gate_up: &wgpu::Buffer,
        output: &wgpu::Buffer,
        activation: Activation,
        step: &wgpu::Buffer,
    ) -> Dispatch {
        let pipeline = self.kernels.glu(activation);
        let ffn = self.manifest.config.ffn_size as u32;
        let dims = uniform_of(self.device(), "glu dims", &GluDims { ffn, cap: 0.0 });
        let entries =
            [entry(0, whole(&dims)), entry(1, whole(step)), entry(2, whole(gate_up)), entry(3, whole(output))];
        let group = bind_group(self.device(), &pipeline, &entries);
        self.scratch.push(dims);
        Dispatch::single(pipeline, group, Box::new(move |s: Step| Some((ffn.div_ceil(WORKGROUP), s.n_tokens, 1))))
    }

    /// The RoPE frequencies; with a `rope_freqs.weight` tensor they wait for its bytes. The
    /// sliding-window layers' own (`local_base`, unscaled) are [`Builder::local_rope_frequencies`].
    /// Without RoPE, one unused value. `capacity`: the positions the engine holds (LongRoPE's
    /// factors depend on it).
    pub fn rope_frequencies(&mut self, rope: Option<&RopeConfig>, capacity: usize) -> Result<wgpu::Buffer> {
        let Some(rope) = rope else {
            return storage(self.device(), "no rope frequencies", 1);
        };
        let Some(&i) = self.index.get("rope_freqs.weight") else {
            let values = rope_inv_freq(rope.base, rope.dim, rope.scaling.as_ref(), None, capacity);
            return Ok(storage_init(self.device(), "rope frequencies", &values));
        };
        let buffer = storage(self.device(), "rope frequencies", rope.dim / 2)?;
        let rope = rope.clone();
        self.uploads.plan_vector(buffer.clone(), i, &self.manifest.tensors[i], move |factors| {
            rope_inv_freq(rope.base, rope.dim, rope.scaling.as_ref(), Some(&factors), capacity)
        })?;
        Ok(buffer)
    }

    pub fn local_rope_frequencies(&mut self, rope: Option<&RopeConfig>) -> Option<wgpu::Buffer> {
        let rope = rope?;
        // Unscaled: no choice depends on the context.
        let values = rope_inv_freq(rope.local_base?, rope.dim, None, None, 0);
        Some(storage_init(self.device(), "local rope frequencies", &values))
    }

    /// Dispatches of one product: one per weight piece, each with a decode and a prefill pipeline
    /// (plus, for LayerNorm and on software adapters, the norm as a pass of its own).
    pub fn product(&mut self, p: Product<'_>) -> Result<Vec<Dispatch>> {
        self.product_at(p, Offsets::default())
    }

    /// [`Builder::product`] with its buffers bound from `at`.
    pub fn product_at(&mut self, p: Product<'_>, at: Offsets) -> Result<Vec<Dispatch>> {
        let mut out = Vec::new();
        let cols = p.pieces.first().map_or(0, |w| w.cols);
        if cols % 4 != 0 {
            return Err(HearthError::bad_package(
                self.origin,
                format!("matrix rows of {cols} values: the GPU engine needs a multiple of 4"),
            ));
        }
        if p.fuse.rope.is_some() && p.pieces.len() != 1 {
            return Err(HearthError::AdapterLimit("a QKV product in pieces cannot store its own keys".into()));
        }
        // A norm pass writes the whole of `normed` from the input's start.
        if p.fuse.norm.is_some() && at.input != 0 {
            return Err(HearthError::Gpu("a product that norms its input reads it from its start".into()));
        }
        let (input, norm) = match p.fuse.norm {
            Some(n) if self.kernels.software || n.bias.is_some() => {
                let normed = self.normed.clone();
                out.push(self.norm_pass(p.input, n, p.step, &normed));
                (normed, None)
            }
            Some(n) => (p.input.clone(), Some(&n.weight)),
            None => (p.input.clone(), None),
        };
        for piece in p.pieces {
            let rows = if p.fuse.gated { piece.rows / 2 } else { piece.rows };
            let (dx, dy) = self.kernels.matvec_grid(1, rows);
            let (px, py) = self.kernels.matvec_grid(PREFILL_BLOCK, rows);
            let prefill_tokens = self.kernels.matvec_tokens(PREFILL_BLOCK);
            let dims = uniform_of(
                self.device(),
                "matvec dims",
                &ProductDims {
                    rows,
                    cols: piece.cols,
                    group: piece.group,
                    out_stride: p.out_stride,
                    row_offset: piece.first_row,
                    eps: self.eps,
                    up_offset: rows,
                    cap: p.fuse.cap,
                    scale: p.fuse.scale.unwrap_or(1.0),
                },
            );
            let bound = |block: u32| {
                let rope = p.fuse.rope.filter(|_| block == 1);
                let bias = rope.map_or(p.fuse.bias, |r| r.bias);
                let key = MatvecKey {
                    dtype: piece.dtype,
                    block,
                    norm: norm.is_some(),
                    activation: p.fuse.activation,
                    gated: p.fuse.gated,
                    accumulate: p.fuse.accumulate,
                    bias: bias.is_some(),
                    rope: rope.is_some(),
                    kv_f16: rope.is_some_and(|r| r.kv_f16),
                };
                let pipeline = self.kernels.matvec(key);
                let from =
                    |buffer, offset| wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset, size: None });
                let mut entries = vec![
                    entry(0, whole(&dims)),
                    entry(2, from(&input, at.input)),
                    entry(3, rope.map_or(from(p.output, at.output), |r| whole(r.q))),
                    entry(7, whole(norm.unwrap_or(&self.no_norm))),
                    entry(8, whole(bias.unwrap_or(&self.no_norm))),
                ];
                if self.kernels.matvec_binds_step(&key) {
                    // The Step struct's 8 bytes (a uniform binding of the rest could pass the
                    // adapter's uniform binding limit).
                    let size = std::num::NonZeroU64::new(8);
                    let binding = wgpu::BufferBinding { buffer: p.step, offset: at.step, size };
                    entries.push(entry(1, wgpu::BindingResource::Buffer(binding)));
                }
                if let Some(r) = rope {
                    entries.extend([
                        entry(9, whole(r.dims)),
                        entry(10, whole(r.inv_freq)),
                        entry(11, whole(r.k_cache)),
                        entry(12, whole(r.v_cache)),
                    ]);
                }
                entries.extend(piece.weight_entries(4));
                let group = bind_group(self.device(), &pipeline, &entries);
                (pipeline, group)
            };
            let decode = bound(1);
            let prefill = bound(PREFILL_BLOCK);
            self.scratch.push(dims);
            out.push(Dispatch {
                decode,
                prefill,
                grid: Box::new(move |s: Step| {
                    let n = s.n_tokens;
                    Some(if n == 1 { (dx, dy, 1) } else { (px, py, n.div_ceil(prefill_tokens)) })
                }),
                indirect: None,
            });
        }
        Ok(out)
    }

    /// `output += rms_norm(input) * weight`, as its own pass.
    pub fn norm_add_pass(
        &mut self,
        input: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        output: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Dispatch {
        let pipeline = self.kernels.rms_norm_add();
        self.norm_dispatch(pipeline, input, weight, None, step, output)
    }

    /// The norm (RMSNorm, or LayerNorm with its bias) of `input` into `output`, as its own pass.
    pub fn norm_pass(
        &mut self,
        input: &wgpu::Buffer,
        norm: &NormBuffers,
        step: &wgpu::Buffer,
        output: &wgpu::Buffer,
    ) -> Dispatch {
        let pipeline = if norm.bias.is_some() { self.kernels.layer_norm() } else { self.kernels.rms_norm() };
        self.norm_dispatch(pipeline, input, &norm.weight, norm.bias.as_ref(), step, output)
    }

    /// A norm.wgsl entry point over the step's tokens.
    fn norm_dispatch(
        &mut self,
        pipeline: wgpu::ComputePipeline,
        input: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        step: &wgpu::Buffer,
        output: &wgpu::Buffer,
    ) -> Dispatch {
        let hidden = self.manifest.config.hidden_size as u32;
        let dims = uniform_of(self.device(), "norm dims", &NormDims { hidden, eps: self.eps });
        let mut entries = vec![
            entry(0, whole(&dims)),
            entry(1, whole(step)),
            entry(2, whole(input)),
            entry(3, whole(weight)),
            entry(4, whole(output)),
        ];
        entries.extend(bias.map(|b| entry(5, whole(b))));
        let group = bind_group(self.device(), &pipeline, &entries);
        self.scratch.push(dims);
        let software = self.kernels.software;
        Dispatch::single(pipeline, group, Box::new(move |s: Step| Some(norm_grid(software, s.n_tokens))))
    }
}
