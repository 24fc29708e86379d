#!/usr/bin/env bash
# Install wasm-bindgen-cli (`wasm-bindgen`, `wasm-bindgen-test-runner`) of the version of the
# wasm-bindgen crate in Cargo.lock, which the two must match. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" = "$version" ] \
  && [ "$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}')" = "$version" ]; then
  exit 0
fi
# Not --locked: a locked dependency of the CLI is missing from the registry mirror here.
# Unoptimised and without TLS (the test runner only talks to a local WebDriver): about 3 minutes
# on two cores instead of 10, and it still binds our module in seconds.
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 cargo install wasm-bindgen-cli --version "$version" --no-default-features
