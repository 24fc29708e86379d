//! Hearth's GPU engine: the transformer's forward pass as WGSL compute shaders (the `.wgsl` files in
//! the repository's `shaders/` folder) run through `wgpu` — natively on Vulkan / Metal / DX12 (and
//! Mesa's lavapipe where there is no GPU), and in the browser on WebGPU.

// wgpu's handles (pipelines, modules) key maps here: they hash and compare by identity, which the
// state inside them never changes.
#![allow(clippy::mutable_key_type)]

pub mod attention;
mod builder;
mod context;
mod encoder;
mod engine;
mod forward;
pub mod kernels;
mod mixture;
pub mod profile;
pub mod sampler;
pub mod weights;

pub use builder::{run_dispatches, Dispatch, RopeDims, Step};
pub use context::GpuContext;
pub use encoder::{GpuEncoder, PendingEncoder, PACKED_TOKENS};
pub use engine::{GpuEngine, PendingEngine, StepCounts, GPU_CHUNK, MAX_CHUNK, QUEUE_DEPTH};
pub use weights::{Pending, Span, StoredMatrix, WeightBuffer, WeightUploads};
