#!/usr/bin/env bash
# Refactoring proof: two hpcq binaries must give the same results on the bundled model.
#   tools/same-results.sh OLD_BIN NEW_BIN [WORKDIR]
# For each method below both binaries quantize with the same arguments (np 2); the results
# must compare identical (hpcq compare: codes, zeros, g_idx, scales and every statistic), the
# GPTQ safetensors exports must be byte-identical, and `hpcq eval` of each result must print
# the same perplexity (all digits of --json). Exit 0 only when everything is the same.
set -u
OLD=$1 NEW=$2
W=${3:-$(mktemp -d /tmp/hq_same.XXXXXX)}
M=${HQ_TESTDATA:-tests/data}/llama-sotu-5m
MPIEXEC=${MPIEXEC:-mpiexec}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
mkdir -p "$W"
COMMON=(--model "$M" --calib "$M/calib.i32" --nsamples 16 --seqlen 128 --quiet)
EVAL=(--tokens "$M/wikitext2-test.i32" --seqlen 128 --max-windows 8 --json --quiet)
fail=0
ppl_of() { grep -o '"nll_mean":[^,]*,"perplexity":[^,]*' "$1" | sed 's/.*"perplexity"://'; }
note() { printf '%-34s %s\n' "$1" "$2"; }
run_one() { # name args...
  local name=$1; shift
  for v in old new; do
    local bin=$OLD; [ $v = new ] && bin=$NEW
    rm -rf "$W/$name.$v.h5" "$W/$name.$v.ckpt"
    "$MPIEXEC" -np 2 "$bin" quantize "${COMMON[@]}" --out "$W/$name.$v.h5" "$@" 2> "$W/$name.$v.log" \
      || { note "$name" "FAIL: $v quantize: $(tail -1 "$W/$name.$v.log")"; fail=1; return; }
    "$bin" eval --model "$W/$name.$v.h5" "${EVAL[@]}" > "$W/$name.$v.eval" 2>> "$W/$name.$v.log"
    "$bin" export "$W/$name.$v.h5" --format gptq --out "$W/$name.$v.ckpt" --quiet 2>> "$W/$name.$v.log"
  done
  local r=""
  "$NEW" compare "$W/$name.old.h5" "$W/$name.new.h5" > "$W/$name.cmp" 2>&1 && r="h5 identical" \
    || { r="h5 DIFFERS ($(tail -1 "$W/$name.cmp"))"; fail=1; }
  if [ -s "$W/$name.new.eval" ] && [ "$(ppl_of "$W/$name.old.eval")" = "$(ppl_of "$W/$name.new.eval")" ]; then
    r="$r, eval identical (ppl $(ppl_of "$W/$name.new.eval"))"
  else r="$r, eval DIFFERS"; fail=1; fi
  if [ -d "$W/$name.new.ckpt" ] && diff -r -q "$W/$name.old.ckpt" "$W/$name.new.ckpt" > /dev/null; then
    r="$r, export byte-identical"
  else r="$r, export DIFFERS"; fail=1; fi
  note "$name" "$r"
}
run_one gptq-w4g128 --bits 4 --group-size 128
run_one gptq-w3g64-actorder-static --bits 3 --group-size 64 --act-order --static-groups
run_one gptq-w4-perchannel-mse --bits 4 --act-order --mse
run_one gptq-scale-from-hessian --bits 3 --group-size 128 --scale-from-hessian
run_one rtn-w4g128 --method rtn --bits 4 --group-size 128
run_one hqq-w3 --method hqq --bits 3
run_one equalize-smooth-cle --bits 4 --group-size 128 --equalize smooth,cle
run_one act-bits-8 --bits 4 --group-size 128 --act-bits 8
# the unquantized model, activations streamed in batches of 3 windows, A8 fake quantization
for v in old new; do bin=$OLD; [ $v = new ] && bin=$NEW
  "$bin" eval --model "$M" "${EVAL[@]}" --batch-windows 3 --chunk-tokens 128 --act-bits 8 > "$W/fp.$v.eval" 2> "$W/fp.$v.log"; done
if [ -s "$W/fp.new.eval" ] && [ "$(ppl_of "$W/fp.old.eval")" = "$(ppl_of "$W/fp.new.eval")" ]; then
  note "fp eval 3 batches A8" "eval identical (ppl $(ppl_of "$W/fp.new.eval"))"
else note "fp eval 3 batches A8" "eval DIFFERS"; fail=1; fi
[ $fail -eq 0 ] && echo "same results: all identical ($W)" || echo "same results: DIFFERENCES ($W)"
exit $fail
