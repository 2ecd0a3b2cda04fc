#!/usr/bin/env bash
# Quality cost of block parallelism (README "Block groups"): perplexity of the bundled 5M model
# (6 blocks) quantized with GPTQ at --block-groups G = 1, 2, 3, 6, next to FP and RTN, at W4
# g128, W3 g128 and W2 g64, three calibration seeds (0, 1, 2) each. Calibration and evaluation
# as tools/quality-table.sh (128 x 256 tokens of calib.i32; WikiText-2 test at seqlen 256).
# The result is a function of G alone (not of the rank count), so G ranks run each G (over-
# subscribed on small machines); OpenBLAS is pinned to Haswell's kernels (reproducible).
# usage: tools/block-groups-table.sh [max_windows]   (default 400; 0: all 1674)
# env: HQ_BIN (./build/hpcq), MPIEXEC (mpiexec)
set -euo pipefail
cd "$(dirname "$0")/.."
MW=${1:-400}
BIN=${HQ_BIN:-./build/hpcq}; MPIEXEC=${MPIEXEC:-mpiexec}; M=tests/data/llama-sotu-5m
export OPENBLAS_CORETYPE=Haswell
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T=$(mktemp -d /tmp/hq_bgtable.XXXXXX); trap 'rm -rf "$T"' EXIT
EV=(--tokens "$M/wikitext2-test.i32" --seqlen 256 --json); [ "$MW" -gt 0 ] && EV+=(--max-windows "$MW")
ppl() { "$BIN" eval --model "$1" "${EV[@]}" 2>/dev/null | sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'; }
qp() { local np=$1; shift; "$MPIEXEC" -np "$np" "$BIN" quantize --model "$M" --out "$T/q.h5" --overwrite --quiet "$@" >&2; ppl "$T/q.h5"; }
pd() { awk -v p="$1" -v f="$fp" 'BEGIN{printf "%.3f (%+.2f%%)", p, 100*(p-f)/f}'; }
CAL=(--calib "$M/calib.i32" --nsamples 128 --seqlen 256)
GS=(1 2 3 6)
fp=$(ppl "$M")
printf '| config | RTN |'; for G in "${GS[@]}"; do printf ' G = %s: seeds 0 / 1 / 2 → mean |' "$G"; done; echo
printf '|---|---|'; for _ in "${GS[@]}"; do printf -- '---|'; done; echo
echo "| FP | $(printf %.3f "$fp") |$(for _ in "${GS[@]}"; do printf ' |'; done)"
for cfg in "4 128" "3 128" "2 64"; do
  set -- $cfg
  row="| W$1 g$2 | $(pd "$(qp 2 --method rtn --bits $1 --group-size $2)") |"
  for G in "${GS[@]}"; do
    a=$(qp "$G" "${CAL[@]}" --bits $1 --group-size $2 --block-groups "$G" --seed 0)
    b=$(qp "$G" "${CAL[@]}" --bits $1 --group-size $2 --block-groups "$G" --seed 1)
    c=$(qp "$G" "${CAL[@]}" --bits $1 --group-size $2 --block-groups "$G" --seed 2)
    row="$row $(printf '%.3f / %.3f / %.3f' "$a" "$b" "$c") → $(pd "$(awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN{print (a+b+c)/3}')") |"
  done
  echo "$row"
done
