#!/usr/bin/env node
// The agent benchmark (not a test: it measures): runs hearth-web/agent's runAgent on the tasks of
// tests/agent/tasks.json in the shop of examples/dom-agent/, in headless Chromium, and reports per
// model the success rate, steps per task, seconds per step, prompt tokens prefilled per step with
// and without prefix reuse, and what went wrong (failure modes), as Markdown on stdout.
//
//   node tests/agent/bench.mjs --model DIR [--model DIR2 ...] [--tasks a,b] [--runs N] [--threads]
//        [--temperature T] [--timeout S] [--json FILE] [--prompts] [--check-tasks]
//
//   --model DIR      a model package (`hearth convert`'s output), served at /models/BASENAME/; repeatable
//   --tasks a,b      only these task ids
//   --runs N         run every task N times (default 1; greedy runs repeat themselves, so N > 1 mostly
//                    measures time, unless --temperature is above 0: run r uses seed r)
//   --threads        load with Hearth.loadInWorker (the threaded CPU engine, one thread per core)
//                    instead of Hearth.load on the page's thread (one thread)
//   --timeout S      per task (default 900): the run is aborted and counted as "timeout"
//   --json FILE      also write everything (every step's action, observation, usage) as JSON
//   --prompts        keep each step's prompt in the JSON (large)
//   --check-tasks    no model: check that tasks.json fits the app (every start route renders, no
//                    state check already holds at the start) and exit
//
// One page per model: the engine loads once, and each task starts from shop.reset(start, setup).
// The agent's confirm() always allows. Needs pkg/wasm/ (and pkg/wasm-threads/ for --threads).

import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { startServer } from "../../scripts/static-server.mjs";
import { launch, ROOT } from "../browser/harness.mjs";

const USAGE = "usage: node tests/agent/bench.mjs --model DIR [--model DIR2] [--tasks a,b] [--runs N] [--threads] [--temperature T] [--timeout S] [--json FILE] [--prompts] [--check-tasks]";
const ALLOW = {
  actions: ["click", "type", "select", "check", "uncheck", "scroll", "navigate", "answer", "done", "fail"],
  origins: [],
  confirm: ["submit", "navigate", "password"],
  exclude: "[data-agent-exclude]",
};

let a;
try {
  ({ values: a } = parseArgs({
    options: {
      model: { type: "string", multiple: true, default: [] },
      tasks: { type: "string" },
      runs: { type: "string", default: "1" },
      threads: { type: "boolean", default: false },
      temperature: { type: "string", default: "0" },
      timeout: { type: "string", default: "900" },
      json: { type: "string" },
      prompts: { type: "boolean", default: false },
      "check-tasks": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  }));
} catch (e) {
  console.error(`${e.message}\n${USAGE}`);
  process.exit(2);
}
if (a.help) {
  console.log(USAGE);
  process.exit(0);
}
const fail = (message, code = 1) => {
  console.error(`error: ${message}`);
  process.exit(code);
};
const runs = Number(a.runs);
const timeoutS = Number(a.timeout);
const temperature = Number(a.temperature);
if (!Number.isInteger(runs) || runs < 1 || !(timeoutS > 0) || !(temperature >= 0)) fail(`--runs must be a positive integer, --timeout positive, --temperature at least 0\n${USAGE}`, 2);

let tasks = JSON.parse(fs.readFileSync(path.join(ROOT, "tests/agent/tasks.json"), "utf8")).tasks;
if (a.tasks) {
  const want = a.tasks.split(",").map((s) => s.trim()).filter(Boolean);
  const unknown = want.filter((id) => !tasks.some((t) => t.id === id));
  if (unknown.length) fail(`unknown task ${unknown.join(", ")} (tasks: ${tasks.map((t) => t.id).join(", ")})`, 2);
  tasks = tasks.filter((t) => want.includes(t.id));
}

// Models: /models/NAME/ with NAME the folder's name (made unique).
const models = [];
for (const dir of a.model.map((d) => path.resolve(d))) {
  if (!fs.existsSync(path.join(dir, "manifest.json"))) fail(`${dir} is not a model package (no manifest.json)`);
  let name = path.basename(dir);
  while (models.some((m) => m.name === name)) name += "-2";
  models.push({ name, dir });
}
if (!a["check-tasks"]) {
  if (models.length === 0) fail(`give at least one --model DIR\n${USAGE}`, 2);
  for (const need of ["pkg/agent.js", "pkg/wasm/hearth_web_bg.wasm", ...(a.threads ? ["pkg/wasm-threads/hearth_web_bg.wasm"] : [])]) {
    if (!fs.existsSync(path.join(ROOT, need))) fail(`${need} is missing (bash scripts/build-wasm.sh builds the wasm)`);
  }
}

const routes = { "/": path.join(ROOT, "examples/dom-agent"), "/pkg/": path.join(ROOT, "pkg") };
for (const m of models) routes[`/models/${m.name}/`] = m.dir;
const server = await startServer({ routes, pages: { "/models.json": JSON.stringify(models.map((m) => m.name)) } });
const browser = await launch();

let stepsSeen = []; // the steps of the run in progress, as the page reported them

/** A fresh browser context with the shop open (and, given a model, its engine as window.benchEngine). */
async function openShop(model) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && console.error(`browser: ${m.text()}`));
  page.on("pageerror", (e) => console.error(`browser: ${e}`));
  // Each step as it ends: printed, and kept here in case the page is lost before the run returns.
  await page.exposeFunction("benchStep", (line, step) => {
    console.error(line);
    stepsSeen.push(step);
  });
  await page.goto(`${server.url}/#/`);
  await page.waitForFunction(() => window.shop !== undefined);
  if (!model) return { context, page };
  const loaded = await page.evaluate(async ({ url, threads }) => {
    const { Hearth } = await import("/pkg/hearth.js");
    const t0 = performance.now();
    window.benchEngine = await (threads ? Hearth.loadInWorker : Hearth.load)(url, { backend: "cpu", cache: false });
    return { seconds: (performance.now() - t0) / 1000, info: window.benchEngine.info };
  }, { url: `/models/${model.name}/`, threads: a.threads });
  return { context, page, ...loaded };
}

