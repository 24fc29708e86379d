// Tool calls through the npm package in headless Chromium (issue 15, item 3), on the CPU engine
// (the GPU engine applies the same grammar mask: crates/hearth-gpu/tests/agents.rs): with
// `tool_choice: "required"` (or a named function) every response holds calls of allowed tools whose
// arguments Ajv validates against their schemas; a full round trip (call, `role: "tool"` result,
// answer) works and reuses the cached prefix; OpenAI's stream deltas reassemble into the non-stream
// response, on the page and through the worker; malformed tools and choices fail naming the field.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import Ajv2020 from "ajv/dist/2020.js";
import { launch, MINUTES, openPage, serve, SMOLLM2 } from "./harness.mjs";

const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather in a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", minLength: 1, maxLength: 40 }, unit: { enum: ["celsius", "fahrenheit"] } },
        required: ["city", "unit"],
        additionalProperties: false,
      },
    },
  },
  {
    type: "function",
    function: {
      name: "search_web",
      description: "Search the web",
      parameters: {
        type: "object",
        properties: { query: { type: "string", maxLength: 60 }, max_results: { type: "integer", minimum: 1, maximum: 10 } },
        required: ["query"],
        additionalProperties: false,
      },
    },
  },
  { type: "function", function: { name: "get_time", description: "The current time" } },
];

const ajv = new Ajv2020({ allErrors: true, strict: false });

/** Why `message` does not hold valid calls of the tools named in `allowed`, or null. */
function invalidCalls(message, allowed) {
  if (!Array.isArray(message.tool_calls) || message.tool_calls.length === 0) return `no tool_calls: ${JSON.stringify(message)}`;
  for (const call of message.tool_calls) {
    if (!/^call_[0-9a-f]{24}$/.test(call.id) || call.type !== "function") return `malformed call ${JSON.stringify(call)}`;
    const tool = TOOLS.find((t) => t.function.name === call.function.name);
    if (!tool || !allowed.includes(call.function.name)) return `called ${call.function.name}`;
    let args;
    try {
      args = JSON.parse(call.function.arguments);
    } catch (e) {
      return `arguments are not JSON (${e.message}): ${call.function.arguments}`;
    }
    const validate = ajv.compile(tool.function.parameters ?? { type: "object", maxProperties: 0 });
    if (!validate(args)) return `${call.function.arguments}: ${ajv.errorsText(validate.errors)}`;
  }
  return null;
}

/** OpenAI's stream chunks put back together: {content, tool_calls, finish_reason}. */
function reassemble(chunks) {
  let content = null;
  const calls = [];
  for (const chunk of chunks) {
    const delta = chunk.choices[0].delta;
    if (delta.content) content = (content ?? "") + delta.content;
    for (const d of delta.tool_calls ?? []) {
      calls[d.index] ??= { id: d.id, type: d.type, function: { name: d.function.name, arguments: "" } };
      calls[d.index].function.arguments += d.function.arguments ?? "";
    }
  }
  return { content, tool_calls: calls, finish_reason: chunks.at(-1).choices[0].finish_reason };
}

const HELPERS = () => {
  window.fail = async (f) => {
    try {
      await f();
      return null;
    } catch (e) {
      return { name: e?.name, message: e?.message };
    }
  };
  window.drain = async (iterable) => {
    const chunks = [];
    for await (const c of iterable) chunks.push(c);
    return chunks;
  };
};

