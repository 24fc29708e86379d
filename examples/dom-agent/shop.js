// The shop: a single-page app on hash routes (a route change never unloads the document, which the
// agent runs inside). State is the source of truth, as in a React app: inputs carry `data-bind`
// (a path into the state), the state changes only from their `input`/`change` events, and every
// render sets the DOM from the state. A script that sets `.value` without firing `input` changes
// nothing the app reads. Clicks and submits are delegated by `data-click` / `data-submit`.
//
// window.shop = { state, reset(route?, patch?) } exposes the state for checks (tests/agent/).

import { h, patch } from "./dom.js";
import { PRODUCTS, COUNTRIES, SHIPPING, GIFT_WRAP_PRICE, THEMES, LANGUAGES, product, line, orderTotal, initialState } from "./data.js";

const app = document.getElementById("app");
let state = initialState();

const money = (n) => `$${n.toFixed(2)}`;
const GREETING = { en: "Hello", de: "Hallo", fr: "Bonjour", es: "Hola" };

// ---------------------------------------------------------------------------------------------
// Views: functions of the state that return nodes.

function header() {
  const count = state.cart.reduce((n, l) => n + l.qty, 0);
  return h("header", { class: "shop-header" },
    h("a", { href: "#/", class: "brand" }, "Hearth Home Goods"),
    h("nav", { "aria-label": "Main" },
      h("a", { href: "#/" }, "Search"),
      h("a", { href: "#/prices" }, "Price list"),
      h("a", { href: "#/orders" }, "Orders"),
      h("a", { href: "#/settings" }, "Settings"),
      h("a", { href: "#/cart" }, `Cart (${count})`)),
    h("span", { class: "greeting" }, `${GREETING[state.settings.language]}, ${state.settings.displayName}`));
}

function matches() {
  const words = state.query.toLowerCase().split(/\s+/).filter(Boolean);
  // "kettles" finds kettles too: a trailing "s" is optional.
  const found = PRODUCTS.filter((p) => words.every((w) => `${p.name} ${p.category}`.toLowerCase().includes(w.replace(/s$/, ""))));
  if (state.sort === "price-asc") found.sort((a, b) => a.price - b.price);
  if (state.sort === "price-desc") found.sort((a, b) => b.price - a.price);
  return found;
}

function homePage() {
  const found = matches();
  return [
    h("h1", {}, "Search products"),
    // Not a <form>: the results follow the box as it is typed, and the agent asks the user before
    // submitting a form (a search should not need that). Forms are kept for checkout and settings.
    h("div", { role: "search" },
      h("label", { for: "q" }, "Search"),
      h("input", { id: "q", type: "search", placeholder: "kettle, mug, teapot…", "data-bind": "query", value: state.query }),
      h("button", { type: "button", "data-click": "search" }, "Search"),
      h("label", { for: "sort" }, "Sort by"),
      h("select", { id: "sort", "data-bind": "sort", value: state.sort },
        h("option", { value: "relevance" }, "Relevance"),
        h("option", { value: "price-asc" }, "Price: low to high"),
        h("option", { value: "price-desc" }, "Price: high to low"))),
    h("p", { role: "status" }, `${found.length} ${found.length === 1 ? "result" : "results"}${state.query ? ` for “${state.query}”` : ""}`),
    h("ul", { class: "results" },
      found.map((p) => h("li", { "data-key": p.id },
        h("a", { href: `#/product/${p.id}` }, p.name), " ", h("span", { class: "price" }, money(p.price)),
        p.stock === 0 ? [" ", h("span", { class: "badge" }, "Out of stock")] : null))),
  ];
}

function productPage(id) {
  const p = product(id);
  if (!p) return notFound();
  const options = Array.from({ length: Math.min(5, p.stock) }, (_, i) => h("option", { value: String(i + 1) }, String(i + 1)));
  return [
    h("p", {}, h("a", { href: "#/" }, "← Back to search")),
    h("h1", {}, p.name),
    h("p", { class: "price big" }, money(p.price)),
    h("p", {}, p.description),
    h("p", {}, `Category: ${p.category}`),
    h("p", {}, p.stock > 0 ? `In stock: ${p.stock}` : "Out of stock"),
    h("div", { class: "buy" },
      h("label", { for: "qty" }, "Quantity"),
      h("select", { id: "qty", "data-bind": "qty", "data-type": "number", value: String(state.qty), disabled: p.stock === 0 }, options),
      h("button", { type: "button", "data-click": "add", "data-arg": p.id, disabled: p.stock === 0 }, "Add to cart")),
  ];
}

