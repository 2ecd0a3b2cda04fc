#!/usr/bin/env bash
# Run the safetensors header fuzzer (built by tests/fuzz.cmake) for HQ_FUZZ_SECONDS (default 20)
# on a seed corpus: the headers of the bundled checkpoints plus small hand-written ones.
# Fails on any crash, sanitizer report, leak, timeout or out-of-memory; crash inputs are kept as
# fuzz_safetensors-crash-* in the current (ctest) directory for replay: ./fuzz_safetensors FILE
set -euo pipefail
fz=${1:?usage: fuzz_safetensors.sh path/to/fuzz_safetensors}
data=${HQ_TESTDATA:-$(dirname "$0")/data}
secs=${HQ_FUZZ_SECONDS:-20}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$fz" ] || { echo "fuzzer binary $fz missing: the build failed"; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/hq_fuzz_XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
n=0
for f in "$data"/*/model.safetensors; do
  len=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
  head -c "$((len + 8))" "$f" | tail -c "$len" > "$work/corpus/$(basename "$(dirname "$f")").hdr"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "no bundled checkpoints under $data"; exit 1; }
s=0
for h in \
  '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' \
  '{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F16","shape":[3],"data_offsets":[12,18]}}' \
  '{"x":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]}}' \
  '{"p":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"q":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' \
  '{"e":{"dtype":"F32","shape":[48],"data_offsets":[0,192]}}' \
  '{"f":{"dtype":"F16","shape":[4,30],"data_offsets":[8,248]},"g":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}'; do
  printf '%s' "$h" > "$work/corpus/seed$s.hdr"
  s=$((s + 1))
done
echo "fuzzing hq_st_parse_header for ${secs}s from $((n + s)) seeds"
"$fz" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -dict="$here/fuzz_safetensors.dict" -artifact_prefix="$PWD/fuzz_safetensors-" \
  -print_final_stats=1 "$work/corpus" > "$work/log" 2>&1 || {
  rc=$?
  tail -n 60 "$work/log"
  echo "FAILED: fuzzer exit $rc (crash input saved as $PWD/fuzz_safetensors-*)"
  exit 1
}
grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)" "$work/log" || true
tail -n 3 "$work/log"
echo "fuzz_safetensors: no crash, no sanitizer report in ${secs}s"
