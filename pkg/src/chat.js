// `engine.chat.completions.create()`: OpenAI's request and response shapes over generate()/stream(),
// so code written for the OpenAI SDK runs with little change. Shared by the engine and the worker
// proxy: it only needs `info`, `generate` and `stream`.

import { chatRequest } from "./options.js";

/** 24 random hex digits, for OpenAI-style ids (completions here, tool calls in engine.js). */
export function randomHex() {
  return Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function usageOf(u) {
  return {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens,
    total_tokens: u.prompt_tokens + u.completion_tokens,
    prompt_tokens_details: { cached_tokens: u.cached_tokens ?? 0 },
  };
}

/** Hearth's per-token entries in OpenAI's `logprobs` shape ({content: [{token, logprob, bytes, top_logprobs}]}). */
function logprobsOf(entries) {
  const entry = ({ token, logprob, bytes }) => ({ token, logprob, bytes });
  return { content: entries.map((e) => ({ ...entry(e), top_logprobs: e.top_logprobs.map(entry) })) };
}

/** The response's message: content, and the calls when there are any (content null without text). */
function messageOf(r) {
  if (!r.tool_calls) return { role: "assistant", content: r.text };
  return { role: "assistant", content: r.text === "" ? null : r.text, tool_calls: r.tool_calls };
}

// eslint-disable-next-line require-yield
async function* failed(error) {
  throw error;
}

async function* chunks(stream, { id, created, model }) {
  const chunk = (delta, finish_reason) => ({
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [{ index: 0, delta, finish_reason }],
  });
  let first = true;
  for await (const { logprobs, ...delta } of stream.deltas()) {
    const c = chunk(first ? { role: "assistant", ...(delta.tool_calls && { content: null }), ...delta } : delta, null);
    if (logprobs) c.choices[0].logprobs = logprobsOf(logprobs);
    yield c;
    first = false;
  }
  const result = await stream.result;
  yield { ...chunk(first ? { role: "assistant" } : {}, result.finish_reason), usage: usageOf(result.usage) };
}

export function createChat(engine) {
  function create(params) {
    let request;
    try {
      // Every field checked (options.js): one Hearth does not support is an error, never dropped.
      // Unlike OpenAI (default temperature 1), a missing temperature means greedy decoding.
      request = chatRequest(params);
    } catch (e) {
      return params?.stream ? failed(e) : Promise.reject(e);
    }
    const { messages, options, stream } = request;
    // `model` is the loaded model's name, whatever the request's `model` said (one engine, one model).
    const meta = { id: "chatcmpl-" + randomHex(), created: Math.floor(Date.now() / 1000), model: engine.info.name };
    // The stream is returned as is (not in a promise); `await create({stream: true})` gives it too.
    if (stream) return chunks(engine.stream(messages, options), meta);
    return engine.generate(messages, options).then((r) => ({
      id: meta.id,
      object: "chat.completion",
      created: meta.created,
      model: meta.model,
      choices: [{ index: 0, message: messageOf(r), ...(r.logprobs && { logprobs: logprobsOf(r.logprobs) }), finish_reason: r.finish_reason }],
      usage: usageOf(r.usage),
    }));
  }
  return { completions: { create } };
}
