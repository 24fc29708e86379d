// Weights through the network into IndexedDB: a second load makes no shard request and works with
// the network cut; a corrupted shard is an integrity error and never stored; an interrupted download
// keeps its complete shards and the next load fetches only the missing ones, and so does one that
// stalls (stallTimeout); two tabs loading one model download it once (Web Locks); an update keeps
// the old version loading offline until the new one is stored whole. SmolLM2 in 8 MiB
// shards (13 of them) so that a load has shards before and after the one that fails.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { launch, MINUTES, openPage, serve, shardFiles, smallShards, tinyPackage } from "./harness.mjs";

let browser, server, dir, files, hashes;
before(async () => {
  dir = smallShards();
  files = shardFiles(dir);
  hashes = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8")).shards.map((s) => s.sha256);
  browser = await launch();
  server = await serve({ small: dir });
}, { timeout: 5 * MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
});

const shardRequests = () => server.requests("/models/small/shard-").map((e) => path.basename(e.path));

/** sha256 of every shard IndexedDB holds for the model (keys are "URL|sha256"). */
function storedHashes(page) {
  return page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open("hearth");
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          if (!db.objectStoreNames.contains("shards")) return resolve([]);
          const keys = db.transaction("shards").objectStore("shards").getAllKeys();
          keys.onsuccess = () => resolve(keys.result.filter((k) => k.includes("/models/small/|")).map((k) => k.split("|")[1]));
          keys.onerror = () => reject(keys.error);
        };
      }),
  );
}

const loadAndGenerate = (page, maxTokens = 2) =>
  page.evaluate(async (maxTokens) => {
    try {
      const engine = await Hearth.load("/models/small/");
      const r = await engine.generate("The capital of France is", { max_tokens: maxTokens });
      await engine.dispose();
      return { ids: r.ids };
    } catch (e) {
      return { error: { name: e.name, message: e.message } };
    }
  }, maxTokens);

test("a second load reads every shard from IndexedDB and works offline", { timeout: 5 * MINUTES }, async () => {
  const { context, page, consoleErrors } = await openPage(browser, server);
  server.log.length = 0;
  const first = await loadAndGenerate(page);
  assert.equal(first.error, undefined, JSON.stringify(first.error));
  assert.deepEqual(shardRequests().sort(), [...files].sort(), "first load: each shard fetched once");
  assert.deepEqual((await storedHashes(page)).sort(), [...hashes].sort(), "every shard stored");

  server.log.length = 0;
  const second = await loadAndGenerate(page);
  assert.deepEqual(second.ids, first.ids);
  assert.deepEqual(shardRequests(), [], "second load: no shard request");

  // revalidate: false — a model stored whole loads without asking the server anything.
  server.log.length = 0;
  const quiet = await page.evaluate(async () => {
    const engine = await Hearth.load("/models/small/", { revalidate: false });
    await engine.dispose();
    return engine.info.name;
  });
  assert.ok(quiet);
  assert.deepEqual(server.requests("/models/"), [], "revalidate: false makes no request");

  await context.setOffline(true);
  server.log.length = 0;
  const offline = await loadAndGenerate(page);
  assert.deepEqual(offline.ids, first.ids, "offline load generates the same tokens");
  assert.deepEqual(server.log, [], "offline: nothing reached the server");
  const cached = await page.evaluate(() => Hearth.cache.list());
  assert.equal(cached.length, 1);
  assert.equal(cached[0].complete, true);
  await context.setOffline(false);

  assert.equal(await page.evaluate(() => Hearth.cache.has("/models/small/")), true);
  await page.evaluate(() => Hearth.cache.delete("/models/small/"));
  assert.deepEqual(await storedHashes(page), [], "delete removes the shards");
  assert.equal(await page.evaluate(() => Hearth.cache.has("/models/small/")), false);
  // Offline, the browser itself logs the manifest request it could not make; nothing else.
  assert.deepEqual(consoleErrors.filter((e) => !e.includes("net::ERR_INTERNET_DISCONNECTED")), []);
  await context.close();
});

test("a corrupted shard is an integrity error and is not stored", { timeout: 3 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  const bad = `/models/small/${files[5]}`;
  server.hooks.corrupt.set(bad, true);
  try {
    const r = await loadAndGenerate(page);
    assert.equal(r.error?.name, "IntegrityError", JSON.stringify(r));
    assert.match(r.error.message, new RegExp(files[5]));
    const stored = await storedHashes(page);
    assert.ok(!stored.includes(hashes[5]), "the corrupt shard is not stored");
    assert.ok(stored.includes(hashes[0]), "shards verified before it stay stored");
  } finally {
    server.hooks.corrupt.delete(bad);
  }
  await context.close();
});

