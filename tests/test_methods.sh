#!/usr/bin/env bash
# The other methods end to end on the bundled 5M model (issue 8, CI-sized):
#  1. --method hqq (calibration-free): default group size 64, np 1 and np 2 give identical
#     codes, the per-linear HQQ reconstruction error attribute is <= RTN's, --hqq-scale lowers
#     it; perplexity sane.
#  2. --equalize smooth,cle at W8 (GPTQ): the stored model (smoothed norms as float32 in
#     /tensors, equalized weights in /linears) evaluates within 0.5 % of full precision -- a
#     wrong or missing stored norm would wreck it; np 1 and np 2 are identical.
#  3. SIGTERM (to the rank's own pid, np 1) mid-run with --equalize smooth,cle, then --resume:
#     identical to the uninterrupted run (the equalized norms are re-read from the file).
#  4. --act-bits 8 in quantize and eval (eval defaults to the file's act_bits, 0 turns it off);
#     --scale-from-hessian runs and is recorded.
#  5. bad combinations fail with a clear message.
#  6. hpcq inspect --plot: a PNG of a GPTQ result (the table on stdout unchanged), and exit 1
#     with a message and no file for a missing folder, gnuplot missing from PATH, a failing
#     gnuplot and a result without proxy losses or damping (hqq).
set -u
source "$(dirname "$0")/testlib.sh"
hq_tmpdir methods
run() { timeout 300 "$MPIEXEC" -np "$1" "$BIN" quantize --model "$M" --quiet "${@:2}"; }
CAL=(--calib "$M/calib.i32" --nsamples 16 --seqlen 128)
fp=$(ppl "$M")

# ---- 1. HQQ ----
run 1 --method hqq --bits 3 --out "$T/hqq1.h5" 2> "$T/h1.log" && ok "hqq np 1" || bad "hqq np 1: $(tail -2 "$T/h1.log")"
run 2 --method hqq --bits 3 --out "$T/hqq2.h5" 2> "$T/h2.log" && ok "hqq np 2" || bad "hqq np 2: $(tail -2 "$T/h2.log")"
run 2 --method hqq --bits 3 --hqq-scale --out "$T/hqqs.h5" 2> "$T/h3.log" && ok "hqq --hqq-scale" || bad "hqq --hqq-scale: $(tail -2 "$T/h3.log")"
"$BIN" inspect "$T/hqq1.h5" | grep -q '"method":"hqq","bits":3,"group_size":64' && ok "hqq: default group size 64 recorded" || bad "hqq settings: $("$BIN" inspect "$T/hqq1.h5" | grep settings)"
"$BIN" compare "$T/hqq1.h5" "$T/hqq2.h5" --min-equal 1 > "$T/c.txt" 2>&1 && ok "hqq np 1 == np 2" || bad "hqq np 1 vs 2: $(tail -2 "$T/c.txt")"
L=model.layers.3.mlp.down_proj
h=$(attr "$T/hqq2.h5" $L hqq_mean_abs_error); r=$(attr "$T/hqq2.h5" $L rtn_mean_abs_error); hs=$(attr "$T/hqqs.h5" $L hqq_mean_abs_error)
echo "$L mean |W-Q|: RTN $r, HQQ $h, HQQ+scale $hs"
awk -v h="$h" -v r="$r" -v s="$hs" 'BEGIN{exit !(h > 0 && h <= r && s < 0.97 * r)}' && ok "HQQ error <= RTN's, with --hqq-scale < 0.97x" || bad "HQQ errors: RTN $r HQQ $h +scale $hs"
p=$(ppl "$T/hqqs.h5")
awk -v p="$p" -v f="$fp" 'BEGIN{exit !(p > f * 0.98 && p < f * 1.3)}' && ok "hqq W3 g64 perplexity $p (FP $fp)" || bad "hqq perplexity $p vs FP $fp"

