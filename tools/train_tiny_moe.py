#!/usr/bin/env python3
"""Train the small mixture-of-experts test model tests/data/qwen3moe-sotu-2m (Qwen3-MoE layout) on
the bundled calibration texts, so MoE quantization is measured on real routing.

Model: Qwen3MoeForCausalLM, hidden 128, 4 layers, 4 heads / 2 KV heads of 32, 8 experts of
moe_intermediate 128, top-2 with norm_topk_prob, tied embeddings, vocab 4096 (the tokenizer of
tests/data/llama-sotu-5m, copied alongside). Data: tests/data/llama-sotu-5m/calib.i32 (300k
tokens of State of the Union addresses, the Brown corpus and Jane Austen, public domain),
random windows of 128 tokens, batch 16, AdamW (lr 3e-3, cosine to 3e-4, 60 warm-up steps),
the router's load-balancing loss on (router_aux_loss_coef 0.01) so that every expert is used;
float32 on the CPU, torch's seed fixed. WikiText-2 (tests/data/llama-sotu-5m/wikitext2-test.i32)
is never seen: it is the evaluation text. Weights saved as bf16 with save_pretrained (the
load-balancing flag off in the saved config).

Rerun (from the repository root; needs torch, transformers, numpy; ~10 min on 2 cores):
    python3 tools/train_tiny_moe.py [--steps 1500] [--out tests/data/qwen3moe-sotu-2m]
"""
import argparse
import math
import os
import shutil
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "data", "llama-sotu-5m")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "moe-sotu-3m"))
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = Qwen3MoeConfig(vocab_size=4096, hidden_size=128, intermediate_size=256,
                         moe_intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
                         norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                         max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, output_router_logits=True,
                         router_aux_loss_coef=0.01, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    ids = torch.from_numpy(np.fromfile(os.path.join(SRC, "calib.i32"), dtype="<i4").astype(np.int64))
    S, B, lr0, warm = 128, 16, 3e-3, 60
    opt = torch.optim.AdamW(model.parameters(), lr=lr0, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1)
    t0 = time.time()
    model.train()
    for step in range(a.steps):
        lr = lr0 * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(ids) - S, (B,), generator=gen)
        x = torch.stack([ids[s:s + S] for s in starts])
        out = model(input_ids=x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step}: loss {out.loss.item():.3f} (aux {out.aux_loss.item():.3f}), "
                  f"lr {lr:.2e}, {time.time() - t0:.0f} s", flush=True)
    model.config.output_router_logits = False
    os.makedirs(a.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(a.out, safe_serialization=True)
    gc = os.path.join(a.out, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    shutil.copy(os.path.join(SRC, "tokenizer.model"), a.out)
    print(f"saved {a.out}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
