// Hearth.load(): manifest -> tokenizer -> wasm Loader -> shards, one at a time, into GPU buffers (or
// the CPU engine's arrays in wasm memory: "auto" picks the CPU engine without a hardware adapter).
// Shards come from IndexedDB when stored, otherwise from the network (a few downloads ahead of the
// upload, so both overlap), are verified before use, and are dropped once uploaded: memory holds a
// few shards, never the whole model.

import {
  BadPackageError, HearthError, InvalidArgumentError, NetworkError,
  QuotaExceededError, UnsupportedModelError, WebGPUUnavailableError, abortError, fromWasm, raceAbort,
} from "./errors.js";
import { fetchText, fetchVerified, packageFileUrl, STALL_TIMEOUT_MS } from "./fetch.js";
import { ggufFiles, isGgufUrl } from "./gguf.js";
import { storeGguf } from "./gguf-load.js";
import { checkBackend, chooseBackend, cpuMemoryLimit, hasRelaxedSimd } from "./support.js";
import { startThreadPool } from "./threads.js";
import { HearthEngine } from "./engine.js";
import { signalOf } from "./options.js";
import * as store from "./store.js";

const AHEAD = 3; // downloads in flight beyond the shard being uploaded
const PROGRESS_STEP = 4 << 20; // report download progress at least every 4 MiB
const QUOTA_MARGIN = 16 << 20; // the estimate is approximate; leave room for the records themselves
const MAX_SHARD_BYTES = 2 ** 30; // what `hearth convert --shard-mb` allows (1024); each is one buffer

// The builds (scripts/build-wasm.sh): single-threaded or threaded (the CPU engine on a pool of
// workers), each plain SIMD128 or with relaxed SIMD's dot products in the CPU kernels.
const wasmModules = new Map(); // variant -> Promise<module>, once per realm

/** The variant's glue, by literal paths so that bundlers see every module. */
function importWasm(variant) {
  switch (variant) {
    case "wasm-threads-relaxed":
      return import("../wasm-threads-relaxed/hearth_web.js");
    case "wasm-threads":
      return import("../wasm-threads/hearth_web.js");
    case "wasm-relaxed":
      return import("../wasm-relaxed/hearth_web.js");
    default:
      return import("../wasm/hearth_web.js");
  }
}

/** The wasm module, initialized once per realm (page or worker). */
function loadWasm(variant = "wasm") {
  if (!wasmModules.has(variant)) {
    const ready = importWasm(variant)
      .then(async (m) => {
        await m.default();
        if (variant.startsWith("wasm-threads")) await startThreadPool(m, threadCount(), variant);
        return m;
      })
      .catch((e) => {
        wasmModules.delete(variant);
        throw new HearthError(`Could not load Hearth's wasm module (${variant}): ${e?.message ?? e}`, { cause: e });
      });
    wasmModules.set(variant, ready);
  }
  return wasmModules.get(variant);
}

/** Threads for the CPU engine's pool: the cores the browser reports, at most 16. */
function threadCount() {
  return Math.max(1, Math.min(16, globalThis.navigator?.hardwareConcurrency ?? 1));
}

/**
 * The module for `backend`, best first, falling back to the next when one does not load. The CPU
 * engine uses threads where it can: they share the wasm memory, which needs a cross-origin isolated
 * realm (COOP + COEP headers), and the thread that waits on the pool must be allowed to block,
 * which only a worker is. Relaxed SIMD where the browser has it, unless `relaxedSimd` is false.
 */
export async function wasmFor(backend, relaxedSimd, signal) {
  const isWorker = typeof globalThis.WorkerGlobalScope === "function" && globalThis instanceof globalThis.WorkerGlobalScope;
  const threads = backend === "cpu" && globalThis.crossOriginIsolated && isWorker && threadCount() > 1;
  const relaxed = relaxedSimd !== false && hasRelaxedSimd();
  const variants = [
    ...(threads ? [...(relaxed ? ["wasm-threads-relaxed"] : []), "wasm-threads"] : []),
    ...(relaxed ? ["wasm-relaxed"] : []),
    "wasm",
  ];
  for (const variant of variants.slice(0, -1)) {
    try {
      return await raceAbort(loadWasm(variant), signal);
    } catch (e) {
      if (signal?.aborted) throw e;
      console.warn(`Hearth: the ${variant} build did not load; trying the next one.`, e);
    }
  }
  return raceAbort(loadWasm(variants.at(-1)), signal);
}

