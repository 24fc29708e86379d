// What the main-thread engine and the worker proxy answer the same way: `info`, `generate` (the
// result of a stream), `stream` and `chat.completions`. Each supplies the one thing that differs:
// how a generation runs, `run(input, options, push, signal)`, resolving with generate()'s result.

import { signalOf } from "./options.js";
import { TextStream } from "./stream.js";
import { createChat } from "./chat.js";

export class EngineApi {
  #info;
  #run;

  constructor(info, run) {
    this.#info = Object.freeze(info);
    this.#run = run;
    /** OpenAI-style chat completions: `engine.chat.completions.create({messages, ...})`. */
    this.chat = createChat(this);
  }

  /** What was loaded and where it runs: {name, architecture, adapter, kvF16, software, ...}. */
  get info() {
    return this.#info;
  }

  /** Runs one generation to its end. */
  generate(input, options) {
    return this.stream(input, options).result;
  }

  /** Runs one generation, yielding its text as it becomes final. */
  stream(input, options) {
    let signal;
    try {
      signal = signalOf(options);
    } catch (e) {
      return new TextStream(() => Promise.reject(e));
    }
    return new TextStream((push, inner) => this.#run(input, options, push, inner), signal);
  }
}
