#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ (docs/SECURITY.md) for a bounded time from its committed seed
# corpus, and fails on any crash, any input slower than 5 s, or any use of more than 1 GB.
#   bash scripts/fuzz.sh                  # each target for FUZZ_SECONDS (default 60), FUZZ_JOBS at once (default: the cores)
#   bash scripts/fuzz.sh chat_template    # only the targets named
# Installs what it needs: cargo-fuzz, and the nightly flags it passes run on stable through
# RUSTC_BOOTSTRAP (a fresh machine need not have a nightly toolchain). New inputs go to a scratch
# corpus, not to fuzz/corpus/; a failing input is kept under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
# The sanitizers' runtime is part of the standard library's component for this target.
export RUSTC_BOOTSTRAP=1

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

cargo fuzz build --fuzz-dir fuzz
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# One target for `seconds` from a scratch copy of its seeds; its output in $scratch/$t.log and its
# exit status in $scratch/$t.status.
fuzz_one() {
  local t=$1
  mkdir -p "$scratch/$t"
  cp fuzz/corpus/"$t"/* "$scratch/$t/"
  # The shape fixtures' manifests (a real model's tensor table) seed the manifest target too.
  if [ "$t" = manifest_plan ]; then
    for m in tests/fixtures/shapes/*/manifest.json; do cp "$m" "$scratch/$t/$(basename "$(dirname "$m")")"; done
  fi
  # -rss_limit_mb also sets the largest single allocation (malloc_limit_mb) to 1 GB.
  local status=0
  cargo fuzz run --fuzz-dir fuzz "$t" "$scratch/$t" -- \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -print_final_stats=1 >"$scratch/$t.log" 2>&1 || status=$?
  echo "$status" >"$scratch/$t.status"
}

# libFuzzer runs one thread per target: as many targets at once as there are cores
# (FUZZ_JOBS), each still for its full time.
jobs="${FUZZ_JOBS:-$(nproc)}"
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  echo "fuzz: $t for ${seconds}s from $(ls fuzz/corpus/"$t" | wc -l) seeds"
  fuzz_one "$t" &
done
wait
failed=0
for t in "${targets[@]}"; do
  echo "fuzz: $t:"
  grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|^#[0-9]+ +DONE' "$scratch/$t.log" || true
  if [ "$(cat "$scratch/$t.status" 2>/dev/null)" != 0 ]; then
    tail -n 60 "$scratch/$t.log" >&2
    echo "fuzz: $t failed; the input is under fuzz/artifacts/$t/" >&2
    failed=1
  fi
done
exit "$failed"
