// The demo page (www/) as a visitor uses it, in headless Chromium (WebGPU on SwiftShader), served by
// the same routes as `make demo`: what the model needs before downloading it (Hearth.inspect: its
// parameters and memory here; a URL without a manifest named; a GGUF URL sized from its header),
// download the default model with
// progress (cancel, then resume),
// chat with streamed tokens and stats, stop an answer, reload with the network on (the stored model
// loads without a request) and off (the service worker serves the page; the model chats again), and
// delete the stored model. Greedy answers must equal the native CLI's. A screenshot of the page
// mid-conversation goes to tests/artifacts/ (git-ignored).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { assertSameGreedyText, launch, nativeGenerate, shardFiles, ROOT, SMOLLM2, MINUTES } from "./harness.mjs";
import { startServer } from "../../scripts/static-server.mjs";
import { demoRoutes } from "../../scripts/serve-demo.mjs";

const ARTIFACTS = path.join(ROOT, "tests/artifacts");
const MODEL_PATH = "/models/smollm2-135m-instruct/";
const SYSTEM = "Be brief.";

let browser;
let server;

before(async () => {
  server = await startServer({ routes: demoRoutes() });
  browser = await launch();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Opens the demo in `context`; console errors and uncaught exceptions are collected. */
async function openDemo(context, errors) {
  const page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(server.url + "/");
  await page.locator("html[data-ready=true]").waitFor({ timeout: MINUTES });
  return page;
}

/** Records every text the load progress shows, for assertions after the fact. */
async function recordProgress(page) {
  await page.evaluate(() => {
    window.progressLog = [];
    const note = () =>
      window.progressLog.push(
        `${document.getElementById("progress-phase").textContent} | ${document.getElementById("progress-text").textContent}`,
      );
    new MutationObserver(note).observe(document.getElementById("progress-box"), {
      subtree: true,
      childList: true,
      characterData: true,
    });
  });
}

const chatReady = (page) => page.locator("#prompt:not([disabled])").waitFor({ timeout: 3 * MINUTES });

async function settings(page, { system, temperature, maxTokens }) {
  const details = page.locator("#settings");
  if (!(await details.evaluate((d) => d.open))) await page.locator("#settings summary").click();
  if (system !== undefined) await page.getByLabel("System prompt").fill(system);
  if (temperature !== undefined) await page.getByLabel("Temperature").fill(String(temperature));
  if (maxTokens !== undefined) await page.getByLabel("Max tokens").fill(String(maxTokens));
}

/** Sends a message with Enter; resolves with the answer's list item once the answer has ended. */
async function ask(page, text, { until = "stats" } = {}) {
  const answers = page.locator(".message.assistant");
  const n = await answers.count();
  await page.getByLabel("Your message").fill(text);
  await page.getByLabel("Your message").press("Enter");
  const answer = answers.nth(n);
  // Count the separate updates of the answer's text: streamed tokens arrive one chunk at a time.
  await answer.locator(".content").evaluate((node) => {
    node.dataset.updates = "0";
    new MutationObserver(() => (node.dataset.updates = String(Number(node.dataset.updates) + 1))).observe(node, {
      subtree: true,
      characterData: true,
      childList: true,
    });
  });
  if (until === "stats") await answer.locator(".stats", { hasText: /tok\/s|Stopped|error/i }).waitFor({ timeout: 5 * MINUTES });
  return answer;
}

const statsPattern =
  /First token after [\d.]+ s · prompt: (\d+) tokens at [\d.]+ tok\/s · answer: (\d+) tokens at [\d.–]+ tok\/s/;

/** The greedy answer and stats must be the CLI's for the same conversation. */
async function assertNativeAnswer(answer, { prompt, maxTokens }) {
  // The demo runs the CPU engine here: its text is the native CPU engine's, up to a near-tie.
  const request = { prompt, chat: true, system: SYSTEM, maxTokens, backend: "cpu" };
  const native = nativeGenerate(request);
  const text = await answer.locator(".content").textContent();
  assertSameGreedyText(text, request, "the answer differs from `hearth generate`");
  const stats = await answer.locator(".stats").textContent();
  const match = stats.match(statsPattern);
  assert.ok(match, `stats under the answer: ${stats}`);
  assert.equal(Number(match[1]), native.prompt_ids.length, "prompt tokens in the stats");
  if (text === native.text) assert.equal(Number(match[2]), native.ids.length, "generated tokens in the stats");
  return native;
}

test("the demo downloads (cancel, resume), chats, stops, reloads offline, chats again and deletes the model", { timeout: 20 * MINUTES }, async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  let page = await openDemo(context, errors);
  assert.equal(await page.getAttribute("html", "data-offline-ready"), "true", "the service worker controls the page");
  assert.ok((await page.locator("#model-select").inputValue()).endsWith(MODEL_PATH), "SmolLM2 is the default");
  assert.match(await page.locator("#model-details").textContent(), /96\.6 MB/);
  // Hearth.inspect() before any download: SwiftShader is a software adapter, so "Automatic" means the
  // CPU engine, at the model's whole context (8192 positions of f16 KV cache).
  await page.locator("#model-details", { hasText: /\d+M parameters · needs [\d.]+ MB of memory on the CPU at 8192 tokens/ }).waitFor({ timeout: MINUTES });
  assert.equal(await page.locator("#model-fit").textContent(), "", "it fits");
  assert.match(await page.locator("#network").textContent(), /^Online/);

  // 1. Download with progress; cancel once the first shard is stored, then resume.
  const shards = shardFiles(SMOLLM2);
  assert.equal(shards.length, 3);
  server.reset();
  for (const file of shards.slice(1)) server.hooks.throttle.set(MODEL_PATH + file, 2 << 20);
  await recordProgress(page);
  await page.getByRole("button", { name: "Load model" }).click();
  await page.locator("#cached", { hasText: /33\.4 MB · partial/ }).waitFor({ timeout: 2 * MINUTES });
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.locator("#load-status", { hasText: "Cancelled" }).waitFor({ timeout: MINUTES });
  assert.match(await page.locator("#cached").textContent(), /33\.4 MB · partial/, "the first shard stays stored");
  const download = (await page.evaluate(() => window.progressLog)).filter((line) => line.startsWith("Downloading"));
  assert.ok(
    download.some((line) => /MB of 96\.6 MB · [\d.]+ [kMG]?B\/s · about .+ left · shard-0000\d\.bin/.test(line)),
    `download progress with bytes, speed, time left and shard:\n${download.join("\n")}`,
  );

  server.reset();
  await recordProgress(page);
  await page.getByRole("button", { name: "Load model" }).click();
  await chatReady(page);
  const resumed = await page.evaluate(() => window.progressLog);
  assert.ok(resumed.some((line) => line.startsWith("Resuming the download")), `resumed:\n${resumed.join("\n")}`);
  const counts = server.counts();
  assert.equal(counts[MODEL_PATH + shards[0]], undefined, "the stored shard is not downloaded again");
  assert.equal(counts[MODEL_PATH + shards[1]], 1);
  assert.equal(counts[MODEL_PATH + shards[2]], 1);
  // SwiftShader is a software adapter: "Automatic" runs the CPU engine, threaded (the demo server
  // sends COOP and COEP, and the model runs in a worker), and the panel says so and why.
  assert.match(await page.locator("#info").textContent(), /Runs onthe CPU: CPU \(wasm relaxed-simd\), \d+ threads?Whythe WebGPU adapter \(.*swiftshader.*\) runs in software/is);

  // 2. A greedy answer, streamed, with stats; markup in a message stays text.
  await settings(page, { system: SYSTEM, temperature: 0, maxTokens: 4 });
  const first = "Say hi to <b>Ada</b>.";
  const answer1 = await ask(page, first);
  await assertNativeAnswer(answer1, { prompt: first, maxTokens: 4 });
  assert.ok(Number(await answer1.locator(".content").getAttribute("data-updates")) >= 2, "tokens arrive as they are made");
  assert.equal(await page.locator("#messages b").count(), 0, "no markup from a message is rendered");
  assert.equal(await page.locator(".message.user .content").first().textContent(), first);

  // 3. A second turn of the same conversation, stopped while it streams (the CPU engine decodes tens
  // of tokens a second here: room for far more than the time it takes to press Stop).
  await settings(page, { maxTokens: 1024 });
  const answer2 = await ask(page, "Now tell me a long story about a lighthouse keeper.", { until: "start" });
  await answer2.locator(".content").filter({ hasText: /\S/ }).waitFor({ timeout: 5 * MINUTES });
  await page.screenshot({ path: path.join(ARTIFACTS, "demo-chat.png"), fullPage: true });
  await page.getByRole("button", { name: "Stop" }).click();
  await answer2.locator(".stats", { hasText: /^Stopped after [\d.]+ s\.$/ }).waitFor({ timeout: 2 * MINUTES });
  assert.equal(await page.locator(".message").count(), 4, "both turns are on the page");
  assert.ok(await page.getByRole("button", { name: "Send" }).isEnabled(), "the engine takes the next message");

  // 4. Phone-sized: nothing sticks out sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "no horizontal scrolling at 390 px");
  await page.screenshot({ path: path.join(ARTIFACTS, "demo-phone.png") });
  await page.setViewportSize({ width: 1280, height: 900 });

  // 5. Reloaded with the network on, the stored model loads without a single request for it.
  server.reset();
  await page.reload();
  await page.locator("html[data-ready=true]").waitFor({ timeout: MINUTES });
  await page.getByRole("button", { name: "Load model" }).click();
  await chatReady(page);
  assert.match(await page.locator("#load-status").textContent(), /loaded from this device without the network/);
  assert.deepEqual(server.requests("/models/"), [], "no request for the stored model");

  // 6. Offline: the service worker serves the page, the model loads from IndexedDB and chats.
  server.reset();
  await context.setOffline(true);
  await page.reload();
  await page.locator("html[data-ready=true]").waitFor({ timeout: MINUTES });
  assert.match(await page.locator("#network").textContent(), /^Offline/);
  assert.equal(await page.getByLabel("System prompt").inputValue(), SYSTEM, "settings survive a reload");
  await page.getByRole("button", { name: "Load model" }).click();
  await chatReady(page);
  // New chat while an answer streams: the page is cleared and the old turn must not leak into the
  // next conversation (the answer below must be the CLI's for a single turn).
  await settings(page, { temperature: 0, maxTokens: 1024 });
  const abandoned = await ask(page, "Count from one to fifty.", { until: "start" });
  await abandoned.locator(".content").filter({ hasText: /\S/ }).waitFor({ timeout: 5 * MINUTES });
  await page.getByRole("button", { name: "New chat" }).click();
  assert.equal(await page.locator(".message").count(), 0, "New chat clears the conversation");
  await settings(page, { maxTokens: 3 });
  const offlinePrompt = "What is the capital of France?";
  await assertNativeAnswer(await ask(page, offlinePrompt), { prompt: offlinePrompt, maxTokens: 3 });
  // Only the browser's own update check of sw.js, which Chromium's offline emulation does not cover
  // (it runs outside the page's network stack); a real offline machine would fail it silently.
  assert.deepEqual(server.log.filter((e) => e.path !== "/sw.js"), [], "offline: nothing reached the server");

  // 7. Delete the stored model: it is gone, and offline it can no longer load.
  await page.getByRole("button", { name: /^Delete SmolLM2 135M Instruct/ }).click();
  await page.locator("#cached", { hasText: "No models stored yet." }).waitFor();
  assert.match(await page.locator("#model-details").textContent(), /not stored: needs the network/);
  assert.ok(await page.getByRole("button", { name: "Load model" }).isDisabled());

  assert.deepEqual(errors, [], "console errors");
  await context.close();
});

test("without WebGPU the demo runs on the CPU, says why, and offers the GPU only where there is one", { timeout: 2 * MINUTES }, async () => {
  const context = await browser.newContext();
  await context.addInitScript(() => delete Navigator.prototype.gpu);
  const errors = [];
  const page = await openDemo(context, errors);
  assert.equal(await page.getByRole("alert").isVisible(), false, "no alert: the CPU engine runs here");
  assert.match(await page.locator("#backend-details").textContent(), /the CPU, because navigator\.gpu is missing/);
  assert.ok(await page.getByRole("button", { name: "Load model" }).isEnabled());
  await page.getByLabel("Run on").selectOption("webgpu");
  assert.match(await page.locator("#backend-details").textContent(), /Not available: navigator\.gpu is missing/);
  assert.ok(await page.getByRole("button", { name: "Load model" }).isDisabled());
  assert.deepEqual(errors, []);
  await context.close();
});

test("a model URL that does not answer gives a message naming it", { timeout: 2 * MINUTES }, async () => {
  const context = await browser.newContext();
  const errors = [];
  const page = await openDemo(context, errors);
  await page.getByLabel("Model package", { exact: true }).selectOption("custom");
  await page.getByLabel(/URL of a model package/).fill(server.url + "/models/no-such-model/");
  // Inspected once typing pauses, before any load: the manifest is not there.
  await page.locator("#model-fit", { hasText: /Its manifest could not be read\. Could not download .*no-such-model\/manifest\.json \(HTTP 404\)/ }).waitFor({ timeout: MINUTES });
  await page.getByRole("button", { name: "Load model" }).click();
  const alert = page.getByRole("alert");
  await alert.waitFor();
  assert.match(await alert.textContent(), /Could not download .*\/models\/no-such-model\/manifest\.json \(HTTP 404\)/);
  assert.equal(await page.locator("#load-status").textContent(), "The model did not load.");
  // The one expected console line: Chrome reports the 404 itself.
  assert.deepEqual(errors.filter((e) => !/status of 404/.test(e)), []);
  await context.close();
});

test("a pasted GGUF URL is sized from its header before any download", { timeout: 2 * MINUTES }, async () => {
  const context = await browser.newContext();
  const errors = [];
  const page = await openDemo(context, errors);
  await page.getByLabel("Model package", { exact: true }).selectOption("custom");
  server.reset();
  await page.getByLabel(/URL of a model package/).fill(server.url + "/gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
  // Its parameters and memory, as for a package, and what the file is.
  const details = page.locator("#model-details", { hasText: /parameters · needs .* at \d+ tokens · a GGUF file of 98\.4 MB, converted on this device/ });
  await details.waitFor({ timeout: MINUTES });
  assert.match(await details.textContent(), /135M parameters/);
  assert.equal(await page.locator("#model-fit").textContent(), "");
  assert.ok(await page.getByRole("button", { name: "Load model" }).isEnabled());
  // Nothing but the header was asked for.
  const asked = server.requests("/gguf/");
  assert.ok(asked.length >= 1 && asked.every((e) => e.status === 206 && e.range[1] < 2 ** 21), JSON.stringify(asked));
  assert.deepEqual(errors, []);
  await context.close();
});

test("a full disk gives a message that says to make room, and keeps nothing half-written", { timeout: 3 * MINUTES }, async () => {
  const context = await browser.newContext();
  const errors = [];
  const page = await openDemo(context, errors);
  // 30 MiB for the whole origin, enforced by Chromium: the first 32 MiB shard cannot be stored.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: server.url, quotaSize: 30 << 20 });
  await page.getByRole("button", { name: "Load model" }).click();
  const alert = page.getByRole("alert");
  await alert.waitFor({ timeout: 2 * MINUTES });
  assert.match(await alert.textContent(), /Not enough storage for this model.*Delete stored models below or free disk space/);
  assert.match(await page.locator("#cached").textContent(), /0 B · partial/, "no shard was stored");
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: server.url });
  assert.deepEqual(errors, []);
  await context.close();
});

