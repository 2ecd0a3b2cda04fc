#!/usr/bin/env bash
# End-to-end scaling and memory of hpcq quantize (issue 4): np = 1, 2 (and 3, 4 oversubscribed
# on a 2-core machine, labelled as such), on the bundled 5M model and a synthetic wider model
# (hidden 2048, intermediate 5632, 2 layers, random bf16 weights). One OpenBLAS/OpenMP thread
# per rank. Median of R runs per point. Prints a markdown table and writes bench_pipeline.json.
# usage: bench/bench_pipeline.sh [R=3] [NPS="1 2 3"]
# env: HQ_BIN (./build/hpcq); BASE_BIN: a second hpcq (e.g. the previous commit's) run
#      alternately with HQ_BIN on every point, for a before/after comparison in one run (two more
#      columns: its median and HQ_BIN's time relative to it)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-3}; NPS=${2:-"1 2 3"}
BIN=${HQ_BIN:-./build/hpcq}; BASE=${BASE_BIN:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/hq_benchpipe.XXXXXX); trap 'rm -rf "$T"' EXIT
python3 tools/make_synthetic_model.py "$T/syn2048" --hidden 2048 --intermediate 5632 --layers 2 >&2
M5=tests/data/llama-sotu-5m
cores=$(nproc --all)
declare -A ARGS
ARGS[llama-sotu-5m]="--model $M5 --calib $M5/calib.i32 --nsamples 128 --seqlen 256"
ARGS[synthetic-2048]="--model $T/syn2048 --calib $M5/calib.i32 --nsamples 8 --seqlen 256"
# median run of R summaries: "seconds phases... rss json"
median() { python3 - "$T" "$R" "$1" <<'PY'
import json, sys
T, R, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = [json.load(open(f"{T}/{tag}_{r}.json")) for r in range(1, R + 1)]
runs.sort(key=lambda j: j["seconds"])
m = runs[len(runs) // 2]
ph = m["phases"]
print(m["seconds"], *(f'{ph[k]:.2f}' for k in ["forward", "hessian", "allreduce", "cholesky", "gptq", "stats", "gather", "write"]), f'{m["peak_rss_bytes_max"]/1e6:.0f}', json.dumps(m))
PY
}
head="| model | ranks | end-to-end s (median of $R) | speedup | efficiency | forward | hessian | allreduce | cholesky | gptq | stats | gather | write | peak RSS/rank MB |"
sep="|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
[ -n "$BASE" ] && head="$head base s | vs base |" && sep="$sep---|---|"
echo "$head"; echo "$sep"
echo "[" > bench_pipeline.json
first=1
for model in llama-sotu-5m synthetic-2048; do
  base=""
  for np in $NPS; do
    for r in $(seq 1 "$R"); do
      mpiexec -np "$np" "$BIN" quantize ${ARGS[$model]} --out "$T/o.h5" --overwrite --quiet --json-summary "$T/s_$r.json"
      [ -z "$BASE" ] || mpiexec -np "$np" "$BASE" quantize ${ARGS[$model]} --out "$T/o.h5" --overwrite --quiet --json-summary "$T/b_$r.json"
    done
    read -r sec f h a c g s ga w rss js <<< "$(median s)"
    [ -z "$base" ] && base=$sec
    label="$np"; [ "$np" -gt "$cores" ] && label="$np (oversubscribed)"
    sp=$(awk -v b="$base" -v s="$sec" 'BEGIN{printf "%.2fx", b/s}')
    ef=$(awk -v b="$base" -v s="$sec" -v n="$np" 'BEGIN{printf "%.0f%%", 100*b/s/n}')
    row="| $model | $label | $(printf %.2f "$sec") | $sp | $ef | $f | $h | $a | $c | $g | $s | $ga | $w | $rss |"
    if [ -n "$BASE" ]; then
      read -r bsec _ <<< "$(median b)"
      row="$row $(printf %.2f "$bsec") | $(awk -v a="$sec" -v b="$bsec" 'BEGIN{printf "%+.1f%%", 100*(a-b)/b}') |"
    fi
    echo "$row"
    [ $first -eq 1 ] || echo "," >> bench_pipeline.json; first=0
    echo "{\"model\": \"$model\", \"ranks\": $np, \"median\": $js}" >> bench_pipeline.json
  done
done
echo "]" >> bench_pipeline.json
