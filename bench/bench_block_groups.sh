#!/usr/bin/env bash
# End-to-end time and memory of --block-groups G (issue 14): a synthetic 8-block model (hidden
# 2048, intermediate 5632, random bf16 weights), GPTQ W4 g128 on 16 x 256 calibration tokens
# (--batch 4: four chunks of windows per rank in the full-precision chain when a group has one
# rank), G = 1, 2, 4 at 4 ranks (oversubscribed on a 2-core machine, labelled) and G = 1, 2 at
# 2 ranks; one OpenBLAS thread per rank. Median of R runs per point. Columns: the time, the
# speedup over G = 1 at the same rank count, the full-precision chain's time and each group's
# wait in it, rank 0's phases (group 0's blocks), the largest peak RSS over the ranks.
# usage: bench/bench_block_groups.sh [R=3] [POINTS="4:1 4:2 4:4 2:1 2:2"]   (ranks:G)
# env: HQ_BIN (./build/hpcq), MPIEXEC (mpiexec), HQ_BENCH_MODEL (an existing model directory
#      to use instead of generating one), HQ_NSAMPLES (16)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-3}; POINTS=${2:-"4:1 4:2 4:4 2:1 2:2"}
BIN=${HQ_BIN:-./build/hpcq}; MPIEXEC=${MPIEXEC:-mpiexec}; NS=${HQ_NSAMPLES:-16}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/hq_benchbg.XXXXXX); trap 'rm -rf "$T"' EXIT
M=${HQ_BENCH_MODEL:-$T/syn8}
[ -d "$M" ] || python3 tools/make_synthetic_model.py "$M" --hidden 2048 --intermediate 5632 --layers 8 >&2
C=tests/data/llama-sotu-5m/calib.i32
cores=$(nproc --all)
# the median run of R summaries: "seconds chain idle-list phases... rss-MB"
median() { python3 - "$T" "$R" <<'PY'
import json, sys
T, R = sys.argv[1], int(sys.argv[2])
runs = sorted((json.load(open(f"{T}/s_{r}.json")) for r in range(1, R + 1)), key=lambda j: j["seconds"])
m = runs[len(runs) // 2]
ph = m["phases"]
idle = "/".join(f"{x:.1f}" for x in m["fp_chain_idle_seconds"])
print(f'{m["seconds"]:.2f} {m["fp_chain_seconds"]:.2f} {idle}',
      *(f'{ph[k]:.1f}' for k in ["forward", "hessian", "allreduce", "cholesky", "gptq", "stats", "write"]),
      f'{m["peak_rss_bytes_max"]/1e6:.0f}')
PY
}
echo "| ranks | G | end-to-end s (median of $R) | vs G = 1 | FP chain s | chain wait per group s | forward | hessian | allreduce | cholesky | gptq | stats | write | peak RSS/rank MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
declare -A base
for pt in $POINTS; do
  np=${pt%:*}; G=${pt#*:}
  for r in $(seq 1 "$R"); do
    "$MPIEXEC" -np "$np" "$BIN" quantize --model "$M" --calib "$C" --nsamples "$NS" --seqlen 256 \
      --batch 4 --block-groups "$G" --out "$T/o.h5" --overwrite --quiet --json-summary "$T/s_$r.json"
  done
  read -r sec ch idle f h a c g s w rss <<< "$(median)"
  [ "$G" = 1 ] && base[$np]=$sec
  vs="—"; [ -n "${base[$np]:-}" ] && vs=$(awk -v b="${base[$np]}" -v s="$sec" 'BEGIN{printf "%.2fx", b/s}')
  label="$np"; [ "$np" -gt "$cores" ] && label="$np (oversubscribed)"
  echo "| $label | $G | $sec | $vs | $ch | $idle | $f | $h | $a | $c | $g | $s | $w | $rss |"
done
