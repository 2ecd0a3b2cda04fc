#!/usr/bin/env bash
# Calibration tokens from text (tools/hpcq_tokenize.py):
#  1. WikiText-2 raw text with the 5M model's tokenizer.model (sentencepiece), bos and no eos:
#     exactly the bundled wikitext2-test.i32 (made by the data set's own tooling), and hpcq eval
#     gives it the same perplexity
#  2. JSON Lines (--field), Parquet (pyarrow) and folders, with a tokenizer.json (Hugging Face
#     tokenizers, a small BPE trained here): bos + ids + eos per document, as the tokenizer
#     encodes each text; the summary counts documents, tokens and windows
#  3. refusals: a tokenizer larger than the model's vocab_size, a bos that is not config.json's,
#     a model folder without tokenizer, a JSON line without the field, a missing input — each a
#     clear message, exit 1, no token file left
#  4. the tokens feed hpcq quantize
set -u
source "$(dirname "$0")/testlib.sh"
hq_tmpdir tokenize
TOKZ=$HQ_SRC/tools/hpcq_tokenize.py
for mod in sentencepiece tokenizers pyarrow; do
  python3 -c "import $mod" 2>/dev/null || { echo "FAIL: python3 lacks $mod (tools/install-deps.sh installs it)"; exit 1; }
done

# ---- 1. the 5M model's WikiText-2 file, exactly ----
if python3 "$TOKZ" --model "$M" --out "$T/wt.i32" --no-eos "$HQ_TESTDATA/text/wikitext2-test.raw" --seqlen 256 > "$T/wt.txt" 2>&1 &&
   cmp -s "$T/wt.i32" "$M/wikitext2-test.i32"; then
  ok "wikitext2-test.raw -> the bundled wikitext2-test.i32, byte for byte: $(cat "$T/wt.txt")"
else bad "wikitext2 tokens differ from the bundled file: $(cat "$T/wt.txt"; cmp "$T/wt.i32" "$M/wikitext2-test.i32")"; fi
grep -q "428647 tokens from 1 documents in 1 file(s), tokenizer tokenizer.model (4096 tokens); 1674 non-overlapping windows of 256" "$T/wt.txt" &&
  ok "summary: documents, tokens, windows" || bad "summary: $(cat "$T/wt.txt")"

# ---- 2. JSON Lines, Parquet, folders, tokenizer.json ----
TJ=$T/tj
mkdir -p "$TJ" "$T/in/sub"
python3 - "$TJ" "$HQ_TESTDATA/text/wikitext2-test.raw" "$T/in" <<'PY'
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
d, raw, ind = sys.argv[1:4]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.train([raw], trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"]))
tok.save(os.path.join(d, "tokenizer.json"))
json.dump({"bos_token": "<s>", "eos_token": "</s>"}, open(os.path.join(d, "tokenizer_config.json"), "w"))
json.dump({"architectures": ["LlamaForCausalLM"], "vocab_size": 640, "bos_token_id": 1,
           "eos_token_id": 2, "max_position_embeddings": 128}, open(os.path.join(d, "config.json"), "w"))
docs = ["The first document.", "A second one, longer: with punctuation!", "", "Third."]
with open(os.path.join(ind, "a.jsonl"), "w") as f:
    for t in docs:
        f.write(json.dumps({"id": 1, "body": t}) + "\n")
pq.write_table(pa.table({"body": ["Parquet row one.", "Parquet row two."]}), os.path.join(ind, "sub", "b.parquet"))
ids = []
for t in [x for x in docs if x] + ["Parquet row one.", "Parquet row two."]:
    ids += [1] + tok.encode(t, add_special_tokens=False).ids + [2]
import numpy as np
np.asarray(ids, dtype="<i4").tofile(os.path.join(d, "expect.i32"))
PY
if python3 "$TOKZ" --model "$TJ" --out "$T/j.i32" --field body "$T/in" > "$T/j.txt" 2>&1 && cmp -s "$T/j.i32" "$TJ/expect.i32"; then
  ok "a folder of .jsonl + .parquet with tokenizer.json: bos + ids + eos per document; $(cat "$T/j.txt")"
else bad "jsonl/parquet tokens: $(cat "$T/j.txt")"; fi
grep -q "from 5 documents in 2 file(s).*fewer than one window of 128" "$T/j.txt" && ok "the empty document is skipped; too little text for a window is said" || bad "document count: $(cat "$T/j.txt")"

# ---- 3. refusals ----
refuse() { # NAME PATTERN ARGS...
  local n=$1 pat=$2
  shift 2
  rm -f "$T/r.i32"
  python3 "$TOKZ" --out "$T/r.i32" "$@" > "$T/r.txt" 2>&1; local rc=$?
  if [ $rc -eq 1 ] && grep -qE -- "$pat" "$T/r.txt" && [ ! -e "$T/r.i32" ]; then ok "$n: $(head -c 200 "$T/r.txt")"
  else bad "$n: exit $rc, $(head -c 300 "$T/r.txt"), file $(ls "$T/r.i32" 2>/dev/null)"; fi
}
mkdir -p "$T/small" "$T/bos" "$T/none"
cp "$M/tokenizer.model" "$T/small/"; sed 's/"vocab_size": *[0-9]*/"vocab_size": 1000/' "$M/config.json" > "$T/small/config.json"
cp "$M/tokenizer.model" "$T/bos/"; sed 's/"bos_token_id": *[0-9]*/"bos_token_id": 7/' "$M/config.json" > "$T/bos/config.json"
cp "$M/config.json" "$T/none/"
refuse "tokenizer larger than the model's vocabulary" "4096 tokens but the model's vocab_size is 1000" --model "$T/small" "$HQ_TESTDATA/text/wikitext2-test.raw"
refuse "bos not config.json's" "bos token is id 1, config.json's bos_token_id is 7" --model "$T/bos" "$HQ_TESTDATA/text/wikitext2-test.raw"
refuse "no tokenizer" "neither tokenizer.json nor tokenizer.model" --model "$T/none" "$HQ_TESTDATA/text/wikitext2-test.raw"
refuse "JSON line without the field" 'no string field "text".*--field' --model "$TJ" "$T/in/a.jsonl"
refuse "Parquet without the column" 'no column "text".*--field' --model "$TJ" "$T/in/sub/b.parquet"
refuse "missing input" "nope.txt: no such file" --model "$M" "$T/nope.txt"

# ---- 4. into hpcq quantize ----
head -c 400000 "$HQ_TESTDATA/text/wikitext2-test.raw" > "$T/cal.txt"
python3 "$TOKZ" --model "$M" --out "$T/cal.i32" "$T/cal.txt" > /dev/null 2>&1 &&
  "$BIN" quantize --model "$M" --calib "$T/cal.i32" --nsamples 8 --seqlen 128 --out "$T/q.h5" --quiet 2> "$T/q.log" &&
  ok "the tokens calibrate hpcq quantize" || bad "quantize from the tokens: $(tail -2 "$T/q.log")"
finish test_tokenize
