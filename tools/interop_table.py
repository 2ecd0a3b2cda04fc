#!/usr/bin/env python3
"""The table of tools/interop-check.sh: per checkpoint, hpcq eval's perplexity and each loader's
(kernel, relative difference), against what README "Interoperability" records.

  interop_table.py REFS.tsv LOADERS.jsonl

REFS.tsv: checkpoint path, hpcq eval perplexity. LOADERS.jsonl: the "RESULT {...}" lines of
tools/interop_check.py (other lines are the loaders' logs). A cell is "ok" (within 1e-3
relative), "refused" (the loader raised) or "WRONG" (loaded, another perplexity). Exit 1 when a
cell differs from EXPECT (a known refusal that now loads is reported, not failed) or is missing.
"""
import fnmatch
import json
import os
import sys

RTOL = 1e-3
# (loader, checkpoint name pattern, outcome); first match wins, default ok
EXPECT = [
    # "Loading of a sym=False model with format=FORMAT.GPTQ is only supported if produced by
    # gptqmodel version >= 0.9.0": GPTQModel.load refuses asymmetric v1 files of other tools
    ("gptqmodel", "w*-asym-*-gptq", "refused"),
    # transformers 5.24 ignores quantization_config.dynamic: size mismatch / missing qweight
    ("transformers", "rules-*", "refused"),
]
LOADERS = ["transformers", "gptqmodel"]


def expected(loader, name):
    for ld, pat, out in EXPECT:
        if ld == loader and fnmatch.fnmatchcase(name, pat):
            return out
    return "ok"


def main():
    refs = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip())
    cells = {}
    for l in open(sys.argv[2]):
        if l.startswith("RESULT "):
            r = json.loads(l[7:])
            cells[(r["ckpt"], r["loader"])] = r
    bad = news = 0
    refusals = set()
    print(f"{'checkpoint':28} {'hpcq eval':>11} | {'transformers (CPU, fp32)':38} | GPTQModel.load (CPU, fp16)")
    for ck, ref in refs.items():
        name, row = os.path.basename(ck), []
        for ld in LOADERS:
            r, want = cells.get((ck, ld)), expected(ld, os.path.basename(ck))
            if r is None:
                got, txt = "missing", "missing"
            elif "error" in r:
                got, txt = "refused", "refused"
                refusals.add(f"{ld}: {r['error'][:200]}")
            else:
                rel = (r["ppl"] - float(ref)) / float(ref)
                got = "ok" if abs(rel) <= RTOL else "WRONG"
                txt = f"{got} {r['kernel']} {rel:+.1e}"
            if got != want:
                if want != "ok" and got == "ok":
                    txt += " (now loads: update README)"
                    news += 1
                else:
                    txt += f" <-- expected {want}"
                    bad += 1
            row.append(txt)
        print(f"{name:28} {float(ref):11.6f} | {row[0]:38} | {row[1]}")
    if refusals:
        print("refusals:")
        for m in sorted(refusals):
            print("  " + m)
    print(f"interop-check: {len(refs) * len(LOADERS)} cells, {bad} unexpected, {news} known "
          f"refusal(s) now loading")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
