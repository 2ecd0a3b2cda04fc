#!/usr/bin/env python3
"""Byte-flip loop over hpcq's .h5 readers (run by tests/test_h5_damage.sh).

usage: h5_damage.py HPCQ GOOD.h5 TOKENS WORKDIR [--variants N] [--seed S]
       h5_damage.py HPCQ PARTIAL.h5 TOKENS WORKDIR [--variants N] [--seed S] \
                    --resume FULL.h5 QUANTIZE-ARGS...

Most variants are GOOD.h5 with one byte XORed with a non-zero value at a position drawn with
a fixed seed from one of four regions, found with `h5dump -p -H` (offsets of contiguous data):
the data of the quantized datasets (/linears/*/qweight|qzeros|scales|g_idx), the data of the
unquantized tensors, /progress, and everything else (HDF5 metadata, free space); the others
are the file cut at a random length ("trunc") or with 1..256 random bytes overwritten at a
random place ("smash"). On each
variant `hpcq inspect`, `hpcq eval` (1 window), `hpcq export` and `hpcq compare VARIANT GOOD`
run under a timeout. A run passes when it
  - exits 0 and its output (stdout, or the exported files) equals the undamaged file's, or
  - exits non-zero (not by a signal) with a message on stderr;
and fails on a signal (crash), a timeout, or silent different output. A flip in the data of a
dataset a command reads must make it fail (its checksum): eval, export and compare for the
quantized datasets, eval and export for the tensors, every command for /progress.
With --resume, GOOD is a partial result (a run stopped mid-way) and the only reader is
`hpcq quantize [quantize args] --out COPY --resume` on a copy of the variant; its output is
whether the resumed file equals FULL.h5 (`hpcq compare`, exact), the uninterrupted run. A flip
in a block already done must be refused (exit 0 would leave it in the result, which then
differs from FULL.h5); a flip in a block still to do is overwritten.
Exit status 0 when every run passed.
"""
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time

TIMEOUT = 30


def regions(good):
    """(kind, start, end) byte ranges of the datasets' contiguous data."""
    out = subprocess.run(["h5dump", "-p", "-H", good], capture_output=True, text=True, check=True).stdout
    res, name = [], None
    for line in out.splitlines():
        m = re.match(r'\s*DATASET "([^"]+)"', line)
        if m:
            name = m.group(1)
        m = re.match(r"\s*SIZE (\d+)", line)
        if m:
            size = int(m.group(1))
        m = re.match(r"\s*OFFSET (\d+)", line)
        if m and name:
            off = int(m.group(1))
            kind = "linear" if name in ("qweight", "qzeros", "scales", "g_idx") else \
                   "progress" if name == "progress" else "tensor"
            res.append((kind, off, off + size))
    return res


def classify(pos, regs):
    for kind, a, b in regs:
        if a <= pos < b:
            return kind
    return "other"


