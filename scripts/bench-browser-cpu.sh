#!/usr/bin/env bash
# Browser CPU speed side by side: Hearth's CPU engine (1 thread on a plain page, threaded in a worker
# of a cross-origin isolated page) next to wllama 2.3.7 (n_threads 1 and 2) in headless Chromium, on
# SmolLM2-135M-Instruct Q4_1, a 128-token prompt and 128 generated tokens (tests/bench/browser-cpu.mjs
# prints the table and one JSON line per configuration). Extra arguments go to browser-cpu.mjs
# (--rounds N, --configs ..., --gen-tokens N, --out FILE).
#
# wllama is a benchmark peer, not a dependency of the package: it is installed into
# .cache/bench/wllama (outside the repo's package.json), once. Idempotent: every step checks first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
gguf=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
package=.cache/packages/smollm2-135m-instruct
target="${CARGO_TARGET_DIR:-target}"
wllama_version=2.3.7
wllama=.cache/bench/wllama

bash scripts/browser-setup.sh >&2
bash scripts/fetch-smollm2.sh
if [ ! -f "$package/manifest.json" ]; then
  cargo build --release -p hearth-cli >&2
  "$target/release/hearth" convert "$gguf" --out "$package" --force >&2
fi
if [ ! -f pkg/wasm/hearth_web_bg.wasm ] || [ ! -f pkg/wasm-threads/hearth_web_bg.wasm ]; then
  bash scripts/build-wasm.sh >&2
fi
installed=$(node -p "require('./$wllama/node_modules/@wllama/wllama/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$wllama_version" ]; then
  mkdir -p "$wllama"
  npm install --prefix "$wllama" --no-audit --no-fund --loglevel=error "@wllama/wllama@$wllama_version" >&2
fi
node tests/bench/browser-cpu.mjs --wllama "$wllama/node_modules/@wllama/wllama" --package "$package" --gguf "$gguf" "$@"
