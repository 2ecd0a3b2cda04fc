#!/usr/bin/env bash
# jobs/quantize.sbatch on a real single-node Slurm (slurmctld + slurmd + munge): 2 tasks launched
# with srun --mpi=pmix on the bundled model give the same HDF5 result as `mpirun -np 2` outside
# Slurm; the job record says COMPLETED 0:0; the log names host, version and launch; the script
# refuses to run outside Slurm; and the comparison itself detects a different result.
source "$HQ_SRC/tests/slurmlib.sh"
hq_t_prereq

# Outside Slurm the script must refuse with a clear message and status 2.
set +e
msg=$(env -u SLURM_JOB_ID bash "$HQ_SRC/jobs/quantize.sbatch" --model x --out y.h5 2>&1)
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "quantize.sbatch outside Slurm: status $rc, expected 2"
grep -q "not inside a Slurm job" <<<"$msg" || fail "quantize.sbatch outside Slurm: unclear message: $msg"

hq_t_start
# Submit first (the job runs while the mpirun reference is computed: 2 cores, 4 ranks, oversubscribed
# but results must not depend on timing).
j=$(sbatch --parsable --ntasks-per-node=2 "$HQ_SRC/jobs/quantize.sbatch" "${HQ_QARGS[@]}" --out "$HQ_T_WORK/slurm.h5")
tlog "submitted job $j"
hq_t_wait "$j" 180
hq_t_expect_job "$j" COMPLETED 0:0
log=$HQ_T_WORK/hpcq-quantize-$j.log
[ -f "$log" ] || fail "no job log $log"
for pat in "on $(hostname) at" "hpcq: .*\\(hpcq [0-9]" "run: srun --mpi=pmix .* quantize .*--out $HQ_T_WORK/slurm.h5" \
           "tasks 2 \\(2 per node\\)" "output .*: new run" "2 ranks" "done: .* is complete"; do
  grep -qE "$pat" "$log" || fail "job log lacks '$pat'"
done
[ -s "$HQ_T_WORK/slurm.summary.json" ] || fail "no JSON summary next to the output"
grep -q '"ranks": 2' "$HQ_T_WORK/slurm.summary.json" || fail "summary does not say 2 ranks"

tlog "reference: mpirun -np 2 outside Slurm"
hq_t_mpirun_ref "$HQ_T_WORK/mpirun.h5"
hq_t_h5same "$HQ_T_WORK/mpirun.h5" "$HQ_T_WORK/slurm.h5" || fail "Slurm result differs from the mpirun result"
tlog "slurm.h5 == mpirun.h5 (all datasets and non-timing attributes)"

# The comparison must be able to fail: another seed gives other windows, other codes.
hq_t_mpirun_ref "$HQ_T_WORK/seed1.h5" --seed 1
if hq_t_h5same "$HQ_T_WORK/mpirun.h5" "$HQ_T_WORK/seed1.h5" >/dev/null; then
  fail "hq_t_h5same did not notice a different calibration seed"
fi

# jobs/eval.sbatch: the perplexity it records equals `hpcq eval` run directly (the original
# model folder), and it evaluates the .h5 result.
ev=(--tokens "$HQ_MODEL/wikitext2-test.i32" --seqlen 128 --max-windows 4 --quiet)
direct=$("$HQ_BIN" eval --model "$HQ_MODEL" "${ev[@]}" --json | grep -o '"perplexity": *[0-9.eE+-]*')
je=$(sbatch --parsable "$HQ_SRC/jobs/eval.sbatch" --model "$HQ_MODEL" "${ev[@]}")
hq_t_wait "$je" 120
hq_t_expect_job "$je" COMPLETED 0:0
[ "$(grep -o '"perplexity": *[0-9.eE+-]*' "$HQ_T_WORK/hpcq-eval-$je.json")" = "$direct" ] ||
  fail "eval.sbatch perplexity differs from hpcq eval run directly ($direct)"
grep -q "perplexity [0-9]" "$HQ_T_WORK/hpcq-eval-$je.log" || fail "eval log lacks the perplexity line"
je=$(sbatch --parsable "$HQ_SRC/jobs/eval.sbatch" --model "$HQ_T_WORK/slurm.h5" "${ev[@]}")
hq_t_wait "$je" 120
hq_t_expect_job "$je" COMPLETED 0:0
grep -q '"perplexity"' "$HQ_T_WORK/slurm.eval.json" || fail "no slurm.eval.json"

# A second submission of the same command overwrites the complete result (a fresh run).
j2=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" "${HQ_QARGS[@]}" --out "$HQ_T_WORK/slurm.h5")
hq_t_wait "$j2" 180
hq_t_expect_job "$j2" COMPLETED 0:0
grep -q -- "complete result of an earlier submission -> --overwrite" "$HQ_T_WORK/hpcq-quantize-$j2.log" ||
  fail "second submission did not overwrite the complete result"
hq_t_h5same "$HQ_T_WORK/mpirun.h5" "$HQ_T_WORK/slurm.h5" || fail "overwritten result differs"
tlog "PASS"
