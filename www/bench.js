// The benchmark page (bench.html): load a model package with the npm package and measure prefill and
// decode speed as `hearth bench` does natively, so the two can be compared on one machine.
// tests/browser/bench.mjs opens this page headless with ?autorun=1 and reads `window.benchResult`.
//
// What is measured (the engine's own `usage` figures): after a warm-up generation of one token
// (which also compiles the pipelines, like hearth bench's warm-up step), one greedy generation of a
// prompt of about `promptTokens` tokens and `genTokens` new tokens. prefill_tok_s is the prompt's
// tokens over the time to the first token, decode_tok_s the tokens after the first over their time,
// each token's id read back before the next is computed (as natively). The prompt is one word
// repeated ("the the the ..."), one token per repetition for the tokenizers here; its exact length
// is counted by the warm-up (which adds the model's BOS, if any) and reported as prompt_tokens.
// Unlike `hearth bench`, generation ends early at a stop token (reported in finish_reason).

/** A prompt of `words` repetitions of one common word. */
export function promptText(words) {
  return "the" + " the".repeat(Math.max(0, words - 1));
}

/**
 * Load `modelUrl` and measure it; resolves with one object whose keys follow `hearth bench`'s JSON
 * line (sorted, as serde_json prints them), plus browser, finish_reason and worker.
 */
export async function runBench(Hearth, modelUrl, { promptTokens = 128, genTokens = 64, worker = false, cache = false, onProgress, log = () => {} } = {}) {
  if (!(promptTokens >= 1 && genTokens >= 2)) throw new Error("prompt tokens must be at least 1 and generated tokens at least 2");
  const t0 = performance.now();
  log(`loading ${modelUrl}${worker ? " in a worker" : ""}...`);
  const engine = await (worker ? Hearth.loadInWorker : Hearth.load)(modelUrl, { cache, onProgress });
  const load_s = (performance.now() - t0) / 1000;
  try {
    const info = engine.info;
    log(`loaded in ${load_s.toFixed(2)} s on ${info.adapter}; warm-up...`);
    const warm = await engine.generate(promptText(1), { max_tokens: 1 });
    // Tokens the prompt has besides its words (a BOS token): the rest is one per word.
    const extra = Math.max(0, warm.prompt_ids.length - 1);
    const words = Math.max(1, promptTokens - extra);
    log(`prompt of ${words} words, ${genTokens} tokens to generate...`);
    // The warm-up's prompt is a prefix of this one: the whole prompt is run, not reused.
    const r = await engine.generate(promptText(words), { max_tokens: genTokens, cache_prompt: false });
    const u = r.usage;
    const result = {
      adapter: info.adapter,
      // As `hearth bench` names them: the engine that ran ("auto" picks the CPU on a software adapter).
      backend: info.backend === "cpu" ? "cpu" : "gpu",
      browser: navigator.userAgent.match(/(Chrom(e|ium)|Firefox|Version)\/[\d.]+/)?.[0] ?? navigator.userAgent,
      context: u.prompt_tokens,
      decode_tok_s: u.decode_tok_s,
      f16: info.kvF16,
      finish_reason: r.finish_reason,
      gen_tokens: u.completion_tokens,
      load_s,
      prefill_tok_s: u.prefill_tok_s,
      prompt_tokens: u.prompt_tokens,
      software: info.software,
      synthetic: false,
      ttft_s: u.ttft_s,
      worker,
    };
    if (u.prompt_tokens !== promptTokens) result.requested_prompt_tokens = promptTokens;
    if (u.completion_tokens !== genTokens) result.requested_gen_tokens = genTokens;
    return Object.fromEntries(Object.entries(result).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  } finally {
    await engine.dispose();
  }
}

// ------------------------------------------------------------------------------------------------
// The page

const $ = (id) => document.getElementById(id);

function fmt(x, digits = 1) {
  return Number.isFinite(x) ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "-";
}

function addRow(r) {
  const tr = document.createElement("tr");
  const cells = [
    r.prompt_tokens,
    fmt(r.prefill_tok_s),
    r.gen_tokens,
    fmt(r.decode_tok_s),
    fmt(r.ttft_s, 3),
    fmt(r.load_s, 2),
    `${r.adapter}${r.software ? " (software)" : ""}, ${r.f16 ? "f16" : "f32"} KV${r.worker ? ", worker" : ""}`,
  ];
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = String(c); // text, never HTML
    tr.append(td);
  }
  $("results").append(tr);
  $("results-table").hidden = false;
  $("json").textContent += JSON.stringify(r) + "\n";
}

async function main() {
  const params = new URLSearchParams(location.search);
  const form = $("bench-form");
  for (const [key, id] of [["model", "model"], ["prompt_tokens", "prompt-tokens"], ["gen_tokens", "gen-tokens"]]) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  if (params.has("worker")) $("worker").checked = params.get("worker") === "1";
  if (params.has("cache")) $("cache").checked = params.get("cache") === "1";
  const status = (text) => {
    $("status").textContent = text;
    console.log(`bench: ${text}`);
  };

  let Hearth;
  try {
    status("loading the package...");
    ({ Hearth } = await import("./pkg/hearth.js"));
  } catch (e) {
    status(`Hearth's package did not load (${e.message}): serve pkg/ (with pkg/wasm/ from scripts/build-wasm.sh) next to this page.`);
    window.benchError = `package: ${e.message}`;
    window.benchDone = true;
    return;
  }
  status("asking for a WebGPU adapter...");
  // A browser whose GPU process cannot start may never answer: give up after 30 s.
  const support = await Promise.race([Hearth.support(), new Promise((resolve) => setTimeout(() => resolve(null), 30_000))]);
  if (support === null) {
    status("No WebGPU adapter answered within 30 s: this browser cannot reach a GPU with its current flags.");
    window.benchError = "no WebGPU adapter answered within 30 s";
    window.benchDone = true;
    return;
  }
  status(support.webgpu ? "ready" : `No WebGPU here: ${support.reason ?? "unknown reason"}`);

  const run = async () => {
    $("run").disabled = true;
    let lastShown = 0;
    try {
      const url = new URL($("model").value, location.href).href;
      const result = await runBench(Hearth, url, {
        promptTokens: Number($("prompt-tokens").value),
        genTokens: Number($("gen-tokens").value),
        worker: $("worker").checked,
        cache: $("cache").checked,
        log: status,
        onProgress: ({ phase, loaded, total }) => {
          const now = performance.now();
          if (now - lastShown < 250 && loaded !== total) return;
          lastShown = now;
          $("status").textContent = `${phase}: ${(loaded / 1e6).toFixed(1)} / ${(total / 1e6).toFixed(1)} MB`;
        },
      });
      addRow(result);
      status(`done: prefill ${fmt(result.prefill_tok_s)} tok/s, decode ${fmt(result.decode_tok_s)} tok/s`);
      return result;
    } finally {
      $("run").disabled = false;
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run().catch((err) => status(`error: ${err.name}: ${err.message}`));
  });
  $("run").disabled = false;
  document.documentElement.dataset.ready = "true";
  if (params.get("autorun") === "1") {
    try {
      window.benchResult = await run();
    } catch (err) {
      status(`error: ${err.name}: ${err.message}`);
      window.benchError = `${err.name}: ${err.message}`;
    }
    window.benchDone = true;
  }
}

if (typeof document !== "undefined" && document.getElementById("bench-form")) main();
