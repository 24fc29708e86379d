// The browser's GPU engine (`backend: "webgpu"`, which SwiftShader would not get by default) gives
// exactly what the native engine gives: greedy ids of the real SmolLM2 package through the
// main-thread API, the worker API, stream() and chat.completions, against
// `hearth generate --backend gpu --json` run natively in the test itself. Also: loading never holds
// the model in wasm memory.
//
// A plain prompt and a chat prompt, each through generate() on one side and stream() on the other
// (main thread: generate plain, stream chat; worker: stream plain, generate chat): every result is
// compared with the native one, so stream's text equals generate's for both, on both sides, with
// one generation fewer than running all four on each (SwiftShader prefills ~1-3 tokens/s).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { fixturePrompts, launch, MINUTES, nativeGenerate, openPage, serve, SMOLLM2 } from "./harness.mjs";

// SwiftShader decodes ~0.5 token/s: few prompts, few tokens. A raw prompt and a chat prompt from
// tests/fixtures/smollm2/generation.json cover both input forms; the chat answer ("The capital of
// Germany is Berlin." and the end-of-turn token) is 8 tokens, so CHAT_N covers finish_reason "stop".
const RAW = "The capital of France is";
const CHAT = "What is the capital of Germany?";
const N = 5;
const CHAT_N = 10;

