#!/usr/bin/env bash
# Peak memory of a whole (MPI) job on this node: runs the command in its own session and
# samples, every 0.2 s, the sum of the proportional set sizes (Pss, /proc/PID/smaps_rollup) of
# all its processes. Pss splits shared pages (MPI shared-memory windows, mmap'ed checkpoints)
# between the processes that map them, so the sum is what the job holds, counted once.
#   bench/peak_pss.sh COMMAND [ARGS...]   -> the command's output, then "peak_pss_mb N" on stderr
set -u
[ $# -ge 1 ] || { echo "usage: bench/peak_pss.sh COMMAND [ARGS...]" >&2; exit 2; }
setsid "$@" &
pid=$!
peak=0
while kill -0 "$pid" 2> /dev/null; do
  sid=$(ps -o sid= -p "$pid" 2> /dev/null | tr -d ' ')
  [ -n "$sid" ] || break
  kb=0
  for p in $(ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'); do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2> /dev/null)
    kb=$((kb + ${v:-0}))
  done
  [ "$kb" -gt "$peak" ] && peak=$kb
  sleep 0.2
done
wait "$pid"
rc=$?
echo "peak_pss_mb $((peak / 1024))" >&2
exit $rc
