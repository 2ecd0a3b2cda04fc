#!/usr/bin/env bash
# Reproducibility (docs/readme/reproducibility.md): a result is a function of (model,
# calibration tokens, settings) alone. On the bundled 5M model, every run below must equal the
# reference run (np 1, default batch, 1 thread) EXACTLY -- codes, zero points, g_idx, scales and
# every statistic (hpcq compare's defaults: --min-equal 1, scales and statistics identical):
#   np 2, 3, 5; --batch 1 and 3; 2 OpenBLAS/OpenMP threads (np 1 and np 2); SIGTERM at np 2 and
#   --resume at np 3 with another batch; the same for act-order + static groups, equalization
#   with activation quantization, --scale-from-hessian, RTN and HQQ.
# ctest runs this with OPENBLAS_CORETYPE=Haswell and with it unset: two OpenBLAS kernel
# families whose plain sgemm results depend on the call's shape and thread count.
set -u
BIN=${HQ_BIN:-build/hpcq}
M=${HQ_TESTDATA:-tests/data}/llama-sotu-5m
MPIEXEC=${MPIEXEC:-mpiexec}
. "$(dirname "$0")/testlib.sh"
T=$(mktemp -d /tmp/hq_repro.XXXXXX)
trap 'rm -rf "$T"' EXIT
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}"
COMMON=(--model "$M" --calib "$M/calib.i32" --nsamples 12 --seqlen 128 --quiet)
# q NP THREADS OUT [args]: one quantize run
q() { local np=$1 th=$2 out=$3; shift 3
  OMP_NUM_THREADS=$th OPENBLAS_NUM_THREADS=$th timeout 300 "$MPIEXEC" -np "$np" "$BIN" quantize \
    "${COMMON[@]}" --out "$out" "$@" 2> "$out.log"; }
same() { # name ref other
  if "$BIN" compare "$2" "$3" > "$T/cmp.txt" 2>&1; then ok "$1: identical ($(tail -1 "$T/cmp.txt" | cut -c1-60))"
  else bad "$1: $(grep -m2 differs "$T/cmp.txt"; tail -1 "$T/cmp.txt")"; fi; }

# ---- GPTQ W4 g128: ranks, batch, threads ----
G=(--bits 4 --group-size 128)
q 1 1 "$T/ref.h5" "${G[@]}" || bad "reference run: $(tail -2 "$T/ref.h5.log")"
for np in 2 3 5; do q $np 1 "$T/np$np.h5" "${G[@]}" && same "np $np" "$T/ref.h5" "$T/np$np.h5" || bad "np $np run"; done
for b in 1 3; do q 1 1 "$T/b$b.h5" "${G[@]}" --batch $b && same "--batch $b" "$T/ref.h5" "$T/b$b.h5" || bad "batch $b run"; done
q 1 2 "$T/t2.h5" "${G[@]}" && same "2 threads" "$T/ref.h5" "$T/t2.h5" || bad "2-thread run"
q 2 2 "$T/t2n2.h5" "${G[@]}" --batch 3 && same "np 2 x 2 threads, --batch 3" "$T/ref.h5" "$T/t2n2.h5" || bad "np 2 x 2 threads run"

# ---- SIGTERM at np 2, resume at np 3 with --batch 1 ----
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$MPIEXEC" -np 2 "$BIN" quantize "${COMMON[@]}" "${G[@]}" --batch 2 \
  --out "$T/term.h5" 2> "$T/term.log" &
mp=$!
for _ in $(seq 1 600); do h5dump -d /progress "$T/term.h5" 2>/dev/null | grep -q "1," && break; sleep 0.05; done
pkill -TERM -f "^$BIN quantize.*term.h5"
wait $mp; rc=$?
if [ $rc -eq 75 ]; then
  q 3 1 "$T/term.h5" "${G[@]}" --batch 1 --resume && same "SIGTERM at np 2 + --resume at np 3, --batch 1" "$T/ref.h5" "$T/term.h5" \
    || bad "resume at np 3: $(tail -2 "$T/term.h5.log")"
else bad "SIGTERM run exited $rc, not 75 (resume not exercised): $(tail -2 "$T/term.log")"; fi

# ---- the other methods and options: np 1 vs np 3 with 2 threads and --batch 2 ----
nv=0
variant() { local name=$1; shift; nv=$((nv + 1))
  q 1 1 "$T/v$nv-1.h5" "$@" || { bad "$name np 1: $(tail -2 "$T/v$nv-1.h5.log")"; return; }
  q 3 2 "$T/v$nv-3.h5" --batch 2 "$@" || { bad "$name np 3: $(tail -2 "$T/v$nv-3.h5.log")"; return; }
  same "$name: np 3 x 2 threads --batch 2" "$T/v$nv-1.h5" "$T/v$nv-3.h5"; }
variant "W3 g64 act-order static groups" --bits 3 --group-size 64 --act-order --static-groups
variant "W4 per-channel act-order mse" --bits 4 --act-order --mse
variant "smooth,cle + act-bits 8" --bits 4 --group-size 128 --equalize smooth,cle --act-bits 8
variant "scale-from-hessian" --bits 3 --group-size 128 --scale-from-hessian
variant "rtn" --method rtn --bits 4 --group-size 128
variant "hqq" --method hqq --bits 3

# ---- a test that cannot fail is a defect: another seed must differ ----
q 1 1 "$T/seed1.h5" "${G[@]}" --seed 1
"$BIN" compare "$T/ref.h5" "$T/seed1.h5" > /dev/null 2>&1 && bad "another seed compared identical" || ok "another calibration seed differs"
finish test_repro
