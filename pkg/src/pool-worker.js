// One thread of the CPU engine's pool (src/threads.js starts it): instantiate the threaded module on
// the memory the engine's realm shares, say so, then run one of rayon's threads for good.

self.addEventListener(
  "message",
  async ({ data }) => {
    let runPoolThread;
    try {
      // The glue of the build the engine's realm runs (literal paths, for bundlers).
      const glue = data.variant === "wasm-threads-relaxed"
        ? await import("../wasm-threads-relaxed/hearth_web.js")
        : await import("../wasm-threads/hearth_web.js");
      await glue.default({ module_or_path: data.module, memory: data.memory });
      runPoolThread = glue.runPoolThread;
    } catch (e) {
      self.postMessage({ type: "error", message: String(e?.message ?? e) });
      return;
    }
    self.postMessage({ type: "ready" });
    runPoolThread(data.queue);
  },
  { once: true },
);
