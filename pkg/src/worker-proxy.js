// Hearth.loadInWorker(): the model lives in a dedicated module worker (../worker.js) so that
// tokenization, uploads and the decode loop never block the page; this is the page's end, an engine
// with the same API whose calls become messages. Options are checked here, so a bad argument fails
// at once and nothing uncloneable (an AbortSignal, a callback) is posted.

import { EngineDisposedError, HearthError, InvalidArgumentError, abortError, fromPlain } from "./errors.js";
import { buildRequest, signalOf } from "./options.js";
import { EngineApi } from "./api.js";
import { EMBED } from "./embeddings.js";
import { ggufFiles } from "./gguf.js";
import { checkOptions, reporter } from "./load.js";
import { modelKey } from "./store.js";

/** Numbered calls over one worker: each gets its events, then one result or error. */
class Channel {
  #worker;
  #calls = new Map();
  #next = 1;
  #dead = null;

  /** Called with `running` when the worker starts or ends a chat template's render. */
  onTemplate = null;

  constructor(worker) {
    this.#worker = worker;
    worker.addEventListener("message", ({ data }) => {
      if (data.type === "template") this.onTemplate?.(data.running);
      else this.#calls.get(data.id)?.(data);
    });
    worker.addEventListener("error", (e) => {
      e.preventDefault();
      this.#fail(new HearthError(`Hearth's worker failed: ${e.message || "worker.js did not load"}`));
    });
    worker.addEventListener("messageerror", () => this.#fail(new HearthError("Hearth's worker sent an unreadable message")));
  }

  /** Ends every call in flight with `error`; later requests reject with it. */
  close(error) {
    this.#fail(error);
  }

  #fail(error) {
    this.#dead = error;
    for (const deliver of [...this.#calls.values()]) deliver({ type: "error", error });
  }

  /**
   * Posts {type, ...payload}; resolves with the worker's result. On abort the worker is told;
   * `waitOnAbort` keeps the promise pending until the worker has cleaned up (load), otherwise it
   * rejects at once (a generation, whose engine the worker frees after its step).
   */
  request(type, payload, { signal, onEvent, waitOnAbort = false } = {}) {
    if (this.#dead) return Promise.reject(this.#dead);
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const done = () => {
        this.#calls.delete(id);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        this.#worker.postMessage({ id, type: "abort" });
        if (waitOnAbort) return;
        done();
        reject(abortError(signal));
      };
      this.#calls.set(id, (message) => {
        if (message.type === "result") {
          done();
          resolve(message.value);
        } else if (message.type === "error") {
          done();
          const e = message.error instanceof Error ? message.error : fromPlain(message.error);
          reject(signal?.aborted && e.name === "AbortError" ? abortError(signal) : e);
        } else {
          onEvent?.(message);
        }
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#worker.postMessage({ id, type, ...payload });
    });
  }
}

/** How long a worker may take to answer a dispose request before it is terminated. */
const DISPOSE_ACK_MS = 1000;

/**
 * How long one render of the chat template may run in the worker before the worker is stopped.
 * Natively a render stops at 2 s (hearth_core::chat::limits::SECONDS; real templates take
 * milliseconds); wasm is slower and the page's clock runs late on a busy page, so 5 times that.
 */
export const TEMPLATE_MS = 10_000;

/** The engine's API, answered by the worker. */
export class WorkerEngine extends EngineApi {
  #worker;
  #channel;
  #closing = false;
  #disposed = null;

