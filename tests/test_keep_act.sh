#!/usr/bin/env bash
# Each group's input computed once (README "How it works"): with the activations kept between
# a block's groups (keep_activations in the JSON summary) the result equals, exactly, the run
# that recomputes every group's input from the block input (--keep-activations-mib 0) - for
# plain GPTQ with act-order, with activation quantization and smoothing (their inputs change
# between groups), and at 1 and 3 ranks. Over the budget the run says so once and recomputes.
set -u
. "$(dirname "$0")/testlib.sh"
hq_tmpdir keep_act
Q=(quantize --model "$M" --calib "$M/calib.i32" --nsamples 6 --seqlen 128 --bits 4 --act-order)
kept_of() { grep -o '"keep_activations": [a-z]*' "$1" | sed 's/.*: //'; }
same() { if "$BIN" compare "$2" "$3" > "$T/cmp" 2>&1; then ok "$1"; else bad "$1: $(tail -1 "$T/cmp")"; fi; }
run() { # name np args...
  local name=$1 np=$2; shift 2
  "$MPIEXEC" -np "$np" "$BIN" "${Q[@]}" --out "$T/$name.h5" --json-summary "$T/$name.json" "$@" \
    2> "$T/$name.log" || bad "$name run: $(tail -2 "$T/$name.log")"
}

for v in "plain:" "a8-smooth:--act-bits 8 --equalize smooth"; do
  name=${v%%:*}
  read -r -a extra <<< "${v#*:}"
  run "$name.kept" 3 "${extra[@]}" --quiet
  run "$name.off" 3 "${extra[@]}" --quiet --keep-activations-mib 0
  [ "$(kept_of "$T/$name.kept.json")" = true ] && ok "$name: activations kept by default" \
    || bad "$name: keep_activations $(kept_of "$T/$name.kept.json")"
  [ "$(kept_of "$T/$name.off.json")" = false ] && ok "$name: --keep-activations-mib 0 turns it off" \
    || bad "$name: mib 0 keep_activations $(kept_of "$T/$name.off.json")"
  same "$name: kept = recomputed (np 3)" "$T/$name.kept.h5" "$T/$name.off.h5"
done
run one 1 --quiet
same "np 1 kept = np 3 recomputed" "$T/one.h5" "$T/plain.off.h5"

# 4 windows x 128 tokens x (256 + 768) floats = 2 MiB per rank: over a budget of 1 MiB
run small 2 --keep-activations-mib 1 --nsamples 8
n=$(grep -c 'are not kept (over --keep-activations-mib)' "$T/small.log")
[ "$n" -eq 1 ] && ok "over budget: said once" || bad "over budget: $n notes: $(head -3 "$T/small.log")"
[ "$(kept_of "$T/small.json")" = false ] && ok "over budget: not kept" || bad "over budget: keep_activations $(kept_of "$T/small.json")"
run small_off 2 --keep-activations-mib 0 --nsamples 8
same "over budget = recomputed" "$T/small.h5" "$T/small_off.h5"
grep -q 'are not kept' "$T/small_off.log" && bad "--keep-activations-mib 0 printed a note" || ok "--keep-activations-mib 0: no note"
finish test_keep_act
