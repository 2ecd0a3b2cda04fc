#!/usr/bin/env bash
# One Hessian (accumulated, finalised and factorised in one node-shared buffer) and one copy of
# the block's linears per node (README "Memory"): with several ranks on this node the run
# shares them (node_share, shared_linears in the JSON summary)
# and its result equals the one-rank run and the unshared run exactly, also over several
# (emulated) nodes; when /dev/shm cannot hold them (a 16 MiB tmpfs mounted over
# it in a private mount namespace) the run says so once, keeps a copy per rank and still gives
# the same result.
set -u
. "$(dirname "$0")/testlib.sh"
hq_tmpdir node_share
Q0=(quantize --model "$M" --calib "$M/calib.i32" --nsamples 8 --seqlen 128 --bits 4 --group-size 128 --act-order)
Q=("${Q0[@]}" --quiet)
share_of() { grep -o '"node_share": [a-z]*' "$1" | sed 's/.*: //'; }
lins_of() { grep -o '"shared_linears": [0-9]*' "$1" | sed 's/.*: //'; } # 7 a block when shared
same() { if "$BIN" compare "$2" "$3" > "$T/cmp" 2>&1; then ok "$1"; else bad "$1: $(tail -1 "$T/cmp")"; fi; }

"$MPIEXEC" -np 1 "$BIN" "${Q[@]}" --out "$T/np1.h5" --json-summary "$T/np1.json" 2> "$T/np1.log" || bad "np 1 run: $(tail -2 "$T/np1.log")"
[ "$(share_of "$T/np1.json")" = false ] && ok "one rank: nothing to share" || bad "np 1 node_share $(share_of "$T/np1.json")"
"$MPIEXEC" -np 3 "$BIN" "${Q[@]}" --out "$T/np3.h5" --json-summary "$T/np3.json" 2> "$T/np3.log" || bad "np 3 run: $(tail -2 "$T/np3.log")"
[ "$(share_of "$T/np3.json")" = true ] && ok "three ranks on one node share" || bad "np 3 node_share $(share_of "$T/np3.json")"
same "np 3 shared = np 1" "$T/np1.h5" "$T/np3.h5"
[ "$(lins_of "$T/np3.json")" = 42 ] && ok "three ranks on one node: every linear one copy for the node (42)" \
  || bad "np 3 shared_linears $(lins_of "$T/np3.json"), not 42"
HQ_NODE_SHARE=0 "$MPIEXEC" -np 3 "$BIN" "${Q[@]}" --out "$T/off.h5" --json-summary "$T/off.json" 2> "$T/off.log" || bad "HQ_NODE_SHARE=0 run: $(tail -2 "$T/off.log")"
[ "$(share_of "$T/off.json")" = false ] && [ "$(lins_of "$T/off.json")" = 0 ] && ok "HQ_NODE_SHARE=0 turns it off" \
  || bad "HQ_NODE_SHARE=0 node_share $(share_of "$T/off.json"), shared_linears $(lins_of "$T/off.json")"
same "np 3 unshared = np 1" "$T/np1.h5" "$T/off.h5"

# several nodes (HQ_TEST_RANKS_PER_NODE cuts this host's ranks into "nodes"): each node adds into
# its own shared Hessian, the node leaders sum them, every node factorises its own copy; each
# node holds one copy of the linears, its ranks' dequantized rows exchanged by the leaders
for spec in "4 2" "3 2"; do # 3 in 2: a node of two and a node of one
  set -- $spec
  HQ_TEST_RANKS_PER_NODE=$2 "$MPIEXEC" -np $1 "$BIN" "${Q[@]}" --out "$T/nodes$1.h5" --json-summary "$T/nodes$1.json" 2> "$T/nodes$1.log" \
    || bad "np $1 in nodes of $2: $(tail -2 "$T/nodes$1.log")"
  [ "$(share_of "$T/nodes$1.json")" = true ] && [ "$(lins_of "$T/nodes$1.json")" = 42 ] && ok "np $1 in nodes of $2 share" \
    || bad "np $1 nodes node_share $(share_of "$T/nodes$1.json"), shared_linears $(lins_of "$T/nodes$1.json")"
  same "np $1 in nodes of $2 = np 1" "$T/np1.h5" "$T/nodes$1.h5"
done

# /dev/shm too small: needs a private mount namespace (root, unshare)
if unshare -m true 2> /dev/null; then
  unshare -m bash -c 'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$@"' _ \
    "$MPIEXEC" -np 2 "$BIN" "${Q0[@]}" --out "$T/small.h5" > "$T/small.out" 2> "$T/small.log"
  rc=$?
  [ $rc -eq 0 ] && ok "small /dev/shm: the run completes" || bad "small /dev/shm: exit $rc: $(tail -3 "$T/small.log")"
  n=$(grep -c 'node-shared memory' "$T/small.log")
  [ "$n" -eq 1 ] && ok "small /dev/shm: one warning ($(grep -m1 -o 'no room.*' "$T/small.log" | cut -c1-70))" \
    || bad "small /dev/shm: $n warnings: $(head -3 "$T/small.log")"
  same "small /dev/shm = np 1" "$T/np1.h5" "$T/small.h5"
else
  echo "skip: no private mount namespace here (unshare -m): the small /dev/shm case is not run"
fi
finish test_node_share
