// Hearth.inspect(): a package's needs from its manifest alone, before any download, and what load()
// then really uses. On SwiftShader: the GPU engine's figures against engine.info after a load (bytes,
// context, KV cache type) for a full-attention model, a windowed one (rings) and SmolLM2; the CPU
// engine under a small device memory (navigator.deviceMemory = 0.5 GiB: 256 MiB for the engine),
// where inspect() refuses SmolLM2 at its full context with the message load() then throws, and
// accepts it at 256 positions; what is stored before and after a load (and, stored whole, inspected
// without a request, or offline); a storage quota too small, with load()'s message; unknown options
// refused by name; an encoder (embeddings), sized for either engine with no KV cache. (A GGUF URL: gguf-url.test.mjs; embeddings: embed.test.mjs.)

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { launch, minilmPackage, MINUTES, openPage, serve, SMOLLM2, tinyPackage } from "./harness.mjs";

let browser, server;
const packages = { smollm2: SMOLLM2, qwen3: tinyPackage("qwen3"), gemma3: tinyPackage("gemma3") };

before(async () => {
  packages.minilm = minilmPackage(); // an encoder (BERT)
  browser = await launch();
  server = await serve(packages);
}, { timeout: 2 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

/** Weights counted from the manifest's shapes, and every listed file's bytes. */
function expected(name) {
  const m = JSON.parse(fs.readFileSync(path.join(packages[name], "manifest.json"), "utf8"));
  const parameters = m.tensors.reduce((n, t) => n + t.shape.reduce((a, d) => a * d, 1), 0);
  const shardBytes = m.shards.reduce((n, s) => n + s.size, 0);
  const downloadBytes = shardBytes + m.files.reduce((n, f) => n + f.size, 0);
  return { manifest: m, parameters, shardBytes, downloadBytes };
}

// qwen3 at a shorter context than its own; gemma3 (windowed layers: rings of window + chunk - 1
// rows) at its own 128; SmolLM2 at 512 of 8192.
for (const [name, maxContext] of [["qwen3", 40], ["gemma3", undefined], ["smollm2", 512]]) {
  test(`${name}: inspect() gives the sizes the GPU engine then uses, and stores nothing`, { timeout: 3 * MINUTES }, async () => {
    const { context, page, consoleErrors } = await openPage(browser, server);
    const got = await page.evaluate(async ({ url, maxContext }) => {
      const options = { backend: "webgpu", ...(maxContext ? { maxContext } : {}) };
      const before = await Hearth.inspect(url, options);
      const storedAfterInspect = (await Hearth.cache.list()).length;
      const engine = await Hearth.load(url, options);
      const info = engine.info;
      await engine.dispose();
      const after = await Hearth.inspect(url, options);
      return { before, after, info, storedAfterInspect };
    }, { url: `/models/${name}/`, maxContext });
    const want = expected(name);
    const { before, after, info } = got;
    assert.equal(before.fits, true, before.reasons.join("; "));
    assert.deepEqual(before.reasons, []);
    assert.equal(before.architecture, want.manifest.architecture);
    assert.equal(before.parameters, want.parameters);
    assert.equal(before.downloadBytes, want.downloadBytes);
    assert.equal(before.backend, "webgpu");
    assert.equal(got.storedAfterInspect, 0, "inspect() stores nothing");
    assert.equal(before.storedBytes, 0);
    assert.ok(before.storage.needed >= want.downloadBytes, JSON.stringify(before.storage));
    // What the loaded engine reports.
    assert.equal(before.context, info.contextLength);
    assert.equal(before.kvF16, info.kvF16);
    assert.equal(before.memory.total, info.gpuBytes, JSON.stringify({ memory: before.memory, gpuBytes: info.gpuBytes }));
    assert.equal(before.memory.weights, want.shardBytes);
    if (maxContext) assert.equal(before.context, maxContext);
    // A windowed model's rings hold fewer rows than its context.
    const c = want.manifest.config;
    const fullCache = c.n_layers * 2 * before.context * c.n_kv_heads * c.head_dim * (before.kvF16 ? 2 : 4);
    assert.equal(before.memory.kvCache < fullCache, name === "gemma3", `${before.memory.kvCache} of ${fullCache}`);
    // The load stored every shard.
    assert.equal(after.storedBytes, want.shardBytes);
    assert.equal(after.storage.needed, 0);
    if (name === "qwen3") {
      // Stored whole: revalidate: false asks nothing, and offline the stored manifest answers.
      server.log.length = 0;
      const quiet = await page.evaluate((url) => Hearth.inspect(url, { revalidate: false, backend: "webgpu", maxContext: 40 }), `/models/${name}/`);
      assert.deepEqual(server.requests("/models/"), [], "revalidate: false makes no request");
      await context.setOffline(true);
      const offline = await page.evaluate((url) => Hearth.inspect(url, { backend: "webgpu", maxContext: 40 }), `/models/${name}/`);
      await context.setOffline(false);
      for (const i of [quiet, offline]) assert.deepEqual({ ...i, backendReason: "" }, { ...after, backendReason: "" });
    }
    assert.deepEqual(consoleErrors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e)), []);
    await context.close();
  });
}

