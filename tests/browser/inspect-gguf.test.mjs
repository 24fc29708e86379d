// Hearth.inspect() of a GGUF URL: only the header is read, and the figures are those of the package
// `hearth convert` makes of the file. SmolLM2 (header within the first 2 MiB) against the package
// converted from it, inspected on the same page; Gemma 3 (a 262k-token vocabulary: 2, 4, then 8 MiB
// read in three contiguous range requests) against `hearth inspect` of the file; a server that
// ignores Range (one stream, cancelled once the header is in); an architecture Hearth does not run
// (refused after the first 2 MiB of a 95 MB file), a file that is not a GGUF, and a 404.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { HEARTH, launch, MINUTES, openPage, ROOT, serve, SMOLLM2 } from "./harness.mjs";

const MiB = 2 ** 20;
const SMOLLM2_GGUF = path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
const GEMMA3_GGUF = path.join(ROOT, ".cache/models/gemma-3-270m-q4_k_m.gguf");
let browser, server, dir;

before(async () => {
  execFileSync("bash", [path.join(ROOT, "scripts/fetch-gemma3.sh")], { stdio: "inherit" }); // idempotent
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-gguf-"));
  fs.symlinkSync(SMOLLM2_GGUF, path.join(dir, "smollm2.gguf"));
  fs.symlinkSync(GEMMA3_GGUF, path.join(dir, "gemma3.gguf"));
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
  server = await serve({ smollm2: SMOLLM2, gguf: dir });
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

test("an architecture Hearth does not run is refused after the first range; a page that is not a GGUF and a 404 by name; load() still asks for a package", { timeout: 3 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.reset();
  const got = await page.evaluate(async () => {
    const err = async (f) => f().then(() => null, (e) => ({ name: e.name, message: e.message, status: e.status }));
    return {
      mamba: await err(() => Hearth.inspect("/models/gguf/mamba.gguf")),
      page: await err(() => Hearth.inspect("/models/gguf/page.gguf")),
      missing: await err(() => Hearth.inspect("/models/gguf/missing.gguf")),
      load: await err(() => Hearth.load("/models/gguf/smollm2.gguf", { cache: false })),
    };
  });
  assert.equal(got.mamba?.name, "UnsupportedModelError", JSON.stringify(got.mamba));
  assert.match(got.mamba.message, /mamba/);
  assert.deepEqual(seen("/models/gguf/mamba.gguf"), [[206, [0, 2 * MiB - 1]]], "nothing past the header's first 2 MiB");
  assert.equal(got.page?.name, "BadPackageError", JSON.stringify(got.page));
  assert.match(got.page.message, /not a GGUF file/);
  assert.equal(got.missing?.name, "NetworkError");
  assert.equal(got.missing.status, 404);
  assert.equal(got.load?.name, "InvalidArgumentError");
  assert.match(got.load.message, /hearth convert MODEL\.gguf/);
  assert.deepEqual(server.requests("/models/gguf/smollm2.gguf"), [], "load() asked for nothing");
  assert.ok(consoleErrors.every((e) => /404|Failed to load resource/.test(e)), consoleErrors.join("\n"));
  await context.close();
});
