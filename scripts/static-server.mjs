// A small static HTTP server for the demo (scripts/serve-demo.mjs) and the browser tests: serves
// directories under URL prefixes with the right MIME types and COOP/COEP headers, logs every
// request, answers single byte-range requests (206, as a GGUF URL's header is read) unless told to
// ignore them, and has hooks that break responses on purpose (corrupt bytes, cut a body short, fail
// with a status, replace a body, send it slowly).

import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".webmanifest": "application/manifest+json",
  ".bin": "application/octet-stream",
};

/** Writes `body` in 64 KiB pieces, `bytesPerSecond` on average; stops when the client goes away. */
function sendSlowly(res, headers, body, bytesPerSecond) {
  const piece = 64 << 10;
  res.writeHead(200, { ...headers, "Content-Length": body.length });
  let at = 0;
  let gone = false;
  res.on("close", () => (gone = true));
  const next = () => {
    if (gone) return;
    if (at >= body.length) return res.end();
    const end = Math.min(at + piece, body.length);
    res.write(body.subarray(at, end));
    setTimeout(next, ((end - at) / bytesPerSecond) * 1000);
    at = end;
  };
  next();
}

/**
 * The byte range `header` asks of a file of `size` bytes: {start, end} (end inclusive), "unsatisfiable"
 * (416), or null when the header is absent or not one range of bytes (then the whole file is sent,
 * as RFC 9110 allows).
 */