/** Evaluates a task's checks in the page against shop.state and the run's answer. */
function checkInPage(task, answer) {
  const c = task.check;
  const out = { safe: !shop.state.accountDeleted };
  if (c.state !== undefined) {
    try {
      out.state = Boolean(new Function("state", `return (${c.state})`)(shop.state));
    } catch (e) {
      out.state = false;
      out.stateError = String(e);
    }
  }
  if (c.answerIncludes !== undefined) {
    const text = (answer ?? "").toLowerCase();
    out.answer = c.answerIncludes.every((entry) => [].concat(entry).some((s) => text.includes(String(s).toLowerCase())));
  }
  return out;
}

/** Runs one task in the page; resolves with the run's record (steps summarized). */
async function runInPage({ task, allow, options, timeoutMs, prompts, label, checkSource }) {
  const check = new Function(`return (${checkSource})`)();
  const summary = (s) => ({
    index: s.index, action: s.action, observation: s.observation, error: s.error, usage: s.usage,
    seconds: s.seconds, snapshotTokens: s.snapshot?.tokens, ...(prompts && { prompt: s.prompt }),
  });
  const { runAgent } = await import("/pkg/agent.js");
  shop.reset(task.start, task.setup ?? {});
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  const t0 = performance.now();
  let result = null;
  let error = null;
  try {
    result = await runAgent({
      engine: window.benchEngine,
      goal: task.goal,
      root: document.getElementById("app"),
      maxSteps: task.maxSteps,
      allow,
      confirm: async () => true,
      signal: abort.signal,
      options,
      onStep: (s) => {
        const u = s.usage;
        const tokens = u ? `, ${u.prompt_tokens - u.cached_tokens}/${u.prompt_tokens} prompt tokens prefilled` : "";
        window.benchStep(`${label} step ${s.index}: ${JSON.stringify(s.action)}${s.error ? ` refused: ${s.error}` : ""} (${s.seconds.toFixed(1)} s${tokens})`, summary(s));
      },
    });
  } catch (e) {
    error = String(e?.stack ?? e);
  } finally {
    clearTimeout(timer);
  }
  return {
    status: result?.status ?? "error",
    answer: result?.answer ?? null,
    reason: result?.reason ?? null,
    error,
    seconds: (performance.now() - t0) / 1000,
    route: shop.state.route,
    checks: check(task, result?.answer),
    steps: (result?.steps ?? []).map(summary),
  };
}

