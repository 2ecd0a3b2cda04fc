#!/usr/bin/env bash
# Damaged .h5 results: every reader (inspect, eval, export, compare) survives any byte damage
# with a clear error, and a changed byte in a dataset's data is reported (hq64 checksums),
# never a different model. tests/h5_damage.py flips HQ_DAMAGE_VARIANTS (default 400) bytes of a
# small result (stories260K, 8-bit, 560 kB) at seeded positions in the quantized data, the
# tensors, /progress and the HDF5 metadata, cuts it, or overwrites ranges; see its docstring
# for the rules. Then `quantize --resume` reads damaged copies of a partial result (a run
# stopped by `ulimit -f` after some blocks): HQ_DAMAGE_RESUME variants (default 40) must each
# be refused or resume to the uninterrupted result. Failing variants are kept as failed-N.h5
# in a folder (printed).
set -uo pipefail
BIN=${HQ_BIN:?}; S=${HQ_TESTDATA:?}/stories260K-hf
command -v h5dump >/dev/null || { echo "SKIPPED: h5dump (hdf5-tools) not found"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/hq_damage_XXXXXX")
trap 'rm -rf "$T"' EXIT
Q=(--model "$S" --calib "$S/sotu-calib.tok512.i32" --nsamples 4 --seqlen 64 --bits 8 --group-size 32)
"$BIN" quantize "${Q[@]}" --out "$T/good.h5" 2> "$T/q.log" || { cat "$T/q.log"; exit 1; }
python3 "$(dirname "$0")/h5_damage.py" "$BIN" "$T/good.h5" "$S/wikitext2-test.tok512.i32" "$T/work" \
  --variants "${HQ_DAMAGE_VARIANTS:-400}" --seed "${HQ_DAMAGE_SEED:-13}"
rc=$?
# a partial result: the file size limit stops the run after a few flushed blocks
kb=$(( $(stat -c %s "$T/good.h5") * 2 / 3 / 1024 ))
(ulimit -f "$kb"; exec "$BIN" quantize "${Q[@]}" --out "$T/part.h5") > "$T/part.log" 2>&1
if "$BIN" inspect "$T/part.h5" 2>&1 | grep -qE "[1-9][0-9]* of [0-9]+ blocks"; then
  python3 "$(dirname "$0")/h5_damage.py" "$BIN" "$T/part.h5" "$S/wikitext2-test.tok512.i32" "$T/work" \
    --variants "${HQ_DAMAGE_RESUME:-40}" --seed "${HQ_DAMAGE_SEED:-13}" --resume "$T/good.h5" "${Q[@]}" || rc=1
else
  echo "FAIL: no partial result under ulimit -f $kb"; tail -3 "$T/part.log"; "$BIN" inspect "$T/part.h5"; rc=1
fi
if [ $rc -ne 0 ]; then
  keep=$(mktemp -d "${TMPDIR:-/tmp}/hq_damage_failed_XXXXXX")
  cp "$T"/work/failed-*.h5 "$T/good.h5" "$keep"/ 2>/dev/null
  echo "test_h5_damage: FAILED; damaged variants kept in $keep"
fi
exit $rc
