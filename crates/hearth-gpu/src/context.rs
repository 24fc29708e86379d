//! The device: one adapter, one queue, the limits the engine may use.

use std::sync::{Arc, Mutex};

use hearth_core::{HearthError, Result};

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// Adapter name and backend, for reports (`hearth bench`).
    pub adapter_name: String,
    pub limits: wgpu::Limits,
    /// A software rasterizer (lavapipe, SwiftShader): kernels avoid workgroup barriers there.
    pub software: bool,
    /// Keep the KV cache in f16 (packed in pairs, so no `shader-f16` is needed to read it): chosen
    /// where the adapter offers `shader-f16`, i.e. hardware with fast half precision; f32 elsewhere.
    /// Engines built afterwards follow this field, so a caller may set it either way.
    pub kv_f16: bool,
    /// The adapter offers subgroup operations (`subgroupAdd`), requested on the device: kernels
    /// reduce with them; without, with a tree in workgroup memory. A caller may clear it (tests
    /// force the fallback this way) but not set it where the device lacks the feature.
    pub subgroups: bool,
    /// Output rows per workgroup of the decode products (1 to `DECODE_ROWS_MAX`;
    /// [`crate::kernels::DECODE_ROWS`] unless a caller sets it, as `hearth bench --decode-rows` does
    /// to measure the alternatives on a GPU).
    pub decode_rows: u32,
    /// Prompts' products in matvec.wgsl's register-blocked kernel (true unless a caller clears it,
    /// as `hearth bench --no-gemm` does to compare it with the tiled one on a GPU).
    pub gemm: bool,
    /// Timestamp queries between passes were requested (`hearth bench --profile`).
    pub timestamps: bool,
    /// What the device reported outside any error scope (wgpu's default would panic).
    pub errors: DeviceErrors,
}

/// The first error the device reported, kept until someone checks: wgpu's default handler panics
/// (a process abort natively, a trap in wasm), this one turns the error into a typed one at the
/// next check (the end of `GpuEngine::prepare`, every read-back).
#[derive(Clone, Default)]
pub struct DeviceErrors(Arc<Mutex<Option<String>>>);

impl DeviceErrors {
    fn record(&self, message: String) {
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert(message);
        }
    }

    /// `Err(GpuError)` with the first error reported since the last check, if any.
    pub fn check(&self) -> Result<()> {
        match self.0.lock().ok().and_then(|mut first| first.take()) {
            Some(message) => Err(HearthError::Gpu(format!("the GPU reported an error: {message}"))),
            None => Ok(()),
        }
    }
}

impl GpuContext {
    /// The first adapter wgpu offers, or `Ok(None)` when there is none at all (native only: a
    /// browser awaits [`GpuContext::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Option<Self>> {
        pollster::block_on(Self::new_async())
    }

    pub async fn new_async() -> Result<Option<Self>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match instance.request_adapter(&wgpu::RequestAdapterOptions::default()).await {
            Ok(a) => a,
            Err(_) => return Ok(None),
        };
        let info = adapter.get_info();
        // Ask for everything the adapter allows: model tensors need large storage bindings.
        let limits = adapter.limits();
        // Optional features the engine uses where they exist, and works without.
        let offered = adapter.features();
        let wanted = [wgpu::Features::SUBGROUP, wgpu::Features::TIMESTAMP_QUERY]
            .into_iter()
            .filter(|f| offered.contains(*f))
            .fold(wgpu::Features::empty(), |a, f| a | f);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("hearth"),
                required_limits: limits.clone(),
                required_features: wanted,
                ..Default::default()
            })
            .await
            .map_err(|e| HearthError::Gpu(format!("cannot open a device on {}: {e}", info.name)))?;
        let errors = DeviceErrors::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.record(e.to_string())));
        Ok(Some(GpuContext {
            device,
            queue,
            adapter_name: format!("{} ({:?})", info.name, info.backend),
            limits,
            software: is_software(&info),
            kv_f16: offered.contains(wgpu::Features::SHADER_F16),
            subgroups: wanted.contains(wgpu::Features::SUBGROUP),
            decode_rows: crate::kernels::DECODE_ROWS,
            gemm: true,
            timestamps: wanted.contains(wgpu::Features::TIMESTAMP_QUERY),
            errors,
        }))
    }
}

/// CPU implementations of Vulkan / WebGPU: native wgpu reports them as `Cpu`; a browser says so only
/// for its fallback adapter, so Chromium's SwiftShader is also recognised by name.
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["swiftshader", "llvmpipe", "lavapipe"].iter().any(|n| name.contains(n))
}
