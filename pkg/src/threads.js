// The CPU engine's thread pool (the threaded wasm build, pkg/wasm-threads/): one Web Worker per
// thread, each instantiating the same module on the same shared memory and running one of rayon's
// threads (crates/hearth-web/src/threads.rs). The workers are started with
// `new Worker(new URL("./pool-worker.js", import.meta.url))`, the form bundlers recognize, so the
// pool works from the package as published and from a bundled app alike.

const START_TIMEOUT_MS = 30_000;

let workers = []; // kept referenced: a worker sharing memory must not be collected

/** Starts `threads` pool threads for the threaded module `m`, build `variant` (once per realm). */
export async function startThreadPool(m, threads, variant) {
  const pool = new m.ThreadPool(threads);
  const init = { variant, module: m.sharedModule(), memory: m.sharedMemory(), queue: pool.queue() };
  workers = await Promise.all(Array.from({ length: threads }, () => startWorker(init)));
  pool.build();
}

function startWorker(init) {
  const worker = new Worker(new URL("./pool-worker.js", import.meta.url), { type: "module", name: "hearth-pool" });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error("a pool worker did not start within 30 s")), START_TIMEOUT_MS);
    const fail = (e) => {
      clearTimeout(timer);
      worker.terminate();
      reject(e);
    };
    worker.addEventListener("message", ({ data }) => {
      if (data?.type === "ready") {
        clearTimeout(timer);
        resolve(worker);
      } else if (data?.type === "error") {
        fail(new Error(data.message));
      }
    });
    worker.addEventListener("error", (e) => fail(new Error(`a pool worker failed to load: ${e.message ?? e}`)));
    worker.postMessage(init);
  });
}
