// Type declarations of hearth-web: run Hearth model packages in the browser on WebGPU.
// (The reference gives AsyncIterableIterator to projects that target ES2017 or older.)
/// <reference lib="es2018.asynciterable" />

// ---------------------------------------------------------------------------------------------
// Loading

/** A progress event of {@link load}. `loaded` never decreases within a phase. */
export interface LoadProgress {
  /**
   * - `"download"`: network bytes of the shards that were not stored yet (at least once per shard
   *   and every ~4 MB); `total` is the bytes of those shards.
   * - `"cache"`: bytes read back from IndexedDB; `total` is the bytes of the stored shards.
   * - `"gpu"`: bytes uploaded to the GPU; `total` is the size of all shards.
   * - `"memory"`: the same for the CPU engine: bytes copied into its memory.
   * - `"ready"`: once, when the engine is ready.
   */
  phase: "download" | "cache" | "gpu" | "memory" | "ready";
  loaded: number;
  total: number;
  /** The shard the event is about (absent on `"ready"`). */
  file?: string;
  /** On `"download"` events: true when some shards were already stored (an interrupted download resumes). */
  resumed?: true;
}

export interface LoadOptions {
  /** Called as the model downloads, is read from the cache and is uploaded to the GPU. */
  onProgress?: (event: LoadProgress) => void;
  /**
   * Aborts the load: it rejects with a `DOMException` named `"AbortError"`, the GPU memory is
   * released, and the shards already downloaded and verified stay stored for the next attempt.
   */
  signal?: AbortSignal;
  /**
   * Store the package in IndexedDB and read what is stored (default `true`). With `false` every
   * shard is downloaded and nothing is read from or written to the cache.
   */
  cache?: boolean;
  /**
   * Cap on the context (KV cache positions) below the model's own, to use less memory. LongRoPE
   * models (Phi-3.5, Phi-4-mini) take their short RoPE factors at or below their original context
   * (4096), the long ones above it, as llama.cpp does.
   */
  maxContext?: number;
  /**
   * Where the model runs (default `"auto"`): `"webgpu"` the GPU engine, `"cpu"` the CPU engine
   * (WebAssembly with SIMD), `"auto"` the GPU engine on a hardware WebGPU adapter and the CPU
   * engine without one or on a software adapter (SwiftShader, llvmpipe), where it is much faster.
   * `engine.info.backend` and `engine.info.backendReason` say what was chosen and why.
   */
  backend?: "auto" | "webgpu" | "cpu";
  /**
   * Ask the network whether the package changed (default `true`). With `false`, a model whose
   * manifest, tokenizer and shards are all stored loads without any request; otherwise as usual.
   */
  revalidate?: boolean;
  /**
   * Milliseconds a download may go without receiving a byte (default 30000). Past it the load
   * rejects with a `NetworkError` saying so; the shards verified so far stay stored, and loading
   * again resumes with the missing ones.
   */
  stallTimeout?: number;
  /**
   * The CPU engine's kernels use WebAssembly relaxed SIMD's 8-bit dot products where the browser
   * has it (default `true`: Chrome and Edge 114+); `false` runs the plain SIMD128 build. Both give
   * the same outputs bit for bit; `engine.info.adapter` says which runs.
   */
  relaxedSimd?: boolean;
  /**
   * A GGUF URL only: the file's SHA-256 (64 hex digits). The whole file is then fetched and hashed
   * as it converts; a mismatch rejects with `IntegrityError` and deletes what was stored from it.
   * Checked when the file is downloaded (a package already stored from it loads without it). For a
   * model split across files: an array, one hash per file, in order.
   */
  sha256?: string | string[];
}

