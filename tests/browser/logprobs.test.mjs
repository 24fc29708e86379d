// Log-probabilities and logit biases through the npm package in headless Chromium (issue 15, item
// 4), on the CPU engine and on the GPU engine (SwiftShader: the WGSL top-k epilogue, with only the k
// best read back). That the figures equal an independent log-softmax of the logits is proven
// natively (crates/hearth-core/tests/logprobs.rs, crates/hearth-gpu/tests/sampler.rs); here: the
// shapes (Hearth's entries from generate(), OpenAI's from chat.completions, streamed chunks equal to
// the whole), what must hold of any distribution (each log-probability <= 0, the alternatives sorted
// and their probabilities summing to at most 1, the greedy choice the most likely), a forced token
// marked so, and a bias that moves the choice on both engines.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { launch, MINUTES, openPage, serve, SMOLLM2 } from "./harness.mjs";

let browser, server, page;
before(async () => {
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2 }, { isolated: false });
  ({ page } = await openPage(browser, server));
  await page.evaluate(async () => {
    window.cpu = await Hearth.load("/models/smollm2/", { backend: "cpu" });
    window.gpu = await Hearth.load("/models/smollm2/", { backend: "webgpu" });
  });
}, { timeout: 5 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

/** What any greedy step's entry must satisfy; returns why not, or null. */
function badEntry(e, k) {
  if (e.forced) return e.logprob === 0 && e.top_logprobs.length === 0 ? null : `forced entry ${JSON.stringify(e)}`;
  if (!(e.logprob <= 0)) return `logprob ${e.logprob}`;
  if (e.top_logprobs.length !== k) return `${e.top_logprobs.length} alternatives, not ${k}`;
  for (let i = 1; i < k; i++) if (e.top_logprobs[i].logprob > e.top_logprobs[i - 1].logprob) return "alternatives not sorted";
  const mass = e.top_logprobs.reduce((s, t) => s + Math.exp(t.logprob), 0);
  // Rounding of f32 sums: 1e-4 over 1 is far below any real excess (a wrong normaliser is off by a lot).
  if (mass > 1 + 1e-4) return `alternatives hold probability ${mass}`;
  if (e.top_logprobs[0].id !== e.id) return `greedy chose ${e.id}, not the most likely ${e.top_logprobs[0].id}`;
  if (Math.abs(e.top_logprobs[0].logprob - e.logprob) > 1e-6) return "the chosen token's logprob differs from its alternative's";
  if (!Array.isArray(e.bytes) || typeof e.token !== "string") return "no token text or bytes";
  return null;
}

test("generate() reports each token's log-probability and the top alternatives on both engines; a bias moves the choice", { timeout: 8 * MINUTES }, async () => {
  const got = await page.evaluate(async () => {
    const out = {};
    for (const [which, e] of [["cpu", cpu], ["gpu", gpu]]) {
      const plain = await e.generate("The capital of France is", { max_tokens: 4, logprobs: true, top_logprobs: 5 });
      const first = plain.ids[0];
      const banned = await e.generate("The capital of France is", { max_tokens: 1, logprobs: true, top_logprobs: 2, logit_bias: { [first]: -100 } });
      const forcedId = plain.logprobs[0].top_logprobs[4].id;
      const pushed = await e.generate("The capital of France is", { max_tokens: 1, logit_bias: { [forcedId]: 100 } });
      const none = await e.generate("The capital of France is", { max_tokens: 2 });
      out[which] = { plain, banned, forcedId, pushed, none };
    }
    return out;
  });
  for (const [which, r] of Object.entries(got)) {
    console.log(`${which}: ${JSON.stringify(r.plain.logprobs.map((e) => [e.token, e.logprob.toFixed(3)]))}`);
    assert.equal(r.plain.logprobs.length, r.plain.ids.length, which);
    r.plain.logprobs.forEach((e, i) => {
      assert.equal(e.id, r.plain.ids[i], `${which} ${i}`);
      assert.equal(badEntry(e, 5), null, `${which} ${i}: ${JSON.stringify(e)}`);
    });
    assert.notEqual(r.banned.ids[0], r.plain.ids[0], `${which}: a bias of -100 moves the greedy choice`);
    // The bias is in the distribution reported: the banned token is not among the two best.
    assert.ok(!r.banned.logprobs[0].top_logprobs.some((t) => t.id === r.plain.ids[0]), which);
    assert.equal(r.pushed.ids[0], r.forcedId, `${which}: a bias of +100 makes the fifth choice the first`);
    assert.equal(r.none.logprobs, undefined, `${which}: no logprobs unless asked`);
  }
  assert.deepEqual(got.gpu.plain.ids, got.cpu.plain.ids, "both engines choose the same greedy tokens here");
  for (let i = 0; i < got.cpu.plain.ids.length; i++) {
    // The engines round differently (the CPU engine quantizes activations to 8 bits as llama.cpp
    // does): their log-probabilities agree to a few hundredths (at most 0.06 apart when measured),
    // not exactly; a wrong normaliser or a missed token would be off by far more than 0.2.
    const [c, g] = [got.cpu.plain.logprobs[i].logprob, got.gpu.plain.logprobs[i].logprob];
    assert.ok(Math.abs(c - g) < 0.2, `token ${i}: CPU ${c} vs GPU ${g}`);
  }
});

test("chat.completions carries OpenAI's logprobs shape; the stream's chunks hold the same entries; forced tokens are marked", { timeout: 5 * MINUTES }, async () => {
  const got = await page.evaluate(async () => {
    // Both read the whole prompt (a prefix from the cache may round its last logits differently).
    const params = { messages: [{ role: "user", content: "Say hi." }], max_tokens: 6, logprobs: true, top_logprobs: 3, cache_prompt: false };
    const whole = await cpu.chat.completions.create(params);
    const chunks = [];
    for await (const c of cpu.chat.completions.create({ ...params, stream: true })) chunks.push(c);
    const without = await cpu.chat.completions.create({ ...params, logprobs: false, top_logprobs: undefined });
    // A grammar that forces everything after its first word.
    const grammar = 'start: "Answer: " WORD " is my answer."\nWORD: /[a-z]{1,8}/\n';
    const forced = await cpu.generate("Name a colour.", { response_format: { type: "grammar", grammar }, logprobs: true, max_tokens: 20 });
    return { whole, chunks, without, forced };
  });
  const content = got.whole.choices[0].logprobs.content;
  assert.ok(content.length > 0);
  for (const e of content) {
    assert.deepEqual(Object.keys(e).sort(), ["bytes", "logprob", "token", "top_logprobs"]);
    assert.equal(e.top_logprobs.length, 3);
    assert.deepEqual(Object.keys(e.top_logprobs[0]).sort(), ["bytes", "logprob", "token"]);
  }
  const streamed = got.chunks.flatMap((c) => c.choices[0].logprobs?.content ?? []);
  assert.deepEqual(streamed, content, "the chunks' entries are the completion's");
  assert.equal(got.without.choices[0].logprobs, undefined);
  const f = got.forced;
  console.log(`forced: ${JSON.stringify(f.text)}: ${JSON.stringify(f.logprobs.map((e) => [e.token, e.forced ?? false]))}`);
  assert.equal(f.logprobs.length, f.ids.length);
  assert.ok(f.logprobs.some((e) => e.forced) && f.logprobs.some((e) => !e.forced), "forced and chosen tokens both appear");
  for (const e of f.logprobs.filter((e) => e.forced)) assert.equal(badEntry(e, 0), null);
});

test("bad logprobs and logit_bias values fail naming the field", { timeout: 2 * MINUTES }, async () => {
  const got = await page.evaluate(async () => {
    const fail = async (f) => {
      try {
        await f();
        return null;
      } catch (e) {
        return { name: e.name, message: e.message };
      }
    };
    return {
      top: await fail(() => cpu.generate("Hi", { logprobs: true, top_logprobs: 21 })),
      topAlone: await fail(() => cpu.generate("Hi", { top_logprobs: 1 })),
      range: await fail(() => cpu.generate("Hi", { logit_bias: { 5: 101 } })),
      key: await fail(() => cpu.generate("Hi", { logit_bias: { "-1": 1 } })),
      vocab: await fail(() => cpu.generate("Hi", { logit_bias: { 4000000: 1 } })),
    };
  });
  const expect = {
    top: /^options\.top_logprobs must be an integer from 0 to 20, got 21$/,
    topAlone: /^top_logprobs needs logprobs: true$/,
    range: /^options\.logit_bias\[5\] must be a number from -100 to 100, got 101$/,
    key: /^options\.logit_bias: "-1" is not a token id$/,
    vocab: /4000000/,
  };
  for (const [name, re] of Object.entries(expect)) {
    assert.equal(got[name]?.name, "InvalidArgumentError", `${name}: ${JSON.stringify(got[name])}`);
    assert.match(got[name].message, re, name);
  }
});
