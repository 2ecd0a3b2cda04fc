#!/usr/bin/env python3
"""PyTorch CPU baseline for bench_gptq: the reference GPTQ `fasterquant` loop in fp32.

Runs the form of GPTQ most users run (the reference implementation's fasterquant: dead
columns, act-order, damping, Cholesky -> cholesky_inverse -> upper Cholesky, blocks of 128
with a per-column rank-1 update inside the block and one GEMM after it, dynamic groups found
when the loop reaches a group's first column) on the SAME layer that bench_gptq quantized:

    bench_gptq --layer 4096x4096 --dump /tmp/gq          # writes W, H, hpcq's codes
    python3 bench/gptq_torch.py --dump /tmp/gq --layer 4096x4096 --threads 2

and reports its time (median of --reps after a warm-up, same thread count), the agreement of
its codes with hpcq's, and both proxy losses tr(dW H dW^T).

Departures from the reference, each needed to compare codes and each costing nothing:
  * scales are rounded to fp16 before use and the zero is computed with (and clamped for)
    the rounded scale, as hpcq does (quant.h) and as the stored checkpoint requires;
  * the act-order argsort is stable (ties keep column order, as hpcq);
  * the integer code of each column is kept (one extra small copy per column).
Not a dependency of the build or the tests: a benchmark helper only.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


def find_params(x, bits, sym):
    """Reference min/max quantizer (weight=True, per row), with fp16-rounded scale."""
    maxq = 2 ** bits - 1
    tmp = torch.zeros(x.shape[0], dtype=x.dtype)
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        neg = xmin < 0
        if torch.any(neg):
            xmin[neg] = -xmax[neg]
    both0 = (xmin == 0) & (xmax == 0)
    xmin[both0] = -1
    xmax[both0] = +1
    scale = (xmax - xmin) / maxq
    # hpcq: round the scale to fp16 (never 0, never above 65504) before using it
    scale = scale.half().float().clamp(min=5.9604644775390625e-08, max=65504.0)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale.reshape(-1, 1), zero.reshape(-1, 1)


def fasterquant(W, H, bits=4, groupsize=128, actorder=True, sym=False, percdamp=0.01,
                blocksize=128):
    """Returns codes (uint8, original column order), Q (dequantized), timings."""
    maxq = 2 ** bits - 1
    t0 = time.perf_counter()
    W = W.clone().float()
    H = H.clone()
    rows, columns = W.shape
    scale, zero = find_params(W, bits, sym)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    C = torch.zeros(W.shape, dtype=torch.uint8)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    tc = time.perf_counter()
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    t_chol = time.perf_counter() - tc
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        C1 = torch.zeros(W1.shape, dtype=torch.uint8)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1 and (i1 + i) % groupsize == 0:
                scale, zero = find_params(W[:, (i1 + i):(i1 + i + groupsize)], bits, sym)
            qi = torch.clamp(torch.round(w.unsqueeze(1) / scale) + zero, 0, maxq)
            q = (scale * (qi - zero)).flatten()
            C1[:, i] = qi.flatten().to(torch.uint8)
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        C[:, i1:i2] = C1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        invperm = torch.argsort(perm)
        Q = Q[:, invperm]
        C = C[:, invperm]
    t_total = time.perf_counter() - t0
    return C, Q, {"total": t_total, "chol": t_chol, "loss": float(torch.sum(Losses))}


def proxy_loss(W0, Q, H):
    D = (W0 - Q).double()
    return float(torch.sum((D @ H.double()) * D))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dump", required=True, help="directory written by bench_gptq --dump")
    ap.add_argument("--layer", default="4096x4096", help="ROWSxCOLS of the dumped layer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = os.path.join(a.dump, "gptq_" + a.layer)
    meta = json.load(open(base + ".json"))
    rows, cols = meta["rows"], meta["cols"]
    W0 = torch.from_numpy(np.fromfile(base + "_W.f32", dtype=np.float32).reshape(rows, cols))
    H = torch.from_numpy(np.fromfile(base + "_H.f32", dtype=np.float32).reshape(cols, cols))
    codes_hq = torch.from_numpy(np.fromfile(base + "_codes.u8", dtype=np.uint8).reshape(rows, cols))
    Wq_hq = torch.from_numpy(np.fromfile(base + "_Wq.f32", dtype=np.float32).reshape(rows, cols))
    kw = dict(bits=meta["bits"], groupsize=meta["group_size"], actorder=bool(meta["act_order"]),
              sym=bool(meta["sym"]), percdamp=meta["percdamp"], blocksize=meta["block_size"])
    fasterquant(W0, H, **kw)  # warm-up
    times, chols = [], []
    for _ in range(a.reps):
        C, Q, t = fasterquant(W0, H, **kw)
        times.append(t["total"])
        chols.append(t["chol"])
    t_torch = statistics.median(times)
    agree = float((C == codes_hq).double().mean())
    l_torch, l_hq = proxy_loss(W0, Q, H), proxy_loss(W0, Wq_hq, H)
    t_hq = meta["hpcq_t_gptq_s"]
    res = {"layer": a.layer, "threads": a.threads, "torch": torch.__version__,
           "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
           "reps": a.reps, "torch_s": t_torch, "torch_chol_s": statistics.median(chols),
           "hpcq_s": t_hq, "speedup": t_torch / t_hq, "code_agreement": agree,
           "proxy_loss_torch": l_torch, "proxy_loss_hpcq": l_hq,
           "proxy_loss_ratio": l_hq / l_torch}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"layer {a.layer} ({rows} x {cols}), {meta['bits']}-bit g{meta['group_size']} "
              f"act-order={meta['act_order']}, torch {torch.__version__} "
              f"({res['torch_blas']}), {a.threads} threads, median of {a.reps}")
        print(f"  PyTorch reference fasterquant  {t_torch:8.3f} s  (Cholesky {res['torch_chol_s']:.3f} s)")
        print(f"  hpcq hq_gptq_quantize         {t_hq:8.3f} s  (from bench_gptq --dump)")
        print(f"  speedup                        {res['speedup']:8.2f} x  (goal >= 2)")
        print(f"  codes agreeing                 {100 * agree:8.4f} %")
        print(f"  proxy loss tr(dW H dW^T)       torch {l_torch:.6g}  hpcq {l_hq:.6g}  "
              f"ratio {res['proxy_loss_ratio']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
