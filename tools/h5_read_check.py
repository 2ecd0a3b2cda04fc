#!/usr/bin/env python3
"""Check an hpcq output file against docs/readme/output-format.md using h5py alone.

Independent of hpcq's C reader: it opens the file with h5py/numpy and checks every documented
rule (attribute names and types, dataset dtypes and shapes, progress flags, the hq64 checksum
of every dataset), then prints a short summary. Not used by CI (h5py is optional); run it by hand on any result:

    python3 tools/h5_read_check.py out.h5 [--allow-incomplete]

With --dequant NAME it also unpacks that linear (gptq_v2 zeros) and prints W's shape and a few
values, showing how to read the GPTQ layout with numpy.
Exit status 0 when the file conforms, 1 otherwise (each problem is printed).
"""
import argparse
import json
import sys

import h5py
import numpy as np

problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def as_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


M64 = (1 << 64) - 1


def hq64(a):
    """hq64 checksum (docs/readme/output-format.md, "Checksums") of a dataset's content."""
    flat = np.ascontiguousarray(a).reshape(-1)
    v = flat.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[flat.dtype.itemsize])
    total = 0
    step = 1 << 24  # chunks: a 1e9-element embedding would need 16 GB of uint64 at once
    for i0 in range(0, v.size, step):
        x = v[i0:i0 + step].astype(np.uint64) ^ (
            np.arange(i0, min(i0 + step, v.size), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        for k in (0xff51afd7ed558ccd, 0xc4ceb9fe1a85ec53):
            x ^= x >> np.uint64(33)
            x *= np.uint64(k)
        x ^= x >> np.uint64(33)
        total += int(x.sum(dtype=np.uint64))
    return total & M64


def check_sum(d, what):
    need("checksum" in d.attrs and int(d.attrs["checksum"]) == hq64(d[...]),
         f"{what}: missing checksum or it does not match the data")


def unpack(words, bits, n, axis):
    """Unpack int32 words along `axis` into n values per the little-endian bit stream rule."""
    w = np.moveaxis(words.view(np.uint32), axis, 0).astype(np.uint64)
    nw = w.shape[0]
    stream = np.zeros((nw * 32,) + w.shape[1:], dtype=np.uint8)
    for b in range(32):
        stream[b::32] = ((w >> np.uint64(b)) & np.uint64(1)).astype(np.uint8)
    vals = np.zeros((n,) + w.shape[1:], dtype=np.int64)
    for j in range(bits):
        vals |= stream[j : n * bits : bits].astype(np.int64) << j
    return np.moveaxis(vals, 0, axis)


def dequant(g):
    bits, rows, cols = int(g.attrs["bits"]), int(g.attrs["rows"]), int(g.attrs["cols"])
    q = unpack(g["qweight"][...], bits, cols, 0)          # [in, out]
    z = unpack(g["qzeros"][...], bits, rows, 1)           # [ngroups, out]
    if as_str(g.attrs["zero_convention"]) == "gptq":
        z = z + 1
    s = g["scales"][...].astype(np.float32)               # [ngroups, out]
    gi = g["g_idx"][...]
    return (s[gi] * (q - z[gi])).T                        # W [out, in]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--allow-incomplete", action="store_true")
    ap.add_argument("--dequant", metavar="NAME")
    a = ap.parse_args()
    f = h5py.File(a.path, "r")
    at = f.attrs
    need(int(at.get("hpcq_format_version", -1)) == 2, "hpcq_format_version != 2")
    for k in ("hpcq_version", "created"):  # fixed-length UTF-8: h5py gives bytes
        need(isinstance(at.get(k), bytes), f"root attribute {k} missing or not a fixed-length string")
    need(np.issubdtype(np.asarray(at.get("nranks", "x")).dtype, np.integer), "nranks not an integer")
    for k in ("settings_json", "model_config_json", "calibration_json"):
        if k in at:
            try:
                json.loads(as_str(at[k]))
            except ValueError:
                problems.append(f"{k} is not JSON")
    nb = int(at.get("n_blocks", 0))
    complete = int(at.get("complete", 0)) == 1
    if "progress" in f:
        p = f["progress"]
        need(p.dtype == np.int8 and p.shape == (nb,), f"/progress is {p.dtype} {p.shape}, want int8 ({nb},)")
        done = int((p[...] == 1).sum())
        check_sum(p, "/progress")
    else:
        done = 0
    if not complete and not a.allow_incomplete:
        problems.append(f"incomplete: {done} of {nb} blocks")
    if complete:
        need(done == nb, f"complete=1 but only {done} of {nb} flags set")

    for name, d in f.get("tensors", {}).items():
        dt = as_str(d.attrs.get("dtype", ""))
        want = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}.get(dt)
        need(want is not None and d.dtype == want, f"/tensors/{name}: dtype {d.dtype} attr {dt!r}")
        check_sum(d, f"/tensors/{name}")

    nlin = 0
    for name, g in f.get("linears", {}).items():
        nlin += 1
        bits, gs = int(g.attrs["bits"]), int(g.attrs["group_size"])
        rows, cols = int(g.attrs["rows"]), int(g.attrs["cols"])
        ng = -(-cols // gs) if gs > 0 else 1
        need(as_str(g.attrs["zero_convention"]) in ("gptq", "gptq_v2"), f"{name}: zero_convention")
        exp = {"qweight": (np.int32, (cols * bits // 32, rows)),
               "qzeros": (np.int32, (ng, rows * bits // 32)),
               "scales": (np.float16, (ng, rows)),
               "g_idx": (np.int32, (cols,))}
        for ds, (dt, shp) in exp.items():
            need(g[ds].dtype == dt and g[ds].shape == shp,
                 f"{name}/{ds}: {g[ds].dtype} {g[ds].shape}, want {np.dtype(dt)} {shp}")
            check_sum(g[ds], f"{name}/{ds}")
        need(int(g.attrs.get("rows_written", -1)) == rows, f"{name}: rows_written != rows")
        gi = g["g_idx"][...]
        need(gi.min() >= 0 and gi.max() < ng, f"{name}: g_idx outside [0, {ng})")
        if "owner_rows" in g.attrs:
            need(int(np.sum(g.attrs["owner_rows"])) == rows, f"{name}: owner_rows do not sum to rows")

    print(f"{a.path}: format {int(at.get('hpcq_format_version', -1))}, {nlin} linears, "
          f"{len(f.get('tensors', {}))} tensors, blocks {done}/{nb}, complete={int(complete)}")
    for name, d in f.get("tensors", {}).items():
        print(f"  tensor {name}: {d.dtype} {d.shape} dtype={as_str(d.attrs.get('dtype', ''))}")
    for name, g in f.get("linears", {}).items():
        print(f"  linear {name}: " + ", ".join(f"{k} {g[k].dtype}{g[k].shape}" for k in g))
    if a.dequant:
        w = dequant(f["linears"][a.dequant])
        print(f"  dequantized {a.dequant}: W {w.shape} {w.dtype}, W[0,:4] = {w[0, :4]}")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
