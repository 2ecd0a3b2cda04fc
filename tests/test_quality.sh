#!/usr/bin/env bash
# GPTQ beats RTN on the bundled 5M model (issue 4 proof): at W4 g128, W3 g128 and W2 g64 the
# GPTQ perplexity is lower than RTN's, and at W3 g128 GPTQ's perplexity increase over full
# precision is at most 80 % of RTN's. Calibration as the issue says (128 windows x 256 tokens,
# seed 0); perplexity on the first 200 WikiText-2 windows of 256 tokens to keep CI short (the
# README table: tools/quality-table.sh). With 64 windows the W2 g64 comparison is within the
# noise of this out-of-domain evaluation, so the test uses the full calibration protocol.
set -u
BIN=${HQ_BIN:-build/hpcq}
M=${HQ_TESTDATA:-tests/data}/llama-sotu-5m
MPIEXEC=${MPIEXEC:-mpiexec}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
T=$(mktemp -d /tmp/hq_quality.XXXXXX)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
ppl() { "$BIN" eval --model "$1" --tokens "$M/wikitext2-test.i32" --seqlen 256 --max-windows 200 --json 2>"$T/eval.log" |
        sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
fp=$(ppl "$M")
echo "FP perplexity: $fp"
for cfg in "4 128" "3 128" "2 64"; do
  set -- $cfg
  "$MPIEXEC" -np 2 "$BIN" quantize --model "$M" --out "$T/rtn.h5" --method rtn --bits $1 --group-size $2 --quiet || bad "rtn W$1 g$2 failed"
  "$MPIEXEC" -np 2 "$BIN" quantize --model "$M" --calib "$M/calib.i32" --nsamples 128 --seqlen 256 --out "$T/gptq.h5" --bits $1 --group-size $2 --quiet || bad "gptq W$1 g$2 failed"
  r=$(ppl "$T/rtn.h5"); g=$(ppl "$T/gptq.h5")
  rm -f "$T/rtn.h5" "$T/gptq.h5"
  echo "W$1 g$2: RTN $r, GPTQ $g (FP $fp)"
  if awk -v r="$r" -v g="$g" 'BEGIN{exit !(g > 0 && g < r)}'; then ok "W$1 g$2: GPTQ $g < RTN $r"; else bad "W$1 g$2: GPTQ $g not below RTN $r"; fi
  if [ "$1" = 3 ]; then
    if awk -v r="$r" -v g="$g" -v f="$fp" 'BEGIN{exit !((g - f) <= 0.8 * (r - f))}'; then ok "W3 g128: GPTQ increase $(awk -v r="$r" -v g="$g" -v f="$fp" 'BEGIN{printf "%.1f%%", 100*(g-f)/(r-f)}') of RTN's (<= 80 %)"
    else bad "W3 g128: GPTQ increase over FP is more than 80 % of RTN's ($g vs $r, FP $fp)"; fi
  fi
done
echo "test_quality: $pass passed, $fail failed"
[ $fail -eq 0 ]
