#!/usr/bin/env python3
"""Side-by-side CPU benchmark: Hearth's fast CPU engine, its exact reference and llama.cpp on the
same GGUF, the same prompt and the same thread count, in one run (driven by scripts/bench-cpu.sh).

Each engine runs `--rounds` times, the engines taking turns so that a busy machine slows them
alike; the table shows the median and the range. Prompt: the token ids `hearth bench` uses (a fixed
pseudo-random sequence of ordinary tokens); decode: greedy, timed over the tokens after the first.
llama.cpp (`pip install llama-cpp-python`, a benchmark peer only) evaluates the prompt in one
`eval` and each new token with `eval([id])`, its argmax taken from the last logits, as Hearth does.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def hearth(binary, package, backend, threads, prompt_tokens, gen_tokens):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [binary, "bench", "--model", package, "--backend", backend,
           "--prompt-tokens", str(prompt_tokens), "--gen-tokens", str(gen_tokens)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["backend"] == backend, r
    return r["prefill_tok_s"], r["decode_tok_s"]


def llama_cpp_runner(gguf, threads, prompt_tokens, gen_tokens):
    import numpy as np
    from llama_cpp import Llama

    # llama-cpp-python keeps the logits of one batch (n_batch rows): a prompt longer than the batch
    # would index past them.
    n_ctx = prompt_tokens + gen_tokens + 8
    llm = Llama(model_path=gguf, n_ctx=n_ctx, n_batch=max(512, n_ctx), n_threads=threads,
                n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()
    # The same prompt as `hearth bench` (crates/hearth-cli/src/main.rs).
    first, span = (100, vocab - 200) if vocab > 300 else (0, max(vocab, 1))
    prompt = [first + (i * 7919) % span for i in range(prompt_tokens)]

    def run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t1 = time.perf_counter()
        for _ in range(gen_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t2 = time.perf_counter()
        return prompt_tokens / (t1 - t0), (gen_tokens - 1) / (t2 - t1)

    run()  # warm-up
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hearth", required=True, help="the hearth binary")
    ap.add_argument("--package", required=True, help="the converted package directory")
    ap.add_argument("--gguf", required=True, help="the GGUF file the package was converted from")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true",
                    help="leave out the exact engine (minutes per round on Gemma 3's 262k-row head)")
    args = ap.parse_args()

    engines = {
        "hearth cpu (fast)": lambda: hearth(args.hearth, args.package, "cpu", args.threads, args.prompt_tokens,
                                            args.gen_tokens),
        "hearth cpu-ref (exact)": lambda: hearth(args.hearth, args.package, "cpu-ref", args.threads,
                                                 args.prompt_tokens, args.gen_tokens),
    }
    if args.no_reference:
        del engines["hearth cpu-ref (exact)"]
    try:
        engines["llama.cpp (llama-cpp-python)"] = llama_cpp_runner(args.gguf, args.threads, args.prompt_tokens,
                                                                   args.gen_tokens)
    except ImportError:
        print("llama-cpp-python is not installed: see scripts/bench-cpu.sh; llama.cpp left out", file=sys.stderr)
    results = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, run in engines.items():
            results[name].append(run())

    def cell(values):
        return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"

    print(f"{args.threads} threads, {args.prompt_tokens}-token prompt + {args.gen_tokens} tokens, "
          f"median of {args.rounds} rounds (range)")
    print(f"| {'engine':<30} | {'prefill tok/s':<22} | {'decode tok/s':<22} |")
    print(f"|{'-' * 32}|{'-' * 24}|{'-' * 24}|")
    for name, runs in results.items():
        print(f"| {name:<30} | {cell([r[0] for r in runs]):<22} | {cell([r[1] for r in runs]):<22} |")


if __name__ == "__main__":
    main()
