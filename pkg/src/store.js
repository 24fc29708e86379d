// IndexedDB cache of model packages, with the raw indexedDB API (no wrapper library to ship).
//   "models": keyed by the package's directory URL -> {url, name, manifestText, tokenizerText, storedAt,
//             previous?}: the version being stored and, while an update downloads, the complete
//             version before it ({name, manifestText, tokenizerText, storedAt}), which still loads
//             offline until the new one is whole
//   "shards": keyed by `${url}|${sha256}`         -> the shard's bytes (ArrayBuffer)
// A shard is written by one put of its whole verified buffer, so a reader sees all of it or nothing;
// keying by sha256 means a new version of a package never mixes with the old one's bytes.

import { HearthError, QuotaExceededError, abortError } from "./errors.js";

const DB_NAME = "hearth";
const DB_VERSION = 1;

/** The model's identity: its package directory as an absolute URL ending in "/". */
export function modelKey(url) {
  // In a worker, relative URLs resolve against the worker script; worker-proxy resolves them first.
  const u = new URL(String(url), globalThis.location?.href);
  u.search = "";
  u.hash = "";
  // Accept the manifest's own URL as well as the directory.
  if (u.pathname.endsWith("/manifest.json")) u.pathname = u.pathname.slice(0, -"manifest.json".length);
  if (!u.pathname.endsWith("/")) u.pathname += "/";
  return u.href;
}

const shardKey = (url, sha256) => `${url}|${sha256}`;
// Every shard key of one model: "|" then lowercase hex, all below "\uffff".
const shardRange = (url) => IDBKeyRange.bound(`${url}|`, `${url}|\uffff`);

let dbPromise = null;

function openDb() {
  dbPromise ??= new Promise((resolve, reject) => {
    if (!globalThis.indexedDB) {
      reject(new HearthError("IndexedDB is not available here; load with {cache: false}."));
      return;
    }
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains("models")) db.createObjectStore("models", { keyPath: "url" });
      if (!db.objectStoreNames.contains("shards")) db.createObjectStore("shards");
    };
    req.onsuccess = () => {
      const db = req.result;
      // Let another tab upgrade or delete the database instead of blocking it.
      db.onversionchange = () => {
        db.close();
        dbPromise = null;
      };
      resolve(db);
    };
    req.onerror = () => reject(req.error);
  }).catch((e) => {
    dbPromise = null;
    throw e;
  });
  return dbPromise;
}

/** Whether IndexedDB can be opened here (it can't in some private modes and sandboxed frames). */
export const usable = () => openDb().then(() => true, () => false);

function convert(err) {
  if (err?.name === "QuotaExceededError") return new QuotaExceededError(undefined, undefined, err);
  return err instanceof Error ? err : new HearthError(String(err?.message ?? err));
}

/**
 * Runs `fn(stores)` in one transaction and, once it has committed (so a resolved write is visible to
 * every later reader), resolves with what fn returned: an IDBRequest's result, or a function's value.
 */
async function transact(names, mode, fn) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(names, mode);
    const stores = names.map((n) => tx.objectStore(n));
    let out;
    try {
      out = fn(...stores);
    } catch (e) {
      tx.abort();
      reject(convert(e));
      return;
    }
    tx.oncomplete = () => resolve(out instanceof IDBRequest ? out.result : typeof out === "function" ? out() : out);
    tx.onabort = tx.onerror = () => reject(convert(tx.error));
  });
}

export const getModel = (url) => transact(["models"], "readonly", (m) => m.get(url));

export const putModel = (record) => transact(["models"], "readwrite", (m) => m.put(record));

export const hasShard = (url, sha256) =>
  transact(["shards"], "readonly", (s) => s.count(shardKey(url, sha256))).then((n) => n > 0);

/** @returns {Promise<ArrayBuffer|undefined>} */
export const getShard = (url, sha256) => transact(["shards"], "readonly", (s) => s.get(shardKey(url, sha256)));

export const putShard = (url, sha256, buffer) =>
  transact(["shards"], "readwrite", (s) => void s.put(buffer, shardKey(url, sha256)));

/** The sha256 of every shard stored for `url` (keys only; no bytes are read). */
export async function storedShards(url) {
  const keys = await transact(["shards"], "readonly", (s) => s.getAllKeys(shardRange(url)));
  return new Set(keys.map((k) => k.slice(url.length + 1)));
}

/** Deletes the shards of `url` that are not in `keep` (left over from an older package version). */
export async function deleteStaleShards(url, keep) {
  const stale = [...(await storedShards(url))].filter((h) => !keep.has(h));
  if (stale.length === 0) return;
  await transact(["shards"], "readwrite", (s) => stale.forEach((h) => s.delete(shardKey(url, h))));
}

/** The shards a stored manifest lists ([] when it cannot be read). */
export function shardsOf(manifestText) {
  try {
    return JSON.parse(manifestText).shards ?? [];
  } catch {
    return [];
  }
}

/** The shards' hashes of a stored version (none for undefined). */
export const hashesOf = (version) => (version ? shardsOf(version.manifestText).map((s) => s.sha256) : []);

/** A record's versions, newest first: the one being stored, then the complete one it replaces. */
const versions = (record) => (record ? [record, record.previous].filter(Boolean) : []);

/** The newest version of `record` whose every shard is in `have` (it loads offline), or undefined. */
const completeVersion = (record, have) =>
  versions(record).find((v) => shardsOf(v.manifestText).every((s) => have.has(s.sha256)));

/** The newest version of `record` whose every shard is stored, or undefined. */
export async function usableVersion(record) {
  return record ? completeVersion(record, await storedShards(record.url)) : undefined;
}

/** Bytes stored (of every version) and whether a version loads offline, for one model record. */
async function describe(record) {
  const have = await storedShards(record.url);
  const sizes = new Map(versions(record).flatMap((v) => shardsOf(v.manifestText).map((s) => [s.sha256, s.size])));
  const usable = completeVersion(record, have);
  const shown = usable ?? record;
  return {
    url: record.url,
    name: shown.name,
    bytes: [...sizes].reduce((n, [sha256, size]) => n + (have.has(sha256) ? size : 0), 0),
    complete: Boolean(usable),
    storedAt: shown.storedAt,
  };
}

export async function listModels() {
  const records = await transact(["models"], "readonly", (m) => m.getAll());
  return Promise.all(records.map(describe));
}

/** Whether the manifest, the tokenizer and every shard of a version of `url` are stored. */
export async function isComplete(url) {
  return Boolean(await usableVersion(await getModel(url)));
}

/**
 * Runs `fn` holding this origin's lock on model `url` (Web Locks: across tabs and workers), so that
 * one load or delete at a time writes a model's records and shards. Without Web Locks, just runs it.
 */
export async function withModelLock(url, signal, fn) {
  const locks = globalThis.navigator?.locks;
  if (!locks) return fn();
  try {
    return await locks.request(`hearth-model ${url}`, signal ? { signal } : {}, fn);
  } catch (e) {
    throw signal?.aborted ? abortError(signal) : e;
  }
}

/** Deletes the model record and all its shards; resolves with whether anything was stored. */
export async function deleteModel(url) {
  return transact(["models", "shards"], "readwrite", (m, s) => {
    const found = m.count(url);
    m.delete(url);
    const shards = s.count(shardRange(url));
    s.delete(shardRange(url));
    return () => found.result > 0 || shards.result > 0;
  });
}