/**
 * Loads the model package at `modelUrl` (a directory URL holding `manifest.json`, resolved against
 * the page's URL) onto the GPU, or the CPU (see `backend`). Shards are verified against the
 * manifest's sha256, stored in IndexedDB and uploaded one at a time; a stored model loads offline.
 * `modelUrl` may name a GGUF file (`….gguf`): its header is read first (a model that cannot run
 * here is refused before any tensor data is fetched), then the file is converted as it downloads
 * into the package `hearth convert` would make, stored shard by shard (each with its sha256) and
 * loaded from the store; a cut-off download resumes at the first missing shard (a range request).
 * It needs IndexedDB (`cache: false` is refused for it). A model split across files loads from its
 * first file's URL (`NAME-00001-of-0000N.gguf`: the others are found by name) or from an array of
 * all its files' URLs, in order; it is stored under the first's.
 *
 * @throws {WebGPUUnavailableError} `backend: "webgpu"` and the browser has no WebGPU or no adapter
 * @throws {OutOfMemoryError} the CPU engine would need more memory than the page may use (checked before downloading)
 * @throws {QuotaExceededError} the origin's storage cannot hold the model (checked before downloading)
 * @throws {BadPackageError} the manifest is malformed or hostile (file names outside the package,
 * counts past their bounds, a file over 1 GiB): refused before any other request, nothing stored
 * @throws {NetworkError | IntegrityError | UnsupportedModelError | GpuError | AdapterLimitsError}
 */
export function load(modelUrl: ModelUrl, options?: LoadOptions): Promise<HearthEngine>;

/** A package directory's URL, a GGUF file's, or the URLs of a split GGUF's files, in order. */
export type ModelUrl = string | URL | Array<string | URL>;

/**
 * Like {@link load}, but the model is loaded and run in a dedicated module Web Worker, so the page
 * stays responsive. The returned engine has the same API; progress, aborts and errors (as the same
 * classes) cross the worker boundary.
 */
export function loadInWorker(modelUrl: ModelUrl, options?: LoadOptions): Promise<Engine>;

// ---------------------------------------------------------------------------------------------
// Generating

export interface ChatMessage {
  /** "system", "user", "assistant" or "tool", as the model's chat template knows them. */
  role: string;
  /** May be `null` in an assistant message that only calls tools. */
  content: string | null;
  /** An assistant message's calls, as a response carried them (pass the message back as it came). */
  tool_calls?: ToolCall[];
  /** A `"tool"` message's answer to the call with this id (required there). */
  tool_call_id?: string;
}

/**
 * A function the model may call. The arguments it writes always follow `parameters` (a JSON
 * Schema of an object; none: no arguments) when a call is made.
 */
export interface Tool {
  type: "function";
  function: { name: string; description?: string; parameters?: JsonSchema; strict?: boolean };
}

/**
 * `"auto"` (the default): text or calls, as the model decides; once it opens a call, the call is
 * constrained. `"none"`: text only (the tools are still shown). `"required"`: one or more calls.
 * A named function: calls of that function.
 */
export type ToolChoice = "auto" | "none" | "required" | { type: "function"; function: { name: string } };