test("an interrupted download resumes with only the missing shards", { timeout: 5 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  const cut = `/models/small/${files[7]}`;
  server.hooks.cut.set(cut, 3 << 20);
  let first;
  try {
    first = await loadAndGenerate(page);
  } finally {
    server.hooks.cut.delete(cut);
  }
  assert.equal(first.error?.name, "NetworkError", JSON.stringify(first));
  assert.match(first.error.message, new RegExp(files[7]));
  const stored = await storedHashes(page);
  assert.ok(stored.length >= 7 && stored.length < files.length, `${stored.length} shards stored after the cut`);
  assert.ok(!stored.includes(hashes[7]));

  server.log.length = 0;
  const second = await loadAndGenerate(page);
  assert.equal(second.error, undefined, JSON.stringify(second.error));
  const missing = files.filter((_, i) => !stored.includes(hashes[i]));
  assert.deepEqual(shardRequests().sort(), missing.sort(), "only the missing shards are fetched");
  assert.deepEqual((await storedHashes(page)).sort(), [...hashes].sort());
  await context.close();
});

test("a server that stops sending fails the load after stallTimeout with a NetworkError and keeps the verified shards", { timeout: 3 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  const stalled = `/models/small/${files[4]}`;
  server.hooks.stall.set(stalled, 1 << 20);
  let got;
  try {
    got = await page.evaluate(async () => {
      try {
        // 5 s: the timer runs on the page's clock, which a busy main thread (feeding a shard) also
        // holds up, so the other shards must not come near it on a slow machine.
        await Hearth.load("/models/small/", { stallTimeout: 5000 });
        return null;
      } catch (e) {
        return { name: e.name, message: e.message, url: e.url, status: e.status };
      }
    });
  } finally {
    server.hooks.stall.delete(stalled);
  }
  assert.equal(got?.name, "NetworkError", JSON.stringify(got));
  assert.ok(got.url.endsWith(stalled), got.url);
  assert.equal(got.status, null);
  assert.match(got.message, /no data arrived for 5 s/);
  // Shards 0-3 were verified and stored before the load waited on shard 4.
  const stored = await storedHashes(page);
  assert.ok(stored.length >= 4 && !stored.includes(hashes[4]), `${stored.length} shards stored`);
  await context.close();
});

test("two tabs loading one model download it once: the second waits for the first, then reads what it stored", { timeout: 5 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  const other = await context.newPage();
  await other.goto(server.url + "/");
  await other.waitForFunction(() => window.hearthReady === true);
  server.log.length = 0;
  const [a, b] = await Promise.all([loadAndGenerate(page), loadAndGenerate(other)]);
  assert.equal(a.error, undefined, JSON.stringify(a.error));
  assert.deepEqual(b, a, "both tabs generate the same ids");
  // One request per shard in all: without the lock both tabs would fetch every missing shard.
  assert.deepEqual(shardRequests().sort(), [...files].sort());
  // What Hearth.cache.list() reports is what IndexedDB holds.
  const listed = (await page.evaluate(() => Hearth.cache.list())).filter((m) => m.url.endsWith("/models/small/"));
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
  assert.equal(listed.length, 1);
  assert.equal(listed[0].bytes, manifest.shards.reduce((n, s) => n + s.size, 0));
  assert.equal(listed[0].complete, true);
  assert.deepEqual((await storedHashes(page)).sort(), [...hashes].sort());
  await context.close();
});

test("a shard the server refuses is a network error naming its URL and status", { timeout: 3 * MINUTES }, async () => {
  const { context, page } = await openPage(browser, server);
  const refused = `/models/small/${files[2]}`;
  server.reset();
  server.hooks.status.set(refused, 503);
  try {
    const r = await page.evaluate(async () => {
      try {
        await Hearth.load("/models/small/");
        return null;
      } catch (e) {
        return { name: e.name, message: e.message, url: e.url, status: e.status };
      }
    });
    assert.equal(r?.name, "NetworkError", JSON.stringify(r));
    assert.equal(r.status, 503);
    assert.equal(new URL(r.url).pathname, refused);
    assert.match(r.message, /503/);
    assert.equal(server.count(refused), 1, "the refused shard was asked for once");
  } finally {
    server.reset();
  }
  await context.close();
});

