#!/usr/bin/env bash
# Mixtures of experts through hpcq quantize (docs/readme/moe.md), on the tiny random Mixtral and
# Qwen3-MoE checkpoints of tools/make_arch_fixtures.py (their forward equals transformers':
# test_forward):
#  1. np 1, 2, 3 (and other --batch) give identical files, for GPTQ with and without act-order
#  2. the expert Hessians, checked from outside: tools/moe_hessian_check.py recomputes in numpy
#     (float64) each expert's routed tokens and GPTQ's proxy loss tr(dW H dWᵀ) with H from the
#     tokens routed to it (gate/up: the MLP input; down: its activations with the quantized
#     gate/up) or, for the block fallback, from all tokens; they must equal the file's
#  3. the fallbacks: --moe-min-tokens above some experts' counts gives them "block" or "rtn"
#     (no proxy losses), recorded per expert and summed up by inspect (text and JSON); the
#     token counts of a block add up to windows x seqlen x top_k; inspect --plot draws the
#     others and says that the RTN-fallback experts are left out of the loss panel
#  4. SIGTERM after block 1 of 3, --resume at another rank count = the uninterrupted run
#  5. export (gptq v1 and v2): hpcq compare / eval read the checkpoint back as the .h5;
#     tools/gptq_reference_loader.py (numpy, with the published MoE
#     routing) dequantizes every expert to hpcq's weights and gets hpcq's logits
#  6. RTN without calibration (no routing: token counts -1); a result missing one expert's
#     qweight is refused by eval, naming it
#  7. the trained Qwen3-MoE of tools/train_tiny_moe.py: np 1 = np 3, inspect's routing summary
set -u
source "$(dirname "$0")/testlib.sh"
hq_tmpdir moe
D=$HQ_TESTDATA
CAL=$D/stories260K-hf/sotu-calib.tok512.i32
TOK=$D/stories260K-hf/wikitext2-test.tok512.i32
MIX=$D/tiny-mixtral
Q3M=$D/tiny-qwen3-moe
VIEW=$HQ_BUILD/tests/export_hpcq_view
LOADER=$HQ_SRC/tools/gptq_reference_loader.py
q() { # NAME NP MODEL ARGS...: quantize into $T/NAME.h5
  local n=$1 np=$2 m=$3
  shift 3
  timeout 300 "$MPIEXEC" -np "$np" "$BIN" quantize --model "$m" --out "$T/$n.h5" --quiet "$@" 2> "$T/$n.log" ||
    bad "quantize $n (np $np): $(tail -2 "$T/$n.log")"
}
same() { if "$BIN" compare "$2" "$3" > "$T/cmp" 2>&1; then ok "$1: $(tail -1 "$T/cmp")"; else bad "$1: $(tail -2 "$T/cmp")"; fi; }
S=(--calib "$CAL" --nsamples 12 --seqlen 64 --group-size 32)

# ---- 1. rank counts and batches ----
for m in MIX Q3M; do
  for ao in "" --act-order; do
    q "$m${ao}1" 1 "${!m}" "${S[@]}" $ao
    q "$m${ao}2" 2 "${!m}" "${S[@]}" $ao --batch 5
    q "$m${ao}3" 3 "${!m}" "${S[@]}" $ao --batch 1
    same "$m $ao np 2 (batch 5) = np 1" "$T/$m${ao}1.h5" "$T/$m${ao}2.h5"
    same "$m $ao np 3 (batch 1) = np 1" "$T/$m${ao}1.h5" "$T/$m${ao}3.h5"
  done
done
p=$("$BIN" eval --model "$T/Q3M1.h5" --tokens "$TOK" --seqlen 64 --max-windows 16 2>/dev/null | sed -n 's/^perplexity \([0-9.]*\).*/\1/p')
[ -n "$p" ] && ok "the quantized Qwen3-MoE evaluates: perplexity $p" || bad "eval of the Qwen3-MoE result"

