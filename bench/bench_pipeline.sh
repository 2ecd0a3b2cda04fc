#!/usr/bin/env bash
# End-to-end scaling and memory of hpcq quantize (issue 4): np = 1, 2 (and 3, 4 oversubscribed
# on a 2-core machine, labelled as such), on the bundled 5M model and a synthetic wider model
# (hidden 2048, intermediate 5632, 2 layers, random bf16 weights). One OpenBLAS/OpenMP thread
# per rank. Median of R runs per point. Prints a markdown table and writes bench_pipeline.json.
# usage: bench/bench_pipeline.sh [R=3] [NPS="1 2 3"]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-3}; NPS=${2:-"1 2 3"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/hq_benchpipe.XXXXXX); trap 'rm -rf "$T"' EXIT
python3 tools/make_synthetic_model.py "$T/syn2048" --hidden 2048 --intermediate 5632 --layers 2 >&2
M5=tests/data/llama-sotu-5m
cores=$(nproc --all)
declare -A ARGS
ARGS[llama-sotu-5m]="--model $M5 --calib $M5/calib.i32 --nsamples 128 --seqlen 256"
ARGS[synthetic-2048]="--model $T/syn2048 --calib $M5/calib.i32 --nsamples 8 --seqlen 256"
echo "| model | ranks | end-to-end s (median of $R) | speedup | efficiency | forward | hessian | allreduce | cholesky | gptq | stats | gather | write | peak RSS/rank MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
echo "[" > bench_pipeline.json
first=1
for model in llama-sotu-5m synthetic-2048; do
  base=""
  for np in $NPS; do
    for r in $(seq 1 "$R"); do
      mpiexec -np "$np" ./build/hpcq quantize ${ARGS[$model]} --out "$T/o.h5" --overwrite --quiet --json-summary "$T/s_$r.json"
    done
    line=$(python3 - "$T" "$R" <<'PY'
import json, sys, statistics as st
T, R = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{T}/s_{r}.json")) for r in range(1, R + 1)]
runs.sort(key=lambda j: j["seconds"])
m = runs[len(runs) // 2]
ph = m["phases"]
print(m["seconds"], *(f'{ph[k]:.2f}' for k in ["forward", "hessian", "allreduce", "cholesky", "gptq", "stats", "gather", "write"]), f'{m["peak_rss_bytes_max"]/1e6:.0f}', json.dumps(m))
PY
)
    read -r sec f h a c g s ga w rss js <<< "$line"
    [ -z "$base" ] && base=$sec
    label="$np"; [ "$np" -gt "$cores" ] && label="$np (oversubscribed)"
    sp=$(awk -v b="$base" -v s="$sec" 'BEGIN{printf "%.2fx", b/s}')
    ef=$(awk -v b="$base" -v s="$sec" -v n="$np" 'BEGIN{printf "%.0f%%", 100*b/s/n}')
    echo "| $model | $label | $(printf %.2f "$sec") | $sp | $ef | $f | $h | $a | $c | $g | $s | $ga | $w | $rss |"
    [ $first -eq 1 ] || echo "," >> bench_pipeline.json; first=0
    echo "{\"model\": \"$model\", \"ranks\": $np, \"median\": $js}" >> bench_pipeline.json
  done
done
echo "]" >> bench_pipeline.json
