#!/usr/bin/env node
// Hearth's CPU engine next to wllama 2.3.7 (llama.cpp in wasm) in the same headless Chromium, on the
// same model (SmolLM2-135M-Instruct Q4_1: Hearth's package and the GGUF it was converted from), the
// same ~128-token prompt and 128 greedy tokens. Four configurations, taking turns round by round:
//
//   hearth-1        Hearth.load(url, { backend: "cpu" }) on a plain page (one thread, pkg/wasm/)
//   wllama-1        wllama, n_threads 1, plain page (its single-thread build)
//   hearth-threads  Hearth.loadInWorker(url, { backend: "cpu" }) on a cross-origin isolated page
//                   (pkg/wasm-threads/, a pool of navigator.hardwareConcurrency workers)
//   wllama-2        wllama, n_threads 2, isolated page (its multi-thread build)
//
// Hearth runs its relaxed-SIMD builds where Chromium has relaxed SIMD (pkg/wasm-relaxed/,
// pkg/wasm-threads-relaxed/; engine.info.adapter says "relaxed-simd"). Two more configurations, not
// run unless listed in --configs, take the plain SIMD128 builds instead ({ relaxedSimd: false }):
// hearth-1-simd128 and hearth-threads-simd128.
//
//   node tests/bench/browser-cpu.mjs [--rounds N] [--gen-tokens N] [--configs a,b] [--wllama DIR]
//        [--package DIR] [--gguf FILE] [--chromium PATH] [--out FILE]
//
// scripts/bench-browser-cpu.sh installs wllama (outside the repo's package.json) and runs this.
// Everything is served from 127.0.0.1; pkg/ from a copy taken at the start. Each run of a configuration is a fresh browser context: load
// (download from the local server, verify, store, set up), one warm-up generation, then the timed
// one. Figures: prefill tok/s = prompt tokens / time to the first token; decode tok/s = tokens after
// the first / their time; load s = the load call. Hearth's come from its `usage` (measured where the
// engine runs); wllama's from timestamps of its onNewToken callback (its loop samples a token, calls
// back, then decodes it, so the first callback comes after the prompt and the n-th after n-1 decode
// steps). Per configuration the table shows the median over the rounds and the range; one JSON line
// per configuration follows (every round's figures in `runs`).
import { parseArgs } from "node:util";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer } from "../../scripts/static-server.mjs";
import { QUIET_ARGS } from "../browser/harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const USAGE =
  "usage: node tests/bench/browser-cpu.mjs [--rounds N] [--gen-tokens N] [--configs hearth-1,wllama-1,hearth-threads,wllama-2]\n" +
  "       [--wllama DIR] [--package DIR] [--gguf FILE] [--chromium PATH] [--out FILE] [--timeout S]";
const ALL = ["hearth-1", "wllama-1", "hearth-threads", "wllama-2"];
const EXTRA = ["hearth-1-simd128", "hearth-threads-simd128"];
/** "hearth-1-simd128" -> "hearth-1": the page and API a configuration uses. */
const base = (c) => c.replace(/-simd128$/, "");

