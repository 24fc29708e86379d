//! Hearth's GPU engine: the transformer's forward pass as WGSL compute shaders (the `.wgsl` files in
//! the repository's `shaders/` folder) run through `wgpu` — natively on Vulkan / Metal / DX12 (and
//! Mesa's lavapipe where there is no GPU), and in the browser on WebGPU.

mod context;
mod engine;
mod kernels;

pub use context::GpuContext;
pub use engine::GpuEngine;
pub use kernels::{matvec_on_gpu, WeightBuffer};
