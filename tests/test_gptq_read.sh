#!/usr/bin/env bash
# hpcq eval and hpcq compare read GPTQ checkpoints (issue 16), on the bundled 5M Llama:
#  1. hpcq's own exports (gptq v1 and gptq_v2; 2, 3, 4, 8 bits; asym RTN and sym GPTQ with
#     act-order; per-module rules: one 8-bit g32 linear among 4-bit ones, one skipped linear): `hpcq eval` of the checkpoint prints the perplexity of the .h5 it came from
#     (the same codes, fp16 scales, zeros and unquantized tensors: identical by construction),
#     `hpcq compare` finds every code, zero and g_idx identical between .h5 and checkpoint and
#     between v1 and v2;
#  2. a checkpoint written by GPTQModel 7.7.0 (tests/data/gptqmodel-sotu-5m-w4, asymmetric
#     v1, made by tools/make_gptqmodel_fixture.sh): `hpcq eval` equals the perplexity that
#     transformers + gptqmodel computed of it (tests/data/fixtures/gptqmodel-sotu-5m-w4-ppl.json)
#     within 1e-3 relative — an independent reader of the same file; hpcq compare of it with
#     hpcq's GPTQ runs (codes differ by construction) and reports the weight distance;
#  3. refusals, each with a message and rc 1 (2 for compare), never a crash: quantizing a GPTQ
#     checkpoint, a missing qzeros, a qweight of no GPTQ width, scales of the wrong dtype,
#     quant_method awq, checkpoint_format marlin, an I32 tensor that is not part of a linear,
#     compare with a full-precision folder.
set -u
BIN=${HQ_BIN:?HQ_BIN (the hpcq executable) is not set}
DATA=${HQ_TESTDATA:?HQ_TESTDATA is not set}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
if ! python3 -c 'import numpy' 2>/dev/null; then
  echo "FAIL: this test needs python3 with numpy (Debian: apt-get install python3-numpy)" >&2
  exit 1
fi
source "$(dirname "$0")/testlib.sh"
hq_tmpdir gptqread
M=$DATA/llama-sotu-5m
TOK=$M/wikitext2-test.i32
pplq() { PPL_TOKENS=$TOK PPL_SEQLEN=128 PPL_WINDOWS=12 PPL_ERR=$T/eval.err ppl "$1" --quiet; }

# ---- 1. hpcq's exports read back ----
cases=("r4:--method rtn --bits 4" "g3:--bits 3 --sym --act-order --calib $M/calib.i32 --nsamples 4 --seqlen 64"
       "g8:--bits 8 --sym --calib $M/calib.i32 --nsamples 4 --seqlen 64" "r2:--method rtn --bits 2 --sym"
       "x4:--method rtn --bits 4 --rule model\.layers\.5\.mlp\.down_proj:bits=8,group_size=32 --rule model\.layers\.0\.self_attn\.q_proj:skip=1")
