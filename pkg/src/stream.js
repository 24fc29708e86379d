// The object `stream()` returns, for the engine and the worker proxy alike: an async iterator of text
// chunks that also carries `usage`, `finish_reason` and a `result` promise. `deltas()` iterates
// everything in the order it came instead: `{content}`, with tools `{tool_calls: [...]}`, and with
// `logprobs` the entries of each step's tokens, `{logprobs: [...]}`.
//
// The generation is driven by `run(push, signal)` (started by the first next() or by reading
// `result`), not by the consumer's pulls: the GPU keeps decoding while the page renders a chunk, and
// the chunks wait in a small queue. `signal` aborts when the caller's signal does or when the
// consumer stops early (`break` in `for await`), so run() can cancel and free the engine.

import { abortError } from "./errors.js";

export class TextStream {
  /** @type {object|undefined} */ usage = undefined;
  /** @type {"stop"|"length"|undefined} */ finish_reason = undefined;

  #run;
  #userSignal;
  #controller = new AbortController();
  #started = false;
  #chunks = [];
  #wake = null;
  #done = false;
  #error = null;
  #result;
  #settle;

  /**
   * @param {(push: (chunk: string | {tool_calls: object[]} | {logprobs: object[]}) => void, signal: AbortSignal) => Promise<object>} run
   * @param {AbortSignal} [signal] the caller's signal
   */
  constructor(run, signal) {
    this.#run = run;
    this.#userSignal = signal;
    this.#result = new Promise((resolve, reject) => (this.#settle = { resolve, reject }));
    // A stream whose result nobody reads must not report an unhandled rejection.
    this.#result.catch(() => {});
  }

  /** Resolves with the full result (as generate() returns) once the generation ends. */
  get result() {
    this.#start();
    return this.#result;
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  async next() {
    for (;;) {
      const r = await this.#pull();
      if (r.done || typeof r.value === "string") return r;
    }
  }

  /** `{content}`, `{tool_calls}` and `{logprobs}` deltas instead of the text alone (iterate one or the other). */
  deltas() {
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      next: async () => {
        const r = await this.#pull();
        return r.done || typeof r.value !== "string" ? r : { value: { content: r.value }, done: false };
      },
      return: () => this.return(),
    };
  }

  async #pull() {
    this.#start();
    for (;;) {
      if (this.#chunks.length > 0) return { value: this.#chunks.shift(), done: false };
      if (this.#done) {
        const error = this.#error;
        this.#error = null; // thrown once, like a generator
        if (error) throw error;
        return { value: undefined, done: true };
      }
      await new Promise((resolve) => (this.#wake = resolve));
    }
  }

  /** Called by `break` / `return` in `for await`: stops the generation. */
  async return() {
    if (!this.#started) {
      this.#started = true;
      this.#finish(null, new DOMException("The stream was closed before it started.", "AbortError"));
    } else if (!this.#done) {
      this.#controller.abort(new DOMException("The stream was closed before it finished.", "AbortError"));
    }
    this.#chunks.length = 0;
    this.#error = null;
    return { value: undefined, done: true };
  }

  #start() {
    if (this.#started) return;
    this.#started = true;
    const user = this.#userSignal;
    if (user) {
      const forward = () => this.#controller.abort(abortError(user));
      if (user.aborted) forward();
      else user.addEventListener("abort", forward, { once: true });
      this.#result.finally(() => user.removeEventListener("abort", forward)).catch(() => {});
    }
    const push = (chunk) => {
      if (this.#done || !chunk) return;
      this.#chunks.push(chunk);
      this.#notify();
    };
    // Abort wins at once, even while run() still waits for a GPU step to settle.
    const signal = this.#controller.signal;
    signal.addEventListener("abort", () => this.#finish(null, abortError(signal)), { once: true });
    // Called synchronously, so that a call made before dispose() takes its place in the queue first.
    let running;
    try {
      running = Promise.resolve(this.#run(push, signal));
    } catch (e) {
      running = Promise.reject(e);
    }
    running.then((r) => this.#finish(r, null), (e) => this.#finish(null, e));
  }

  #finish(result, error) {
    if (this.#done) return;
    this.#done = true;
    if (error) {
      this.#error = error;
      this.#settle.reject(error);
    } else {
      this.usage = result.usage;
      this.finish_reason = result.finish_reason;
      this.#settle.resolve(result);
    }
    this.#notify();
  }

  #notify() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
