#!/usr/bin/env bash
# hpcq quantize --rule / --rules (issue 16: per-module rules) on the bundled 5M Llama (6 blocks),
# small sizes (~30 s on 2 cores):
#  a. a bits=8 rule gives model.layers.5.mlp.down_proj 8-bit codes and nothing else (every other
#     linear 4-bit), a group_size rule gives q/k of block 0 groups of 32, a skip rule keeps
#     block 0's up_proj unquantized (a /tensors weight, no /linears entry, inspect lists it);
#     np 1 and np 2 give identical results (hpcq compare), so does a --rules FILE of the same
#     rules, and a run stopped by SIGTERM and resumed (the skipped linear replayed);
#  b. every linear skipped: the .h5's perplexity equals the full-precision model's exactly;
#  c. export: quantization_config (config.json and quantize_config.json) carries "dynamic" with
#     one "+:"/"-:" key per rule in order; tools/gptq_reference_loader.py, which honours
#     "dynamic" like GPTQModel (first re.match wins), loads the mixed-bit checkpoint, gets hpcq's
#     dequantized weights bit for bit, the skipped weight byte-identical to the source, and
#     hpcq's logits;
#  d. refusals before any work (exit 2, no file): bad regex, Python-only syntax, unknown key,
#     bad bits / group size, per-module method, skip with other keys, no ':', a pattern that
#     matches nothing (with an example name), a rule shadowed by an earlier one, a bad line of
#     a --rules file (named FILE:LINE), skip with --equalize;
#     --resume with other rules (exit 1, the rules named in the difference).
set -u
DATA=${HQ_TESTDATA:-tests/data}
SRC=${HQ_SRC:-.}
BUILD=${HQ_BUILD:-build}
VIEW=$BUILD/tests/export_hpcq_view
LOADER=$SRC/tools/gptq_reference_loader.py
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
source "$(dirname "$0")/testlib.sh"
hq_tmpdir rules
t_start=$(date +%s)
TOK=$M/wikitext2-test.i32
Q=(--model "$M" --calib "$M/calib.i32" --nsamples 4 --seqlen 64 --quiet)
R8='model\.layers\.5\.mlp\.down_proj:bits=8'
RG='model\.layers\.0\.self_attn\.[qk]_proj:group_size=32'
RS='model\.layers\.0\.mlp\.up_proj:skip=1'
RULES=(--rule "$R8" --rule "$RG" --rule "$RS")
run() { timeout 120 "$MPIEXEC" -np "$1" "$BIN" quantize "${@:2}"; }
bits_of() { attr "$1" "$2" bits; }
gs_of() { attr "$1" "$2" group_size; }

# ---- a. the rules' linears, np 1 == np 2, --rules FILE ----
for np in 1 2; do
  run $np "${Q[@]}" "${RULES[@]}" --out "$T/np$np.h5" 2>"$T/np$np.log" || bad "np $np: $(tail -3 "$T/np$np.log")"
done
L5=model.layers.5.mlp.down_proj
if [ "$(bits_of "$T/np1.h5" $L5)" = 8 ] && [ "$(bits_of "$T/np1.h5" model.layers.4.mlp.down_proj)" = 4 ]; then
  ok "bits=8 rule: $L5 has 8 bits, block 4's down_proj 4"
else bad "bits of $L5: $(bits_of "$T/np1.h5" $L5), block 4: $(bits_of "$T/np1.h5" model.layers.4.mlp.down_proj)"; fi
"$BIN" inspect "$T/np1.h5" >"$T/insp.txt" 2>&1
n4=$(awk '$1 ~ /^model\.layers/ && $3 == 4' "$T/insp.txt" | wc -l)
n8=$(awk '$1 ~ /^model\.layers/ && $3 == 8 {print $1}' "$T/insp.txt")
[ "$n4" = 40 ] && [ "$n8" = "$L5" ] && ok "inspect: 40 linears at 4 bits, only $n8 at 8" ||
  bad "inspect: $n4 linears at 4 bits (want 40), 8-bit: $n8"
# its 8-bit codes: qweight [in*8/32, out] = [192, 256] (4-bit down_proj: [96, 256])
h5dump -H -d "/linears/$L5/qweight" "$T/np1.h5" | grep -q "( 192, 256 )" && ok "$L5 qweight is [192, 256] (8-bit packing)" ||
  bad "$L5 qweight shape: $(h5dump -H -d "/linears/$L5/qweight" "$T/np1.h5" | grep DATASPACE)"
