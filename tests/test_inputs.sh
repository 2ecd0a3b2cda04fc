#!/usr/bin/env bash
# Bad inputs and options of every command give a clear message and the right exit status, never
# a hang, a silent wrong answer or a file left behind (issue 13):
#  1. named pipes (and other non-regular files) as --calib, --tokens, config.json,
#     model.safetensors, the index, a tokenizer file, an .h5 input, --out and --json-summary are
#     refused at once, naming the file (every command runs under `timeout`)
#  2. an infinite / NaN perplexity is an error with a hint, not exit 0
#  3. too little calibration text: one warning (rank 0 only) with the numbers
#  4. config.json / index.json followed by garbage, a Mistral sliding_window shorter than the
#     sequence (quantize and eval; RTN needs no windows and runs)
#  5. option errors of quantize exit 2 before anything is created (--bits 5, --group-size 0,
#     --resume with --overwrite, --act-order / --static-groups with rtn, --out a directory,
#     impossible --nsamples / --batch, fewer windows than ranks); the leftover of a run killed
#     before its first flush is recognised by --resume and inspect; RTN never exports
#     desc_act true
#  6. mixtures of experts: eval runs them; quantize refuses what it does not support for them
#     (block groups, equalization, the CUDA backend) and a bad --moe-fallback before creating
#     --out; a missing expert tensor is named; hpcq layer refuses a MoE block's MLP
set -u
source "$(dirname "$0")/testlib.sh"
hq_tmpdir inputs
Q=(--nsamples 8 --seqlen 128 --bits 4 --group-size 128 --quiet)

