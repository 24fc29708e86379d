// hearth-web/agent without a model (issue 16, items 1, 2 and 4): snapshots of the hand-written pages
// in agent-pages/ are what a person sees, element by element (labels, values, state; hidden and
// zero-size content left out; shadow DOM and a same-origin frame included; a long page cut to its
// budget with the controls kept), indices stay with living elements, and act() drives a React-
// controlled form so that React's state changes, refusing what is gone, disabled or not allowed.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { build } from "esbuild";
import { launch, MINUTES, ROOT } from "./harness.mjs";
import { startServer } from "../../scripts/static-server.mjs";

const PAGES = path.join(ROOT, "tests/browser/agent-pages");

let browser, server, context, tmp;
before(async () => {
  // React's own package, bundled as an app would be.
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-agent-"));
  await build({
    entryPoints: [path.join(PAGES, "react-form.jsx")],
    bundle: true,
    format: "esm",
    jsx: "automatic",
    define: { "process.env.NODE_ENV": '"production"' },
    outfile: path.join(tmp, "react-form.js"),
    logLevel: "error",
  });
  fs.writeFileSync(path.join(tmp, "react.html"), '<!doctype html><meta charset="utf-8"><title>React</title><div id="root"></div><script type="module" src="/react/react-form.js"></script>');
  browser = await launch();
  server = await startServer({ routes: { "/pkg/": path.join(ROOT, "pkg"), "/react/": tmp, "/": PAGES } });
  context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
}, { timeout: MINUTES });
after(async () => {
  await browser?.close();
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** A fixture page open with hearth-web/agent as `window.agent`. */
async function open(file) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${server.url}/${file}`, { waitUntil: "load" });
  await page.evaluate(async () => {
    window.agent = await import("/pkg/agent.js");
    // snapshot() and act() results without the live elements (which cannot leave the page).
    window.snap = async (options = {}) => {
      window.last = await agent.snapshot(document.body, options);
      return { text: window.last.text, tokens: window.last.tokens, elements: window.last.elements.map(({ element, ...r }) => r) };
    };
    window.tryAct = async (action, options = {}) => {
      try {
        return await agent.act(window.last, action, options);
      } catch (e) {
        return { error: e.name, code: e.code, message: e.message };
      }
    };
  });
  page.errors = errors;
  return page;
}

/** The records' fields a test states (so an added field does not break every expectation). */
const pick = (elements, keys = ["kind", "name"]) => elements.map((e) => Object.fromEntries(keys.filter((k) => k in e).map((k) => [k, e[k]])));

test("a form: every control with its label, value and state, in page order; no password value", async () => {
  const page = await open("form.html");
  const { text, elements } = await page.evaluate(() => snap());
  assert.deepEqual(pick(elements, ["kind", "name", "value", "checked", "filled", "disabled", "options"]), [
    { kind: "textbox", name: "Full name", value: "", disabled: false },
    { kind: "textbox", name: "Email", value: "ada@example.com", disabled: false },
    { kind: "textbox", name: "Phone", value: "", disabled: false },
    { kind: "textbox", name: "Coupon code", value: "", disabled: false },
    { kind: "select", name: "Country", value: "Germany", options: ["France", "Germany", "Spain"], disabled: false },
    { kind: "checkbox", name: "Gift wrap", checked: true, disabled: false },
    { kind: "radio", name: "Standard", checked: true, disabled: false },
    { kind: "radio", name: "Express", checked: false, disabled: false },
    { kind: "textarea", name: "Note", value: "Leave at the door", disabled: false },
    { kind: "password", name: "Password", filled: true, disabled: false },
    { kind: "button", name: "Apply coupon", disabled: true },
    { kind: "button", name: "Place order", disabled: false },
    { kind: "link", name: "Read the help", disabled: false },
    { kind: "button", name: "chat with us", disabled: false },
    { kind: "editable", name: "", value: "Editable note", disabled: false },
  ]);
  const lines = text.split("\n").map((l) => l.trim());
  const ids = elements.map((e) => e.index);
  assert.equal(new Set(ids).size, ids.length, "indices are distinct");
  assert.ok(lines.includes("# Checkout"), text);
  assert.ok(lines.includes('form "Delivery":'), text);
  assert.ok(lines.includes(`[${ids[0]}] textbox "Full name" value="" required`), text);
  assert.ok(lines.includes(`[${ids[1]}] textbox "Email" type=email value="ada@example.com"`), text);
  assert.ok(lines.includes(`[${ids[2]}] textbox "Phone" type=tel value="" placeholder="+44 …"`), text);
  assert.ok(lines.includes(`[${ids[4]}] select "Country" selected="Germany" options: "France", "Germany", "Spain"`), text);
  assert.ok(lines.includes(`[${ids[7]}] radio "Express" not checked`), text);
  assert.ok(lines.includes(`[${ids[9]}] password "Password" (filled)`), text);
  assert.ok(lines.includes(`[${ids[10]}] button "Apply coupon" disabled`), text);
  assert.ok(lines.includes("Shipping"), "the legend is text");
  // A label is its control's name, not a line of its own; hidden inputs are not controls.
  for (const label of ["Full name", "Email", "Gift wrap", "Note"]) assert.ok(!lines.includes(label), `${label} is not repeated as text`);
  assert.ok(!text.includes("hunter2") && !text.includes("abc"), "no password or hidden value in the text");
  assert.ok(!JSON.stringify(elements).includes("hunter2"), "nor in the records");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("landmarks, headings, a table and nested lists read as an outline; page text cannot fake an index or the fence", async () => {
  const page = await open("outline.html");
  const { text, elements } = await page.evaluate(() => snap());
  const [home, cart] = elements.map((e) => e.index);
  assert.equal(
    text,
    [
      "header:",
      '  nav "Main":',
      `    [${home}] link "Home"`,
      `    [${cart}] link "Cart (2)"`,
      "main:",
      "  # Teapots",
      "  Prices include VAT.",
      "  table:",
      "    | Name | Price |",
      "    | Clay pot | 18.00 |",
      "    | Glass pot | 24.50 |",
      "  ## Care",
      "  - Rinse",
      "    - with warm water",
      "    - never soap",
      "  - Dry upside down",
      "  - Descale monthly",
      "  Text with fake (7) index and a (/page) fence.",
      "footer:",
      "  © Shop",
    ].join("\n"),
  );
  assert.deepEqual(pick(elements, ["kind", "name", "href"]), [
    { kind: "link", name: "Home", href: `${server.url}/outline.html#/` },
    { kind: "link", name: "Cart (2)", href: `${server.url}/outline.html#/cart` },
  ]);
  await page.close();
});

