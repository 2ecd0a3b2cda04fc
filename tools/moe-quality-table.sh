#!/usr/bin/env bash
# Quality of MoE quantization on the trained test model tests/data/qwen3moe-sotu-2m (Qwen3-MoE
# layout, 8 experts top-2, 4 layers; tools/train_tiny_moe.py): WikiText-2 perplexity at seqlen
# 256 (the first WINDOWS windows, all when 0) of FP, RTN and GPTQ at W4 g128 and W3 g128
# (asymmetric; GPTQ on 128 x 256 calibration tokens of llama-sotu-5m/calib.i32 at calibration
# seeds 0, 1, 2: mean and spread), with the routed-token summary and fallbacks of hpcq inspect
# for each GPTQ run (default --moe-min-tokens: hidden_size, 128).
# usage: tools/moe-quality-table.sh [WINDOWS=0] [RANKS=2]     prints a markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-0}; NP=${2:-2}
BIN=${HQ_BIN:-./build/hpcq}; MPIEXEC=${MPIEXEC:-mpiexec}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell
M=tests/data/qwen3moe-sotu-2m; D=tests/data/llama-sotu-5m
T=$(mktemp -d /tmp/hq_moeq.XXXXXX); trap 'rm -rf "$T"' EXIT
MW=(); [ "$W" -gt 0 ] && MW=(--max-windows "$W")
ev() { "$BIN" eval --model "$1" --tokens "$D/wikitext2-test.i32" --seqlen 256 "${MW[@]}" --json 2>/dev/null |
  sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p' | awk '{ printf "%.3f\n", $1 }'; }
fp=$(ev "$M")
echo "| bits | method | perplexity | vs FP | routed tokens per expert (min / median / max) | experts with the fallback |"
echo "|---|---|---|---|---|---|"
echo "| 16 | FP | $fp | | | |"
for b in 4 3; do
  "$MPIEXEC" -np "$NP" "$BIN" quantize --model "$M" --out "$T/r.h5" --overwrite --quiet --method rtn --bits $b --group-size 128
  r=$(ev "$T/r.h5")
  echo "| $b | RTN | $r | $(awk -v a="$r" -v f="$fp" 'BEGIN { printf "%+.2f %%", 100 * (a / f - 1) }') | | |"
  ps=""; info=()
  for s in 0 1 2; do
    "$MPIEXEC" -np "$NP" "$BIN" quantize --model "$M" --calib "$D/calib.i32" --out "$T/g$s.h5" --overwrite --quiet \
      --bits $b --group-size 128 --nsamples 128 --seqlen 256 --seed $s
    ps="$ps $(ev "$T/g$s.h5")"
    info+=("$("$BIN" inspect --json "$T/g$s.h5" | python3 -c "
import json, sys; m = json.load(sys.stdin)['moe']
print(f\"{m['tokens_min']} / {m['tokens_median']:.0f} / {m['tokens_max']};{m['fallback']}\")")")
  done
  read -r mean spread < <(echo "$ps" | awk '{ for (i = 1; i <= NF; i++) { s += $i; if (i == 1 || $i < lo) lo = $i; if (i == 1 || $i > hi) hi = $i }
    printf "%.3f %.3f\n", s / NF, hi - lo }')
  tok=${info[0]%;*}; fb=$(printf '%s\n' "${info[@]}" | sed 's/.*;//' | paste -sd/ -)
  echo "| $b | GPTQ (seeds 0-2: mean, spread $spread) | $mean | $(awk -v a="$mean" -v f="$fp" 'BEGIN { printf "%+.2f %%", 100 * (a / f - 1) }') | $tok (seed 0) | $fb of 32 (seeds 0/1/2) |"
done