/** A call in a response: `arguments` is JSON text valid against the tool's `parameters`. */
export interface ToolCall {
  /** "call_" followed by random hex. */
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** Options of a request that offers tools (messages only: the chat template shows them). */
export interface ToolOptions {
  tools?: Tool[];
  tool_choice?: ToolChoice;
  /** Whether one answer may hold several calls (default `true`). */
  parallel_tool_calls?: boolean;
}

/** Sampling settings, as in OpenAI's API. Missing fields leave that step out. */
export interface SamplingOptions {
  /** 0 (the default) picks the most likely token every time (greedy, deterministic). */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 (default) keeps all. */
  top_k?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches p, in (0, 1]; default 1. */
  top_p?: number;
  /** Drop tokens less likely than min_p times the most likely one, in [0, 1]; default 0. */
  min_p?: number;
  /** Divide positive (multiply negative) logits of recently seen tokens; > 0, default 1. */
  repetition_penalty?: number;
  /** Subtracted once from the logit of every recently seen token; default 0. */
  presence_penalty?: number;
  /** Subtracted from a recently seen token's logit once per occurrence; default 0. */
  frequency_penalty?: number;
  /** How many recent tokens the penalties look at; default 64. */
  penalty_last_n?: number;
  /** Seed of the random draw (when temperature > 0): the same seed gives the same text; without one,
   *  each call draws a fresh seed. */
  seed?: number;
  /** Stop before any of these strings; they are not part of the text. */
  stop?: string | string[];
  /**
   * Added to these tokens' logits before anything else: token id (as a string key) to a bias from
   * -100 to 100 (-100 all but bans a token, 100 all but forces it), as in OpenAI's API.
   */
  logit_bias?: Record<string, number>;
}

/** A JSON Schema (draft 2020-12 keywords as llguidance supports them), as plain JSON. */
export type JsonSchema = { [keyword: string]: unknown } | boolean;

/**
 * What the generated text must be; the output is constrained token by token, so it always follows
 * the schema, expression or grammar (a generation that reaches `max_tokens` first ends with
 * `finish_reason: "length"` and an incomplete text). OpenAI's shapes, plus Hearth's `regex` and
 * `grammar`. A schema, pattern or grammar the engine cannot compile rejects with
 * {@link InvalidArgumentError} before any token is generated.
 */
export type ResponseFormat =
  /** Free text (the default). */
  | { type: "text" }
  /** Any JSON object. */
  | { type: "json_object" }
  /** JSON valid against `schema` (`name`, `description` and `strict` are accepted; the output always follows the schema). */
  | { type: "json_schema"; json_schema: { schema: JsonSchema; name?: string; description?: string; strict?: boolean } }
  /** Text the regular expression matches as a whole (no anchors needed). */
  | { type: "regex"; pattern: string }
  /** Text in the language of a Lark-style context-free grammar (llguidance's syntax; `start` is the top rule). */
  | { type: "grammar"; grammar: string };

/** Options asking for each generated token's log-probability. */
export interface LogprobsOptions {
  /**
   * Report each generated token's log-probability (`GenerateResult.logprobs`; OpenAI's
   * `choices[0].logprobs`): the log-softmax of the model's logits with `logit_bias` added, before
   * the penalties, temperature, top-k/p and a grammar's mask. On the GPU engine only the chosen and
   * the `top_logprobs` best are read back.
   */
  logprobs?: boolean;
  /** With `logprobs: true`: the 0 to 20 most likely tokens at each step, most likely first (default 0). */
  top_logprobs?: number;
}

/** Every option Hearth takes. Any other field rejects with {@link InvalidArgumentError} naming it. */
export interface GenerateOptions extends SamplingOptions, ToolOptions, LogprobsOptions {
  /** Most tokens to generate (default 256). */
  max_tokens?: number;
  /** Constrain the output to JSON, a JSON Schema, a regular expression or a grammar. */
  response_format?: ResponseFormat;
  /**
   * Reuse the part of the KV cache the prompt shares with what the engine ran last (default
   * `true`): only the rest of the prompt is read. `false` reads the whole prompt again.
   */
  cache_prompt?: boolean;
  /**
   * Aborts the generation: the promise (or the stream) rejects with a `DOMException` named
   * `"AbortError"` and the engine is ready for the next call. Aborted while waiting in the queue,
   * the call never runs.
   */
  signal?: AbortSignal;
}

export interface Usage {
  prompt_tokens: number;
  /** Prompt tokens reused from the KV cache (not read again); see `cache_prompt`. */
  cached_tokens: number;
  completion_tokens: number;
  /** Prompt tokens per second. */
  prefill_tok_s: number;
  /** Generated tokens per second after the first. */
  decode_tok_s: number;
  /** Seconds from the start to the first generated token. */
  ttft_s: number;
}

/**
 * `"stop"`: a stop token or stop string ended the text; `"length"`: max_tokens was reached;
 * `"tool_calls"`: the answer ended after its calls.
 */
export type FinishReason = "stop" | "length" | "tool_calls";

export interface GenerateResult {
  /** The text; with tools, the text outside the calls. */
  text: string;
  /** The calls the answer made, when it made any (a call cut by max_tokens keeps what it had). */
  tool_calls?: ToolCall[];
  /** With `logprobs: true`: one entry per generated id. */
  logprobs?: TokenLogprob[];
  usage: Usage;
  finish_reason: FinishReason;
  /** The generated token ids (a stop token that ended the text is not included). */
  ids: number[];
  /** The prompt's token ids, after the chat template. */
  prompt_ids: number[];
}

/**
 * Text chunks as they become final (never empty strings). Breaking out of `for await` stops the
 * generation and frees the engine for the next call.
 */
export interface GenerationStream extends AsyncIterableIterator<string> {
  /**
   * Everything in the order it came instead of the text alone: `{content}`, with tools
   * `{tool_calls: [ToolCallDelta]}` (OpenAI's deltas), with `logprobs` each step's entries
   * `{logprobs}`. Iterate either this or the stream, not both.
   */
  deltas(): AsyncIterableIterator<{ content?: string; tool_calls?: ToolCallDelta[]; logprobs?: TokenLogprob[] }>;
  /** Set once the generation has ended. */
  readonly usage: Usage | undefined;
  /** Set once the generation has ended. */
  readonly finish_reason: FinishReason | undefined;
  /**
   * The whole result, as {@link Engine.generate} returns it. Reading it starts the generation if
   * iteration has not; it rejects if the generation fails, is aborted or the stream is closed early.
   */
  readonly result: Promise<GenerateResult>;
}

/** One alternative at a step. */
export interface TopLogprob {
  id: number;
  /** The token's text alone (a replacement character where it holds part of a character). */
  token: string;
  /** The token's bytes. */
  bytes: number[];
  logprob: number;
}

/** A generated token's log-probability and the most likely tokens at its step. */
export interface TokenLogprob extends TopLogprob {
  top_logprobs: TopLogprob[];
  /** A grammar forced this token (no choice was made): `logprob` 0 and no alternatives. */
  forced?: true;
}

/** OpenAI's `logprobs` of a choice or chunk (Hearth's entries without `id` and `forced`). */
export interface ChatLogprobs {
  content: { token: string; logprob: number; bytes: number[]; top_logprobs: { token: string; logprob: number; bytes: number[] }[] }[];
}

/** What was loaded and where it runs. */
export interface EngineInfo {
  /** The manifest's model name. */
  name: string;
  architecture: string;
  /** `"webgpu"` (the GPU engine) or `"cpu"` (the CPU engine). */
  backend: "webgpu" | "cpu";
  /** Why that backend, in words (e.g. "the WebGPU adapter (google swiftshader) runs in software; ..."). */
  backendReason: string;
  /** The WebGPU adapter, e.g. "google swiftshader", or the CPU kernels: "CPU (wasm relaxed-simd)" or "CPU (wasm simd128)". */
  adapter: string;
  /** Threads the CPU engine uses (1 on the GPU engine). */
  threads: number;
  /** Whether the KV cache is f16 (the adapter has `shader-f16`). */
  kvF16: boolean;
  /** Whether the adapter is a CPU implementation (SwiftShader, lavapipe): slow. */
  software: boolean;
  /** Tokens the context holds (prompt + generated). */
  contextLength: number;
  /** Whether the package has a chat template: without one, messages are refused (plain prompts only). */
  chatTemplate: boolean;
  vocabSize: number;
  /** GPU memory of weights and KV cache, in bytes (0 on the CPU engine). */
  gpuBytes: number;
  /** Present for an encoder (embeddings: {@link Engine.embed}); absent for a decoder, which generates text. */
  embedding?: EmbeddingInfo;
}

/** What an encoder's embeddings are. */
export interface EmbeddingInfo {
  /** Numbers in each embedding. */
  dimensions: number;
  /** How the tokens' outputs become one vector (sentence-transformers' pooling). */
  pooling: "mean" | "cls" | "last";
  /** Whether embeddings are scaled to unit length unless `{normalize}` says otherwise. */
  normalize: boolean;
  /** Tokens of a text that count, special tokens included; the rest is cut, as sentence-transformers cuts it. */
  maxTokens: number;
}

// ---------------------------------------------------------------------------------------------
// Embeddings

export interface EmbedOptions {
  /** Scale each embedding to unit length (default: as the model says, {@link EmbeddingInfo.normalize}). */
  normalize?: boolean;
  /** Stops between texts: the call rejects with an `AbortError`. */
  signal?: AbortSignal;
}

/** Request of {@link Embeddings.create}, as in OpenAI's API; a field not declared here is refused. */
export interface EmbeddingRequest {
  /** A text or texts (token ids are refused). */
  input: string | string[];
  /** Reported back as the loaded model's name, whatever it says (one engine, one model). */
  model?: string;
  /** `"float"` (default): arrays of numbers; `"base64"`: each embedding's little-endian float32 bytes in base64. */
  encoding_format?: "float" | "base64";
  /** Must equal the model's {@link EmbeddingInfo.dimensions} when given (no model here is trained to be shortened). */
  dimensions?: number;
  user?: string;
  signal?: AbortSignal;
}

export interface EmbeddingResponse {
  object: "list";
  data: { object: "embedding"; index: number; embedding: number[] | string }[];
  model: string;
  /** Tokens that counted, over all texts (cut texts count their first `maxTokens`). */
  usage: { prompt_tokens: number; total_tokens: number };
}

export interface Embeddings {
  /**
   * @throws {UnsupportedModelError} the model is a decoder (it generates text)
   * @throws {InvalidArgumentError} a field of the wrong type, or not supported
   */
  create(request: EmbeddingRequest): Promise<EmbeddingResponse>;
}

// ---------------------------------------------------------------------------------------------
// OpenAI-style chat completions

/**
 * Request of {@link ChatCompletions.create}, as in OpenAI's API. Every field is checked: one not
 * declared here rejects with {@link InvalidArgumentError} naming it (OpenAI's `n` > 1: "not
 * supported yet"). Unlike OpenAI, whose default temperature is 1, a missing `temperature` here
 * means greedy decoding (temperature 0).
 */
export interface ChatCompletionRequest extends SamplingOptions, ToolOptions, LogprobsOptions {
  messages: ChatMessage[];
  stream?: boolean;
  /** Accepted with `stream: true` and ignored: the last chunk always carries `usage`. */
  stream_options?: { include_usage?: boolean };
  /** Most tokens to generate (default 256). */
  max_tokens?: number;
  /** Same as max_tokens (OpenAI's newer name); if both are given they must be equal. */
  max_completion_tokens?: number;
  /** Constrain the output (`json_object`, `json_schema`, and Hearth's `regex` and `grammar`). */
  response_format?: ResponseFormat;
  /** As in {@link GenerateOptions.cache_prompt} (default `true`). */
  cache_prompt?: boolean;
  /** Only 1 is supported. */
  n?: 1;
  /** Ignored: the engine runs the model it loaded; responses' `model` is that model's name. */
  model?: string;
  /** Ignored (OpenAI's end-user id). */
  user?: string;
  /** Ignored: nothing is stored. */
  store?: boolean;
  /** Ignored (OpenAI's stored-completion tags). */
  metadata?: Record<string, string>;
  signal?: AbortSignal;
}

export interface ChatCompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** `cached_tokens`: prompt tokens reused from the KV cache. */
  prompt_tokens_details: { cached_tokens: number };
}