test("hidden, transparent, off-page and zero-size content is left out; a visible child of a hidden parent is kept", async () => {
  const page = await open("hidden.html");
  const { text, elements } = await page.evaluate(() => snap());
  assert.deepEqual(pick(elements), [
    { kind: "button", name: "Seen button" },
    { kind: "button", name: "More" },
  ]);
  assert.deepEqual(text.split("\n").filter((l) => !l.startsWith("[")), ["Seen text", "visible child of a hidden parent"]);
  await page.close();
});

test("open shadow roots (slots in place) and a same-origin iframe are included; a closed shadow root cannot be", async () => {
  const page = await open("composed.html");
  await page.waitForFunction(() => document.querySelector("iframe").contentDocument?.readyState === "complete");
  const { text, elements } = await page.evaluate(() => snap());
  const ids = elements.map((e) => e.index);
  assert.equal(
    text,
    [
      "# Composed",
      "## Slotted title",
      "Shadow text",
      `[${ids[0]}] button "Shadow button"`,
      `[${ids[1]}] button "Light button"`,
      'frame "Newsletter":',
      "  Frame text",
      `  [${ids[2]}] textbox "Your email" type=email value=""`,
      `  [${ids[3]}] button "Subscribe"`,
      "After the frame",
    ].join("\n"),
  );
  // Acting inside the frame and the shadow root works like anywhere else.
  const typed = await page.evaluate((i) => tryAct({ action: "type", index: i, text: "a@b.c" }), ids[2]);
  assert.equal(typed.error, undefined, JSON.stringify(typed));
  assert.equal(await page.evaluate(() => document.querySelector("iframe").contentDocument.getElementById("subscribe").value), "a@b.c");
  await page.close();
});

