//! The forward pass of a Llama-family model on the GPU. Everything is prepared at load: weights
//! uploaded once, every activation and KV-cache buffer allocated once, every bind group built once,
//! so a step only writes two small buffers (the step's position and its tokens), records the
//! prepared dispatches into one command encoder, and submits once.

use hearth_core::cpu::rope_inv_freq;
use hearth_core::generate::Backend;
use hearth_core::manifest::{ModelConfig, NormKind, PositionKind, RopeStyle};
use hearth_core::package::Package;
use hearth_core::quant::Tensor;
use hearth_core::{HearthError, Result};

use crate::context::GpuContext;
use crate::kernels::{
    bind_group, dtype_index, entry, map_read, matvec_grid, read_back, storage, uniform, whole, Kernels, WeightBuffer,
    MAX_GRID, WORKGROUP,
};

/// Most tokens one forward pass takes; longer prompts are run in chunks of this many.
pub const MAX_CHUNK: usize = 64;

/// How a prepared dispatch scales with the step's token count.
type Grid = Box<dyn Fn(u32) -> (u32, u32, u32)>;

struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: Grid,
}

struct Buffers {
    step: wgpu::Buffer,
    tokens: wgpu::Buffer,
    x: wgpu::Buffer,
    last: wgpu::Buffer,
    logits: wgpu::Buffer,
    logits_all: wgpu::Buffer,
    argmax: wgpu::Buffer,
    argmax_staging: wgpu::Buffer,
}

pub struct GpuEngine {
    ctx: GpuContext,
    config: ModelConfig,
    /// Positions the KV cache holds.
    capacity: usize,
    position: usize,
    buffers: Buffers,
    /// The layers, in order, for any number of tokens.
    layers: Vec<Dispatch>,
    /// Final norm + output head + argmax for the last token only.
    head_last: Vec<Dispatch>,
    /// Final norm + output head for every token (logits of every position, for tests).
    head_all: Vec<Dispatch>,
    // Kept alive: bind groups reference them.
    _weights: Vec<WeightBuffer>,
    _scratch: Vec<wgpu::Buffer>,
}

fn elementwise_grid(per_token: u32) -> Grid {
    Box::new(move |n| {
        let groups = (per_token * n).div_ceil(WORKGROUP);
        (groups.min(MAX_GRID), groups.div_ceil(MAX_GRID), 1)
    })
}

