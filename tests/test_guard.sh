#!/usr/bin/env bash
# The run's identity and its output path (issue 13: a run never mixes two models, two runs, two
# files or its own inputs):
#  1. --resume with another model of the same shapes (every weight's lowest bit flipped), with a
#     model of other shapes (stories260K) and with another calibration file is refused, naming
#     what differs; with the same inputs it resumes to the uninterrupted result.
#  2. two runs on one output at once: the second (--overwrite or --resume) is refused naming the
#     running one; the first finishes complete and equal to a lone run; no lock file is left.
#  3. --resume (and a new run) on a path that is not the same file on every rank (rank 1 sees
#     a private tmpfs over the output folder: node-local scratch): refused on every rank, no hang.
#  4. --out naming an input (the model's weights or config, the calibration file, the .h5 model
#     itself) is refused and the input is left intact.
#  5. a rank that reads another copy of the model or of the calibration than rank 0 is refused.
set -u
BIN=${HQ_BIN:-build/hpcq}
DATA=${HQ_TESTDATA:-tests/data}
M=$DATA/llama-sotu-5m
MPIEXEC=${MPIEXEC:-mpiexec}
. "$(dirname "$0")/testlib.sh"
T=$(mktemp -d /tmp/hq_guard.XXXXXX)
trap 'umount "$T/ns" 2>/dev/null; rm -rf "$T"' EXIT
C=(--calib "$M/calib.i32" --nsamples 12 --seqlen 128 --bits 4 --group-size 128 --quiet)
q() { timeout 300 "$MPIEXEC" -np "$1" "$BIN" quantize --model "${MODEL:-$M}" "${C[@]}" "${@:2}"; }
refused() { # name pattern log rc
  if [ "$4" -ne 0 ] && [ "$4" -ne 124 ] && grep -qiE "$2" "$3"; then ok "$1: $(grep -iE "$2" "$3" | head -1 | cut -c1-160)"
  else bad "$1: exit $4, $(head -c 400 "$3")"; fi; }
# a partial file: quantize, SIGKILL once block 1 is done
partial() {
  rm -f "$1"
  "$BIN" quantize --model "$M" "${C[@]}" --out "$1" > /dev/null 2>&1 &
  local p=$!
  for _ in $(seq 1 1200); do h5dump -d /progress "$1" 2>/dev/null | grep -q "1, 1" && break; sleep 0.05; done
  kill -KILL $p 2>/dev/null; wait $p 2>/dev/null
}

