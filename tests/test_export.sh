#!/usr/bin/env bash
# hpcq export (issue 7 proofs) on the bundled 5M Llama, small sizes for CI (~30-60 s, 2 cores):
#  1. round trip: for bits 2, 3, 4, 8, act-order off (RTN) and on (GPTQ), asym and sym, both
#     checkpoint formats (gptq v1 and gptq_v2), tools/gptq_reference_loader.py — numpy only,
#     written from the PUBLISHED GPTQ layout, not from hpcq — unpacks qweight/qzeros (3-bit
#     straddling included), dequantizes scales[g_idx]*(q - zero) and must get hpcq's own
#     dequantized weights (tests/export_hpcq_view, the model API `hpcq eval` uses) bit for bit;
#     published shapes/dtypes, unquantized tensors byte-identical to the source (BF16 stays
#     BF16), config/quantize_config fields, sym 4-bit v1 zeros 0x77777777;
#  2. logits: a numpy Llama forward of the exported checkpoint matches hpcq's logits of the
#     .h5 model within fp16 tolerance, and the perplexity within 1e-4 relative;
#  3. sharding (index.json), tokenizer files copied, missing source folder = warning only;
#  4. refusals: v1 with an asymmetric zero of 0 (names the linear the loader finds first),
#     an incomplete .h5, a non-empty folder without --overwrite, bad options, non-HDF5 input;
#     an export killed mid-write (ulimit -f) leaves no complete-looking checkpoint and does not
#     damage the checkpoint it was replacing.
set -u
BIN=${HQ_BIN:?HQ_BIN (the hpcq executable) is not set}
BUILD=${HQ_BUILD:?HQ_BUILD is not set}
SRC=${HQ_SRC:?HQ_SRC is not set}
DATA=${HQ_TESTDATA:?HQ_TESTDATA is not set}
VIEW=$BUILD/tests/export_hpcq_view
LOADER=$SRC/tools/gptq_reference_loader.py
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
if ! python3 -c 'import numpy' 2>/dev/null; then
  echo "FAIL: this test needs python3 with numpy (Debian: apt-get install python3-numpy)" >&2
  exit 1
fi
[ -x "$VIEW" ] || { echo "FAIL: $VIEW not built (tests/export.cmake)" >&2; exit 1; }
source "$(dirname "$0")/testlib.sh"
hq_tmpdir export
t_start=$(date +%s)

# The source model folder: a copy, so it can disappear later (tokenizer warning case).
S=$T/src
mkdir -p "$S"
cp "$DATA/llama-sotu-5m/config.json" "$DATA/llama-sotu-5m/model.safetensors" \
   "$DATA/llama-sotu-5m/tokenizer.model" "$S/"
printf '{\n  "bos_token_id": 1,\n  "eos_token_id": 2\n}\n' >"$S/generation_config.json"
CALIB=$DATA/llama-sotu-5m/calib.i32
TOK=$DATA/llama-sotu-5m/wikitext2-test.i32

quant() { # name args...
  local n=$1
  shift
  if "$BIN" quantize --model "$S" --out "$T/$n.h5" --quiet "$@" 2>"$T/$n.qlog"; then
    return 0
  fi
  bad "quantize $n failed: $(tail -2 "$T/$n.qlog")"
  return 1
}
# export NAME FORMAT DIR [args...]: 0 on success (stderr in DIR.log)
export_ck() {
  local n=$1 f=$2 d=$3
  shift 3
  "$BIN" export "$T/$n.h5" --format gptq --checkpoint-format "$f" --out "$d" "$@" 2>"$d.log"
}

