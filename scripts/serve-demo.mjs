#!/usr/bin/env node
// Serves the demo: www/ at /, the npm package (pkg/, with the wasm that scripts/build-wasm.sh
// builds) at /pkg/, and the converted model packages (.cache/packages/) at /models/, with the right
// MIME types and COOP/COEP headers. Prints the URL to open.
//
//   node scripts/serve-demo.mjs [--port 8080] [--host 127.0.0.1]
//
// When the port is taken, the next free one (up to +20) is used.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startServer } from "./static-server.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** The demo's routes; the browser test serves exactly these. */
export function demoRoutes({ models = path.join(ROOT, ".cache/packages") } = {}) {
  // /gguf/: the GGUF files fetched into .cache/models, to paste into the demo (inspected from
  // their headers by range requests).
  return { "/": path.join(ROOT, "www"), "/pkg/": path.join(ROOT, "pkg"), "/models/": models, "/gguf/": path.join(ROOT, ".cache/models") };
}

async function main() {
  const { values } = parseArgs({
    options: { port: { type: "string", default: process.env.PORT ?? "8080" }, host: { type: "string", default: "127.0.0.1" } },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`error: --port ${values.port} is not a port number`);
    process.exit(2);
  }
  for (const need of ["pkg/wasm/hearth_web_bg.wasm", ".cache/packages/smollm2-135m-instruct/manifest.json"]) {
    if (!fs.existsSync(path.join(ROOT, need))) {
      console.error(`warning: ${need} is missing; \`make demo\` builds and converts it`);
    }
  }
  for (let p = port; ; p++) {
    try {
      const server = await startServer({ routes: demoRoutes(), port: p, host: values.host });
      console.log(`Hearth demo: open ${server.url}/ in Chrome (Ctrl+C stops the server)`);
      return;
    } catch (e) {
      if (e.code !== "EADDRINUSE" || port === 0 || p >= port + 20) {
        console.error(`error: cannot listen on ${values.host}:${p}: ${e.message}`);
        process.exit(1);
      }
    }
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
