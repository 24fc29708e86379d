#!/usr/bin/env node
// Runs the real npm package (pkg/) in headless Chromium and prints the same JSON object as
// `hearth generate --json` (same keys in the same order; top_logits is always []):
//   node tests/browser/generate.mjs --model DIR --prompt TEXT [--chat] [--system TEXT]
//        [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S]
//        [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F] [--stop TEXT]...
//        [--worker] [--backend auto|gpu|cpu]
// --backend as the CLI's: gpu runs the GPU engine (WebGPU on SwiftShader here), cpu the CPU engine
// (wasm), auto (the default) what Hearth.load chooses. The CLI's --json is accepted (and ignored) so
// that a script can pass the same arguments to both. Each run starts a fresh browser profile: the package is downloaded every time.
import { parseArgs } from "node:util";
import fs from "node:fs";
import path from "node:path";
import { launch, openPage, serve } from "./harness.mjs";

const SAMPLING = [
  ["temperature", "temperature"],
  ["top-k", "top_k"],
  ["top-p", "top_p"],
  ["min-p", "min_p"],
  ["repetition-penalty", "repetition_penalty"],
  ["presence-penalty", "presence_penalty"],
  ["frequency-penalty", "frequency_penalty"],
  ["seed", "seed"],
];
const USAGE =
  "usage: node tests/browser/generate.mjs --model DIR --prompt TEXT [--chat] [--system TEXT] [--max-tokens N]\n" +
  `       [${SAMPLING.map(([f]) => `--${f} X`).join("] [")}] [--stop TEXT]... [--worker]`;

let a;
try {
  ({ values: a } = parseArgs({
    options: {
      model: { type: "string" },
      prompt: { type: "string" },
      chat: { type: "boolean", default: false },
      system: { type: "string" },
      "max-tokens": { type: "string", default: "128" }, // the CLI's default
      ...Object.fromEntries(SAMPLING.map(([flag]) => [flag, { type: "string" }])),
      stop: { type: "string", multiple: true, default: [] },
      worker: { type: "boolean", default: false },
      json: { type: "boolean", default: true },
      backend: { type: "string", default: "auto" },
      "top-logits": { type: "string", default: "0" },
    },
  }));
} catch (e) {
  console.error(`${e.message}\n${USAGE}`);
  process.exit(2);
}
if (!a.model || a.prompt === undefined) {
  console.error(USAGE);
  process.exit(2);
}
if (!fs.existsSync(path.join(a.model, "manifest.json"))) {
  console.error(`error: ${a.model} is not a model package (no manifest.json); make one with \`hearth convert\``);
  process.exit(1);
}
const BACKENDS = { auto: "auto", gpu: "webgpu", cpu: "cpu" };
if (!BACKENDS[a.backend]) {
  console.error("error: --backend is auto, gpu or cpu");
  process.exit(2);
}
if (a["top-logits"] !== "0") console.error("note: --top-logits is not available in the browser; top_logits is []");

const options = { max_tokens: Number(a["max-tokens"]) };
for (const [flag, key] of SAMPLING) {
  if (a[flag] !== undefined) options[key] = Number(a[flag]);
}
// The CLI's seed defaults to 0; the package draws a fresh one when sampling without a seed.
options.seed ??= 0;
if (a.stop.length > 0) options.stop = a.stop;
const input = a.chat
  ? [...(a.system !== undefined ? [{ role: "system", content: a.system }] : []), { role: "user", content: a.prompt }]
  : a.prompt;

const server = await serve({ model: path.resolve(a.model) });
const browser = await launch();
let code = 0;
try {
  const { page, consoleErrors } = await openPage(browser, server);
  const out = await page.evaluate(
    async ({ input, options, worker, backend }) => {
      try {
        const engine = await (worker ? Hearth.loadInWorker : Hearth.load)("/models/model/", { backend });
        try {
          return { result: await engine.generate(input, options) };
        } finally {
          await engine.dispose();
        }
      } catch (e) {
        return { error: `${e.name}: ${e.message}` };
      }
    },
    { input, options, worker: a.worker, backend: BACKENDS[a.backend] },
  );
  for (const e of consoleErrors) console.error(`browser console: ${e}`);
  if (out.error) throw new Error(out.error);
  const r = out.result;
  const u = r.usage;
  // The CLI's order: its `json!` object as written, `usage` in the Rust struct's field order.
  const json = {
    prompt_ids: r.prompt_ids,
    ids: r.ids,
    text: r.text,
    finish_reason: r.finish_reason,
    top_logits: [],
    usage: {
      prompt_tokens: u.prompt_tokens,
      cached_tokens: u.cached_tokens ?? 0,
      completion_tokens: u.completion_tokens,
      prefill_tok_s: u.prefill_tok_s,
      decode_tok_s: u.decode_tok_s,
      ttft_s: u.ttft_s,
    },
  };
  console.log(JSON.stringify(json));
} catch (e) {
  console.error(`error: ${e.message ?? e}`);
  code = 1;
} finally {
  await browser.close();
  await server.close();
}
process.exit(code);
