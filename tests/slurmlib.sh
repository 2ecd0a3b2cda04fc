# Helpers of the Slurm tests (tests/slurm_*.sh; sourced). Each test starts its own throw-away
# cluster with tools/slurm-local.sh and always stops it by PID on exit (trap EXIT).
set -euo pipefail

: "${HQ_SRC:?run through ctest (HQ_SRC, HQ_BIN, HQ_TESTDATA are set there)}" "${HQ_BIN:?}" "${HQ_TESTDATA:?}"
HQ_T_NAME=$(basename "$0" .sh)
HQ_MODEL=$HQ_TESTDATA/llama-sotu-5m
HQ_CALIB=$HQ_MODEL/calib.i32
# Small calibration so every run takes seconds: 16 windows x 128 tokens.
HQ_QARGS=(--model "$HQ_MODEL" --calib "$HQ_CALIB" --nsamples 16 --seqlen 128 --bits 4 --group-size 128)

tlog() { printf '[%s %s] %s\n' "$(date +%T)" "$HQ_T_NAME" "$*"; }
fail() { tlog "FAIL: $*"; exit 1; }
skip() { tlog "SKIPPED: $*"; exit 77; }

# Prerequisites: root, the Slurm/munge/HDF5 tools, a working `hpcq quantize`.
hq_t_prereq() {
  [ "$(id -u)" -eq 0 ] || skip "needs root to run a private slurmd/munged"
  local b
  for b in slurmctld slurmd munged sbatch squeue scontrol h5diff h5dump mpirun; do
    command -v "$b" >/dev/null || skip "'$b' not installed (tools/install-deps.sh installs slurm-wlm munge hdf5-tools)"
  done
}

# hq_t_start [--nodes N]: start the cluster (one node, or N in network namespaces: see
# tools/slurm-local.sh) and a work dir; both are removed on exit, whatever happens.
hq_t_start() {
  HQ_T_WORK=$(mktemp -d /tmp/hq-slurmtest.XXXXXX)
  HQ_T_CLUSTER=""
  trap hq_t_cleanup EXIT
  trap 'exit 130' INT TERM
  HQ_T_CLUSTER=$(bash "$HQ_SRC/tools/slurm-local.sh" start "$@") || fail "could not start the test cluster"
  export SLURM_CONF=$HQ_T_CLUSTER/slurm.conf
  export HPCQ_BIN=$HQ_BIN
  unset HPCQ_JOBS_DIR # the scripts must find jobs/ themselves
  cd "$HQ_T_WORK"
  tlog "cluster $HQ_T_CLUSTER, work dir $HQ_T_WORK"
}