export interface ChatCompletion {
  /** "chatcmpl-" followed by random hex. */
  id: string;
  object: "chat.completion";
  /** Unix time in seconds. */
  created: number;
  /** The model's name from its manifest. */
  model: string;
  /** With calls, `content` is the text before them, or `null` when there is none. */
  choices: [{ index: 0; message: { role: "assistant"; content: string | null; tool_calls?: ToolCall[] }; logprobs?: ChatLogprobs; finish_reason: FinishReason }];
  usage: ChatCompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  /**
   * The first chunk's delta has `role`; the last chunk has a `finish_reason` and no content. A
   * call opens with a delta carrying its `index`, `id`, `type` and `function.name` (arguments
   * `""`); the following deltas of that `index` carry pieces of `function.arguments`.
   */
  choices: [{ index: 0; delta: { role?: "assistant"; content?: string | null; tool_calls?: ToolCallDelta[] }; logprobs?: ChatLogprobs; finish_reason: FinishReason | null }];
  /** On the last chunk only. */
  usage?: ChatCompletionUsage;
}

export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: "function";
  function: { name?: string; arguments: string };
}

export interface ChatCompletions {
  /**
   * With `stream: true`, returns the chunks as an async iterable (directly; awaiting it gives the
   * same object, as with OpenAI's SDK). Otherwise resolves with the whole completion.
   */
  create(request: ChatCompletionRequest & { stream: true }): AsyncIterableIterator<ChatCompletionChunk>;
  create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
  create(request: ChatCompletionRequest): Promise<ChatCompletion> | AsyncIterableIterator<ChatCompletionChunk>;
}

