// A GGUF URL in the browser. load(): converted into a stored package as it downloads, shard for
// shard the package `hearth convert` writes (the stored hashes equal the natively converted
// package's), generating what that package generates; a download cut off resumes with a range
// request from the first missing shard's first tensor; a second load asks for nothing. inspect():
// only the header is read, and the figures are those of the package `hearth convert` makes of it. SmolLM2 (header within the first 2 MiB) against the package
// converted from it, inspected on the same page; Gemma 3 (a 262k-token vocabulary: 2, 4, then 8 MiB
// read in three contiguous range requests) against `hearth inspect` of the file; a server that
// ignores Range (one stream, cancelled once the header is in); an architecture Hearth does not run
// (refused by inspect() and load() after the first 2 MiB of a 95 MB file, nothing stored), a file
// that is not a GGUF, and a 404.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { assertSameGreedyText, HEARTH, launch, MINUTES, openPage, ROOT, serve, SMOLLM2, storedRecord, storedShards, tinyPackage } from "./harness.mjs";

const MiB = 2 ** 20;
const SMOLLM2_GGUF = path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
const GEMMA3_GGUF = path.join(ROOT, ".cache/models/gemma-3-270m-q4_k_m.gguf");
const QWEN3_GGUF = path.join(ROOT, "tests/fixtures/tiny/qwen3.gguf");
const PHI3_GGUF = path.join(ROOT, "tests/fixtures/tiny/phi3.gguf");
let browser, server, dir;

