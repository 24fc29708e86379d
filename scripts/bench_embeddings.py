#!/usr/bin/env python3
"""sentence-transformers' side of scripts/bench-embeddings.sh: embeddings per second of the model
in DIR (a Transformers directory with sentence-transformers' files) for batches of 1, 16 and 64
texts of TOKENS tokens each ([CLS] and [SEP] included), on the CPU, after one warm-up batch; one
JSON line with the keys `hearth bench` prints for an encoder.

  python3 scripts/bench_embeddings.py DIR TOKENS [TEXTS.json]

With TEXTS.json, the 64 texts are also written there (for the browser's run to embed the same).
"""
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

BATCHES = [1, 16, 64]


def texts_of(model, tokens, n):
    """n different texts that the model's tokenizer makes exactly `tokens` tokens of."""
    words = ("river stone light garden window morning quiet paper music orange travel winter forest "
             "market candle silver letter harbor").split()
    out = []
    for i in range(n):
        text, k = "", 0
        while True:
            longer = (text + " " + words[(i * 7 + k) % len(words)]).strip()
            if len(model.tokenizer(longer)["input_ids"]) > tokens:
                break
            text, k = longer, k + 1
        assert len(model.tokenizer(text)["input_ids"]) == tokens, text
        out.append(text)
    return out


def main():
    directory, tokens = sys.argv[1], int(sys.argv[2])
    started = time.perf_counter()
    model = SentenceTransformer(directory, device="cpu")
    load_s = time.perf_counter() - started
    texts = texts_of(model, tokens, max(BATCHES))
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w", encoding="utf-8") as f:
            json.dump(texts, f)
    model.encode(texts[:16], batch_size=16)
    batches = []
    for n in BATCHES:
        t = time.perf_counter()
        model.encode(texts[:n], batch_size=n)
        seconds = time.perf_counter() - t
        batches.append({"texts": n, "seconds": seconds, "embeddings_per_s": n / seconds})
    print(json.dumps({
        "tokens_per_text": tokens, "load_s": load_s, "backend": "sentence-transformers",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batches": batches,
    }))


if __name__ == "__main__":
    main()
