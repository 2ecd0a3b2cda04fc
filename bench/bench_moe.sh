#!/usr/bin/env bash
# Time and memory per rank of the MoE path of hpcq quantize (issue 15) on one synthetic
# Qwen3-MoE block of real shape: hidden 4096, 64 query heads / 4 KV heads of 128, E experts of
# moe_intermediate 1536, top-8 (the 235B-class layout; E = 128 there), random bf16 weights;
# GPTQ W4 g128 on NS x 512 calibration tokens with --moe-min-tokens 0 (every expert from its
# routed tokens), one OpenBLAS thread per rank. Columns: seconds (median of R runs), the
# speedup over 1 rank, rank 0's phases, the largest peak RSS over the ranks, and the memory
# formula of docs/readme/moe.md for the same point.
# usage: bench/bench_moe.sh [R=1] [POINTS="32:1 32:2 64:1 64:2"]   (experts:ranks)
# env: HQ_BIN (./build/hpcq), MPIEXEC (mpiexec), HQ_NSAMPLES (16), HQ_BENCH_DIR (where the
#      synthetic models are kept between runs; default a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-1}; POINTS=${2:-"32:1 32:2 64:1 64:2"}
BIN=${HQ_BIN:-./build/hpcq}; MPIEXEC=${MPIEXEC:-mpiexec}; NS=${HQ_NSAMPLES:-16}; SEQ=512
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/hq_benchmoe.XXXXXX); trap 'rm -rf "$T"' EXIT
DIR=${HQ_BENCH_DIR:-$T}
C=tests/data/llama-sotu-5m/calib.i32
H=4096; I=1536; QD=8192; KVD=512
model() { # E: the synthetic one-block model with E experts
  local m=$DIR/moe$1
  [ -f "$m/config.json" ] || python3 tools/make_synthetic_model.py "$m" --layers 1 --hidden $H \
    --heads 64 --kv-heads 4 --head-dim 128 --experts "$1" --top-k 8 --moe-intermediate $I >&2
  echo "$m"
}
# docs/readme/moe.md: every rank's fp32 block (attention, router, all experts), its windows'
# activations (x, the router input, the carry), one expert's inputs, one accumulator + one H,
# the owner's working copies of one expert
formula_gb() { # E NP
  python3 -c "
E, P, H, I, QD, KVD, ntok = $1, $2, $H, $I, $QD, $KVD, -(-$NS // $2) * $SEQ
w = 4 * (E * 3 * H * I + E * H + 2 * QD * H + 2 * KVD * H)
act = 4 * ntok * (3 * H + max(QD, I)) + 4 * ntok * max(H, I)
hess = 8 * H * (H + 1) // 2 + 4 * H * H
gptq = 2 * 4 * I * H + 2 * I * H  # the owner's working copies of gate and up, their codes
print(f'{(w + act + hess + gptq) / 1e9:.2f}')"
}
echo "| experts | ranks | seconds (median of $R) | vs 1 rank | forward | hessian | allreduce | cholesky | gptq | stats | gather | write | peak RSS/rank GB | formula GB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
declare -A base
for pt in $POINTS; do
  E=${pt%:*}; np=${pt#*:}
  M=$(model "$E")
  for r in $(seq 1 "$R"); do
    "$MPIEXEC" -np "$np" "$BIN" quantize --model "$M" --calib "$C" --out "$T/q.h5" --overwrite --quiet \
      --nsamples "$NS" --seqlen $SEQ --bits 4 --group-size 128 --moe-min-tokens 0 --json-summary "$T/s_$r.json"
  done
  read -r s ph rss < <(python3 - "$T" "$R" <<'PY'
import json, sys
T, R = sys.argv[1], int(sys.argv[2])
runs = sorted((json.load(open(f"{T}/s_{r}.json")) for r in range(1, R + 1)), key=lambda j: j["seconds"])
m = runs[len(runs) // 2]
ph = m["phases"]
print(f'{m["seconds"]:.1f}', "|".join(f'{ph[k]:.1f}' for k in
      ["forward", "hessian", "allreduce", "cholesky", "gptq", "stats", "gather", "write"]),
      f'{m["peak_rss_bytes_max"] / 1e9:.2f}')
PY
)
  [ "$np" = 1 ] && base[$E]=$s
  sp=$(awk -v a="${base[$E]:-0}" -v b="$s" 'BEGIN { if (a > 0) printf "%.2f", a / b; else print "-" }')
  echo "| $E | $np | $s | $sp | ${ph//|/ | } | $rss | $(formula_gb "$E" "$np") |"
done
