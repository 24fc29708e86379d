// The CPU engine in the browser. On SwiftShader (a software WebGPU adapter) `backend: "auto"`, the
// default, chooses it; it must give the native fast CPU engine's greedy ids (`hearth generate
// --backend cpu`; up to a near-tie, where rounding may choose either: harness.mjs NEAR_TIE): in a
// plain page on one thread, and in a cross-origin isolated page's worker on a
// pool of threads (the threaded wasm build). Chromium has relaxed SIMD, so both run the relaxed-SIMD
// builds; `relaxedSimd: false` runs the plain SIMD128 ones, whose kernels compute the same bits, so
// the ids and log-probabilities are equal, not merely close. Loading copies each shard straight into
// place, so wasm memory ends near the model's size. A model that would not fit the page's memory is refused before
// any shard is downloaded, naming both sizes.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { assertSameGreedy, launch, MINUTES, nativeGenerate, openPage, serve, SMOLLM2 } from "./harness.mjs";

const RAW = "The capital of France is";
const CHAT = "What is the capital of Germany?";
const N = 12;
const CHAT_N = 10;

const modelBytes = fs.readdirSync(SMOLLM2).filter((f) => f.startsWith("shard-")).reduce((n, f) => n + fs.statSync(`${SMOLLM2}/${f}`).size, 0);

let browser, plain, isolated;
const relaxedRuns = new Map(); // worker? -> the default (relaxed-SIMD) run of the tests below
before(async () => {
  browser = await launch();
  plain = await serve({ smollm2: SMOLLM2 }, { isolated: false });
  isolated = await serve({ smollm2: SMOLLM2 });
}, { timeout: 2 * MINUTES });
after(async () => {
  await browser?.close();
  await plain?.close();
  await isolated?.close();
});

/**
 * Generates RAW and the chat prompt with the default backend, on the page or in its worker (with
 * `options` added to the load's).
 */
async function run(page, worker, options = {}) {
  return page.evaluate(
    async ({ RAW, CHAT, N, CHAT_N, worker, options }) => {
      const phases = new Set();
      const load = worker ? Hearth.loadInWorker : Hearth.load;
      const engine = await load("/models/smollm2/", { onProgress: (p) => phases.add(p.phase), ...options });
      // The worker's memory is not the page's, nor is another build's.
      const memory = worker || options.relaxedSimd === false ? null : wasmMemoryBytes();
      const raw = await engine.generate(RAW, { max_tokens: N, logprobs: true });
      const chunks = [];
      const stream = engine.stream([{ role: "user", content: CHAT }], { max_tokens: CHAT_N });
      for await (const chunk of stream) chunks.push(chunk);
      const chat = await stream.result;
      const info = engine.info;
      await engine.dispose();
      return { phases: [...phases], memory, raw, chat, chunks, info, isolated: crossOriginIsolated };
    },
    { RAW, CHAT, N, CHAT_N, worker, options },
  );
}

function assertNative(got, kernels = "relaxed-simd") {
  const raw = nativeGenerate({ prompt: RAW, maxTokens: N, backend: "cpu", margins: true });
  const chat = nativeGenerate({ prompt: CHAT, chat: true, maxTokens: CHAT_N, backend: "cpu", margins: true });
  assert.deepEqual(got.raw.prompt_ids, raw.prompt_ids);
  assert.deepEqual(got.chat.prompt_ids, chat.prompt_ids);
  // Equal, or equal up to a near-tie (harness.mjs: NEAR_TIE); where all are equal, so is the text.
  if (assertSameGreedy(got.raw.ids, raw, "plain prompt") === raw.ids.length) assert.equal(got.raw.text, raw.text);
  if (assertSameGreedy(got.chat.ids, chat, "chat template") === chat.ids.length) {
    assert.equal(got.chat.finish_reason, chat.finish_reason);
  }
  assert.equal(got.chunks.join(""), got.chat.text, "stream chunks concatenate to the text");
  assert.equal(got.info.backend, "cpu");
  assert.match(got.info.backendReason, /swiftshader.*software/i);
  assert.equal(got.info.adapter, `CPU (wasm ${kernels})`);
  assert.equal(got.info.gpuBytes, 0);
  assert.deepEqual(got.phases, ["download", "memory", "ready"]);
}

