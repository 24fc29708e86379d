// The demo's static server (scripts/static-server.mjs) answers hostile request paths with an error
// status and keeps serving: malformed percent-escapes, NUL bytes, paths that climb out of the served
// folder, and paths that are not paths at all. Raw requests (fetch would normalise the paths first).

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startServer } from "../../scripts/static-server.mjs";

/** GET `rawPath` exactly as written; resolves to the status (or the socket error's code). */
function get(url, rawPath) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const req = http.request({ hostname, port, path: rawPath, method: "GET" }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", (e) => resolve(e.code));
    req.end();
  });
}

test("hostile request paths get 4xx answers and the server keeps serving", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-static-"));
  fs.writeFileSync(path.join(root, "index.html"), "<p>ok</p>");
  const server = await startServer({ routes: { "/": root } });
  try {
    const hostile = {
      "/%E0%A4%A": 400, // a cut-off UTF-8 escape: decodeURIComponent throws URIError
      "/%": 400,
      "/%zz": 400,
      "/%00": 400, // NUL: the file system calls throw on it
      "/index.html%00.png": 400,
      "/a/%2e%2e/%2e%2e/%2e%2e/etc/passwd": 404, // the URL parser resolves the dots: /etc/passwd inside the root
      "/..%2f..%2f..%2fetc%2fpasswd": 403,
      "/%2e%2e%5c%2e%2e%5cwindows": 404, // backslashes are names on POSIX, not separators
      [`/${"a/".repeat(2000)}`]: 404,
      "/does-not-exist.wasm": 404,
    };
    for (const [rawPath, status] of Object.entries(hostile)) {
      assert.equal(await get(server.url, rawPath), status, rawPath.slice(0, 60));
    }
    // Still up, and still right.
    assert.equal(await get(server.url, "/index.html"), 200);
    assert.equal(await get(server.url, "/"), 200);
  } finally {
    await server.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** GET `rawPath` with `headers`; resolves to {status, headers, body}. */
function getWith(url, rawPath, headers) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname, port, path: rawPath, method: "GET", headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("byte ranges: one range gets 206 and those bytes, a range past the end 416, others the whole file; noRange ignores them", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-static-"));
  const bytes = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff));
  fs.writeFileSync(path.join(root, "model.gguf"), bytes);
  const server = await startServer({ routes: { "/": root } });
  try {
    const cases = [
      ["bytes=0-99", 206, 0, 99],
      ["bytes=990-", 206, 990, 999],
      ["bytes=-10", 206, 990, 999],
      ["bytes=500-5000", 206, 500, 999],
      ["bytes=0-1,5-6", 200, 0, 999], // several ranges: not served as ranges here
      ["bytes=9-3", 200, 0, 999],
    ];
    for (const [range, status, start, end] of cases) {
      const r = await getWith(server.url, "/model.gguf", { Range: range });
      assert.equal(r.status, status, range);
      assert.deepEqual(r.body, bytes.subarray(start, end + 1), range);
      assert.equal(r.headers["accept-ranges"], "bytes", range);
      assert.equal(r.headers["last-modified"], fs.statSync(path.join(root, "model.gguf")).mtime.toUTCString(), range);
      if (status === 206) assert.equal(r.headers["content-range"], `bytes ${start}-${end}/1000`, range);
    }
    const past = await getWith(server.url, "/model.gguf", { Range: "bytes=1000-" });
    assert.equal(past.status, 416);
    assert.equal(past.headers["content-range"], "bytes */1000");
    assert.equal(server.log.at(-1).status, 416);
    assert.deepEqual(server.log.at(-4).range, [500, 999]);
    server.hooks.noRange.set("/model.gguf", true);
    const ignored = await getWith(server.url, "/model.gguf", { Range: "bytes=0-99" });
    assert.equal(ignored.status, 200);
    assert.equal(ignored.headers["accept-ranges"], undefined);
    assert.deepEqual(ignored.body, bytes);
    assert.equal(server.log.at(-1).sent, 1000);
  } finally {
    await server.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
});
