#!/usr/bin/env bash
# One validation of an hpcq result (src/io/h5check.c) guards `hpcq eval FILE.h5` and `hpcq export`:
# a complete result is doctored one way at a time with h5py (a linear or a norm deleted, the
# config contradicting the shapes, g_idx out of range or grouping the wrong columns, Inf / NaN /
# negative / zero scales, a zero point above maxq, a NaN norm, a stray tensor of another model,
# a wrong block count) and both commands must refuse it (and `quantize --resume` a doctored
# block already done): exit 1, a message naming the tensor
# and what is wrong, and no checkpoint (not even a half-written folder) from export. The
# pristine file passes both.
set -u
source "$(dirname "$0")/testlib.sh"
if ! python3 -c 'import h5py' 2>/dev/null; then
  echo "FAIL: this test needs python3 with h5py (Debian: apt-get install python3-h5py; tools/install-deps.sh)" >&2
  exit 1
fi
hq_tmpdir h5check

"$BIN" quantize --model "$M" --calib "$M/calib.i32" --nsamples 8 --seqlen 128 --bits 4 --group-size 128 \
  --out "$T/ok.h5" --quiet 2>"$T/q.log" || { cat "$T/q.log"; bad "quantize"; finish test_h5check; exit 1; }

# doctor CASE FILE: change FILE in place (one defect per case)
doctor() {
  python3 - "$1" "$2" "$(dirname "$0")/.." <<'PY'
import json, os, sys
import h5py, numpy as np
sys.path.insert(0, os.path.join(sys.argv[3], "tools"))
from h5_read_check import hq64  # the doctored data gets valid checksums: only h5check can object
case, path = sys.argv[1], sys.argv[2]
def fixstr(obj, name, text):  # hpcq format 2 strings are fixed-length UTF-8
    b = text.encode()
    obj.attrs.create(name, np.array(b, dtype=f"S{len(b)}"), dtype=h5py.string_dtype("utf-8", len(b)))
def restamp(f):
    f.visititems(lambda n, o: o.attrs.create("checksum", np.uint64(hq64(o[...])))
                 if isinstance(o, h5py.Dataset) else None)
L = "linears/model.layers.2.mlp.up_proj"
with h5py.File(path, "r+") as f:
    if case == "no_linear":
        del f[L]
    elif case == "no_norm":
        del f["tensors/model.layers.1.input_layernorm.weight"]
    elif case == "no_final_norm":
        del f["tensors/model.norm.weight"]
    elif case == "config":
        c = json.loads(f.attrs["model_config_json"])
        c["intermediate_size"] = 512
        fixstr(f, "model_config_json", json.dumps(c))
    elif case in ("gidx_range", "gidx_groups"):
        g = f[L + "/g_idx"][...]
        g[5] = 99 if case == "gidx_range" else 1 - g[5]
        f[L + "/g_idx"][...] = g
    elif case in ("scale_inf", "scale_nan", "scale_neg", "scale_zero"):
        s = f[L + "/scales"][...]
        s[0, 3] = {"scale_inf": np.inf, "scale_nan": np.nan, "scale_neg": -0.5, "scale_zero": 0}[case]
        f[L + "/scales"][...] = s
    elif case == "zero_range":  # stored 15 in the v1 convention means zero 16 > maxq 15
        z = f[L + "/qzeros"][...]
        z[0, 0] = -1
        f[L + "/qzeros"][...] = z
        fixstr(f[L], "zero_convention", "gptq")
    elif case == "scale_nan0":  # block 0, for the partial result that --resume reads
        d = f["linears/model.layers.0.self_attn.q_proj/scales"]
        v = d[...]
        v[0, 3] = np.nan
        d[...] = v
    elif case == "norm_nan":
        d = f["tensors/model.layers.4.post_attention_layernorm.weight"]
        v = d[...]
        v[7] = 0x7fc0 if v.dtype == np.uint16 else np.nan  # bf16 is stored as raw uint16
        d[...] = v
    elif case == "stray":
        f.copy(f[L], "linears/model.layers.9.mlp.up_proj")
    elif case == "nblocks":  # a consistent progress record for 5 blocks
        del f["progress"]
        f.create_dataset("progress", data=np.ones(5, dtype=np.int8))
        f.attrs["n_blocks"] = np.int64(5)
    elif case == "bits":
        f.attrs["bits"] = np.int64(3)
    restamp(f)
PY
}

# case PATTERN: both commands refuse the doctored copy with a message matching PATTERN
check() {
  local case=$1 pat=$2 rc
  cp "$T/ok.h5" "$T/$case.h5"
  doctor "$case" "$T/$case.h5" || { bad "$case: doctoring failed"; return; }
  "$BIN" eval --model "$T/$case.h5" --tokens "$M/wikitext2-test.i32" --seqlen 128 --max-windows 1 --quiet \
    >"$T/e.out" 2>"$T/e.log"; rc=$?
  if [ $rc -eq 1 ] && grep -qE "$pat" "$T/e.log"; then ok "eval refuses $case: $(head -c 170 "$T/e.log")"
  else bad "eval $case: exit $rc, $(head -c 300 "$T/e.log") $(head -c 100 "$T/e.out")"; fi
  "$BIN" export "$T/$case.h5" --out "$T/$case.gptq" --quiet >/dev/null 2>"$T/x.log"; rc=$?
  if [ $rc -eq 1 ] && grep -qE "$pat" "$T/x.log"; then ok "export refuses $case"
  else bad "export $case: exit $rc, $(head -c 300 "$T/x.log")"; fi
  if [ -e "$T/$case.gptq" ] && [ -n "$(ls -A "$T/$case.gptq")" ]; then bad "export $case left files: $(ls -A "$T/$case.gptq")"; fi
}