  /** Not for users: engines come from Hearth.loadInWorker(). */
  constructor(worker, channel, info) {
    super(
      info,
      (input, options, push, signal) => this.#run(input, options, push, signal),
      (input, options) => this.#count(input, options),
    );
    this.#worker = worker;
    this.#channel = channel;
    let timer = null;
    channel.onTemplate = (running) => {
      clearTimeout(timer);
      if (running) timer = setTimeout(() => this.#templateOverran(), TEMPLATE_MS);
    };
  }

  /** The worker has been inside one render for TEMPLATE_MS: a wasm call cannot be stopped, so it goes. */
  #templateOverran() {
    this.#closing = true;
    this.#worker.terminate();
    // As the wasm module reports a template past its limits (errors.js: ChatTemplateError).
    const error = new InvalidArgumentError(
      `chat template: a render ran for more than ${TEMPLATE_MS / 1000} s (real templates take milliseconds); ` +
        "the worker was stopped and the engine disposed",
    );
    error.wasmName = "ChatTemplateError";
    this.#channel.close(error);
    this.#disposed ??= Promise.resolve();
  }

  async #count(input, options) {
    const { prompt, messages, ...rest } = buildRequest(input, options);
    if (this.#closing) throw new EngineDisposedError();
    return this.#channel.request("countTokens", { input: prompt ?? messages, options: asOptions(rest) }, { signal: signalOf(options) });
  }

  async [EMBED](texts, { normalize, signal }) {
    if (this.#closing) throw new EngineDisposedError();
    return this.#channel.request("embed", { texts, options: { normalize } }, { signal });
  }

  async #run(input, options, push, signal) {
    const { prompt, messages, ...rest } = buildRequest(input, options);
    if (this.#closing) throw new EngineDisposedError();
    const onEvent = (m) => m.type === "chunk" && push(m.chunk);
    return this.#channel.request("generate", { input: prompt ?? messages, options: asOptions(rest) }, { signal, onEvent });
  }

  /**
   * Lets the calls already made finish, frees the engine and ends the worker. A worker that does not
   * even acknowledge the request within DISPOSE_ACK_MS is stuck inside a call (a hostile chat
   * template, say) and is terminated at once; its calls reject with EngineDisposedError.
   */
  dispose() {
    this.#closing = true;
    this.#disposed ??= new Promise((resolve) => {
      let acknowledged = false;
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        clearTimeout(timer);
        this.#channel.onTemplate?.(false); // no render outlives the worker
        this.#worker.terminate();
        this.#channel.close(new EngineDisposedError());
        resolve();
      };
      const timer = setTimeout(() => acknowledged || end(), DISPOSE_ACK_MS);
      const onEvent = (m) => m.type === "disposing" && (acknowledged = true);
      this.#channel.request("dispose", {}, { onEvent }).catch(() => {}).then(end);
    });
    return this.#disposed;
  }
}

/** Like Hearth.load(), but the model is loaded and run in a dedicated Web Worker. */
/**
 * A validated request (`buildRequest`) as generate() options again, for the worker to validate anew:
 * wasm's one `logprobs` (how many alternatives) is OpenAI's two fields there.
 */
function asOptions({ logprobs, ...rest }) {
  return logprobs == null ? rest : { ...rest, logprobs: true, top_logprobs: logprobs };
}

export async function loadInWorker(modelUrl, options = {}) {
  checkOptions(modelUrl, options);
  const signal = signalOf(options);
  if (signal?.aborted) throw abortError(signal);
  const report = reporter(options.onProgress);
  // Relative URLs are the page's, not the worker script's. A GGUF file's URLs are passed as they
  // are (a query may be a signature the server needs).
  const url = ggufFiles(modelUrl) ?? modelKey(modelUrl);
  // This exact form lets bundlers (Vite, webpack 5) find and emit the worker.
  const worker = new Worker(new URL("../worker.js", import.meta.url), { type: "module" });
  const channel = new Channel(worker);
  try {
    const info = await channel.request(
      "load",
      {
        url,
        options: {
          cache: options.cache ?? true,
          maxContext: options.maxContext,
          revalidate: options.revalidate,
          backend: options.backend,
          stallTimeout: options.stallTimeout,
          relaxedSimd: options.relaxedSimd,
          sha256: options.sha256,
        },
      },
      { signal, waitOnAbort: true, onEvent: (m) => m.type === "progress" && report(m.progress) },
    );
    return new WorkerEngine(worker, channel, info);
  } catch (e) {
    worker.terminate();
    throw e;
  }
}
