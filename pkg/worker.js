// Entry of the module Web Worker behind Hearth.loadInWorker() (src/worker-proxy.js holds the other
// end). It loads one model and answers calls by id:
//   in:  {id, type: "load", url, options} | {id, type: "generate", input, options}
//        | {id, type: "countTokens", input, options} | {id, type: "embed", texts, options}
//        | {id, type: "dispose"}
//        | {id, type: "abort"} (aborts call `id`)
//   out: {id, type: "progress", progress} | {id, type: "chunk", chunk} (text, {tool_calls} or {logprobs})
//        | {id, type: "disposing"} (a dispose request was received)
//        | {id, type: "result", value} | {id, type: "error", error: {name, message, ...}}
//        | {type: "template", running} (no id: the chat template's render starts or ends; the page
//          stops this worker when one runs too long)

import { load } from "./src/load.js";
import { watchTemplates } from "./src/engine.js";
import { EMBED } from "./src/embeddings.js";
import { EngineDisposedError, toPlain } from "./src/errors.js";

watchTemplates({
  enter: () => self.postMessage({ type: "template", running: true }),
  leave: () => self.postMessage({ type: "template", running: false }),
});

let engine = null;
const calls = new Map(); // call id -> AbortController

async function handle(data, signal, post) {
  switch (data.type) {
    case "load": {
      const onProgress = (progress) => post({ type: "progress", progress });
      engine = await load(data.url, { ...data.options, signal, onProgress });
      return engine.info;
    }
    case "generate": {
      if (!engine) throw new EngineDisposedError();
      const stream = engine.stream(data.input, { ...data.options, signal });
      for await (const d of stream.deltas()) post({ type: "chunk", chunk: "content" in d ? d.content : d });
      return stream.result;
    }
    case "countTokens":
      if (!engine) throw new EngineDisposedError();
      return engine.countTokens(data.input, { ...data.options, signal });
    case "embed":
      if (!engine) throw new EngineDisposedError();
      return engine[EMBED](data.texts, { ...data.options, signal });
    case "dispose":
      // Answered at once, so the page knows this worker is not stuck (src/worker-proxy.js).
      post({ type: "disposing" });
      await engine?.dispose();
      return undefined;
    default:
      throw new Error(`unknown message type ${data.type}`);
  }
}

self.addEventListener("message", async ({ data }) => {
  const { id } = data;
  if (data.type === "abort") {
    calls.get(id)?.abort();
    return;
  }
  const controller = new AbortController();
  calls.set(id, controller);
  const post = (message) => self.postMessage({ id, ...message });
  try {
    post({ type: "result", value: await handle(data, controller.signal, post) });
  } catch (e) {
    post({ type: "error", error: toPlain(e) });
  } finally {
    calls.delete(id);
  }
});