g0=$(gs_of "$T/np1.h5" model.layers.0.self_attn.q_proj)/$(gs_of "$T/np1.h5" model.layers.0.self_attn.k_proj)/$(gs_of "$T/np1.h5" model.layers.0.self_attn.v_proj)
[ "$g0" = 32/32/128 ] && ok "group_size rule: block 0 q/k/v groups $g0" || bad "block 0 q/k/v groups $g0, want 32/32/128"
if ! h5ls "$T/np1.h5/linears/model.layers.0.mlp.up_proj" >/dev/null 2>&1 &&
   h5ls "$T/np1.h5/tensors" 2>/dev/null | grep -q "model.layers.0.mlp.up_proj.weight" &&
   grep -q "skipped by a rule.*model.layers.0.mlp.up_proj" "$T/insp.txt"; then
  ok "skip rule: block 0 up_proj stored as /tensors weight, inspect lists it"
else bad "skipped up_proj: $(h5ls "$T/np1.h5/tensors" | grep up_proj; tail -2 "$T/insp.txt")"; fi
h5dump -a /rules "$T/np1.h5" | grep -q 'skip=1' && ok "root attribute rules recorded" || bad "no rules attribute"
if "$BIN" compare "$T/np1.h5" "$T/np2.h5" >"$T/cmp.txt" 2>&1; then ok "np 2 vs np 1: $(tail -1 "$T/cmp.txt")"
else bad "np 2 vs np 1 differ: $(tail -3 "$T/cmp.txt")"; fi
printf '# the same rules from a file\n%s\n\n  %s   # group size\n%s\n' "$R8" "$RG" "$RS" >"$T/rules.txt"
run 1 "${Q[@]}" --rules "$T/rules.txt" --out "$T/file.h5" 2>"$T/file.log" || bad "--rules FILE: $(tail -2 "$T/file.log")"
"$BIN" compare "$T/np1.h5" "$T/file.h5" >"$T/cmpf.txt" 2>&1 && ok "--rules FILE equals the --rule options" ||
  bad "--rules FILE differs: $(tail -2 "$T/cmpf.txt")"
p1=$(ppl "$T/np1.h5")
[ -n "$p1" ] && ok "hpcq eval of the mixed result: ppl $p1" || bad "eval of the mixed result failed"

# --resume: a run stopped by SIGTERM at its first step resumes with the same rules to the same
# result (the skipped linear replayed from the model); other rules are refused
"$BIN" quantize "${Q[@]}" "${RULES[@]}" --out "$T/part.h5" 2>"$T/part.log" &
qpid=$!
term_caught "quantize.*$T/part.h5" 1
wait $qpid
rc=$?
[ $rc = 75 ] && ok "SIGTERM: exit 75, resumable" || bad "SIGTERM run exit $rc: $(tail -n 2 "$T/part.log")"
expect "--resume with other rules" 1 "cannot resume" "$BIN" quantize "${Q[@]}" --rule "$R8" --out "$T/part.h5" --resume
grep -q 'rules: file' "$T/err.txt" && ok "the difference names the rules" || bad "resume diff: $(cat "$T/err.txt")"
if run 1 "${Q[@]}" "${RULES[@]}" --out "$T/part.h5" --resume 2>"$T/res.log" &&
   "$BIN" compare "$T/np1.h5" "$T/part.h5" >"$T/cmpr.txt" 2>&1; then ok "--resume with the same rules: identical"
else bad "resume with the rules: $(tail -n 2 "$T/res.log" "$T/cmpr.txt")"; fi

# ---- b. every linear skipped: exactly the full-precision model ----
if run 1 --model "$M" --method rtn --quiet --rule 'model\.layers\.:skip=1' --out "$T/all.h5" 2>"$T/all.log"; then
  pa=$(ppl "$T/all.h5") pf=$(ppl "$M")
  [ -n "$pa" ] && [ "$pa" = "$pf" ] && ok "all linears skipped: ppl $pa == FP $pf" || bad "all skipped: ppl '$pa' vs FP '$pf'"
  expect_fail "export of a result without quantized linears" "no quantized linear" "$BIN" export "$T/all.h5" --format gptq --out "$T/allx"
else bad "all-skip run: $(tail -2 "$T/all.log")"; fi

# ---- c. export: "dynamic", the reference loader ----
if "$BIN" export "$T/np1.h5" --format gptq --checkpoint-format gptq_v2 --out "$T/ck" --quiet 2>"$T/ex.log" &&
   "$VIEW" "$T/np1.h5" "$TOK" 1 32 "$T/view.safetensors" >/dev/null 2>"$T/view.log"; then
  if python3 - "$T/ck" "$R8" "$RG" "$RS" <<'PY'
