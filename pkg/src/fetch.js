// Downloads of package files: streamed into one buffer of the size the manifest promises and checked
// against its sha256 before anyone can store or use the bytes.
// `cache: "no-store"`: IndexedDB is the cache; the HTTP cache would only be a second copy on disk.

import { HearthError, IntegrityError, NetworkError, abortError } from "./errors.js";

async function get(url, signal) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", signal });
  } catch (e) {
    if (signal?.aborted) throw abortError(signal);
    throw new NetworkError(url, null, e);
  }
  if (!response.ok) throw new NetworkError(url, response.status);
  return response;
}

/** GET a small file as text, with no hash to check (the manifest itself). */
export async function fetchText(url, signal) {
  const response = await get(url, signal);
  try {
    return await response.text();
  } catch (e) {
    if (signal?.aborted) throw abortError(signal);
    throw new NetworkError(url, null, e);
  }
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
 * bytes as an ArrayBuffer of exactly `size` bytes.
 * @param {{file: string, size: number, sha256: string}} entry
 * @param {{signal?: AbortSignal, onBytes?: (n: number) => void}} [options] onBytes gets each chunk's length
 */
export async function fetchVerified(url, entry, { signal, onBytes } = {}) {
  const response = await get(url, signal);
  const bytes = new Uint8Array(entry.size);
  let received = 0;
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (received + value.byteLength > entry.size) {
        throw new IntegrityError(entry.file, `${entry.size} bytes`, `more than ${entry.size} bytes`, "size");
      }
      bytes.set(value, received);
      received += value.byteLength;
      onBytes?.(value.byteLength);
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    if (signal?.aborted) throw abortError(signal);
    if (e instanceof IntegrityError) throw e;
    throw new NetworkError(url, null, e);
  }
  if (received !== entry.size) {
    throw new IntegrityError(entry.file, `${entry.size} bytes`, `${received} bytes`, "size");
  }
  const actual = await sha256Hex(bytes);
  if (actual !== entry.sha256.toLowerCase()) throw new IntegrityError(entry.file, entry.sha256, actual);
  return bytes.buffer;
}