before(async () => {
  execFileSync("bash", [path.join(ROOT, "scripts/fetch-gemma3.sh")], { stdio: "inherit" }); // idempotent
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-gguf-"));
  fs.symlinkSync(SMOLLM2_GGUF, path.join(dir, "smollm2.gguf"));
  fs.symlinkSync(GEMMA3_GGUF, path.join(dir, "gemma3.gguf"));
  fs.symlinkSync(QWEN3_GGUF, path.join(dir, "qwen3.gguf"));
  fs.symlinkSync(PHI3_GGUF, path.join(dir, "phi3.gguf"));
  // SmolLM2's header with its architecture renamed "mamba" (same length), the rest of the file's
  // length as a hole: a GGUF of an architecture no engine runs, 95 MB long.
  const head = fs.readFileSync(SMOLLM2_GGUF).subarray(0, 4 * MiB);
  const key = head.indexOf("general.architecture");
  const value = head.indexOf("llama", key);
  assert.ok(key > 0 && value - key < 40, "SmolLM2's architecture key and value");
  head.write("mamba", value, "latin1");
  fs.writeFileSync(path.join(dir, "mamba.gguf"), head);
  fs.truncateSync(path.join(dir, "mamba.gguf"), fs.statSync(SMOLLM2_GGUF).size);
  fs.writeFileSync(path.join(dir, "page.gguf"), "<!doctype html><p>Not found, but a 200</p>");
  browser = await launch();
  server = await serve({ smollm2: SMOLLM2, qwen3: tinyPackage("qwen3"), phi3: tinyPackage("phi3"), gguf: dir });
}, { timeout: 5 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** The requests the server saw for `urlPath`: [status, range] each. */
const seen = (urlPath) => server.requests(urlPath).map((e) => [e.status, e.range]);

const FIGURES = ["name", "architecture", "parameters", "downloadBytes", "context", "kvF16", "memory", "cpu", "gpu", "fits", "reasons", "backend"];
const figures = (i) => Object.fromEntries(FIGURES.map((k) => [k, i[k]]));

for (const ranges of [true, false]) {
  test(`SmolLM2's GGUF ${ranges ? "with range requests" : "from a server without range support"}: the figures of its converted package, from the header alone`, { timeout: 3 * MINUTES }, async () => {
    const { context, page, consoleErrors } = await openPage(browser, server);
    server.reset();
    if (!ranges) server.hooks.noRange.set("/models/gguf/smollm2.gguf", true);
    const got = await page.evaluate(async () => {
      const options = { backend: "webgpu", maxContext: 512 };
      const gguf = await Hearth.inspect("/models/gguf/smollm2.gguf", options);
      const pkg = await Hearth.inspect("/models/smollm2/", options);
      return { gguf, pkg, stored: (await Hearth.cache.list()).length };
    });
    const size = fs.statSync(SMOLLM2_GGUF).size;
    assert.deepEqual(figures(got.gguf), figures(got.pkg));
    assert.equal(got.gguf.fits, true, got.gguf.reasons.join("; "));
    assert.deepEqual(got.gguf.source, { kind: "gguf", bytes: size });
    assert.deepEqual(got.pkg.source, { kind: "package", bytes: got.pkg.downloadBytes });
    // What a load would store: the same shards and tokenizer; only the manifest's text differs (the
    // planned one is compact JSON, its shards not hashed yet).
    const manifestBytes = fs.statSync(path.join(SMOLLM2, "manifest.json")).size;
    assert.ok(Math.abs(got.gguf.storage.needed - got.pkg.storage.needed) < manifestBytes, JSON.stringify([got.gguf.storage, got.pkg.storage]));
    assert.equal(got.stored, 0, "inspect() stores nothing");
    const requests = server.requests("/models/gguf/smollm2.gguf");
    assert.equal(requests.length, 1, JSON.stringify(requests));
    if (ranges) {
      assert.deepEqual(seen("/models/gguf/smollm2.gguf"), [[206, [0, 2 * MiB - 1]]]);
    } else {
      // The whole file was offered; the page stopped reading once the header was in (what the
      // server could hand to the socket before the browser's buffers filled is far below the file).
      assert.equal(requests[0].status, 200);
      assert.ok(requests[0].sent < size / 2, `${requests[0].sent} of ${size} bytes sent`);
      // And it cancelled the rest: the connection closes before the body's end.
      for (let i = 0; i < 100 && requests[0].finished === undefined; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(requests[0].finished, false, "the response was cancelled");
    }
    assert.deepEqual(consoleErrors, []);
    await context.close();
  });
}

test("Gemma 3's GGUF: its 8 MiB header read in three contiguous ranges, the figures `hearth inspect` prints for the file", { timeout: 3 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.reset();
  const got = await page.evaluate(() => Hearth.inspect("/models/gguf/gemma3.gguf", { backend: "webgpu", maxContext: 128 }));
  assert.deepEqual(seen("/models/gguf/gemma3.gguf"), [
    [206, [0, 2 * MiB - 1]],
    [206, [2 * MiB, 4 * MiB - 1]],
    [206, [4 * MiB, 8 * MiB - 1]],
  ]);
  const kv = got.kvF16 ? "f16" : "f32";
  const cli = JSON.parse(execFileSync(HEARTH, ["inspect", GEMMA3_GGUF, "--max-context", "128", "--kv-cache", kv], { encoding: "utf8" }));
  for (const k of ["name", "architecture", "parameters", "downloadBytes", "context", "cpu", "gpu"]) assert.deepEqual(got[k], cli[k], k);
  assert.deepEqual(got.source, cli.source);
  assert.deepEqual(got.memory, got.gpu);
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("an architecture Hearth does not run is refused after the first range; a page that is not a GGUF and a 404 by name; load() of one uncached refused", { timeout: 3 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.reset();
  const got = await page.evaluate(async () => {
    const err = async (f) => f().then(() => null, (e) => ({ name: e.name, message: e.message, status: e.status }));
    return {
      mamba: await err(() => Hearth.inspect("/models/gguf/mamba.gguf")),
      page: await err(() => Hearth.inspect("/models/gguf/page.gguf")),
      missing: await err(() => Hearth.inspect("/models/gguf/missing.gguf")),
      loadMamba: await err(() => Hearth.load("/models/gguf/mamba.gguf")),
      uncached: await err(() => Hearth.load("/models/gguf/smollm2.gguf", { cache: false })),
      badSha: await err(() => Hearth.load("/models/gguf/smollm2.gguf", { sha256: "abc" })),
      packageSha: await err(() => Hearth.load("/models/smollm2/", { sha256: "0".repeat(64) })),
      stored: await Hearth.cache.list(),
    };
  });
  assert.equal(got.mamba?.name, "UnsupportedModelError", JSON.stringify(got.mamba));
  assert.match(got.mamba.message, /mamba/);
  assert.equal(got.loadMamba?.name, "UnsupportedModelError", JSON.stringify(got.loadMamba));
  const firstRange = [206, [0, 2 * MiB - 1]];
  assert.deepEqual(seen("/models/gguf/mamba.gguf"), [firstRange, firstRange], "nothing past the header's first 2 MiB");
  assert.deepEqual(got.stored, [], "nothing stored");
  assert.equal(got.page?.name, "BadPackageError", JSON.stringify(got.page));
  assert.match(got.page.message, /not a GGUF file/);
  assert.equal(got.missing?.name, "NetworkError");
  assert.equal(got.missing.status, 404);
  assert.equal(got.uncached?.name, "InvalidArgumentError");
  assert.match(got.uncached.message, /cache: false cannot load a GGUF URL/);
  assert.equal(got.badSha?.name, "InvalidArgumentError");
  assert.match(got.badSha.message, /64 hex digits/);
  assert.equal(got.packageSha?.name, "InvalidArgumentError");
  assert.match(got.packageSha.message, /checks a GGUF file/);
  assert.deepEqual(server.requests("/models/gguf/smollm2.gguf"), [], "a refused load asks for nothing");
  assert.ok(consoleErrors.every((e) => /404|Failed to load resource/.test(e)), consoleErrors.join("\n"));
  await context.close();
});

test("load() of SmolLM2's GGUF: converted into the store shard for shard as hearth convert does, cut off and resumed, then generating what the package generates", { timeout: 10 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.reset();
  const size = fs.statSync(SMOLLM2_GGUF).size;
  const ggufPath = "/models/gguf/smollm2.gguf";
  // The first try dies 48 MB into the file: the first 32 MiB shard is made and stored, the second not.
  server.hooks.cut.set(ggufPath, 48e6);
  const first = await page.evaluate(async (url) => {
    const events = [];
    const error = await Hearth.load(url, { backend: "cpu", onProgress: (e) => events.push(e) }).then(
      (e) => e.dispose().then(() => null),
      (e) => ({ name: e.name, message: e.message }),
    );
    return { error, events, stored: await Hearth.cache.list() };
  }, ggufPath);
  assert.equal(first.error?.name, "NetworkError", JSON.stringify(first.error));
  assert.equal(first.stored.length, 1);
  assert.equal(first.stored[0].complete, false);
  const pkg = JSON.parse(fs.readFileSync(path.join(SMOLLM2, "manifest.json"), "utf8"));
  assert.equal(first.stored[0].bytes, pkg.shards[0].size, "the first shard stored");
  server.hooks.cut.clear();
  server.log.length = 0;

  const prompt = "The capital of France is";
  const second = await page.evaluate(async ({ url, pkgUrl, prompt }) => {
    const events = [];
    const engine = await Hearth.load(url, { backend: "cpu", onProgress: (e) => events.push(e) });
    const fromGguf = await engine.generate(prompt, { max_tokens: 12 });
    await engine.dispose();
    const reference = await Hearth.load(pkgUrl, { backend: "cpu", cache: false });
    const fromPackage = await reference.generate(prompt, { max_tokens: 12 });
    await reference.dispose();
    return { events, fromGguf: fromGguf.text, fromPackage: fromPackage.text, stored: await Hearth.cache.list() };
  }, { url: ggufPath, pkgUrl: "/models/smollm2/", prompt });
  // Resumed: the header again (2 MiB), then one range from the second shard's first tensor on.
  const asked = seen(ggufPath);
  assert.equal(asked.length, 2, JSON.stringify(asked));
  assert.deepEqual(asked[0], [206, [0, 2 * MiB - 1]]);
  const [status, [from, to]] = asked[1];
  assert.equal(status, 206);
  assert.ok(from > pkg.shards[0].size * 0.9 && from < pkg.shards[0].size + 4 * MiB && to === size - 1, `resumed from byte ${from}`);
  assert.ok(second.events.some((e) => e.phase === "download" && e.resumed), "progress says it resumed");
  assert.ok(second.events.some((e) => e.phase === "ready"));
  // Stored whole, shard for shard what `hearth convert` wrote.
  assert.equal(second.stored.length, 1);
  assert.equal(second.stored[0].complete, true);
  const key = new URL(ggufPath + "/", server.url).href;
  const shards = await storedShards(page, key);
  assert.deepEqual(shards.map((s) => [s.size, s.sha256]), pkg.shards.map((s) => [s.size, s.sha256]));
  assert.equal(second.fromGguf, second.fromPackage);
  assertSameGreedyText(second.fromGguf, { prompt, maxTokens: 12, backend: "cpu" }, "SmolLM2 from its GGUF URL");

  // Stored: loading again reads the header only (the file is the same), and offline nothing.
  server.log.length = 0;
  const again = await page.evaluate(async (url) => {
    const engine = await Hearth.load(url, { backend: "cpu" });
    await engine.dispose();
  }, ggufPath);
  assert.equal(again, undefined);
  assert.deepEqual(seen(ggufPath), [[206, [0, 2 * MiB - 1]]]);
  // In a worker too (the URL reaches it as the page's absolute URL of the file).
  const inWorker = await page.evaluate(async ({ url, prompt }) => {
    const engine = await Hearth.loadInWorker(url, { backend: "cpu", revalidate: false });
    const r = await engine.generate(prompt, { max_tokens: 12 });
    await engine.dispose();
    return r.text;
  }, { url: ggufPath, prompt });
  assert.equal(inWorker, second.fromGguf);
  // inspect() now counts the stored package as stored.
  const inspected = await page.evaluate((url) => Hearth.inspect(url, { backend: "cpu" }), ggufPath);
  assert.equal(inspected.storedBytes, pkg.shards.reduce((n, s) => n + s.size, 0));
  assert.equal(inspected.storage.needed, 0);
  server.log.length = 0;
  await context.setOffline(true);
  const offline = await page.evaluate(async (url) => {
    const engine = await Hearth.load(url, { backend: "cpu" });
    const r = await engine.generate("Hi", { max_tokens: 2 });
    await engine.dispose();
    return r.ids.length;
  }, ggufPath);
  await context.setOffline(false);
  assert.equal(offline, 2, "offline, the stored package loads and generates");

  // A new version of the file (its Last-Modified) whose download is cut off: the package made from
  // the old one still loads (it is kept until the new one is whole); loaded again, the new one is
  // converted to the end and replaces it.
  const { atime, mtime } = fs.statSync(SMOLLM2_GGUF);
  const newVersion = new Date(Math.floor(mtime.getTime() / 1000) * 1000 - 3600e3);
  fs.utimesSync(SMOLLM2_GGUF, atime, newVersion);
  try {
    server.hooks.cut.set(ggufPath, 48e6);
    const update = await page.evaluate(async ({ url, prompt }) => {
      const error = await Hearth.load(url, { backend: "cpu" }).then(
        (e) => e.dispose().then(() => null),
        (e) => ({ name: e.name, message: e.message }),
      );
      const listed = await Hearth.cache.list();
      const engine = await Hearth.load(url, { backend: "cpu", revalidate: false });
      const r = await engine.generate(prompt, { max_tokens: 12 });
      await engine.dispose();
      return { error, listed, text: r.text };
    }, { url: ggufPath, prompt });
    assert.equal(update.error?.name, "NetworkError", JSON.stringify(update.error));
    assert.equal(update.listed.length, 1);
    assert.equal(update.listed[0].complete, true, "the old version still loads");
    assert.equal(update.text, second.fromGguf);
    server.hooks.cut.clear();
    await page.evaluate(async (url) => {
      const engine = await Hearth.load(url, { backend: "cpu" });
      await engine.dispose();
    }, ggufPath);
    const record = await storedRecord(page, key);
    assert.deepEqual({ previous: "previous" in record, validator: record.gguf.validator }, { previous: false, validator: newVersion.toUTCString() });
    assert.deepEqual((await storedShards(page, key)).map((s) => s.sha256), pkg.shards.map((s) => s.sha256));
  } finally {
    server.hooks.cut.clear();
    fs.utimesSync(SMOLLM2_GGUF, atime, mtime);
  }
  assert.deepEqual(consoleErrors.filter((e) => !/ERR_INTERNET_DISCONNECTED|ERR_CONNECTION|Failed to load resource/.test(e)), []);
  await context.close();
});

test("load() of a GGUF from a server without range support, checked against its sha256: the converted package's ids; a wrong sha256 fails with IntegrityError and keeps nothing", { timeout: 5 * MINUTES }, async () => {
  const ggufPath = "/models/gguf/qwen3.gguf";
  const sha256 = crypto.createHash("sha256").update(fs.readFileSync(QWEN3_GGUF)).digest("hex");
  const wrong = sha256.replace(/^./, (c) => (c === "0" ? "1" : "0"));
  server.reset();
  server.hooks.noRange.set(ggufPath, true);
  const { context, page, consoleErrors } = await openPage(browser, server);
  const got = await page.evaluate(async ({ url, pkgUrl, sha256, wrong }) => {
    const failed = await Hearth.load(url, { backend: "cpu", sha256: wrong }).then(
      (e) => e.dispose().then(() => null),
      (e) => ({ name: e.name, message: e.message, expected: e.expected, actual: e.actual }),
    );
    const storedAfterFailure = await Hearth.cache.list();
    const engine = await Hearth.load(url, { backend: "cpu", sha256 });
    const fromGguf = await engine.generate("Hello there", { max_tokens: 8 });
    await engine.dispose();
    const reference = await Hearth.load(pkgUrl, { backend: "cpu", cache: false });
    const fromPackage = await reference.generate("Hello there", { max_tokens: 8 });
    await reference.dispose();
    return { failed, storedAfterFailure, fromGguf: fromGguf.ids, fromPackage: fromPackage.ids, stored: await Hearth.cache.list() };
  }, { url: ggufPath, pkgUrl: "/models/qwen3/", sha256, wrong });
  assert.equal(got.failed?.name, "IntegrityError", JSON.stringify(got.failed));
  assert.equal(got.failed.expected, wrong);
  assert.equal(got.failed.actual, sha256);
  assert.match(got.failed.message, /does not match the sha256 option's/);
  assert.deepEqual(got.storedAfterFailure, [], "nothing of the wrong file is kept");
  assert.deepEqual(got.fromGguf, got.fromPackage);
  assert.equal(got.fromGguf.length, 8);
  // Every request for the file was answered whole (200): the header's stream, cancelled, and the
  // data's, read to the end for the hash; per load.
  assert.deepEqual(seen(ggufPath).map(([status]) => status), [200, 200, 200, 200]);
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, ".cache/packages/tiny-qwen3/manifest.json"), "utf8"));
  const shards = await storedShards(page, new URL(ggufPath + "/", server.url).href);
  assert.deepEqual(shards.map((s) => s.sha256), pkg.shards.map((s) => s.sha256));
  assert.equal(got.stored[0]?.complete, true);
  // Loaded again: the header only while the file is the same; a new version of it (its
  // Last-Modified) is converted again, whole.
  const loadAgain = () =>
    page.evaluate(async (url) => {
      const engine = await Hearth.load(url, { backend: "cpu" });
      const r = await engine.generate("Hello there", { max_tokens: 8 });
      await engine.dispose();
      return r.ids;
    }, ggufPath);
  server.log.length = 0;
  assert.deepEqual(await loadAgain(), got.fromPackage);
  assert.equal(seen(ggufPath).length, 1, JSON.stringify(seen(ggufPath)));
  const { atime, mtime } = fs.statSync(QWEN3_GGUF);
  fs.utimesSync(QWEN3_GGUF, atime, new Date(mtime.getTime() - 3600e3));
  try {
    server.log.length = 0;
    assert.deepEqual(await loadAgain(), got.fromPackage);
    assert.equal(seen(ggufPath).length, 2, "the header, then the whole file again");
    // Another version checked against a wrong sha256: refused, and the package made from the
    // version before it is what stays stored (and loads).
    fs.utimesSync(QWEN3_GGUF, atime, new Date(mtime.getTime() - 7200e3));
    const refused = await page.evaluate(async ({ url, wrong }) => {
      const error = await Hearth.load(url, { backend: "cpu", sha256: wrong }).then(
        (e) => e.dispose().then(() => null),
        (e) => e.name,
      );
      return { error, listed: await Hearth.cache.list() };
    }, { url: ggufPath, wrong });
    assert.equal(refused.error, "IntegrityError");
    assert.equal(refused.listed.length, 1);
    assert.equal(refused.listed[0].complete, true, "the version before it stays");
    const kept = await page.evaluate(async (url) => {
      const engine = await Hearth.load(url, { backend: "cpu", revalidate: false });
      const r = await engine.generate("Hello there", { max_tokens: 8 });
      await engine.dispose();
      return r.ids;
    }, ggufPath);
    assert.deepEqual(kept, got.fromPackage);
  } finally {
    fs.utimesSync(QWEN3_GGUF, atime, mtime);
  }
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

// Phi-3.5's LongRoPE factors go into the package's config, so planning reads their bytes: fetched
// apart (a range request each, or the file's stream read that far), then planned and converted as
// the file converts natively.
for (const ranges of [true, false]) {
  test(`Phi-3's LongRoPE GGUF ${ranges ? "with range requests" : "from a server without range support"}: its factor tensors fetched apart, inspected and loaded as its converted package`, { timeout: 3 * MINUTES }, async () => {
    const ggufPath = "/models/gguf/phi3.gguf";
    server.reset();
    if (!ranges) server.hooks.noRange.set(ggufPath, true);
    const { context, page, consoleErrors } = await openPage(browser, server);
    const got = await page.evaluate(async ({ url, pkgUrl }) => {
      const options = { backend: "cpu", maxContext: 512 };
      const inspected = await Hearth.inspect(url, options);
      const reference = await Hearth.inspect(pkgUrl, options);
      const engine = await Hearth.load(url, options);
      const fromGguf = await engine.generate("Hello there", { max_tokens: 8 });
      await engine.dispose();
      const pkg = await Hearth.load(pkgUrl, { ...options, cache: false });
      const fromPackage = await pkg.generate("Hello there", { max_tokens: 8 });
      await pkg.dispose();
      return { inspected, reference, fromGguf: fromGguf.ids, fromPackage: fromPackage.ids };
    }, { url: ggufPath, pkgUrl: "/models/phi3/" });
    assert.deepEqual(figures(got.inspected), figures(got.reference));
    assert.deepEqual(got.fromGguf, got.fromPackage);
    const info = JSON.parse(fs.readFileSync(path.join(ROOT, "tests/fixtures/tiny/phi3.json"), "utf8"));
    assert.ok(info.tensors.some((t) => t.name === "rope_factors_long.weight"));
    const requests = seen(ggufPath);
    // inspect(): the header, then the two factor tensors; load(): the same, then the data.
    assert.equal(requests.length, 7, JSON.stringify(requests));
    const factorReads = [requests[1], requests[2]];
    if (ranges) for (const [status, [a, b]] of factorReads) assert.ok(status === 206 && b - a + 1 === 24, JSON.stringify(factorReads));
    else assert.ok(requests.every(([status]) => status === 200));
    const pkgManifest = JSON.parse(fs.readFileSync(path.join(ROOT, ".cache/packages/tiny-phi3/manifest.json"), "utf8"));
    const shards = await storedShards(page, new URL(ggufPath + "/", server.url).href);
    assert.deepEqual(shards.map((s) => s.sha256), pkgManifest.shards.map((s) => s.sha256));
    assert.deepEqual(consoleErrors, []);
    await context.close();
  });
}

test("load() of a GGUF URL asked for WebGPU where there is none is refused before any request", { timeout: 2 * MINUTES }, async () => {
  const context = await browser.newContext();
  await context.addInitScript(() => delete Navigator.prototype.gpu);
  const page = await context.newPage();
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.hearthReady === true);
  server.reset();
  const got = await page.evaluate(() =>
    Hearth.load("/models/gguf/smollm2.gguf", { backend: "webgpu" }).then(
      (e) => e.dispose().then(() => null),
      (e) => ({ name: e.name, message: e.message }),
    ),
  );
  assert.equal(got?.name, "WebGPUUnavailableError", JSON.stringify(got));
  assert.match(got.message, /navigator\.gpu is missing/);
  assert.deepEqual(server.requests("/models/gguf/"), []);
  await context.close();
});
