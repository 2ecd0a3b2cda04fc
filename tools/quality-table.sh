#!/usr/bin/env bash
# Quality table of the README: FP, RTN, GPTQ and GPTQ+act-order on the bundled 5M model.
# Calibration: 128 windows x 256 tokens of calib.i32 (seed 0); evaluation: WikiText-2 test at
# seqlen 256, contiguous windows. usage: tools/quality-table.sh [max_windows] [ranks]
#   max_windows: evaluation windows (default: all 1674)   ranks: MPI ranks for quantize (2)
set -euo pipefail
cd "$(dirname "$0")/.."
MW=${1:-0}; NP=${2:-2}
BIN=./build/hpcq; M=tests/data/llama-sotu-5m
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T=$(mktemp -d /tmp/hq_table.XXXXXX); trap 'rm -rf "$T"' EXIT
EV=(--tokens "$M/wikitext2-test.i32" --seqlen 256 --json); [ "$MW" -gt 0 ] && EV+=(--max-windows "$MW")
ppl() { "$BIN" eval --model "$1" "${EV[@]}" 2>/dev/null | sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
q() { local t0; t0=$(date +%s%N); mpiexec -np "$NP" "$BIN" quantize --model "$M" --out "$T/q.h5" --overwrite --quiet "$@" >&2
      awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{print (b-a)/1e9}'; }
fp=$(ppl "$M")
echo "| config | method | perplexity | Δ vs FP | quantize time (s, $NP ranks) |"
echo "|---|---|---|---|---|"
echo "| FP (bf16 weights, fp32 compute) | — | $(printf %.3f "$fp") | — | — |"
for cfg in "4 -1" "4 128" "3 128" "2 64"; do
  set -- $cfg; name="W$1 $([ "$2" = -1 ] && echo per-channel || echo g$2)"
  for m in rtn gptq gptq-ao; do
    case $m in
      rtn) t=$(q --method rtn --bits $1 --group-size $2) ;;
      gptq) t=$(q --calib "$M/calib.i32" --nsamples 128 --seqlen 256 --bits $1 --group-size $2) ;;
      gptq-ao) t=$(q --calib "$M/calib.i32" --nsamples 128 --seqlen 256 --bits $1 --group-size $2 --act-order) ;;
    esac
    p=$(ppl "$T/q.h5")
    echo "| $name | $m | $(printf %.3f "$p") | $(awk -v p="$p" -v f="$fp" 'BEGIN{printf "%+.2f%%", 100*(p-f)/f}') | $(printf %.1f "$t") |"
  done
done
