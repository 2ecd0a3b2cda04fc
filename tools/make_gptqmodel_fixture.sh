#!/usr/bin/env bash
# Makes tests/data/gptqmodel-sotu-5m-w4 (a GPTQ checkpoint written by GPTQModel 7.7.0 itself:
# W4 g128 asymmetric, checkpoint_format gptq, 32 calibration windows of 256 from the bundled
# model's calib.i32) and tests/data/fixtures/gptqmodel-sotu-5m-w4-ppl.json (its perplexity on
# the first 40 windows of 256 of wikitext2-test.i32 computed by transformers + gptqmodel on the
# CPU), for tests/test_gptq_read.sh. Uses tools/interop-check.sh's virtual environment
# (run that once first, or set HQ_INTEROP_VENV). GPTQModel's quantization is not bit-stable
# across machines: a new fixture needs the new perplexity too (this script writes both).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${HQ_INTEROP_VENV:-$HOME/.cache/hpcq-interop-venv}/bin/python
R=$PWD; M=$R/tests/data/llama-sotu-5m; D=$R/tests/data/gptqmodel-sotu-5m-w4; W=$(mktemp -d)
cd "$W" # GPTQModel writes a logs/ folder into the working directory
trap 'rm -rf "$W"' EXIT
"$PY" "$R/tools/interop_check.py" --quantize "$M" "$W/ck" --calib "$M/calib.i32" --nsamples 32 \
  --seqlen 256 --bits 4 > "$W/q.log" 2>&1 || { tail -20 "$W/q.log"; exit 1; }
rm -rf "$D" && mkdir -p "$D"
cp "$W/ck/config.json" "$W/ck/model.safetensors" "$W/ck/quantize_config.json" "$D/"
"$PY" "$R/tools/interop_check.py" --tokens "$M/wikitext2-test.i32" --seqlen 256 --windows 40 \
  --loaders transformers "$D" 2> "$W/l.log" | grep "^RESULT " | tail -1 | cut -c8- |
  "$PY" -c 'import json, sys; r = json.loads(sys.stdin.read()); assert "ppl" in r, r
json.dump({"perplexity": r["ppl"], "kernel": r["kernel"], "windows": 40, "seqlen": 256,
           "tokens": "llama-sotu-5m/wikitext2-test.i32", "by": "transformers 5.24.0 + gptqmodel 7.7.0, float32, CPU"},
          open(sys.argv[1] + "/tests/data/fixtures/gptqmodel-sotu-5m-w4-ppl.json", "w"), indent=1)' "$R"
cat "$R"/tests/data/fixtures/gptqmodel-sotu-5m-w4-ppl.json
