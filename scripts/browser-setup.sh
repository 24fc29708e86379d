#!/usr/bin/env bash
# Install what building the wasm package and the browser tests need on a fresh machine: Node.js,
# Chromium (its SwiftShader gives headless WebGPU without a GPU) and its WebDriver, and the npm tools in package.json
# (wasm-opt from `binaryen`, `playwright-core` to drive Chromium, `ajv` + `ajv-formats` to validate
# the browser tests' JSON outputs against their schemas). Idempotent: each step checks first.
# With --no-chromium (the demo: you open the page in your own browser) Chromium is not installed.
set -euo pipefail
chromium=1
[ "${1:-}" = "--no-chromium" ] && chromium=0
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if ! need node || ! need npm; then
  apt_install nodejs npm
fi
# `node --test --test-concurrency` and Vite 8 (the example app) need Node.js 20.19 or later.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "error: Node.js $(node --version) is too old: the browser tests need 20.19 or later" >&2
  exit 1
fi
if [ "$chromium" = 1 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  # Fonts so that pages (and the demo's screenshots) render text; the driver runs the relaxed-SIMD
  # kernel tests in Chromium (scripts/test-wasm-kernels.sh).
  apt_install chromium chromium-driver fonts-dejavu-core
fi
# npm ci when node_modules is missing, incomplete or older than the lock file.
if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/ajv-formats ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
