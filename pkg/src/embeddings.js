// Embeddings of an encoder (docs/WEB.md): `engine.embed(texts, {normalize, signal})` and OpenAI's
// `engine.embeddings.create({input, model, encoding_format, dimensions})`. Shared by the engine and
// the worker proxy: each supplies `[EMBED](texts, {normalize, signal})`, resolving with
// {embeddings: Float32Array[], tokens: number[]} (the tokens of each text that counted).

import { InvalidArgumentError } from "./errors.js";
import { signalOf } from "./options.js";

/** The method each engine implements (a symbol: not part of the public API). */
export const EMBED = Symbol("embed");

/** The texts of `input`: one string, or a non-empty array of strings. */
export function embedTexts(input) {
  if (typeof input === "string") return [input];
  if (Array.isArray(input) && input.length > 0 && input.every((t) => typeof t === "string")) return input;
  if (Array.isArray(input) && input.length > 0 && input.every((t) => typeof t === "number" || Array.isArray(t))) {
    throw new InvalidArgumentError("input as token ids is not supported: give the texts (a string or an array of strings)");
  }
  throw new InvalidArgumentError("input must be a string or a non-empty array of strings");
}

/** `embed()`'s options as the engines take them: {normalize (undefined: as the model says), signal}. */
export function embedOptions(options = {}) {
  if (options === null || typeof options !== "object") throw new InvalidArgumentError("options must be an object");
  for (const key of Object.keys(options)) {
    if (options[key] !== undefined && key !== "normalize" && key !== "signal") {
      throw new InvalidArgumentError(`options.${key} is not supported (embed() takes normalize, signal)`);
    }
  }
  const { normalize } = options;
  if (normalize != null && typeof normalize !== "boolean") throw new InvalidArgumentError("options.normalize must be a boolean");
  return { normalize: normalize ?? undefined, signal: signalOf(options) };
}

/** The bytes of `v`'s float32s, little-endian, in base64 (OpenAI's `encoding_format: "base64"`). */
function base64(v) {
  const bytes = new Uint8Array(v.length * 4);
  const view = new DataView(bytes.buffer);
  v.forEach((x, i) => view.setFloat32(i * 4, x, true));
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

const CREATE_FIELDS = ["input", "model", "encoding_format", "dimensions", "user", "signal"];

/** `engine.embeddings`: `create()` in OpenAI's request and response shapes. */
export function createEmbeddings(engine) {
  async function create(params) {
    if (params === null || typeof params !== "object" || Array.isArray(params)) {
      throw new InvalidArgumentError("create() takes {input, model, ...}");
    }
    for (const key of Object.keys(params)) {
      if (params[key] !== undefined && !CREATE_FIELDS.includes(key)) {
        throw new InvalidArgumentError(`${key} is not supported (create() takes ${CREATE_FIELDS.join(", ")})`);
      }
    }
    if (params.input == null) throw new InvalidArgumentError("input is required");
    const texts = embedTexts(params.input);
    const format = params.encoding_format ?? "float";
    if (format !== "float" && format !== "base64") {
      throw new InvalidArgumentError(`encoding_format must be "float" or "base64", got ${JSON.stringify(format)}`);
    }
    const dims = engine.info.embedding?.dimensions;
    if (params.dimensions != null && dims != null && params.dimensions !== dims) {
      throw new InvalidArgumentError(
        `dimensions: ${engine.info.name} gives embeddings of ${dims} numbers, not ${JSON.stringify(params.dimensions)} ` +
          "(it was not trained to be shortened)",
      );
    }
    const { embeddings, tokens } = await engine[EMBED](texts, { signal: signalOf(params) });
    const used = tokens.reduce((a, b) => a + b, 0);
    return {
      object: "list",
      data: embeddings.map((e, index) => ({
        object: "embedding",
        index,
        embedding: format === "base64" ? base64(e) : Array.from(e),
      })),
      // The loaded model's name, whatever the request's `model` said (one engine, one model).
      model: engine.info.name,
      usage: { prompt_tokens: used, total_tokens: used },
    };
  }
  return { create };
}
