// The package as users get it: `npm pack` of pkg/, installed into the Vite app in examples/, built
// with `vite build`, served next to a model package, run in Chromium: the page's tokens must be the
// native engine's.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { assertSameGreedy, launch, MINUTES, nativeGenerate, ROOT, SMOLLM2 } from "./harness.mjs";
import { startServer } from "../../scripts/static-server.mjs";

let tmp, browser, server;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-example-"));
});
after(async () => {
  await browser?.close();
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const npm = (args, cwd) => execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8" });

test("the packed package installs into the Vite example, builds, and generates the native tokens", { timeout: 8 * MINUTES }, async () => {
  const tarball = path.join(tmp, npm(["pack", "--pack-destination", tmp], path.join(ROOT, "pkg")).trim().split("\n").at(-1));
  const listing = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" });
  const builds = ["wasm", "wasm-relaxed", "wasm-threads", "wasm-threads-relaxed"].flatMap((b) => [`package/${b}/hearth_web_bg.wasm`, `package/${b}/hearth_web.js`]);
  for (const file of ["package/hearth.js", "package/hearth.d.ts", "package/worker.js", ...builds]) {
    assert.ok(listing.includes(file), `${file} is in the tarball`);
  }
  const app = path.join(tmp, "app");
  fs.mkdirSync(app);
  for (const f of ["index.html", "main.js", "vite.config.js"]) fs.copyFileSync(path.join(ROOT, "examples/vite-app", f), path.join(app, f));
  // The example depends on the tarball `npm pack` leaves in pkg/ (file:../../pkg/NAME.tgz): the same
  // file name, here in the temporary directory.
  const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, "examples/vite-app/package.json"), "utf8"));
  assert.equal(path.basename(manifest.dependencies["hearth-web"]), path.basename(tarball), "examples/vite-app/package.json names the tarball npm pack makes");
  manifest.dependencies["hearth-web"] = `file:${tarball}`;
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify(manifest, null, 2));
  npm(["install"], app);
  execFileSync(path.join(app, "node_modules/.bin/vite"), ["build", "--logLevel", "warn"], { cwd: app, stdio: "inherit" });

  const expected = nativeGenerate({ prompt: "The capital of France is", maxTokens: 3, backend: "cpu", margins: true });
  server = await startServer({ routes: { "/": path.join(app, "dist"), "/models/smollm2/": SMOLLM2 }, pages: { "/favicon.ico": "" } });
  browser = await launch();
  // One profile for both runs: the worker run reads the shards the first run stored in IndexedDB.
  const context = await browser.newContext();
  for (const worker of ["0", "1"]) {
    const page = await context.newPage();
    const errors = [];
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${server.url}/?max_tokens=3&worker=${worker}`);
    await page.waitForFunction(() => document.body.dataset.done || document.body.dataset.error, null, { timeout: 0 });
    const ids = JSON.parse((await page.evaluate(() => document.body.dataset.ids)) ?? "null");
    assert.ok(ids, `worker=${worker}: ${await page.textContent("#status")}`);
    if (assertSameGreedy(ids, expected, `worker=${worker}`) === expected.ids.length) {
      assert.equal(await page.textContent("#output"), expected.text);
    }
    // The server sends COOP + COEP: in a worker the CPU engine runs threaded, on the page on one thread.
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    assert.equal(Number(await page.evaluate(() => document.body.dataset.threads)), worker === "1" ? Math.min(16, cores) : 1);
    assert.deepEqual(errors, []);
    await page.close();
  }
});
