//! The compute pipelines (one per WGSL entry point, built once at load), weight buffers, and small
//! helpers to bind and dispatch them.

use std::num::NonZeroU64;

use hearth_core::manifest::TensorEntry;
use hearth_core::quant::DType;
use hearth_core::{HearthError, Result};
use wgpu::util::DeviceExt;

use crate::context::GpuContext;

const MATVEC: &str = include_str!("../../../shaders/matvec.wgsl");
/// Where `matvec.wgsl`'s per-encoding template of entry points begins.
const TEMPLATE_MARK: &str = "// ---- Template:";
const EMBED: &str = include_str!("../../../shaders/embed.wgsl");
const RMS_NORM: &str = include_str!("../../../shaders/rmsnorm.wgsl");
const ROPE: &str = include_str!("../../../shaders/rope.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
const ARGMAX: &str = include_str!("../../../shaders/argmax.wgsl");

/// Invocations per workgroup of every kernel but argmax.
pub const WORKGROUP: u32 = 64;
/// Largest dispatch size along one grid dimension (WebGPU's guaranteed minimum).
pub const MAX_GRID: u32 = 65535;

pub struct Kernels {
    /// Matrix-vector products, by encoding: the cooperative split (GPUs) or one row per invocation
    /// (software adapters), as `Kernels::new` chose.
    pub matvec: [wgpu::ComputePipeline; 4],
    /// Rows of output one workgroup of `matvec` produces.
    pub matvec_rows_per_workgroup: u32,
    pub embed: [wgpu::ComputePipeline; 4],
    pub rms_norm: wgpu::ComputePipeline,
    pub rope: wgpu::ComputePipeline,
    pub attention: wgpu::ComputePipeline,
    pub swiglu: wgpu::ComputePipeline,
    pub add: wgpu::ComputePipeline,
    pub kv_store: wgpu::ComputePipeline,
    pub argmax: wgpu::ComputePipeline,
    /// Whether the barrier-free variants were chosen (their grids differ).
    pub software: bool,
}

/// Index of an encoding's entry point in `Kernels::matvec` / `Kernels::embed`.
pub fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::Q4 => 0,
        DType::Q8 => 1,
        DType::F16 => 2,
        DType::F32 => 3,
    }
}

impl Kernels {
    pub fn new(device: &wgpu::Device, software: bool) -> Self {
        let module = |name: &str, src: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        };
        let pipeline = |module: &wgpu::ShaderModule, entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let matvec = module("matvec.wgsl", &matvec_source());
        let embed = module("embed.wgsl", EMBED);
        let elementwise = module("elementwise.wgsl", ELEMENTWISE);
        Kernels {
            matvec: if software {
                ["matvec_rows_q4", "matvec_rows_q8", "matvec_rows_f16", "matvec_rows_f32"].map(|e| pipeline(&matvec, e))
            } else {
                ["matvec_q4", "matvec_q8", "matvec_f16", "matvec_f32"].map(|e| pipeline(&matvec, e))
            },
            matvec_rows_per_workgroup: if software { WORKGROUP } else { 1 },
            embed: ["embed_q4", "embed_q8", "embed_f16", "embed_f32"].map(|e| pipeline(&embed, e)),
            rms_norm: pipeline(&module("rmsnorm.wgsl", RMS_NORM), if software { "rms_norm_rows" } else { "rms_norm" }),
            rope: pipeline(&module("rope.wgsl", ROPE), "rope"),
            attention: pipeline(
                &module("attention.wgsl", ATTENTION),
                if software { "attention_rows" } else { "attention" },
            ),
            software,
            swiglu: pipeline(&elementwise, "swiglu"),
            add: pipeline(&elementwise, "add"),
            kv_store: pipeline(&elementwise, "kv_store"),
            argmax: pipeline(&module("argmax.wgsl", ARGMAX), "argmax"),
        }
    }
}

/// `matvec.wgsl` with its template of entry points instantiated for each encoding.
fn matvec_source() -> String {
    let (common, template) = MATVEC.split_at(MATVEC.find(TEMPLATE_MARK).unwrap_or(MATVEC.len()));
    let mut source = common.to_string();
    for encoding in ["q4", "q8", "f16", "f32"] {
        source.push_str(&template.replace("ENC", encoding));
    }
    source
}

/// A uniform buffer holding `words` (padded to 32 bytes, more than any `Dims` struct needs).
pub fn uniform(device: &wgpu::Device, label: &str, words: &[u32]) -> wgpu::Buffer {
    let mut data = words.to_vec();
    data.resize(data.len().max(8).next_multiple_of(4), 0);
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(&data),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    })
}

