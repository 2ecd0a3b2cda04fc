# Shared helpers of jobs/*.sbatch (bash; sourced, not run). Not site-specific: adapt
# jobs/site.env instead.
#
#   hq_job_init NAME       source site.env, check HPCQ_BIN, log the header (HQ_JOBS_DIR is set
#                          by the sbatch script, which also refuses to run outside Slurm)
#   hq_out_state FILE      prints missing | partial | complete | foreign (not an hpcq file)
#   hq_step CMD...         run one srun step in the background, forward the time-limit
#                          warning to it as SIGTERM; sets HQ_STEP_RC and HQ_INTERRUPTED
#   hq_requeue             put this job back in the queue (bounded by HPCQ_MAX_RESTARTS)

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
}

# What an output file is: missing, partial (an hpcq file without complete=1: resumable),
# complete, or foreign (exists but is not a readable hpcq HDF5 file).
hq_out_state() {
  local f=$1 v
  [ -e "$f" ] || { echo missing; return; }
  if ! command -v h5dump >/dev/null 2>&1; then
    # Without hdf5-tools, ask hpcq: inspect refuses incomplete files.
    if "$HPCQ_BIN" inspect "$f" >/dev/null 2>&1; then echo complete; else echo partial; fi
    return
  fi
  h5dump -a /hpcq_format_version "$f" >/dev/null 2>&1 || { echo foreign; return; }
  v=$(h5dump -a /complete "$f" 2>/dev/null | sed -n 's/^ *(0): *\([0-9-]*\).*/\1/p' | head -n1)
  if [ "$v" = 1 ]; then echo complete; else echo partial; fi
}

# Signals. Slurm delivers:
#   - the early warning of `#SBATCH --signal=B:USR1@T` to THIS shell only (not to the ranks):
#     we forward it to the running steps as SIGTERM (scancel --signal=TERM JOBID signals all
#     steps, not the batch shell) and, once hpcq has written a resumable file, requeue;
#   - SIGTERM to this shell AND the ranks on scancel, scontrol requeue, preemption and at the
#     time limit itself: the ranks already have it; we just wait for them to finish the block.
HQ_INTERRUPTED=""
HQ_TRAPPED=0
hq_on_usr1() {
  HQ_TRAPPED=1
  HQ_INTERRUPTED=limit
  hq_log "time limit near (SIGUSR1): asking hpcq to stop after the current block (SIGTERM to the step)"
  scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true
}
hq_on_term() {
  HQ_TRAPPED=1
  [ "$HQ_INTERRUPTED" = limit ] || HQ_INTERRUPTED=term
  hq_log "SIGTERM (cancel, requeue, preemption or time limit): waiting for hpcq to finish the current block"
}

# hq_step CMD... : run CMD (an srun line) in the background and wait for it, staying responsive
# to the traps above. HQ_STEP_RC gets its exit status.
hq_step() {
  trap hq_on_usr1 USR1
  trap hq_on_term TERM
  hq_log "run: $*"
  "$@" &
  local pid=$!
  while :; do
    HQ_TRAPPED=0
    wait "$pid"
    HQ_STEP_RC=$?
    [ "$HQ_TRAPPED" = 1 ] || break # wait ended because the step ended, not because of a trap
  done
  trap - USR1 TERM
  hq_log "step exited with status $HQ_STEP_RC${HQ_INTERRUPTED:+ (interrupted: $HQ_INTERRUPTED)}"
}

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