// ---------------------------------------------------------------------------------------------
// Engines

/**
 * A loaded model. Calls are queued, never interleaved: a call waits for the ones before it, and a
 * stream holds the engine from its first `next()` until it ends, is broken out of or is aborted.
 */
export interface Engine {
  readonly info: EngineInfo;
  /**
   * Generates text for a plain prompt (a string, used as is) or a conversation (messages, rendered
   * with the model's chat template).
   * @throws {InvalidArgumentError} an option of the wrong type or range, a field Hearth does not
   *   support, or a response_format the engine cannot compile (before any token)
   * @throws {ContextLengthError} the prompt plus max_tokens does not fit the context
   */
  generate(input: string | ChatMessage[], options?: GenerateOptions): Promise<GenerateResult>;
  /** Like {@link generate}, yielding the text as it is generated. Errors surface when iterating. */
  stream(input: string | ChatMessage[], options?: GenerateOptions): GenerationStream;
  /**
   * Tokens of the prompt {@link generate} would run for the same `input` and `options` (messages
   * through the chat template): its `usage.prompt_tokens`. Options are checked as generate checks
   * them; only the prompt is counted. Queued behind earlier calls, like them.
   * @throws {InvalidArgumentError} an input or option generate would reject
   */
  countTokens(input: string | ChatMessage[], options?: GenerateOptions): Promise<number>;
  readonly chat: { readonly completions: ChatCompletions };
  /**
   * An encoder's embeddings of `texts`, one per text in order. Each text is cut to the model's
   * {@link EmbeddingInfo.maxTokens}. Queued behind earlier calls, like them.
   * @throws {UnsupportedModelError} the model is a decoder (it generates text); an encoder's
   *   {@link generate} throws it the other way round
   * @throws {InvalidArgumentError} texts that are not a string or a non-empty array of strings
   */
  embed(texts: string | string[], options?: EmbedOptions): Promise<Float32Array[]>;
  /** OpenAI-style embeddings: `engine.embeddings.create({input, model})`. */
  readonly embeddings: Embeddings;
  /** Waits for the calls already made, then frees the GPU memory; later calls throw {@link EngineDisposedError}. */
  dispose(): Promise<void>;
}