# ---- 1 + 2. round trips: name | desc_act | quantize options ----
GPTQ=(--calib "$CALIB" --nsamples 2 --seqlen 32 --act-order)
CASES=(
  "r2|0|--method rtn --bits 2 --group-size 16"
  "r3|0|--method rtn --bits 3 --group-size 64"
  "r4s|0|--method rtn --bits 4 --group-size 128 --sym"
  "r8|0|--method rtn --bits 8 --group-size -1"
  "g2|1|--bits 2 --group-size 64"
  "g3s|1|--bits 3 --group-size 32 --sym"
  "g4|1|--bits 4 --group-size 64"
  "g8s|1|--bits 8 --group-size 128 --sym --static-groups"
)
CHECK=()
refused_v1=0
for c in "${CASES[@]}"; do
  IFS='|' read -r n ao opts <<<"$c"
  bits=$(sed 's/.*--bits \([0-9]\).*/\1/' <<<"$opts")
  # shellcheck disable=SC2086
  if [ "$ao" = 1 ]; then quant "$n" "${GPTQ[@]}" $opts || continue; else quant "$n" $opts || continue; fi
  if ! "$VIEW" "$T/$n.h5" "$TOK" 1 32 "$T/$n.view.safetensors" >/dev/null 2>"$T/$n.vlog"; then
    bad "export_hpcq_view $n: $(cat "$T/$n.vlog")"
    continue
  fi
  if export_ck "$n" gptq_v2 "$T/$n.v2"; then
    CHECK+=(--case "$T/$n.v2" "$T/$n.view.safetensors" gptq_v2 "$bits" "$ao")
  else
    bad "export $n gptq_v2: $(cat "$T/$n.v2.log")"
    continue
  fi
  # zero points of 0 according to the independent loader decide whether v1 must refuse
  read -r nzero first < <(python3 "$LOADER" zeros "$T/$n.v2")
  if [ "$nzero" = 0 ]; then
    if export_ck "$n" gptq "$T/$n.v1"; then
      CHECK+=(--case "$T/$n.v1" "$T/$n.view.safetensors" gptq "$bits" "$ao")
    else
      bad "export $n gptq (v1) failed although no zero point is 0: $(cat "$T/$n.v1.log")"
    fi
  else
    refused_v1=$((refused_v1 + 1))
    if export_ck "$n" gptq "$T/$n.v1"; then
      bad "$n: v1 export of $nzero zero points of 0 succeeded"
    elif grep -q "$first" "$T/$n.v1.log" && grep -q "checkpoint-format gptq_v2" "$T/$n.v1.log" &&
         grep -q -- "--sym" "$T/$n.v1.log"; then
      ok "$n: v1 refused ($nzero zeros of 0): $(cat "$T/$n.v1.log")"
    else
      bad "$n: v1 refusal message should name $first and suggest gptq_v2 / --sym: $(cat "$T/$n.v1.log")"
    fi
    [ -e "$T/$n.v1/config.json" ] && bad "$n: refused v1 export left a config.json"
  fi
done
[ "$refused_v1" -ge 1 ] && ok "at least one asymmetric zero of 0 exercised the v1 refusal" ||
  bad "no case had a zero point of 0 (r2: 2-bit asym g16 used to have hundreds); pick another"
grep -q "peak memory" "$T/r3.v2.log" && ok "export reports time and peak memory: $(cat "$T/r3.v2.log")" ||
  bad "no time/peak memory line: $(cat "$T/r3.v2.log")"

# ---- 3. sharding + tokenizer files ----
if export_ck g4 gptq_v2 "$T/g4.sh" --max-shard-size 1MB; then
  nsh=$(ls "$T/g4.sh"/model-*-of-*.safetensors 2>/dev/null | wc -l)
  [ "$nsh" -ge 3 ] && [ -f "$T/g4.sh/model.safetensors.index.json" ] && [ ! -e "$T/g4.sh/model.safetensors" ] &&
    ok "--max-shard-size 1MB: $nsh shards + index" || bad "sharded export: $(ls "$T/g4.sh")"
  CHECK+=(--case "$T/g4.sh" "$T/g4.view.safetensors" gptq_v2 4 1)
else
  bad "sharded export failed: $(cat "$T/g4.sh.log")"
fi
if cmp -s "$S/tokenizer.model" "$T/r4s.v1/tokenizer.model" && cmp -s "$S/generation_config.json" "$T/r4s.v1/generation_config.json"; then
  ok "tokenizer.model and generation_config.json copied"
else
  bad "tokenizer files not copied: $(ls "$T/r4s.v1")"
fi
ls -A "$T/r4s.v1" | grep -q '\.tmp$' && bad "temporary files left in a finished export: $(ls -A "$T/r4s.v1")"

# ---- the independent loader on every checkpoint (round trip + logits) ----
if python3 "$LOADER" check --source "$S" "${CHECK[@]}" >"$T/check.txt" 2>&1; then
  ok "reference loader: $((${#CHECK[@]} / 6)) checkpoints"
