// Hearth.cache: what load() stored in IndexedDB, by model URL (resolved like load() resolves it).

import * as store from "./store.js";

export const cache = {
  /** Whether the manifest, tokenizer and every shard of the model at `url` are stored. */
  has: (url) => store.isComplete(store.modelKey(url)),
  /** Every stored model: [{url, name, bytes, complete, storedAt}]. */
  list: () => store.listModels(),
  /**
   * Deletes the model's record and shards; resolves with whether anything was stored. Waits for a
   * load of the same model (in any tab) to end first.
   */
  delete: (url) => {
    const key = store.modelKey(url);
    return store.withModelLock(key, undefined, () => store.deleteModel(key));
  },
  /** The origin's storage usage and quota, as navigator.storage.estimate() reports them. */
  estimate: async () => (await globalThis.navigator?.storage?.estimate?.()) ?? { usage: 0, quota: 0 },
};