test("a long page is cut to maxTokens: controls, headings and what is in view first, and a note of what was left out", async () => {
  const page = await open("long.html");
  const { text, elements, tokens } = await page.evaluate(() => snap({ maxTokens: 200 }));
  assert.ok(tokens <= 200, `${tokens} tokens`);
  assert.deepEqual(pick(elements), [
    { kind: "button", name: "Top button" },
    { kind: "button", name: "Bottom button" },
  ]);
  const lines = text.split("\n");
  assert.equal(lines[0], "# Long page");
  assert.match(lines.at(-1), /^\(\d+ more lines of the page are not shown: scroll or act to see them\)$/);
  // The paragraphs kept are ones in view, wherever the page is scrolled to.
  const inView = () =>
    page.evaluate(() => [...document.querySelectorAll("p")].filter((p) => p.getBoundingClientRect().bottom > 0 && p.getBoundingClientRect().top < innerHeight).map((p) => p.textContent.split(":")[0]));
  const kept = (t) => t.split("\n").filter((l) => l.startsWith("Paragraph")).map((l) => l.split(":")[0]);
  const top = await inView();
  assert.ok(top.includes("Paragraph 1") && !top.includes("Paragraph 100"), "the fixture's first screen");
  assert.ok(kept(text).length >= 3, text);
  for (const p of kept(text)) assert.ok(top.includes(p), `${p} is in view`);
  await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  const end = await page.evaluate(() => snap({ maxTokens: 200 }));
  const bottom = await inView();
  assert.ok(bottom.includes("Paragraph 300") && !bottom.includes("Paragraph 1"), "the fixture's last screen");
  assert.ok(kept(end.text).length >= 3, end.text);
  for (const p of kept(end.text)) assert.ok(bottom.includes(p), `${p} is in view`);
  const whole = await page.evaluate(() => snap({ maxTokens: 100000 }));
  assert.equal(whole.text.split("\n").length, 303, "with room for it, everything");
  await page.close();
});

