#!/usr/bin/env bash
# The fast engine's kernel tests (crates/hearth-core/tests/simd_kernels.rs) in wasm under Node:
# the SIMD128 kernels against the scalar ones, and the scalar ones against exact products and the
# native outputs' digest. `--bench` runs the ignored scalar-vs-SIMD128 benchmark instead.
# Installs what it needs (the wasm32 target, wasm-bindgen-test-runner of Cargo.lock's version).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
# The runner must be the version of the wasm-bindgen crate the test links.
bash scripts/install-wasm-bindgen.sh

args=()
if [ "${1:-}" = "--bench" ]; then
  args=(--include-ignored --nocapture kernel_throughput)
fi
# As the browser build: SIMD128 on, no threads (no `parallel` feature).
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128" \
  cargo test --release --target wasm32-unknown-unknown -p hearth-core --no-default-features \
  --test simd_kernels -- "${args[@]}"
