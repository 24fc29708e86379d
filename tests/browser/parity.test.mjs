// The browser gives exactly what the native engine gives: greedy ids of the real SmolLM2 package
// through the main-thread API, the worker API, stream() and chat.completions, against
// `hearth generate --backend gpu --json` run natively in the test itself. Also: loading never holds
// the model in wasm memory.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { launch, nativeGenerate, openPage, serve, SMOLLM2 } from "./harness.mjs";

// SwiftShader decodes ~0.5 token/s: few prompts, few tokens. A raw prompt and a chat prompt from
// tests/fixtures/smollm2/generation.json cover both input forms.
const RAW = "The capital of France is";
const CHAT = "What is 2 + 2?";
const N = 5;

let browser, server, page, consoleErrors;
before(async () => {
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2 });
  ({ page, consoleErrors } = await openPage(browser, server));
});
after(async () => {
  await browser?.close();
  await server?.close();
});

test("greedy ids, streamed text and chat completions equal the native engine's; wasm memory stays below the model's size", async () => {
  const fixture = JSON.parse(fs.readFileSync(new URL("../fixtures/smollm2/generation.json", import.meta.url)));
  assert.ok(fixture.prompts.some((p) => p.prompt === RAW), "the raw prompt is a fixture prompt");
  const raw = nativeGenerate({ prompt: RAW, maxTokens: N });
  const chat = nativeGenerate({ prompt: CHAT, chat: true, maxTokens: N });

  const got = await page.evaluate(
    async ({ RAW, CHAT, N }) => {
      const progress = [];
      const engine = await Hearth.load("/models/smollm2/", { onProgress: (p) => progress.push(p) });
      const memory = wasmMemoryBytes();
      const generated = await engine.generate(RAW, { max_tokens: N });
      const chunks = [];
      const stream = engine.stream(RAW, { max_tokens: N });
      for await (const chunk of stream) chunks.push(chunk);
      const streamed = await stream.result;
      const completion = await engine.chat.completions.create({ messages: [{ role: "user", content: CHAT }], max_tokens: N });
      const chatChunks = [];
      for await (const c of engine.chat.completions.create({ messages: [{ role: "user", content: CHAT }], max_tokens: N, stream: true })) {
        chatChunks.push(c);
      }
      const chatIds = (await engine.generate([{ role: "user", content: CHAT }], { max_tokens: N })).ids;
      const info = engine.info;
      await engine.dispose();
      return { progress, memory, generated, chunks, streamed, completion, chatChunks, chatIds, info };
    },
    { RAW, CHAT, N },
  );

  assert.deepEqual(got.generated.ids, raw.ids, "main thread, plain prompt");
  assert.deepEqual(got.generated.prompt_ids, raw.prompt_ids);
  assert.equal(got.generated.text, raw.text);
  assert.equal(got.generated.finish_reason, raw.finish_reason);
  assert.equal(got.generated.usage.completion_tokens, raw.ids.length);

  assert.ok(got.chunks.length >= 2, `stream() gave ${got.chunks.length} chunk(s)`);
  assert.equal(got.chunks.join(""), raw.text, "stream chunks concatenate to the text");
  assert.deepEqual(got.streamed.ids, raw.ids);

  assert.deepEqual(got.chatIds, chat.ids, "main thread, chat template");
  assert.equal(got.completion.object, "chat.completion");
  assert.equal(got.completion.choices[0].message.role, "assistant");
  assert.equal(got.completion.choices[0].message.content, chat.text);
  assert.equal(got.completion.usage.completion_tokens, chat.ids.length);
  assert.equal(got.completion.usage.total_tokens, chat.prompt_ids.length + chat.ids.length);
  const deltas = got.chatChunks.map((c) => c.choices[0].delta.content ?? "").join("");
  assert.equal(deltas, chat.text, "streamed chat chunks concatenate to the text");
  assert.ok(got.chatChunks.every((c) => c.object === "chat.completion.chunk"));
  assert.equal(got.chatChunks.at(-1).choices[0].finish_reason, chat.finish_reason);

  // Progress: every phase, loaded never going backwards within a phase, ready last.
  const phases = [...new Set(got.progress.map((p) => p.phase))];
  assert.deepEqual(phases, ["download", "gpu", "ready"]);
  for (const phase of ["download", "gpu"]) {
    const events = got.progress.filter((p) => p.phase === phase);
    events.forEach((e, i) => assert.ok(i === 0 || e.loaded >= events[i - 1].loaded, `${phase} progress went backwards`));
    assert.equal(events.at(-1).loaded, events.at(-1).total, `${phase} progress ends complete`);
  }

  // The model is ~96 MB; wasm memory only grows, so this is the load's peak. It holds the tokenizer
  // and the weight buffers still being assembled (at most the 28 MB embedding table at once).
  const modelBytes = fs.readdirSync(SMOLLM2).filter((f) => f.startsWith("shard-")).reduce((n, f) => n + fs.statSync(`${SMOLLM2}/${f}`).size, 0);
  assert.ok(got.memory < modelBytes * 0.75, `wasm memory ${got.memory} bytes for a ${modelBytes}-byte model`);
  assert.equal(got.info.kvF16, false, "SwiftShader has no shader-f16");
  assert.deepEqual(consoleErrors, []);
});

test("the worker API gives the same ids and stream", async () => {
  const raw = nativeGenerate({ prompt: RAW, maxTokens: N });
  const got = await page.evaluate(
    async ({ RAW, N }) => {
      const engine = await Hearth.loadInWorker("/models/smollm2/");
      const generated = await engine.generate(RAW, { max_tokens: N });
      const chunks = [];
      for await (const chunk of engine.stream(RAW, { max_tokens: N })) chunks.push(chunk);
      await engine.dispose();
      return { generated, chunks };
    },
    { RAW, N },
  );
  assert.deepEqual(got.generated.ids, raw.ids);
  assert.equal(got.generated.text, raw.text);
  assert.equal(got.chunks.join(""), raw.text);
  assert.deepEqual(consoleErrors, []);
});
