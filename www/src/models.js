// The model panel: the picker (www/models.json, or a pasted URL), loading with progress and
// Cancel, the models stored on this device (size, delete, storage estimate) and the GPU/model info.

import { $, el, formatBytes, formatSeconds, describeError, showAlert, clearAlert } from "./ui.js";

const CUSTOM = "custom";
const LAST_URL = "hearth-demo:model";
const LAST_BACKEND = "hearth-demo:backend"; // localStorage: the "Run on" choice

/** models.json: [{name, url, size, architecture, quantization, default?}], URLs made absolute. */
async function fetchCatalog() {
  const url = new URL("models.json", document.baseURI);
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const list = await response.json();
    return list.map((m) => ({ ...m, url: directoryUrl(new URL(m.url, url)) }));
  } catch (e) {
    showAlert(`Could not read the model list (models.json: ${e.message}). You can still paste a model URL.`);
    return [];
  }
}

/** Whether `url` (absolute) names a GGUF file (kept as it is: its query may be a signature). */
const isGguf = (url) => /\.gguf$/i.test(new URL(url).pathname);

/** The key Hearth.cache lists `url`'s model under (a GGUF file's too: its URL and a "/"). */
const storedKey = (url) => (url && isGguf(url) ? directoryUrl(url) : url);

/** The form Hearth keys its cache by: absolute, ending in "/". */
function directoryUrl(url) {
  const u = new URL(url, document.baseURI);
  u.hash = "";
  u.search = "";
  if (!u.pathname.endsWith("/")) u.pathname += "/";
  return u.href;
}

/** Bytes per second over the last few seconds of a download. */
class Speedometer {
  #samples = [];
  add(loaded) {
    const now = performance.now();
    this.#samples.push([now, loaded]);
    while (this.#samples.length > 2 && now - this.#samples[0][0] > 3000) this.#samples.shift();
  }
  get bytesPerSecond() {
    if (this.#samples.length < 2) return NaN;
    const [[t0, b0], [t1, b1]] = [this.#samples[0], this.#samples.at(-1)];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : NaN;
  }
}

/** The progress bar and its lines, from the package's progress events. */
class ProgressView {
  phases = {}; // phase -> the latest event
  #speed = new Speedometer();

  constructor() {
    $("progress-box").hidden = false;
    this.#render("Preparing…", 0, 1, "");
  }

  update(event) {
    this.phases[event.phase] = event;
    if (event.phase === "download") this.#speed.add(event.loaded);
    const { download, cache } = this.phases;
    // The last step: into GPU buffers ("gpu") or the CPU engine's memory ("memory").
    const [where, place] = this.phases.gpu ? ["the GPU", this.phases.gpu] : ["memory", this.phases.memory];
    const gpuText = place ? ` · in ${where}: ${Math.floor((100 * place.loaded) / Math.max(1, place.total))}%` : "";
    if (event.phase === "ready") {
      this.#render("Ready", 1, 1, "");
    } else if (download && download.loaded < download.total) {
      const speed = this.#speed.bytesPerSecond;
      const left = (download.total - download.loaded) / speed;
      this.#render(
        download.resumed ? "Resuming the download (the shards already stored are not downloaded again)" : "Downloading",
        download.loaded,
        download.total,
        `${formatBytes(download.loaded)} of ${formatBytes(download.total)}` +
          (Number.isFinite(speed) && speed > 0 ? ` · ${formatBytes(speed)}/s · about ${formatSeconds(left)} left` : "") +
          ` · ${download.file}${gpuText}`,
      );
    } else if (cache && cache.loaded < cache.total) {
      this.#render("Reading from this device", cache.loaded, cache.total,
        `${formatBytes(cache.loaded)} of ${formatBytes(cache.total)} · ${cache.file}${gpuText}`);
    } else if (place) {
      this.#render(where === "memory" ? "Copying into memory" : "Uploading to the GPU", place.loaded, place.total,
        `${formatBytes(place.loaded)} of ${formatBytes(place.total)} · ${place.file}`);
    }
  }

  /** Whether the load came entirely from IndexedDB. */
  get fromDevice() {
    return !this.phases.download;
  }

  hide() {
    $("progress-box").hidden = true;
  }

  #render(phase, loaded, total, text) {
    $("progress-phase").textContent = phase;
    $("progress").max = Math.max(1, total);
    $("progress").value = Math.min(loaded, total);
    $("progress-text").textContent = text;
  }
}

/**
 * @param {{ Hearth: object, support: object, onEngine: (engine: object | null) => void }} deps
 *   onEngine gets the loaded engine, or null while a new one loads.
 */
