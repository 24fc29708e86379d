// tests/browser/generate.mjs, the headless command that scripts and benchmarks use, prints what
// `hearth generate --json` prints: the same keys in the same order, the same ids and text.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { MINUTES, nativeGenerate, ROOT, SMOLLM2 } from "./harness.mjs";

const run = promisify(execFile);

test("generate.mjs prints the CLI's JSON, with the CLI's ids", { timeout: 4 * MINUTES }, async () => {
  const prompt = "The capital of France is";
  const native = nativeGenerate({ prompt, maxTokens: 2 });
  const script = path.join(ROOT, "tests/browser/generate.mjs");
  // The CLI's own flags (--json, --backend gpu) are accepted too.
  const { stdout } = await run(process.execPath, [script, "--model", SMOLLM2, "--backend", "gpu", "--json", "--max-tokens", "2", "--prompt", prompt]);
  const lines = stdout.trim().split("\n");
  assert.equal(lines.length, 1, "one line of JSON");
  const got = JSON.parse(lines[0]);
  assert.deepEqual(Object.keys(got), Object.keys(native));
  assert.deepEqual(Object.keys(got.usage), Object.keys(native.usage));
  for (const k of ["prompt_ids", "ids", "text", "finish_reason", "top_logits"]) assert.deepEqual(got[k], native[k], k);
  assert.equal(got.usage.prompt_tokens, native.usage.prompt_tokens);
  assert.equal(got.usage.completion_tokens, native.usage.completion_tokens);

  // A directory that is not a package: exit status 1 and a message, nothing on stdout.
  const bad = await run(process.execPath, [script, "--model", path.join(ROOT, "tests"), "--prompt", prompt]).catch((e) => e);
  assert.equal(bad.code, 1);
  assert.equal(bad.stdout, "");
  assert.match(bad.stderr, /not a model package/);
});