for c in "${cases[@]}"; do
  n=${c%%:*}
  # shellcheck disable=SC2086
  "$BIN" quantize --model "$M" --out "$T/$n.h5" --quiet --group-size 64 ${c#*:} 2>"$T/$n.qlog" ||
    { bad "quantize $n: $(tail -1 "$T/$n.qlog")"; continue; }
  ref=$(pplq "$T/$n.h5")
  fmts=()
  for f in gptq gptq_v2; do
    "$BIN" export "$T/$n.h5" --format gptq --checkpoint-format $f --out "$T/$n-$f" --quiet 2>"$T/$n-$f.log" &&
      fmts+=("$f")
  done
  [ ${#fmts[@]} -ge 1 ] || { bad "$n: no export"; continue; }
  for f in "${fmts[@]}"; do
    got=$(pplq "$T/$n-$f")
    [ -n "$got" ] && [ "$got" = "$ref" ] && ok "$n $f: hpcq eval of the checkpoint = of the .h5 ($got)" ||
      bad "$n $f: eval of the checkpoint '$got' ($(tail -1 "$T/eval.err")), of the .h5 '$ref'"
    out=$("$BIN" compare "$T/$n.h5" "$T/$n-$f" 2>&1) && echo "$out" | grep -q '^total: 1.000000 of' &&
      ok "$n $f: compare .h5 vs checkpoint: all identical" || bad "$n $f: compare: $(echo "$out" | tail -2)"
  done
  if [ ${#fmts[@]} = 2 ]; then
    "$BIN" compare "$T/$n-gptq" "$T/$n-gptq_v2" >"$T/cmp.txt" 2>&1 && ok "$n: compare v1 vs v2 checkpoints: identical" ||
      bad "$n: compare v1 vs v2: $(tail -2 "$T/cmp.txt")"
  fi
done
# the check can fail: another result against the checkpoint
"$BIN" compare "$T/g8.h5" "$T/r4-gptq_v2" >/dev/null 2>&1
[ $? -ne 0 ] && ok "compare of two different results fails" || bad "compare of different results passed"

# the export's serving warnings: none for symmetric 8-bit v1 (vLLM Marlin, GPTQModel, transformers
# all take it), the Marlin / v2 / GPTQModel ones for asymmetric 4-bit v2
"$BIN" export "$T/g8.h5" --format gptq --out "$T/w8" 2>"$T/w8.log" && ! grep -q warning "$T/w8.log" &&
  ok "export sym 8-bit v1: no serving warning" || bad "export sym 8-bit v1: $(cat "$T/w8.log")"
"$BIN" export "$T/r4.h5" --format gptq --checkpoint-format gptq_v2 --out "$T/w4" 2>"$T/w4.log"
n=$(grep -c "warning" "$T/w4.log")
[ "$n" = 3 ] && grep -q "Marlin" "$T/w4.log" && grep -q "off by one" "$T/w4.log" && grep -q "GPTQModel.load" "$T/w4.log" &&
  ok "export asym 4-bit v2: 3 serving warnings (Marlin, v2 in vLLM, GPTQModel)" || bad "export asym v2: $n warnings: $(cat "$T/w4.log")"
# symmetric 8-bit, but rules give two linears 3 bits: the Marlin warning names the first of them
"$BIN" quantize --model "$M" --out "$T/m3.h5" --quiet --method rtn --bits 8 --sym --group-size 64 \
  --rule 'model\.layers\.[45]\.mlp\.down_proj:bits=3' 2>"$T/m3.qlog" || bad "quantize m3: $(tail -1 "$T/m3.qlog")"
"$BIN" export "$T/m3.h5" --format gptq --out "$T/m3" 2>"$T/m3.log"
if [ "$(grep -c "warning" "$T/m3.log")" = 2 ] &&
   grep -q "warning: 3-bit model.layers.4.mlp.down_proj (and 1 more linears) does not run in vLLM's Marlin" "$T/m3.log" &&
   grep -q "quantization_config.dynamic" "$T/m3.log"; then
  ok "export sym 8-bit with 3-bit rules: the Marlin warning names the rule's linears, plus the rules warning"
else
  bad "export sym 8-bit with 3-bit rules: $(cat "$T/m3.log")"
fi

# ---- 2. a checkpoint GPTQModel wrote ----
G=$DATA/gptqmodel-sotu-5m-w4
want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['perplexity'])" \
  "$DATA/fixtures/gptqmodel-sotu-5m-w4-ppl.json")
got=$("$BIN" eval --model "$G" --tokens "$TOK" --seqlen 256 --max-windows 40 --json --quiet |
  sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p')
if awk -v a="$got" -v b="$want" 'BEGIN { r = (a - b) / b; exit !(a != "" && r <= 1e-3 && r >= -1e-3) }'; then
  ok "GPTQModel's checkpoint: hpcq eval $got, transformers+gptqmodel $want (within 1e-3)"
else
  bad "GPTQModel's checkpoint: hpcq eval '$got', transformers+gptqmodel $want"
fi
"$BIN" quantize --model "$M" --out "$T/g4.h5" --quiet --bits 4 --group-size 128 --calib "$M/calib.i32" \
  --nsamples 8 --seqlen 128 2>"$T/g4.qlog" || bad "quantize g4: $(tail -1 "$T/g4.qlog")"
out=$("$BIN" compare "$T/g4.h5" "$G" --min-equal 0 --weight-rtol 0.5 2>&1)
rc=$?
wr=$(echo "$out" | awk 'NR > 1 && /^model/ { print $7; exit }')
[ $rc = 0 ] && awk -v w="$wr" 'BEGIN { exit !(w > 0 && w < 0.5) }' &&
  ok "compare hpcq GPTQ vs GPTQModel's: weight_rdiff $wr of the first linear (codes differ by construction)" ||
  bad "compare hpcq vs GPTQModel: rc $rc, $(echo "$out" | sed -n '2p;$p')"
"$BIN" compare "$T/g4.h5" "$G" --min-equal 0 --weight-rtol 1e-6 >/dev/null 2>&1
[ $? = 1 ] && ok "--weight-rtol fails when the weights differ" || bad "--weight-rtol 1e-6 passed"

# ---- 3. refusals ----
expect_fail "quantize of a GPTQ checkpoint" "already a GPTQ checkpoint" \
  "$BIN" quantize --model "$G" --out "$T/x.h5" --method rtn --quiet
# edit(): a copy of $T/r4-gptq_v2 with one change made by python (numpy only)
edit() { # name python-statements (on h: header dict, d: bytearray of the data, cfg: config dict)
  local d=$T/bad-$1
  rm -rf "$d"; cp -r "$T/r4-gptq_v2" "$d"
  python3 - "$d" "$2" <<'EOF'
import json, struct, sys
d, code = sys.argv[1], sys.argv[2]
raw = open(f"{d}/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n]); data = bytearray(raw[8 + n:])
cfg = json.load(open(f"{d}/config.json"))
L = "model.layers.0.self_attn.q_proj"
exec(code)
hb = json.dumps(h).encode()
open(f"{d}/model.safetensors", "wb").write(struct.pack("<Q", len(hb)) + hb + bytes(data))
json.dump(cfg, open(f"{d}/config.json", "w"))
EOF
}
EV=("$BIN" eval --tokens "$TOK" --seqlen 64 --max-windows 1 --quiet --model)
edit noqz 'del h[L + ".qzeros"]'
expect_fail "missing qzeros" "has a qweight but no qzeros" "${EV[@]}" "$T/bad-noqz"
edit rows 'h[L + ".qweight"]["shape"][0] = 5; h[L + ".qweight"]["data_offsets"][1] = h[L + ".qweight"]["data_offsets"][0] + 5 * 4 * h[L + ".qweight"]["shape"][1]'
expect_fail "qweight of 5 rows" "no GPTQ width" "${EV[@]}" "$T/bad-rows"
edit scdt 'h[L + ".scales"]["dtype"] = "BF16"'
expect_fail "BF16 scales" "needs F16" "${EV[@]}" "$T/bad-scdt"
edit awq 'cfg["quantization_config"]["quant_method"] = "awq"'
expect_fail "quant_method awq" "quant_method 'awq'" "${EV[@]}" "$T/bad-awq"
edit marlin 'cfg["quantization_config"]["checkpoint_format"] = "marlin"'
expect_fail "checkpoint_format marlin" "checkpoint_format 'marlin'" "${EV[@]}" "$T/bad-marlin"
edit i32 'h["model.norm.weight"]["dtype"] = "I32"; h["model.norm.weight"]["shape"] = [h["model.norm.weight"]["shape"][0] // 2]'
expect_fail "an I32 norm" "is I32, not a floating-point tensor" "${EV[@]}" "$T/bad-i32"
expect_fail "compare with a full-precision folder" "is a full-precision model" \
  "$BIN" compare "$T/r4.h5" "$M"
finish test_gptq_read
