#!/usr/bin/env node
// The browser side of scripts/bench-embeddings.sh: an encoder's embeddings per second through the
// npm package in headless Chromium (the CPU engine in wasm: on the page's thread, and in a worker
// on a pool of threads; the WebGPU engine on the page, on whatever adapter Chromium offers), for batches of 1, 16 and 64 of the texts in FILE (a JSON array of
// strings, written by scripts/bench_embeddings.py with their token count), after one warm-up
// batch. One JSON line per place, with the keys `hearth bench` prints for an encoder.
//
//   node tests/browser/bench-embed.mjs --texts FILE [--model DIR] [--chromium PATH]
import { parseArgs } from "node:util";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launch, openPage, serve } from "./harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const { values: a } = parseArgs({
  options: {
    texts: { type: "string" },
    model: { type: "string", default: path.join(ROOT, ".cache/packages/all-MiniLM-L6-v2") },
  },
});
if (!a.texts) {
  console.error("usage: node tests/browser/bench-embed.mjs --texts FILE [--model DIR]");
  process.exit(2);
}
const texts = JSON.parse(fs.readFileSync(a.texts, "utf8"));
const browser = await launch();
const server = await serve({ model: a.model });
try {
  for (const [worker, backend] of [[false, "cpu"], [true, "cpu"], [false, "webgpu"]]) {
    const { context, page } = await openPage(browser, server);
    const report = await page.evaluate(async ({ texts, worker, backend }) => {
      const started = performance.now();
      const engine = await (worker ? Hearth.loadInWorker : Hearth.load)("/models/model/", { backend, cache: false });
      const load_s = (performance.now() - started) / 1000;
      const { usage } = await engine.embeddings.create({ input: texts.slice(0, 16) });
      const batches = [];
      for (const n of [1, 16, 64]) {
        const t = performance.now();
        await engine.embed(texts.slice(0, n));
        const seconds = (performance.now() - t) / 1000;
        batches.push({ texts: n, seconds, embeddings_per_s: n / seconds });
      }
      const info = engine.info;
      await engine.dispose();
      const where = backend === "webgpu" ? `webgpu (${info.adapter})` : worker ? "worker" : "page";
      return { tokens_per_text: usage.prompt_tokens / 16, load_s, backend: `browser ${where}`, threads: info.threads, adapter: info.adapter, batches };
    }, { texts, worker, backend });
    console.log(JSON.stringify(report));
    await context.close();
  }
} finally {
  await browser.close();
  await server.close();
}
