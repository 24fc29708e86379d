// The demo's service worker: keeps the page, its scripts, the package (JS and wasm) and models.json
// so the page opens and chats with the network off. Model files are not its business: the package
// stores them in IndexedDB and asks for them with `cache: "no-store"` (pkg/src/fetch.js), wherever
// they are served from, so those requests (and anything under models/) pass straight through.
//
// Network first, cache as the fallback: online, a visitor always gets the current files (and they
// refresh the cache); offline, the last ones seen.

const CACHE = "hearth-demo-v1";
// The page's own files, kept at install. The package's files (pkg/...) are kept as the page and its
// worker fetch them: app.js imports the package only once this worker controls the page.
const SHELL = [
  "./",
  "app.js",
  "style.css",
  "src/ui.js",
  "src/chat.js",
  "src/models.js",
  "models.json",
  "icon.svg",
  "manifest.webmanifest",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

const scope = new URL(self.registration.scope);

function mine(request) {
  const url = new URL(request.url);
  return (
    request.method === "GET" &&
    request.cache !== "no-store" &&
    url.origin === scope.origin &&
    url.pathname.startsWith(scope.pathname) &&
    !url.pathname.startsWith(scope.pathname + "models/")
  );
}

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    // Only whole, same-origin answers: never an error page, a redirect's result or a partial body.
    if (response.status === 200 && response.type === "basic" && !response.redirected) await cache.put(request, response.clone());
    return response;
  } catch (e) {
    const cached = await cache.match(request, { ignoreSearch: true });
    if (cached) return cached;
    throw e;
  }
}

self.addEventListener("fetch", (event) => {
  if (mine(event.request)) event.respondWith(networkFirst(event.request));
});
