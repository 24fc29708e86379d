// runAgent(): the loop. Each step: snapshot the page, ask the engine for one action under a schema
// that admits only what `allow` and this snapshot permit, carry it out (confirming what must be
// confirmed), and record what it changed. Stops on done/answer/fail, at maxSteps, on abort, or when
// an action leaves the page.

import { InvalidArgumentError } from "../errors.js";
import { randomHex } from "../chat.js";
import { snapshot } from "./snapshot.js";
import { AgentActionError, act, allowOf, describeAction } from "./actions.js";
import { actionSchema } from "./schema.js";
import { changes, instructions, NO_CHANGE, userMessage } from "./prompt.js";

// Options runAgent sets itself; the rest of `options` goes to the engine as given.
const OWN = ["response_format", "tools", "tool_choice", "signal", "stream"];
// An action is a short JSON object; the longest ("type"/"answer" with their text caps) fits.
const ACTION_TOKENS = 256;
// The same action this many times in a row, changing nothing each time: the model is stuck.
const STUCK = 3;

const isAbort = (e) => e?.name === "AbortError";

function check({ engine, goal, maxSteps, onStep, confirm, options }) {
  if (typeof engine?.generate !== "function" || typeof engine?.countTokens !== "function") throw new InvalidArgumentError("runAgent: engine must be a Hearth engine (from Hearth.load or Hearth.loadInWorker)");
  if (typeof goal !== "string" || goal.trim() === "") throw new InvalidArgumentError("runAgent: goal must be a non-empty string");
  if (!Number.isSafeInteger(maxSteps) || maxSteps < 1) throw new InvalidArgumentError(`runAgent: maxSteps must be an integer >= 1, got ${maxSteps}`);
  if (onStep !== undefined && typeof onStep !== "function") throw new InvalidArgumentError("runAgent: onStep must be a function");
  if (confirm !== undefined && typeof confirm !== "function") throw new InvalidArgumentError("runAgent: confirm must be a function");
  for (const k of OWN) if (options?.[k] !== undefined) throw new InvalidArgumentError(`runAgent: options.${k} is set by the agent`);
}

/** The page as the agent's prompt and change log see it. */
async function look(root, { maxTokens, engine, exclude }) {
  const doc = root.ownerDocument;
  const snap = await snapshot(root, { maxTokens, engine, exclude });
  const url = new URL(doc.location.href);
  return { snap, text: snap.text, location: url.pathname + url.search + url.hash, title: doc.title };
}

/**
 * Runs an agent on the page until it finishes. Returns `{status, answer, steps}`: status "done"
 * (with `answer` when the model answered), "failed", "max_steps", "aborted" or "navigated" (an
 * action left the page, which ends everything running in it). See hearth-web/agent's types.
 */
export async function runAgent(params = {}) {
  const { engine, goal, root = globalThis.document?.body, maxSteps = 10, allow, confirm, signal, onStep, maxTokens = 1200, options = {} } = params;
  check({ engine, goal, maxSteps, onStep, confirm, options });
  const allowed = allowOf(allow);
  const system = instructions(allowed);
  const fence = "page-" + randomHex().slice(0, 10);
  const history = [];
  const steps = [];
  const end = (status, answer = null, reason = null) => ({ status, answer, ...(reason !== null && { reason }), steps });
  const stuck = () => {
    const last = steps.slice(-STUCK);
    const same = (s) => JSON.stringify(s.action) === JSON.stringify(last[0].action) && (s.error || s.observation.endsWith(NO_CHANGE));
    return last.length === STUCK && last.every(same);
  };

  for (let index = 1; index <= maxSteps; index++) {
    if (signal?.aborted) return end("aborted");
    const started = performance.now();
    const before = await look(root, { maxTokens, engine, exclude: allowed.exclude });
    const schema = actionSchema(before.snap, allowed);
    if (!schema) return end("failed", null, "no allowed action is possible on this page");
    const messages = [
      { role: "system", content: system },
      { role: "user", content: userMessage({ goal, history, snap: before.snap, fence, location: before.location, title: before.title }) },
    ];
    const step = { index, action: null, observation: null, error: null, errorCode: null, prompt: messages, snapshot: before.snap, schema, usage: null, seconds: 0 };
    let out = null;
    try {
      // A model without a chat template (a base model) reads the same text as a plain prompt.
      const input = engine.info?.chatTemplate === false ? `${messages[0].content}\n\n${messages[1].content}\n` : messages;
      const r = await engine.generate(input, {
        max_tokens: ACTION_TOKENS,
        ...options,
        response_format: { type: "json_schema", json_schema: { name: "action", schema, strict: true } },
        signal,
      });
      step.usage = r.usage;
      step.action = JSON.parse(r.text); // the grammar only admits complete JSON; a cut-off text throws
      out = await act(before.snap, step.action, { root, allow: allowed, confirm, signal });
      step.observation = out.observation;
    } catch (e) {
      if (isAbort(e)) return end("aborted");
      if (e instanceof SyntaxError) [step.error, step.errorCode] = [`the action was cut off after ${options.max_tokens ?? ACTION_TOKENS} tokens`, "cut_off"];
      else if (e instanceof AgentActionError) [step.error, step.errorCode] = [e.message, e.code];
      else throw e;
    }
    if (out && !out.done && !out.failed && !out.navigated) {
      const after = await look(root, { maxTokens: 8 * maxTokens, exclude: allowed.exclude });
      step.observation += ": " + changes(before, after);
    }
    step.seconds = (performance.now() - started) / 1000;
    const record = step.action && before.snap.elements.find((e) => e.index === step.action.index);
    history.push(step.error ? `${step.action ? describeAction(step.action, record) + ": " : ""}refused: ${step.error}` : step.observation);
    steps.push(step);
    onStep?.(step);
    if (out?.done) return end("done", out.answer ?? null);
    if (out?.failed) return end("failed", null, out.reason);
    if (out?.navigated) return end("navigated");
    if (stuck()) return end("failed", null, `the same action ${STUCK} times in a row changed nothing`);
  }
  return end("max_steps");
}
