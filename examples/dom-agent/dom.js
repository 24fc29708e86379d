// A tiny render helper: `h()` builds elements, `patch()` updates the page to match a freshly built
// tree *in place*, as React does. Patching (instead of replacing #app's children) matters here: the
// agent holds on to an element between dispatching `input`, `change` and a submit on it, and the
// user's focus and caret must survive a re-render while typing.
//
// Controlled inputs: `value`, `checked` and `selected` are properties, set from app state on every
// render (after the children, so a <select> has its options), so what the DOM shows is what the state
// says. Event handlers are not attached here: the app delegates events by data attributes.

/** h("a", { href: "#/", class: "x", value: "..." }, "text", child, [more]) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  const controlled = {};
  for (const [name, value] of Object.entries(props)) {
    if (name === "value" || name === "checked" || name === "selected") controlled[name] = value;
    else if (value === true) el.setAttribute(name, "");
    else if (value !== false && value != null) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  el._controlled = controlled;
  Object.assign(el, controlled);
  return el;
}

/** Makes `parent`'s children look like `next` (an array of nodes), reusing nodes where it can. */
export function patch(parent, next) {
  const old = [...parent.childNodes];
  next.forEach((node, i) => (i < old.length ? patchNode(old[i], node) : parent.append(node)));
  for (const extra of old.slice(next.length)) extra.remove();
}

function patchNode(a, b) {
  // A different element (or a different data-key: another cart line) is replaced, not morphed.
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName || a.dataset?.key !== b.dataset?.key) {
    a.replaceWith(b);
    return;
  }
  if (a.nodeType !== Node.ELEMENT_NODE) {
    if (a.nodeValue !== b.nodeValue) a.nodeValue = b.nodeValue;
    return;
  }
  for (const { name } of [...a.attributes]) if (!b.hasAttribute(name)) a.removeAttribute(name);
  for (const { name, value } of b.attributes) if (a.getAttribute(name) !== value) a.setAttribute(name, value);
  patch(a, [...b.childNodes]);
  // The state wins over whatever the DOM holds (e.g. a `.value` a script set without an event).
  a._controlled = b._controlled;
  for (const [name, value] of Object.entries(b._controlled ?? {})) if (a[name] !== value) a[name] = value;
}
