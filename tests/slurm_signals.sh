#!/usr/bin/env bash
# However a SIGTERM reaches a job of jobs/quantize.sbatch (or eval.sbatch), the job hands Slurm
# the resumable status 75 (jobs/lib.sh), never the launcher's own view of the signal, and the
# next submission resumes to the uninterrupted result:
#  1. to the batch script only (`scancel --batch --signal=TERM`): the script forwards it to the
#     ranks, which stop at a block boundary (srun reports 75)
#  2. to the script, srun and the ranks (`scancel --full --signal=TERM`): srun SIGKILLs the
#     tasks (status 137); the file keeps its last flushed block
#  3. to srun alone (a kill of the srun process): the script sees no signal, srun reports 137
#  4. eval.sbatch, SIGTERM to its script mid-run: 75 (an evaluation has nothing to resume)
# Each: FAILED with ExitCode 75:0, not requeued; the resubmission says "partial -> --resume",
# resumes mid-way and the result equals `mpirun -np 2` uninterrupted.
source "$HQ_SRC/tests/slurmlib.sh"
hq_t_prereq
hq_t_start

tlog "reference: uninterrupted mpirun -np 2"
hq_t_mpirun_ref "$HQ_T_WORK/ref.h5"

# stop_case NAME HOW: submit, wait for block 2 of 6, signal, check the status; then resubmit.
stop_case() {
  local name=$1 how=$2 j log j2 log2 pid
  j=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" "${HQ_QARGS[@]}" --out "$HQ_T_WORK/$name.h5")
  log=$HQ_T_WORK/hpcq-quantize-$j.log
  hq_t_wait_log "$j" "$log" '^block 2/6' 120
  case $how in
    batch) scancel --batch --signal=TERM "$j" ;;
    full) scancel --full --signal=TERM "$j" ;;
    srun) pid=$(pgrep -f "^srun .*--out $HQ_T_WORK/$name.h5" | head -n1)
          [ -n "$pid" ] || fail "$name: no srun process found"
          kill -TERM "$pid" ;;
  esac
  tlog "$name: SIGTERM ($how) after block 2"
  hq_t_wait "$j" 120
  hq_t_expect_job "$j" FAILED 75:0
  [ "$(hq_t_field "$j" Restarts)" = 0 ] || fail "$name: job $j was requeued"
  case $how in
    batch) grep -qE "stopped by a signal after block [2-5] of 6" "$log" || fail "$name: hpcq did not stop at a block boundary" ;;
    srun) grep -q "killed by signal 9" "$log" || fail "$name: the script did not report the kill" ;;
  esac
  grep -q "submit the same command again to resume" "$log" || fail "$name: no resume hint in $log"
  j2=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" "${HQ_QARGS[@]}" --out "$HQ_T_WORK/$name.h5")
  log2=$HQ_T_WORK/hpcq-quantize-$j2.log
  hq_t_wait "$j2" 120
  hq_t_expect_job "$j2" COMPLETED 0:0
  hq_t_check_resumed "$name" "$log2"
  tlog "$name: status 75, resumed result == uninterrupted result"
}

stop_case script batch
stop_case all full
stop_case srun srun

# eval.sbatch: all 3348 windows of 128 tokens take long enough to be interrupted
j=$(HPCQ_EVAL_JSON=$HQ_T_WORK/ev.json sbatch --parsable "$HQ_SRC/jobs/eval.sbatch" --model "$HQ_T_WORK/ref.h5" \
      --tokens "$HQ_MODEL/wikitext2-test.i32" --seqlen 128)
hq_t_wait_log "$j" "$HQ_T_WORK/hpcq-eval-$j.log" '^\[eval\] .*chunk steps' 120
scancel --batch --signal=TERM "$j"
hq_t_wait "$j" 120
hq_t_expect_job "$j" FAILED 75:0
grep -q "an evaluation has nothing to resume: submit it again" "$HQ_T_WORK/hpcq-eval-$j.log" || fail "eval: no stop message"
[ ! -e "$HQ_T_WORK/ev.json" ] || fail "eval: a result JSON was written for an interrupted evaluation"
tlog "eval: SIGTERM to the script -> 75, no JSON"
tlog "PASS"
