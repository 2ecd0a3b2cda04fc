#!/usr/bin/env bash
# hpcq layer on the bundled model: real inputs of block 1 mlp.down_proj through the forward,
# RTN vs GPTQ table; every GPTQ proxy loss must be below RTN's on the same grid. Then option
# errors must fail cleanly with a message.
set -euo pipefail
: "${HQ_BIN:?}" "${HQ_TESTDATA:?}"
M="$HQ_TESTDATA/llama-sotu-5m"
out=$("$HQ_BIN" layer --model "$M" --calib "$M/calib.i32" --block 1 --linear down_proj \
      --nsamples 8 --seqlen 128 --seed 3)
echo "$out"
nrtn=$(echo "$out" | grep -c '^rtn ' || true)
ngptq=$(echo "$out" | grep -c '^gptq ' || true)
[ "$nrtn" -eq 3 ] && [ "$ngptq" -eq 6 ] || { echo "FAIL: expected 3 rtn and 6 gptq rows"; exit 1; }
# column 7 = ratio to RTN
bad=$(echo "$out" | awk '$1=="gptq" && !($7 > 0 && $7 < 1) {print}')
[ -z "$bad" ] || { echo "FAIL: GPTQ not below RTN: $bad"; exit 1; }
# one configuration only
out=$("$HQ_BIN" layer --model "$M" --calib "$M/calib.i32" --linear self_attn.q_proj --bits 3 \
      --group-size 64 --sym --act-order --nsamples 4 --seqlen 64)
echo "$out"
[ "$(echo "$out" | grep -c '^gptq ')" -eq 1 ] || { echo "FAIL: one gptq row expected"; exit 1; }
echo "$out" | grep -q '^gptq .* 3  g64 *yes  yes' || { echo "FAIL: config not echoed"; exit 1; }
# errors: exit status non-zero and a message naming the problem
set +e
msg=$("$HQ_BIN" layer --model "$M" --calib "$M/calib.i32" --linear nope 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$msg" | grep -q "unknown --linear 'nope'" || { echo "FAIL: bad linear: $msg"; exit 1; }
msg=$("$HQ_BIN" layer --model "$M" --calib "$M/calib.i32" --linear q_proj --block 6 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$msg" | grep -q "has 6 blocks" || { echo "FAIL: bad block: $msg"; exit 1; }
msg=$("$HQ_BIN" layer --model "$M" --linear q_proj 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$msg" | grep -q "required" || { echo "FAIL: missing calib: $msg"; exit 1; }
echo "test_gptq_layer: OK"
