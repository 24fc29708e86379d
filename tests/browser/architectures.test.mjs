// The architectures beyond SmolLM2's Llama in the browser: the tiny random models of
// tests/fixtures/tiny/ (checked against llama.cpp's logits by the Rust tests) run through the npm
// package on SwiftShader and must give the native engine's greedy ids: Llama 3 (rope_freqs.weight's
// frequency factors, uploaded as the shards arrive), Qwen2 (Q/K/V biases, NeoX rotation), also with
// YaRN rope scaling; Qwen3 (QK-norm, heads wider than hidden / heads); SmolLM3 (a layer without
// RoPE); Phi-3 (fused products cut on conversion, LongRoPE whose factors the context chooses, also
// loaded with a maxContext within its original context); a Mistral-style model with a window of 8 keys, generating well past it (its
// ring cache wraps); Gemma 2 (alternating local and global layers, soft-capped scores and logits);
// Gemma 3 (local layers with a window of 8 and their own RoPE base between global ones, QK-norm,
// post-norms, GeGLU); BLOOM (ALiBi over 6 heads, LayerNorm, embedding norm, biases), GPT-2
// (learned positions) and Granite (multipliers on the embeddings, the attention scores, each block's
// output and the logits). Then the real Gemma 3 270M, whose first greedy tokens must be llama.cpp's.
// Both engines: the GPU engine on SwiftShader and the CPU engine in wasm. Mixtures of experts
// (Mixtral, Qwen2-MoE with its shared expert, Qwen3-MoE, OLMoE with its whole-query norms, dots.llm1
// with its sigmoid router, selection bias and dense first layer, Granite-MoE with its multipliers and
// unscaled shared expert) on both,
// also loaded from their GGUF's URL.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { assertSameGreedy, gemma3Package, launch, serve, openPage, nativeGenerate, tinyPackage, MINUTES, ROOT } from "./harness.mjs";

const MODELS = ["llama_rope_freqs", "llama_q5_k_m", "qwen2", "qwen2_yarn", "qwen3", "smollm3", "phi3", "mistral_swa", "gemma2", "gemma3", "bloom", "gpt2", "granite"];
const MIXTURES = ["mixtral", "qwen2moe", "qwen3moe", "olmoe", "dots1", "granitemoe"];
const PROMPT = "the cat sat on the mat";
const MAX_TOKENS = 40;

let browser;
let server;
const packages = {};

