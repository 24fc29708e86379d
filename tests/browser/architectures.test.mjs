// The architectures beyond Llama in the browser: the tiny random models of tests/fixtures/tiny/
// (checked against llama.cpp's logits by the Rust tests) run through the npm package on SwiftShader
// and must give the native engine's greedy ids: Qwen2 (Q/K/V biases, NeoX rotation) and a
// Mistral-style model with a window of 8 keys, generating well past it (its ring cache wraps).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, serve, openPage, nativeGenerate, tinyPackage, MINUTES } from "./harness.mjs";

const MODELS = ["qwen2", "mistral_swa"];
const PROMPT = "the cat sat on the mat";
const MAX_TOKENS = 40;

let browser;
let server;
const packages = {};

before(async () => {
  for (const name of MODELS) packages[name] = tinyPackage(name);
  server = await serve(packages);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

for (const name of MODELS) {
  test(`${name}: the browser gives the native greedy ids`, { timeout: 3 * MINUTES }, async () => {
    const native = nativeGenerate({ model: packages[name], prompt: PROMPT, maxTokens: MAX_TOKENS });
    const { context, page, consoleErrors } = await openPage(browser, server);
    const got = await page.evaluate(
      async ({ url, prompt, maxTokens }) => {
        const engine = await Hearth.load(url, { cache: false });
        const r = await engine.generate(prompt, { max_tokens: maxTokens });
        await engine.dispose();
        return { ids: r.ids, prompt_ids: r.prompt_ids, text: r.text, architecture: engine.info.architecture };
      },
      { url: `/models/${name}/`, prompt: PROMPT, maxTokens: MAX_TOKENS },
    );
    assert.equal(got.architecture, name === "qwen2" ? "qwen2" : "llama");
    assert.deepEqual(got.prompt_ids, native.prompt_ids);
    assert.ok(native.ids.length > 8, "the generation runs past the 8-key window");
    assert.deepEqual(got.ids, native.ids, `${name}: browser ids differ from \`hearth generate --backend gpu\``);
    assert.equal(got.text, native.text);
    assert.deepEqual(consoleErrors, []);
    await context.close();
  });
}
