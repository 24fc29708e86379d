// Downloads of package files: streamed into one buffer of the size the manifest promises and checked
// against its sha256 before anyone can store or use the bytes.
// `cache: "no-store"`: IndexedDB is the cache; the HTTP cache would only be a second copy on disk
// (and the demo's service worker leaves no-store requests alone, www/sw.js).

import { BadPackageError, HearthError, IntegrityError, NetworkError, OutOfMemoryError, abortError } from "./errors.js";

/** How long a request may go without a byte arriving before it fails (load's `stallTimeout`). */
export const STALL_TIMEOUT_MS = 30_000;

/**
 * The URL of `file` in the package whose directory is `dir`: on the same origin, directly inside
 * the directory. The manifest's names are checked in wasm too; this is the check at the point of use.
 */
export function packageFileUrl(dir, file) {
  const base = new URL(dir);
  let u;
  try {
    u = new URL(file, base);
  } catch {
    u = null;
  }
  // The characters `hearth convert` writes names with: no "/", and no "%" that a server would decode.
  const name = u?.pathname.startsWith(base.pathname) ? u.pathname.slice(base.pathname.length) : "";
  if (!u || u.origin !== base.origin || !/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/.test(name) || u.search || u.hash) {
    throw new BadPackageError(`manifest.json names the file ${JSON.stringify(file)}, which is not a plain name inside the package`);
  }
  return u.href;
}

/**
 * An AbortSignal that follows `signal` and also fires when `arm()` has not been called for `ms`:
 * then `stalled` is true and the request fails with a NetworkError saying so.
 */
function stallWatch(url, signal, ms) {
  const controller = new AbortController();
  const watch = { signal: controller.signal, stalled: false };
  let timer;
  watch.arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      watch.stalled = true;
      controller.abort();
    }, ms);
  };
  const follow = () => controller.abort(signal.reason);
  if (signal?.aborted) follow();
  signal?.addEventListener("abort", follow, { once: true });
  watch.done = () => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", follow);
  };
  // What a failure of the request means: the caller's abort, a stall, or the network.
  watch.error = (e) => {
    if (signal?.aborted) return abortError(signal);
    if (watch.stalled) {
      return new NetworkError(url, null, undefined, `no data arrived for ${ms / 1000} s, so the download was stopped (what was verified so far is kept; loading again resumes)`);
    }
    return e instanceof HearthError ? e : new NetworkError(url, null, e);
  };
  watch.arm();
  return watch;
}

/** GET `url` (with `headers`), then `read(response, arm)` with the stall timer re-armed by each chunk. */
export async function get(url, signal, stallMs, read, headers = {}) {
  const watch = stallWatch(url, signal, stallMs);
  try {
    const response = await fetch(url, { cache: "no-store", signal: watch.signal, headers });
    if (!response.ok) throw new NetworkError(url, response.status);
    watch.arm();
    return await read(response, watch.arm);
  } catch (e) {
    throw watch.error(e);
  } finally {
    watch.done();
  }
}

/** GET a small file as text, with no hash to check (the manifest itself). */
export function fetchText(url, signal, { stallMs = STALL_TIMEOUT_MS } = {}) {
  return get(url, signal, stallMs, async (response, arm) => {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return text;
      arm();
      text += value;
    }
  });
}

/** Lowercase hex SHA-256 of `bytes`. */
export async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new HearthError("crypto.subtle is missing: serve the page over https or from localhost.");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Downloads `url`, which the manifest lists as {file, size, sha256}, and resolves with its verified
 * bytes as an ArrayBuffer of exactly `size` bytes. The buffer is allocated before the request, so a
 * size the browser cannot hold fails without a byte being asked for.
 * @param {{file: string, size: number, sha256: string}} entry
 * @param {{signal?: AbortSignal, onBytes?: (n: number) => void, stallMs?: number}} [options] onBytes
 *   gets each chunk's length; stallMs: how long without a byte before the download fails
 */
export async function fetchVerified(url, entry, { signal, onBytes, stallMs = STALL_TIMEOUT_MS } = {}) {
  let bytes;
  try {
    bytes = new Uint8Array(entry.size);
  } catch (e) {
    throw new OutOfMemoryError(`${entry.file} is ${entry.size} bytes, more than this browser could allocate for it (${e.message})`, { cause: e });
  }
  const received = await get(url, signal, stallMs, async (response, arm) => {
    let n = 0;
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return n;
        arm();
        if (n + value.byteLength > entry.size) {
          throw new IntegrityError(entry.file, `${entry.size} bytes`, `more than ${entry.size} bytes`, "size");
        }
        bytes.set(value, n);
        n += value.byteLength;
        onBytes?.(value.byteLength);
      }
    } catch (e) {
      reader.cancel().catch(() => {});
      throw e;
    }
  });
  if (received !== entry.size) {
    throw new IntegrityError(entry.file, `${entry.size} bytes`, `${received} bytes`, "size");
  }
  const actual = await sha256Hex(bytes);
  if (actual !== entry.sha256.toLowerCase()) throw new IntegrityError(entry.file, entry.sha256, actual);
  return bytes.buffer;
}
