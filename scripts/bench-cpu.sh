#!/usr/bin/env bash
# CPU speed side by side: Hearth's fast CPU engine (`--backend cpu`), the exact reference
# (`--backend cpu-ref`) and llama.cpp, on SmolLM2-135M-Instruct Q4_1, 2 threads, a 128-token prompt
# and 128 generated tokens (tests/bench/cpu.py prints the table). Extra arguments go to cpu.py
# (--threads, --prompt-tokens, --gen-tokens, --rounds).
#
# llama.cpp is a benchmark peer, not a dependency; install it once (~15 min on 2 cores):
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
gguf=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
package=.cache/packages/smollm2-135m-instruct
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p hearth-cli >&2
bash scripts/fetch-smollm2.sh
if [ ! -f "$package/manifest.json" ]; then
  "$target/release/hearth" convert "$gguf" --out "$package" --force >&2
fi
python3 -c "import llama_cpp" 2>/dev/null || echo "llama-cpp-python not installed: llama.cpp is left out (see the header of $0)" >&2
python3 tests/bench/cpu.py --hearth "$target/release/hearth" --package "$package" --gguf "$gguf" "$@"