EXPECT_TIMEOUT=20 # expect (testlib.sh): a command that takes longer hangs
# model folder copy whose FILE is replaced by a FIFO
fifo_model() { rm -rf "$T/fm"; mkdir "$T/fm"; cp "$M"/* "$T/fm/"; rm "$T/fm/$1"; mkfifo "$T/fm/$1"; }

"$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/ok.h5" 2>"$T/q.log" || { cat "$T/q.log"; bad "reference quantize"; }

# ---- 1. named pipes ----
mkfifo "$T/pipe"
expect "FIFO --calib" 1 "token file $T/pipe is a named pipe" "$BIN" quantize --model "$M" --calib "$T/pipe" "${Q[@]}" --out "$T/f1.h5"
expect "FIFO eval --tokens" 1 "token file $T/pipe is a named pipe" "$BIN" eval --model "$M" --tokens "$T/pipe" --seqlen 128
expect "FIFO --out" 2 "--out $T/pipe is a named pipe" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/pipe" --overwrite
expect "FIFO --out --resume" 2 "--out $T/pipe is a named pipe" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/pipe" --resume
expect "FIFO --json-summary" 2 "--json-summary $T/pipe is a named pipe" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/f2.h5" --json-summary "$T/pipe"
[ ! -e "$T/f2.h5" ] && ok "nothing created for a FIFO --json-summary" || bad "a FIFO --json-summary left $T/f2.h5"
mkfifo "$T/pipe.h5"
expect "FIFO eval --model X.h5" 1 "hpcq result $T/pipe.h5 is a named pipe" "$BIN" eval --model "$T/pipe.h5" --tokens "$M/wikitext2-test.i32" --seqlen 128
expect "FIFO export input" 1 "hpcq result $T/pipe.h5 is a named pipe" "$BIN" export "$T/pipe.h5" --out "$T/fx"
expect "FIFO inspect" 1 "$T/pipe.h5 is a named pipe" "$BIN" inspect "$T/pipe.h5"
expect "FIFO compare (2: cannot compare, as cmp)" 2 "$T/pipe.h5 is a named pipe" "$BIN" compare "$T/ok.h5" "$T/pipe.h5"
fifo_model config.json
expect "FIFO config.json (eval)" 1 "model config $T/fm/config.json is a named pipe" "$BIN" eval --model "$T/fm" --tokens "$M/wikitext2-test.i32" --seqlen 128
expect "FIFO config.json (quantize)" 1 "model config $T/fm/config.json is a named pipe" "$BIN" quantize --model "$T/fm" --calib "$M/calib.i32" "${Q[@]}" --out "$T/f3.h5"
fifo_model model.safetensors
expect "FIFO model.safetensors" 1 "safetensors file $T/fm/model.safetensors is a named pipe" "$BIN" eval --model "$T/fm" --tokens "$M/wikitext2-test.i32" --seqlen 128
fifo_model model.safetensors
rm "$T/fm/model.safetensors"
cp "$M/model.safetensors" "$T/fm/shard.safetensors"
mkfifo "$T/fm/model.safetensors.index.json"
expect "FIFO index.json" 1 "safetensors index $T/fm/model.safetensors.index.json is a named pipe" "$BIN" eval --model "$T/fm" --tokens "$M/wikitext2-test.i32" --seqlen 128
fifo_model tokenizer.model
"$BIN" quantize --model "$T/fm" --calib "$M/calib.i32" "${Q[@]}" --method rtn --out "$T/tokfifo.h5" 2>/dev/null
expect "FIFO tokenizer file (export)" 1 "tokenizer file $T/fm/tokenizer.model is a named pipe" "$BIN" export "$T/tokfifo.h5" --out "$T/tx"
[ -z "$(ls -A "$T/tx" 2>/dev/null)" ] && ok "export left no files after the FIFO tokenizer" || bad "export left $(ls -A "$T/tx")"

# ---- 2. infinite perplexity ----
# final norm weights set to a bf16 value: 1e5 gives finite logits of ~1e5 whose mean NLL is
# beyond 709 (exp overflows: perplexity inf); 3.4e38 gives Inf/NaN logits
big_norm() {
  rm -rf "$T/inf"; mkdir "$T/inf"; cp "$M"/* "$T/inf/"
  python3 - "$T/inf/model.safetensors" "$1" <<'PY'
import json, struct, sys
p, v = sys.argv[1], int(sys.argv[2], 16)
b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
t = json.loads(b[8:8 + n])["model.norm.weight"]
assert t["dtype"] == "BF16"
a, e = t["data_offsets"]
b[8 + n + a:8 + n + e] = struct.pack("<H", v) * ((e - a) // 2)
open(p, "wb").write(bytes(b))
PY
}
big_norm 47c3
expect "infinite perplexity (finite NLL)" 1 "perplexity of .* is infinite \(mean NLL [0-9.e+]+ over [0-9]+ tokens\): the model.s logits" "$BIN" eval --model "$T/inf" --tokens "$M/wikitext2-test.i32" --seqlen 128 --max-windows 2 --json
[ ! -s "$T/out.txt" ] && ok "no JSON printed for an infinite perplexity" || bad "JSON printed: $(cat "$T/out.txt")"
big_norm 7f7f
expect "NaN logits" 1 "not finite.*NaN/Inf logits" "$BIN" eval --model "$T/inf" --tokens "$M/wikitext2-test.i32" --seqlen 128 --max-windows 2 --json
[ ! -s "$T/out.txt" ] && ok "no JSON printed for NaN logits" || bad "JSON printed: $(cat "$T/out.txt")"

# ---- 3. too little calibration text ----
head -c 1200 "$M/calib.i32" >"$T/short.i32" # 300 tokens for 8 x 128
timeout 120 "$MPIEXEC" -np 2 "$BIN" quantize --model "$M" --calib "$T/short.i32" "${Q[@]}" --out "$T/short.h5" 2>"$T/short.log"
n=$(grep -c "too little calibration text" "$T/short.log")
if [ "$n" = 1 ] && grep -qE "300 tokens for 8 windows x 128 tokens = 1024 requested; [0-9]+ of the windows overlap another \([0-9]+ repeat one exactly\) and together they cover [0-9]+ distinct tokens" "$T/short.log"
then ok "one overlap warning on 2 ranks: $(grep "too little" "$T/short.log" | cut -c1-200)"
else bad "overlap warning x$n: $(cat "$T/short.log")"; fi
grep -q "too little calibration" "$T/q.log" && bad "warning without reason: $(cat "$T/q.log")" || ok "no warning with enough text"

# ---- 4. trailing garbage, sliding window ----
rm -rf "$T/tg"; mkdir "$T/tg"; cp "$M"/* "$T/tg/"
printf 'garbage' >>"$T/tg/config.json"
expect "config.json + garbage (eval)" 1 "config.json: not valid JSON \(at byte [0-9]+" "$BIN" eval --model "$T/tg" --tokens "$M/wikitext2-test.i32" --seqlen 128
expect "config.json + garbage (quantize)" 1 "config.json: not valid JSON" "$BIN" quantize --model "$T/tg" --calib "$M/calib.i32" "${Q[@]}" --out "$T/tg.h5"
rm -rf "$T/ix"; mkdir "$T/ix"; cp "$M/config.json" "$T/ix/"; cp "$M/model.safetensors" "$T/ix/shard.safetensors"
python3 - "$T/ix" <<'PY'
import json, struct, sys
d = sys.argv[1]
b = open(d + "/shard.safetensors", "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
wm = {k: "shard.safetensors" for k in h if k != "__metadata__"}
open(d + "/model.safetensors.index.json", "w").write(json.dumps({"metadata": {}, "weight_map": wm}) + "\n}")
PY
expect "index.json + garbage" 1 "index.json: not valid JSON \(at byte [0-9]+" "$BIN" eval --model "$T/ix" --tokens "$M/wikitext2-test.i32" --seqlen 128
head -c -2 "$T/ix/model.safetensors.index.json" >"$T/ix/i.tmp" && mv "$T/ix/i.tmp" "$T/ix/model.safetensors.index.json"
"$BIN" eval --model "$T/ix" --tokens "$M/wikitext2-test.i32" --seqlen 128 --max-windows 1 --quiet >/dev/null 2>"$T/e.log" &&
  ok "the same index without the garbage loads" || bad "clean index: $(cat "$T/e.log")"
rm -rf "$T/mi"; mkdir "$T/mi"; cp "$M"/* "$T/mi/"
python3 - "$T/mi/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["architectures"] = ["MistralForCausalLM"]; c["model_type"] = "mistral"; c["sliding_window"] = 64
json.dump(c, open(sys.argv[1], "w"))
PY
expect "Mistral sliding_window < --seqlen (quantize)" 2 "--seqlen 128 is longer than the model's sliding_window 64.*use --seqlen 64 or less" "$BIN" quantize --model "$T/mi" --calib "$M/calib.i32" "${Q[@]}" --out "$T/mi.h5"
[ ! -e "$T/mi.h5" ] && ok "nothing created for the sliding window" || bad "sliding window refusal left $T/mi.h5"
expect "Mistral sliding_window < --seqlen (eval)" 2 "--seqlen 128 is longer than the model's sliding_window 64" "$BIN" eval --model "$T/mi" --tokens "$M/wikitext2-test.i32" --seqlen 128
"$BIN" eval --model "$T/mi" --tokens "$M/wikitext2-test.i32" --seqlen 64 --max-windows 2 --quiet >/dev/null 2>"$T/e.log" &&
  ok "Mistral eval within the window runs" || bad "Mistral --seqlen 64: $(cat "$T/e.log")"
"$BIN" quantize --model "$T/mi" --method rtn "${Q[@]}" --out "$T/mi-rtn.h5" 2>"$T/e.log" &&
  ok "Mistral RTN (no calibration windows) runs" || bad "Mistral RTN: $(cat "$T/e.log")"
expect "Mistral sliding_window < --seqlen (eval of the .h5)" 2 "sliding_window 64" "$BIN" eval --model "$T/mi-rtn.h5" --tokens "$M/wikitext2-test.i32" --seqlen 128

# ---- 5. quantize options: exit 2, nothing created ----
# quantize option errors: exit 2 and no --out file
QO=("$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/o.h5")
expect --no-file "$T/o.h5" "--bits 5" 2 "--bits must be 2, 3, 4 or 8" "${QO[@]}" --bits 5
expect --no-file "$T/o.h5" "--group-size 0" 2 "--group-size 0: .*-1 for one group per output channel" "${QO[@]}" --group-size 0
expect --no-file "$T/o.h5" "--resume --overwrite" 2 "--resume and --overwrite contradict" "${QO[@]}" --resume --overwrite
expect --no-file "$T/o.h5" "rtn --act-order" 2 "--act-order is a GPTQ option.*--method rtn" "${QO[@]}" --method rtn --act-order
expect --no-file "$T/o.h5" "hqq --static-groups" 2 "--static-groups is a GPTQ option.*--method hqq" "${QO[@]}" --method hqq --static-groups
expect --no-file "$T/o.h5" "impossible --nsamples" 2 "--nsamples 16000000 x --seqlen 128 needs about [0-9.]+ GiB per rank.*more than this node" "${QO[@]}" --nsamples 16000000
expect --no-file "$T/o.h5" "impossible --batch" 2 "forward workspace [0-9.]+ GiB for --batch 1000000.*smaller --batch" "${QO[@]}" --batch 1000000
rm -f "$T/o.h5"
expect "fewer windows than ranks" 2 "--nsamples 1 is smaller than the 2 ranks" timeout 60 "$MPIEXEC" -np 2 "$BIN" quantize --model "$M" --calib "$M/calib.i32" --nsamples 1 --seqlen 128 --quiet --out "$T/o.h5"
[ ! -e "$T/o.h5" ] && ok "nothing created for too few windows" || bad "too few windows created $T/o.h5"
mkdir "$T/outdir"
expect "--out DIR" 2 "--out $T/outdir is a directory; give the name of the file" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/outdir" --overwrite
expect "--out DIR --resume" 2 "--out $T/outdir is a directory" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/outdir" --resume
# leftovers of a kill before the first flush: hpcq's placeholder, an HDF5 file without progress
printf 'hpcq 1767000000.000000000 4242\0\0' >"$T/left1.h5"
python3 -c "import h5py, numpy as np, sys; f = h5py.File(sys.argv[1], 'w'); f.attrs['hpcq_format_version'] = np.int64(2); f.create_group('tensors')" "$T/left2.h5" 2>/dev/null ||
  cp "$T/left1.h5" "$T/left2.h5"
for f in left1 left2; do
  expect "--resume on leftover $f" 1 "(leftover of a run killed before its first block was flushed|no progress record).*--overwrite" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/$f.h5" --resume
  expect "inspect of leftover $f" 1 "leftover of a run killed before its first block was flushed.*--overwrite" "$BIN" inspect "$T/$f.h5"
done
"$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/left1.h5" --overwrite 2>"$T/e.log" &&
  ok "--overwrite replaces the leftover" || bad "--overwrite of the leftover: $(cat "$T/e.log")"
cp "$T/ok.h5" "$T/done.h5"
expect "--resume of a complete file" 1 "already complete: nothing to resume" "$BIN" quantize --model "$M" --calib "$M/calib.i32" "${Q[@]}" --out "$T/done.h5" --resume
# export: desc_act only for GPTQ act-order, also for an older RTN file that recorded act_order 1
"$BIN" quantize --model "$M" --method rtn "${Q[@]}" --out "$T/rtn.h5" 2>/dev/null
python3 -c "import h5py, numpy as np, sys; h5py.File(sys.argv[1], 'r+').attrs['act_order'] = np.int64(1)" "$T/rtn.h5" 2>/dev/null
"$BIN" export "$T/rtn.h5" --out "$T/rtn.gptq" --quiet 2>"$T/e.log" && grep -qE '"desc_act":[[:space:]]*false' "$T/rtn.gptq/quantize_config.json" &&
  ok "RTN exports desc_act false" || bad "RTN export: $(cat "$T/e.log") $(grep desc_act "$T/rtn.gptq/quantize_config.json")"
# ---- 6. mixtures of experts: eval runs them, quantize refuses them before creating anything,
# a missing expert is named ----
MOE=$HQ_TESTDATA/tiny-mixtral
MT=$HQ_TESTDATA/stories260K-hf/wikitext2-test.tok512.i32
if timeout 60 "$BIN" eval --model "$MOE" --tokens "$MT" --seqlen 64 --max-windows 16 >"$T/moe.txt" 2>&1 &&
   grep -qE "^perplexity [0-9.]+ .* 16 windows of 64" "$T/moe.txt"; then ok "eval a Mixtral: $(tail -1 "$T/moe.txt")"
else bad "eval a Mixtral: $(tail -2 "$T/moe.txt")"; fi
for bad_opt in "--block-groups 2" "--equalize smooth" "--backend cuda"; do
  # shellcheck disable=SC2086
  expect --no-file "$T/moe.h5" "quantize a Mixtral with $bad_opt" 1 "mixture of experts.*${bad_opt%% *}.*not supported" \
    "$BIN" quantize --model "$MOE" --calib "$MT" --nsamples 4 --seqlen 64 --out "$T/moe.h5" $bad_opt
done
expect --no-file "$T/moe.h5" "quantize --moe-fallback bad" 2 "--moe-fallback must be block or rtn" \
  "$BIN" quantize --model "$MOE" --calib "$MT" --out "$T/moe.h5" --moe-fallback gptq
rm -rf "$T/moe" && mkdir "$T/moe" && cp "$MOE/config.json" "$T/moe/"
python3 - "$MOE/model.safetensors" "$T/moe/model.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
del h["model.layers.1.block_sparse_moe.experts.3.w2.weight"]   # its bytes stay, unreferenced
j = json.dumps(h).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(j)) + j + b[8 + n:])
PY
expect "Mixtral without one expert" 1 "model.layers.1.block_sparse_moe.experts.3.w2.weight.*missing" \
  "$BIN" eval --model "$T/moe" --tokens "$MT" --seqlen 64 --max-windows 4
expect "hpcq layer on a MoE block's MLP" 1 "mixture of experts.*attention linears" \
  "$BIN" layer --model "$MOE" --calib "$MT" --linear mlp.up_proj --block 0 --nsamples 4 --seqlen 64
finish test_inputs
