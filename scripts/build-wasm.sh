#!/usr/bin/env bash
# Build the browser engine into the npm package: crates/hearth-web → pkg/wasm/ (single-threaded) and
# pkg/wasm-threads/ (threaded: the CPU engine on a pool of workers), each hearth_web.js + .wasm, and
# the same two with relaxed SIMD's dot products in the CPU kernels (feature `relaxed-simd`) in
# pkg/wasm-relaxed/ and pkg/wasm-threads-relaxed/, for browsers that have it (pkg/src/load.js
# probes). The relaxed builds differ from the plain ones only in hearth-core and the crates above it,
# so cargo rebuilds just those (about 30 s each here, not the 1.5-3 minutes of a whole build).
# Needs the wasm32 target, wasm-bindgen-cli of the same version as the wasm-bindgen crate, and
# wasm-opt from the npm package `binaryen` (scripts/setup.sh and scripts/browser-setup.sh install them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-wasm-bindgen.sh
wasm_opt=${WASM_OPT:-node_modules/.bin/wasm-opt}
if [ ! -x "$wasm_opt" ]; then
  echo "error: $wasm_opt is missing; run scripts/browser-setup.sh (npm's binaryen: Debian's is too old)" >&2
  exit 1
fi

# JS glue + size optimization: target/.../hearth_web.wasm -> $2/hearth_web.js + hearth_web_bg.wasm.
# wasm-opt must be told which features the module uses (rustc's defaults, SIMD128 from
# .cargo/config.toml, and for the threaded build shared memory and atomics: "$3").
# -O1, not -O3: npm's wasm-opt is itself wasm (one thread), and -O3 took 3 minutes per build here
# against 41 s; LLVM has already optimized the code, and on 2026-12-03 (this 2-core VM, headless
# Chromium, `node tests/browser/bench.mjs --prompt-tokens 64 --gen-tokens 32`, two runs each,
# taking turns) the CPU engine decoded 24.2 / 22.1 tok/s with -O1 against 23.4 / 19.8 with -O3
# and prefilled 45.7 / 45.5 against 43.9 / 47.7; -O1's module is 4% larger but gzips 2% smaller
# (1.90 against 1.95 MB), which is what a page downloads.
bind() {
  wasm-bindgen --target web --out-dir "$2" --out-name hearth_web "$1"
  "$wasm_opt" -O1 --enable-bulk-memory --enable-reference-types --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-multivalue --enable-simd ${3:-} \
    "$2/hearth_web_bg.wasm" -o "$2/hearth_web_bg.wasm"
  echo "built $2/hearth_web_bg.wasm ($(du -k "$2/hearth_web_bg.wasm" | cut -f1) KiB)"
}

# The single-threaded builds: every page.
cargo build --release --target wasm32-unknown-unknown -p hearth-web
bind target/wasm32-unknown-unknown/release/hearth_web.wasm pkg/wasm
cargo build --release --target wasm32-unknown-unknown -p hearth-web --features relaxed-simd
bind target/wasm32-unknown-unknown/release/hearth_web.wasm pkg/wasm-relaxed --enable-relaxed-simd

# The threaded build, for the CPU engine in cross-origin isolated pages' workers (pkg/src/load.js
# chooses): a shared memory needs std rebuilt with atomics, which stable Rust does with
# RUSTC_BOOTSTRAP=1 and the rust-src component. Its own target dir: other flags, another std.
rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src
# The linker must be told to make the memory shared and imported (so every worker gets the same one)
# and to export the thread-local storage symbols that wasm-bindgen sets up per thread.
threads_flags="-C target-feature=+atomics,+bulk-memory,+simd128"
for arg in --shared-memory --import-memory --max-memory=4294967296 \
  --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base; do
  threads_flags+=" -C link-arg=$arg"
done
for relaxed in "" relaxed-simd; do
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$threads_flags" \
    cargo build --release --target wasm32-unknown-unknown -p hearth-web --features "threads $relaxed" \
    -Z build-std=panic_abort,std --target-dir target/wasm-threads
  bind target/wasm-threads/wasm32-unknown-unknown/release/hearth_web.wasm \
    "pkg/wasm-threads${relaxed:+-relaxed}" --enable-threads ${relaxed:+--enable-relaxed-simd}
done