export function parseManifest(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new BadPackageError(`manifest.json is not JSON: ${e.message}`);
  }
  if (m?.format !== "hearth-model" || m.format_version !== 1) {
    throw new UnsupportedModelError(
      `manifest.json has format ${JSON.stringify(m?.format)} version ${JSON.stringify(m?.format_version)}; ` +
        'this version of Hearth reads format "hearth-model" version 1 (update hearth-web or convert the model again).',
    );
  }
  const entryOk = (e) =>
    typeof e?.file === "string" && Number.isSafeInteger(e.size) && e.size >= 0 && /^[0-9a-f]{64}$/i.test(e.sha256);
  if (!Array.isArray(m.shards) || !m.shards.every(entryOk) || !(m.files ?? []).every(entryOk)) {
    throw new BadPackageError("manifest.json: every entry of shards and files needs {file, size, sha256}");
  }
  for (const e of [...m.shards, ...(m.files ?? [])]) {
    if (e.size > MAX_SHARD_BYTES) {
      throw new BadPackageError(
        `manifest.json: ${e.file} is ${e.size} bytes; Hearth loads files of at most 1 GiB each (convert again with a smaller --shard-mb)`,
      );
    }
  }
  return m;
}

/** The tokenizer's text: the stored one if the manifest still lists the same sha256, else fetched. */
async function tokenizerText(url, manifest, stored, signal, stallMs) {
  const file = manifest.tokenizer?.file ?? "tokenizer.json";
  const entry = (manifest.files ?? []).find((f) => f.file === file);
  if (!entry) throw new BadPackageError(`manifest.json lists no size and sha256 for ${file}`);
  // Either stored version's tokenizer, when it is this one.
  for (const version of [stored, stored?.previous]) {
    if (!version?.tokenizerText) continue;
    let old;
    try {
      old = JSON.parse(version.manifestText).files?.find((f) => f.file === file);
    } catch {
      // a stored manifest we cannot read: fetch again
    }
    if (old?.sha256 === entry.sha256) return version.tokenizerText;
  }
  const bytes = await fetchVerified(packageFileUrl(url, file), entry, { signal, stallMs });
  return new TextDecoder().decode(bytes);
}

/**
 * The origin's free storage (quota - usage, null when the browser does not say), and the error a
 * download of `needed` bytes gets when it does not fit with its margin (null when it does).
 */
export async function quotaShortfall(needed) {
  const estimate = await globalThis.navigator?.storage?.estimate?.().catch(() => null);
  if (estimate?.quota == null) return { available: null, error: null };
  const available = estimate.quota - (estimate.usage ?? 0);
  const error = available < needed + QUOTA_MARGIN ? new QuotaExceededError(needed + QUOTA_MARGIN, available) : null;
  return { available, error };
}

/** Bytes a load stores: the shards not stored yet, the manifest, and the tokenizer as listed. */
export function storageNeeded(manifest, manifestText, missingShardBytes) {
  const file = manifest.tokenizer?.file ?? "tokenizer.json";
  const tokenizer = (manifest.files ?? []).find((f) => f.file === file);
  return missingShardBytes + manifestText.length + (tokenizer?.size ?? 0);
}

/** Refuses to start a download that the origin's quota cannot hold. */
export async function checkQuota(needed) {
  const { available, error } = await quotaShortfall(needed);
  if (error) throw error;
  if (available == null) return;
  // Ask not to be evicted under storage pressure; a refusal (or a worker, without persist) is fine.
  globalThis.navigator.storage.persist?.().catch(() => {});
}

/** onProgress, shielded: a throwing callback is reported but does not break the load. */
export function reporter(onProgress) {
  return (event) => {
    try {
      onProgress?.(event);
    } catch (e) {
      (globalThis.reportError ?? ((x) => setTimeout(() => { throw x; })))(e);
    }
  };
}

const LOAD_OPTIONS = [
  "onProgress", "signal", "cache", "maxContext", "revalidate", "backend", "stallTimeout", "relaxedSimd", "sha256",
];

/**
 * `modelUrl` as the key of its package (store.modelKey): a package directory's URL, or a GGUF
 * file's (`….gguf`, converted as it loads; for an array of a split model's files, the first's).
 * Refused: another type, a malformed URL, a folder named `….gguf/`. `fn` names the function for
 * the message.
 */
