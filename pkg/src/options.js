// Checks generate/stream/countTokens options and chat.completions.create requests, and turns them
// into the wasm Engine's request (docs/WEB.md), so that a wrong value fails here with a message
// naming the field instead of deep inside wasm, and a field Hearth does not support is never
// silently dropped. Shared by the engine and the worker proxy (which must not post an AbortSignal
// or anything uncloneable: what reaches wasm is plain JSON).

import { InvalidArgumentError } from "./errors.js";

const DEFAULT_MAX_TOKENS = 256;

function fail(message) {
  throw new InvalidArgumentError(message);
}

const show = (v) => (typeof v === "function" ? "a function" : typeof v === "bigint" ? `${v}n` : (JSON.stringify(v) ?? String(v)));
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// A check takes (value, path) and returns the value to use, or throws naming `path`.
const number = (ok, what) => (v, path) => {
  if (typeof v !== "number" || !Number.isFinite(v) || !ok(v)) fail(`${path} must be ${what}, got ${show(v)}`);
  return v;
};
const int = (min) => number((v) => Number.isSafeInteger(v) && v >= min, `an integer >= ${min}`);
const boolean = (v, path) => (typeof v === "boolean" ? v : fail(`${path} must be true or false, got ${show(v)}`));
const string = (v, path) => (typeof v === "string" ? v : fail(`${path} must be a string, got ${show(v)}`));
const nonEmpty = (v, path) => (typeof v === "string" && v !== "" ? v : fail(`${path} must be a non-empty string, got ${show(v)}`));

/** An OpenAI field Hearth does not support yet: rejected, except for `inert`, the value that asks for nothing. */
const notYet = (inert) =>
  Object.assign(
    (v, path) => {
      if (inert !== undefined && v === inert) return undefined;
      return fail(`${path}${inert !== undefined ? ` = ${show(v)}` : ""} is not supported yet`);
    },
    { notYet: true },
  );

function stop(v, path) {
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || !list.every((s) => typeof s === "string" && s !== "")) {
    fail(`${path} must be a non-empty string or an array of them`);
  }
  return [...list];
}

function signal(v, path) {
  if (typeof v?.aborted !== "boolean" || typeof v?.addEventListener !== "function") fail(`${path} must be an AbortSignal`);
  return v;
}

/** A copy of `v` as plain JSON; throws naming the first part that JSON cannot hold as it is. */
function json(v, path, parents = []) {
  if (v === null || typeof v === "string" || typeof v === "boolean") return v;
  if (typeof v === "number") return Number.isFinite(v) ? v : fail(`${path} must be JSON: ${v} is not a JSON number`);
  if (typeof v !== "object") return fail(`${path} must be JSON, got ${show(v)}`);
  if (parents.includes(v)) fail(`${path} must be JSON, but it contains itself`);
  const inner = [...parents, v];
  if (Array.isArray(v)) {
    return v.map((x, i) => (x === undefined ? fail(`${path}[${i}] must be JSON, got undefined`) : json(x, `${path}[${i}]`, inner)));
  }
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) fail(`${path} must be JSON, got a ${v.constructor?.name ?? "non-plain"} object`);
  const out = {};
  // A member set to undefined is absent, as in JSON.stringify and everywhere else in JavaScript.
  for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = json(x, `${path}.${k}`, inner);
  return out;
}

/** The members of an object argument, each checked; `spec`: name -> [check, required]. */
function members(v, path, what, spec) {
  if (!isObject(v)) fail(`${path} must be ${what}, got ${show(v)}`);
  for (const k of Object.keys(v)) {
    if (v[k] != null && !Object.hasOwn(spec, k)) fail(`${path}.${k} is not supported (${path} takes ${Object.keys(spec).join(", ")})`);
  }
  const out = {};
  for (const [k, [check, required]] of Object.entries(spec)) {
    if (v[k] == null) {
      if (required) fail(`${path}.${k} is required`);
      continue;
    }
    out[k] = check(v[k], `${path}.${k}`);
  }
  return out;
}