def digest_dir(d):
    h = hashlib.sha256()
    for f in sorted(os.listdir(d)):
        h.update(f.encode())
        with open(os.path.join(d, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


class Runner:
    def __init__(self, hpcq, tokens, work, resume=None):
        self.hpcq, self.tokens, self.work, self.resume = hpcq, tokens, work, resume

    def cmds(self, f, good):
        exp = os.path.join(self.work, "exp")
        if self.resume:
            return {"resume": (["resume", f], None)}
        return {
            "inspect": ([self.hpcq, "inspect", f], None),
            "eval": ([self.hpcq, "eval", "--model", f, "--tokens", self.tokens, "--seqlen", "64",
                      "--max-windows", "1", "--json"], None),
            "export": ([self.hpcq, "export", f, "--format", "gptq", "--out", exp], exp),
            "compare": ([self.hpcq, "compare", f, good], None),
        }

    def run_resume(self, f, env):
        """quantize --resume on a copy of f: (rc, b"same"/b"differs", stderr)"""
        full, qargs = self.resume
        r = os.path.join(self.work, "r.h5")
        shutil.copy(f, r)
        try:
            p = subprocess.run([self.hpcq, "quantize"] + qargs + ["--out", r, "--resume"],
                               capture_output=True, timeout=3 * TIMEOUT, env=env)
            if p.returncode != 0:
                return (p.returncode, None, p.stderr.decode(errors="replace"))
            c = subprocess.run([self.hpcq, "compare", r, full], capture_output=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return ("timeout", None, "")
        return (0, b"same" if c.returncode == 0 else b"differs", p.stderr.decode(errors="replace"))

    def run(self, name, argv, outdir, path):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        if name == "resume":
            return self.run_resume(path, env)
        if outdir:
            shutil.rmtree(outdir, ignore_errors=True)
        try:
            p = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            return ("timeout", None, "")
        out = p.stdout.replace(path.encode(), b"FILE")  # inspect and eval name their input
        if name == "eval":  # timing fields vary from run to run
            out = re.sub(rb'"(seconds|tokens_per_s|elapsed)[a-z_]*": *[0-9.eE+-]+', b"", out)
        if outdir and p.returncode == 0:
            out = digest_dir(outdir).encode()
        return (p.returncode, out, p.stderr.decode(errors="replace"))


def main():
    args = sys.argv[1:]
    if len(args) < 4:
        print(__doc__)
        return 2
    hpcq, good, tokens, work = args[:4]
    resume = None
    if "--resume" in args:  # after --variants/--seed: the rest are quantize's arguments
        i = args.index("--resume")
        resume, args = (args[i + 1], args[i + 2:]), args[:i]
    nvar, seed = 300, 13
    if "--variants" in args:
        nvar = int(args[args.index("--variants") + 1])
    if "--seed" in args:
        seed = int(args[args.index("--seed") + 1])
    os.makedirs(work, exist_ok=True)
    data = open(good, "rb").read()
    regs = regions(good)
    R = Runner(hpcq, tokens, work, resume)
    ref = {}
    for name, (argv, outdir) in R.cmds(good, good).items():
        rc, out, err = R.run(name, argv, outdir, good)
        if rc != 0:
            print(f"FAIL: {name} on the undamaged file: exit {rc}\n{err}")
            return 1
        ref[name] = out
    if resume and ref["resume"] != b"same":
        print("FAIL: the undamaged partial file does not resume to the uninterrupted result")
        return 1
    rng = random.Random(seed)
    # a quarter of the variants in the quantized data, a tenth in the tensors, a few in
    # /progress, the rest anywhere else (mostly metadata)
    plan = ["linear"] * (nvar // 4) + ["tensor"] * (nvar // 10) + ["progress"] * 4
    plan += ["trunc"] * (nvar // 20) + ["smash"] * (nvar // 10)
    plan += ["other"] * (nvar - len(plan))
    byreg = {k: [(a, b) for kk, a, b in regs if kk == k] for k in ("linear", "tensor", "progress")}
    must_fail = {"linear": {"eval", "export", "compare"}, "tensor": {"eval", "export"},
                 "progress": {"inspect", "eval", "export", "compare"}, "other": set(),
                 "trunc": set(), "smash": set()}
    bad, counts, t0 = 0, {}, time.time()
    f = os.path.join(work, "v.h5")
    for v, want in enumerate(plan):
        buf, x = bytearray(data), rng.randrange(1, 256)
        if want == "trunc":
            pos = rng.randrange(len(data))
            del buf[pos:]
        elif want == "smash":
            pos = rng.randrange(len(data))
            k = min(rng.randrange(1, 257), len(data) - pos)
            buf[pos:pos + k] = bytes(rng.randrange(256) for _ in range(k))
        else:
            if want == "other":
                while True:
                    pos = rng.randrange(len(data))
                    if classify(pos, regs) == "other":
                        break
            else:
                a, b = rng.choice(byreg[want])
                pos = rng.randrange(a, b)
            buf[pos] ^= x
        with open(f, "wb") as fh:
            fh.write(buf)
        for name, (argv, outdir) in R.cmds(f, good).items():
            rc, out, err = R.run(name, argv, outdir, f)
            what = f"variant {v}: byte {pos} ({want}) ^= 0x{x:02x}: {name}"
            if rc == "timeout":
                verdict = f"timed out after {TIMEOUT} s"
            elif rc < 0 or rc >= 128:
                verdict = f"killed by signal {-rc if rc < 0 else rc - 128}\n{err[-2000:]}"
            elif rc == 0 and name in must_fail[want]:
                verdict = "exit 0 on damaged data: the checksum did not catch it"
            elif rc == 0 and out != ref[name]:
                verdict = "exit 0 with output that differs from the undamaged file's"
            elif rc != 0 and "hpcq" not in err:
                verdict = f"exit {rc} without a message"
            else:
                verdict = None
                counts[(want, "ok" if rc == 0 else "error")] = counts.get((want, "ok" if rc == 0 else "error"), 0) + 1
            if verdict:
                bad += 1
                print(f"FAIL: {what}: {verdict}")
                shutil.copy(f, os.path.join(work, f"failed-{v}.h5"))
    runs = sum(counts.values()) + bad
    print(f"{len(plan)} variants x {len(ref)} readers = {runs} runs in {time.time() - t0:.1f} s; "
          f"{bad} failed")
    for (want, res), n in sorted(counts.items()):
        print(f"  {want:8s} {res:5s} {n}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
