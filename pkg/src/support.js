// Hearth.support() and the backend choice: what this browser offers, straight from navigator.gpu,
// without loading the wasm module, so a page can decide what to show before downloading anything.
// "auto" runs the GPU engine on a hardware WebGPU adapter and the CPU engine everywhere else (no
// WebGPU, no adapter, or a software adapter such as SwiftShader, where the CPU engine is far faster).

const BACKENDS = ["auto", "webgpu", "cpu"];
// Software rasterizers that browsers expose as WebGPU adapters when there is no usable GPU.
const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe|softpipe|software|basic render|warp/i;
const WASM32_BYTES = 4 * 2 ** 30;

// A function that returns i32x4.relaxed_dot_i8x16_i7x16_add_s of three zero vectors: it validates
// only where the browser has relaxed SIMD (Chrome and Edge 114+; not yet Firefox or Safari).
const RELAXED_SIMD_BODY = [0x00, ...[0, 1, 2].flatMap(() => [0xfd, 0x0c, ...new Array(16).fill(0)]), 0xfd, 0x93, 0x02, 0x0b];
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
  0x03, 0x02, 0x01, 0x00, // one function of that type
  0x0a, RELAXED_SIMD_BODY.length + 2, 0x01, RELAXED_SIMD_BODY.length, ...RELAXED_SIMD_BODY, // its code
]);

/**
 * Whether this browser has WebAssembly relaxed SIMD, for the builds whose CPU kernels use its 8-bit
 * dot products (pkg/wasm-relaxed/, pkg/wasm-threads-relaxed/).
 */
export function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

export function checkBackend(backend) {
  return backend == null || BACKENDS.includes(backend);
}

export async function support() {
  const gpu = await probeGpu();
  const { backend, reason: backendReason } = chooseFrom(gpu, "auto");
  return {
    webgpu: gpu.adapter != null,
    shaderF16: gpu.adapter?.features.has("shader-f16") ?? false,
    adapter: gpu.label || null,
    softwareAdapter: gpu.software,
    maxStorageBufferBindingSize: gpu.adapter?.limits.maxStorageBufferBindingSize ?? null,
    reason: gpu.reason,
    backend,
    backendReason,
    crossOriginIsolated: Boolean(globalThis.crossOriginIsolated),
    relaxedSimd: hasRelaxedSimd(),
    cpuMemoryLimit: cpuMemoryLimit().bytes,
  };
}

/**
 * The engine `requested` ("auto", "webgpu" or "cpu") resolves to here: {backend, reason, label}
 * (label: the adapter's name for engine.info, when the GPU engine runs).
 */
export async function chooseBackend(requested = "auto") {
  if (requested === "cpu") return { backend: "cpu", reason: "backend: \"cpu\" was asked for", label: "" };
  const gpu = await probeGpu();
  return { ...chooseFrom(gpu, requested), label: gpu.label };
}

function chooseFrom(gpu, requested) {
  if (requested === "webgpu") return { backend: "webgpu", reason: "backend: \"webgpu\" was asked for" };
  if (!gpu.adapter) return { backend: "cpu", reason: gpu.reason };
  if (gpu.software) {
    return { backend: "cpu", reason: `the WebGPU adapter (${gpu.label}) runs in software; the CPU engine is faster` };
  }
  return { backend: "webgpu", reason: `a hardware WebGPU adapter: ${gpu.label}` };
}

/** The default adapter, its name, whether it is a software one, or why there is none. */
export async function probeGpu() {
  const out = { adapter: null, label: "", software: false, reason: null };
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) {
    out.reason = globalThis.isSecureContext === false
      ? "WebGPU needs a secure context: serve the page over https or from localhost"
      : "navigator.gpu is missing: this browser has no WebGPU, or it is turned off";
    return out;
  }
  try {
    out.adapter = await gpu.requestAdapter();
  } catch (e) {
    out.reason = `requestAdapter() failed: ${e?.message ?? e}`;
    return out;
  }
  if (!out.adapter) {
    out.reason = "no WebGPU adapter: the GPU is blocklisted or hardware acceleration is off " +
      "(chrome://gpu tells which; chrome://flags/#enable-unsafe-webgpu overrides the blocklist)";
    return out;
  }
  // adapter.info is the current API; requestAdapterInfo() the one older browsers shipped.
  const info = out.adapter.info ?? (await out.adapter.requestAdapterInfo?.().catch(() => null)) ?? {};
  out.label = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ") ||
    "WebGPU adapter";
  out.software = Boolean(info.isFallbackAdapter ?? out.adapter.isFallbackAdapter) ||
    SOFTWARE_ADAPTER.test(out.label);
  return out;
}

/**
 * What the CPU engine may take in wasm memory: wasm32 addresses 4 GiB, and where the browser says
 * how much memory the device has (navigator.deviceMemory, GiB, rounded down and capped at 8), half
 * of that, so the page and the rest of the machine keep room.
 */
export function cpuMemoryLimit() {
  const device = globalThis.navigator?.deviceMemory;
  if (Number.isFinite(device) && device > 0 && (device * 2 ** 30) / 2 < WASM32_BYTES) {
    return { bytes: (device * 2 ** 30) / 2, reason: `half of this device's ${device} GiB (navigator.deviceMemory)` };
  }
  return { bytes: WASM32_BYTES, reason: "wasm32 addresses at most 4 GiB" };
}
