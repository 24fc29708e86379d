// The agent panel: loads a model (lazily, on the first Run, in a Web Worker so the shop stays
// responsive) and runs Hearth's in-page agent on the shop (#app) with the goal typed here, showing
// each step as it happens. The package is imported on demand, so the shop works without it.

const $ = (id) => document.getElementById(id);
const DEFAULT_MODEL = "smollm2-135m-instruct";
const engines = new Map(); // model name -> Promise<engine>; one at a time (memory)
let running = null; // the AbortController of the run in progress

/** The model packages the server offers (serve.mjs answers /models.json); the default if none. */
async function listModels() {
  let names = [];
  try {
    names = await (await fetch("/models.json")).json();
  } catch {
    return; // another server: keep the default option
  }
  if (!Array.isArray(names) || names.length === 0) return;
  $("agent-model").replaceChildren(...names.map((n) => new Option(n, n, false, n === DEFAULT_MODEL)));
}

function showProgress({ phase, loaded, total }) {
  const mb = (n) => (n / 1e6).toFixed(0);
  const what = { download: "Downloading the model", cache: "Reading the stored model", memory: "Loading the model into memory" }[phase];
  if (what) $("agent-status").textContent = `${what}: ${mb(loaded)} of ${mb(total)} MB`;
}

function engineFor(name, signal) {
  for (const [other, engine] of engines) {
    if (other === name) continue;
    engines.delete(other);
    engine.then((e) => e.dispose()).catch(() => {});
  }
  if (!engines.has(name)) {
    const engine = import("/pkg/hearth.js").then(({ Hearth }) =>
      Hearth.loadInWorker(`/models/${name}/`, { backend: "cpu", onProgress: showProgress, signal }),
    );
    engine.catch(() => engines.delete(name)); // a failed or stopped load is tried again next time
    engines.set(name, engine);
  }
  return engines.get(name);
}

/** Asks the user about `action` in the panel's dialog; resolves true for Allow. */
function confirmAction(action, { reasons = [], element = null, url = null } = {}) {
  const dialog = $("agent-confirm");
  const why = { submit: "submit a form", navigate: `open ${url}`, password: "type into a password field" };
  const what = reasons.map((r) => why[r]).filter(Boolean).join(" and ") || action.action;
  const label = element && (element.getAttribute("aria-label") || element.textContent.trim() || element.name);
  $("agent-confirm-text").textContent = `${what}${label ? ` (“${label}”)` : ""}. Action: ${describe(action)}`;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "allow"), { once: true }));
}

function describe(action) {
  const { action: name, ...rest } = action ?? {};
  const args = Object.entries(rest).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return `${name ?? "?"} ${args.join(" ")}`.trim();
}

function showStep(step) {
  const li = document.createElement("li");
  const head = document.createElement("div");
  head.className = "action";
  head.textContent = describe(step.action);
  const meta = document.createElement("span");
  meta.className = "meta";
  const u = step.usage;
  meta.textContent = ` ${step.seconds?.toFixed(1) ?? "?"} s` + (u ? `, ${u.prompt_tokens - (u.cached_tokens ?? 0)} new prompt tokens` : "");
  head.append(meta);
  li.append(head);
  for (const [cls, text] of [["observation", step.observation], ["error", step.error]]) {
    if (!text) continue;
    const p = document.createElement("div");
    p.className = cls;
    p.textContent = text;
    li.append(p);
  }
  if (step.prompt) {
    const details = document.createElement("details");
    const pre = document.createElement("pre");
    pre.textContent = step.prompt.map((m) => `${m.role}:\n${m.content}`).join("\n\n");
    details.append(Object.assign(document.createElement("summary"), { textContent: "What the model saw" }), pre);
    li.append(details);
  }
  $("agent-steps").append(li);
  li.scrollIntoView({ block: "nearest" });
  $("agent-status").textContent = `Step ${step.index + 1}…`;
}

async function run() {
  const goal = $("agent-goal").value.trim();
  if (!goal || running) return;
  running = new AbortController();
  const { signal } = running;
  $("agent-run").disabled = true;
  $("agent-stop").disabled = false;
  $("agent-steps").replaceChildren();
  $("agent-result").textContent = "";
  try {
    const { runAgent } = await import("/pkg/agent.js");
    $("agent-status").textContent = "Loading the model…";
    const engine = await engineFor($("agent-model").value, signal);
    $("agent-status").textContent = "Step 1…";
    const result = await runAgent({
      engine,
      goal,
      root: $("app"),
      maxSteps: Number($("agent-max-steps").value) || 12,
      allow: {
        actions: ["click", "type", "select", "check", "uncheck", "scroll", "navigate", "answer", "done", "fail"],
        origins: [],
        confirm: ["submit", "navigate", "password"],
        exclude: "[data-agent-exclude]",
      },
      confirm: confirmAction,
      signal,
      onStep: showStep,
      options: { temperature: 0, seed: 1 },
    });
    const words = { done: "Done", failed: "The agent gave up", max_steps: "Out of steps", aborted: "Stopped", navigated: "The page was left" };
    $("agent-status").textContent = `${words[result.status] ?? result.status} after ${result.steps.length} ${result.steps.length === 1 ? "step" : "steps"}.`;
    if (result.answer) $("agent-result").textContent = `Answer: ${result.answer}`;
  } catch (e) {
    $("agent-status").textContent = signal.aborted ? "Stopped." : `Error: ${e.message ?? e}`;
    if (!signal.aborted) console.error(e);
  } finally {
    running = null;
    $("agent-run").disabled = false;
    $("agent-stop").disabled = true;
  }
}

$("agent-run").addEventListener("click", run);
$("agent-stop").addEventListener("click", () => {
  running?.abort();
  if ($("agent-confirm").open) $("agent-confirm").close(); // a pending question counts as Deny
});
for (const b of document.querySelectorAll("[data-goal]")) b.addEventListener("click", () => ($("agent-goal").value = b.dataset.goal));
listModels();
