#!/usr/bin/env bash
# jobs/quantize.sbatch survives interruptions on a real Slurm and resumes from its HDF5 file:
#  1. preemption/requeue path: `scontrol requeue` mid-run sends SIGTERM to the ranks; hpcq
#     finishes the block write and exits; Slurm requeues; the new run uses --resume.
#  2. time-limit path: the script's `--signal=B:USR1@T` warning (delivered here with
#     `scancel --batch --signal=USR1`, which is exactly what slurmctld sends at T) makes the
#     script forward SIGTERM to the ranks and requeue itself; the new run uses --resume.
# Both finish COMPLETED with a result identical to an uninterrupted `mpirun -np 2` run.
source "$HQ_SRC/tests/slurmlib.sh"
hq_t_prereq
hq_t_start

tlog "reference: uninterrupted mpirun -np 2"
hq_t_mpirun_ref "$HQ_T_WORK/ref.h5"

# run_interrupted NAME HOW: submit, wait for block 2 of 6 to be written, interrupt, wait.
run_interrupted() {
  local name=$1 how=$2 j log
  j=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" "${HQ_QARGS[@]}" --out "$HQ_T_WORK/$name.h5")
  log=$HQ_T_WORK/hpcq-quantize-$j.log
  tlog "$name: job $j submitted"
  hq_t_wait_log "$j" "$log" '^block 2/6' 120
  case $how in
    requeue) scontrol requeue "$j" ;;
    usr1) scancel --batch --signal=USR1 "$j" ;;
  esac
  tlog "$name: interrupted with $how after block 2"
  hq_t_wait "$j" 240
  hq_t_expect_job "$j" COMPLETED 0:0
  [ "$(hq_t_field "$j" Restarts)" = 1 ] || fail "$name: job $j should have been requeued exactly once"
  grep -qE "stopped by a signal after block [1-5] of 6" "$log" || fail "$name: hpcq did not stop at a block boundary"
  grep -q "done: .* is complete" "$log" || fail "$name: no completion line"
  if [ "$how" = usr1 ]; then
    grep -q "time limit near (SIGUSR1)" "$log" || fail "$name: USR1 not handled by the script"
    grep -q "requeueing job $j (restart 1" "$log" || fail "$name: the script did not requeue itself"
  fi
  hq_t_check_resumed "$name" "$log"
  tlog "$name: resumed result == uninterrupted result"
}

run_interrupted preempt requeue
run_interrupted timelimit usr1
tlog "PASS"
