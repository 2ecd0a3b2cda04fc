#!/usr/bin/env python3
"""Independent check of hpcq's expert Hessians (tests/test_moe.sh), numpy only.

    moe_hessian_check.py SOURCE_DIR RESULT.h5 VIEW.safetensors TOKENS.i32 SEQLEN NSAMPLES

The calibration must be ONE window: TOKENS.i32 holds exactly SEQLEN tokens, so each of the
NSAMPLES windows hpcq samples is that one (the Hessians are those of one window; the token
counts NSAMPLES times its). The sparse MLP's input of
every MoE block is recomputed here in float64 by the forward of tools/gptq_reference_loader.py
from hpcq's quantized weights of everything before it (true-sequential: the quantized earlier
blocks and this block's quantized attention; VIEW is export_hpcq_view's dump of them); then,
from the published routing (transformers' softmax / top-k), for every expert:
  1. NSAMPLES x the tokens routed to it equal the file's moe_tokens attribute;
  2. GPTQ's proxy loss tr(dW H dWᵀ), dW = W_source - W_quantized, with H = 2/n Σ x xᵀ over
     the rows routed to it (its gate/up: the MLP input; its down: silu(gate x) * (up x) with
     the quantized gate and up), equals the file's loss_proxy_gptq within 1e-3 relative;
     experts that took the "block" fallback use all the window's rows instead.
Prints one line per block and exits 1 on any mismatch.
"""
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptq_reference_loader as ref  # noqa: E402


def main():
    src_dir, h5path, view_path, tok_path, seqlen, nsamples = sys.argv[1:7]
    seqlen, nsamples = int(seqlen), int(nsamples)
    ids = np.fromfile(tok_path, dtype="<i4")
    if len(ids) != seqlen:
        sys.exit(f"{tok_path} must hold exactly {seqlen} tokens (one window)")
    with open(os.path.join(src_dir, "config.json")) as f:
        cfg = __import__("json").load(f)
    src = {k: ref.as_f32(dt, a).astype(np.float64) for k, (dt, a) in ref.load_checkpoint(src_dir).items()}
    view, _ = ref.read_safetensors(view_path)
    W = dict(src)
    for k, (dt, a) in view.items():
        if k.endswith(".weight"):
            W[k] = a.astype(np.float64)  # hpcq's dequantized linears replace the source's
    f = h5py.File(h5path, "r")
    errors = []

    def attr(name, key):
        return f["linears"][name].attrs[key]

    def check(name, X, W_src, W_q, label):
        Hm = 2.0 / len(X) * (X.T @ X)
        dW = W_src - W_q
        mine = float(np.einsum("ij,jk,ik->", dW, Hm, dW))
        theirs = float(attr(name, "loss_proxy_gptq"))
        if not abs(mine - theirs) <= 1e-3 * abs(mine):
            errors.append(f"{name}: proxy loss {theirs:.9g}, numpy {mine:.9g} ({label})")
        return mine

    def hook(layer, h):
        x = h.reshape(-1, h.shape[-1])
        top, _ = ref.moe_route(cfg, W, layer, x)
        nexp, nfb = ref.moe_dims(cfg)[0], 0
        for e in range(nexp):
            gn, un, dn = ref.expert_names(cfg, layer, e)
            rows = np.nonzero((top == e).any(-1))[0]
            tok = int(attr(gn, "moe_tokens"))
            fb = attr(gn, "moe_fallback")
            fb = fb.decode() if isinstance(fb, bytes) else str(fb)
            if tok != nsamples * len(rows):
                errors.append(f"{gn}: moe_tokens {tok}, numpy routes {nsamples} x {len(rows)} tokens")
            if fb == "rtn":
                nfb += 1
                continue
            if fb == "block":
                nfb += 1
                rows = np.arange(len(x))
            if len(rows) == 0:
                continue
            X = x[rows]
            for n in (gn, un):
                check(n, X, src[n + ".weight"], W[n + ".weight"], fb)
            g, u = X @ W[gn + ".weight"].T, X @ W[un + ".weight"].T
            check(dn, g / (1.0 + np.exp(-g)) * u, src[dn + ".weight"], W[dn + ".weight"], fb)
        print(f"block {layer}: {nexp} experts, {len(x)} tokens, {nfb} with a fallback checked")

    ref.llama_logits(cfg, W, ids[None, :].astype(np.int64), moe_hook=hook)
    for e in errors:
        print("FAIL", e)
    if errors:
        sys.exit(1)
    print("expert Hessians: token counts and proxy losses agree")


if __name__ == "__main__":
    main()
