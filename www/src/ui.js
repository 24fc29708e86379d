// Small helpers the demo's panels share: element lookup, number formatting, the alert banner.

export const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`index.html has no #${id}`);
  return el;
};

/** "96.6 MB": decimal units, as disks and download managers count. */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return "?";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`;
}

/** "42 s", "3 min 5 s". */
export function formatSeconds(s) {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${Math.max(0, Math.round(s))} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** Creates an element with text content (never HTML) and attributes. */
export function el(tag, { text, className, ...attrs } = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** Shows the page-wide alert; `reload` adds the "Reload the page" button (after a lost device). */
export function showAlert(text, { reload = false } = {}) {
  $("alert-text").textContent = text;
  $("alert-reload").hidden = !reload;
  $("alert").hidden = false;
}

export function clearAlert() {
  $("alert").hidden = true;
}

/** What to tell a person about an error from the package, by its class name. */
export function describeError(e, { contextLength } = {}) {
  const message = e?.message ?? String(e);
  switch (e?.name) {
    case "WebGPUUnavailableError":
      return { text: webgpuAdvice(message) };
    case "AdapterLimitsError":
      return { text: `This GPU's limits are too small for the model: ${message}. Try a smaller model.` };
    case "QuotaExceededError":
      return {
        text:
          "Not enough storage for this model" +
          (e.needed != null && e.available != null
            ? `: it needs ${formatBytes(e.needed)} and this site may use ${formatBytes(Math.max(0, e.available))} more`
            : "") +
          ". Delete stored models below or free disk space, then load again.",
      };
    case "NetworkError":
      return {
        text: navigator.onLine
          ? `Could not download ${e.url ?? "a file"}${e.status ? ` (HTTP ${e.status})` : ""}. Check the URL and the connection; what was downloaded is kept.`
          : "You are offline and this model is not stored on this device. Connect once to download it.",
      };
    case "IntegrityError":
      return { text: `A downloaded file was damaged in transit (${e.file}); it was not stored. Load again to retry.` };
    case "UnsupportedModelError":
    case "BadPackageError":
      return { text: `This model package cannot be used: ${message}` };
    case "ContextLengthError":
      return {
        text:
          `The conversation no longer fits the model's context` +
          (contextLength ? ` of ${contextLength} tokens` : "") +
          ". Start a new chat (or lower Max tokens).",
      };
    case "GpuError":
      return { text: `The GPU stopped working (${message}). The device may have been lost: reload the page.`, reload: true };
    case "InvalidArgumentError":
      return { text: `Check the settings: ${message}` };
    default:
      return { text: `${e?.name ?? "Error"}: ${message}` };
  }
}

/** What to enable in Chrome when WebGPU is missing. */
export function webgpuAdvice(reason) {
  return (
    `WebGPU is not available here (${reason}). Hearth needs it to run the model on your GPU. ` +
    "Use a recent Chrome or Edge (version 113 or later) on a desktop, over https or localhost; " +
    "check chrome://gpu for \"WebGPU: Hardware accelerated\"; if the GPU is blocklisted, turn on " +
    "chrome://flags/#enable-unsafe-webgpu (on Linux also chrome://flags/#enable-vulkan) and restart Chrome."
  );
}
