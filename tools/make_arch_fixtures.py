#!/usr/bin/env python3
"""Tiny random checkpoints of the architectures hpcq reads besides Llama, and their
transformers logits, so the forward is checked against transformers for each.

What it writes (all small and committed):
  tests/data/tiny-<arch>/config.json, model.safetensors
      a randomly initialised model made with transformers (save_pretrained, bf16 weights),
      vocab 512 (the stories260K tokenizer's size, so its token files feed it):
        tiny-qwen3  Qwen3ForCausalLM: hidden 64, 2 layers, 4 heads / 2 KV heads,
                    head_dim 32 (not hidden / heads), per-head q_norm / k_norm, untied head
        tiny-mixtral  MixtralForCausalLM: hidden 64, 2 layers, 4 experts of 96, top-2
                    (always renormalised)
        tiny-qwen3-moe  Qwen3MoeForCausalLM: hidden 64, 3 layers, 8 experts of 48, top-2,
                    norm_topk_prob false, layer 1 dense (mlp_only_layers [1], intermediate 128),
                    q/k norms, head_dim 32
      Norm weights are drawn around 1 (not left at 1), so a norm hpcq forgot to apply
      changes the logits.
  tests/data/fixtures/tiny-<arch>-logits.safetensors
      the same tensors as tools/make_hf_fixtures.py's logits fixtures (tokens, row_pos, rows,
      cols, col_logits, row_absmax, lse, nll) for 2 windows x 64 tokens of
      tests/data/stories260K-hf/wikitext2-test.tok512.i32, computed in float32 with eager
      attention from the bf16 weights as saved.

Rerun (from the repository root; needs torch, transformers, safetensors, numpy; seconds):
    python3 tools/make_arch_fixtures.py
"""
import json
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen3Config, Qwen3MoeConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
TOKFILE = os.path.join("stories260K-hf", "wikitext2-test.tok512.i32")
NSEQ, SEQLEN = 2, 64
OFFSETS = [0, 100000]
ROW_POS = [0, 1, 2, 31, 62, 63]
NCOLS = 32

COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              initializer_range=0.08, tie_word_embeddings=False, bos_token_id=1,
              eos_token_id=2)

ARCHS = {
    "tiny-qwen3": lambda: Qwen3Config(**COMMON, intermediate_size=128, head_dim=32,
                                      rope_theta=1000000.0),
    "tiny-mixtral": lambda: MixtralConfig(**COMMON, intermediate_size=96, num_local_experts=4,
                                          num_experts_per_tok=2),
    "tiny-qwen3-moe": lambda: Qwen3MoeConfig(**(COMMON | {"num_hidden_layers": 3}),
                                             intermediate_size=128, moe_intermediate_size=48,
                                             num_experts=8, num_experts_per_tok=2,
                                             norm_topk_prob=False, mlp_only_layers=[1],
                                             decoder_sparse_step=1, head_dim=32),
}


def perturb_norms(model, gen):
    """Norm weights around 1 (std 0.2), so each one matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def logits_tensors(model):
    ids = np.fromfile(os.path.join(DATA, TOKFILE), dtype="<i4")
    toks = np.stack([ids[o:o + SEQLEN] for o in OFFSETS]).astype(np.int32)
    logits = model(torch.from_numpy(toks).long()).logits.double().numpy()
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse[:, :-1] - np.take_along_axis(logits[:, :-1, :],
                                           toks[:, 1:, None].astype(np.int64), -1)[..., 0]
    row_pos = np.array([(s, p) for s in range(NSEQ) for p in ROW_POS], dtype=np.int32)
    return {
        "tokens": toks,
        "row_pos": row_pos,
        "rows": np.stack([logits[s, p] for s, p in row_pos]).astype(np.float32),
        "cols": np.arange(NCOLS, dtype=np.int32),
        "col_logits": logits[:, :, :NCOLS].reshape(NSEQ * SEQLEN, NCOLS).astype(np.float32),
        "row_absmax": np.abs(logits).max(-1).astype(np.float32),
        "lse": lse.astype(np.float32),
        "nll": nll.astype(np.float32),
    }


def make(name, cfg_fn, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    cfg = cfg_fn()
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    perturb_norms(model, gen)
    d = os.path.join(DATA, name)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    # the saved bf16 weights, read back in float32 (exact), are what both sides run
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    t = logits_tensors(model)
    meta = {"model": name, "token_file": TOKFILE, "offsets": json.dumps(OFFSETS),
            "vocab": str(cfg.vocab_size), "transformers": transformers.__version__,
            "torch": torch.__version__, "dtype": "float32 (bf16 weights)", "attn": "eager",
            "seed": str(seed), "made_by": "tools/make_arch_fixtures.py"}
    path = os.path.join(DATA, "fixtures", f"{name}-logits.safetensors")
    save_file(t, path, metadata=meta)
    print(f"{d}: {sum(p.numel() for p in model.parameters())} parameters; {path}: "
          f"mean nll {t['nll'].mean():.4f}")


def main():
    torch.set_num_threads(1)  # the same logits bits on every rerun
    for i, (name, fn) in enumerate(ARCHS.items()):
        make(name, fn, 1000 + i)


if __name__ == "__main__":
    main()