function cartPage() {
  if (state.cart.length === 0) return [h("h1", {}, "Cart"), h("p", {}, "Your cart is empty. ", h("a", { href: "#/" }, "Find something"))];
  const total = orderTotal(state.cart, null, false);
  return [
    h("h1", {}, "Cart"),
    h("table", {},
      h("thead", {}, h("tr", {}, ["Product", "Price", "Quantity", "Subtotal", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {},
        state.cart.map((l, i) => h("tr", { "data-key": l.id },
          h("td", {}, h("a", { href: `#/product/${l.id}` }, l.name)),
          h("td", {}, money(l.price)),
          h("td", {}, h("select", { "aria-label": `Quantity of ${l.name}`, "data-bind": `cart.${i}.qty`, "data-type": "number", value: String(l.qty) },
            Array.from({ length: Math.min(10, product(l.id).stock) }, (_, k) => h("option", { value: String(k + 1) }, String(k + 1))))),
          h("td", {}, money(l.price * l.qty)),
          h("td", {}, h("button", { type: "button", "data-click": "remove", "data-arg": l.id, "aria-label": `Remove ${l.name}` }, "Remove"))))),
      h("tfoot", {}, h("tr", {}, h("th", { scope: "row", colspan: "3" }, "Total"), h("td", { id: "cart-total" }, money(total)), h("td", {})))),
    h("p", {}, h("button", { type: "button", "data-click": "go", "data-arg": "/checkout", class: "primary" }, "Checkout")),
  ];
}

function field(key, label, input) {
  const error = state.errors[key];
  if (error) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", `err-${key}`);
  }
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input, error ? h("p", { class: "error", id: `err-${key}` }, error) : null);
}

function checkoutPage() {
  if (state.cart.length === 0) return [h("h1", {}, "Checkout"), h("p", {}, "Your cart is empty. ", h("a", { href: "#/" }, "Find something"))];
  const c = state.checkout;
  const text = (key, type = "text", autocomplete = "on") =>
    h("input", { id: `co-${key}`, name: key, type, autocomplete, "data-bind": `checkout.${key}`, value: c[key] });
  const errors = Object.keys(state.errors).length;
  return [
    h("h1", {}, "Checkout"),
    h("p", {}, `${state.cart.length} ${state.cart.length === 1 ? "item" : "items"}, total with shipping: `,
      h("strong", { id: "checkout-total" }, money(orderTotal(state.cart, c.shipping, c.giftWrap)))),
    errors ? h("p", { class: "error", role: "alert" }, `Please fix ${errors} ${errors === 1 ? "field" : "fields"} below.`) : null,
    h("form", { "data-submit": "order", novalidate: true, class: "checkout" },
      field("name", "Full name", text("name", "text", "name")),
      field("email", "Email", text("email", "email", "email")),
      field("address", "Street address", text("address", "text", "street-address")),
      field("city", "City", text("city", "text", "address-level2")),
      field("country", "Country", h("select", { id: "co-country", name: "country", "data-bind": "checkout.country", value: c.country },
        COUNTRIES.map(([code, name]) => h("option", { value: code }, name)))),
      h("fieldset", {}, h("legend", {}, "Shipping"),
        SHIPPING.map((s) => h("label", { class: "choice" },
          h("input", { type: "radio", name: "shipping", value: s.id, "data-bind": "checkout.shipping", checked: c.shipping === s.id }),
          ` ${s.label}, ${s.price ? money(s.price) : "free"}`))),
      h("label", { class: "choice" },
        h("input", { type: "checkbox", name: "gift", "data-bind": "checkout.giftWrap", checked: c.giftWrap }), ` Gift wrap (${money(GIFT_WRAP_PRICE)})`),
      field("password", "Password to create an account (optional)", text("password", "password", "new-password")),
      h("button", { type: "submit", class: "primary" }, "Place order")),
  ];
}

