#!/usr/bin/env python3
"""Write a synthetic Llama checkpoint (random bf16 weights, HF layout) for benchmarks and the
real-size tests.

usage: make_synthetic_model.py OUTDIR [--hidden 2048] [--intermediate 5632] [--layers 2]
                               [--heads 16] [--kv-heads 4] [--vocab 4096] [--seed 0]
                               [--untied] [--shard-mb N]
                               [--experts E --top-k K --moe-intermediate I --head-dim D]
Needs numpy only. Weights ~ N(0, 0.02) (o/down scaled by 1/sqrt(2*layers)), norms = 1. Each
tensor comes from its own generator (seeded by --seed and the tensor's name), so a tensor's
values do not depend on the layout: --shard-mb N writes model-0000k-of-0000n.safetensors
shards of at most N MB (a tensor larger than N gets a shard of its own) with
model.safetensors.index.json, as Hugging Face does; without it one model.safetensors.
--untied adds lm_head.weight and sets tie_word_embeddings false. --experts E writes a
Qwen3MoeForCausalLM instead (q/k norms, every block a mixture of E experts of
--moe-intermediate, top --top-k, norm_topk_prob true, router weights ~ N(0, 0.02)); --head-dim
sets head_dim (default hidden / heads). Tensors are generated and
written one at a time (memory: the largest tensor, not the model).
"""
import argparse, json, os, zlib
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
ap.add_argument("--untied", action="store_true")
ap.add_argument("--shard-mb", type=int, default=0)
ap.add_argument("--experts", type=int, default=0)
ap.add_argument("--top-k", type=int, default=8)
ap.add_argument("--moe-intermediate", type=int, default=1536)
ap.add_argument("--head-dim", type=int, default=0)
a = ap.parse_args()
h, i, hd = a.hidden, a.intermediate, a.head_dim or a.hidden // a.heads

specs = {}  # name -> (shape, std or None for ones)
def add(name, shape, std=0.02, ones=False):
    specs[name] = (tuple(shape), None if ones else std)

add("model.embed_tokens.weight", (a.vocab, h))
add("model.norm.weight", (h,), ones=True)
if a.untied:
    add("lm_head.weight", (a.vocab, h))
for l in range(a.layers):
    p = f"model.layers.{l}."
    add(p + "input_layernorm.weight", (h,), ones=True)
    add(p + "post_attention_layernorm.weight", (h,), ones=True)
    add(p + "self_attn.q_proj.weight", (a.heads * hd, h))
    add(p + "self_attn.k_proj.weight", (a.kv_heads * hd, h))
    add(p + "self_attn.v_proj.weight", (a.kv_heads * hd, h))
    add(p + "self_attn.o_proj.weight", (h, a.heads * hd), 0.02 / np.sqrt(2 * a.layers))
    if a.experts:
        add(p + "self_attn.q_norm.weight", (hd,), ones=True)
        add(p + "self_attn.k_norm.weight", (hd,), ones=True)
        add(p + "mlp.gate.weight", (a.experts, h))
        for e in range(a.experts):
            q = f"{p}mlp.experts.{e}."
            add(q + "gate_proj.weight", (a.moe_intermediate, h))
            add(q + "up_proj.weight", (a.moe_intermediate, h))
            add(q + "down_proj.weight", (h, a.moe_intermediate), 0.02 / np.sqrt(2 * a.layers))
        continue
    add(p + "mlp.gate_proj.weight", (i, h))
    add(p + "mlp.up_proj.weight", (i, h))
    add(p + "mlp.down_proj.weight", (h, i), 0.02 / np.sqrt(2 * a.layers))

def nbytes(name):
    return 2 * int(np.prod(specs[name][0]))

def bf16_rows(name):
    """The tensor as bf16 (uint16) bytes, produced a few rows at a time (round to nearest even)."""
    shape, std = specs[name]
    rng = np.random.default_rng([a.seed, zlib.crc32(name.encode())])
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, (1 << 24) // cols)
    for r in range(0, rows, step):
        n = min(step, rows - r)
        x = np.ones((n, cols), np.float32) if std is None else \
            rng.standard_normal((n, cols), dtype=np.float32) * np.float32(std)
        u = x.view(np.uint32)
        yield ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()

def write_file(path, names):
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for k in names:
        hdr[k] = {"dtype": "BF16", "shape": list(specs[k][0]), "data_offsets": [off, off + nbytes(k)]}
        off += nbytes(k)
    hj = json.dumps(hdr).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hj).to_bytes(8, "little"))
        f.write(hj)
        for k in names:
            for chunk in bf16_rows(k):
                f.write(chunk)
    return off

os.makedirs(a.out, exist_ok=True)
names = sorted(specs)
total = 0
if a.shard_mb <= 0:
    total = write_file(os.path.join(a.out, "model.safetensors"), names)
else:
    shards, cur, size = [], [], 0
    for k in names:
        if cur and size + nbytes(k) > a.shard_mb * 1000000:
            shards.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += nbytes(k)
    shards.append(cur)
    wmap = {}
    for s, ks in enumerate(shards):
        fn = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_file(os.path.join(a.out, fn), ks)
        wmap.update({k: fn for k in ks})
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
       "intermediate_size": i, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
       "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab, "max_position_embeddings": a.max_pos,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": not a.untied,
       "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
if a.head_dim:
    cfg["head_dim"] = hd
if a.experts:
    cfg |= {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "num_experts": a.experts, "num_experts_per_tok": a.top_k,
            "moe_intermediate_size": a.moe_intermediate, "norm_topk_prob": True,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "head_dim": hd}
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
print(f"wrote {a.out}: {a.layers} layers, hidden {h}, intermediate {i}, {total/1e6:.1f} MB")
