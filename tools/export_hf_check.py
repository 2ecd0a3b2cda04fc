#!/usr/bin/env python3
"""Load checkpoints written by `hpcq export` with Hugging Face transformers (GPTQ support through
gptqmodel, on CPU) and compare its logits with hpcq's logits of the .h5 result.
NOT run in CI (it needs torch, transformers, optimum and gptqmodel); see docs/readme/export.md.

  export_hf_check.py CKPT_DIR,VIEW.safetensors,DTYPE [...]

VIEW is written by the test helper build/tests/export_hpcq_view (ids, logits of hpcq's forward of
the .h5 model); DTYPE is float16, bfloat16 or float32 (the dtype transformers computes in).
Prints one RESULT line per checkpoint: the QuantLinear class the loader picked, max |logit
difference| and the largest |logit|.

Set-up that worked (pip, in a virtual environment that sees the system torch/transformers):
  python3 -m venv --system-site-packages /tmp/hfgptq
  /tmp/hfgptq/bin/pip install --no-deps gptqmodel optimum
  /tmp/hfgptq/bin/pip install accelerate device-smi pypcre tokenicer logbar dill defuser \
      threadpoolctl torchao pillow datasets pyarrow
"""
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    rc = 0
    for arg in sys.argv[1:]:
        ck, view, dt = arg.split(",")
        t = time.time()
        try:
            m = AutoModelForCausalLM.from_pretrained(ck, dtype=getattr(torch, dt))
            v = load_file(view)
            ids = torch.tensor(v["ids"].astype(np.int64))
            with torch.no_grad():
                lg = m(ids).logits.float().numpy().reshape(-1, v["logits"].shape[1])
            d = float(np.abs(lg - v["logits"]).max())
            mx = float(np.abs(v["logits"]).max())
            cls = type(m.model.layers[0].self_attn.q_proj).__name__
            print(f"RESULT {ck} {dt}: {cls} max|diff| {d:.3e} max|logit| {mx:.2f} "
                  f"({time.time() - t:.1f} s)", flush=True)
        except Exception as e:  # report and go on with the next checkpoint
            print(f"RESULT {ck} {dt}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
