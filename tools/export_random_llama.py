#!/usr/bin/env python3
"""Write a random Llama checkpoint (config.json + model.safetensors, BF16, 0.49B params: hidden
2048, intermediate 5632, 8 layers, 16/4 heads, vocab 32000, untied lm_head) into the current
folder, for measuring `hpcq export` time and memory on something larger than the bundled models
(docs/readme/export.md). Needs numpy only; weights N(0, 0.02), seed 0."""
import json, numpy as np
H, I, L, NH, NKV, HD, V = 2048, 5632, 8, 16, 4, 128, 32000
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
       "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH,
       "num_key_value_heads": NKV, "head_dim": HD, "vocab_size": V, "max_position_embeddings": 2048,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
       "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
json.dump(cfg, open("config.json", "w"), indent=2)
rng = np.random.default_rng(0)
def bf16(shape, s=0.02):
    a = (rng.standard_normal(shape, dtype=np.float32) * s)
    return (a.view(np.uint32) >> 16).astype(np.uint16)
# safetensors.numpy has no bf16: write the header ourselves
T = {"model.embed_tokens.weight": bf16((V, H)), "lm_head.weight": bf16((V, H)),
     "model.norm.weight": bf16((H,), 0) + 0x3f80}
for l in range(L):
    p = f"model.layers.{l}."
    T[p+"input_layernorm.weight"] = np.full(H, 0x3f80, np.uint16)
    T[p+"post_attention_layernorm.weight"] = np.full(H, 0x3f80, np.uint16)
    for n, s in [("self_attn.q_proj", (NH*HD, H)), ("self_attn.k_proj", (NKV*HD, H)), ("self_attn.v_proj", (NKV*HD, H)),
                 ("self_attn.o_proj", (H, NH*HD)), ("mlp.gate_proj", (I, H)), ("mlp.up_proj", (I, H)), ("mlp.down_proj", (H, I))]:
        T[p+n+".weight"] = bf16(s)
hdr, off = {"__metadata__": {"format": "pt"}}, 0
names = sorted(T)
for k in names:
    n = T[k].nbytes; hdr[k] = {"dtype": "BF16", "shape": list(T[k].shape), "data_offsets": [off, off+n]}; off += n
h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open("model.safetensors", "wb") as f:
    f.write(len(h).to_bytes(8, "little")); f.write(h)
    for k in names: f.write(T[k].tobytes())
print(sum(T[k].size for k in names) / 1e6, "M params")
