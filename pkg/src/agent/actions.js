// act(): carries out one agent action on the page the way a person's input would cause it (pointer
// and mouse events then the element's activation for a click; focus, the native value setter and
// `input`/`change` events for typing, so framework-controlled inputs update their state), after
// checking that it is allowed, and returns what changed. Every refusal is an AgentActionError with
// a `code` a program can test and a message a model (and a person) can act on.

import { HearthError, InvalidArgumentError, raceAbort } from "../errors.js";
import { CHECKABLE, TYPABLE, checkSelector } from "./snapshot.js";

export const ACTIONS = ["click", "type", "select", "check", "uncheck", "scroll", "navigate", "answer", "done", "fail"];
/** What needs `confirm` unless `allow.confirm` says otherwise. */
export const DEFAULT_CONFIRM = ["submit", "navigate", "password"];
const CONFIRMABLE = new Set([...ACTIONS, "submit", "password"]);

export class AgentActionError extends HearthError {
  /** @param {"unknown_index"|"gone"|"disabled"|"not_allowed"|"declined"|"invalid"} code */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** `allow` with its defaults, checked: {actions, origins, confirm, exclude}. */
export function allowOf(allow = {}) {
  if (allow === null || typeof allow !== "object") throw new InvalidArgumentError("allow must be an object {actions?, origins?, confirm?, exclude?}");
  const list = (v, name, known) => {
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new InvalidArgumentError(`allow.${name} must be an array of strings`);
    for (const x of v) if (known && !known.has(x)) throw new InvalidArgumentError(`allow.${name}: unknown ${JSON.stringify(x)} (one of ${[...known].join(", ")})`);
    return Object.freeze([...v]);
  };
  const origins = list(allow.origins ?? [], "origins").map((o) => {
    try {
      return new URL(o).origin;
    } catch {
      throw new InvalidArgumentError(`allow.origins: ${JSON.stringify(o)} is not a URL origin such as "https://example.com"`);
    }
  });
  if (allow.exclude !== undefined) checkSelector(allow.exclude, "allow.exclude");
  return remember(Object.freeze({
    actions: list(allow.actions ?? ACTIONS, "actions", new Set(ACTIONS)),
    origins: Object.freeze(origins),
    confirm: list(allow.confirm ?? DEFAULT_CONFIRM, "confirm", CONFIRMABLE),
    exclude: allow.exclude,
  }));
}

// The `allow` objects allowOf() made (already checked); any other is checked again.
const checked = new WeakSet();
const remember = (allow) => (checked.add(allow), allow);

/** Whether `el` is `root` or inside it, across shadow roots and same-origin frames. */
function within(root, el) {
  for (let node = el; node; ) {
    if (node === root) return true;
    if (node.parentNode) node = node.parentNode;
    else if (node.host) node = node.host; // a shadow root
    else node = node.defaultView?.frameElement ?? null; // a frame's document
  }
  return false;
}

/** The live element of `index` in `snap`, or why there is none. */
function target(snap, index, root) {
  const record = snap.elements.find((e) => e.index === index);
  if (!record) throw new AgentActionError("unknown_index", `there is no element [${index}] on the page; use an index from the page snapshot`);
  const el = record.element;
  if (!el.isConnected || !within(root, el)) throw new AgentActionError("gone", `element [${index}] is no longer on the page`);
  if (el.matches(":disabled") || el.getAttribute("aria-disabled") === "true") throw new AgentActionError("disabled", `element [${index}] ${record.kind} ${JSON.stringify(record.name)} is disabled`);
  return record;
}

/** The form a click on `el` (or Enter in it) submits, or null. */
function submittedForm(el, enter) {
  const form = el.form ?? null;
  if (!form) return null;
  if (enter) return el.tagName === "INPUT" ? form : null; // implicit submission: Enter in a field
  const type = (el.getAttribute("type") ?? (el.tagName === "BUTTON" ? "submit" : "")).toLowerCase();
  return (el.tagName === "BUTTON" || el.tagName === "INPUT") && (type === "submit" || type === "image") ? form : null;
}

/** Where a click on `el` navigates to when that leaves this document, or null. */
function leavesDocument(el) {
  const link = el.closest("a[href]");
  if (!link) return null;
  const to = new URL(link.href, el.ownerDocument.baseURI);
  const here = new URL(el.ownerDocument.location.href);
  const sameDocument = to.origin === here.origin && to.pathname === here.pathname && to.search === here.search;
  return sameDocument && link.target !== "_blank" ? null : to;
}

/** The categories of `allow.confirm` an action falls in ("click", "submit", "navigate", ...). */
function categories(action, record, { enter } = {}) {
  const out = [action.action];
  const el = record?.element;
  if (el && (action.action === "click" || enter) && submittedForm(el, enter)) out.push("submit");
  if (el && action.action === "click" && leavesDocument(el)) out.push("navigate");
  if (record?.kind === "password" && action.action === "type") out.push("password");
  return out;
}

function checkOrigin(url, allow, doc) {
  if (url.origin !== new URL(doc.location.href).origin && !allow.origins.includes(url.origin)) {
    throw new AgentActionError("not_allowed", `navigating to ${url.origin} is not allowed (only this site${allow.origins.length ? " and " + allow.origins.join(", ") : ""})`);
  }
}

/** Pointer and mouse events at the element's centre, then its activation (click(): links, submit, toggles). */
function press(el) {
  el.scrollIntoView({ block: "center", inline: "nearest" });
  const r = el.getBoundingClientRect();
  const at = { bubbles: true, cancelable: true, composed: true, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, button: 0 };
  const win = el.ownerDocument.defaultView;
  el.dispatchEvent(new win.PointerEvent("pointerdown", { ...at, pointerType: "mouse", isPrimary: true }));
  el.dispatchEvent(new win.MouseEvent("mousedown", at));
  if (typeof el.focus === "function") el.focus({ preventScroll: true });
  el.dispatchEvent(new win.PointerEvent("pointerup", { ...at, pointerType: "mouse", isPrimary: true }));
  el.dispatchEvent(new win.MouseEvent("mouseup", at));
  el.click();
}

/** Sets a form control's value as typing would: the prototype's setter (which frameworks' value
 * tracking watches), then the events a person's input fires. */
function setValue(el, value) {
  const win = el.ownerDocument.defaultView;
  const proto = el.tagName === "TEXTAREA" ? win.HTMLTextAreaElement.prototype : el.tagName === "SELECT" ? win.HTMLSelectElement.prototype : win.HTMLInputElement.prototype;
  Object.getOwnPropertyDescriptor(proto, "value").set.call(el, value);
  el.dispatchEvent(new win.InputEvent("input", { bubbles: true, composed: true, inputType: "insertText", data: value }));
  el.dispatchEvent(new win.Event("change", { bubbles: true }));
}

function typeInto(el, text, enter) {
  const win = el.ownerDocument.defaultView;
  el.scrollIntoView({ block: "center", inline: "nearest" });
  el.focus({ preventScroll: true });
  if (el.isContentEditable) {
    el.textContent = text;
    el.dispatchEvent(new win.InputEvent("input", { bubbles: true, composed: true, inputType: "insertText", data: text }));
  } else {
    setValue(el, text);
  }
  if (enter) {
    const key = { key: "Enter", code: "Enter", keyCode: 13, which: 13, bubbles: true, cancelable: true, composed: true };
    const go = el.dispatchEvent(new win.KeyboardEvent("keydown", key));
    el.dispatchEvent(new win.KeyboardEvent("keypress", key));
    el.dispatchEvent(new win.KeyboardEvent("keyup", key));
    // A browser submits a form on Enter in a field unless keydown was cancelled.
    const form = submittedForm(el, true);
    if (go && form) form.requestSubmit();
  }
}

/** Lets the page react (frameworks render in a microtask or a frame) before it is looked at again. */
const settle = (win) => new Promise((resolve) => win.requestAnimationFrame(() => setTimeout(resolve, 30)));

const label = (record) => `[${record.index}] ${record.kind} ${JSON.stringify(record.name)}`;

/**
 * Carries out `action` ({action: "click", index} ...) on an element of `snap` (from snapshot()).
 * Options: `root` (the snapshot's root), `allow` (see allowOf), `confirm(action, details)` (awaited
 * before anything in allow.confirm; without it such actions are refused), `signal`. Resolves with
 * `{observation, done?, answer?, failed?, navigated?}`; a refusal rejects with AgentActionError.
 */
export async function act(snap, action, { root, allow: allowed, confirm, signal } = {}) {
  const allow = checked.has(allowed) ? allowed : allowOf(allowed);
  if (!action || typeof action !== "object" || typeof action.action !== "string") throw new AgentActionError("invalid", "an action is an object such as {\"action\": \"click\", \"index\": 3}");
  if (!allow.actions.includes(action.action)) throw new AgentActionError("not_allowed", `the action "${action.action}" is not allowed here`);
  root ??= globalThis.document.body;
  const doc = root.ownerDocument;
  const win = doc.defaultView;

  const record = "index" in action ? target(snap, action.index, root) : null;
  if (record && allow.exclude && record.element.closest(allow.exclude)) throw new AgentActionError("not_allowed", `element [${action.index}] may not be used`);
  let navigation = null;
  switch (action.action) {
    case "click":
      if (!record) throw new AgentActionError("invalid", "\"click\" needs an \"index\"");
      navigation = leavesDocument(record.element);
      if (navigation) checkOrigin(navigation, allow, doc);
      break;
    case "type":
      if (!record || !TYPABLE.has(record.kind)) throw new AgentActionError("invalid", `element [${action.index}] is not a text field`);
      if (typeof action.text !== "string") throw new AgentActionError("invalid", "\"type\" needs a \"text\"");
      if (record.element.readOnly) throw new AgentActionError("disabled", `element [${action.index}] is read-only`);
      break;
    case "select":
      if (!record || record.kind !== "select") throw new AgentActionError("invalid", `element [${action.index}] is not a select`);
      if (!record.options.includes(action.option)) throw new AgentActionError("invalid", `${label(record)} has no option ${JSON.stringify(action.option)}`);
      break;
    case "check":
    case "uncheck":
      if (!record || !CHECKABLE.has(record.kind)) throw new AgentActionError("invalid", `element [${action.index}] is not a checkbox or radio button`);
      if (action.action === "uncheck" && record.kind === "radio") throw new AgentActionError("invalid", "a radio button is unchecked by checking another one");
      break;
    case "navigate":
      try {
        navigation = new URL(String(action.url), doc.baseURI);
      } catch {
        throw new AgentActionError("invalid", `${JSON.stringify(action.url)} is not a URL`);
      }
      if (!["http:", "https:"].includes(navigation.protocol)) throw new AgentActionError("not_allowed", `only http(s) URLs can be opened, not ${navigation.protocol}`);
      checkOrigin(navigation, allow, doc);
      break;
  }

  const kinds = categories(action, record, { enter: action.action === "type" && action.enter });
  if (action.action === "navigate") kinds.push("navigate");
  const asked = kinds.filter((k) => allow.confirm.includes(k));
  if (asked.length > 0) {
    if (typeof confirm !== "function") throw new AgentActionError("declined", `this ${asked.join("/")} action needs the user's confirmation, and no confirm() was given`);
    const details = { reasons: asked, element: record?.element ?? null, url: navigation?.href ?? null };
    const ok = await raceAbort(Promise.resolve(confirm(structuredClone(action), details)), signal);
    if (ok !== true) throw new AgentActionError("declined", `the user declined this ${asked.join("/")} action`);
  }

  const el = record?.element;
  switch (action.action) {
    case "click":
      press(el);
      break;
    case "type":
      typeInto(el, action.text, action.enter === true);
      break;
    case "select": {
      const option = [...el.options].find((o) => (o.label || o.text).replace(/\s+/g, " ").trim() === action.option);
      el.focus({ preventScroll: true });
      setValue(el, option.value);
      break;
    }
    case "check":
    case "uncheck": {
      const want = action.action === "check";
      if (record.checked === want) return { observation: `${label(record)} was already ${want ? "checked" : "not checked"}` };
      press(el);
      break;
    }
    case "scroll": {
      const down = action.direction !== "up";
      win.scrollBy({ top: (down ? 0.8 : -0.8) * win.innerHeight, behavior: "instant" });
      break;
    }
    case "navigate":
      if (navigation.pathname === win.location.pathname && navigation.search === win.location.search && navigation.origin === win.location.origin) {
        win.location.hash = navigation.hash;
        break;
      }
      win.location.assign(navigation.href);
      return { observation: `opened ${navigation.href}; this page is being left`, navigated: navigation.href };
    case "answer":
      return { observation: "answered", done: true, answer: String(action.text ?? "") };
    case "done":
      return { observation: "done", done: true };
    case "fail":
      return { observation: `gave up: ${String(action.reason ?? "")}`, failed: true, reason: String(action.reason ?? "") };
  }
  await settle(win);
  if (navigation && action.action === "click") return { observation: `${describeAction(action, record)}; the page is being left for ${navigation.href}`, navigated: navigation.href };
  return { observation: describeAction(action, record) };
}

/** How an action reads in the history the model sees (a password field's text is never repeated). */
export function describeAction(action, record) {
  const on = record ? " " + label(record) : "";
  switch (action.action) {
    case "type":
      return record?.kind === "password"
        ? `typed a password (not shown) into${on}${action.enter ? " and pressed Enter" : ""}`
        : `typed ${JSON.stringify(action.text)} into${on}${action.enter ? " and pressed Enter" : ""}`;
    case "select":
      return `selected ${JSON.stringify(action.option)} in${on}`;
    case "scroll":
      return `scrolled ${action.direction === "up" ? "up" : "down"}`;
    case "navigate":
      return `opened ${action.url}`;
    default:
      return `${action.action}${on}`.replace(/^click /, "clicked ").replace(/^check /, "checked ").replace(/^uncheck /, "unchecked ");
  }
}
