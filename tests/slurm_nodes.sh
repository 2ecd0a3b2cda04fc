#!/usr/bin/env bash
# jobs/quantize.sbatch across two Slurm nodes (tools/slurm-local.sh --nodes 2: one slurmd per
# network namespace, each with its own address, hostname and node-local scratch DIR/local; the
# work dir, where the outputs go, is shared):
#  0. the nodes are separate: their own hostname and address, and a file in one node's scratch
#     is not in the other's;
#  1. a 2-node x 1-rank quantize (calibration staged into each node's scratch by a job step,
#     ranks talking over TCP) equals `mpirun -np 2` on one host, and MPI saw 2 nodes;
#  2. node-local calibration copies that differ are refused, naming the node; an --out on
#     node-local scratch is refused; neither creates an output;
#  3. a time-limit requeue (the script's USR1 warning) while its node is drained lands on the
#     other node, which resumes the shared partial file: the result equals the uninterrupted run;
#     landing on a node whose copy is stale, the resume is refused and the partial file kept, and
#     the same command resumes it once the copy is fixed.
source "$HQ_SRC/tests/slurmlib.sh"
hq_t_prereq
for b in ip nsenter unshare srun; do
  command -v "$b" >/dev/null || skip "'$b' not installed (tools/install-deps.sh installs iproute2 util-linux slurm-wlm)"
done
# What the cluster needs: a network namespace, a bridge and a veth pair into the namespace.
probe=hqp$$
if ip netns add "$probe" 2>/dev/null && ip link add "${probe}b" type bridge 2>/dev/null &&
   ip link add "${probe}h" type veth peer name "${probe}c" 2>/dev/null && ip link set "${probe}c" netns "$probe" 2>/dev/null; then
  ok_ns=1
else ok_ns=0; fi
ip link del "${probe}h" 2>/dev/null || true; ip link del "${probe}b" 2>/dev/null || true; ip netns del "$probe" 2>/dev/null || true
[ "$ok_ns" = 1 ] || skip "cannot create network namespaces, bridges and veth pairs here (needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
hq_t_start --nodes 2
SCR=$HQ_T_CLUSTER/local          # the same path on every node, a different folder on each
NODEDIR=$HQ_T_CLUSTER/nodes      # NODEDIR/hqnK/local: node K's scratch, seen from outside

# ---- 0. two separate nodes ------------------------------------------------------------------
[ "$(sinfo -h -N -o '%N %T' | sort | tr '\n' ' ')" = "hqn1 idle hqn2 idle " ] ||
  fail "expected nodes hqn1 and hqn2 idle: $(sinfo -h -N -o '%N %T' | tr '\n' ' ')"
echo "only on hqn1" >"$NODEDIR/hqn1/local/marker"
who=$(srun -N 2 --ntasks-per-node=1 -l bash -c \
  'echo "$(hostname) $(ip -4 -o addr show eth0 | awk "{print \$4}") $(cat '"$SCR"'/marker 2>/dev/null || echo none)"' | sort)
tlog "nodes: $(echo $who)"
grep -qE '^0: hqn1 10\.[0-9.]+\.11/24 only on hqn1$' <<<"$who" || fail "task 0 is not on hqn1 with its scratch: $who"
grep -qE '^1: hqn2 10\.[0-9.]+\.12/24 none$' <<<"$who" || fail "task 1 is not on hqn2 with its own scratch: $who"

