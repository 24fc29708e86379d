// Structured output through the npm package in headless Chromium (issue 15): `response_format` in
// chat.completions.create / generate / stream, on the CPU engine (fast here) for a subset of
// tests/fixtures/schemas/json_schemas.json, greedy and sampled at temperature 1, every output parsed
// and validated in Node by Ajv (+ ajv-formats), a validator no one here wrote; a regular expression
// (checked by JavaScript's RegExp), a grammar, json_object; streamed chunks that reassemble into the
// non-stream answer; one short constrained generation on the GPU engine (SwiftShader: a few tokens).
// Also the request checks: every field Hearth does not support is rejected naming it, at every entry
// point and through the worker; an invalid schema fails before any token; countTokens equals the
// prompt_tokens of a generation; ContextLengthError carries requested and available.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { launch, MINUTES, openPage, ROOT, serve, SMOLLM2 } from "./harness.mjs";

const SUITE = JSON.parse(fs.readFileSync(path.join(ROOT, "tests/fixtures/schemas/json_schemas.json"), "utf8")).cases;
// A subset of the suite's 33 (each case twice: greedy and sampled): enums, bounds, nested and
// optional objects, a string pattern, a format, anyOf, nullable, $ref, an agent's action.
const CASES = [
  "enum",
  "bounded-integer",
  "flat-object",
  "optional-fields",
  "enum-in-object",
  "nested-object",
  "date-format",
  "anyOf-objects",
  "nullable",
  "ref-defs",
  "browser-action",
].map((name) => SUITE.find((c) => c.name === name) ?? assert.fail(`${name} is not in the suite`));

const ajv = new Ajv2020({ allErrors: true, strict: false });
addFormats(ajv);

/** Why `text` is not an instance of `schema`, or null. */
function invalid(schema, text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return `not JSON (${e.message})`;
  }
  const validate = ajv.compile(schema);
  return validate(value) ? null : ajv.errorsText(validate.errors);
}

/** The suite's chat prompt: the schema in a system message (as the Rust suite asks). */
const schemaMessages = (c) => [
  { role: "system", content: `Reply with JSON only, valid against this JSON Schema: ${JSON.stringify(c.schema)}` },
  { role: "user", content: c.prompt },
];
const schemaFormat = (c) => ({ type: "json_schema", json_schema: { name: c.name, schema: c.schema, strict: true } });

// Page-side helpers: what a call threw, as data; a stream drained into its chunks and error.
const HELPERS = () => {
  window.caught = (e) => ({
    name: e?.name,
    message: e?.message,
    isClass: e instanceof (hearth[e?.name] ?? hearth.HearthError),
    requested: e?.requested,
    available: e?.available,
  });
  window.fail = async (f) => {
    try {
      await f();
      return null;
    } catch (e) {
      return caught(e);
    }
  };
  window.drain = async (iterable) => {
    const chunks = [];
    try {
      for await (const c of iterable) chunks.push(c);
      return { chunks, error: null };
    } catch (e) {
      return { chunks, error: caught(e) };
    }
  };
};