export function packageKey(modelUrl, fn) {
  if (Array.isArray(modelUrl)) {
    if (!ggufFiles(modelUrl)) {
      throw new InvalidArgumentError(`${fn}() takes an array only of a split GGUF's files: URLs each ending in .gguf, in order`);
    }
    return packageKey(modelUrl[0], fn);
  }
  if (typeof modelUrl !== "string" && !(modelUrl instanceof URL)) {
    throw new InvalidArgumentError(`${fn}() takes the URL of a model package directory or a GGUF file`);
  }
  let key;
  try {
    key = store.modelKey(modelUrl);
  } catch (e) {
    throw new InvalidArgumentError(`${fn}(): ${JSON.stringify(String(modelUrl))} is not a URL (${e.message})`);
  }
  if (/\.gguf\/$/i.test(key) && !isGgufUrl(modelUrl)) {
    throw new InvalidArgumentError(
      `${fn}(): ${JSON.stringify(String(modelUrl))} names a folder ending in .gguf; a GGUF file's URL ends in .gguf`,
    );
  }
  return key;
}

export function checkOptions(modelUrl, options) {
  packageKey(modelUrl, "load");
  if (options === null || typeof options !== "object") throw new InvalidArgumentError("options must be an object");
  const gguf = ggufFiles(modelUrl) != null;
  if (options.sha256 != null) {
    if (!gguf) {
      throw new InvalidArgumentError("options.sha256 checks a GGUF file; a package's files are checked against its manifest");
    }
    const hashes = [options.sha256].flat();
    if (hashes.length === 0 || !hashes.every((h) => typeof h === "string" && /^[0-9a-f]{64}$/i.test(h))) {
      throw new InvalidArgumentError(
        "options.sha256 must be the file's SHA-256 as 64 hex digits (for a split model, an array of them, one per file)",
      );
    }
  }
  if (gguf && options.cache === false) {
    throw new InvalidArgumentError(
      "options.cache: false cannot load a GGUF URL: it is converted into this site's storage as it downloads " +
        "(convert it with `hearth convert MODEL.gguf --out DIR` to load it uncached)",
    );
  }
  // No option is silently ignored: a misspelled one is an error naming it.
  for (const [k, v] of Object.entries(options)) {
    if (v != null && !LOAD_OPTIONS.includes(k)) {
      throw new InvalidArgumentError(`options.${k} is not supported (load() takes ${LOAD_OPTIONS.join(", ")})`);
    }
  }
  const { onProgress, maxContext, revalidate, backend, cache, stallTimeout, relaxedSimd } = options;
  if (cache != null && typeof cache !== "boolean") throw new InvalidArgumentError("options.cache must be a boolean");
  if (relaxedSimd != null && typeof relaxedSimd !== "boolean") {
    throw new InvalidArgumentError("options.relaxedSimd must be a boolean");
  }
  if (!checkBackend(backend)) {
    throw new InvalidArgumentError('options.backend must be "auto", "webgpu" or "cpu"');
  }
  if (revalidate != null && typeof revalidate !== "boolean") {
    throw new InvalidArgumentError("options.revalidate must be a boolean");
  }
  if (onProgress != null && typeof onProgress !== "function") {
    throw new InvalidArgumentError("options.onProgress must be a function");
  }
  if (maxContext != null && !(Number.isSafeInteger(maxContext) && maxContext > 0)) {
    throw new InvalidArgumentError("options.maxContext must be a positive integer");
  }
  if (stallTimeout != null && !(Number.isFinite(stallTimeout) && stallTimeout > 0 && stallTimeout <= 2 ** 31 - 1)) {
    throw new InvalidArgumentError("options.stallTimeout must be a positive number of milliseconds (at most 2^31 - 1)");
  }
}

/**
 * Loads the model package at `modelUrl` (a directory holding manifest.json, or a GGUF file, which
 * is converted into a stored package as it downloads) onto the GPU, or the CPU (`options.backend`:
 * "auto" by default, "webgpu" or "cpu").
 * @returns {Promise<HearthEngine>}
 */