export async function createModelPanel({ Hearth, support, onEngine }) {
  const select = $("model-select");
  const urlInput = $("model-url");
  const catalog = await fetchCatalog();
  let stored = []; // Hearth.cache.list()
  let engine = null;
  let loading = null; // AbortController of the load in progress

  for (const model of catalog) select.append(el("option", { value: model.url, text: model.name }));
  select.append(el("option", { value: CUSTOM, text: "Another model (paste its URL)…" }));
  const last = localStorage.getItem(LAST_URL);
  const initial = catalog.find((m) => m.url === last) ?? catalog.find((m) => m.default) ?? catalog[0];
  if (initial) select.value = initial.url;
  else select.value = CUSTOM;
  if (last && !initial) urlInput.value = last;

  const selectedUrl = () => {
    if (select.value !== CUSTOM) return select.value;
    const text = urlInput.value.trim();
    if (!text) return null;
    try {
      // A GGUF file's URL as it is (its query may be a signature); a package's as its directory.
      const absolute = new URL(text, document.baseURI).href;
      return isGguf(absolute) ? absolute : directoryUrl(text);
    } catch {
      return null;
    }
  };
  // Hearth.inspect() of the selection: {key, result} or {key, error}; key = backend and URL.
  let inspection = { key: null };
  let inspectTimer;
  const inspectionKey = () => `${$("backend-select").value} ${selectedUrl()}`;
  /** What the selected package needs here, from its manifest (no download), shown in the details. */
  async function inspectSelection() {
    const url = selectedUrl();
    const key = inspectionKey();
    inspection = { key };
    // Offline, only a model stored whole can be read (and loaded).
    const complete = stored.find((s) => s.url === storedKey(url))?.complete;
    if (!url || (!navigator.onLine && !complete)) return renderDetails();
    try {
      // revalidate: false, as load() below: a model stored whole costs no request.
      const result = await Hearth.inspect(url, { backend: $("backend-select").value, revalidate: false });
      if (inspection.key === key) inspection = { key, result };
    } catch (error) {
      if (inspection.key === key) inspection = { key, error };
    }
    renderDetails();
  }
  const inspectSoon = (delay = 0) => {
    clearTimeout(inspectTimer);
    inspectTimer = setTimeout(inspectSelection, delay);
  };
  const nameOf = (url) => catalog.find((m) => m.url === url)?.name ?? stored.find((s) => s.url === storedKey(url))?.name ?? url;

  function renderDetails() {
    $("custom-url-row").hidden = select.value !== CUSTOM;
    const url = selectedUrl();
    const model = catalog.find((m) => m.url === url);
    const copy = stored.find((s) => s.url === storedKey(url));
    const gguf = url && isGguf(url);
    const parts = model ? [model.architecture, model.quantization, formatBytes(model.size)] : [];
    if (copy?.complete) parts.push("stored on this device");
    else if (copy) parts.push(`partly stored (${formatBytes(copy.bytes)}): loading resumes`);
    else if (url) parts.push(navigator.onLine ? "downloads once, then stays on this device" : "not stored: needs the network");
    const { result, error } = inspection.key === inspectionKey() ? inspection : {};
    if (result) {
      const where = result.backend === "cpu" ? "of memory on the CPU" : "of GPU memory";
      parts.push(`${formatCount(result.parameters)} parameters`,
        `needs ${formatBytes(result.memory.total)} ${where} at ${result.context} tokens`);
    }
    if (result?.source.kind === "gguf") {
      parts.push(`a GGUF file of ${formatBytes(result.source.bytes ?? NaN)}, converted on this device as it downloads`);
    }
    $("model-details").textContent = parts.join(" · ");
    $("model-fit").textContent = result && !result.fits
      ? `It will not run here: ${result.reasons.join(" ")}`
      : error ? `${error.name === "NetworkError" ? `Its ${gguf ? "header" : "manifest"} could not be read. ` : ""}${describeError(error).text}` : "";
    $("load").disabled = Boolean(loading) || !url || (!navigator.onLine && !copy?.complete) ||
      ($("backend-select").value === "webgpu" && !support.webgpu);
    $("backend-details").textContent = backendDetails($("backend-select").value);
  }

  async function refreshStored() {
    try {
      stored = await Hearth.cache.list();
    } catch (e) {
      stored = [];
      $("storage").textContent = `IndexedDB is not usable here (${e.message}): models cannot be stored.`;
    }
    const list = $("cached");
    list.replaceChildren();
    for (const model of stored) {
      const name = nameOf(model.url);
      const item = el("li");
      const label = el("span", { className: "name", text: name });
      const detail = el("span", {
        className: "hint",
        text: `${formatBytes(model.bytes)}${model.complete ? "" : " · partial (loading it resumes)"}`,
      });
      const remove = el("button", { type: "button", text: "Delete", "aria-label": `Delete ${name} from this device` });
      remove.disabled = Boolean(loading);
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        await Hearth.cache.delete(model.url);
        $("load-status").textContent = `Deleted ${name} from this device.`;
        await refreshStored();
        inspectSoon(); // the storage it needs again
      });
      item.append(label, detail, remove);
      list.append(item);
    }
    if (stored.length === 0) list.append(el("li", { className: "hint", text: "No models stored yet." }));
    const { usage = 0, quota = 0 } = await Hearth.cache.estimate().catch(() => ({}));
    if (quota) $("storage").textContent = `This site uses ${formatBytes(usage)} of the ${formatBytes(quota)} it may use.`;
    renderDetails();
  }

  /** What the choice in "Run on" means on this browser. */
  function backendDetails(choice) {
    if (choice === "webgpu") {
      return support.webgpu ? `On ${support.adapter}.` : `Not available: ${support.reason}`;
    }
    if (choice === "cpu") return "WebAssembly with SIMD on this device's processor.";
    return `Here: the ${support.backend === "webgpu" ? "GPU" : "CPU"}, because ${support.backendReason}.`;
  }

  function renderInfo(info) {
    const engineRows = (info) =>
      info.backend === "cpu"
        ? [
            ["Runs on", `the CPU: ${info.adapter}, ${info.threads} thread${info.threads === 1 ? "" : "s"}`],
            ["Why", info.backendReason],
          ]
        : [
            ["Runs on", `the GPU: ${info.adapter}` + (info.software ? " (a CPU emulation of a GPU: slow)" : "")],
            ["Why", info.backendReason],
            ["shader-f16", info.kvF16 ? "used (KV cache in f16)" : "not used (KV cache in f32)"],
            ["GPU memory", formatBytes(info.gpuBytes)],
          ];
    const rows = info
      ? [
          ["Model", info.name],
          ["Architecture", info.architecture],
          ...engineRows(info),
          ["Context", `${info.contextLength} tokens`],
          ["Vocabulary", `${info.vocabSize} tokens`],
        ]
      : [
          ["Adapter", support.webgpu ? support.adapter : "none (WebGPU unavailable)"],
          ["shader-f16", support.webgpu ? (support.shaderF16 ? "available" : "not available") : "–"],
          ["Automatic choice", `the ${support.backend === "webgpu" ? "GPU" : "CPU"}: ${support.backendReason}`],
          ["Model", "none loaded"],
        ];
    $("info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  async function load() {
    const url = selectedUrl();
    if (!url || loading) return;
    clearAlert();
    loading = new AbortController();
    $("cancel").hidden = false;
    $("load-status").textContent = "";
    const progress = new ProgressView();
    const poll = setInterval(refreshStored, 1000); // partial downloads appear in the stored list
    if (engine) {
      onEngine(null);
      await engine.dispose().catch(() => {});
      engine = null;
      renderInfo(null);
    }
    await refreshStored();
    try {
      // revalidate: false — a model stored whole loads without a single request.
      engine = await Hearth.loadInWorker(url, {
        backend: $("backend-select").value,
        signal: loading.signal,
        revalidate: false,
        onProgress: (event) => progress.update(event),
      });
      localStorage.setItem(LAST_URL, url);
      $("load-status").textContent =
        `${nameOf(url)} is ready` + (progress.fromDevice ? ", loaded from this device without the network." : ".");
      renderInfo(engine.info);
      onEngine(engine);
    } catch (e) {
      if (e?.name === "AbortError") {
        $("load-status").textContent = "Cancelled. What was downloaded is kept: loading again resumes from there.";
      } else {
        const { text, reload } = describeError(e);
        showAlert(text, { reload });
        $("load-status").textContent = "The model did not load.";
      }
    } finally {
      clearInterval(poll);
      progress.hide();
      loading = null;
      $("cancel").hidden = true;
      await refreshStored();
      inspectSoon(); // what is stored now
    }
  }

  select.addEventListener("change", () => {
    renderDetails();
    inspectSoon();
  });
  // The choice is kept across visits, like the model.
  const backendSelect = $("backend-select");
  backendSelect.value = localStorage.getItem(LAST_BACKEND) ?? "auto";
  if (!backendSelect.value) backendSelect.value = "auto"; // a stored value this page no longer offers
  backendSelect.addEventListener("change", () => {
    localStorage.setItem(LAST_BACKEND, backendSelect.value);
    renderDetails();
    inspectSoon();
  });
  urlInput.addEventListener("input", () => {
    renderDetails();
    inspectSoon(500); // once typing pauses
  });
  $("load-form").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  $("cancel").addEventListener("click", () => loading?.abort());
  for (const event of ["online", "offline"]) {
    window.addEventListener(event, () => {
      renderDetails();
      inspectSoon();
    });
  }

  renderInfo(null);
  await refreshStored();
  inspectSoon();
}

/** "135M", "1.2B": a parameter count. */
function formatCount(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  return n >= 1e3 ? `${Math.round(n / 1e3)}k` : String(n);
}
