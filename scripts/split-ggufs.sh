#!/usr/bin/env bash
# Split GGUFs for the tests of split models (`NAME-00001-of-0000N.gguf` ...), written by gguf-py (a
# writer Hearth did not write: tests/fixtures/split_gguf.py) into .cache/models/split/, from the
# fetched SmolLM2 and two tiny fixtures. gguf-py goes into its own venv, .cache/gguf-py.
# Idempotent: a model already split is left alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.cache/models/split"
venv="$root/.cache/gguf-py"
gguf_version=0.19.0

if ! "$venv/bin/python" -c "import gguf" >/dev/null 2>&1; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet "gguf==$gguf_version"
fi

mkdir -p "$out"
# NAME  SOURCE  SPLIT_OPTIONS: SmolLM2 (272 tensors) in 3 files; tiny Qwen3 (24) in 3; tiny Phi-3
# with only the metadata in its first file, its LongRoPE factor tensors in a later one.
while read -r name source opts; do
  [ -n "$(ls "$out/$name"-00001-of-*.gguf 2>/dev/null)" ] && continue
  tmp="$out/.partial-$name"
  rm -rf "$tmp" && mkdir -p "$tmp"
  # shellcheck disable=SC2086 # the options are words
  "$venv/bin/python" "$root/tests/fixtures/split_gguf.py" "$root/$source" "$tmp/$name.gguf" $opts 2>/dev/null
  # The first file is moved in last: a run cut off before leaves no first file, and is done again.
  mv $(ls "$tmp"/*.gguf | grep -v -- "-00001-of-") "$out/"
  mv "$tmp"/*-00001-of-*.gguf "$out/"
  rmdir "$tmp"
done <<'LIST'
smollm2 .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --max-tensors 100
qwen3 tests/fixtures/tiny/qwen3.gguf --max-tensors 9
phi3 tests/fixtures/tiny/phi3.gguf --max-tensors 10 --small-first-shard
LIST
