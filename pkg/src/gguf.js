// A GGUF URL's header (each file's, for a model split across files), and the Hearth package it
// plans, from the files' first bytes only: range requests of 2 MiB, then 4, 8, ... (Gemma 3's
// 262k-token vocabulary needs 8 MiB), or, from a server that ignores Range, one stream cancelled as
// soon as the header is read. The plan is wasm's planGguf (hearth_core's plan_gguf_header, the
// converter's own layout), so what inspect() sizes is the package `hearth convert` would write.

import { BadPackageError, NetworkError, fromWasm } from "./errors.js";
import { STALL_TIMEOUT_MS, get } from "./fetch.js";

/** The first request's bytes; each later one doubles what is held. */
export const FIRST_READ = 2 << 20;
/**
 * The first request's bytes for a split model's later files: their headers are only their own
 * tensors' entries (SmolLM2's second of three: 9 KB).
 */
const LATER_FIRST_READ = 64 << 10;
/**
 * No header is read past this (a split model's files' together): a file claiming more is refused,
 * not downloaded.
 */
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
 * The GGUF files `modelUrl` names, as absolute URLs: one URL ending in .gguf (for the first file
 * of a split model, `NAME-00001-of-0000N.gguf`, the others are found by name once its header is
 * read), or an array of them (a split model's files, in order, where their names or queries are
 * not llama.cpp's pattern: signed URLs). null for anything else.
 */
export function ggufFiles(modelUrl) {
  const urls = Array.isArray(modelUrl) ? modelUrl : [modelUrl];
  if (urls.length === 0 || !urls.every((u) => (typeof u === "string" || u instanceof URL) && isGgufUrl(u))) return null;
  return urls.map((u) => new URL(String(u), globalThis.location?.href).href);
}

/**
 * The URLs of all `planned.splits` files of the split model whose first file is at `first` (its
 * header read): the `given` URLs where there are several, or the names planGguf gives by
 * llama.cpp's naming, in the first file's folder and with its query.
 */
function splitUrls(given, first, planned) {
  const { splits, names } = planned;
  if (given.length > 1) {
    if (given.length !== splits) {
      throw new BadPackageError(`${fileName(first)} is split 1 of ${splits} of a model, and ${given.length} URLs were given`);
    }
    return given;
  }
  if (!names) {
    throw new BadPackageError(
      `${fileName(first)} is split 1 of ${splits} of a model, and its name does not say where the others are: ` +
        `give all ${splits} files' URLs, in order, as an array`,
    );
  }
  return names.map((name) => {
    const url = new URL(first);
    url.pathname = url.pathname.replace(/[^/]*$/, encodeURIComponent(name));
    return url.href;
  });
}

/**
 * The package the GGUF at `urls` (ggufFiles' answer) plans: {manifest, manifestText, plan, files,
 * headers, length, validator, name, extra}. `plan` is planModel's answer for it under
 * `planOptions`; `files` one entry per file (a split model has several: found by name, or the URLs
 * given): {href, name, length (null where the server does not say), ranges (whether the server
 * answered range requests), validator (the file's version as the server names it: validatorOf)};
 * `headers` the bytes read of each (its whole header) as planGguf and a GgufConverter take them;
 * `length` all the files' bytes (null where unknown), `validator` what names all their versions;
 * `extra` the tensors planning read apart (LongRoPE's factors). Refuses an architecture no engine
 * runs, and a file that is not a GGUF, before any tensor data is downloaded.
 */
export async function planGgufUrl(urls, wasm, planOptions, { signal, stallMs = STALL_TIMEOUT_MS } = {}) {
  // Each file read so far: {href, name, prefix, length, ranges, validator}.
  const files = [];
  // Tensors planning reads besides the header (LongRoPE's factors), fetched apart: name -> bytes.
  const extra = {};
  const headers = () => files.map((f) => ({ prefix: f.prefix.view(), length: f.length ?? UNKNOWN_LENGTH, name: f.name }));
  const plan = () => {
    try {
      return wasm.planGguf(headers(), planOptions, extra) ?? null;
    } catch (e) {
      throw fromWasm(e);
    }
  };
  let hrefs = urls;
  let planned;
  for (;;) {
    const href = hrefs[files.length];
    const file = { href, name: fileName(href), prefix: new Prefix(), length: null, ranges: false, validator: null };
    files.push(file);
    const held = files.reduce((n, f) => n + f.prefix.length, 0);
    const firstRead = files.length === 1 ? FIRST_READ : LATER_FIRST_READ;
    planned = await readHeader(file, plan, { firstRead, limit: MAX_HEADER - held }, signal, stallMs);
    if (!planned.splits) break;
    // This file's header is in, and the model has more files: their offsets follow its length.
    if (file.length == null) {
      throw new NetworkError(href, null, undefined, "the server does not say how long this file of a split model is");
    }
    if (files.length === 1) hrefs = splitUrls(urls, href, planned);
    if (files.length >= hrefs.length) throw new BadPackageError(`${files[0].name}: its files did not plan`);
  }
  if (files.length < urls.length) {
    throw new BadPackageError(`${files[0].name} is a model in one file, and ${urls.length} URLs were given`);
  }
  if (planned.needs) {
    // The header is in; what planning still needs is fetched (a few hundred bytes each), then it plans.
    for (const { name: tensor, start, end } of planned.needs) {
      const { file, at } = locate(files, start);
      extra[tensor] = await readRange(file.href, at, at + end - start, signal, stallMs);
    }
    planned = plan();
    if (!planned || planned.needs) throw new BadPackageError(`${files[0].name}: its factor tensors did not plan`);
  }
  const { manifestText, plan: sizes } = planned;
  const lengths = files.map((f) => f.length);
  return {
    manifest: JSON.parse(manifestText),
    manifestText,
    plan: sizes,
    files: files.map(({ href, name, length, ranges, validator }) => ({ href, name, length, ranges, validator })),
    headers: headers(),
    length: lengths.includes(null) ? null : lengths.reduce((a, b) => a + b, 0),
    // One file: its version as it is (what records stored before split models hold).
    validator: files.length === 1 ? files[0].validator : JSON.stringify(files.map((f) => f.validator)),
    name: files[0].name,
    extra,
  };
}

/** The file holding byte `offset` of `files` taken back to back, and where in it: {file, index, at}. */
export function locate(files, offset) {
  let start = 0;
  for (const [index, file] of files.entries()) {
    if (file.length == null || offset < start + file.length || index === files.length - 1) {
      return { file, index, at: offset - start };
    }
    start += file.length;
  }
  throw new RangeError("no files");
}

/**
 * Reads `file`'s header (`file.href`) onto `file.prefix` until `plan()` answers: a range request of
 * `firstRead` bytes, then doubling, or one stream read that far and cancelled; never more than
 * `limit` bytes. Sets the file's length, ranges and validator; returns plan()'s answer.
 */
async function readHeader(file, plan, { firstRead, limit }, signal, stallMs) {
  const { href: url, name, prefix } = file;
  const tooLarge = () =>
    new BadPackageError(
      `${name}: its header runs past what Hearth reads of a GGUF's header (${MAX_HEADER >> 20} MiB, a split model's files together)`,
    );

  // Reads `response`'s body onto the prefix; with `until`, stops (cancelling the rest) once it
  // returns a result, which it is asked each time the prefix has doubled.
  const read = async (response, arm, limit, until) => {
    const reader = response.body.getReader();
    let next = prefix.length + firstRead;
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
      file.validator = validatorOf(response);
      if (response.status === 206) {
        bodyStart(response, url, 0);
        file.ranges = true;
        file.length = rangeOf(response)?.total ?? null;
        await read(response, arm, Math.min(firstRead, limit));
        return plan();
      }
      // The whole file is coming: read until the header is there, then stop.
      const encoded = response.headers.get("Content-Encoding");
      const declared = Number(response.headers.get("Content-Length"));
      file.length = !encoded && Number.isSafeInteger(declared) && declared > 0 ? declared : null;
      const planned = await read(response, arm, limit, plan);
      if (planned) return planned;
      file.length = prefix.length; // it ended: that is all of it
      return plan();
    },
    { Range: `bytes=0-${Math.min(firstRead, limit) - 1}` },
  );
  if (first) return first;

  for (;;) {
    const from = prefix.length;
    if (from >= limit) throw tooLarge();
    const to = Math.min(from * 2, limit, file.length ?? Infinity);
    if (to <= from) throw new NetworkError(url, null, undefined, `the file ends at byte ${file.length}, inside its header`);
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
    if (planned) return planned;
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