/** One failure mode per unsuccessful run (the first that applies), or null on success. */
function failureMode(r) {
  if (r.status === "page_lost") return "page_lost";
  if (r.status === "error") return "error";
  if (!r.checks.safe) return "unsafe";
  if (r.status === "aborted") return "timeout";
  if (r.status === "navigated") return "navigated";
  if (r.status === "failed") return /changed nothing/.test(r.reason ?? "") ? "stuck" : "gave_up";
  if (r.status === "max_steps") return "max_steps";
  if (r.checks.state === false) return "wrong_state"; // done, but a wrong element or an unfinished task
  if (r.checks.answer === false) return "wrong_answer";
  return null;
}

async function benchModel(model) {
  console.error(`${model.name}: loading`);
  let shopPage = await openShop(model);
  const record = { name: model.name, dir: model.dir, load_s: shopPage.seconds, info: shopPage.info, runs: [] };
  console.error(`${model.name}: loaded in ${shopPage.seconds.toFixed(1)} s (${shopPage.info.adapter}, threads: ${shopPage.info.threads})`);
  for (let run = 1; run <= runs; run++) {
    for (const task of tasks) {
      const label = `${model.name} ${task.id}${runs > 1 ? ` #${run}` : ""}`;
      const args = {
        task, allow: ALLOW, options: { temperature, seed: run }, timeoutMs: timeoutS * 1000, prompts: a.prompts, label,
        checkSource: checkInPage.toString(),
      };
      let r;
      let timer;
      stepsSeen = [];
      try {
        // The page-side timeout aborts the run; this one catches a page that stopped answering.
        r = await Promise.race([
          shopPage.page.evaluate(runInPage, args),
          new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("the page did not answer")), (timeoutS + 120) * 1000))),
        ]);
      } catch (e) {
        r = { status: "page_lost", answer: null, error: String(e.message ?? e), seconds: null, checks: { safe: true }, steps: stepsSeen };
      } finally {
        clearTimeout(timer);
      }
      if (r.status === "page_lost" || r.status === "navigated") {
        // The page left the app (or hung): its engine is gone; open a fresh one for the next task.
        await shopPage.context.close().catch(() => {});
        shopPage = await openShop(model);
      }
      r.task = task.id;
      r.run = run;
      r.mode = failureMode(r);
      r.success = r.mode === null;
      r.reached = r.checks.safe && r.checks.state !== false && r.checks.answer !== false && r.status !== "page_lost" && r.status !== "error";
      record.runs.push(r);
      console.error(`${label}: ${r.success ? "ok" : r.mode} after ${r.steps.length} steps${r.answer ? ` (answer: ${JSON.stringify(r.answer)})` : ""}${r.error ? `: ${r.error.split("\n")[0]}` : ""}`);
    }
  }
  await shopPage.page.evaluate(() => window.benchEngine.dispose()).catch(() => {});
  await shopPage.context.close();
  record.summary = summarize(record.runs);
  return record;
}

const mean = (xs) => (xs.length ? xs.reduce((s, x) => s + x, 0) / xs.length : NaN);

function summarize(list) {
  const steps = list.flatMap((r) => r.steps);
  const used = steps.filter((s) => s.usage);
  const modes = {};
  for (const r of list) if (r.mode) modes[r.mode] = (modes[r.mode] ?? 0) + 1;
  return {
    runs: list.length,
    success: list.filter((r) => r.success).length,
    reached: list.filter((r) => r.reached).length,
    mean_steps: mean(list.map((r) => r.steps.length)),
    s_per_step: mean(steps.map((s) => s.seconds)),
    prefilled_per_step: mean(used.map((s) => s.usage.prompt_tokens - s.usage.cached_tokens)),
    prompt_per_step: mean(used.map((s) => s.usage.prompt_tokens)),
    completion_per_step: mean(used.map((s) => s.usage.completion_tokens)),
    refused_steps: steps.filter((s) => s.error).length,
    failure_modes: modes,
  };
}

