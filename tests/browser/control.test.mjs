// Calls on one engine: abort mid-stream stops within a token and leaves the engine ready; concurrent
// calls are queued, never interleaved; errors are typed and say what to do. The engine is the one
// Hearth.load chooses by default here, the CPU engine (SwiftShader is a software adapter); the
// queue, abort and errors are the same code for both engines.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { assertSameGreedy, launch, MINUTES, nativeGenerate, openPage, serve, SMOLLM2 } from "./harness.mjs";

const A = "The capital of France is";
const B = "Once upon a time";

let browser, server, page;
before(async () => {
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2 });
  ({ page } = await openPage(browser, server));
  await page.evaluate(async () => {
    window.engine = await Hearth.load("/models/smollm2/");
  });
}, { timeout: 5 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

test("abort mid-stream rejects with AbortError within one token; the next call works", { timeout: 5 * MINUTES }, async () => {
  const a = nativeGenerate({ prompt: A, maxTokens: 3, backend: "cpu", margins: true });
  const got = await page.evaluate(async (A) => {
    const controller = new AbortController();
    const chunks = [];
    let chunksAtAbort = null;
    let error = null;
    try {
      for await (const chunk of engine.stream(A, { max_tokens: 40, signal: controller.signal })) {
        chunks.push(chunk);
        if (chunks.length === 2) {
          chunksAtAbort = chunks.length;
          controller.abort();
        }
      }
    } catch (e) {
      error = { name: e.name, isDomException: e instanceof DOMException };
    }
    const next = await engine.generate(A, { max_tokens: 3 });
    return { chunks, chunksAtAbort, error, next: next.ids };
  }, A);
  assert.deepEqual(got.error, { name: "AbortError", isDomException: true });
  assert.ok(got.chunks.length <= got.chunksAtAbort + 1, `${got.chunks.length - got.chunksAtAbort} chunks after the abort`);
  assertSameGreedy(got.next, a, "the call after the abort is a fresh generation");
});

test("two concurrent generate calls both return their own correct result", { timeout: 5 * MINUTES }, async () => {
  const a = nativeGenerate({ prompt: A, maxTokens: 3, backend: "cpu", margins: true });
  const b = nativeGenerate({ prompt: B, maxTokens: 3, backend: "cpu", margins: true });
  const got = await page.evaluate(
    async ({ A, B }) => {
      const [x, y] = await Promise.all([engine.generate(A, { max_tokens: 3 }), engine.generate(B, { max_tokens: 3 })]);
      return [x.ids, y.ids, x.text, y.text];
    },
    { A, B },
  );
  const [xIds, yIds, xText, yText] = got;
  if (assertSameGreedy(xIds, a, "first call") === a.ids.length) assert.equal(xText, a.text);
  if (assertSameGreedy(yIds, b, "second call") === b.ids.length) assert.equal(yText, b.text);
});

test("errors are typed: context length, options, missing model, unsupported format", { timeout: 3 * MINUTES }, async () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(SMOLLM2, "manifest.json"), "utf8"));
  server.hooks.replace.set("/models/smollm2/v2/manifest.json", JSON.stringify({ ...manifest, format_version: 2 }));
  const got = await page.evaluate(async () => {
    const fail = async (f) => {
      try {
        await f();
        return null;
      } catch (e) {
        return { name: e.name, message: e.message, url: e.url, isHearth: e instanceof hearth.HearthError };
      }
    };
    return {
      context: await fail(() => engine.generate("Hello", { max_tokens: 100000 })),
      option: await fail(() => engine.generate("Hello", { temperature: -1 })),
      missing: await fail(() => Hearth.load("/models/nowhere/")),
      version: await fail(() => Hearth.load("/models/smollm2/v2/")),
      after: (await engine.generate("Hello", { max_tokens: 1 })).ids.length,
    };
  });
  assert.equal(got.context.name, "ContextLengthError");
  assert.match(got.context.message, /context length of 8192/);
  assert.equal(got.option.name, "InvalidArgumentError");
  assert.match(got.option.message, /temperature/);
  assert.equal(got.missing.name, "NetworkError");
  assert.match(got.missing.url, /\/models\/nowhere\/manifest\.json$/);
  assert.match(got.missing.message, /\/models\/nowhere\/manifest\.json/, "the message names the URL");
  assert.equal(got.version.name, "UnsupportedModelError");
  assert.ok([got.context, got.option, got.missing, got.version].every((e) => e.isHearth));
  assert.equal(got.after, 1, "the engine still works after the errors");
});
