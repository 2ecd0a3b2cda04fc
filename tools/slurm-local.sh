#!/usr/bin/env bash
# A throw-away Slurm cluster (munge + slurmctld + one slurmd per node) under one temp dir, for
# the Slurm tests and for trying jobs/*.sbatch on a workstation. Needs root and the Debian
# packages slurm-wlm and munge (tools/install-deps.sh). It never touches a system Slurm: its
# own config, state, spool, logs, munge key/socket and free ports, all under DIR.
#
#   tools/slurm-local.sh start [--nodes N] [DIR]  start; prints DIR (default: a new /tmp/hq-slurm.XXXXXX)
#   tools/slurm-local.sh stop DIR      cancel jobs, drain, shut down, kill by PID, remove DIR
#   tools/slurm-local.sh status DIR    sinfo + squeue of that cluster
#   source DIR/env.sh                  point sbatch/squeue/scontrol at it (exports SLURM_CONF)
#
# One node (the default, --nodes 1) is this machine itself, "localhost". With --nodes N (2-8) each node
# hqn1..hqnN is a slurmd in its own network namespace (its own address 10.X.Y.(10+k) on a
# private bridge, where slurmctld listens at 10.X.Y.1), UTS namespace (hostname hqnK) and mount
# namespace, in which DIR/local is that node's own folder DIR/nodes/hqnK/local: node-local
# scratch (and Slurm's TmpFS), while everything else, the output folder included, is shared.
# Jobs and MPI ranks on different nodes talk over TCP between the namespaces, as on a cluster.
#
# Everything is stopped by PID (from the daemons' own pid files, checked against
# /proc/PID/comm, and for a multi-node cluster every process left in its namespaces), never by
# name. Daemons are started with setsid, so a `timeout` or Ctrl-C around the caller's process
# group does not kill them behind stop's back.
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

start_munge() { # start_munge DIR: fresh key, own socket; runs as the munge user like the packaged service
  local dir=$1 i
  install -d -o munge -g munge -m 0755 "$dir/munge" # munged wants its socket dir a+x
  setpriv --reuid=munge --regid=munge --clear-groups mungekey --create --keyfile="$dir/munge/munge.key" \
    >/dev/null 2>&1 || die "mungekey failed"
  HQ_SLURM_LOCAL_DAEMON="$dir" setsid setpriv --reuid=munge --regid=munge --clear-groups \
    munged -F --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
    --log-file="$dir/munge/munged.log" </dev/null >"$dir/log/munged.out" 2>&1 &
  for i in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && return 0; sleep 0.1; done
  cat "$dir/log/munged.out" >&2 2>/dev/null || true
  die "munged did not start"
}

free_subnet() { # a 10.X.Y prefix that no address or route but the default one covers
  local s used
  used=$(ip -4 addr show)
  for _ in $(seq 100); do
    s=10.$((200 + RANDOM % 50)).$((RANDOM % 256))
    grep -qF " $s." <<<"$used" && continue
    [ -z "$(ip -4 route show table all to match "$s.0/24" 2>/dev/null | grep -v '^default ')" ] || continue
    echo "$s"; return
  done
  die "no free 10.x.y.0/24 subnet found"
}

nip() { ip "$@" || die "'ip $*' failed (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)"; }

# net_up DIR N: a bridge (slurmctld's address SUB.1) and N network namespaces, each with a veth
# into it (node k: SUB.(10+k)); sets NET_SUB and NET_NS (the namespaces, node order). Every name
# is recorded in DIR/net before it is created, for stop. (Not in a $(...): set -e holds here.)
net_up() {
  local dir=$1 n=$2 id br k ns
  command -v ip >/dev/null || die "'ip' not found: install iproute2"
  for _ in $(seq 20); do id=$(printf '%04x' $((RANDOM % 65536))); ip link show "hqb$id" >/dev/null 2>&1 || break; done
  NET_SUB=$(free_subnet) br=hqb$id NET_NS=()
  [ -n "$NET_SUB" ] || die "no free subnet"
  echo "br $br" >>"$dir/net"
  nip link add "$br" type bridge
  nip addr add "$NET_SUB.1/24" dev "$br"
  nip link set "$br" up
  printf '127.0.0.1 localhost\n%s.1 hqctl\n' "$NET_SUB" >"$dir/hosts"
  for k in $(seq "$n"); do
    ns=hq$id-hqn$k
    printf 'ns %s\nveth %s\n' "$ns" "hq${id}h$k" >>"$dir/net"
    nip netns add "$ns"
    NET_NS+=("$ns")
    nip link add "hq${id}h$k" type veth peer name "hq${id}c$k"
    nip link set "hq${id}h$k" master "$br" up
    nip link set "hq${id}c$k" netns "$ns"
    nip -n "$ns" link set "hq${id}c$k" name eth0
    nip -n "$ns" addr add "$NET_SUB.$((10 + k))/24" dev eth0
    nip -n "$ns" link set eth0 up
    nip -n "$ns" link set lo up
    echo "$NET_SUB.$((10 + k)) hqn$k" >>"$dir/hosts"
    mkdir -p "$dir/nodes/hqn$k/local/tmp"
  done
}

