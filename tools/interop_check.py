#!/usr/bin/env python3
"""Load GPTQ checkpoints the way users serve them on a CPU and measure their perplexity with the
protocol of `hpcq eval`; run by tools/interop-check.sh (which sets up the virtual environment).

  interop_check.py --tokens FILE.i32 --seqlen N --windows K CKPT_DIR...
  interop_check.py --quantize SRC OUT --calib FILE.i32 --nsamples N --seqlen S --bits B [--sym]

Loaders: "transformers" (AutoModelForCausalLM.from_pretrained: transformers' GPTQ integration,
which picks one of gptqmodel's kernels) and "gptqmodel" (GPTQModel.load). Perplexity: contiguous
non-overlapping windows of --seqlen tokens, tokens 1..N-1 of each predicted from their prefix,
exp(mean NLL) in float64 over the float32 logits: what `hpcq eval` computes. One JSON object per
(checkpoint, loader) on stdout after "RESULT " (the loaders log to stdout too): {"ckpt", "loader", "kernel", "ppl"} or {"ckpt", "loader",
"error"}. --quantize writes a checkpoint with GPTQModel itself (GPTQ, group size 128, no
act-order), so that hpcq eval / hpcq compare can be checked on a file hpcq did not write.
"""
import argparse
import json
import sys
import time

import numpy as np
import torch

import gptqmodel

# GPTQModel 7.7 sizes its CPU pool as (cores + 1) // 2 but asks 2 workers of it for loading: on a
# 2-core machine that is refused ("requests 2 workers but parent 'cpu' only has 1").
gptqmodel._default_cpu_workers = lambda: 2
from gptqmodel import GPTQModel, QuantizeConfig  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def windows(path, seqlen, k):
    ids = np.fromfile(path, dtype="<i4")
    k = min(k, len(ids) // seqlen)
    return ids[: k * seqlen].reshape(k, seqlen).astype(np.int64)


def perplexity(model, wins):
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in wins:
            x = torch.from_numpy(w)[None]
            lg = model(x).logits[0, :-1].double()
            lp = torch.log_softmax(lg, -1)
            nll -= lp.gather(1, x[0, 1:, None]).sum().item()
            n += len(w) - 1
    return float(np.exp(nll / n))


def load(loader, ckpt):
    if loader == "transformers":
        m = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, device_map="cpu")
        return m, m
    # float16: what GPTQModel serves in (its TorchLinear, for 2/3/8 bits, refuses float32)
    g = GPTQModel.load(ckpt, device="cpu", dtype=torch.float16)
    return g.model, g.model


def check(ckpt, loader, wins):
    t = time.time()
    try:
        m, inner = load(loader, ckpt)
        # the kernel class of the first quantized linear (a rule may have skipped q_proj)
        kernel = next((type(x).__name__ for x in inner.modules() if hasattr(x, "qweight")), "none")
        ppl = perplexity(m, wins)
        return {"ckpt": ckpt, "loader": loader, "kernel": kernel, "ppl": ppl,
                "seconds": round(time.time() - t, 1)}
    except Exception as e:  # the loader's refusal is a result: report it and go on
        msg = " ".join(str(e).split())[:240]
        return {"ckpt": ckpt, "loader": loader, "error": f"{type(e).__name__}: {msg}"}


def quantize(a):
    ids = windows(a.calib, a.seqlen, a.nsamples)
    data = [{"input_ids": torch.from_numpy(r)[None],
             "attention_mask": torch.ones(1, a.seqlen, dtype=torch.long)} for r in ids]
    qc = QuantizeConfig(bits=a.bits, group_size=128, sym=a.sym, desc_act=False)
    m = GPTQModel.load(a.quantize[0], qc, device="cpu")
    m.quantize(data, batch_size=1)
    m.save(a.quantize[1])
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpts", nargs="*")
    p.add_argument("--tokens")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--windows", type=int, default=40)
    p.add_argument("--loaders", default="transformers,gptqmodel")
    p.add_argument("--quantize", nargs=2, metavar=("SRC", "OUT"))
    p.add_argument("--calib")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--sym", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.quantize:
        return quantize(a)
    wins = windows(a.tokens, a.seqlen, a.windows)
    for ck in a.ckpts:
        for loader in a.loaders.split(","):
            print("RESULT " + json.dumps(check(ck, loader, wins)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
