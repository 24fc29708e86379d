// Type declarations of hearth-web/agent: a browser agent over the page's DOM (docs/AGENT.md).

import { HearthError } from "./hearth.js";
import type { Engine, SamplingOptions, Usage } from "./hearth.js";

/** A control of the page a person can act on, as a snapshot shows it. */
export interface SnapshotElement {
  /** Its index, `[index]` in the snapshot's text; the same in later snapshots while the element lives. */
  index: number;
  /** "link", "button", "textbox", "password", "textarea", "select", "checkbox", "radio", "editable", or an ARIA role. */
  kind: string;
  /** Its accessible name (label, aria-label, text, title, placeholder), at most 80 characters. */
  name: string;
  /** A text field's value or a select's selected option (never a password's). */
  value?: string;
  /** A select's option labels. */
  options?: string[];
  multiple?: boolean;
  /** A checkbox's, radio button's or switch's state. */
  checked?: boolean;
  /** Whether a password field holds something (its value is never read into a snapshot). */
  filled?: boolean;
  href?: string;
  disabled: boolean;
  /** The live element. */
  element: Element;
}

export interface Snapshot {
  /** The outline: headings (`#`), landmarks (`nav:`), text, tables as `| a | b |` rows, and controls as `[N] kind "name" ...`. */
  text: string;
  /** The controls shown in `text`, and only those. */
  elements: SnapshotElement[];
  /** Tokens of `text` (the engine's tokenizer when one was given, otherwise an estimate). */
  tokens: number;
}

export interface SnapshotOptions {
  /** The budget for `text` (default 1200). Controls, then headings and landmarks, then text in view are kept first. */
  maxTokens?: number;
  /** Counts tokens with this engine's tokenizer. */
  engine?: Engine;
  /** A CSS selector of elements never offered as controls. */
  exclude?: string;
}

/** What a person sees under `root` (default `document.body`), including open shadow roots and same-origin iframes. */
export function snapshot(root?: Element, options?: SnapshotOptions): Promise<Snapshot>;

export type AgentAction =
  | { action: "click"; index: number }
  | { action: "type"; index: number; text: string; enter?: boolean }
  | { action: "select"; index: number; option: string }
  | { action: "check"; index: number }
  | { action: "uncheck"; index: number }
  | { action: "scroll"; direction: "up" | "down" }
  | { action: "navigate"; url: string }
  | { action: "answer"; text: string }
  | { action: "done" }
  | { action: "fail"; reason: string };

export type ActionKind = AgentAction["action"];
/** What `allow.confirm` can name: action kinds, form submission, typing into a password field. */
export type ConfirmKind = ActionKind | "submit" | "password";

export interface Allow {
  /** The actions the agent may take (default: all of them). */
  actions?: ActionKind[];
  /** Origins besides the page's own that `navigate` and links may open (default: none). */
  origins?: string[];
  /** What waits for `confirm` (default `["submit", "navigate", "password"]`). */
  confirm?: ConfirmKind[];
  /** A CSS selector of elements the agent may never act on (they get no index). */
  exclude?: string;
}

export interface ConfirmDetails {
  /** Why it is asked: the entries of `allow.confirm` the action falls under. */
  reasons: ConfirmKind[];
  element: Element | null;
  /** Where a navigation would go. */
  url: string | null;
}

export declare const ACTIONS: readonly ActionKind[];
export declare const DEFAULT_CONFIRM: readonly ConfirmKind[];

/** Why an action was refused; the agent loop shows the message to the model and goes on. */
export class AgentActionError extends HearthError {
  code: "unknown_index" | "gone" | "disabled" | "not_allowed" | "declined" | "invalid";
}

export interface ActOptions {
  /** The snapshot's root (default `document.body`). */
  root?: Element;
  allow?: Allow;
  /** Awaited before anything in `allow.confirm`; anything but `true` declines. Without it such actions are refused. */
  confirm?: (action: AgentAction, details: ConfirmDetails) => boolean | Promise<boolean>;
  signal?: AbortSignal;
}

export interface ActResult {
  /** What the action did, as the model's history shows it. */
  observation: string;
  done?: true;
  answer?: string;
  failed?: true;
  reason?: string;
  /** The URL the page is leaving for. */
  navigated?: string;
}

/** Carries out one action on an element of `snap`, checked against `allow`. Rejects with AgentActionError. */
export function act(snap: Snapshot, action: AgentAction, options?: ActOptions): Promise<ActResult>;

/** The JSON Schema admitting exactly the allowed actions on this snapshot's elements (null when none). */
export function actionSchema(snap: Snapshot, allow: ReturnType<typeof allowOf>): object | null;
/** `allow` with its defaults filled in, checked. */
export function allowOf(allow?: Allow): Readonly<Required<Omit<Allow, "exclude">> & Pick<Allow, "exclude">>;

export interface AgentStep {
  /** 1, 2, ... */
  index: number;
  /** What the model chose (null when its output was unusable). */
  action: AgentAction | null;
  /** What the action did and what changed on the page. */
  observation: string | null;
  /** Why the action was refused (not allowed, declined, element gone or disabled), or null. */
  error: string | null;
  /** AgentActionError's code, or "cut_off" (the action did not fit max_tokens), or null. */
  errorCode: AgentActionError["code"] | "cut_off" | null;
  /** The messages the model was given. */
  prompt: { role: "system" | "user"; content: string }[];
  /** The page as the step saw it (its text is in the prompt). */
  snapshot: Snapshot;
  /** The JSON Schema the step's output was held to. */
  schema: object;
  /** The generation's usage: `prompt_tokens - cached_tokens` were prefilled. */
  usage: Usage | null;
  seconds: number;
}

export interface RunAgentOptions {
  engine: Engine;
  /** What the user wants done (trusted: only this says what to do). */
  goal: string;
  /** Where the agent sees and acts (default `document.body`). Nothing outside it can be touched. */
  root?: Element;
  /** Default 10. */
  maxSteps?: number;
  allow?: Allow;
  confirm?: ActOptions["confirm"];
  /** Stops the run within the current step; it resolves with status "aborted". */
  signal?: AbortSignal;
  /** Called after every step. */
  onStep?: (step: AgentStep) => void;
  /** The snapshot's token budget per step (default 1200). */
  maxTokens?: number;
  /** Sampling options for each step (greedy by default), and `max_tokens`, `cache_prompt`. */
  options?: SamplingOptions & { max_tokens?: number; cache_prompt?: boolean };
}

export interface AgentResult {
  status: "done" | "failed" | "max_steps" | "aborted" | "navigated";
  /** The model's `answer`, when it gave one. */
  answer: string | null;
  /** Why it failed, when it did. */
  reason?: string;
  steps: AgentStep[];
}

export function runAgent(options: RunAgentOptions): Promise<AgentResult>;
