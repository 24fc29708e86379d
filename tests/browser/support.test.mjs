// What the package exports, and what it says about the browser: Hearth.support() on SwiftShader (a
// software adapter: "auto" chooses the CPU engine), and a browser without WebGPU (navigator.gpu
// removed before the page runs), where "auto" chooses the CPU engine and `backend: "webgpu"` fails
// with WebGPUUnavailableError instead of anything obscure. No model is loaded: these take seconds.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, MINUTES, openPage, serve, SMOLLM2 } from "./harness.mjs";

const ERRORS = [
  "WebGPUUnavailableError", "AdapterLimitsError", "QuotaExceededError", "IntegrityError", "NetworkError",
  "UnsupportedModelError", "ContextLengthError", "BadPackageError", "InvalidArgumentError", "GpuError",
  "OutOfMemoryError", "EngineDisposedError",
];

let browser, server;
before(async () => {
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2 });
}, { timeout: 2 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

test("the module's exports: Hearth (also the default export) and the error classes", { timeout: 2 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  const got = await page.evaluate((ERRORS) => {
    const named = Object.fromEntries(
      ERRORS.map((n) => {
        const cls = hearth[n];
        if (typeof cls !== "function") return [n, "missing"];
        const e = new cls("x");
        return [n, { name: e.name, isError: e instanceof Error, isHearth: e instanceof hearth.HearthError }];
      }),
    );
    return {
      defaultIsHearth: hearth.default === hearth.Hearth,
      api: Object.fromEntries(["load", "loadInWorker", "support", "inspect"].map((k) => [k, typeof Hearth[k]])),
      cache: Object.fromEntries(["has", "list", "delete", "estimate"].map((k) => [k, typeof Hearth.cache?.[k]])),
      named,
    };
  }, ERRORS);
  assert.equal(got.defaultIsHearth, true, "the default export is Hearth");
  assert.deepEqual(got.api, { load: "function", loadInWorker: "function", support: "function", inspect: "function" });
  assert.deepEqual(got.cache, { has: "function", list: "function", delete: "function", estimate: "function" });
  for (const n of ERRORS) assert.deepEqual(got.named[n], { name: n, isError: true, isHearth: true }, n);
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("Hearth.support() sees SwiftShader's WebGPU: an adapter, no shader-f16, software, so the CPU engine", { timeout: 2 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  const s = await page.evaluate(() => Hearth.support());
  assert.equal(s.webgpu, true, JSON.stringify(s));
  assert.equal(s.shaderF16, false, "SwiftShader offers no shader-f16");
  assert.match(s.adapter, /swiftshader/i);
  assert.ok(s.maxStorageBufferBindingSize >= 128 << 20, `maxStorageBufferBindingSize ${s.maxStorageBufferBindingSize}`);
  assert.equal(s.reason, null);
  assert.equal(s.softwareAdapter, true);
  assert.equal(s.backend, "cpu");
  assert.match(s.backendReason, /swiftshader.*software/i);
  assert.equal(s.crossOriginIsolated, true, "the test server sends COOP and COEP");
  assert.equal(s.cpuMemoryLimit, 4 * 2 ** 30, "headless Chromium reports 8 GiB of device memory: wasm32's 4 GiB is the limit");
  await context.close();
});

test("without WebGPU: support() says why and chooses the CPU; backend \"webgpu\" rejects with WebGPUUnavailableError", { timeout: 2 * MINUTES }, async () => {
  const context = await browser.newContext();
  // As in a browser that has no WebGPU: navigator.gpu is undefined before any script runs.
  await context.addInitScript(() => Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined }));
  const page = await context.newPage();
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.hearthReady === true);
  const got = await page.evaluate(async () => {
    const s = await Hearth.support();
    let error = null;
    try {
      await Hearth.load("/models/smollm2/", { backend: "webgpu" });
    } catch (e) {
      error = { name: e.name, message: e.message };
    }
    return { support: s, error };
  });
  assert.equal(got.support.webgpu, false);
  assert.match(got.support.reason, /navigator\.gpu/);
  assert.equal(got.support.backend, "cpu");
  assert.equal(got.support.backendReason, got.support.reason);
  assert.equal(got.error?.name, "WebGPUUnavailableError", JSON.stringify(got.error));
  assert.match(got.error.message, /WebGPU/);
  await context.close();
});
