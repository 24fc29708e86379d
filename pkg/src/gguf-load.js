// Hearth.load() of a GGUF URL: the file is converted into a package as it downloads and the package
// stored in IndexedDB under the URL, shard by shard, each with its own sha256; load() then loads the
// stored package as it loads any (so a later load is verified and works offline the same way). The
// header is read first (gguf.js), so a model that cannot run here, or does not fit the storage
// quota, is refused before any tensor data is fetched. A cut-off conversion resumes at its first
// missing shard, with a range request from the first tensor that shard needs. With the `sha256`
// option the whole file is fetched and hashed as it streams, and a mismatch deletes what it made.
// A new version of the file replaces the package made from the old one only once converted whole.
// A model split across files is their bytes back to back: each file is fetched in turn, whole
// after the one where the conversion starts (its header is bytes the converter skips).

import {
  AdapterLimitsError, HearthError, IntegrityError, InvalidArgumentError, NetworkError, OutOfMemoryError, QuotaExceededError,
  WebGPUUnavailableError, fromWasm,
} from "./errors.js";
import { get, STALL_TIMEOUT_MS } from "./fetch.js";
import { bodyStart, locate, madeFrom, planGgufUrl, validatorOf } from "./gguf.js";
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
 * Makes sure the package of the GGUF at `hrefs` (ggufFiles' answer: one file, or a split model's
 * first file or all its files) is stored whole under `key`: nothing to do when it is (with
 * `revalidate: false`, or offline, without a request; otherwise when the files' headers plan the
 * same package), else the conversion, resumed where an earlier one of the same files stopped. Runs
 * under the model's lock (load() holds it).
 */
