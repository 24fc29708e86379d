// Checks generate/stream options and turns them into the wasm Engine's request (docs/WEB.md), so that
// a wrong type fails here with a message naming the option instead of deep inside wasm. Shared by
// the engine and the worker proxy (which must not post an AbortSignal or anything uncloneable).

import { InvalidArgumentError } from "./errors.js";

const DEFAULT_MAX_TOKENS = 256;

// name -> [test, what a valid value is]
const int = (min) => [(v) => Number.isSafeInteger(v) && v >= min, `an integer >= ${min}`];
const FIELDS = {
  max_tokens: int(1),
  top_k: int(0),
  seed: int(0),
  penalty_last_n: int(0),
  temperature: [(v) => v >= 0, "a number >= 0"],
  top_p: [(v) => v > 0 && v <= 1, "a number in (0, 1]"],
  min_p: [(v) => v >= 0 && v <= 1, "a number in [0, 1]"],
  repetition_penalty: [(v) => v > 0, "a number > 0"],
  presence_penalty: [() => true, "a number"],
  frequency_penalty: [() => true, "a number"],
};

function fail(message) {
  throw new InvalidArgumentError(message);
}

/** The AbortSignal among `options`, or undefined; throws if `signal` is something else. */
export function signalOf(options) {
  const signal = options?.signal;
  if (signal == null) return undefined;
  if (typeof signal.aborted !== "boolean" || typeof signal.addEventListener !== "function") {
    fail("options.signal must be an AbortSignal");
  }
  return signal;
}

/** Text of one message's content: a string, or OpenAI's array of {type: "text", text} parts. */
function contentText(content, i) {
  if (typeof content === "string") return content;
  if (Array.isArray(content) && content.every((p) => p?.type === "text" && typeof p.text === "string")) {
    return content.map((p) => p.text).join("");
  }
  return fail(`messages[${i}].content must be a string (or an array of {type: "text", text} parts)`);
}

/** Validates `input` and `options`; returns the wasm request (snake_case, without signal). */
export function buildRequest(input, options = {}) {
  if (options === null || typeof options !== "object") fail("options must be an object");
  const request = {};
  if (typeof input === "string") {
    request.prompt = input;
  } else if (Array.isArray(input)) {
    if (input.length === 0) fail("messages must not be empty");
    request.messages = input.map((m, i) => {
      if (typeof m?.role !== "string") fail(`messages[${i}].role must be a string`);
      return { role: m.role, content: contentText(m.content, i) };
    });
  } else {
    fail("input must be a prompt string or an array of {role, content} messages");
  }
  for (const [name, [ok, what]] of Object.entries(FIELDS)) {
    const v = options[name];
    if (v == null) continue;
    if (typeof v !== "number" || !Number.isFinite(v) || !ok(v)) {
      fail(`options.${name} must be ${what}, got ${JSON.stringify(v) ?? String(v)}`);
    }
    request[name] = v;
  }
  request.max_tokens ??= DEFAULT_MAX_TOKENS;
  // Sampling without a seed: a fresh one each call (a fixed default would repeat the same text).
  if (request.temperature > 0 && request.seed == null) {
    request.seed = crypto.getRandomValues(new Uint32Array(1))[0];
  }
  const stop = options.stop;
  if (stop != null) {
    const list = typeof stop === "string" ? [stop] : stop;
    if (!Array.isArray(list) || !list.every((s) => typeof s === "string" && s !== "")) {
      fail("options.stop must be a non-empty string or an array of them");
    }
    request.stop = list;
  }
  signalOf(options);
  return request;
}