impl GpuEngine {
    /// Upload the package's weights and prepare every dispatch. `max_context` caps the KV cache
    /// (it defaults to the model's context length).
    pub fn new(ctx: GpuContext, package: &Package, max_context: Option<usize>) -> Result<Self> {
        let m = &package.manifest;
        let c = m.config.clone();
        if m.architecture != "llama" || c.position != PositionKind::Rope || c.norm != NormKind::Rms {
            return Err(HearthError::UnsupportedArchitecture(m.architecture.clone()));
        }
        let capacity = max_context.unwrap_or(c.context_length).min(c.context_length);
        let device = ctx.device.clone();
        let kernels = Kernels::new(&device, ctx.software);

        // Weights, in manifest order, one tensor at a time (never the whole model in memory).
        let mut weights: Vec<WeightBuffer> = Vec::with_capacity(m.tensors.len());
        let mut index = std::collections::HashMap::new();
        for e in &m.tensors {
            let bytes = package.read_tensor_bytes(e)?;
            index.insert(e.name.clone(), weights.len());
            weights.push(WeightBuffer::upload(&ctx, e, &bytes)?);
        }
        let w = |name: &str| -> Result<&WeightBuffer> {
            index
                .get(name)
                .map(|&i| &weights[i])
                .ok_or_else(|| HearthError::bad_package(package.dir.display(), format!("missing tensor `{name}`")))
        };

        let (h, qd, kvd, f, v) =
            (c.hidden_size as u32, c.q_dim() as u32, c.kv_dim() as u32, c.ffn_size as u32, c.vocab_size as u32);
        let chunk = MAX_CHUNK;
        let act = |label: &str, per_token: u32| storage(&device, label, chunk * per_token as usize);
        let step = uniform(&device, "step", &[0, 0]);
        let tokens = storage(&device, "tokens", chunk);
        let x = act("x", h);
        let xn = act("x normed", h);
        let q = act("q", qd);
        let k = act("k", kvd);
        let vv = act("v", kvd);
        let attn = act("attention out", qd);
        let gate = act("gate", f);
        let up = act("up", f);
        let proj = act("projection", h);
        let scores = storage(&device, "attention scores", chunk * c.n_heads * capacity);
        let last = storage(&device, "last hidden", c.hidden_size);
        let last_norm = storage(&device, "last normed", c.hidden_size);
        let logits = storage(&device, "logits", c.vocab_size);
        let logits_all = storage(&device, "logits, every token", chunk * c.vocab_size);
        let argmax = storage(&device, "argmax", 1);
        let argmax_staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("argmax read back"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let rope =
            c.rope.as_ref().ok_or_else(|| HearthError::bad_package("model", "RoPE model without rope settings"))?;
        // Per-pair frequency divisors, when the checkpoint has them (read alone, not with the model).
        let freq_factors = match m.tensors.iter().find(|e| e.name == "rope_freqs.weight") {
            Some(e) => {
                let bytes = package.read_tensor_bytes(e)?;
                Some(Tensor::from_bytes(&e.name, e.shape.clone(), e.dtype, e.group_size, &bytes)?.to_f32())
            }
            None => None,
        };
        let inv_freq_values = rope_inv_freq(rope.base, rope.dim, rope.scaling.as_ref(), freq_factors.as_deref());
        let inv_freq = storage(&device, "rope frequencies", inv_freq_values.len());
        ctx.queue.write_buffer(&inv_freq, 0, bytemuck::cast_slice(&inv_freq_values));

        let mut scratch = Vec::new();
        let matvec =
            |wt: &WeightBuffer, input: &wgpu::Buffer, output: &wgpu::Buffer, scratch: &mut Vec<wgpu::Buffer>| {
                let (gx, gy) = matvec_grid(wt.rows(), kernels.matvec_rows_per_workgroup);
                let dims = uniform(&device, "matvec dims", &[wt.rows(), wt.cols(), wt.group, gx]);
                let pipeline = kernels.matvec[dtype_index(wt.dtype)].clone();
                let mut entries = vec![entry(0, whole(&dims)), entry(2, whole(input)), entry(3, whole(output))];
                entries.extend(wt.weight_entries(4));
                let bind_group = bind_group(&device, &pipeline, &entries);
                scratch.push(dims);
                Dispatch { pipeline, bind_group, grid: Box::new(move |n| (gx, gy, n)) }
            };
        let rms =
            |weight: &WeightBuffer, input: &wgpu::Buffer, output: &wgpu::Buffer, scratch: &mut Vec<wgpu::Buffer>| {
                let dims = uniform(&device, "norm dims", &[h, c.norm_eps.to_bits()]);
                let pipeline = kernels.rms_norm.clone();
                let bind_group = bind_group(
                    &device,
                    &pipeline,
                    &[
                        entry(0, whole(&dims)),
                        entry(1, whole(input)),
                        entry(2, weight.part("data")),
                        entry(3, whole(output)),
                    ],
                );
                scratch.push(dims);
                Dispatch { pipeline, bind_group, grid: Box::new(|n| (n, 1, 1)) }
            };
        let elementwise = |pipeline: &wgpu::ComputePipeline,
                           a: &wgpu::Buffer,
                           b: &wgpu::Buffer,
                           per_token: u32,
                           row: u32,
                           scratch: &mut Vec<wgpu::Buffer>| {
            let dims = uniform(&device, "elementwise dims", &[per_token * chunk as u32, row]);
            let pipeline = pipeline.clone();
            let mut entries = vec![entry(0, whole(&dims)), entry(1, whole(a)), entry(2, whole(b))];
            if row > 0 {
                entries.push(entry(3, whole(&step)));
            }
            let bind_group = bind_group(&device, &pipeline, &entries);
            scratch.push(dims);
            Dispatch { pipeline, bind_group, grid: elementwise_grid(per_token) }
        };
        let rope_dispatch = |buf: &wgpu::Buffer, heads: u32, scratch: &mut Vec<wgpu::Buffer>| {
            let n_pairs = (rope.dim / 2) as u32;
            let neox = u32::from(rope.style == RopeStyle::Neox);
            let dims = uniform(&device, "rope dims", &[heads, c.head_dim as u32, n_pairs, neox]);
            let pipeline = kernels.rope.clone();
            let bind_group = bind_group(
                &device,
                &pipeline,
                &[entry(0, whole(&dims)), entry(1, whole(&step)), entry(2, whole(&inv_freq)), entry(3, whole(buf))],
            );
            scratch.push(dims);
            Dispatch { pipeline, bind_group, grid: Box::new(move |n| (n_pairs.div_ceil(WORKGROUP), heads, n)) }
        };

        // Embedding lookup.
        let embd = w("token_embd.weight")?;
        let mut layers = Vec::new();
        {
            let dims = uniform(&device, "embed dims", &[h, v, embd.group, 0]);
            let pipeline = kernels.embed[dtype_index(embd.dtype)].clone();
            let mut entries = vec![entry(0, whole(&dims)), entry(1, whole(&tokens)), entry(2, whole(&x))];
            entries.extend(embd.weight_entries(3));
            let bind_group = bind_group(&device, &pipeline, &entries);
            scratch.push(dims);
            layers.push(Dispatch { pipeline, bind_group, grid: Box::new(move |n| (h.div_ceil(WORKGROUP), n, 1)) });
        }

        for l in 0..c.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let k_cache = storage(&device, "k cache", capacity * c.kv_dim());
            let v_cache = storage(&device, "v cache", capacity * c.kv_dim());
            layers.push(rms(w(&p("attn_norm"))?, &x, &xn, &mut scratch));
            layers.push(matvec(w(&p("attn_q"))?, &xn, &q, &mut scratch));
            layers.push(matvec(w(&p("attn_k"))?, &xn, &k, &mut scratch));
            layers.push(matvec(w(&p("attn_v"))?, &xn, &vv, &mut scratch));
            layers.push(rope_dispatch(&q, c.n_heads as u32, &mut scratch));
            layers.push(rope_dispatch(&k, c.n_kv_heads as u32, &mut scratch));
            layers.push(elementwise(&kernels.kv_store, &k_cache, &k, kvd, kvd, &mut scratch));
            layers.push(elementwise(&kernels.kv_store, &v_cache, &vv, kvd, kvd, &mut scratch));
            {
                let scale = 1.0 / (c.head_dim as f32).sqrt();
                let dims = uniform(
                    &device,
                    "attention dims",
                    &[c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32, capacity as u32, scale.to_bits()],
                );
                let pipeline = kernels.attention.clone();
                let bind_group = bind_group(
                    &device,
                    &pipeline,
                    &[
                        entry(0, whole(&dims)),
                        entry(1, whole(&step)),
                        entry(2, whole(&q)),
                        entry(3, whole(&k_cache)),
                        entry(4, whole(&v_cache)),
                        entry(5, whole(&scores)),
                        entry(6, whole(&attn)),
                    ],
                );
                scratch.push(dims);
                let heads = c.n_heads as u32;
                let grid: Grid = if kernels.software {
                    Box::new(move |n| ((heads * n).div_ceil(WORKGROUP), 1, 1))
                } else {
                    Box::new(move |n| (heads, n, 1))
                };
                layers.push(Dispatch { pipeline, bind_group, grid });
            }
            layers.push(matvec(w(&p("attn_output"))?, &attn, &proj, &mut scratch));
            layers.push(elementwise(&kernels.add, &x, &proj, h, 0, &mut scratch));
            layers.push(rms(w(&p("ffn_norm"))?, &x, &xn, &mut scratch));
            layers.push(matvec(w(&p("ffn_gate"))?, &xn, &gate, &mut scratch));
            layers.push(matvec(w(&p("ffn_up"))?, &xn, &up, &mut scratch));
            layers.push(elementwise(&kernels.swiglu, &gate, &up, f, 0, &mut scratch));
            layers.push(matvec(w(&p("ffn_down"))?, &gate, &proj, &mut scratch));
            layers.push(elementwise(&kernels.add, &x, &proj, h, 0, &mut scratch));
            scratch.push(k_cache);
            scratch.push(v_cache);
        }

        let out_norm = w("output_norm.weight")?;
        let head = if c.tied_embeddings { embd } else { w("output.weight")? };
        let mut head_last =
            vec![rms(out_norm, &last, &last_norm, &mut scratch), matvec(head, &last_norm, &logits, &mut scratch)];
        {
            let dims = uniform(&device, "argmax dims", &[v]);
            let pipeline = kernels.argmax.clone();
            let bind_group = bind_group(
                &device,
                &pipeline,
                &[entry(0, whole(&dims)), entry(1, whole(&logits)), entry(2, whole(&argmax))],
            );
            scratch.push(dims);
            head_last.push(Dispatch { pipeline, bind_group, grid: Box::new(|_| (1, 1, 1)) });
        }
        let head_all = vec![rms(out_norm, &x, &xn, &mut scratch), matvec(head, &xn, &logits_all, &mut scratch)];

        scratch.extend([xn, q, k, vv, attn, gate, up, proj, scores, last_norm, inv_freq]);
        Ok(GpuEngine {
            ctx,
            config: c,
            capacity,
            position: 0,
            buffers: Buffers { step, tokens, x, last, logits, logits_all, argmax, argmax_staging },
            layers,
            head_last,
            head_all,
            _weights: weights,
            _scratch: scratch,
        })
    }