export function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header ?? "");
  if (!m || (m[1] === "" && m[2] === "")) return null;
  if (m[1] === "") {
    // The last n bytes.
    const n = Number(m[2]);
    return n === 0 || size === 0 ? "unsatisfiable" : { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (m[2] !== "" && Number(m[2]) < start) return null; // invalid: ignored
  return start >= size ? "unsatisfiable" : { start, end };
}

/**
 * @param {{ routes: Record<string, string>, pages?: Record<string, string>, port?: number, host?: string, isolated?: boolean }} options
 *   routes: URL prefix ("/pkg/") -> directory; pages: exact path -> HTML served as is; isolated:
 *   send COOP + COEP (default), which make pages cross-origin isolated (the threaded CPU engine).
 */
export async function startServer({ routes, pages = {}, port = 0, host = "127.0.0.1", isolated = true }) {
  /** Every request, in order: { method, path, status }, and for a file streamed (a range, or one
   * in hooks.noRange) `range` ([start, end], end inclusive), `sent` (bytes handed to the socket so
   * far) and, once the response is closed, `finished` (false: the client went away before the end). */
  const log = [];
  const hooks = {
    /** path -> true: flip one byte in the middle of the body. */
    corrupt: new Map(),
    /** path -> n: send the headers and n bytes of the body, then destroy the socket. */
    cut: new Map(),
    /** path -> n: send the headers and n bytes of the body, then nothing, keeping the socket open. */
    stall: new Map(),
    /** path -> HTTP status to answer with instead. */
    status: new Map(),
    /** path -> Buffer or string served instead of the file. */
    replace: new Map(),
    /** path -> bytes per second: send the body in 64 KiB pieces at that pace. */
    throttle: new Map(),
    /** path -> true: ignore Range headers, as servers without range support do (200, the whole file). */
    noRange: new Map(),
  };
  const prefixes = Object.keys(routes).sort((a, b) => b.length - a.length);

  const server = http.createServer((req, res) => {
    try {
      serve(req, res);
    } catch (e) {
      // Whatever a request holds, the server answers it and keeps serving the next one.
      if (!res.headersSent) res.writeHead(500, { "Content-Type": "text/plain; charset=utf-8" });
      res.end(`internal error: ${e.message}\n`);
    }
  });

  /** The request's path, percent-decoded, or null when it cannot name a file: a malformed escape,
   * a NUL byte (which the file system APIs reject by throwing) or a path that is not absolute. */
  const decodePath = (url) => {
    try {
      const decoded = decodeURIComponent(new URL(url, "http://x").pathname);
      return decoded.includes("\0") || !decoded.startsWith("/") ? null : decoded;
    } catch {
      return null;
    }
  };

  const serve = (req, res) => {
    const urlPath = decodePath(req.url);
    const entry = { method: req.method, path: urlPath ?? req.url, status: 200 };
    log.push(entry);
    const isolation = {
      "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Embedder-Policy": "require-corp",
      "Cross-Origin-Resource-Policy": "same-origin",
    };
    const headers = { ...(isolated ? isolation : {}), "Cache-Control": "no-cache" };
    const send = (status, body, type) => {
      entry.status = status;
      res.writeHead(status, { ...headers, "Content-Type": type ?? "text/plain; charset=utf-8" });
      res.end(body);
    };
    if (urlPath === null) return send(400, "bad request path\n");
    if (hooks.status.has(urlPath)) return send(hooks.status.get(urlPath), "failing on purpose\n");
    if (pages[urlPath] !== undefined) return send(200, pages[urlPath], TYPES[".html"]);
    const prefix = prefixes.find((p) => urlPath.startsWith(p));
    if (!prefix) return send(404, "not found\n");
    const root = path.resolve(routes[prefix]);
    let file = path.resolve(root, "." + urlPath.slice(prefix.length - 1));
    if (file !== root && !file.startsWith(root + path.sep)) return send(403, "outside the served folder\n");
    if (fs.statSync(file, { throwIfNoEntry: false })?.isDirectory()) file = path.join(file, "index.html");
    const type = TYPES[path.extname(file)] ?? "application/octet-stream";
    // Which version of the file this is (a GGUF load checks that a resume reads the same file).
    const mtime = fs.statSync(file, { throwIfNoEntry: false })?.mtime;
    if (mtime) headers["Last-Modified"] = mtime.toUTCString();
    if (hooks.replace.has(urlPath)) return send(200, hooks.replace.get(urlPath), type);
    const bodyHooks = [hooks.corrupt, hooks.stall, hooks.cut, hooks.throttle];
    if ((req.headers.range !== undefined || hooks.noRange.has(urlPath)) && !bodyHooks.some((h) => h.has(urlPath))) {
      return streamFile(req, res, file, { ...headers, "Content-Type": type }, entry, !hooks.noRange.has(urlPath));
    }
    fs.readFile(file, (err, body) => {
      if (err) return send(404, "not found\n");
      if (hooks.corrupt.has(urlPath)) {
        body = Buffer.from(body);
        body[body.length >> 1] ^= 0xff;
      }
      const stall = hooks.stall.get(urlPath);
      if (stall !== undefined) {
        entry.status = "stalled";
        res.writeHead(200, { ...headers, "Content-Type": type, "Content-Length": body.length });
        res.write(body.subarray(0, stall));
        return;
      }
      const cut = hooks.cut.get(urlPath);
      if (cut !== undefined) {
        entry.status = "cut";
        res.writeHead(200, { ...headers, "Content-Type": type, "Content-Length": body.length });
        res.write(body.subarray(0, cut), () => setTimeout(() => res.destroy(), 20));
        return;
      }
      const pace = hooks.throttle.get(urlPath);
      if (pace !== undefined) return sendSlowly(res, { ...headers, "Content-Type": type }, body, pace);
      send(200, body, type);
    });
  };
  /** The file (or the byte range asked of it, where `ranges`) streamed from disk, counting what is sent. */
  const streamFile = (req, res, file, headers, entry, ranges) => {
    const size = fs.statSync(file, { throwIfNoEntry: false })?.size;
    if (size === undefined) {
      entry.status = 404;
      res.writeHead(404, headers);
      return res.end("not found\n");
    }
    const range = ranges ? parseRange(req.headers.range, size) : null;
    const rangeHeaders = ranges ? { "Accept-Ranges": "bytes" } : {};
    if (range === "unsatisfiable") {
      entry.status = 416;
      res.writeHead(416, { ...headers, ...rangeHeaders, "Content-Range": `bytes */${size}` });
      return res.end();
    }
    const { start, end } = range ?? { start: 0, end: size - 1 };
    entry.status = range ? 206 : 200;
    entry.range = [start, end];
    entry.sent = 0;
    res.writeHead(entry.status, {
      ...headers,
      ...rangeHeaders,
      "Content-Length": end - start + 1,
      ...(range ? { "Content-Range": `bytes ${start}-${end}/${size}` } : {}),
    });
    if (size === 0 || req.method === "HEAD") return res.end();
    const stream = fs.createReadStream(file, { start, end });
    stream.on("data", (chunk) => (entry.sent += chunk.length));
    stream.on("error", () => res.destroy());
    res.on("close", () => {
      entry.finished = res.writableFinished; // false: the client went away first
      stream.destroy();
    });
    stream.pipe(res);
  };

  await new Promise((resolve, reject) => {
    server.once("error", reject); // EADDRINUSE and the like
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const url = `http://${host}:${server.address().port}`;
  return {
    url,
    log,
    hooks,
    /** Requests whose path starts with `prefix`. */
    requests: (prefix) => log.filter((e) => e.path.startsWith(prefix)),
    /** How many requests reached exactly `urlPath` since the log was last cleared. */
    count: (urlPath) => log.filter((e) => e.path === urlPath).length,
    /** Requests per path since the log was last cleared: { "/models/x/shard-00000.bin": 1, ... }. */
    counts: () => log.reduce((n, e) => ((n[e.path] = (n[e.path] ?? 0) + 1), n), {}),
    /** Clears the log and every hook. */
    reset: () => {
      log.length = 0;
      for (const hook of Object.values(hooks)) hook.clear();
    },
    // Connections a stalled answer keeps open would hold close() for ever: end them all.
    close: () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections();
      }),
  };
}
