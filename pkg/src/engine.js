// HearthEngine: the public face of the wasm Engine (docs/WEB.md). The wasm Engine runs one
// generation at a time and throws EngineBusyError if called during a step, so every call here goes
// through a queue (a promise chain) and holds it until its generation has ended or been cancelled.

import { EngineDisposedError, abortError, fromWasm, raceAbort } from "./errors.js";
import { buildRequest, signalOf } from "./options.js";
import { EngineApi } from "./api.js";
import { randomHex } from "./chat.js";
import { EMBED } from "./embeddings.js";

/** Milliseconds of embedding between two returns to the event loop (so an abort, or the page, gets in). */
const EMBED_SLICE_MS = 50;
/** Texts per wasm call on WebGPU: enough to fill a few packed steps, few enough that an abort waits little. */
const EMBED_GPU_TEXTS = 64;

/** wasm-bindgen values as plain JSON-like data (Maps to objects, typed arrays to arrays). */
export function plain(value) {
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, plain(v)]));
  if (Array.isArray(value)) return value.map(plain);
  if (ArrayBuffer.isView(value)) return Array.from(value);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/**
 * One step's tool-call delta from wasm ({type: "call", index, name} or {type: "arguments", index,
 * text}) as OpenAI streams it, also added to `calls` (the response's `tool_calls`). A call's id is
 * made here, where it opens.
 */
function toolCallDelta(d, calls) {
  if (d.type === "call") {
    const id = "call_" + randomHex();
    calls[d.index] = { id, type: "function", function: { name: d.name, arguments: "" } };
    return { index: d.index, id, type: "function", function: { name: d.name, arguments: "" } };
  }
  calls[d.index].function.arguments += d.text;
  return { index: d.index, function: { arguments: d.text } };
}

/** Told before and after each wasm call that runs the chat template (see watchTemplates). */
let templateWatch = null;

/**
 * Has `watch.enter()` and `watch.leave()` called around every synchronous wasm call that renders the
 * model's chat template: the worker (../../worker.js) reports them to the page, which stops a worker
 * whose render runs past its time limit (a wasm call cannot be interrupted from inside).
 */
export function watchTemplates(watch) {
  templateWatch = watch;
}

/** `call()`, inside the template watch when the request has messages (a chat: the template runs). */
function rendering(request, call) {
  if (!request.messages || !templateWatch) return call();
  templateWatch.enter();
  try {
    return call();
  } finally {
    templateWatch.leave();
  }
}

export class HearthEngine extends EngineApi {
  #engine;
  #tail = Promise.resolve();
  #closing = false;
  #disposed = null;
  /** Why the engine stopped by itself: a call trapped inside wasm (see #fail). */
  #crash = null;

  /** Not for users: engines come from Hearth.load(). `extra`: info the wasm engine cannot know. */
  constructor(wasmEngine, extra = {}) {
    super(
      { ...plain(wasmEngine.info()), ...extra },
      (input, options, push, signal) => this.#run(input, options, push, signal),
      (input, options) => this.#count(input, options),
    );
    this.#engine = wasmEngine;
  }

