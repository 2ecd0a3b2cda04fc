#!/usr/bin/env python3
"""Train the small mixture-of-experts test model tests/data/qwen3moe-sotu-2m (Qwen3-MoE layout) on
the bundled calibration texts, so MoE quantization is measured on real routing.

Model: Qwen3MoeForCausalLM, hidden 128, 4 layers, 4 heads / 2 KV heads of 32, 8 experts of
moe_intermediate 128, top-2 with norm_topk_prob, tied embeddings, vocab 4096 (the tokenizer of
tests/data/llama-sotu-5m, copied alongside). Data: the texts the 5M model was trained on (State of
the Union addresses, the Brown corpus, Jane Austen; public domain), read from --text (the
project's shared data set, shared/data/text: sotu.txt, brown.txt, austen.txt, ~21 MB), cut at
blank lines into pieces of at most ~8 kB, each encoded with the tokenizer as bos + text + eos
(~5M tokens; without --text: tests/data/llama-sotu-5m/calib.i32, 300k tokens of the same
texts); random windows of 128 tokens, batch 16, AdamW (lr 3e-3, cosine to 3e-4, 60 warm-up steps),
the router's load-balancing loss on (router_aux_loss_coef 0.01) so that every expert is used;
float32 on the CPU, torch's seed fixed. WikiText-2 (tests/data/llama-sotu-5m/wikitext2-test.i32)
is never seen: it is the evaluation text. Weights saved as bf16 with save_pretrained (the
load-balancing flag off in the saved config).

Rerun (from the repository root; needs torch, transformers, numpy, sentencepiece; ~8 min on
2 cores):
    python3 tools/train_tiny_moe.py --text ../shared/data/text [--steps 2000]
                                    [--out tests/data/qwen3moe-sotu-2m]
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


def load_text(d):
    """bos + piece + eos for every piece (blank-line separated, <= ~8 kB) of the three texts."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(SRC, "tokenizer.model"))
    out = []
    for name in ("sotu.txt", "brown.txt", "austen.txt"):
        text = open(os.path.join(d, name), encoding="utf-8").read()
        piece = []
        for para in text.split("\n\n"):
            piece.append(para)
            if sum(map(len, piece)) > 8000:
                out += [sp.bos_id()] + sp.encode("\n\n".join(piece)) + [sp.eos_id()]
                piece = []
        if piece:
            out += [sp.bos_id()] + sp.encode("\n\n".join(piece)) + [sp.eos_id()]
    return np.array(out, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--text", default=None, help="folder with sotu.txt, brown.txt, austen.txt")
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
    ids = torch.from_numpy(load_text(a.text) if a.text else
                           np.fromfile(os.path.join(SRC, "calib.i32"), dtype="<i4").astype(np.int64))
    print(f"{len(ids)} training tokens", flush=True)
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
