// The demo page's entry. It registers the service worker that keeps the page usable offline
// (sw.js), imports the npm package (served at ./pkg/), and wires the model panel to the chat.
// The model runs in a Web Worker (Hearth.loadInWorker), so the page stays responsive.

import { $, showAlert } from "./src/ui.js";
import { createChat } from "./src/chat.js";
import { createModelPanel } from "./src/models.js";

/**
 * Registers sw.js and waits (briefly) until it controls the page, so that the package's modules and
 * wasm, fetched below and by the worker, pass through it and are kept for offline visits.
 */
async function offlineReady() {
  if (!("serviceWorker" in navigator)) return false;
  try {
    await navigator.serviceWorker.register("./sw.js");
    if (navigator.serviceWorker.controller) return true;
    const claimed = new Promise((resolve) =>
      navigator.serviceWorker.addEventListener("controllerchange", () => resolve(true), { once: true }),
    );
    const timeout = new Promise((resolve) => setTimeout(() => resolve(false), 5000));
    return await Promise.race([claimed, timeout]);
  } catch (e) {
    console.warn("The service worker did not register; the page will need the network.", e);
    return false;
  }
}

function showNetwork() {
  $("network").textContent = navigator.onLine
    ? "Online"
    : "Offline: this page and the models stored on this device still work";
  $("network").classList.toggle("offline", !navigator.onLine);
}

async function main() {
  showNetwork();
  window.addEventListener("online", showNetwork);
  window.addEventListener("offline", showNetwork);
  $("alert-reload").addEventListener("click", () => location.reload());

  const offline = await offlineReady();
  document.documentElement.dataset.offlineReady = String(offline);
  let Hearth;
  try {
    ({ Hearth } = await import("./pkg/hearth.js"));
  } catch (e) {
    showAlert(`Hearth's package did not load (${e.message}). ${navigator.onLine ? "Reload the page." : "Connect once to use this page offline."}`);
    return;
  }
  // Without WebGPU the model runs on the CPU ("Run on" says why); no alert needed.
  const support = await Hearth.support();

  const chat = createChat();
  await createModelPanel({ Hearth, support, onEngine: (engine) => chat.setEngine(engine) });
  document.documentElement.dataset.ready = "true";
}

main();