net_down() { # net_down DIR: kill what runs in the namespaces, delete them, the bridge and veths
  local dir=$1 kind name pids
  [ -f "$dir/net" ] || return 0
  while read -r kind name; do
    [ "$kind" = ns ] && ip netns list 2>/dev/null | grep -q "^$name\b" || continue
    pids=$(ip netns pids "$name" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      echo "slurm-local: killing what is left in $name: $(echo $pids)" >&2
      kill -KILL $pids 2>/dev/null || true
      for _ in $(seq 50); do [ -z "$(ip netns pids "$name" 2>/dev/null)" ] && break; sleep 0.1; done
    fi
    ip netns del "$name" 2>/dev/null || echo "slurm-local: could not delete netns $name" >&2
  done <"$dir/net"
  while read -r kind name; do # a veth left in this namespace (its peer never moved), the bridge
    case $kind in br | veth) ip link show "$name" >/dev/null 2>&1 && ip link del "$name" 2>/dev/null || true ;; esac
  done <"$dir/net"
}

# write_conf DIR PORT NCPU NODES [SUBNET]: slurm.conf and env.sh (no SUBNET: one node, localhost)
write_conf() {
  local dir=$1 port=$2 ncpu=$3 n=$4 sub=${5:-} overrides="" first_id ctld nodes names k
  # The tests run 2-rank jobs: on a 1-CPU machine, declare 2 CPUs (config_overrides keeps slurmd
  # from draining the node for claiming more than it has).
  if [ "$ncpu" -lt 2 ]; then ncpu=2; overrides="SlurmdParameters=config_overrides"; fi
  first_id=$((1000 + (RANDOM * 32768 + RANDOM) % 900000))
  if [ -z "$sub" ]; then
    ctld=localhost nodes="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu State=UNKNOWN" names=localhost
  else
    ctld="localhost($sub.1)" nodes="" names=""
    for k in $(seq "$n"); do
      nodes+="NodeName=hqn$k NodeAddr=$sub.$((10 + k)) NodeHostname=hqn$k CPUs=$ncpu State=UNKNOWN"$'\n'
      names+="${names:+,}hqn$k"
    done
  fi
  cat >"$dir/slurm.conf" <<EOC
$MARK (tools/slurm-local.sh); remove with: tools/slurm-local.sh stop $dir
ClusterName=hqlocal
SlurmctldHost=$ctld
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
# One spool, pid and log file per node (%n: node name).
SlurmdSpoolDir=$dir/spool/%n
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
# Job-private temp (the PMIx plugin puts its per-step directories here, not in /tmp where a
# second test cluster with the same job ids would collide). Several nodes: node-local.
TmpFS=$dir/${sub:+local/}tmp
# Job ids start at a random value: two clusters on one machine never reuse each other's ids.
FirstJobId=$first_id
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
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
${nodes}
PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP
EOC
  : >"$dir/plugstack.conf"
  printf '%s: source this to use it\nexport SLURM_CONF=%s\n' "$MARK" "$dir/slurm.conf" >"$dir/env.sh"
}

# start_slurmd DIR NODE [NETNS]: in its namespaces (nsenter, not `ip netns exec`, which would
# mount a fresh /sys without the cgroup file system slurmd needs) (hostname NODE, DIR/local = the node's own
# DIR/nodes/NODE/local, a private /etc/hosts naming the nodes) when NETNS is given.
start_slurmd() {
  local dir=$1 node=$2 ns=${3:-}
  mkdir -p "$dir/spool/$node"
  if [ -z "$ns" ]; then
    HQ_SLURM_LOCAL_DAEMON="$dir" setsid slurmd -D -N "$node" -f "$SLURM_CONF" </dev/null >"$dir/log/slurmd-$node.out" 2>&1 &
    return
  fi
  HQ_SLURM_LOCAL_DAEMON="$dir" setsid nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation slave \
    sh -c 'hostname "$1" && mount --bind "$2" "$3" && mount --bind "$4" /etc/hosts && exec slurmd -D -N "$1" -f "$5"' \
    hq-node "$node" "$dir/nodes/$node/local" "$dir/local" "$dir/hosts" "$SLURM_CONF" \
    </dev/null >"$dir/log/slurmd-$node.out" 2>&1 &
}