  /** Waits for the calls already made, then releases the GPU memory; later calls reject. */
  dispose() {
    this.#closing = true;
    this.#disposed ??= this.#acquire(undefined, true).then(
      (release) => {
        try {
          this.#engine.free();
        } finally {
          this.#engine = null;
          release();
        }
      },
      () => {}, // already gone (a call trapped): nothing left to free
    );
    return this.#disposed;
  }

  /** Waits for every earlier call; resolves with the function that lets the next one run. */
  async #acquire(signal, internal = false) {
    if (this.#closing && !internal) throw new EngineDisposedError(this.#crash ?? undefined);
    let release;
    const held = new Promise((resolve) => (release = resolve));
    const previous = this.#tail;
    this.#tail = previous.then(() => held);
    try {
      await raceAbort(previous, signal); // aborted while queued: never runs
    } catch (e) {
      release();
      throw e;
    }
    if (!this.#engine) {
      release();
      throw new EngineDisposedError(this.#crash ?? undefined);
    }
    return release;
  }

  /**
   * The error a failed wasm call becomes. A trap (`WebAssembly.RuntimeError`: a panic, or an
   * allocation that failed) leaves the module's view of this engine half-changed (a step marked as
   * running for ever), so the engine is disposed on the spot and says so, now and on every later
   * call, instead of answering EngineBusyError for ever.
   */
  #fail(e) {
    if (!(e instanceof WebAssembly.RuntimeError)) return fromWasm(e);
    this.#crash ??=
      `This engine stopped after an internal error in the wasm module (${e.message}) and was ` +
      "disposed; load the model again.";
    this.#closing = true;
    const engine = this.#engine;
    this.#engine = null;
    try {
      engine?.free();
    } catch {
      // Still marked as borrowed by the call that trapped: its memory stays with the module.
    }
    return new EngineDisposedError(this.#crash, { cause: e });
  }

  async #count(input, options) {
    const request = buildRequest(input, options);
    const release = await this.#acquire(signalOf(options));
    try {
      return rendering(request, () => this.#engine.countTokens(request));
    } catch (e) {
      throw this.#fail(e);
    } finally {
      release();
    }
  }

  /** Texts in wasm calls of one (CPU) or 64 (WebGPU); `options` as embeddings.js's embedOptions gives them. */
  async [EMBED](texts, { normalize, signal }) {
    const release = await this.#acquire(signal);
    try {
      const embeddings = [];
      const tokens = [];
      // WebGPU packs a call's texts into steps of 512 tokens: many per call. The CPU engine runs
      // them one by one: one per call, so an abort or the page gets in between texts.
      const perCall = this.info.backend === "webgpu" ? EMBED_GPU_TEXTS : 1;
      let slice = performance.now();
      for (let at = 0; at < texts.length; at += perCall) {
        if (performance.now() - slice > EMBED_SLICE_MS) {
          await new Promise((resolve) => setTimeout(resolve, 0));
          slice = performance.now();
        }
        if (signal?.aborted) throw abortError(signal);
        const r = await this.#engine.embed(texts.slice(at, at + perCall), normalize);
        embeddings.push(...r.embeddings);
        tokens.push(...r.tokens);
      }
      return { embeddings, tokens };
    } catch (e) {
      throw this.#fail(e);
    } finally {
      release();
    }
  }

  async #run(input, options, push, signal) {
    const request = buildRequest(input, options);
    const release = await this.#acquire(signal);
    const engine = this.#engine;
    let pending = null;
    let finished = false;
    try {
      rendering(request, () => engine.begin(request));
      let text = "";
      const calls = [];
      const logprobs = [];
      for (;;) {
        if (signal.aborted) throw abortError(signal);
        pending = Promise.resolve().then(() => engine.step());
        const r = plain(await raceAbort(pending, signal));
        pending = null;
        if (r.text) {
          text += r.text;
          push(r.text);
        }
        for (const d of r.toolCalls ?? []) push({ tool_calls: [toolCallDelta(d, calls)] });
        if (r.logprobs?.length > 0) {
          logprobs.push(...r.logprobs);
          push({ logprobs: r.logprobs });
        }
        if (r.done) {
          finished = true;
          return {
            text,
            ...(calls.length > 0 && { tool_calls: calls }),
            ...(request.logprobs != null && { logprobs }),
            usage: r.usage,
            finish_reason: r.finishReason,
            ids: r.ids ?? [],
            prompt_ids: r.promptIds ?? [],
          };
        }
      }
    } catch (e) {
      throw this.#fail(e);
    } finally {
      // After an abort the step in flight still owns the engine: cancel once it has settled.
      const settle = () => {
        if (!finished) {
          try {
            engine.cancel();
          } catch {
            // nothing in progress to drop
          }
        }
        release();
      };
      if (pending) pending.then(settle, settle);
      else settle();
    }
  }
}