# ---- 2. equalization at W8: the stored model is the equalized FP model ----
run 1 "${CAL[@]}" --bits 8 --equalize smooth,cle --out "$T/eq1.h5" 2> "$T/e1.log" && ok "smooth,cle np 1" || bad "smooth,cle np 1: $(tail -2 "$T/e1.log")"
run 2 "${CAL[@]}" --bits 8 --equalize smooth,cle --out "$T/eq2.h5" 2> "$T/e2.log" && ok "smooth,cle np 2" || bad "smooth,cle np 2: $(tail -2 "$T/e2.log")"
h5dump -H -d /tensors/model.layers.2.input_layernorm.weight "$T/eq2.h5" | grep -q H5T_IEEE_F32LE && ok "smoothed norm stored as float32" || bad "smoothed norm dtype"
h5dump -H -d /tensors/model.norm.weight "$T/eq2.h5" | grep -q H5T_STD_U16LE && ok "untouched norm keeps bf16" || bad "final norm dtype changed"
"$BIN" compare "$T/eq1.h5" "$T/eq2.h5" > "$T/c2.txt" 2>&1 && ok "smooth,cle np 1 == np 2" || bad "smooth,cle np 1 vs 2: $(tail -2 "$T/c2.txt")"
p=$(ppl "$T/eq2.h5")
awk -v p="$p" -v f="$fp" 'BEGIN{d=(p-f)/f; if (d<0) d=-d; exit !(d < 0.005)}' && ok "W8 smooth,cle perplexity $p within 0.5 % of FP $fp" || bad "W8 smooth,cle perplexity $p vs FP $fp"

# ---- 3. SIGTERM + resume with equalization (np 1, signal to the rank's own pid) ----
"$BIN" quantize --model "$M" "${CAL[@]}" --bits 4 --equalize smooth,cle --batch 2 --out "$T/term.h5" 2> "$T/t.log" &
qp=$!
# signal once the file records progress: the run finishes its current block and stops early
for _ in $(seq 1 600); do h5dump -d /progress "$T/term.h5" > /dev/null 2>&1 && break; sleep 0.05; done
kill -TERM $qp 2>/dev/null
wait $qp; rc=$?
run 1 "${CAL[@]}" --bits 4 --equalize smooth,cle --out "$T/full.h5" 2> "$T/f.log" || bad "uninterrupted run: $(tail -2 "$T/f.log")"
if [ $rc -eq 75 ]; then
  run 1 "${CAL[@]}" --bits 4 --equalize smooth,cle --batch 2 --out "$T/term.h5" --resume 2> "$T/t2.log" && ok "resume with equalization" || bad "resume: $(tail -2 "$T/t2.log")"
else bad "SIGTERM run exited $rc, not 75 (0: it finished before the signal; resume not exercised): $(tail -2 "$T/t.log")"; fi
"$BIN" compare "$T/full.h5" "$T/term.h5" > "$T/c3.txt" 2>&1 && ok "SIGTERM+resume == uninterrupted" || bad "resume differs: $(tail -2 "$T/c3.txt")"

# ---- 4. activation bits, scale-from-hessian ----
run 2 "${CAL[@]}" --bits 4 --act-bits 8 --scale-from-hessian --out "$T/a8.h5" 2> "$T/a.log" && ok "gptq --act-bits 8 --scale-from-hessian" || bad "act-bits run: $(tail -2 "$T/a.log")"
"$BIN" inspect "$T/a8.h5" | grep -q '"act_bits":8,"scale_from_hessian":true' && ok "settings record act_bits and scale_from_hessian" || bad "settings: $("$BIN" inspect "$T/a8.h5" | grep settings)"
p8=$(ppl "$T/a8.h5" --act-bits 8); p4=$(ppl "$T/a8.h5" --act-bits 4)
awk -v a="$p8" -v b="$p4" -v f="$fp" 'BEGIN{exit !(a > 0.98 * f && a < 1.1 * f && b > a)}' && ok "W4A8 $p8, W4A4 $p4 (FP $fp)" || bad "W4A8 $p8 W4A4 $p4 FP $fp"
pd=$(ppl "$T/a8.h5"); p0=$(ppl "$T/a8.h5" --act-bits 0)
[ -n "$pd" ] && [ "$pd" = "$p8" ] && ok "eval of an --act-bits 8 result defaults to A8 ($pd)" || bad "eval default act bits: $pd vs A8 $p8"
[ -n "$p0" ] && [ "$p0" != "$p8" ] && ok "--act-bits 0 evaluates unquantized activations ($p0)" || bad "--act-bits 0: $p0 vs A8 $p8"
"$BIN" eval --model "$T/a8.h5" --tokens "$M/wikitext2-test.i32" --seqlen 256 --max-windows 1 --act-bits 1 > "$T/e.log" 2>&1 \
  && bad "eval --act-bits 1 accepted" || { grep -q "0 (off) or 2..16" "$T/e.log" && ok "eval --act-bits 1 refused" || bad "eval --act-bits 1: $(head -1 "$T/e.log")"; }