wait_idle() { # wait_idle DIR N: every node idle within 30 s
  local dir=$1 n=$2 st=""
  for _ in $(seq 150); do
    st=$(sinfo -h -N -o %T 2>/dev/null || true)
    [ "$(grep -cx idle <<<"$st")" -eq "$n" ] && return 0
    sleep 0.2
  done
  echo "slurm-local: node states '$(echo $st)' after 30 s; logs:" >&2
  tail -n 20 "$dir"/log/*.log "$dir"/log/*.out >&2 2>/dev/null || true
  return 1
}

start() {
  local n=1 dir=""
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) n=${2:-}; shift ;;
      -*) die "unknown option $1 (usage: start [--nodes N] [DIR])" ;;
      *) dir=$1 ;;
    esac
    shift
  done
  [[ "$n" =~ ^[1-8]$ ]] || die "--nodes takes 1 to 8, not '$n'"
  [ -z "$dir" ] || [ ! -e "$dir" ] || [ -z "$(ls -A "$dir" 2>/dev/null)" ] ||
    die "$dir exists and is not empty: give a new or empty folder (or none: a new /tmp/hq-slurm.XXXXXX)"
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as any user; munged runs as munge)"
  for b in munged mungekey slurmctld slurmd sbatch scontrol sinfo setpriv unshare nsenter; do
    command -v "$b" >/dev/null || die "'$b' not found: install slurm-wlm, munge and util-linux (tools/install-deps.sh)"
  done
  id munge >/dev/null 2>&1 || die "no 'munge' user: install the munge package"
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/hq-slurm.XXXXXX); else mkdir -p "$dir"; fi
  dir=$(cd "$dir" && pwd)
  chmod 0755 "$dir" # munged (user munge) must traverse it
  mkdir -p "$dir"/{state,spool,log,run,tmp,local}
  printf '%s\n' "$MARK" >"$dir/slurm.conf" # stop recognises the folder from here on
  trap 'echo "slurm-local: start failed, cleaning up $dir" >&2; stop "$dir" >&2 || true' ERR EXIT
  start_munge "$dir"
  local sub="" ncpu k
  NET_NS=()
  if [ "$n" -gt 1 ]; then net_up "$dir" "$n"; sub=$NET_SUB; fi
  # What slurmd itself detects (nproc would obey OMP_NUM_THREADS, which test environments set).
  ncpu=$(slurmd -C 2>/dev/null | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$ncpu" ] || ncpu=$(getconf _NPROCESSORS_ONLN)
  write_conf "$dir" "$(free_port_pair)" "$ncpu" "$n" "$sub"
  export SLURM_CONF="$dir/slurm.conf"
  HQ_SLURM_LOCAL_DAEMON="$dir" setsid slurmctld -D -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
  if [ "$n" -eq 1 ]; then start_slurmd "$dir" localhost; else
    for k in $(seq "$n"); do start_slurmd "$dir" "hqn$k" "${NET_NS[k - 1]}"; done
  fi
  wait_idle "$dir" "$n" || die "cluster did not come up"
  trap - ERR EXIT
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
  local ctld i f
  ctld=$(tr -dc 0-9 2>/dev/null <"$dir/run/slurmctld.pid" || true)
  if pid_alive "$ctld" slurmctld; then
    # 1. cancel every job, 2. wait for the queue to drain and the step sockets to vanish.
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
    [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
    for i in $(seq 450); do
      if [ -z "$(squeue -h -o %A 2>/dev/null)" ] && ! compgen -G "$dir/spool/*/*_[0-9]*" >/dev/null; then break; fi
      sleep 0.1
    done
    # 3. orderly shutdown of slurmctld and slurmd.
    scontrol shutdown >/dev/null 2>&1 || true
    wait_gone "$ctld" slurmctld 10 || true
  fi
  # 4. whatever is left, by PID from the daemons' own pid files, then the namespaces.
  for f in "$dir"/run/slurmd-*.pid; do kill_pidfile "$f" slurmd; done
  kill_pidfile "$dir/run/slurmctld.pid" slurmctld
  net_down "$dir"
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
  *) echo "usage: $0 start [--nodes N] [DIR] | stop DIR | status DIR" >&2; exit 2 ;;
esac
