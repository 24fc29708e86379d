#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/): small valid inputs of every kind
each target reads, so that libFuzzer starts from files that pass the first checks and mutates
the deeper ones. Every seed is a few KB at most, but the kept-encodings one (16 KB: K-quant rows are
256 values wide).

Run from the repository root, with `pip install gguf` and a built `target/release/hearth` (the
manifest and tokenizer seeds are what `hearth convert` writes for the GGUF seeds):
  python3 fuzz/make_seeds.py
Deterministic: fixed seeds, no timestamps.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
CUT = b"\n--8<--\n"
HEARTH = os.path.join(ROOT, "target", "release", "hearth")

# A byte-free BPE vocabulary of 16 tokens in GPT-2's spelling ("Ġ" is a space) with 4 merges.
BPE_TOKENS = ["<s>", "</s>", "<pad>", "h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "llo", "hello", "Ġw"]
BPE_MERGES = ["h e", "l l", "ll o", "he llo"]
# A SentencePiece vocabulary: control tokens, "▁"-prefixed pieces with scores, bytes fallback.
SPM_TOKENS = ["<unk>", "<s>", "</s>", "▁", "▁h", "e", "l", "o", "▁hello", "▁w", "or", "ld", "<0x0A>", "<0x41>", "▁world", "!"]
SPM_SCORES = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -3.0, -3.0, -1.5, -2.5, -4.0, -4.0, 0.0, 0.0, -1.2, -5.0]
SPM_TYPES = [2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 6, 1, 1]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

VOCAB, HIDDEN, FFN, HEADS, KV_HEADS = 16, 8, 16, 2, 1
HEAD_DIM = HIDDEN // HEADS


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def weights(rng, arch, tied):
    t = {"token_embd.weight": (VOCAB, HIDDEN)}
    t["blk.0.attn_norm.weight"] = (HIDDEN,)
    t["blk.0.attn_q.weight"] = (HEADS * HEAD_DIM, HIDDEN)
    t["blk.0.attn_k.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
    t["blk.0.attn_v.weight"] = (KV_HEADS * HEAD_DIM, HIDDEN)
    if arch == "qwen2":
        t["blk.0.attn_q.bias"] = (HEADS * HEAD_DIM,)
        t["blk.0.attn_k.bias"] = (KV_HEADS * HEAD_DIM,)
        t["blk.0.attn_v.bias"] = (KV_HEADS * HEAD_DIM,)
    t["blk.0.attn_output.weight"] = (HIDDEN, HEADS * HEAD_DIM)
    t["blk.0.ffn_norm.weight"] = (HIDDEN,)
    t["blk.0.ffn_gate.weight"] = (FFN, HIDDEN)
    t["blk.0.ffn_up.weight"] = (FFN, HIDDEN)
    t["blk.0.ffn_down.weight"] = (HIDDEN, FFN)
    t["output_norm.weight"] = (HIDDEN,)
    if not tied:
        t["output.weight"] = (VOCAB, HIDDEN)
    out = {}
    for name, shape in t.items():
        a = rng.normal(0, 0.5, size=shape).astype(np.float32)
        if len(shape) == 1:
            a = 1.0 + 0.1 * a
        out[name] = a
    return out


def add_header(w, hidden, ffn, tokenizer, head_dim=None):
    """A one-layer model's hyperparameters (heads of `head_dim` values where given, else
    hidden / heads) and the tokenizer: the BPE one ("gpt2") or the SentencePiece one."""
    w.add_name("seed")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if tokenizer == "gpt2":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(BPE_TOKENS)
        w.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))
        w.add_token_merges(BPE_MERGES)
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
    else:
        w.add_tokenizer_model("llama")
        w.add_token_list(SPM_TOKENS)
        w.add_token_scores(SPM_SCORES)
        w.add_token_types(SPM_TYPES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)