// What each `response_format.type` takes besides `type`: OpenAI's shapes, plus Hearth's regex and
// grammar (Lark syntax, as llguidance reads it).
const FORMATS = {
  text: {},
  json_object: {},
  json_schema: {
    json_schema: [
      (v, path) =>
        members(v, path, "an object {schema, name?, description?, strict?}", {
          name: [string],
          description: [string],
          schema: [(s, p) => (isObject(s) || typeof s === "boolean" ? json(s, p) : fail(`${p} must be an object or boolean (a JSON Schema), got ${show(s)}`)), true],
          strict: [boolean],
        }),
      true,
    ],
  },
  regex: { pattern: [nonEmpty, true] },
  grammar: { grammar: [nonEmpty, true] },
};

// OpenAI's tools: functions whose arguments follow a JSON Schema (names are checked in wasm).
const MAX_TOOLS = 128;
const functionDef = (v, path) =>
  members(v, path, "an object {name, description?, parameters?, strict?}", {
    name: [nonEmpty, true],
    description: [string],
    parameters: [(s, p) => (isObject(s) ? json(s, p) : fail(`${p} must be an object (a JSON Schema), got ${show(s)}`))],
    strict: [boolean],
  });

function tools(v, path) {
  if (!Array.isArray(v)) fail(`${path} must be an array of {type: "function", function: {name, parameters}}`);
  if (v.length > MAX_TOOLS) fail(`${path} has ${v.length} tools; at most ${MAX_TOOLS}`);
  return v.map((t, i) => {
    if (t?.type !== "function") fail(`${path}[${i}].type must be "function", got ${show(t?.type)}`);
    return members(t, `${path}[${i}]`, "an object {type, function}", { type: [(x) => x, true], function: [functionDef, true] });
  });
}

function toolChoice(v, path) {
  if (v === "auto" || v === "none" || v === "required") return v;
  if (isObject(v) && v.type === "function") {
    return members(v, path, "an object", {
      type: [(x) => x, true],
      function: [(f, p) => members(f, p, "an object {name}", { name: [nonEmpty, true] }), true],
    });
  }
  return fail(`${path} must be "auto", "none", "required" or {type: "function", function: {name}}, got ${show(v)}`);
}

/** OpenAI's logit_bias: {token id: bias in [-100, 100]} (ids are checked against the vocabulary in wasm). */
function logitBias(v, path) {
  if (!isObject(v)) fail(`${path} must be an object {token id: bias}, got ${show(v)}`);
  for (const [id, bias] of Object.entries(v)) {
    if (!/^(0|[1-9][0-9]{0,9})$/.test(id)) fail(`${path}: ${show(id)} is not a token id`);
    if (typeof bias !== "number" || !(bias >= -100 && bias <= 100)) fail(`${path}[${id}] must be a number from -100 to 100, got ${show(bias)}`);
  }
  return { ...v };
}

function responseFormat(v, path) {
  const types = Object.keys(FORMATS);
  if (!isObject(v)) fail(`${path} must be an object such as {type: "json_object"}, got ${show(v)}`);
  if (!types.includes(v.type)) fail(`${path}.type must be one of ${types.map((t) => `"${t}"`).join(", ")}, got ${show(v.type)}`);
  const spec = { type: [(t) => t, true], ...FORMATS[v.type] };
  return members(v, path, "an object", spec);
}

