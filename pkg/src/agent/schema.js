// The JSON Schema of one agent step: built only from `allow` and the snapshot's elements (never from
// page text), it admits exactly the allowed actions on the elements that can take them, so the
// constrained model's every output is an action act() can carry out. An index the snapshot does not
// show, an option a select does not have, an action the user did not allow: none can be produced.

import { CHECKABLE, TYPABLE } from "./snapshot.js";

const MAX_TEXT = 200;
// A select's options are enumerated in its branch up to this many (act() checks the rest).
const MAX_ENUMERATED_OPTIONS = 100;

const object = (properties, required = Object.keys(properties)) => ({ type: "object", properties, required, additionalProperties: false });
const kind = (name) => ({ const: name });
const text = (max = MAX_TEXT) => ({ type: "string", minLength: 1, maxLength: max });
// An element is named before its index: a small model finds "Travel Kettle" (which the goal or the
// page says) far more reliably than the number 12, and once the name is written the grammar leaves
// only the indices of elements with that name. One branch per element keeps the pair consistent.
const target = (r) => ({ name: { const: r.name }, index: { const: r.index } });

/** Which kinds of element each action can use. */
const USES = {
  click: (r) => !TYPABLE.has(r.kind) && r.kind !== "select",
  type: (r) => TYPABLE.has(r.kind),
  check: (r) => CHECKABLE.has(r.kind) && !r.checked,
  uncheck: (r) => CHECKABLE.has(r.kind) && r.kind !== "radio" && r.checked,
  select: (r) => r.kind === "select" && !r.multiple && r.options.length > 0,
};

/** Whether a click on link `r` would open an origin `allow` does not grant (act() would refuse it). */
function foreign(r, allow) {
  if (r.kind !== "link" || !r.href) return false;
  let origin;
  try {
    origin = new URL(r.href).origin;
  } catch {
    return true;
  }
  return origin !== r.element.ownerDocument.location.origin && !allow.origins.includes(origin);
}

/** The step's schema: `{anyOf: [one object per allowed action]}`, or null when nothing is possible. */
export function actionSchema(snap, allow) {
  const usable = snap.elements.filter((r) => !r.disabled && !foreign(r, allow));
  const branches = [];
  for (const action of allow.actions) {
    const targets = USES[action] ? usable.filter(USES[action]) : null;
    if (targets && targets.length === 0) continue;
    switch (action) {
      case "click":
      case "check":
      case "uncheck":
        for (const r of targets) branches.push(object({ action: kind(action), ...target(r) }));
        break;
      case "type":
        for (const r of targets) branches.push(object({ action: kind(action), ...target(r), text: text(), enter: { type: "boolean" } }, ["action", "name", "index", "text"]));
        break;
      case "select":
        for (const r of targets) {
          const options = r.options.length > MAX_ENUMERATED_OPTIONS ? text(100) : { enum: [...new Set(r.options)] };
          branches.push(object({ action: kind(action), ...target(r), option: options }));
        }
        break;
      case "scroll":
        branches.push(object({ action: kind(action), direction: { enum: ["up", "down"] } }));
        break;
      case "navigate":
        branches.push(object({ action: kind(action), url: text(300) }));
        break;
      case "answer":
        branches.push(object({ action: kind(action), text: text(300) }));
        break;
      case "done":
        branches.push(object({ action: kind(action) }));
        break;
      case "fail":
        branches.push(object({ action: kind(action), reason: text() }));
        break;
    }
  }
  return branches.length > 0 ? { anyOf: branches } : null;
}

/** The allowed actions as the instructions show them (only the ones the schema admits this step). */
export const ACTION_HELP = {
  click: '{"action": "click", "name": "...", "index": N} clicks element [N] (links, buttons)',
  type: '{"action": "type", "name": "...", "index": N, "text": "...", "enter": true} types into text field [N]; "enter" presses Enter after',
  select: '{"action": "select", "name": "...", "index": N, "option": "..."} picks an option of select [N]',
  check: '{"action": "check", "name": "...", "index": N} ticks checkbox or radio button [N]',
  uncheck: '{"action": "uncheck", "name": "...", "index": N} unticks checkbox [N]',
  scroll: '{"action": "scroll", "direction": "down"} shows more of the page',
  navigate: '{"action": "navigate", "url": "..."} opens a URL of this site',
  answer: '{"action": "answer", "text": "..."} gives the user the information the goal asks for, and ends',
  done: '{"action": "done"} ends when the goal is achieved',
  fail: '{"action": "fail", "reason": "..."} ends when the goal cannot be achieved',
};
