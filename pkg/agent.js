// hearth-web/agent: a browser agent over the page's DOM, run by a Hearth engine in the same page.
// snapshot() reads what a person sees, act() does what a person would do, runAgent() loops the two
// with a model whose every output is an allowed action on an element that exists (docs/AGENT.md in
// the repository: the design and the threat model).

export { snapshot } from "./src/agent/snapshot.js";
export { act, allowOf, AgentActionError, ACTIONS, DEFAULT_CONFIRM } from "./src/agent/actions.js";
export { actionSchema } from "./src/agent/schema.js";
export { runAgent } from "./src/agent/run.js";
