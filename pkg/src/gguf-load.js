// Hearth.load() of a GGUF URL: the file is converted into a package as it downloads and the package
// stored in IndexedDB under the URL, shard by shard, each with its own sha256; load() then loads the
// stored package as it loads any (so a later load is verified and works offline the same way). The
// header is read first (gguf.js), so a model that cannot run here, or does not fit the storage
// quota, is refused before any tensor data is fetched. A cut-off conversion resumes at its first
// missing shard, with a range request from the first tensor that shard needs. With the `sha256`
// option the whole file is fetched and hashed as it streams, and a mismatch deletes what it made.

import {
  AdapterLimitsError, HearthError, IntegrityError, NetworkError, OutOfMemoryError, WebGPUUnavailableError, fromWasm,
} from "./errors.js";
import { get, STALL_TIMEOUT_MS } from "./fetch.js";
import { bodyStart, madeFrom, planGgufUrl, validatorOf } from "./gguf.js";
import { planOptionsFor } from "./inspect.js";
import { checkQuota, reporter, storageNeeded, wasmFor } from "./load.js";
import { chooseBackend } from "./support.js";
import * as store from "./store.js";

const PROGRESS_STEP = 4 << 20; // report download progress at least every 4 MiB

/** The planned manifest's text with the shards' hashes known so far ("" for the rest). */
function withHashes(manifest, hashes) {
  return JSON.stringify({ ...manifest, shards: manifest.shards.map((s, i) => ({ ...s, sha256: hashes[i] })) });
}

/**
 * Makes sure the package of the GGUF at `href` is stored whole under `key`: nothing to do when it
 * is (with `revalidate: false`, or offline, without a request; otherwise when the file's header
 * plans the same package), else the conversion, resumed where an earlier one of the same file
 * stopped. Runs under the model's lock (load() holds it).
 */