else
  bad "reference loader:"
fi
cat "$T/check.txt"
[ "$(grep -c 'dequantize exactly' "$T/check.txt")" = $((${#CHECK[@]} / 6)) ] || bad "not every checkpoint was checked"
[ $((${#CHECK[@]} / 6)) -ge 16 ] || bad "only $((${#CHECK[@]} / 6)) checkpoints (expected 8 cases x 2 formats - refusals + 1 sharded)"

# the loader can fail: a checkpoint whose config claims the other zero convention, and one
# whose 3-bit qweight has the straddling bits of value 10 flipped, must both be rejected
cp -r "$T/r3.v1" "$T/tamper1"
sed -i 's/"checkpoint_format":[^,]*/"checkpoint_format": "gptq_v2"/' "$T/tamper1/config.json" "$T/tamper1/quantize_config.json"
cp -r "$T/r3.v1" "$T/tamper2"
python3 - "$T/tamper2/model.safetensors" <<'PY'
import json, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
n = int.from_bytes(b[:8], "little")
e = json.loads(b[8:8 + n])["model.layers.0.mlp.up_proj.qweight"]
o = 8 + n + e["data_offsets"][0]
b[o + 3] ^= 0x80   # word 0 of column 0, bit 31: high bit of value 10's low part
open(p, "wb").write(bytes(b))
PY
for tp in tamper1:gptq_v2 tamper2:gptq; do
  fm=${tp#*:}
  tp=${tp%:*}
  if python3 "$LOADER" check --source "$S" --no-forward --case "$T/$tp" "$T/r3.view.safetensors" "$fm" 3 0 >"$T/e.txt" 2>&1; then
    bad "reference loader accepted the tampered checkpoint $tp"
  else
    ok "reference loader rejects $tp: $(head -1 "$T/e.txt" | cut -c1-160)"
  fi
done

# ---- Qwen3 (per-head q_norm / k_norm copied unquantized, head_dim != hidden / heads) ----
Q3=$DATA/tiny-qwen3
Q3TOK=$DATA/stories260K-hf/wikitext2-test.tok512.i32
if "$BIN" quantize --model "$Q3" --out "$T/q3.h5" --quiet --calib "$DATA/stories260K-hf/sotu-calib.tok512.i32" \
     --nsamples 8 --seqlen 64 --act-order --bits 4 --group-size 32 2>"$T/q3.qlog" &&
   "$VIEW" "$T/q3.h5" "$Q3TOK" 1 64 "$T/q3.view.safetensors" >/dev/null 2>"$T/q3.vlog" &&
   export_ck q3 gptq_v2 "$T/q3.v2"; then
  if python3 "$LOADER" check --source "$Q3" --case "$T/q3.v2" "$T/q3.view.safetensors" gptq_v2 4 1 \
       >"$T/q3.txt" 2>&1 && grep -q 'dequantize exactly' "$T/q3.txt"; then
    ok "Qwen3 export: reference loader (q/k norms in its forward): $(tail -1 "$T/q3.txt" | cut -c1-200)"
  else
    bad "Qwen3 export, reference loader: $(cat "$T/q3.txt")"
  fi
  for t in q_norm k_norm; do
    grep -q "model.layers.1.self_attn.$t.weight" "$T/q3.v2/model.safetensors" ||
      bad "Qwen3 export lacks self_attn.$t.weight"
  done
else
  bad "Qwen3 quantize/view/export: $(tail -2 "$T/q3.qlog" "$T/q3.vlog" "$T/q3.v2.log" 2>/dev/null)"
fi

# ---- 4. refusals and interruption ----
mkdir -p "$T/busy"
echo keep >"$T/busy/notes.txt"
expect_fail "non-empty --out" "--overwrite" "$BIN" export "$T/r4s.h5" --format gptq --out "$T/busy"
if "$BIN" export "$T/r4s.h5" --format gptq --out "$T/busy" --overwrite --quiet && [ -f "$T/busy/config.json" ] &&
   [ "$(cat "$T/busy/notes.txt")" = keep ]; then ok "--overwrite exports into a non-empty folder, other files kept"
else bad "--overwrite into a non-empty folder"; fi
# a single-file export replacing a sharded one removes the stale shards and index
cp -r "$T/g4.sh" "$T/re"
if "$BIN" export "$T/r4s.h5" --format gptq --out "$T/re" --overwrite --quiet &&
   [ -f "$T/re/model.safetensors" ] && ! ls "$T/re" | grep -q -e 'model-0' -e 'index'; then
  ok "--overwrite replaced a sharded checkpoint by a single file"
else bad "--overwrite over a sharded checkpoint left: $(ls "$T/re")"; fi
expect_fail "non-HDF5 input" "not an HDF5 file" "$BIN" export "$S/config.json" --format gptq --out "$T/x1"
expect_fail "missing input" "cannot read" "$BIN" export "$T/nope.h5" --format gptq --out "$T/x1"
expect_fail "unknown --format" "not supported" "$BIN" export "$T/r3.h5" --format awq --out "$T/x1"
expect_fail "bad --checkpoint-format" "gptq or gptq_v2" "$BIN" export "$T/r3.h5" --checkpoint-format v9 --out "$T/x1"
expect_fail "bad --max-shard-size" "max-shard-size" "$BIN" export "$T/r3.h5" --max-shard-size lots --out "$T/x1"
expect_fail "no --out" "required" "$BIN" export "$T/r3.h5"
[ -e "$T/x1" ] && bad "a refused export created its --out folder"

# killed mid-write (file size limit -> SIGXFSZ): nothing complete-looking, the old one intact
killed_export() { # DIR args...: the export dies of SIGXFSZ after 1000 KiB of file data
  bash -c 'ulimit -f 1000; "$@"; exit $?' _ "$BIN" export "$T/g4.h5" --format gptq --out "$@" --quiet 2>/dev/null
}
killed_export "$T/busy" --overwrite
rc=$?
if [ $rc -ne 0 ] && python3 "$LOADER" check --source "$S" --no-forward \
     --case "$T/busy" "$T/r4s.view.safetensors" gptq 4 0 >/dev/null 2>"$T/e.txt"; then
  ok "export killed mid-write (rc $rc) left the checkpoint it was replacing intact"
else
  bad "killed export over an existing checkpoint (rc $rc): $(cat "$T/e.txt")"
fi
killed_export "$T/fresh"
rc=$?
if [ $rc -ne 0 ] && [ ! -e "$T/fresh/config.json" ] && ! ls "$T/fresh" | grep -q safetensors; then
  ok "export killed mid-write (rc $rc) left no complete-looking checkpoint: [$(ls -A "$T/fresh" | tr '\n' ' ')]"
else
  bad "killed export (rc $rc) left: $(ls -A "$T/fresh")"
fi
if "$BIN" export "$T/g4.h5" --format gptq --out "$T/fresh" --overwrite --quiet && [ -f "$T/fresh/config.json" ] &&
   ! ls -A "$T/fresh" | grep -q '\.tmp$'; then
  ok "re-export with --overwrite after the kill cleans the leftovers"
else bad "re-export after the kill: $(ls -A "$T/fresh")"; fi

# an interrupted quantize run (SIGTERM after block 0) leaves an incomplete .h5: refused
"$BIN" quantize --model "$S" --calib "$CALIB" --nsamples 64 --seqlen 128 --quiet --out "$T/part.h5" 2>/dev/null &
qpid=$!
for _ in $(seq 1 600); do
  h5dump -d /progress "$T/part.h5" 2>/dev/null | grep -q "(0): 1" && break
  kill -0 $qpid 2>/dev/null || break
  sleep 0.05
done
kill -TERM $qpid 2>/dev/null
wait $qpid
expect_fail "incomplete .h5" "incomplete" "$BIN" export "$T/part.h5" --format gptq --out "$T/x2"

# the source folder is gone: export works, warns, no tokenizer files
mv "$S" "$T/src-moved"
if "$BIN" export "$T/r3.h5" --format gptq --out "$T/notok" 2>"$T/e.txt" && grep -q "warning.*tokenizer" "$T/e.txt" &&
   [ -f "$T/notok/config.json" ] && [ ! -e "$T/notok/tokenizer.model" ]; then
  ok "missing source folder: warning only ($(head -1 "$T/e.txt" | cut -c1-100)...)"
else
  bad "missing source folder: $(cat "$T/e.txt")"
fi

finish "test_export ($(($(date +%s) - t_start)) s)"