import json, sys
d, rules = sys.argv[1], sys.argv[2:]
want = [("-:" if r.endswith("skip=1") else "+:") + r[:r.rindex(":")] for r in rules]
vals = [{"bits": 8, "group_size": 128}, {"bits": 4, "group_size": 32}, {}]
for f in ("config.json", "quantize_config.json"):
    j = json.load(open(f"{d}/{f}"))
    q = j["quantization_config"] if f == "config.json" else j
    dyn = q.get("dynamic")
    assert dyn is not None and list(dyn) == want, (f, dyn, want)
    assert list(dyn.values()) == vals, (f, dyn)
    assert q["bits"] == 4 and q["group_size"] == 128, q
PY
  then ok "export: dynamic keys in rule order in config.json and quantize_config.json"
  else bad "export: dynamic wrong"; fi
  if python3 "$LOADER" check --source "$M" --case "$T/ck" "$T/view.safetensors" gptq_v2 4 0 >"$T/ld.txt" 2>&1 &&
     grep -q "1 linears unquantized" "$T/ld.txt"; then ok "reference loader: $(cut -c1-220 "$T/ld.txt")"
  else bad "reference loader: $(cat "$T/ld.txt")"; fi
else bad "export / view: $(cat "$T/ex.log" "$T/view.log")"; fi

# ---- d. refusals before any work ----
E="$T/e.h5"
refuse() { expect --no-file "$E" "$1" 2 "$2" "$BIN" quantize "${Q[@]}" --out "$E" "${@:3}"; }
refuse "bad regex" "not a valid extended regular expression" --rule 'model\.layers\.[5:bits=8'
refuse "Python-only \\d" "backslash before a letter or digit.*\[0-9\]" --rule 'model\.layers\.\d\.mlp:bits=8'
refuse "Python-only possessive .*+" "possessive quantifiers" --rule 'model\.layers\.5.*+:bits=8'
refuse "backslash inside [...]" "backslash inside \[...\]" --rule 'model\.layers\.5[\.]mlp:bits=8'
refuse "POSIX class" "POSIX classes" --rule 'model\.layers\.[[:digit:]]\.mlp:bits=8'
# quantifier characters inside a bracket are ordinary in both: accepted, and it matches
if "$BIN" quantize "${Q[@]}" --method rtn --out "$T/br.h5" --rule 'model\.layers\.[5+?]\.mlp\.down_proj:bits=8' \
     2>"$T/br.log" && [ "$(bits_of "$T/br.h5" "$L5")" = 8 ] && [ "$(bits_of "$T/br.h5" model.layers.4.mlp.down_proj)" = 4 ]
then ok "a bracket holding + and ? is accepted and matches block 5's down_proj"
else bad "a bracket holding + and ?: $(tail -2 "$T/br.log"), bits $(bits_of "$T/br.h5" "$L5")"; fi
refuse "unknown key" "unknown key 'bitz'" --rule "model:bitz=8"
refuse "bad bits" "bits must be 2, 3, 4 or 8" --rule "model:bits=5"
refuse "bad group size" "group_size=0.*-1 for one group" --rule "model:group_size=0"
refuse "per-module method" "method cannot be set per module" --rule "model:method=rtn"
refuse "skip with bits" "drop bits / group_size" --rule "model:skip=1,bits=8"
refuse "no colon" "has no ':'" --rule "model.layers.5"
refuse "'#' in a pattern" "'#' and line breaks cannot" --rule 'model\.layers\.5#:bits=8'
refuse "matches nothing" "matches no linear.*model\.layers\.5\.mlp\.down_proj" --rule 'model\.layers\.9\.:bits=8'
refuse "anchored at the start" "matches no linear" --rule 'mlp\.down_proj:bits=8'
refuse "shadowed rule" "rule 2 .* decides nothing.*taken by rule 1" --rule 'model\.layers\.5\.:bits=8' --rule "$R8"
printf 'model\\.layers\\.0\\.:bits=8\nmodel\\.layers\\.1\\.:bits=9\n' >"$T/bad.txt"
refuse "--rules FILE bad line" "$T/bad.txt:2: bits=9" --rules "$T/bad.txt"
refuse "missing --rules FILE" "cannot open" --rules "$T/nope.txt"
refuse "skip with --equalize" "skips linears, but --equalize cle" --equalize cle --rule "$RS"
# a --rules file that differs between ranks (a node-local copy; here MPMD: each rank its own file)
printf '%s\n' "$R8" > "$T/ra.txt"
printf '%s\n' "$RS" > "$T/rb.txt"
expect --no-file "$E" "rules that differ between ranks" fail "other per-module rules than rank 0" \
  timeout 120 "$MPIEXEC" -np 1 "$BIN" quantize "${Q[@]}" --out "$E" --rules "$T/ra.txt" : \
  -np 1 "$BIN" quantize "${Q[@]}" --out "$E" --rules "$T/rb.txt"

el=$(($(date +%s) - t_start))
echo "test_rules: ${el} s"
finish test_rules