test("the CPU engine under 256 MiB: inspect() refuses SmolLM2 at its full context as load() does, and accepts 256 positions", { timeout: 3 * MINUTES }, async () => {
  const context = await browser.newContext();
  // Half a GiB of device memory: the CPU engine may take half, 256 MiB. SmolLM2 needs 92 MiB of
  // weights, 64 MiB of working memory and an f16 KV cache of 180 MiB at 8192 positions, 6 MiB at 256.
  await context.addInitScript(() => Object.defineProperty(Navigator.prototype, "deviceMemory", { get: () => 0.5 }));
  const page = await context.newPage();
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.hearthReady === true);
  const got = await page.evaluate(async (url) => {
    const full = await Hearth.inspect(url, { backend: "cpu" });
    const short = await Hearth.inspect(url, { backend: "cpu", maxContext: 256 });
    let refused;
    try {
      await Hearth.load(url, { backend: "cpu", cache: false });
    } catch (e) {
      refused = { name: e.name, message: e.message };
    }
    const stored = (await Hearth.cache.list()).length;
    return { full, short, refused, stored };
  }, "/models/smollm2/");
  const { full, short, refused } = got;
  assert.equal(full.backend, "cpu");
  assert.equal(full.fits, false);
  assert.equal(full.reasons.length, 1, full.reasons.join("; "));
  assert.match(full.reasons[0], /256 MiB/);
  assert.match(full.reasons[0], /maxContext/);
  assert.ok(full.memory.total > 256 * 2 ** 20, JSON.stringify(full.memory));
  assert.equal(full.memory.total, full.memory.weights + full.memory.kvCache + full.memory.working);
  assert.equal(refused?.name, "OutOfMemoryError");
  assert.ok(refused.message.includes(full.reasons[0]), `load(): ${refused.message}\ninspect(): ${full.reasons[0]}`);
  assert.equal(got.stored, 0, "a refused load stores nothing");
  assert.equal(short.fits, true, short.reasons.join("; "));
  assert.equal(short.context, 256);
  assert.ok(short.memory.kvCache < full.memory.kvCache / 16, JSON.stringify([short.memory, full.memory]));
  await context.close();
});

test("inspect() refuses unknown options and bad URLs by name", { timeout: 2 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  const got = await page.evaluate(async () => {
    const err = async (f) => f().then(() => null, (e) => ({ name: e.name, message: e.message }));
    return {
      malformed: await err(() => Hearth.inspect("http://[::1")),
      option: await err(() => Hearth.inspect("/models/qwen3/", { cache: false })),
      context: await err(() => Hearth.inspect("/models/qwen3/", { maxContext: 0 })),
      missing: await err(() => Hearth.inspect("/models/nothing-here/")),
    };
  });
  assert.equal(got.malformed?.name, "InvalidArgumentError");
  assert.equal(got.option?.name, "InvalidArgumentError");
  assert.match(got.option.message, /options\.cache/);
  assert.equal(got.context?.name, "InvalidArgumentError");
  assert.equal(got.missing?.name, "NetworkError");
  // The 404 of the missing manifest is the browser's console error, nothing else.
  assert.ok(consoleErrors.every((e) => /404|Failed to load resource/.test(e)), consoleErrors.join("\n"));
  await context.close();
});

test("a quota too small for the model: inspect() gives the message load() then throws", { timeout: 3 * MINUTES }, async () => {
  // A browser that says this site may store 30 MiB more (navigator.storage.estimate, which both
  // load() and inspect() ask): SmolLM2's 97 MB do not fit.
  const context = await browser.newContext();
  await context.addInitScript(() => {
    StorageManager.prototype.estimate = async () => ({ quota: 30 * 2 ** 20, usage: 0 });
  });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.hearthReady === true);
  const got = await page.evaluate(async (url) => {
    const need = await Hearth.inspect(url, { backend: "cpu", maxContext: 256 });
    const refused = await Hearth.load(url, { backend: "cpu", maxContext: 256 }).then(
      (e) => e.dispose().then(() => null),
      (e) => ({ name: e.name, message: e.message, needed: e.needed, available: e.available }),
    );
    const stored = await Hearth.cache.list();
    return { need, refused, stored };
  }, "/models/smollm2/");
  const { need, refused } = got;
  assert.equal(need.fits, false, JSON.stringify({ need, refused }));
  assert.equal(need.storage.available, 30 * 2 ** 20);
  assert.ok(need.storage.needed > 96e6, JSON.stringify(need.storage));
  assert.equal(refused?.name, "QuotaExceededError");
  assert.deepEqual(need.reasons, [refused.message]);
  assert.deepEqual(got.stored, [], "nothing stored");
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("an encoder (all-MiniLM-L6-v2, embeddings): inspect() sizes it for either engine with no KV cache, auto takes the CPU beside a software adapter, and WebGPU loads and embeds it", { timeout: 3 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.reset();
  const got = await page.evaluate(async () => {
    const cpu = await Hearth.inspect("/models/minilm/", { backend: "cpu" });
    const auto = await Hearth.inspect("/models/minilm/");
    const webgpu = await Hearth.inspect("/models/minilm/", { backend: "webgpu" });
    const engine = await Hearth.load("/models/minilm/", { backend: "webgpu" });
    const embedding = Array.from((await engine.embed("A cat sat on the mat."))[0]);
    const info = engine.info;
    await engine.dispose();
    return { cpu, auto, webgpu, info, embedding };
  });
  assert.equal(got.cpu.architecture, "bert");
  assert.deepEqual(got.cpu.reasons, []);
  assert.equal(got.cpu.fits, true);
  assert.equal(got.cpu.memory.kvCache, 0, "an encoder keeps no KV cache");
  assert.equal(got.auto.backend, "cpu");
  assert.match(got.auto.backendReason, /runs in software/);
  assert.deepEqual(got.webgpu.reasons, []);
  assert.equal(got.webgpu.fits, true);
  assert.equal(got.webgpu.memory.kvCache, 0, "an encoder keeps no KV cache");
  assert.equal(got.info.backend, "webgpu");
  assert.equal(got.embedding.length, 384);
  assert.ok(Math.abs(Math.hypot(...got.embedding) - 1) < 1e-5, "normalized, as the model says");
  assert.deepEqual(consoleErrors, []);
  await context.close();
});
