#!/usr/bin/env bash
# The fast engine's kernel tests (crates/hearth-core/tests/simd_kernels.rs) in wasm under Node:
# the SIMD128 kernels against the scalar ones, and the scalar ones against exact products and the
# native outputs' digest; then again as the relaxed-SIMD build (feature `relaxed-simd`), whose
# kernels must also equal the SIMD128 ones bit for bit. `--bench` runs the ignored
# scalar-vs-SIMD128(-vs-relaxed) benchmark instead.
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
# As the browser builds: SIMD128 on, no threads (no `parallel` feature). The plain build under Node.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128"
test_kernels() {
  cargo test --release --target wasm32-unknown-unknown -p hearth-core --no-default-features --test simd_kernels "$@"
}
echo "== wasm kernels: SIMD128, Node"
test_kernels -- "${args[@]}"

# The relaxed-SIMD build in headless Chromium (through chromedriver), whose engine is the one that
# will run it: Node 20 has relaxed SIMD only behind a flag, and there V8's baseline compiler
# (Liftoff) computed the dot product wrongly where its optimizing one did not. So both of
# Chromium's tiers, each alone (`--js-flags`); the benchmark runs with the browser's own tiering.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "error: /usr/bin/chromium and /usr/bin/chromedriver are needed: run scripts/browser-setup.sh" >&2
  exit 1
fi
tiers=("--liftoff-only" "--no-liftoff")
[ ${#args[@]} -gt 0 ] && tiers=("")
driver_json=$(mktemp)
trap 'rm -f "$driver_json"' EXIT
for tier in "${tiers[@]}"; do
  echo "== wasm kernels: SIMD128 + relaxed SIMD, Chromium ${tier:-(default tiers)}"
  flags='"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"'
  [ -n "$tier" ] && flags+=", \"--js-flags=$tier\""
  echo "{\"goog:chromeOptions\": {\"binary\": \"/usr/bin/chromium\", \"args\": [$flags]}}" > "$driver_json"
  WASM_BINDGEN_USE_BROWSER=1 CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_WEBDRIVER_JSON="$driver_json" \
    test_kernels --features relaxed-simd -- "${args[@]}"
done
