// Error classes of the public API. Every class sets `name` to its own name so that code can test
// `err.name === "QuotaExceededError"` as well as `instanceof`, and so that an error crossing a
// worker boundary as {name, message} can be rebuilt as the same class (see fromPlain).

export class HearthError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class WebGPUUnavailableError extends HearthError {
  constructor(reason) {
    super(
      `WebGPU is not available${reason ? ` (${reason})` : ""}. Use a browser with WebGPU ` +
        "(Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows), keep hardware acceleration on " +
        "(chrome://settings/system), and where the GPU is blocklisted enable " +
        "chrome://flags/#enable-unsafe-webgpu.",
    );
  }
}

export class AdapterLimitsError extends HearthError {}

export class QuotaExceededError extends HearthError {
  /** @param {number} [needed] bytes to store @param {number} [available] bytes the origin has left */
  constructor(needed, available, cause) {
    const mb = (n) => `${(n / 1048576).toFixed(1)} MB`;
    super(
      needed != null && available != null
        ? `Not enough storage for the model: ${mb(needed)} needed, ${mb(available)} available ` +
            "to this site. Free space with Hearth.cache.delete(url) or site settings, or load " +
            "with {cache: false}."
        : "The browser refused to store more data for this site (storage quota exceeded). Free " +
            "space with Hearth.cache.delete(url) or load with {cache: false}.",
      cause ? { cause } : undefined,
    );
    this.needed = needed;
    this.available = available;
  }
}

export class IntegrityError extends HearthError {
  /**
   * @param {string} file @param {string} expected @param {string} actual @param {string} [kind]
   * @param {string} [source] whose the expected value is, and what a mismatch means
   */
  constructor(file, expected, actual, kind = "sha256", source = "the manifest's") {
    super(
      `${file}: ${kind} ${actual} does not match ${source} ${expected}; the file on the ` +
        (source === "the manifest's" ? "server is corrupt, truncated or from another version of the package." : "server is corrupt, truncated or another file."),
    );
    this.file = file;
    this.expected = expected;
    this.actual = actual;
  }
}

export class NetworkError extends HearthError {
  /**
   * @param {string} url @param {number|null} status HTTP status, or null when the request failed
   * @param {unknown} [cause] @param {string} [what] what happened, where it was not a failed request
   */
  constructor(url, status, cause, what) {
    super(
      status != null
        ? `GET ${url} answered HTTP ${status}`
        : what
          ? `GET ${url}: ${what}`
          : `GET ${url} failed${cause?.message ? `: ${cause.message}` : ""} (offline, blocked by ` +
            "CORS, or the server is unreachable)",
      cause ? { cause } : undefined,
    );
    this.url = url;
    this.status = status ?? null;
  }
}

export class UnsupportedModelError extends HearthError {}
/**
 * The prompt plus max_tokens does not fit the context: `requested` (prompt tokens + max_tokens) and
 * `available` (the context length) say by how much.
 */
export class ContextLengthError extends HearthError {
  /** @type {number|undefined} */ requested;
  /** @type {number|undefined} */ available;
}
export class BadPackageError extends HearthError {}
export class InvalidArgumentError extends HearthError {}
export class GpuError extends HearthError {}
/** The model does not fit the memory the CPU engine may use (the message names both sizes). */
export class OutOfMemoryError extends HearthError {}

export class EngineDisposedError extends HearthError {
  constructor(message = "This engine was disposed; load the model again.", options) {
    super(message, options);
  }
}

// Errors from the wasm module (plus IntegrityError, which it also names): "TokenizerError", "ChatTemplateError" and "EngineBusyError" have no
// class of their own; they are bad input or a broken package as far as a user can act on them.
const WASM_NAMES = {
  WebGPUUnavailableError,
  AdapterLimitsError,
  GpuError,
  OutOfMemoryError,
  UnsupportedModelError,
  BadPackageError,
  ContextLengthError,
  InvalidArgumentError,
  IntegrityError,
  TokenizerError: BadPackageError,
  ChatTemplateError: InvalidArgumentError,
  EngineBusyError: HearthError,
};

const CLASSES = {
  HearthError,
  WebGPUUnavailableError,
  AdapterLimitsError,
  QuotaExceededError,
  IntegrityError,
  NetworkError,
  UnsupportedModelError,
  ContextLengthError,
  BadPackageError,
  InvalidArgumentError,
  GpuError,
  OutOfMemoryError,
  EngineDisposedError,
};

/**
 * An instance of `cls` with exactly `message`: HearthError's constructor run with new.target = cls,
 * so the subclasses' own wording (built from file, url, ...) is skipped but the object is a real
 * Error of class `cls`.
 */
function withMessage(cls, message, extra) {
  return Object.assign(Reflect.construct(HearthError, [message], cls), extra);
}

/**
 * Converts what the wasm module threw (an Error with a `name` from docs/WEB.md, or a string) into
 * our class. Our own errors and AbortErrors pass through unchanged.
 */
export function fromWasm(err) {
  if (err instanceof HearthError || err?.name === "AbortError") return err;
  const name = err?.name;
  const message = typeof err === "string" ? err : (err?.message ?? String(err));
  const cls = WASM_NAMES[name];
  if (!cls) return err instanceof Error ? err : new HearthError(message);
  // Keep the wasm name where it differs from the class (TokenizerError -> BadPackageError), and the
  // numbers wasm attaches (ContextLengthError: requested, available).
  const extra = cls.name === name ? {} : { wasmName: name };
  for (const k of NUMBERS) if (typeof err?.[k] === "number") extra[k] = err[k];
  return withMessage(cls, message, extra);
}

// Properties of wasm's errors that carry numbers (ContextLengthError).
const NUMBERS = ["requested", "available"];

/** Serializable form of an error, for postMessage. */
export function toPlain(err) {
  const plain = { name: err?.name ?? "Error", message: err?.message ?? String(err) };
  for (const k of ["file", "expected", "actual", "url", "status", "needed", "available", "requested", "wasmName"]) {
    if (err?.[k] !== undefined) plain[k] = err[k];
  }
  return plain;
}

/** Rebuilds an error posted by toPlain as the same class (an AbortError as a DOMException). */
export function fromPlain(plain) {
  if (plain.name === "AbortError") return new DOMException(plain.message, "AbortError");
  const cls = CLASSES[plain.name];
  if (!cls) {
    const e = new Error(plain.message);
    e.name = plain.name;
    return e;
  }
  const { name, message, ...extra } = plain;
  return withMessage(cls, message, extra);
}

export function abortError(signal) {
  const r = signal?.reason;
  if (r instanceof DOMException && r.name === "AbortError") return r;
  return new DOMException(typeof r === "string" ? r : "The operation was aborted.", "AbortError");
}

/** Settles like `promise`, or rejects with an AbortError as soon as `signal` aborts. */
export function raceAbort(promise, signal) {
  if (!signal) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