# ---- 5. bad combinations ----
BADQ=("$MPIEXEC" -np 2 "$BIN" quantize --model "$M" --out "$T/bad.h5" --overwrite)
expect_fail "smooth without calibration" "needs calibration" "${BADQ[@]}" --method rtn --equalize smooth
expect_fail "act-bits with rtn" "hpcq eval --act-bits" "${BADQ[@]}" --method rtn --act-bits 8
expect_fail "scale-from-hessian with hqq" "not hqq" "${BADQ[@]}" --method hqq --scale-from-hessian
expect_fail "unknown equalize" "must be none, smooth, cle" "${BADQ[@]}" --equalize foo

# ---- 6. inspect --plot ----
"$BIN" inspect "$T/a8.h5" > "$T/table.txt" 2>&1
if command -v gnuplot > /dev/null; then
  "$BIN" inspect "$T/a8.h5" --plot "$T/a8.png" > "$T/plot.txt" 2> "$T/plot.err" && ok "inspect --plot: $(cat "$T/plot.err")" ||
    bad "inspect --plot: $(cat "$T/plot.err")"
  sig=$(head -c 8 "$T/a8.png" 2>/dev/null | od -An -tx1 | tr -d ' \n'); sz=$(stat -c %s "$T/a8.png" 2>/dev/null || echo 0)
  [ "$sig" = 89504e470d0a1a0a ] && [ "$sz" -gt 10000 ] && ok "--plot wrote a PNG of $sz bytes" || bad "--plot: signature '$sig', $sz bytes"
  cmp -s "$T/table.txt" "$T/plot.txt" && ok "--plot leaves the table on stdout unchanged" || bad "--plot changed stdout"
  [ ! -e "$T/a8.png.tmp" ] && ok "--plot: no temporary left" || bad "--plot left $T/a8.png.tmp"
  expect --no-file "$T/h.png" "--plot of an hqq result" 1 "nothing to draw.*no Hessian" "$BIN" inspect "$T/hqq1.h5" --plot "$T/h.png"
else echo "skipped: inspect --plot PNG checks (gnuplot not installed; Debian: gnuplot-nox)"; fi
expect --no-file "$T/no/such/p.png" "--plot into a missing folder" 1 "folder .*/no/such does not exist.*mkdir -p" \
  "$BIN" inspect "$T/a8.h5" --plot "$T/no/such/p.png"
[ -s "$T/out.txt" ] && bad "--plot into a missing folder printed the table before failing" || true
mkdir -p "$T/nognuplot" "$T/badgnuplot"
expect --no-file "$T/p.png" "--plot without gnuplot on PATH" 1 "install gnuplot-nox \(Debian\) or drop --plot" \
  env PATH="$T/nognuplot" "$BIN" inspect "$T/a8.h5" --plot "$T/p.png"
printf '#!/bin/sh\necho "fake gnuplot: broken" >&2\nexit 3\n' > "$T/badgnuplot/gnuplot"; chmod +x "$T/badgnuplot/gnuplot"
expect --no-file "$T/p.png" "--plot with a failing gnuplot" 1 "gnuplot exited with status 3 \(its messages above\)" \
  env PATH="$T/badgnuplot:$PATH" "$BIN" inspect "$T/a8.h5" --plot "$T/p.png"
grep -q "fake gnuplot: broken" "$T/err.txt" && ok "gnuplot's messages are shown" || bad "gnuplot's stderr not shown: $(cat "$T/err.txt")"
[ ! -e "$T/p.png.tmp" ] || bad "a failed --plot left $T/p.png.tmp"
finish test_methods