# ---- 1. 2 nodes x 1 rank == mpirun -np 2 ----------------------------------------------------
# The batch script stages the calibration into each node's scratch (one task per node), as
# users do, then quantizes from there.
cat >"$HQ_T_WORK/staged.sh" <<EOF
#!/bin/bash
#SBATCH --output=$HQ_T_WORK/staged-%j.log
set -e
srun --ntasks-per-node=1 cp "$HQ_CALIB" "$SCR/calib.i32"
exec bash "$HQ_SRC/jobs/quantize.sbatch" "\$@"
EOF
# Every run reads "$SCR/calib.i32" (the path is recorded in the result): the reference, outside
# the nodes, reads this host's own folder under the nodes' mounts.
[ "${HQ_QARGS[2]}" = --calib ] || fail "HQ_QARGS layout changed"
HQ_QARGS[3]=$SCR/calib.i32
qargs=("${HQ_QARGS[@]}")
cp "$HQ_CALIB" "$SCR/calib.i32"
# (quantize.sbatch finds jobs/ from its own path, which is staged.sh's here.)
j=$(HPCQ_JOBS_DIR=$HQ_SRC/jobs sbatch --parsable -N 2 --ntasks-per-node=1 --requeue "$HQ_T_WORK/staged.sh" \
  "${qargs[@]}" --out "$HQ_T_WORK/two.h5")
tlog "2 x 1 job $j submitted"
tlog "reference: mpirun -np 2 on one host"
hq_t_mpirun_ref "$HQ_T_WORK/ref.h5"
hq_t_wait "$j" 180
hq_t_expect_job "$j" COMPLETED 0:0
log=$HQ_T_WORK/staged-$j.log
for pat in "nodes 2 \\[hqn\\[1-2\\]\\], tasks 2" "2 ranks on 2 nodes" "done: .* is complete"; do
  grep -qE "$pat" "$log" || fail "job log lacks '$pat'"
done
grep -q '"ranks": 2, "nodes": 2,' "$HQ_T_WORK/two.summary.json" || fail "the summary does not say 2 ranks on 2 nodes"
cmp -s "$HQ_CALIB" "$NODEDIR/hqn2/local/calib.i32" || fail "the calibration was not staged on hqn2"
hq_t_h5same "$HQ_T_WORK/ref.h5" "$HQ_T_WORK/two.h5" || fail "the 2-node result differs from mpirun -np 2"
tlog "2 nodes x 1 rank == mpirun -np 2 (all datasets and non-timing attributes)"

# ---- 2. differing node-local copies, node-local --out ---------------------------------------
# refused NAME JOBID PATTERN: the job failed with status 1, said PATTERN and created no output
refused() {
  hq_t_wait "$2" 120
  hq_t_expect_job "$2" FAILED 1:0
  grep -qE "$3" "$HQ_T_WORK/hpcq-quantize-$2.log" || fail "$1: the log lacks '$3'"
  tlog "$1: refused ($(grep -m1 -oE "$3" "$HQ_T_WORK/hpcq-quantize-$2.log"))"
}
# A stale copy: one token differs from the original.
python3 - "$HQ_CALIB" "$HQ_T_WORK/stale.i32" <<'EOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[4 * 1000] ^= 1
open(sys.argv[2], "wb").write(b)
EOF
cmp -s "$HQ_CALIB" "$HQ_T_WORK/stale.i32" && fail "the stale copy equals the original"
cp "$HQ_T_WORK/stale.i32" "$NODEDIR/hqn2/local/calib.i32"
j=$(sbatch --parsable -N 2 --ntasks-per-node=1 "$HQ_SRC/jobs/quantize.sbatch" "${qargs[@]}" --out "$HQ_T_WORK/stale.h5")
refused "a stale copy on hqn2" "$j" "host hqn2 reads another calibration file than rank 0"
[ ! -e "$HQ_T_WORK/stale.h5" ] || fail "the refused run created its output"
cp "$HQ_CALIB" "$NODEDIR/hqn2/local/calib.i32"
j=$(sbatch --parsable -N 2 --ntasks-per-node=1 "$HQ_SRC/jobs/quantize.sbatch" "${qargs[@]}" --out "$SCR/local.h5")
refused "--out on node-local scratch" "$j" "host hqn2 does not see rank 0's [^ ]*local.h5.lock"
[ ! -e "$NODEDIR/hqn1/local/local.h5" ] && [ ! -e "$NODEDIR/hqn2/local/local.h5" ] ||
  fail "the refused run created an output in node-local scratch"