    pub fn adapter_name(&self) -> &str {
        &self.ctx.adapter_name
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Record and submit one chunk of at most `MAX_CHUNK` tokens; after the layers, the output head runs
    /// for every token (`all_logits`) or for the last one followed by argmax.
    fn run_chunk(&mut self, tokens: &[u32], all_logits: bool) -> Result<()> {
        let n = tokens.len() as u32;
        let c = &self.config;
        for &t in tokens {
            if t as usize >= c.vocab_size {
                return Err(HearthError::InvalidArgument(format!(
                    "token id {t} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
        }
        let b = &self.buffers;
        self.ctx.queue.write_buffer(&b.step, 0, bytemuck::cast_slice(&[self.position as u32, n]));
        self.ctx.queue.write_buffer(&b.tokens, 0, bytemuck::cast_slice(tokens));
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        let record = |encoder: &mut wgpu::CommandEncoder, dispatches: &[Dispatch], n: u32| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for d in dispatches {
                let (gx, gy, gz) = (d.grid)(n);
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(gx, gy, gz);
            }
        };
        record(&mut encoder, &self.layers, n);
        if all_logits {
            record(&mut encoder, &self.head_all, n);
        } else {
            let row = (c.hidden_size * 4) as u64;
            encoder.copy_buffer_to_buffer(&b.x, (n as u64 - 1) * row, &b.last, 0, row);
            record(&mut encoder, &self.head_last, 1);
            encoder.copy_buffer_to_buffer(&b.argmax, 0, &b.argmax_staging, 0, 4);
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.position += tokens.len();
        Ok(())
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(HearthError::InvalidArgument("forward needs at least one token".into()));
        }
        if self.position + n > self.capacity {
            return Err(HearthError::ContextLengthExceeded {
                prompt_tokens: self.position + n,
                max_new_tokens: 0,
                context_length: self.capacity,
            });
        }
        Ok(())
    }

    /// Run `tokens` and return the greedy next token, reading back only its id (4 bytes).
    pub fn forward_argmax(&mut self, tokens: &[u32]) -> Result<u32> {
        self.check_room(tokens.len())?;
        for chunk in tokens.chunks(MAX_CHUNK) {
            self.run_chunk(chunk, false)?;
        }
        let id: Vec<u32> = map_read(&self.ctx, &self.buffers.argmax_staging)?;
        Ok(id[0])
    }

    /// Run `tokens`; return the last token's logits, or every token's with `all_logits`.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.check_room(tokens.len())?;
        let vocab = self.config.vocab_size;
        let mut out = Vec::new();
        for chunk in tokens.chunks(MAX_CHUNK) {
            self.run_chunk(chunk, all_logits)?;
            if all_logits {
                out.extend(read_back::<f32>(&self.ctx, &self.buffers.logits_all, 0, chunk.len() * vocab)?);
            }
        }
        if !all_logits {
            // The argmax staging copy was recorded too; it is simply not read here.
            out = read_back::<f32>(&self.ctx, &self.buffers.logits, 0, vocab)?;
        }
        Ok(out)
    }
}

impl Backend for GpuEngine {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        GpuEngine::forward(self, tokens, all_logits)
    }
    fn reset(&mut self) {
        GpuEngine::reset(self)
    }
    fn context_length(&self) -> usize {
        self.capacity
    }
}
