#!/usr/bin/env python3
"""Reference fixtures for hpcq's Llama forward, computed with Hugging Face transformers.

What it writes (tests/data/fixtures/, all small and committed):
  <model>-logits.safetensors   for each bundled model (llama-sotu-5m, stories260K-hf):
      tokens     I32 [2 x 64]        the two windows fed to the model (from the model's
                                      WikiText-2 token file, offsets in __metadata__)
      row_pos    I32 [R x 2]         (sequence, position) of each full logits row
      rows       F32 [R x vocab]     full logits rows at those positions
      cols       I32 [C]             vocab ids of the column slice
      col_logits F32 [2*64 x C]      logits of those vocab ids at every position
      row_absmax F32 [2 x 64]        max_j |logit[s, t, j]| (the scale for relative errors)
      lse        F32 [2 x 64]        logsumexp_j logit[s, t, j] (float64, rounded)
      nll        F32 [2 x 63]        -log softmax(logits[s, t])[tokens[s, t+1]]
  llama-sotu-5m-ppl.json       perplexity of llama-sotu-5m on wikitext2-test.i32 at seqlen 256:
      contiguous non-overlapping windows (remainder dropped), every window starts fresh at
      position 0, labels = the next token inside the window (seqlen-1 predictions per
      window), ppl = exp(mean NLL) — exactly the protocol of `hpcq eval`. Also the figures
      for the first 8, 64 and 256 windows ("perplexity_first", for --max-windows K checks).
  rope-llama3.safetensors      inv_freq [64] of transformers' "llama3" rope_scaling
      (_compute_llama3_parameters) for the Llama-3.1-8B parameters (theta 500000, head_dim
      128, factor 8, low 1, high 4, original_max_position_embeddings 8192), and of the
      default rope for the same theta.

The models run in float32 on the CPU with eager attention (bf16 weights of llama-sotu-5m
are upcast to fp32 exactly).

Rerun (from the repository root; needs torch, transformers, safetensors, numpy; 2-7 min on
2 busy cores, almost all of it the perplexity):
    python3 tools/make_hf_fixtures.py
Options: --out DIR (default tests/data/fixtures), --skip-ppl (logits + rope only).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")

MODELS = [
    # (folder, WikiText-2 token file)
    ("llama-sotu-5m", "wikitext2-test.i32"),
    ("stories260K-hf", "wikitext2-test.tok512.i32"),
]
NSEQ, SEQLEN = 2, 64
OFFSETS = [0, 100000]                 # window starts in the token file
ROW_POS = [0, 1, 2, 31, 62, 63]       # positions with full logits rows (both sequences)
NCOLS = 32                            # vocab ids 0..31 at every position
PPL_SEQLEN, PPL_BATCH = 256, 32
PPL_SUBSETS = [8, 64, 256]            # also record the perplexity of the first K windows


def load_model(d):
    m = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


@torch.no_grad()
def logits_fixture(name, tokfile, out):
    d = os.path.join(DATA, name)
    model = load_model(d)
    ids = np.fromfile(os.path.join(d, tokfile), dtype="<i4")
    toks = np.stack([ids[o:o + SEQLEN] for o in OFFSETS]).astype(np.int32)
    logits = model(torch.from_numpy(toks).long()).logits.double().numpy()  # [2, 64, V]
    vocab = logits.shape[-1]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse[:, :-1] - np.take_along_axis(logits[:, :-1, :], toks[:, 1:, None].astype(np.int64),
                                           -1)[..., 0]
    row_pos = np.array([(s, p) for s in range(NSEQ) for p in ROW_POS], dtype=np.int32)
    rows = np.stack([logits[s, p] for s, p in row_pos]).astype(np.float32)
    cols = np.arange(NCOLS, dtype=np.int32)
    t = {
        "tokens": toks,
        "row_pos": row_pos,
        "rows": rows,
        "cols": cols,
        "col_logits": logits[:, :, :NCOLS].reshape(NSEQ * SEQLEN, NCOLS).astype(np.float32),
        "row_absmax": np.abs(logits).max(-1).astype(np.float32),
        "lse": lse.astype(np.float32),
        "nll": nll.astype(np.float32),
    }
    meta = {"model": name, "token_file": tokfile, "offsets": json.dumps(OFFSETS),
            "vocab": str(vocab), "transformers": transformers.__version__,
            "torch": torch.__version__, "dtype": "float32", "attn": "eager",
            "made_by": "tools/make_hf_fixtures.py"}
    path = os.path.join(out, f"{name}-logits.safetensors")
    save_file(t, path, metadata=meta)
    print(f"{path}: {os.path.getsize(path)} bytes, mean nll {nll.mean():.6f}")


@torch.no_grad()
def ppl_fixture(out):
    name = "llama-sotu-5m"
    d = os.path.join(DATA, name)
    model = load_model(d)
    ids = np.fromfile(os.path.join(d, "wikitext2-test.i32"), dtype="<i4")
    nwin = len(ids) // PPL_SEQLEN
    win = torch.from_numpy(ids[: nwin * PPL_SEQLEN].reshape(nwin, PPL_SEQLEN).astype(np.int64))
    nll_win = np.zeros(nwin)                          # summed NLL of each window (float64)
    t0 = time.time()
    for b in range(0, nwin, PPL_BATCH):
        x = win[b:b + PPL_BATCH]
        lp = torch.log_softmax(model(x).logits[:, :-1, :].double(), dim=-1)
        nll = -lp.gather(-1, x[:, 1:, None])[..., 0]
        nll_win[b:b + len(x)] = nll.sum(-1).numpy()
        if b // PPL_BATCH % 10 == 0:
            print(f"  ppl: {b + len(x)}/{nwin} windows, {time.time() - t0:.0f} s", file=sys.stderr)
    npred = PPL_SEQLEN - 1
    res = {
        "model": name,
        "token_file": "wikitext2-test.i32",
        "seqlen": PPL_SEQLEN,
        "windows": int(nwin),
        "tokens": int(nwin * npred),
        "nll_mean": float(nll_win.sum() / (nwin * npred)),
        "perplexity": float(math.exp(nll_win.sum() / (nwin * npred))),
        # perplexity of the first K windows (for quicker `--max-windows K` checks)
        "perplexity_first": {str(k): float(math.exp(nll_win[:k].sum() / (k * npred)))
                             for k in PPL_SUBSETS},
        "protocol": "contiguous non-overlapping windows of seqlen, remainder dropped, "
                    "positions 0..seqlen-1 in each window, labels = next token in the window",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "made_by": "tools/make_hf_fixtures.py",
    }
    path = os.path.join(out, f"{name}-ppl.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(f"{path}: ppl {res['perplexity']:.6f} over {nwin} windows "
          f"({time.time() - t0:.0f} s)")


def rope_fixture(out):
    params = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
              "rope_theta": 500000.0}
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, head_dim=128,
                      max_position_embeddings=131072, rope_theta=500000.0,
                      rope_scaling=dict(params))
    inv3, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    inv0 = 1.0 / (500000.0 ** (np.arange(0, 128, 2, dtype=np.float64) / 128))
    path = os.path.join(out, "rope-llama3.safetensors")
    save_file({"inv_freq_llama3": inv3.float().numpy(), "inv_freq_default": inv0.astype(np.float32)},
              path, metadata={k: str(v) for k, v in params.items()} |
              {"head_dim": "128", "made_by": "tools/make_hf_fixtures.py",
               "transformers": transformers.__version__})
    print(f"{path}: {os.path.getsize(path)} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(DATA, "fixtures"))
    ap.add_argument("--skip-ppl", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    rope_fixture(a.out)
    for name, tokfile in MODELS:
        logits_fixture(name, tokfile, a.out)
    if not a.skip_ppl:
        ppl_fixture(a.out)


if __name__ == "__main__":
    main()
