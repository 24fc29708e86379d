#!/usr/bin/env node
// The browser side of the GPU benchmark: the npm package (pkg/) in headless Chromium measures a
// model as `hearth bench --backend gpu` does natively, and prints one JSON line with the same keys
// (prompt_tokens, gen_tokens, context, load_s, prefill_tok_s, decode_tok_s, ttft_s, adapter, f16,
// backend, synthetic) plus browser, finish_reason, software and worker:
//
//   node tests/browser/bench.mjs [--chromium PATH] [--gpu] [--model DIR] [--prompt-tokens N]
//        [--gen-tokens N] [--worker] [--headed] [--chromium-arg ARG]... [--timeout S]
//
//   --chromium PATH    the Chromium (or Chrome) to drive (default /usr/bin/chromium)
//   --gpu              use the machine's GPU: WebGPU on Vulkan, SwiftShader not forced (without it,
//                      WebGPU runs on SwiftShader, Chromium's CPU implementation: slow, as here)
//   --model DIR        a package written by `hearth convert` (default: SmolLM2-135M-Instruct's)
//   --prompt-tokens N  about N prompt tokens (default 128, as hearth bench); --gen-tokens N (default 64)
//   --worker           run the engine in a Web Worker (Hearth.loadInWorker)
//   --headed           show the browser window (some GPU drivers give WebGPU only to a headed browser)
//   --chromium-arg A   an extra Chromium flag (repeatable)
//
// It serves www/ at /, pkg/ at /pkg/ and the model at /models/model/, and runs the measurement of
// www/bench.html (www/bench.js, ?autorun=1): the page a user can open by hand to compare, e.g. under
// `make demo`'s server at /bench.html. Each run starts a fresh browser profile and downloads the
// package without storing it. Needs pkg/wasm/ (bash scripts/build-wasm.sh). The prompt is a repeated
// word, so its length is approximate (see prompt_tokens); generation may end early at a stop token.
import { parseArgs } from "node:util";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer } from "../../scripts/static-server.mjs";
import { QUIET_ARGS, SWIFTSHADER_ARGS } from "./harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const USAGE =
  "usage: node tests/browser/bench.mjs [--chromium PATH] [--gpu] [--model DIR] [--prompt-tokens N] [--gen-tokens N]\n" +
  "       [--worker] [--headed] [--chromium-arg ARG]... [--timeout S]";

// WebGPU on the machine's GPU through Vulkan, headless included.
const GPU = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=vulkan", "--disable-vulkan-surface", "--ignore-gpu-blocklist"];

let a;
try {
  ({ values: a } = parseArgs({
    options: {
      chromium: { type: "string", default: "/usr/bin/chromium" },
      gpu: { type: "boolean", default: false },
      model: { type: "string", default: path.join(ROOT, ".cache/packages/smollm2-135m-instruct") },
      "prompt-tokens": { type: "string", default: "128" },
      "gen-tokens": { type: "string", default: "64" },
      worker: { type: "boolean", default: false },
      headed: { type: "boolean", default: false },
      "chromium-arg": { type: "string", multiple: true, default: [] },
      timeout: { type: "string", default: "1800" },
      help: { type: "boolean", short: "h", default: false },
    },
  }));
} catch (e) {
  console.error(`${e.message}\n${USAGE}`);
  process.exit(2);
}
if (a.help) {
  console.log(USAGE);
  process.exit(0);
}
const promptTokens = Number(a["prompt-tokens"]);
const genTokens = Number(a["gen-tokens"]);
const timeoutS = Number(a.timeout);
if (!Number.isInteger(promptTokens) || promptTokens < 1 || !Number.isInteger(genTokens) || genTokens < 2 || !(timeoutS > 0)) {
  console.error(`error: --prompt-tokens must be at least 1, --gen-tokens at least 2, --timeout positive\n${USAGE}`);
  process.exit(2);
}
const fail = (message) => {
  console.error(`error: ${message}`);
  process.exit(1);
};
if (!fs.existsSync(path.join(a.model, "manifest.json"))) {
  fail(`${a.model} is not a model package (no manifest.json); make one with \`hearth convert\``);
}
if (!fs.existsSync(path.join(ROOT, "pkg/wasm/hearth_web_bg.wasm"))) {
  fail("pkg/wasm/ is missing: build it with `bash scripts/build-wasm.sh`");
}
if (!fs.existsSync(a.chromium)) fail(`no Chromium at ${a.chromium} (--chromium PATH)`);

const server = await startServer({
  routes: { "/": path.join(ROOT, "www"), "/pkg/": path.join(ROOT, "pkg"), "/models/model/": path.resolve(a.model) },
  pages: { "/favicon.ico": "" },
});
const browser = await chromium.launch({
  executablePath: a.chromium,
  headless: !a.headed,
  args: [...(a.gpu ? GPU : SWIFTSHADER_ARGS), ...QUIET_ARGS, ...a["chromium-arg"]],
});
const GPU_HINT = a.gpu ? " (with --gpu: check that this Chromium reaches the GPU here; try --headed or other --chromium-arg)" : "";
let code = 0;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.text().startsWith("bench:")) console.error(`browser: ${m.text()}`);
  });
  page.on("pageerror", (e) => console.error(`browser: ${e}`));
  const query = new URLSearchParams({
    model: "/models/model/",
    prompt_tokens: String(promptTokens),
    gen_tokens: String(genTokens),
    worker: a.worker ? "1" : "0",
    cache: "0",
    autorun: "1",
  });
  await page.goto(`${server.url}/bench.html?${query}`);
  try {
    await page.waitForFunction(() => window.benchDone === true, null, { timeout: timeoutS * 1000, polling: 500 });
  } catch (e) {
    const at = await page.evaluate(() => document.getElementById("status")?.textContent).catch(() => undefined);
    throw new Error(`no result after ${timeoutS} s; the page's last status: ${at ?? "(none)"}${GPU_HINT}`);
  }
  const out = await page.evaluate(() => ({ result: window.benchResult, error: window.benchError }));
  if (out.error) throw new Error(out.error + GPU_HINT);
  const r = out.result;
  if (a.gpu && r.software) console.error(`warning: --gpu, but the adapter is a software one (${r.adapter}): check the Chromium flags`);
  console.log(JSON.stringify(r));
} catch (e) {
  console.error(`error: ${e.message ?? e}`);
  code = 1;
} finally {
  await browser.close();
  await server.close();
}
process.exit(code);