let browser, server, page, consoleErrors;
before(async () => {
  browser = await launch();
  // Not isolated: the worker runs the same single-threaded build as the page (the same ids).
  server = await serve({ smollm2: SMOLLM2 }, { isolated: false });
  ({ page, consoleErrors } = await openPage(browser, server));
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

test("the validator rejects what the schemas forbid (so the suite can fail)", () => {
  const nested = SUITE.find((c) => c.name === "nested-object").schema;
  assert.equal(invalid(nested, '{"name":"A","address":{"city":"B","zip":"12345"}}'), null);
  assert.notEqual(invalid(nested, '{"name":"A","address":{"city":"B","zip":"1234"}}'), null);
  assert.notEqual(invalid(nested, '{"name":"A","address":{"city":"B","zip":"12345"},"x":1}'), null);
  assert.notEqual(invalid(nested, '{"name":"A"'), null);
  assert.notEqual(invalid({ type: "string", format: "date" }, '"2024-02-30"'), null, "formats are validated");
  const refs = SUITE.find((c) => c.name === "ref-defs").schema;
  assert.notEqual(invalid(refs, '{"first":{"name":"A","age":1},"second":{"name":"B"}}'), null, "$ref is followed");
});

test(`${CASES.length} JSON Schemas of the suite through chat.completions.create on the CPU engine, greedy and at temperature 1: every output validates`, { timeout: 12 * MINUTES }, async () => {
  const failures = [];
  for (const c of CASES) {
    for (const [how, sampling] of [["greedy", {}], ["sampled", { temperature: 1, seed: 7 }]]) {
      const r = await page.evaluate(
        async ({ messages, response_format, sampling }) => {
          const t0 = performance.now();
          const completion = await engine.chat.completions.create({ messages, response_format, max_tokens: 400, ...sampling });
          return { choice: completion.choices[0], usage: completion.usage, ms: performance.now() - t0 };
        },
        { messages: schemaMessages(c), response_format: schemaFormat(c), sampling },
      );
      const text = r.choice.message.content;
      console.log(`${c.name} (${how}, ${r.usage.completion_tokens} tokens, ${(r.ms / 1000).toFixed(1)} s): ${text}`);
      if (r.choice.finish_reason !== "stop") failures.push(`${c.name} (${how}): ended by ${r.choice.finish_reason}: ${text}`);
      const why = invalid(c.schema, text);
      if (why) failures.push(`${c.name} (${how}): ${why}: ${text}`);
    }
  }
  assert.deepEqual(failures, [], `${failures.length} of ${2 * CASES.length} outputs failed`);
});

test("a regular expression, a grammar and json_object through generate; their outputs match", { timeout: 5 * MINUTES }, async () => {
  const PHONE = String.raw`\(\d{3}\) \d{3}-\d{4}`;
  const SUFFIX = " -- everything after the first word was forced";
  const GRAMMAR = `start: "Answer: " WORD "${SUFFIX}."\nWORD: /[a-z]{1,12}/\n`;
  const got = await page.evaluate(
    async ({ PHONE, GRAMMAR }) => {
      const run = (input, response_format, extra = {}) => engine.generate(input, { response_format, max_tokens: 120, ...extra });
      const phone = [];
      for (const sampling of [{}, { temperature: 1, seed: 3 }]) {
        phone.push(await run("Question: Give a US phone number.\nAnswer: ", { type: "regex", pattern: PHONE }, sampling));
      }
      const grammar = await run([{ role: "user", content: "Name one colour." }], { type: "grammar", grammar: GRAMMAR });
      // json_object bounds nothing but the syntax: a prompt that asks for a short object, sampled
      // at 0.7 (at temperature 1 a 135M model's object wanders into long strings and nested
      // objects, past any budget, at some seeds and not others, and a last-bit change in the
      // engine's arithmetic picks other samples).
      const object = [];
      const cat = [
        { role: "system", content: "Reply with a short JSON object." },
        { role: "user", content: "Give the name and age of a cat." },
      ];
      for (const sampling of [{}, { temperature: 0.7, seed: 5 }]) object.push(await run(cat, { type: "json_object" }, sampling));
      return { phone, grammar, object };
    },
    { PHONE, GRAMMAR },
  );
  for (const r of got.phone) {
    console.log(`regex: ${JSON.stringify(r.text)}`);
    assert.equal(r.finish_reason, "stop");
    assert.match(r.text, new RegExp(`^(?:${PHONE})$`));
  }
  console.log(`grammar: ${JSON.stringify(got.grammar.text)} (${got.grammar.ids.length} tokens)`);
  assert.equal(got.grammar.finish_reason, "stop");
  assert.match(got.grammar.text, new RegExp(`^Answer: [a-z]{1,12}${SUFFIX.replace(/[-.]/g, "\\$&")}\\.$`));
  for (const r of got.object) {
    console.log(`json_object: ${r.text}`);
    assert.equal(r.finish_reason, "stop");
    const value = JSON.parse(r.text);
    assert.ok(value !== null && typeof value === "object" && !Array.isArray(value), `${r.text} is a JSON object`);
  }
});

test("a constrained request's stream chunks reassemble into the non-stream answer (chat.completions and stream)", { timeout: 5 * MINUTES }, async () => {
  const flat = SUITE.find((c) => c.name === "flat-object");
  const constant = SUITE.find((c) => c.name === "const");
  const got = await page.evaluate(
    async ({ messages, response_format, constMessages, constFormat }) => {
      const params = { messages, response_format, max_tokens: 100 };
      const whole = await engine.chat.completions.create(params);
      // The same prompt again: read from the KV cache (prefix reuse), or not with cache_prompt: false.
      const streamed = await drain(engine.chat.completions.create({ ...params, stream: true }));
      const uncached = await engine.chat.completions.create({ ...params, cache_prompt: false });
      const stream = engine.stream(messages, { response_format, max_tokens: 100 });
      const pieces = await drain(stream);
      const result = await stream.result;
      // A schema that allows one text only: the output is forced, streamed without a forward pass.
      const constStream = engine.stream(constMessages, { response_format: constFormat });
      const constPieces = await drain(constStream);
      return { whole, streamed, uncached, pieces, result, constPieces, constResult: await constStream.result };
    },
    { messages: schemaMessages(flat), response_format: schemaFormat(flat), constMessages: schemaMessages(constant), constFormat: schemaFormat(constant) },
  );
  assert.equal(got.streamed.error, null);
  const chunks = got.streamed.chunks;
  const content = chunks.map((c) => c.choices[0].delta.content ?? "").join("");
  const answer = got.whole.choices[0].message.content;
  console.log(`flat-object: ${answer} (${chunks.length} chunks)`);
  assert.equal(invalid(flat.schema, answer), null);
  assert.equal(content, answer, "the stream's deltas are the completion's content");
  assert.ok(chunks.length > 2, "streamed in pieces");
  assert.equal(chunks.at(-1).choices[0].finish_reason, got.whole.choices[0].finish_reason);
  const { prompt_tokens_details: cached, ...usage } = chunks.at(-1).usage;
  const { prompt_tokens_details: _, ...wholeUsage } = got.whole.usage;
  assert.deepEqual(usage, wholeUsage);
  assert.ok(cached.cached_tokens > 0 && cached.cached_tokens < usage.prompt_tokens, `the repeated prompt came from the cache: ${JSON.stringify(cached)}`);
  assert.equal(got.uncached.choices[0].message.content, answer);
  assert.equal(got.uncached.usage.prompt_tokens_details.cached_tokens, 0, "cache_prompt: false reads the whole prompt");
  assert.equal(got.pieces.error, null);
  assert.equal(got.pieces.chunks.join(""), got.result.text);
  assert.equal(got.result.text, answer, "stream() gives chat.completions' answer");
  assert.equal(got.constPieces.error, null);
  assert.equal(got.constResult.text, '"OK"');
  assert.equal(got.constPieces.chunks.join(""), '"OK"', "forced text is streamed");
  assert.equal(got.constResult.finish_reason, "stop");
});

test("an invalid schema, pattern or grammar is an InvalidArgumentError before any token; a malformed response_format names its field", { timeout: 3 * MINUTES }, async () => {
  const got = await page.evaluate(async () => {
    const messages = [{ role: "user", content: "Hi" }];
    const schema = (s) => ({ type: "json_schema", json_schema: { schema: s } });
    const engineSide = {};
    for (const [name, response_format] of [
      ["type typo", schema({ type: "strnig" })],
      ["empty range", schema({ type: "integer", minimum: 5, maximum: 1 })],
      ["regex", { type: "regex", pattern: "(unclosed" }],
      ["grammar", { type: "grammar", grammar: "start: undefined_rule" }],
    ]) {
      const t0 = performance.now();
      const streamed = await drain(engine.stream(messages, { response_format, max_tokens: 50 }));
      const created = await fail(() => engine.chat.completions.create({ messages, response_format }));
      engineSide[name] = { streamed, created, ms: performance.now() - t0 };
    }
    const checked = {};
    for (const [name, response_format] of [
      ["type", { type: "xml" }],
      ["schema", schema("an object")],
      ["pattern", { type: "regex", pattern: 5 }],
      ["grammar", { type: "grammar" }],
      ["member", { type: "json_object", schema: {} }],
      ["json_schema member", { type: "json_schema", json_schema: { schema: {}, strictly: true } }],
      ["function", schema({ type: "object", properties: { a: () => 1 } })],
    ]) {
      checked[name] = await fail(() => engine.generate(messages, { response_format }));
    }
    return { engineSide, checked, after: (await engine.generate("Hello", { max_tokens: 1 })).ids.length };
  });
  for (const [name, r] of Object.entries(got.engineSide)) {
    assert.deepEqual(r.streamed.chunks, [], `${name}: no token`);
    for (const e of [r.streamed.error, r.created]) {
      assert.equal(e?.name, "InvalidArgumentError", `${name}: ${JSON.stringify(e)}`);
      assert.ok(e.isClass);
      assert.match(e.message, /invalid (JSON schema|regular expression|grammar)/, name);
    }
    console.log(`${name}: ${r.streamed.error.message.slice(0, 160)}`);
  }
  const expect = {
    type: /^options\.response_format\.type must be one of "text", "json_object", "json_schema", "regex", "grammar", got "xml"$/,
    schema: /^options\.response_format\.json_schema\.schema must be an object or boolean/,
    pattern: /^options\.response_format\.pattern must be a non-empty string, got 5$/,
    grammar: /^options\.response_format\.grammar is required$/,
    member: /^options\.response_format\.schema is not supported/,
    "json_schema member": /^options\.response_format\.json_schema\.strictly is not supported/,
    function: /^options\.response_format\.json_schema\.schema\.properties\.a must be JSON, got a function$/,
  };
  for (const [name, re] of Object.entries(expect)) {
    assert.equal(got.checked[name]?.name, "InvalidArgumentError", name);
    assert.match(got.checked[name].message, re);
  }
  assert.equal(got.after, 1, "the engine still works");
});

/** Every entry point of `engine` (the page's or the worker's) with `bad` options; what each threw. */
const ENTRY_POINTS = async ({ which, bad, chatBad }) => {
  const e = which === "worker" ? window.workerEngine : window.engine;
  const messages = [{ role: "user", content: "Hi" }];
  return {
    generate: await fail(() => e.generate("Hi", { max_tokens: 2, ...bad })),
    stream: (await drain(e.stream(messages, { max_tokens: 2, ...bad }))).error,
    countTokens: await fail(() => e.countTokens(messages, bad)),
    create: await fail(() => e.chat.completions.create({ messages, max_tokens: 2, ...chatBad })),
    createStream: (await drain(e.chat.completions.create({ messages, max_tokens: 2, stream: true, ...chatBad }))).error,
  };
};

test("a field Hearth does not support is rejected naming it at every entry point, on the page and through the worker", { timeout: 5 * MINUTES }, async () => {
  const cases = [
    // [options, chat request fields, the message]
    [{ temprature: 0.5 }, { temprature: 0.5 }, /^(options\.)?temprature is not supported \(/],
    [{ logprobs: true, top_logprobs: 21 }, { logprobs: "yes" }, /^(options\.top_logprobs must be an integer from 0 to 20, got 21|logprobs must be true or false, got "yes")$/],
    [{ tools: [{ type: "function" }] }, { tools: [{ type: "function", function: { name: "f", parms: {} } }] }, /^(options\.)?tools\[0\]\.(function is required|function\.parms is not supported)/],
    [{ logit_bias: { x: 5 } }, { tool_choice: "sometimes" }, /^(options\.logit_bias: "x" is not a token id|tool_choice must be "auto", "none", "required" or)/],
    [{ stream: true }, { n: 2 }, /^(options\.stream is not supported \(|n = 2 is not supported yet$)/],
    [{ top_logprobs: 2 }, { parallel_tool_calls: "no" }, /^(top_logprobs needs logprobs: true|parallel_tool_calls must be true or false)/],
  ];
  for (const which of ["page", "worker"]) {
    for (const [bad, chatBad, re] of cases) {
      const got = await page.evaluate(ENTRY_POINTS, { which, bad, chatBad });
      for (const [entry, e] of Object.entries(got)) {
        const what = `${which} ${entry} ${JSON.stringify(entry.startsWith("create") ? chatBad : bad)}`;
        assert.equal(e?.name, "InvalidArgumentError", `${what}: ${JSON.stringify(e)}`);
        assert.ok(e.isClass, what);
        assert.match(e.message, re, what);
      }
    }
  }
  // A message field Hearth would drop (OpenAI's `name`), a tool message without its call's id, and
  // a misspelled load() option.
  const others = await page.evaluate(async () => ({
    name: await fail(() => engine.generate([{ role: "user", content: "Hi", name: "bob" }])),
    toolCallId: await fail(() => workerEngine.chat.completions.create({ messages: [{ role: "tool", content: "1" }] })),
    load: await fail(() => Hearth.load("/models/smollm2/", { maxcontext: 512 })),
    loadInWorker: await fail(() => Hearth.loadInWorker("/models/smollm2/", { maxcontext: 512 })),
  }));
  assert.match(others.name.message, /^messages\[0\]\.name is not supported/);
  assert.match(others.toolCallId.message, /^messages\[0\]\.tool_call_id must be a string, got undefined$/);
  for (const k of ["load", "loadInWorker"]) {
    assert.equal(others[k]?.name, "InvalidArgumentError", k);
    assert.match(others[k].message, /^options\.maxcontext is not supported \(load\(\) takes .*maxContext/, k);
  }
});

test("OpenAI's harmless fields are accepted and change nothing; a constrained request and countTokens work through the worker", { timeout: 5 * MINUTES }, async () => {
  const flat = SUITE.find((c) => c.name === "enum-in-object");
  const got = await page.evaluate(
    async ({ messages, response_format }) => {
      const base = { messages, max_tokens: 6 };
      const harmless = { model: "gpt-4o-mini", user: "user-1", store: false, metadata: { run: "test" }, n: 1, logprobs: false };
      const plain = await engine.chat.completions.create(base);
      const withFields = await engine.chat.completions.create({ ...base, ...harmless });
      const streamed = await drain(engine.chat.completions.create({ ...base, ...harmless, stream: true, stream_options: { include_usage: true } }));
      // The same constrained request on the page and in the worker (response_format crosses postMessage).
      const request = { messages, response_format, max_tokens: 100 };
      const onPage = await engine.chat.completions.create(request);
      const inWorker = await workerEngine.chat.completions.create(request);
      const workerStream = await drain(workerEngine.stream(messages, { response_format, max_tokens: 100 }));
      return {
        plain: plain.choices[0].message.content,
        withFields: withFields.choices[0].message.content,
        model: withFields.model,
        name: engine.info.name,
        streamed: streamed.chunks.map((c) => c.choices[0].delta.content ?? "").join(""),
        streamedUsage: streamed.chunks.at(-1).usage,
        onPage: onPage.choices[0].message.content,
        inWorker: inWorker.choices[0].message.content,
        workerStream: workerStream.chunks.join(""),
        counts: [await engine.countTokens(messages), await workerEngine.countTokens(messages)],
        workerUsage: inWorker.usage,
        streamOptionsAlone: await fail(() => engine.chat.completions.create({ ...base, stream_options: { include_usage: true } })),
      };
    },
    { messages: schemaMessages(flat), response_format: schemaFormat(flat) },
  );
  assert.equal(got.withFields, got.plain, "model, user, store, metadata, n: 1, logprobs: false change nothing");
  assert.equal(got.streamed, got.plain);
  assert.ok(got.streamedUsage.total_tokens > 0, "the last chunk carries usage");
  assert.equal(got.model, got.name, "responses name the loaded model, not the request's");
  assert.match(got.streamOptionsAlone?.message ?? "", /stream_options is only allowed with stream: true/);
  console.log(`worker: ${got.inWorker}`);
  assert.equal(invalid(flat.schema, got.inWorker), null);
  assert.equal(got.inWorker, got.onPage, "the worker's engine gives the page's answer");
  assert.equal(got.workerStream, got.inWorker);
  assert.deepEqual(got.counts, [got.workerUsage.prompt_tokens, got.workerUsage.prompt_tokens]);
});

test("countTokens equals the prompt_tokens of a generation of the same input (string and messages)", { timeout: 3 * MINUTES }, async () => {
  const got = await page.evaluate(async () => {
    const inputs = [
      "The capital of France is",
      [{ role: "user", content: "What is the capital of Germany?" }],
      [
        { role: "system", content: "You answer in one word." },
        { role: "user", content: [{ type: "text", text: "Capital of " }, { type: "text", text: "Italy?" }] },
        { role: "assistant", content: "Rome." },
        { role: "user", content: "And of Spain?" },
      ],
    ];
    const out = [];
    for (const input of inputs) {
      const count = await engine.countTokens(input);
      const withOptions = await engine.countTokens(input, { max_tokens: 5, temperature: 0.7, response_format: { type: "json_object" } });
      const { usage } = await engine.generate(input, { max_tokens: 1 });
      out.push({ count, withOptions, prompt: usage.prompt_tokens });
    }
    return out;
  });
  for (const [i, r] of got.entries()) {
    assert.ok(r.count > 0);
    assert.equal(r.count, r.prompt, `input ${i}`);
    assert.equal(r.withOptions, r.prompt, `input ${i} with options`);
  }
});

test("ContextLengthError carries requested (prompt + max_tokens) and available (the context), on the page and through the worker", { timeout: 3 * MINUTES }, async () => {
  const got = await page.evaluate(async () => {
    const messages = [{ role: "user", content: "Hello there" }];
    const ctx = engine.info.contextLength;
    return {
      ctx,
      prompt: await engine.countTokens("Hello"),
      chatPrompt: await engine.countTokens(messages),
      generate: await fail(() => engine.generate("Hello", { max_tokens: 100000 })),
      create: await fail(() => engine.chat.completions.create({ messages, max_tokens: ctx })),
      worker: await fail(() => workerEngine.generate("Hello", { max_tokens: 100000 })),
      workerStream: (await drain(workerEngine.chat.completions.create({ messages, max_tokens: ctx, stream: true }))).error,
      fits: (await engine.generate("Hello", { max_tokens: 1 })).usage.prompt_tokens,
    };
  });
  assert.equal(got.ctx, 8192);
  const expect = [
    ["generate", got.prompt + 100000],
    ["create", got.chatPrompt + got.ctx],
    ["worker", got.prompt + 100000],
    ["workerStream", got.chatPrompt + got.ctx],
  ];
  for (const [k, requested] of expect) {
    const e = got[k];
    assert.equal(e?.name, "ContextLengthError", `${k}: ${JSON.stringify(e)}`);
    assert.ok(e.isClass, k);
    assert.deepEqual({ requested: e.requested, available: e.available }, { requested, available: got.ctx }, k);
    assert.match(e.message, /context length of 8192/);
  }
  assert.equal(got.fits, got.prompt);
  await page.evaluate(() => workerEngine.dispose());
  assert.deepEqual(consoleErrors, []);
});

test("the GPU engine (WebGPU on SwiftShader) follows a schema too: a short enum answer", { timeout: 8 * MINUTES }, async () => {
  const schema = { enum: ["red", "green", "blue"] };
  const { context, page: gpuPage, consoleErrors: gpuErrors } = await openPage(browser, server);
  const got = await gpuPage.evaluate(async (schema) => {
    const engine = await Hearth.load("/models/smollm2/", { backend: "webgpu" });
    const r = await engine.generate("Q: Pick a primary color, as JSON.\nA: ", {
      response_format: { type: "json_schema", json_schema: { schema } },
      max_tokens: 8,
    });
    const info = engine.info;
    await engine.dispose();
    return { r, backend: info.backend };
  }, schema);
  // The CPU engine's answer to the same greedy request, for the log (ids may differ at a near-tie).
  const cpu = await page.evaluate(
    (schema) => engine.generate("Q: Pick a primary color, as JSON.\nA: ", { response_format: { type: "json_schema", json_schema: { schema } }, max_tokens: 8 }),
    schema,
  );
  console.log(`webgpu: ${got.r.text} ${JSON.stringify(got.r.ids)}; cpu: ${cpu.text} ${JSON.stringify(cpu.ids)}`);
  assert.equal(got.backend, "webgpu");
  assert.equal(got.r.finish_reason, "stop");
  assert.equal(invalid(schema, got.r.text), null, got.r.text);
  assert.deepEqual(gpuErrors, []);
  await context.close();
});

test("a second chat turn reuses the first from the cache (prompt_tokens_details.cached_tokens), with the answer a full prefill gives", { timeout: 5 * MINUTES }, async () => {
  const r = await page.evaluate(async () => {
    const messages = [{ role: "user", content: "Name two colours of the rainbow." }];
    const first = await engine.chat.completions.create({ messages, max_tokens: 24 });
    messages.push(first.choices[0].message, { role: "user", content: "And one more?" });
    const firstPrompt = first.usage.prompt_tokens;
    const reused = await engine.chat.completions.create({ messages, max_tokens: 16 });
    const full = await engine.chat.completions.create({ messages, max_tokens: 16, cache_prompt: false });
    const counted = await engine.countTokens(messages);
    return { firstPrompt, counted, reused: reused.usage, full: full.usage, texts: [reused.choices[0].message.content, full.choices[0].message.content] };
  });
  console.log(JSON.stringify(r));
  assert.equal(r.reused.prompt_tokens, r.counted);
  assert.ok(r.reused.prompt_tokens_details.cached_tokens >= r.firstPrompt, "the first turn's prompt is reused");
  assert.ok(r.reused.prompt_tokens_details.cached_tokens < r.counted, "the last prompt token always runs");
  assert.equal(r.full.prompt_tokens_details.cached_tokens, 0, "cache_prompt: false runs the whole prompt");
  assert.equal(r.texts[0], r.texts[1], "reuse changed the answer");
});