let a;
try {
  ({ values: a } = parseArgs({
    options: {
      rounds: { type: "string", default: "2" },
      "gen-tokens": { type: "string", default: "128" },
      "warmup-tokens": { type: "string", default: "16" },
      configs: { type: "string", default: ALL.join(",") },
      wllama: { type: "string", default: path.join(ROOT, ".cache/bench/wllama/node_modules/@wllama/wllama") },
      package: { type: "string", default: path.join(ROOT, ".cache/packages/smollm2-135m-instruct") },
      gguf: { type: "string", default: path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf") },
      chromium: { type: "string", default: "/usr/bin/chromium" },
      out: { type: "string" },
      timeout: { type: "string", default: "600" },
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
const rounds = Number(a.rounds);
const genTokens = Number(a["gen-tokens"]);
const warmupTokens = Number(a["warmup-tokens"]);
const timeoutMs = Number(a.timeout) * 1000;
const configs = a.configs.split(",").map((s) => s.trim()).filter(Boolean);
if (!Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(genTokens) || genTokens < 2 || !Number.isInteger(warmupTokens) || warmupTokens < 1) {
  console.error(`error: --rounds must be at least 1, --gen-tokens at least 2, --warmup-tokens at least 1\n${USAGE}`);
  process.exit(2);
}
for (const c of configs) {
  if (!ALL.includes(c) && !EXTRA.includes(c)) {
    console.error(`error: unknown configuration ${c} (known: ${[...ALL, ...EXTRA].join(", ")})`);
    process.exit(2);
  }
}
const fail = (message) => {
  console.error(`error: ${message}`);
  process.exit(1);
};
const wllamaEsm = path.join(a.wllama, "esm");
if (configs.some((c) => c.startsWith("wllama")) && !fs.existsSync(path.join(wllamaEsm, "index.js"))) {
  fail(`no wllama at ${a.wllama}: npm install --prefix .cache/bench/wllama @wllama/wllama@2.3.7 (scripts/bench-browser-cpu.sh does it)`);
}
if (!fs.existsSync(path.join(a.package, "manifest.json"))) fail(`${a.package} is not a model package (no manifest.json)`);
if (!fs.existsSync(a.gguf)) fail(`no GGUF at ${a.gguf}`);
for (const f of ["pkg/wasm/hearth_web_bg.wasm", "pkg/wasm-threads/hearth_web_bg.wasm"]) {
  if (!fs.existsSync(path.join(ROOT, f))) fail(`${f} is missing: build it with \`bash scripts/build-wasm.sh\``);
}
const wllamaVersion = configs.some((c) => c.startsWith("wllama"))
  ? JSON.parse(fs.readFileSync(path.join(a.wllama, "package.json"), "utf8")).version
  : undefined;

// The prompt of the native benchmark (README, "## Speed"): 128 tokens for SmolLM2's tokenizer.
const PROMPT = Array(8).fill("The history of computing spans many centuries, from the abacus to modern processors.").join(" ");
const packageBytes = JSON.parse(fs.readFileSync(path.join(a.package, "manifest.json"), "utf8")).shards.reduce(
  (n, s) => n + fs.statSync(path.join(a.package, s.file)).size,
  0,
);
const ggufBytes = fs.statSync(a.gguf).size;

// A copy of pkg/ taken now, so that a rebuild of pkg/ during the run cannot mix two builds.
const pkgCopy = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-bench-pkg-"));
fs.cpSync(path.join(ROOT, "pkg"), pkgCopy, { recursive: true, filter: (f) => !f.includes("node_modules") });
const routes = {
  "/pkg/": pkgCopy,
  "/models/smollm2/": path.resolve(a.package),
  "/gguf/": path.dirname(path.resolve(a.gguf)),
  "/wllama/": wllamaEsm,
};
const PAGE = `<!doctype html><meta charset="utf-8"><title>browser CPU benchmark</title><p>bench</p>`;
const pages = { "/": PAGE, "/favicon.ico": "" };
const plain = await startServer({ routes, pages, isolated: false });
const isolated = await startServer({ routes, pages, isolated: true });
const browser = await chromium.launch({
  executablePath: a.chromium,
  headless: true,
  // No WebGPU flags: backend "cpu" is asked for explicitly.
  args: QUIET_ARGS,
});

/** Runs one configuration in a fresh context; returns its figures. */
async function runOne(config) {
  const server = base(config) === "hearth-1" || config === "wllama-1" ? plain : isolated;
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  const warnings = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
    // e.g. "Hearth: the threaded CPU engine did not load; running on one thread."
    if (m.type() === "warning") warnings.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.setDefaultTimeout(timeoutMs);
  try {
    await page.goto(server.url + "/");
    const args = { prompt: PROMPT, gen: genTokens, warm: warmupTokens, ggufUrl: "/gguf/" + path.basename(a.gguf) };
    let r;
    if (config.startsWith("hearth")) {
      r = await page.evaluate(async ({ prompt, gen, warm, worker, relaxedSimd }) => {
        const { Hearth } = await import("/pkg/hearth.js");
        const isolatedPage = globalThis.crossOriginIsolated;
        let t = performance.now();
        const options = { backend: "cpu", relaxedSimd };
        const engine = worker
          ? await Hearth.loadInWorker("/models/smollm2/", options)
          : await Hearth.load("/models/smollm2/", options);
        const load_s = (performance.now() - t) / 1000;
        // The module's memory is the page's engine only when it runs on the page (hearth-1).
        const build = engine.info.adapter.includes("relaxed-simd") ? "wasm-relaxed" : "wasm";
        const mem = worker ? null : (await import(`/pkg/${build}/hearth_web.js`)).memoryBytes;
        const memAfterLoad = mem ? mem() : null;
        // Without cache_prompt: false the timed run would reuse the warm-up's prompt from the KV
        // cache and "prefill" one token (wllama's completions run their whole prompt).
        await engine.generate(prompt, { max_tokens: warm, cache_prompt: false }); // warm-up
        t = performance.now();
        const out = await engine.generate(prompt, { max_tokens: gen, cache_prompt: false });
        const wall_s = (performance.now() - t) / 1000;
        const info = engine.info;
        const result = {
          load_s,
          prompt_tokens: out.usage.prompt_tokens,
          gen_tokens: out.usage.completion_tokens,
          prefill_tok_s: out.usage.prefill_tok_s,
          decode_tok_s: out.usage.decode_tok_s,
          ttft_s: out.usage.ttft_s,
          wall_s,
          finish_reason: out.finish_reason,
          threads: info.threads,
          backend: info.backend,
          adapter: info.adapter,
          isolated: isolatedPage,
          wasm_memory_after_load: memAfterLoad,
          wasm_memory_peak: mem ? mem() : null,
          text: out.text,
        };
        await engine.dispose();
        return result;
      }, { ...args, worker: base(config) === "hearth-threads", relaxedSimd: !config.endsWith("-simd128") });
    } else {
      r = await page.evaluate(async ({ prompt, gen, warm, ggufUrl, nThreads }) => {
        const { Wllama } = await import("/wllama/index.js");
        const quiet = { debug() {}, log() {}, warn: console.warn, error: console.error };
        const w = new Wllama(
          { "single-thread/wllama.wasm": "/wllama/single-thread/wllama.wasm", "multi-thread/wllama.wasm": "/wllama/multi-thread/wllama.wasm" },
          { suppressNativeLog: true, logger: quiet },
        );
        let t = performance.now();
        await w.loadModelFromUrl(new URL(ggufUrl, location.href).href, { n_threads: nThreads, n_ctx: 1024 });
        const load_s = (performance.now() - t) / 1000;
        // Greedy: temperature 0 and top-k 1 (llama.cpp's sampler chain keeps only the most likely token).
        const sampling = { temp: 0, top_k: 1 };
        await w.createCompletion(prompt, { nPredict: warm, sampling }); // warm-up
        const stamps = [];
        t = performance.now();
        const text = await w.createCompletion(prompt, { nPredict: gen, sampling, onNewToken: () => stamps.push(performance.now()) });
        const wall_s = (performance.now() - t) / 1000;
        let promptTokens = (await w.tokenize(prompt, true)).length;
        if (w.mustAddBosToken() && (await w.tokenize(prompt, true))[0] !== w.getBOS()) promptTokens += 1;
        const ttft_s = (stamps[0] - t) / 1000;
        const n = stamps.length;
        const result = {
          load_s,
          prompt_tokens: promptTokens,
          gen_tokens: n,
          prefill_tok_s: promptTokens / ttft_s,
          decode_tok_s: n > 1 ? (n - 1) / ((stamps[n - 1] - stamps[0]) / 1000) : null,
          ttft_s,
          wall_s,
          finish_reason: n >= gen ? "length" : "stop",
          threads: w.getNumThreads(),
          multithread: w.isMultithread(),
          isolated: globalThis.crossOriginIsolated,
          text,
        };
        await w.exit();
        return result;
      }, { ...args, nThreads: config === "wllama-2" ? 2 : 1 });
    }
    r.hardware_concurrency = await page.evaluate(() => navigator.hardwareConcurrency);
    if (errors.length) r.console_errors = errors;
    if (warnings.length) r.console_warnings = warnings;
    return r;
  } finally {
    await context.close();
  }
}

const median = (xs) => {
  const s = xs.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((p, q) => p - q);
  if (!s.length) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const results = Object.fromEntries(configs.map((c) => [c, []]));
const chromiumVersion = browser.version();
let code = 0;
try {
  for (let round = 1; round <= rounds; round++) {
    // Odd rounds in the listed order, even rounds reversed: no configuration always runs first.
    const order = round % 2 ? configs : [...configs].reverse();
    for (const config of order) {
      const load = os.loadavg()[0];
      process.stderr.write(`round ${round}/${rounds} ${config} (load ${load.toFixed(2)}) ... `);
      try {
        const r = await runOne(config);
        r.loadavg_1m = load;
        if (base(config) === "hearth-threads" && r.threads < Math.min(16, r.hardware_concurrency)) {
          console.error(`warning: hearth-threads ran on ${r.threads} thread(s), not ${r.hardware_concurrency}: ${(r.console_warnings ?? []).join(" / ") || "no console warning"}`);
        }
        results[config].push(r);
        process.stderr.write(
          `prefill ${r.prefill_tok_s.toFixed(1)} tok/s, decode ${r.decode_tok_s?.toFixed(1)} tok/s, ` +
            `load ${r.load_s.toFixed(2)} s, ${r.gen_tokens} tokens, threads ${r.threads}\n`,
        );
      } catch (e) {
        process.stderr.write(`FAILED\n`);
        console.error(`error: ${config}: ${e.message ?? e}`);
        results[config].push({ error: String(e.message ?? e) });
        code = 1;
      }
    }
  }
} finally {
  await browser.close();
  await plain.close();
  await isolated.close();
  fs.rmSync(pkgCopy, { recursive: true, force: true });
}

const fmt = (x, d = 1) => (x === null || x === undefined ? "–" : x.toFixed(d));
const span = (xs, d = 1) => {
  const s = xs.filter((x) => typeof x === "number").sort((p, q) => p - q);
  if (!s.length) return "–";
  const m = fmt(median(s), d);
  return s.length > 1 && s[0].toFixed(d) !== s[s.length - 1].toFixed(d) ? `${m} (${s[0].toFixed(d)}–${s[s.length - 1].toFixed(d)})` : m;
};
const summary = {};
for (const c of configs) {
  const ok = results[c].filter((r) => !r.error);
  summary[c] = {
    config: c,
    engine: c.startsWith("hearth") ? "hearth-cpu" : `wllama-${wllamaVersion}`,
    // One number, or every count seen when runs differ (a threaded build that fell back to one thread).
    threads: ((t) => (t.length === 1 ? t[0] : t.length ? t : null))([...new Set(ok.map((r) => r.threads))].sort()),
    kernels: c.startsWith("hearth") ? [...new Set(ok.map((r) => r.adapter))].join(" / ") || null : undefined,
    isolated: ok[0]?.isolated ?? null,
    rounds: ok.length,
    statistic: "median",
    prompt_tokens: ok[0]?.prompt_tokens ?? null,
    gen_tokens: median(ok.map((r) => r.gen_tokens)),
    prefill_tok_s: median(ok.map((r) => r.prefill_tok_s)),
    decode_tok_s: median(ok.map((r) => r.decode_tok_s)),
    load_s: median(ok.map((r) => r.load_s)),
    ttft_s: median(ok.map((r) => r.ttft_s)),
    ...(base(c) === "hearth-1"
      ? { wasm_memory_peak: Math.max(...ok.map((r) => r.wasm_memory_peak ?? 0)), package_bytes: packageBytes, gguf_bytes: ggufBytes }
      : {}),
    browser: `Chromium ${chromiumVersion}`,
    runs: results[c].map(({ text, ...r }) => r),
  };
}

const rows = [["configuration", "threads", "prompt", "generated", "prefill tok/s", "decode tok/s", "load s"]];
for (const c of configs) {
  const ok = results[c].filter((r) => !r.error);
  rows.push([
    c.startsWith("hearth") ? `Hearth CPU (${base(c) === "hearth-1" ? "Hearth.load, plain page" : "loadInWorker, isolated page"}, ${summary[c].kernels ?? "–"})` : `wllama ${wllamaVersion} (n_threads ${c === "wllama-2" ? 2 : 1}${c === "wllama-2" ? ", isolated page" : ", plain page"})`,
    [].concat(summary[c].threads ?? "–").join("/"),
    String(summary[c].prompt_tokens ?? "–"),
    String(summary[c].gen_tokens ?? "–"),
    span(ok.map((r) => r.prefill_tok_s)),
    span(ok.map((r) => r.decode_tok_s)),
    span(ok.map((r) => r.load_s), 2),
  ]);
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
console.log(`\nChromium ${chromiumVersion}, ${rounds} round(s), median (range); prompt ${JSON.stringify(PROMPT.slice(0, 40) + "…")}`);
for (const [i, r] of rows.entries()) {
  console.log("| " + r.map((cell, j) => cell.padEnd(widths[j])).join(" | ") + " |");
  if (i === 0) console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
}
const ratio = (h, w) => (summary[h]?.decode_tok_s && summary[w]?.decode_tok_s ? summary[h].decode_tok_s / summary[w].decode_tok_s : null);
const r1 = ratio("hearth-1", "wllama-1");
const r2 = ratio("hearth-threads", "wllama-2");
if (r1 !== null) console.log(`decode, 1 thread: Hearth / wllama = ${r1.toFixed(2)}× (target ≥ 1.0: ${r1 >= 1 ? "met" : "not met"})`);
if (r2 !== null) console.log(`decode, threaded: Hearth (${summary["hearth-threads"].threads} threads) / wllama (2 threads) = ${r2.toFixed(2)}× (target ≥ 1.0: ${r2 >= 1 ? "met" : "not met"})`);
if (summary["hearth-1"]?.wasm_memory_peak) {
  const s = summary["hearth-1"];
  const mb = (b) => (b / 1e6).toFixed(1);
  console.log(
    `Hearth 1-thread peak wasm memory: ${mb(s.wasm_memory_peak)} MB; package shards ${mb(packageBytes)} MB (GGUF ${mb(ggufBytes)} MB): ` +
      `${mb(s.wasm_memory_peak - packageBytes)} MB over the shards (target ≤ 64 MB: ${s.wasm_memory_peak - packageBytes <= 64e6 ? "met" : "not met"})`,
  );
}
// Greedy on both sides: show where the texts part (they need not agree exactly: different kernels).
const textOf = (c) => results[c]?.find((r) => !r.error)?.text;
for (const [h, w] of [["hearth-1", "wllama-1"], ["hearth-threads", "wllama-2"]]) {
  const th = textOf(h);
  const tw = textOf(w);
  if (th === undefined || tw === undefined) continue;
  let i = 0;
  while (i < th.length && i < tw.length && th[i] === tw[i]) i++;
  console.log(`${h} vs ${w}: texts ${th === tw ? "identical" : `agree on the first ${i} characters (of ${th.length} / ${tw.length})`}`);
}
for (const c of configs) console.log(JSON.stringify(summary[c]));
if (a.out) {
  fs.mkdirSync(path.dirname(path.resolve(a.out)), { recursive: true });
  fs.writeFileSync(a.out, configs.map((c) => JSON.stringify({ ...summary[c], texts: results[c].map((r) => r.text) })).join("\n") + "\n");
  console.error(`wrote ${a.out}`);
}
process.exit(code);