check no_linear 'model\.layers\.2\.mlp\.up_proj.*(missing|no quantized linear)'
check no_norm 'model\.layers\.1\.input_layernorm\.weight.*(missing|no tensor)'
check no_final_norm 'model\.norm\.weight.*(missing|no tensor)'
check config 'model\.layers\.0\.mlp\.gate_proj.*(implies|shape)'
check gidx_range 'up_proj: g_idx\[5\] = 99 is outside'
check gidx_groups 'up_proj: g_idx puts (127|129) columns in group'
check scale_inf 'up_proj: the scale of group 0, output row 3 is infinite'
check scale_nan 'up_proj: the scale of group 0, output row 3 is NaN'
check scale_neg 'up_proj: the scale of group 0, output row 3 is negative'
check scale_zero 'up_proj: the scale of group 0, output row 3 is zero'
check zero_range 'up_proj: the zero point of group 0, output row [0-7] is 16'
check norm_nan 'layers\.4\.post_attention_layernorm\.weight: element 7 is NaN'
check stray 'model\.layers\.9\.mlp\.up_proj is not part of the model'
check nblocks 'records 5 blocks'
check bits 'model\.layers\.0\.self_attn\.q_proj has 4 bits.*say 3 bits'

# --resume applies the same check to the blocks already done (a partial result: a run stopped
# by the file size limit after some blocks)
Q=(--model "$M" --calib "$M/calib.i32" --nsamples 8 --seqlen 128 --bits 4 --group-size 128 --quiet)
(ulimit -f $(( $(stat -c %s "$T/ok.h5") * 2 / 3 / 1024 )); exec "$BIN" quantize "${Q[@]}" --out "$T/part.h5") 2>/dev/null
cp "$T/part.h5" "$T/part_ok.h5"
cp "$T/part.h5" "$T/part_kill.h5"
doctor scale_nan0 "$T/part.h5" || bad "doctoring the partial result failed"
"$BIN" quantize "${Q[@]}" --out "$T/part.h5" --resume 2>"$T/r.log"; rc=$?
if [ $rc -eq 1 ] && grep -qE "resume: block 0: .*q_proj: the scale of group 0, output row 3 is NaN" "$T/r.log"
then ok "--resume refuses a doctored done block: $(head -c 170 "$T/r.log")"; else bad "--resume of a doctored block: exit $rc, $(head -c 300 "$T/r.log")"; fi
"$BIN" quantize "${Q[@]}" --out "$T/part_ok.h5" --resume 2>"$T/r.log" && "$BIN" compare "$T/part_ok.h5" "$T/ok.h5" >/dev/null 2>&1 &&
  ok "--resume of the undamaged partial result gives the uninterrupted one" || bad "--resume of the undamaged partial result: $(tail -c 300 "$T/r.log")"
# killed between a block's progress flag (raw data, on disk at once) and the flush of its
# checksum: the next flag is set, its sum is not; --resume redoes that block
command -v h5dump >/dev/null || echo "note: h5dump (hdf5-tools) missing, the next check cannot run"
off=$(h5dump -p -H -d /progress "$T/part_kill.h5" 2>/dev/null | sed -n 's/.*OFFSET \([0-9]*\).*/\1/p')
if [ -n "$off" ] && python3 - "$T/part_kill.h5" "$off" <<'PY'
import sys
f = open(sys.argv[1], "r+b"); off = int(sys.argv[2]); f.seek(off); flags = f.read(6)
f.seek(off + flags.index(0)); f.write(b"\x01")
PY
then
  "$BIN" quantize "${Q[@]}" --out "$T/part_kill.h5" --resume 2>"$T/r.log" && "$BIN" compare "$T/part_kill.h5" "$T/ok.h5" >/dev/null 2>&1 &&
    ok "--resume after a kill between a flag and its checksum: the block is done again, result identical" ||
    bad "--resume after a kill between a flag and its checksum: $(tail -c 300 "$T/r.log")"
elif command -v h5dump >/dev/null; then bad "could not set a progress flag by hand (h5dump offset '$off')"; fi

# the pristine file passes both
if "$BIN" eval --model "$T/ok.h5" --tokens "$M/wikitext2-test.i32" --seqlen 128 --max-windows 1 --quiet >/dev/null 2>"$T/e.log"
then ok "eval accepts the pristine result"; else bad "eval of the pristine result: $(cat "$T/e.log")"; fi
if "$BIN" export "$T/ok.h5" --out "$T/ok.gptq" --quiet 2>"$T/x.log"
then ok "export accepts the pristine result"; else bad "export of the pristine result: $(cat "$T/x.log")"; fi
finish test_h5check
