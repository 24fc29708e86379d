#!/usr/bin/env bash
# Embeddings per second of all-MiniLM-L6-v2 for batches of 1, 16 and 64 texts of 30 tokens, side by
# side in one run on this machine (issue 19's measure): Hearth's fast CPU engine and GPU engine
# natively (`hearth bench`; the GPU's on whatever adapter wgpu finds, lavapipe where there is no GPU),
# the same engines in headless Chromium (the npm package; the CPU engine on the page's thread and in
# a worker on a pool of threads, WebGPU on the page), and sentence-transformers with PyTorch on the CPU. Prints
# one JSON line per engine, then a table.
#
#   bash scripts/bench-embeddings.sh
#
# sentence-transformers comes from a venv it makes in .cache/st-venv (PyTorch's CPU build, about
# 1 GB), or from the Python named by ST_PYTHON. Needs the model (scripts/fetch-minilm.sh), the CLI
# and pkg/wasm/ (bash scripts/build-wasm.sh); not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=30
bash scripts/fetch-minilm.sh
cargo build --release -q -p hearth-cli
MODEL=.cache/models/all-MiniLM-L6-v2
PACKAGE=.cache/packages/all-MiniLM-L6-v2
./target/release/hearth convert "$MODEL" --out "$PACKAGE" --force > /dev/null

PY="${ST_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ ! -x .cache/st-venv/bin/python ]; then
    python3 -m venv .cache/st-venv
    .cache/st-venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    .cache/st-venv/bin/pip install -q sentence-transformers
  fi
  PY=.cache/st-venv/bin/python
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$PY" scripts/bench_embeddings.py "$MODEL" "$TOKENS" "$OUT/texts.json" 2>/dev/null > "$OUT/st.json"
./target/release/hearth bench --model "$PACKAGE" --backend cpu --prompt-tokens "$TOKENS" > "$OUT/hearth.json"
./target/release/hearth bench --model "$PACKAGE" --backend gpu --prompt-tokens "$TOKENS" >> "$OUT/hearth.json"
node tests/browser/bench-embed.mjs --texts "$OUT/texts.json" --model "$PACKAGE" > "$OUT/browser.json"
cat "$OUT/hearth.json" "$OUT/browser.json" "$OUT/st.json"
node -e '
const lines = require("fs").readFileSync(0, "utf8").trim().split("\n").map(JSON.parse);
console.log("| engine | threads | 1 text | 16 texts | 64 texts |");
console.log("|---|---|---|---|---|");
for (const r of lines) {
  const eps = r.batches.map((b) => b.embeddings_per_s.toFixed(1));
  const detail = r.backend === "gpu" ? r.adapter : r.simd;
  console.log(`| ${r.backend}${detail ? " (" + detail + ")" : ""} | ${r.threads} | ${eps.join(" | ")} |`);
}' < <(cat "$OUT/hearth.json" "$OUT/browser.json" "$OUT/st.json")