export async function load(modelUrl, options = {}) {
  checkOptions(modelUrl, options);
  const signal = signalOf(options);
  if (signal?.aborted) throw abortError(signal);
  const url = packageKey(modelUrl, "load");
  // One tab (or worker) at a time loads a model that it stores: another waits, then finds the
  // shards stored (or a newer version's, replacing these) rather than racing on the same records.
  if (options.cache === false) return loadPackage(url, options, signal);
  const gguf = ggufFiles(modelUrl);
  if (gguf) {
    // Converted into the store as it downloads (gguf-load.js), then loaded from there.
    return store.withModelLock(url, signal, async () => {
      await storeGguf(gguf, url, options, signal);
      return loadPackage(url, { ...options, revalidate: false }, signal);
    });
  }
  return store.withModelLock(url, signal, () => loadPackage(url, options, signal));
}

async function loadPackage(url, options, signal) {
  const { onProgress, cache = true, maxContext, revalidate = true, backend: requested = "auto" } = options;
  const stallMs = options.stallTimeout ?? STALL_TIMEOUT_MS;
  const report = reporter(onProgress);
  const useCache = Boolean(cache) && (await store.usable());

  // 1. Manifest and tokenizer; offline (or told not to revalidate a complete copy), the stored ones
  // of the newest version stored whole (during an update, the version before it).
  const stored = useCache ? await store.getModel(url) : undefined;
  const usable = await store.usableVersion(stored);
  let manifestText;
  let offline = Boolean(usable) && !revalidate;
  if (offline) {
    manifestText = usable.manifestText;
  } else {
    try {
      manifestText = await fetchText(new URL("manifest.json", url).href, signal, { stallMs });
    } catch (e) {
      if (!(e instanceof NetworkError && e.status === null && usable)) throw e;
      manifestText = usable.manifestText;
      offline = true;
    }
  }
  const manifest = parseManifest(manifestText);
  // Before the tokenizer and anything stored: asked for WebGPU without it, nothing else is worth doing.
  const choice = await chooseBackend(requested);
  if (choice.backend === "webgpu" && !globalThis.navigator?.gpu) {
    throw new WebGPUUnavailableError("navigator.gpu is missing");
  }
  // The whole manifest is validated by the Rust code that reads it natively (file names, config
  // bounds, every tensor inside the shards) before any other request is made or anything stored.
  const wasm = await wasmFor(choice.backend, options.relaxedSimd, signal);
  try {
    wasm.checkManifest(manifestText);
  } catch (e) {
    throw fromWasm(e);
  }
  const tokenizer = offline ? usable.tokenizerText : await tokenizerText(url, manifest, stored, signal, stallMs);
  if (signal?.aborted) throw abortError(signal);

  // 2. The wasm Loader: opens the device and allocates every buffer (or, for the CPU, checks the
  // model against the memory it may use and allocates every tensor), no weights yet. Before the
  // store: a model that cannot run here leaves nothing behind.
  let loader;
  try {
    const limit = cpuMemoryLimit();
    const options = {
      backend: choice.backend,
      adapterLabel: choice.label,
      memoryLimit: limit.bytes,
      memoryLimitReason: limit.reason,
    };
    if (maxContext != null) options.maxContext = maxContext;
    loader = await wasm.Loader.create(manifestText, tokenizer, options);
  } catch (e) {
    throw fromWasm(e);
  }

  // 3. What is stored, and room for what is not.
  const shards = manifest.shards;
  let have, download, isStored, missing, resumed, record;
  const hashes = new Set(shards.map((s) => s.sha256));
  try {
    if (signal?.aborted) throw abortError(signal);
    have = useCache ? await store.storedShards(url) : new Set();
    isStored = shards.map((s) => have.has(s.sha256));
    missing = shards.map((_, i) => i).filter((i) => !isStored[i]);
    download = { loaded: 0, reported: 0, total: missing.reduce((n, i) => n + shards[i].size, 0) };
    resumed = missing.length < shards.length ? { resumed: true } : {};
    if (useCache && !offline) {
      // An update: the complete version stored before this one is kept (and loads offline) until
      // this one is stored whole, unless the origin has no room for both.
      let previous;
      if (usable && usable.manifestText !== manifestText) {
        const { name, manifestText: text, tokenizerText: tokens, storedAt } = usable;
        previous = { name, manifestText: text, tokenizerText: tokens, storedAt };
      }
      const keep = (version) => new Set([...hashes, ...store.hashesOf(version)]);
      await store.deleteStaleShards(url, keep(previous));
      const needed = storageNeeded(manifest, manifestText, download.total);
      if (missing.length > 0) {
        try {
          await checkQuota(needed);
        } catch (e) {
          if (!(e instanceof QuotaExceededError && previous)) throw e;
          previous = undefined;
          await store.deleteStaleShards(url, keep(previous));
          await checkQuota(needed);
        }
      }
      // The record first, so that the shards stored below are findable (and resumable) at once.
      record = { url, name: manifest.name ?? "", manifestText, tokenizerText: tokenizer, storedAt: Date.now() };
      if (previous) record.previous = previous;
      await store.putModel(record);
    }
    if (signal?.aborted) throw abortError(signal);
  } catch (e) {
    loader.free();
    throw e;
  }

  // 4. Shards in order; downloads run ahead of the upload and store what they verified.
  const stop = new AbortController(); // ends the downloads when the load fails or is aborted
  const onAbort = () => stop.abort(abortError(signal));
  signal?.addEventListener("abort", onAbort, { once: true });
  const inflight = new Set(); // settled-never-rejecting twins of running downloads
  const pending = new Map(); // shard index -> Promise<ArrayBuffer>
  let started = 0;
  let consumed = 0;

  const fetchShard = async (i) => {
    const s = shards[i];
    const buffer = await fetchVerified(packageFileUrl(url, s.file), s, {
      signal: stop.signal,
      stallMs,
      onBytes: (n) => {
        download.loaded += n;
        if (download.loaded - download.reported >= PROGRESS_STEP) reportDownload(s.file);
      },
    });
    reportDownload(s.file);
    if (useCache) await store.putShard(url, s.sha256, buffer);
    return buffer;
  };
  const reportDownload = (file) => {
    download.reported = download.loaded;
    report({ phase: "download", loaded: download.loaded, total: download.total, file, ...resumed });
  };
  const startDownloads = () => {
    while (started < missing.length && started <= consumed + AHEAD) {
      const i = missing[started++];
      const p = fetchShard(i);
      const twin = p.then(() => {}, () => {});
      inflight.add(twin);
      twin.then(() => inflight.delete(twin));
      pending.set(i, p);
    }
  };

  let finished = false; // finish() consumes the loader, even when it throws
  try {
    const total = loader.totalBytes;
    const cached = { loaded: 0, total: shards.reduce((n, s, i) => n + (isStored[i] ? s.size : 0), 0) };
    let uploaded = 0;
    startDownloads();
    for (let i = 0; i < shards.length; i++) {
      if (signal?.aborted) throw abortError(signal);
      const s = shards[i];
      let buffer; // the only reference to the shard's bytes: collectable once fed
      if (isStored[i]) {
        buffer = await raceAbort(store.getShard(url, s.sha256), signal);
        if (buffer?.byteLength === s.size) {
          cached.loaded += s.size;
          report({ phase: "cache", loaded: cached.loaded, total: cached.total, file: s.file });
        } else {
          // Deleted since we looked (another tab, eviction): fetch it after all.
          download.total += s.size;
          buffer = await raceAbort(fetchShard(i), signal);
        }
      } else {
        buffer = await raceAbort(pending.get(i), signal);
        pending.delete(i);
        consumed++;
        startDownloads();
      }
      loader.feedShard(i, new Uint8Array(buffer));
      uploaded += s.size;
      report({ phase: choice.backend === "cpu" ? "memory" : "gpu", loaded: uploaded, total, file: s.file });
    }
    if (signal?.aborted) throw abortError(signal);
    if (record?.previous) {
      // Every shard of this version is stored: the one it replaces can go.
      const { previous, ...current } = record;
      await store.putModel(current);
      await store.deleteStaleShards(url, hashes);
    }
    finished = true;
    const engine = loader.finish();
    let hearth;
    try {
      hearth = new HearthEngine(engine, { backendReason: choice.reason });
    } catch (e) {
      engine.free();
      throw e;
    }
    report({ phase: "ready", loaded: total, total });
    return hearth;
  } catch (e) {
    stop.abort();
    if (!finished) loader.free();
    await Promise.all(inflight); // nothing is written after load() has rejected
    throw signal?.aborted ? abortError(signal) : fromWasm(e);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}
