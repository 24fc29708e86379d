//! Hearth's GPU engine: the transformer's forward pass as WGSL compute shaders (the `.wgsl` files in
//! the repository's `shaders/` folder) run through `wgpu` — natively on Vulkan / Metal / DX12 (and
//! Mesa's lavapipe where there is no GPU), and in the browser on WebGPU.

mod builder;
mod context;
mod engine;
pub mod kernels;
pub mod sampler;
pub mod weights;

pub use context::GpuContext;
pub use engine::{GpuEngine, PendingEngine};
pub use weights::{Span, StoredMatrix, WeightBuffer, WeightUploads};