test("a plain page: auto picks the CPU engine on SwiftShader, one thread, the native CPU engine's ids; memory near the model's size", { timeout: 5 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, plain);
  const got = await run(page, false);
  relaxedRuns.set(false, got);
  assert.equal(got.isolated, false);
  assertNative(got);
  assert.equal(got.info.threads, 1, "not cross-origin isolated: the single-threaded build");
  // Every tensor is allocated once at its final size and shards are copied straight into place: the
  // module, tokenizer and working memory on top of the weights stay under the 64 MiB.
  assert.ok(got.memory <= modelBytes + (64 << 20), `wasm memory ${got.memory} bytes for ${modelBytes} bytes of weights`);
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("a cross-origin isolated page's worker: the threaded CPU engine, the same ids", { timeout: 5 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, isolated);
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  const got = await run(page, true);
  relaxedRuns.set(true, got);
  assert.equal(got.isolated, true);
  assertNative(got);
  assert.equal(got.info.threads, Math.min(16, cores), "one pool thread per core");
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("relaxedSimd: false runs the plain SIMD128 builds (one thread and threaded): the relaxed builds' ids and log-probabilities, bit for bit", { timeout: 8 * MINUTES }, async () => {
  const support = await (async () => {
    const { context, page } = await openPage(browser, plain);
    const s = await page.evaluate(() => Hearth.support());
    await context.close();
    return s;
  })();
  assert.equal(support.relaxedSimd, true, "Chromium has had relaxed SIMD since 114: the probe must see it");
  for (const [server, worker] of [[plain, false], [isolated, true]]) {
    const relaxed = relaxedRuns.get(worker);
    assert.ok(relaxed, "the default run above completed");
    const { context, page, consoleErrors } = await openPage(browser, server);
    const simd128 = await run(page, worker, { relaxedSimd: false });
    assertNative(simd128, "simd128");
    for (const key of ["raw", "chat"]) assert.deepEqual(simd128[key].ids, relaxed[key].ids, `${key}, worker ${worker}`);
    const lp = (r) => r.raw.logprobs.map((l) => l.logprob);
    assert.equal(lp(relaxed).length, relaxed.raw.ids.length);
    assert.deepEqual(lp(simd128), lp(relaxed), `log-probabilities, worker ${worker}`);
    assert.deepEqual(consoleErrors, []);
    await context.close();
  }
});

test("a model larger than the page may use is refused before any shard is downloaded, naming both sizes", { timeout: 2 * MINUTES }, async () => {
  const context = await browser.newContext();
  // A device that reports 256 MiB of memory: the CPU engine may use half of it.
  await context.addInitScript(() => Object.defineProperty(Navigator.prototype, "deviceMemory", { get: () => 0.25 }));
  const page = await context.newPage();
  await page.goto(plain.url + "/");
  await page.waitForFunction(() => window.hearthReady === true);
  const before = plain.log.length;
  const got = await page.evaluate(async () => {
    const limit = (await Hearth.support()).cpuMemoryLimit;
    try {
      await Hearth.load("/models/smollm2/", { cache: false });
      return { limit, error: null };
    } catch (e) {
      return { limit, error: { name: e.name, message: e.message, isClass: e instanceof hearth.OutOfMemoryError } };
    }
  });
  assert.equal(got.limit, 128 << 20);
  assert.deepEqual({ name: got.error?.name, isClass: got.error?.isClass }, { name: "OutOfMemoryError", isClass: true }, JSON.stringify(got.error));
  // Weights, the KV cache at the model's 8192 positions (f16: 30 layers x 2 x 192 values x 2 bytes
  // per position), the working memory, and the page's limit.
  assert.match(got.error.message, /weights 9\d MiB, KV cache 180 MiB at 8192 positions.*maxContext.*this page may use 128 MiB \(half of this device's 0\.25 GiB/s);
  const shards = plain.log.slice(before).filter((r) => r.path.includes("/shard-"));
  assert.deepEqual(shards, [], "no shard was requested");
  await context.close();
});