# ---- 1. resume identity ----
q 1 --out "$T/ref.h5" 2> "$T/ref.log" || bad "reference run: $(tail -2 "$T/ref.log")"
mkdir -p "$T/other"
cp "$M/config.json" "$T/other/"
python3 - "$M/model.safetensors" "$T/other/model.safetensors" <<'PY'
import json, struct, sys, numpy as np
src, dst = sys.argv[1:3]
b = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
for name, t in json.loads(b[8:8 + n]).items():
    if name == "__metadata__": continue
    s, e = t["data_offsets"]
    v = np.frombuffer(b, np.uint16, (e - s) // 2, 8 + n + s).copy() ^ 1   # lowest mantissa bit
    b[8 + n + s:8 + n + e] = v.tobytes()
open(dst, "wb").write(b)
PY
partial "$T/p.h5"
MODEL=$T/other q 1 --out "$T/p.h5" --resume > "$T/r1.log" 2>&1; refused "resume with other weights of the same shapes" "model_fnv1a64" "$T/r1.log" $?
MODEL=$DATA/stories260K-hf q 1 --out "$T/p.h5" --resume --calib "$DATA/stories260K-hf/sotu-calib.tok512.i32" --bits 8 > "$T/r2.log" 2>&1
refused "resume with a model of other shapes (fewer KV heads)" "hidden_size" "$T/r2.log" $?
head -c 800000 "$M/calib.i32" > "$T/calib2.i32"
q 1 --out "$T/p.h5" --resume --calib "$T/calib2.i32" > "$T/r3.log" 2>&1; refused "resume with another calibration file" "calib_fnv1a64" "$T/r3.log" $?
q 2 --out "$T/p.h5" --resume 2> "$T/r4.log" && ok "resume with the same inputs (at 2 ranks)" || bad "resume: $(tail -2 "$T/r4.log")"
"$BIN" compare "$T/ref.h5" "$T/p.h5" > "$T/c.txt" 2>&1 && ok "resumed == uninterrupted" || bad "resumed differs: $(tail -2 "$T/c.txt")"

# ---- 2. two runs on one output ----
"$MPIEXEC" -np 1 "$BIN" quantize --model "$M" "${C[@]}" --nsamples 24 --out "$T/two.h5" 2> "$T/a.log" &
pa=$!
for _ in $(seq 1 600); do [ -s "$T/two.h5.lock" ] && break; sleep 0.05; done
# the holder (pid first in the lock file) is paused while the others try: however fast the
# machine, it is still running when they start
holder=$(cut -d' ' -f1 "$T/two.h5.lock" 2>/dev/null)
kill -STOP "$holder" 2>/dev/null || bad "cannot pause the first run (lock file: $(cat "$T/two.h5.lock"))"
q 1 --nsamples 24 --out "$T/two.h5" --overwrite > "$T/b.log" 2>&1; refused "second run with --overwrite" "another hpcq run is writing" "$T/b.log" $?
q 1 --nsamples 24 --out "$T/two.h5" --resume > "$T/b2.log" 2>&1; refused "second run with --resume" "another hpcq run is writing" "$T/b2.log" $?
kill -CONT "$holder" 2>/dev/null
wait $pa && ok "the first run finished" || bad "first run failed: $(tail -2 "$T/a.log")"
q 1 --nsamples 24 --out "$T/lone.h5" 2> /dev/null
"$BIN" compare "$T/lone.h5" "$T/two.h5" > "$T/c2.txt" 2>&1 && ok "its result is complete and equals a lone run's" || bad "result differs: $(tail -2 "$T/c2.txt")"
[ ! -e "$T/two.h5.lock" ] && ok "no lock file left behind" || bad "lock file left: $(cat "$T/two.h5.lock")"

# ---- 3. a path that is not the same file on every rank ----
mkdir -p "$T/ns"
if unshare -m sh -c "mount -t tmpfs none '$T/ns'" 2> /dev/null; then
  partial "$T/ns/p.h5"
  # rank 1 sees a private, empty tmpfs over the folder (node-local scratch on another node)
  NS=(sh -c "mount -t tmpfs none '$T/ns' && exec \"\$0\" \"\$@\"" "$BIN" quantize --model "$M" "${C[@]}")
  timeout 120 "$MPIEXEC" -np 1 "$BIN" quantize --model "$M" "${C[@]}" --out "$T/ns/p.h5" --resume : \
    -np 1 unshare -m "${NS[@]}" --out "$T/ns/p.h5" --resume > "$T/n1.log" 2>&1
  refused "--resume on a per-rank path" "not the same on every rank" "$T/n1.log" $?
  timeout 120 "$MPIEXEC" -np 1 "$BIN" quantize --model "$M" "${C[@]}" --out "$T/ns/new.h5" : \
    -np 1 unshare -m "${NS[@]}" --out "$T/ns/new.h5" > "$T/n2.log" 2>&1
  refused "a new run on a per-rank path" "not the same on every rank" "$T/n2.log" $?
else
  echo "SKIP 3: cannot mount a private tmpfs here (unshare -m needs CAP_SYS_ADMIN)"
fi

# ---- 4. --out naming an input ----
mkdir -p "$T/m"
cp "$M/config.json" "$M/model.safetensors" "$T/m/"
cp "$M/calib.i32" "$T/calib.i32"
sum0=$(cat "$T/m/model.safetensors" "$T/m/config.json" "$T/calib.i32" | md5sum)
MODEL=$T/m q 1 --out "$T/m/model.safetensors" --overwrite > "$T/o1.log" 2>&1; refused "--out the model's weights" "destroy an input" "$T/o1.log" $?
MODEL=$T/m q 1 --out "$T/m/config.json" --overwrite > "$T/o2.log" 2>&1; refused "--out the model's config" "destroy an input" "$T/o2.log" $?
MODEL=$T/m q 1 --calib "$T/calib.i32" --out "$T/calib.i32" --overwrite > "$T/o3.log" 2>&1; refused "--out the calibration file" "destroy an input" "$T/o3.log" $?
ln -sf "$T/calib.i32" "$T/link.h5"
MODEL=$T/m q 1 --calib "$T/calib.i32" --out "$T/link.h5" --overwrite > "$T/o4.log" 2>&1; refused "--out a symlink to the calibration file" "destroy an input" "$T/o4.log" $?
cp "$T/ref.h5" "$T/r.h5"
timeout 120 "$BIN" quantize --model "$T/r.h5" --method rtn --quiet --out "$T/r.h5" --overwrite > "$T/o5.log" 2>&1; refused "--model r.h5 --out r.h5" "destroy an input" "$T/o5.log" $?
[ "$(cat "$T/m/model.safetensors" "$T/m/config.json" "$T/calib.i32" | md5sum)" = "$sum0" ] && ok "the inputs are intact" || bad "an input was modified"
"$BIN" compare "$T/ref.h5" "$T/r.h5" > /dev/null 2>&1 && ok "the .h5 model is intact" || bad "the .h5 model was modified"

# ---- 5. ranks reading different copies ----
timeout 120 "$MPIEXEC" -np 1 "$BIN" quantize --model "$M" "${C[@]}" --out "$T/x1.h5" : \
  -np 1 "$BIN" quantize --model "$M" "${C[@]}" --calib "$T/calib2.i32" --out "$T/x1.h5" > "$T/x1.log" 2>&1
refused "rank 1 reads another calibration file" "another calibration file than rank 0" "$T/x1.log" $?
timeout 120 "$MPIEXEC" -np 1 "$BIN" quantize --model "$M" "${C[@]}" --out "$T/x2.h5" : \
  -np 1 "$BIN" quantize --model "$T/other" "${C[@]}" --out "$T/x2.h5" > "$T/x2.log" 2>&1
refused "rank 1 reads another copy of the model" "another model than rank 0" "$T/x2.log" $?
[ ! -e "$T/x1.h5" ] && [ ! -e "$T/x2.h5" ] && ok "nothing was created" || bad "an output was created before the inputs agreed"
finish test_guard
