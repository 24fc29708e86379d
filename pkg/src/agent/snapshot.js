// snapshot(): what a person sees on a page, as a compact outline a small model can read: headings,
// landmarks, visible text, and every element a person could act on, each with an index like [12]
// that stays the same across snapshots while the element lives (docs/AGENT.md).
//
// The walk follows what is rendered, not the DOM as written: open shadow roots instead of their
// hosts' light children, slots' assigned nodes, same-origin iframes' documents. Hidden content
// (display, visibility, `hidden`, `aria-hidden`, zero size, fully transparent or off-page text) is
// left out, which is also what keeps hidden prompt-injection text away from the model.

import { InvalidArgumentError } from "../errors.js";

// Elements a person acts on, by tag; `[role]` widgets and contenteditable are added in kindOf().
const CONTROL_ROLES = new Set([
  "button", "link", "checkbox", "radio", "switch", "tab", "menuitem", "menuitemcheckbox", "menuitemradio",
  "option", "treeitem", "combobox", "textbox", "searchbox", "slider", "spinbutton",
]);
const LANDMARKS = { HEADER: "header", NAV: "nav", MAIN: "main", ASIDE: "aside", FOOTER: "footer", FORM: "form", DIALOG: "dialog" };
const LANDMARK_ROLES = new Set(["banner", "navigation", "main", "complementary", "contentinfo", "form", "dialog", "search", "region"]);
const TEXT_INPUTS = new Set(["text", "email", "search", "tel", "url", "number", "date", "datetime-local", "month", "time", "week", ""]);
const SKIPPED = new Set(["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE", "HEAD", "META", "LINK", "svg", "SVG"]);
const MAX_NAME = 80;
const MAX_TEXT_LINE = 300;
const MAX_OPTIONS = 25;
const MAX_NESTING = 512;

/** Throws InvalidArgumentError unless `selector` is a valid CSS selector. */
export function checkSelector(selector, name) {
  if (typeof selector !== "string") throw new InvalidArgumentError(`${name} must be a CSS selector string`);
  try {
    globalThis.document.createDocumentFragment().querySelector(selector);
  } catch {
    throw new InvalidArgumentError(`${name}: ${JSON.stringify(selector)} is not a valid CSS selector`);
  }
}

/** Indices of one page tree: stable while an element lives, never reused. One per root. */
class Registry {
  #ids = new WeakMap();
  #next = 1;
  idOf(element) {
    let id = this.#ids.get(element);
    if (id === undefined) this.#ids.set(element, (id = this.#next++));
    return id;
  }
}
const registries = new WeakMap();
function registryOf(root) {
  let r = registries.get(root);
  if (!r) registries.set(root, (r = new Registry()));
  return r;
}

const collapse = (s) => s.replace(/\s+/g, " ").trim();
const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
// Page text must not pass for one of our element indices ("[7] button ...") or close the fence the
// prompt puts around the page (prompt.js): square brackets and angle brackets are shown as round ones.
const neutral = (s) => s.replace(/[[<]/g, "(").replace(/[\]>]/g, ")");
const quote = (s) => JSON.stringify(neutral(clip(collapse(s), MAX_NAME)));

/** What kind of control `el` is ("link", "button", "textbox", ...), or null when a person cannot act on it. */
function kindOf(el) {
  const role = el.getAttribute("role");
  switch (el.tagName) {
    case "A":
      return el.hasAttribute("href") ? "link" : role && CONTROL_ROLES.has(role) ? role : null;
    case "BUTTON":
      return "button";
    case "SELECT":
      return "select";
    case "TEXTAREA":
      return "textarea";
    case "SUMMARY":
      return "button";
    case "INPUT": {
      const type = (el.getAttribute("type") ?? "").toLowerCase();
      if (type === "hidden") return null;
      if (type === "password") return "password";
      if (type === "checkbox" || type === "radio") return type;
      if (["button", "submit", "reset", "image"].includes(type)) return "button";
      if (TEXT_INPUTS.has(type)) return "textbox";
      return type; // range, color, file: shown, clickable
    }
  }
  if (role && CONTROL_ROLES.has(role)) return role;
  if (el.isContentEditable && !el.parentElement?.isContentEditable) return "editable";
  if (el.hasAttribute("onclick") || (el.hasAttribute("tabindex") && el.tabIndex >= 0 && el.tagName !== "BODY")) return "clickable";
  return null;
}

