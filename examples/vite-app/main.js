// Load a model package (?model=URL, default ./models/smollm2/) and stream a completion into the page.
// ?prompt=TEXT, ?max_tokens=N and ?worker=1 change what runs. Output goes in as text, never as HTML.
import Hearth from "hearth-web";

const params = new URLSearchParams(location.search);
const modelUrl = params.get("model") ?? "./models/smollm2/";
const prompt = params.get("prompt") ?? "The capital of France is";
const maxTokens = Number(params.get("max_tokens") ?? 32);
const status = document.getElementById("status");
const output = document.getElementById("output");
document.getElementById("model").textContent = modelUrl;

async function run() {
  const load = params.get("worker") === "1" ? Hearth.loadInWorker : Hearth.load;
  const engine = await load(modelUrl, {
    onProgress: (p) => (status.textContent = `${p.phase} ${Math.round((100 * p.loaded) / Math.max(p.total, 1))}%`),
  });
  status.textContent = "generating…";
  const stream = engine.stream(prompt, { max_tokens: maxTokens });
  for await (const chunk of stream) output.textContent += chunk;
  const { usage, ids } = await stream.result;
  const { backend, threads } = engine.info;
  status.textContent = `done: ${usage.completion_tokens} tokens, ${usage.decode_tok_s.toFixed(2)} tok/s on the ${backend} (${threads} thread${threads === 1 ? "" : "s"})`;
  document.body.dataset.ids = JSON.stringify(ids);
  document.body.dataset.threads = String(threads);
  document.body.dataset.done = "true";
}

run().catch((e) => {
  status.textContent = `${e.name}: ${e.message}`;
  document.body.dataset.error = e.name;
});