# ---- 3. a time-limit requeue lands on the other node and resumes ----------------------------
# move NAME [STALE]: a 1-node job that gets the time-limit warning (what slurmctld sends at the
# limit minus --signal's T) after block 2 while its node is drained, so the requeued run can
# only start on the other node; STALE: that node's calibration copy goes stale meanwhile.
# Sets J (job id), LOG, FIRST and OTHER (the nodes).
# These runs use 3x the windows (blocks of ~0.3 s), so the warning comes well before the end.
[ "${qargs[4]}" = --nsamples ] || fail "HQ_QARGS layout changed"
margs=("${qargs[@]}")
margs[5]=$((3 * qargs[5]))
hq_t_mpirun_ref "$HQ_T_WORK/ref3.h5" --nsamples "${margs[5]}"
move() {
  J=$(sbatch --parsable -N 1 --ntasks-per-node=2 "$HQ_SRC/jobs/quantize.sbatch" "${margs[@]}" --out "$HQ_T_WORK/$1.h5")
  LOG=$HQ_T_WORK/hpcq-quantize-$J.log
  hq_t_wait_log "$J" "$LOG" '^block 2/6' 120
  scancel --batch --signal=USR1 "$J" # at once: the run has a second or so left
  # The requeued run waits >= 3 s for its begin time (hq_t_wait): time to take the node away.
  FIRST=$(sed -n "s/.* job $J ([^)]*) on \(hqn[0-9]\) at .*, restart 0$/\1/p" "$LOG" | head -n1)
  case $FIRST in hqn1) OTHER=hqn2 ;; hqn2) OTHER=hqn1 ;; *) fail "job $J: no first node in its log ('$FIRST')" ;; esac
  scontrol update NodeName="$FIRST" State=DRAIN Reason="hpcq test: move the job"
  [ -z "${2:-}" ] || cp "$HQ_T_WORK/stale.i32" "$NODEDIR/$OTHER/local/calib.i32"
  tlog "$1: job $J on $FIRST: USR1 after block 2, $FIRST drained${2:+, the copy on $OTHER made stale}"
  hq_t_wait "$J" 240
  scontrol update NodeName="$FIRST" State=RESUME
  [ "$(hq_t_field "$J" Restarts)" = 1 ] || fail "$1: job $J should have been requeued exactly once"
  grep -q "requeueing job $J (restart 1" "$LOG" || fail "$1: the script did not requeue itself"
  grep -qE "stopped by a signal after block [1-5] of 6" "$LOG" || fail "$1: hpcq did not stop at a block boundary"
  grep -q "on $FIRST at .*, restart 0" "$LOG" || fail "$1: the first run was not on $FIRST"
  grep -q "on $OTHER at .*, restart 1" "$LOG" || fail "$1: the requeued run did not land on $OTHER"
}
move moved
hq_t_expect_job "$J" COMPLETED 0:0
hq_t_check_resumed moved "$LOG" "$HQ_T_WORK/ref3.h5"
tlog "moved: requeued from $FIRST to $OTHER: resumed result == uninterrupted result"

# The node it lands on has a stale copy: the resume is refused (the file records the
# calibration's fingerprint), the partial file is kept, and once the copy is fixed the same
# command resumes it.
move stale stale
hq_t_expect_job "$J" FAILED 1:0
grep -q "cannot resume $HQ_T_WORK/stale.h5: it was written with other settings" "$LOG" ||
  fail "stale: the resume on $OTHER was not refused"
grep -q "calib_fnv1a64" "$LOG" || fail "stale: the refusal does not name the calibration"
cp "$HQ_CALIB" "$NODEDIR/$OTHER/local/calib.i32"
j=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" "${margs[@]}" --out "$HQ_T_WORK/stale.h5")
hq_t_wait "$j" 180
hq_t_expect_job "$j" COMPLETED 0:0
hq_t_check_resumed stale "$HQ_T_WORK/hpcq-quantize-$j.log" "$HQ_T_WORK/ref3.h5"
tlog "stale: refused on $OTHER with the stale copy; resubmitted after the fix, resumed == uninterrupted"
tlog "PASS"
