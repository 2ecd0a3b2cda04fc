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

# ---- batches: each block loaded once (kept), or once per batch (streamed), same perplexity ----
# json_field KEY FILE: the raw value after "KEY": (all digits, true/false)
json_field() { grep -o "\"$1\": *[^,}]*" "$2" | head -1 | sed 's/.*: *//'; }
NL=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | sed 's/.*: *//')
check_batches() { # name expected-batches expected-block-loads expected-stderr-pattern args...
  local name=$1 nb=$2 nl=$3 pat=$4
  shift 4
  if ! "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 256 --chunk-tokens 256 --max-windows 4 \
      --json "$@" >"$T/$name.json" 2>"$T/$name.err"; then
    bad "eval $name failed: $(cat "$T/$name.err")"
    return
  fi
  local b l
  b=$(json_field batches "$T/$name.json")
  l=$(json_field block_loads "$T/$name.json")
  echo "eval $name: $b batches, $l block loads, perplexity $(json_field perplexity "$T/$name.json")"
  [ "$b" = "$nb" ] && ok || bad "$name: $b batches, expected $nb"
  [ "$l" = "$nl" ] && ok || bad "$name: $l block loads, expected $nl ($NL blocks)"
  [ -z "$pat" ] || grep -q -- "$pat" "$T/$name.err" && ok || bad "$name: stderr lacks '$pat'"
  [ "$(json_field perplexity "$T/$name.json")" = "$(json_field perplexity "$T/one.json")" ] \
    && ok || bad "$name: perplexity differs from one batch's (must be bit-identical)"
}
check_batches one 1 "$NL" ""
check_batches kept 4 "$NL" "each block is loaded once and kept" --batch-windows 1
check_batches streamed 4 $((4 * NL)) "stream again for every batch" --batch-windows 1 --keep-weights-mib 0
check_batches streamed-3 2 $((2 * NL)) "stream again for every batch" --batch-windows 3 --keep-weights-mib 1

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
expect_fail "a second model argument" "unknown option 'extra'" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 16 extra
expect_fail "negative --keep-weights-mib" "--keep-weights-mib must be in" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 16 --keep-weights-mib -1
expect_fail "unknown backend" "unknown backend" "$BIN" eval --model "$M" --tokens "$TOK" --seqlen 16 --backend tpu

finish test_eval
