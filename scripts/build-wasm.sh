#!/usr/bin/env bash
# Build the browser engine into the npm package: crates/hearth-web → pkg/wasm/hearth_web.js + .wasm.
# Needs the wasm32 target, wasm-bindgen-cli of the same version as the wasm-bindgen crate, and
# wasm-opt from the npm package `binaryen` (scripts/setup.sh and scripts/browser-setup.sh install them).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  # Not --locked: a locked dependency of the CLI is missing from the registry mirror here.
  cargo install wasm-bindgen-cli --version "$version"
fi
wasm_opt=${WASM_OPT:-node_modules/.bin/wasm-opt}
if [ ! -x "$wasm_opt" ]; then
  echo "error: $wasm_opt is missing; run scripts/browser-setup.sh (npm's binaryen: Debian's is too old)" >&2
  exit 1
fi

cargo build --release --target wasm32-unknown-unknown -p hearth-web
out=pkg/wasm
mkdir -p "$out"
wasm-bindgen --target web --out-dir "$out" --out-name hearth_web target/wasm32-unknown-unknown/release/hearth_web.wasm
# The features rustc's wasm32 target emits; wasm-opt must be told to keep them.
"$wasm_opt" -O3 --enable-bulk-memory --enable-reference-types --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue \
  "$out/hearth_web_bg.wasm" -o "$out/hearth_web_bg.wasm"
echo "built $out/hearth_web_bg.wasm ($(du -k "$out/hearth_web_bg.wasm" | cut -f1) KiB)"
