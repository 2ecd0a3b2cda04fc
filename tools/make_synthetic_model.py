#!/usr/bin/env python3
"""Write a synthetic Llama checkpoint (random bf16 weights, HF layout) for benchmarks.

usage: make_synthetic_model.py OUTDIR [--hidden 2048] [--intermediate 5632] [--layers 2]
                               [--heads 16] [--kv-heads 4] [--vocab 4096] [--seed 0]
Needs numpy only. Weights ~ N(0, 0.02) (o/down scaled by 1/sqrt(2*layers)), norms = 1.
"""
import argparse, json, os
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--hidden", type=int, default=2048)
ap.add_argument("--intermediate", type=int, default=5632)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--heads", type=int, default=16)
ap.add_argument("--kv-heads", type=int, default=4)
ap.add_argument("--vocab", type=int, default=4096)
ap.add_argument("--max-pos", type=int, default=2048)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
rng = np.random.default_rng(a.seed)
h, i, hd = a.hidden, a.intermediate, a.hidden // a.heads

def bf16(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

tensors = {}
def add(name, shape, std=0.02, ones=False):
    x = np.ones(shape, np.float32) if ones else rng.standard_normal(shape, dtype=np.float32) * std
    tensors[name] = bf16(x)

add("model.embed_tokens.weight", (a.vocab, h))
add("model.norm.weight", (h,), ones=True)
for l in range(a.layers):
    p = f"model.layers.{l}."
    add(p + "input_layernorm.weight", (h,), ones=True)
    add(p + "post_attention_layernorm.weight", (h,), ones=True)
    add(p + "self_attn.q_proj.weight", (a.heads * hd, h))
    add(p + "self_attn.k_proj.weight", (a.kv_heads * hd, h))
    add(p + "self_attn.v_proj.weight", (a.kv_heads * hd, h))
    add(p + "self_attn.o_proj.weight", (h, a.heads * hd), 0.02 / np.sqrt(2 * a.layers))
    add(p + "mlp.gate_proj.weight", (i, h))
    add(p + "mlp.up_proj.weight", (i, h))
    add(p + "mlp.down_proj.weight", (h, i), 0.02 / np.sqrt(2 * a.layers))

os.makedirs(a.out, exist_ok=True)
hdr, off = {"__metadata__": {"format": "pt"}}, 0
for k in sorted(tensors):
    n = tensors[k].nbytes
    hdr[k] = {"dtype": "BF16", "shape": list(tensors[k].shape), "data_offsets": [off, off + n]}
    off += n
hj = json.dumps(hdr).encode()
hj += b" " * ((8 - len(hj) % 8) % 8)
with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
    f.write(len(hj).to_bytes(8, "little")); f.write(hj)
    for k in sorted(tensors):
        f.write(tensors[k].tobytes())
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
       "intermediate_size": i, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
       "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab, "max_position_embeddings": a.max_pos,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu",
       "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
print(f"wrote {a.out}: {a.layers} layers, hidden {h}, intermediate {i}, {off/1e6:.1f} MB")
