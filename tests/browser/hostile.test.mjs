// A model package is input someone else wrote (docs/SECURITY.md). Its chat template runs inside the
// engine: here packages of the tiny Qwen2 model, each with a hostile template written into its
// manifest, loaded on the CPU engine in the page and in a worker. A template that loops for ever
// stops with an InvalidArgumentError ("chat template: ...") and the engine stays usable; one that does not parse leaves plain
// prompts working; one that allocates past its memory budget (string doubling, which minijinja's
// fuel does not see; hearth_core::budget) traps at the budget, and the engine says it was disposed
// instead of refusing every later call as busy; a worker stuck in a slow render (each step a search
// of a 30 MB string: few steps, much time) is ended by dispose(), and by itself once the render
// has run for 10 s.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { launch, serve, openPage, tinyPackage, MINUTES } from "./harness.mjs";

const TEMPLATES = {
  // 10^10 iterations: only the fuel limit ends it.
  loops: "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
  // Not Jinja.
  broken: "{% for m in messages %}{{ m.content ",
  // Inside every budget (600,000 steps, one 30 MB string), dear in time: each step searches the
  // 30 MB string, for the better part of an hour in all.
  slow: "{% set s = 'x' * 30000000 %}{% for i in range(100000) %}{% if 'y' in s %}{% endif %}{% endfor %}",
  // 100 MB doubled 6 times: past wasm32's 4 GiB, were it not for the 64 MiB memory budget.
  doubling:
    "{% set ns = namespace(s='x' * 100000000) %}{% for i in range(6) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
};

let browser;
let server;
const dirs = [];

// Manifests that must be refused before any other request, with nothing stored: each edits the
// tiny Qwen2 manifest and names what the error must say.
const MANIFESTS = {
  // A tokenizer outside the package (the files entry copied, so only the name is wrong).
  climbing: [(m) => renameTokenizer(m, "../loops/tokenizer.json"), /not a plain file name/],
  elsewhere: [(m) => renameTokenizer(m, "https://example.invalid/tokenizer.json"), /not a plain file name/],
  // Escaped: no "/" in the name, but a server that decodes "%2F" would climb out.
  escaped: [(m) => renameTokenizer(m, "..%2Floops%2Ftokenizer.json"), /not a plain file name/],
  // 2^40 layers: a petabyte of KV cache were anything sized from it.
  layers: [(m) => (m.config.n_layers = 2 ** 40), /n_layers/],
  // A 100 GB shard: no buffer for it, so no request for it.
  huge: [(m) => (m.shards[0].size = 100e9), /at most 1 GiB/],
};

function renameTokenizer(m, file) {
  m.files.find((f) => f.file === m.tokenizer.file).file = file;
  m.tokenizer.file = file;
}

/** The tiny Qwen2 package with its manifest edited by `edit` (shards and files linked, not copied). */
function withManifest(base, edit) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-hostile-"));
  dirs.push(dir);
  const manifest = JSON.parse(fs.readFileSync(path.join(base, "manifest.json"), "utf8"));
  for (const f of [...manifest.shards, ...manifest.files]) fs.symlinkSync(path.join(base, f.file), path.join(dir, f.file));
  edit(manifest);
  fs.writeFileSync(path.join(dir, "manifest.json"), JSON.stringify(manifest));
  return dir;
}

before(async () => {
  const base = tinyPackage("qwen2");
  const packages = {
    ...Object.fromEntries(Object.entries(TEMPLATES).map(([name, t]) => [name, withManifest(base, (m) => (m.tokenizer.chat_template = t))])),
    ...Object.fromEntries(Object.entries(MANIFESTS).map(([name, [edit]]) => [name, withManifest(base, edit)])),
  };
  server = await serve(packages);
  browser = await launch();
}, { timeout: 5 * MINUTES });