hq_t_cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -n "${HQ_T_WORK:-}" ]; then
    tlog "exit $rc: job logs and daemon log tails follow"
    for f in "$HQ_T_WORK"/*.log; do [ -f "$f" ] && { echo "==== $f"; tail -n 60 "$f"; }; done
    [ -n "$HQ_T_CLUSTER" ] && tail -n 30 "$HQ_T_CLUSTER"/log/slurmctld.log "$HQ_T_CLUSTER"/log/slurmd-*.log 2>/dev/null
  fi
  [ -n "${HQ_T_CLUSTER:-}" ] && bash "$HQ_SRC/tools/slurm-local.sh" stop "$HQ_T_CLUSTER"
  cd /
  [ -n "${HQ_T_WORK:-}" ] && rm -rf "$HQ_T_WORK"
  exit "$rc"
}

# hq_t_field JOBID NAME: one field of `scontrol show job -o` (kept MinJobAge=300 s after the end).
hq_t_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }

# hq_t_wait JOBID [TIMEOUT_S]: poll until the job has left the queue. A requeued job waits
# ~2 min for its BeginTime; the test releases it (scontrol update StartTime=now) once it has been
# pending for 3 s: released within the second of its requeue, slurmd refuses the new launch
# ("Job credential revoked") and the job FAILS.
hq_t_wait() {
  local j=$1 t=${2:-120} i st pend=-1
  for ((i = 0; i < t * 2; i++)); do
    st=$(squeue -h -j "$j" -o '%T %r' 2>/dev/null || true)
    [ -n "$st" ] || return 0
    if [ "$st" = "PENDING BeginTime" ]; then
      [ "$pend" -ge 0 ] || pend=$SECONDS
      [ $((SECONDS - pend)) -lt 3 ] || scontrol update JobId="$j" StartTime=now >/dev/null 2>&1
    else
      pend=-1
    fi
    sleep 0.5
  done
  fail "job $j still in the queue after $t s: $(squeue -h -j "$j" -o '%T %r')"
}

# hq_t_wait_log JOBID FILE PATTERN [TIMEOUT_S]: wait until a line matching PATTERN appears
# (fails at once when the job ends first).
hq_t_wait_log() {
  local i
  for ((i = 0; i < ${4:-60} * 10; i++)); do
    grep -qE "$3" "$2" 2>/dev/null && return 0
    if [ $((i % 5)) -eq 4 ] && [ -z "$(squeue -h -j "$1" -o %T 2>/dev/null)" ]; then
      grep -qE "$3" "$2" 2>/dev/null && return 0
      fail "job $1 ended before a line matching '$3' appeared in $2"
    fi
    sleep 0.1
  done
  fail "no line matching '$3' in $2 after ${4:-60} s"
}

# hq_t_expect_job JOBID STATE EXIT: check the final job record ("0:0" = exit 0, no signal).
hq_t_expect_job() {
  local st ec
  st=$(hq_t_field "$1" JobState)
  ec=$(hq_t_field "$1" ExitCode)
  [ "$st" = "$2" ] || fail "job $1: state $st, expected $2 (ExitCode $ec)"
  [ -z "$3" ] || [ "$ec" = "$3" ] || fail "job $1: ExitCode $ec, expected $3"
  tlog "job $1: $st, ExitCode $ec, Restarts $(hq_t_field "$1" Restarts)"
}

# hq_t_check_resumed NAME LOG [REF]: the run logged in LOG chose --resume and resumed mid-way,
# and $HQ_T_WORK/NAME.h5 now equals the uninterrupted REF (default $HQ_T_WORK/ref.h5).
hq_t_check_resumed() {
  grep -q "partial (interrupted run) -> --resume" "$2" || fail "$1: the resumed run did not choose --resume"
  grep -qE "resuming .* after [1-5] of 6 blocks" "$2" || fail "$1: hpcq did not resume mid-way"
  hq_t_h5same "${3:-$HQ_T_WORK/ref.h5}" "$HQ_T_WORK/$1.h5" || fail "$1: resumed result differs from the uninterrupted run"
}

# hq_t_mpirun_ref OUT [hpcq quantize args]: the same run under mpirun -np 2, outside Slurm.
hq_t_mpirun_ref() {
  local out=$1
  shift
  env -u SLURM_CONF "${MPIEXEC:-mpirun}" -np 2 "$HQ_BIN" quantize "${HQ_QARGS[@]}" --out "$out" --overwrite --quiet "$@" \
    >"$out.mpirun.log" 2>&1 || { cat "$out.mpirun.log"; fail "mpirun -np 2 reference run failed"; }
}

# hq_t_h5same A B: 0 when two hpcq results hold the same data: every dataset (codes, scales,
# zeros, g_idx, unquantized tensors, progress) and every attribute bit for bit, except those
# that measure the run rather than the result (seconds_*, created, peak_rss_bytes_max).
# Prints the differing objects otherwise.
HQ_T_TIMING_ATTRS='(seconds_[a-z_]+|created|peak_rss_bytes_max)'
hq_t_h5same() {
  local a=$1 b=$2 objs_a objs_b
  objs_a=$(h5ls -r "$a" | sort) || return 2
  objs_b=$(h5ls -r "$b" | sort) || return 2
  if [ "$objs_a" != "$objs_b" ]; then
    echo "object lists differ:"; diff <(echo "$objs_a") <(echo "$objs_b") | head -n 20
    return 1
  fi
  { h5diff -r "$a" "$b" 2>&1 || true; } | awk -v ok="<$HQ_T_TIMING_ATTRS of " '
    /^(attribute|dataset|group|datatype): / { item = $0; n_items++ }
    /differences found/ { if ($1 + 0 > 0 && item !~ ok) { print "differs: " item " (" $1 ")"; bad = 1 } }
    /[Nn]ot comparable|error/ { print; bad = 1 }
    END { if (n_items < 10) { print "h5diff compared only " n_items " objects"; bad = 1 }; exit bad }'
}