before(async () => {
  for (const name of [...MODELS, ...MIXTURES]) packages[name] = tinyPackage(name);
  packages.ggufs = path.join(ROOT, "tests/fixtures/tiny"); // the mixtures' GGUF files, by URL
  packages["gemma3-270m"] = gemma3Package();
  server = await serve(packages);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

// Each engine against its native twin: the GPU engine (forced: SwiftShader would get the CPU one)
// against `hearth generate --backend gpu`, the CPU engine (wasm, SIMD128) against `--backend cpu`.
const ENGINES = [
  { backend: "webgpu", native: "gpu" },
  { backend: "cpu", native: "cpu" },
];

// Phi-3 once more with a maxContext within its original context of 256: the short LongRoPE factors
// (the native run gets the same --max-context).
const RUNS = [...MODELS.map((name) => ({ name })), { name: "phi3", maxContext: 256 }];

for (const { name, maxContext } of RUNS) {
  for (const { backend, native: nativeBackend } of ENGINES) {
    const label = maxContext ? `${name} (maxContext ${maxContext})` : name;
    test(`${label}, ${backend}: the browser gives the native greedy ids`, { timeout: 3 * MINUTES }, async () => {
      // SwiftShader has no shader-f16, so the browser keeps an f32 KV cache; the native run must too.
      // (Random weights make near-ties common: an f16 cache changes GPT-2's greedy ids after 6 tokens.)
      const native = nativeGenerate({ model: packages[name], prompt: PROMPT, maxTokens: MAX_TOKENS, kvCache: "f32", backend: nativeBackend, margins: nativeBackend === "cpu", maxContext });
      const { context, page, consoleErrors } = await openPage(browser, server);
      const got = await page.evaluate(
        async ({ url, prompt, maxTokens, backend, maxContext }) => {
          const engine = await Hearth.load(url, { cache: false, backend, maxContext });
          const r = await engine.generate(prompt, { max_tokens: maxTokens });
          await engine.dispose();
          return { ids: r.ids, prompt_ids: r.prompt_ids, text: r.text, architecture: engine.info.architecture, backend: engine.info.backend };
        },
        { url: `/models/${name}/`, prompt: PROMPT, maxTokens: MAX_TOKENS, backend, maxContext },
      );
      if (maxContext) {
        const full = nativeGenerate({ model: packages[name], prompt: PROMPT, maxTokens: MAX_TOKENS, kvCache: "f32", backend: nativeBackend, margins: nativeBackend === "cpu" });
        assert.notDeepEqual(native.ids, full.ids, "the context chooses other factors, so other ids");
      }
      const fixture = JSON.parse(fs.readFileSync(path.join(ROOT, `tests/fixtures/tiny/${name}.json`), "utf8"));
      assert.equal(got.architecture, fixture.arch);
      assert.equal(got.backend, backend);
      assert.deepEqual(got.prompt_ids, native.prompt_ids);
      assert.ok(native.ids.length > 8, "the generation runs past the windows of 8 keys");
      const what = `${name}: browser ids differ from \`hearth generate --backend ${nativeBackend}\``;
      if (backend === "webgpu") {
        assert.deepEqual(got.ids, native.ids, what);
        assert.equal(got.text, native.text);
      } else if (assertSameGreedy(got.ids, native, what) === native.ids.length) {
        // The CPU engines round differently (wasm SIMD128 and native AVX2): equal up to a near-tie.
        assert.equal(got.text, native.text);
      }
      assert.deepEqual(consoleErrors, []);
      await context.close();
    });
  }
}

for (const { backend, native: nativeBackend } of ENGINES) {
  test(`Gemma 3 270M, ${backend}: the browser gives llama.cpp's greedy ids and the native engine's`, {
    timeout: 5 * MINUTES,
  }, async () => {
    const prompt = "The capital of France is";
    const fixture = JSON.parse(fs.readFileSync(path.join(ROOT, "tests/fixtures/gemma3/generation.json"), "utf8"));
    const reference = fixture.prompts.find((p) => p.prompt === prompt);
    const native = nativeGenerate({ model: packages["gemma3-270m"], prompt, maxTokens: 8, kvCache: "f32", backend: nativeBackend, margins: nativeBackend === "cpu" });
    const { context, page, consoleErrors } = await openPage(browser, server);
    const got = await page.evaluate(
      async ({ url, prompt, backend }) => {
        const engine = await Hearth.load(url, { cache: false, backend });
        const r = await engine.generate(prompt, { max_tokens: 8 });
        await engine.dispose();
        return { ids: r.ids, prompt_ids: r.prompt_ids, architecture: engine.info.architecture };
      },
      { url: "/models/gemma3-270m/", prompt, backend },
    );
    assert.equal(got.architecture, "gemma3");
    assert.deepEqual(got.prompt_ids, reference.prompt_ids, "tokenized as llama.cpp does");
    assert.deepEqual(got.ids, reference.greedy_ids.slice(0, 8), "llama.cpp's first 8 greedy tokens");
    if (backend === "webgpu") assert.deepEqual(got.ids, native.ids);
    else assertSameGreedy(got.ids, native, "Gemma 3 270M on the CPU");
    assert.deepEqual(consoleErrors, []);
    await context.close();
  });
}

for (const name of MIXTURES) {
  test(`${name} (a mixture of experts): the CPU engine gives the native greedy ids, WebGPU the native GPU engine's, both also from its GGUF's URL`, { timeout: 4 * MINUTES }, async () => {
    const native = nativeGenerate({ model: packages[name], prompt: PROMPT, maxTokens: MAX_TOKENS, kvCache: "f32", backend: "cpu", margins: true });
    const nativeGpu = nativeGenerate({ model: packages[name], prompt: PROMPT, maxTokens: MAX_TOKENS, kvCache: "f32", backend: "gpu" });
    const { context, page, consoleErrors } = await openPage(browser, server);
    const got = await page.evaluate(
      async ({ url, gguf, prompt, maxTokens }) => {
        const run = async (url, options) => {
          const engine = await Hearth.load(url, options);
          const r = await engine.generate(prompt, { max_tokens: maxTokens });
          await engine.dispose();
          return { ids: r.ids, prompt_ids: r.prompt_ids, text: r.text, info: engine.info };
        };
        const cpu = await run(url, { cache: false, backend: "cpu" });
        const webgpu = await run(url, { cache: false, backend: "webgpu" });
        // The GGUF converted in the page as it downloads (3-D expert tensors cut per expert), then
        // loaded from the store on each engine.
        const cpuGguf = await run(gguf, { backend: "cpu" });
        const webgpuGguf = await run(gguf, { backend: "webgpu" });
        return { cpu, webgpu, cpuGguf, webgpuGguf };
      },
      { url: `/models/${name}/`, gguf: `/models/ggufs/${name}.gguf`, prompt: PROMPT, maxTokens: MAX_TOKENS },
    );
    const fixture = JSON.parse(fs.readFileSync(path.join(ROOT, `tests/fixtures/tiny/${name}.json`), "utf8"));
    assert.equal(got.cpu.info.architecture, fixture.arch);
    assert.deepEqual([got.cpu.info.backend, got.webgpu.info.backend], ["cpu", "webgpu"]);
    assert.deepEqual(got.cpu.prompt_ids, native.prompt_ids);
    // The CPU engines round differently (wasm SIMD128 and native AVX2): equal up to a near-tie.
    if (assertSameGreedy(got.cpu.ids, native, `${name}: browser ids differ from \`hearth generate --backend cpu\``) === native.ids.length) {
      assert.equal(got.cpu.text, native.text);
    }
    assert.deepEqual(got.webgpu.ids, nativeGpu.ids, `${name}: WebGPU ids differ from \`hearth generate --backend gpu\``);
    assert.equal(got.webgpu.text, nativeGpu.text);
    // The same package bytes (the native converter's; gguf_stream.rs) on the same engine: the same ids.
    assert.deepEqual(got.cpuGguf.ids, got.cpu.ids);
    assert.deepEqual(got.webgpuGguf.ids, got.webgpu.ids);
    assert.deepEqual(consoleErrors, []);
    await context.close();
  });
}