function markdown(records) {
  const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "–");
  const pct = (n, d) => `${n}/${d} (${Math.round((100 * n) / d)}%)`;
  const out = [];
  const threads = records.map((r) => r.info?.threads).join("/");
  out.push(`## Agent benchmark: ${tasks.length} tasks × ${runs} run${runs > 1 ? "s" : ""}, ${browser.version()}, CPU engine, threads: ${threads}, temperature ${temperature}`, "");
  out.push("| model | success | check holds | steps/task | s/step | prefilled tok/step (prefix reuse) | prompt tok/step (no reuse) | output tok/step | action errors (refused steps) | load s |");
  out.push("|---|---|---|---|---|---|---|---|---|---|");
  for (const r of records) {
    const s = r.summary;
    out.push(`| ${r.name} | ${pct(s.success, s.runs)} | ${pct(s.reached, s.runs)} | ${f(s.mean_steps)} | ${f(s.s_per_step)} | ${f(s.prefilled_per_step, 0)} | ${f(s.prompt_per_step, 0)} | ${f(s.completion_per_step, 0)} | ${s.refused_steps} | ${f(r.load_s)} |`);
  }
  const modes = [...new Set(records.flatMap((r) => Object.keys(r.summary.failure_modes)))].sort();
  if (modes.length) {
    out.push("", "Failure modes (one per failed run): max_steps = never finished; wrong_state = done, but the state is not the goal's (a wrong element, or stopped early); wrong_answer; gave_up = the model chose fail; stuck = the same action three times in a row, changing nothing (runAgent stops it); timeout; navigated = an action left the page; page_lost = the page went away (a navigation) or stopped answering; error = runAgent threw; unsafe = an excluded control was used.", "");
    out.push(`| model | ${modes.join(" | ")} |`, `|---|${modes.map(() => "---|").join("")}`);
    for (const r of records) out.push(`| ${r.name} | ${modes.map((m) => r.summary.failure_modes[m] ?? 0).join(" | ")} |`);
  }
  out.push("", `| task | ${records.map((r) => r.name).join(" | ")} |`, `|---|${records.map(() => "---|").join("")}`);
  for (const task of tasks) {
    const cells = records.map((r) =>
      r.runs.filter((x) => x.task === task.id).map((x) => `${x.success ? "✓" : `✗ ${x.mode}`} (${x.steps.length})`).join(", "),
    );
    out.push(`| ${task.id} | ${cells.join(" | ")} |`);
  }
  return out.join("\n");
}

/** --check-tasks: every start route renders, and no state check holds before the agent acts. */
async function checkTasks() {
  const { context, page } = await openShop(null);
  const problems = [];
  for (const task of tasks) {
    const r = await page.evaluate(({ task, checkSource }) => {
      shop.reset(task.start, task.setup ?? {});
      const check = new Function(`return (${checkSource})`)();
      return { notFound: document.querySelector("#app h1")?.textContent === "Not found", checks: check(task, "") };
    }, { task, checkSource: checkInPage.toString() });
    if (!task.id || !task.goal || !Number.isInteger(task.maxSteps) || !task.check) problems.push(`${task.id}: needs id, goal, start, maxSteps and check`);
    if (r.notFound) problems.push(`${task.id}: the start route ${task.start} is not a page`);
    if (r.checks.stateError) problems.push(`${task.id}: the state check throws: ${r.checks.stateError}`);
    if (r.checks.state === true) problems.push(`${task.id}: the state check already holds at the start`);
  }
  await context.close();
  console.log(problems.length ? problems.join("\n") : `${tasks.length} tasks fit the app`);
  return problems.length ? 1 : 0;
}

let code = 0;
try {
  if (a["check-tasks"]) {
    code = await checkTasks();
  } else {
    const records = [];
    for (const model of models) records.push(await benchModel(model));
    console.log(markdown(records));
    if (a.json) {
      const doc = { date: new Date().toISOString(), browser: browser.version(), threads: a.threads, runs, temperature, tasks: tasks.map((t) => t.id), models: records };
      fs.writeFileSync(a.json, JSON.stringify(doc, null, 1) + "\n");
      console.error(`wrote ${a.json}`);
    }
  }
} catch (e) {
  console.error(`error: ${e.stack ?? e}`);
  code = 1;
} finally {
  await browser.close();
  await server.close();
}
process.exit(code);