test("indices stay with living elements across snapshots; a removed, disabled, excluded or foreign target is refused clearly", async () => {
  const page = await open("dynamic.html");
  const first = await page.evaluate(() => snap());
  const id = Object.fromEntries(first.elements.map((e) => [e.name, e.index]));
  assert.deepEqual(Object.keys(id), ["Add row", "Remove A", "Remove B", "Disabled action", "Elsewhere", "Another page", "Delete account", "Close account"]);

  assert.equal((await page.evaluate((i) => tryAct({ action: "click", index: i }), id["Add row"])).error, undefined);
  const second = await page.evaluate(() => snap());
  const again = Object.fromEntries(second.elements.map((e) => [e.name, e.index]));
  for (const name of Object.keys(id)) assert.equal(again[name], id[name], `${name} keeps its index`);
  assert.ok(!Object.values(id).includes(again["Remove new 1"]), "a new element gets a new index");

  // Remove A through the second snapshot, then try it again through the same snapshot.
  assert.equal((await page.evaluate((i) => tryAct({ action: "click", index: i }), id["Remove A"])).error, undefined);
  const gone = await page.evaluate((i) => tryAct({ action: "click", index: i }), id["Remove A"]);
  assert.deepEqual([gone.error, gone.code], ["AgentActionError", "gone"], JSON.stringify(gone));
  assert.match(gone.message, /no longer on the page/);
  const disabled = await page.evaluate((i) => tryAct({ action: "click", index: i }), id["Disabled action"]);
  assert.equal(disabled.code, "disabled");
  const unknown = await page.evaluate(() => tryAct({ action: "click", index: 999 }));
  assert.equal(unknown.code, "unknown_index");
  const foreign = await page.evaluate((i) => tryAct({ action: "click", index: i }), id["Elsewhere"]);
  assert.equal(foreign.code, "not_allowed");
  assert.match(foreign.message, /elsewhere\.example/);
  const notAllowed = await page.evaluate((i) => tryAct({ action: "click", index: i }, { allow: { actions: ["type", "done"] } }), id["Add row"]);
  assert.equal(notAllowed.code, "not_allowed");
  // Leaving the page needs confirmation: refused without confirm(), declined when it says no.
  const unconfirmed = await page.evaluate((i) => tryAct({ action: "click", index: i }), id["Another page"]);
  assert.equal(unconfirmed.code, "declined");
  const asked = await page.evaluate(async (i) => {
    const seen = [];
    const r = await tryAct({ action: "click", index: i }, { confirm: (a, d) => (seen.push({ a, reasons: d.reasons, url: d.url }), false) });
    return { r, seen };
  }, id["Another page"]);
  assert.equal(asked.r.code, "declined");
  assert.deepEqual(asked.seen, [{ a: { action: "click", index: id["Another page"] }, reasons: ["navigate"], url: `${server.url}/other-page` }]);
  assert.equal(await page.evaluate(() => location.pathname), "/dynamic.html");

  // An excluded element is shown as text but is no control, and act() refuses it even by index.
  const excluded = await page.evaluate(() => snap({ exclude: "[data-agent-exclude]" }));
  assert.ok(!excluded.elements.some((e) => e.name === "Delete account" || e.name === "Close account"), "nor what an excluded element holds");
  assert.ok(excluded.text.split("\n").includes("Delete account"), excluded.text);
  const refused = await page.evaluate((i) => tryAct({ action: "click", index: i }, { allow: { exclude: "[data-agent-exclude]" } }), id["Delete account"]);
  assert.equal(refused.code, "unknown_index");
  assert.equal(await page.evaluate(() => document.title), "Dynamic", "Delete account was never clicked");
  await page.close();
});

