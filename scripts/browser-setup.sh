#!/usr/bin/env bash
# Install what building the wasm package and the browser tests need on a fresh machine: Node.js,
# Chromium (its SwiftShader gives headless WebGPU without a GPU), and the npm tools in package.json
# (wasm-opt from `binaryen`, `playwright-core` to drive Chromium). Idempotent: each step checks first.
set -euo pipefail
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
if [ ! -x /usr/bin/chromium ]; then
  # Fonts so that pages (and the demo's screenshots) render text.
  apt_install chromium fonts-dejavu-core
fi
# npm ci when node_modules is missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
