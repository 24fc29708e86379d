// One thread of the CPU engine's pool (src/threads.js starts it): instantiate the threaded module on
// the memory the engine's realm shares, say so, then run one of rayon's threads for good.

import init, { runPoolThread } from "../wasm-threads/hearth_web.js";

self.addEventListener(
  "message",
  async ({ data }) => {
    try {
      await init({ module_or_path: data.module, memory: data.memory });
    } catch (e) {
      self.postMessage({ type: "error", message: String(e?.message ?? e) });
      return;
    }
    self.postMessage({ type: "ready" });
    runPoolThread(data.queue);
  },
  { once: true },
);