// Last in this file: it crashes the browser's GPU process.
test("a lost GPU device is reported with a reload button, and the reloaded page works again", { timeout: 5 * MINUTES }, async () => {
  const context = await browser.newContext();
  const errors = [];
  const page = await openDemo(context, errors);
  // The GPU engine (SwiftShader would get the CPU one by default); the choice is kept on reload.
  await page.getByLabel("Run on").selectOption("webgpu");
  await page.getByRole("button", { name: "Load model" }).click();
  await chatReady(page);
  // What a driver reset or a GPU process crash does to a real page.
  await (await browser.newBrowserCDPSession()).send("Browser.crashGpuProcess");
  await settings(page, { maxTokens: 1 });
  const answer = await ask(page, "Hi");
  assert.match(await answer.locator(".stats").textContent(), /The GPU stopped working.*reload the page/);
  const alert = page.getByRole("alert");
  assert.match(await alert.textContent(), /The GPU stopped working/);

  await alert.getByRole("button", { name: "Reload the page" }).click();
  await page.locator("html[data-ready=true]").waitFor({ timeout: MINUTES });
  assert.equal(await page.getByLabel("Run on").inputValue(), "webgpu");
  await page.getByRole("button", { name: "Load model" }).click();
  await chatReady(page);
  assert.match(await page.locator("#load-status").textContent(), /ready, loaded from this device/);
  assert.match(await page.locator("#info").textContent(), /Runs onthe GPU: .*swiftshader/i);
  assert.ok(await page.getByRole("alert").isHidden());
  assert.deepEqual(errors, []);
  await context.close();
});