let browser, server, page;
before(async () => {
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2 }, { isolated: false });
  ({ page } = await openPage(browser, server));
  await page.evaluate(HELPERS);
  await page.evaluate(async () => {
    window.engine = await Hearth.load("/models/smollm2/", { backend: "cpu" });
    window.workerEngine = await Hearth.loadInWorker("/models/smollm2/", { backend: "cpu" });
  });
}, { timeout: 3 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

test("the call check rejects what the grammar forbids (so the tests can fail)", () => {
  const call = (name, args) => ({ tool_calls: [{ id: "call_" + "0".repeat(24), type: "function", function: { name, arguments: args } }] });
  const all = ["get_weather", "search_web", "get_time"];
  assert.equal(invalidCalls(call("get_weather", '{"city":"Paris","unit":"celsius"}'), all), null);
  assert.notEqual(invalidCalls(call("get_weather", '{"city":"Paris","unit":"kelvin"}'), all), null);
  assert.notEqual(invalidCalls(call("get_weather", '{"city":"Paris"'), all), null);
  assert.notEqual(invalidCalls(call("get_weather", '{"city":"Paris","unit":"celsius"}'), ["search_web"]), null);
  assert.notEqual(invalidCalls(call("get_time", '{"x":1}'), all), null);
  assert.notEqual(invalidCalls({ content: "hi" }, all), null);
});

test("tool_choice required and a named function always give valid calls (greedy and at temperature 1)", { timeout: 8 * MINUTES }, async () => {
  const prompts = ["What's the weather like in Paris right now?", "Find me articles about growing roses.", "Tell me a joke."];
  const choices = [
    ["required", ["get_weather", "search_web", "get_time"]],
    [{ type: "function", function: { name: "search_web" } }, ["search_web"]],
  ];
  const failures = [];
  for (const content of prompts) {
    for (const [tool_choice, allowed] of choices) {
      // At temperature 1 this small model keeps adding parallel calls: one call there.
      for (const sampling of [{}, { temperature: 1, seed: 9, parallel_tool_calls: false }]) {
        const r = await page.evaluate(
          (params) => engine.chat.completions.create(params),
          { messages: [{ role: "user", content }], tools: TOOLS, tool_choice, max_tokens: 120, ...sampling },
        );
        const { message, finish_reason } = r.choices[0];
        console.log(`${content} / ${JSON.stringify(tool_choice)} / ${JSON.stringify(sampling)}: ${JSON.stringify(message.tool_calls?.map((c) => c.function))}`);
        const why = finish_reason !== "tool_calls" ? `finish_reason ${finish_reason}` : invalidCalls(message, allowed);
        if (why) failures.push(`${content} / ${JSON.stringify(tool_choice)}: ${why}`);
        if (message.content !== null) failures.push(`${content}: content ${JSON.stringify(message.content)} beside the calls`);
      }
    }
  }
  assert.deepEqual(failures, []);
});

test("a round trip: call, tool result, answer; the answer's prompt reuses the call's cache", { timeout: 5 * MINUTES }, async () => {
  const got = await page.evaluate(async (TOOLS) => {
    const messages = [{ role: "user", content: "What's the weather like in Paris?" }];
    const first = await engine.chat.completions.create({
      messages,
      tools: TOOLS,
      tool_choice: { type: "function", function: { name: "get_weather" } },
      parallel_tool_calls: false,
      max_tokens: 60,
    });
    const message = first.choices[0].message;
    messages.push(message);
    for (const call of message.tool_calls) {
      messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify({ temperature: 18, sky: "cloudy" }) });
    }
    const second = await engine.chat.completions.create({ messages, tools: TOOLS, tool_choice: "none", max_tokens: 40 });
    const counted = await engine.countTokens(messages, { tools: TOOLS });
    return { first, second, counted };
  }, TOOLS);
  const call = got.first.choices[0].message.tool_calls;
  console.log(`call: ${JSON.stringify(call)}`);
  assert.equal(invalidCalls(got.first.choices[0].message, ["get_weather"]), null);
  const answer = got.second.choices[0];
  console.log(`answer: ${JSON.stringify(answer.message.content)} (${JSON.stringify(got.second.usage)})`);
  assert.equal(answer.finish_reason, "stop");
  assert.equal(typeof answer.message.content, "string");
  assert.ok(answer.message.content.length > 0);
  assert.equal(answer.message.tool_calls, undefined, "tool_choice none: no calls");
  const usage = got.second.usage;
  assert.ok(
    usage.prompt_tokens_details.cached_tokens >= got.first.usage.prompt_tokens,
    `the first call's prompt is reused: ${JSON.stringify(usage)} after ${JSON.stringify(got.first.usage)}`,
  );
  assert.equal(got.counted, usage.prompt_tokens, "countTokens counts the tools too");
});