export async function storeGguf(href, key, options, signal) {
  const { onProgress, maxContext, revalidate = true, backend: requested = "auto", relaxedSimd } = options;
  const stallMs = options.stallTimeout ?? STALL_TIMEOUT_MS;
  const report = reporter(onProgress);
  if (!(await store.usable())) {
    throw new HearthError(
      "IndexedDB is not usable here, and a GGUF URL is converted into this site's storage before it loads: " +
        "convert it with `hearth convert MODEL.gguf --out DIR` and load DIR instead",
    );
  }
  const stored = await store.getModel(key);
  const complete = await store.usableVersion(stored);
  if (complete && !revalidate) return;

  const choice = await chooseBackend(requested);
  const { gpu, planOptions } = await planOptionsFor(choice, maxContext);
  // Asked for WebGPU without it: refused before the download, not after the conversion.
  if (choice.backend === "webgpu" && !gpu?.adapter) throw new WebGPUUnavailableError(gpu?.reason ?? "no WebGPU adapter");
  const wasm = await wasmFor(choice.backend, relaxedSimd, signal);
  let planned;
  try {
    planned = await planGgufUrl(href, wasm, planOptions, { signal, stallMs });
  } catch (e) {
    if (complete && e instanceof NetworkError && e.status === null) return; // offline: the stored copy
    throw e;
  }
  if (complete && madeFrom(complete, planned)) return;
  // What Loader.create would refuse, refused before the download (the same checks and messages).
  const refusals = choice.backend === "cpu" ? planned.plan.cpuRefusals : planned.plan.gpuRefusals;
  if (refusals.length > 0) {
    throw new (choice.backend === "cpu" ? OutOfMemoryError : AdapterLimitsError)(refusals.join(" "));
  }

  let converter;
  try {
    converter = new wasm.GgufConverter(planned.header, planned.length ?? Number.MAX_SAFE_INTEGER, planned.name, planned.extra);
  } catch (e) {
    throw fromWasm(e);
  }
  let hasher = null;
  try {
    const { manifest } = planned;
    // The shards an earlier conversion of this very file stored, in order from the first. (With
    // `sha256` the record lists none until the whole file is verified, so nothing unverified is
    // reused.)
    const hashes = manifest.shards.map(() => "");
    if (madeFrom(stored, planned)) {
      const have = await store.storedShards(key);
      const old = store.shardsOf(stored.manifestText);
      for (let i = 0; i < hashes.length && old[i]?.sha256 && have.has(old[i].sha256); i++) hashes[i] = old[i].sha256;
    }
    const first = hashes.indexOf("");
    // Whatever else this URL stored (another file's package) goes; the room the rest needs is checked.
    await store.deleteStaleShards(key, new Set(hashes.filter(Boolean)));
    const missing = manifest.shards.slice(first).reduce((n, s) => n + s.size, 0);
    const tokenizerText = converter.tokenizerJson();
    await checkQuota(storageNeeded(manifest, planned.manifestText, missing));
    const record = {
      url: key,
      name: manifest.name ?? "",
      manifestText: withHashes(manifest, hashes),
      tokenizerText,
      storedAt: Date.now(),
      gguf: { href, length: planned.length, validator: planned.validator, planned: planned.manifestText },
    };
    await store.putModel(record);

    let from;
    try {
      from = first > 0 ? converter.resumeAt(first) : converter.position();
    } catch (e) {
      throw fromWasm(e);
    }
    const resumed = first > 0 ? { resumed: true } : {};
    // With `sha256`, the whole file is hashed as it streams (what comes before `from` too).
    hasher = options.sha256 ? new wasm.Sha256Stream() : null;
    const start = hasher ? 0 : from;
    // Progress counts the file's bytes this load fetches: from `start`, or all of them where the
    // server sends the whole file.
    const progress = { loaded: 0, reported: 0, total: null };
    const reportDownload = () => {
      progress.reported = progress.loaded;
      report({ phase: "download", loaded: progress.loaded, total: progress.total, file: planned.name, ...resumed });
    };
    await get(
      href,
      signal,
      stallMs,
      async (response, arm) => {
        const version = validatorOf(response);
        if (planned.validator && version && version !== planned.validator) {
          throw new NetworkError(href, null, undefined, "the file changed on the server since its header was read; load it again");
        }
        // A server without ranges sends the whole file: what comes before `from` is not converted.
        const at = bodyStart(response, href, start, planned.length);
        let skip = from - at;
        progress.total = planned.length == null ? null : planned.length - at;
        const reader = response.body.getReader();
        try {
          // To the end of the file when it is hashed, else to the last tensor's data.
          while (hasher || !converter.isDone()) {
            const { done, value } = await reader.read();
            if (done) break;
            arm();
            hasher?.update(value);
            const n = Math.min(skip, value.length);
            skip -= n;
            progress.loaded += value.length;
            let finished;
            try {
              finished = converter.feed(value.subarray(n));
            } catch (e) {
              throw asHearthError(e, `converting ${planned.name}`);
            }
            arm(); // a large tensor converts in one go
            for (const shard of finished) {
              try {
                await store.putShard(key, shard.sha256, shard.bytes.buffer);
              } catch (e) {
                throw asHearthError(e, `storing shard ${shard.index} of ${planned.name}`);
              }
              hashes[shard.index] = shard.sha256;
              if (!hasher) {
                record.manifestText = withHashes(manifest, hashes);
                await store.putModel(record);
              }
              arm();
            }
            if (progress.loaded - progress.reported >= PROGRESS_STEP) reportDownload();
          }
        } finally {
          reader.cancel().catch(() => {});
        }
      },
      start > 0 ? { Range: `bytes=${start}-` } : {},
    );
    if (converter.isDone()) progress.loaded = progress.total ?? progress.loaded; // what follows the last tensor is not needed
    reportDownload();
    if (!converter.isDone()) {
      throw new NetworkError(href, null, undefined, `the file ended at byte ${converter.position()}, before its last tensor's data`);
    }
    if (hasher) {
      const actual = hasher.hex();
      if (actual !== options.sha256.toLowerCase()) {
        // Made from a file that is not the one asked for: none of it stays.
        await store.deleteModel(key);
        throw new IntegrityError(planned.name, options.sha256.toLowerCase(), actual, "sha256", "the sha256 option's");
      }
      // Verified: now the record lists the shards (and loads).
      record.manifestText = withHashes(manifest, hashes);
      await store.putModel(record);
    }
  } finally {
    converter.free();
    hasher?.free();
  }
}

/** `e` as a HearthError (fetch's wrapper would call anything else a network failure). */
function asHearthError(e, what) {
  const error = fromWasm(e);
  return error instanceof HearthError ? error : new HearthError(`${what} failed: ${e?.message ?? e}`, { cause: e });
}
