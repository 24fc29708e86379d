//! GPU time per kernel from timestamp queries (`hearth bench --profile`): each dispatch of a
//! profiled step runs in a compute pass of its own whose beginning and end the GPU stamps. Passes
//! cost a little, so a profiled step is slower than a normal one; the shares are what it is for.

use std::collections::HashMap;

use hearth_core::{HearthError, Result};

use crate::context::GpuContext;
use crate::kernels::map_read_async;

/// Most passes one profiled step may time (two queries each; wgpu allows 4,096 per set).
const MAX_PASSES: u32 = 2048;

/// Timestamps being collected for one step.
pub struct Profiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// What each timed pass ran, in order.
    labels: Vec<String>,
}

/// One kernel's share of a profiled step.
#[derive(Debug, Clone)]
pub struct KernelTime {
    pub kernel: String,
    pub dispatches: usize,
    pub ms: f64,
}

impl Profiler {
    /// A profiler, or an error that says why this adapter cannot time kernels.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        if !ctx.timestamps {
            return Err(HearthError::AdapterLimit(format!(
                "{} offers no timestamp queries, so kernels cannot be timed",
                ctx.adapter_name
            )));
        }
        let size = u64::from(2 * MAX_PASSES) * 8;
        let buffer = |label, usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        Ok(Profiler {
            queries: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_PASSES,
            }),
            resolved: buffer("timestamps", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            staging: buffer("timestamps read back", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            labels: Vec::new(),
        })
    }

    /// A compute pass for one dispatch of `label`, stamped at its beginning and end (unstamped
    /// once `MAX_PASSES` are taken).
    pub fn pass<'e>(&mut self, encoder: &'e mut wgpu::CommandEncoder, label: &str) -> wgpu::ComputePass<'e> {
        let i = self.labels.len() as u32;
        let timestamp_writes = (i < MAX_PASSES).then(|| {
            self.labels.push(label.to_string());
            wgpu::ComputePassTimestampWrites {
                query_set: &self.queries,
                beginning_of_pass_write_index: Some(2 * i),
                end_of_pass_write_index: Some(2 * i + 1),
            }
        });
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes })
    }

    /// Passes timed so far.
    pub fn passes(&self) -> usize {
        self.labels.len()
    }

    /// Copy the stamps out at the end of the step's encoder.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let n = 2 * self.labels.len() as u32;
        if n > 0 {
            encoder.resolve_query_set(&self.queries, 0..n, &self.resolved, 0);
            encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.staging, 0, u64::from(n) * 8);
        }
    }

    /// Once the step was submitted: time per kernel, longest first.
    pub async fn read(self, ctx: &GpuContext) -> Result<Vec<KernelTime>> {
        let stamps: Vec<u64> = map_read_async(ctx, &self.staging).await?;
        let period_ns = f64::from(ctx.queue.get_timestamp_period());
        let mut by_kernel: HashMap<String, KernelTime> = HashMap::new();
        for (i, label) in self.labels.into_iter().enumerate() {
            let (begin, end) = (stamps[2 * i], stamps[2 * i + 1]);
            let ms = end.saturating_sub(begin) as f64 * period_ns / 1e6;
            let entry = by_kernel.entry(label.clone()).or_insert(KernelTime { kernel: label, dispatches: 0, ms: 0.0 });
            entry.dispatches += 1;
            entry.ms += ms;
        }
        let mut times: Vec<KernelTime> = by_kernel.into_values().collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }
}