function orderPage(number) {
  const o = state.orders.find((x) => String(x.number) === number);
  if (!o) return notFound();
  return [
    h("h1", {}, "Thank you!"),
    h("p", { role: "status" }, `Order number ${o.number} is confirmed. Total: ${money(o.total)}.`),
    h("p", {}, `It ships to ${o.name}, ${o.address}, ${o.city}, ${COUNTRIES.find(([k]) => k === o.country)[1]}.`),
    h("p", {}, h("a", { href: "#/orders" }, "See all orders")),
  ];
}

function table(caption, heads, rows) {
  return h("table", {}, h("caption", {}, caption),
    h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))));
}

function ordersPage() {
  return [
    h("h1", {}, "Orders"),
    table("Your orders, oldest first", ["Order", "Date", "Items", "Shipping", "Total", "Status"],
      state.orders.map((o) => [String(o.number), o.date, o.items.map((l) => `${l.qty} × ${l.name}`).join(", "),
        SHIPPING.find((s) => s.id === o.shipping).label, money(o.total), o.status])),
  ];
}

function pricesPage() {
  const rows = [...PRODUCTS].sort((a, b) => a.category.localeCompare(b.category) || a.price - b.price);
  return [
    h("h1", {}, "Price list"),
    table("All products by category, cheapest first", ["Product", "Category", "Price", "In stock"],
      // Names as plain text, not links: each row then reads as one line of cells.
      rows.map((p) => [p.name, p.category, money(p.price), p.stock ? String(p.stock) : "No"])),
  ];
}

function settingsPage() {
  const s = (state.settingsForm ??= { ...state.settings });
  return [
    h("h1", {}, "Settings"),
    h("form", { "data-submit": "save-settings", novalidate: true, class: "settings" },
      h("div", { class: "field" }, h("label", { for: "display-name" }, "Display name"),
        h("input", { id: "display-name", type: "text", "data-bind": "settingsForm.displayName", value: s.displayName })),
      h("div", { class: "field" }, h("label", { for: "theme" }, "Theme"),
        h("select", { id: "theme", "data-bind": "settingsForm.theme", value: s.theme }, THEMES.map(([v, t]) => h("option", { value: v }, t)))),
      h("div", { class: "field" }, h("label", { for: "language" }, "Language"),
        h("select", { id: "language", "data-bind": "settingsForm.language", value: s.language }, LANGUAGES.map(([v, t]) => h("option", { value: v }, t)))),
      h("label", { class: "choice" }, h("input", { type: "checkbox", id: "newsletter", "data-bind": "settingsForm.newsletter", checked: s.newsletter }),
        " Email me the monthly newsletter"),
      h("p", {}, h("button", { type: "submit", class: "primary" }, "Save"))),
    // What the agent must never touch: `data-agent-exclude` hides it from the agent's snapshot.
    h("section", { class: "danger" },
      h("h2", {}, "Danger zone"),
      h("button", { type: "button", "data-click": "delete-account", "data-agent-exclude": true }, "Delete account")),
  ];
}

