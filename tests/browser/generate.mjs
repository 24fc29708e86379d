#!/usr/bin/env node
// Runs the real npm package in headless Chromium (WebGPU on SwiftShader) and prints the same JSON as
// `hearth generate --json`:
//   node tests/browser/generate.mjs --model DIR --prompt TEXT [--chat] [--system TEXT]
//        [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S] [--worker]
import { parseArgs } from "node:util";
import path from "node:path";
import { launch, openPage, serve } from "./harness.mjs";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    prompt: { type: "string" },
    chat: { type: "boolean", default: false },
    system: { type: "string" },
    "max-tokens": { type: "string", default: "256" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    "min-p": { type: "string" },
    seed: { type: "string" },
    worker: { type: "boolean", default: false },
  },
});
if (!a.model || a.prompt === undefined) {
  console.error("usage: node tests/browser/generate.mjs --model DIR --prompt TEXT [--chat] [--max-tokens N] [--worker]");
  process.exit(2);
}
const options = { max_tokens: Number(a["max-tokens"]) };
for (const [flag, key] of [["temperature", "temperature"], ["top-k", "top_k"], ["top-p", "top_p"], ["min-p", "min_p"], ["seed", "seed"]]) {
  if (a[flag] !== undefined) options[key] = Number(a[flag]);
}
const input = a.chat
  ? [...(a.system ? [{ role: "system", content: a.system }] : []), { role: "user", content: a.prompt }]
  : a.prompt;

const server = await serve({ model: path.resolve(a.model) });
const browser = await launch();
let code = 0;
try {
  const { page } = await openPage(browser, server);
  const out = await page.evaluate(
    async ({ input, options, worker }) => {
      const engine = await (worker ? Hearth.loadInWorker : Hearth.load)("/models/model/");
      try {
        const r = await engine.generate(input, options);
        return { prompt_ids: r.prompt_ids, ids: r.ids, text: r.text, finish_reason: r.finish_reason, top_logits: [], usage: r.usage };
      } finally {
        await engine.dispose();
      }
    },
    { input, options, worker: a.worker },
  );
  console.log(JSON.stringify(out));
} catch (e) {
  console.error(`error: ${e.message ?? e}`);
  code = 1;
} finally {
  await browser.close();
  await server.close();
}
process.exit(code);