/** The engine {@link load} returns (on the page's thread or in the worker behind {@link loadInWorker}). */
export declare class HearthEngine implements Engine {
  private constructor();
  readonly info: EngineInfo;
  generate(input: string | ChatMessage[], options?: GenerateOptions): Promise<GenerateResult>;
  stream(input: string | ChatMessage[], options?: GenerateOptions): GenerationStream;
  countTokens(input: string | ChatMessage[], options?: GenerateOptions): Promise<number>;
  readonly chat: { readonly completions: ChatCompletions };
  embed(texts: string | string[], options?: EmbedOptions): Promise<Float32Array[]>;
  readonly embeddings: Embeddings;
  dispose(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Environment and cache

export interface Support {
  /** Whether a WebGPU adapter is available. */
  webgpu: boolean;
  /** Whether the adapter has `shader-f16` (half the KV cache memory). */
  shaderF16: boolean;
  /** The adapter's vendor and architecture, or null. */
  adapter: string | null;
  /** The adapter's largest storage buffer binding, in bytes, or null. */
  maxStorageBufferBindingSize: number | null;
  /** Why WebGPU is unavailable, in words a person can act on; null when it is available. */
  reason: string | null;
  /** Whether the adapter is a software one (SwiftShader, llvmpipe, a fallback adapter). */
  softwareAdapter: boolean;
  /** What `backend: "auto"` chooses here, and why. */
  backend: "webgpu" | "cpu";
  backendReason: string;
  /** Whether the page is cross-origin isolated (COOP + COEP headers). */
  crossOriginIsolated: boolean;
  /** Whether the browser has WebAssembly relaxed SIMD (the CPU engine's faster kernels). */
  relaxedSimd: boolean;
  /** Bytes of memory the CPU engine may use (wasm32's 4 GiB, or half of `navigator.deviceMemory`). */
  cpuMemoryLimit: number;
}

/** What this browser offers, from `navigator.gpu` (loads nothing). */
export function support(): Promise<Support>;

/** Bytes of memory a model takes on one engine. */
export interface MemoryPlan {
  weights: number;
  kvCache: number;
  /** Activations and the module's own (the CPU engine's; 0 for the GPU, a few MB there). */
  working: number;
  total: number;
}

export interface InspectOptions {
  /** As {@link LoadOptions.maxContext}: the KV cache's positions the memory figures are for. */
  maxContext?: number;
  /** As {@link LoadOptions.backend}. */
  backend?: "auto" | "webgpu" | "cpu";
  /** As {@link LoadOptions.revalidate}: `false` inspects a model stored whole without any request. */
  revalidate?: boolean;
  signal?: AbortSignal;
}

/** What a package needs here, from its manifest (or a GGUF's header) alone ({@link inspect}). */
export interface Inspection {
  name: string;
  architecture: string;
  /** Weights, counted as values. */
  parameters: number;
  /** Every shard and file of the package, in bytes (of a GGUF: of the package made of it). */
  downloadBytes: number;
  /** What was read: a package's manifest, or a GGUF's header (the figures are then those of the
   * package `hearth convert` makes of it); `bytes`: the package's, or the GGUF file's length (a split
   * model's: all its files'; null when the server does not say). */
  source: { kind: "package" | "gguf"; bytes: number | null };
  /** Shard bytes already stored for this URL (a load downloads the rest). */
  storedBytes: number;
  /** The engine `load()` would pick with the same options, and why. */
  backend: "webgpu" | "cpu";
  backendReason: string;
  /** KV cache positions the figures are for (maxContext within 1 and the model's context). */
  context: number;
  /** Whether the GPU engine's KV cache would be f16 (the adapter has `shader-f16`). */
  kvF16: boolean;
  /** On the chosen engine: what `engine.info.gpuBytes` then reports for the GPU. */
  memory: MemoryPlan;
  cpu: MemoryPlan;
  gpu: MemoryPlan;
  /** Bytes a load would store, and what this site may still store (null: unknown). */
  storage: { needed: number; available: number | null };
  /** Whether load() with these options would start; otherwise `reasons` says why, with the numbers. */
  fits: boolean;
  reasons: string[];
}

/**
 * What the package at `modelUrl` needs and whether this page can run it, before downloading it:
 * one request (manifest.json), nothing stored. `modelUrl` may name a GGUF file: only its header is
 * read (range requests of 2 MiB, doubling while the header runs on; a server without range support
 * sends one stream, cancelled once the header is read). A model that does not fit is refused by `load()`
 * with the same message, before any download.
 * @throws {NetworkError | BadPackageError | UnsupportedModelError | InvalidArgumentError}
 */
export function inspect(modelUrl: ModelUrl, options?: InspectOptions): Promise<Inspection>;

export interface CachedModel {
  /** The package's directory URL, absolute, ending in "/". */
  url: string;
  /** The manifest's model name. */
  name: string;
  /** Bytes of the shards stored. */
  bytes: number;
  /** Whether every shard is stored (the model loads offline). */
  complete: boolean;
  /** When load() last stored the manifest (ms since the epoch). */
  storedAt: number;
}

export interface ModelCache {
  /** Whether the manifest, tokenizer and every shard of the model at `url` are stored. */
  has(url: string | URL): Promise<boolean>;
  list(): Promise<CachedModel[]>;
  /** Deletes the model and its shards; resolves with whether anything was stored. */
  delete(url: string | URL): Promise<boolean>;
  /** The origin's storage usage and quota (`navigator.storage.estimate()`). */
  estimate(): Promise<StorageEstimate>;
}

/** The models stored in IndexedDB (database "hearth"). */
export const cache: ModelCache;

// ---------------------------------------------------------------------------------------------
// Errors. Every class's `name` equals its class name. Aborts are `DOMException`s named "AbortError".

export class HearthError extends Error {
  constructor(message?: string, options?: { cause?: unknown });
}
/** No `navigator.gpu` or no adapter; the message says what to enable. */
export class WebGPUUnavailableError extends HearthError {
  constructor(reason?: string);
}
/** The adapter's limits are too small for the model (e.g. its storage buffer binding size). */
export class AdapterLimitsError extends HearthError {}
/** The origin's storage cannot hold the model. */
export class QuotaExceededError extends HearthError {
  constructor(needed?: number, available?: number, cause?: unknown);
  /** Bytes the download needs, when known. */
  readonly needed: number | undefined;
  /** Bytes the origin has left, when known. */
  readonly available: number | undefined;
}
/** A downloaded file's size or sha256 differs from the manifest's; nothing of it was stored. */
export class IntegrityError extends HearthError {
  constructor(file: string, expected: string, actual: string, kind?: "sha256" | "size");
  readonly file: string;
  readonly expected: string;
  readonly actual: string;
}
/**
 * A request failed (`status` null: offline, CORS, unreachable, or no byte arrived within
 * `stallTimeout`) or answered a non-2xx status.
 */
export class NetworkError extends HearthError {
  constructor(url: string, status: number | null, cause?: unknown, what?: string);
  readonly url: string;
  readonly status: number | null;
}
/** The package's format version or the model's architecture or tensor types are not supported. */
export class UnsupportedModelError extends HearthError {}
/** The prompt plus `max_tokens` does not fit the context (see `info.contextLength` and `maxContext`). */
export class ContextLengthError extends HearthError {
  /** Tokens the request needs: the prompt's plus `max_tokens`. */
  readonly requested: number;
  /** Tokens the context holds (`info.contextLength`). */
  readonly available: number;
}
/** The manifest, tokenizer or tensors are malformed. */
export class BadPackageError extends HearthError {}
/** An argument or option of the wrong type or range, or a field Hearth does not support (the message names it). */
export class InvalidArgumentError extends HearthError {}
/** The GPU failed (device lost, a read-back failed, ...). */
export class GpuError extends HearthError {}
/** The model does not fit the memory the CPU engine may use; the message names both sizes. */
export class OutOfMemoryError extends HearthError {}
/** The engine was disposed. */
export class EngineDisposedError extends HearthError {
  constructor(message?: string);
}

export interface HearthNamespace {
  load: typeof load;
  loadInWorker: typeof loadInWorker;
  support: typeof support;
  inspect: typeof inspect;
  cache: ModelCache;
}

export const Hearth: HearthNamespace;
export default Hearth;
