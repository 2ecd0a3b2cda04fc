#!/usr/bin/env bash
# A full disk, a file size limit or a non-file --out never hang, crash or leave a file that
# says complete. quantize (5M model, 4.6 MB result) runs at 1 and 2 ranks (and 3 for two
# sizes) with --out on a tmpfs of 0.5, 1, 3 and 4.2 MB (the write fails in the first tensor,
# in an early block, in the last block), and with `ulimit -f` on the hpcq processes; each run must: exit non-zero
# within the timeout (no hang), without a signal (no segfault), with the errno's words on
# every rank ("no space left on device" / "file size limit exceeded"), and leave no file that
# `hpcq inspect` calls complete or `hpcq eval` accepts. A run stopped by a full disk resumes
# to the same model once there is room. `--out /dev/null --overwrite` is refused cleanly.
# Without permission to mount a tmpfs, the disk-full cases use `ulimit -f` (printed).
set -uo pipefail
BIN=${HQ_BIN:?}; M=${HQ_TESTDATA:?}/llama-sotu-5m; MPIEXEC=${MPIEXEC:-mpiexec}
. "$(dirname "$0")/testlib.sh"
T=$(mktemp -d "${TMPDIR:-/tmp}/hq_diskfull_XXXXXX")
MNT=$T/mnt
mkdir -p "$MNT"
cleanup() { mountpoint -q "$MNT" && umount "$MNT"; rm -rf "$T"; }
trap cleanup EXIT
Q=(quantize --model "$M" --calib "$M/calib.i32" --nsamples 8 --seqlen 128 --bits 4 --group-size 128)

if mount -t tmpfs -o size=512k tmpfs "$MNT" 2>/dev/null; then
  umount "$MNT"; HAVE_MOUNT=1; echo "disk full: a small tmpfs mounted at $MNT"
else
  HAVE_MOUNT=0; echo "disk full: cannot mount a tmpfs here, using ulimit -f instead"
fi

# check NAME NP WORDS LOG RC OUT: the rules above for one failed run
check() {
  local name=$1 np=$2 words=$3 log=$4 rc=$5 out=$6
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then bad "$name: timed out (hang)"; return; fi
  if [ "$rc" -ge 128 ] || grep -qiE "segmentation fault|signal: *[0-9]|exit code: *1[3-5][0-9]" "$log"; then
    bad "$name: crashed (rc $rc)"; sed -n 1,20p "$log"; return
  fi
  [ "$rc" -ne 0 ] || { bad "$name: exit 0"; return; }
  local n
  n=$(grep -ci "$words" "$log")
  [ "$n" -ge "$np" ] && grep -q "hpcq quantize: error: " "$log" &&
    { [ "$np" -lt 2 ] || grep -q "hpcq quantize (rank 1): error: " "$log"; } ||
    { bad "$name: '$words' not said by every rank ($n lines)"; grep -i error "$log" | head -4; return; }
  if complete_result "$out"; then
    bad "$name: inspect calls the file complete"; return
  fi
  if [ -e "$out" ] && "$BIN" eval --model "$out" --tokens "$M/wikitext2-test.i32" --seqlen 64 --max-windows 1 >/dev/null 2>&1; then
    bad "$name: eval accepted the file"; return
  fi
  ok "$name: rc $rc, $(grep -m1 "quantize: error" "$log" | cut -c1-160)"
}

# run_full NP SIZE: --out on a fresh tmpfs of SIZE (or ulimit -f of SIZE)
run_full() {
  local np=$1 size=$2 log=$T/full-$1-$2.log rc
  mountpoint -q "$MNT" && umount "$MNT"
  if [ "$HAVE_MOUNT" = 1 ]; then
    mount -t tmpfs -o "size=$size" tmpfs "$MNT"
    timeout 120 "$MPIEXEC" -np "$np" "$BIN" "${Q[@]}" --out "$MNT/x.h5" --overwrite > "$log" 2>&1
    rc=$?
    check "tmpfs $size, $np rank(s)" "$np" "no space left on device" "$log" "$rc" "$MNT/x.h5"
  else
    local kb=${size%k}; [ "$kb" = "$size" ] && kb=$(( ${size%m} * 1024 ))
    limited "$np" "$kb" "$T/x-$np-$size.h5" "$log"
  fi
}

# limited NP KB OUT LOG: quantize with every hpcq process limited to KB KiB files
limited() {
  local np=$1 kb=$2 out=$3 log=$4 rc
  if [ "$np" = 1 ]; then # no launcher: the singleton start must survive the limit too
    (ulimit -f "$kb"; exec timeout 120 "$BIN" "${Q[@]}" --out "$out" --overwrite) > "$log" 2>&1
  else
    timeout 120 "$MPIEXEC" -np "$np" bash -c "ulimit -f $kb; exec \"\$0\" \"\$@\"" "$BIN" "${Q[@]}" \
      --out "$out" --overwrite > "$log" 2>&1
  fi
  rc=$?
  check "ulimit -f $kb, $np rank(s)" "$np" "file size limit exceeded" "$log" "$rc" "$out"
}

for np in 1 2; do
  for size in 512k 1m 3m 4200k; do run_full "$np" "$size"; done
  [ "$HAVE_MOUNT" = 0 ] || limited "$np" 2000 "$T/u-$np.h5" "$T/u-$np.log"
done
# 3 ranks: the collective writes then have aggregators and other ranks (a write can fail on
# one rank only); 3 MB ran out inside a flush and hung before room_to_flush (src/io/h5io.c)
for size in 1m 3m; do run_full 3 "$size"; done

# stopped by a full disk (4 MB: some blocks done), resumed with room: the same model
"$BIN" "${Q[@]}" --out "$T/ref.h5" > "$T/ref.log" 2>&1 || { cat "$T/ref.log"; bad "reference run failed"; }
part=$MNT/x.h5; [ "$HAVE_MOUNT" = 1 ] || part=$T/x-2-4200k.h5
mountpoint -q "$MNT" && umount "$MNT"
if [ "$HAVE_MOUNT" = 1 ]; then
  mount -t tmpfs -o size=4m tmpfs "$MNT"
  timeout 120 "$MPIEXEC" -np 2 "$BIN" "${Q[@]}" --out "$part" --overwrite > "$T/part.log" 2>&1
fi
cp "$part" "$T/resume.h5"
if timeout 120 "$MPIEXEC" -np 2 "$BIN" "${Q[@]}" --out "$T/resume.h5" --resume > "$T/resume.log" 2>&1 &&
   grep -q "resuming" "$T/resume.log" &&
   "$BIN" compare "$T/resume.h5" "$T/ref.h5" > "$T/cmp.txt" 2>&1; then
  ok "resumed after the disk-full stop: $(grep -m1 resuming "$T/resume.log" | cut -c15-90); $(tail -1 "$T/cmp.txt")"
else
  bad "resume after the disk-full stop"; tail -5 "$T/resume.log" "$T/cmp.txt"
fi

# --out that is not a regular file
for np in 1 2; do
  timeout 60 "$MPIEXEC" -np "$np" "$BIN" "${Q[@]}" --out /dev/null --overwrite > "$T/null.log" 2>&1
  rc=$?
  check "--out /dev/null --overwrite, $np rank(s)" "$np" "not a regular file" "$T/null.log" "$rc" /nonexistent
done
[ -c /dev/null ] || bad "/dev/null is no longer a character device"
finish test_h5_diskfull
