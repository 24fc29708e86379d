// Hearth.support(): what this browser offers, straight from navigator.gpu, without loading the wasm
// module, so a page can decide what to show before downloading anything.

export async function support() {
  const out = { webgpu: false, shaderF16: false, adapter: null, maxStorageBufferBindingSize: null, reason: null };
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) {
    out.reason = globalThis.isSecureContext === false
      ? "WebGPU needs a secure context: serve the page over https or from localhost"
      : "navigator.gpu is missing: this browser has no WebGPU, or it is turned off";
    return out;
  }
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter();
  } catch (e) {
    out.reason = `requestAdapter() failed: ${e?.message ?? e}`;
    return out;
  }
  if (!adapter) {
    out.reason = "no WebGPU adapter: the GPU is blocklisted or hardware acceleration is off " +
      "(chrome://gpu tells which; chrome://flags/#enable-unsafe-webgpu overrides the blocklist)";
    return out;
  }
  // adapter.info is the current API; requestAdapterInfo() the one older browsers shipped.
  out.webgpu = true;
  out.adapter = (await describe(adapter)) || "unknown adapter";
  out.shaderF16 = adapter.features.has("shader-f16");
  out.maxStorageBufferBindingSize = adapter.limits.maxStorageBufferBindingSize;
  return out;
}

/** "vendor architecture device description" of an adapter, as far as the browser tells. */
async function describe(adapter) {
  // adapter.info is the current API; requestAdapterInfo() the one older browsers shipped.
  const info = adapter.info ?? (await adapter.requestAdapterInfo?.().catch(() => null)) ?? {};
  return [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ");
}

/** The name of the adapter the engine will get (the default one), for engine.info.adapter. */
export async function adapterLabel() {
  const adapter = await globalThis.navigator?.gpu?.requestAdapter().catch(() => null);
  return adapter ? (await describe(adapter)) || "WebGPU adapter" : "";
}
