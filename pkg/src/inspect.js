// Hearth.inspect(): what a package needs and whether this page can run it, from its manifest alone
// (one small request, nothing stored; for a GGUF URL, its header: gguf.js): the sizes come from the same plan `load()` checks before it
// downloads anything (hearth_core::plan through the wasm module's planModel), so a model inspect()
// says fits loads, and one it refuses, load() refuses with the same message.

import { InvalidArgumentError, NetworkError, abortError, fromWasm, raceAbort } from "./errors.js";
import { fetchText } from "./fetch.js";
import { ggufFiles, madeFrom, planGgufUrl } from "./gguf.js";
import { packageKey, parseManifest, quotaShortfall, storageNeeded, wasmFor } from "./load.js";
import { signalOf } from "./options.js";
import { checkBackend, chooseBackend, cpuMemoryLimit, probeGpu } from "./support.js";
import * as store from "./store.js";

const OPTIONS = ["maxContext", "backend", "revalidate", "signal"];

function checkInspectOptions(options) {
  if (options === null || typeof options !== "object") throw new InvalidArgumentError("options must be an object");
  for (const [k, v] of Object.entries(options)) {
    if (v != null && !OPTIONS.includes(k)) {
      throw new InvalidArgumentError(`options.${k} is not supported (inspect() takes ${OPTIONS.join(", ")})`);
    }
  }
  const { maxContext, backend, revalidate } = options;
  if (revalidate != null && typeof revalidate !== "boolean") {
    throw new InvalidArgumentError("options.revalidate must be a boolean");
  }
  if (!checkBackend(backend)) throw new InvalidArgumentError('options.backend must be "auto", "webgpu" or "cpu"');
  if (maxContext != null && !(Number.isSafeInteger(maxContext) && maxContext > 0)) {
    throw new InvalidArgumentError("options.maxContext must be a positive integer");
  }
}

/**
 * What planModel (and planGguf) check a model against for `choice` (chooseBackend's answer): the
 * adapter's largest binding and f16 KV cache on the GPU, the CPU engine's memory limit.
 */
export async function planOptionsFor(choice, maxContext) {
  const gpu = choice.backend === "webgpu" ? await probeGpu() : null;
  const limits = gpu?.adapter?.limits;
  const kvF16 = gpu?.adapter?.features.has("shader-f16") ?? false;
  const cpuLimit = cpuMemoryLimit();
  const planOptions = {
    maxContext,
    kvF16,
    binding: limits ? Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) : undefined,
    memoryLimit: cpuLimit.bytes,
    memoryLimitReason: cpuLimit.reason,
  };
  return { gpu, kvF16, planOptions };
}

/**
 * The manifest: fetched, or the stored copy when the network is unreachable; with `revalidate:
 * false`, a model stored whole is inspected without any request (as load() then loads it).
 */
async function manifestText(url, revalidate, signal) {
  const stored = async () => ((await store.usable()) ? store.usableVersion(await store.getModel(url)) : undefined);
  if (revalidate === false) {
    const copy = await stored();
    if (copy) return copy.manifestText;
  }
  try {
    return await fetchText(new URL("manifest.json", url).href, signal);
  } catch (e) {
    const copy = e instanceof NetworkError && e.status === null ? await stored() : undefined;
    if (!copy) throw e;
    return copy.manifestText;
  }
}

/**
 * A GGUF URL's package: planned from the file's header, with the shards load() stored of this very
 * file (gguf-load.js) counted as stored; or, with `revalidate: false` or offline, the package
 * stored whole from it, without a request. {text, manifest, plan, source}.
 */
