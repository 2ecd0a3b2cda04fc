#!/usr/bin/env bash
# Quality table of the README: perplexity of FP, RTN, GPTQ (and GPTQ + act-order) on the
# bundled 5M model. GPTQ is chaotic (one changed rounding changes a quarter of the later
# codes), so it is run with three calibration seeds (0, 1, 2) and compared by their mean.
# Calibration: 128 windows x 256 tokens of calib.i32; evaluation: WikiText-2 test at seqlen
# 256, the first contiguous windows.
# usage: tools/quality-table.sh [max_windows] [ranks]   the README's full table (W4 per-channel,
#          W4 g128, W3 g128, W2 g64; act-order too); max_windows: default all 1674; ranks: 2
#        tools/quality-table.sh --ci                    the CI-sized table (README block
#          "quality-ci", checked by tests/test_quality.sh): W4 g128, W3 g128, W2 g64 without
#          act-order, 200 evaluation windows
# The numbers are reproducible (docs/readme/reproducibility.md): the OpenBLAS kernel family is
# pinned to Haswell's (any x86-64 CPU with AVX2) and results do not depend on the rank or thread
# count. env: HQ_BIN (./build/hpcq), MPIEXEC (mpiexec)
set -euo pipefail
cd "$(dirname "$0")/.."
CI=0
if [ "${1:-}" = --ci ]; then CI=1; MW=200; NP=2; else MW=${1:-0}; NP=${2:-2}; fi
BIN=${HQ_BIN:-./build/hpcq}; MPIEXEC=${MPIEXEC:-mpiexec}; M=tests/data/llama-sotu-5m
export OPENBLAS_CORETYPE=Haswell
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T=$(mktemp -d /tmp/hq_table.XXXXXX); trap 'rm -rf "$T"' EXIT
EV=(--tokens "$M/wikitext2-test.i32" --seqlen 256 --json); [ "$MW" -gt 0 ] && EV+=(--max-windows "$MW")
ppl() { "$BIN" eval --model "$1" "${EV[@]}" 2>/dev/null | sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
qp() { "$MPIEXEC" -np "$NP" "$BIN" quantize --model "$M" --out "$T/q.h5" --overwrite --quiet "$@" >&2; ppl "$T/q.h5"; }
pd() { awk -v p="$1" -v f="$fp" 'BEGIN{printf "%.3f (%+.2f%%)", p, 100*(p-f)/f}'; }
# seeds ARGS...: "p0 / p1 / p2 | mean (Δ)" of GPTQ with the three calibration seeds
seeds() { local a b c; a=$(qp "$@" --seed 0); b=$(qp "$@" --seed 1); c=$(qp "$@" --seed 2)
  printf '%.3f / %.3f / %.3f | %s' "$a" "$b" "$c" "$(pd "$(awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN{print (a+b+c)/3}')")"; }
fp=$(ppl "$M")
CAL=(--calib "$M/calib.i32" --nsamples 128 --seqlen 256)
if [ $CI = 1 ]; then
  CFGS=("4 128" "3 128" "2 64")
  echo "| config | RTN | GPTQ, seeds 0 / 1 / 2 | GPTQ mean |"
  echo "|---|---|---|---|"
else
  CFGS=("4 -1" "4 128" "3 128" "2 64")
  echo "| config | RTN | GPTQ, seeds 0 / 1 / 2 | GPTQ mean | GPTQ act-order, seeds 0 / 1 / 2 | act-order mean |"
  echo "|---|---|---|---|---|---|"
fi
echo "| FP | $(printf %.3f "$fp") | | |$([ $CI = 1 ] || echo ' | |')"
for cfg in "${CFGS[@]}"; do
  set -- $cfg; name="W$1 $([ "$2" = -1 ] && echo per-channel || echo g$2)"
  row="| $name | $(pd "$(qp --method rtn --bits $1 --group-size $2)") | $(seeds "${CAL[@]}" --bits $1 --group-size $2) |"
  [ $CI = 1 ] || row="$row $(seeds "${CAL[@]}" --bits $1 --group-size $2 --act-order) |"
  echo "$row"
done
