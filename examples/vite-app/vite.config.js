// Cross-origin isolation (COOP + COEP) for `vite` and `vite preview`: with it, Hearth's CPU engine
// runs on a pool of threads when the model is loaded in a worker (?worker=1); without it, one thread.
const headers = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};

export default { server: { headers }, preview: { headers } };
