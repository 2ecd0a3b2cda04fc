#!/usr/bin/env bash
# GPTQ beats RTN on the bundled 5M model (issue 4 proof), and the README's CI-sized quality
# table is what its command produces. `tools/quality-table.sh --ci` (calibration 128 windows x
# 256 tokens, seeds 0, 1, 2; the first 200 WikiText-2 windows of 256 tokens) must print exactly
# the block between <!-- quality-ci:begin --> and <!-- quality-ci:end --> in README.md; from its
# rows: at W4 g128, W3 g128 and W2 g64 the mean GPTQ perplexity over the three seeds is below
# RTN's, and at W3 g128 GPTQ's mean increase over full precision is at most 80 % of RTN's.
# One seed is not enough: GPTQ's codes are chaotic in every rounding, and at W3 g128 single
# seeds range from 15 % to 100 % of RTN's increase on this model.
set -u
BIN=${HQ_BIN:-build/hpcq}
M=${HQ_TESTDATA:-tests/data}/llama-sotu-5m
SRC=${HQ_SRC:-.}
. "$(dirname "$0")/testlib.sh"
T=$(mktemp -d /tmp/hq_quality.XXXXXX)
trap 'rm -rf "$T"' EXIT
HQ_BIN="$BIN" bash "$SRC/tools/quality-table.sh" --ci > "$T/table.md" 2> "$T/table.log" || bad "quality-table.sh --ci failed: $(tail -3 "$T/table.log")"
cat "$T/table.md"
sed -n '/<!-- quality-ci:begin -->/,/<!-- quality-ci:end -->/p' "$SRC/README.md" | grep '^|' > "$T/readme.md"
if [ -s "$T/readme.md" ] && diff "$T/readme.md" "$T/table.md" > "$T/diff.txt"; then ok "README quality-ci table reproduces from its command"
else bad "README quality-ci table differs from tools/quality-table.sh --ci: $(head -8 "$T/diff.txt")"; fi
# col CONFIG FIELD: the perplexity in column FIELD (3 = RTN or FP, 5 = GPTQ mean) of a row
col() { awk -F'|' -v c="$1" -v f="$2" '{k = $2; gsub(/ /, "", k)} k == c {split($f, a, " "); print a[1]}' "$T/table.md"; }
fp=$(col FP 3)
for c in W4g128 W3g128 W2g64; do
  r=$(col $c 3); g=$(col $c 5)
  if awk -v r="$r" -v g="$g" 'BEGIN{exit !(g > 0 && g < r)}'; then ok "$c: GPTQ $g < RTN $r"; else bad "$c: GPTQ $g not below RTN $r"; fi
done
r=$(col W3g128 3); g=$(col W3g128 5)
if awk -v r="$r" -v g="$g" -v f="$fp" 'BEGIN{exit !(f > 0 && (g - f) <= 0.8 * (r - f))}'; then ok "W3 g128: GPTQ increase $(awk -v r="$r" -v g="$g" -v f="$fp" 'BEGIN{printf "%.1f%%", 100*(g-f)/(r-f)}') of RTN's (<= 80 %)"
else bad "W3 g128: GPTQ increase over FP is more than 80 % of RTN's ($g vs $r, FP $fp)"; fi
finish test_quality
