#!/usr/bin/env node
// Serves the agent example: this folder at /, the npm package (pkg/, with the wasm `make demo`
// builds) at /pkg/, the model packages (.cache/packages/) at /models/, and /models.json, the names
// of those packages (the panel's model list; a static server cannot list folders). Cross-origin
// isolated (COOP + COEP), so the worker's CPU engine runs on several threads.
//
//   node examples/dom-agent/serve.mjs [--port 8090] [--host 127.0.0.1]

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startServer } from "../../scripts/static-server.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const MODELS = path.join(ROOT, ".cache/packages");

/** Names of the model packages in `dir` (folders with a manifest.json). */
function modelNames(dir = MODELS) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((n) => fs.existsSync(path.join(dir, n, "manifest.json"))).sort();
}

/** The example's routes and pages (the browser test serves exactly these, with its own models). */
export function exampleServer(models = MODELS) {
  return {
    routes: { "/": HERE, "/pkg/": path.join(ROOT, "pkg"), "/models/": models },
    pages: { "/models.json": JSON.stringify(modelNames(models)) },
  };
}

async function main() {
  const { values } = parseArgs({
    options: { port: { type: "string", default: process.env.PORT ?? "8090" }, host: { type: "string", default: "127.0.0.1" } },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`error: --port ${values.port} is not a port number`);
    process.exit(2);
  }
  for (const need of ["pkg/wasm/hearth_web_bg.wasm", "pkg/agent.js", ".cache/packages/smollm2-135m-instruct/manifest.json"]) {
    if (!fs.existsSync(path.join(ROOT, need))) console.error(`warning: ${need} is missing; \`make demo\` builds the wasm and converts the model`);
  }
  try {
    const server = await startServer({ ...exampleServer(), port, host: values.host });
    console.log(`Hearth agent example: open ${server.url}/ (Ctrl+C stops the server)`);
  } catch (e) {
    console.error(`error: cannot listen on ${values.host}:${port}: ${e.message}`);
    process.exit(1);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