async function ggufManifest(modelUrl, key, revalidate, wasm, planOptions, planModel, signal) {
  const stored = (await store.usable()) ? await raceAbort(store.getModel(key), signal) : undefined;
  const complete = await store.usableVersion(stored);
  const fromStore = () => {
    const text = complete.manifestText;
    return { text, manifest: parseManifest(text), plan: planModel(text), source: { kind: "gguf", bytes: complete.gguf?.length ?? null } };
  };
  if (complete && revalidate === false) return fromStore();
  let planned;
  try {
    planned = await planGgufUrl(ggufFiles(modelUrl), wasm, planOptions, { signal });
  } catch (e) {
    if (complete && e instanceof NetworkError && e.status === null) return fromStore();
    throw e;
  }
  // The planned manifest's shards have no hashes; the stored record's list those made so far.
  const manifest = madeFrom(stored, planned) ? JSON.parse(stored.manifestText) : planned.manifest;
  return { text: planned.manifestText, manifest, plan: planned.plan, source: { kind: "gguf", bytes: planned.length } };
}

/**
 * What the package at `modelUrl` needs, and whether this page can run it, before downloading it:
 * {name, architecture, parameters, downloadBytes, source: {kind, bytes}, storedBytes, backend,
 * backendReason, context, kvF16, memory: {weights, kvCache, working, total}, cpu, gpu, storage:
 * {needed, available}, fits, reasons[]}. `modelUrl` may also name a GGUF file: then only its header
 * is read (range requests), the figures are those of the package `hearth convert` makes of it (as
 * `hearth inspect MODEL.gguf` prints them), and `source` is {kind: "gguf", bytes: the file's length,
 * null when the server does not say}. `options`: maxContext, backend and revalidate as `load()`
 * takes them.
 */
export async function inspect(modelUrl, options = {}) {
  const gguf = ggufFiles(modelUrl) != null;
  const url = packageKey(modelUrl, "inspect");
  checkInspectOptions(options);
  const signal = signalOf(options);
  if (signal?.aborted) throw abortError(signal);
  const requested = options.backend ?? "auto";
  const choice = await chooseBackend(requested);
  const { gpu, kvF16, planOptions } = await planOptionsFor(choice, options.maxContext);
  // The plain build: planModel is the same in every build, and it starts no thread pool.
  const wasm = await wasmFor("webgpu", false, signal);
  const planModel = (text) => {
    try {
      return wasm.planModel(text, planOptions);
    } catch (e) {
      throw fromWasm(e);
    }
  };
  let text, manifest, plan, source;
  if (gguf) {
    ({ text, manifest, plan, source } = await ggufManifest(modelUrl, url, options.revalidate, wasm, planOptions, planModel, signal));
  } else {
    text = await manifestText(url, options.revalidate, signal);
    manifest = parseManifest(text);
    plan = planModel(text);
    source = { kind: "package", bytes: plan.downloadBytes };
  }

  const reasons = [...(choice.backend === "cpu" ? plan.cpuRefusals : plan.gpuRefusals)];
  if (choice.backend === "webgpu" && !gpu?.adapter) reasons.push(gpu?.reason ?? "no WebGPU adapter");
  // Storage: what is not stored yet, as load() asks the quota for it (the shards it downloads, the
  // manifest and the tokenizer).
  const usable = await store.usable();
  const have = usable ? await raceAbort(store.storedShards(url), signal) : new Set();
  const storedBytes = manifest.shards.reduce((n, s) => n + (have.has(s.sha256) ? s.size : 0), 0);
  const shardBytes = manifest.shards.reduce((n, s) => n + s.size, 0);
  const needed = storedBytes < shardBytes ? storageNeeded(manifest, text, shardBytes - storedBytes) : 0;
  const { available, error } = await quotaShortfall(needed);
  // Only where load() would need exactly this: it first deletes what an older version of this URL
  // left (and, short of room, the version it replaces), which inspect() cannot size.
  if (usable && needed > 0 && have.size === 0 && !(await store.getModel(url)) && error) reasons.push(error.message);
  const memory = choice.backend === "cpu" ? plan.cpu : plan.gpu;
  return {
    name: plan.name,
    architecture: plan.architecture,
    parameters: plan.parameters,
    downloadBytes: plan.downloadBytes,
    source,
    storedBytes,
    backend: choice.backend,
    backendReason: choice.reason,
    context: plan.context,
    kvF16: choice.backend === "webgpu" && kvF16,
    memory,
    cpu: plan.cpu,
    gpu: plan.gpu,
    storage: { needed, available },
    fits: reasons.length === 0,
    reasons,
  };
}