def gguf_seed(path, arch, tokenizer, f16, tied, template):
    rng = np.random.default_rng(sum(os.path.basename(path).encode()))
    w = gguf.GGUFWriter(path, arch)
    add_header(w, HIDDEN, FFN, tokenizer)
    if template:
        w.add_chat_template(template)
    for name, a in weights(rng, arch, tied).items():
        w.add_tensor(name, a.astype(np.float16) if (f16 and a.ndim == 2) else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# The kept-encodings seed: rows 256 wide, as K-quant super-blocks need, with heads of 2 values so
# that the matrices of 256 rows (the output projection, the down projection) stay small.
KEPT_HIDDEN, KEPT_FFN, KEPT_HEAD_DIM = 256, 4, 2
K = gguf.GGMLQuantizationType
# Block bytes of each type, and where its f16 scales sit in a block (d, and dmin where there is one).
BLOCKS = {K.Q4_K: (144, [0, 2]), K.Q5_K: (176, [0, 2]), K.Q6_K: (210, [208]), K.Q5_0: (22, [0]), K.Q5_1: (24, [0, 2])}


def kept_blocks(rng, ty, rows, cols):
    """Random blocks of `ty` for a rows × cols matrix, with finite, modest f16 scales."""
    size, scales = BLOCKS[ty]
    per_row = cols // (256 if ty in (K.Q4_K, K.Q5_K, K.Q6_K) else 32) * size
    raw = rng.integers(0, 256, (rows, per_row), dtype=np.uint8)
    for row in raw:
        for o in range(0, per_row, size):
            for p in scales:
                row[o + p:o + p + 2] = np.frombuffer(np.float16(rng.uniform(0.001, 0.05)).tobytes(), dtype=np.uint8)
    return raw


def kept_seed(path):
    """A Llama GGUF whose matrices are Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1 blocks, which `hearth convert`
    keeps as they are (q4k, q5k, q6k, q5): the converter's and the engines' block decoders get
    mutated."""
    rng = np.random.default_rng(11)
    hidden, q_rows, kv_rows = KEPT_HIDDEN, HEADS * KEPT_HEAD_DIM, KV_HEADS * KEPT_HEAD_DIM
    w = gguf.GGUFWriter(path, "llama")
    add_header(w, hidden, KEPT_FFN, "gpt2", KEPT_HEAD_DIM)
    for name, n in [("blk.0.attn_norm.weight", hidden), ("blk.0.ffn_norm.weight", hidden), ("output_norm.weight", hidden)]:
        w.add_tensor(name, (1.0 + 0.1 * rng.normal(size=n)).astype(np.float32))
    for name, ty, rows in [("token_embd.weight", K.Q6_K, VOCAB), ("blk.0.attn_q.weight", K.Q5_K, q_rows),
                           ("blk.0.attn_k.weight", K.Q4_K, kv_rows), ("blk.0.attn_v.weight", K.Q5_1, kv_rows),
                           ("blk.0.ffn_gate.weight", K.Q4_K, KEPT_FFN), ("blk.0.ffn_up.weight", K.Q5_0, KEPT_FFN)]:
        w.add_tensor(name, kept_blocks(rng, ty, rows, hidden), raw_dtype=ty)
    for name, shape in [("blk.0.attn_output.weight", (hidden, q_rows)), ("blk.0.ffn_down.weight", (hidden, KEPT_FFN))]:
        w.add_tensor(name, rng.normal(0, 0.5, size=shape).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def safetensors_bytes(tensors):
    header, data = {}, b""
    for name, a in tensors.items():
        raw = a.astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def hf_seed():
    rng = np.random.default_rng(7)
    hf = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
          "lm_head.weight": (VOCAB, HIDDEN)}
    p = "model.layers.0."
    hf.update({p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
               p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (HEAD_DIM, HIDDEN),
               p + "self_attn.v_proj.weight": (HEAD_DIM, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
               p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
               p + "mlp.down_proj.weight": (HIDDEN, FFN)})
    tensors = {n: rng.normal(0, 0.5, size=s).astype(np.float32) for n, s in hf.items()}
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": FFN,
              "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
              "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "max_position_embeddings": 64, "tie_word_embeddings": False}
    return json.dumps(config).encode() + CUT + safetensors_bytes(tensors)


TEMPLATES = {
    "chatml": CHATML,
    "llama3": ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
               " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "gemma": ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
              "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
    "mistral": ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                "{{ raise_exception('roles must alternate') }}{% endif %}{% if m['role'] == 'user' %}"
                "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"),
    "tools": ("{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
              "{% set ns = namespace(last=0) %}{% for m in messages %}{% set ns.last = loop.index %}"
              "<|im_start|>{{ m.role }}\n{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>{{ c | tojson }}</tool_call>"
              "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "macro": ("{% macro turn(role, text) %}[{{ role | upper }}] {{ text.strip() }}{% endmacro %}"
              "{% for m in messages %}{{ turn(m.role, m.content) }}{% if not loop.last %}\n{% endif %}{% endfor %}"),
}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, naïve café 🙂"},
        {"role": "assistant", "content": "Hi!", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "search", "arguments": "{\"q\":\"x\"}"}}]},
        {"role": "tool", "content": "result", "tool_call_id": "c1"}, {"role": "user", "content": "Thanks"}]

