// A GGUF URL's header, and the Hearth package it plans, from the file's first bytes only: range
// requests of 2 MiB, then 4, 8, ... (Gemma 3's 262k-token vocabulary needs 8 MiB), or, from a server
// that ignores Range, one stream cancelled as soon as the header is read. The plan is wasm's
// planGguf (hearth_core's plan_gguf_header, the converter's own layout), so what inspect() sizes is
// the package `hearth convert` would write.

import { BadPackageError, NetworkError, fromWasm } from "./errors.js";
import { STALL_TIMEOUT_MS, get } from "./fetch.js";

/** The first request's bytes; each later one doubles what is held. */
export const FIRST_READ = 2 << 20;
/** No header is read past this: a file claiming more is refused, not downloaded. */
export const MAX_HEADER = 64 << 20;
/** The length given to the plan when the server does not say (it then checks no offset against it). */
const UNKNOWN_LENGTH = Number.MAX_SAFE_INTEGER;

/** Whether `url` names a GGUF file (its path ends in .gguf), rather than a package directory. */
export function isGgufUrl(url) {
  try {
    return /\.gguf$/i.test(new URL(String(url), globalThis.location?.href).pathname);
  } catch {
    return false;
  }
}

/** The file's name, for messages and the package's name where the GGUF has no general.name. */
function fileName(url) {
  const last = new URL(url).pathname.split("/").pop();
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

/** Bytes appended as they arrive, in a buffer that doubles. */
class Prefix {
  bytes = new Uint8Array(1 << 16);
  length = 0;
  append(chunk) {
    if (this.length + chunk.length > this.bytes.length) {
      const grown = new Uint8Array(Math.max(this.bytes.length * 2, this.length + chunk.length));
      grown.set(this.view());
      this.bytes = grown;
    }
    this.bytes.set(chunk, this.length);
    this.length += chunk.length;
  }
  view() {
    return this.bytes.subarray(0, this.length);
  }
}

/**
 * What says which version of the file a response is: its Last-Modified (readable cross-origin) or
 * a strong ETag; null when the server gives neither.
 */
export function validatorOf(response) {
  const etag = response.headers.get("ETag");
  return response.headers.get("Last-Modified") ?? (etag && !etag.startsWith("W/") ? etag : null);
}

/**
 * Whether a stored model `record` was made from the file `planned` (planGgufUrl's answer) read:
 * the same header (so the same plan), length and version as the server names it.
 */
export function madeFrom(record, planned) {
  const made = record?.gguf;
  return made?.planned === planned.manifestText && made.length === planned.length && made.validator === planned.validator;
}

/** The total of a 206's `Content-Range: bytes a-b/total` (null where unknown or unreadable). */
function rangeOf(response) {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(response.headers.get("Content-Range") ?? "");
  return m ? { start: Number(m[1]), end: Number(m[2]), total: m[3] === "*" ? null : Number(m[3]) } : null;
}

/**
 * The file offset `response`'s body begins at: `start` for a 206 that answers the range asked (its
 * Content-Range, where readable, starting there and, where both are known, totalling `length`), 0
 * for the whole file (a server that ignores Range). Another range is a NetworkError.
 */
export function bodyStart(response, url, start, length = null) {
  if (response.status !== 206) return 0;
  const r = rangeOf(response);
  if (r && (r.start !== start || (length != null && r.total != null && r.total !== length))) {
    throw new NetworkError(url, null, undefined, `asked for bytes ${start}- of ${length ?? "?"}, the server sent ${r.start}- of ${r.total ?? "?"}`);
  }
  return start;
}

/**
 * The package the GGUF at `url` plans: {manifest, manifestText, plan, length, ranges, validator,
 * name, header, extra}.
 * `plan` is planModel's answer for it under `planOptions`; `length` the file's bytes (null when the
 * server does not say); `ranges` whether the server answered range requests; `validator` the
 * file's version as the server names it (validatorOf); `header` the bytes
 * read (the whole header) and `extra` the tensors planning read apart (LongRoPE's factors): what a
 * GgufConverter starts from. Refuses an architecture no
 * engine runs, and a file that is not a GGUF, before any tensor data is downloaded.
 */
export async function planGgufUrl(url, wasm, planOptions, { signal, stallMs = STALL_TIMEOUT_MS } = {}) {
  const name = fileName(url);
  const prefix = new Prefix();
  let length = null;
  let ranges = false;
  let validator = null;
  // Tensors planning reads besides the header (LongRoPE's factors), fetched apart: name -> bytes.
  const extra = {};
  const plan = () => {
    let planned;
    try {
      planned = wasm.planGguf(prefix.view(), length ?? UNKNOWN_LENGTH, name, planOptions, extra);
    } catch (e) {
      throw fromWasm(e);
    }
    if (!planned || planned.needs) return planned ?? null;
    const { manifestText, plan } = planned;
    return { manifest: JSON.parse(manifestText), manifestText, plan, length, ranges, validator, name, header: prefix.view(), extra };
  };
  // The header is in; what planning still needs is fetched (a few hundred bytes each), then it plans.
  const complete = async (planned) => {
    if (!planned.needs) return planned;
    for (const { name: tensor, start, end } of planned.needs) extra[tensor] = await readRange(url, start, end, signal, stallMs);
    const again = plan();
    if (!again || again.needs) throw new BadPackageError(`${name}: its factor tensors did not plan`);
    return again;
  };
  const tooLarge = () =>
    new BadPackageError(`${name}: its header runs past ${MAX_HEADER >> 20} MiB, more than Hearth reads of a GGUF's header`);

  // Reads `response`'s body onto the prefix; with `until`, stops (cancelling the rest) once it
  // returns a result, which it is asked each time the prefix has doubled.
  const read = async (response, arm, limit, until) => {
    const reader = response.body.getReader();
    let next = prefix.length + FIRST_READ;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return null;
        arm();
        if (prefix.length + value.length > limit) {
          if (!until) throw new NetworkError(url, null, undefined, "the server sent more bytes than the range asked for");
          prefix.append(value.subarray(0, limit - prefix.length));
          const result = until();
          if (result) return result;
          throw tooLarge();
        }
        prefix.append(value);
        if (until && prefix.length >= next) {
          const result = until();
          if (result) return result;
          next = prefix.length * 2;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  };

  const first = await get(
    url,
    signal,
    stallMs,
    async (response, arm) => {
      validator = validatorOf(response);
      if (response.status === 206) {
        bodyStart(response, url, 0);
        ranges = true;
        length = rangeOf(response)?.total ?? null;
        await read(response, arm, FIRST_READ);
        return plan();
      }
      // The whole file is coming: read until the header is there, then stop.
      const encoded = response.headers.get("Content-Encoding");
      const declared = Number(response.headers.get("Content-Length"));
      length = !encoded && Number.isSafeInteger(declared) && declared > 0 ? declared : null;
      const planned = await read(response, arm, MAX_HEADER, plan);
      if (planned) return planned;
      length = prefix.length; // it ended: that is all of it
      return plan();
    },
    { Range: `bytes=0-${FIRST_READ - 1}` },
  );
  if (first) return complete(first);

  for (;;) {
    const from = prefix.length;
    if (from >= MAX_HEADER) throw tooLarge();
    const to = Math.min(from * 2, MAX_HEADER, length ?? Infinity);
    if (to <= from) throw new NetworkError(url, null, undefined, `the file ends at byte ${length}, inside its header`);
    await get(
      url,
      signal,
      stallMs,
      async (response, arm) => {
        if (bodyStart(response, url, from) !== from) {
          throw new NetworkError(url, null, undefined, `asked for bytes ${from}-${to - 1}, the server answered with others (HTTP ${response.status})`);
        }
        await read(response, arm, to);
      },
      { Range: `bytes=${from}-${to - 1}` },
    );
    if (prefix.length === from) throw new NetworkError(url, null, undefined, `the server sent no bytes from ${from}`);
    const planned = plan();
    if (planned) return complete(planned);
  }
}

/**
 * Bytes `start` to `end` (exclusive) of `url`: a range request, or, where the server sends the
 * whole file, its stream read that far and cancelled.
 */
async function readRange(url, start, end, signal, stallMs) {
  const out = new Uint8Array(end - start);
  let at = 0;
  await get(
    url,
    signal,
    stallMs,
    async (response, arm) => {
      let skip = start - bodyStart(response, url, start);
      const reader = response.body.getReader();
      try {
        while (at < out.length) {
          const { done, value } = await reader.read();
          if (done) break;
          arm();
          const n = Math.min(skip, value.length);
          skip -= n;
          const piece = value.subarray(n, n + out.length - at);
          out.set(piece, at);
          at += piece.length;
        }
      } finally {
        reader.cancel().catch(() => {});
      }
    },
    { Range: `bytes=${start}-${end - 1}` },
  );
  if (at < out.length) throw new NetworkError(url, null, undefined, `the file ended before byte ${end}`);
  return out;
}