export async function storeGguf(hrefs, key, options, signal) {
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
    planned = await planGgufUrl(hrefs, wasm, planOptions, { signal, stallMs });
  } catch (e) {
    if (complete && e instanceof NetworkError && e.status === null) return; // offline: the stored copy
    throw e;
  }
  if (complete && madeFrom(complete, planned)) return;
  const { files } = planned;
  // One hash per file (an array for a split model's files).
  const sha256 = options.sha256 == null ? null : [options.sha256].flat().map((h) => h.toLowerCase());
  if (sha256 && sha256.length !== files.length) {
    throw new InvalidArgumentError(
      `options.sha256 gives ${sha256.length} hash(es), and ${planned.name} is a model of ${files.length} file(s): ` +
        "give one per file, in order",
    );
  }
  // What Loader.create would refuse, refused before the download (the same checks, messages and
  // classes), on the engine loadPackage will take.
  const engine = choice.backend;
  const refusals = engine === "cpu" ? planned.plan.cpuRefusals : planned.plan.gpuRefusals;
  if (refusals.length > 0) {
    throw new (engine === "cpu" ? OutOfMemoryError : AdapterLimitsError)(refusals.join(" "));
  }

  let converter;
  try {
    converter = new wasm.GgufConverter(planned.headers, planned.extra);
  } catch (e) {
    throw fromWasm(e);
  }
  let hashers = null;
  let previous;
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
    // A complete package made from another version of the file stays (and loads offline) until
    // this one is whole, unless the origin has no room for both, as a package's update does.
    // Whatever else this URL stored goes; the room the rest needs is checked.
    previous = complete && !madeFrom(complete, planned) ? versionOf(complete) : undefined;
    const keep = () => new Set([...hashes.filter(Boolean), ...store.hashesOf(previous)]);
    await store.deleteStaleShards(key, keep());
    const missing = manifest.shards.slice(first).reduce((n, s) => n + s.size, 0);
    const tokenizerText = converter.tokenizerJson();
    const needed = storageNeeded(manifest, planned.manifestText, missing);
    try {
      await checkQuota(needed);
    } catch (e) {
      if (!(e instanceof QuotaExceededError && previous)) throw e;
      previous = undefined;
      await store.deleteStaleShards(key, keep());
      await checkQuota(needed);
    }
    const record = {
      url: key,
      name: manifest.name ?? "",
      manifestText: withHashes(manifest, hashes),
      tokenizerText,
      storedAt: Date.now(),
      gguf: {
        href: files[0].href,
        files: files.map((f) => f.href),
        length: planned.length,
        validator: planned.validator,
        planned: planned.manifestText,
      },
    };
    if (previous) record.previous = previous;
    await store.putModel(record);

    let from;
    try {
      from = first > 0 ? converter.resumeAt(first) : converter.position();
    } catch (e) {
      throw fromWasm(e);
    }
    const resumed = first > 0 ? { resumed: true } : {};
    // With `sha256`, every file is hashed whole as it streams (what comes before `from` too).
    hashers = sha256 ? files.map(() => new wasm.Sha256Stream()) : null;
    // Where each file begins in the files taken back to back (only the last's length may be unknown).
    const starts = files.map((_, i) => files.slice(0, i).reduce((n, f) => n + f.length, 0));
    const firstFile = hashers ? 0 : locate(files, from).index;
    // Where each fetch starts in its file: `from` in the first fetched, else the file's start.
    const fetchFrom = (i) => (hashers ? 0 : Math.max(0, from - starts[i]));
    // Progress counts the bytes this load fetches: from where each fetch starts, or whole files
    // where the server sends them whole.
    const todo = files.slice(firstFile).map((f, i) => (f.length == null ? null : f.length - fetchFrom(firstFile + i)));
    const progress = { loaded: 0, reported: 0, total: todo.includes(null) ? null : todo.reduce((a, b) => a + b, 0) };
    let current = files[firstFile];
    const reportDownload = () => {
      progress.reported = progress.loaded;
      report({ phase: "download", loaded: progress.loaded, total: progress.total, file: current.name, ...resumed });
    };
    for (let i = firstFile; i < files.length && (hashers || !converter.isDone()); i++) {
      current = files[i];
      const { href, length } = current;
      const start = fetchFrom(i);
      // The bytes of this file the converter takes: from `from` (if it is here) to the file's end.
      const begin = Math.max(0, from - starts[i]);
      const end = length ?? Infinity;
      let pos;
      await get(
        href,
        signal,
        stallMs,
        async (response, arm) => {
          const version = validatorOf(response);
          if (current.validator && version && version !== current.validator) {
            throw new NetworkError(href, null, undefined, "the file changed on the server since its header was read; load it again");
          }
          // A server without ranges sends the whole file: what comes before `begin` is not converted.
          pos = bodyStart(response, href, start, length);
          if (pos < start && progress.total != null) progress.total += start - pos; // sent whole
          const reader = response.body.getReader();
          try {
            // To the end of the file when it is hashed, else to the last tensor's data.
            while (hashers || !converter.isDone()) {
              const { done, value } = await reader.read();
              if (done) break;
              arm();
              hashers?.[i].update(value);
              progress.loaded += value.length;
              const lo = Math.min(Math.max(begin - pos, 0), value.length);
              const hi = Math.min(Math.max(end - pos, 0), value.length);
              pos += value.length;
              if (hi <= lo) continue;
              let finished;
              try {
                finished = converter.feed(value.subarray(lo, hi));
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
                if (!hashers) {
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
      // The next file's bytes follow this one's: it must have been all there.
      if (i + 1 < files.length && !converter.isDone() && pos < end) {
        throw new NetworkError(href, null, undefined, `the file ended at byte ${pos} of ${length}`);
      }
    }
    if (converter.isDone()) progress.loaded = progress.total ?? progress.loaded; // what follows the last tensor is not needed
    reportDownload();
    if (!converter.isDone()) {
      const at = converter.position() - starts[files.indexOf(current)];
      throw new NetworkError(current.href, null, undefined, `the file ended at byte ${at}, before its last tensor's data`);
    }
    if (hashers) {
      for (const [i, hasher] of hashers.entries()) {
        const actual = hasher.hex();
        if (actual !== sha256[i]) {
          // Made from a file that is not the one asked for: none of it stays (the version stored
          // before it, if any, does).
          await dropConversion(key, previous);
          throw new IntegrityError(files[i].name, sha256[i], actual, "sha256", "the sha256 option's");
        }
      }
    }
    if (hashers || previous) {
      // Whole (and verified): the record lists every shard, and the version it replaces goes.
      delete record.previous;
      record.manifestText = withHashes(manifest, hashes);
      await store.putModel(record);
      await store.deleteStaleShards(key, new Set(hashes));
    }
  } finally {
    converter.free();
    for (const hasher of hashers ?? []) hasher.free();
  }
}

/** A stored record as the version an update keeps ({name, manifestText, tokenizerText, storedAt, gguf}). */
function versionOf(record) {
  const { url: _url, previous: _previous, ...version } = record;
  return version;
}

/** Undoes a conversion: back to the version stored before it, or nothing where there was none. */
async function dropConversion(key, previous) {
  if (!previous) return store.deleteModel(key);
  await store.putModel({ url: key, ...previous });
  await store.deleteStaleShards(key, new Set(store.hashesOf(previous)));
}

/** `e` as a HearthError (fetch's wrapper would call anything else a network failure). */
function asHearthError(e, what) {
  const error = fromWasm(e);
  return error instanceof HearthError ? error : new HearthError(`${what} failed: ${e?.message ?? e}`, { cause: e });
}