test("stream deltas reassemble into the non-stream response, on the page and through the worker", { timeout: 5 * MINUTES }, async () => {
  const params = { messages: [{ role: "user", content: "Weather in Oslo and in Rome?" }], tools: TOOLS, tool_choice: "required", max_tokens: 90 };
  const got = await page.evaluate(async (params) => {
    const out = {};
    for (const [which, e] of [["page", engine], ["worker", workerEngine]]) {
      out[which] = {
        whole: await e.chat.completions.create(params),
        chunks: await drain(await e.chat.completions.create({ ...params, stream: true })),
        generated: await e.generate(params.messages, { tools: params.tools, tool_choice: params.tool_choice, max_tokens: params.max_tokens }),
      };
    }
    return out;
  }, params);
  for (const [which, r] of Object.entries(got)) {
    const whole = r.whole.choices[0];
    const streamed = reassemble(r.chunks);
    console.log(`${which}: ${r.chunks.length} chunks, ${JSON.stringify(streamed.tool_calls.map((c) => c.function))}`);
    assert.equal(invalidCalls(whole.message, ["get_weather", "search_web", "get_time"]), null, which);
    assert.equal(streamed.finish_reason, whole.finish_reason, which);
    assert.equal(streamed.content, whole.message.content, which);
    const strip = (calls) => calls.map((c) => ({ type: c.type, function: c.function }));
    assert.deepEqual(strip(streamed.tool_calls), strip(whole.message.tool_calls), `${which}: the deltas are the response's calls`);
    for (const c of streamed.tool_calls) assert.match(c.id, /^call_[0-9a-f]{24}$/, which);
    assert.ok(r.chunks.length > streamed.tool_calls.length + 2, `${which}: the arguments came in pieces`);
    assert.equal(r.chunks[0].choices[0].delta.role, "assistant");
    // generate() gives the same calls and the text outside them (none here).
    assert.deepEqual(strip(r.generated.tool_calls), strip(whole.message.tool_calls), `${which}: generate()`);
    assert.equal(r.generated.text, "");
    assert.equal(r.generated.finish_reason, "tool_calls");
  }
});

test("malformed tools, choices and tool messages fail naming the field; bad ones from wasm before any token", { timeout: 3 * MINUTES }, async () => {
  const got = await page.evaluate(async (TOOLS) => {
    const messages = [{ role: "user", content: "Hi" }];
    const create = (extra) => fail(() => engine.chat.completions.create({ messages, max_tokens: 4, ...extra }));
    return {
      notArray: await create({ tools: { type: "function" } }),
      badType: await create({ tools: [{ type: "retrieval", function: { name: "f" } }] }),
      badParams: await create({ tools: [{ type: "function", function: { name: "f", parameters: "x" } }] }),
      badName: await create({ tools: [{ type: "function", function: { name: "two words" } }], tool_choice: "required" }),
      unknownChoice: await create({ tools: TOOLS, tool_choice: { type: "function", function: { name: "nope" } } }),
      requiredNoTools: await create({ tool_choice: "required" }),
      badSchema: await create({ tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "strnig" } } } } }], tool_choice: "required" }),
      withRegex: await create({ tools: TOOLS, response_format: { type: "regex", pattern: "a+" } }),
      plainPrompt: await fail(() => engine.generate("Hi", { tools: TOOLS })),
      userToolCalls: await create({ messages: [{ role: "user", content: "x", tool_calls: [] }] }),
      badCall: await create({ messages: [{ role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: {} } }] }] }),
      after: (await engine.generate("Hello", { max_tokens: 1 })).ids.length,
    };
  }, TOOLS);
  const expect = {
    notArray: /^tools must be an array/,
    badType: /^tools\[0\]\.type must be "function", got "retrieval"$/,
    badParams: /^tools\[0\]\.function\.parameters must be an object \(a JSON Schema\)/,
    badName: /tools\[0\]\.function\.name must be 1 to 64 letters/,
    unknownChoice: /tool_choice names "nope", which is not among the tools/,
    requiredNoTools: /tool_choice "required" needs tools/,
    badSchema: /invalid tools/,
    withRegex: /cannot be combined with tools/,
    plainPrompt: /give `messages`, not `prompt`/,
    userToolCalls: /^messages\[0\]\.tool_calls is only for an assistant message$/,
    badCall: /^messages\[0\]\.tool_calls\[0\]\.function\.arguments must be a string/,
  };
  for (const [name, re] of Object.entries(expect)) {
    assert.equal(got[name]?.name, "InvalidArgumentError", `${name}: ${JSON.stringify(got[name])}`);
    assert.match(got[name].message, re, name);
  }
  assert.equal(got.after, 1, "the engine still works");
});
