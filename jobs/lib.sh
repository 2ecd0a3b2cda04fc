# Shared helpers of jobs/*.sbatch (bash; sourced, not run). Not site-specific: adapt
# jobs/site.env instead.
#
#   hq_job_init NAME       source site.env, check HPCQ_BIN, log the header, install the signal
#                          traps (HQ_JOBS_DIR is set by the sbatch script, which also refuses to
#                          run outside Slurm)
#   hq_out_state FILE      prints missing | partial | complete | leftover (killed before its
#                          first flush: nothing to resume) | foreign (not an hpcq file)
#   hq_step CMD...         run one srun step in the background, forward SIGUSR1 (time-limit
#                          warning) and SIGTERM to it as SIGTERM; sets HQ_STEP_RC, HQ_INTERRUPTED
#   hq_stopped RC          true when the step was stopped by a signal (however it arrived)
#   hq_requeue             put this job back in the queue (bounded by HPCQ_MAX_RESTARTS)
#
# Exit status of every jobs/*.sbatch (the job's ExitCode in sacct / scontrol show job):
#   0   done (quantize: --out is complete), or requeued: Slurm runs the job again
#   1   hpcq failed; its message (naming the rank) is in the log
#   2   usage or set-up error: bad arguments, hpcq not found, not inside Slurm, --out foreign
#   75  stopped by a signal and not requeued (cancel, preemption, a SIGTERM to the script, srun or
#       the ranks, the restart limit): quantize's --out is resumable (or not started yet), so
#       submitting the same command again continues it; eval / scaling have nothing to keep:
#       submit again
# The launcher's own status is never passed on for a stop: srun reports 75 when the ranks
# stopped at a block boundary, 0 for a step signalled by scancel in some Slurm versions, and
# 137 when srun itself got the SIGTERM (it then SIGKILLs the tasks; the file keeps its last
# flushed block); plain mpirun exits 1 after a SIGTERM to it (the ranks exit 75).

hq_log() { printf '[%s %s] %s\n' "$(date '+%F %T')" "${HQ_JOB_NAME:-hpcq}" "$*"; }

hq_job_init() {
  HQ_JOB_NAME=$1
  if [ -f "$HQ_JOBS_DIR/site.env" ]; then
    # shellcheck source=/dev/null
    . "$HQ_JOBS_DIR/site.env"
  else
    hq_log "warning: $HQ_JOBS_DIR/site.env not found; using defaults (HPCQ_BIN=${HPCQ_BIN:=hpcq})"
  fi
  : "${HPCQ_BIN:=hpcq}" "${HPCQ_SRUN_MPI:=pmix}" "${HPCQ_SRUN_ARGS:=}" "${HPCQ_MAX_RESTARTS:=10}"
  if ! command -v "$HPCQ_BIN" >/dev/null 2>&1; then
    hq_log "error: hpcq executable '$HPCQ_BIN' not found on $(hostname): set HPCQ_BIN (absolute path) in jobs/site.env or the environment, or load its module"
    exit 2
  fi
  HQ_JOB_ID=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
  HQ_JOB_ID=${HQ_JOB_ID:-$SLURM_JOB_ID}
  local rev="unknown"
  if command -v git >/dev/null 2>&1 && git -C "$HQ_JOBS_DIR" rev-parse --git-dir >/dev/null 2>&1; then
    rev=$(git -C "$HQ_JOBS_DIR" rev-parse --short HEAD 2>/dev/null || echo none)
    git -C "$HQ_JOBS_DIR" diff --quiet HEAD -- 2>/dev/null || rev="$rev+dirty"
  fi
  hq_log "---------------------------------------------------------------------------"
  hq_log "job $HQ_JOB_ID ($SLURM_JOB_NAME) on $(hostname) at $(date -u '+%FT%TZ'), restart ${SLURM_RESTART_COUNT:-0}"
  hq_log "nodes ${SLURM_JOB_NUM_NODES:-?} [${SLURM_JOB_NODELIST:-?}], tasks ${SLURM_NTASKS:-?} (${SLURM_TASKS_PER_NODE:-?} per node), cpus/task ${SLURM_CPUS_PER_TASK:-1}, gpus/node ${SLURM_GPUS_ON_NODE:-0}, partition ${SLURM_JOB_PARTITION:-?}"
  hq_log "hpcq: $(command -v "$HPCQ_BIN") ($("$HPCQ_BIN" --version 2>&1 | head -n1)); jobs dir $HQ_JOBS_DIR (git $rev)"
  hq_log "slurm: $(srun --version 2>&1 | head -n1); launch: srun --mpi=$HPCQ_SRUN_MPI $HPCQ_SRUN_ARGS"
  hq_log "env: $(env | grep -E '^(OMPI_MCA_|NCCL_|UCX_|OPENBLAS_NUM_THREADS|OMP_NUM_THREADS|HDF5_USE_FILE_LOCKING|CUDA_VISIBLE_DEVICES)' | sort | tr '\n' ' ')"
  # from here on a signal never kills the script: it is forwarded and answered with status 75
  trap hq_on_usr1 USR1
  trap hq_on_term TERM INT
}

