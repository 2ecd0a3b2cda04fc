#!/usr/bin/env bash
# README table of the other methods (docs/readme/methods.md) on the bundled 5M model:
# FP, RTN, GPTQ, HQQ (zero only / zero+scale), GPTQ --scale-from-hessian at W4 g128, W3 g128,
# W2 g64; then W4A8 and W4A4 (W4 g128 weights, per-token activation quantization) for RTN and
# GPTQ without and with each equalization (smooth, cle, smooth+cle).
# Calibration: 128 windows x 256 tokens of calib.i32 (seed 0); evaluation: WikiText-2 test at
# seqlen 256, the first MW contiguous windows. Quantize time = wall clock of the whole
# `mpiexec -np NP hpcq quantize` (MPI start-up included).
# usage: tools/methods-table.sh [max_windows (default 200; 0 = all 1674)] [ranks (2)]
# env: HQ_BIN (default ./build/hpcq)
set -euo pipefail
cd "$(dirname "$0")/.."
MW=${1:-200}; NP=${2:-2}
BIN=${HQ_BIN:-./build/hpcq}; M=tests/data/llama-sotu-5m
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T=$(mktemp -d /tmp/hq_methods_table.XXXXXX); trap 'rm -rf "$T"' EXIT
EV=(--tokens "$M/wikitext2-test.i32" --seqlen 256 --json --quiet); [ "$MW" -gt 0 ] && EV+=(--max-windows "$MW")
CAL=(--calib "$M/calib.i32" --nsamples 128 --seqlen 256)
ppl() { "$BIN" eval --model "$1" "${EV[@]}" "${@:2}" 2>/dev/null | sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
q() { local t0; t0=$(date +%s%N); mpiexec -np "$NP" "$BIN" quantize --model "$M" --out "$T/q.h5" --overwrite --quiet "$@" >&2
      awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}'; }
d() { awk -v p="$1" -v f="$2" 'BEGIN{printf "%+.2f%%", 100*(p-f)/f}'; }
fp=$(ppl "$M"); fp8=$(ppl "$M" --act-bits 8); fp4=$(ppl "$M" --act-bits 4)
echo "Weight-only ($MW windows x 256 tokens of WikiText-2; quantize: $NP ranks)"
echo
echo "| config | method | perplexity | Δ vs FP | quantize time (s) |"
echo "|---|---|---|---|---|"
echo "| FP (bf16 weights, fp32 compute) | — | $(printf %.3f "$fp") | — | — |"
for cfg in "4 128" "3 128" "2 64"; do
  set -- $cfg; name="W$1 g$2"
  for m in rtn gptq hqq hqq-scale gptq-hscale; do
    case $m in
      rtn) t=$(q --method rtn --bits $1 --group-size $2) ;;
      gptq) t=$(q "${CAL[@]}" --bits $1 --group-size $2) ;;
      hqq) t=$(q --method hqq --bits $1 --group-size $2) ;;
      hqq-scale) t=$(q --method hqq --hqq-scale --bits $1 --group-size $2) ;;
      gptq-hscale) t=$(q "${CAL[@]}" --scale-from-hessian --bits $1 --group-size $2) ;;
    esac
    p=$(ppl "$T/q.h5")
    echo "| $name | $m | $(printf %.3f "$p") | $(d "$p" "$fp") | $t |"
  done
done
echo
echo "Activation quantization (W4 g128 weights; per-token dynamic symmetric activations)"
echo
echo "| config | method | equalize | perplexity | Δ vs FP | quantize time (s) |"
echo "|---|---|---|---|---|---|"
echo "| W16A16 | FP | — | $(printf %.3f "$fp") | — | — |"
echo "| W16A8 | FP | — | $(printf %.3f "$fp8") | $(d "$fp8" "$fp") | — |"
echo "| W16A4 | FP | — | $(printf %.3f "$fp4") | $(d "$fp4" "$fp") | — |"
for a in 8 4; do
  for m in rtn gptq; do
    for eq in none smooth cle smooth,cle; do
      case $m in
        rtn) if [ $eq = none ] || [ $eq = cle ]; then t=$(q --method rtn --bits 4 --group-size 128 --equalize $eq)
             else t=$(q "${CAL[@]}" --method rtn --bits 4 --group-size 128 --equalize $eq); fi ;;
        gptq) t=$(q "${CAL[@]}" --act-bits $a --bits 4 --group-size 128 --equalize $eq) ;;
      esac
      p=$(ppl "$T/q.h5" --act-bits $a)
      echo "| W4A$a | $m | $eq | $(printf %.3f "$p") | $(d "$p" "$fp") | $t |"
    done
  done
done