/// A zeroed f32/u32 storage buffer of `len` elements.
pub fn storage(device: &wgpu::Device, label: &str, len: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (len.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

pub fn whole(buffer: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    buffer.as_entire_binding()
}

/// A tensor of a model package, uploaded as it is stored (never expanded).
pub struct WeightBuffer {
    pub buffer: wgpu::Buffer,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub group: u32,
    parts: Vec<(String, u64, u64)>,
}

impl WeightBuffer {
    pub fn upload(ctx: &GpuContext, entry: &TensorEntry, bytes: &[u8]) -> Result<Self> {
        if let Some(missing) = entry.dtype.part_names().iter().find(|n| !entry.parts.contains_key(**n)) {
            return Err(HearthError::bad_package(format!("tensor `{}`", entry.name), format!("no `{missing}` part")));
        }
        let max = ctx.limits.max_storage_buffer_binding_size;
        for (name, r) in &entry.parts {
            if r.length > max {
                return Err(HearthError::Gpu(format!(
                    "tensor `{}` part `{name}` is {} bytes, over this adapter's storage binding limit of {max}",
                    entry.name, r.length
                )));
            }
        }
        let mut data = bytes.to_vec();
        data.resize(data.len().next_multiple_of(4), 0);
        let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(&entry.name),
            contents: &data,
            usage: wgpu::BufferUsages::STORAGE,
        });
        Ok(WeightBuffer {
            buffer,
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            group: entry.group_size.unwrap_or(1) as u32,
            parts: entry.parts.iter().map(|(k, r)| (k.clone(), r.offset, r.length)).collect(),
        })
    }

    pub fn rows(&self) -> u32 {
        (self.shape.iter().product::<usize>() / self.cols() as usize) as u32
    }

    pub fn cols(&self) -> u32 {
        self.shape.last().copied().unwrap_or(1) as u32
    }

    /// The byte range of a part, rounded up to whole words (the package pads parts so they exist).
    /// `upload` made sure every part of the encoding is there.
    pub fn part(&self, name: &str) -> wgpu::BindingResource<'_> {
        let (offset, len) = self.parts.iter().find(|(n, _, _)| n == name).map(|(_, o, l)| (*o, *l)).unwrap_or((0, 4));
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset,
            size: NonZeroU64::new(len.next_multiple_of(4).max(4)),
        })
    }

    /// Bindings of the weight parts as the matvec and embed kernels declare them (4, 5, 6 / 3, 4, 5).
    pub fn weight_entries(&self, first_binding: u32) -> Vec<wgpu::BindGroupEntry<'_>> {
        self.dtype
            .part_names()
            .iter()
            .enumerate()
            .map(|(i, n)| wgpu::BindGroupEntry { binding: first_binding + i as u32, resource: self.part(n) })
            .collect()
    }
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

/// Grid for `rows` output rows of a matrix-vector product, `per_workgroup` rows per workgroup:
/// (x, y) with x * y * per_workgroup >= rows.
pub fn matvec_grid(rows: u32, per_workgroup: u32) -> (u32, u32) {
    let groups = rows.div_ceil(per_workgroup);
    let x = groups.min(MAX_GRID);
    (x, groups.div_ceil(x))
}

/// Copy `buffer` (its first `len` f32 or u32 values) back to the CPU.
pub fn read_back<T: bytemuck::Pod>(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<T>> {
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
    map_read(ctx, &staging)
}

/// Map a MAP_READ buffer and copy its contents out.
pub fn map_read<T: bytemuck::Pod>(ctx: &GpuContext, staging: &wgpu::Buffer) -> Result<Vec<T>> {
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| HearthError::Gpu(format!("waiting for the GPU failed: {e}")))?;
    rx.recv()
        .map_err(|_| HearthError::Gpu("the GPU never answered a read".into()))?
        .map_err(|e| HearthError::Gpu(format!("cannot read a GPU buffer: {e}")))?;
    let out = {
        let view = slice.get_mapped_range().map_err(|e| HearthError::Gpu(format!("cannot map a GPU buffer: {e}")))?;
        bytemuck::pod_collect_to_vec(&view)
    };
    staging.unmap();
    Ok(out)
}

/// One matrix-vector product on the GPU, for tests and tools: `y[t] = W · x[t]` for `n` rows of `x`.
pub fn matvec_on_gpu(ctx: &GpuContext, tensor: &TensorEntry, bytes: &[u8], x: &[f32], n: usize) -> Result<Vec<f32>> {
    let kernels = Kernels::new(&ctx.device, ctx.software);
    let w = WeightBuffer::upload(ctx, tensor, bytes)?;
    let (rows, cols) = (w.rows(), w.cols());
    let (gx, gy) = matvec_grid(rows, kernels.matvec_rows_per_workgroup);
    let dims = uniform(&ctx.device, "dims", &[rows, cols, w.group, gx]);
    let xb = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("x"),
        contents: bytemuck::cast_slice(x),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let y = storage(&ctx.device, "y", rows as usize * n);
    let pipeline = &kernels.matvec[dtype_index(w.dtype)];
    let mut entries = vec![entry(0, whole(&dims)), entry(2, whole(&xb)), entry(3, whole(&y))];
    entries.extend(w.weight_entries(4));
    let bg = bind_group(&ctx.device, pipeline, &entries);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(gx, gy, n as u32);
    }
    ctx.queue.submit([encoder.finish()]);
    read_back(ctx, &y, 0, rows as usize * n)
}