after(async () => {
  await browser?.close();
  await server?.close();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** In the page: `{name, message}` of what `f` throws, or "resolved". */
const CAPTURE = `window.capture = async (f) => { try { await f(); return "resolved"; } catch (e) { return { name: e.name, message: e.message }; } };`;

test("a looping template stops with an InvalidArgumentError naming the chat template, a broken one only affects chat; plain prompts still work", { timeout: 5 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  await page.evaluate(CAPTURE);
  const got = await page.evaluate(async () => {
    const out = {};
    for (const model of ["loops", "broken"]) {
      const engine = await Hearth.load(`/models/${model}/`, { backend: "cpu", cache: false });
      const started = performance.now();
      out[model] = {
        chat: await capture(() => engine.generate([{ role: "user", content: "hi" }], { max_tokens: 2 })),
        chatMs: performance.now() - started,
        plain: (await engine.generate("the cat", { max_tokens: 3, temperature: 0 })).ids.length === 3,
      };
      await engine.dispose();
    }
    return out;
  });
  assert.equal(got.loops.chat.name, "InvalidArgumentError", JSON.stringify(got.loops));
  assert.match(got.loops.chat.message, /^chat template: .*limit of \d+ steps/);
  assert.ok(got.loops.plain, "plain generation after the failed chat");
  assert.equal(got.broken.chat.name, "InvalidArgumentError", JSON.stringify(got.broken));
  assert.match(got.broken.chat.message, /cannot parse/);
  assert.ok(got.broken.plain, "a template that does not parse leaves plain prompts working");
  await context.close();
});

test("a template that allocates past its memory budget disposes its engine, with a message that says so", { timeout: 5 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  await page.evaluate(CAPTURE);
  const got = await page.evaluate(async () => {
    const engine = await Hearth.load("/models/doubling/", { backend: "cpu", cache: false });
    const chat = await capture(() => engine.generate([{ role: "user", content: "hi" }], { max_tokens: 2 }));
    const later = await capture(() => engine.generate("the cat", { max_tokens: 2 }));
    const dispose = await capture(() => engine.dispose());
    return { chat, later, dispose };
  });
  assert.equal(got.chat.name, "EngineDisposedError", JSON.stringify(got));
  assert.match(got.chat.message, /internal error/);
  assert.equal(got.later.name, "EngineDisposedError", "not EngineBusyError for ever");
  assert.match(got.later.message, /internal error/);
  assert.equal(got.dispose, "resolved");
  await context.close();
});

test("dispose() ends a worker stuck in a call", { timeout: 5 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  await page.evaluate(CAPTURE);
  const got = await page.evaluate(async () => {
    const engine = await Hearth.loadInWorker("/models/slow/", { backend: "cpu", cache: false });
    const call = capture(() => engine.generate([{ role: "user", content: "hi" }], { max_tokens: 2 }));
    await new Promise((r) => setTimeout(r, 200)); // the worker is inside the render now
    const started = performance.now();
    await engine.dispose(); // were it to wait for the render, this test would time out
    const disposeMs = performance.now() - started;
    return { disposeMs, call: await call, after: await capture(() => engine.generate("x", { max_tokens: 1 })) };
  });
  console.log(`dispose() of a stuck worker took ${got.disposeMs.toFixed(0)} ms`);
  assert.equal(got.call.name, "EngineDisposedError", JSON.stringify(got.call));
  assert.equal(got.after.name, "EngineDisposedError");
  await context.close();
});

test("a worker inside one chat template render past its time limit is stopped: the call names the limit, the engine is disposed", { timeout: 5 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  await page.evaluate(CAPTURE);
  const got = await page.evaluate(async () => {
    const results = {};
    // generate() and countTokens() both render the template.
    for (const call of ["generate", "countTokens"]) {
      const engine = await Hearth.loadInWorker("/models/slow/", { backend: "cpu", cache: false });
      const chat = [{ role: "user", content: "hi" }];
      results[call] = await capture(() => (call === "generate" ? engine.generate(chat, { max_tokens: 2 }) : engine.countTokens(chat)));
      results[`${call} after`] = await capture(() => engine.generate("x", { max_tokens: 1 }));
      results[`${call} dispose`] = await engine.dispose().then(() => "resolved");
    }
    return results;
  });
  // Were the render not stopped, each call would run for the better part of an hour (the test's
  // limit fails it first); the worker's own engine could not report this error from inside it.
  for (const call of ["generate", "countTokens"]) {
    assert.equal(got[call].name, "InvalidArgumentError", JSON.stringify(got[call]));
    assert.match(got[call].message, /^chat template: a render ran for more than 10 s/);
    assert.equal(got[`${call} after`].name, "EngineDisposedError");
    assert.equal(got[`${call} dispose`], "resolved");
  }
  await context.close();
});

test("a hostile manifest is refused before any other request, and nothing of it is stored", { timeout: 3 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  await page.evaluate(CAPTURE);
  for (const [name, [, message]] of Object.entries(MANIFESTS)) {
    server.log.length = 0;
    const got = await page.evaluate((name) => capture(() => Hearth.load(`/models/${name}/`, { backend: "cpu" })), name);
    assert.equal(got.name, "BadPackageError", `${name}: ${JSON.stringify(got)}`);
    assert.match(got.message, message, name);
    const requested = server.log.map((e) => e.path).filter((p) => !p.startsWith("/pkg/"));
    assert.deepEqual(requested, [`/models/${name}/manifest.json`], `${name}: requests after the manifest`);
  }
  const listed = await page.evaluate(() => Hearth.cache.list());
  assert.deepEqual(listed, [], "no record of a refused package");
  await context.close();
});