# ---- 2. the expert Hessians from outside ----
python3 -c "import numpy as np, sys; np.fromfile(sys.argv[1], dtype='<i4')[5000:5256].tofile(sys.argv[2])" "$CAL" "$T/one.i32"
for m in MIX Q3M; do
  q "hc$m" 2 "${!m}" --calib "$T/one.i32" --nsamples 2 --seqlen 256 --group-size 32 --moe-min-tokens 40
  if "$VIEW" "$T/hc$m.h5" "$T/one.i32" 1 256 "$T/hc$m.view" > /dev/null 2>&1 &&
     python3 "$HQ_SRC/tools/moe_hessian_check.py" "${!m}" "$T/hc$m.h5" "$T/hc$m.view" "$T/one.i32" 256 2 > "$T/hc$m.txt" 2>&1; then
    ok "$m expert Hessians (numpy): $(grep -c fallback "$T/hc$m.txt") blocks, $(tail -1 "$T/hc$m.txt")"
  else bad "$m expert Hessians: $(tail -5 "$T/hc$m.txt")"; fi
done
grep -q "block 2: 8 experts, 256 tokens, [1-9]" "$T/hcQ3M.txt" && ok "the check covered block-fallback experts" ||
  bad "no expert took the block fallback in the Hessian check: $(cat "$T/hcQ3M.txt")"

# ---- 3. fallbacks ----
for fb in block rtn; do
  q "fb$fb" 2 "$MIX" "${S[@]}" --moe-min-tokens 200 --moe-fallback $fb
  q "fb${fb}3" 3 "$MIX" "${S[@]}" --moe-min-tokens 200 --moe-fallback $fb
  same "fallback $fb: np 3 = np 2" "$T/fb$fb.h5" "$T/fb${fb}3.h5"
  "$BIN" inspect "$T/fb$fb.h5" > "$T/fb$fb.txt"
  n=$(grep -c "w1 .* fallback $fb" "$T/fb$fb.txt")
  sum=$(awk '$1 ~ /^model\.layers\.0\..*\.w1$/ { for (i = 1; i < NF; i++) if ($i == "tokens") s += $(i + 1) } END { print s + 0 }' "$T/fb$fb.txt")
  [ "$sum" = $((12 * 64 * 2)) ] && ok "block 0's routed tokens add up to 12 x 64 x top-2 = $sum" || bad "block 0's tokens add up to $sum"
  if [ "$n" -ge 1 ] && grep -q "experts: 8; .* $n took the fallback" "$T/fb$fb.txt"; then
    ok "--moe-fallback $fb: $n experts under 200 tokens; $(tail -1 "$T/fb$fb.txt")"
  else bad "--moe-fallback $fb: $n experts, $(tail -1 "$T/fb$fb.txt")"; fi
done
grep "fallback rtn" "$T/fbrtn.txt" | head -1 | grep -q " nan " && ok "rtn fallback: no proxy losses (nan)" || bad "rtn fallback losses: $(grep 'fallback rtn' "$T/fbrtn.txt" | head -1)"
if command -v gnuplot > /dev/null; then
  "$BIN" inspect "$T/fbrtn.h5" --plot "$T/fbrtn.png" > /dev/null 2> "$T/fbplot.err" &&
    [ "$(head -c 8 "$T/fbrtn.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] &&
    grep -q "linears have no loss ratio .* left out of the loss panel" "$T/fbplot.err" &&
    ok "inspect --plot, RTN-fallback experts: $(head -1 "$T/fbplot.err")" || bad "inspect --plot of a MoE: $(cat "$T/fbplot.err")"
fi
"$BIN" inspect --json "$T/fbblock.h5" | python3 -c "
import json, sys; d = json.load(sys.stdin); m = d['moe']
e = [l for l in d['linears'] if l['name'].endswith('.w1')]
assert m['experts'] == 8 and m['fallback'] == sum(l['moe_fallback'] == 'block' for l in e) >= 1, m
assert m['tokens_min'] == min(l['moe_tokens'] for l in e) and m['tokens_max'] == max(l['moe_tokens'] for l in e), m
print(m)" > "$T/js.txt" 2>&1 && ok "inspect --json: $(cat "$T/js.txt")" || bad "inspect --json moe: $(cat "$T/js.txt")"

# ---- 4. SIGTERM and resume ----
R=(quantize --model "$Q3M" "${S[@]}" --nsamples 48)
"$MPIEXEC" -np 2 "$BIN" "${R[@]}" --out "$T/int.h5" 2> "$T/int.log" &
pid=$!
term_caught "^$BIN quantize.*$T/int.h5" 2
wait $pid; rc=$?
[ $rc -eq 75 ] && grep -q "after block 1 of 3" "$T/int.log" && ok "SIGTERM: exit 75 after block 1 of 3" ||
  bad "SIGTERM: exit $rc: $(grep -v '^block' "$T/int.log" | tail -2)"