/** Kinds a person types into. */
export const TYPABLE = new Set(["textbox", "textarea", "password", "editable", "searchbox", "combobox"]);
/** Kinds with a checked state. */
export const CHECKABLE = new Set(["checkbox", "radio", "switch", "menuitemcheckbox", "menuitemradio"]);

function textOf(el) {
  return collapse(el.innerText ?? el.textContent ?? "");
}

/** A label's own words: its text without that of the controls inside it (a select's options). */
function labelText(label) {
  const doc = label.ownerDocument;
  const walker = doc.createTreeWalker(label, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const control = node.parentElement.closest("select, textarea, button");
    if (!control || !label.contains(control)) parts.push(node.data);
  }
  return collapse(parts.join(" "));
}

/** The element's accessible name, simplified: aria-label(ledby), labels, alt, text, title, placeholder. */
function nameOf(el) {
  const doc = el.ownerDocument;
  const label = el.getAttribute("aria-label");
  if (label?.trim()) return label;
  const by = el.getAttribute("aria-labelledby");
  if (by) {
    const text = by.split(/\s+/).map((id) => doc.getElementById(id)).filter(Boolean).map(textOf).join(" ");
    if (text.trim()) return text;
  }
  if (el.labels?.length) {
    const text = [...el.labels].map(labelText).join(" ");
    if (text.trim()) return text;
  }
  if (el.tagName === "INPUT" && ["button", "submit", "reset"].includes(el.type)) return el.value || el.type;
  if (el.tagName === "INPUT" && el.type === "image") return el.alt || "submit";
  if (!["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName) && !el.isContentEditable) {
    const text = textOf(el) || [...el.querySelectorAll("img[alt]")].map((i) => i.alt).join(" ");
    if (text) return text;
  }
  return el.getAttribute("title") ?? el.getAttribute("placeholder") ?? "";
}

/** What the outline says about a control besides its kind and name, and the element's record. */
function describe(el, kind, index) {
  // The name as the outline shows it (and the action schema names it).
  const record = { index, kind, name: neutral(clip(collapse(nameOf(el)), MAX_NAME)), element: el };
  const parts = [];
  if (kind === "link") {
    record.href = el.href;
  } else if (kind === "password") {
    // Never the value (nor its length): the prompt must not carry a secret.
    record.filled = el.value !== "";
    parts.push(record.filled ? "(filled)" : "(empty)");
  } else if (kind === "select") {
    const options = [...el.options].filter((o) => !o.hidden).map((o) => clip(collapse(o.label || o.text), MAX_NAME));
    record.options = options;
    record.value = el.selectedOptions[0] ? collapse(el.selectedOptions[0].label || el.selectedOptions[0].text) : "";
    record.multiple = el.multiple;
    parts.push(`selected=${quote(record.value)}`);
    const shown = options.slice(0, MAX_OPTIONS).map((o) => quote(o));
    if (options.length > MAX_OPTIONS) shown.push(`… ${options.length - MAX_OPTIONS} more`);
    parts.push(`options: ${shown.join(", ")}`);
  } else if (CHECKABLE.has(kind)) {
    record.checked = el.tagName === "INPUT" ? el.checked : el.getAttribute("aria-checked") === "true";
    parts.push(record.checked ? "checked" : "not checked");
  } else if (TYPABLE.has(kind)) {
    record.value = kind === "editable" ? textOf(el) : (el.value ?? el.textContent ?? "");
    const type = el.tagName === "INPUT" ? el.type : "";
    if (type && type !== "text") parts.push(`type=${type}`);
    parts.push(`value=${quote(record.value)}`);
    const placeholder = el.getAttribute("placeholder");
    if (placeholder && record.value === "") parts.push(`placeholder=${quote(placeholder)}`);
  }
  record.disabled = el.matches(":disabled") || el.getAttribute("aria-disabled") === "true";
  if (record.disabled) parts.push("disabled");
  if (el.required) parts.push("required");
  record.line = [`[${index}] ${kind}`, quote(record.name), ...parts].join(" ");
  return record;
}

/** The nodes rendered as `node`'s children: its open shadow root's, a slot's assigned nodes, or its own. */
function renderedChildren(node) {
  if (node.shadowRoot) return node.shadowRoot.childNodes;
  if (node.tagName === "SLOT") {
    const assigned = node.assignedNodes({ flatten: true });
    return assigned.length > 0 ? assigned : node.childNodes;
  }
  if (node.tagName === "IFRAME") {
    let doc = null;
    try {
      doc = node.contentDocument; // null (or a throw) for another origin's frame
    } catch {
      doc = null;
    }
    return doc?.body ? [doc.body] : [];
  }
  return node.childNodes;
}

/**
 * The outline's lines, in document order: {text, depth, priority, record?}. Priority (lower is kept
 * first when the budget is short): 0 controls, 1 headings and landmarks, 2 text in view, 3 the rest.
 */
function walk(root, { registry, exclude }) {
  const lines = [];
  let depth = 0; // landmark nesting: each level indents its lines
  let lists = 0; // list nesting: items of inner lists are indented under their parent item
  let buffer = [];
  let bufferInView = false;

  let bufferHeading = false;
  // A line's marker ("- ", "## ", a cell's " | ") waits for its text: it is kept across an inner
  // block's start and dropped at the end of its element if no text came (`final`).
  const flush = (final = false) => {
    const text = collapse(buffer.join(""));
    const markerOnly = /^[-|#\s]*$/.test(text);
    if (markerOnly && text && !final) return;
    buffer = [];
    if (!markerOnly) {
      const priority = bufferHeading ? 1 : bufferInView ? 2 : 3;
      lines.push({ text: neutral(clip(text, MAX_TEXT_LINE)), depth: depth + Math.max(0, lists - 1), priority });
    }
    bufferInView = false;
    bufferHeading = false;
  };

  // `at`: what the walk knows of the element whose children these are: {skipText, excluded, level,
  // textShown, inView} (the last two measured once per element, for all its text nodes).
  const visit = (node, at) => {
    // A hostile page can nest elements deeper than the call stack goes; nobody reads that deep.
    if (at.level > MAX_NESTING) return;
    if (node.nodeType === Node.TEXT_NODE) {
      if (at.skipText || !at.textShown) return;
      if (node.data.trim() && at.inView) bufferInView = true;
      buffer.push(node.data);
      return;
    }
    if (node.nodeType === Node.DOCUMENT_FRAGMENT_NODE) {
      for (const child of node.childNodes) visit(child, { ...at, level: at.level + 1 });
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE || SKIPPED.has(node.tagName)) return;
    const el = node;
    if (el.getAttribute("aria-hidden") === "true" || el.hidden) return;
    const style = el.ownerDocument.defaultView.getComputedStyle(el);
    // display: none here or above (an element without a box of its own, such as a slot, has none to check).
    if (style.display !== "contents" && !el.checkVisibility()) return;
    const rect = el.getBoundingClientRect();
    const empty = rect.width <= 1 && rect.height <= 1 && style.display !== "contents";
    if (empty && (style.overflow !== "visible" || el.children.length === 0)) return;
    if (style.opacity === "0" && !kindOf(el)) return;

    const display = style.display;
    // What starts a line of its own (a table cell only starts a cell: " | ").
    const block = !display.startsWith("inline") && display !== "contents" && display !== "table-cell";
    // An excluded element and everything in it are shown, but never as controls.
    const excluded = at.excluded || Boolean(exclude && el.matches(exclude));
    const kind = excluded ? null : kindOf(el);
    if (kind && style.visibility === "visible") {
      flush();
      const record = describe(el, kind, registry.idOf(el));
      lines.push({ text: record.line, depth, priority: 0, record });
      // A control's text is its name, so its subtree is not walked again; except a combobox's or a
      // generic clickable container's, which may hold controls of their own (a listbox's options).
      if (!["combobox", "clickable"].includes(kind) || el.tagName === "INPUT" || el.tagName === "SELECT") return;
    }
    const role = el.getAttribute("role");
    const heading = /^H[1-6]$/.test(el.tagName) ? Number(el.tagName[1]) : role === "heading" ? Number(el.getAttribute("aria-level")) || 2 : 0;
    const landmark = LANDMARKS[el.tagName] ?? (LANDMARK_ROLES.has(role) ? role : el.tagName === "IFRAME" ? "frame" : el.tagName === "TABLE" ? "table" : null);
    if (block || landmark) flush();
    if (landmark) {
      const label = el.getAttribute("aria-label") ?? (el.tagName === "IFRAME" ? el.title : "");
      lines.push({ text: `${landmark}${label ? " " + quote(label) : ""}:`, depth, priority: 1 });
      depth++;
    }
    const list = ["UL", "OL", "MENU"].includes(el.tagName);
    if (list) lists++;
    if (display === "list-item") buffer.push("- ");
    if (heading) {
      flush();
      buffer.push("#".repeat(Math.min(heading, 6)) + " ");
      bufferHeading = true;
    }
    if (display === "table-cell") buffer.push(" | ");
    // A label's text is its control's name (the control's line carries it): not repeated as text.
    const labelText = el.tagName === "LABEL" && el.control;
    // A box-less element (a slot: display: contents) is where its parent's box is.
    const seen = style.display === "contents" && at.inView !== undefined ? at.inView : inView(el, rect);
    const inner = { skipText: at.skipText || labelText, excluded, level: at.level + 1, textShown: textShown(el, style, rect), inView: seen };
    for (const child of renderedChildren(el)) visit(child, inner);
    if (display === "table-row") buffer.push(" |");
    if (block || landmark) flush(true);
    if (list) lists--;
    if (landmark) depth--;
  };

  visit(root, { skipText: false, excluded: false, level: 0 });
  flush(true);
  return lines;
}

/** Whether `el` (its box `r`) is in its window's viewport. */
function inView(el, r) {
  const win = el.ownerDocument.defaultView;
  return r.bottom > 0 && r.right > 0 && r.top < win.innerHeight && r.left < win.innerWidth;
}

/** Whether text directly in `el` is seen: visible, not transparent, not clipped away, not zero-sized. */
function textShown(el, style, r) {
  if (style.visibility !== "visible" || style.opacity === "0" || parseFloat(style.fontSize) < 2) return false;
  const win = el.ownerDocument.defaultView;
  // Pushed off the page (left: -9999px) or clipped to a pixel (the usual "visually hidden" class).
  if (r.right + win.scrollX <= 0 || r.bottom + win.scrollY <= 0) return false;
  return !(r.width <= 1 && r.height <= 1 && style.display !== "contents" && style.display !== "inline");
}

/** A rough token count (about 3.5 characters a token for English and markup), for budgeting only. */
const estimate = (text) => Math.ceil(text.length / 3.5) + 1;

/** The kept lines as text: the order of the page, two spaces per landmark level. */
function render(lines, dropped) {
  const out = lines.map((l) => "  ".repeat(l.depth) + l.text);
  if (dropped > 0) out.push(`(${dropped} more lines of the page are not shown: scroll or act to see them)`);
  return out.join("\n");
}

/** The lines that fit `budget` estimated tokens: by priority, then in document order. */
function fit(lines, budget) {
  const order = lines.map((l, i) => i).sort((a, b) => lines[a].priority - lines[b].priority || a - b);
  const keep = new Set();
  let used = 0;
  for (const i of order) {
    const cost = estimate(lines[i].text) + lines[i].depth;
    if (used + cost > budget) continue;
    keep.add(i);
    used += cost;
  }
  return lines.filter((_, i) => keep.has(i));
}

/**
 * A snapshot of what a person sees under `root`: `{text, elements, tokens}`. `elements` are the
 * controls shown in `text` ({index, kind, name, value?, checked?, options?, disabled, element}),
 * and nothing outside `root` is ever among them. Options: `maxTokens` (default 1200), `engine` (its
 * tokenizer counts the tokens; otherwise an estimate), `exclude` (a CSS selector of elements never
 * offered as controls, e.g. "[data-agent-exclude]").
 */
export async function snapshot(root = globalThis.document?.body, options = {}) {
  if (!(root instanceof (root?.ownerDocument?.defaultView ?? globalThis).Element)) {
    throw new InvalidArgumentError("snapshot(root): root must be a DOM element (e.g. document.body)");
  }
  const { maxTokens = 1200, engine, exclude } = options;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 16) throw new InvalidArgumentError(`maxTokens must be an integer >= 16, got ${maxTokens}`);
  if (exclude !== undefined) checkSelector(exclude, "exclude");
  const lines = walk(root, { registry: registryOf(root), exclude });
  const count = async (text) => (engine ? engine.countTokens(text) : estimate(text));
  // Estimate, count, and tighten the estimate's budget until the real count fits (it converges in
  // one or two rounds: the estimate is proportional).
  let budget = maxTokens;
  for (let round = 0; ; round++) {
    const kept = fit(lines, budget);
    const text = render(kept, lines.length - kept.length);
    const tokens = await count(text);
    if (tokens <= maxTokens || round === 4 || kept.length === 0) {
      const elements = kept.filter((l) => l.record).map((l) => l.record);
      return { text, elements, tokens };
    }
    budget = Math.floor((budget * maxTokens) / tokens) - 8;
  }
}