test("storage quota: too little room fails before any download; a quota hit mid-download keeps the stored shards", { timeout: 5 * MINUTES }, async () => {
  // Early check. Chromium's quota override (below) limits writes but not what
  // navigator.storage.estimate() reports, so this page is told, as a browser on a full disk would
  // tell it, that 50 MB are left: the 96 MB model must fail before a single shard request.
  const early = await openPage(browser, server);
  await early.page.evaluate(() => {
    navigator.storage.estimate = async () => ({ quota: 50e6, usage: 0 });
  });
  server.log.length = 0;
  const refused = await loadAndGenerate(early.page);
  assert.equal(refused.error?.name, "QuotaExceededError", JSON.stringify(refused));
  assert.match(refused.error.message, /MB needed/);
  assert.deepEqual(shardRequests(), [], "nothing downloaded");
  await early.context.close();

  // Mid-download: the origin may store 30 MiB (3 of the 8 MiB shards), enforced by Chromium itself.
  const { context, page } = await openPage(browser, server);
  const cdp = await context.newCDPSession(page);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: server.url, quotaSize: 30 << 20 });
  const full = await loadAndGenerate(page);
  assert.equal(full.error?.name, "QuotaExceededError", JSON.stringify(full));
  const kept = await storedHashes(page);
  assert.ok(kept.length >= 1 && kept.length < files.length, `${kept.length} shards kept`);

  // Room again: the shards stored before the quota hit are used, only the rest is fetched.
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: server.url });
  server.log.length = 0;
  const resumed = await loadAndGenerate(page);
  assert.equal(resumed.error, undefined, JSON.stringify(resumed.error));
  assert.deepEqual(shardRequests().sort(), files.filter((_, i) => !kept.includes(hashes[i])).sort());
  await context.close();
});

test("an update keeps the stored version loading offline until the new one is stored whole, then removes it", { timeout: 5 * MINUTES }, async () => {
  // One URL whose package changes: a tiny model first, then SmolLM2 (13 shards) in its place.
  const swap = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-update-"));
  const publish = (from) => {
    for (const f of fs.readdirSync(swap)) fs.rmSync(path.join(swap, f));
    for (const f of fs.readdirSync(from)) fs.copyFileSync(path.join(from, f), path.join(swap, f));
  };
  const old = tinyPackage("qwen2");
  const oldHashes = JSON.parse(fs.readFileSync(path.join(old, "manifest.json"), "utf8")).shards.map((s) => s.sha256);
  const updated = await serve({ small: swap });
  const { context, page } = await openPage(browser, updated);
  try {
    publish(old);
    const first = await loadAndGenerate(page);
    assert.equal(first.error, undefined, JSON.stringify(first.error));

    // The new version's download fails part-way: the old one is still stored whole.
    publish(dir);
    const cut = `/models/small/${files[7]}`;
    updated.hooks.cut.set(cut, 3 << 20);
    const failed = await loadAndGenerate(page);
    updated.hooks.cut.delete(cut);
    assert.equal(failed.error?.name, "NetworkError", JSON.stringify(failed));
    const partial = await storedHashes(page);
    assert.deepEqual(oldHashes.filter((h) => !partial.includes(h)), [], "the old version's shards are kept");
    assert.ok(hashes.some((h) => partial.includes(h)), "the new version's verified shards are kept");
    const listed = await page.evaluate(() => Hearth.cache.list());
    assert.equal(listed.length, 1);
    assert.equal(listed[0].complete, true, "a complete version is stored");
    assert.equal(await page.evaluate(() => Hearth.cache.has("/models/small/")), true);

    // Offline, the old version loads and gives its tokens.
    await context.setOffline(true);
    const offline = await loadAndGenerate(page);
    await context.setOffline(false);
    assert.deepEqual(offline, first, "offline, the old version runs");

    // Online again, the update resumes; once whole, only the new version is stored.
    updated.log.length = 0;
    const done = await loadAndGenerate(page);
    assert.equal(done.error, undefined, JSON.stringify(done.error));
    assert.notDeepEqual(done.ids, first.ids);
    const fetched = updated.requests("/models/small/shard-").map((e) => path.basename(e.path));
    assert.deepEqual(fetched.sort(), files.filter((_, i) => !partial.includes(hashes[i])).sort(), "only the missing shards are fetched");
    assert.deepEqual((await storedHashes(page)).sort(), [...hashes].sort(), "the old version's shards are gone");
    const [entry] = await page.evaluate(() => Hearth.cache.list());
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
    assert.equal(entry.bytes, manifest.shards.reduce((n, s) => n + s.size, 0));
  } finally {
    await context.close();
    await updated.close();
    fs.rmSync(swap, { recursive: true, force: true });
  }
});