TOKENIZERS = {
    "wordlevel": {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                  "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
                  "post_processor": None, "decoder": None,
                  "model": {"type": "WordLevel", "unk_token": "<unk>", "vocab": {"<unk>": 0, "hello": 1, "world": 2, ",": 3, "!": 4}}},
    "wordpiece": {"version": "1.0", "truncation": None, "padding": None,
                  "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
                  "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
                  "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": None,
                  "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
                  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                            "vocab": {"[UNK]": 0, "hello": 1, "world": 2, "##s": 3, "na": 4, "##ive": 5}}},
    "unigram": {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                "normalizer": {"type": "NFKC"}, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
                "post_processor": None, "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
                "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                          "vocab": [["<unk>", 0.0], ["▁hello", -1.0], ["▁world", -1.5], ["▁", -3.0], ["h", -4.0], ["e", -4.0], ["<0x21>", -5.0]]}},
}


def main():
    if not os.path.exists(HEARTH):
        sys.exit(f"{HEARTH} is missing: cargo build --release -p hearth-cli first")
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, tok, f16, tied, template in [
            ("llama-bpe-f16", "llama", "gpt2", True, False, CHATML),
            ("llama-spm-f32-tied", "llama", "llama", False, True, None),
            ("qwen2-bpe-f16-tied", "qwen2", "gpt2", True, True, TEMPLATES["tools"]),
            ("llama-kept-kquants", "llama", "gpt2", None, True, None),
        ]:
            path = os.path.join(tmp, name + ".gguf")
            if name == "llama-kept-kquants":
                kept_seed(path)
            else:
                gguf_seed(path, arch, tok, f16, tied, template)
            data = open(path, "rb").read()
            assert len(data) < (20480 if name == "llama-kept-kquants" else 8192), (name, len(data))
            write("gguf_read", name, data)
            write("gguf_convert", name, data)
            write("gguf_stream", name, data)
            out = os.path.join(tmp, name)
            subprocess.run([HEARTH, "convert", path, "--out", out], check=True,
                           stdout=subprocess.DEVNULL)
            manifest = json.load(open(os.path.join(out, "manifest.json")))
            write("manifest_plan", name, json.dumps(manifest, separators=(",", ":")).encode())
            tok_file = os.path.join(out, manifest["tokenizer"]["file"])
            write("tokenizer_json", name, open(tok_file, "rb").read())
    write("safetensors_convert", "llama-f32", hf_seed())
    for name, t in TOKENIZERS.items():
        write("tokenizer_json", name, json.dumps(t).encode())
    for name, source in TEMPLATES.items():
        write("chat_template", name, source.encode() + CUT + json.dumps(CHAT).encode())


if __name__ == "__main__":
    main()
