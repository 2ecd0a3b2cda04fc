#!/usr/bin/env bash
# `hpcq eval` against Hugging Face transformers: perplexity of llama-sotu-5m on WikiText-2 at
# seqlen 256 must be within 0.05% of the figure transformers computed with the same protocol
# (tests/data/fixtures/llama-sotu-5m-ppl.json, written by tools/make_hf_fixtures.py).
# By default the first 64 windows are checked (a few seconds); HQ_TEST_FULL_EVAL=1 also runs
# the whole file (1674 windows, about 1-2 minutes on 2 cores). Then every bad input must fail
# with a clear message and a non-zero exit code.
set -u
BIN=${HQ_BIN:?HQ_BIN (the hpcq executable) is not set}
DATA=${HQ_TESTDATA:?HQ_TESTDATA is not set}
M=$DATA/llama-sotu-5m
TOK=$M/wikitext2-test.i32
FIX=$DATA/fixtures/llama-sotu-5m-ppl.json
source "$(dirname "$0")/testlib.sh"
hq_tmpdir eval

# json_num KEY FILE: the number after "KEY": (first occurrence)
json_num() { grep -o "\"$1\": *[-0-9.eE+]*" "$2" | head -1 | sed 's/.*: *//'; }

check_ppl() { # windows reference_ppl
  local k=$1 ref=$2 args=()
  [ "$k" != all ] && args=(--max-windows "$k")
  if ! "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 256 "${args[@]}" --json \
      >"$T/out.json" 2>"$T/err.txt"; then
    bad "eval ($k windows) failed: $(cat "$T/err.txt")"
    return
  fi
  local ppl win tokens secs
  ppl=$(json_num perplexity "$T/out.json")
  win=$(json_num windows "$T/out.json")
  tokens=$(json_num tokens "$T/out.json")
  secs=$(json_num seconds "$T/out.json")
  echo "eval $k windows: hpcq perplexity $ppl, transformers $ref ($secs s)"
  if within "$ref" "$ppl" 5e-4; then
    ok
  else
    bad "perplexity $ppl differs from transformers' $ref by more than 0.05%"
  fi
  local ew=$k
  [ "$k" = all ] && ew=$(json_num windows "$FIX")
  [ "$win" = "$ew" ] && ok || bad "windows $win, expected $ew"
  [ "$tokens" = $((ew * 255)) ] && ok || bad "tokens $tokens, expected $((ew * 255))"
  grep -q '^\[eval\].*ETA' "$T/err.txt" && ok || bad "no progress line with ETA on stderr"
}

[ -f "$FIX" ] || { echo "missing fixture $FIX" >&2; exit 1; }
ref64=$(grep -o '"64": *[0-9.eE+-]*' "$FIX" | sed 's/.*: *//')
[ -n "$ref64" ] || { echo "fixture $FIX has no perplexity_first.64" >&2; exit 1; }
check_ppl 64 "$ref64"
if [ "${HQ_TEST_FULL_EVAL:-0}" = 1 ]; then
  check_ppl all "$(json_num perplexity "$FIX")"
fi

# ---- bad inputs: non-zero exit and a message naming the problem ----
expect_fail "missing model" "cannot open model" "$BIN" eval --model "$T/nope" --tokens "$TOK" --seqlen 16
expect_fail "seqlen > max_pos" "max_position_embeddings" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 513
expect_fail "missing token file" "cannot open token file" "$BIN" eval --model "$M" --tokens "$T/none.i32" --seqlen 16
# id 5000 in a vocabulary of 4096, at token 3 (byte offset 12)
printf '\x01\x00\x00\x00\x05\x00\x00\x00\x06\x00\x00\x00\x88\x13\x00\x00' >"$T/oov.i32"
expect_fail "token id out of range" "outside the model's vocabulary" "$BIN" eval --model "$M" --tokens "$T/oov.i32" --seqlen 2
expect_fail "token id out of range names the offset" "byte offset 12" "$BIN" eval --model "$M" --tokens "$T/oov.i32" --seqlen 2
head -c 400 "$TOK" >"$T/short.i32" # 100 tokens
expect_fail "too few tokens" "fewer than one window" "$BIN" eval --model "$M" --tokens "$T/short.i32" --seqlen 256
expect_fail "missing .h5 result" "cannot open model" "$BIN" eval --model "$T/result.h5" --tokens "$TOK" --seqlen 16
expect_fail "missing .h5 positional" "cannot open model" "$BIN" eval "$T/result.h5" --tokens "$TOK" --seqlen 16
expect_fail "no --tokens" "--tokens is required" "$BIN" eval --model "$M" --seqlen 16
expect_fail "bad --seqlen" "--seqlen expects an integer" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen abc
expect_fail "seqlen 1" "--seqlen must be in" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 1
expect_fail "unknown option" "unknown option" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 16 --bogus
expect_fail "unknown backend" "unknown backend" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 16 --backend tpu

finish test_eval
