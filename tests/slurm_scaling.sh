#!/usr/bin/env bash
# jobs/scaling.sbatch as a real Slurm job array: ranks {1, 2} x nsamples {16, 32} (4 elements,
# each srun --mpi=pmix -n R inside a 2-task allocation) append one CSV row each; the rows say
# what ran (ranks, nodes, nsamples, numeric phase times and memory from hpcq's JSON summary,
# perplexity when `hpcq eval` can read .h5 results); bench/scaling_report.sh turns the CSV into
# strong- and weak-scaling tables and a PNG plot. Also: an index outside the sweep fails clearly.
source "$HQ_SRC/tests/slurmlib.sh"
hq_t_prereq
command -v gnuplot >/dev/null || skip "gnuplot not installed (Debian: gnuplot-nox)"
hq_t_start

export HPCQ_SCALE_RANKS="1 2" HPCQ_SCALE_NSAMPLES="16 32"
export HPCQ_SCALE_CSV=$HQ_T_WORK/scaling.csv HPCQ_SCALE_DIR=$HQ_T_WORK/runs
export HPCQ_SCALE_TOKENS=$HQ_MODEL/wikitext2-test.i32 HPCQ_SCALE_EVAL_SEQLEN=128 HPCQ_SCALE_EVAL_WINDOWS=8
j=$(sbatch --parsable --array=0-4 "$HQ_SRC/jobs/scaling.sbatch" --model "$HQ_MODEL" --calib "$HQ_CALIB" --seqlen 128)
tlog "submitted array $j"
hq_t_wait "$j" 240
for i in 0 1 2 3; do
  st=$(hq_t_field "${j}_$i" JobState)
  [ "$st" = COMPLETED ] || fail "array element $i: $st"
done
[ "$(hq_t_field "${j}_4" JobState)" = FAILED ] || fail "array element 4 (outside the sweep) should fail"
grep -q "array index 4 is outside the sweep" "$HQ_T_WORK/hpcq-scaling-${j}_4.log" || fail "element 4: unclear message"

csv=$HPCQ_SCALE_CSV
[ "$(wc -l <"$csv")" -eq 5 ] || { cat "$csv"; fail "CSV should have a header and 4 rows"; }
head -n1 "$csv" | grep -q '^job,array_index,.*,ranks,nodes,.*,nsamples,.*,t_forward,.*,peak_rss_mb_per_rank,perplexity,status$' ||
  fail "CSV header: $(head -n1 "$csv")"
awk -F, '
  NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
  { if ($c["status"] != "ok") bad = bad " row " NR ": status " $c["status"]
    if ($c["nodes"] != 1) bad = bad " row " NR ": nodes " $c["nodes"]
    seen[$c["ranks"] "x" $c["nsamples"]]++
    for (f in c) if (f ~ /^t_|^seconds$|^wall_s$|^peak_rss/) if ($c[f] !~ /^[0-9.]+$/) bad = bad " row " NR ": " f "=" $c[f]
    if ($c["peak_rss_mb_per_rank"] + 0 <= 1) bad = bad " row " NR ": rss"
    if ($c["perplexity"] + 0 <= 1) bad = bad " row " NR ": perplexity " $c["perplexity"] }
  END { for (k in seen) n++
        if (n != 4 || !seen["1x16"] || !seen["2x16"] || !seen["1x32"] || !seen["2x32"]) bad = bad " runs: wrong (ranks x nsamples) set"
        if (bad != "") { print bad; exit 1 } }' "$csv" || fail "bad CSV rows"
tlog "CSV: 4 rows with phase times, memory and perplexity"
for r in 1 2; do
  grep -q "srun --mpi=pmix -N 1 -n $r .* quantize" "$HQ_T_WORK"/hpcq-scaling-"${j}"_*.log || fail "no run with $r ranks in the logs"
done
ls "$HPCQ_SCALE_DIR"/r2_n32_*.h5 >/dev/null || fail "no result file for 2 ranks x 32"

bash "$HQ_SRC/bench/scaling_report.sh" "$csv" "$HQ_T_WORK/report"
md=$HQ_T_WORK/report/scaling.md png=$HQ_T_WORK/report/scaling.png
grep -q "^nsamples = 16 " "$md" && grep -q "^nsamples = 32 " "$md" || fail "strong-scaling tables missing"
grep -q "^nsamples per rank = 16 " "$md" || fail "weak-scaling table (1x16, 2x32) missing"
[ "$(grep -c '^| [12] | 1 | 1 | ' "$md")" -eq 6 ] || { cat "$md"; fail "expected 6 table rows (4 strong + 2 weak)"; }
[ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG"
[ "$(stat -c %s "$png")" -gt 5000 ] || fail "$png is suspiciously small"
tlog "report: $(grep -c '^| ' "$md") table lines, PNG $(stat -c %s "$png") bytes"
tlog "PASS"