test("act() drives a React-controlled form: typing, selecting and checking update React's state; submitting waits for confirm", async () => {
  const page = await open("react/react.html");
  await page.waitForSelector("#state");
  const state = () => page.evaluate(() => JSON.parse(document.getElementById("state").textContent));
  // The check can fail: React ignores a value set the plain way, even with an input event.
  await page.evaluate(() => {
    const input = document.querySelector("input:not([type])");
    input.value = "plain";
    input.dispatchEvent(new Event("input", { bubbles: true }));
  });
  await page.waitForTimeout(50);
  assert.equal((await state()).name, "", "a plain .value write does not reach React");

  const { elements } = await page.evaluate(() => snap());
  const id = Object.fromEntries(elements.map((e) => [e.name, e.index]));
  assert.deepEqual(pick(elements, ["kind", "name"]), [
    { kind: "textbox", name: "Name" },
    { kind: "select", name: "Size" },
    { kind: "checkbox", name: "Newsletter" },
    { kind: "button", name: "Send" },
  ]);
  const typed = await page.evaluate((i) => tryAct({ action: "type", index: i, text: "Grace Hopper" }), id.Name);
  assert.equal(typed.error, undefined, JSON.stringify(typed));
  assert.match(typed.observation, /^typed "Grace Hopper" into \[\d+\] textbox "Name"$/);
  assert.equal((await page.evaluate((i) => tryAct({ action: "select", index: i, option: "Large" }), id.Size)).error, undefined);
  assert.equal((await page.evaluate((i) => tryAct({ action: "check", index: i }), id.Newsletter)).error, undefined);
  assert.deepEqual(await state(), { name: "Grace Hopper", size: "L", news: true, sent: 0 });
  const badOption = await page.evaluate((i) => tryAct({ action: "select", index: i, option: "Huge" }), id.Size);
  assert.equal(badOption.code, "invalid");

  // Submitting the form is confirmed first; Enter in a field submits too.
  assert.equal((await page.evaluate((i) => tryAct({ action: "click", index: i }), id.Send)).code, "declined");
  assert.equal((await state()).sent, 0);
  await page.evaluate((i) => tryAct({ action: "click", index: i }, { confirm: () => true }), id.Send);
  assert.equal((await state()).sent, 1);
  const enter = await page.evaluate((i) => tryAct({ action: "type", index: i, text: "Ada", enter: true }, { confirm: (a, d) => d.reasons.includes("submit") }), id.Name);
  assert.equal(enter.error, undefined, JSON.stringify(enter));
  assert.deepEqual(await state(), { name: "Ada", size: "L", news: true, sent: 2 });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("bad arguments fail before anything runs, naming what is wrong", async () => {
  const page = await open("dynamic.html");
  const errors = await page.evaluate(async () => {
    const fail = async (f) => {
      try {
        await f();
        return null;
      } catch (e) {
        return `${e.name}: ${e.message}`;
      }
    };
    // Only the argument checks run: each call fails before it would use the engine.
    const engine = { generate: () => Promise.reject(new Error("not reached")), countTokens: () => Promise.reject(new Error("not reached")) };
    return [
      await fail(() => agent.snapshot(document.body, { exclude: "[[" })),
      await fail(() => agent.snapshot("body")),
      await fail(() => agent.snapshot(document.body, { maxTokens: 3 })),
      await fail(() => agent.runAgent({ goal: "x" })),
      await fail(() => agent.runAgent({ engine, goal: " " })),
      await fail(() => agent.runAgent({ engine, goal: "x", maxSteps: 0 })),
      await fail(() => agent.runAgent({ engine, goal: "x", allow: { actions: ["click", "delete"] } })),
      await fail(() => agent.runAgent({ engine, goal: "x", allow: { origins: ["not a url"] } })),
      await fail(() => agent.runAgent({ engine, goal: "x", options: { response_format: { type: "text" } } })),
      await fail(() => agent.act(window.last ?? { elements: [] }, { action: "click", index: 1 }, { allow: { exclude: "a[" } })),
    ];
  });
  const expected = [
    /^InvalidArgumentError: exclude: "\[\[" is not a valid CSS selector$/,
    /^InvalidArgumentError: snapshot\(root\): root must be a DOM element/,
    /^InvalidArgumentError: maxTokens must be an integer >= 16, got 3$/,
    /^InvalidArgumentError: runAgent: engine must be a Hearth engine/,
    /^InvalidArgumentError: runAgent: goal must be a non-empty string$/,
    /^InvalidArgumentError: runAgent: maxSteps must be an integer >= 1, got 0$/,
    /^InvalidArgumentError: allow.actions: unknown "delete"/,
    /^InvalidArgumentError: allow.origins: "not a url" is not a URL origin/,
    /^InvalidArgumentError: runAgent: options.response_format is set by the agent$/,
    /^InvalidArgumentError: allow.exclude: "a\[" is not a valid CSS selector$/,
  ];
  assert.equal(errors.length, expected.length);
  errors.forEach((e, i) => assert.match(e ?? "no error", expected[i]));
  await page.close();
});

test("a deeply nested page is read to a bounded depth (512 levels), not followed to the bottom", async () => {
  const page = await open("hidden.html");
  const out = await page.evaluate(async () => {
    let node = document.body;
    for (let i = 0; i < 2000; i++) node = node.appendChild(document.createElement("div"));
    node.textContent = "the bottom";
    try {
      const s = await agent.snapshot(document.body);
      return { ok: true, buttons: s.elements.map((e) => e.name), bottom: s.text.includes("the bottom") };
    } catch (e) {
      return { ok: false, error: String(e) };
    }
  });
  assert.deepEqual(out, { ok: true, buttons: ["Seen button", "More"], bottom: false });
  await page.close();
});