// -------------------------------------------------------------------------------------------------
// Every field Hearth accepts, in one place. `option`: a generate()/stream()/countTokens() option,
// also a chat.completions.create() field, passed to wasm as checked; `chat`: chat.completions.create()
// only; `local`: used in JavaScript, never passed to wasm. Any other name is rejected, naming it.
// notYet(): OpenAI fields Hearth does not support yet (`n` > 1): rejected as "not supported yet";
// supporting one is giving it its check here. null or undefined means absent, for every field.
const FIELDS = {
  max_tokens: { option: int(1) },
  temperature: { option: number((v) => v >= 0, "a number >= 0") },
  top_k: { option: int(0) },
  top_p: { option: number((v) => v > 0 && v <= 1, "a number in (0, 1]") },
  min_p: { option: number((v) => v >= 0 && v <= 1, "a number in [0, 1]") },
  repetition_penalty: { option: number((v) => v > 0, "a number > 0") },
  presence_penalty: { option: number(() => true, "a number") },
  frequency_penalty: { option: number(() => true, "a number") },
  penalty_last_n: { option: int(0) },
  seed: { option: int(0) },
  stop: { option: stop },
  response_format: { option: responseFormat },
  cache_prompt: { option: boolean },
  signal: { option: signal, local: true },
  logprobs: { option: boolean },
  top_logprobs: { option: number((v) => Number.isSafeInteger(v) && v >= 0 && v <= 20, "an integer from 0 to 20") },
  logit_bias: { option: logitBias },
  tools: { option: tools },
  tool_choice: { option: toolChoice },
  parallel_tool_calls: { option: boolean },

  // chat.completions.create() only. `model`, `user`, `store`, `metadata` and `stream_options` have
  // no effect on the output (README: "Request fields"); they are checked and ignored.
  messages: { chat: (v, path) => (Array.isArray(v) ? v : fail(`${path} must be an array of {role, content} messages`)) },
  stream: { chat: boolean },
  stream_options: {
    chat: (v, path) => members(v, path, "an object {include_usage?}", { include_usage: [boolean] }),
  },
  max_completion_tokens: { chat: int(1) },
  n: { chat: notYet(1) },
  model: { chat: string },
  user: { chat: string },
  store: { chat: boolean },
  metadata: {
    chat: (v, path) => {
      if (!isObject(v) || !Object.values(v).every((s) => typeof s === "string")) fail(`${path} must be an object of strings`);
      return v;
    },
  },
};

const supported = (k) => !(FIELDS[k].option ?? FIELDS[k].chat).notYet;
const OPTION_NAMES = Object.keys(FIELDS).filter((k) => FIELDS[k].option);
const SUPPORTED_OPTIONS = OPTION_NAMES.filter(supported);
const SUPPORTED_CHAT = Object.keys(FIELDS).filter(supported);

/** The fields of `obj` Hearth takes, checked: {name: value} (absent and inert values left out). */
function checkFields(obj, chat, prefix) {
  const out = {};
  for (const [name, v] of Object.entries(obj)) {
    if (v == null) continue;
    const field = Object.hasOwn(FIELDS, name) ? FIELDS[name] : undefined;
    const check = field?.option ?? (chat ? field?.chat : undefined);
    if (!check) {
      const names = chat ? SUPPORTED_CHAT : SUPPORTED_OPTIONS;
      fail(`${prefix}${name} is not supported (${chat ? "create() takes" : "the options are"} ${names.join(", ")})`);
    }
    const value = check(v, prefix + name);
    if (value !== undefined) out[name] = value;
  }
  return out;
}

/** The AbortSignal among `options`, or undefined; throws if `signal` is something else. */
export function signalOf(options) {
  const v = options?.signal;
  return v == null ? undefined : signal(v, "options.signal");
}

// The fields a message may have.
const MESSAGE_FIELDS = ["role", "content", "tool_calls", "tool_call_id"];

/** An assistant message's calls, as a response carried them: [{id, type: "function", function: {name, arguments}}]. */
function toolCalls(v, path) {
  if (!Array.isArray(v)) fail(`${path} must be an array of {id, type: "function", function: {name, arguments}}`);
  return v.map((c, i) => {
    const p = `${path}[${i}]`;
    if (c?.type !== "function") fail(`${p}.type must be "function", got ${show(c?.type)}`);
    return members(c, p, "an object {id, type, function}", {
      id: [string, true],
      type: [(x) => x, true],
      function: [(f, fp) => members(f, fp, "an object {name, arguments}", { name: [nonEmpty, true], arguments: [string, true] }), true],
    });
  });
}

