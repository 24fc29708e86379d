// A GGUF split across files (llama.cpp's `NAME-00001-of-0000N.gguf` ..., written here by gguf-py:
// scripts/split-ggufs.sh) loaded from its URLs: the first file's URL finds the others by name, or
// the page gives all of them (names or queries of its own: signed URLs). Each file's header is read
// (one range each), the package planned is the one `hearth convert` makes of the unsplit file, and
// load() converts the files back to back, shard for shard that package: SmolLM2 in 3 files, cut off
// in the second and resumed from inside it; tiny Qwen3 from a server without ranges with a sha256
// per file; tiny Phi-3 with only metadata in its first file (its factor tensors read from a later
// one). Files out of place, missing or miscounted are refused by name, with nothing stored.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { launch, MINUTES, openPage, ROOT, serve, SMOLLM2, storedShards, tinyPackage } from "./harness.mjs";

const MiB = 2 ** 20;
const SPLIT = path.join(ROOT, ".cache/models/split");
const split = (name) => [1, 2, 3].map((i) => `${name}-0000${i}-of-00003.gguf`);
let browser, server, dir, packages;

before(async () => {
  execFileSync("bash", [path.join(ROOT, "scripts/split-ggufs.sh")], { stdio: "inherit" }); // idempotent
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-split-"));
  for (const name of ["smollm2", "qwen3", "phi3"]) {
    for (const file of split(name)) fs.symlinkSync(path.join(SPLIT, file), path.join(dir, file));
  }
  // Qwen3's files under names of no pattern, and the first two of them alone under the pattern.
  split("qwen3").forEach((file, i) => fs.symlinkSync(path.join(SPLIT, file), path.join(dir, `part-${"abc"[i]}.gguf`)));
  split("qwen3").slice(0, 2).forEach((file, i) => fs.symlinkSync(path.join(SPLIT, file), path.join(dir, split("lone")[i])));
  fs.symlinkSync(path.join(ROOT, "tests/fixtures/tiny/qwen3.gguf"), path.join(dir, "qwen3.gguf"));
  browser = await launch();
  packages = { qwen3: tinyPackage("qwen3"), phi3: tinyPackage("phi3") };
  server = await serve({ smollm2: SMOLLM2, ...packages, gguf: dir });
}, { timeout: 5 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** The requests the server saw for `file` of the served folder: [status, range] each. */
const seen = (file) => server.requests(`/models/gguf/${file}`).map((e) => [e.status, e.range]);
const sizeOf = (file) => fs.statSync(path.join(dir, file)).size;
const manifestOf = (pkgDir) => JSON.parse(fs.readFileSync(path.join(pkgDir, "manifest.json"), "utf8"));

const FIGURES = ["name", "architecture", "parameters", "downloadBytes", "context", "memory", "cpu", "gpu", "fits", "reasons", "backend"];
const figures = (i) => Object.fromEntries(FIGURES.map((k) => [k, i[k]]));

test("SmolLM2 in 3 files from its first file's URL: one header range per file, its package's figures; loaded, cut off in the second file and resumed inside it, shard for shard the package", { timeout: 10 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  const [one, two, three] = split("smollm2");
  const url = `/models/gguf/${one}`;
  server.reset();
  const inspected = await page.evaluate(async (url) => {
    const options = { backend: "cpu", maxContext: 512 };
    return { gguf: await Hearth.inspect(url, options), pkg: await Hearth.inspect("/models/smollm2/", options) };
  }, url);
  assert.deepEqual(figures(inspected.gguf), figures(inspected.pkg));
  assert.deepEqual(inspected.gguf.source, { kind: "gguf", bytes: sizeOf(one) + sizeOf(two) + sizeOf(three) });
  // The first file's header from 2 MiB, the others' (their tensors' entries only) from 64 KiB.
  const header = [206, [0, 2 * MiB - 1]];
  const laterHeader = [206, [0, 64 * 1024 - 1]];
  const headers = { [one]: header, [two]: laterHeader, [three]: laterHeader };
  for (const file of [one, two, three]) assert.deepEqual(seen(file), [headers[file]], file);

  // The first try dies 20 MB into the second file: shards 0 and 1 (64 MiB) are made, not shard 2.
  const pkg = manifestOf(SMOLLM2);
  server.reset();
  server.hooks.cut.set(`/models/gguf/${two}`, 20e6);
  const first = await page.evaluate(async (url) => {
    const error = await Hearth.load(url, { backend: "cpu" }).then(
      (e) => e.dispose().then(() => null),
      (e) => ({ name: e.name, message: e.message }),
    );
    return { error, stored: await Hearth.cache.list() };
  }, url);
  assert.equal(first.error?.name, "NetworkError", JSON.stringify(first.error));
  assert.equal(first.stored.length, 1);
  assert.equal(first.stored[0].bytes, pkg.shards[0].size + pkg.shards[1].size, "shards 0 and 1 stored");
  server.hooks.cut.clear();
  server.reset();

  const prompt = "The capital of France is";
  const second = await page.evaluate(async ({ url, prompt }) => {
    const events = [];
    const engine = await Hearth.load(url, { backend: "cpu", onProgress: (e) => events.push(e) });
    const fromGguf = await engine.generate(prompt, { max_tokens: 12 });
    await engine.dispose();
    const reference = await Hearth.load("/models/smollm2/", { backend: "cpu", cache: false });
    const fromPackage = await reference.generate(prompt, { max_tokens: 12 });
    await reference.dispose();
    return { events, fromGguf: fromGguf.text, fromPackage: fromPackage.text, stored: await Hearth.cache.list() };
  }, { url, prompt });
  // Resumed: each header again, then the second file from shard 2's first tensor on, then the
  // third whole. Nothing of the first file's data.
  assert.deepEqual(seen(one), [header]);
  const [head2, rest2] = seen(two);
  assert.deepEqual(head2, laterHeader);
  const [status, [from, to]] = rest2;
  // Shard 2's first byte is about 64 MiB into the data, which follows file 1's header (its
  // vocabulary: about 1.3 MB) and file 2's: the first tensor with bytes in it starts a little before.
  const shard2 = pkg.shards[0].size + pkg.shards[1].size - sizeOf(one);
  assert.ok(status === 206 && from > shard2 - 4 * MiB && from < shard2 + 4 * MiB && to === sizeOf(two) - 1, `resumed from byte ${from} of ${two}`);
  assert.deepEqual(seen(three), [laterHeader, [200, undefined]]);
  assert.ok(second.events.some((e) => e.phase === "download" && e.resumed && e.file === two), "progress names the file");
  assert.equal(second.stored[0].complete, true);
  const shards = await storedShards(page, new URL(url + "/", server.url).href);
  assert.deepEqual(shards.map((s) => [s.size, s.sha256]), pkg.shards.map((s) => [s.size, s.sha256]));
  assert.equal(second.fromGguf, second.fromPackage);

  // Stored: loading again (in a worker, from the files' URLs given as an array) reads the headers only.
  server.reset();
  const inWorker = await page.evaluate(async ({ urls, prompt }) => {
    const engine = await Hearth.loadInWorker(urls, { backend: "cpu" });
    const r = await engine.generate(prompt, { max_tokens: 12 });
    await engine.dispose();
    return r.text;
  }, { urls: split("smollm2").map((f) => `/models/gguf/${f}`), prompt });
  assert.equal(inWorker, second.fromGguf);
  for (const file of [one, two, three]) assert.deepEqual(seen(file), [headers[file]], file);
  // The cut responses are all the browser complains of: the data's, and the header's where the
  // server closed it before the page cancelled it.
  assert.ok(consoleErrors.length > 0 && consoleErrors.every((e) => e === "Failed to load resource: net::ERR_CONTENT_LENGTH_MISMATCH"), consoleErrors.join("\n"));
  await context.close();
});

test("tiny Qwen3's files under names of their own (an array of URLs with queries), from a server without ranges, one sha256 each: a wrong one fails naming its file and keeps nothing", { timeout: 5 * MINUTES }, async () => {
  const files = ["part-a.gguf", "part-b.gguf", "part-c.gguf"];
  const hashes = files.map((f) => crypto.createHash("sha256").update(fs.readFileSync(path.join(dir, f))).digest("hex"));
  const wrong = [...hashes];
  wrong[1] = hashes[1].replace(/^./, (c) => (c === "0" ? "1" : "0"));
  server.reset();
  for (const f of files) server.hooks.noRange.set(`/models/gguf/${f}`, true);
  const { context, page, consoleErrors } = await openPage(browser, server);
  const urls = files.map((f, i) => `/models/gguf/${f}?signature=${i}`);
  const got = await page.evaluate(async ({ urls, hashes, wrong }) => {
    const err = (p) => p.then((e) => e.dispose?.().then(() => null) ?? null, (e) => ({ name: e.name, message: e.message, expected: e.expected }));
    const alone = await err(Hearth.inspect(urls[0]));
    const failed = await err(Hearth.load(urls, { backend: "cpu", sha256: wrong }));
    const storedAfterFailure = await Hearth.cache.list();
    const engine = await Hearth.load(urls, { backend: "cpu", sha256: hashes });
    const fromGguf = await engine.generate("Hello there", { max_tokens: 8 });
    await engine.dispose();
    const reference = await Hearth.load("/models/qwen3/", { backend: "cpu", cache: false });
    const fromPackage = await reference.generate("Hello there", { max_tokens: 8 });
    await reference.dispose();
    return { alone, failed, storedAfterFailure, fromGguf: fromGguf.ids, fromPackage: fromPackage.ids };
  }, { urls, hashes, wrong });
  assert.equal(got.alone?.name, "BadPackageError", JSON.stringify(got.alone));
  assert.match(got.alone.message, /part-a\.gguf is split 1 of 3 .*does not say where the others are/);
  assert.equal(got.failed?.name, "IntegrityError", JSON.stringify(got.failed));
  assert.match(got.failed.message, /part-b\.gguf/);
  assert.equal(got.failed.expected, wrong[1]);
  assert.deepEqual(got.storedAfterFailure, [], "nothing of the wrong files is kept");
  assert.deepEqual(got.fromGguf, got.fromPackage);
  assert.equal(got.fromGguf.length, 8);
  // Per load, each file twice, whole (200): its header's stream, cancelled, then all of it, hashed.
  for (const f of files.slice(1)) assert.deepEqual(seen(f).map(([s]) => s), [200, 200, 200, 200], f);
  // Stored under the first file's URL without its query (where Hearth.cache and deleteModel find it).
  const shards = await storedShards(page, new URL(`/models/gguf/${files[0]}/`, server.url).href);
  assert.deepEqual(shards.map((s) => s.sha256), manifestOf(packages.qwen3).shards.map((s) => s.sha256));
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("tiny Phi-3 with only metadata in its first file: its LongRoPE factors read from a later file; inspected and loaded as its package", { timeout: 3 * MINUTES }, async () => {
  const files = split("phi3");
  server.reset();
  const { context, page, consoleErrors } = await openPage(browser, server);
  const got = await page.evaluate(async (url) => {
    const options = { backend: "cpu", maxContext: 512 };
    const inspected = await Hearth.inspect(url, options);
    const reference = await Hearth.inspect("/models/phi3/", options);
    const engine = await Hearth.load(url, options);
    const fromGguf = await engine.generate("Hello there", { max_tokens: 8 });
    await engine.dispose();
    const pkg = await Hearth.load("/models/phi3/", { ...options, cache: false });
    const fromPackage = await pkg.generate("Hello there", { max_tokens: 8 });
    await pkg.dispose();
    return { inspected, reference, fromGguf: fromGguf.ids, fromPackage: fromPackage.ids };
  }, `/models/gguf/${files[0]}`);
  assert.deepEqual(figures(got.inspected), figures(got.reference));
  assert.deepEqual(got.fromGguf, got.fromPackage);
  // The two factor tensors (24 bytes each), read twice (by inspect() and load()), from files 2 and 3.
  const factorReads = files.flatMap((f) => seen(f).filter(([, r]) => r && r[1] - r[0] + 1 === 24));
  assert.equal(factorReads.length, 4, JSON.stringify(files.map(seen)));
  assert.deepEqual(seen(files[0]).map(([s]) => s), [206, 206], "the first file: its header, by inspect() and load()");
  const shards = await storedShards(page, new URL(`/models/gguf/${files[0]}/`, server.url).href);
  assert.deepEqual(shards.map((s) => s.sha256), manifestOf(packages.phi3).shards.map((s) => s.sha256));
  assert.deepEqual(consoleErrors, []);
  await context.close();
});

test("split files out of place, missing or miscounted are refused by name, and nothing is stored", { timeout: 3 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.reset();
  const got = await page.evaluate(async () => {
    const err = (p) => p.then(() => null, (e) => ({ name: e.name, message: e.message, status: e.status, url: e.url }));
    const at = (f) => `/models/gguf/${f}`;
    return {
      second: await err(Hearth.inspect(at("qwen3-00002-of-00003.gguf"))),
      missing: await err(Hearth.inspect(at("lone-00001-of-00003.gguf"))),
      tooFew: await err(Hearth.load([at("qwen3-00001-of-00003.gguf"), at("qwen3-00002-of-00003.gguf")], { backend: "cpu" })),
      notSplit: await err(Hearth.load([at("qwen3.gguf"), at("part-b.gguf")], { backend: "cpu" })),
      notGguf: await err(Hearth.load([at("qwen3-00001-of-00003.gguf"), "/models/qwen3/"])),
      oneHash: await err(Hearth.load(at("qwen3-00001-of-00003.gguf"), { backend: "cpu", sha256: "0".repeat(64) })),
      stored: await Hearth.cache.list(),
    };
  });
  assert.equal(got.second?.name, "BadPackageError", JSON.stringify(got.second));
  assert.match(got.second.message, /is split 2 of 3 of a model: load the first of its files/);
  assert.equal(got.missing?.name, "NetworkError", JSON.stringify(got.missing));
  assert.equal(got.missing.status, 404);
  assert.match(got.missing.message, /lone-00003-of-00003\.gguf/);
  assert.equal(got.tooFew?.name, "BadPackageError", JSON.stringify(got.tooFew));
  assert.match(got.tooFew.message, /split 1 of 3 of a model, and 2 URLs were given/);
  assert.equal(got.notSplit?.name, "BadPackageError", JSON.stringify(got.notSplit));
  assert.match(got.notSplit.message, /a model in one file, and 2 URLs were given/);
  assert.equal(got.notGguf?.name, "InvalidArgumentError", JSON.stringify(got.notGguf));
  assert.equal(got.oneHash?.name, "InvalidArgumentError", JSON.stringify(got.oneHash));
  assert.match(got.oneHash.message, /1 hash\(es\).*3 file\(s\): give one per file/);
  assert.deepEqual(got.stored, []);
  assert.deepEqual(seen("part-b.gguf"), [], "a one-file model's list is refused before its second URL is read");
  assert.ok(consoleErrors.every((e) => /404|Failed to load resource/.test(e)), consoleErrors.join("\n"));
  await context.close();
});
