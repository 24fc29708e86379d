// What the main-thread engine and the worker proxy answer the same way: `info`, `generate` (the
// result of a stream), `stream`, `countTokens`, `chat.completions`, `embed` and `embeddings`. Each
// supplies what differs: how a generation runs, `run(input, options, push, signal)`, resolving with
// generate()'s result, how a prompt is counted, `count(input, options)`, resolving with its number
// of tokens, and how texts are embedded, `[EMBED](texts, {normalize, signal})` (embeddings.js).

import { signalOf } from "./options.js";
import { TextStream } from "./stream.js";
import { createChat } from "./chat.js";
import { createEmbeddings, embedOptions, embedTexts, EMBED } from "./embeddings.js";

export class EngineApi {
  #info;
  #run;
  #count;

  constructor(info, run, count) {
    this.#info = Object.freeze(info);
    this.#run = run;
    this.#count = count;
    /** OpenAI-style chat completions: `engine.chat.completions.create({messages, ...})`. */
    this.chat = createChat(this);
    /** OpenAI-style embeddings of an encoder: `engine.embeddings.create({input, model})`. */
    this.embeddings = createEmbeddings(this);
  }

  /**
   * An encoder's embeddings of `texts` (a string or an array of strings), one Float32Array each, in
   * order; `options.normalize` scales them to unit length or not (default: as the model says, see
   * `info.embedding`). Queued behind the calls made before it.
   */
  async embed(texts, options) {
    const list = embedTexts(texts);
    return (await this[EMBED](list, embedOptions(options))).embeddings;
  }

  /** What was loaded and where it runs: {name, architecture, adapter, kvF16, software, ...}. */
  get info() {
    return this.#info;
  }

  /** Runs one generation to its end. */
  generate(input, options) {
    return this.stream(input, options).result;
  }

  /**
   * Tokens of the prompt `generate(input, options)` would run (messages through the chat template):
   * its `usage.prompt_tokens`. Queued behind the calls made before it.
   */
  countTokens(input, options) {
    try {
      return this.#count(input, options);
    } catch (e) {
      return Promise.reject(e);
    }
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