let browser, server, page, consoleErrors;
before(async () => {
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2 });
  ({ page, consoleErrors } = await openPage(browser, server));
}, { timeout: 2 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

test("greedy ids, streamed text and chat completions equal the native engine's; loading grows wasm memory by a window, not the model", { timeout: 8 * MINUTES }, async () => {
  const fixtures = fixturePrompts();
  assert.ok(fixtures.some((p) => p.kind === "raw" && p.prompt === RAW), "the raw prompt is a fixture prompt");
  assert.ok(fixtures.some((p) => p.kind === "chat" && p.prompt === CHAT), "the chat prompt is a fixture prompt");
  const raw = nativeGenerate({ prompt: RAW, maxTokens: N });
  const chat = nativeGenerate({ prompt: CHAT, chat: true, maxTokens: CHAT_N });
  assert.equal(chat.finish_reason, "stop", "the native chat answer ends before CHAT_N tokens");

  const got = await page.evaluate(
    async ({ RAW, CHAT, N, CHAT_N }) => {
      const progress = [];
      // Wasm memory with each event: it only grows, so the last value is the load's peak.
      const onProgress = (p) => progress.push({ ...p, memory: wasmMemoryBytes() });
      const engine = await Hearth.load("/models/smollm2/", { onProgress, backend: "webgpu" });
      const memory = wasmMemoryBytes();
      const generated = await engine.generate(RAW, { max_tokens: N });
      const messages = [{ role: "user", content: CHAT }];
      const chunks = [];
      const stream = engine.stream(messages, { max_tokens: CHAT_N });
      for await (const chunk of stream) chunks.push(chunk);
      const chatStreamed = await stream.result;
      // The OpenAI shapes; each chat prompt costs a ~40-token prefill on SwiftShader, so few tokens.
      const completion = await engine.chat.completions.create({ messages, max_tokens: 1 });
      const chatChunks = [];
      for await (const c of engine.chat.completions.create({ messages, max_tokens: 2, stream: true })) {
        chatChunks.push(c);
      }
      const info = engine.info;
      await engine.dispose();
      return { progress, memory, generated, chunks, chatStreamed, completion, chatChunks, info };
    },
    { RAW, CHAT, N, CHAT_N },
  );

  assert.deepEqual(got.generated.ids, raw.ids, "main thread, plain prompt");
  assert.deepEqual(got.generated.prompt_ids, raw.prompt_ids);
  assert.equal(got.generated.text, raw.text);
  assert.equal(got.generated.finish_reason, raw.finish_reason);
  assert.equal(got.generated.usage.completion_tokens, raw.ids.length);

  assert.deepEqual(got.chatStreamed.ids, chat.ids, "main thread, chat template");
  assert.deepEqual(got.chatStreamed.prompt_ids, chat.prompt_ids);
  assert.ok(got.chunks.length >= 2, `stream() gave ${got.chunks.length} chunk(s)`);
  assert.equal(got.chunks.join(""), chat.text, "stream chunks concatenate to the (generated) text");
  assert.equal(got.chatStreamed.text, chat.text);
  assert.equal(got.chatStreamed.finish_reason, "stop");
  assert.equal(got.chatStreamed.usage.completion_tokens, chat.ids.length);
  assert.equal(got.chatStreamed.usage.prompt_tokens, chat.prompt_ids.length);
  // chat.completions, cut to 1 and 2 tokens: the greedy text's beginning, in OpenAI's shapes.
  const { completion, chatChunks } = got;
  assert.equal(completion.object, "chat.completion");
  assert.match(completion.id, /^chatcmpl-/);
  assert.equal(completion.choices.length, 1);
  assert.equal(completion.choices[0].message.role, "assistant");
  const first = completion.choices[0].message.content;
  assert.ok(first.length > 0 && chat.text.startsWith(first), `completion ${JSON.stringify(first)} begins ${JSON.stringify(chat.text)}`);
  assert.equal(completion.choices[0].finish_reason, "length");
  // The same chat ran just before: all of its prompt but the last token comes from the cache.
  const n = chat.prompt_ids.length;
  assert.deepEqual(completion.usage, { prompt_tokens: n, completion_tokens: 1, total_tokens: n + 1, prompt_tokens_details: { cached_tokens: n - 1 } });
  assert.ok(chatChunks.every((c) => c.object === "chat.completion.chunk" && c.id === chatChunks[0].id));
  assert.equal(chatChunks[0].choices[0].delta.role, "assistant");
  assert.ok(chatChunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
  const deltas = chatChunks.map((c) => c.choices[0].delta.content ?? "").join("");
  assert.ok(deltas.startsWith(first) && chat.text.startsWith(deltas) && deltas.length > first.length, `streamed ${JSON.stringify(deltas)}`);
  assert.equal(chatChunks.at(-1).choices[0].finish_reason, "length");
  assert.equal(chatChunks.at(-1).usage?.completion_tokens, 2);

  // Progress: every phase, loaded never going backwards within a phase, ready last.
  const phases = [...new Set(got.progress.map((p) => p.phase))];
  assert.deepEqual(phases, ["download", "gpu", "ready"]);
  for (const phase of ["download", "gpu"]) {
    const events = got.progress.filter((p) => p.phase === phase);
    events.forEach((e, i) => assert.ok(i === 0 || e.loaded >= events[i - 1].loaded, `${phase} progress went backwards`));
    assert.equal(events.at(-1).loaded, events.at(-1).total, `${phase} progress ends complete`);
  }

  // Shards are copied into the GPU through a 4 MiB window: once the engine is prepared (tokenizer,
  // pipelines; before the first shard is fed, i.e. at the first download event), loading the 96 MB
  // of weights may grow wasm memory by that window and allocator slack, whatever the model's size.
  const modelBytes = fs.readdirSync(SMOLLM2).filter((f) => f.startsWith("shard-")).reduce((n, f) => n + fs.statSync(`${SMOLLM2}/${f}`).size, 0);
  const prepared = got.progress.find((p) => p.phase === "download").memory;
  const growth = got.memory - prepared;
  assert.ok(growth <= 8 << 20, `loading ${modelBytes} bytes of weights grew wasm memory by ${growth} bytes`);
  assert.ok(got.memory < modelBytes / 2, `peak wasm memory ${got.memory} bytes for a ${modelBytes}-byte model`);
  assert.equal(got.info.kvF16, false, "SwiftShader has no shader-f16");
  assert.equal(got.info.backend, "webgpu", "backend: \"webgpu\" runs the GPU engine even on a software adapter");
  assert.match(got.info.backendReason, /asked for/);
  assert.deepEqual(consoleErrors, []);
});

test("the worker API gives the same ids, for a plain prompt (streamed) and for the chat template", { timeout: 6 * MINUTES }, async () => {
  const raw = nativeGenerate({ prompt: RAW, maxTokens: N });
  const chat = nativeGenerate({ prompt: CHAT, chat: true, maxTokens: CHAT_N });
  const got = await page.evaluate(
    async ({ RAW, CHAT, N, CHAT_N }) => {
      const progress = [];
      const engine = await Hearth.loadInWorker("/models/smollm2/", { onProgress: (p) => progress.push(p.phase), backend: "webgpu" });
      const chunks = [];
      const stream = engine.stream(RAW, { max_tokens: N });
      for await (const chunk of stream) chunks.push(chunk);
      const streamed = await stream.result;
      const chatGenerated = await engine.generate([{ role: "user", content: CHAT }], { max_tokens: CHAT_N });
      const backend = engine.info.backend;
      await engine.dispose();
      return { progress: [...new Set(progress)], chunks, streamed, chatGenerated, backend };
    },
    { RAW, CHAT, N, CHAT_N },
  );
  assert.equal(got.backend, "webgpu", "the worker gets the backend option too");
  assert.deepEqual(got.streamed.ids, raw.ids, "worker, plain prompt");
  assert.deepEqual(got.streamed.prompt_ids, raw.prompt_ids);
  assert.equal(got.streamed.text, raw.text);
  assert.ok(got.chunks.length >= 2, `stream() gave ${got.chunks.length} chunk(s)`);
  assert.equal(got.chunks.join(""), raw.text, "worker stream chunks concatenate to the (generated) text");
  assert.deepEqual(got.chatGenerated.ids, chat.ids, "worker, chat template");
  assert.deepEqual(got.chatGenerated.prompt_ids, chat.prompt_ids);
  assert.equal(got.chatGenerated.text, chat.text);
  assert.equal(got.chatGenerated.finish_reason, "stop");
  // The worker reports progress through the proxy (from IndexedDB when the first test stored the shards).
  assert.deepEqual(got.progress.slice(-2), ["gpu", "ready"]);
  assert.deepEqual(consoleErrors, []);
});
