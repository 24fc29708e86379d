// The conversation: messages rendered with the model's chat template (by the package), tokens
// streamed into the page as text (never HTML), Stop, New chat, sampling settings and a system
// prompt (kept in localStorage), and the speed of each answer under it.

import { $, el, describeError, showAlert } from "./ui.js";

const SETTINGS_KEY = "hearth-demo:settings";
const FIELDS = ["system", "temperature", "top-p", "top-k", "max-tokens", "seed"];

/** The generation options the settings form describes; empty fields are left out. */
function readSettings() {
  const number = (id) => {
    const text = $(id).value.trim();
    return text === "" ? undefined : Number(text);
  };
  const options = {
    temperature: number("temperature"),
    top_p: number("top-p"),
    top_k: number("top-k"),
    max_tokens: number("max-tokens"),
    seed: number("seed"),
  };
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
}

function restoreSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") ?? {};
  } catch {
    // unreadable: keep the defaults
  }
  for (const id of FIELDS) {
    if (typeof saved[id] === "string") $(id).value = saved[id];
    $(id).addEventListener("input", () => {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(Object.fromEntries(FIELDS.map((f) => [f, $(f).value]))));
    });
  }
}

/** "First token after 2.3 s · prompt: 34 tokens at 12.0 tok/s · answer: 16 tokens at 4.5 tok/s". */
function statsText(usage, finishReason) {
  const tokS = (x) => (Number.isFinite(x) && x > 0 ? `${x.toFixed(1)} tok/s` : "– tok/s");
  const end = finishReason === "length" ? " · stopped at Max tokens" : "";
  return (
    `First token after ${usage.ttft_s.toFixed(2)} s · prompt: ${usage.prompt_tokens} tokens at ${tokS(usage.prefill_tok_s)}` +
    ` · answer: ${usage.completion_tokens} tokens at ${tokS(usage.decode_tok_s)}${end}`
  );
}

export function createChat() {
  const list = $("messages");
  const prompt = $("prompt");
  let engine = null;
  let history = []; // [{role, content}] of finished turns
  let conversation = 0; // bumped by New chat: an answer that ends later belongs to an old one
  let running = null; // AbortController of the answer being generated

  const nearBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const scroll = (follow) => {
    if (follow) list.scrollTop = list.scrollHeight;
  };

  function addMessage(role, text) {
    const item = el("li", { className: `message ${role}` });
    const content = el("div", { className: "content" });
    content.append(document.createTextNode(text)); // text, never markup
    item.append(el("span", { className: "role", text: role === "user" ? "You" : "Model" }), content);
    list.append(item);
    $("empty").hidden = true;
    return { item, text: content.firstChild };
  }

  function renderControls() {
    const ready = Boolean(engine);
    prompt.disabled = !ready;
    $("send").disabled = !ready || Boolean(running);
    $("stop").disabled = !running;
  }

  async function send() {
    const content = prompt.value.trim();
    if (!engine || running || !content) return;
    prompt.value = "";
    const user = { role: "user", content };
    const system = $("system").value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...history, user];
    addMessage("user", content);
    const answer = addMessage("assistant", "");
    answer.item.setAttribute("aria-busy", "true");
    const stats = el("p", { className: "stats", text: "Reading the prompt…" });
    answer.item.append(stats);
    scroll(true);

    running = new AbortController();
    renderControls();
    const started = performance.now();
    const mine = conversation;
    const remember = (text) => {
      if (mine === conversation && text) history.push(user, { role: "assistant", content: text });
    };
    try {
      const stream = engine.stream(messages, { ...readSettings(), signal: running.signal });
      for await (const chunk of stream) {
        const follow = nearBottom();
        answer.text.appendData(chunk);
        if (stats.textContent.startsWith("Reading")) stats.textContent = "Writing…";
        scroll(follow);
      }
      const result = await stream.result;
      stats.textContent = statsText(result.usage, result.finish_reason);
      remember(result.text);
    } catch (e) {
      if (e?.name === "AbortError") {
        stats.textContent = `Stopped after ${((performance.now() - started) / 1000).toFixed(1)} s.`;
        // The part the reader saw stays part of the conversation (a turn with no answer does not).
        remember(answer.text.data);
      } else {
        const { text, reload } = describeError(e, { contextLength: engine?.info?.contextLength });
        stats.textContent = text;
        stats.classList.add("error");
        if (reload) showAlert(text, { reload });
      }
    } finally {
      answer.item.removeAttribute("aria-busy");
      running = null;
      renderControls();
      if (engine) prompt.focus();
    }
  }

  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && running) running.abort();
  });
  $("stop").addEventListener("click", () => running?.abort());
  $("new-chat").addEventListener("click", () => {
    running?.abort();
    conversation++;
    history = [];
    list.replaceChildren();
    $("empty").hidden = false;
    prompt.focus();
  });
  restoreSettings();
  renderControls();

  return {
    /** The engine to chat with, or null while none is loaded. */
    setEngine(next) {
      running?.abort();
      engine = next;
      renderControls();
    },
  };
}