timeout 300 "$MPIEXEC" -np 3 "$BIN" "${R[@]}" --out "$T/int.h5" --resume --quiet 2> "$T/int.r.log" || bad "resume: $(tail -2 "$T/int.r.log")"
q ref 1 "$Q3M" "${S[@]}" --nsamples 48
same "SIGTERM, --resume at 3 ranks = the uninterrupted run" "$T/ref.h5" "$T/int.h5"

# ---- 5. export + the independent loader ----
ppl_of() { PPL_TOKENS=$TOK PPL_SEQLEN=64 PPL_WINDOWS=4 ppl "$1" --quiet; }
CHECK=0
for m in MIX Q3M; do
  "$VIEW" "$T/${m}1.h5" "$TOK" 1 64 "$T/$m.view" > /dev/null 2>&1 || bad "view $m"
  for f in gptq gptq_v2; do
    "$BIN" export "$T/${m}1.h5" --checkpoint-format $f --out "$T/$m.$f" --quiet 2> "$T/$m.$f.log" || { bad "export $m $f: $(cat "$T/$m.$f.log")"; continue; }
    if python3 "$LOADER" check --source "${!m}" --case "$T/$m.$f" "$T/$m.view" $f 4 0 > "$T/$m.$f.txt" 2>&1; then
      ok "reference loader $m $f: $(cut -c1-220 "$T/$m.$f.txt" | tail -1)"; CHECK=$((CHECK + 1))
    else bad "reference loader $m $f: $(tail -3 "$T/$m.$f.txt")"; fi
    # hpcq reads the MoE checkpoint back: the same codes as the .h5, the same perplexity
    "$BIN" compare "$T/${m}1.h5" "$T/$m.$f" > "$T/$m.$f.cmp" 2>&1 && grep -q "^total: 1.000000 of" "$T/$m.$f.cmp" &&
      ok "compare $m .h5 vs its $f checkpoint: $(tail -1 "$T/$m.$f.cmp")" || bad "compare $m $f: $(tail -2 "$T/$m.$f.cmp")"
    p_ck=$(ppl_of "$T/$m.$f") p_h5=$(ppl_of "$T/${m}1.h5")
    [ -n "$p_ck" ] && [ "$p_ck" = "$p_h5" ] && ok "eval of the $m $f checkpoint = eval of its .h5 ($p_ck)" ||
      bad "eval of the $m $f checkpoint: '$p_ck', of the .h5 '$p_h5'"
  done
done
grep -q "block_sparse_moe.gate.weight" "$T/MIX.gptq/model.safetensors" && ! grep -q "block_sparse_moe.gate.qweight" "$T/MIX.gptq/model.safetensors" &&
  ok "the router is exported unquantized" || bad "router in the export"

# ---- 6. RTN without calibration; a damaged result ----
q rtn 2 "$MIX" --method rtn --group-size 32
"$BIN" inspect "$T/rtn.h5" | grep -q "experts: 8 (no calibration: no routing)" && ok "rtn: experts without routing" || bad "rtn inspect: $("$BIN" inspect "$T/rtn.h5" | tail -1)"
cp "$T/MIX1.h5" "$T/dmg.h5"
python3 -c "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); del f['linears/model.layers.1.block_sparse_moe.experts.2.w2/qweight']" "$T/dmg.h5"
expect_fail "eval of a result missing an expert" "model.layers.1.block_sparse_moe.experts.2.w2" \
  "$BIN" eval --model "$T/dmg.h5" --tokens "$TOK" --seqlen 64 --max-windows 2
# ---- 7. the trained MoE (real routing, tools/train_tiny_moe.py) ----
TM=$D/qwen3moe-sotu-2m
TS=(--calib "$D/llama-sotu-5m/calib.i32" --nsamples 12 --seqlen 128)
q tm1 1 "$TM" "${TS[@]}"
q tm3 3 "$TM" "${TS[@]}" --batch 2
same "trained Qwen3-MoE: np 3 (batch 2) = np 1" "$T/tm1.h5" "$T/tm3.h5"
"$BIN" inspect "$T/tm1.h5" | tail -1 | grep -qE "^experts: 32; calibration tokens routed per expert: min [0-9]+, median [0-9.]+, max [0-9]+; [0-9]+ took the fallback$" &&
  ok "trained Qwen3-MoE: $("$BIN" inspect "$T/tm1.h5" | tail -1)" || bad "trained MoE inspect: $("$BIN" inspect "$T/tm1.h5" | tail -1)"
finish test_moe