function notFound() {
  return [h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/" }, "Go to the search"))];
}

function page() {
  const [, name, arg] = state.route.split("/");
  switch (name) {
    case "": return homePage();
    case "product": return productPage(arg);
    case "cart": return cartPage();
    case "checkout": return checkoutPage();
    case "order": return orderPage(arg);
    case "orders": return ordersPage();
    case "prices": return pricesPage();
    case "settings": return settingsPage();
    default: return notFound();
  }
}

function render() {
  app.dataset.theme = state.settings.theme;
  const flash = state.flash ? h("p", { class: "flash", role: "status" }, state.flash) : h("p", { class: "flash", hidden: true });
  // Keyed by route: another page is new elements (as React remounts another route's component);
  // a re-render of the same page patches the elements in place.
  patch(app, [header(), h("main", {}, flash, h("div", { class: "page", "data-key": state.route }, page()))]);
  document.title = `${app.querySelector("h1")?.textContent ?? "Shop"} · Hearth Home Goods`;
}

// ---------------------------------------------------------------------------------------------
// Updates: the only places the state changes.

/** Navigates within the app: a new history entry (Back works), the page at once, no unload. */
function go(route) {
  if (location.hash !== `#${route}`) history.pushState(null, "", `#${route}`);
  enter(route);
}

/** A route change: per-page drafts start over and the last status message goes. */
function enter(route) {
  state.route = route;
  state.flash = "";
  state.qty = 1;
  state.errors = {};
  state.settingsForm = null;
  render();
  window.scrollTo(0, 0);
}

const ACTIONS = {
  search() {}, // the results follow the box as it is typed; the button changes nothing more
  add(id) {
    const p = product(id);
    const existing = state.cart.find((l) => l.id === id);
    // At most 10 of a product per line (the cart's quantity select) and never more than in stock.
    if (existing) existing.qty = Math.min(p.stock, 10, existing.qty + state.qty);
    else state.cart.push(line(id, Math.min(p.stock, state.qty)));
    state.flash = `Added ${state.qty} × ${p.name} to the cart.`;
  },
  remove(id) {
    const l = state.cart.find((x) => x.id === id);
    state.cart = state.cart.filter((x) => x.id !== id);
    state.flash = `Removed ${l.name} from the cart.`;
  },
  go,
  order() {
    const c = state.checkout;
    const errors = {};
    if (!c.name.trim()) errors.name = "Enter your full name.";
    if (!/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(c.email.trim())) errors.email = c.email.trim() ? "Enter a valid email address." : "Enter your email address.";
    if (!c.address.trim()) errors.address = "Enter your street address.";
    if (!c.city.trim()) errors.city = "Enter your city.";
    if (!c.country) errors.country = "Choose a country.";
    state.errors = errors;
    if (Object.keys(errors).length) return;
    const number = Math.max(...state.orders.map((o) => o.number)) + 1;
    state.orders.push({
      number, date: new Date().toISOString().slice(0, 10), items: state.cart, shipping: c.shipping, giftWrap: c.giftWrap,
      total: orderTotal(state.cart, c.shipping, c.giftWrap), status: "Processing", account: c.password.length > 0,
      name: c.name.trim(), email: c.email.trim(), address: c.address.trim(), city: c.city.trim(), country: c.country,
    });
    state.cart = [];
    state.checkout = initialState().checkout;
    go(`/order/${number}`);
  },
  "save-settings"() {
    state.settings = { ...state.settingsForm, displayName: state.settingsForm.displayName.trim() || state.settings.displayName };
    state.flash = "Settings saved";
  },
  "delete-account"() {
    state.accountDeleted = true;
    state.flash = "Account deleted (not really: this is a demo).";
  },
};

/** Sets `path` ("checkout.name", "cart.0.qty") in the state. */
function setPath(path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  const target = keys.reduce((o, k) => o[k], state);
  target[last] = value;
}

function onInput(event) {
  const el = event.target;
  const path = el.dataset?.bind;
  if (!path) return;
  // Text follows `input` only, as in React: the `change` a blur fires would otherwise pick up a
  // value a script set without an event.
  const textual = el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && el.type !== "checkbox" && el.type !== "radio");
  if (event.type === "change" && textual) return;
  if (el.type === "radio" && !el.checked) return;
  let value = el.type === "checkbox" ? el.checked : el.value;
  if (el.dataset.type === "number") value = Number(value);
  setPath(path, value);
  delete state.errors[path.replace(/^checkout\./, "")]; // a field being fixed loses its message
  render();
}

function onClick(event) {
  const el = event.target.closest?.("[data-click]");
  if (!el || !app.contains(el) || el.disabled) return;
  ACTIONS[el.dataset.click](el.dataset.arg);
  render();
}

function onSubmit(event) {
  event.preventDefault(); // never a real form submission: it would unload the page
  const form = event.target;
  ACTIONS[form.dataset.submit]?.(form.dataset.arg);
  render();
}

app.addEventListener("input", onInput);
app.addEventListener("change", onInput);
app.addEventListener("click", onClick);
app.addEventListener("submit", onSubmit);
window.addEventListener("hashchange", () => enter(location.hash.slice(1) || "/"));

window.shop = {
  get state() {
    return state;
  },
  /**
   * A fresh state, then `route` (default "/"). `patch` overrides parts of the fresh state; its
   * `cart` may list just `{id, qty}` (name and price are filled in).
   */
  reset(route = "/", patch = {}) {
    state = Object.assign(initialState(), structuredClone(patch));
    state.cart = state.cart.map((l) => line(l.id, l.qty ?? 1));
    history.replaceState(null, "", `#${route}`);
    enter(route);
  },
};

enter(location.hash.slice(1) || "/");
