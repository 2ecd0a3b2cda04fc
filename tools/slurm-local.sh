#!/usr/bin/env bash
# A throw-away single-node Slurm cluster (munge + slurmctld + slurmd) under one temp dir, for
# the Slurm tests and for trying jobs/*.sbatch on a workstation. Needs root and the Debian
# packages slurm-wlm and munge (tools/install-deps.sh). It never touches a system Slurm: its
# own config, state, spool, logs, munge key/socket and free ports, all under DIR.
#
#   tools/slurm-local.sh start [DIR]   start; prints DIR (default: a new /tmp/hq-slurm.XXXXXX)
#   tools/slurm-local.sh stop DIR      cancel jobs, drain, shut down, kill by PID, remove DIR
#   tools/slurm-local.sh status DIR    sinfo + squeue of that cluster
#   source DIR/env.sh                  point sbatch/squeue/scontrol at it (exports SLURM_CONF)
#
# Everything is stopped by PID (from the daemons' own pid files, checked against
# /proc/PID/comm), never by name. Daemons are started with setsid, so a `timeout` or Ctrl-C
# around the caller's process group does not kill them behind stop's back.
set -euo pipefail

die() { echo "slurm-local: $*" >&2; exit 1; }
MARK="# hpcq slurm-local cluster"

free_port_pair() { # two consecutive free TCP ports in 20000-59999 (bound ports from /proc/net)
  local p used
  used=$(awk 'FNR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null |
         while read -r h; do [ -z "$h" ] || echo $((16#$h)); done | sort -u)
  for _ in $(seq 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if ! grep -qx "$p" <<<"$used" && ! grep -qx "$((p + 1))" <<<"$used"; then echo "$p"; return; fi
  done
  die "no free port pair found"
}

pid_alive() { # pid_alive PID COMM — the process exists and is that program
  [ -n "${1:-}" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

wait_gone() { # wait_gone PID COMM SECONDS
  local i
  for i in $(seq $(($3 * 10))); do pid_alive "$1" "$2" || return 0; sleep 0.1; done
  return 1
}

kill_pidfile() { # kill_pidfile FILE COMM
  local pid
  [ -s "$1" ] || return 0
  pid=$(tr -dc 0-9 <"$1")
  pid_alive "$pid" "$2" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait_gone "$pid" "$2" 10 || { echo "slurm-local: $2 ($pid) ignored TERM, sending KILL" >&2
                                kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" "$2" 5 || true; }
}

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as any user; munged runs as munge)"
  for b in munged mungekey slurmctld slurmd sbatch scontrol sinfo setpriv; do
    command -v "$b" >/dev/null || die "'$b' not found: install slurm-wlm and munge (tools/install-deps.sh)"
  done
  id munge >/dev/null 2>&1 || die "no 'munge' user: install the munge package"
  local dir=${1:-}
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/hq-slurm.XXXXXX); else mkdir -p "$dir"; fi
  dir=$(cd "$dir" && pwd)
  chmod 0755 "$dir" # munged (user munge) must traverse it
  mkdir -p "$dir"/{state,spool,log,run,tmp}
  install -d -o munge -g munge -m 0755 "$dir/munge" # munged wants its socket dir a+x
  trap 'echo "slurm-local: start failed, cleaning up $dir" >&2; stop "$dir" >&2 || true' ERR

  # munge: fresh key, own socket; runs as the munge user like the packaged service.
  setpriv --reuid=munge --regid=munge --clear-groups mungekey --create --keyfile="$dir/munge/munge.key" \
    >/dev/null 2>&1 || die "mungekey failed"
  HQ_SLURM_LOCAL_DAEMON="$dir" setsid setpriv --reuid=munge --regid=munge --clear-groups \
    munged -F --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
    --log-file="$dir/munge/munged.log" </dev/null >"$dir/log/munged.out" 2>&1 &
  local i
  for i in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
  if ! [ -S "$dir/munge/munge.socket" ]; then
    cat "$dir/log/munged.out" >&2 2>/dev/null || true
    stop "$dir" || true
    die "munged did not start"
  fi

  local port ncpu overrides
  port=$(free_port_pair)
  # What slurmd itself detects (nproc would obey OMP_NUM_THREADS, which test environments set).
  ncpu=$(slurmd -C 2>/dev/null | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$ncpu" ] || ncpu=$(getconf _NPROCESSORS_ONLN)
  # The tests run 2-rank jobs: on a 1-CPU machine, declare 2 CPUs (config_overrides keeps slurmd
  # from draining the node for claiming more than it has).
  overrides=""
  if [ "$ncpu" -lt 2 ]; then ncpu=2; overrides="SlurmdParameters=config_overrides"; fi
  first_id=$((1000 + (RANDOM * 32768 + RANDOM) % 900000))
  cat >"$dir/slurm.conf" <<EOF
$MARK (tools/slurm-local.sh); remove with: tools/slurm-local.sh stop $dir
ClusterName=hqlocal
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
# Job-private temp (the PMIx plugin puts its per-step directories here, not in /tmp where a
# second test cluster with the same job ids would collide).
TmpFS=$dir/tmp
# Job ids start at a random value: two clusters on one machine never reuse each other's ids.
FirstJobId=$first_id
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SchedulerParameters=batch_sched_delay=0
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
EnforcePartLimits=ALL
ReturnToService=2
# Jobs stay visible to 'scontrol show job' this long after they end.
MinJobAge=300
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or hits its limit.
KillWait=30
# A requeued batch job may start again at once (the test drives requeues).
JobRequeue=1
$overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$dir/plugstack.conf"
  cat >"$dir/env.sh" <<EOF
$MARK: source this to use it
export SLURM_CONF=$dir/slurm.conf
EOF
  export SLURM_CONF="$dir/slurm.conf"
  HQ_SLURM_LOCAL_DAEMON="$dir" setsid slurmctld -D -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
  HQ_SLURM_LOCAL_DAEMON="$dir" setsid slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >"$dir/log/slurmd.out" 2>&1 &
  local st=""
  for i in $(seq 150); do
    st=$(sinfo -h -o %T 2>/dev/null || true)
    [ "$st" = idle ] && break
    sleep 0.2
  done
  if [ "$st" != idle ]; then
    echo "slurm-local: node state '$st' after 30 s; logs:" >&2
    tail -n 20 "$dir"/log/*.log "$dir"/log/*.out >&2 2>/dev/null || true
    stop "$dir" || true
    die "cluster did not come up"
  fi
  trap - ERR
  echo "$dir"
}

stop() {
  local dir=${1:-}
  [ -n "$dir" ] || die "usage: slurm-local.sh stop DIR"
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  head -n1 "$dir/slurm.conf" 2>/dev/null | grep -qF "$MARK" ||
    { [ -d "$dir/munge" ] || [ -d "$dir/state" ] || die "$dir is not a slurm-local cluster dir"; }
  export SLURM_CONF="$dir/slurm.conf"
  local ctld pid i
  ctld=$(tr -dc 0-9 <"$dir/run/slurmctld.pid" 2>/dev/null || true)
  if pid_alive "$ctld" slurmctld; then
    # 1. cancel every job, 2. wait for the queue to drain and the step sockets to vanish.
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
    [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
    for i in $(seq 450); do
      if [ -z "$(squeue -h -o %A 2>/dev/null)" ] && ! compgen -G "$dir/spool/localhost_[0-9]*" >/dev/null; then break; fi
      sleep 0.1
    done
    # 3. orderly shutdown of slurmctld and slurmd.
    scontrol shutdown >/dev/null 2>&1 || true
    wait_gone "$ctld" slurmctld 10 || true
  fi
  # 4. whatever is left, by PID from the daemons' own pid files.
  kill_pidfile "$dir/run/slurmd.pid" slurmd
  kill_pidfile "$dir/run/slurmctld.pid" slurmctld
  # Stray step daemons of this cluster (they inherit HQ_SLURM_LOCAL_DAEMON=DIR from slurmd).
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qxF "HQ_SLURM_LOCAL_DAEMON=$dir" || continue
    echo "slurm-local: killing leftover slurmstepd $p" >&2
    kill -KILL "$p" 2>/dev/null || true
  done
  kill_pidfile "$dir/munge/munged.pid" munged
  rm -rf "$dir"
}

status() {
  local dir=${1:?usage: slurm-local.sh status DIR}
  export SLURM_CONF="$dir/slurm.conf"
  sinfo; squeue
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  status) shift; status "$@" ;;
  *) echo "usage: $0 start [DIR] | stop DIR | status DIR" >&2; exit 2 ;;
esac