/** Text of one message's content: a string, or OpenAI's array of {type: "text", text} parts. */
function contentText(content, i) {
  if (typeof content === "string") return content;
  if (Array.isArray(content) && content.every((p) => p?.type === "text" && typeof p.text === "string")) {
    return content.map((p) => p.text).join("");
  }
  return fail(`messages[${i}].content must be a string (or an array of {type: "text", text} parts)`);
}

function message(m, i) {
  if (!isObject(m)) fail(`messages[${i}] must be an object {role, content}`);
  for (const [k, v] of Object.entries(m)) {
    if (v != null && !MESSAGE_FIELDS.includes(k)) fail(`messages[${i}].${k} is not supported (a message takes ${MESSAGE_FIELDS.join(", ")})`);
  }
  if (typeof m.role !== "string") fail(`messages[${i}].role must be a string`);
  const out = { role: m.role };
  if (m.tool_calls != null) {
    if (m.role !== "assistant") fail(`messages[${i}].tool_calls is only for an assistant message`);
    out.tool_calls = toolCalls(m.tool_calls, `messages[${i}].tool_calls`);
  }
  // An assistant message that only calls tools has no content (null in OpenAI's responses).
  out.content = m.content == null && out.tool_calls ? "" : contentText(m.content, i);
  if (m.role === "tool") out.tool_call_id = string(m.tool_call_id, `messages[${i}].tool_call_id`);
  else if (m.tool_call_id != null) fail(`messages[${i}].tool_call_id is only for a "tool" message`);
  return out;
}

/**
 * Validates `input` and `options` (of generate, stream or countTokens); returns the wasm request
 * (snake_case, plain JSON: no signal).
 */
export function buildRequest(input, options = {}) {
  if (options === null || typeof options !== "object") fail("options must be an object");
  const request = {};
  if (typeof input === "string") {
    request.prompt = input;
  } else if (Array.isArray(input)) {
    if (input.length === 0) fail("messages must not be empty");
    request.messages = input.map(message);
  } else {
    fail("input must be a prompt string or an array of {role, content} messages");
  }
  for (const [name, value] of Object.entries(checkFields(options, false, "options."))) {
    if (!FIELDS[name].local) request[name] = value;
  }
  // OpenAI's two fields are wasm's one: `logprobs` = how many alternatives (absent: none).
  const { logprobs, top_logprobs: top } = request;
  delete request.top_logprobs;
  delete request.logprobs;
  if (top != null && logprobs !== true) fail("top_logprobs needs logprobs: true");
  if (logprobs) request.logprobs = top ?? 0;
  request.max_tokens ??= DEFAULT_MAX_TOKENS;
  // Sampling without a seed: a fresh one each call (a fixed default would repeat the same text).
  if (request.temperature > 0 && request.seed == null) {
    request.seed = crypto.getRandomValues(new Uint32Array(1))[0];
  }
  return request;
}

/**
 * Validates a chat.completions.create() request; returns {messages, options, stream}: the
 * generate()/stream() arguments it stands for.
 */
export function chatRequest(params) {
  if (!isObject(params)) fail("create() takes {messages, ...}");
  const fields = checkFields(params, true, "");
  if (fields.messages == null) fail("messages is required");
  if (fields.stream_options && !fields.stream) fail("stream_options is only allowed with stream: true");
  const options = {};
  for (const name of OPTION_NAMES) if (name in fields) options[name] = fields[name];
  const max = fields.max_completion_tokens;
  if (max != null) {
    if (options.max_tokens != null && options.max_tokens !== max) {
      fail(`max_tokens (${options.max_tokens}) and max_completion_tokens (${max}) differ; give one`);
    }
    options.max_tokens = max;
  }
  return { messages: fields.messages, options, stream: fields.stream === true };
}