# What an output file is: missing, partial (an hpcq file with a progress record but without
# complete=1: resumable), complete, leftover (what a kill before the first flush leaves:
# hpcq's placeholder, or an hpcq file without progress record; --overwrite loses nothing), or
# foreign (exists but is not an hpcq file).
hq_out_state() {
  local f=$1 v
  [ -e "$f" ] || { echo missing; return; }
  [ -f "$f" ] || { echo foreign; return; } # a directory or FIFO: never read (it could block)
  if [ "$(head -c 5 "$f" 2>/dev/null)" = "hpcq " ]; then echo leftover; return; fi
  if ! command -v h5dump >/dev/null 2>&1; then
    # Without hdf5-tools, ask hpcq (inspect refuses leftovers and prints "(complete)").
    v=$("$HPCQ_BIN" inspect "$f" 2>&1 | head -n1)
    case $v in
      *"(complete)"*) echo complete ;;
      *leftover*) echo leftover ;;
      *INCOMPLETE*) echo partial ;;
      *) echo foreign ;;
    esac
    return
  fi
  h5dump -a /hpcq_format_version "$f" >/dev/null 2>&1 || { echo foreign; return; }
  h5dump -a /n_blocks "$f" >/dev/null 2>&1 || { echo leftover; return; }
  v=$(h5dump -a /complete "$f" 2>/dev/null | sed -n 's/^ *(0): *\([0-9-]*\).*/\1/p' | head -n1)
  if [ "$v" = 1 ]; then echo complete; else echo partial; fi
}

# Signals. Slurm delivers:
#   - the early warning of `#SBATCH --signal=B:USR1@T` to THIS shell only (not to the ranks);
#   - SIGTERM to this shell, srun and the ranks on scancel, scontrol requeue, preemption and at
#     the time limit itself; `scancel --batch --signal=TERM` (or a kill of the script) to this
#     shell only; `scancel --signal=TERM` to the steps only.
# Either trap forwards the signal to the running steps as SIGTERM (scancel --signal=TERM JOBID
# signals every step, not the batch shell; a second SIGTERM to ranks that have one is harmless),
# so hpcq stops after the block it is writing however the signal came; USR1 then requeues,
# TERM ends the job with 75. A signal before the step starts keeps the step from starting.
HQ_INTERRUPTED=""
HQ_TRAPPED=0
HQ_STEP_PID=""
hq_forward_term() {
  [ -n "$HQ_STEP_PID" ] || return 0
  hq_log "asking hpcq to stop after the current block (SIGTERM to the step) and waiting for it"
  scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true
}
hq_on_usr1() {
  HQ_TRAPPED=1
  HQ_INTERRUPTED=limit
  hq_log "time limit near (SIGUSR1)"
  hq_forward_term
}
hq_on_term() {
  HQ_TRAPPED=1
  [ "$HQ_INTERRUPTED" = limit ] || HQ_INTERRUPTED=term
  hq_log "SIGTERM/SIGINT to the batch script (cancel, requeue, preemption, time limit or a kill)"
  hq_forward_term
}

# hq_step CMD... : run CMD (an srun line) in the background and wait for it, staying responsive
# to the traps above. HQ_STEP_RC gets its exit status (75 when a signal came before it started).
hq_step() {
  if [ -n "$HQ_INTERRUPTED" ]; then
    hq_log "not starting the step: stopped by a signal ($HQ_INTERRUPTED) before it began"
    HQ_STEP_RC=75
    return
  fi
  hq_log "run: $*"
  "$@" &
  HQ_STEP_PID=$!
  local r
  while :; do
    HQ_TRAPPED=0
    wait "$HQ_STEP_PID"
    HQ_STEP_RC=$?
    [ "$HQ_TRAPPED" = 1 ] || break # wait ended because the step ended, not because of a trap
    kill -0 "$HQ_STEP_PID" 2>/dev/null && continue # still running: wait for it again
    wait "$HQ_STEP_PID" 2>/dev/null; r=$?  # it ended while the trap ran: its own status
    [ "$r" -eq 127 ] || HQ_STEP_RC=$r      # (127: that wait had already collected it)
    break
  done
  HQ_STEP_PID=""
  hq_log "step exited with status $HQ_STEP_RC${HQ_INTERRUPTED:+ (interrupted: $HQ_INTERRUPTED)}"
}

# hq_stopped RC: the step with status RC was stopped by a signal: one of the traps fired, the
# ranks stopped at a block boundary (75), or a process of the step was killed by a signal
# (status 128 + N: srun got the SIGTERM itself, a kill, the out-of-memory killer).
hq_stopped() { [ -n "$HQ_INTERRUPTED" ] || [ "$1" -eq 75 ] || [ "$1" -gt 128 ]; }

# Requeue this job so it resumes later; exits the script.
hq_requeue() {
  local n=${SLURM_RESTART_COUNT:-0}
  if [ "$n" -ge "$HPCQ_MAX_RESTARTS" ]; then
    hq_log "error: not requeueing: already restarted $n times (HPCQ_MAX_RESTARTS=$HPCQ_MAX_RESTARTS); resubmit to continue"
    exit 75
  fi
  hq_log "requeueing job $SLURM_JOB_ID (restart $((n + 1)) of at most $HPCQ_MAX_RESTARTS); it resumes from the last complete block"
  trap '' TERM # scontrol requeue terminates this shell; finish the log line first
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    hq_log "error: scontrol requeue failed (is the job submitted with --requeue and does the site allow JobRequeue?); resubmit the same command to resume"
    exit 75
  fi
  exit 0
}
